//! `tracer watch`: drives the data path (probe -> decode -> output) until a signal, the
//! `--duration` deadline, or a closed stdout.

use std::{
    io::{self, Write},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
};

use crate::{
    cli::WatchArgs,
    decode::{self, Family},
    output::{Attached, FilterInfo, Output, Rfc3339, StartInfo, StopInfo, StopReason, WallClock},
    probe::{Filters, Probe, RecordAccess, RingConfig, TRACEPOINT},
};

/// How often the ring buffer is read when the probe has not woken us: the probe only wakes
/// the reader once `wakeup_bytes` are pending, so this bounds the latency of a quiet stream.
const POLL_PERIOD: Duration = Duration::from_millis(20);
/// How often the probe's drop counter is checked.
const LOST_CHECK_PERIOD: Duration = Duration::from_secs(1);

/// What one run counted.
#[derive(Debug, Default)]
struct Counts {
    events: u64,
    undecodable: u64,
    lost: u64,
}

/// Runs `tracer watch` with `args`, writing records to `out` and status lines to stderr.
pub async fn run(args: &WatchArgs, out: impl Write) -> anyhow::Result<()> {
    let filters = Filters {
        ports: args.ports.clone(),
        pid: args.pid,
        family: args.family.map(Family::from),
        states: args.states.clone(),
    };
    let ring_config = RingConfig::with_bytes(args.buffer_size);
    // Signal handlers first, so a SIGTERM right after the start record is not fatal.
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;

    // A diagnostics switch: force the path kernels with another record layout take.
    let access = match std::env::var_os("TRACER_RECORD_ACCESS") {
        Some(v) if v == "copy" => RecordAccess::Copy,
        _ => RecordAccess::Auto,
    };
    let (mut probe, ring) = Probe::attach(&filters, ring_config, access)?;
    // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, until it is dropped,
    // which happens only with the AsyncFd.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("cannot poll the probe's ring buffer")?;
    let clock = WallClock::now();
    let started = Instant::now();
    let mut output = Output::new(
        args.format,
        clock,
        io::BufWriter::with_capacity(1 << 16, out),
        io::stderr().lock(),
    );
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
        },
        filters: FilterInfo {
            ports: filters.ports.clone(),
            pid: filters.pid,
            family: filters.family.map(Family::name),
            states: filters.states.iter().map(|s| s.name()).collect(),
        },
        ring_buffer_bytes: ring_config.bytes,
    };
    if quiet_on_broken_pipe(output.start(&start))? {
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
    let mut counts = Counts::default();

    let reason = loop {
        let drained = tokio::select! {
            _ = sigint.recv() => break StopReason::Signal,
            _ = sigterm.recv() => break StopReason::Signal,
            _ = &mut deadline => break StopReason::Duration,
            guard = ring.readable_mut() => {
                let mut guard = guard.context("polling the ring buffer failed")?;
                let r = drain(guard.get_inner_mut(), args.events, &mut output, &mut counts);
                guard.clear_ready();
                r
            }
            _ = poll.tick() => drain(ring.get_mut(), args.events, &mut output, &mut counts),
            _ = lost_check.tick() => check_lost(&probe, &mut output, &mut counts),
        };
        if quiet_on_broken_pipe(drained)? {
            return Ok(());
        }
    };

    // Detach first: then the ring and the drop counter are final, and the totals account
    // for every transition the probe saw.
    probe.detach().context("detaching the probe failed")?;
    let last = drain(ring.get_mut(), args.events, &mut output, &mut counts)
        .and_then(|()| check_lost(&probe, &mut output, &mut counts));
    if quiet_on_broken_pipe(last)? {
        return Ok(());
    }
    let stop = StopInfo {
        time: Rfc3339(SystemTime::now()),
        reason,
        events: counts.events,
        lost: counts.lost,
        undecodable: counts.undecodable,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    quiet_on_broken_pipe(output.stop(&stop))?;
    Ok(())
}

/// Reads every pending record; prints transitions when `print` is set.
fn drain<W: Write, E: Write>(
    ring: &mut RingBuf<MapData>,
    print: bool,
    output: &mut Output<W, E>,
    counts: &mut Counts,
) -> io::Result<()> {
    let mut read_any = false;
    while let Some(item) = ring.next() {
        read_any = true;
        match decode::decode(&item) {
            Ok(t) => {
                counts.events += 1;
                if print {
                    output.transition(&t)?;
                }
            }
            Err(e) => {
                if counts.undecodable == 0 {
                    eprintln!(
                        "tracer: warning: {e}; the probe and this binary disagree, rebuild both"
                    );
                }
                counts.undecodable += 1;
            }
        }
    }
    if read_any {
        output.flush()?;
    }
    Ok(())
}

/// Reports growth of the probe's drop counter.
fn check_lost<W: Write, E: Write>(
    probe: &Probe,
    output: &mut Output<W, E>,
    counts: &mut Counts,
) -> io::Result<()> {
    let total = probe.lost().map_err(io::Error::other)?;
    if total > counts.lost {
        output.lost(total - counts.lost, total)?;
        counts.lost = total;
        output.flush()?;
    }
    Ok(())
}

/// A reader that went away (`tracer ... | head`) ends the run quietly and successfully,
/// as it does for other Unix filters: `Ok(true)` means stop now.
fn quiet_on_broken_pipe(r: io::Result<()>) -> anyhow::Result<bool> {
    match r {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(true),
        Err(e) => Err(anyhow::Error::new(e).context("writing output failed")),
    }
}

/// The running kernel's release, as `uname -r` prints it.
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}
