//! Rebuilds an incident from a recording: the recorded transitions go through the same
//! [`Engine`] as a live run, under the report's thresholds, on the recording's clock.
//! Owners come from what the live run resolved, and the stays the live run found gone
//! (their transitions lost) are dropped as it dropped them.
//!
//! The recording is read twice, so that memory is bounded by the sockets alive at once,
//! not by the number of stays. A flag's line needs what only comes later: how its stay
//! ended, its owners when the live run resolved them after the report's threshold passed,
//! and whether the live run found the stay gone. The first pass ([`Pass::Learn`]) notes
//! those per flag ([`Slots`]: 16 bytes each, on a temporary file past the first few
//! thousand); the second ([`Pass::Show`]) makes the same decisions and hands out each event
//! as it comes, in the order the engine decides them (the live run's order), with what the
//! first learned; a report of few events is written from the first pass's, completed from
//! its notes, without the second. What either keeps: the socket table, the flags whose stay goes on (with
//! their owners), where the owners of stays still going on were recorded, the stays that
//! ended in the last seconds and may still get their owners, counts and histograms.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::File,
    io,
    time::Duration,
};

use hdrhistogram::Histogram;
use tracer_common::TcpState;

use super::slots::{Slot, SlotReader, Slots, GONE, STILL};
use crate::{
    aggregate::Resolved,
    decode::Transition,
    model::{Endpoints, Ownership, Socket, SocketKey, State, Stay, Target, Thresholds},
    output::Outcome,
    record::{reader::entry_at, Entry, FailedEntry, Header, SocketEntry, StopEntry},
    stuck::{Decision, Engine, Flag},
};

/// Longest stay the percentiles tell apart (about 52 days); longer ones count as that.
const MAX_STAY_US: u64 = 1 << 42;
/// How long after a stay ended the live run's owners of it may still come: it resolves
/// the owners of what it flagged before it writes their resolution, within a batch.
const LATE_OWNERS_NS: u64 = 10_000_000_000;
/// Size of the maps pruned of what no longer matters, before they are first pruned.
const PRUNE_FLOOR: usize = 4096;

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
    /// The live run's thresholds: only a stay that lasted this long can have owners.
    pub live_thresholds: Thresholds,
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

/// Something the report shows, in the order the engine decides it (for transitions of
/// the `--timeline` socket, the order recorded).
#[derive(Clone, Debug)]
pub enum Event {
    /// The socket was open when the recording started (`--timeline` only).
    Existing { key: SocketKey, socket: Socket },
    /// A transition (`--timeline` only).
    Transition(Transition),
    /// A socket crossed its state's threshold: its owners as the live run found them, and
    /// how its stay ended (in the first pass, still to be filled from slot `slot`).
    Stuck {
        flag: Flag,
        owners: Option<Box<Ownership>>,
        outcome: Outcome,
        slot: u64,
    },
    /// A stuck socket left its state (the slot of its flag, for the first pass).
    Resolved {
        resolved: Resolved,
        owners: Option<Box<Ownership>>,
        slot: Option<u64>,
    },
}

impl Event {
    /// When it happened (monotonic ns); for a socket open at start, the lower bound of its
    /// entry into its state.
    pub fn ts_ns(&self) -> u64 {
        match self {
            Event::Existing { socket, .. } => socket.since_ns,
            Event::Transition(t) => t.ts_ns,
            Event::Stuck { flag, .. } => flag.at_ns,
            Event::Resolved { resolved, .. } => resolved.left_ns,
        }
    }
}

/// Where an entry is in the recording: the segment's place in the order read, and its
/// offset in the file.
pub fn position(segment: usize, offset: u64) -> u64 {
    ((segment as u64) << 48) | offset
}

/// What a pass over the recording does with the flags.
pub enum Pass {
    /// The first: notes how each flag's stay ends and where its owners are; its events are
    /// completed from those notes once it is done.
    Learn(Learn),
    /// The second: hands out each event with what the first learned.
    Show(Show),
}

/// The segments' files, for the owners entries the slots point at.
pub struct Recorded {
    files: Vec<File>,
}

impl Recorded {
    /// The segments' `files`, in the order read.
    pub fn new(files: Vec<File>) -> Self {
        Recorded { files }
    }

    /// The owners entry at slot position `at` (0: none).
    pub fn owners(&self, at: u64) -> Option<Box<Ownership>> {
        let at = at.checked_sub(1)?;
        let file = self.files.get((at >> 48) as usize)?;
        match entry_at(file, at & ((1 << 48) - 1)) {
            Ok(Some(Entry::Owners(o))) => Some(Box::new(o.ownership())),
            _ => None,
        }
    }
}

/// How a flagged stay ended, from its slot, in a report that ends at `end_ns`.
fn outcome(slot: Slot, since_ns: u64, end_ns: u64) -> Outcome {
    let end = if slot.end == STILL { end_ns } else { slot.end };
    Outcome {
        total: Duration::from_nanos(end.saturating_sub(since_ns)),
        still_stuck: slot.end == STILL,
    }
}

/// The first pass's notes (none yet by default).
pub struct Learn {
    slots: Slots,
    /// Flags whose stay goes on.
    open: HashMap<Stay, Open>,
    /// Where the owners of stays going on, not flagged (yet), were recorded.
    owners_at: HashMap<Stay, u64>,
    /// Flagged stays that ended lately and may still get their owners.
    ended: HashMap<Stay, Ended>,
    /// Sizes of `open`, `owners_at` and `ended` at which they are next pruned.
    prune_at: [usize; 3],
}

/// A flag whose stay goes on, in the first pass.
struct Open {
    index: u64,
    /// Earlier flags of the same stay: its socket was restored from the checkpoint of a
    /// segment that does not follow the one before, and flagged again.
    earlier: Vec<u64>,
    key: SocketKey,
    owners: u64,
}

impl Open {
    /// Fills the slots of the stay's flags.
    fn end(&self, slots: &mut Slots, end: u64) -> io::Result<()> {
        let slot = Slot {
            end,
            owners: self.owners,
        };
        for &i in self.earlier.iter().chain([&self.index]) {
            slots.set(i, slot)?;
        }
        Ok(())
    }
}

/// A flagged stay that ended, in the first pass.
struct Ended {
    index: u64,
    slot: Slot,
}

/// The second pass: what the first learned, and what it needs to show it.
pub struct Show {
    slots: SlotReader,
    recorded: Recorded,
    /// Where the report ends: a stay still going on is counted to there.
    end_ns: u64,
    /// Flags whose stay goes on: their slot and owners.
    open: HashMap<Stay, Shown>,
    /// The size of `open` at which it is next pruned.
    prune_at: usize,
}

/// A flag whose stay goes on, in the second pass.
struct Shown {
    key: SocketKey,
    slot: Slot,
    owners: Option<Box<Ownership>>,
}

impl Show {
    /// The second pass over the `recorded` segments, with the `slots` the first filled,
    /// for a report that ends at `end_ns`.
    pub fn new(slots: SlotReader, recorded: Recorded, end_ns: u64) -> Self {
        Show {
            slots,
            recorded,
            end_ns,
            open: HashMap::new(),
            prune_at: PRUNE_FLOOR,
        }
    }
}

impl Default for Learn {
    fn default() -> Self {
        Learn {
            slots: Slots::default(),
            open: HashMap::new(),
            owners_at: HashMap::new(),
            ended: HashMap::new(),
            prune_at: [PRUNE_FLOOR; 3],
        }
    }
}

impl Learn {
    /// The slots filled, for the second pass.
    pub fn into_slots(self) -> io::Result<SlotReader> {
        self.slots.into_reader()
    }

    /// Fills in an event of this pass from the slots, for a report that ends at `end_ns`;
    /// `None` for a stay the live run found gone.
    pub fn complete(
        &self,
        ev: Event,
        recorded: &Recorded,
        end_ns: u64,
    ) -> io::Result<Option<Event>> {
        Ok(match ev {
            Event::Stuck { flag, slot, .. } => {
                let s = self.slots.get(slot)?;
                (s.end != GONE).then(|| Event::Stuck {
                    outcome: outcome(s, flag.socket.since_ns, end_ns),
                    owners: recorded.owners(s.owners),
                    flag,
                    slot,
                })
            }
            Event::Resolved {
                resolved,
                slot: Some(slot),
                ..
            } => {
                let s = self.slots.get(slot)?;
                (s.end != GONE).then(|| Event::Resolved {
                    resolved,
                    owners: recorded.owners(s.owners),
                    slot: Some(slot),
                })
            }
            ev => Some(ev),
        })
    }

    /// Where the owners of `socket`'s stay were recorded, if it is flagged ([`position`]
    /// plus one; 0 for nowhere).
    pub fn owners_of(&self, socket: &Socket) -> u64 {
        self.open.get(&socket.stay()).map_or(0, |o| o.owners)
    }
}

/// Facts the live run recorded about itself.
#[derive(Clone, Debug, Default)]
pub struct Live {
    pub stuck: u64,
    pub resolved: u64,
    /// The probe's drop counter at its last report.
    pub lost: u64,
    /// Entries the recorder left out (disk too slow or failing, or the budget full).
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
    pub pass: Pass,
    /// Events of the last entry, for the caller to take (in the first pass, still to be
    /// completed from the slots: [`Learn::complete`]).
    pub events: Vec<Event>,
    /// `--timeline`: sockets open at start, shown in order before anything else.
    existing: Vec<Event>,
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
    /// An empty rebuild for `pass`; `header` is the first segment's.
    pub fn new(options: Options, header: &Header, pass: Pass) -> Self {
        Replay {
            engine: Engine::new(
                options.thresholds.clone(),
                header.max_sockets as usize,
                header.started_ns,
            ),
            options,
            pass,
            events: Vec::new(),
            existing: Vec::new(),
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

    /// Applies one entry, found at `at` ([`position`]). `Socket` entries restore a
    /// checkpoint (`snapshot`: the first segment's, the sockets open at start) or the live
    /// run's corrections after lost transitions; the caller skips the checkpoint of a
    /// segment that follows the previous one.
    pub fn entry(&mut self, entry: Entry, at: u64, snapshot: bool) -> io::Result<()> {
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
        if !matches!(entry, Entry::Socket(_)) {
            self.show_existing();
        }
        match entry {
            Entry::Transition(e) => self.transition(Transition::from(&e))?,
            Entry::Socket(s) => self.restore(&s, snapshot)?,
            Entry::Owners(o) => {
                let stay = (o.ends.into(), State(o.state), o.since_ns);
                self.owners_found(stay, at + 1)?;
            }
            Entry::Gone(g) => {
                let stay = (g.ends.into(), State(g.state), g.since_ns);
                self.engine.gone(g.key.into(), stay);
                self.stay_gone(stay)?;
            }
            Entry::Stuck(_) => self.live.stuck += 1,
            Entry::Resolved(r) => {
                self.live.resolved += 1;
                // The live run resolves the owners of what it flagged before it writes
                // the resolution: none come after this.
                if let Pass::Learn(l) = &mut self.pass {
                    l.ended.remove(&(r.ends.into(), State(r.state), r.since_ns));
                }
            }
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
        Ok(())
    }

    fn restore(&mut self, s: &SocketEntry, snapshot: bool) -> io::Result<()> {
        let (key, socket) = s.socket();
        if snapshot
            && self
                .options
                .timeline
                .is_some_and(|t| t.matches(key.sk(), &socket.ends))
        {
            self.event(Event::Existing { key, socket });
        }
        self.engine.restore(key, socket, &mut self.decisions);
        self.decide()
    }

    fn transition(&mut self, t: Transition) -> io::Result<()> {
        self.transitions_read += 1;
        // The recording's span, which the window is checked against, includes what lies
        // after the window.
        self.last_ns = self.last_ns.max(t.ts_ns);
        if t.ts_ns > self.options.to_ns {
            return Ok(());
        }
        let ends = t.ends();
        let shown = self.options.in_window(t.ts_ns) && self.options.port_kept(&ends);
        let ended = self
            .engine
            .table()
            .get(SocketKey::Sk(t.sk))
            .filter(|s| s.state != t.new)
            .copied();
        if let Some(s) = ended.filter(|s| shown && !s.since_is_lower_bound) {
            // Stays of sockets first seen mid-stay have no true length.
            let us = t.ts_ns.saturating_sub(s.since_ns) / 1000;
            let h = self.stays.entry(s.state).or_insert_with(|| {
                Histogram::new_with_bounds(1, MAX_STAY_US, 3).expect("valid bounds")
            });
            h.saturating_record(us);
        }
        if shown {
            *self.transitions.entry((t.old, t.new)).or_default() += 1;
        }
        // What crossed its threshold before the transition comes before it.
        self.engine
            .tick(t.ts_ns.saturating_sub(1), &mut self.decisions);
        self.decide()?;
        if let Some(target) = self.options.timeline {
            self.follow(target, &t, &ends);
        }
        self.engine.transition(&t, &mut self.decisions);
        self.decide()?;
        // The owners of a stay that ended are no longer wanted.
        if let (Some(s), Pass::Learn(l)) = (ended, &mut self.pass) {
            if !l.owners_at.is_empty() {
                l.owners_at.remove(&s.stay());
            }
        }
        Ok(())
    }

    /// Hands on what the engine decided that the report shows, and notes (or reads) what
    /// the flags need.
    fn decide(&mut self) -> io::Result<()> {
        for d in std::mem::take(&mut self.decisions) {
            match d {
                Decision::Stuck(flag) => self.flagged(flag)?,
                Decision::Resolved(r) => self.resolved(r)?,
                // The live run's evictions are in its summaries and stop entry.
                Decision::Evicted { .. } => {}
            }
        }
        self.prune()
    }

    /// Whether the report shows an event of this socket at `ts_ns`: in the window, and
    /// all sockets' or the `--timeline` one's.
    fn shows(&self, ts_ns: u64, key: SocketKey, socket: &Socket) -> bool {
        self.options.in_window(ts_ns) && self.followed(key, socket)
    }

    fn flagged(&mut self, flag: Flag) -> io::Result<()> {
        let stay = flag.socket.stay();
        let shows = self.shows(flag.at_ns, flag.key, &flag.socket);
        match &mut self.pass {
            Pass::Learn(l) => {
                let index = l.slots.add()?;
                let mut open = Open {
                    index,
                    earlier: Vec::new(),
                    key: flag.key,
                    owners: l.owners_at.remove(&stay).unwrap_or(0),
                };
                if let Some(old) = l.open.remove(&stay) {
                    open.earlier = old.earlier;
                    open.earlier.push(old.index);
                    open.owners = open.owners.max(old.owners);
                }
                l.open.insert(stay, open);
                if shows {
                    self.events.push(Event::Stuck {
                        flag,
                        owners: None,
                        outcome: outcome(still(0), 0, 0),
                        slot: index,
                    });
                }
            }
            Pass::Show(s) => {
                let slot = s.slots.next_slot()?;
                let owners = s.recorded.owners(slot.owners);
                if shows && slot.end != GONE {
                    self.events.push(Event::Stuck {
                        flag,
                        owners: owners.clone(),
                        outcome: outcome(slot, flag.socket.since_ns, s.end_ns),
                        slot: 0,
                    });
                }
                s.open.insert(
                    stay,
                    Shown {
                        key: flag.key,
                        slot,
                        owners,
                    },
                );
            }
        }
        Ok(())
    }

    fn resolved(&mut self, r: Resolved) -> io::Result<()> {
        let stay = r.socket.stay();
        let shows = self.shows(r.left_ns, r.key, &r.socket);
        let lasted = r.left_ns.saturating_sub(r.socket.since_ns);
        let live_flags = self
            .options
            .live_thresholds
            .get(r.socket.state)
            .is_some_and(|d| lasted >= d.as_nanos() as u64);
        match &mut self.pass {
            Pass::Learn(l) => {
                let open = l.open.remove(&stay);
                if let Some(o) = &open {
                    o.end(&mut l.slots, r.left_ns)?;
                    if live_flags {
                        let slot = Slot {
                            end: r.left_ns,
                            owners: o.owners,
                        };
                        l.ended.insert(
                            stay,
                            Ended {
                                index: o.index,
                                slot,
                            },
                        );
                    }
                }
                if shows {
                    self.events.push(Event::Resolved {
                        resolved: r,
                        owners: None,
                        slot: open.map(|o| o.index),
                    });
                }
            }
            Pass::Show(s) => {
                let shown = s.open.remove(&stay);
                if shows && shown.as_ref().is_none_or(|f| f.slot.end != GONE) {
                    self.events.push(Event::Resolved {
                        resolved: r,
                        owners: shown.and_then(|f| f.owners),
                        slot: None,
                    });
                }
            }
        }
        Ok(())
    }

    /// The live run's owners of `stay` were recorded at `at` ([`position`] plus one).
    fn owners_found(&mut self, stay: Stay, at: u64) -> io::Result<()> {
        let Pass::Learn(l) = &mut self.pass else {
            return Ok(());
        };
        if let Some(o) = l.open.get_mut(&stay) {
            o.owners = at;
        } else if let Some(e) = l.ended.get_mut(&stay) {
            e.slot.owners = at;
            l.slots.set(e.index, e.slot)?;
        } else {
            l.owners_at.insert(stay, at);
        }
        Ok(())
    }

    /// The live run found `stay` gone: its flag and resolution are not shown.
    fn stay_gone(&mut self, stay: Stay) -> io::Result<()> {
        match &mut self.pass {
            Pass::Learn(l) => {
                l.owners_at.remove(&stay);
                if let Some(o) = l.open.remove(&stay) {
                    o.end(&mut l.slots, GONE)?;
                } else if let Some(e) = l.ended.remove(&stay) {
                    let owners = e.slot.owners;
                    l.slots.set(e.index, Slot { end: GONE, owners })?;
                }
            }
            Pass::Show(s) => {
                s.open.remove(&stay);
            }
        }
        Ok(())
    }

    /// Forgets what no longer matters, when a map has doubled since it was last pruned:
    /// flags of sockets the table dropped (evicted while stuck: they never resolve), owners
    /// of stays no longer going on, stays that ended too long ago to get their owners.
    fn prune(&mut self) -> io::Result<()> {
        let table = self.engine.table();
        let current =
            |key: SocketKey, stay: &Stay| table.get(key).is_some_and(|s| s.stay() == *stay);
        match &mut self.pass {
            Pass::Learn(l) => {
                if l.open.len() > l.prune_at[0] {
                    let dropped: Vec<Stay> = l
                        .open
                        .iter()
                        .filter(|(stay, o)| !current(o.key, stay))
                        .map(|(stay, _)| *stay)
                        .collect();
                    for stay in dropped {
                        if let Some(o) = l.open.remove(&stay) {
                            o.end(&mut l.slots, STILL)?;
                        }
                    }
                    l.prune_at[0] = PRUNE_FLOOR.max(2 * l.open.len());
                }
                if l.owners_at.len() > l.prune_at[1] {
                    let stays: HashSet<Stay> = table.sockets().map(|(_, s)| s.stay()).collect();
                    l.owners_at.retain(|stay, _| stays.contains(stay));
                    l.prune_at[1] = PRUNE_FLOOR.max(2 * l.owners_at.len());
                }
                if l.ended.len() > l.prune_at[2] {
                    let since = self.last_ns.saturating_sub(LATE_OWNERS_NS);
                    l.ended.retain(|_, e| e.slot.end >= since);
                    l.prune_at[2] = PRUNE_FLOOR.max(2 * l.ended.len());
                }
            }
            Pass::Show(s) => {
                if s.open.len() > s.prune_at {
                    s.open.retain(|stay, f| current(f.key, stay));
                    s.prune_at = PRUNE_FLOOR.max(2 * s.open.len());
                }
            }
        }
        Ok(())
    }

    /// Hands on a `--timeline` event.
    fn event(&mut self, e: Event) {
        match e {
            Event::Existing { .. } => self.existing.push(e),
            _ => self.events.push(e),
        }
    }

    /// The sockets open at start, in the order of their entry into their state.
    fn show_existing(&mut self) {
        if !self.existing.is_empty() {
            self.existing.sort_by_key(Event::ts_ns);
            self.events.append(&mut self.existing);
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
                self.event(Event::Transition(birth));
            }
            self.event(Event::Transition(t.clone()));
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
    pub fn finish(&mut self) -> io::Result<u64> {
        let end = self.last_ns.min(self.options.to_ns);
        self.show_existing();
        self.engine.tick(end, &mut self.decisions);
        self.decide()?;
        if let Pass::Learn(l) = &mut self.pass {
            for o in l.open.values() {
                o.end(&mut l.slots, STILL)?;
            }
        }
        Ok(end)
    }

    /// The owners the live run resolved for `socket`'s current stay, if it is flagged (in
    /// the second pass; the first has [`Learn::owners_of`]).
    pub fn owners_of(&self, socket: &Socket) -> Option<Box<Ownership>> {
        match &self.pass {
            Pass::Show(s) => s.open.get(&socket.stay())?.owners.clone(),
            Pass::Learn(_) => None,
        }
    }

    /// Entries in the maps that grow with the sockets alive, for tests of the report's
    /// footprint (besides the table, and the first pass's window of slots, a constant).
    #[cfg(test)]
    pub fn footprint(&self) -> usize {
        let pass = match &self.pass {
            Pass::Learn(l) => l.open.len() + l.owners_at.len() + l.ended.len(),
            Pass::Show(s) => s.open.len(),
        };
        pass + self.events.len() + self.existing.len() + self.births.len()
    }
}

/// The slot of a flag whose stay did not end.
fn still(owners: u64) -> Slot {
    Slot { end: STILL, owners }
}
