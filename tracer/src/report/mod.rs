//! `tracer report`: rebuilds an incident from a recording, on any machine, without root.
//!
//! [`input`] finds and reads the segments, [`replay`] runs them through the socket table
//! under the report's thresholds, and this module writes the result: the stuck and
//! resolved sockets and the summary as the live run writes them (same JSON records), then
//! the worst offenders, transition counts and time spent per state.

pub mod input;
pub mod replay;

use std::{
    collections::{BTreeMap, HashMap},
    io::{self, Write},
    time::{Duration, UNIX_EPOCH},
};

use serde::Serialize;
use tracer_common::TcpState;

use crate::{
    cli::{ReportArgs, TimeArg},
    model::{Format, HeldBy, IoOp, Ownership, Socket, State, Stay, Target, Thresholds},
    output::{
        clock::TimeOfDay,
        summary::{self, ServicePort},
        text::{endpoints, fd_usage, human_duration, plural},
        Outcome, Output, Rfc3339, SocketReport, SummaryReason, TextStyle, WallClock,
    },
    record::Entry,
};
use replay::{Event, Options, Replay};

/// Runs `tracer report`, writing to `out` and warnings to `status`.
pub fn run(args: &ReportArgs, out: impl Write, mut status: impl Write) -> anyhow::Result<()> {
    let mut warnings = Vec::new();
    let mut segments = input::segments(&args.file, &mut warnings)?;
    let header = segments[0].header.clone();
    let clock = WallClock::with_offset(header.clock_offset_ns as i128);
    let recorded = recorded_thresholds(&header.thresholds);
    let thresholds = Thresholds::new(&report_thresholds(&recorded, args));
    let to_mono = |t: TimeArg| match t {
        TimeArg::At(at) => {
            let ns = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as i128;
            (ns - clock.offset_ns()).clamp(0, u64::MAX as i128) as u64
        }
        TimeArg::After(d) => header.started_ns.saturating_add(d.as_nanos() as u64),
    };
    let (from_ns, to_ns) = (
        args.from.map_or(0, to_mono),
        args.to.map_or(u64::MAX, to_mono),
    );
    if from_ns > to_ns {
        anyhow::bail!("--from is after --to: the window is empty");
    }
    let options = Options {
        thresholds,
        from_ns,
        to_ns,
        ports: args.ports.clone(),
        timeline: args.timeline,
    };
    let mut replay = Replay::new(options, &header);
    let mut read = ReadTotals::default();
    for (i, seg) in segments.iter_mut().enumerate() {
        if i > 0 && !seg.continues {
            replay.restart(&seg.header);
        }
        while let Some(entry) = seg.next_entry()? {
            if seg.continues && matches!(entry, Entry::Socket(_)) {
                continue;
            }
            replay.entry(entry, i == 0);
        }
        warnings.extend(seg.damage_report());
        read.entries += seg.stats().entries;
        read.damaged_bytes += seg.stats().damaged_bytes();
        read.segments.push(seg.header.segment);
    }
    let end_ns = replay.finish();
    warnings.extend(live_warnings(&replay, &clock));

    for w in &warnings {
        // A closed stderr must not stop the report.
        let _ = writeln!(status, "tracer: warning: {w}");
    }
    let mut output = Output::new(
        args.format,
        TextStyle::default(),
        clock,
        io::BufWriter::with_capacity(1 << 16, out),
        io::sink(),
    );
    let info = ReportInfo {
        kind: "report",
        file: args.file.display().to_string(),
        recording: format!("{:016x}", header.recording),
        host: &header.hostname,
        kernel: &header.kernel,
        tracer_version: &header.tracer_version,
        segments: &read.segments,
        start: Rfc3339(clock.at(replay.start_ns)),
        end: Rfc3339(clock.at(end_ns)),
        duration_ms: ms(end_ns.saturating_sub(replay.start_ns)),
        from: args.from.map(|_| Rfc3339(clock.at(from_ns))),
        to: args.to.map(|_| Rfc3339(clock.at(to_ns))),
        thresholds: threshold_map(replay.engine.thresholds().iter()),
        recorded_thresholds: threshold_map(recorded.iter().copied()),
        ports: &args.ports,
        pid: args.pid,
        timeline: args.timeline.map(|t| match t {
            Target::Sk(sk) => format!("{sk:#x}"),
            Target::Addr(a) => a.to_string(),
        }),
        entries: read.entries,
        transitions: replay.transitions_read,
        damaged_bytes: read.damaged_bytes,
        live: LiveInfo {
            stuck: replay.live.stuck,
            resolved: replay.live.resolved,
            lost: replay.live.lost,
            unrecorded: replay.live.unrecorded,
            stopped: replay.live.stop.is_some(),
        },
        warnings: &warnings,
    };
    let resolutions = replay
        .events
        .iter()
        .filter_map(|ev| match ev {
            Event::Resolved(r) => Some((r.socket.stay(), r.left_ns)),
            _ => None,
        })
        .collect();
    let written = Report {
        args,
        replay: &replay,
        end_ns,
        resolutions,
    }
    .write(&mut output, &info);
    match written.and_then(|()| output.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r.map_err(|e| anyhow::Error::new(e).context("writing the report failed")),
    }
}

/// What was read across segments.
#[derive(Default)]
struct ReadTotals {
    entries: u64,
    damaged_bytes: u64,
    segments: Vec<u32>,
}

/// The live run's thresholds, from the header.
fn recorded_thresholds(list: &[(u8, u64)]) -> Vec<(TcpState, Duration)> {
    list.iter()
        .filter_map(|&(s, ms)| Some((TcpState::from_u8(s)?, Duration::from_millis(ms))))
        .collect()
}

/// The recorded thresholds with the report's `--close-wait` and `--stuck` applied.
fn report_thresholds(
    recorded: &[(TcpState, Duration)],
    args: &ReportArgs,
) -> Vec<(TcpState, Duration)> {
    let mut list: Vec<_> = recorded
        .iter()
        .copied()
        .filter(|(s, _)| !(args.close_wait.is_some() && *s == TcpState::CloseWait))
        .collect();
    if let Some(d) = args.close_wait.and_then(|t| t.0) {
        list.push((TcpState::CloseWait, d));
    }
    list.extend(args.stuck.iter().copied());
    list
}

fn threshold_map(it: impl Iterator<Item = (TcpState, Duration)>) -> BTreeMap<&'static str, u64> {
    it.map(|(s, d)| (s.name(), d.as_millis() as u64)).collect()
}

/// Warnings about what the live run itself missed.
fn live_warnings(replay: &Replay, clock: &WallClock) -> Vec<String> {
    let mut w = Vec::new();
    let live = &replay.live;
    if live.lost > 0 {
        w.push(format!(
            "the live run lost {} transitions (its ring buffer was full): some sockets may \
             look stuck that were not, and some stays are missing",
            live.lost
        ));
    }
    if live.unrecorded > 0 {
        w.push(format!(
            "the recording left out {} entries because the disk could not keep up",
            live.unrecorded
        ));
    }
    if live.stop.is_none() {
        w.push(format!(
            "the recording has no stop entry: the live run was killed or is still running; \
             it is reported up to {}",
            Rfc3339(clock.at(replay.last_ns))
        ));
    }
    w
}

/// The `report` record: what was read and how it is reported.
#[derive(Serialize)]
struct ReportInfo<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    file: String,
    /// The recording's id, shared by its segments.
    recording: String,
    host: &'a str,
    kernel: &'a str,
    tracer_version: &'a str,
    segments: &'a [u32],
    start: Rfc3339,
    end: Rfc3339,
    duration_ms: u64,
    from: Option<Rfc3339>,
    to: Option<Rfc3339>,
    thresholds: BTreeMap<&'static str, u64>,
    recorded_thresholds: BTreeMap<&'static str, u64>,
    ports: &'a [u16],
    pid: Option<u32>,
    timeline: Option<String>,
    entries: u64,
    transitions: u64,
    damaged_bytes: u64,
    live: LiveInfo,
    warnings: &'a [String],
}

#[derive(Serialize)]
struct LiveInfo {
    stuck: u64,
    resolved: u64,
    lost: u64,
    unrecorded: u64,
    stopped: bool,
}

/// Transition counts: the `transitions` record.
#[derive(Serialize)]
struct TransitionCounts {
    #[serde(rename = "type")]
    kind: &'static str,
    counts: Vec<TransitionCount>,
}

#[derive(Serialize)]
struct TransitionCount {
    old: State,
    new: State,
    count: u64,
}

/// Time spent per state: the `state_times` record.
#[derive(Serialize)]
struct StateTimes {
    #[serde(rename = "type")]
    kind: &'static str,
    states: Vec<StateTime>,
}

#[derive(Serialize)]
struct StateTime {
    state: State,
    /// Completed stays (entered and left within the window).
    stays: u64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    max_us: u64,
}

/// One of the worst offenders: the `offender` record.
#[derive(Serialize)]
struct Offender {
    #[serde(rename = "type")]
    kind: &'static str,
    rank: usize,
    /// The owning process; `null` when none was recorded.
    pid: Option<u32>,
    comm: Option<String>,
    cmdline: Option<String>,
    /// Stuck sockets it held, in all and per state.
    stuck: usize,
    states: BTreeMap<String, usize>,
    /// Service ports, as in the summary (`:61616`, `10.0.0.5:5432`).
    ports: Vec<String>,
    /// The longest any of them stayed stuck.
    longest_ms: u64,
    /// Of them, those whose end of stream it read and kept.
    eof_read: usize,
    fd_count: Option<usize>,
    fd_limit: Option<u64>,
}

/// What the report writes, once the replay is done.
struct Report<'a> {
    args: &'a ReportArgs,
    replay: &'a Replay,
    end_ns: u64,
    /// When each stay that resolved in the window ended.
    resolutions: HashMap<Stay, u64>,
}

/// Stands in for the owners of a stuck socket the live run never flagged.
static NOT_RECORDED: Ownership = Ownership {
    held_by: HeldBy::Unknown,
    owners: Vec::new(),
    last_io: None,
};

impl Report<'_> {
    fn write<W: Write, E: Write>(
        &self,
        o: &mut Output<W, E>,
        info: &ReportInfo<'_>,
    ) -> io::Result<()> {
        self.header(o, info)?;
        for ev in &self.replay.events {
            self.event(o, ev)?;
        }
        if let Some(target) = &info.timeline {
            if self.replay.events.is_empty() && o.format() == Format::Text {
                writeln!(
                    o.out(),
                    "no socket {target} in the recording (or the window)"
                )?;
            }
            return Ok(());
        }
        self.summary(o)?;
        self.offenders(o)?;
        self.transitions(o)?;
        self.state_times(o)
    }

    fn ownership(&self, s: &Socket) -> &Ownership {
        self.replay.owners_of(s).unwrap_or(&NOT_RECORDED)
    }

    /// Whether `--port` and `--pid` keep a stuck socket.
    fn kept(&self, s: &Socket) -> bool {
        self.replay.options.port_kept(&s.ends)
            && self
                .args
                .pid
                .is_none_or(|pid| self.ownership(s).involves(pid, s))
    }

    fn header<W: Write, E: Write>(
        &self,
        o: &mut Output<W, E>,
        info: &ReportInfo<'_>,
    ) -> io::Result<()> {
        if o.format() == Format::Json {
            return o.write_json(info);
        }
        let out = o.out();
        writeln!(
            out,
            "RECORDING {} (host {}, kernel {}, tracer {})",
            info.file, info.host, info.kernel, info.tracer_version
        )?;
        writeln!(
            out,
            "  {} to {} ({}), {} transitions, {} lost",
            info.start,
            info.end,
            human_duration(Duration::from_millis(info.duration_ms)),
            info.transitions,
            info.live.lost
        )?;
        let words = |m: &BTreeMap<&str, u64>| {
            if m.is_empty() {
                return "none".to_owned();
            }
            m.iter()
                .map(|(s, ms)| format!("{s} after {}", human_duration(Duration::from_millis(*ms))))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(
            out,
            "  flagging {} (the live run: {})",
            words(&info.thresholds),
            words(&info.recorded_thresholds)
        )?;
        if let (Some(from), Some(to)) = (&info.from, &info.to) {
            writeln!(out, "  window {from} to {to}")?;
        } else if let Some(from) = &info.from {
            writeln!(out, "  window from {from}")?;
        } else if let Some(to) = &info.to {
            writeln!(out, "  window up to {to}")?;
        }
        writeln!(out)
    }

    fn event<W: Write, E: Write>(&self, o: &mut Output<W, E>, ev: &Event) -> io::Result<()> {
        match ev {
            Event::Transition(t) => o.transition(t),
            Event::Existing { socket, .. } => {
                if o.format() == Format::Json {
                    return o.write_json(&Existing::new(socket, o.clock()));
                }
                let time = TimeOfDay::seconds(o.clock().at(socket.since_ns));
                writeln!(
                    o.out(),
                    "{time} OPEN {} already in {} when the recording started",
                    endpoints(socket),
                    socket.state
                )
            }
            Event::Stuck(f) if self.kept(&f.socket) => {
                let r = SocketReport {
                    key: f.key,
                    socket: &f.socket,
                    ownership: self.ownership(&f.socket),
                };
                o.stuck_with_outcome(&r, f.at_ns, f.threshold, self.outcome(&f.socket))
            }
            Event::Resolved(r) if self.kept(&r.socket) => {
                let report = SocketReport {
                    key: r.key,
                    socket: &r.socket,
                    ownership: self.ownership(&r.socket),
                };
                o.resolved(&report, r.left_ns, r.new)
            }
            Event::Stuck(_) | Event::Resolved(_) => Ok(()),
        }
    }

    /// The sockets stuck at the end, grouped as the live summary groups them.
    fn summary<W: Write, E: Write>(&self, o: &mut Output<W, E>) -> io::Result<()> {
        let table = self.replay.engine.table();
        let stuck = table
            .stuck()
            .map(|(_, s)| s)
            .filter(|s| self.kept(s))
            .map(|s| (s, self.replay.owners_of(s)));
        // fd counts as the live run saw them when it resolved the owners.
        let groups = summary::group(stuck, |_| None);
        let states = table.per_state().map(|(s, n)| (s.to_string(), n)).collect();
        if o.format() == Format::Text {
            writeln!(o.out())?;
        }
        o.summary(
            SummaryReason::End,
            &groups,
            table.stats(),
            &states,
            self.end_ns,
        )
    }

    /// How long a flagged socket stayed stuck in all, and whether it still was at the end.
    fn outcome(&self, s: &Socket) -> Outcome {
        let (end_ns, still_stuck) = match self.resolutions.get(&s.stay()) {
            Some(&left_ns) => (left_ns, false),
            None => (self.end_ns, true),
        };
        Outcome {
            total: Duration::from_nanos(end_ns.saturating_sub(s.since_ns)),
            still_stuck,
        }
    }

    /// Processes ranked by the stuck sockets they held.
    fn offenders<W: Write, E: Write>(&self, o: &mut Output<W, E>) -> io::Result<()> {
        // Every stay shown stuck (flagged in the window, or resolved in it).
        let mut stuck: HashMap<Stay, &Socket> = HashMap::new();
        for ev in &self.replay.events {
            let s = match ev {
                Event::Stuck(f) => &f.socket,
                Event::Resolved(r) => &r.socket,
                _ => continue,
            };
            if self.kept(s) {
                stuck.insert(s.stay(), s);
            }
        }
        let mut by_pid: HashMap<Option<u32>, Offender> = HashMap::new();
        for s in stuck.into_values() {
            let stuck_ns = self.outcome(s).total.as_nanos() as u64;
            let ownership = self.ownership(s);
            let owner = ownership.owners.first();
            let pid = owner.map(|w| w.process.pid);
            let off = by_pid.entry(pid).or_insert_with(|| Offender {
                kind: "offender",
                rank: 0,
                pid,
                comm: owner.map(|w| w.process.comm.clone()),
                cmdline: owner.map(|w| w.process.cmdline.clone()),
                stuck: 0,
                states: BTreeMap::new(),
                ports: Vec::new(),
                longest_ms: 0,
                eof_read: 0,
                fd_count: None,
                fd_limit: owner.and_then(|w| w.process.fd_limit),
            });
            off.stuck += 1;
            *off.states.entry(s.state.to_string()).or_default() += 1;
            let port = ServicePort::of(s).to_string();
            if !off.ports.contains(&port) {
                off.ports.push(port);
            }
            off.longest_ms = off.longest_ms.max(ms(stuck_ns));
            if ownership.last_io.is_some_and(|io| io.op == IoOp::Eof) {
                off.eof_read += 1;
            }
            if let Some(w) = owner {
                off.fd_count = off.fd_count.max(Some(w.fd_count));
            }
        }
        let mut ranked: Vec<Offender> = by_pid.into_values().collect();
        ranked.sort_by(|a, b| {
            b.stuck
                .cmp(&a.stuck)
                .then(b.longest_ms.cmp(&a.longest_ms))
                .then(a.pid.cmp(&b.pid))
        });
        ranked.truncate(self.args.top);
        if o.format() == Format::Text {
            if ranked.is_empty() {
                return Ok(());
            }
            writeln!(o.out(), "\nWORST OFFENDERS")?;
        }
        for (i, mut off) in ranked.into_iter().enumerate() {
            off.rank = i + 1;
            off.ports.sort();
            if o.format() == Format::Json {
                o.write_json(&off)?;
                continue;
            }
            let who = match (&off.comm, off.pid) {
                (Some(c), Some(p)) => format!("{c}[{p}]"),
                _ => "owner not recorded".to_owned(),
            };
            let states: Vec<String> = off.states.iter().map(|(s, n)| format!("{n} {s}")).collect();
            write!(
                o.out(),
                "  {}. {who}: {} stuck ({}) on {}, longest {}",
                off.rank,
                plural(off.stuck, "socket"),
                states.join(", "),
                off.ports.join(" "),
                human_duration(Duration::from_millis(off.longest_ms))
            )?;
            if off.eof_read > 0 {
                write!(
                    o.out(),
                    "; read end of stream on {} and kept them",
                    off.eof_read
                )?;
            }
            if let Some(n) = off.fd_count {
                write!(o.out(), "; {}", fd_usage(n, off.fd_limit))?;
            }
            writeln!(o.out())?;
        }
        Ok(())
    }

    fn transitions<W: Write, E: Write>(&self, o: &mut Output<W, E>) -> io::Result<()> {
        let mut counts: Vec<TransitionCount> = self
            .replay
            .transitions
            .iter()
            .map(|(&(old, new), &count)| TransitionCount { old, new, count })
            .collect();
        counts.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then((a.old.0, a.new.0).cmp(&(b.old.0, b.new.0)))
        });
        if o.format() == Format::Json {
            return o.write_json(&TransitionCounts {
                kind: "transitions",
                counts,
            });
        }
        let out = o.out();
        writeln!(out, "\nTRANSITIONS")?;
        for c in &counts {
            let step = format!("{} -> {}", c.old, c.new);
            writeln!(out, "  {step:<28} {:>10}", c.count)?;
        }
        if counts.is_empty() {
            writeln!(out, "  none in the window")?;
        }
        Ok(())
    }

    fn state_times<W: Write, E: Write>(&self, o: &mut Output<W, E>) -> io::Result<()> {
        let states: Vec<StateTime> = self
            .replay
            .stays
            .iter()
            .map(|(&state, h)| StateTime {
                state,
                stays: h.len(),
                p50_us: h.value_at_quantile(0.5),
                p90_us: h.value_at_quantile(0.9),
                p99_us: h.value_at_quantile(0.99),
                max_us: h.max(),
            })
            .collect();
        if o.format() == Format::Json {
            return o.write_json(&StateTimes {
                kind: "state_times",
                states,
            });
        }
        let out = o.out();
        writeln!(
            out,
            "\nTIME IN STATE (stays that began and ended in the window)"
        )?;
        writeln!(
            out,
            "  {:<12} {:>10} {:>9} {:>9} {:>9} {:>9}",
            "STATE", "STAYS", "P50", "P90", "P99", "MAX"
        )?;
        if states.is_empty() {
            writeln!(out, "  none in the window")?;
        }
        for s in &states {
            writeln!(
                out,
                "  {:<12} {:>10} {:>9} {:>9} {:>9} {:>9}",
                s.state.to_string(),
                s.stays,
                short_duration(s.p50_us),
                short_duration(s.p90_us),
                short_duration(s.p99_us),
                short_duration(s.max_us)
            )?;
        }
        Ok(())
    }
}

/// A socket open at the start of the recording (`--timeline`): the `existing` record.
#[derive(Serialize)]
struct Existing {
    #[serde(rename = "type")]
    kind: &'static str,
    /// When it was known to be in `state` already: a lower bound of its entry.
    since: Rfc3339,
    state: State,
    family: &'static str,
    saddr: std::net::IpAddr,
    sport: u16,
    daddr: std::net::IpAddr,
    dport: u16,
}

impl Existing {
    fn new(s: &Socket, clock: &WallClock) -> Self {
        Existing {
            kind: "existing",
            since: Rfc3339(clock.at(s.since_ns)),
            state: s.state,
            family: s.ends.family.name(),
            saddr: s.ends.saddr,
            sport: s.ends.sport,
            daddr: s.ends.daddr,
            dport: s.ends.dport,
        }
    }
}

fn ms(ns: u64) -> u64 {
    ns / 1_000_000
}

/// `850µs`, `12.5ms`, `3s`, `2m31s`: a stay's length in a table cell.
fn short_duration(us: u64) -> String {
    match us {
        0..=999 => format!("{us}µs"),
        1000..=999_999 => format!("{:.1}ms", us as f64 / 1000.0),
        _ => human_duration(Duration::from_micros(us)),
    }
}

#[cfg(test)]
mod tests;
