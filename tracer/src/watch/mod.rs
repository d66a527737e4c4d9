//! `tracer watch`: the live run. It attaches the probe, seeds the decision engine with the
//! sockets open at start, then drives the data path (probe -> decode -> engine ->
//! attribute -> output, and the recording) until a signal, the `--duration` deadline, or
//! a closed stdout. [`session`] is the driver around the engine; [`info`] what the run
//! says about itself.

mod focus;
mod info;
mod reconcile;
mod session;

use std::{
    fs::File,
    io::{self, IsTerminal, Write},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, Signal, SignalKind},
};

use crate::{
    attribute::{netns, procfs::ProcFs, Attributor, Host, Namespaces},
    cli::WatchArgs,
    metrics::{self, Published},
    model::{Family, Format, Thresholds},
    output::{
        monotonic_ns,
        queue::{CloseError, Queued},
        Output, StopReason, SummaryReason, TextStyle, WallClock,
    },
    probe::{privileges, Diagnostics, Filters, Probe, RingConfig},
    record::{file, writer::Recorder, SocketEntry},
    stuck::Engine,
};
use focus::Focus;
use reconcile::Reconciler;
use session::Session;

/// How often the ring buffer is read when the probe has not woken us: each CPU wakes the
/// reader only every `wakeup_events` events, so this bounds the latency of a quiet stream.
const POLL_PERIOD: Duration = Duration::from_millis(20);
/// How often a snapshot is published for `--metrics` (scrapes read the latest).
const METRICS_PERIOD: Duration = Duration::from_secs(1);
/// How often the probe's drop counter is checked.
const LOST_CHECK_PERIOD: Duration = Duration::from_secs(1);
/// Least time between two attributions: a leak crosses its threshold socket by socket,
/// and one scan of /proc should serve a burst of them.
const ATTRIBUTION_SPACING: Duration = Duration::from_millis(200);
/// Output waiting for a slow reader of stdout beyond which the loop stops reading the
/// probe, until the reader catches up (the kernel counts what it then drops as lost).
const OUT_BACKLOG: usize = 4 << 20;
/// How long, from its signal, the end of a run waits for the recording's disk: less than
/// [`STOP_GRACE`], so that a hung disk leaves the totals time to reach stdout.
const RECORD_GRACE: Duration = Duration::from_millis(400);
/// How long, from its signal, the end of a run waits for the reader of stdout: with the
/// final reads and the detaching, a run ends within a second.
const STOP_GRACE: Duration = Duration::from_millis(800);

/// Runs `tracer watch` with `args`, writing records to `out` (from a thread of its own)
/// and status lines to stderr.
pub async fn run(args: &WatchArgs, out: impl Write + Send + 'static) -> anyhow::Result<()> {
    let filters = Filters {
        ports: args.ports.clone(),
        // --pid is no kernel filter: the transitions that matter most (into CLOSE_WAIT)
        // run in softirq, in whatever task was current; userspace selects by owner.
        netns: args.netns.clone(),
        family: args.family.map(Family::from),
        states: args.states.clone(),
    };
    // The possible CPUs, each of which may write events; when that cannot be read, many,
    // so that the probe wakes the reader sooner rather than later.
    let cpus = aya::util::nr_cpus().map_or(64, |n| n as u32);
    let ring_config = RingConfig::with_bytes(args.buffer_size, cpus);
    // Signal handlers first, so a SIGTERM right after the start record is not fatal. A
    // closed terminal or a dropped ssh session sends SIGHUP: the run ends as on SIGTERM,
    // with its totals and the recording's stop entry.
    let signals = (
        signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
    );

    // Switches that force the paths other kernels take (record layout, send/receive hooks).
    let diagnostics = Diagnostics::from_env()?;
    // A metrics address that cannot be served, and a recording path that cannot be
    // written, fail before the probe is loaded.
    let metrics = match args.metrics {
        Some(addr) => {
            let published = Published::default();
            let server =
                metrics::Server::start(addr, args.metrics_top as usize, published.clone())?;
            eprintln!(
                "tracer: serving metrics at http://{}/metrics",
                server.addr()
            );
            Some(published)
        }
        None => None,
    };
    let record_file = match &args.record {
        Some(path) => Some((path, file::prepare(path)?)),
        None => None,
    };
    let (mut probe, ring) = Probe::attach(&filters, ring_config, &diagnostics, io_sockets(args))?;
    if let Some(why) = &probe.io.off {
        eprintln!("tracer: warning: {why}");
    }
    if probe.io.mechanism.is_some() {
        let pinned = u64::from(io_sockets(args)) * IO_NOTE_BYTES;
        if pinned >= 32 << 20 {
            eprintln!(
                "tracer: the kernel holds {} MiB for last send/receive notes ({} sockets, a quarter of --max-sockets)",
                pinned >> 20,
                io_sockets(args)
            );
        }
    }
    if let Err(e) = &probe.netns {
        eprintln!(
            "tracer: warning: {e}; sockets' network namespaces are unknown, and owners are looked for in the tracer's own namespace only"
        );
    }
    // What the capabilities this run lacks cost it, each said once (root says nothing).
    if let Some(held) = privileges::effective() {
        for why in privileges::warnings(&held, probe.netns.is_ok()) {
            eprintln!("tracer: warning: {why}");
        }
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
    // Without each socket's namespace from the probe, sockets can only be looked for in
    // the tracer's own namespace, where the snapshot and the transitions then agree.
    let namespaces = match probe.netns {
        Ok(_) => Namespaces::All,
        Err(_) => Namespaces::OwnOnly,
    };
    let mut attributor = Attributor::new(Host::default(), namespaces);
    let found = attributor.snapshot(start_ns);
    if let Some(e) = found.failed.first() {
        let more = match found.failed.len() - 1 {
            0 => String::new(),
            n => format!(" (and in {n} more namespaces)"),
        };
        eprintln!(
            "tracer: warning: {e}{more}; sockets open there before the start are not tracked"
        );
    }
    let mut snapshot = found.sockets;
    // The probe's filters hold for the snapshot too.
    snapshot.retain(|s| filters.admits_socket(&s.ends, s.state));
    let existing_sockets = snapshot.len();
    // --events --pid: which of the sockets open at start the process holds.
    let focus = args.pid.filter(|_| args.events).map(|pid| {
        let held = ProcFs::default().socket_inodes(pid);
        let existing = snapshot
            .iter()
            .filter(|s| held.contains(&s.inode))
            .map(|s| (s.ends, s.state));
        Focus::new(pid, existing)
    });
    let mut decisions = Vec::new();
    engine.seed(snapshot, &mut decisions);

    let clock = WallClock::now();
    let recorder = match record_file {
        Some((path, file)) => {
            let header = info::header(args, &filters, &thresholds, &clock, start_ns, netns::own());
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
        TextStyle {
            color,
            time: args.time,
            own_netns: netns::own(),
            fold: true,
        },
        clock,
        Queued::spawn(out).context("cannot start the thread that writes stdout")?,
        io::stderr().lock(),
    );
    let mut session = Session::new(
        output,
        engine,
        decisions,
        attributor,
        recorder,
        args.events,
        args.pid,
    )
    .context("cannot start the owner lookup thread")?;
    if let Some(focus) = focus {
        session.focus(focus);
    }
    if let Some(published) = metrics {
        session.publish_to(published);
        session.publish();
    }
    session.reconcile_with(Reconciler::new(filters.clone(), namespaces));
    session.select_owners(args.container.clone(), args.cgroup.clone());
    let start = info::start_info(
        args,
        &probe,
        &filters,
        ring_config,
        &thresholds,
        existing_sockets,
    );
    if quiet_on_broken_pipe(written(session.output.start(&start)))? {
        return Ok(());
    }
    // What the snapshot made the engine decide (a table too small for it evicts).
    if quiet_on_broken_pipe(written(session.decide(&probe)))? {
        return Ok(());
    }

    let Some(reason) = follow(&mut session, &probe, &mut ring, args, signals).await? else {
        return Ok(());
    };
    let stopping = Instant::now();
    let deadline = stopping + STOP_GRACE;

    // Detach first: then the ring and the drop counter are final, and the totals account
    // for every transition the probe saw.
    probe.detach().context("detaching the probe failed")?;
    let end_ns = monotonic_ns();
    // Flags due by the end are decided and reported as a report of the recording would.
    let last = written(session.drain(ring.get_mut(), &probe))
        .and_then(|()| written(session.flag_due(&probe, end_ns)))
        .and_then(|()| written(session.attribute(&probe)))
        .and_then(|()| session.check_losses(&probe))
        .and_then(|()| written(session.summary(SummaryReason::Stop, end_ns)));
    // The recording is finished even when stdout has gone away.
    let unrecorded = session.finish_recording(end_ns, stopping + RECORD_GRACE);
    if quiet_on_broken_pipe(last)? {
        return Ok(());
    }
    let skipped = probe
        .skipped()
        .context("reading the probe's count of skipped transitions failed")?;
    let stop = info::stop_info(&session, reason, started, unrecorded, skipped);
    // Text puts the totals on stderr: after what stdout still has to show. A failure here
    // comes again from close below.
    let _ = session.output.out_mut().drain(deadline);
    if quiet_on_broken_pipe(written(session.output.stop(&stop)))? {
        return Ok(());
    }
    match session.output.out_mut().close(deadline) {
        Ok(()) => {}
        Err(CloseError::Failed(e)) => {
            quiet_on_broken_pipe(written(Err(e)))?;
        }
        // The totals still reach stderr; text has written them there already.
        Err(e @ CloseError::Stalled { .. }) => {
            if args.format == Format::Json {
                written(session.output.stop_status(&stop))?;
            }
            eprintln!("tracer: warning: stdout was not being read: {e}");
        }
    }
    Ok(())
}

/// Follows the probe until a signal, the `--duration` deadline, or a closed stdout (then
/// `None`: the run ends quietly).
async fn follow<E: Write>(
    session: &mut Session<Queued, E>,
    probe: &Probe,
    ring: &mut AsyncFd<RingBuf<MapData>>,
    args: &WatchArgs,
    (mut sigint, mut sigterm, mut sighup): (Signal, Signal, Signal),
) -> anyhow::Result<Option<StopReason>> {
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
    let owners_ready = session.owners_ready();
    let mut publish = tokio::time::interval(METRICS_PERIOD);
    publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let publishes = session.publishes();

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
        // A reader of stdout that has fallen far behind: wait for it (or a signal) before
        // reading more from the probe.
        let behind = session.output.out().backlog() >= OUT_BACKLOG;
        let step = tokio::select! {
            _ = sigint.recv() => break StopReason::Signal,
            _ = sigterm.recv() => break StopReason::Signal,
            _ = sighup.recv() => break StopReason::Signal,
            _ = &mut deadline => break StopReason::Duration,
            _ = session.output.out().room(), if behind => Ok(()),
            guard = ring.readable_mut(), if !behind => {
                let mut guard = guard.context("polling the ring buffer failed")?;
                let r = session.drain(guard.get_inner_mut(), probe);
                guard.clear_ready();
                written(r)
            }
            _ = poll.tick(), if !behind => written(session.drain(ring.get_mut(), probe)),
            _ = lost_check.tick() => session.check_losses(probe),
            // Drain first: a transition already in the ring may show the socket left in time.
            _ = flag_timer, if !behind => written(
                session
                    .drain(ring.get_mut(), probe)
                    .and_then(|()| session.flag_due(probe, monotonic_ns())),
            ),
            _ = summaries.tick() => written(session.summary(SummaryReason::Interval, monotonic_ns())),
            _ = owners_ready.notified() => written(session.owners_found(probe)),
            _ = publish.tick(), if publishes => {
                session.publish();
                Ok(())
            }
        };
        if quiet_on_broken_pipe(step)? {
            session.finish_recording(monotonic_ns(), Instant::now() + RECORD_GRACE);
            return Ok(None);
        }
    };
    Ok(Some(reason))
}

/// How many sockets the probe remembers the last send/receive of: a quarter of the table's
/// cap, because each costs the kernel 104 bytes allocated up front (6.5 MiB by default).
/// The map is LRU: on a machine where more sockets than that have been used since they
/// were born, the notes of the idlest go first, and a stuck socket may then lack one.
/// Kernel memory per last send/receive note: the LRU hash map's key, value and overhead,
/// measured with `bpftool map show` (memlock / entries).
const IO_NOTE_BYTES: u64 = 104;

fn io_sockets(args: &WatchArgs) -> u32 {
    (args.max_sockets / 4).max(1024)
}

/// The result of writing output (or the recording), labelled as such.
fn written(r: io::Result<()>) -> anyhow::Result<()> {
    r.context("writing output failed")
}

/// A reader that went away (`tracer ... | head`, a terminal closed) ends the run quietly
/// and successfully, as it does for other Unix filters: `Ok(true)` means stop now.
fn quiet_on_broken_pipe(r: anyhow::Result<()>) -> anyhow::Result<bool> {
    match r {
        Ok(()) => Ok(false),
        Err(e)
            if e.downcast_ref::<io::Error>().is_some_and(|e| {
                e.kind() == io::ErrorKind::BrokenPipe
                    || (e.raw_os_error() == Some(libc::EIO) && terminal_hung_up())
            }) =>
        {
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// Whether stdout or stderr is a terminal that has hung up (closed, its ssh session gone),
/// where every write fails with EIO. Such a stream is pointed at /dev/null, so that what
/// the run still says on its way out cannot fail there.
fn terminal_hung_up() -> bool {
    let mut hung_up = false;
    for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: termios is plain data, for which zeroes are valid.
        let mut termios = unsafe { std::mem::zeroed::<libc::termios>() };
        // A hung-up terminal refuses even this with EIO; other files say ENOTTY.
        // SAFETY: tcgetattr writes one termios we own.
        if unsafe { libc::tcgetattr(fd, &mut termios) } == 0
            || io::Error::last_os_error().raw_os_error() != Some(libc::EIO)
        {
            continue;
        }
        hung_up = true;
        if let Ok(null) = File::options().write(true).open("/dev/null") {
            // SAFETY: both descriptors are open; fd now names /dev/null.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    hung_up
}
