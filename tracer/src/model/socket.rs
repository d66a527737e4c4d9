//! What the socket table knows of one socket.

use super::{Comm, Endpoints, State};

/// One stay of a socket in a state: its ends, the state and when it entered it. Live and
/// report both key what they learn about a flagged socket (its owners) by its stay, which
/// a recording can name, unlike the table's own socket ids.
pub type Stay = (Endpoints, State, u64);

/// How the table knows a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SocketKey {
    /// Kernel address of the socket, as the probe reports it.
    Sk(u64),
    /// A socket from the start-up snapshot that no transition has named yet: sock_diag
    /// gives its cookie, not its address. The first transition with the same endpoints
    /// re-keys it by address.
    Snapshot(u64),
}

impl SocketKey {
    /// The kernel address, when known.
    pub fn sk(self) -> Option<u64> {
        match self {
            SocketKey::Sk(sk) => Some(sk),
            SocketKey::Snapshot(_) => None,
        }
    }
}

/// Which side opened the connection, as far as the table saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Accepted from a listener: the local port is the service's.
    Accepted,
    /// Opened by connect(): the remote end is the service.
    Connected,
    /// A listening socket.
    Listener,
    /// Seen first in mid-life.
    Unknown,
}

/// A process seen acting on a socket from a system call (connect, listen, close), where
/// the task current at the transition is the one that made the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PidHint {
    pub pid: u32,
    pub comm: Comm,
}

/// What the table keeps of one socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Socket {
    /// Numbers the sockets in the order the table met them; unlike the key, it stays when
    /// a snapshot socket is re-keyed by address.
    pub id: u64,
    pub ends: Endpoints,
    pub state: State,
    /// When the socket entered `state` (monotonic ns); only a lower bound of its age in
    /// that state when `since_is_lower_bound`.
    pub since_ns: u64,
    pub since_is_lower_bound: bool,
    pub origin: Origin,
    /// The last process seen acting on it from a system call.
    pub hint: Option<PidHint>,
    /// Flagged as stuck during its current stay in `state`.
    pub flagged: bool,
    /// When a transition showed it born (connect, listen, accept; monotonic ns); 0 when it
    /// was met in mid-life. A send/receive note at its address older than that was left
    /// by an earlier socket there.
    pub born_ns: u64,
}

impl Socket {
    /// Its current stay.
    pub fn stay(&self) -> Stay {
        (self.ends, self.state, self.since_ns)
    }
}

impl SnapshotSocket {
    /// How the table holds it until a transition names it: its entry time a lower bound.
    pub fn key_and_socket(&self) -> (SocketKey, Socket) {
        let socket = Socket {
            id: 0,
            ends: self.ends,
            state: self.state,
            since_ns: self.since_ns,
            since_is_lower_bound: true,
            origin: self.origin,
            hint: None,
            flagged: false,
            born_ns: 0,
        };
        (SocketKey::Snapshot(self.cookie), socket)
    }
}

/// A socket from the start-up snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotSocket {
    /// sock_diag's cookie for it.
    pub cookie: u64,
    pub ends: Endpoints,
    /// Inode of its file, which ties it to the descriptors of its holders; 0 when no file
    /// refers to it (in an accept queue, or closed by its process).
    pub inode: u64,
    pub state: State,
    /// A time it was known to be in `state` already (monotonic ns): a lower bound.
    pub since_ns: u64,
    pub origin: Origin,
}
