//! Rebuilds an incident from a recording: the recorded transitions go through the same
//! [`Engine`] as a live run, under the report's thresholds, on the recording's clock.
//! Owners come from what the live run resolved, and the stays the live run found gone
//! (their transitions lost) are dropped as it dropped them.

use std::collections::{BTreeMap, HashMap, HashSet};

use hdrhistogram::Histogram;
use tracer_common::TcpState;

use crate::{
    aggregate::Resolved,
    decode::Transition,
    model::{Endpoints, Ownership, Socket, SocketKey, State, Stay, Target, Thresholds},
    record::{Entry, FailedEntry, Header, SocketEntry, StopEntry},
    stuck::{Decision, Engine, Flag},
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
    /// A socket crossed its state's threshold.
    Stuck(Flag),
    /// A stuck socket left its state.
    Resolved(Resolved),
}

impl Event {
    /// When it happened (monotonic ns); for a socket open at start, the lower bound of its
    /// entry into its state.
    pub fn ts_ns(&self) -> u64 {
        match self {
            Event::Existing { socket, .. } => socket.since_ns,
            Event::Transition(t) => t.ts_ns,
            Event::Stuck(f) => f.at_ns,
            Event::Resolved(r) => r.left_ns,
        }
    }
}

/// Facts the live run recorded about itself.
#[derive(Clone, Debug, Default)]
pub struct Live {
    pub stuck: u64,
    pub resolved: u64,
    /// The probe's drop counter at its last report.
    pub lost: u64,
    /// Entries the recorder left out (disk too slow, or failing).
    pub unrecorded: u64,
    /// The stop entry, absent when the run was cut.
    pub stop: Option<StopEntry>,
    /// Writing the recording failed here: what follows is the stop entry alone.
    pub failed: Option<FailedEntry>,
}

/// The incident, rebuilt.
pub struct Replay {
    pub options: Options,
    /// The decisions, as the live run makes them.
    pub engine: Engine,
    pub events: Vec<Event>,
    /// Stays the live run flagged but found gone (their transitions lost): never reported.
    gone: HashSet<Stay>,
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
    /// Reused for each transition.
    decisions: Vec<Decision>,
}

impl Replay {
    /// An empty rebuild; `header` is the first segment's.
    pub fn new(options: Options, header: &Header) -> Self {
        Replay {
            engine: Engine::new(
                options.thresholds.clone(),
                header.max_sockets as usize,
                header.started_ns,
            ),
            options,
            events: Vec::new(),
            gone: HashSet::new(),
            transitions: BTreeMap::new(),
            stays: BTreeMap::new(),
            live: Live::default(),
            start_ns: header.started_ns,
            last_ns: header.started_ns,
            transitions_read: 0,
            births: HashMap::new(),
            decisions: Vec::new(),
        }
    }

    /// Starts over from a segment that does not follow the one before: its checkpoint is
    /// the truth from here on.
    pub fn restart(&mut self, header: &Header) {
        self.engine.restart(header.max_sockets as usize);
    }

    /// Applies one entry. `Socket` entries restore a checkpoint (`snapshot`: the first
    /// segment's, the sockets open at start) or the live run's corrections after lost
    /// transitions; the caller skips the checkpoint of a segment that follows the previous
    /// one.
    pub fn entry(&mut self, entry: Entry, snapshot: bool) {
        // The recording lasted at least to its latest entry (its stop, if it has one; not
        // past a failure, after which nothing was recorded).
        let seen = match &entry {
            Entry::Owners(o) => o.ts_ns,
            Entry::Stuck(s) => s.ts_ns,
            Entry::Resolved(r) => r.ts_ns,
            Entry::Lost { ts_ns, .. } => *ts_ns,
            Entry::Stop(s) if self.live.failed.is_none() => s.ts_ns,
            Entry::Failed(f) => f.ts_ns,
            Entry::Gone(g) => g.ts_ns,
            _ => 0,
        };
        self.last_ns = self.last_ns.max(seen);
        match entry {
            Entry::Transition(e) => self.transition(Transition::from(&e)),
            Entry::Socket(s) => self.restore(&s, snapshot),
            Entry::Owners(o) => {
                let stay = (o.ends.into(), State(o.state), o.since_ns);
                self.engine.owned(stay, o.ownership());
            }
            Entry::Gone(g) => {
                let stay = (g.ends.into(), State(g.state), g.since_ns);
                self.engine.gone(g.key.into(), stay);
                self.gone.insert(stay);
            }
            Entry::Stuck(_) => self.live.stuck += 1,
            Entry::Resolved(_) => self.live.resolved += 1,
            Entry::Lost { total, .. } => self.live.lost = self.live.lost.max(total),
            Entry::Gap { entries } => self.live.unrecorded += entries,
            Entry::Stop(stop) => {
                // Its count includes what the gaps of rotated-away segments said.
                self.live.unrecorded = self.live.unrecorded.max(stop.unrecorded);
                self.live.stop = Some(stop);
            }
            Entry::Failed(f) => self.live.failed = Some(f),
            // A later segment's header: the caller handles segments.
            Entry::Header(_) => {}
        }
    }

    fn restore(&mut self, s: &SocketEntry, snapshot: bool) {
        let (key, socket) = s.socket();
        if snapshot
            && self
                .options
                .timeline
                .is_some_and(|t| t.matches(key.sk(), &socket.ends))
        {
            self.events.push(Event::Existing { key, socket });
        }
        self.engine.restore(key, socket, &mut self.decisions);
        self.decide();
    }

    fn transition(&mut self, t: Transition) {
        self.transitions_read += 1;
        // The recording's span, which the window is checked against, includes what lies
        // after the window.
        self.last_ns = self.last_ns.max(t.ts_ns);
        if t.ts_ns > self.options.to_ns {
            return;
        }
        let ends = t.ends();
        let shown = self.options.in_window(t.ts_ns) && self.options.port_kept(&ends);
        if shown {
            *self.transitions.entry((t.old, t.new)).or_default() += 1;
            if let Some(s) = self.engine.table().get(SocketKey::Sk(t.sk)) {
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
        self.engine.transition(&t, &mut self.decisions);
        self.decide();
    }

    /// Keeps what the engine decided that the report shows.
    fn decide(&mut self) {
        for d in std::mem::take(&mut self.decisions) {
            let (key, socket, event) = match d {
                Decision::Stuck(f) => (f.key, f.socket, Event::Stuck(f)),
                Decision::Resolved(r) => (r.key, r.socket, Event::Resolved(r)),
                // The live run's evictions are in its summaries and stop entry.
                Decision::Evicted { .. } => continue,
            };
            if self.options.in_window(event.ts_ns()) && self.followed(key, &socket) {
                self.events.push(event);
            }
        }
    }

    /// Keeps the transitions of the `--timeline` socket. A socket that connect() opens has
    /// no local port yet at CLOSE -> SYN_SENT, and on some kernels (6.1, 6.12) an accepted
    /// socket's LISTEN -> SYN_RECV carries the listener's addresses (the state is set
    /// before the peer is copied): such a birth is held until a later transition of the
    /// same socket matches an ADDR:PORT.
    fn follow(&mut self, target: Target, t: &Transition, ends: &Endpoints) {
        if target.matches(Some(t.sk), ends) {
            if let Some(birth) = self.births.remove(&t.sk) {
                self.events.push(Event::Transition(birth));
            }
            self.events.push(Event::Transition(t.clone()));
        } else if t.new == TcpState::Close.into() {
            self.births.remove(&t.sk);
        } else if matches!(target, Target::Addr(_))
            && (t.old == TcpState::Close.into() || t.old == TcpState::Listen.into())
        {
            self.births.insert(t.sk, t.clone());
        }
    }

    /// Whether the report shows this socket's decisions: all, or the `--timeline` one's.
    fn followed(&self, key: SocketKey, socket: &Socket) -> bool {
        self.options
            .timeline
            .is_none_or(|t| t.matches(key.sk(), &socket.ends))
    }

    /// Ends the rebuild at the end of the window or of the recording; returns that time.
    /// Events come out in time order, without the stays the live run found gone.
    pub fn finish(&mut self) -> u64 {
        let end = self.last_ns.min(self.options.to_ns);
        self.engine.tick(end, &mut self.decisions);
        self.decide();
        let gone = &self.gone;
        self.events.retain(|e| match e {
            Event::Stuck(f) => !gone.contains(&f.socket.stay()),
            Event::Resolved(r) => !gone.contains(&r.socket.stay()),
            _ => true,
        });
        // Sockets open at start come with the lower bounds of their entries, in no order;
        // transitions from different CPUs may be a little out of order.
        self.events.sort_by_key(Event::ts_ns);
        end
    }

    /// The owners the live run resolved for `socket`'s current stay.
    pub fn owners_of(&self, socket: &Socket) -> Option<&Ownership> {
        self.engine.owners_of(socket)
    }
}
