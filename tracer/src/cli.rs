//! The command line: what users can ask for, and parsing of its values (durations, states,
//! families). Every parse failure becomes a clap usage error: one line, exit status 2.

use std::{
    ops::RangeInclusive,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use clap::{
    builder::NonEmptyStringValueParser, error::ErrorKind, Args, CommandFactory, Parser, Subcommand,
    ValueEnum,
};
use tracer_common::{TcpState, MAX_NETNS, MAX_PORTS};

use crate::model::{Family, Format, Target};

/// Traces TCP state transitions with eBPF and finds the processes that leak sockets.
#[derive(Debug, Parser)]
#[command(name = "tracer", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to the kernel and follow TCP sockets live (needs root).
    Watch(WatchArgs),
    /// Rebuild an incident from a recording made with `watch --record` (no root needed).
    Report(ReportArgs),
    /// Check what this machine offers `watch`, by trying it: exit 0 when it can run
    /// fully, 1 when degraded, 2 when it cannot run (needs root for the full check).
    Doctor(DoctorArgs),
    /// Print the shell completion script for SHELL (the package installs those of bash,
    /// zsh and fish).
    Completions(CompletionsArgs),
    /// Print the manual page, tracer(1), in roff (the package build runs this).
    #[command(hide = true)]
    Man,
}

/// Options of `tracer completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Options of `tracer doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Output format: human text, or one JSON object (see the README).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// Options of `tracer watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Print every TCP state transition as it happens.
    #[arg(long)]
    pub events: bool,

    /// Output format: human text, or JSON Lines (one record per line; see the README).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Times in text output: the time of day, with a date line when the day changes, or
    /// full RFC 3339 timestamps on every line.
    #[arg(long, value_enum, default_value_t)]
    pub time: crate::model::TimeStyle,

    /// Keep transitions whose local or remote port is PORT (repeatable, up to 8).
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Show the sockets process PID holds or acts on: its stuck sockets, and with
    /// --events the transitions of sockets it was seen on (see the README).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub pid: Option<u32>,

    /// Report only stuck sockets held by a process in the container whose id starts with
    /// ID (or in the systemd service so named).
    #[arg(long, value_name = "ID", value_parser = NonEmptyStringValueParser::new())]
    pub container: Option<String>,

    /// Report only stuck sockets held by a process whose cgroup path starts with PATH.
    #[arg(long, value_name = "PATH", value_parser = NonEmptyStringValueParser::new())]
    pub cgroup: Option<String>,

    /// Keep only one address family.
    #[arg(long, value_enum)]
    pub family: Option<FamilyArg>,

    /// Keep only sockets in network namespace NETNS: its inode (as `ls -l
    /// /proc/PID/ns/net` shows it) or a path to it, such as /run/netns/NAME or
    /// /proc/PID/ns/net (repeatable, up to 8). Applied in the kernel.
    #[arg(long = "netns", value_name = "NETNS", value_parser = parse_netns)]
    pub netns: Vec<u32>,

    /// Keep transitions into or out of STATE, e.g. CLOSE_WAIT (repeatable).
    #[arg(long = "state", value_name = "STATE", value_parser = parse_state)]
    pub states: Vec<TcpState>,

    /// Stop by itself after this long, e.g. 500ms, 30s, 5m.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Kernel ring buffer size: a power of two from 4KiB to 1GiB, e.g. 64MiB. Larger
    /// absorbs longer bursts before events are lost.
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = parse_buffer_size)]
    pub buffer_size: u32,

    /// Flag sockets that stay in CLOSE_WAIT this long (`off` to stop watching it).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_threshold)]
    pub close_wait: Threshold,

    /// Also flag sockets that stay in STATE this long, e.g. FIN_WAIT2=60s (repeatable).
    #[arg(long, value_name = "STATE=DURATION", value_parser = parse_stuck)]
    pub stuck: Vec<(TcpState, Duration)>,

    /// How often to summarize the stuck sockets by process and port.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub summary_interval: Duration,

    /// Most sockets kept in memory (about 210 bytes each), at most 4194304; beyond it the
    /// oldest in unwatched states are dropped, and counted. The kernel keeps last
    /// send/receive notes for a quarter as many (104 bytes each, allocated at start).
    #[arg(long, value_name = "N", default_value_t = 262_144, value_parser = clap::value_parser!(u32).range(1024..=MAX_SOCKETS as i64))]
    pub max_sockets: u32,

    /// Also record every transition, the sockets open at start, the owners found and every
    /// stuck/resolved decision to FILE, for `tracer report` (see the README).
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,

    /// Disk space the recording may use, e.g. 256MiB or 10GiB (`off` for no limit). It is
    /// split into 4 files, FILE and FILE.1 to FILE.3; the oldest is deleted as it rotates.
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = parse_record_size, requires = "record")]
    pub record_max_size: RecordSize,

    /// Serve Prometheus metrics at http://ADDR/metrics: IP:PORT, or a bare PORT on
    /// 127.0.0.1; alone, 127.0.0.1:9977 (see the README's Metrics section).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:9977", value_parser = crate::metrics::parse_addr)]
    pub metrics: Option<std::net::SocketAddr>,

    /// Most stuck-socket series per state and owners in the metrics; the rest are summed
    /// under comm="other".
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000), requires = "metrics")]
    pub metrics_top: u32,
}

/// `--record-max-size`: a size in bytes, or no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordSize(pub Option<u64>);

/// Options of `tracer report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The recording (`watch --record FILE`); its rotated files FILE.1 to FILE.3 are read
    /// with it.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Output format: human text, or JSON Lines with the live run's record types.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Times in text output, as for `watch`.
    #[arg(long, value_enum, default_value_t)]
    pub time: crate::model::TimeStyle,

    /// Flag sockets that stayed in CLOSE_WAIT this long (`off` to ignore it); default: the
    /// live run's thresholds.
    #[arg(long, value_name = "DURATION", value_parser = parse_threshold)]
    pub close_wait: Option<Threshold>,

    /// Also flag sockets that stayed in STATE this long, e.g. FIN_WAIT2=60s (repeatable).
    #[arg(long, value_name = "STATE=DURATION", value_parser = parse_stuck)]
    pub stuck: Vec<(TcpState, Duration)>,

    /// Start of the window: a time of day in UTC as the text output prints it (12:53:45,
    /// its first occurrence from the recording's start), a date and time
    /// (2026-11-25T03:00:00Z, 2026-11-25T04:00:00+01:00), or an offset from the recording's
    /// start (10m).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub from: Option<TimeArg>,

    /// End of the window, in the same forms as --from; a time of day is its first occurrence
    /// from the window's start.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub to: Option<TimeArg>,

    /// Keep sockets whose local or remote port is PORT (repeatable).
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Keep stuck sockets that process PID held, or last acted or sent/received on.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub pid: Option<u32>,

    /// Keep stuck sockets held by a process in the container whose id starts with ID (or
    /// in the systemd service so named).
    #[arg(long, value_name = "ID", value_parser = NonEmptyStringValueParser::new())]
    pub container: Option<String>,

    /// Keep stuck sockets held by a process whose cgroup path starts with PATH.
    #[arg(long, value_name = "PATH", value_parser = NonEmptyStringValueParser::new())]
    pub cgroup: Option<String>,

    /// Print the whole life of one socket: its kernel address (0xffff...) or an ADDR:PORT
    /// at either end (`[::1]:61616` for IPv6).
    #[arg(long, value_name = "SK|ADDR:PORT", value_parser = parse_target)]
    pub timeline: Option<Target>,

    /// How many worst offenders to list.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,
}

/// `--from`/`--to`: a point in time, a time of day, or an offset from the start of the
/// recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeArg {
    /// A date and time.
    At(SystemTime),
    /// A time of day in UTC (since midnight); the report places it in the recording.
    TimeOfDay(Duration),
    /// An offset from the start of the recording.
    After(Duration),
}

/// `--close-wait`: a duration, or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Threshold(pub Option<Duration>);

impl WatchArgs {
    /// Every watched state with its threshold; `--stuck` wins over `--close-wait`.
    pub fn thresholds(&self) -> Vec<(TcpState, Duration)> {
        self.close_wait
            .0
            .map(|d| (TcpState::CloseWait, d))
            .into_iter()
            .chain(self.stuck.iter().copied())
            .collect()
    }
}

/// `--family` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FamilyArg {
    Ipv4,
    Ipv6,
}

impl From<FamilyArg> for Family {
    fn from(f: FamilyArg) -> Self {
        match f {
            FamilyArg::Ipv4 => Family::Ipv4,
            FamilyArg::Ipv6 => Family::Ipv6,
        }
    }
}

impl Cli {
    /// Parses `args`, including the checks clap cannot express; errors are usage errors.
    pub fn try_parse_checked<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args)?;
        let Command::Watch(w) = &cli.command else {
            return Ok(cli);
        };
        if w.ports.len() > MAX_PORTS {
            return Err(Cli::command().error(
                ErrorKind::TooManyValues,
                format!(
                    "--port is given {} times; the probe filters at most {MAX_PORTS} ports",
                    w.ports.len()
                ),
            ));
        }
        if w.netns.len() > MAX_NETNS {
            return Err(Cli::command().error(
                ErrorKind::TooManyValues,
                format!(
                    "--netns is given {} times; the probe filters at most {MAX_NETNS} namespaces",
                    w.netns.len()
                ),
            ));
        }
        Ok(cli)
    }
}

/// Largest `--max-sockets`: about 880 MiB of table and 104 MiB of kernel notes, beyond
/// which a host needs sampling rather than a bigger table.
pub const MAX_SOCKETS: u32 = 1 << 22;

/// An error and its causes on one line, `what failed: why`, leaving out a cause whose
/// words the line already holds (library errors often repeat their source in their own
/// message, which `{:#}` would print again).
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// A usage error on one line, as clap words it, with its tip (a similar argument, the
/// possible values) and where to read more; clap's usage lines and hints are left out.
/// `args` are the arguments given, program name first, which tell whose `--help` to point to.
pub fn usage_error_line(e: &clap::Error, args: &[std::ffi::OsString]) -> String {
    // Rendered without colours; clap separates the message, its tips, the usage and the
    // hint with blank lines.
    let rendered = e.render().to_string();
    let mut line = String::new();
    for paragraph in rendered.split("\n\n") {
        let paragraph = paragraph.trim();
        if paragraph.is_empty()
            || paragraph.starts_with("Usage:")
            || paragraph.starts_with("For more information")
        {
            continue;
        }
        let text = paragraph.strip_prefix("tip: ").unwrap_or(paragraph);
        if !line.is_empty() {
            line.push_str("; ");
        }
        // Continuation lines (a missing argument's name, possible values) join the line.
        line.push_str(&text.lines().map(str::trim).collect::<Vec<_>>().join(" "));
    }
    let command = Cli::command();
    let sub = args
        .get(1)
        .and_then(|a| a.to_str())
        .filter(|a| command.find_subcommand(a).is_some());
    let help = match sub {
        Some(sub) => format!("tracer {sub} --help"),
        None => "tracer --help".into(),
    };
    format!("{line} (see `{help}`)")
}

/// A network namespace: an inode number, or a path to a namespace file (`/proc/PID/ns/net`,
/// a bind mount under `/run/netns`), whose inode is the namespace's.
pub fn parse_netns(s: &str) -> Result<u32, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .ok()
            .filter(|&n| n != 0)
            .ok_or_else(|| format!("{s:?} is not a namespace inode"));
    }
    netns_inode(Path::new(s)).map_err(|e| format!("{s}: {e}"))
}

/// The inode of the network namespace file at `path`.
fn netns_inode(path: &Path) -> Result<u32, String> {
    use std::os::{fd::AsRawFd, unix::fs::MetadataExt};
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    // NS_GET_NSTYPE (linux/nsfs.h): only namespace files answer it, with their kind.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: an ioctl without arguments on a descriptor this function owns.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind == -1 {
        return Err("not a namespace file (expected /run/netns/NAME or /proc/PID/ns/net)".into());
    }
    if kind != libc::CLONE_NEWNET {
        return Err("a namespace, but not a network namespace".into());
    }
    let ino = file.metadata().map_err(|e| e.to_string())?.ino();
    u32::try_from(ino).map_err(|_| format!("namespace inode {ino} is out of range"))
}

/// Parses a human duration (`500ms`, `30s`, `5m`, `1h30m`); zero is refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 500ms, 30s or 5m ({e})"))?;
    if d.is_zero() {
        return Err(format!("`{s}` is zero; give a positive duration"));
    }
    Ok(d)
}

/// Parses `--close-wait`: a duration, or `off`.
pub fn parse_threshold(s: &str) -> Result<Threshold, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(Threshold(None));
    }
    parse_duration(s).map(|d| Threshold(Some(d)))
}

/// Parses `--stuck STATE=DURATION`. States a full socket never stays in are refused.
pub fn parse_stuck(s: &str) -> Result<(TcpState, Duration), String> {
    let (state, duration) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not STATE=DURATION, e.g. FIN_WAIT2=60s"))?;
    let state = parse_state(state)?;
    if matches!(
        state,
        TcpState::Close | TcpState::TimeWait | TcpState::NewSynRecv | TcpState::BoundInactive
    ) {
        return Err(format!(
            "{} cannot be watched: the probe sees full sockets, which never rest in it",
            state.name()
        ));
    }
    Ok((state, parse_duration(duration)?))
}

/// Parses a size in bytes: `4096`, `64KiB`, `16MiB`, `1GiB`, `2TiB` (also `K`, `M`, `G`,
/// `T`, all binary).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        _ => return Err(format!("`{s}` is not a size like 64KiB, 16MiB or 1GiB")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_shl(shift).filter(|b| b >> shift == n))
        .ok_or_else(|| format!("`{s}` is not a size like 64KiB, 16MiB or 1GiB"))
}

/// Parses `--record-max-size`: a size of at least 4MiB (1MiB per file), or `off`.
pub fn parse_record_size(s: &str) -> Result<RecordSize, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(RecordSize(None));
    }
    let bytes = parse_size(s)?;
    if bytes < 4 << 20 {
        return Err(format!(
            "`{s}` is too small: a recording needs at least 4MiB (1MiB per file)"
        ));
    }
    Ok(RecordSize(Some(bytes)))
}

/// Parses a ring buffer size (see [`parse_size`]). The kernel needs a power of two and a
/// multiple of the page size.
pub fn parse_buffer_size(s: &str) -> Result<u32, String> {
    let bytes = parse_size(s)?;
    if !bytes.is_power_of_two() || !(4096..=1 << 30).contains(&bytes) {
        return Err(format!("`{s}` must be a power of two from 4KiB to 1GiB"));
    }
    Ok(bytes as u32)
}

/// Parses `--from`/`--to`: a time of day in UTC (`12:53:45`, `12:53:45.250`, `12:53`), RFC
/// 3339 with any offset (`2026-11-25T03:00:00Z`, `2026-11-25T04:00:00+01:00`, and
/// `2026-11-25 03:00:00`, taken as UTC), or a duration after the recording's start (`10m`).
pub fn parse_time(s: &str) -> Result<TimeArg, String> {
    let t = s.trim();
    if let Some(tod) = parse_time_of_day(t) {
        return tod.map(TimeArg::TimeOfDay);
    }
    if let Some(at) = parse_date_time(t) {
        return Ok(TimeArg::At(at));
    }
    humantime::parse_duration(t)
        .map(TimeArg::After)
        .map_err(|_| {
            format!(
                "`{s}` is neither a time (12:53:45, 2026-11-25T03:00:00Z, \
             2026-11-25T04:00:00+01:00) nor an offset like 10m"
            )
        })
}

/// `HH:MM[:SS[.fraction]]` as the time since midnight; `None` when `t` does not have that
/// shape, an error when it does but is no time of day.
fn parse_time_of_day(t: &str) -> Option<Result<Duration, String>> {
    let (clock, fraction) = match t.split_once('.') {
        Some((clock, fraction)) => (clock, Some(fraction)),
        None => (t, None),
    };
    let (h, m, sec) = match clock.split(':').collect::<Vec<_>>()[..] {
        [h, m] if fraction.is_none() => (h, m, "00"),
        [h, m, sec] => (h, m, sec),
        _ => return None,
    };
    let digits = |f: &str, lens: RangeInclusive<usize>| {
        lens.contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit())
    };
    if !(digits(h, 1..=2)
        && digits(m, 2..=2)
        && digits(sec, 2..=2)
        && fraction.is_none_or(|f| digits(f, 1..=9)))
    {
        return None;
    }
    let (h, m, sec): (u64, u64, u64) = (h.parse().ok()?, m.parse().ok()?, sec.parse().ok()?);
    if h > 23 || m > 59 || sec > 59 {
        return Some(Err(format!(
            "`{t}` is not a time of day: HH:MM:SS from 00:00:00 to 23:59:59"
        )));
    }
    // `.25` is 250 ms: pad the fraction to nanoseconds.
    let nanos = format!("{:0<9}", fraction.unwrap_or("")).parse().ok()?;
    Some(Ok(Duration::new(h * 3600 + m * 60 + sec, nanos)))
}

/// RFC 3339 with `Z`, no zone (UTC) or an offset such as `+01:00`; a space may stand for
/// the `T`.
fn parse_date_time(t: &str) -> Option<SystemTime> {
    // humantime reads UTC only (and takes `13:53:45.250+01:00` for 13:53:45.250 UTC): take
    // a trailing `+HH:MM` or `-HH:MM` off first and apply it.
    let zone = t
        .len()
        .checked_sub(6)
        .and_then(|i| Some((t.get(..i)?, t.get(i..)?)));
    let (local, ahead, hh_mm) = match zone {
        Some((local, zone)) if zone.starts_with('+') => (local, true, &zone[1..]),
        Some((local, zone)) if zone.starts_with('-') => (local, false, &zone[1..]),
        _ => return humantime::parse_rfc3339_weak(t).ok(),
    };
    let (hh, mm) = hh_mm.split_once(':')?;
    let two = |f: &str| {
        (f.len() == 2 && f.bytes().all(|b| b.is_ascii_digit()))
            .then(|| f.parse::<u64>().ok())
            .flatten()
    };
    let (h, m) = (two(hh)?, two(mm)?);
    if h > 23 || m > 59 {
        return None;
    }
    let offset = Duration::from_secs(h * 3600 + m * 60);
    let local = humantime::parse_rfc3339_weak(local).ok()?;
    // Local time is UTC plus the offset.
    if ahead {
        local.checked_sub(offset)
    } else {
        local.checked_add(offset)
    }
}

/// Parses `--timeline`: `0x...` (a kernel address) or `ADDR:PORT`.
pub fn parse_target(s: &str) -> Result<Target, String> {
    let t = s.trim();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16)
            .map(Target::Sk)
            .map_err(|_| format!("`{s}` is not a kernel address like 0xffff88800abcd000"));
    }
    t.parse()
        .map(Target::Addr)
        .map_err(|_| format!("`{s}` is neither a kernel address (0x...) nor ADDR:PORT"))
}

/// Parses a TCP state name: `CLOSE_WAIT`, `close-wait`, `TCP_CLOSE_WAIT` all work.
pub fn parse_state(s: &str) -> Result<TcpState, String> {
    let norm = s.trim().to_ascii_uppercase().replace('-', "_");
    let norm = norm.strip_prefix("TCP_").unwrap_or(&norm);
    TcpState::ALL
        .into_iter()
        .find(|st| st.name() == norm)
        .ok_or_else(|| {
            let names: Vec<&str> = TcpState::ALL.iter().map(|st| st.name()).collect();
            format!("`{s}` is not a TCP state; one of {}", names.join(", "))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_is_an_inode_or_a_namespace_file() {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(parse_netns("4026531840"), Ok(4026531840));
        assert!(parse_netns("0").is_err());
        assert!(parse_netns("99999999999").is_err());
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_eq!(parse_netns("/proc/self/ns/net").map(u64::from), Ok(own));
        let not_ns = parse_netns("/proc/self/status").unwrap_err();
        assert!(not_ns.contains("not a namespace file"), "{not_ns}");
        let pid_ns = parse_netns("/proc/self/ns/pid").unwrap_err();
        assert!(pid_ns.contains("not a network namespace"), "{pid_ns}");
        assert!(parse_netns("/nonexistent/ns")
            .unwrap_err()
            .contains("No such file"));
    }

    #[test]
    fn an_error_line_says_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("creating map SOCKET_IO failed: {0}")]
        struct Repeats(#[source] std::io::Error);
        let e = anyhow::Error::new(Repeats(std::io::Error::from_raw_os_error(libc::ENOMEM)))
            .context("loading the probe failed");
        assert_eq!(
            error_line(&e),
            "loading the probe failed: creating map SOCKET_IO failed: Cannot allocate memory (os error 12)"
        );
    }

    #[test]
    fn a_usage_error_is_one_line_with_its_tip() {
        let line = |args: &[&str]| {
            let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
            let err = Cli::try_parse_checked(&args).expect_err("refused");
            assert_eq!(err.exit_code(), 2);
            usage_error_line(&err, &args)
        };
        assert_eq!(
            line(&["tracer", "watch", "--event"]),
            "error: unexpected argument '--event' found; a similar argument exists: '--events' \
             (see `tracer watch --help`)"
        );
        assert_eq!(
            line(&["tracer", "watch", "--format", "xml"]),
            "error: invalid value 'xml' for '--format <FORMAT>' [possible values: text, json] \
             (see `tracer watch --help`)"
        );
        assert_eq!(
            line(&["tracer", "report"]),
            "error: the following required arguments were not provided: <FILE> \
             (see `tracer report --help`)"
        );
        assert_eq!(
            line(&["tracer", "wach"]),
            "error: unrecognized subcommand 'wach'; a similar subcommand exists: 'watch' \
             (see `tracer --help`)"
        );
        let ports: Vec<String> = (1..=9).map(|p| format!("--port={p}")).collect();
        let mut args = vec!["tracer", "watch"];
        args.extend(ports.iter().map(String::as_str));
        assert_eq!(
            line(&args),
            "error: --port is given 9 times; the probe filters at most 8 ports \
             (see `tracer watch --help`)"
        );
        // Spaces in a value are the user's, kept as given.
        assert!(line(&["tracer", "watch", "--state", "a  b"]).contains("'a  b'"));
    }

    #[test]
    fn completions_take_a_known_shell() {
        let Command::Completions(c) = parse_cli(&["completions", "zsh"]).unwrap().command else {
            panic!("not a completions command");
        };
        assert_eq!(c.shell, clap_complete::Shell::Zsh);
        assert!(parse_cli(&["completions"]).is_err());
        assert!(parse_cli(&["completions", "tcsh"]).is_err());
        assert!(matches!(parse_cli(&["man"]).unwrap().command, Command::Man));
    }

    #[test]
    fn max_sockets_is_bounded() {
        let parse = |n: &str| Cli::try_parse_checked(["tracer", "watch", "--max-sockets", n]);
        assert!(parse("4194304").is_ok());
        let err = parse("4294967295").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert!(err.to_string().contains("1024..=4194304"), "{err}");
    }

    fn parse(args: &[&str]) -> Result<WatchArgs, clap::Error> {
        match parse_cli(args)?.command {
            Command::Watch(w) => Ok(w),
            _ => panic!("{args:?} is not a watch command"),
        }
    }

    fn parse_cli(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_checked(std::iter::once("tracer").chain(args.iter().copied()))
    }

    fn report(args: &[&str]) -> Result<ReportArgs, clap::Error> {
        match parse_cli(args)?.command {
            Command::Report(r) => Ok(r),
            _ => panic!("{args:?} is not a report command"),
        }
    }

    #[test]
    fn doctor_arguments() {
        let Command::Doctor(d) = parse_cli(&["doctor", "--format", "json"]).unwrap().command else {
            panic!("not a doctor command");
        };
        assert_eq!(d.format, Format::Json);
        assert!(parse_cli(&["doctor", "--port", "1"]).is_err());
    }

    #[test]
    fn report_arguments() {
        let r = report(&[
            "report",
            "rec",
            "--format",
            "json",
            "--close-wait",
            "5s",
            "--stuck",
            "FIN_WAIT2=1m",
            "--from",
            "2026-11-25T03:00:00Z",
            "--to",
            "15m",
            "--port",
            "61616",
            "--pid",
            "42",
            "--container",
            "3f2a1b9c8d7e",
            "--cgroup",
            "/kubepods.slice",
            "--timeline",
            "[::1]:61616",
        ])
        .unwrap();
        assert_eq!(r.file, PathBuf::from("rec"));
        assert_eq!(r.format, Format::Json);
        assert_eq!(r.close_wait, Some(Threshold(Some(Duration::from_secs(5)))));
        assert_eq!(r.stuck, vec![(TcpState::FinWait2, Duration::from_secs(60))]);
        assert_eq!(
            r.from,
            Some(TimeArg::At(
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_575_600)
            ))
        );
        assert_eq!(r.to, Some(TimeArg::After(Duration::from_secs(900))));
        assert_eq!((r.ports, r.pid), (vec![61616], Some(42)));
        assert_eq!(r.container.as_deref(), Some("3f2a1b9c8d7e"));
        assert_eq!(r.cgroup.as_deref(), Some("/kubepods.slice"));
        assert_eq!(
            r.timeline,
            Some(Target::Addr("[::1]:61616".parse().unwrap()))
        );
        assert_eq!(r.top, 10);

        let d = report(&["report", "rec"]).unwrap();
        assert_eq!((d.close_wait, d.from, d.timeline), (None, None, None));
        assert_eq!((d.container, d.cgroup), (None, None));
        assert_eq!(
            parse_target("0xffff88800abcd000"),
            Ok(Target::Sk(0xffff_8880_0abc_d000))
        );
        for bad in [
            &["report"][..],
            &["report", "rec", "--timeline", "0xzz"],
            &["report", "rec", "--timeline", "localhost"],
            &["report", "rec", "--from", "yesterday"],
            &["report", "rec", "--close-wait", "0s"],
            &["report", "rec", "--port", "0"],
            &["report", "rec", "--container", ""],
            &["report", "rec", "--cgroup="],
            &["report", "rec", "--container"],
        ] {
            let err = parse_cli(bad).expect_err(&format!("{bad:?} must be refused"));
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
        }
    }

    #[test]
    fn window_times_in_every_form() {
        let at = |secs: u64| {
            Ok(TimeArg::At(
                SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            ))
        };
        // 2026-11-26T12:53:45Z, in UTC, with offsets either way and without a zone.
        let utc = 1_795_697_625;
        assert_eq!(parse_time("2026-11-26T12:53:45Z"), at(utc));
        assert_eq!(parse_time("2026-11-26T13:53:45+01:00"), at(utc));
        assert_eq!(parse_time("2026-11-26T07:23:45-05:30"), at(utc));
        assert_eq!(parse_time("2026-11-26 12:53:45"), at(utc));
        assert_eq!(
            parse_time("2026-11-26T13:53:45.250+01:00"),
            Ok(TimeArg::At(
                SystemTime::UNIX_EPOCH + Duration::new(utc, 250_000_000)
            ))
        );
        // Times of day, as the text output prints them.
        let tod = |secs: u64, nanos: u32| Ok(TimeArg::TimeOfDay(Duration::new(secs, nanos)));
        assert_eq!(parse_time("12:53:45"), tod(46_425, 0));
        assert_eq!(parse_time("12:53:45.250"), tod(46_425, 250_000_000));
        assert_eq!(parse_time("10:55:27.967862"), tod(39_327, 967_862_000));
        assert_eq!(parse_time("12:53"), tod(46_380, 0));
        assert_eq!(parse_time("9:05:00"), tod(32_700, 0));
        assert_eq!(parse_time("00:00:00"), tod(0, 0));
        assert_eq!(parse_time("23:59:59.999999999"), tod(86_399, 999_999_999));
        assert_eq!(
            parse_time("10m"),
            Ok(TimeArg::After(Duration::from_secs(600)))
        );
        assert!(parse_time("24:00:00")
            .unwrap_err()
            .contains("not a time of day"));
        assert!(parse_time("12:60")
            .unwrap_err()
            .contains("not a time of day"));
        for bad in [
            "12:53:45.",
            "12:53:45.1234567890",
            "12:5:45",
            "123:00",
            "12:53.5",
            "2026-11-26T13:53:45+24:00",
            "2026-11-26T13:53:45+1:00",
            "yesterday",
        ] {
            let err = parse_time(bad).expect_err(bad);
            assert!(err.contains("is neither a time"), "{bad}: {err}");
        }
    }

    #[test]
    fn human_durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("0s").unwrap_err().contains("zero"));
        assert!(parse_duration("soon")
            .unwrap_err()
            .contains("not a duration"));
        assert!(parse_duration("10").is_err(), "a unit is required");
    }

    #[test]
    fn buffer_sizes() {
        assert_eq!(parse_buffer_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_buffer_size("64K"), Ok(64 << 10));
        assert_eq!(parse_buffer_size("4096"), Ok(4096));
        assert_eq!(parse_buffer_size("1GiB"), Ok(1 << 30));
        assert!(parse_buffer_size("2GiB")
            .unwrap_err()
            .contains("power of two from 4KiB to 1GiB"));
        assert!(parse_buffer_size("3MiB")
            .unwrap_err()
            .contains("power of two"));
        assert!(parse_buffer_size("1KiB")
            .unwrap_err()
            .contains("power of two"));
        assert!(parse_buffer_size("16MB")
            .unwrap_err()
            .contains("not a size"));
        assert!(parse_buffer_size("lots")
            .unwrap_err()
            .contains("not a size"));
        assert!(parse_buffer_size("99999999999999999999G")
            .unwrap_err()
            .contains("not a size"));
        assert!(parse_buffer_size("1TiB")
            .unwrap_err()
            .contains("power of two"));
    }

    #[test]
    fn record_options() {
        let w = parse(&["watch", "--record", "/var/tmp/incident.rec"]).unwrap();
        assert_eq!(w.record, Some(PathBuf::from("/var/tmp/incident.rec")));
        assert_eq!(w.record_max_size, RecordSize(Some(1 << 30)));
        let w = parse(&["watch", "--record", "r", "--record-max-size", "10GiB"]).unwrap();
        assert_eq!(w.record_max_size, RecordSize(Some(10 << 30)));
        let w = parse(&["watch", "--record", "r", "--record-max-size", "off"]).unwrap();
        assert_eq!(w.record_max_size, RecordSize(None));
        assert!(parse_record_size("1MiB").unwrap_err().contains("too small"));
        assert_eq!(
            parse_record_size("3000000000"),
            Ok(RecordSize(Some(3_000_000_000)))
        );
    }

    #[test]
    fn state_names_in_any_spelling() {
        assert_eq!(parse_state("CLOSE_WAIT"), Ok(TcpState::CloseWait));
        assert_eq!(parse_state("close-wait"), Ok(TcpState::CloseWait));
        assert_eq!(parse_state("TCP_FIN_WAIT2"), Ok(TcpState::FinWait2));
        assert_eq!(parse_state("syn_recv"), Ok(TcpState::SynRecv));
        let err = parse_state("HALF_OPEN").unwrap_err();
        assert!(
            err.contains("not a TCP state") && err.contains("CLOSE_WAIT"),
            "{err}"
        );
    }

    #[test]
    fn watch_arguments() {
        let w = parse(&[
            "watch",
            "--events",
            "--format",
            "json",
            "--port",
            "61616",
            "--port",
            "80",
            "--pid",
            "42",
            "--container",
            "3f2a",
            "--cgroup",
            "/system.slice/docker-",
            "--family",
            "ipv6",
            "--state",
            "close_wait",
            "--duration",
            "10s",
        ])
        .unwrap();
        assert!(w.events);
        assert_eq!(w.format, Format::Json);
        assert_eq!(w.ports, vec![61616, 80]);
        assert_eq!(w.pid, Some(42));
        assert_eq!(w.container.as_deref(), Some("3f2a"));
        assert_eq!(w.cgroup.as_deref(), Some("/system.slice/docker-"));
        assert_eq!(w.family, Some(FamilyArg::Ipv6));
        assert_eq!(w.states, vec![TcpState::CloseWait]);
        assert_eq!(w.duration, Some(Duration::from_secs(10)));

        let d = parse(&["watch"]).unwrap();
        assert!(!d.events && d.ports.is_empty() && d.pid.is_none() && d.duration.is_none());
        assert!(d.container.is_none() && d.cgroup.is_none());
        assert_eq!(d.format, Format::Text);
        assert_eq!(d.buffer_size, 16 << 20);
        assert_eq!(
            d.thresholds(),
            vec![(TcpState::CloseWait, Duration::from_secs(30))]
        );
        assert_eq!(d.summary_interval, Duration::from_secs(10));
        assert_eq!(d.max_sockets, 262_144);
    }

    #[test]
    fn thresholds_from_close_wait_and_stuck() {
        let w = parse(&[
            "watch",
            "--close-wait",
            "2m",
            "--stuck",
            "fin-wait2=60s",
            "--stuck",
            "LAST_ACK=500ms",
        ])
        .unwrap();
        assert_eq!(
            w.thresholds(),
            vec![
                (TcpState::CloseWait, Duration::from_secs(120)),
                (TcpState::FinWait2, Duration::from_secs(60)),
                (TcpState::LastAck, Duration::from_millis(500)),
            ]
        );
        let off = parse(&["watch", "--close-wait", "off", "--stuck", "SYN_SENT=5s"]).unwrap();
        assert_eq!(
            off.thresholds(),
            vec![(TcpState::SynSent, Duration::from_secs(5))]
        );
        assert!(parse_stuck("TIME_WAIT=1s")
            .unwrap_err()
            .contains("cannot be watched"));
        assert!(parse_stuck("FIN_WAIT2")
            .unwrap_err()
            .contains("STATE=DURATION"));
        assert!(parse_stuck("FIN_WAIT2=0s").unwrap_err().contains("zero"));
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for args in [
            &["watch", "--port", "0"][..],
            &["watch", "--port", "70000"],
            &["watch", "--pid", "0"],
            &["watch", "--container", ""],
            &["watch", "--cgroup", ""],
            &["watch", "--cgroup"],
            &["watch", "--family", "ipx"],
            &["watch", "--state", "OPEN"],
            &["watch", "--duration", "forever"],
            &["watch", "--format", "xml"],
            &["watch", "--buffer-size", "1000"],
            &["watch", "--bogus"],
            &["watch", "--close-wait", "never"],
            &["watch", "--stuck", "CLOSE=1s"],
            &["watch", "--stuck", "FIN_WAIT2:1s"],
            &["watch", "--summary-interval", "0s"],
            &["watch", "--max-sockets", "10"],
            &["watch", "--record-max-size", "1GiB"],
            &["watch", "--record", "r", "--record-max-size", "1000"],
            &["frobnicate"],
            &[
                "watch", "--port=1", "--port=2", "--port=3", "--port=4", "--port=5", "--port=6",
                "--port=7", "--port=8", "--port=9",
            ],
        ] {
            let err = parse(args).expect_err(&format!("{args:?} must be refused"));
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        }
    }
}
