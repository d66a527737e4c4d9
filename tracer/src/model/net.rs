//! Addresses, states and names as the kernel reports them.

use std::{fmt, net::IpAddr};

use tracer_common::{TcpState, AF_INET, AF_INET6, COMM_LEN};

/// Address family of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    /// The name used on the command line and in JSON: `ipv4` or `ipv6`.
    pub const fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }

    /// The kernel's `AF_*` number.
    pub const fn af(self) -> u16 {
        match self {
            Family::Ipv4 => AF_INET,
            Family::Ipv6 => AF_INET6,
        }
    }
}

/// A TCP state as the kernel numbers it; numbers this build does not know are kept, not
/// rejected, so a newer kernel's states still show up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct State(pub u8);

impl State {
    /// The known state, if this number is one.
    pub fn known(self) -> Option<TcpState> {
        TcpState::from_u8(self.0)
    }
}

impl From<TcpState> for State {
    fn from(s: TcpState) -> Self {
        State(s as u8)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.known() {
            Some(s) => f.write_str(s.name()),
            None => write!(f, "STATE_{}", self.0),
        }
    }
}

/// A task's command name as the kernel keeps it: at most 16 bytes, NUL-padded. Kept
/// inline so that decoding an event allocates nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Comm {
    bytes: [u8; COMM_LEN],
    len: u8,
}

impl Comm {
    /// The name up to its first NUL.
    pub fn new(raw: [u8; COMM_LEN]) -> Self {
        let len = raw.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        Self {
            bytes: raw,
            len: len as u8,
        }
    }

    /// The name's bytes, without the NUL padding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// All the bytes as the kernel gave them, and the name's length: for writers that copy
    /// a fixed 16 bytes and keep `len`.
    pub fn raw(&self) -> (&[u8; COMM_LEN], usize) {
        (&self.bytes, self.len as usize)
    }

    /// The name as text; bytes that are not UTF-8 are replaced.
    pub fn to_str_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.bytes[..self.len as usize])
    }
}

impl From<&str> for Comm {
    fn from(s: &str) -> Self {
        let mut raw = [0u8; COMM_LEN];
        let n = s.len().min(COMM_LEN);
        raw[..n].copy_from_slice(&s.as_bytes()[..n]);
        Comm::new(raw)
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.to_str_lossy())
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_str_lossy())
    }
}

/// Where a socket is: its network namespace, family and 4-tuple. Every container has its
/// own `127.0.0.1`, so the same addresses in two namespaces are two sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoints {
    /// Inode of the socket's network namespace (what `ls -l /proc/PID/ns/net` shows);
    /// 0 when unknown (a kernel without BTF, a recording made before namespaces were read).
    pub netns: u32,
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
}
