use std::{
    fs,
    net::{Ipv4Addr, Ipv6Addr},
    os::unix::fs::symlink,
};

use super::*;
use crate::model::{Origin, ProcessInfo};
use TcpState::*;

/// A machine made of lists.
#[derive(Default)]
struct Fake {
    sockets: Vec<DiagSocket>,
    holdings: Vec<Holding>,
    processes: Vec<ProcessInfo>,
    dumps: Vec<(Family, u32, bool)>,
    scans: usize,
}

impl System for Fake {
    fn sockets(&mut self, family: Family, states: u32, info: bool) -> io::Result<Vec<DiagSocket>> {
        self.dumps.push((family, states, info));
        Ok(self
            .sockets
            .iter()
            .filter(|d| d.ends.family == family && states & state_bit(d.state) != 0)
            .copied()
            .collect())
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

    fn fd_count(&mut self, pid: u32) -> Option<usize> {
        self.holdings
            .iter()
            .find(|h| h.pid == pid)
            .map(|h| h.fd_count)
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
    let mut a = Attributor::new(broker());
    let got = a.owners(&[(v4(61616, 40001), CloseWait.into())]).unwrap();
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
            Family::Ipv4,
            1 << Listen as u32 | 1 << CloseWait as u32,
            false
        )]
    );
}

#[test]
fn lists_every_holder_of_a_shared_socket() {
    let mut a = Attributor::new(broker());
    let got = a.owners(&[(v4(61616, 40005), CloseWait.into())]).unwrap();
    let pids: Vec<(u32, Vec<i32>)> = got[0]
        .owners
        .iter()
        .map(|o| (o.process.pid, o.fds.clone()))
        .collect();
    assert_eq!(pids, vec![(4242, vec![20]), (4300, vec![20])]);
}

#[test]
fn a_socket_never_accepted_belongs_to_the_listener() {
    let mut a = Attributor::new(broker());
    let got = a.owners(&[(v4(61616, 40002), CloseWait.into())]).unwrap();
    assert_eq!(got[0].held_by, HeldBy::AcceptQueue);
    assert_eq!(got[0].owners[0].process.pid, 4242);
    assert_eq!(got[0].owners[0].fds, vec![3], "the listener's fd");
}

#[test]
fn orphans_gone_and_unheld_sockets_say_so() {
    let mut fake = broker();
    fake.sockets.push(diag(6, v4(61616, 40006), CloseWait, 106));
    let mut a = Attributor::new(fake);
    let got = a
        .owners(&[
            (v4(50000, 80), FinWait2.into()),
            (v4(61616, 49999), CloseWait.into()),
            (v4(61616, 40006), CloseWait.into()),
        ])
        .unwrap();
    let held: Vec<HeldBy> = got.iter().map(|o| o.held_by).collect();
    assert_eq!(held, vec![HeldBy::Orphan, HeldBy::Gone, HeldBy::Unknown]);
    assert!(got.iter().all(|o| o.owners.is_empty()));
}

#[test]
fn a_process_that_exits_mid_lookup_is_skipped() {
    let mut fake = broker();
    fake.processes.retain(|p| p.pid != 4300);
    let mut a = Attributor::new(fake);
    let got = a.owners(&[(v4(61616, 40005), CloseWait.into())]).unwrap();
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
    let mut a = Attributor::new(fake);
    let got = a.owners(&[(child, Established.into())]).unwrap();
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
    let mut a = Attributor::new(fake);
    let now = 1_000 * 1_000_000_000;
    let snap = a.snapshot(now).unwrap();
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
    let dumps: Vec<(Family, bool)> = a.sys.dumps.iter().map(|&(f, _, i)| (f, i)).collect();
    assert_eq!(dumps, vec![(Family::Ipv4, true), (Family::Ipv6, true)]);
    let states = a.sys.dumps[0].1;
    assert_eq!(
        states & (1 << TimeWait as u32),
        0,
        "TIME_WAIT is not a full socket"
    );
    assert_ne!(states & (1 << CloseWait as u32), 0);
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
    let got = proc.holders(&[101, 100, 555].into_iter().collect());
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
