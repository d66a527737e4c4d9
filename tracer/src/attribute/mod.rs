//! Stage 4: names the processes that own sockets, the way `ss -p` does: sock_diag gives
//! each socket's inode, and `/proc/<pid>/fd` says which processes hold that inode, through
//! an index kept between lookups and refreshed incrementally ([`fd_index`]).
//!
//! [`container`] reads the container or service an owner runs in from its cgroup, and
//! [`Selection`] picks stuck sockets by owner.
//!
//! This runs only for sockets being flagged (and once at start, for the snapshot), never
//! per event, and in `watch` on a thread of its own ([`worker`]). The pid current at a
//! transition is not used as the owner: transitions such as ESTABLISHED -> CLOSE_WAIT run
//! in softirq, in whatever task happened to be running.
//!
//! Each network namespace has its own sockets, and sock_diag lists only those of the
//! namespace its netlink socket was made in: a socket is looked up in the namespace its
//! endpoints say ([`netns`] finds and enters them), and the snapshot lists every one.

pub mod container;
pub mod fd_index;
pub mod netns;
pub mod procfs;
mod select;
pub mod sock_diag;
pub mod worker;

use std::{
    collections::{HashMap, HashSet},
    io,
    ops::RangeInclusive,
};

use tracer_common::TcpState;

use crate::model::{
    Endpoints, Family, HeldBy, Origin, Owner, Ownership, ProcessInfo, SnapshotSocket, State,
};
use fd_index::FdIndex;
use netns::NetnsError;
use procfs::{Holding, ProcFs};
pub use select::Selection;
use sock_diag::{Diag, DiagSocket};

/// What listing the sockets of one network namespace gave.
#[derive(Debug)]
pub enum Listing {
    /// The sockets, each with the namespace asked for in its endpoints.
    Sockets(Vec<DiagSocket>),
    /// The namespace can no longer be entered: nothing on the host holds it.
    Unreachable,
    /// Entering the namespace or listing its sockets failed.
    Failed(AttributeError),
}

/// Where attribution gets its facts; [`Host`] reads the running kernel, tests use fakes.
pub trait System {
    /// Every network namespace on the host (inodes), the tracer's own included.
    fn namespaces(&mut self) -> Vec<u32>;
    /// For each of `namespaces`, in order, its TCP sockets of `families` in `states` (a
    /// mask of `1 << state`), with tcp_info's last-ACK age when `info`. Namespace 0
    /// stands for the tracer's own, and its sockets then say 0.
    fn sockets(
        &mut self,
        namespaces: &[u32],
        families: &[Family],
        states: u32,
        info: bool,
    ) -> Vec<Listing>;
    /// The processes holding descriptors to any of `inodes`.
    fn holders(&mut self, inodes: &HashSet<u64>) -> Vec<Holding>;
    /// What is known of a process, if it still exists.
    fn process(&mut self, pid: u32) -> Option<ProcessInfo>;
    /// Local ports the kernel picks for connect() (`ip_local_port_range`).
    fn ephemeral_ports(&mut self) -> RangeInclusive<u16>;
}

/// The running machine: sock_diag netlink in each network namespace, and `/proc`, whose
/// socket holders it keeps an index of.
#[derive(Debug)]
pub struct Host {
    proc: ProcFs,
    index: FdIndex,
    netns: netns::Registry,
    /// The tracer's own namespace: listed through a plain socket, no helper thread.
    own: u32,
}

impl Default for Host {
    fn default() -> Self {
        Self {
            proc: ProcFs::default(),
            index: FdIndex::default(),
            netns: netns::Registry::default(),
            own: netns::own(),
        }
    }
}

impl System for Host {
    fn namespaces(&mut self) -> Vec<u32> {
        let mut all = self.netns.all();
        if !all.contains(&self.own) {
            all.push(self.own);
        }
        all
    }

    fn sockets(
        &mut self,
        namespaces: &[u32],
        families: &[Family],
        states: u32,
        info: bool,
    ) -> Vec<Listing> {
        let elsewhere: Vec<u32> = namespaces
            .iter()
            .copied()
            .filter(|&n| n != 0 && n != self.own)
            .collect();
        let mut entered: HashMap<u32, Result<Diag, Listing>> = HashMap::new();
        let mut files = Vec::new();
        for (&n, opened) in elsewhere.iter().zip(self.netns.open(&elsewhere)) {
            match opened {
                Ok(Some(file)) => files.push((n, file)),
                Ok(None) => {
                    entered.insert(n, Err(Listing::Unreachable));
                }
                Err(e) => {
                    entered.insert(n, Err(Listing::Failed(e.into())));
                }
            }
        }
        let diags = netns::inside(&files, Diag::new);
        for (&(n, _), diag) in files.iter().zip(diags) {
            entered.insert(n, diag.map_err(|e| Listing::Failed(e.into())));
        }

        namespaces
            .iter()
            .map(|&netns| {
                let diag = match entered.remove(&netns) {
                    Some(d) => d,
                    None => Diag::new(netns)
                        .map_err(|source| Listing::Failed(AttributeError::Open { netns, source })),
                };
                let mut diag = match diag {
                    Ok(d) => d,
                    Err(listing) => return listing,
                };
                let mut sockets = Vec::new();
                for &family in families {
                    match diag.dump(family, states, info) {
                        Ok(s) => sockets.extend(s),
                        Err(source) => {
                            return Listing::Failed(AttributeError::Dump {
                                netns,
                                family,
                                source,
                            })
                        }
                    }
                }
                Listing::Sockets(sockets)
            })
            .collect()
    }

    fn holders(&mut self, inodes: &HashSet<u64>) -> Vec<Holding> {
        self.index.holders(&self.proc, inodes)
    }

    fn process(&mut self, pid: u32) -> Option<ProcessInfo> {
        self.proc.process(pid)
    }

    fn ephemeral_ports(&mut self) -> RangeInclusive<u16> {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| {
                let mut it = s.split_whitespace().map(|p| p.parse::<u16>());
                Some(it.next()?.ok()?..=it.next()?.ok()?)
            })
            .unwrap_or(32768..=60999)
    }
}

/// Why the sockets of a network namespace could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum AttributeError {
    #[error("opening a sock_diag netlink socket failed: {source}")]
    Open { netns: u32, source: io::Error },
    #[error(
        "listing {} TCP sockets through sock_diag netlink{} failed: {source}",
        family.name(),
        in_netns(*netns)
    )]
    Dump {
        netns: u32,
        family: Family,
        source: io::Error,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

fn in_netns(netns: u32) -> String {
    match netns {
        0 => String::new(),
        n => format!(" in network namespace {n}"),
    }
}

/// Which network namespaces the start-up snapshot covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Namespaces {
    /// Every namespace on the host, each socket saying its own: for a probe that reads
    /// each socket's namespace.
    All,
    /// The tracer's own only, every socket saying 0 (unknown): for a probe that cannot
    /// read namespaces, whose transitions all say 0 and must match the snapshot's sockets.
    OwnOnly,
}

/// The owners [`Attributor::owners`] found.
#[derive(Debug, Default)]
pub struct Attribution {
    /// One per socket asked about, in order.
    pub owners: Vec<Ownership>,
    /// Why some namespaces could not be looked into; their sockets are [`HeldBy::Unknown`].
    pub failed: Vec<AttributeError>,
}

/// The sockets [`Attributor::snapshot`] found.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub sockets: Vec<SnapshotSocket>,
    /// Why some namespaces could not be listed; their sockets are not in `sockets`.
    pub failed: Vec<AttributeError>,
}

/// Names owners through a [`System`].
#[derive(Debug)]
pub struct Attributor<S> {
    sys: S,
    namespaces: Namespaces,
}

impl<S: System> Attributor<S> {
    /// An attributor reading `sys`, whose snapshot covers `namespaces`.
    pub fn new(sys: S, namespaces: Namespaces) -> Self {
        Self { sys, namespaces }
    }

    /// Finds who owns each socket (endpoints and state as the table knows them), with one
    /// sock_diag dump per namespace asked about and family, and one scan of the processes.
    /// A socket is looked for in the namespace its endpoints say (0: the tracer's own).
    pub fn owners(&mut self, sockets: &[(Endpoints, State)]) -> Attribution {
        if sockets.is_empty() {
            return Attribution::default();
        }
        let states = sockets
            .iter()
            .fold(1u32 << TcpState::Listen as u32, |m, (_, s)| {
                m | state_bit(*s)
            });
        let families: Vec<Family> = [Family::Ipv4, Family::Ipv6]
            .into_iter()
            .filter(|&f| sockets.iter().any(|(e, _)| e.family == f))
            .collect();
        let mut namespaces: Vec<u32> = sockets.iter().map(|(e, _)| e.netns).collect();
        namespaces.sort_unstable();
        namespaces.dedup();
        let listings = self.sys.sockets(&namespaces, &families, states, false);

        let mut failed = Vec::new();
        // Per namespace: its sockets, or how a socket asked about there is held.
        let mut diag: HashMap<u32, Result<Vec<DiagSocket>, HeldBy>> = HashMap::new();
        for (netns, listing) in namespaces.into_iter().zip(listings) {
            let found = match listing {
                Listing::Sockets(s) => Ok(s),
                Listing::Unreachable => Err(HeldBy::NetnsUnreachable),
                Listing::Failed(e) => {
                    failed.push(e);
                    Err(HeldBy::Unknown)
                }
            };
            diag.insert(netns, found);
        }
        // Endpoints carry the namespace: the same addresses in two namespaces differ.
        let by_ends: HashMap<Endpoints, &DiagSocket> = diag
            .values()
            .flat_map(|d| d.iter().flatten())
            .filter(|d| d.state != TcpState::Listen.into())
            .map(|d| (d.ends, d))
            .collect();

        // Which inode stands for each socket, and how it is held.
        let plan: Vec<(HeldBy, u64)> = sockets
            .iter()
            .map(|(ends, state)| {
                let in_netns = match &diag[&ends.netns] {
                    Ok(d) => d,
                    Err(held_by) => return (*held_by, 0),
                };
                match by_ends.get(ends) {
                    None => (HeldBy::Gone, 0),
                    Some(d) if d.inode != 0 => (HeldBy::Fd, d.inode),
                    Some(_) if may_wait_for_accept(*state) => match listener_of(in_netns, ends) {
                        Some(l) => (HeldBy::AcceptQueue, l.inode),
                        None => (HeldBy::Unknown, 0),
                    },
                    Some(_) => (HeldBy::Orphan, 0),
                }
            })
            .collect();
        let wanted: HashSet<u64> = plan.iter().map(|&(_, i)| i).filter(|&i| i != 0).collect();
        let holdings = if wanted.is_empty() {
            Vec::new()
        } else {
            self.sys.holders(&wanted)
        };
        let mut processes: HashMap<u32, Option<ProcessInfo>> = HashMap::new();
        let owners = plan
            .into_iter()
            .map(|(held_by, inode)| {
                let mut owners = Vec::new();
                for h in holdings.iter().filter(|_| inode != 0) {
                    let fds: Vec<i32> = h
                        .fds
                        .iter()
                        .filter(|&&(i, _)| i == inode)
                        .map(|&(_, fd)| fd)
                        .collect();
                    if fds.is_empty() {
                        continue;
                    }
                    let info = processes
                        .entry(h.pid)
                        .or_insert_with(|| self.sys.process(h.pid));
                    if let Some(process) = info {
                        owners.push(Owner {
                            process: process.clone(),
                            fds,
                            fd_count: h.fd_count,
                        });
                    }
                }
                let held_by = match held_by {
                    HeldBy::Fd | HeldBy::AcceptQueue if owners.is_empty() => HeldBy::Unknown,
                    other => other,
                };
                Ownership {
                    held_by,
                    owners,
                    last_io: None,
                }
            })
            .collect();
        Attribution { owners, failed }
    }

    /// Prepares what lookups build on (the index of socket holders reads every process
    /// once), so that the first flags of a run wait no longer than later ones.
    pub fn warm_up(&mut self) {
        self.sys.holders(&HashSet::new());
    }

    /// The TCP sockets that exist now (both families, every state a full socket can be
    /// in, in the namespaces this attributor covers), as the table's start-up snapshot at
    /// monotonic `now_ns`. Entry times are lower bounds: `now_ns`, or earlier where
    /// tcp_info proves the socket was already in its state (the last ACK received, for
    /// CLOSE_WAIT and FIN_WAIT2, which are entered on an arriving segment and see no ACK
    /// before it). A namespace that vanished since it was found is simply absent.
    pub fn snapshot(&mut self, now_ns: u64) -> Snapshot {
        let states = TcpState::ALL
            .into_iter()
            .filter(|s| {
                !matches!(
                    s,
                    TcpState::TimeWait
                        | TcpState::Close
                        | TcpState::NewSynRecv
                        | TcpState::BoundInactive
                )
            })
            .fold(0u32, |m, s| m | state_bit(s.into()));
        let namespaces = match self.namespaces {
            Namespaces::All => self.sys.namespaces(),
            Namespaces::OwnOnly => vec![0],
        };
        let families = [Family::Ipv4, Family::Ipv6];
        let mut diag = Vec::new();
        let mut failed = Vec::new();
        for listing in self.sys.sockets(&namespaces, &families, states, true) {
            match listing {
                Listing::Sockets(s) => diag.extend(s),
                Listing::Unreachable => {}
                Listing::Failed(e) => failed.push(e),
            }
        }
        // A listener says which local ports are services in its own namespace only.
        let listening: HashSet<(u32, Family, u16)> = diag
            .iter()
            .filter(|d| d.state == TcpState::Listen.into())
            .map(|d| (d.ends.netns, d.ends.family, d.ends.sport))
            .collect();
        let ephemeral = self.sys.ephemeral_ports();
        let sockets = diag
            .iter()
            // TIME_WAIT minisockets (an orphan's FIN_WAIT2 ends as one) come without
            // tcp_info and leave without a transition: not for the table.
            .filter(|d| d.last_ack_recv_ms.is_some())
            .map(|d| {
                let origin = if d.state == TcpState::Listen.into() {
                    Origin::Listener
                } else if listening.contains(&(d.ends.netns, d.ends.family, d.ends.sport)) {
                    Origin::Accepted
                } else if ephemeral.contains(&d.ends.sport) {
                    Origin::Connected
                } else {
                    Origin::Unknown
                };
                let proven_ms = match d.state.known() {
                    Some(TcpState::CloseWait | TcpState::FinWait2) => d.last_ack_recv_ms,
                    _ => None,
                };
                let since_ns = now_ns.saturating_sub(u64::from(proven_ms.unwrap_or(0)) * 1_000_000);
                SnapshotSocket {
                    cookie: d.cookie,
                    ends: d.ends,
                    inode: d.inode,
                    state: d.state,
                    since_ns,
                    origin,
                }
            })
            .collect();
        Snapshot { sockets, failed }
    }
}

fn state_bit(s: State) -> u32 {
    1u32.checked_shl(s.0.into()).unwrap_or(0)
}

/// States in which a socket with no file may still be waiting in an accept queue.
fn may_wait_for_accept(s: State) -> bool {
    matches!(
        s.known(),
        Some(TcpState::SynRecv | TcpState::Established | TcpState::CloseWait)
    )
}

/// The listener a connection to `ends` was accepted on: same family and port, and the
/// same address or a wildcard one.
fn listener_of<'a>(diag: &'a [DiagSocket], ends: &Endpoints) -> Option<&'a DiagSocket> {
    let listeners = diag.iter().filter(|d| {
        d.state == TcpState::Listen.into()
            && d.ends.family == ends.family
            && d.ends.sport == ends.sport
    });
    let mut wildcard = None;
    for l in listeners {
        if l.ends.saddr == ends.saddr {
            return Some(l);
        }
        if l.ends.saddr.is_unspecified() {
            wildcard = Some(l);
        }
    }
    wildcard
}

#[cfg(test)]
pub(crate) mod tests;
