//! `tracer report`: rebuilds an incident from a recording, on any machine, without root.
//!
//! [`input`] finds and reads the segments, [`window`] places `--from`/`--to` on the
//! recording's clock, [`replay`] runs the segments through the decision engine under the
//! report's thresholds, and this module works out what to show and hands it to
//! [`Output`], which writes it in either format: the stuck and resolved sockets and the
//! summary as the live run writes them, then the worst offenders, transition counts and
//! time spent per state.

pub mod input;
pub mod replay;
pub mod window;

use std::{
    collections::{BTreeMap, HashMap},
    io::{self, Write},
    time::Duration,
};

use tracer_common::TcpState;

use crate::{
    attribute::Selection,
    cli::ReportArgs,
    model::{HeldBy, IoOp, Ownership, Socket, Stay, Target, Thresholds},
    output::{
        summary::{self, ServicePort},
        LiveInfo, Offender, Outcome, Output, RecordingStopped, ReportInfo, Rfc3339, SocketReport,
        StateTime, SummaryReason, TextStyle, TransitionCount, WallClock,
    },
    record::Entry,
};
use replay::{Event, Options, Replay};
use window::Window;

/// Runs `tracer report`, writing to `out` and warnings to `status`.
pub fn run(args: &ReportArgs, out: impl Write, mut status: impl Write) -> anyhow::Result<()> {
    let mut warnings = Vec::new();
    let mut segments = input::segments(&args.file, &mut warnings)?;
    let header = segments[0].header.clone();
    let clock = WallClock::with_offset(header.clock_offset_ns as i128);
    let recorded = recorded_thresholds(&header.thresholds);
    let thresholds = Thresholds::new(&report_thresholds(&recorded, args));
    let window = Window::resolve(args.from, args.to, header.started_ns, &clock)?;
    let (from_ns, to_ns) = (window.from_ns, window.to_ns);
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
        // A segment's first socket entries are its checkpoint; later ones are the live
        // run's corrections after lost transitions, which every segment applies.
        let mut checkpoint = seg.header.checkpoint;
        while let Some(entry) = seg.next_entry()? {
            let in_checkpoint = checkpoint > 0 && matches!(entry, Entry::Socket(_));
            if in_checkpoint {
                checkpoint -= 1;
                if seg.continues {
                    continue;
                }
            }
            replay.entry(entry, i == 0 && in_checkpoint);
        }
        warnings.extend(seg.damage_report());
        read.entries += seg.stats().entries;
        read.damaged_bytes += seg.stats().damaged_bytes();
        read.segments.push(seg.header.segment);
    }
    warnings.extend(input::version_warning(&args.file, &segments));
    let end_ns = replay.finish();
    window.check(replay.start_ns, replay.last_ns, &clock, &mut warnings)?;
    window.check_timeline(args.timeline, !replay.events.is_empty())?;
    warnings.extend(live_warnings(&replay, &clock));

    for w in &warnings {
        // A closed stderr must not stop the report.
        let _ = writeln!(status, "tracer: warning: {w}");
    }
    let mut output = Output::new(
        args.format,
        TextStyle {
            color: false,
            time: args.time,
            own_netns: header.ext.netns,
        },
        clock,
        io::BufWriter::with_capacity(1 << 16, out),
        io::sink(),
    );
    let info = ReportInfo {
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
        container: args.container.as_deref(),
        cgroup: args.cgroup.as_deref(),
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
            recording_stopped: replay.live.failed.as_ref().map(|f| RecordingStopped {
                time: Rfc3339(clock.at(f.ts_ns)),
                error: f.error.clone(),
            }),
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
        selection: Selection {
            pid: args.pid,
            container: args.container.clone(),
            cgroup: args.cgroup.clone(),
        },
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
        w.push(match live.failed {
            Some(_) => format!(
                "the recording left out {} entries: those after it stopped, and any the disk \
                 could not keep up with before",
                live.unrecorded
            ),
            None => format!(
                "the recording left out {} entries because the disk could not keep up",
                live.unrecorded
            ),
        });
    }
    if let Some(f) = &live.failed {
        // The live run knew and went on: not killed.
        let end = match &live.stop {
            Some(s) => format!(
                "the live run went on to {} without recording",
                Rfc3339(clock.at(s.ts_ns))
            ),
            None => "the end of the live run was not recorded either".to_owned(),
        };
        w.push(format!(
            "recording stopped at {}: {}; {end}; it is reported up to then",
            Rfc3339(clock.at(f.ts_ns)),
            f.error
        ));
    } else if live.stop.is_none() {
        w.push(format!(
            "the recording has no stop entry: the live run was killed or is still running; \
             it is reported up to {}",
            Rfc3339(clock.at(replay.last_ns))
        ));
    }
    w
}

/// What the report writes, once the replay is done.
struct Report<'a> {
    args: &'a ReportArgs,
    /// `--pid`, `--container` and `--cgroup`.
    selection: Selection,
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
        o.report(info)?;
        for ev in &self.replay.events {
            self.event(o, ev)?;
        }
        // A timeline is the socket's life alone (run() refuses one that found nothing).
        if info.timeline.is_some() {
            return Ok(());
        }
        self.summary(o)?;
        o.offenders(&self.offenders())?;
        o.transition_counts(&self.transitions())?;
        o.state_times(&self.state_times())
    }

    fn ownership(&self, s: &Socket) -> &Ownership {
        self.replay.owners_of(s).unwrap_or(&NOT_RECORDED)
    }

    /// Whether `--port`, `--pid`, `--container` and `--cgroup` keep a stuck socket.
    fn kept(&self, s: &Socket) -> bool {
        self.replay.options.port_kept(&s.ends) && self.selection.admits(self.ownership(s), s)
    }

    fn event<W: Write, E: Write>(&self, o: &mut Output<W, E>, ev: &Event) -> io::Result<()> {
        match ev {
            Event::Transition(t) => o.transition(t),
            Event::Existing { socket, .. } => o.existing(socket),
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

    /// Processes ranked by the stuck sockets they held, `--top` of them.
    fn offenders(&self) -> Vec<Offender> {
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
                rank: 0,
                pid,
                comm: owner.map(|w| w.process.comm.clone()),
                cmdline: owner.map(|w| w.process.cmdline.clone()),
                container: owner.and_then(|w| w.process.container()),
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
        for (i, off) in ranked.iter_mut().enumerate() {
            off.rank = i + 1;
            off.ports.sort();
        }
        ranked
    }

    /// Transition counts, most frequent first.
    fn transitions(&self) -> Vec<TransitionCount> {
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
        counts
    }

    /// Percentiles of the completed stays per state.
    fn state_times(&self) -> Vec<StateTime> {
        self.replay
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
            .collect()
    }
}

fn ms(ns: u64) -> u64 {
    ns / 1_000_000
}

#[cfg(test)]
mod tests;
