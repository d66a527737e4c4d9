//! Last stage: writes what the tool has to say, as human text or JSON Lines.
//!
//! [`Output`] owns the streams and the clock, and hands every record to one [`Render`]er:
//! [`text::Text`] for people, [`json::Json`] for programs. [`json`] also holds the record
//! types, the contract documented in the README; [`clock`] dates records; [`summary`]
//! groups the stuck sockets; [`queue`] writes stdout from a thread, so that a reader that
//! stalls does not stall the live run.

pub mod clock;
pub mod json;
mod line;
pub mod queue;
pub mod summary;
pub mod text;

use std::{
    collections::BTreeMap,
    io::{self, Write},
    time::Duration,
};

use crate::{
    aggregate::TableStats,
    decode::Transition,
    model::{Format, Ownership, Socket, SocketKey, State},
};
pub use clock::{monotonic_ns, Rfc3339, WallClock};
pub use json::{
    Attached, FilterInfo, LiveInfo, NetnsOffsetsInfo, Offender, Reconciled, RecordInfo,
    RecordingStopped, ReportInfo, StartInfo, StateTime, StopInfo, StopReason, SummaryReason,
    TransitionCount,
};
use summary::Group;
pub use text::{human_duration, TextStyle};

/// The records the tool writes, each as one format puts it. A renderer appends whole lines
/// to a [`Page`] and keeps only what it needs between records; [`Output`] writes them out.
///
/// Stuck and resolved alerts come in batches: those reported together, up to the next
/// other record or flush, which [`Output`] ends with [`Render::end_batch`].
pub trait Render {
    /// The probe is attached: the first record of `watch`.
    fn start(&mut self, page: &mut Page, info: &StartInfo) -> io::Result<()>;
    /// One transition (`watch --events`, a report's `--timeline`).
    fn transition(&mut self, page: &mut Page, t: &Transition) -> io::Result<()>;
    /// A socket has stayed past `threshold` in its state, as of monotonic `at_ns`; a report
    /// also knows its `outcome`.
    fn stuck(
        &mut self,
        page: &mut Page,
        r: &SocketReport<'_>,
        at_ns: u64,
        threshold: Duration,
        outcome: Option<Outcome>,
    ) -> io::Result<()>;
    /// A stuck socket left its state for `new` at `left_ns`.
    fn resolved(
        &mut self,
        page: &mut Page,
        r: &SocketReport<'_>,
        left_ns: u64,
        new: State,
    ) -> io::Result<()>;
    /// The batch of alerts so far is complete: what was held back of it goes out.
    fn end_batch(&mut self, page: &mut Page) -> io::Result<()>;
    /// The stuck sockets, grouped.
    fn summary(&mut self, page: &mut Page, s: &Summary<'_>) -> io::Result<()>;
    /// The probe dropped `lost` more transitions (`total` so far).
    fn lost(&mut self, page: &mut Page, lost: u64, total: u64) -> io::Result<()>;
    /// The kernel skipped the probe `missed` more times (`total` so far).
    fn missed(&mut self, page: &mut Page, missed: u64, total: u64) -> io::Result<()>;
    /// A full table dropped `sockets` sockets, `stuck` of them flagged.
    fn evicted(&mut self, page: &mut Page, sockets: u64, stuck: u64) -> io::Result<()>;
    /// The table was set right against the kernel's list after losses or evictions.
    fn reconciled(&mut self, page: &mut Page, r: &Reconciled) -> io::Result<()>;
    /// The totals: the last record of `watch`.
    fn stop(&mut self, page: &mut Page, info: &StopInfo) -> io::Result<()>;
    /// What a report read and how it reports it: its first record.
    fn report(&mut self, page: &mut Page, info: &ReportInfo<'_>) -> io::Result<()>;
    /// A socket that was open when the recording started (`--timeline`).
    fn existing(&mut self, page: &mut Page, s: &Socket) -> io::Result<()>;
    /// The processes that held the most stuck sockets, ranked.
    fn offenders(&mut self, page: &mut Page, ranked: &[Offender]) -> io::Result<()>;
    /// Transitions in the window by (old, new), most frequent first.
    fn transition_counts(&mut self, page: &mut Page, counts: &[TransitionCount]) -> io::Result<()>;
    /// Time spent per state in the window.
    fn state_times(&mut self, page: &mut Page, states: &[StateTime]) -> io::Result<()>;
}

/// What one record renders to: whole lines for the data stream and for status, and the
/// clock that dates them. [`Output`] reuses it, so rendering allocates no buffer.
#[derive(Debug)]
pub struct Page {
    /// Records, alerts and tables (stdout).
    pub out: Vec<u8>,
    /// Status lines for a person (stderr).
    pub status: Vec<u8>,
    /// Turns the kernel's monotonic timestamps into wall-clock time.
    pub clock: WallClock,
}

/// How a stuck socket's stay ended, as a report knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// How long it stayed stuck in all: to its resolution, or to the end of the report.
    pub total: Duration,
    /// Whether it was still stuck at the end of the report.
    pub still_stuck: bool,
}

/// What the output needs to report one stuck or resolved socket.
#[derive(Clone, Copy, Debug)]
pub struct SocketReport<'a> {
    /// How the table knows it (its kernel address, when known).
    pub key: SocketKey,
    /// The socket as it was while stuck.
    pub socket: &'a Socket,
    /// Who holds it.
    pub ownership: &'a Ownership,
}

/// What a summary reports, as of monotonic `at_ns`.
#[derive(Debug)]
pub struct Summary<'a> {
    /// Why it is written.
    pub reason: SummaryReason,
    /// The stuck sockets, as [`summary::group`] grouped them.
    pub groups: &'a [Group],
    /// The table's counts.
    pub stats: TableStats,
    /// Sockets tracked per state.
    pub states: &'a BTreeMap<String, usize>,
    /// When, in monotonic ns.
    pub at_ns: u64,
}

impl Summary<'_> {
    /// How many sockets are stuck.
    pub fn stuck(&self) -> usize {
        self.groups.iter().map(|g| g.count).sum()
    }
}

/// The renderer of `format`; `style` is for text.
pub fn renderer(format: Format, style: TextStyle) -> Box<dyn Render> {
    match format {
        Format::Text => Box::new(text::Text::new(style)),
        Format::Json => Box::new(json::Json::default()),
    }
}

/// Writes records through a renderer: data to `out`, status lines to `status`.
pub struct Output<W: Write, E: Write> {
    render: Box<dyn Render>,
    page: Page,
    out: W,
    status: E,
}

impl<W: Write, E: Write> Output<W, E> {
    /// An output writing `format` (text in `style`), dated by `clock`, to `out` and human
    /// status lines to `status`.
    pub fn new(format: Format, style: TextStyle, clock: WallClock, out: W, status: E) -> Self {
        Self {
            render: renderer(format, style),
            page: Page {
                out: Vec::with_capacity(1024),
                status: Vec::new(),
                clock,
            },
            out,
            status,
        }
    }

    /// Ends the batch of alerts (see [`Render`]), then renders one record and writes what
    /// they made.
    fn write(
        &mut self,
        render: impl FnOnce(&mut dyn Render, &mut Page) -> io::Result<()>,
    ) -> io::Result<()> {
        self.write_alert(|r, p| {
            r.end_batch(p)?;
            render(r, p)
        })
    }

    /// Renders one record, an alert in the batch under way, and writes what it made; the
    /// page is left empty either way.
    fn write_alert(
        &mut self,
        render: impl FnOnce(&mut dyn Render, &mut Page) -> io::Result<()>,
    ) -> io::Result<()> {
        let page = &mut self.page;
        // Status first: a warning still reaches stderr when stdout has gone away.
        // Most records have no status line: stderr's lock is not worth taking for nothing.
        let written = render(&mut *self.render, page)
            .and_then(|()| match page.status.is_empty() {
                true => Ok(()),
                false => self.status.write_all(&page.status),
            })
            .and_then(|()| self.out.write_all(&page.out));
        page.out.clear();
        page.status.clear();
        written
    }

    /// Announces the attached probe, and pushes it out at once.
    pub fn start(&mut self, info: &StartInfo) -> io::Result<()> {
        self.write(|r, p| r.start(p, info))?;
        self.flush()
    }

    /// Prints one transition.
    pub fn transition(&mut self, t: &Transition) -> io::Result<()> {
        self.write(|r, p| r.transition(p, t))
    }

    /// Reports a socket that has stayed past `threshold` in its state, as of `now_ns`.
    pub fn stuck(
        &mut self,
        r: &SocketReport<'_>,
        now_ns: u64,
        threshold: Duration,
    ) -> io::Result<()> {
        self.write_alert(|render, p| render.stuck(p, r, now_ns, threshold, None))
    }

    /// Reports a stuck socket in hindsight (in a report): also how its stay ended.
    pub fn stuck_with_outcome(
        &mut self,
        r: &SocketReport<'_>,
        at_ns: u64,
        threshold: Duration,
        outcome: Outcome,
    ) -> io::Result<()> {
        self.write_alert(|render, p| render.stuck(p, r, at_ns, threshold, Some(outcome)))
    }

    /// Reports a stuck socket that left its state for `new` at `left_ns`.
    pub fn resolved(&mut self, r: &SocketReport<'_>, left_ns: u64, new: State) -> io::Result<()> {
        self.write_alert(|render, p| render.resolved(p, r, left_ns, new))
    }

    /// Writes a summary of the stuck sockets, `groups` as [`summary::group`] made them.
    /// In text an interval summary the same as the last one printed takes one line, or none
    /// with nothing stuck.
    pub fn summary(
        &mut self,
        reason: SummaryReason,
        groups: &[Group],
        stats: TableStats,
        states: &BTreeMap<String, usize>,
        now_ns: u64,
    ) -> io::Result<()> {
        let s = Summary {
            reason,
            groups,
            stats,
            states,
            at_ns: now_ns,
        };
        self.write(|r, p| r.summary(p, &s))
    }

    /// Reports that the probe dropped `lost` more transitions (`total` so far).
    pub fn lost(&mut self, lost: u64, total: u64) -> io::Result<()> {
        self.write(|r, p| r.lost(p, lost, total))
    }

    /// Reports that the kernel skipped the probe `missed` more times (`total` so far).
    pub fn missed(&mut self, missed: u64, total: u64) -> io::Result<()> {
        self.write(|r, p| r.missed(p, missed, total))
    }

    /// Reports that a full table dropped `sockets` sockets (`stuck` of them flagged).
    pub fn evicted(&mut self, sockets: u64, stuck: u64) -> io::Result<()> {
        self.write(|r, p| r.evicted(p, sockets, stuck))
    }

    /// Reports that the table was set right against the kernel's list.
    pub fn reconciled(&mut self, r: &Reconciled) -> io::Result<()> {
        self.write(|render, p| render.reconciled(p, r))
    }

    /// Prints the totals; the last record of a run.
    pub fn stop(&mut self, info: &StopInfo) -> io::Result<()> {
        self.write(|r, p| r.stop(p, info))?;
        self.flush()
    }

    /// Opens a report: what was read and how it is reported.
    pub fn report(&mut self, info: &ReportInfo<'_>) -> io::Result<()> {
        self.write(|r, p| r.report(p, info))
    }

    /// Shows a socket that was open when the recording started (`--timeline`).
    pub fn existing(&mut self, s: &Socket) -> io::Result<()> {
        self.write(|r, p| r.existing(p, s))
    }

    /// Lists a report's worst offenders, ranked.
    pub fn offenders(&mut self, ranked: &[Offender]) -> io::Result<()> {
        self.write(|r, p| r.offenders(p, ranked))
    }

    /// Writes a report's transition counts, most frequent first.
    pub fn transition_counts(&mut self, counts: &[TransitionCount]) -> io::Result<()> {
        self.write(|r, p| r.transition_counts(p, counts))
    }

    /// Writes a report's time spent per state.
    pub fn state_times(&mut self, states: &[StateTime]) -> io::Result<()> {
        self.write(|r, p| r.state_times(p, states))
    }

    /// Writes the totals as text writes them, to the status stream: for when the stop
    /// record could not reach a reader of JSON.
    pub fn stop_status(&mut self, info: &StopInfo) -> io::Result<()> {
        let mut page = Page {
            out: Vec::new(),
            status: Vec::new(),
            clock: self.page.clock,
        };
        text::Text::new(TextStyle::default()).stop(&mut page, info)?;
        self.status.write_all(&page.status)?;
        self.status.flush()
    }

    /// The stream records are written to.
    pub fn out(&self) -> &W {
        &self.out
    }

    /// The stream records are written to, to finish it.
    pub fn out_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// Ends the batch of alerts and pushes buffered output out, so a live reader sees it now.
    pub fn flush(&mut self) -> io::Result<()> {
        self.write(|_, _| Ok(()))?;
        self.out.flush()?;
        self.status.flush()
    }
}

/// How long from monotonic `from_ns` to `to_ns` (zero if `to_ns` is earlier).
fn since(from_ns: u64, to_ns: u64) -> Duration {
    Duration::from_nanos(to_ns.saturating_sub(from_ns))
}

#[cfg(test)]
pub(crate) mod arbitrary;
#[cfg(test)]
mod tests;
