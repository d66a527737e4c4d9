//! JSON Lines: the record types, which are the contract documented in the README (every
//! line is one [`Record`] with a `"type"`), and the renderer that writes them.

use std::{
    collections::BTreeMap,
    io,
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Serialize, Serializer};

use super::{
    clock::Rfc3339,
    line::Line,
    summary::{self, Group, ServicePort},
    text, Outcome, Page, Render, SocketReport, Summary,
};
use crate::{
    attribute::container::Container,
    decode::Transition,
    model::{Comm, Family, Origin, Owner, PidHint, Socket, State},
    probe::SkipCounts,
};

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
    /// The transition program: `tp_btf` (the socket read at offsets from kernel BTF), or
    /// `tracepoint` (the classic tracepoint's record), the fallback.
    pub probe: &'static str,
    /// Why `tp_btf` was not used where it was allowed; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tp_btf_refused: Option<String>,
    /// `sock:inet_sock_set_state`.
    pub tracepoint: String,
    pub tracefs: String,
    /// True when tracer mounted tracefs itself.
    pub tracefs_mounted_by_tracer: bool,
    /// `sock` for `tp_btf` (fields loaded from the socket itself); for the classic
    /// tracepoint, `direct` when the probe loads fields straight from the tracepoint context
    /// (the kernel's layout is the known one), `copy` when it copies the record first.
    pub record_access: &'static str,
    /// The send/receive hooks that give stuck sockets their `last_io`, e.g.
    /// `["fexit:tcp_recvmsg", "fentry:tcp_sendmsg"]`; empty when none works here (a warning
    /// says why).
    pub io_probes: Vec<String>,
    /// Where the probe reads each socket's network namespace: byte offsets taken from
    /// kernel BTF of `sock.__sk_common.skc_net.net` and `net.ns.inum`; `null` when the
    /// kernel has no BTF (every `netns` is then `null`, and a warning says so).
    pub netns_offsets: Option<NetnsOffsetsInfo>,
}

/// [`Attached::netns_offsets`].
#[derive(Clone, Copy, Debug, Serialize)]
pub struct NetnsOffsetsInfo {
    pub sk_net: u16,
    pub net_inum: u16,
}

/// The filters pushed into the probe.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FilterInfo {
    pub ports: Vec<u16>,
    pub pid: Option<u32>,
    /// `--netns`: namespace inodes kept in the kernel (empty: all).
    pub netns: Vec<u32>,
    pub family: Option<&'static str>,
    pub states: Vec<&'static str>,
    /// `--container` and `--cgroup`, which select stuck sockets by owner.
    pub container: Option<String>,
    pub cgroup: Option<String>,
}

/// Why the run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// SIGINT, SIGTERM or SIGHUP.
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
    /// Entries the recording left out because the disk could not keep up or failed, or
    /// the recording reached its budget (0 without `--record`).
    pub unrecorded: u64,
}

/// Why a summary was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SummaryReason {
    /// Every `--summary-interval` of a live run.
    Interval,
    /// The end of a live run.
    Stop,
    /// The end of a report's window.
    End,
}

/// What a report read and how it reports it: the body of the `report` record.
#[derive(Debug, Serialize)]
pub struct ReportInfo<'a> {
    /// The recording as named on the command line.
    pub file: String,
    /// The recording's id, shared by its segments.
    pub recording: String,
    pub host: &'a str,
    pub kernel: &'a str,
    pub tracer_version: &'a str,
    /// Numbers of the segments read.
    pub segments: &'a [u32],
    /// What was rebuilt.
    pub start: Rfc3339,
    pub end: Rfc3339,
    pub duration_ms: u64,
    /// `--from` and `--to`, when given.
    pub from: Option<Rfc3339>,
    pub to: Option<Rfc3339>,
    /// Thresholds of this report, and those of the live run, in ms.
    pub thresholds: BTreeMap<&'static str, u64>,
    pub recorded_thresholds: BTreeMap<&'static str, u64>,
    pub ports: &'a [u16],
    pub pid: Option<u32>,
    /// `--container` and `--cgroup`.
    pub container: Option<&'a str>,
    pub cgroup: Option<&'a str>,
    /// `--timeline`: the socket followed.
    pub timeline: Option<String>,
    /// Entries and transitions read, and bytes lost to damage.
    pub entries: u64,
    pub transitions: u64,
    pub damaged_bytes: u64,
    pub live: LiveInfo,
    /// Also printed on stderr.
    pub warnings: &'a [String],
}

/// What the live run recorded about itself.
#[derive(Debug, Serialize)]
pub struct LiveInfo {
    pub stuck: u64,
    pub resolved: u64,
    pub lost: u64,
    pub unrecorded: u64,
    /// Whether it ended normally (its stop entry was read).
    pub stopped: bool,
    /// Writing the recording stopped (a full disk, or its budget reached): when and why;
    /// `null` if it did not.
    pub recording_stopped: Option<RecordingStopped>,
}

/// When and why writing a recording stopped, as the live run noted it.
#[derive(Debug, Serialize)]
pub struct RecordingStopped {
    pub time: Rfc3339,
    /// What the system said, as `No space left on device (os error 28)`, or
    /// `--record-max-size 4MiB reached without room to rotate`.
    pub error: String,
}

/// One of a report's worst offenders: the body of an `offender` record.
#[derive(Debug, Serialize)]
pub struct Offender {
    /// 1 for the process that held the most stuck sockets.
    pub rank: usize,
    /// The owning process; `null` when none was recorded.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub cmdline: Option<String>,
    /// Its container or systemd service, if known.
    pub container: Option<Container>,
    /// Stuck sockets it held, in all and per state.
    pub stuck: usize,
    pub states: BTreeMap<String, usize>,
    /// Service ports, as in the summary (`:61616`, `10.0.0.5:5432`).
    pub ports: Vec<String>,
    /// The longest any of them stayed stuck.
    pub longest_ms: u64,
    /// Of them, those whose end of stream it read and kept.
    pub eof_read: usize,
    pub fd_count: Option<usize>,
    pub fd_limit: Option<u64>,
}

/// How often one transition happened in a report's window.
#[derive(Debug, Serialize)]
pub struct TransitionCount {
    pub old: State,
    pub new: State,
    pub count: u64,
}

/// Time spent in one state, over the stays that began and ended in a report's window.
#[derive(Debug, Serialize)]
pub struct StateTime {
    pub state: State,
    /// Completed stays (entered and left within the window).
    pub stays: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// One line of JSON output.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record<'a> {
    Start(&'a StartInfo),
    /// The probe's drop counter grew.
    Lost {
        time: Rfc3339,
        lost: u64,
        total: u64,
    },
    /// The kernel skipped the probe: transitions it never saw, maybe filtered ones.
    Missed {
        time: Rfc3339,
        missed: u64,
        total: u64,
    },
    /// The socket table was full and dropped `sockets` sockets, `stuck` of them flagged.
    Evicted {
        time: Rfc3339,
        sockets: u64,
        stuck: u64,
    },
    /// The table was set right against the kernel's list of sockets.
    Reconciled(&'a Reconciled),
    /// A socket crossed its state's threshold.
    Stuck(&'a SocketRecord<'a>),
    /// A stuck socket left the state.
    Resolved(&'a SocketRecord<'a>),
    Summary(&'a SummaryRecord<'a>),
    Stop(&'a StopInfo),
    /// A report's first record.
    Report(&'a ReportInfo<'a>),
    /// A socket open when the recording started (a report's `--timeline`).
    Existing {
        /// When it was known to be in `state` already: a lower bound of its entry.
        since: Rfc3339,
        state: State,
        netns: Option<u32>,
        family: &'static str,
        saddr: IpAddr,
        sport: u16,
        daddr: IpAddr,
        dport: u16,
    },
    Offender(&'a Offender),
    /// A report's transition counts by (old, new), most frequent first.
    Transitions {
        counts: &'a [TransitionCount],
    },
    /// A report's time spent per state.
    StateTimes {
        states: &'a [StateTime],
    },
}

/// The body of a `reconciled` record: what setting the table right against the kernel's
/// list of sockets changed, after transitions were lost or a full table evicted sockets.
#[derive(Clone, Debug, Serialize)]
pub struct Reconciled {
    pub time: Rfc3339,
    /// Why: `lost` (transitions) or `evicted` (sockets in watched states).
    pub reason: &'static str,
    /// Sockets the kernel no longer had (phantoms), removed.
    pub removed: usize,
    /// Sockets the kernel had in another state, moved to it.
    pub corrected: usize,
    /// Sockets the table lacked, added.
    pub added: usize,
    /// Sockets tracked afterwards.
    pub tracked: usize,
    /// How long listing the kernel's sockets took.
    pub listing_ms: u64,
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
    /// The socket's network namespace (inode, as `ls -l /proc/PID/ns/net` shows it);
    /// `null` when unknown.
    pub netns: Option<u32>,
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
    /// `fd`, `accept_queue`, `orphan`, `gone`, `unknown` or `netns_unreachable`.
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
    /// The container or systemd service, read from `cgroup`.
    pub container: Option<Container>,
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
            container: o.process.container(),
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
    pub reason: SummaryReason,
    pub stuck: usize,
    pub tracked: usize,
    pub evicted: u64,
    pub evicted_stuck: u64,
    /// Sockets tracked per state.
    pub states: &'a BTreeMap<String, usize>,
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

impl<'a> SocketReport<'a> {
    /// The record's common fields, as of monotonic `at_ns`.
    fn record(&self, page: &Page, at_ns: u64) -> SocketRecord<'a> {
        let s = self.socket;
        let mut owners = self.ownership.owners.iter().map(OwnerRecord::from);
        SocketRecord {
            time: Rfc3339(page.clock.at(at_ns)),
            state: s.state,
            age_ms: None,
            age_is_lower_bound: None,
            threshold_ms: None,
            stuck_ms: None,
            stuck_is_lower_bound: None,
            new: None,
            still_stuck: None,
            netns: netns(s.ends.netns),
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
                ago_ms: ms(super::since(io.ts_ns, at_ns)),
            }),
        }
    }
}

/// Writes JSON Lines: one [`Record`] per line on the data stream. The only status lines
/// it writes are the warnings, in words, that text mode writes too.
#[derive(Clone, Copy, Debug, Default)]
pub struct Json {
    /// The second last written in a transition's time, and its `YYYY-MM-DDTHH:MM:SS`: a
    /// stream of transitions repeats it thousands of times.
    second: Option<(u64, [u8; 19])>,
}

impl Json {
    fn line<T: Serialize>(page: &mut Page, record: &T) -> io::Result<()> {
        serde_json::to_writer(&mut page.out, record)?;
        page.out.push(b'\n');
        Ok(())
    }
}

impl Render for Json {
    fn start(&mut self, page: &mut Page, info: &StartInfo) -> io::Result<()> {
        Json::line(page, &Record::Start(info))
    }

    fn transition(&mut self, page: &mut Page, t: &Transition) -> io::Result<()> {
        let at = page.clock.at(t.ts_ns);
        self.write_transition(&mut page.out, t, at);
        Ok(())
    }

    fn stuck(
        &mut self,
        page: &mut Page,
        r: &SocketReport<'_>,
        at_ns: u64,
        threshold: Duration,
        outcome: Option<Outcome>,
    ) -> io::Result<()> {
        let mut rec = r.record(page, at_ns);
        rec.age_ms = Some(ms(super::since(r.socket.since_ns, at_ns)));
        rec.age_is_lower_bound = Some(r.socket.since_is_lower_bound);
        rec.threshold_ms = Some(ms(threshold));
        if let Some(o) = outcome {
            rec.stuck_ms = Some(ms(o.total));
            rec.stuck_is_lower_bound = Some(r.socket.since_is_lower_bound);
            rec.still_stuck = Some(o.still_stuck);
        }
        Json::line(page, &Record::Stuck(&rec))
    }

    fn resolved(
        &mut self,
        page: &mut Page,
        r: &SocketReport<'_>,
        left_ns: u64,
        new: State,
    ) -> io::Result<()> {
        let mut rec = r.record(page, left_ns);
        rec.stuck_ms = Some(ms(super::since(r.socket.since_ns, left_ns)));
        rec.stuck_is_lower_bound = Some(r.socket.since_is_lower_bound);
        rec.new = Some(new);
        Json::line(page, &Record::Resolved(&rec))
    }

    /// One record per socket: nothing is held back.
    fn end_batch(&mut self, _page: &mut Page) -> io::Result<()> {
        Ok(())
    }

    fn summary(&mut self, page: &mut Page, s: &Summary<'_>) -> io::Result<()> {
        let groups = s
            .groups
            .iter()
            .map(|g| GroupRecord {
                group: g,
                port: g.port.to_string(),
                side: match g.port {
                    ServicePort::Local(_) => "local",
                    ServicePort::Remote(..) => "remote",
                },
                oldest_ms: ms(super::since(g.oldest_since_ns, s.at_ns)),
                advice: summary::advice(g.state),
            })
            .collect();
        let record = SummaryRecord {
            time: Rfc3339(page.clock.at(s.at_ns)),
            reason: s.reason,
            stuck: s.stuck(),
            tracked: s.stats.tracked,
            evicted: s.stats.evicted,
            evicted_stuck: s.stats.evicted_stuck,
            states: s.states,
            groups,
        };
        Json::line(page, &Record::Summary(&record))
    }

    fn lost(&mut self, page: &mut Page, lost: u64, total: u64) -> io::Result<()> {
        text::warn_lost(page, lost, total)?;
        let time = Rfc3339(SystemTime::now());
        Json::line(page, &Record::Lost { time, lost, total })
    }

    fn missed(&mut self, page: &mut Page, missed: u64, total: u64) -> io::Result<()> {
        text::warn_missed(page, missed, total)?;
        let time = Rfc3339(SystemTime::now());
        Json::line(
            page,
            &Record::Missed {
                time,
                missed,
                total,
            },
        )
    }

    fn reconciled(&mut self, page: &mut Page, r: &Reconciled) -> io::Result<()> {
        text::say_reconciled(page, r)?;
        Json::line(page, &Record::Reconciled(r))
    }

    fn evicted(&mut self, page: &mut Page, sockets: u64, stuck: u64) -> io::Result<()> {
        text::warn_evicted(page, sockets, stuck)?;
        let time = Rfc3339(SystemTime::now());
        Json::line(
            page,
            &Record::Evicted {
                time,
                sockets,
                stuck,
            },
        )
    }

    fn stop(&mut self, page: &mut Page, info: &StopInfo) -> io::Result<()> {
        Json::line(page, &Record::Stop(info))
    }

    fn report(&mut self, page: &mut Page, info: &ReportInfo<'_>) -> io::Result<()> {
        Json::line(page, &Record::Report(info))
    }

    fn existing(&mut self, page: &mut Page, s: &Socket) -> io::Result<()> {
        let record = Record::Existing {
            since: Rfc3339(page.clock.at(s.since_ns)),
            state: s.state,
            netns: netns(s.ends.netns),
            family: s.ends.family.name(),
            saddr: s.ends.saddr,
            sport: s.ends.sport,
            daddr: s.ends.daddr,
            dport: s.ends.dport,
        };
        Json::line(page, &record)
    }

    fn offenders(&mut self, page: &mut Page, ranked: &[Offender]) -> io::Result<()> {
        ranked
            .iter()
            .try_for_each(|off| Json::line(page, &Record::Offender(off)))
    }

    fn transition_counts(&mut self, page: &mut Page, counts: &[TransitionCount]) -> io::Result<()> {
        Json::line(page, &Record::Transitions { counts })
    }

    fn state_times(&mut self, page: &mut Page, states: &[StateTime]) -> io::Result<()> {
        Json::line(page, &Record::StateTimes { states })
    }
}

impl Json {
    /// Writes the `transition` record of `t`, which happened at `at`, as serde would write
    /// it (the README documents its fields; a test holds the two to the same bytes), but
    /// field by field in place (see [`Line`]): `--events --format json` writes one per
    /// transition, and serde's and `fmt`'s general machinery cost several times more.
    fn write_transition(&mut self, out: &mut Vec<u8>, t: &Transition, at: SystemTime) {
        let mut line = Line::new(out);
        line.text(b"{\"type\":\"transition\",\"time\":\"");
        self.write_time(&mut line, at);
        line.text(b"\",\"ts_ns\":");
        line.uint(t.ts_ns);
        line.text(b",\"netns\":");
        match t.netns {
            0 => line.text(b"null"),
            inode => line.uint(inode.into()),
        }
        line.text(match t.family {
            Family::Ipv4 => b",\"family\":\"ipv4\",\"saddr\":\"",
            Family::Ipv6 => b",\"family\":\"ipv6\",\"saddr\":\"",
        });
        write_ip(&mut line, t.saddr);
        line.text(b"\",\"sport\":");
        line.uint(t.sport.into());
        line.text(b",\"daddr\":\"");
        write_ip(&mut line, t.daddr);
        line.text(b"\",\"dport\":");
        line.uint(t.dport.into());
        line.text(b",\"old\":\"");
        line.state(t.old);
        line.text(b"\",\"new\":\"");
        line.state(t.new);
        line.text(b"\",\"pid\":");
        line.uint(t.pid.into());
        line.text(b",\"tid\":");
        line.uint(t.tid.into());
        line.text(b",\"comm\":\"");
        if line.plain_comm(&t.comm).is_none() {
            // Writing into a Vec cannot fail. Serde writes the quotes too: the opening one
            // just written is taken back, and so is its closing one, which the next field
            // writes.
            line.with_vec(|out| {
                out.pop();
                let _ = serde_json::to_writer(&mut *out, &*t.comm.to_str_lossy());
                out.pop();
            });
        }
        line.text(b"\",\"sk\":\"");
        line.hex(t.sk);
        line.text(b"\"}\n");
        line.finish();
    }

    /// `at` as RFC 3339 with nanoseconds, as [`Rfc3339`] writes it.
    fn write_time(&mut self, line: &mut Line<'_>, at: SystemTime) {
        let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let date = match self.second {
            Some((s, date)) if s == secs => date,
            _ => {
                let whole = UNIX_EPOCH + Duration::from_secs(secs);
                let text = humantime::format_rfc3339_seconds(whole).to_string();
                let mut date = [0u8; 19];
                date.copy_from_slice(&text.as_bytes()[..19]);
                self.second = Some((secs, date));
                date
            }
        };
        line.text(&date);
        line.byte(b'.');
        line.zero_padded(since.subsec_nanos().into(), 9);
        line.byte(b'Z');
    }
}

/// An address as its `Display` writes it; IPv4 without `fmt`.
fn write_ip(line: &mut Line<'_>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => line.ipv4(v4),
        IpAddr::V6(v6) => line.with_vec(|out| {
            use std::io::Write as _;
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{v6}");
        }),
    }
}

/// An address and port as [`std::net::SocketAddr`]'s `Display` writes them.
pub(super) fn write_socket_addr(line: &mut Line<'_>, ip: IpAddr, port: u16) {
    if ip.is_ipv6() {
        line.byte(b'[');
    }
    write_ip(line, ip);
    line.text(if ip.is_ipv6() { b"]:" } else { b":" });
    line.uint(port.into());
}

/// A namespace inode as JSON gives it: `null` for 0, unknown.
fn netns(inode: u32) -> Option<u32> {
    (inode != 0).then_some(inode)
}

/// Whole milliseconds, as every `_ms` field counts.
fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::output::arbitrary;

    /// The `transition` record as serde writes it: the shape the README documents, and
    /// what [`Json::write_transition`] must write byte for byte.
    #[derive(Serialize)]
    struct Reference<'a> {
        r#type: &'static str,
        time: Rfc3339,
        ts_ns: u64,
        netns: Option<u32>,
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
    }

    fn reference(t: &Transition, at: SystemTime) -> Vec<u8> {
        let r = Reference {
            r#type: "transition",
            time: Rfc3339(at),
            ts_ns: t.ts_ns,
            netns: netns(t.netns),
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
        };
        let mut line = serde_json::to_vec(&r).unwrap();
        line.push(b'\n');
        line
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn transitions_are_written_as_serde_writes_them(
            t in arbitrary::transition(),
            epoch_s in 0u64..253_402_300_799,
            seconds_again in any::<bool>(),
        ) {
            let at = UNIX_EPOCH + Duration::new(epoch_s, (t.ts_ns % 1_000_000_000) as u32);
            let mut json = Json::default();
            if seconds_again {
                // The cached second, from an earlier transition in the same second.
                json.write_transition(&mut Vec::new(), &t, UNIX_EPOCH + Duration::from_secs(epoch_s));
            }
            let mut out = Vec::new();
            json.write_transition(&mut out, &t, at);
            prop_assert_eq!(String::from_utf8(out).unwrap(), String::from_utf8(reference(&t, at)).unwrap());
        }
    }
}
