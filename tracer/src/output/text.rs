//! Text for people: transitions, alerts and summaries on the data stream (stdout), status
//! lines on stderr.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    io::{self, Write},
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use tracer_common::TcpState;

use super::{
    clock::{self, Date, Rfc3339, TimeOfDay},
    json,
    json::{Offender, Reconciled, ReportInfo, StartInfo, StateTime, StopInfo, TransitionCount},
    line::Line,
    summary::{self, Group, GroupKey, ServicePort},
    Outcome, Page, Render, SocketReport, Summary, SummaryReason,
};
use crate::{
    attribute::container::Container,
    decode::Transition,
    model::{HeldBy, IoOp, Origin, Owner, Socket, State, TimeStyle},
};

/// ANSI styles for alerts on a terminal.
const RED: &str = "\x1b[1;31m";
const GREEN: &str = "\x1b[32m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

/// Alerts of one group shown one per line in a batch; the rest fold into one line.
pub const SHOWN_PER_BATCH: usize = 3;

/// How text looks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TextStyle {
    /// Colour the heads of alerts (for a terminal that has not set NO_COLOR).
    pub color: bool,
    /// How lines are dated (`--time`).
    pub time: TimeStyle,
    /// The tracer's own network namespace: sockets elsewhere are marked with theirs.
    pub own_netns: u32,
    /// Fold the alerts of a group past the first [`SHOWN_PER_BATCH`] of a batch into one
    /// line (a live run; a report lists every socket).
    pub fold: bool,
}

/// Writes text.
#[derive(Clone, Debug)]
pub struct Text {
    style: TextStyle,
    /// The day (UTC) the output last named: in clock style a line on another day is
    /// preceded by a date line. `None` until the first date is written.
    day: Option<u64>,
    /// The alerts of the batch under way, by group, in the order first seen.
    batch: Vec<Folded>,
    /// Where each group of the batch is in `batch`.
    batch_index: HashMap<(Alert, GroupKey), usize>,
    /// The groups of the last summary printed in full, and their counts: what a summary is
    /// compared with, and whose advice was given.
    summarized: BTreeMap<GroupKey, usize>,
}

/// Which alert a batch folds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Alert {
    Stuck,
    Resolved,
}

/// The alerts of one group in a batch: how many were shown, and what the line that stands
/// for the rest says.
#[derive(Clone, Debug)]
struct Folded {
    alert: Alert,
    key: GroupKey,
    /// `java[4242]`, when an owner was found.
    owner: Option<String>,
    shown: usize,
    held: usize,
    /// The latest time among those held back (monotonic ns): the line's time.
    at_ns: u64,
    /// Their longest stay in the state, and whether it is a lower bound.
    longest: Duration,
    longest_is_lower_bound: bool,
}

impl Text {
    /// A renderer writing text in `style`.
    pub fn new(style: TextStyle) -> Self {
        Self {
            style,
            day: None,
            batch: Vec::new(),
            batch_index: HashMap::new(),
            summarized: BTreeMap::new(),
        }
    }

    /// Counts `r`'s alert, as of `at_ns`, in the batch; false when it is to be shown, true
    /// when its group has shown enough in this batch and it is held back.
    fn fold(&mut self, alert: Alert, r: &SocketReport<'_>, at_ns: u64) -> bool {
        if !self.style.fold {
            return false;
        }
        let key = GroupKey::of(r.socket, Some(r.ownership));
        let i = *self.batch_index.entry((alert, key)).or_insert_with(|| {
            self.batch.push(Folded {
                alert,
                key,
                owner: r
                    .ownership
                    .owners
                    .first()
                    .map(|o| format!("{}[{}]", o.process.comm, o.process.pid)),
                shown: 0,
                held: 0,
                at_ns,
                longest: Duration::ZERO,
                longest_is_lower_bound: false,
            });
            self.batch.len() - 1
        });
        let f = &mut self.batch[i];
        if f.shown < SHOWN_PER_BATCH {
            f.shown += 1;
            return false;
        }
        f.held += 1;
        f.at_ns = f.at_ns.max(at_ns);
        let stay = super::since(r.socket.since_ns, at_ns);
        if stay > f.longest {
            f.longest = stay;
            f.longest_is_lower_bound = r.socket.since_is_lower_bound;
        }
        true
    }

    /// `java[4242] 290 more sockets stuck in CLOSE_WAIT on :61616 (oldest 12s)`: the
    /// alerts of a group a batch held back.
    fn folded_line(&mut self, page: &mut Page, f: &Folded) -> io::Result<()> {
        let time = self.stamp(page, page.clock.at(f.at_ns), false)?;
        let owner = match &f.owner {
            Some(o) => format!("{o} "),
            None => "no owner found: ".to_owned(),
        };
        let (head, what, age) = match f.alert {
            Alert::Stuck => (self.paint(RED, "STUCK"), "stuck in", "oldest"),
            Alert::Resolved => (self.paint(GREEN, "RESOLVED"), "left", "longest"),
        };
        writeln!(
            page.out,
            "{time} {head} {owner}{} {what} {} {}{} ({age} {}{})",
            plural(f.held, "more socket"),
            f.key.state,
            self.place(f.key.port),
            self.netns(f.key.netns),
            at_least(f.longest_is_lower_bound),
            human_duration(f.longest)
        )
    }

    /// `on :61616` for a local service port, `to 10.0.0.5:5432` for a remote one.
    fn place(&self, port: ServicePort) -> String {
        match port {
            ServicePort::Local(_) => format!("on {port}"),
            ServicePort::Remote(..) => format!("to {port}"),
        }
    }

    /// The time that heads a data line at `t`: the time of day (to the microsecond with
    /// `micros`) after a date line if `t` is on another day than the line before, or
    /// RFC 3339 in full.
    fn stamp(&mut self, page: &mut Page, t: SystemTime, micros: bool) -> io::Result<Stamp> {
        if self.style.time == TimeStyle::Rfc3339 {
            return Ok(Stamp::Full(Rfc3339(t)));
        }
        let day = clock::day(t);
        if self.day != Some(day) {
            writeln!(page.out, "-- {} (UTC) --", Date(t))?;
            self.day = Some(day);
        }
        Ok(Stamp::Clock(if micros {
            TimeOfDay::micros(t)
        } else {
            TimeOfDay::seconds(t)
        }))
    }

    /// Width of the time column of transitions.
    /// `127.0.0.1:61616 <- 127.0.0.1:40000`: local end first, and the arrow of [`arrow`];
    /// then the socket's network namespace when it is not the tracer's.
    fn endpoints(&self, s: &Socket) -> String {
        format!(
            "{} {} {}{}",
            SocketAddr::new(s.ends.saddr, s.ends.sport),
            arrow(s.origin),
            SocketAddr::new(s.ends.daddr, s.ends.dport),
            self.netns(s.ends.netns)
        )
    }

    /// ` netns 4026532123` for a namespace other than the tracer's own, else nothing.
    fn netns(&self, netns: u32) -> String {
        if netns == 0 || netns == self.style.own_netns {
            String::new()
        } else {
            format!(" netns {netns}")
        }
    }

    /// One group of a summary: who holds how many sockets in which state, where.
    fn group_line(&self, page: &mut Page, g: &Group, at_ns: u64) -> io::Result<()> {
        let who = match (&g.comm, g.pid) {
            (Some(comm), Some(pid)) => {
                format!("{comm}[{pid}]{}", in_container(g.container.as_ref()))
            }
            _ => "an unknown process".to_owned(),
        };
        write!(
            page.out,
            "  {who} holds {} in {} {}{} (oldest {}{})",
            plural(g.count, "socket"),
            g.state,
            self.place(g.port),
            self.netns(g.netns.unwrap_or(0)),
            at_least(g.oldest_is_lower_bound),
            human_duration(super::since(g.oldest_since_ns, at_ns))
        )?;
        if let Some(n) = g.fd_count {
            write!(page.out, ", {}", fd_usage(n, g.fd_limit))?;
        }
        if g.eof_read > 0 && g.state == TcpState::CloseWait.into() {
            write!(
                page.out,
                "; read end of stream on {} and kept them",
                g.eof_read
            )?;
        }
        writeln!(page.out)
    }

    fn time_width(&self) -> usize {
        match self.style.time {
            TimeStyle::Clock => "06:33:10.123456".len(),
            TimeStyle::Rfc3339 => "2026-11-25T06:33:10.123456789Z".len(),
        }
    }

    fn paint<'a>(&self, style: &'static str, text: &'a str) -> Painted<'a> {
        Painted {
            style: self.style.color.then_some(style),
            text,
        }
    }
}

/// The time at the head of a line.
enum Stamp {
    Clock(TimeOfDay),
    Full(Rfc3339),
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stamp::Clock(t) => t.fmt(f),
            Stamp::Full(t) => t.fmt(f),
        }
    }
}

/// A word in an ANSI style, when colour is on.
struct Painted<'a> {
    style: Option<&'static str>,
    text: &'a str,
}

impl fmt::Display for Painted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.style {
            Some(style) => write!(f, "{style}{}{RESET}", self.text),
            None => f.write_str(self.text),
        }
    }
}

impl Render for Text {
    fn start(&mut self, page: &mut Page, info: &StartInfo) -> io::Result<()> {
        let a = &info.attached;
        let mounted = if a.tracefs_mounted_by_tracer {
            ", mounted by tracer"
        } else {
            ""
        };
        // The first line names the date, which the lines that follow then leave out.
        let when = match self.style.time {
            TimeStyle::Clock => {
                self.day = Some(clock::day(info.time.0));
                format!("on {} (UTC)", Date(info.time.0))
            }
            TimeStyle::Rfc3339 => format!("at {}", info.time),
        };
        writeln!(
            page.status,
            "tracer {}: attached to tracepoint {} ({}, tracefs at {}{mounted}) {when}; Ctrl-C to stop",
            info.version, a.tracepoint, a.probe, a.tracefs
        )?;
        let watched: Vec<String> = info
            .thresholds
            .iter()
            .map(|(state, ms)| {
                format!(
                    "{state} after {}",
                    human_duration(Duration::from_millis(*ms))
                )
            })
            .collect();
        let watched = if watched.is_empty() {
            "no state watched".to_owned()
        } else {
            format!("flagging {}", watched.join(", "))
        };
        writeln!(
            page.status,
            "tracer: {watched}; {} open at start",
            plural(info.existing_sockets, "socket")
        )?;
        if let Some(r) = &info.record {
            let budget = match r.max_bytes {
                Some(b) => format!("at most {} MiB in 4 files", b >> 20),
                None => "no size limit".to_owned(),
            };
            writeln!(page.status, "tracer: recording to {} ({budget})", r.path)?;
        }
        if info.mode == "events" {
            writeln!(
                page.out,
                "{:<width$} {:>7} {:<16} {:>21}    {:<21} TRANSITION",
                "TIME(UTC)",
                "PID",
                "COMM",
                "LOCAL",
                "REMOTE",
                width = self.time_width()
            )?;
        }
        Ok(())
    }

    fn transition(&mut self, page: &mut Page, t: &Transition) -> io::Result<()> {
        // `{time} {pid:>7} {comm:<16} {saddr:sport:>21} {arrow} {daddr:dport:<21} {old} ->
        // {new}{netns}`, written field by field: `--events` writes one line per transition,
        // and `fmt`'s padding machinery costs several times more (a test holds the two to
        // the same bytes).
        let time = self.stamp(page, page.clock.at(t.ts_ns), true)?;
        let mut line = Line::new(&mut page.out);
        match time {
            Stamp::Clock(t) => t.write_into(&mut line),
            Stamp::Full(t) => line.with_vec(|out| {
                // Writing into a Vec cannot fail.
                let _ = write!(out, "{t}");
            }),
        }
        line.byte(b' ');
        let start = line.at();
        line.uint(t.pid.into());
        line.pad(start, 7, true);
        line.byte(b' ');
        let start = line.at();
        match line.plain_comm(&t.comm) {
            Some(()) => line.pad(start, 16, false),
            None => line.with_vec(|out| pad_left(out, t.comm.to_str_lossy().as_bytes(), 16)),
        }
        line.byte(b' ');
        let start = line.at();
        json::write_socket_addr(&mut line, t.saddr, t.sport);
        line.pad(start, 21, true);
        line.byte(b' ');
        line.text(arrow(opened_by(t)).as_bytes());
        line.byte(b' ');
        let start = line.at();
        json::write_socket_addr(&mut line, t.daddr, t.dport);
        line.pad(start, 21, false);
        line.byte(b' ');
        line.state(t.old);
        line.text(b" -> ");
        line.state(t.new);
        if t.netns != 0 && t.netns != self.style.own_netns {
            line.text(b" netns ");
            line.uint(t.netns.into());
        }
        line.byte(b'\n');
        line.finish();
        Ok(())
    }

    fn stuck(
        &mut self,
        page: &mut Page,
        r: &SocketReport<'_>,
        at_ns: u64,
        _threshold: Duration,
        outcome: Option<Outcome>,
    ) -> io::Result<()> {
        if self.fold(Alert::Stuck, r, at_ns) {
            return Ok(());
        }
        let at_least = at_least(r.socket.since_is_lower_bound);
        let outcome = match outcome {
            Some(Outcome {
                total,
                still_stuck: true,
            }) => format!(
                "; still stuck at the end, {at_least}{} in all",
                human_duration(total)
            ),
            Some(Outcome {
                total,
                still_stuck: false,
            }) => format!("; left after {at_least}{}", human_duration(total)),
            None => String::new(),
        };
        let time = self.stamp(page, page.clock.at(at_ns), false)?;
        writeln!(
            page.out,
            "{time} {} {} for {at_least}{} {} {}{}{outcome}",
            self.paint(RED, "STUCK"),
            r.socket.state,
            human_duration(super::since(r.socket.since_ns, at_ns)),
            self.endpoints(r.socket),
            owner_text(r),
            io_text(r, at_ns)
        )
    }

    fn resolved(
        &mut self,
        page: &mut Page,
        r: &SocketReport<'_>,
        left_ns: u64,
        new: State,
    ) -> io::Result<()> {
        if self.fold(Alert::Resolved, r, left_ns) {
            return Ok(());
        }
        let owner = match r.ownership.owners.first() {
            Some(o) => format!("{}[{}]", o.process.comm, o.process.pid),
            None => "owner unknown".to_owned(),
        };
        let time = self.stamp(page, page.clock.at(left_ns), false)?;
        writeln!(
            page.out,
            "{time} {} {} -> {new} after {}{} {} {owner}",
            self.paint(GREEN, "RESOLVED"),
            r.socket.state,
            at_least(r.socket.since_is_lower_bound),
            human_duration(super::since(r.socket.since_ns, left_ns)),
            self.endpoints(r.socket),
        )
    }

    fn end_batch(&mut self, page: &mut Page) -> io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.batch_index.clear();
        for f in std::mem::take(&mut self.batch) {
            if f.held > 0 {
                self.folded_line(page, &f)?;
            }
        }
        Ok(())
    }

    /// In full when the groups or their counts changed since the last summary printed in
    /// full (or at the end); else one line while sockets are stuck, none when none are.
    /// Advice is given for the states of groups the last full summary did not have.
    fn summary(&mut self, page: &mut Page, s: &Summary<'_>) -> io::Result<()> {
        let stuck = s.stuck();
        let changed = s.groups.len() != self.summarized.len()
            || s.groups
                .iter()
                .any(|g| self.summarized.get(&g.key()) != Some(&g.count));
        match s.reason {
            SummaryReason::Interval if !changed => {
                return match s.groups.iter().min_by_key(|g| g.oldest_since_ns) {
                    Some(oldest) => {
                        let time = self.stamp(page, page.clock.at(s.at_ns), false)?;
                        writeln!(
                            page.out,
                            "{time} {} unchanged: {} stuck in {} (oldest {}{})",
                            self.paint(BOLD, "SUMMARY"),
                            plural(stuck, "socket"),
                            plural(s.groups.len(), "group"),
                            at_least(oldest.oldest_is_lower_bound),
                            human_duration(super::since(oldest.oldest_since_ns, s.at_ns))
                        )
                    }
                    None => Ok(()),
                };
            }
            // A section of the report: apart from the sockets listed before it.
            SummaryReason::End => writeln!(page.out)?,
            SummaryReason::Interval | SummaryReason::Stop => {}
        }
        let before = std::mem::replace(
            &mut self.summarized,
            s.groups.iter().map(|g| (g.key(), g.count)).collect(),
        );
        let time = self.stamp(page, page.clock.at(s.at_ns), false)?;
        let head = self.paint(BOLD, "SUMMARY");
        if stuck == 0 {
            return writeln!(
                page.out,
                "{time} {head} no sockets stuck, {} tracked",
                s.stats.tracked
            );
        }
        writeln!(
            page.out,
            "{time} {head} {} stuck, {} tracked",
            plural(stuck, "socket"),
            s.stats.tracked
        )?;
        for g in s.groups {
            self.group_line(page, g, s.at_ns)?;
        }
        let mut advised = Vec::new();
        for g in s.groups {
            if !before.contains_key(&g.key()) && !advised.contains(&g.state) {
                advised.push(g.state);
                writeln!(page.out, "  advice: {}", summary::advice(g.state))?;
            }
        }
        Ok(())
    }

    fn lost(&mut self, page: &mut Page, lost: u64, total: u64) -> io::Result<()> {
        warn_lost(page, lost, total)
    }

    fn missed(&mut self, page: &mut Page, missed: u64, total: u64) -> io::Result<()> {
        warn_missed(page, missed, total)
    }

    fn reconciled(&mut self, page: &mut Page, r: &Reconciled) -> io::Result<()> {
        say_reconciled(page, r)
    }

    fn evicted(&mut self, page: &mut Page, sockets: u64, stuck: u64) -> io::Result<()> {
        warn_evicted(page, sockets, stuck)
    }

    fn stop(&mut self, page: &mut Page, info: &StopInfo) -> io::Result<()> {
        let skipped = info.skipped.to_string();
        writeln!(
            page.status,
            "tracer: stopped after {:.1}s: {} transitions, {} lost{}{}",
            info.duration_ms as f64 / 1000.0,
            info.events,
            info.lost,
            if skipped.is_empty() {
                String::new()
            } else {
                format!("; skipped {skipped}")
            },
            match info.unrecorded {
                0 => String::new(),
                n => format!("; {n} entries not recorded"),
            }
        )
    }

    fn report(&mut self, page: &mut Page, info: &ReportInfo<'_>) -> io::Result<()> {
        // The header names full dates; lines on another day than its start get a date line.
        self.day = Some(clock::day(info.start.0));
        let out = &mut page.out;
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
        match (&info.from, &info.to) {
            (Some(from), Some(to)) => writeln!(out, "  window {from} to {to}")?,
            (Some(from), None) => writeln!(out, "  window from {from}")?,
            (None, Some(to)) => writeln!(out, "  window up to {to}")?,
            (None, None) => {}
        }
        writeln!(out)
    }

    fn existing(&mut self, page: &mut Page, s: &Socket) -> io::Result<()> {
        let time = self.stamp(page, page.clock.at(s.since_ns), false)?;
        writeln!(
            page.out,
            "{time} OPEN {} already in {} when the recording started",
            self.endpoints(s),
            s.state
        )
    }

    fn offenders(&mut self, page: &mut Page, ranked: &[Offender]) -> io::Result<()> {
        if ranked.is_empty() {
            return Ok(());
        }
        writeln!(page.out, "\nWORST OFFENDERS")?;
        for off in ranked {
            let who = match (&off.comm, off.pid) {
                (Some(c), Some(p)) => format!("{c}[{p}]{}", in_container(off.container.as_ref())),
                _ => "owner not recorded".to_owned(),
            };
            let states: Vec<String> = off.states.iter().map(|(s, n)| format!("{n} {s}")).collect();
            write!(
                page.out,
                "  {}. {who}: {} stuck ({}) on {}, longest {}",
                off.rank,
                plural(off.stuck, "socket"),
                states.join(", "),
                off.ports.join(" "),
                human_duration(Duration::from_millis(off.longest_ms))
            )?;
            if off.eof_read > 0 {
                write!(
                    page.out,
                    "; read end of stream on {} and kept them",
                    off.eof_read
                )?;
            }
            if let Some(n) = off.fd_count {
                write!(page.out, "; {}", fd_usage(n, off.fd_limit))?;
            }
            writeln!(page.out)?;
        }
        Ok(())
    }

    fn transition_counts(&mut self, page: &mut Page, counts: &[TransitionCount]) -> io::Result<()> {
        writeln!(page.out, "\nTRANSITIONS")?;
        for c in counts {
            let step = format!("{} -> {}", c.old, c.new);
            writeln!(page.out, "  {step:<28} {:>10}", c.count)?;
        }
        if counts.is_empty() {
            writeln!(page.out, "  none in the window")?;
        }
        Ok(())
    }

    fn state_times(&mut self, page: &mut Page, states: &[StateTime]) -> io::Result<()> {
        writeln!(
            page.out,
            "\nTIME IN STATE (stays that began and ended in the window)"
        )?;
        writeln!(
            page.out,
            "  {:<12} {:>10} {:>9} {:>9} {:>9} {:>9}",
            "STATE", "STAYS", "P50", "P90", "P99", "MAX"
        )?;
        if states.is_empty() {
            writeln!(page.out, "  none in the window")?;
        }
        for s in states {
            writeln!(
                page.out,
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

/// The warning that the probe dropped `lost` more transitions (`total` so far); a status
/// line in every format.
pub(super) fn warn_lost(page: &mut Page, lost: u64, total: u64) -> io::Result<()> {
    writeln!(
        page.status,
        "tracer: warning: {lost} transitions lost ({total} in all): the ring buffer was full; \
         narrow the filters (--port, --state) so fewer events cross to userspace"
    )
}

/// The warning that the kernel skipped the probe `missed` more times (`total` so far); a
/// status line in every format.
pub(super) fn warn_missed(page: &mut Page, missed: u64, total: u64) -> io::Result<()> {
    writeln!(
        page.status,
        "tracer: warning: the kernel skipped the probe {} ({total} in all): a BPF program \
         was already running on that CPU when a socket changed state; up to {} not seen",
        plural(missed as usize, "time"),
        plural(missed as usize, "transition"),
    )
}

/// The warning that a full table dropped `sockets` sockets (`stuck` of them flagged); a
/// status line in every format.
pub(super) fn warn_evicted(page: &mut Page, sockets: u64, stuck: u64) -> io::Result<()> {
    writeln!(
        page.status,
        "tracer: warning: table full: {} not followed ({stuck} of them stuck); raise --max-sockets",
        plural(sockets as usize, "socket")
    )
}

/// The status line that the table was set right against the kernel's list; in every format.
pub(super) fn say_reconciled(page: &mut Page, r: &Reconciled) -> io::Result<()> {
    let why = match r.reason {
        "evicted" => "a full table evicted watched sockets",
        _ => "transitions were lost",
    };
    writeln!(
        page.status,
        "tracer: {why}: checked the table against the kernel's sockets ({} ms): {} gone removed, \
         {} in another state corrected, {} missed added; {} tracked",
        r.listing_ms, r.removed, r.corrected, r.added, r.tracked
    )
}

/// `31s`, `2m31s`, `2h13m`, `3d4h`: two units at most, as an SRE reads an age.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `850µs`, `12.5ms`, `3s`, `2m31s`: a stay's length in a table cell.
fn short_duration(us: u64) -> String {
    match us {
        0..=999 => format!("{us}µs"),
        1000..=999_999 => format!("{:.1}ms", us as f64 / 1000.0),
        _ => human_duration(Duration::from_micros(us)),
    }
}

/// `"at least "` before an age that is a lower bound.
fn at_least(lower_bound: bool) -> &'static str {
    if lower_bound {
        "at least "
    } else {
        ""
    }
}

/// `1 socket`, `2 sockets`.
fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// `fds 1013/1024 (99%)`, or `fds 12 (no limit)`.
pub(super) fn fd_usage(count: usize, limit: Option<u64>) -> String {
    match limit {
        Some(l) if l > 0 => format!("fds {count}/{l} ({}%)", count as u64 * 100 / l),
        _ => format!("fds {count} (no limit)"),
    }
}

/// `text` (UTF-8) padded with spaces to `width` characters, as `{:<width}` pads what it
/// writes.
fn pad_left(out: &mut Vec<u8>, text: &[u8], width: usize) {
    // Characters, not bytes: a UTF-8 continuation byte starts none.
    let chars = text.iter().filter(|&&b| b & 0xc0 != 0x80).count();
    out.extend_from_slice(text);
    out.resize(out.len() + width.saturating_sub(chars), b' ');
}

/// The arrow between the local and the remote end, on every line: it points from the side
/// that connected. `<-` accepted from the remote end, `->` connected by this host, `--`
/// not known (or a listener, which has no peer).
fn arrow(origin: Origin) -> &'static str {
    match origin {
        Origin::Accepted => "<-",
        Origin::Connected => "->",
        Origin::Listener | Origin::Unknown => "--",
    }
}

/// How a transition's socket was opened, as far as that transition alone tells: the
/// handshake states say it (SYN_SENT after connect(), SYN_RECV on the accepting side);
/// later transitions and a listener's own do not.
fn opened_by(t: &Transition) -> Origin {
    let handshake = |s: State| match s.known() {
        Some(TcpState::SynSent) => Some(Origin::Connected),
        Some(TcpState::SynRecv) => Some(Origin::Accepted),
        _ => None,
    };
    handshake(t.old)
        .or(handshake(t.new))
        .unwrap_or(Origin::Unknown)
}

/// Who holds the socket, in words.
fn owner_text(r: &SocketReport<'_>) -> String {
    let caller = r.socket.hint.map(|h| format!("{}[{}]", h.comm, h.pid));
    let mut owners = r.ownership.owners.iter();
    let Some(first) = owners.next() else {
        // The last send/receive, when known, follows in the alert (io_text).
        return match (r.ownership.held_by, caller) {
            (HeldBy::Orphan, Some(c)) => format!("orphan: closed by {c}"),
            (HeldBy::Orphan, None) => "orphan: closed by its process".to_owned(),
            (HeldBy::Gone, _) => "gone before its owner was found".to_owned(),
            (HeldBy::NetnsUnreachable, caller) => format!(
                "owner unknown: no process or mount holds network namespace {} any more{}",
                r.socket.ends.netns,
                caller
                    .map(|c| format!(" (last caller {c})"))
                    .unwrap_or_default()
            ),
            (_, Some(c)) => format!("owner unknown (last caller {c})"),
            (_, None) => "owner unknown".to_owned(),
        };
    };
    let fds = |o: &Owner| {
        o.fds
            .iter()
            .map(|fd| fd.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let p = &first.process;
    let mut text = match r.ownership.held_by {
        HeldBy::AcceptQueue => format!(
            "never accepted: in the accept queue of {}[{}] (listener fd {})",
            p.comm,
            p.pid,
            fds(first)
        ),
        _ => format!("{}[{}] fd {}", p.comm, p.pid, fds(first)),
    };
    text.push_str(&format!(
        ", {}, uid {}",
        fd_usage(first.fd_count, p.fd_limit),
        p.uid
    ));
    if let Some(c) = p.container().as_ref().and_then(container_text) {
        text.push_str(&format!(", {c}"));
    }
    if let Some(cg) = &p.cgroup {
        text.push_str(&format!(", cgroup {cg}"));
    }
    for o in owners {
        text.push_str(&format!(
            "; also {}[{}] fd {}",
            o.process.comm,
            o.process.pid,
            fds(o)
        ));
    }
    text
}

/// `container 3f2a1b9c8d7e (docker)`, with the pod of a Kubernetes container; `None` for
/// a systemd service, which its cgroup path names already.
fn container_text(c: &Container) -> Option<String> {
    if !c.is_container() {
        return None;
    }
    let runtime = c.runtime.name();
    Some(match &c.pod_uid {
        Some(pod) => format!("container {} ({runtime}, pod {pod})", c.short_id()),
        None => format!("container {} ({runtime})", c.short_id()),
    })
}

/// ` in container 3f2a1b9c8d7e (docker)` after a process's name, or nothing.
fn in_container(c: Option<&Container>) -> String {
    match c.and_then(container_text) {
        Some(c) => format!(" in {c}"),
        None => String::new(),
    }
}

/// The socket's last send or receive, in words: `; java[4242] read end of stream 2h13m
/// ago and kept the socket` is what explains a CLOSE_WAIT leak.
fn io_text(r: &SocketReport<'_>, now_ns: u64) -> String {
    let Some(io) = &r.ownership.last_io else {
        return String::new();
    };
    let when = human_duration(super::since(io.ts_ns, now_ns));
    let who = format!("{}[{}]", io.comm, io.pid);
    match io.op {
        IoOp::Eof if r.socket.state == TcpState::CloseWait.into() => {
            format!("; {who} read end of stream {when} ago and kept the socket")
        }
        IoOp::Eof => format!("; {who} read end of stream {when} ago"),
        IoOp::Recv => format!("; last receive by {who} {when} ago"),
        IoOp::Send => format!("; last send by {who} {when} ago"),
    }
}

#[cfg(test)]
mod transition_tests {
    use proptest::prelude::*;

    use super::*;
    use crate::output::{arbitrary, WallClock};

    /// The transition line as `fmt` writes it: what [`Text::transition`] must write byte
    /// for byte.
    fn reference(text: &mut Text, page: &mut Page, t: &Transition) {
        let time = text.stamp(page, page.clock.at(t.ts_ns), true).unwrap();
        writeln!(
            page.out,
            "{time} {:>7} {:<16} {:>21} {} {:<21} {} -> {}{}",
            t.pid,
            t.comm,
            SocketAddr::new(t.saddr, t.sport),
            arrow(opened_by(t)),
            SocketAddr::new(t.daddr, t.dport),
            t.old,
            t.new,
            text.netns(t.netns)
        )
        .unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn transitions_are_written_as_fmt_writes_them(
            t in arbitrary::transition(),
            epoch_s in 0i128..253_402_300_000,
            rfc3339 in any::<bool>(),
        ) {
            let style = TextStyle {
                time: if rfc3339 { TimeStyle::Rfc3339 } else { TimeStyle::Clock },
                own_netns: arbitrary::OWN_NETNS,
                ..TextStyle::default()
            };
            let page = || Page {
                out: Vec::new(),
                status: Vec::new(),
                clock: WallClock::with_offset(epoch_s * 1_000_000_000),
            };
            let (mut fast, mut slow) = (page(), page());
            // Twice: the first line of a day comes after a date line.
            let mut text = Text::new(style);
            text.transition(&mut fast, &t).unwrap();
            text.transition(&mut fast, &t).unwrap();
            let mut text = Text::new(style);
            reference(&mut text, &mut slow, &t);
            reference(&mut text, &mut slow, &t);
            prop_assert_eq!(String::from_utf8(fast.out).unwrap(), String::from_utf8(slow.out).unwrap());
        }
    }
}
