//! Dates: the kernel's monotonic timestamps as wall-clock time, and the ways records write
//! it (RFC 3339, a time of day, a date).

use std::{
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Serialize, Serializer};

use super::line::Line;

const SECS_PER_DAY: u64 = 86_400;

/// Converts the kernel's monotonic timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// Wall-clock time at monotonic zero (boot, less suspended time), in ns since the epoch.
    offset_ns: i128,
}

impl WallClock {
    /// Samples both clocks now.
    pub fn now() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Self {
            offset_ns: real - mono,
        }
    }

    /// A clock whose monotonic zero is `epoch_ns` (a recording's clock, in reports).
    pub fn with_offset(epoch_ns: i128) -> Self {
        Self {
            offset_ns: epoch_ns,
        }
    }

    /// Wall-clock time at monotonic zero, in ns since the epoch.
    pub fn offset_ns(&self) -> i128 {
        self.offset_ns
    }

    /// The wall-clock time of monotonic `ts_ns`.
    pub fn at(&self, ts_ns: u64) -> SystemTime {
        // Within what RFC 3339 can write (years 1970 to 9999): a recording's header may
        // hold any offset.
        const MAX_NS: i128 = 253_402_300_799_999_999_999;
        let ns = (self.offset_ns + ts_ns as i128).clamp(0, MAX_NS) as u128;
        UNIX_EPOCH + Duration::new((ns / 1_000_000_000) as u64, (ns % 1_000_000_000) as u32)
    }
}

/// The kernel's monotonic clock (what the probe's timestamps use), in ns.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// RFC 3339 UTC with nanoseconds: `2026-11-25T06:33:10.123456789Z`.
#[derive(Clone, Copy, Debug)]
pub struct Rfc3339(pub SystemTime);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_nanos(self.0))
    }
}

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The time of day (UTC) of a wall-clock time: `06:33:10`, or `06:33:10.123456` with
/// microseconds.
#[derive(Clone, Copy, Debug)]
pub struct TimeOfDay {
    since_epoch: Duration,
    micros: bool,
}

impl TimeOfDay {
    /// `06:33:10`.
    pub fn seconds(t: SystemTime) -> Self {
        Self {
            since_epoch: since_epoch(t),
            micros: false,
        }
    }

    /// `06:33:10.123456`.
    pub fn micros(t: SystemTime) -> Self {
        Self {
            since_epoch: since_epoch(t),
            micros: true,
        }
    }
}

impl TimeOfDay {
    /// Writes what `Display` writes, without `fmt`: once per printed transition.
    pub(super) fn write_into(&self, line: &mut Line<'_>) {
        let s = self.since_epoch.as_secs() % SECS_PER_DAY;
        line.zero_padded(s / 3600, 2);
        line.byte(b':');
        line.zero_padded(s % 3600 / 60, 2);
        line.byte(b':');
        line.zero_padded(s % 60, 2);
        if self.micros {
            line.byte(b'.');
            line.zero_padded(self.since_epoch.subsec_micros().into(), 6);
        }
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Computed rather than cut out of an RFC 3339 string: this runs once per printed
        // transition, and allocates nothing.
        let s = self.since_epoch.as_secs() % SECS_PER_DAY;
        write!(f, "{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)?;
        if self.micros {
            write!(f, ".{:06}", self.since_epoch.subsec_micros())?;
        }
        Ok(())
    }
}

/// The day (UTC) a wall-clock time falls on, counted from the epoch: two times are on the
/// same date when their days are equal.
pub fn day(t: SystemTime) -> u64 {
    since_epoch(t).as_secs() / SECS_PER_DAY
}

/// The date (UTC) of a wall-clock time: `2026-11-25`.
#[derive(Clone, Copy, Debug)]
pub struct Date(pub SystemTime);

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Printed once a day at most: humantime's calendar is worth a small allocation.
        let full = humantime::format_rfc3339_seconds(self.0).to_string();
        f.write_str(full.get(..10).unwrap_or(&full))
    }
}

fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-25T06:00:00Z at monotonic zero.
    const EPOCH: i128 = 1_795_586_400 * 1_000_000_000;

    #[test]
    fn wall_clock_follows_monotonic_offset() {
        let c = WallClock::with_offset(EPOCH);
        assert_eq!(
            Rfc3339(c.at(1_500_000_000)).to_string(),
            "2026-11-25T06:00:01.500000000Z"
        );
        // The clock's time of "now" lies between two readings of the wall clock taken
        // around it, whichever way it would be wrong.
        let before = SystemTime::now();
        let at = WallClock::now().at(monotonic_ns());
        let after = SystemTime::now();
        let slack = Duration::from_millis(50);
        assert!(
            before - slack <= at && at <= after + slack,
            "{at:?} is not between {before:?} and {after:?}"
        );
    }

    #[test]
    fn times_of_day_and_dates() {
        let c = WallClock::with_offset(EPOCH);
        // 18 h and a bit later: the next day.
        let t = c.at(18 * 3600 * 1_000_000_000 + 61_000_123_456);
        assert_eq!(Rfc3339(t).to_string(), "2026-11-26T00:01:01.000123456Z");
        assert_eq!(TimeOfDay::seconds(t).to_string(), "00:01:01");
        assert_eq!(TimeOfDay::micros(t).to_string(), "00:01:01.000123");
        assert_eq!(Date(t).to_string(), "2026-11-26");
        assert_eq!(day(t), day(c.at(0)) + 1);
        assert_eq!(Date(UNIX_EPOCH).to_string(), "1970-01-01");
    }
}
