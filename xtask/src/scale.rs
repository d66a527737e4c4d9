//! `cargo xtask bench --scale`: a busy host. Many idle sockets held across processes,
//! connection churn as fast as the machine goes, and then a leak of many sockets at once;
//! it measures what the tracer lost, how late each flag of the leak came after its
//! threshold, and what the tracer cost.
//!
//! The sockets are held by child processes (`cargo xtask hold`, this binary again): one
//! process may hold only as many descriptors as its hard `RLIMIT_NOFILE`, which the
//! benchmark cannot raise without `CAP_SYS_RESOURCE`.

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::bench::{churn, isolate_network, process_usage, BenchArgs};

/// What the leaking process is told to do, and says.
const LEAK_NOW: &str = "leak";
/// Descriptors a holder keeps for itself beside its sockets.
const SPARE_FDS: u64 = 64;

/// Options of the hidden `cargo xtask hold`.
#[derive(Debug, clap::Args)]
pub struct HoldArgs {
    /// Loopback connections to open and keep (two sockets each).
    pub connections: usize,
    /// Close the client ends when stdin says `leak`, keeping the server ends: each then
    /// sits in CLOSE_WAIT.
    #[arg(long)]
    pub leak: bool,
}

/// `cargo xtask hold`: opens the connections, says `ready <port>`, and holds them until
/// stdin closes, as it does when the benchmark ends however it ends (with `--leak`,
/// closes the client ends first when told, and says `leaked`).
pub fn hold(args: &HoldArgs) -> anyhow::Result<()> {
    raise_fd_limit()?;
    let listener = TcpListener::bind("127.0.0.1:0").context("bind a loopback listener")?;
    let addr = listener.local_addr()?;
    let mut clients = Vec::with_capacity(args.connections);
    let mut servers = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        clients.push(TcpStream::connect(addr).context("connect")?);
        servers.push(listener.accept().context("accept")?.0);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {}", addr.port())?;
    out.flush()?;
    let mut stdin = BufReader::new(std::io::stdin().lock());
    if args.leak {
        let mut line = String::new();
        stdin.read_line(&mut line)?;
        if line.trim() == LEAK_NOW {
            clients.clear();
            writeln!(out, "leaked")?;
            out.flush()?;
        }
    }
    std::io::copy(&mut stdin, &mut std::io::sink())?;
    drop(servers);
    Ok(())
}

/// Sets the soft descriptor limit to the hard one.
fn raise_fd_limit() -> anyhow::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
        }
    }
    Ok(limit.rlim_max)
}

/// A `cargo xtask hold` child.
struct Holder {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Holder {
    fn spawn(connections: usize, leak: bool) -> anyhow::Result<Holder> {
        let mut cmd = Command::new(std::env::current_exe().context("this executable")?);
        cmd.arg("hold").arg(connections.to_string());
        if leak {
            cmd.arg("--leak");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("start a socket holder")?;
        let stdin = child.stdin.take().context("holder stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("holder stdout")?);
        Ok(Holder {
            child,
            stdin,
            stdout,
        })
    }

    /// The holder's next line.
    fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        if line.is_empty() {
            bail!("a socket holder ended early (its stderr is above)");
        }
        Ok(line.trim().to_owned())
    }

    /// Waits for `ready <port>`; returns the port.
    fn ready(&mut self) -> anyhow::Result<u16> {
        let line = self.line()?;
        line.strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("a socket holder said {line:?}, not `ready <port>`"))
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the tracer's stdout said, as the reader thread saw it.
#[derive(Default)]
struct Seen {
    /// `(sport, owner pid, delay)` of each `stuck` record: how long after its threshold it
    /// arrived (its `time` is when the socket crossed it).
    stuck: Vec<(u64, Option<u64>, Duration)>,
    stop: Option<Value>,
}

/// Runs the busy-host benchmark against the tracer at `tracer`.
pub fn run(tracer: &std::path::Path, args: &BenchArgs) -> anyhow::Result<()> {
    isolate_network()?;
    let hard = raise_fd_limit()?;
    let per_process = ((hard.saturating_sub(SPARE_FDS)) / 2).max(1) as usize;
    let connections = args.idle.div_ceil(2);
    let processes = connections.div_ceil(per_process);
    eprintln!(
        "xtask bench --scale: {} idle sockets in {processes} processes ({} fds each at most), churn with {} client threads, then {} sockets leaked at once into CLOSE_WAIT (threshold {}s)",
        connections * 2,
        per_process * 2,
        args.clients,
        args.leak,
        args.close_wait
    );
    let opening = Instant::now();
    let mut idle = Vec::new();
    let mut left = connections;
    while left > 0 {
        let n = left.min(per_process);
        idle.push(Holder::spawn(n, false)?);
        left -= n;
    }
    for h in &mut idle {
        h.ready()?;
    }
    let mut leaker = Holder::spawn(args.leak, true)?;
    let leak_port = leaker.ready()?;
    eprintln!(
        "xtask bench --scale: sockets open in {:.1}s",
        opening.elapsed().as_secs_f64()
    );

    let record = std::env::temp_dir().join(format!("tracer-scale-{}.rec", std::process::id()));
    let budget = 64u64 << 20;
    let started = Instant::now();
    let mut child = Command::new(tracer)
        .args(["watch", "--format", "json", "--close-wait"])
        .arg(format!("{}s", args.close_wait))
        .arg("--record")
        .arg(&record)
        .args(["--record-max-size", &budget.to_string()])
        .args(&args.tracer_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", tracer.display()))?;
    let (started_rx, reader) = read_stuck(&mut child)?;
    let existing = started_rx
        .recv_timeout(Duration::from_secs(120))
        .context("the tracer printed no start record within 120s")?;
    let startup = started.elapsed();
    // Start-up goes on after the start record: the lookup thread reads every process's
    // descriptors once (the index of socket holders), which flags would otherwise wait
    // for. Measured here until the tracer is idle, apart from the steady state after.
    let settled = settle(child.id())?;
    let (cpu_before, _) = process_usage(child.id());
    let churn_started = Instant::now();

    // Churn from before the leak until well after its threshold.
    let warm = Duration::from_secs(3);
    let period = warm + Duration::from_secs(args.close_wait + 5);
    let clients = args.clients;
    let churning = thread::spawn(move || churn(period, clients, 0));
    thread::sleep(warm);
    writeln!(leaker.stdin, "{LEAK_NOW}")?;
    let leaked = leaker.line()?;
    if leaked != "leaked" {
        bail!("the leaking holder said {leaked:?}, not `leaked`");
    }
    let churned = churning.join().expect("churn thread")?;
    let (cpu_seconds, max_rss_kib) = process_usage(child.id());
    let churned_for = churn_started.elapsed();
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait()?;
    let seen = reader.join().expect("reader thread")?;
    if !status.success() {
        bail!("the tracer exited with {status}");
    }
    let stop = seen.stop.context("the tracer printed no stop record")?;
    let field = |name: &str| stop.get(name).and_then(Value::as_u64).unwrap_or(0);
    let recorded: u64 = (0..4)
        .map(|i| match i {
            0 => record.clone(),
            i => record.with_extension(format!("rec.{i}")),
        })
        .filter_map(|p| {
            let len = std::fs::metadata(&p).ok()?.len();
            std::fs::remove_file(&p).ok()?;
            Some(len)
        })
        .sum();

    let leaker_pid = u64::from(leaker.child.id());
    let mut delays: Vec<Duration> = seen
        .stuck
        .iter()
        .filter(|(port, ..)| *port == u64::from(leak_port))
        .map(|&(.., d)| d)
        .collect();
    delays.sort();
    let owned = seen
        .stuck
        .iter()
        .filter(|(port, pid, _)| *port == u64::from(leak_port) && *pid == Some(leaker_pid))
        .count();
    let ms = |d: Option<&Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    println!(
        "idle sockets: {} in {processes} processes; tracer start: {:.2}s to the start record ({existing} sockets open at start), idle {:.1}s later ({:.1} CPU seconds in all)",
        connections * 2,
        startup.as_secs_f64(),
        settled.as_secs_f64(),
        cpu_before
    );
    println!(
        "churn: {:.0} connections/s; tracer: {} transitions, {} lost",
        churned as f64 / period.as_secs_f64(),
        field("events"),
        field("lost")
    );
    println!(
        "leak: {} of {} flagged ({owned} naming the leaking process); flag delay after threshold p50 {:.0} ms, max {:.0} ms",
        delays.len(),
        args.leak,
        ms(delays.get(delays.len() / 2)),
        ms(delays.last())
    );
    println!(
        "tracer process: {:.0}% of one CPU from the churn's start to its end ({:.1}s), peak RSS {} KiB",
        100.0 * (cpu_seconds - cpu_before) / churned_for.as_secs_f64(),
        churned_for.as_secs_f64(),
        max_rss_kib
    );
    println!(
        "recording: {:.1} MiB on disk (budget {} MiB), {} entries left out",
        recorded as f64 / f64::from(1 << 20),
        budget >> 20,
        field("unrecorded")
    );
    drop(leaker);
    drop(idle);
    Ok(())
}

/// Waits until process `pid` has used no CPU for a while (a minute at most); returns how
/// long that took.
fn settle(pid: u32) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut last = process_usage(pid).0;
    let mut quiet = 0;
    while quiet < 4 {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the tracer was still busy a minute after its start record");
        }
        thread::sleep(Duration::from_millis(250));
        let now = process_usage(pid).0;
        quiet = if now - last < 0.02 { quiet + 1 } else { 0 };
        last = now;
    }
    Ok(start.elapsed())
}

/// Reads the tracer's stdout on a thread: the start record's `existing_sockets` is
/// announced on the channel; the thread returns every `stuck` record with how long after
/// its `time` it arrived, and the `stop` record.
fn read_stuck(
    child: &mut Child,
) -> anyhow::Result<(
    mpsc::Receiver<u64>,
    thread::JoinHandle<anyhow::Result<Seen>>,
)> {
    let stdout = child.stdout.take().context("tracer stdout")?;
    let (tx, rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let mut seen = Seen::default();
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            let arrived = SystemTime::now().duration_since(UNIX_EPOCH)?;
            let record: Value = serde_json::from_str(&line)?;
            match record.get("type").and_then(Value::as_str) {
                Some("start") => {
                    let _ = tx.send(
                        record
                            .get("existing_sockets")
                            .and_then(Value::as_u64)
                            .unwrap_or(0),
                    );
                }
                Some("stuck") => {
                    let time = record
                        .get("time")
                        .and_then(Value::as_str)
                        .and_then(rfc3339)
                        .context("a stuck record without a readable time")?;
                    let sport = record.get("sport").and_then(Value::as_u64).unwrap_or(0);
                    let pid = record.pointer("/owner/pid").and_then(Value::as_u64);
                    seen.stuck.push((sport, pid, arrived.saturating_sub(time)));
                }
                Some("stop") => seen.stop = Some(record),
                _ => {}
            }
        }
        Ok(seen)
    });
    Ok((rx, handle))
}

/// Time since the epoch of an RFC 3339 UTC timestamp as the tracer writes them
/// (`2026-11-26T17:36:27.497796406Z`).
fn rfc3339(s: &str) -> Option<Duration> {
    let (date, time) = s.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<u64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    let nanos: u32 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(Duration::new(
        days * 86_400 + h * 3600 + min * 60 + sec,
        nanos,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_tracers_timestamps() {
        assert_eq!(
            rfc3339("1970-01-02T00:00:01.5Z"),
            Some(Duration::new(86_401, 500_000_000))
        );
        assert_eq!(
            rfc3339("2026-11-26T17:36:27.497796406Z"),
            Some(Duration::new(1_795_714_587, 497_796_406))
        );
        assert_eq!(rfc3339("2026-11-26 17:36:27Z"), None);
    }
}
