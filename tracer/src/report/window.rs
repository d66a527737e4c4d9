//! The report's window: `--from` and `--to` placed on the recording's clock.

use std::time::UNIX_EPOCH;

use crate::{cli::TimeArg, output::WallClock};

const SECOND_NS: i128 = 1_000_000_000;
const DAY_NS: i128 = 86_400 * SECOND_NS;

/// Why the window cannot be reported.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    #[error("--from is after --to: the window is empty")]
    Empty,
}

/// The window, in the recording's monotonic ns.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub from_ns: u64,
    pub to_ns: u64,
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
        };
        if window.from_ns > window.to_ns {
            return Err(WindowError::Empty);
        }
        Ok(window)
    }
}
