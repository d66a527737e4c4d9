//! What a live run says about itself: its start and stop records, and the header of its
//! recording.

use std::{
    collections::BTreeMap,
    io::Write,
    time::{Instant, SystemTime},
};

use super::session::Session;
use crate::{
    cli::WatchArgs,
    model::{Family, Thresholds},
    output::{
        Attached, FilterInfo, NetnsOffsetsInfo, RecordInfo, Rfc3339, StartInfo, StopInfo,
        StopReason, WallClock,
    },
    probe::{Filters, Probe, RingConfig, SkipCounts, TRACEPOINT},
    record::{Header, HeaderExt},
};

/// The first entry of the recording of a run that began at monotonic `start_ns`.
pub(super) fn header(
    args: &WatchArgs,
    filters: &Filters,
    thresholds: &Thresholds,
    clock: &WallClock,
    start_ns: u64,
    own_netns: u32,
) -> Header {
    Header {
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
        // Since 1.2 `--pid` filters nothing in the kernel.
        pid: None,
        family: filters.family.map(Into::into),
        states: filters.states.iter().map(|&s| s as u8).collect(),
        max_sockets: args.max_sockets,
        checkpoint: 0,
        ext: HeaderExt {
            netns: own_netns,
            netns_filter: filters.netns.clone(),
        },
    }
}

/// The `start` record: what was attached, with which filters and thresholds.
pub(super) fn start_info(
    args: &WatchArgs,
    probe: &Probe,
    filters: &Filters,
    ring: RingConfig,
    thresholds: &Thresholds,
    existing_sockets: usize,
) -> StartInfo {
    StartInfo {
        time: Rfc3339(SystemTime::now()),
        version: env!("CARGO_PKG_VERSION"),
        kernel: kernel_release(),
        mode: if args.events { "events" } else { "watch" },
        attached: Attached {
            probe: probe.transition.name(),
            tp_btf_refused: probe.tp_btf_refused.clone(),
            tracepoint: format!("{}:{}", TRACEPOINT.0, TRACEPOINT.1),
            tracefs: probe.tracefs.path.display().to_string(),
            tracefs_mounted_by_tracer: probe.tracefs.mounted_by_us,
            record_access: if probe.transition == crate::probe::TransitionMechanism::TpBtf {
                "sock"
            } else if probe.direct_access {
                "direct"
            } else {
                "copy"
            },
            io_probes: probe.io.probes.clone(),
            netns_offsets: probe.netns.as_ref().ok().map(|o| NetnsOffsetsInfo {
                sk_net: o.sk_net,
                net_inum: o.net_inum,
            }),
        },
        filters: FilterInfo {
            ports: filters.ports.clone(),
            pid: args.pid,
            netns: filters.netns.clone(),
            family: filters.family.map(Family::name),
            states: filters.states.iter().map(|s| s.name()).collect(),
            container: args.container.clone(),
            cgroup: args.cgroup.clone(),
        },
        ring_buffer_bytes: ring.bytes,
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
    }
}

/// The `stop` record: the run's totals.
pub(super) fn stop_info<W: Write, E: Write>(
    session: &Session<W, E>,
    reason: StopReason,
    started: Instant,
    unrecorded: u64,
    skipped: SkipCounts,
) -> StopInfo {
    let stats = session.engine.stats();
    let counts = &session.counts;
    StopInfo {
        time: Rfc3339(SystemTime::now()),
        reason,
        events: counts.events,
        lost: counts.lost,
        skipped,
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
