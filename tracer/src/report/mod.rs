//! `tracer report`: rebuilds an incident from a recording, on any machine, without root.
//!
//! [`input`] finds and reads the segments, [`window`] places `--from`/`--to` on the
//! recording's clock, [`replay`] runs the segments through the decision engine under the
//! report's thresholds (twice: the first pass learns what the second shows, in
//! [`slots`]), and this module works out what to show and hands it to [`Output`], which
//! writes it in either format: the stuck and resolved sockets and the summary as the live
//! run writes them, then the worst offenders, transition counts and time spent per state.

pub mod input;
pub mod replay;
pub mod slots;
pub mod window;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::File,
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
        LiveInfo, Offender, Output, RecordingStopped, ReportInfo, Rfc3339, SocketReport, StateTime,
        SummaryReason, TextStyle, TransitionCount, WallClock,
    },
    record::Entry,
};
use input::{InputError, Segment};
use replay::{position, Event, Learn, Live, Options, Pass, Recorded, Replay, Show};

/// Events the first pass keeps: a report with no more is written from them, without a
/// second pass.
const KEEP: usize = 4096;
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
        live_thresholds: Thresholds::new(&recorded),
    };

    // The first pass: what the report covers, and what each flag's line will need.
    let mut learn = Replay::new(options.clone(), &header, Pass::Learn(Learn::default()));
    let mut read = ReadTotals::default();
    let mut kept = Kept::default();
    replay_segments(&mut segments, &mut learn, |replay| {
        kept.take(replay);
        Ok(())
    })?;
    for seg in &segments {
        warnings.extend(seg.damage_report());
        read.entries += seg.stats().entries;
        read.damaged_bytes += seg.stats().damaged_bytes();
        read.segments.push(seg.header.segment);
    }
    warnings.extend(input::version_warning(&args.file, &segments));
    let end_ns = learn.finish().map_err(spill_error)?;
    kept.take(&mut learn);
    window.check(learn.start_ns, learn.last_ns, &clock, &mut warnings)?;
    window.check_timeline(args.timeline, kept.shown > 0)?;
    warnings.extend(live_warnings(&learn.live, learn.last_ns, &clock));

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
            // Hindsight lists every socket, each with how its stay ended.
            fold: false,
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
        start: Rfc3339(clock.at(learn.start_ns)),
        end: Rfc3339(clock.at(end_ns)),
        duration_ms: ms(end_ns.saturating_sub(learn.start_ns)),
        from: args.from.map(|_| Rfc3339(clock.at(from_ns))),
        to: args.to.map(|_| Rfc3339(clock.at(to_ns))),
        thresholds: threshold_map(learn.engine.thresholds().iter()),
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
        transitions: learn.transitions_read,
        damaged_bytes: read.damaged_bytes,
        live: LiveInfo {
            stuck: learn.live.stuck,
            resolved: learn.live.resolved,
            lost: learn.live.lost,
            unrecorded: learn.live.unrecorded,
            stopped: learn.live.stop.is_some(),
            recording_stopped: learn.live.failed.as_ref().map(|f| RecordingStopped {
                time: Rfc3339(clock.at(f.ts_ns)),
                error: f.error.clone(),
            }),
        },
        warnings: &warnings,
    };

    let mut report = Report {
        args,
        selection: Selection {
            pid: args.pid,
            container: args.container.clone(),
            cgroup: args.cgroup.clone(),
        },
        options: learn.options.clone(),
        counted: HashSet::new(),
        offenders: HashMap::new(),
    };
    let files = |segments: &mut [Segment]| {
        segments
            .iter_mut()
            .map(|seg| {
                seg.rewind()?;
                seg.file()
            })
            .collect::<Result<Vec<File>, InputError>>()
            .map(Recorded::new)
    };
    let Pass::Learn(learned) = std::mem::replace(&mut learn.pass, Pass::Learn(Learn::default()))
    else {
        unreachable!("the first pass learns")
    };
    let written = match kept.events {
        // Few events: shown from the first pass.
        Some(events) => {
            let recorded = files(&mut segments)?;
            output
                .report(&info)
                .map_err(write_error)
                .and_then(|()| {
                    for ev in events {
                        let ev = learned
                            .complete(ev, &recorded, end_ns)
                            .map_err(spill_error)?;
                        if let Some(ev) = ev {
                            report.event(&mut output, ev).map_err(write_error)?;
                        }
                    }
                    Ok(())
                })
                .and_then(|()| {
                    let owners = |s: &Socket| recorded.owners(learned.owners_of(s));
                    report
                        .end(&mut output, &learn, end_ns, owners)
                        .map_err(write_error)
                })
        }
        // The second pass: the same decisions, each shown as it comes.
        None => {
            let slots = learned.into_slots().map_err(spill_error)?;
            let show = Show::new(slots, files(&mut segments)?, end_ns);
            let mut show = Replay::new(options, &header, Pass::Show(show));
            output
                .report(&info)
                .map_err(write_error)
                .and_then(|()| {
                    replay_segments(&mut segments, &mut show, |replay| {
                        report.events(&mut output, replay)
                    })
                })
                .and_then(|()| {
                    show.finish().map_err(spill_error)?;
                    report.events(&mut output, &mut show)
                })
                .and_then(|()| {
                    let owners = |s: &Socket| show.owners_of(s);
                    report
                        .end(&mut output, &show, end_ns, owners)
                        .map_err(write_error)
                })
        }
    };
    match written {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        r => r,
    }
}

/// The events of the first pass, while there are few.
struct Kept {
    /// `None` once there were more than [`KEEP`].
    events: Option<Vec<Event>>,
    /// Events seen, kept or not.
    shown: u64,
}

impl Default for Kept {
    fn default() -> Self {
        Kept {
            events: Some(Vec::new()),
            shown: 0,
        }
    }
}

impl Kept {
    /// Takes the events the replay's last entry made.
    fn take(&mut self, replay: &mut Replay) {
        self.shown += replay.events.len() as u64;
        match &mut self.events {
            Some(k) if k.len() + replay.events.len() <= KEEP => k.append(&mut replay.events),
            _ => {
                self.events = None;
                replay.events.clear();
            }
        }
    }
}

/// Whether the reader of the report went away (`tracer report FILE | head`).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

/// Feeds the entries of `segments` to `replay`, in order; `after` takes what each entry
/// made the replay show.
fn replay_segments(
    segments: &mut [Segment],
    replay: &mut Replay,
    mut after: impl FnMut(&mut Replay) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for (i, seg) in segments.iter_mut().enumerate() {
        if i > 0 && !seg.continues {
            replay.restart(&seg.header);
        }
        // A segment's first socket entries are its checkpoint; later ones are the live
        // run's corrections after lost transitions, which every segment applies.
        let mut checkpoint = seg.header.checkpoint;
        while let Some((entry, offset)) = seg.next_entry()? {
            let in_checkpoint = checkpoint > 0 && matches!(entry, Entry::Socket(_));
            if in_checkpoint {
                checkpoint -= 1;
                if seg.continues {
                    continue;
                }
            }
            replay
                .entry(entry, position(i, offset), i == 0 && in_checkpoint)
                .map_err(spill_error)?;
            after(replay)?;
        }
    }
    Ok(())
}

fn write_error(e: io::Error) -> anyhow::Error {
    anyhow::Error::new(e).context("writing the report failed")
}

/// The first pass could not keep its notes on the flags.
fn spill_error(e: io::Error) -> anyhow::Error {
    anyhow::Error::new(e)
        .context("keeping the report's notes on its flags in a temporary file failed (in $TMPDIR)")
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

/// Warnings about what the live run itself missed; `last_ns` is the recording's last time.
fn live_warnings(live: &Live, last_ns: u64, clock: &WallClock) -> Vec<String> {
    let mut w = Vec::new();
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
            Rfc3339(clock.at(last_ns))
        ));
    }
    w
}

/// What the report writes as the second pass goes, and the worst offenders it adds up.
struct Report<'a> {
    args: &'a ReportArgs,
    /// `--pid`, `--container` and `--cgroup`.
    selection: Selection,
    options: Options,
    /// Stays shown stuck whose resolution may still come: counted among the offenders once.
    counted: HashSet<Stay>,
    /// The offenders so far, by owner.
    offenders: HashMap<Option<u32>, Offender>,
}

/// Stands in for the owners of a stuck socket the live run never flagged.
static NOT_RECORDED: Ownership = Ownership {
    held_by: HeldBy::Unknown,
    owners: Vec::new(),
    last_io: None,
};

impl Report<'_> {
    /// Writes the events the replay's last entry made.
    fn events<W: Write, E: Write>(
        &mut self,
        o: &mut Output<W, E>,
        replay: &mut Replay,
    ) -> anyhow::Result<()> {
        for ev in replay.events.drain(..) {
            self.event(o, ev).map_err(write_error)?;
        }
        Ok(())
    }

    /// Whether `--port`, `--pid`, `--container` and `--cgroup` keep a stuck socket.
    fn kept(&self, s: &Socket, ownership: &Ownership) -> bool {
        self.options.port_kept(&s.ends) && self.selection.admits(ownership, s)
    }

    fn event<W: Write, E: Write>(&mut self, o: &mut Output<W, E>, ev: Event) -> io::Result<()> {
        match ev {
            Event::Transition(t) => o.transition(&t),
            Event::Existing { socket, .. } => o.existing(&socket),
            Event::Stuck {
                flag,
                owners,
                outcome,
                ..
            } => {
                let ownership = owners.as_deref().unwrap_or(&NOT_RECORDED);
                if !self.kept(&flag.socket, ownership) {
                    return Ok(());
                }
                let stay = flag.socket.stay();
                if self.counted.insert(stay) {
                    self.offend(&flag.socket, ownership, outcome.total.as_nanos() as u64);
                }
                let r = SocketReport {
                    key: flag.key,
                    socket: &flag.socket,
                    ownership,
                };
                o.stuck_with_outcome(&r, flag.at_ns, flag.threshold, outcome)
            }
            Event::Resolved {
                resolved, owners, ..
            } => {
                let ownership = owners.as_deref().unwrap_or(&NOT_RECORDED);
                if !self.kept(&resolved.socket, ownership) {
                    return Ok(());
                }
                // Flagged before the window: shown stuck for the first time.
                if !self.counted.remove(&resolved.socket.stay()) {
                    let stuck_ns = resolved.stuck_for().as_nanos() as u64;
                    self.offend(&resolved.socket, ownership, stuck_ns);
                }
                let report = SocketReport {
                    key: resolved.key,
                    socket: &resolved.socket,
                    ownership,
                };
                o.resolved(&report, resolved.left_ns, resolved.new)
            }
        }
    }

    /// Counts a stay shown stuck, for `stuck_ns` in all, against its owner.
    fn offend(&mut self, s: &Socket, ownership: &Ownership, stuck_ns: u64) {
        let owner = ownership.owners.first();
        let pid = owner.map(|w| w.process.pid);
        let off = self.offenders.entry(pid).or_insert_with(|| Offender {
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

    /// Writes what follows the events: the summary, offenders, transition counts and times
    /// per state (none for a timeline, the socket's life alone); `replay` is done, and
    /// `owners` gives the owners of its stuck sockets.
    fn end<W: Write, E: Write>(
        &mut self,
        o: &mut Output<W, E>,
        replay: &Replay,
        end_ns: u64,
        owners: impl Fn(&Socket) -> Option<Box<Ownership>>,
    ) -> io::Result<()> {
        if self.args.timeline.is_none() {
            self.summary(o, replay, end_ns, owners)?;
            o.offenders(&self.offenders())?;
            o.transition_counts(&transitions(replay))?;
            o.state_times(&state_times(replay))?;
        }
        o.flush()
    }

    /// The sockets stuck at the end, grouped as the live summary groups them.
    fn summary<W: Write, E: Write>(
        &self,
        o: &mut Output<W, E>,
        replay: &Replay,
        end_ns: u64,
        owners: impl Fn(&Socket) -> Option<Box<Ownership>>,
    ) -> io::Result<()> {
        let table = replay.engine.table();
        let stuck: Vec<_> = table
            .stuck()
            .map(|(_, s)| (s, owners(s)))
            .filter(|(s, owners)| self.kept(s, owners.as_deref().unwrap_or(&NOT_RECORDED)))
            .collect();
        // fd counts as the live run saw them when it resolved the owners.
        let groups = summary::group(stuck.iter().map(|(s, o)| (*s, o.as_deref())), |_| None);
        let states = table.per_state().map(|(s, n)| (s.to_string(), n)).collect();
        o.summary(SummaryReason::End, &groups, table.stats(), &states, end_ns)
    }

    /// Processes ranked by the stuck sockets they held, `--top` of them.
    fn offenders(&mut self) -> Vec<Offender> {
        let mut ranked: Vec<Offender> = std::mem::take(&mut self.offenders).into_values().collect();
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
}

/// Transition counts, most frequent first.
fn transitions(replay: &Replay) -> Vec<TransitionCount> {
    let mut counts: Vec<TransitionCount> = replay
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
fn state_times(replay: &Replay) -> Vec<StateTime> {
    replay
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

fn ms(ns: u64) -> u64 {
    ns / 1_000_000
}

#[cfg(test)]
mod tests;
