//! The live driver around the [`Engine`]: feeds it what the probe reports, resolves the
//! owners of what it flags, and hands every decision to the output and the recorder.
//!
//! Owners are looked up on a thread of their own ([`Worker`]): the loop sends it the flags
//! due and goes on reading the ring, and reports each batch when its answer comes. What
//! the engine decides meanwhile about flagged sockets (their resolutions) waits behind the
//! flags still being looked up, so records still come out in time order and a socket's
//! resolution never before its flag.

use std::{
    collections::VecDeque,
    io::{self, Write},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::sync::Notify;

use super::{
    focus::Focus,
    reconcile::{Listing, Reason, Reconciler},
    written, ATTRIBUTION_SPACING,
};
use crate::{
    aggregate::Resolved,
    attribute::{
        procfs::ProcFs,
        worker::{Stopped, Worker},
        Attribution, Attributor, Host, Selection,
    },
    decode,
    metrics::{Counters, Published, Snapshot},
    model::{HeldBy, LastIo, Ownership, Socket, SocketKey},
    output::{monotonic_ns, summary, Output, Reconciled, Rfc3339, SocketReport, SummaryReason},
    probe::Probe,
    record::{
        writer::Recorder, Entry, GoneEntry, ResolvedEntry, SocketEntry, StopEntry, StuckEntry,
    },
    stuck::{Decision, Engine, Flag},
};

/// Least time between two reports of runs of the probe the kernel skipped.
const MISSED_SPACING: Duration = Duration::from_secs(60);

/// What one run counted.
#[derive(Debug, Default)]
pub(super) struct Counts {
    pub events: u64,
    pub undecodable: u64,
    pub lost: u64,
    /// Runs of the probe the kernel skipped (see [`Probe::missed`]), as last read.
    pub missed: u64,
    pub flagged: u64,
    pub resolved: u64,
}

/// What waits to be reported, in time order, behind flags whose owners are being looked up.
enum Waiting {
    /// Flags sent to the lookup thread, answered in the order sent.
    Flags(Vec<Flag>),
    /// A flagged socket left its state.
    Resolved(Resolved),
}

/// The live side of the data path around the [`Engine`]: feeds it from the ring buffer and
/// the clock, resolves the owners of what it flags (the only side effects: /proc, sock_diag
/// and the probe's last send/receive), and hands every decision to the output and the
/// recorder.
pub(super) struct Session<W: Write, E: Write> {
    pub(super) output: Output<W, E>,
    pub(super) engine: Engine,
    /// The owner lookups, on their own thread.
    owners: Worker,
    /// Open descriptor counts of owners, for summaries.
    proc: ProcFs,
    /// Flags not yet sent for their owners: flags that fall due close together share one
    /// lookup.
    pending: Vec<Flag>,
    /// Flags sent for their owners and what came after them, oldest first.
    waiting: VecDeque<Waiting>,
    /// How many batches of `waiting` are flags still being looked up.
    asked: usize,
    /// Print every transition (`--events`).
    events: bool,
    /// `--pid` with `--events`: print only the transitions of that process's sockets.
    focus: Option<Focus>,
    /// Which stuck sockets to report, by owner: `--pid` in watch mode, `--container`,
    /// `--cgroup`.
    selection: Selection,
    /// Earliest time (monotonic ns) of the next attribution.
    next_attribution_ns: u64,
    /// Some lookup failed (warned about once).
    attribution_failed: bool,
    /// Reading the probe's last send/receive failed once (warned about).
    io_failed: bool,
    /// `--record`: after a failed write (said once), it counts what it leaves out.
    recorder: Option<Recorder>,
    pub(super) counts: Counts,
    /// Reused between batches.
    decisions: Vec<Decision>,
    /// Sockets (and of them, flagged ones) evicted since the last warning.
    evicted_unsaid: (u64, u64),
    /// Sets the table right against the kernel's list after losses and evictions.
    reconciler: Option<Reconciler>,
    /// When missed runs of the probe were last said, and their total then.
    missed_said_at: Option<Instant>,
    missed_said: u64,
    /// Counted for `--metrics` (a few increments per event, whether published or not).
    metric_counts: Counters,
    /// `--metrics`: where snapshots go for the server.
    published: Option<Published>,
}

impl<W: Write, E: Write> Session<W, E> {
    /// A session writing to `output`, around `engine` (with what seeding it `decided`),
    /// naming owners with `attributor`, printing every transition when `events`, and
    /// showing only sockets `owner_pid` is involved in when given. The attributor moves to
    /// a thread of its own, which fails to start only when the system is out of threads.
    pub(super) fn new(
        output: Output<W, E>,
        engine: Engine,
        decided: Vec<Decision>,
        attributor: Attributor<Host>,
        recorder: Option<Recorder>,
        events: bool,
        owner_pid: Option<u32>,
    ) -> io::Result<Self> {
        Ok(Self {
            output,
            engine,
            owners: Worker::spawn(attributor)?,
            proc: ProcFs::default(),
            pending: Vec::new(),
            waiting: VecDeque::new(),
            asked: 0,
            events,
            focus: None,
            selection: Selection {
                pid: owner_pid,
                ..Selection::default()
            },
            next_attribution_ns: 0,
            attribution_failed: false,
            io_failed: false,
            recorder,
            counts: Counts::default(),
            decisions: decided,
            evicted_unsaid: (0, 0),
            reconciler: None,
            missed_said_at: None,
            missed_said: 0,
            metric_counts: Counters::default(),
            published: None,
        })
    }

    /// Checks the table against the kernel's list with `reconciler` after transitions
    /// are lost or watched sockets evicted.
    pub(super) fn reconcile_with(&mut self, reconciler: Reconciler) {
        self.reconciler = Some(reconciler);
    }

    /// Publishes a snapshot for the metrics server to `published` on each
    /// [`Session::publish`].
    pub(super) fn publish_to(&mut self, published: Published) {
        self.published = Some(published);
    }

    /// Whether metrics are published.
    pub(super) fn publishes(&self) -> bool {
        self.published.is_some()
    }

    /// Publishes what the metrics show now: counters, sockets per state, and the stuck
    /// sockets grouped as the summary groups them. Descriptor counts are left to the
    /// server, which reads them on scrape.
    pub(super) fn publish(&mut self) {
        let Some(published) = &self.published else {
            return;
        };
        self.engine.prune_owners();
        let selection = &self.selection;
        // Stuck sockets whose owner is not known yet count too (as comm="unknown"); the
        // owner selections apply to those whose owner is known.
        let stuck = self
            .engine
            .stuck()
            .filter(|(_, s, o)| o.is_none_or(|o| selection.admits(o, s)))
            .map(|(_, s, o)| (s, o));
        let groups = summary::group(stuck, |_| None);
        published.publish(Snapshot {
            counters: self.metric_counts.clone(),
            events: self.counts.events,
            lost: self.counts.lost,
            missed: self.counts.missed,
            sockets: self.engine.per_state().collect(),
            groups,
            at_ns: monotonic_ns(),
        });
    }

    /// Prints only the transitions of the sockets `focus` follows (`--events --pid`).
    pub(super) fn focus(&mut self, focus: Focus) {
        self.focus = Some(focus);
    }

    /// Also shows only the stuck sockets an owner of which is in a container whose id
    /// starts with `container`, or in a cgroup whose path starts with `cgroup`.
    pub(super) fn select_owners(&mut self, container: Option<String>, cgroup: Option<String>) {
        self.selection.container = container;
        self.selection.cgroup = cgroup;
    }

    /// Reads every pending record into the engine; prints transitions in `--events` mode
    /// and what the engine decided.
    pub(super) fn drain(&mut self, ring: &mut RingBuf<MapData>, probe: &Probe) -> io::Result<()> {
        let mut read_any = false;
        while let Some(item) = ring.next() {
            read_any = true;
            match decode::decode(&item) {
                Ok(t) => {
                    self.counts.events += 1;
                    self.metric_counts.transition(t.old, t.new);
                    if let Some(r) = &mut self.reconciler {
                        r.touched(t.ends());
                    }
                    if let Some(r) = &mut self.recorder {
                        r.transition(&t);
                    }
                    if self.events && self.focus.as_mut().is_none_or(|f| f.admits(&t)) {
                        self.output.transition(&t)?;
                    }
                    self.engine.transition(&t, &mut self.decisions);
                    if !self.decisions.is_empty() {
                        self.decide(probe)?;
                    }
                }
                Err(e) => {
                    if self.counts.undecodable == 0 {
                        eprintln!(
                            "tracer: warning: {e}; the probe and this binary disagree, rebuild both"
                        );
                    }
                    self.counts.undecodable += 1;
                }
            }
        }
        if read_any {
            self.flush()?;
        }
        Ok(())
    }

    /// Handles the engine's decisions. A resolution waits behind the flags still waiting
    /// for their owners, which are older (its own among them, maybe): records come out in
    /// time order.
    pub(super) fn decide(&mut self, probe: &Probe) -> io::Result<()> {
        let mut decisions = std::mem::take(&mut self.decisions);
        for d in decisions.drain(..) {
            match d {
                Decision::Stuck(flag) => self.pending.push(flag),
                Decision::Resolved(r) => {
                    // Flags older than it are looked up now rather than after the spacing.
                    self.ask(probe)?;
                    match self.waiting.is_empty() {
                        true => self.resolve(&r)?,
                        false => self.waiting.push_back(Waiting::Resolved(r)),
                    }
                }
                // Said once a second at most (check_losses): a full table under churn
                // evicts often.
                Decision::Evicted {
                    sockets,
                    stuck,
                    watched,
                } => {
                    self.evicted_unsaid.0 += sockets;
                    self.evicted_unsaid.1 += stuck;
                    if watched > 0 {
                        if let Some(r) = &mut self.reconciler {
                            r.ask(Reason::Evicted);
                        }
                    }
                }
            }
        }
        self.decisions = decisions;
        Ok(())
    }

    /// Pushes output, and the recording's pending entries, out.
    fn flush(&mut self) -> io::Result<()> {
        if let Some(r) = &mut self.recorder {
            let engine = &self.engine;
            let flushed = r.flush(monotonic_ns(), engine.table().sockets(), |s| {
                engine.owners_of(s)
            });
            if let Err(e) = flushed {
                eprintln!("tracer: warning: {e}; the live trace goes on");
            }
        }
        self.output.flush()
    }

    /// Writes the stop entry and closes the recording, waiting for its disk until
    /// `deadline` at most; returns the entries it left out.
    pub(super) fn finish_recording(&mut self, end_ns: u64, deadline: Instant) -> u64 {
        let Some(mut r) = self.recorder.take() else {
            return 0;
        };
        let stop = StopEntry {
            ts_ns: end_ns,
            events: self.counts.events,
            lost: self.counts.lost,
            // The recorder counts.
            unrecorded: 0,
        };
        if let Err(e) = r.finish(stop, deadline) {
            eprintln!("tracer: warning: {e}");
        }
        r.unrecorded()
    }

    fn resolve(&mut self, r: &Resolved) -> io::Result<()> {
        let Some(ownership) = self.engine.owners_of(&r.socket) else {
            // Flagged, then found gone: never reported.
            return Ok(());
        };
        self.counts.resolved += 1;
        self.metric_counts.resolved(r.socket.state);
        if let Some(rec) = &mut self.recorder {
            rec.push(Entry::Resolved(ResolvedEntry {
                ts_ns: r.left_ns,
                key: r.key.into(),
                ends: r.socket.ends.into(),
                state: r.socket.state.0,
                since_ns: r.socket.since_ns,
                new: r.new.0,
            }));
        }
        if !self.shown(ownership, &r.socket) {
            return Ok(());
        }
        let report = SocketReport {
            key: r.key,
            socket: &r.socket,
            ownership,
        };
        self.output.resolved(&report, r.left_ns, r.new)
    }

    /// When the stuck timer should fire next (monotonic ns): at the next threshold, or
    /// when pending flags may be sent (a lookup under way sends them when it ends).
    pub(super) fn next_flag_ns(&self) -> Option<u64> {
        let next = match self.pending.is_empty() || self.asked > 0 {
            true => self.engine.next_deadline(),
            false => Some(0),
        };
        next.map(|d| d.max(self.next_attribution_ns))
    }

    /// Flags the sockets past their threshold at `now_ns` and, unless a lookup is under way
    /// or one began too recently, sends them for their owners. The caller drains the ring
    /// first, so a socket that left in time is not flagged.
    pub(super) fn flag_due(&mut self, probe: &Probe, now_ns: u64) -> io::Result<()> {
        self.engine.tick(now_ns, &mut self.decisions);
        self.decide(probe)?;
        self.ask_when_due(probe)?;
        self.flush()
    }

    /// Notified when owners found may be taken with [`Session::owners_found`].
    pub(super) fn owners_ready(&self) -> Arc<Notify> {
        self.owners.ready()
    }

    /// Reports the batches whose owners were found (and what waited behind them), then
    /// sends the flags that fell due meanwhile, if it is time.
    pub(super) fn owners_found(&mut self, probe: &Probe) -> io::Result<()> {
        while self.asked > 0 {
            let found = match self.owners.try_answer() {
                Ok(Some(found)) => found,
                Ok(None) => break,
                Err(stopped) => self.without_owners(stopped),
            };
            self.answered(found, probe)?;
        }
        self.ask_when_due(probe)?;
        self.flush()
    }

    /// Reports every flag raised so far, waiting for their owners: for the end of the run.
    pub(super) fn attribute(&mut self, probe: &Probe) -> io::Result<()> {
        self.ask(probe)?;
        while self.asked > 0 {
            let found = self
                .owners
                .answer()
                .unwrap_or_else(|stopped| self.without_owners(stopped));
            self.answered(found, probe)?;
        }
        Ok(())
    }

    /// Sends the pending flags for their owners, unless a lookup is under way (its end
    /// sends them) or the last one began less than [`ATTRIBUTION_SPACING`] ago.
    fn ask_when_due(&mut self, probe: &Probe) -> io::Result<()> {
        if self.asked == 0 && monotonic_ns() >= self.next_attribution_ns {
            self.ask(probe)?;
        }
        Ok(())
    }

    /// Sends the pending flags for their owners now.
    fn ask(&mut self, probe: &Probe) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let flags = std::mem::take(&mut self.pending);
        let query: Vec<_> = flags
            .iter()
            .map(|f| (f.socket.ends, f.socket.state))
            .collect();
        self.next_attribution_ns = monotonic_ns() + ATTRIBUTION_SPACING.as_nanos() as u64;
        self.waiting.push_back(Waiting::Flags(flags));
        self.asked += 1;
        if let Err(stopped) = self.owners.ask(query) {
            let found = self.without_owners(stopped);
            return self.answered(found, probe);
        }
        Ok(())
    }

    /// What stands for the owners of the oldest batch asked about when the lookup thread
    /// has stopped: none known (warned about once).
    fn without_owners(&mut self, stopped: Stopped) -> Attribution {
        if !self.attribution_failed {
            eprintln!("tracer: warning: {stopped}; stuck sockets are reported without owners");
            self.attribution_failed = true;
        }
        let flags = match self.waiting.front() {
            Some(Waiting::Flags(f)) => f.len(),
            _ => 0,
        };
        let unknown = Ownership {
            held_by: HeldBy::Unknown,
            owners: Vec::new(),
            last_io: None,
        };
        Attribution {
            owners: vec![unknown; flags],
            failed: Vec::new(),
        }
    }

    /// Reports the oldest batch asked about with the owners `found` for it, then what
    /// waited behind it up to the next batch.
    fn answered(&mut self, found: Attribution, probe: &Probe) -> io::Result<()> {
        // The oldest entry is always a batch: what waits behind one goes out with it.
        if let Some(Waiting::Flags(flags)) = self.waiting.pop_front() {
            self.asked -= 1;
            self.report(flags, found, probe)?;
        }
        while let Some(w) = self.waiting.pop_front() {
            match w {
                Waiting::Resolved(r) => self.resolve(&r)?,
                batch => {
                    self.waiting.push_front(batch);
                    break;
                }
            }
        }
        Ok(())
    }

    /// Reports `flags` with their owners `found` (and the last process to send or receive
    /// on them). A socket the kernel no longer has in its flagged state, although the
    /// engine still holds it there, lost its transition: it is dropped, and the recording
    /// says so.
    fn report(&mut self, flags: Vec<Flag>, found: Attribution, probe: &Probe) -> io::Result<()> {
        if let Some(e) = found.failed.first() {
            if !self.attribution_failed {
                eprintln!("tracer: warning: {e}; stuck sockets there are reported without owners");
                self.attribution_failed = true;
            }
        }
        for (flag, mut ownership) in flags.into_iter().zip(found.owners) {
            let stay = flag.socket.stay();
            if ownership.held_by == HeldBy::Gone && self.engine.current(&flag) {
                self.engine.gone(flag.key, stay);
                if let Some(r) = &mut self.recorder {
                    r.push(Entry::Gone(GoneEntry {
                        ts_ns: monotonic_ns(),
                        key: flag.key.into(),
                        ends: flag.socket.ends.into(),
                        state: flag.socket.state.0,
                        since_ns: flag.socket.since_ns,
                    }));
                }
                continue;
            }
            ownership.last_io = self.last_io(probe, flag.key.sk(), flag.socket.born_ns);
            if let (Some(focus), Some(pid)) = (&mut self.focus, self.selection.pid) {
                if ownership.involves(pid, &flag.socket) {
                    focus.holds(flag.key.sk(), flag.socket.ends);
                }
            }
            self.counts.flagged += 1;
            self.metric_counts.stuck(flag.socket.state);
            if let Some(r) = &mut self.recorder {
                r.push(Entry::Stuck(StuckEntry {
                    ts_ns: flag.at_ns,
                    key: flag.key.into(),
                    ends: flag.socket.ends.into(),
                    state: flag.socket.state.0,
                    since_ns: flag.socket.since_ns,
                    threshold_ms: flag.threshold.as_millis() as u64,
                }));
                r.owners(flag.at_ns, &flag.socket, &ownership);
            }
            if self.shown(&ownership, &flag.socket) {
                let report = SocketReport {
                    key: flag.key,
                    socket: &flag.socket,
                    ownership: &ownership,
                };
                self.output.stuck(&report, flag.at_ns, flag.threshold)?;
            }
            self.engine.owned(stay, ownership);
        }
        Ok(())
    }

    /// The last send or receive on the socket at `sk`, born at `born_ns`, if the probe saw
    /// one; a note from before that was left by an earlier socket at the same address.
    fn last_io(&mut self, probe: &Probe, sk: Option<u64>, born_ns: u64) -> Option<LastIo> {
        match probe.last_io(sk?) {
            Ok(io) => io
                .as_ref()
                .and_then(decode::last_io)
                .filter(|io| io.ts_ns >= born_ns),
            Err(e) => {
                if !self.io_failed {
                    eprintln!("tracer: warning: {e}; stuck sockets are reported without their last send/receive");
                    self.io_failed = true;
                }
                None
            }
        }
    }

    /// Writes the summary of the sockets stuck at monotonic `now`.
    pub(super) fn summary(&mut self, reason: SummaryReason, now: u64) -> io::Result<()> {
        // Sockets resolved or evicted while flagged have nothing more to report.
        self.engine.prune_owners();
        let selection = &self.selection;
        let stuck: Vec<_> = self
            .engine
            .stuck()
            .filter_map(|(_, s, o)| {
                let o = o?;
                selection.admits(o, s).then_some((s, Some(o)))
            })
            .collect();
        let proc = &self.proc;
        let groups = summary::group(stuck.into_iter(), |pid| proc.fd_count(pid));
        let states = self
            .engine
            .per_state()
            .map(|(s, n)| (s.to_string(), n))
            .collect();
        self.output
            .summary(reason, &groups, self.engine.stats(), &states, now)?;
        self.flush()
    }

    /// Whether `--pid` (in watch mode), `--container` and `--cgroup` let a socket through.
    fn shown(&self, o: &Ownership, s: &Socket) -> bool {
        self.selection.admits(o, s)
    }

    /// Reports what was not followed since the last check: transitions the probe dropped
    /// and sockets a full table evicted.
    pub(super) fn check_losses(&mut self, probe: &Probe) -> anyhow::Result<()> {
        let (sockets, stuck) = std::mem::take(&mut self.evicted_unsaid);
        if sockets > 0 {
            written(self.output.evicted(sockets, stuck))?;
        }
        let total = probe
            .lost()
            .context("reading the probe's count of lost transitions failed")?;
        let lost = total.saturating_sub(self.counts.lost);
        if lost > 0 {
            if let Some(r) = &mut self.recorder {
                r.push(Entry::Lost {
                    ts_ns: monotonic_ns(),
                    total,
                });
            }
            self.counts.lost = total;
            written(self.output.lost(lost, total))?;
            if let Some(r) = &mut self.reconciler {
                r.ask(Reason::Lost);
            }
        }
        let missed_total = probe
            .missed()
            .context("reading the kernel's count of missed probe runs failed")?;
        self.counts.missed = missed_total;
        let missed = missed_total.saturating_sub(self.missed_said);
        // A few in a million under heavy churn: said (and checked against the kernel) at
        // most once a minute, with what accumulated.
        let said_lately = self
            .missed_said_at
            .is_some_and(|at| at.elapsed() < MISSED_SPACING);
        if missed > 0 && !said_lately {
            self.missed_said = missed_total;
            self.missed_said_at = Some(Instant::now());
            written(self.output.missed(missed, missed_total))?;
            // Which sockets is unknown: the kernel's list tells.
            if let Some(r) = &mut self.reconciler {
                r.ask(Reason::Lost);
            }
        }
        if sockets > 0 || lost > 0 || missed > 0 {
            written(self.flush())?;
        }
        if let Some(listing) = self.reconciler.as_mut().and_then(Reconciler::poll) {
            written(self.reconciled(listing, probe))?;
        }
        Ok(())
    }

    /// Applies a finished listing of the kernel's sockets to the table; records what
    /// changed so that a report makes the same changes, and says so.
    fn reconciled(&mut self, listing: Listing, probe: &Probe) -> io::Result<()> {
        let done = self
            .engine
            .reconcile(listing.sockets, &listing.touched, &mut self.decisions);
        if let Some(rec) = &mut self.recorder {
            let now = monotonic_ns();
            let gone = |key: SocketKey, s: &Socket| {
                Entry::Gone(GoneEntry {
                    ts_ns: now,
                    key: key.into(),
                    ends: s.ends.into(),
                    state: s.state.0,
                    since_ns: s.since_ns,
                })
            };
            for (key, s) in &done.removed {
                rec.push(gone(*key, s));
            }
            for (key, was, now) in &done.corrected {
                rec.push(gone(*key, was));
                rec.push(Entry::Socket(SocketEntry::new(*key, now)));
            }
            for (key, s) in &done.added {
                rec.push(Entry::Socket(SocketEntry::new(*key, s)));
            }
        }
        self.decide(probe)?;
        let info = Reconciled {
            time: Rfc3339(SystemTime::now()),
            reason: listing.reason.name(),
            removed: done.removed.len(),
            corrected: done.corrected.len(),
            added: done.added.len(),
            tracked: self.engine.stats().tracked,
            listing_ms: listing.took.as_millis() as u64,
        };
        self.output.reconciled(&info)?;
        self.flush()
    }
}
