//! The types every stage shares: sockets, their addresses and states, their owners, and
//! the choices the user makes about output. Every other module imports from here, never
//! from a stage downstream of it.

mod net;
mod owner;
mod socket;

use std::{net::SocketAddr, time::Duration};

use clap::ValueEnum;
use tracer_common::TcpState;

pub use net::{Comm, Endpoints, Family, State};
pub use owner::{HeldBy, IoOp, LastIo, Owner, Ownership, ProcessInfo};
pub use socket::{Origin, PidHint, SnapshotSocket, Socket, SocketKey, Stay};

/// Highest state number a threshold can be set for (the kernel's states are 1..=13).
const STATES: usize = 16;

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// How text output writes times (`--time`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum TimeStyle {
    /// The time of day (UTC), with a date line whenever the day changes.
    #[default]
    Clock,
    /// Full RFC 3339 timestamps (UTC, with nanoseconds) on every line.
    Rfc3339,
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

/// How long a socket may stay in each watched state before it is flagged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thresholds {
    by_state: [Option<Duration>; STATES],
}

impl Thresholds {
    /// Thresholds for `list`; a later entry for the same state wins.
    pub fn new(list: &[(TcpState, Duration)]) -> Self {
        let mut by_state = [None; STATES];
        for &(state, d) in list {
            by_state[state as usize] = Some(d);
        }
        Self { by_state }
    }

    /// The threshold of `state`, if it is watched.
    pub fn get(&self, state: State) -> Option<Duration> {
        self.by_state.get(state.0 as usize).copied().flatten()
    }

    /// Every watched state with its threshold, in kernel order.
    pub fn iter(&self) -> impl Iterator<Item = (TcpState, Duration)> + '_ {
        TcpState::ALL
            .into_iter()
            .filter_map(|s| Some((s, self.by_state[s as usize]?)))
    }
}
