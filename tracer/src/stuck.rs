//! Where stuck sockets are decided: [`Engine`] is the one decision maker that both
//! `tracer watch` and `tracer report` drive, so that a live run and the report of its
//! recording agree by construction.
//!
//! It is fed decoded transitions, the sockets open at start (or a recording's checkpoint),
//! clock ticks, and what its drivers learn about the sockets it flagged (their owners, or
//! that the kernel no longer has them). Time is always passed in: the kernel's monotonic
//! clock live, the recorded one in a report. It keeps the socket table and says what
//! happened, as [`Decision`]s in time order:
//! - **stuck**: a socket's stay in a watched state reached its state's threshold. The
//!   decision is dated at that moment, however late the driver notices it, and never
//!   before the run began (a socket found at start already in the state is flagged at the
//!   start, with its age a lower bound);
//! - **resolved**: a stuck socket's next transition took it out of the state;
//! - **evicted**: the table was full and dropped sockets.
//!
//! A stuck socket that the kernel no longer has in that state ([`Engine::gone`]) is dropped
//! without a resolution: its transition was lost. After lost transitions (or evictions),
//! [`Engine::reconcile`] sets the whole table right against the kernel's own list.

use std::time::Duration;

use foldhash::{HashMap, HashSet};

use tracer_common::TcpState;

use crate::{
    aggregate::{Resolved, Table, TableStats},
    decode::Transition,
    model::{Endpoints, Ownership, SnapshotSocket, Socket, SocketKey, State, Stay, Thresholds},
};

/// What [`Engine::reconcile`] changed, each socket as the table now holds it (or, for the
/// removed ones, held it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciliation {
    /// Sockets the kernel no longer has: their last transitions were lost.
    pub removed: Vec<(SocketKey, Socket)>,
    /// Sockets the kernel has in another state than the table thought: as the table held
    /// them, and as it holds them now, in the kernel's state since a lower bound.
    pub corrected: Vec<(SocketKey, Socket, Socket)>,
    /// Sockets the table did not have (their birth was lost, or a full table evicted
    /// them), as from a snapshot.
    pub added: Vec<(SocketKey, Socket)>,
}

impl Reconciliation {
    /// Whether anything changed.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.corrected.is_empty() && self.added.is_empty()
    }
}

/// Whether the kernel's list of sockets (the start-up snapshot's) can show a socket in
/// `state`: TIME_WAIT and the request and closed states are not listed as full sockets.
fn listable(state: State) -> bool {
    !matches!(
        state.known(),
        Some(TcpState::TimeWait | TcpState::Close | TcpState::NewSynRecv | TcpState::BoundInactive)
    )
}

/// A socket whose stay in a watched state reached the state's threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flag {
    pub key: SocketKey,
    /// The socket as it was when it crossed the threshold.
    pub socket: Socket,
    /// When it crossed it (monotonic ns), or the start of the run if later.
    pub at_ns: u64,
    pub threshold: Duration,
}

impl Flag {
    /// How long the socket had been in its state at [`Flag::at_ns`] (a lower bound when its
    /// entry time is one).
    pub fn age(&self) -> Duration {
        Duration::from_nanos(self.at_ns.saturating_sub(self.socket.since_ns))
    }
}

/// What the engine decided, in time order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Stuck(Flag),
    Resolved(Resolved),
    /// A full table dropped `sockets` sockets, `stuck` of them flagged, `watched` of them
    /// in watched states.
    Evicted {
        sockets: u64,
        stuck: u64,
        watched: u64,
    },
}

/// The decision maker: the socket table, the thresholds, and the owners of what it flagged.
#[derive(Debug)]
pub struct Engine {
    table: Table,
    /// When the run (or the recording) began: no flag is dated before it.
    start_ns: u64,
    /// Owners found for flagged stays: by the live run's attribution, or from a recording.
    owners: HashMap<Stay, Ownership>,
    /// Evictions already reported as decisions: sockets, stuck, watched.
    evicted_seen: (u64, u64, u64),
}

impl Engine {
    /// An engine flagging by `thresholds`, holding at most `cap` sockets, for a run that
    /// began at monotonic `start_ns`.
    pub fn new(thresholds: Thresholds, cap: usize, start_ns: u64) -> Self {
        Self {
            table: Table::new(thresholds, cap),
            start_ns,
            owners: HashMap::default(),
            evicted_seen: (0, 0, 0),
        }
    }

    /// The socket table.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The thresholds in force.
    pub fn thresholds(&self) -> &Thresholds {
        self.table.thresholds()
    }

    /// Adds the sockets that were open at start; their entry times are lower bounds.
    pub fn seed(&mut self, snapshot: Vec<SnapshotSocket>, out: &mut Vec<Decision>) {
        self.table.seed(snapshot);
        self.evictions(out);
    }

    /// Puts back a socket as a recording's checkpoint describes it.
    pub fn restore(&mut self, key: SocketKey, socket: Socket, out: &mut Vec<Decision>) {
        self.table.restore(key, socket);
        self.evictions(out);
    }

    /// Starts over with an empty table of `cap` sockets: a recording's segment that does
    /// not follow the one before, whose checkpoint is the truth from here on.
    pub fn restart(&mut self, cap: usize) {
        self.table = Table::new(self.table.thresholds().clone(), cap);
        self.evicted_seen = (0, 0, 0);
    }

    /// Applies one transition, after flagging what crossed its threshold before it.
    pub fn transition(&mut self, t: &Transition, out: &mut Vec<Decision>) {
        self.tick(t.ts_ns.saturating_sub(1), out);
        if let Some(r) = self.table.apply(t) {
            out.push(Decision::Resolved(r));
        }
        self.evictions(out);
    }

    /// Flags every socket whose threshold passed by `now_ns`.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<Decision>) {
        let first = out.len();
        for s in self.table.due(now_ns) {
            let threshold = self
                .table
                .thresholds()
                .get(s.socket.state)
                .unwrap_or_default();
            let deadline = s
                .socket
                .since_ns
                .saturating_add(threshold.as_nanos() as u64);
            out.push(Decision::Stuck(Flag {
                key: s.key,
                socket: s.socket,
                at_ns: deadline.max(self.start_ns),
                threshold,
            }));
        }
        // Each watched state has its own queue: put the states' flags in time order, as
        // ticks that came one by one would have.
        out[first..].sort_by_key(|d| match d {
            Decision::Stuck(f) => f.at_ns,
            _ => 0,
        });
    }

    /// When the next socket would cross its threshold (monotonic ns), never before the
    /// start.
    pub fn next_deadline(&self) -> Option<u64> {
        self.table.next_deadline().map(|d| d.max(self.start_ns))
    }

    /// Whether `flag`'s socket is still in the stay it was flagged in.
    pub fn current(&self, flag: &Flag) -> bool {
        self.table
            .get(flag.key)
            .is_some_and(|s| s.stay() == flag.socket.stay())
    }

    /// The kernel no longer has `flag`'s socket in that state: its transition was lost (or
    /// is still on its way). It leaves the table; its next transition brings it back.
    pub fn gone(&mut self, key: SocketKey, stay: Stay) {
        if self.table.get(key).is_some_and(|s| s.stay() == stay) {
            self.table.forget(key);
        }
        self.owners.remove(&stay);
    }

    /// Sets the table right against `listed`, the kernel's sockets as a snapshot listed them
    /// from monotonic `listed_ns` on, after transitions were lost: sockets it does not list
    /// are removed, those it lists in another state take that state, and those the table
    /// lacks are added. Sockets `touched` by a transition since `listed_ns` are newer than
    /// the list and left as they are. A flagged socket that is removed or corrected loses
    /// its flag's stay without a resolution, as [`Engine::gone`] does.
    pub fn reconcile(
        &mut self,
        listed: Vec<SnapshotSocket>,
        touched: &HashSet<Endpoints>,
        out: &mut Vec<Decision>,
    ) -> Reconciliation {
        let mut listed: HashMap<Endpoints, SnapshotSocket> = listed
            .into_iter()
            .filter(|s| !touched.contains(&s.ends))
            .map(|s| (s.ends, s))
            .collect();
        let mut done = Reconciliation::default();
        let held: Vec<(SocketKey, Socket)> = self
            .table
            .sockets()
            .filter(|(_, s)| !touched.contains(&s.ends))
            .map(|(k, s)| (k, *s))
            .collect();
        for (key, s) in held {
            let kernel = listed.remove(&s.ends);
            if !listable(s.state) {
                continue;
            }
            match kernel {
                Some(k) if k.state == s.state => {}
                Some(k) => {
                    self.owners.remove(&s.stay());
                    let socket = Socket {
                        state: k.state,
                        // It entered the state after its last known transition.
                        since_ns: k.since_ns.max(s.since_ns),
                        since_is_lower_bound: true,
                        flagged: false,
                        ..s
                    };
                    self.table.forget(key);
                    self.table.restore(key, socket);
                    done.corrected.push((key, s, socket));
                }
                None => {
                    self.owners.remove(&s.stay());
                    self.table.forget(key);
                    done.removed.push((key, s));
                }
            }
        }
        let mut missing: Vec<SnapshotSocket> = listed.into_values().collect();
        missing.sort_by_key(|s| (s.since_ns, s.cookie));
        for k in missing {
            let (key, socket) = k.key_and_socket();
            self.table.restore(key, socket);
            done.added.push((key, socket));
        }
        self.evictions(out);
        done
    }

    /// Remembers who owns a flagged stay.
    pub fn owned(&mut self, stay: Stay, ownership: Ownership) {
        self.owners.insert(stay, ownership);
    }

    /// The owners known for `socket`'s current stay.
    pub fn owners_of(&self, socket: &Socket) -> Option<&Ownership> {
        self.owners.get(&socket.stay())
    }

    /// Forgets the owners of stays that are no longer stuck in the table (resolved or
    /// evicted): a long run keeps only what it may still report.
    pub fn prune_owners(&mut self) {
        let stuck: HashSet<Stay> = self.table.stuck().map(|(_, s)| s.stay()).collect();
        self.owners.retain(|stay, _| stuck.contains(stay));
    }

    /// The sockets stuck now, with their owners when known.
    pub fn stuck(&self) -> impl Iterator<Item = (SocketKey, &Socket, Option<&Ownership>)> {
        self.table
            .stuck()
            .map(|(k, s)| (k, s, self.owners.get(&s.stay())))
    }

    /// Table counts.
    pub fn stats(&self) -> TableStats {
        self.table.stats()
    }

    /// Sockets tracked per state.
    pub fn per_state(&self) -> impl Iterator<Item = (State, usize)> + '_ {
        self.table.per_state()
    }

    fn evictions(&mut self, out: &mut Vec<Decision>) {
        let stats = self.table.stats();
        let (sockets, stuck, watched) = self.evicted_seen;
        if stats.evicted > sockets {
            out.push(Decision::Evicted {
                sockets: stats.evicted - sockets,
                stuck: stats.evicted_stuck - stuck,
                watched: stats.evicted_watched - watched,
            });
            self.evicted_seen = (stats.evicted, stats.evicted_stuck, stats.evicted_watched);
        }
    }
}

#[cfg(test)]
mod tests;
