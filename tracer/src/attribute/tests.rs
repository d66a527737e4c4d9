use std::{
    fs,
    net::{Ipv4Addr, Ipv6Addr},
    os::unix::fs::symlink,
};

use super::*;
use crate::model::{Origin, ProcessInfo};
use TcpState::*;

/// The tracer's own namespace in the fakes that have more than one.
const OWN: u32 = 4026531840;
/// Two containers' namespaces.
const NS_A: u32 = 4026532201;
const NS_B: u32 = 4026532202;

/// A machine made of lists. Its sockets say which namespace they are in; the tracer's own
/// is `own` (0 unless a test needs more namespaces).
#[derive(Default)]
struct Fake {
    own: u32,
    /// Namespaces besides `own` that can be entered.
    namespaces: Vec<u32>,
    /// Namespaces that are found but whose listing fails.
    failing: Vec<u32>,
    sockets: Vec<DiagSocket>,
    holdings: Vec<Holding>,
    processes: Vec<ProcessInfo>,
    /// `(namespace, family, states, info)` of every dump.
    dumps: Vec<(u32, Family, u32, bool)>,
    scans: usize,
}

impl System for Fake {
    fn namespaces(&mut self) -> Vec<u32> {
        let mut all = vec![self.own];
        all.extend(&self.namespaces);
        all.extend(&self.failing);
        all
    }

    fn sockets(
        &mut self,
        namespaces: &[u32],
        families: &[Family],
        states: u32,
        info: bool,
    ) -> Vec<Listing> {
        namespaces
            .iter()
            .map(|&asked| {
                let netns = if asked == 0 { self.own } else { asked };
                if self.failing.contains(&netns) {
                    return Listing::Failed(AttributeError::Dump {
                        netns,
                        family: families[0],
                        source: io::Error::from(io::ErrorKind::PermissionDenied),
                    });
                }
                if netns != self.own && !self.namespaces.contains(&netns) {
                    return Listing::Unreachable;
                }
                let mut found = Vec::new();
                for &family in families {
                    self.dumps.push((asked, family, states, info));
                    found.extend(
                        self.sockets
                            .iter()
                            .filter(|d| {
                                d.ends.netns == netns
                                    && d.ends.family == family
                                    && states & state_bit(d.state) != 0
                            })
                            .map(|d| DiagSocket {
                                ends: Endpoints {
                                    netns: asked,
                                    ..d.ends
                                },
                                ..*d
                            }),
                    );
                }
                Listing::Sockets(found)
            })
            .collect()
    }

    fn holders(&mut self, inodes: &HashSet<u64>) -> Vec<Holding> {
        self.scans += 1;
        self.holdings
            .iter()
            .filter(|h| h.fds.iter().any(|(i, _)| inodes.contains(i)))
            .cloned()
            .collect()
    }

    fn process(&mut self, pid: u32) -> Option<ProcessInfo> {
        self.processes.iter().find(|p| p.pid == pid).cloned()
    }

    fn ephemeral_ports(&mut self) -> RangeInclusive<u16> {
        32768..=60999
    }
}

fn v4(sport: u16, dport: u16) -> Endpoints {
    Endpoints {
        netns: 0,
        family: Family::Ipv4,
        saddr: Ipv4Addr::LOCALHOST.into(),
        sport,
        daddr: if dport == 0 {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::LOCALHOST.into()
        },
        dport,
    }
}

fn diag(cookie: u64, ends: Endpoints, state: TcpState, inode: u64) -> DiagSocket {
    DiagSocket {
        cookie,
        ends,
        state: state.into(),
        inode,
        last_ack_recv_ms: None,
    }
}

/// A java broker's process facts; the output tests use it too.
pub(crate) fn java(pid: u32) -> ProcessInfo {
    ProcessInfo {
        pid,
        comm: "java".into(),
        cmdline: "java -jar activemq.jar".into(),
        uid: 1000,
        fd_limit: Some(1024),
        cgroup: Some("/system.slice/activemq.service".into()),
    }
}

fn broker() -> Fake {
    let mut listener = v4(61616, 0);
    listener.saddr = Ipv4Addr::UNSPECIFIED.into();
    Fake {
        sockets: vec![
            diag(1, listener, Listen, 100),
            diag(2, v4(61616, 40001), CloseWait, 101),
            diag(3, v4(61616, 40002), CloseWait, 0),
            diag(4, v4(50000, 80), FinWait2, 0),
            diag(5, v4(61616, 40005), CloseWait, 105),
        ],
        holdings: vec![
            Holding {
                pid: 4242,
                fds: vec![(100, 3), (101, 17), (105, 20)],
                fd_count: 1013,
            },
            // A child that inherited one socket.
            Holding {
                pid: 4300,
                fds: vec![(105, 20)],
                fd_count: 40,
            },
        ],
        processes: vec![java(4242), java(4300)],
        ..Fake::default()
    }
}

#[test]
fn names_the_holder_with_fds_and_counts_in_one_scan() {
    let mut a = Attributor::new(broker(), Namespaces::All);
    let got = a.owners(&[(v4(61616, 40001), CloseWait.into())]).owners;
    assert_eq!(
        got,
        vec![Ownership {
            held_by: HeldBy::Fd,
            owners: vec![Owner {
                process: java(4242),
                fds: vec![17],
                fd_count: 1013
            }],
            last_io: None,
        }]
    );
    assert_eq!(a.sys.scans, 1);
    assert_eq!(
        a.sys.dumps,
        vec![(
            0,
            Family::Ipv4,
            1 << Listen as u32 | 1 << CloseWait as u32,
            false
        )]
    );
}

#[test]
fn lists_every_holder_of_a_shared_socket() {
    let mut a = Attributor::new(broker(), Namespaces::All);
    let got = a.owners(&[(v4(61616, 40005), CloseWait.into())]).owners;
    let pids: Vec<(u32, Vec<i32>)> = got[0]
        .owners
        .iter()
        .map(|o| (o.process.pid, o.fds.clone()))
        .collect();
    assert_eq!(pids, vec![(4242, vec![20]), (4300, vec![20])]);
}

#[test]
fn a_socket_never_accepted_belongs_to_the_listener() {
    let mut a = Attributor::new(broker(), Namespaces::All);
    let got = a.owners(&[(v4(61616, 40002), CloseWait.into())]).owners;
    assert_eq!(got[0].held_by, HeldBy::AcceptQueue);
    assert_eq!(got[0].owners[0].process.pid, 4242);
    assert_eq!(got[0].owners[0].fds, vec![3], "the listener's fd");
}

#[test]
fn orphans_gone_and_unheld_sockets_say_so() {
    let mut fake = broker();
    fake.sockets.push(diag(6, v4(61616, 40006), CloseWait, 106));
    let mut a = Attributor::new(fake, Namespaces::All);
    let got = a
        .owners(&[
            (v4(50000, 80), FinWait2.into()),
            (v4(61616, 49999), CloseWait.into()),
            (v4(61616, 40006), CloseWait.into()),
        ])
        .owners;
    let held: Vec<HeldBy> = got.iter().map(|o| o.held_by).collect();
    assert_eq!(held, vec![HeldBy::Orphan, HeldBy::Gone, HeldBy::Unknown]);
    assert!(got.iter().all(|o| o.owners.is_empty()));
}

#[test]
fn a_process_that_exits_mid_lookup_is_skipped() {
    let mut fake = broker();
    fake.processes.retain(|p| p.pid != 4300);
    let mut a = Attributor::new(fake, Namespaces::All);
    let got = a.owners(&[(v4(61616, 40005), CloseWait.into())]).owners;
    assert_eq!(got[0].owners.len(), 1);
    assert_eq!(got[0].owners[0].process.pid, 4242);
}

#[test]
fn ipv6_listener_matches_by_exact_address_first() {
    let any = Endpoints {
        netns: 0,
        family: Family::Ipv6,
        saddr: Ipv6Addr::UNSPECIFIED.into(),
        sport: 8080,
        daddr: Ipv6Addr::UNSPECIFIED.into(),
        dport: 0,
    };
    let lo = Endpoints {
        saddr: Ipv6Addr::LOCALHOST.into(),
        ..any
    };
    let child = Endpoints {
        daddr: Ipv6Addr::LOCALHOST.into(),
        dport: 50000,
        ..lo
    };
    let fake = Fake {
        sockets: vec![
            diag(1, any, Listen, 200),
            diag(2, lo, Listen, 201),
            diag(3, child, Established, 0),
        ],
        holdings: vec![
            Holding {
                pid: 1,
                fds: vec![(200, 4)],
                fd_count: 5,
            },
            Holding {
                pid: 2,
                fds: vec![(201, 4)],
                fd_count: 5,
            },
        ],
        processes: vec![java(1), java(2)],
        ..Fake::default()
    };
    let mut a = Attributor::new(fake, Namespaces::All);
    let got = a.owners(&[(child, Established.into())]).owners;
    assert_eq!(got[0].held_by, HeldBy::AcceptQueue);
    assert_eq!(got[0].owners[0].process.pid, 2);
    assert_eq!(a.sys.dumps.len(), 1, "only the family asked for");
}

#[test]
fn snapshot_ages_from_tcp_info_and_guesses_origin() {
    let mut fake = broker();
    for d in &mut fake.sockets {
        d.last_ack_recv_ms = Some(0);
    }
    fake.sockets[1].last_ack_recv_ms = Some(90_000);
    fake.sockets[3].last_ack_recv_ms = Some(5_000);
    // A TIME_WAIT minisocket in its FIN_WAIT2 substate: no tcp_info.
    fake.sockets.push(diag(7, v4(50001, 80), FinWait2, 0));
    let mut a = Attributor::new(fake, Namespaces::All);
    let now = 1_000 * 1_000_000_000;
    let snap = a.snapshot(now).sockets;
    assert_eq!(snap.len(), 5);
    let by_cookie = |c| snap.iter().find(|s| s.cookie == c).unwrap();
    assert_eq!(by_cookie(1).origin, Origin::Listener);
    assert_eq!(by_cookie(2).origin, Origin::Accepted);
    assert_eq!(by_cookie(2).since_ns, now - 90 * 1_000_000_000);
    assert_eq!(by_cookie(3).since_ns, now);
    assert!(
        snap.iter().all(|s| s.cookie != 7),
        "minisockets are left out"
    );
    assert_eq!(by_cookie(4).origin, Origin::Connected);
    assert_eq!(by_cookie(4).since_ns, now - 5 * 1_000_000_000);
    let dumps: Vec<(Family, bool)> = a.sys.dumps.iter().map(|&(_, f, _, i)| (f, i)).collect();
    assert_eq!(dumps, vec![(Family::Ipv4, true), (Family::Ipv6, true)]);
    let states = a.sys.dumps[0].2;
    assert_eq!(
        states & (1 << TimeWait as u32),
        0,
        "TIME_WAIT is not a full socket"
    );
    assert_ne!(states & (1 << CloseWait as u32), 0);
}

/// `ends` in namespace `netns`.
fn at(netns: u32, ends: Endpoints) -> Endpoints {
    Endpoints { netns, ..ends }
}

/// The pids and fds of each socket's owners.
fn holders(got: &[Ownership]) -> Vec<Vec<(u32, Vec<i32>)>> {
    got.iter()
        .map(|o| {
            o.owners
                .iter()
                .map(|w| (w.process.pid, w.fds.clone()))
                .collect()
        })
        .collect()
}

/// Waits for `ready` as the event loop does, a few seconds at most.
fn woken(ready: &tokio::sync::Notify) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(5), ready.notified()).await
    })
    .is_ok()
}

#[test]
fn the_worker_answers_in_the_order_asked_and_wakes_the_loop() {
    let w = worker::Worker::spawn(Attributor::new(broker(), Namespaces::All)).unwrap();
    let ready = w.ready();
    w.ask(vec![(v4(61616, 40005), CloseWait.into())]).unwrap();
    w.ask(vec![
        (v4(61616, 40002), CloseWait.into()),
        (v4(50000, 80), FinWait2.into()),
    ])
    .unwrap();
    assert!(woken(&ready));
    let first = w.answer().unwrap();
    assert_eq!(
        holders(&first.owners),
        vec![vec![(4242, vec![20]), (4300, vec![20])]]
    );
    let second = w.answer().unwrap();
    let held: Vec<HeldBy> = second.owners.iter().map(|o| o.held_by).collect();
    assert_eq!(held, vec![HeldBy::AcceptQueue, HeldBy::Orphan]);
    assert!(matches!(w.try_answer(), Ok(None)));
}

/// A system whose every lookup fails hard.
struct Broken;

impl System for Broken {
    fn namespaces(&mut self) -> Vec<u32> {
        Vec::new()
    }
    fn sockets(&mut self, _: &[u32], _: &[Family], _: u32, _: bool) -> Vec<Listing> {
        panic!("a bug in a lookup");
    }
    fn holders(&mut self, _: &HashSet<u64>) -> Vec<Holding> {
        Vec::new()
    }
    fn process(&mut self, _: u32) -> Option<ProcessInfo> {
        None
    }
    fn ephemeral_ports(&mut self) -> RangeInclusive<u16> {
        32768..=60999
    }
}

#[test]
fn a_worker_that_died_wakes_the_loop_and_says_so() {
    let w = worker::Worker::spawn(Attributor::new(Broken, Namespaces::All)).unwrap();
    let ready = w.ready();
    w.ask(vec![(v4(61616, 40001), CloseWait.into())]).unwrap();
    assert!(woken(&ready), "woken when the thread ended");
    assert!(w.try_answer().is_err());
    assert!(w.answer().is_err());
    assert!(w.ask(vec![(v4(61616, 40001), CloseWait.into())]).is_err());
}

/// The same 4-tuple in the tracer's namespace and two containers', each held by its own
/// process.
fn containers() -> Fake {
    let ends = v4(8080, 40000);
    Fake {
        own: OWN,
        namespaces: vec![NS_A, NS_B],
        sockets: vec![
            diag(1, at(OWN, ends), CloseWait, 300),
            diag(2, at(NS_A, ends), CloseWait, 301),
            diag(3, at(NS_B, ends), CloseWait, 302),
        ],
        holdings: [(30, 300), (10, 301), (20, 302)]
            .into_iter()
            .map(|(pid, inode)| Holding {
                pid,
                fds: vec![(inode, 5)],
                fd_count: 10,
            })
            .collect(),
        processes: vec![java(10), java(20), java(30)],
        ..Fake::default()
    }
}

#[test]
fn the_same_addresses_in_two_namespaces_are_two_sockets_with_two_owners() {
    let mut a = Attributor::new(containers(), Namespaces::All);
    let ends = v4(8080, 40000);
    let got = a.owners(&[
        (at(NS_B, ends), CloseWait.into()),
        (at(NS_A, ends), CloseWait.into()),
    ]);
    assert!(got.failed.is_empty());
    assert_eq!(
        holders(&got.owners),
        vec![vec![(20, vec![5])], vec![(10, vec![5])]]
    );
    let dumped: Vec<(u32, Family)> = a.sys.dumps.iter().map(|&(n, f, _, _)| (n, f)).collect();
    assert_eq!(
        dumped,
        vec![(NS_A, Family::Ipv4), (NS_B, Family::Ipv4)],
        "only the namespaces asked about, once each"
    );
    assert_eq!(a.sys.scans, 1, "one scan of /proc for every namespace");
}

#[test]
fn namespace_0_means_the_tracers_own() {
    let mut a = Attributor::new(containers(), Namespaces::All);
    let got = a.owners(&[(v4(8080, 40000), CloseWait.into())]);
    assert_eq!(got.owners[0].held_by, HeldBy::Fd);
    assert_eq!(holders(&got.owners), vec![vec![(30, vec![5])]]);
    assert_eq!(a.sys.dumps[0].0, 0);
}

#[test]
fn a_socket_in_a_namespace_nothing_holds_is_unreachable_not_gone() {
    let mut fake = containers();
    fake.namespaces = vec![NS_A];
    let mut a = Attributor::new(fake, Namespaces::All);
    let got = a.owners(&[
        (at(NS_B, v4(8080, 40000)), CloseWait.into()),
        (at(NS_A, v4(8080, 49999)), CloseWait.into()),
    ]);
    assert!(
        got.failed.is_empty(),
        "nothing failed: the namespace is gone"
    );
    let held: Vec<HeldBy> = got.owners.iter().map(|o| o.held_by).collect();
    assert_eq!(held, vec![HeldBy::NetnsUnreachable, HeldBy::Gone]);
    assert!(got.owners[0].owners.is_empty());
}

#[test]
fn a_namespace_that_cannot_be_listed_leaves_its_sockets_unknown_and_says_why() {
    let mut fake = containers();
    fake.namespaces = vec![NS_A];
    fake.failing = vec![NS_B];
    let mut a = Attributor::new(fake, Namespaces::All);
    let ends = v4(8080, 40000);
    let got = a.owners(&[
        (at(NS_B, ends), CloseWait.into()),
        (at(NS_A, ends), CloseWait.into()),
    ]);
    let held: Vec<HeldBy> = got.owners.iter().map(|o| o.held_by).collect();
    assert_eq!(held, vec![HeldBy::Unknown, HeldBy::Fd]);
    assert_eq!(got.failed.len(), 1);
    let why = got.failed[0].to_string();
    assert!(why.contains(&format!("network namespace {NS_B}")), "{why}");
}

#[test]
fn snapshot_covers_every_namespace_and_guesses_origin_in_each() {
    let listener = Endpoints {
        saddr: Ipv4Addr::UNSPECIFIED.into(),
        ..v4(8080, 0)
    };
    // Port 8080 is a service in the tracer's namespace and in A, not in B.
    let mut fake = Fake {
        own: OWN,
        namespaces: vec![NS_A, NS_B],
        failing: vec![NS_B + 1],
        sockets: vec![
            diag(1, at(OWN, listener), Listen, 400),
            diag(2, at(NS_A, listener), Listen, 401),
            diag(3, at(NS_A, v4(8080, 40000)), Established, 402),
            diag(4, at(NS_B, v4(8080, 40000)), Established, 403),
        ],
        ..Fake::default()
    };
    for d in &mut fake.sockets {
        d.last_ack_recv_ms = Some(0);
    }
    let mut a = Attributor::new(fake, Namespaces::All);
    let snap = a.snapshot(1_000);
    let got: Vec<(u64, u32, u64, Origin)> = snap
        .sockets
        .iter()
        .map(|s| (s.cookie, s.ends.netns, s.inode, s.origin))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, OWN, 400, Origin::Listener),
            (2, NS_A, 401, Origin::Listener),
            (3, NS_A, 402, Origin::Accepted),
            (4, NS_B, 403, Origin::Unknown),
        ]
    );
    assert_eq!(
        snap.failed.len(),
        1,
        "the namespace that failed, the rest listed"
    );
    let mut dumped: Vec<(u32, Family)> = a.sys.dumps.iter().map(|&(n, f, _, _)| (n, f)).collect();
    dumped.dedup_by_key(|d| d.0);
    assert_eq!(
        dumped.iter().map(|d| d.0).collect::<Vec<_>>(),
        vec![OWN, NS_A, NS_B]
    );
}

#[test]
fn snapshot_of_the_own_namespace_only_says_namespace_0() {
    let mut fake = containers();
    for d in &mut fake.sockets {
        d.last_ack_recv_ms = Some(0);
    }
    let mut a = Attributor::new(fake, Namespaces::OwnOnly);
    let snap = a.snapshot(1_000);
    let got: Vec<(u64, u32)> = snap
        .sockets
        .iter()
        .map(|s| (s.cookie, s.ends.netns))
        .collect();
    assert_eq!(got, vec![(1, 0)]);
    assert!(a.sys.dumps.iter().all(|d| d.0 == 0));
}

#[test]
fn procfs_scan_finds_socket_links_and_reads_process_files() {
    let root = std::env::temp_dir().join(format!("tracer-procfs-test-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    for (pid, links) in [
        (
            "4242",
            &[
                ("3", "socket:[100]"),
                ("17", "socket:[101]"),
                ("5", "/var/log/x"),
            ][..],
        ),
        ("77", &[("0", "/dev/null")][..]),
    ] {
        let dir = root.join(pid);
        fs::create_dir_all(dir.join("fd")).unwrap();
        for (fd, target) in links {
            symlink(target, dir.join("fd").join(fd)).unwrap();
        }
        // Real files of this test process stand for the ones procfs parses.
        for f in ["status", "limits", "stat"] {
            fs::copy(format!("/proc/self/{f}"), dir.join(f)).unwrap();
        }
        fs::write(dir.join("cmdline"), b"java\0-jar\0activemq.jar\0").unwrap();
        fs::write(dir.join("cgroup"), b"0::/system.slice/activemq.service\n").unwrap();
    }
    fs::create_dir_all(root.join("self")).unwrap();
    fs::create_dir_all(root.join("999")).unwrap(); // exited: no fd directory

    let proc = ProcFs::at(&root);
    let got = FdIndex::default().holders(&proc, &[101, 100, 555].into_iter().collect());
    assert_eq!(
        got,
        vec![Holding {
            pid: 4242,
            fds: vec![(100, 3), (101, 17)],
            fd_count: 3
        }]
    );
    let info = proc.process(4242).unwrap();
    assert_eq!(info.cmdline, "java -jar activemq.jar");
    assert_eq!(
        info.cgroup.as_deref(),
        Some("/system.slice/activemq.service")
    );
    let own = ProcFs::default().process(std::process::id()).unwrap();
    assert_eq!(
        (info.comm, info.uid, info.fd_limit),
        (own.comm, own.uid, own.fd_limit)
    );
    assert_eq!(proc.process(999), None);
    assert_eq!(proc.fd_count(999), None);
    assert!(ProcFs::default()
        .fd_count(std::process::id())
        .is_some_and(|n| n >= 3));
    fs::remove_dir_all(&root).unwrap();
}

/// Brings up the loopback device of the calling thread's network namespace.
fn loopback_up() -> io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: a plain socket call; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data, valid when zeroed.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo") {
        *d = *s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the ifreq we pass.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The endpoints of `stream` as sock_diag gives them, in namespace `netns`.
fn ends_of(netns: u32, stream: &std::net::TcpStream) -> Endpoints {
    let (local, peer) = (stream.local_addr().unwrap(), stream.peer_addr().unwrap());
    Endpoints {
        netns,
        family: Family::Ipv4,
        saddr: local.ip(),
        sport: local.port(),
        daddr: peer.ip(),
        dport: peer.port(),
    }
}

/// A real namespace, made by a thread with `unshare`, found through a `/proc` whose one
/// process is that thread (discovery looks at thread-group leaders only), listed from a
/// socket made inside it, and unreachable once the thread is gone although its sockets
/// keep it alive.
#[test]
fn a_real_namespace_is_found_listed_and_attributed_as_root() {
    use std::{
        net::{TcpListener, TcpStream},
        os::{
            fd::AsRawFd,
            unix::fs::{symlink, MetadataExt},
        },
        sync::mpsc,
        time::{Duration, Instant},
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: creating and entering network namespaces needs root");
        return;
    }
    let (made_tx, made_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let made = (|| -> io::Result<_> {
            // SAFETY: unshare changes only this thread's network namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            loopback_up()?;
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let client = TcpStream::connect(listener.local_addr()?)?;
            let (server, _) = listener.accept()?;
            // SAFETY: gettid has no preconditions.
            Ok((unsafe { libc::gettid() }, listener, server, client))
        })();
        made_tx.send(made).unwrap();
        // The thread is what /proc shows the namespace through.
        let _ = done_rx.recv();
    });
    let (tid, listener, server, client) = made_rx.recv().unwrap().expect("a namespace");
    let ns_file = format!("/proc/{}/task/{tid}/ns/net", std::process::id());
    let netns = fs::metadata(&ns_file).unwrap().ino() as u32;
    let own = netns::own();
    assert_ne!(netns, own);

    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("proc/1/ns")).unwrap();
    symlink(&ns_file, dir.path().join("proc/1/ns/net")).unwrap();
    let host = Host {
        proc: ProcFs::default(),
        index: FdIndex::default(),
        netns: netns::Registry::at(dir.path().join("proc"), dir.path().join("run")),
        own,
    };
    let mut a = Attributor::new(host, Namespaces::All);

    let ends = ends_of(netns, &server);
    drop(client);
    let snap = a.snapshot(0);
    assert!(snap.failed.is_empty(), "{:?}", snap.failed);
    let listener_inode = fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd()))
        .unwrap()
        .ino();
    let listed = snap
        .sockets
        .iter()
        .find(|s| s.ends.netns == netns && s.state == Listen.into())
        .expect("the namespace's listener");
    assert_eq!(
        (listed.inode, listed.origin),
        (listener_inode, Origin::Listener)
    );
    assert!(
        snap.sockets
            .iter()
            .all(|s| s.ends.netns == netns || s.ends.netns == own),
        "each socket says its namespace"
    );

    // The client closed: the server's socket waits in CLOSE_WAIT for its process.
    let deadline = Instant::now() + Duration::from_secs(5);
    let got = loop {
        let got = a.owners(&[
            (ends, CloseWait.into()),
            (Endpoints { netns: own, ..ends }, CloseWait.into()),
        ]);
        if got.owners[0].held_by != HeldBy::Gone || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(got.failed.is_empty(), "{:?}", got.failed);
    assert_eq!(got.owners[0].held_by, HeldBy::Fd);
    assert_eq!(
        holders(&got.owners[..1]),
        vec![vec![(std::process::id(), vec![server.as_raw_fd()])]]
    );
    assert_eq!(
        got.owners[1].held_by,
        HeldBy::Gone,
        "the same addresses in the tracer's namespace are another socket"
    );

    drop(done_tx);
    holder.join().unwrap();
    let got = a.owners(&[(ends, CloseWait.into())]);
    assert_eq!(got.owners[0].held_by, HeldBy::NetnsUnreachable);
    // The same through the real /proc and /run/netns.
    assert!(matches!(
        netns::Registry::default().open(&[netns])[..],
        [Ok(None)]
    ));
    drop((listener, server));
}
