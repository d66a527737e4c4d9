//! Rebuilds an incident from a recording: the recorded transitions go through the same
//! socket table and stuck decisions as a live run, under the report's thresholds, on the
//! recording's clock. Owners come from what the live run resolved.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use hdrhistogram::Histogram;
use tracer_common::TcpState;

use crate::{
    aggregate::{stuck::Thresholds, Resolved, Table},
    decode::Transition,
    model::{Endpoints, Ownership, Socket, SocketKey, State, Target},
    record::{Entry, Header, SocketEntry, StopEntry},
};

/// Longest stay the percentiles tell apart (about 52 days); longer ones count as that.
const MAX_STAY_US: u64 = 1 << 42;

/// What the report asked for.
#[derive(Clone, Debug)]
pub struct Options {
    pub thresholds: Thresholds,
    /// Window of interest, in the recording's monotonic ns.
    pub from_ns: u64,
    pub to_ns: u64,
    /// Keep only sockets with one of these ports at either end (all when empty).
    pub ports: Vec<u16>,
    pub timeline: Option<Target>,
}

impl Options {
    fn in_window(&self, ts_ns: u64) -> bool {
        (self.from_ns..=self.to_ns).contains(&ts_ns)
    }

    /// Whether `--port` keeps a socket with `ends`.
    pub fn port_kept(&self, ends: &Endpoints) -> bool {
        self.ports.is_empty()
            || self.ports.contains(&ends.sport)
            || self.ports.contains(&ends.dport)
    }
}

/// Something the report shows, in time order.
#[derive(Clone, Debug)]
pub enum Event {
    /// The socket was open when the recording started (`--timeline` only).
    Existing { key: SocketKey, socket: Socket },
    /// A transition (`--timeline` only).
    Transition(Transition),
    /// A socket crossed its state's threshold at `at_ns`.
    Stuck {
        key: SocketKey,
        socket: Socket,
        at_ns: u64,
        threshold: Duration,
    },
    /// A stuck socket left its state.
    Resolved(Resolved),
}

/// The stay a live run resolved owners for: a socket's ends, state and entry time.
pub type Stay = (Endpoints, State, u64);

/// The current stay of `socket`.
pub fn stay(socket: &Socket) -> Stay {
    (socket.ends, socket.state, socket.since_ns)
}

/// Facts the live run recorded about itself.
#[derive(Clone, Debug, Default)]
pub struct Live {
    pub stuck: u64,
    pub resolved: u64,
    /// The probe's drop counter at its last report.
    pub lost: u64,
    /// Entries the recorder left out (disk too slow).
    pub unrecorded: u64,
    /// The stop entry, absent when the run was cut.
    pub stop: Option<StopEntry>,
}

/// The incident, rebuilt.
pub struct Replay {
    pub options: Options,
    pub table: Table,
    pub events: Vec<Event>,
    /// Owners the live run resolved, by stay.
    pub owners: HashMap<Stay, Ownership>,
    /// Transitions in the window by (old, new).
    pub transitions: BTreeMap<(State, State), u64>,
    /// Completed stays in the window per state, in µs.
    pub stays: BTreeMap<State, Histogram<u64>>,
    pub live: Live,
    /// Recording time covered (monotonic ns): start of the first segment, latest time seen.
    pub start_ns: u64,
    pub last_ns: u64,
    /// Transitions read (in and out of the window).
    pub transitions_read: u64,
    /// `--timeline ADDR:PORT`: births of sockets not yet known to match, by address.
    births: HashMap<u64, Transition>,
}

impl Replay {
    /// An empty rebuild; `header` is the first segment's.
    pub fn new(options: Options, header: &Header) -> Self {
        Replay {
            table: Table::new(options.thresholds.clone(), header.max_sockets as usize),
            options,
            events: Vec::new(),
            owners: HashMap::new(),
            transitions: BTreeMap::new(),
            stays: BTreeMap::new(),
            live: Live::default(),
            start_ns: header.started_ns,
            last_ns: header.started_ns,
            transitions_read: 0,
            births: HashMap::new(),
        }
    }

    /// Starts over from a segment that does not follow the one before: its checkpoint is
    /// the truth from here on.
    pub fn restart(&mut self, header: &Header) {
        self.table = Table::new(self.options.thresholds.clone(), header.max_sockets as usize);
    }

    /// Applies one entry. `Socket` entries restore the checkpoint of a segment that does
    /// not follow the previous one; the caller skips them otherwise.
    pub fn entry(&mut self, entry: Entry, first_segment: bool) {
        // The recording lasted at least to its latest entry (its stop, if it has one).
        let seen = match &entry {
            Entry::Owners(o) => o.ts_ns,
            Entry::Stuck(s) => s.ts_ns,
            Entry::Resolved(r) => r.ts_ns,
            Entry::Lost { ts_ns, .. } => *ts_ns,
            Entry::Stop(s) => s.ts_ns,
            _ => 0,
        };
        self.last_ns = self.last_ns.max(seen);
        match entry {
            Entry::Transition(e) => self.transition(Transition::from(&e)),
            Entry::Socket(s) => self.restore(&s, first_segment),
            Entry::Owners(o) => {
                let stay = (o.ends.into(), State(o.state), o.since_ns);
                self.owners.insert(stay, o.ownership());
            }
            Entry::Stuck(_) => self.live.stuck += 1,
            Entry::Resolved(_) => self.live.resolved += 1,
            Entry::Lost { total, .. } => self.live.lost = self.live.lost.max(total),
            Entry::Gap { entries } => self.live.unrecorded += entries,
            Entry::Stop(stop) => self.live.stop = Some(stop),
            // A later segment's header: the caller handles segments.
            Entry::Header(_) => {}
        }
    }

    fn restore(&mut self, s: &SocketEntry, first_segment: bool) {
        let (key, socket) = s.socket();
        if first_segment
            && self
                .options
                .timeline
                .is_some_and(|t| t.matches(key.sk(), &socket.ends))
        {
            self.events.push(Event::Existing { key, socket });
        }
        self.table.restore(key, socket);
    }

    fn transition(&mut self, t: Transition) {
        self.transitions_read += 1;
        if t.ts_ns > self.options.to_ns {
            return;
        }
        self.last_ns = self.last_ns.max(t.ts_ns);
        // Flag what crossed its threshold before this transition could move it.
        self.advance(t.ts_ns.saturating_sub(1));
        let ends = t.ends();
        let shown = self.options.in_window(t.ts_ns) && self.options.port_kept(&ends);
        if shown {
            *self.transitions.entry((t.old, t.new)).or_default() += 1;
            if let Some(s) = self.table.get(SocketKey::Sk(t.sk)) {
                // Stays of sockets first seen mid-stay have no true length.
                if s.state != t.new && !s.since_is_lower_bound {
                    let us = t.ts_ns.saturating_sub(s.since_ns) / 1000;
                    let h = self.stays.entry(s.state).or_insert_with(|| {
                        Histogram::new_with_bounds(1, MAX_STAY_US, 3).expect("valid bounds")
                    });
                    h.saturating_record(us);
                }
            }
        }
        if let Some(target) = self.options.timeline {
            self.follow(target, &t, &ends);
        }
        if let Some(r) = self.table.apply(&t) {
            if self.options.in_window(r.left_ns) && self.followed(r.key, &r.socket) {
                self.events.push(Event::Resolved(r));
            }
        }
    }

    /// Keeps the transitions of the `--timeline` socket. A socket that connect() opens has
    /// no local port yet at CLOSE -> SYN_SENT, so that birth is held until a later
    /// transition of the same socket matches an ADDR:PORT.
    fn follow(&mut self, target: Target, t: &Transition, ends: &Endpoints) {
        if target.matches(Some(t.sk), ends) {
            if let Some(birth) = self.births.remove(&t.sk) {
                self.events.push(Event::Transition(birth));
            }
            self.events.push(Event::Transition(t.clone()));
        } else if t.new == TcpState::Close.into() {
            self.births.remove(&t.sk);
        } else if t.old == TcpState::Close.into() && matches!(target, Target::Addr(_)) {
            self.births.insert(t.sk, t.clone());
        }
    }

    /// Flags every socket whose threshold passed by `now_ns`, at the time it passed.
    fn advance(&mut self, now_ns: u64) {
        for s in self.table.due(now_ns) {
            let threshold = self
                .table
                .thresholds()
                .get(s.socket.state)
                .unwrap_or_default();
            let at_ns = s
                .socket
                .since_ns
                .saturating_add(threshold.as_nanos() as u64);
            if self.options.in_window(at_ns) && self.followed(s.key, &s.socket) {
                self.events.push(Event::Stuck {
                    key: s.key,
                    socket: s.socket,
                    at_ns,
                    threshold,
                });
            }
        }
    }

    /// Whether the report shows this socket's decisions: all, or the `--timeline` one's.
    fn followed(&self, key: SocketKey, socket: &Socket) -> bool {
        self.options
            .timeline
            .is_none_or(|t| t.matches(key.sk(), &socket.ends))
    }

    /// Ends the rebuild at the end of the window or of the recording; returns that time.
    pub fn finish(&mut self) -> u64 {
        let end = self.last_ns.min(self.options.to_ns);
        self.advance(end);
        end
    }

    /// The owners the live run resolved for `socket`'s current stay.
    pub fn owners_of(&self, socket: &Socket) -> Option<&Ownership> {
        self.owners.get(&stay(socket))
    }
}
