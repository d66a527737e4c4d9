//! The report's window: `--from` and `--to` placed on the recording's clock, then checked
//! against what the recording covers, so that a window that cannot show anything is an
//! error rather than an empty report.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{
    cli::TimeArg,
    model::Target,
    output::{
        clock::{day, Date, TimeOfDay},
        human_duration, Rfc3339, WallClock,
    },
};

const SECOND_NS: i128 = 1_000_000_000;
const DAY_NS: i128 = 86_400 * SECOND_NS;

/// Why the window cannot be reported.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    #[error("--from is after --to: the window is empty")]
    Empty,
    #[error(
        "the window {window} is outside the recording ({recording}); give --from/--to \
         within it"
    )]
    Outside { window: String, recording: String },
    #[error(
        "--timeline {target}: no such socket in the recording{}; check the address and \
         port (either end matches) or take `sk` from the JSON records",
        if *.windowed { " within the window" } else { "" }
    )]
    NoSocket { target: String, windowed: bool },
}

/// The window, in the recording's monotonic ns.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub from_ns: u64,
    pub to_ns: u64,
    /// `--from` and `--to` as given, and placed on the wall clock (ns since the epoch), for
    /// messages: the monotonic times are clamped to the recording's clock.
    from: Option<(TimeArg, i128)>,
    to: Option<(TimeArg, i128)>,
}

impl Window {
    /// Places `--from` and `--to` on `clock`, for a recording that starts at `start_ns`.
    /// A time of day is its first occurrence at or after the recording's start (to the
    /// second, as the text output prints times) for `--from`, and at or after the window's
    /// start for `--to`, so that `--from 23:50 --to 00:10` spans midnight.
    pub fn resolve(
        from: Option<TimeArg>,
        to: Option<TimeArg>,
        start_ns: u64,
        clock: &WallClock,
    ) -> Result<Window, WindowError> {
        let wall = |ns: u64| clock.offset_ns() + i128::from(ns);
        let place = |t: TimeArg, after: i128| -> i128 {
            match t {
                TimeArg::At(at) => at
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as i128),
                TimeArg::After(d) => wall(start_ns) + d.as_nanos() as i128,
                TimeArg::TimeOfDay(d) => {
                    let after = after - after.rem_euclid(SECOND_NS);
                    let at = after - after.rem_euclid(DAY_NS) + d.as_nanos() as i128;
                    if at < after {
                        at + DAY_NS
                    } else {
                        at
                    }
                }
            }
        };
        let from_wall = from.map(|t| place(t, wall(start_ns)));
        let to_wall = to.map(|t| place(t, from_wall.unwrap_or(wall(start_ns))));
        let mono = |w: i128| (w - clock.offset_ns()).clamp(0, i128::from(u64::MAX)) as u64;
        let window = Window {
            from_ns: from_wall.map_or(0, mono),
            to_ns: to_wall.map_or(u64::MAX, mono),
            from: from.zip(from_wall),
            to: to.zip(to_wall),
        };
        if window.from_ns > window.to_ns {
            return Err(WindowError::Empty);
        }
        Ok(window)
    }

    /// Checks the window against the recording, which covers `start_ns` to `end_ns`: a
    /// window entirely before or after it is an error. A time of day in a recording longer
    /// than a day adds a warning to `warnings` saying which day it was taken on.
    pub fn check(
        &self,
        start_ns: u64,
        end_ns: u64,
        clock: &WallClock,
        warnings: &mut Vec<String>,
    ) -> Result<(), WindowError> {
        if self.to_ns < start_ns || self.from_ns > end_ns {
            let (from, to) = (self.from.map(|f| at(f.1)), self.to.map(|t| at(t.1)));
            let (start, end) = (clock.at(start_ns), clock.at(end_ns));
            let show = Shown::new([from, to, Some(start), Some(end)].into_iter().flatten());
            let window = match (from, to) {
                (Some(from), Some(to)) => format!("{} to {}", show.time(from), show.time(to)),
                (Some(from), None) => format!("from {}", show.time(from)),
                // Without --from and --to the window is the whole recording.
                (None, to) => format!("up to {}", show.time(to.unwrap_or(end))),
            };
            return Err(WindowError::Outside {
                window,
                recording: format!("{} to {} UTC", show.time(start), show.time(end)),
            });
        }
        let span = Duration::from_nanos(end_ns.saturating_sub(start_ns));
        if span.as_nanos() as i128 > DAY_NS {
            for (option, given) in [("--from", self.from), ("--to", self.to)] {
                if let Some((TimeArg::TimeOfDay(_), wall)) = given {
                    warnings.push(format!(
                        "the recording spans {}: {option}, a time of day, was taken as {}, its \
                         first occurrence; give a date (2026-11-25T03:00:00Z) or an offset \
                         (10m) for another day",
                        human_duration(span),
                        Rfc3339(at(wall))
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks that `--timeline`, when given, found something to show.
    pub fn check_timeline(&self, timeline: Option<Target>, found: bool) -> Result<(), WindowError> {
        match timeline {
            Some(t) if !found => Err(WindowError::NoSocket {
                target: match t {
                    Target::Sk(sk) => format!("{sk:#x}"),
                    Target::Addr(a) => a.to_string(),
                },
                windowed: self.from.is_some() || self.to.is_some(),
            }),
            _ => Ok(()),
        }
    }
}

/// Writes times as the text output does (`12:53:41`) when they all fall on one day, with
/// their date otherwise.
struct Shown {
    one_day: bool,
}

impl Shown {
    fn new(times: impl Iterator<Item = SystemTime>) -> Self {
        let mut dates = times.map(day);
        let first = dates.next();
        Shown {
            one_day: dates.all(|d| Some(d) == first),
        }
    }

    fn time(&self, t: SystemTime) -> String {
        if self.one_day {
            TimeOfDay::seconds(t).to_string()
        } else {
            format!("{} {}", Date(t), TimeOfDay::seconds(t))
        }
    }
}

/// The time `wall_ns` after the epoch, within what RFC 3339 can write.
fn at(wall_ns: i128) -> SystemTime {
    WallClock::with_offset(wall_ns).at(0)
}
