//! `tracer watch`: drives the data path (probe -> decode -> aggregate -> attribute ->
//! output) until a signal, the `--duration` deadline, or a closed stdout.

use std::{
    collections::BTreeMap,
    io::{self, IsTerminal, Write},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
};

use crate::{
    aggregate::Resolved,
    attribute::{Attributor, Host},
    cli::WatchArgs,
    decode,
    model::{Family, Format, HeldBy, LastIo, Ownership, Socket, Thresholds},
    output::{
        monotonic_ns, summary, Attached, FilterInfo, Output, RecordInfo, Rfc3339, SocketReport,
        StartInfo, StopInfo, StopReason, WallClock,
    },
    probe::{Diagnostics, Filters, Probe, RingConfig, TRACEPOINT},
    record::{
        writer::{self, Recorder},
        Entry, GoneEntry, Header, ResolvedEntry, SocketEntry, StopEntry, StuckEntry,
    },
    stuck::{Decision, Engine, Flag},
};

/// How often the ring buffer is read when the probe has not woken us: the probe only wakes
/// the reader once `wakeup_bytes` are pending, so this bounds the latency of a quiet stream.
const POLL_PERIOD: Duration = Duration::from_millis(20);
/// How often the probe's drop counter is checked.
const LOST_CHECK_PERIOD: Duration = Duration::from_secs(1);
/// Least time between two attributions: a leak crosses its threshold socket by socket,
/// and one scan of /proc should serve a burst of them.
const ATTRIBUTION_SPACING: Duration = Duration::from_millis(200);

/// Runs `tracer watch` with `args`, writing records to `out` and status lines to stderr.
pub async fn run(args: &WatchArgs, out: impl Write) -> anyhow::Result<()> {
    let filters = Filters {
        ports: args.ports.clone(),
        // With --events, --pid filters transitions in the kernel; otherwise it selects the
        // stuck sockets a process owns, and the table needs every transition to see them.
        pid: args.pid.filter(|_| args.events),
        family: args.family.map(Family::from),
        states: args.states.clone(),
    };
    let ring_config = RingConfig::with_bytes(args.buffer_size);
    // Signal handlers first, so a SIGTERM right after the start record is not fatal.
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;

    // Switches that force the paths other kernels take (record layout, send/receive hooks).
    let diagnostics = Diagnostics::from_env()?;
    // The recording's file comes first: a path that cannot be written fails before the
    // probe is loaded.
    let record_file = match &args.record {
        Some(path) => Some((path, writer::prepare(path)?)),
        None => None,
    };
    let (mut probe, ring) = Probe::attach(&filters, ring_config, &diagnostics, io_sockets(args))?;
    if let Some(why) = &probe.io.off {
        eprintln!("tracer: warning: {why}");
    }
    // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, until it is dropped,
    // which happens only with the AsyncFd.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("cannot poll the probe's ring buffer")?;

    // The snapshot comes after attaching: a socket that changes state in between is then
    // named by its transition rather than missed.
    let thresholds = Thresholds::new(&args.thresholds());
    // The run begins with the snapshot: the engine dates no flag before it, and a
    // recording's header carries the same instant, so a report agrees.
    let start_ns = monotonic_ns();
    let mut engine = Engine::new(thresholds.clone(), args.max_sockets as usize, start_ns);
    let mut attributor = Attributor::new(Host::default());
    let mut snapshot = attributor.snapshot(start_ns).unwrap_or_else(|e| {
        eprintln!("tracer: warning: {e}; sockets open before the start are not tracked");
        Vec::new()
    });
    // The probe's filters hold for the snapshot too.
    snapshot.retain(|s| filters.admits_socket(s.ends.family, s.ends.sport, s.ends.dport, s.state));
    let existing_sockets = snapshot.len();
    let mut decisions = Vec::new();
    engine.seed(snapshot, &mut decisions);

    let clock = WallClock::now();
    let recorder = match record_file {
        Some((path, file)) => {
            let header = Header {
                recording: random_id(),
                segment: 0,
                tracer_version: env!("CARGO_PKG_VERSION").to_owned(),
                kernel: kernel_release(),
                hostname: hostname(),
                clock_offset_ns: clock.offset_ns() as i64,
                started_ns: start_ns,
                thresholds: thresholds
                    .iter()
                    .map(|(s, d)| (s as u8, d.as_millis() as u64))
                    .collect(),
                ports: filters.ports.clone(),
                pid: filters.pid,
                family: filters.family.map(Into::into),
                states: filters.states.iter().map(|&s| s as u8).collect(),
                max_sockets: args.max_sockets,
                checkpoint: 0,
            };
            let snapshot: Vec<SocketEntry> = engine
                .table()
                .sockets()
                .map(|(k, s)| SocketEntry::new(k, s))
                .collect();
            Some(Recorder::start(
                path,
                file,
                args.record_max_size.0,
                header,
                &snapshot,
            )?)
        }
        None => None,
    };
    let started = Instant::now();
    let color = args.format == Format::Text
        && io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let output = Output::new(
        args.format,
        clock,
        io::BufWriter::with_capacity(1 << 16, out),
        io::stderr().lock(),
    )
    .with_color(color);
    let mut session = Session {
        output,
        engine,
        attributor,
        pending: Vec::new(),
        events: args.events,
        owner_pid: args.pid.filter(|_| !args.events),
        next_attribution_ns: 0,
        attribution_failed: false,
        io_failed: false,
        recorder,
        counts: Counts::default(),
        decisions,
        evicted_unsaid: (0, 0),
    };
    let start = StartInfo {
        time: Rfc3339(SystemTime::now()),
        version: env!("CARGO_PKG_VERSION"),
        kernel: kernel_release(),
        mode: if args.events { "events" } else { "watch" },
        attached: Attached {
            probe: "tracepoint",
            tracepoint: format!("{}:{}", TRACEPOINT.0, TRACEPOINT.1),
            tracefs: probe.tracefs.path.display().to_string(),
            tracefs_mounted_by_tracer: probe.tracefs.mounted_by_us,
            record_access: if probe.direct_access {
                "direct"
            } else {
                "copy"
            },
            io_probes: probe.io.probes.clone(),
        },
        filters: FilterInfo {
            ports: filters.ports.clone(),
            pid: args.pid,
            family: filters.family.map(Family::name),
            states: filters.states.iter().map(|s| s.name()).collect(),
        },
        ring_buffer_bytes: ring_config.bytes,
        thresholds: thresholds
            .iter()
            .map(|(s, d)| (s.name(), d.as_millis() as u64))
            .collect::<BTreeMap<_, _>>(),
        summary_interval_ms: args.summary_interval.as_millis() as u64,
        max_sockets: args.max_sockets as usize,
        existing_sockets,
        record: args.record.as_ref().map(|p| RecordInfo {
            path: p.display().to_string(),
            max_bytes: args.record_max_size.0,
        }),
    };
    if quiet_on_broken_pipe(written(session.output.start(&start)))? {
        return Ok(());
    }
    // What the snapshot made the engine decide (a table too small for it evicts).
    if quiet_on_broken_pipe(written(session.decide(&probe)))? {
        return Ok(());
    }

    let deadline = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut poll = tokio::time::interval(POLL_PERIOD);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lost_check = tokio::time::interval(LOST_CHECK_PERIOD);
    lost_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut summaries = tokio::time::interval_at(
        tokio::time::Instant::now() + args.summary_interval,
        args.summary_interval,
    );
    summaries.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let reason = loop {
        // The stuck timer: the next threshold crossing, on the kernel's monotonic clock.
        let flag_at = session.next_flag_ns().map(|at| {
            tokio::time::Instant::now() + Duration::from_nanos(at.saturating_sub(monotonic_ns()))
        });
        let flag_timer = async {
            match flag_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let step = tokio::select! {
            _ = sigint.recv() => break StopReason::Signal,
            _ = sigterm.recv() => break StopReason::Signal,
            _ = &mut deadline => break StopReason::Duration,
            guard = ring.readable_mut() => {
                let mut guard = guard.context("polling the ring buffer failed")?;
                let r = session.drain(guard.get_inner_mut(), &probe);
                guard.clear_ready();
                written(r)
            }
            _ = poll.tick() => written(session.drain(ring.get_mut(), &probe)),
            _ = lost_check.tick() => session.check_losses(&probe),
            // Drain first: a transition already in the ring may show the socket left in time.
            _ = flag_timer => written(
                session
                    .drain(ring.get_mut(), &probe)
                    .and_then(|()| session.flag_due(&probe, monotonic_ns())),
            ),
            _ = summaries.tick() => written(session.summary("interval", monotonic_ns())),
        };
        if quiet_on_broken_pipe(step)? {
            session.finish_recording(monotonic_ns());
            return Ok(());
        }
    };

    // Detach first: then the ring and the drop counter are final, and the totals account
    // for every transition the probe saw.
    probe.detach().context("detaching the probe failed")?;
    let end_ns = monotonic_ns();
    // Flags due by the end are decided and reported as a report of the recording would.
    let last = written(session.drain(ring.get_mut(), &probe))
        .and_then(|()| written(session.flag_due(&probe, end_ns)))
        .and_then(|()| written(session.attribute(&probe)))
        .and_then(|()| session.check_losses(&probe))
        .and_then(|()| written(session.summary("stop", end_ns)));
    // The recording is finished even when stdout has gone away.
    let unrecorded = session.finish_recording(end_ns);
    if quiet_on_broken_pipe(last)? {
        return Ok(());
    }
    let stats = session.engine.stats();
    let counts = &session.counts;
    let stop = StopInfo {
        time: Rfc3339(SystemTime::now()),
        reason,
        events: counts.events,
        lost: counts.lost,
        skipped: probe.skipped()?,
        undecodable: counts.undecodable,
        duration_ms: started.elapsed().as_millis() as u64,
        flagged: counts.flagged,
        resolved: counts.resolved,
        stuck: session.engine.table().stuck().count(),
        tracked: stats.tracked,
        peak_tracked: stats.peak,
        evicted: stats.evicted,
        evicted_stuck: stats.evicted_stuck,
        unrecorded,
    };
    quiet_on_broken_pipe(written(session.output.stop(&stop)))?;
    Ok(())
}

/// What one run counted.
#[derive(Debug, Default)]
struct Counts {
    events: u64,
    undecodable: u64,
    lost: u64,
    flagged: u64,
    resolved: u64,
}

/// The live side of the data path around the [`Engine`]: feeds it from the ring buffer and
/// the clock, resolves the owners of what it flags (the only side effects: /proc, sock_diag
/// and the probe's last send/receive), and hands every decision to the output and the
/// recorder.
struct Session<W: Write, E: Write> {
    output: Output<W, E>,
    engine: Engine,
    attributor: Attributor<Host>,
    /// Flags waiting for their owners: flags that fall due close together share one look
    /// at /proc.
    pending: Vec<Flag>,
    /// Print every transition (`--events`).
    events: bool,
    /// `--pid` in watch mode: report only sockets this process holds.
    owner_pid: Option<u32>,
    /// Earliest time (monotonic ns) of the next attribution.
    next_attribution_ns: u64,
    attribution_failed: bool,
    /// Reading the probe's last send/receive failed once (warned about).
    io_failed: bool,
    /// `--record`: dropped (with a warning) if writing fails.
    recorder: Option<Recorder>,
    counts: Counts,
    /// Reused between batches.
    decisions: Vec<Decision>,
    /// Sockets (and of them, flagged ones) evicted since the last warning.
    evicted_unsaid: (u64, u64),
}

impl<W: Write, E: Write> Session<W, E> {
    /// Reads every pending record into the engine; prints transitions in `--events` mode
    /// and what the engine decided.
    fn drain(&mut self, ring: &mut RingBuf<MapData>, probe: &Probe) -> io::Result<()> {
        let mut read_any = false;
        while let Some(item) = ring.next() {
            read_any = true;
            match decode::decode(&item) {
                Ok(t) => {
                    self.counts.events += 1;
                    if let Some(r) = &mut self.recorder {
                        r.transition(&t);
                    }
                    if self.events {
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
    fn decide(&mut self, probe: &Probe) -> io::Result<()> {
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
                self.recorder = None;
            }
        }
        self.output.flush()
    }

    /// Writes the stop entry and closes the recording; returns the entries it left out.
    fn finish_recording(&mut self, end_ns: u64) -> u64 {
        let Some(r) = self.recorder.take() else {
            return 0;
        };
        let unrecorded = r.unrecorded();
        let stop = StopEntry {
            ts_ns: end_ns,
            events: self.counts.events,
            lost: self.counts.lost,
            unrecorded,
        };
        if let Err(e) = r.finish(stop) {
            eprintln!("tracer: warning: {e}");
        }
        unrecorded
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
    fn next_flag_ns(&self) -> Option<u64> {
        let next = match self.pending.is_empty() {
            true => self.engine.next_deadline(),
            false => Some(0),
        };
        next.map(|d| d.max(self.next_attribution_ns))
    }

    /// Flags the sockets past their threshold at `now_ns` and, unless an attribution ran
    /// too recently, reports them. The caller drains the ring first, so a socket that left
    /// in time is not flagged.
    fn flag_due(&mut self, probe: &Probe, now_ns: u64) -> io::Result<()> {
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
    fn attribute(&mut self, probe: &Probe) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let flags = std::mem::take(&mut self.pending);
        let query: Vec<_> = flags
            .iter()
            .map(|f| (f.socket.ends, f.socket.state))
            .collect();
        let owners = match self.attributor.owners(&query) {
            Ok(o) => o,
            Err(e) => {
                if !self.attribution_failed {
                    eprintln!("tracer: warning: {e}; stuck sockets are reported without owners");
                    self.attribution_failed = true;
                }
                vec![
                    Ownership {
                        held_by: HeldBy::Unknown,
                        owners: Vec::new(),
                        last_io: None,
                    };
                    flags.len()
                ]
            }
        };
        self.next_attribution_ns = monotonic_ns() + ATTRIBUTION_SPACING.as_nanos() as u64;
        for (flag, mut ownership) in flags.into_iter().zip(owners) {
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
    fn summary(&mut self, reason: &'static str, now: u64) -> io::Result<()> {
        // Sockets resolved or evicted while flagged have nothing more to report.
        self.engine.prune_owners();
        let owner_pid = self.owner_pid;
        let stuck: Vec<_> = self
            .engine
            .stuck()
            .filter_map(|(_, s, o)| {
                let o = o?;
                owner_pid
                    .is_none_or(|pid| o.involves(pid, s))
                    .then_some((s, Some(o)))
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
            .summary(reason, &groups, self.engine.stats(), states, now)?;
        self.flush()
    }

    /// Whether `--pid` (in watch mode) lets a socket through.
    fn shown(&self, o: &Ownership, s: &Socket) -> bool {
        self.owner_pid.is_none_or(|pid| o.involves(pid, s))
    }

    /// Reports what was not followed since the last check: transitions the probe dropped
    /// and sockets a full table evicted.
    fn check_losses(&mut self, probe: &Probe) -> anyhow::Result<()> {
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

/// How many sockets the probe remembers the last send/receive of: a quarter of the table's
/// cap, because each costs the kernel 104 bytes allocated up front (6.5 MiB by default).
/// The map is LRU: on a machine where more sockets than that have been used since they
/// were born, the notes of the idlest go first, and a stuck socket may then lack one.
fn io_sockets(args: &WatchArgs) -> u32 {
    (args.max_sockets / 4).max(1024)
}

/// The result of writing output (or the recording), labelled as such.
fn written(r: io::Result<()>) -> anyhow::Result<()> {
    r.context("writing output failed")
}

/// A reader that went away (`tracer ... | head`) ends the run quietly and successfully,
/// as it does for other Unix filters: `Ok(true)` means stop now.
fn quiet_on_broken_pipe(r: anyhow::Result<()>) -> anyhow::Result<bool> {
    match r {
        Ok(()) => Ok(false),
        Err(e)
            if e.downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) =>
        {
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// A number that tells one recording's files from another's.
fn random_id() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one((SystemTime::now(), std::process::id()))
}

/// The machine's host name, for the recording's header.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The running kernel's release, as `uname -r` prints it.
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}
