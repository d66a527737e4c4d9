//! `cargo xtask bench`: loopback connection churn with and without the tracer attached,
//! alternated round by round so that drift on the machine hits both sides alike.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Length of each measured churn.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Rounds, each one churn without and one with the tracer.
    #[arg(long, default_value_t = 8)]
    pub rounds: u32,
    /// Client threads opening connections.
    #[arg(long, default_value_t = 2)]
    pub clients: usize,
    /// Request/response exchanges (64 bytes each way) per connection before it closes:
    /// 0 measures pure connection churn, more puts the send/receive tracepoints to work.
    #[arg(long, default_value_t = 0)]
    pub requests: u32,
    /// Also measure each BPF program's own run time (kernel BPF statistics, which add a
    /// little cost of their own while on).
    #[arg(long)]
    pub probe_cost: bool,
    /// Also record everything to a file in the temporary directory (`--record`), and
    /// report its size per transition.
    #[arg(long)]
    pub record: bool,
    /// Measure a busy host instead: `--idle` sockets held open across processes, churn,
    /// and `--leak` sockets leaked into CLOSE_WAIT at once; prints what was lost, how late
    /// the leak's flags came, the tracer's CPU and RSS, and the recording's size.
    #[arg(long)]
    pub scale: bool,
    /// With `--scale`: idle sockets to hold open (two per loopback connection).
    #[arg(long, default_value_t = 200_000)]
    pub idle: usize,
    /// With `--scale`: sockets to leak at once.
    #[arg(long, default_value_t = 2000)]
    pub leak: usize,
    /// With `--scale`: the CLOSE_WAIT threshold, in seconds.
    #[arg(long, default_value_t = 5)]
    pub close_wait: u64,
    /// Extra arguments for `tracer watch` (after `--`), e.g. `-- --events`.
    #[arg(last = true)]
    pub tracer_args: Vec<String>,
}

/// What one traced churn measured.
struct Traced {
    connections: u64,
    events: u64,
    lost: u64,
    cpu_seconds: f64,
    max_rss_kib: u64,
    /// Per program name: total run time (ns) and runs, with `--probe-cost`.
    programs: BTreeMap<String, (u64, u64)>,
    /// With `--record`: the recording's size, and the entries it left out.
    recorded_bytes: u64,
    unrecorded: u64,
}

/// Runs the benchmark against the tracer binary at `tracer`.
pub fn run(tracer: &Path, args: &BenchArgs) -> anyhow::Result<()> {
    if args.scale {
        return crate::scale::run(tracer, args);
    }
    let period = Duration::from_secs(args.seconds);
    eprintln!(
        "xtask bench: {} rounds of {}s churn on 127.0.0.1 (own network namespace, no TIME_WAIT) with {} client threads and {} request(s) per connection, without and with `tracer watch --format json {}{}`",
        args.rounds,
        args.seconds,
        args.clients,
        args.requests,
        if args.record { "--record FILE " } else { "" },
        args.tracer_args.join(" ")
    );
    isolate_network()?;
    // Kept open for the whole run: the kernel counts BPF run time while the fd lives.
    let _stats = if args.probe_cost {
        Some(
            aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .context("enable BPF run-time statistics")?,
        )
    } else {
        None
    };
    churn(Duration::from_secs(1), args.clients, args.requests)?; // warm-up: listener backlog, caches
    let mut base = Vec::new();
    let mut traced = Vec::new();
    for round in 1..=args.rounds {
        // ABBA order: neither side always runs first, on a warmer or a more loaded machine.
        let (b, t) = if round % 2 == 1 {
            let b = churn(period, args.clients, args.requests)?;
            (b, traced_churn(tracer, period, args)?)
        } else {
            let t = traced_churn(tracer, period, args)?;
            (churn(period, args.clients, args.requests)?, t)
        };
        let secs = period.as_secs_f64();
        println!(
            "round {round}: without {:>7.0} conn/s | with {:>7.0} conn/s, {:>8.0} transitions/s delivered, {} lost, tracer CPU {:.0}%",
            b as f64 / secs,
            t.connections as f64 / secs,
            t.events as f64 / secs,
            t.lost,
            100.0 * t.cpu_seconds / secs
        );
        base.push(b);
        traced.push(t);
    }
    let secs = period.as_secs_f64() * args.rounds as f64;
    let base_total: u64 = base.iter().sum();
    let conn_total: u64 = traced.iter().map(|t| t.connections).sum();
    let events: u64 = traced.iter().map(|t| t.events).sum();
    let lost: u64 = traced.iter().map(|t| t.lost).sum();
    let cpu: f64 = traced.iter().map(|t| t.cpu_seconds).sum();
    let rss = traced.iter().map(|t| t.max_rss_kib).max().unwrap_or(0);
    println!(
        "without tracer: {:.0} connections/s",
        base_total as f64 / secs
    );
    println!(
        "with tracer:    {:.0} connections/s, {:.0} transitions/s delivered ({:.1} per connection), {lost} lost",
        conn_total as f64 / secs,
        events as f64 / secs,
        events as f64 / conn_total.max(1) as f64
    );
    println!(
        "tracer process: {:.0}% of one CPU, peak RSS {} KiB",
        100.0 * cpu / secs,
        rss
    );
    let mut programs: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for (name, (ns, runs)) in traced.iter().flat_map(|t| &t.programs) {
        let p = programs.entry(name).or_default();
        p.0 += ns;
        p.1 += runs;
    }
    if args.record {
        let bytes: u64 = traced.iter().map(|t| t.recorded_bytes).sum();
        let unrecorded: u64 = traced.iter().map(|t| t.unrecorded).sum();
        println!(
            "recording: {:.1} bytes per transition, {:.1} MiB/s, {unrecorded} entries left out",
            bytes as f64 / events.max(1) as f64,
            bytes as f64 / secs / f64::from(1 << 20)
        );
    }
    for (name, (ns, runs)) in programs {
        println!(
            "probe program {name}: {:.0} ns per run, {:.0} runs/s",
            ns as f64 / runs.max(1) as f64,
            runs as f64 / secs
        );
    }
    // Each round's pair ran back to back, so its ratio cancels slow drift on the machine;
    // the median resists the odd disturbed round.
    let mut ratios: Vec<f64> = base
        .iter()
        .zip(&traced)
        .map(|(b, t)| t.connections as f64 / (*b).max(1) as f64)
        .collect();
    ratios.sort_by(f64::total_cmp);
    let median = match ratios.len() {
        0 => 0.0,
        n if n % 2 == 1 => ratios[n / 2],
        n => (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0,
    };
    println!(
        "ratio (with / without): {:.3} median of rounds (min {:.3}, max {:.3}); {:.3} pooled",
        median,
        ratios.first().copied().unwrap_or(0.0),
        ratios.last().copied().unwrap_or(0.0),
        conn_total as f64 / base_total.max(1) as f64
    );
    Ok(())
}

/// Moves this process into a network namespace of its own, with loopback up and no
/// TIME_WAIT sockets (`tcp_max_tw_buckets=0`, a per-namespace setting). Otherwise the
/// host's TIME_WAIT table fills during a run and empties in waves 60 s later, and each
/// close costs more or less depending on which, swinging rounds by up to half. Nothing on
/// the host changes; the tracepoint is kernel-wide, so the tracer sees this namespace too.
pub fn isolate_network() -> anyhow::Result<()> {
    // SAFETY: unshare affects only this (still single-threaded) process's namespaces;
    // threads spawned later inherit the new one.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNET)");
    }
    crate::run_step(Command::new("ip").args(["link", "set", "lo", "up"]))?;
    std::fs::write("/proc/sys/net/ipv4/tcp_max_tw_buckets", "0")
        .context("disable TIME_WAIT in the bench namespace")?;
    Ok(())
}

/// Churns connections for `period` with the tracer attached and reads its totals.
fn traced_churn(tracer: &Path, period: Duration, args: &BenchArgs) -> anyhow::Result<Traced> {
    let record = std::env::temp_dir().join(format!("tracer-bench-{}.rec", std::process::id()));
    let mut command = Command::new(tracer);
    command.args(["watch", "--format", "json"]);
    if args.record {
        command.arg("--record").arg(&record);
        command.args(["--record-max-size", "off"]);
    }
    let mut child = command
        .args(&args.tracer_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", tracer.display()))?;
    let (lines, stop) = read_records(&mut child)?;
    lines
        .recv_timeout(Duration::from_secs(30))
        .context("the tracer printed no start record within 30s")?;
    let connections = churn(period, args.clients, args.requests)?;
    let (cpu_seconds, max_rss_kib) = process_usage(child.id());
    let programs = if args.probe_cost {
        program_stats(child.id())?
    } else {
        BTreeMap::new()
    };
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait()?;
    let stop = stop.join().expect("reader thread")?;
    if !status.success() {
        bail!("the tracer exited with {status}");
    }
    let field = |name: &str| {
        stop.get(name)
            .and_then(serde_json::Value::as_u64)
            .with_context(|| format!("stop record has no {name}"))
    };
    let recorded_bytes = if args.record {
        let len = std::fs::metadata(&record)
            .with_context(|| format!("no recording at {}", record.display()))?
            .len();
        std::fs::remove_file(&record)?;
        len
    } else {
        0
    };
    Ok(Traced {
        connections,
        events: field("events")?,
        lost: field("lost")?,
        cpu_seconds,
        max_rss_kib,
        programs,
        recorded_bytes,
        unrecorded: field("unrecorded")?,
    })
}

/// Run time (ns) and run count of each BPF program process `pid` holds, by program name,
/// from its fdinfo (the counts exist while BPF statistics are enabled).
fn program_stats(pid: u32) -> anyhow::Result<BTreeMap<String, (u64, u64)>> {
    let names: BTreeMap<u32, String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| (p.id(), p.name_as_str().unwrap_or("?").to_owned()))
        .collect();
    let mut stats = BTreeMap::new();
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {dir}"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue; // closed meanwhile
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(ns), Some(runs)) =
            (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
        {
            let name = names
                .get(&(id as u32))
                .cloned()
                .unwrap_or_else(|| format!("id {id}"));
            stats.insert(name, (ns, runs));
        }
    }
    Ok(stats)
}

/// Reads the tracer's stdout on a thread: the first line is announced on the channel, and
/// the thread returns the `stop` record (other lines, such as `--events` output, are read
/// and dropped so the tracer never blocks on a full pipe).
fn read_records(
    child: &mut Child,
) -> anyhow::Result<(
    mpsc::Receiver<()>,
    thread::JoinHandle<anyhow::Result<serde_json::Value>>,
)> {
    let stdout = child.stdout.take().context("tracer stdout")?;
    let (tx, rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let mut stop = None;
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            let _ = tx.send(());
            if line.starts_with("{\"type\":\"stop\"") {
                stop = Some(serde_json::from_str(&line)?);
            }
        }
        stop.context("the tracer ended without a stop record")
    });
    Ok((rx, handle))
}

/// CPU seconds used so far and peak RSS of process `pid`, from procfs.
pub fn process_usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (ticks as f64 / hz, rss)
}

/// Opens and closes loopback connections as fast as `clients` threads can for `period`,
/// with `requests` 64-byte exchanges on each; returns how many completed. The server
/// closes first, so TIME_WAIT stays on the listener's side and client ports never run out.
pub fn churn(period: Duration, clients: usize, requests: u32) -> anyhow::Result<u64> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind a loopback listener")?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    // One accepting thread per client, so the listener is never the bottleneck.
    let servers: Vec<_> = (0..clients)
        .map(|_| {
            let listener = listener.try_clone()?;
            let stop = stop.clone();
            Ok(thread::spawn(move || {
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((mut conn, _)) = listener.accept() {
                        if stop.load(Ordering::Relaxed) {
                            break; // a waker, which sends nothing
                        }
                        for _ in 0..requests {
                            if conn
                                .read_exact(&mut buf)
                                .and_then(|()| conn.write_all(&buf))
                                .is_err()
                            {
                                break;
                            }
                        }
                    }
                }
            }))
        })
        .collect::<std::io::Result<_>>()?;
    let deadline = Instant::now() + period;
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let done = done.clone();
            thread::spawn(move || -> std::io::Result<()> {
                let mut buf = [0u8; 64];
                while Instant::now() < deadline {
                    let mut conn = TcpStream::connect(addr)?;
                    for _ in 0..requests {
                        conn.write_all(&buf)?;
                        conn.read_exact(&mut buf)?;
                    }
                    // Wait for the server's FIN, then close our side.
                    while conn.read(&mut buf)? > 0 {}
                    let _ = conn.shutdown(Shutdown::Both);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    let mut result = Ok(());
    for w in workers {
        if let Err(e) = w.join().expect("client thread") {
            result = Err(e);
        }
    }
    stop.store(true, Ordering::Relaxed);
    // One connection per accepting thread wakes each to see `stop` (each exits after one).
    let wakers: Vec<_> = servers
        .iter()
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    for server in servers {
        server.join().expect("server thread");
    }
    drop(wakers);
    result.with_context(|| format!("churning connections to {addr}"))?;
    Ok(done.load(Ordering::Relaxed))
}
