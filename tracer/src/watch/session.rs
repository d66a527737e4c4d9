//! The live driver around the [`Engine`]: feeds it what the probe reports, resolves the
//! owners of what it flags, and hands every decision to the output and the recorder.

use std::{
    io::{self, Write},
    time::Instant,
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};

use super::{focus::Focus, written, ATTRIBUTION_SPACING};
use crate::{
    aggregate::Resolved,
    attribute::{Attributor, Host, Selection},
    decode,
    model::{HeldBy, LastIo, Ownership, Socket},
    output::{monotonic_ns, summary, Output, SocketReport, SummaryReason},
    probe::Probe,
    record::{writer::Recorder, Entry, GoneEntry, ResolvedEntry, StopEntry, StuckEntry},
    stuck::{Decision, Engine, Flag},
};

/// What one run counted.
#[derive(Debug, Default)]
pub(super) struct Counts {
    pub events: u64,
    pub undecodable: u64,
    pub lost: u64,
    pub flagged: u64,
    pub resolved: u64,
}

/// The live side of the data path around the [`Engine`]: feeds it from the ring buffer and
/// the clock, resolves the owners of what it flags (the only side effects: /proc, sock_diag
/// and the probe's last send/receive), and hands every decision to the output and the
/// recorder.
pub(super) struct Session<W: Write, E: Write> {
    pub(super) output: Output<W, E>,
    pub(super) engine: Engine,
    attributor: Attributor<Host>,
    /// Flags waiting for their owners: flags that fall due close together share one look
    /// at /proc.
    pending: Vec<Flag>,
    /// Print every transition (`--events`).
    events: bool,
    /// `--pid` with `--events`: print only the transitions of that process's sockets.
    focus: Option<Focus>,
    /// Which stuck sockets to report, by owner: `--pid` in watch mode, `--container`,
    /// `--cgroup`.
    selection: Selection,
    /// Earliest time (monotonic ns) of the next attribution.
    next_attribution_ns: u64,
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
}

impl<W: Write, E: Write> Session<W, E> {
    /// A session writing to `output`, around `engine` (with what seeding it `decided`),
    /// naming owners with `attributor`, printing every transition when `events`, and
    /// showing only sockets `owner_pid` is involved in when given.
    pub(super) fn new(
        output: Output<W, E>,
        engine: Engine,
        decided: Vec<Decision>,
        attributor: Attributor<Host>,
        recorder: Option<Recorder>,
        events: bool,
        owner_pid: Option<u32>,
    ) -> Self {
        Self {
            output,
            engine,
            attributor,
            pending: Vec::new(),
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
        }
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

    /// Handles the engine's decisions. A resolution first reports the flags still waiting
    /// for their owners, which are older: records come out in time order.
    pub(super) fn decide(&mut self, probe: &Probe) -> io::Result<()> {
        let mut decisions = std::mem::take(&mut self.decisions);
        for d in decisions.drain(..) {
            match d {
                Decision::Stuck(flag) => self.pending.push(flag),
                Decision::Resolved(r) => {
                    self.attribute(probe)?;
                    self.resolve(&r)?;
                }
                // Said once a second at most (check_losses): a full table under churn
                // evicts often.
                Decision::Evicted { sockets, stuck } => {
                    self.evicted_unsaid.0 += sockets;
                    self.evicted_unsaid.1 += stuck;
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

    /// When the stuck timer should fire next (monotonic ns).
    pub(super) fn next_flag_ns(&self) -> Option<u64> {
        let next = match self.pending.is_empty() {
            true => self.engine.next_deadline(),
            false => Some(0),
        };
        next.map(|d| d.max(self.next_attribution_ns))
    }

    /// Flags the sockets past their threshold at `now_ns` and, unless an attribution ran
    /// too recently, reports them. The caller drains the ring first, so a socket that left
    /// in time is not flagged.
    pub(super) fn flag_due(&mut self, probe: &Probe, now_ns: u64) -> io::Result<()> {
        self.engine.tick(now_ns, &mut self.decisions);
        self.decide(probe)?;
        if monotonic_ns() >= self.next_attribution_ns {
            self.attribute(probe)?;
        }
        self.flush()
    }

    /// Names the owners of the pending flags (and the last process to send or receive on
    /// them) and reports them. A socket the kernel no longer has in its flagged state,
    /// although the engine still holds it there, lost its transition: it is dropped, and
    /// the recording says so.
    pub(super) fn attribute(&mut self, probe: &Probe) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let flags = std::mem::take(&mut self.pending);
        let query: Vec<_> = flags
            .iter()
            .map(|f| (f.socket.ends, f.socket.state))
            .collect();
        let found = self.attributor.owners(&query);
        if let Some(e) = found.failed.first() {
            if !self.attribution_failed {
                eprintln!("tracer: warning: {e}; stuck sockets there are reported without owners");
                self.attribution_failed = true;
            }
        }
        self.next_attribution_ns = monotonic_ns() + ATTRIBUTION_SPACING.as_nanos() as u64;
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
            ownership.last_io = self.last_io(probe, flag.key.sk());
            if let (Some(focus), Some(pid)) = (&mut self.focus, self.selection.pid) {
                if ownership.involves(pid, &flag.socket) {
                    focus.holds(flag.key.sk(), flag.socket.ends);
                }
            }
            self.counts.flagged += 1;
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

    /// The last send or receive on the socket at `sk`, if the probe saw one.
    fn last_io(&mut self, probe: &Probe, sk: Option<u64>) -> Option<LastIo> {
        match probe.last_io(sk?) {
            Ok(io) => io.as_ref().and_then(decode::last_io),
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
        let attributor = &mut self.attributor;
        let groups = summary::group(stuck.into_iter(), |pid| attributor.fd_count(pid));
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
        }
        if sockets > 0 || lost > 0 {
            written(self.flush())?;
        }
        Ok(())
    }
}
