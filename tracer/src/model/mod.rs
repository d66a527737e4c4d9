//! The types every stage shares: sockets, their addresses and states, their owners, and
//! the choices the user makes about output. Every other module imports from here, never
//! from a stage downstream of it.

mod net;
mod owner;
mod socket;

use std::net::SocketAddr;

use clap::ValueEnum;

pub use net::{Comm, Endpoints, Family, State};
pub use owner::{HeldBy, IoOp, LastIo, Owner, Ownership, ProcessInfo};
pub use socket::{Origin, PidHint, SnapshotSocket, Socket, SocketKey};

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// The one socket `--timeline` follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Its kernel address.
    Sk(u64),
    /// An address and port at either end.
    Addr(SocketAddr),
}

impl Target {
    /// Whether a socket at `sk` (if known) with `ends` is the target.
    pub fn matches(&self, sk: Option<u64>, ends: &Endpoints) -> bool {
        match *self {
            Target::Sk(want) => sk == Some(want),
            Target::Addr(a) => {
                (ends.saddr, ends.sport) == (a.ip(), a.port())
                    || (ends.daddr, ends.dport) == (a.ip(), a.port())
            }
        }
    }
}
