//! The periodic summary: stuck sockets grouped by owning process, state and service port,
//! with one line of advice per state.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
};

use serde::Serialize;
use tracer_common::TcpState;

use crate::{
    attribute::container::Container,
    model::{IoOp, Origin, Ownership, Socket, State},
};

/// The port that names the service a socket belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServicePort {
    /// Accepted (or unknown origin): the local port, `on :61616`.
    Local(u16),
    /// Opened by connect(): the remote end, `to 10.0.0.5:5432`.
    Remote(IpAddr, u16),
}

impl ServicePort {
    /// The service port of `s`.
    pub fn of(s: &Socket) -> Self {
        match s.origin {
            Origin::Connected => ServicePort::Remote(s.ends.daddr, s.ends.dport),
            Origin::Accepted | Origin::Listener | Origin::Unknown => {
                ServicePort::Local(s.ends.sport)
            }
        }
    }
}

/// `:61616` for a local port, `10.0.0.5:5432` for a remote end.
impl fmt::Display for ServicePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ServicePort::Local(port) => write!(f, ":{port}"),
            ServicePort::Remote(addr, port) => SocketAddr::new(addr, port).fmt(f),
        }
    }
}

/// What puts stuck sockets in one group: the owner (the first holder, if one was found), the
/// state, the network namespace (0 if unknown) and the service port. The same key folds a
/// burst of alerts in text and tells whether a summary changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub state: State,
    pub pid: Option<u32>,
    pub netns: u32,
    pub port: ServicePort,
}

impl GroupKey {
    /// The group of `s`, held as `ownership` says.
    pub fn of(s: &Socket, ownership: Option<&Ownership>) -> Self {
        Self {
            state: s.state,
            pid: ownership
                .and_then(|o| o.owners.first())
                .map(|o| o.process.pid),
            netns: s.ends.netns,
            port: ServicePort::of(s),
        }
    }
}

/// Stuck sockets that share an owner, a state and a service port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Group {
    pub state: State,
    /// The owning process (the first holder), if known.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// The sockets' network namespace (inode), if known.
    pub netns: Option<u32>,
    /// Its container or systemd service, if known.
    pub container: Option<Container>,
    #[serde(skip)]
    pub port: ServicePort,
    pub count: usize,
    /// Entry time of the oldest (monotonic ns).
    #[serde(skip)]
    pub oldest_since_ns: u64,
    pub oldest_is_lower_bound: bool,
    /// Open descriptors of the owner when the summary was made.
    pub fd_count: Option<usize>,
    pub fd_limit: Option<u64>,
    /// Of these sockets, those whose last receive returned the peer's end of stream: the
    /// application saw the close and still kept the socket.
    pub eof_read: usize,
}

/// Groups stuck sockets, largest group first; `fd_count` gives a process's open
/// descriptors now.
pub fn group<'a>(
    stuck: impl Iterator<Item = (&'a Socket, Option<&'a Ownership>)>,
    mut fd_count: impl FnMut(u32) -> Option<usize>,
) -> Vec<Group> {
    let mut groups: HashMap<GroupKey, Group> = HashMap::new();
    for (s, ownership) in stuck {
        let owner = ownership.and_then(|o| o.owners.first());
        let key = GroupKey::of(s, ownership);
        let g = groups.entry(key).or_insert_with(|| Group {
            state: s.state,
            pid: key.pid,
            comm: owner.map(|o| o.process.comm.clone()),
            netns: (s.ends.netns != 0).then_some(s.ends.netns),
            container: owner.and_then(|o| o.process.container()),
            port: ServicePort::of(s),
            count: 0,
            oldest_since_ns: s.since_ns,
            oldest_is_lower_bound: s.since_is_lower_bound,
            fd_count: owner.map(|o| o.fd_count),
            fd_limit: owner.and_then(|o| o.process.fd_limit),
            eof_read: 0,
        });
        g.count += 1;
        if ownership.is_some_and(|o| o.last_io.is_some_and(|io| io.op == IoOp::Eof)) {
            g.eof_read += 1;
        }
        if s.since_ns < g.oldest_since_ns {
            g.oldest_since_ns = s.since_ns;
            g.oldest_is_lower_bound = s.since_is_lower_bound;
        }
    }
    let mut groups: Vec<Group> = groups.into_values().collect();
    for g in &mut groups {
        if let Some(n) = g.pid.and_then(&mut fd_count) {
            g.fd_count = Some(n);
        }
    }
    groups.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.oldest_since_ns.cmp(&b.oldest_since_ns))
            .then(a.pid.cmp(&b.pid))
            .then(a.netns.cmp(&b.netns))
            .then(a.port.cmp(&b.port))
    });
    groups
}

impl Group {
    /// What makes it a group.
    pub fn key(&self) -> GroupKey {
        GroupKey {
            state: self.state,
            pid: self.pid,
            netns: self.netns.unwrap_or(0),
            port: self.port,
        }
    }
}

/// One line of plain advice about sockets stuck in `state`.
pub fn advice(state: State) -> &'static str {
    match state.known() {
        Some(TcpState::CloseWait) => {
            "CLOSE_WAIT means the peer closed the connection and the application has not \
             called close() on its socket: look for a code path that drops a connection \
             without closing it (error and timeout paths, pools). Keepalive sysctls and \
             restarts hide it; they do not fix it."
        }
        Some(TcpState::FinWait2) => {
            "FIN_WAIT2 means this side closed and the peer acknowledged but never closed its \
             own side: the leak is in the peer application. Orphaned sockets expire after \
             net.ipv4.tcp_fin_timeout; sockets still open here wait forever."
        }
        Some(TcpState::LastAck) => {
            "LAST_ACK means both sides closed but the peer's final ACK never came: the peer \
             vanished or packets are dropped on the way; the kernel retransmits and gives up."
        }
        Some(TcpState::SynSent) => {
            "SYN_SENT means connect() gets no answer: the remote port is filtered or the host \
             is down; check the route and firewalls, and set connect timeouts."
        }
        Some(TcpState::SynRecv) => {
            "SYN_RECV means handshakes do not complete: clients vanish after their SYN (a scan \
             or SYN flood) or the return path to them is broken."
        }
        Some(TcpState::Closing) => {
            "CLOSING means both sides closed at once and the last ACK is lost: look for packet \
             loss between the hosts."
        }
        Some(TcpState::FinWait1) => {
            "FIN_WAIT1 means this side closed but the peer does not acknowledge: the peer is \
             gone, or its receive window is closed because it stopped reading."
        }
        Some(TcpState::Established) => {
            "ESTABLISHED for this long means idle connections: check that clients and pools \
             close what they no longer use, or set idle timeouts."
        }
        _ => "sockets stay in this state longer than the threshold set for it.",
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::{Endpoints, Family, HeldBy, LastIo, Owner, ProcessInfo};

    fn socket(origin: Origin, sport: u16, dport: u16, since_ns: u64) -> Socket {
        Socket {
            id: 0,
            ends: Endpoints {
                netns: 0,
                family: Family::Ipv4,
                saddr: Ipv4Addr::LOCALHOST.into(),
                sport,
                daddr: Ipv4Addr::new(10, 0, 0, 5).into(),
                dport,
            },
            state: TcpState::CloseWait.into(),
            since_ns,
            since_is_lower_bound: since_ns == 1,
            origin,
            hint: None,
            flagged: true,
            born_ns: 0,
        }
    }

    fn owned_by(pid: u32) -> Ownership {
        Ownership {
            held_by: HeldBy::Fd,
            owners: vec![Owner {
                process: ProcessInfo {
                    pid,
                    comm: "java".into(),
                    cmdline: String::new(),
                    uid: 0,
                    fd_limit: Some(1024),
                    cgroup: None,
                },
                fds: vec![9],
                fd_count: 500,
            }],
            last_io: None,
        }
    }

    #[test]
    fn groups_by_owner_state_and_service_port() {
        let java = owned_by(4242);
        let java_read_eof = Ownership {
            last_io: Some(LastIo {
                ts_ns: 4,
                pid: 4242,
                comm: "java".into(),
                op: IoOp::Eof,
            }),
            ..owned_by(4242)
        };
        let other = owned_by(77);
        let sockets = [
            (
                socket(Origin::Accepted, 61616, 40001, 5),
                Some(&java_read_eof),
            ),
            (socket(Origin::Accepted, 61616, 40002, 1), Some(&java)),
            (socket(Origin::Accepted, 61616, 40003, 9), Some(&java)),
            // Outgoing leaks from ephemeral ports group by the remote service.
            (socket(Origin::Connected, 50001, 5432, 3), Some(&other)),
            (socket(Origin::Connected, 50002, 5432, 4), Some(&other)),
            (socket(Origin::Unknown, 8080, 50000, 2), None),
        ];
        let groups = group(sockets.iter().map(|(s, o)| (s, *o)), |pid| {
            (pid == 4242).then_some(1013)
        });
        let view: Vec<_> = groups
            .iter()
            .map(|g| (g.pid, g.port, g.count, g.oldest_since_ns, g.fd_count))
            .collect();
        assert_eq!(
            view,
            vec![
                (Some(4242), ServicePort::Local(61616), 3, 1, Some(1013)),
                (
                    Some(77),
                    ServicePort::Remote(Ipv4Addr::new(10, 0, 0, 5).into(), 5432),
                    2,
                    3,
                    Some(500)
                ),
                (None, ServicePort::Local(8080), 1, 2, None),
            ]
        );
        assert!(groups[0].oldest_is_lower_bound);
        assert!(!groups[1].oldest_is_lower_bound);
        let eof: Vec<_> = groups.iter().map(|g| g.eof_read).collect();
        assert_eq!(eof, vec![1, 0, 0]);
    }

    #[test]
    fn close_wait_advice_names_the_missing_close() {
        let a = advice(TcpState::CloseWait.into());
        assert!(a.contains("close()") && a.contains("restarts"), "{a}");
        assert!(advice(State(42)).contains("threshold"));
    }
}
