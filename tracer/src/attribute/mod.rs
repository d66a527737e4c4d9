//! Stage 4: names the processes that own sockets, the way `ss -p` does: sock_diag gives
//! each socket's inode, and `/proc/<pid>/fd` says which processes hold that inode.
//!
//! [`container`] reads the container or service an owner runs in from its cgroup, and
//! [`Selection`] picks stuck sockets by owner.
//!
//! This runs only for sockets being flagged (and once at start, for the snapshot), never
//! per event. The pid current at a transition is not used as the owner: transitions such
//! as ESTABLISHED -> CLOSE_WAIT run in softirq, in whatever task happened to be running.

pub mod container;
pub mod netns;
pub mod procfs;
mod select;
pub mod sock_diag;

use std::{
    collections::{HashMap, HashSet},
    io,
    ops::RangeInclusive,
};

use tracer_common::TcpState;

use crate::model::{
    Endpoints, Family, HeldBy, Origin, Owner, Ownership, ProcessInfo, SnapshotSocket, State,
};
use procfs::{Holding, ProcFs};
pub use select::Selection;
use sock_diag::DiagSocket;

/// Where attribution gets its facts; [`Host`] reads the running kernel, tests use fakes.
pub trait System {
    /// The TCP sockets of `family` in `states` (a mask of `1 << state`), with tcp_info's
    /// last-ACK age when `info`.
    fn sockets(&mut self, family: Family, states: u32, info: bool) -> io::Result<Vec<DiagSocket>>;
    /// The processes holding descriptors to any of `inodes`.
    fn holders(&mut self, inodes: &HashSet<u64>) -> Vec<Holding>;
    /// What is known of a process, if it still exists.
    fn process(&mut self, pid: u32) -> Option<ProcessInfo>;
    /// Local ports the kernel picks for connect() (`ip_local_port_range`).
    fn ephemeral_ports(&mut self) -> RangeInclusive<u16>;
    /// How many descriptors a process has open now.
    fn fd_count(&mut self, pid: u32) -> Option<usize>;
}

/// The running machine: sock_diag netlink and `/proc`.
#[derive(Debug, Default)]
pub struct Host {
    proc: ProcFs,
}

impl System for Host {
    fn sockets(&mut self, family: Family, states: u32, info: bool) -> io::Result<Vec<DiagSocket>> {
        sock_diag::dump(family, states, info)
    }

    fn holders(&mut self, inodes: &HashSet<u64>) -> Vec<Holding> {
        self.proc.holders(inodes)
    }

    fn process(&mut self, pid: u32) -> Option<ProcessInfo> {
        self.proc.process(pid)
    }

    fn fd_count(&mut self, pid: u32) -> Option<usize> {
        self.proc.fd_count(pid)
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

/// Why attribution failed.
#[derive(Debug, thiserror::Error)]
#[error("listing {} TCP sockets through sock_diag netlink failed: {source}", family.name())]
pub struct AttributeError {
    family: Family,
    source: io::Error,
}

/// Names owners through a [`System`].
#[derive(Debug)]
pub struct Attributor<S> {
    sys: S,
}

impl<S: System> Attributor<S> {
    /// An attributor reading `sys`.
    pub fn new(sys: S) -> Self {
        Self { sys }
    }

    /// Finds who owns each socket (endpoints and state as the table knows them), with one
    /// sock_diag dump per family and one scan of the processes.
    pub fn owners(
        &mut self,
        sockets: &[(Endpoints, State)],
    ) -> Result<Vec<Ownership>, AttributeError> {
        if sockets.is_empty() {
            return Ok(Vec::new());
        }
        let states = sockets
            .iter()
            .fold(1u32 << TcpState::Listen as u32, |m, (_, s)| {
                m | state_bit(*s)
            });
        let mut diag = Vec::new();
        for family in [Family::Ipv4, Family::Ipv6] {
            if sockets.iter().any(|(e, _)| e.family == family) {
                diag.extend(self.dump(family, states, false)?);
            }
        }
        let by_ends: HashMap<Endpoints, &DiagSocket> = diag
            .iter()
            .filter(|d| d.state != TcpState::Listen.into())
            .map(|d| (d.ends, d))
            .collect();

        // Which inode stands for each socket, and how it is held.
        let plan: Vec<(HeldBy, u64)> = sockets
            .iter()
            .map(|(ends, state)| match by_ends.get(ends) {
                None => (HeldBy::Gone, 0),
                Some(d) if d.inode != 0 => (HeldBy::Fd, d.inode),
                Some(_) if may_wait_for_accept(*state) => match listener_of(&diag, ends) {
                    Some(l) => (HeldBy::AcceptQueue, l.inode),
                    None => (HeldBy::Unknown, 0),
                },
                Some(_) => (HeldBy::Orphan, 0),
            })
            .collect();
        let wanted: HashSet<u64> = plan.iter().map(|&(_, i)| i).filter(|&i| i != 0).collect();
        let holdings = if wanted.is_empty() {
            Vec::new()
        } else {
            self.sys.holders(&wanted)
        };
        let mut processes: HashMap<u32, Option<ProcessInfo>> = HashMap::new();
        Ok(plan
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
            .collect())
    }

    /// The TCP sockets that exist now (both families, every state a full socket can be
    /// in), as the table's start-up snapshot at monotonic `now_ns`. Entry times are lower
    /// bounds: `now_ns`, or earlier where tcp_info proves the socket was already in its
    /// state (the last ACK received, for CLOSE_WAIT and FIN_WAIT2, which are entered on an
    /// arriving segment and see no ACK before it).
    pub fn snapshot(&mut self, now_ns: u64) -> Result<Vec<SnapshotSocket>, AttributeError> {
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
        let mut diag = self.dump(Family::Ipv4, states, true)?;
        diag.extend(self.dump(Family::Ipv6, states, true)?);
        let listening: HashSet<(Family, u16)> = diag
            .iter()
            .filter(|d| d.state == TcpState::Listen.into())
            .map(|d| (d.ends.family, d.ends.sport))
            .collect();
        let ephemeral = self.sys.ephemeral_ports();
        Ok(diag
            .iter()
            // TIME_WAIT minisockets (an orphan's FIN_WAIT2 ends as one) come without
            // tcp_info and leave without a transition: not for the table.
            .filter(|d| d.last_ack_recv_ms.is_some())
            .map(|d| {
                let origin = if d.state == TcpState::Listen.into() {
                    Origin::Listener
                } else if listening.contains(&(d.ends.family, d.ends.sport)) {
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
                    state: d.state,
                    since_ns,
                    origin,
                }
            })
            .collect())
    }

    /// How many descriptors process `pid` has open now.
    pub fn fd_count(&mut self, pid: u32) -> Option<usize> {
        self.sys.fd_count(pid)
    }

    fn dump(
        &mut self,
        family: Family,
        states: u32,
        info: bool,
    ) -> Result<Vec<DiagSocket>, AttributeError> {
        self.sys
            .sockets(family, states, info)
            .map_err(|source| AttributeError { family, source })
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
