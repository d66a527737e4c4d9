//! Stage 3: keeps the life of every TCP socket, fed by decoded transitions and by the
//! snapshot of the sockets that existed at start, and queues (in [`deadlines`]) when each
//! would have stayed too long in a watched state; [`crate::stuck`] decides what that means.
//!
//! Time is the kernel's monotonic clock in nanoseconds, passed in by the caller, so tests
//! drive the table with a clock of their own.

pub mod deadlines;

use std::time::Duration;

use foldhash::HashMap;

use tracer_common::TcpState;

use crate::{
    decode::Transition,
    model::{Endpoints, Origin, PidHint, SnapshotSocket, Socket, SocketKey, State, Thresholds},
};
use deadlines::Deadlines;

/// A socket that has just crossed its state's threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stuck {
    pub key: SocketKey,
    pub socket: Socket,
}

/// A flagged socket that has left the state it was stuck in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub key: SocketKey,
    /// The socket as it was while stuck.
    pub socket: Socket,
    /// When it left (monotonic ns).
    pub left_ns: u64,
    /// The state it went to.
    pub new: State,
}

impl Resolved {
    /// How long it stayed in the state (a lower bound when its entry time was one).
    pub fn stuck_for(&self) -> Duration {
        Duration::from_nanos(self.left_ns.saturating_sub(self.socket.since_ns))
    }
}

/// Counts for the summary and the stop record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Sockets tracked now.
    pub tracked: usize,
    /// Most sockets tracked at once.
    pub peak: usize,
    /// Sockets dropped from a full table.
    pub evicted: u64,
    /// Of those, sockets that were flagged stuck (their `resolved` will never come).
    pub evicted_stuck: u64,
    /// Of those, sockets in watched states, flagged or not: the table is checked against
    /// the kernel's list then, so that a leak among them is found again.
    pub evicted_watched: u64,
}

/// The life of every socket, bounded by a cap.
#[derive(Debug)]
pub struct Table {
    sockets: HashMap<SocketKey, Socket>,
    /// Snapshot sockets not yet named by a transition, by endpoints.
    unnamed: HashMap<Endpoints, u64>,
    thresholds: Thresholds,
    deadlines: Deadlines,
    /// Sockets per state number, to know when a deadline queue is mostly stale.
    per_state: [usize; 256],
    cap: usize,
    next_id: u64,
    stats: TableStats,
}

impl Table {
    /// An empty table flagging by `thresholds` and holding at most `cap` sockets.
    pub fn new(thresholds: Thresholds, cap: usize) -> Self {
        Self {
            sockets: HashMap::default(),
            unnamed: HashMap::default(),
            deadlines: Deadlines::new(&thresholds),
            thresholds,
            per_state: [0; 256],
            cap: cap.max(1),
            next_id: 0,
            stats: TableStats::default(),
        }
    }

    /// The thresholds in force.
    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    /// Adds the sockets that existed at start. Their entry times are lower bounds.
    pub fn seed(&mut self, mut snapshot: Vec<SnapshotSocket>) {
        // Deadline queues must be in entry order.
        snapshot.sort_by_key(|s| s.since_ns);
        for s in snapshot {
            if s.state == TcpState::Close.into() {
                continue;
            }
            let (key, socket) = s.key_and_socket();
            self.insert(key, socket);
            self.unnamed.insert(s.ends, s.cookie);
        }
    }

    /// Applies one transition; returns the resolution of a flagged socket leaving its state.
    pub fn apply(&mut self, t: &Transition) -> Option<Resolved> {
        let key = SocketKey::Sk(t.sk);
        let ends = t.ends();
        let hint = runs_in_caller(t.old, t.new).then_some(PidHint {
            pid: t.pid,
            comm: t.comm,
        });
        let closed = t.new == TcpState::Close.into();

        // The common case, a socket the table holds moving on: updated where it is, one
        // hash lookup. A birth at a kernel address the table holds is another socket: the
        // end of the one it had there was missed.
        let reborn = born(t);
        if !closed && !reborn {
            if let Some(slot) = self.sockets.get_mut(&key) {
                let prev = *slot;
                let (socket, entered) = Self::next(&prev, t, ends, hint);
                *slot = socket;
                self.per_state[prev.state.0 as usize] -= 1;
                self.per_state[socket.state.0 as usize] += 1;
                if entered && !socket.flagged {
                    self.deadlines.push(socket.state, socket.since_ns, key);
                }
                self.compact(prev.state);
                return Self::resolution(key, prev, t);
            }
        }
        let (previous, same_address) = match self.remove(key) {
            Some(s) => (Some(s), true),
            None => (self.take_unnamed(&ends), false),
        };
        match previous {
            // A snapshot socket found by its addresses may be named by its own birth (the
            // transition raced the snapshot): it goes on as the same socket.
            Some(prev) if !(reborn && same_address) => {
                self.compact(prev.state);
                if !closed {
                    let (socket, entered) = Self::next(&prev, t, ends, hint);
                    self.put(key, socket, entered);
                }
                Self::resolution(key, prev, t)
            }
            _ => {
                if let Some(prev) = previous {
                    self.compact(prev.state);
                }
                if !closed {
                    self.insert(key, Self::fresh(t, ends, hint));
                }
                previous.and_then(|prev| Self::resolution(key, prev, t))
            }
        }
    }

    /// A socket first met in transition `t`.
    fn fresh(t: &Transition, ends: Endpoints, hint: Option<PidHint>) -> Socket {
        let origin = match (t.old.known(), t.new.known()) {
            (Some(TcpState::Listen), _) => Origin::Accepted,
            (_, Some(TcpState::SynSent)) => Origin::Connected,
            (_, Some(TcpState::Listen)) => Origin::Listener,
            _ => Origin::Unknown,
        };
        Socket {
            id: 0,
            ends,
            state: t.new,
            since_ns: t.ts_ns,
            since_is_lower_bound: false,
            origin,
            hint,
            flagged: false,
            born_ns: if born(t) { t.ts_ns } else { 0 },
        }
    }

    /// What `prev` becomes after transition `t`, and whether that starts a new stay.
    fn next(
        prev: &Socket,
        t: &Transition,
        ends: Endpoints,
        hint: Option<PidHint>,
    ) -> (Socket, bool) {
        // A snapshot socket seen entering the state it was found in (the transition raced
        // the snapshot) now has an exact entry time.
        let exact = prev.since_is_lower_bound && !prev.flagged;
        let stays = prev.state == t.new && !exact;
        let socket = Socket {
            id: prev.id,
            ends,
            state: t.new,
            since_ns: if stays { prev.since_ns } else { t.ts_ns },
            since_is_lower_bound: stays && prev.since_is_lower_bound,
            origin: prev.origin,
            hint: hint.or(prev.hint),
            flagged: stays && prev.flagged,
            born_ns: if born(t) { t.ts_ns } else { prev.born_ns },
        };
        (socket, !stays)
    }

    /// The resolution of `prev`, held under `key`, if it was flagged and `t` moved it on.
    fn resolution(key: SocketKey, prev: Socket, t: &Transition) -> Option<Resolved> {
        (prev.flagged && prev.state != t.new).then_some(Resolved {
            key,
            socket: prev,
            left_ns: t.ts_ns,
            new: t.new,
        })
    }

    /// Flags every socket whose stay in a watched state reached its threshold by `now_ns`.
    pub fn due(&mut self, now_ns: u64) -> Vec<Stuck> {
        let mut stuck = Vec::new();
        let sockets = &mut self.sockets;
        self.deadlines.pop_due(now_ns, |state, since, key| {
            if let Some(s) = sockets.get_mut(&key) {
                if s.state == state && s.since_ns == since && !s.flagged {
                    s.flagged = true;
                    stuck.push(Stuck { key, socket: *s });
                }
            }
        });
        stuck
    }

    /// When the next socket would cross its threshold, in monotonic ns.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.next()
    }

    /// The sockets flagged now.
    pub fn stuck(&self) -> impl Iterator<Item = (SocketKey, &Socket)> {
        self.sockets().filter(|(_, s)| s.flagged)
    }

    /// Every socket tracked.
    pub fn sockets(&self) -> impl Iterator<Item = (SocketKey, &Socket)> {
        self.sockets.iter().map(|(k, s)| (*k, s))
    }

    /// The socket under `key`.
    pub fn get(&self, key: SocketKey) -> Option<&Socket> {
        self.sockets.get(&key)
    }

    /// Puts back a socket as a recording's checkpoint describes it (a snapshot socket
    /// waits, as in [`Table::seed`], to be named by a transition).
    pub fn restore(&mut self, key: SocketKey, socket: Socket) {
        if let Some(old) = self.remove(key) {
            self.compact(old.state);
        }
        if let SocketKey::Snapshot(cookie) = key {
            self.unnamed.insert(socket.ends, cookie);
        }
        self.insert(key, socket);
    }

    /// Sockets tracked per state, for states that have any.
    pub fn per_state(&self) -> impl Iterator<Item = (State, usize)> + '_ {
        (0..=255u8)
            .map(|n| (State(n), self.per_state[n as usize]))
            .filter(|&(_, n)| n > 0)
    }

    /// Drops a socket the kernel no longer has in the state the table thinks (its
    /// transition was lost, or is still on its way); a later transition brings it back.
    pub fn forget(&mut self, key: SocketKey) {
        self.remove(key);
    }

    /// Counts so far.
    pub fn stats(&self) -> TableStats {
        TableStats {
            tracked: self.sockets.len(),
            ..self.stats
        }
    }

    fn take_unnamed(&mut self, ends: &Endpoints) -> Option<Socket> {
        if self.unnamed.is_empty() {
            return None;
        }
        let cookie = self.unnamed.remove(ends)?;
        self.remove(SocketKey::Snapshot(cookie))
    }

    /// Takes a socket out of the table and out of its per-state count (and, for a
    /// snapshot socket, out of the sockets waiting to be named).
    fn remove(&mut self, key: SocketKey) -> Option<Socket> {
        let s = self.sockets.remove(&key)?;
        self.per_state[s.state.0 as usize] -= 1;
        if let SocketKey::Snapshot(_) = key {
            self.unnamed.remove(&s.ends);
        }
        Some(s)
    }

    /// Inserts a socket the table did not hold, making room if it is full.
    fn insert(&mut self, key: SocketKey, mut socket: Socket) {
        if self.sockets.len() >= self.cap {
            self.evict();
        }
        socket.id = self.next_id;
        self.next_id += 1;
        self.put(key, socket, true);
    }

    fn put(&mut self, key: SocketKey, socket: Socket, entered: bool) {
        if entered && !socket.flagged {
            self.deadlines.push(socket.state, socket.since_ns, key);
        }
        self.per_state[socket.state.0 as usize] += 1;
        self.sockets.insert(key, socket);
        self.stats.peak = self.stats.peak.max(self.sockets.len());
    }

    fn compact(&mut self, state: State) {
        let sockets = &self.sockets;
        self.deadlines
            .compact(state, self.per_state[state.0 as usize], |since, key| {
                sockets
                    .get(&key)
                    .is_some_and(|s| s.state == state && s.since_ns == since)
            });
    }

    /// Drops a sixteenth of the table: first sockets in unwatched states, then watched but
    /// not flagged, flagged last; oldest first within each.
    fn evict(&mut self) {
        let n = (self.cap / 16).max(1);
        let mut order: Vec<(u8, u64, SocketKey)> = self
            .sockets
            .iter()
            .map(|(k, s)| {
                let rank = if s.flagged {
                    2
                } else if self.thresholds.get(s.state).is_some() {
                    1
                } else {
                    0
                };
                (rank, s.since_ns, *k)
            })
            .collect();
        if order.len() > n {
            order.select_nth_unstable(n - 1);
            order.truncate(n);
        }
        for (_, _, key) in order {
            if let Some(s) = self.remove(key) {
                self.stats.evicted += 1;
                if s.flagged {
                    self.stats.evicted_stuck += 1;
                }
                if self.thresholds.get(s.state).is_some() {
                    self.stats.evicted_watched += 1;
                }
            }
        }
    }
}

/// Whether the task current at an `old -> new` transition is the process that made a
/// system call on the socket: connect, listen, close or shutdown. Transitions caused by an
/// arriving packet (into CLOSE_WAIT, say) run in softirq, in whatever task was running.
/// Whether transition `t` starts its socket's life.
fn born(t: &Transition) -> bool {
    tracer_common::is_birth(t.old.0.into(), t.new.0.into())
}

pub(crate) fn runs_in_caller(old: State, new: State) -> bool {
    use TcpState::*;
    matches!(
        (old.known(), new.known()),
        (Some(Close), Some(SynSent))
            | (Some(Close), Some(Listen))
            | (Some(Listen), Some(Close))
            | (Some(Established), Some(FinWait1))
            | (Some(CloseWait), Some(LastAck))
    )
}

#[cfg(test)]
pub(crate) mod tests;
