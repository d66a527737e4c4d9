//! Last stage: writes records as human text or JSON Lines.
//!
//! [`Record`] is the JSON contract documented in the README: every line is one record with a
//! `"type"`. Text mode prints transitions on stdout and status lines on stderr.

use std::{
    fmt,
    io::{self, Write},
    net::{IpAddr, SocketAddr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Serialize, Serializer};

use crate::{
    cli::Format,
    decode::{Comm, State, Transition},
};

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

    /// A clock whose monotonic zero is `epoch_ns`.
    #[cfg(test)]
    pub fn with_offset(epoch_ns: i128) -> Self {
        Self {
            offset_ns: epoch_ns,
        }
    }

    /// The wall-clock time of monotonic `ts_ns`.
    pub fn at(&self, ts_ns: u64) -> SystemTime {
        let ns = (self.offset_ns + ts_ns as i128).max(0) as u128;
        UNIX_EPOCH + Duration::new((ns / 1_000_000_000) as u64, (ns % 1_000_000_000) as u32)
    }
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

/// RFC 3339 UTC with nanoseconds.
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

impl Serialize for Comm {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_str_lossy())
    }
}

impl Serialize for State {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A kernel address, written `0x...`.
#[derive(Clone, Copy, Debug)]
pub struct Hex(pub u64);

impl Serialize for Hex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:#x}", self.0))
    }
}

/// What was attached and with which filters: the body of the `start` record.
#[derive(Clone, Debug, Serialize)]
pub struct StartInfo {
    pub time: Rfc3339,
    pub version: &'static str,
    /// `uname -r` of the machine.
    pub kernel: String,
    /// `events` when every transition is printed, else `watch`.
    pub mode: &'static str,
    /// The program and where it is attached.
    pub attached: Attached,
    pub filters: FilterInfo,
    pub ring_buffer_bytes: u32,
}

/// The probe's attachment.
#[derive(Clone, Debug, Serialize)]
pub struct Attached {
    /// Always `tracepoint`.
    pub probe: &'static str,
    /// `sock:inet_sock_set_state`.
    pub tracepoint: String,
    pub tracefs: String,
    /// True when tracer mounted tracefs itself.
    pub tracefs_mounted_by_tracer: bool,
    /// `direct` when the probe loads fields straight from the tracepoint context (the
    /// kernel's layout is the known one), `copy` when it copies the record first.
    pub record_access: &'static str,
}

/// The filters pushed into the probe.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FilterInfo {
    pub ports: Vec<u16>,
    pub pid: Option<u32>,
    pub family: Option<&'static str>,
    pub states: Vec<&'static str>,
}

/// Why the run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// SIGINT or SIGTERM.
    Signal,
    /// `--duration` elapsed.
    Duration,
}

/// Totals of the run: the body of the `stop` record.
#[derive(Clone, Debug, Serialize)]
pub struct StopInfo {
    pub time: Rfc3339,
    pub reason: StopReason,
    /// Transitions received from the probe.
    pub events: u64,
    /// Transitions the probe dropped because the ring buffer was full.
    pub lost: u64,
    /// Records received that could not be decoded (a probe/userspace mismatch; 0 normally).
    pub undecodable: u64,
    pub duration_ms: u64,
}

/// One line of JSON output.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record<'a> {
    Start(&'a StartInfo),
    Transition {
        time: Rfc3339,
        ts_ns: u64,
        family: &'static str,
        saddr: IpAddr,
        sport: u16,
        daddr: IpAddr,
        dport: u16,
        old: State,
        new: State,
        pid: u32,
        tid: u32,
        comm: &'a Comm,
        sk: Hex,
    },
    /// The probe's drop counter grew.
    Lost {
        time: Rfc3339,
        lost: u64,
        total: u64,
    },
    Stop(&'a StopInfo),
}

impl<'a> Record<'a> {
    /// The record of transition `t`.
    pub fn transition(t: &'a Transition, clock: &WallClock) -> Self {
        Record::Transition {
            time: Rfc3339(clock.at(t.ts_ns)),
            ts_ns: t.ts_ns,
            family: t.family.name(),
            saddr: t.saddr,
            sport: t.sport,
            daddr: t.daddr,
            dport: t.dport,
            old: t.old,
            new: t.new,
            pid: t.pid,
            tid: t.tid,
            comm: &t.comm,
            sk: Hex(t.sk),
        }
    }
}

/// Writes records in the chosen format: data to `out`, status lines to `status`.
pub struct Output<W: Write, E: Write> {
    format: Format,
    clock: WallClock,
    out: W,
    status: E,
}

impl<W: Write, E: Write> Output<W, E> {
    /// An output writing `format` to `out` and human status lines to `status`.
    pub fn new(format: Format, clock: WallClock, out: W, status: E) -> Self {
        Self {
            format,
            clock,
            out,
            status,
        }
    }

    fn json(&mut self, record: &Record<'_>) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, record)?;
        self.out.write_all(b"\n")
    }

    /// Announces the attached probe; in text mode also prints the column header when
    /// transitions will follow.
    pub fn start(&mut self, info: &StartInfo) -> io::Result<()> {
        match self.format {
            Format::Json => {
                self.json(&Record::Start(info))?;
                self.out.flush()
            }
            Format::Text => {
                let a = &info.attached;
                let mounted = if a.tracefs_mounted_by_tracer {
                    ", mounted by tracer"
                } else {
                    ""
                };
                writeln!(
                    self.status,
                    "tracer {}: attached to tracepoint {} (tracefs at {}{mounted}); Ctrl-C to stop",
                    info.version, a.tracepoint, a.tracefs
                )?;
                if info.mode == "events" {
                    writeln!(
                        self.out,
                        "{:<15} {:>7} {:<16} {:>21}    {:<21} TRANSITION",
                        "TIME(UTC)", "PID", "COMM", "LOCAL", "REMOTE"
                    )?;
                    self.out.flush()?;
                }
                Ok(())
            }
        }
    }

    /// Prints one transition.
    pub fn transition(&mut self, t: &Transition) -> io::Result<()> {
        match self.format {
            Format::Json => self.json(&Record::transition(t, &self.clock)),
            Format::Text => {
                let time = Rfc3339(self.clock.at(t.ts_ns)).to_string();
                // "2026-11-25T06:33:10.123456789Z" -> "06:33:10.123456"
                let clock = time.get(11..26).unwrap_or(&time);
                writeln!(
                    self.out,
                    "{clock:<15} {:>7} {:<16} {:>21} -> {:<21} {} -> {}",
                    t.pid,
                    t.comm,
                    SocketAddr::new(t.saddr, t.sport).to_string(),
                    SocketAddr::new(t.daddr, t.dport).to_string(),
                    t.old,
                    t.new
                )
            }
        }
    }

    /// Reports that the probe dropped `lost` more transitions (`total` so far).
    pub fn lost(&mut self, lost: u64, total: u64) -> io::Result<()> {
        writeln!(
            self.status,
            "tracer: warning: {lost} transitions lost ({total} in all): the ring buffer was full; \
             narrow the filters (--port, --state) so fewer events cross to userspace"
        )?;
        if self.format == Format::Json {
            let time = Rfc3339(SystemTime::now());
            self.json(&Record::Lost { time, lost, total })?;
        }
        Ok(())
    }

    /// Prints the totals; the last record of a run.
    pub fn stop(&mut self, info: &StopInfo) -> io::Result<()> {
        match self.format {
            Format::Json => self.json(&Record::Stop(info))?,
            Format::Text => writeln!(
                self.status,
                "tracer: stopped after {:.1}s: {} transitions, {} lost",
                info.duration_ms as f64 / 1000.0,
                info.events,
                info.lost
            )?,
        }
        self.flush()
    }

    /// Pushes buffered output out, so a live reader sees it now.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.status.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Family;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use tracer_common::TcpState;

    /// 2026-11-25T06:00:00Z at monotonic zero.
    const EPOCH: i128 = 1_795_586_400 * 1_000_000_000;

    fn transition(family: Family) -> Transition {
        let (saddr, daddr) = match family {
            Family::Ipv4 => (
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
            ),
            Family::Ipv6 => (
                IpAddr::V6(Ipv6Addr::LOCALHOST),
                IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()),
            ),
        };
        Transition {
            ts_ns: 61_000_000_123,
            sk: 0xffff_8880_0abc_d000,
            pid: 4242,
            tid: 4243,
            comm: Comm::from("java"),
            family,
            saddr,
            sport: 61616,
            daddr,
            dport: 40000,
            old: TcpState::Established.into(),
            new: TcpState::CloseWait.into(),
        }
    }

    fn render(
        format: Format,
        f: impl FnOnce(&mut Output<&mut Vec<u8>, &mut Vec<u8>>),
    ) -> (String, String) {
        let (mut out, mut status) = (Vec::new(), Vec::new());
        f(&mut Output::new(
            format,
            WallClock::with_offset(EPOCH),
            &mut out,
            &mut status,
        ));
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(status).unwrap(),
        )
    }

    #[test]
    fn transition_as_json() {
        let (out, _) = render(Format::Json, |o| {
            o.transition(&transition(Family::Ipv6)).unwrap()
        });
        assert_eq!(
            out,
            "{\"type\":\"transition\",\"time\":\"2026-11-25T06:01:01.000000123Z\",\"ts_ns\":61000000123,\
             \"family\":\"ipv6\",\"saddr\":\"::1\",\"sport\":61616,\"daddr\":\"::ffff:10.0.0.1\",\"dport\":40000,\
             \"old\":\"ESTABLISHED\",\"new\":\"CLOSE_WAIT\",\"pid\":4242,\"tid\":4243,\"comm\":\"java\",\
             \"sk\":\"0xffff88800abcd000\"}\n"
        );
    }

    #[test]
    fn transition_as_text() {
        let (out, _) = render(Format::Text, |o| {
            o.transition(&transition(Family::Ipv4)).unwrap();
            o.transition(&transition(Family::Ipv6)).unwrap();
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "06:01:01.000000    4242 java                   127.0.0.1:61616 -> 127.0.0.1:40000       ESTABLISHED -> CLOSE_WAIT"
        );
        assert_eq!(
            lines[1],
            "06:01:01.000000    4242 java                       [::1]:61616 -> [::ffff:10.0.0.1]:40000 ESTABLISHED -> CLOSE_WAIT"
        );
    }

    #[test]
    fn stop_and_lost_records() {
        let stop = StopInfo {
            time: Rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_586_400)),
            reason: StopReason::Signal,
            events: 12,
            lost: 3,
            undecodable: 0,
            duration_ms: 1500,
        };
        let (out, status) = render(Format::Json, |o| {
            o.lost(3, 3).unwrap();
            o.stop(&stop).unwrap();
        });
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["type"], "lost");
        assert_eq!(
            (lines[0]["lost"].as_u64(), lines[0]["total"].as_u64()),
            (Some(3), Some(3))
        );
        assert_eq!(
            lines[1],
            serde_json::json!({"type":"stop","time":"2026-11-25T06:00:00.000000000Z","reason":"signal","events":12,"lost":3,"undecodable":0,"duration_ms":1500})
        );
        assert!(
            status.starts_with("tracer: warning: 3 transitions lost (3 in all)"),
            "{status}"
        );

        let (out, status) = render(Format::Text, |o| o.stop(&stop).unwrap());
        assert_eq!(out, "");
        assert_eq!(
            status,
            "tracer: stopped after 1.5s: 12 transitions, 3 lost\n"
        );
    }

    #[test]
    fn wall_clock_follows_monotonic_offset() {
        let c = WallClock::with_offset(EPOCH);
        assert_eq!(
            Rfc3339(c.at(1_500_000_000)).to_string(),
            "2026-11-25T06:00:01.500000000Z"
        );
        let now = WallClock::now();
        let drift = now
            .at(clock_ns(libc::CLOCK_MONOTONIC) as u64)
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        assert!(drift < Duration::from_secs(1), "{drift:?}");
    }
}
