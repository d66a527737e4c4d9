//! Who holds a socket and who last used it.

use super::{Comm, Socket};

/// What a socket's last send or receive was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOp {
    /// A receive that returned data or an error.
    Recv,
    /// A send.
    Send,
    /// A receive that returned the peer's end of stream (0 bytes).
    Eof,
}

impl IoOp {
    /// The name used in JSON: `recv`, `send` or `eof`.
    pub const fn name(self) -> &'static str {
        match self {
            IoOp::Recv => "recv",
            IoOp::Send => "send",
            IoOp::Eof => "eof",
        }
    }
}

/// The last send or receive on a socket and the process that made it: a process that
/// really uses the socket, unlike the task current at a softirq transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastIo {
    /// Kernel monotonic time of the call, in nanoseconds.
    pub ts_ns: u64,
    pub pid: u32,
    /// The process's command name when it first used the socket.
    pub comm: Comm,
    pub op: IoOp,
}

/// What is reported about a process that holds a socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub comm: String,
    /// Arguments joined by spaces (empty for kernel threads).
    pub cmdline: String,
    /// Real uid.
    pub uid: u32,
    /// Soft RLIMIT_NOFILE; `None` when unlimited.
    pub fd_limit: Option<u64>,
    /// cgroup v2 path (or the first v1 one): tells the container or service, which
    /// `ProcessInfo::container` (in `attribute::container`) reads from it.
    pub cgroup: Option<String>,
}

/// A process holding a socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub process: ProcessInfo,
    /// Its descriptors that refer to the socket (to the listener, for a socket still in
    /// the accept queue).
    pub fds: Vec<i32>,
    /// How many descriptors it has open, to set against `process.fd_limit`.
    pub fd_count: usize,
}

/// How a socket is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeldBy {
    /// Through file descriptors: the owners hold it.
    Fd,
    /// Never accepted: it waits in the accept queue of a listener the owners hold.
    AcceptQueue,
    /// No descriptor refers to it any more: its process closed it and the kernel is
    /// finishing the connection alone.
    Orphan,
    /// sock_diag no longer lists it (it closed while being looked up).
    Gone,
    /// It has an inode, but no process visible here holds it.
    Unknown,
    /// Its network namespace can no longer be entered to look it up: no process is in it
    /// and no bind mount names it (its sockets keep it alive). The socket may well still
    /// be there, held by a process in another namespace.
    NetnsUnreachable,
}

impl HeldBy {
    /// The name used in JSON.
    pub const fn name(self) -> &'static str {
        match self {
            HeldBy::Fd => "fd",
            HeldBy::AcceptQueue => "accept_queue",
            HeldBy::Orphan => "orphan",
            HeldBy::Gone => "gone",
            HeldBy::Unknown => "unknown",
            HeldBy::NetnsUnreachable => "netns_unreachable",
        }
    }
}

/// Who owns one socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    pub held_by: HeldBy,
    /// Every process holding it, in pid order; empty when none is known.
    pub owners: Vec<Owner>,
    /// The last process seen sending or receiving on it (from the probe, not from here):
    /// a hint beside the holders, and the only name left when none is found.
    pub last_io: Option<LastIo>,
}

impl Ownership {
    /// Whether process `pid` holds `socket`, or was the last to act on it from a system
    /// call or to send or receive on it: what `--pid` selects stuck sockets by.
    pub fn involves(&self, pid: u32, socket: &Socket) -> bool {
        self.owners.iter().any(|w| w.process.pid == pid)
            || socket.hint.is_some_and(|h| h.pid == pid)
            || self.last_io.is_some_and(|io| io.pid == pid)
    }
}
