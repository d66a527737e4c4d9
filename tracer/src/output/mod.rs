//! Last stage: writes records as human text or JSON Lines.
//!
//! [`Record`] is the JSON contract documented in the README: every line is one record with a
//! `"type"`. Text mode prints transitions, alerts and summaries on stdout and status lines
//! on stderr.

pub mod summary;

use std::{
    collections::BTreeMap,
    fmt,
    io::{self, Write},
    net::{IpAddr, SocketAddr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Serialize, Serializer};
use tracer_common::TcpState;

use crate::{
    aggregate::TableStats,
    decode::Transition,
    model::{
        Comm, Format, HeldBy, IoOp, LastIo, Origin, Owner, Ownership, PidHint, Socket, SocketKey,
        State,
    },
    probe::SkipCounts,
};
use summary::{Group, ServicePort};

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
    /// Watched states and how long a socket may stay in each, in ms.
    pub thresholds: BTreeMap<&'static str, u64>,
    pub summary_interval_ms: u64,
    /// Cap of the socket table.
    pub max_sockets: usize,
    /// Sockets found open at start (the snapshot).
    pub existing_sockets: usize,
    /// The recording being written, if any.
    pub record: Option<RecordInfo>,
}

/// Where `--record` writes.
#[derive(Clone, Debug, Serialize)]
pub struct RecordInfo {
    pub path: String,
    /// The disk budget of all its files; `null` for no limit.
    pub max_bytes: Option<u64>,
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
    /// The send/receive hooks that give stuck sockets their `last_io`, e.g.
    /// `["fexit:tcp_recvmsg", "fentry:tcp_sendmsg"]`; empty when none works here (a warning
    /// says why).
    pub io_probes: Vec<String>,
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
    /// Transitions the probe saw and skipped in the kernel, by reason.
    pub skipped: SkipCounts,
    /// Records received that could not be decoded (a probe/userspace mismatch; 0 normally).
    pub undecodable: u64,
    pub duration_ms: u64,
    /// Sockets flagged stuck during the run, and how many of them resolved.
    pub flagged: u64,
    pub resolved: u64,
    /// Sockets stuck at the end.
    pub stuck: usize,
    /// Sockets in the table at the end, the most at once, and those dropped from a full
    /// table (of which `evicted_stuck` were flagged).
    pub tracked: usize,
    pub peak_tracked: usize,
    pub evicted: u64,
    pub evicted_stuck: u64,
    /// Entries the recording left out because the disk could not keep up (0 without
    /// `--record`).
    pub unrecorded: u64,
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
    /// The socket table was full and dropped `sockets` sockets, `stuck` of them flagged.
    Evicted {
        time: Rfc3339,
        sockets: u64,
        stuck: u64,
    },
    /// A socket crossed its state's threshold.
    Stuck(&'a SocketRecord<'a>),
    /// A stuck socket left the state.
    Resolved(&'a SocketRecord<'a>),
    Summary(&'a SummaryRecord<'a>),
    Stop(&'a StopInfo),
}

/// A socket in a `stuck` or `resolved` record.
#[derive(Debug, Serialize)]
pub struct SocketRecord<'a> {
    pub time: Rfc3339,
    /// The state it is (or was) stuck in.
    pub state: State,
    /// `stuck`: how long it has been in the state, and the threshold it crossed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_is_lower_bound: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold_ms: Option<u64>,
    /// `resolved` (and `stuck` in a report): how long it was stuck in all, and the state
    /// it went to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stuck_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stuck_is_lower_bound: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<State>,
    /// `stuck` in a report: whether it was still stuck at the end of the report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub still_stuck: Option<bool>,
    pub family: &'static str,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// Kernel address; `null` for a socket from the start-up snapshot not yet seen in a
    /// transition (sock_diag does not give addresses).
    pub sk: Option<Hex>,
    /// `accepted`, `connected` or `unknown`.
    pub origin: &'static str,
    /// `fd`, `accept_queue`, `orphan`, `gone` or `unknown`.
    pub held_by: &'static str,
    /// The first process holding it, `null` when none is known.
    pub owner: Option<OwnerRecord<'a>>,
    /// Other holders (after fork or fd passing).
    pub other_owners: Vec<OwnerRecord<'a>>,
    /// The last process seen acting on it from a system call (connect, listen, close).
    pub last_caller: Option<Caller<'a>>,
    /// Its last send or receive, when the probe saw one since the socket was born.
    pub last_io: Option<IoRecord<'a>>,
}

/// A socket's last send or receive.
#[derive(Debug, Serialize)]
pub struct IoRecord<'a> {
    pub pid: u32,
    pub comm: &'a Comm,
    /// `recv`, `send`, or `eof` (a receive that returned the peer's end of stream).
    pub op: &'static str,
    /// How long before this record's time.
    pub ago_ms: u64,
}

/// A process holding a socket.
#[derive(Debug, Serialize)]
pub struct OwnerRecord<'a> {
    pub pid: u32,
    pub comm: &'a str,
    pub cmdline: &'a str,
    pub uid: u32,
    pub fds: &'a [i32],
    pub fd_count: usize,
    /// Soft RLIMIT_NOFILE; `null` when unlimited.
    pub fd_limit: Option<u64>,
    pub cgroup: Option<&'a str>,
}

impl<'a> From<&'a Owner> for OwnerRecord<'a> {
    fn from(o: &'a Owner) -> Self {
        OwnerRecord {
            pid: o.process.pid,
            comm: &o.process.comm,
            cmdline: &o.process.cmdline,
            uid: o.process.uid,
            fds: &o.fds,
            fd_count: o.fd_count,
            fd_limit: o.process.fd_limit,
            cgroup: o.process.cgroup.as_deref(),
        }
    }
}

/// A process seen from a system call on a socket.
#[derive(Debug, Serialize)]
pub struct Caller<'a> {
    pub pid: u32,
    pub comm: &'a Comm,
}

/// The body of a `summary` record.
#[derive(Debug, Serialize)]
pub struct SummaryRecord<'a> {
    pub time: Rfc3339,
    /// Why it was written: `interval` or `stop`.
    pub reason: &'static str,
    pub stuck: usize,
    pub tracked: usize,
    pub evicted: u64,
    pub evicted_stuck: u64,
    /// Sockets tracked per state.
    pub states: BTreeMap<String, usize>,
    pub groups: Vec<GroupRecord<'a>>,
}

/// One group of a summary.
#[derive(Debug, Serialize)]
pub struct GroupRecord<'a> {
    #[serde(flatten)]
    pub group: &'a Group,
    /// `:61616` for the local port of accepted sockets, `10.0.0.5:5432` for the remote
    /// end of connected ones.
    pub port: String,
    /// `local` or `remote`.
    pub side: &'static str,
    pub oldest_ms: u64,
    pub advice: &'static str,
}

/// What the output needs to report one stuck or resolved socket.
#[derive(Clone, Copy, Debug)]
pub struct SocketReport<'a> {
    pub key: SocketKey,
    pub socket: &'a Socket,
    pub ownership: &'a Ownership,
}

impl<'a> SocketReport<'a> {
    /// The record's common fields, as of monotonic `at_ns`.
    fn record(&self, clock: &WallClock, at_ns: u64) -> SocketRecord<'a> {
        let s = self.socket;
        let mut owners = self.ownership.owners.iter().map(OwnerRecord::from);
        SocketRecord {
            time: Rfc3339(clock.at(at_ns)),
            state: s.state,
            age_ms: None,
            age_is_lower_bound: None,
            threshold_ms: None,
            stuck_ms: None,
            stuck_is_lower_bound: None,
            new: None,
            still_stuck: None,
            family: s.ends.family.name(),
            saddr: s.ends.saddr,
            sport: s.ends.sport,
            daddr: s.ends.daddr,
            dport: s.ends.dport,
            sk: self.key.sk().map(Hex),
            origin: match s.origin {
                Origin::Accepted => "accepted",
                Origin::Connected => "connected",
                Origin::Listener => "listener",
                Origin::Unknown => "unknown",
            },
            held_by: self.ownership.held_by.name(),
            owner: owners.next(),
            other_owners: owners.collect(),
            last_caller: s.hint.as_ref().map(|h: &'a PidHint| Caller {
                pid: h.pid,
                comm: &h.comm,
            }),
            last_io: self.ownership.last_io.as_ref().map(|io| IoRecord {
                pid: io.pid,
                comm: &io.comm,
                op: io.op.name(),
                ago_ms: ago(io, at_ns).as_millis() as u64,
            }),
        }
    }
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
    color: bool,
}

/// ANSI styles for alerts on a terminal.
const RED: &str = "\x1b[1;31m";
const GREEN: &str = "\x1b[32m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

impl<W: Write, E: Write> Output<W, E> {
    /// An output writing `format` to `out` and human status lines to `status`.
    pub fn new(format: Format, clock: WallClock, out: W, status: E) -> Self {
        Self {
            format,
            clock,
            out,
            status,
            color: false,
        }
    }

    /// Colours text alerts (for a terminal that has not set NO_COLOR).
    pub fn with_color(mut self, color: bool) -> Self {
        self.color = color;
        self
    }

    fn paint(&self, style: &'static str, text: &str) -> String {
        if self.color {
            format!("{style}{text}{RESET}")
        } else {
            text.to_owned()
        }
    }

    /// Reports a socket that has stayed `age` in its state, past `threshold`.
    pub fn stuck(
        &mut self,
        r: &SocketReport<'_>,
        now_ns: u64,
        threshold: Duration,
    ) -> io::Result<()> {
        self.stuck_record(r, now_ns, threshold, None)
    }

    /// Reports a stuck socket in hindsight (in a report): also how long it stayed stuck
    /// in all, and whether it was still stuck at the end.
    pub fn stuck_with_outcome(
        &mut self,
        r: &SocketReport<'_>,
        at_ns: u64,
        threshold: Duration,
        total: Duration,
        still_stuck: bool,
    ) -> io::Result<()> {
        self.stuck_record(r, at_ns, threshold, Some((total, still_stuck)))
    }

    fn stuck_record(
        &mut self,
        r: &SocketReport<'_>,
        now_ns: u64,
        threshold: Duration,
        outcome: Option<(Duration, bool)>,
    ) -> io::Result<()> {
        let age = Duration::from_nanos(now_ns.saturating_sub(r.socket.since_ns));
        match self.format {
            Format::Json => {
                let mut rec = r.record(&self.clock, now_ns);
                rec.age_ms = Some(age.as_millis() as u64);
                rec.age_is_lower_bound = Some(r.socket.since_is_lower_bound);
                rec.threshold_ms = Some(threshold.as_millis() as u64);
                if let Some((total, still)) = outcome {
                    rec.stuck_ms = Some(total.as_millis() as u64);
                    rec.stuck_is_lower_bound = Some(r.socket.since_is_lower_bound);
                    rec.still_stuck = Some(still);
                }
                self.write_json(&Record::Stuck(&rec))
            }
            Format::Text => {
                let at_least = at_least(r.socket.since_is_lower_bound);
                let head = self.paint(RED, "STUCK");
                let outcome = match outcome {
                    Some((total, true)) => {
                        format!(
                            "; still stuck at the end, {at_least}{} in all",
                            human_duration(total)
                        )
                    }
                    Some((total, false)) => {
                        format!("; left after {at_least}{}", human_duration(total))
                    }
                    None => String::new(),
                };
                writeln!(
                    self.out,
                    "{} {head} {} for {at_least}{} {} {}{}{outcome}",
                    clock_of(self.clock.at(now_ns)),
                    r.socket.state,
                    human_duration(age),
                    endpoints(r.socket),
                    owner_text(r),
                    io_text(r, now_ns)
                )
            }
        }
    }

    /// Reports a stuck socket that left its state for `new` at `left_ns`.
    pub fn resolved(&mut self, r: &SocketReport<'_>, left_ns: u64, new: State) -> io::Result<()> {
        let stuck = Duration::from_nanos(left_ns.saturating_sub(r.socket.since_ns));
        match self.format {
            Format::Json => {
                let mut rec = r.record(&self.clock, left_ns);
                rec.stuck_ms = Some(stuck.as_millis() as u64);
                rec.stuck_is_lower_bound = Some(r.socket.since_is_lower_bound);
                rec.new = Some(new);
                self.write_json(&Record::Resolved(&rec))
            }
            Format::Text => {
                let at_least = at_least(r.socket.since_is_lower_bound);
                let head = self.paint(GREEN, "RESOLVED");
                let owner = match r.ownership.owners.first() {
                    Some(o) => format!("{}[{}]", o.process.comm, o.process.pid),
                    None => "owner unknown".to_owned(),
                };
                writeln!(
                    self.out,
                    "{} {head} {} -> {new} after {at_least}{} {} {owner}",
                    clock_of(self.clock.at(left_ns)),
                    r.socket.state,
                    human_duration(stuck),
                    endpoints(r.socket),
                )
            }
        }
    }

    /// Writes a summary of the stuck sockets, `groups` as [`summary::group`] made them.
    /// In text an interval summary with nothing stuck is not printed.
    pub fn summary(
        &mut self,
        reason: &'static str,
        groups: &[Group],
        stats: TableStats,
        states: BTreeMap<String, usize>,
        now_ns: u64,
    ) -> io::Result<()> {
        let stuck: usize = groups.iter().map(|g| g.count).sum();
        let oldest_ms = |g: &Group| {
            Duration::from_nanos(now_ns.saturating_sub(g.oldest_since_ns)).as_millis() as u64
        };
        match self.format {
            Format::Json => {
                let groups = groups
                    .iter()
                    .map(|g| GroupRecord {
                        group: g,
                        port: port_text(g.port),
                        side: match g.port {
                            ServicePort::Local(_) => "local",
                            ServicePort::Remote(..) => "remote",
                        },
                        oldest_ms: oldest_ms(g),
                        advice: summary::advice(g.state),
                    })
                    .collect();
                self.write_json(&Record::Summary(&SummaryRecord {
                    time: Rfc3339(self.clock.at(now_ns)),
                    reason,
                    stuck,
                    tracked: stats.tracked,
                    evicted: stats.evicted,
                    evicted_stuck: stats.evicted_stuck,
                    states,
                    groups,
                }))
            }
            Format::Text if stuck == 0 && reason == "interval" => Ok(()),
            Format::Text => {
                let head = self.paint(BOLD, "SUMMARY");
                let time = clock_of(self.clock.at(now_ns));
                if stuck == 0 {
                    return writeln!(
                        self.out,
                        "{time} {head} no sockets stuck, {} tracked",
                        stats.tracked
                    );
                }
                writeln!(
                    self.out,
                    "{time} {head} {} stuck, {} tracked",
                    plural(stuck, "socket"),
                    stats.tracked
                )?;
                for g in groups {
                    let who = match (&g.comm, g.pid) {
                        (Some(comm), Some(pid)) => format!("{comm}[{pid}]"),
                        _ => "an unknown process".to_owned(),
                    };
                    let place = match g.port {
                        ServicePort::Local(_) => "on",
                        ServicePort::Remote(..) => "to",
                    };
                    let at_least = at_least(g.oldest_is_lower_bound);
                    write!(
                        self.out,
                        "  {who} holds {} in {} {place} {} (oldest {at_least}{})",
                        plural(g.count, "socket"),
                        g.state,
                        port_text(g.port),
                        human_duration(Duration::from_millis(oldest_ms(g)))
                    )?;
                    if let Some(n) = g.fd_count {
                        write!(self.out, ", {}", fd_usage(n, g.fd_limit))?;
                    }
                    if g.eof_read > 0 && g.state == TcpState::CloseWait.into() {
                        write!(
                            self.out,
                            "; read end of stream on {} and kept them",
                            g.eof_read
                        )?;
                    }
                    writeln!(self.out)?;
                }
                let mut advised = Vec::new();
                for g in groups {
                    if !advised.contains(&g.state) {
                        advised.push(g.state);
                        writeln!(self.out, "  advice: {}", summary::advice(g.state))?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Writes one JSON line: a [`Record`], or a record type defined elsewhere (the
    /// report's own).
    pub fn write_json<T: Serialize>(&mut self, record: &T) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, record)?;
        self.out.write_all(b"\n")
    }

    /// The format being written.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The data stream, for text sections written elsewhere (the report's tables).
    pub fn out(&mut self) -> &mut W {
        &mut self.out
    }

    /// The clock records are dated by.
    pub fn clock(&self) -> &WallClock {
        &self.clock
    }

    /// Announces the attached probe; in text mode also prints the column header when
    /// transitions will follow.
    pub fn start(&mut self, info: &StartInfo) -> io::Result<()> {
        match self.format {
            Format::Json => {
                self.write_json(&Record::Start(info))?;
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
                    self.status,
                    "tracer: {watched}; {} open at start",
                    plural(info.existing_sockets, "socket")
                )?;
                if let Some(r) = &info.record {
                    let budget = match r.max_bytes {
                        Some(b) => format!("at most {} MiB in 4 files", b >> 20),
                        None => "no size limit".to_owned(),
                    };
                    writeln!(self.status, "tracer: recording to {} ({budget})", r.path)?;
                }
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
            Format::Json => self.write_json(&Record::transition(t, &self.clock)),
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
            self.write_json(&Record::Lost { time, lost, total })?;
        }
        Ok(())
    }

    /// Reports that a full table dropped `sockets` sockets (`stuck` of them flagged).
    pub fn evicted(&mut self, sockets: u64, stuck: u64) -> io::Result<()> {
        writeln!(
            self.status,
            "tracer: warning: table full: {} not followed ({stuck} of them stuck); raise --max-sockets",
            plural(sockets as usize, "socket")
        )?;
        if self.format == Format::Json {
            let time = Rfc3339(SystemTime::now());
            self.write_json(&Record::Evicted {
                time,
                sockets,
                stuck,
            })?;
        }
        Ok(())
    }

    /// Prints the totals; the last record of a run.
    pub fn stop(&mut self, info: &StopInfo) -> io::Result<()> {
        match self.format {
            Format::Json => self.write_json(&Record::Stop(info))?,
            Format::Text => {
                let skipped = info.skipped.to_string();
                writeln!(
                    self.status,
                    "tracer: stopped after {:.1}s: {} transitions, {} lost{}",
                    info.duration_ms as f64 / 1000.0,
                    info.events,
                    info.lost,
                    if skipped.is_empty() {
                        String::new()
                    } else {
                        format!("; skipped {skipped}")
                    }
                )?
            }
        }
        self.flush()
    }

    /// Pushes buffered output out, so a live reader sees it now.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.status.flush()
    }
}

/// `06:33:10` of a wall-clock time (UTC).
pub(crate) fn clock_of(t: SystemTime) -> String {
    let s = Rfc3339(t).to_string();
    s.get(11..19).unwrap_or(&s).to_owned()
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

/// `"at least "` before an age that is a lower bound.
fn at_least(lower_bound: bool) -> &'static str {
    if lower_bound {
        "at least "
    } else {
        ""
    }
}

pub(crate) fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

pub(crate) fn port_text(p: ServicePort) -> String {
    match p {
        ServicePort::Local(port) => format!(":{port}"),
        ServicePort::Remote(addr, port) => SocketAddr::new(addr, port).to_string(),
    }
}

/// `fds 1013/1024 (99%)`, or `fds 12 (no limit)`.
pub(crate) fn fd_usage(count: usize, limit: Option<u64>) -> String {
    match limit {
        Some(l) if l > 0 => format!("fds {count}/{l} ({}%)", count as u64 * 100 / l),
        _ => format!("fds {count} (no limit)"),
    }
}

/// `127.0.0.1:61616 <- 127.0.0.1:40000`: the arrow points from the side that connected.
pub(crate) fn endpoints(s: &Socket) -> String {
    let arrow = match s.origin {
        Origin::Accepted => "<-",
        Origin::Connected => "->",
        Origin::Listener | Origin::Unknown => "--",
    };
    format!(
        "{} {arrow} {}",
        SocketAddr::new(s.ends.saddr, s.ends.sport),
        SocketAddr::new(s.ends.daddr, s.ends.dport)
    )
}

/// How long before monotonic `at_ns` a send or receive was made.
fn ago(io: &LastIo, at_ns: u64) -> Duration {
    Duration::from_nanos(at_ns.saturating_sub(io.ts_ns))
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

/// The socket's last send or receive, in words: `; java[4242] read end of stream 2h13m
/// ago and kept the socket` is what explains a CLOSE_WAIT leak.
fn io_text(r: &SocketReport<'_>, now_ns: u64) -> String {
    let Some(io) = &r.ownership.last_io else {
        return String::new();
    };
    let when = human_duration(ago(io, now_ns));
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
mod tests {
    use super::*;
    use crate::model::Family;
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

    fn leaked() -> (Socket, Ownership) {
        use crate::{attribute::tests::java as java_process, model::Endpoints};
        let socket = Socket {
            id: 1,
            ends: Endpoints {
                family: Family::Ipv4,
                saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                sport: 61616,
                daddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
                dport: 40000,
            },
            state: TcpState::CloseWait.into(),
            since_ns: 1_000_000_000,
            since_is_lower_bound: false,
            origin: Origin::Accepted,
            hint: None,
            flagged: true,
        };
        let java = |pid, fd| Owner {
            process: java_process(pid),
            fds: vec![fd],
            fd_count: 1013,
        };
        let ownership = Ownership {
            held_by: HeldBy::Fd,
            owners: vec![java(4242, 17), java(4300, 17)],
            last_io: None,
        };
        (socket, ownership)
    }

    /// `java[4242]` received `op` at monotonic 2 s.
    fn java_io(op: IoOp) -> Option<LastIo> {
        Some(LastIo {
            ts_ns: 2_000_000_000,
            pid: 4242,
            comm: "java".into(),
            op,
        })
    }

    #[test]
    fn stuck_and_resolved_as_json() {
        let (socket, mut ownership) = leaked();
        ownership.last_io = java_io(IoOp::Eof);
        let report = SocketReport {
            key: SocketKey::Sk(0xffff_8880_0000_1000),
            socket: &socket,
            ownership: &ownership,
        };
        let (out, _) = render(Format::Json, |o| {
            o.stuck(&report, 31_500_000_000, Duration::from_secs(30))
                .unwrap();
            o.resolved(&report, 91_000_000_000, TcpState::LastAck.into())
                .unwrap();
        });
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let owner = serde_json::json!({"pid":4242,"comm":"java","cmdline":"java -jar activemq.jar",
            "uid":1000,"fds":[17],"fd_count":1013,"fd_limit":1024,"cgroup":"/system.slice/activemq.service"});
        assert_eq!(
            lines[0],
            serde_json::json!({"type":"stuck","time":"2026-11-25T06:00:31.500000000Z","state":"CLOSE_WAIT",
                "age_ms":30500,"age_is_lower_bound":false,"threshold_ms":30000,"family":"ipv4",
                "saddr":"127.0.0.1","sport":61616,"daddr":"10.0.0.9","dport":40000,"sk":"0xffff888000001000",
                "origin":"accepted","held_by":"fd","owner":owner,
                "other_owners":[{"pid":4300,"comm":"java","cmdline":"java -jar activemq.jar","uid":1000,
                    "fds":[17],"fd_count":1013,"fd_limit":1024,"cgroup":"/system.slice/activemq.service"}],
                "last_caller":null,"last_io":{"pid":4242,"comm":"java","op":"eof","ago_ms":29500}})
        );
        assert_eq!(lines[1]["type"], "resolved");
        assert_eq!(lines[1]["last_io"]["ago_ms"], 89_000, "as of leaving");
        assert_eq!(lines[1]["stuck_ms"], 90_000);
        assert_eq!(lines[1]["new"], "LAST_ACK");
        assert_eq!(lines[1]["owner"], owner);
        assert!(lines[1].get("age_ms").is_none());
    }

    #[test]
    fn stuck_resolved_and_summary_as_text() {
        let (mut socket, ownership) = leaked();
        socket.since_is_lower_bound = true;
        let report = SocketReport {
            key: SocketKey::Snapshot(7),
            socket: &socket,
            ownership: &ownership,
        };
        let groups = summary::group(std::iter::once((&socket, Some(&ownership))), |_| None);
        let (out, _) = render(Format::Text, |o| {
            o.stuck(&report, 7_981_000_000_000, Duration::from_secs(30))
                .unwrap();
            o.resolved(&report, 7_990_000_000_000, TcpState::LastAck.into())
                .unwrap();
            let stats = TableStats {
                tracked: 1523,
                ..TableStats::default()
            };
            o.summary(
                "interval",
                &groups,
                stats,
                BTreeMap::new(),
                7_981_000_000_000,
            )
            .unwrap();
            o.summary("interval", &[], stats, BTreeMap::new(), 0)
                .unwrap();
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "08:13:01 STUCK CLOSE_WAIT for at least 2h13m 127.0.0.1:61616 <- 10.0.0.9:40000 \
             java[4242] fd 17, fds 1013/1024 (98%), uid 1000, cgroup /system.slice/activemq.service; \
             also java[4300] fd 17"
        );
        assert_eq!(
            lines[1],
            "08:13:10 RESOLVED CLOSE_WAIT -> LAST_ACK after at least 2h13m 127.0.0.1:61616 <- 10.0.0.9:40000 java[4242]"
        );
        assert_eq!(lines[2], "08:13:01 SUMMARY 1 socket stuck, 1523 tracked");
        assert_eq!(
            lines[3],
            "  java[4242] holds 1 socket in CLOSE_WAIT on :61616 (oldest at least 2h13m), fds 1013/1024 (98%)"
        );
        assert!(
            lines[4].starts_with("  advice: CLOSE_WAIT means"),
            "{}",
            lines[4]
        );
        assert_eq!(
            lines.len(),
            5,
            "an empty interval summary prints nothing: {out}"
        );
    }

    #[test]
    fn last_io_explains_the_alert() {
        let (socket, mut ownership) = leaked();
        let alert = |ownership: &Ownership| {
            let report = SocketReport {
                key: SocketKey::Sk(1),
                socket: &socket,
                ownership,
            };
            let (out, _) = render(Format::Text, |o| {
                o.stuck(&report, 31_500_000_000, Duration::from_secs(30))
                    .unwrap()
            });
            out.trim_end().to_owned()
        };
        ownership.last_io = java_io(IoOp::Eof);
        assert!(
            alert(&ownership).ends_with(
                "also java[4300] fd 17; java[4242] read end of stream 29s ago and kept the socket"
            ),
            "{}",
            alert(&ownership)
        );
        ownership.last_io = java_io(IoOp::Send);
        assert!(alert(&ownership).ends_with("; last send by java[4242] 29s ago"));
        ownership.last_io = java_io(IoOp::Recv);
        assert!(alert(&ownership).ends_with("; last receive by java[4242] 29s ago"));
        // No holder found: the last user is the name left.
        ownership.owners.clear();
        ownership.held_by = HeldBy::Unknown;
        assert!(alert(&ownership)
            .ends_with("10.0.0.9:40000 owner unknown; last receive by java[4242] 29s ago"));
    }

    #[test]
    fn ages_read_like_an_sre_writes_them() {
        let d = Duration::from_secs;
        assert_eq!(human_duration(Duration::from_millis(450)), "450ms");
        assert_eq!(human_duration(d(31)), "31s");
        assert_eq!(human_duration(d(151)), "2m31s");
        assert_eq!(human_duration(d(7980)), "2h13m");
        assert_eq!(human_duration(d(2 * 86_400 + 3 * 3600)), "2d3h");
        assert_eq!(fd_usage(12, None), "fds 12 (no limit)");
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
            skipped: SkipCounts::default(),
            undecodable: 0,
            duration_ms: 1500,
            flagged: 2,
            resolved: 1,
            stuck: 1,
            tracked: 10,
            peak_tracked: 12,
            evicted: 0,
            evicted_stuck: 0,
            unrecorded: 0,
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
            serde_json::json!({"type":"stop","time":"2026-11-25T06:00:00.000000000Z","reason":"signal","events":12,"lost":3,
                "skipped":{"unreadable":0,"not_tcp":0,"filtered":0},"undecodable":0,"duration_ms":1500,
                "flagged":2,"resolved":1,"stuck":1,"tracked":10,"peak_tracked":12,"evicted":0,"evicted_stuck":0,"unrecorded":0})
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
        let skipped = StopInfo {
            skipped: SkipCounts {
                unreadable: 0,
                not_tcp: 2,
                filtered: 40,
            },
            ..stop
        };
        let (_, status) = render(Format::Text, |o| o.stop(&skipped).unwrap());
        assert_eq!(
            status,
            "tracer: stopped after 1.5s: 12 transitions, 3 lost; skipped 40 filtered out, 2 not TCP\n"
        );
    }

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
        let at = WallClock::now().at(clock_ns(libc::CLOCK_MONOTONIC) as u64);
        let after = SystemTime::now();
        let slack = Duration::from_millis(50);
        assert!(
            before - slack <= at && at <= after + slack,
            "{at:?} is not between {before:?} and {after:?}"
        );
    }
}
