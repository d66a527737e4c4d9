//! `cargo xtask bench`: loopback connection churn, untraced and with each contender
//! attached, side by side in one run: the bench's own minimal probes (the floor, counting,
//! and the streaming floor, a record per transition through a ring buffer), `tracer watch`
//! in each of its modes, and bpftrace when it is installed. Every traced
//! churn sits between two untraced ones and is measured against their mean, so drift on the
//! machine hits both sides alike; the order of the contenders turns each round.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read, Seek, SeekFrom, Write},
    net::{Shutdown, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, TracePoint},
    Btf, Ebpf,
};

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Length of each measured churn, in seconds.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Rounds; each churns once untraced before every contender, and once at its end.
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// Client threads opening connections.
    #[arg(long, default_value_t = 2)]
    pub clients: usize,
    /// Request/response exchanges (64 bytes each way) per connection before it closes:
    /// 0 measures pure connection churn, more puts the send/receive probes to work.
    #[arg(long, default_value_t = 0)]
    pub requests: u32,
    /// The contenders to measure, comma-separated (default: all; bpftrace's only when it is
    /// installed).
    #[arg(long, value_delimiter = ',', value_enum)]
    pub only: Vec<Contender>,
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
    /// Extra arguments for every `tracer watch` (after `--`), e.g. `-- --port 1`.
    #[arg(last = true)]
    pub tracer_args: Vec<String>,
}

/// What is attached during a traced churn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Contender {
    /// The bench's own probe that only counts transitions (`tracer-ebpf/src/floor.rs`).
    Floor,
    /// The bench's own probe that streams a record per transition through a ring buffer,
    /// which the bench drains.
    FloorRing,
    /// `tracer watch`: every transition aggregated, nothing printed per transition.
    Watch,
    /// `tracer watch --events --format json`, stdout to a file.
    EventsJson,
    /// `tracer watch --events` (text), stdout to a file.
    EventsText,
    /// `tracer watch --record FILE`.
    Record,
    /// bpftrace counting transitions in a kernel map.
    BpftraceCount,
    /// bpftrace printing every transition, stdout to a file.
    BpftracePrint,
}

impl Contender {
    const ALL: [Contender; 8] = [
        Contender::Floor,
        Contender::FloorRing,
        Contender::Watch,
        Contender::EventsJson,
        Contender::EventsText,
        Contender::Record,
        Contender::BpftraceCount,
        Contender::BpftracePrint,
    ];

    /// The contender's row in the table.
    fn label(self) -> &'static str {
        match self {
            Contender::Floor => "own minimal counting probe (the floor)",
            Contender::FloorRing => "own minimal streaming probe (ring floor)",
            Contender::Watch => "`tracer watch`",
            Contender::EventsJson => "`tracer watch --events --format json` > file",
            Contender::EventsText => "`tracer watch --events` (text) > file",
            Contender::Record => "`tracer watch --record FILE`",
            Contender::BpftraceCount => "bpftrace counting in the kernel",
            Contender::BpftracePrint => "bpftrace printf > file",
        }
    }

    fn is_bpftrace(self) -> bool {
        matches!(self, Contender::BpftraceCount | Contender::BpftracePrint)
    }
}

/// bpftrace programs on the same tracepoint: a count, and a line per transition with about
/// what `--events` prints.
const BPFTRACE_COUNT: &str = "tracepoint:sock:inet_sock_set_state { @transitions = count(); }";
const BPFTRACE_PRINT: &str = "tracepoint:sock:inet_sock_set_state { printf(\"%llu %d %s %d %d %d %d %d\\n\", nsecs, pid, comm, args->family, args->sport, args->dport, args->oldstate, args->newstate); }";

/// Per BPF program name: total run time (ns) and runs.
type ProgramStats = BTreeMap<String, (u64, u64)>;

/// What one traced churn measured.
struct Traced {
    /// Connections completed while it was attached.
    connections: u64,
    /// Transitions the contender saw (delivered to userspace, or counted in the kernel).
    events: Option<u64>,
    lost: Option<u64>,
    /// Entries a recording left out (the disk fell behind); none for other contenders.
    unrecorded: u64,
    /// CPU seconds its userspace process used during the churn.
    cpu_seconds: Option<f64>,
    /// Per BPF program name: run time (ns) and runs, when statistics are on.
    programs: ProgramStats,
}

/// Runs the benchmark against the tracer binary at `tracer`.
pub fn run(tracer: &Path, args: &BenchArgs) -> anyhow::Result<()> {
    if args.scale {
        return crate::scale::run(tracer, args);
    }
    let bpftrace = crate::bpf_toolchain::find_program("bpftrace");
    let mut contenders: Vec<Contender> = if args.only.is_empty() {
        Contender::ALL.to_vec()
    } else {
        args.only.clone()
    };
    contenders.sort();
    contenders.dedup();
    if bpftrace.is_none() && contenders.iter().any(|c| c.is_bpftrace()) {
        if !args.only.is_empty() {
            bail!("bpftrace is not installed (apt install bpftrace), and --only asks for it");
        }
        eprintln!("xtask bench: bpftrace is not installed, so its rows are left out");
        contenders.retain(|c| !c.is_bpftrace());
    }
    let bench = Bench {
        tracer,
        floor: crate::workspace()
            .join("target/bpf")
            .join(crate::bpf_toolchain::BPF_TARGET)
            .join("release/floor-probe"),
        bpftrace: bpftrace.unwrap_or_default(),
        args,
        period: Duration::from_secs(args.seconds),
        scratch: std::env::temp_dir().join(format!("tracer-bench-{}", std::process::id())),
    };
    let machine = machine();
    eprintln!(
        "xtask bench: {machine}; {} rounds of {} s churn on 127.0.0.1 (own network namespace, no TIME_WAIT), {} client threads, {} request(s) per connection; each contender between two untraced churns",
        args.rounds, args.seconds, args.clients, args.requests
    );
    isolate_network()?;
    std::fs::create_dir_all(&bench.scratch)
        .with_context(|| format!("create {}", bench.scratch.display()))?;
    let result = bench.measure(&contenders, &machine);
    let _ = std::fs::remove_dir_all(&bench.scratch);
    result
}

/// One run of the bench.
struct Bench<'a> {
    tracer: &'a Path,
    floor: PathBuf,
    bpftrace: PathBuf,
    args: &'a BenchArgs,
    period: Duration,
    /// Where the contenders' output and recordings go, removed at the end.
    scratch: PathBuf,
}

impl Bench<'_> {
    fn measure(&self, contenders: &[Contender], machine: &str) -> anyhow::Result<()> {
        self.churn()?; // warm-up: listener backlog, caches
        let mut untraced = Vec::new();
        let mut ratios: BTreeMap<Contender, Vec<f64>> = BTreeMap::new();
        let mut totals: BTreeMap<Contender, Vec<Traced>> = BTreeMap::new();
        for round in 0..self.args.rounds as usize {
            let mut before = self.churn()?;
            untraced.push(before);
            let n = contenders.len();
            for i in 0..n {
                let contender = contenders[(round + i) % n];
                let traced = self.traced(contender, false)?;
                let after = self.churn()?;
                untraced.push(after);
                let ratio = traced.connections as f64 / ((before + after) as f64 / 2.0).max(1.0);
                eprintln!(
                    "round {}: {:<46} {:.3} ({} against {} and {} connections)",
                    round + 1,
                    contender.label(),
                    ratio,
                    traced.connections,
                    before,
                    after
                );
                ratios.entry(contender).or_default().push(ratio);
                totals.entry(contender).or_default().push(traced);
                before = after;
            }
        }
        // The kernel's BPF run-time statistics cost a little themselves, so the programs'
        // own cost is read in churns of its own, after the ratios.
        let mut kernel: BTreeMap<Contender, (u64, u64)> = BTreeMap::new();
        {
            let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .context("enable BPF run-time statistics")?;
            for &contender in contenders {
                let traced = self.traced(contender, true)?;
                let transition = traced
                    .programs
                    .iter()
                    .filter(|(name, _)| is_transition_program(name))
                    .fold((0, 0), |acc, (_, &(ns, runs))| (acc.0 + ns, acc.1 + runs));
                for (name, (ns, runs)) in &traced.programs {
                    eprintln!(
                        "kernel: {:<46} program {name}: {:.0} ns per run, {runs} runs",
                        contender.label(),
                        *ns as f64 / (*runs).max(1) as f64
                    );
                }
                kernel.insert(contender, transition);
            }
        }
        let secs = self.period.as_secs_f64();
        println!(
            "{machine}; {} rounds of {} s; untraced: {:.0} connections/s (median), about {} transitions each",
            self.args.rounds,
            self.args.seconds,
            median(untraced.iter().map(|&u| u as f64 / secs).collect()),
            if self.args.requests == 0 { "10".to_owned() } else { format!("10 and {} sends and receives", 2 * self.args.requests) }
        );
        println!();
        println!("| attached | throughput vs untraced, median (min-max) | transitions/s | lost | userspace ns/transition | kernel ns/transition |");
        println!("| --- | --- | --- | --- | --- | --- |");
        for &contender in contenders {
            let mut r = ratios.remove(&contender).unwrap_or_default();
            r.sort_by(f64::total_cmp);
            let runs = totals.remove(&contender).unwrap_or_default();
            let events: Option<u64> = runs.iter().map(|t| t.events).sum();
            let lost: Option<u64> = runs.iter().map(|t| t.lost).sum();
            let unrecorded: u64 = runs.iter().map(|t| t.unrecorded).sum();
            let cpu: Option<f64> = runs.iter().map(|t| t.cpu_seconds).sum();
            let user = match (cpu, events) {
                (Some(cpu), Some(events)) if events > 0 => {
                    format!("{:.0}", cpu * 1e9 / events as f64)
                }
                _ => "-".to_owned(),
            };
            let (ns, calls) = kernel.get(&contender).copied().unwrap_or_default();
            let kernel = if calls > 0 {
                format!("{:.0}", ns as f64 / calls as f64)
            } else {
                "-".to_owned()
            };
            println!(
                "| {} | {:.3} ({:.3}-{:.3}) | {} | {} | {} | {} |",
                contender.label(),
                median(r.clone()),
                r.first().copied().unwrap_or(0.0),
                r.last().copied().unwrap_or(0.0),
                events.map_or("-".to_owned(), |e| format!(
                    "{:.0}k",
                    e as f64 / (secs * runs.len().max(1) as f64) / 1000.0
                )),
                match (lost, unrecorded) {
                    (None, _) => "-".to_owned(),
                    (Some(l), 0) => l.to_string(),
                    (Some(l), u) => format!("{l} (and {u} not recorded)"),
                },
                user,
                kernel
            );
        }
        Ok(())
    }

    /// One untraced churn: connections completed.
    fn churn(&self) -> anyhow::Result<u64> {
        churn(self.period, self.args.clients, self.args.requests)
    }

    /// One churn with `contender` attached; with `stats`, also its programs' run time.
    fn traced(&self, contender: Contender, stats: bool) -> anyhow::Result<Traced> {
        match contender {
            Contender::Floor => self.floor(stats, false),
            Contender::FloorRing => self.floor(stats, true),
            Contender::BpftraceCount | Contender::BpftracePrint => self.bpftrace(contender, stats),
            _ => self.watch(contender, stats),
        }
    }

    /// A floor: the bench's own counting probe, or with `streaming` its streaming probe,
    /// drained here by a thread as the tracer's loop drains its ring (without a look at the
    /// records). Loaded here, on the BTF-enabled tracepoint as the tracer prefers (the
    /// classic one where the kernel refuses it).
    fn floor(&self, stats: bool, streaming: bool) -> anyhow::Result<Traced> {
        let (btf_program, classic_program) = match streaming {
            false => ("floor_btf", "floor_tracepoint"),
            true => ("floor_ring_btf", "floor_ring_tracepoint"),
        };
        let mut ebpf = Ebpf::load_file(&self.floor).with_context(|| {
            format!(
                "load the floor probe {} (built with the tracer)",
                self.floor.display()
            )
        })?;
        let btf = Btf::from_sys_fs().ok();
        let on_btf = btf.as_ref().is_some_and(|btf| {
            let Some(program) = ebpf.program_mut(btf_program) else {
                return false;
            };
            let Ok(program): Result<&mut BtfTracePoint, _> = program.try_into() else {
                return false;
            };
            program.load("inet_sock_set_state", btf).is_ok() && program.attach().is_ok()
        });
        if !on_btf {
            let program: &mut TracePoint = ebpf
                .program_mut(classic_program)
                .with_context(|| format!("the floor probe has no {classic_program}"))?
                .try_into()?;
            program.load().context("load the floor probe")?;
            program
                .attach("sock", "inet_sock_set_state")
                .context("attach the floor probe")?;
        }
        let drainer = match streaming {
            false => None,
            true => {
                let ring = ebpf
                    .take_map("RING")
                    .context("the floor probe has no RING")?;
                Some(Drainer::start(RingBuf::try_from(ring)?))
            }
        };
        let connections = self.churn()?;
        let programs = if stats {
            program_stats(std::process::id())?
        } else {
            BTreeMap::new()
        };
        let per_cpu_sum = |name: &str| -> anyhow::Result<u64> {
            let map = ebpf
                .map(name)
                .with_context(|| format!("the floor probe has no {name}"))?;
            Ok(PerCpuArray::<_, u64>::try_from(map)?
                .get(&0, 0)?
                .iter()
                .sum())
        };
        let (events, lost, cpu_seconds) = match drainer {
            None => (per_cpu_sum("COUNT")?, 0, None),
            Some(drainer) => {
                let (records, cpu_seconds) = drainer.stop();
                (records, per_cpu_sum("LOST")?, Some(cpu_seconds))
            }
        };
        Ok(Traced {
            connections,
            events: Some(events),
            lost: Some(lost),
            unrecorded: 0,
            cpu_seconds,
            programs,
        })
    }

    /// `tracer watch` in the mode `contender` names.
    fn watch(&self, contender: Contender, stats: bool) -> anyhow::Result<Traced> {
        let mut command = Command::new(self.tracer);
        command.arg("watch");
        let json = contender != Contender::EventsText;
        if json {
            command.args(["--format", "json"]);
        }
        if matches!(contender, Contender::EventsJson | Contender::EventsText) {
            command.arg("--events");
        }
        if contender == Contender::Record {
            command
                .arg("--record")
                .arg(self.scratch.join("recording"))
                .args(["--record-max-size", "off"]);
        }
        command.args(&self.args.tracer_args);
        let mut attached = Attached::spawn(&mut command, &self.scratch, |out, err| {
            if json {
                out.contains('\n')
            } else {
                err.contains(": attached to ")
            }
        })?;
        let (connections, cpu_seconds, programs) = attached.churn(self, stats)?;
        let (events, lost, unrecorded) = if json {
            let stop = attached.last_line()?;
            let stop: serde_json::Value = serde_json::from_str(&stop).with_context(|| {
                format!("the tracer's last line is not its stop record: {stop}")
            })?;
            let field = |name: &str| stop.get(name).and_then(serde_json::Value::as_u64);
            (
                field("events"),
                field("lost"),
                field("unrecorded").unwrap_or(0),
            )
        } else {
            let (events, lost) = stop_line_totals(&attached.stderr()?);
            (events, lost, 0)
        };
        if events.is_none() {
            bail!(
                "the tracer said no totals at its stop: {}",
                attached.stderr()?
            );
        }
        let _ = std::fs::remove_file(self.scratch.join("recording"));
        Ok(Traced {
            connections,
            events,
            lost,
            unrecorded,
            cpu_seconds: Some(cpu_seconds),
            programs,
        })
    }

    /// bpftrace counting, or printing every transition to a file.
    fn bpftrace(&self, contender: Contender, stats: bool) -> anyhow::Result<Traced> {
        let program = if contender == Contender::BpftraceCount {
            BPFTRACE_COUNT
        } else {
            BPFTRACE_PRINT
        };
        let before: Vec<u32> = loaded_program_ids();
        let mut command = Command::new(&self.bpftrace);
        command.args(["-e", program]);
        // bpftrace says it attached only into its buffered stdout: a new BPF program on the
        // machine is the sign, and attaching follows loading at once.
        let mut attached = Attached::spawn(&mut command, &self.scratch, |_, _| {
            loaded_program_ids().iter().any(|id| !before.contains(id))
        })?;
        thread::sleep(Duration::from_millis(200));
        let (connections, cpu_seconds, programs) = attached.churn(self, stats)?;
        let out = std::fs::read(&attached.out)?;
        let lost = stop_line_number(&attached.stderr()?, "Lost").unwrap_or(0);
        let events = if contender == Contender::BpftraceCount {
            let text = String::from_utf8_lossy(&out);
            text.lines()
                .find_map(|l| l.strip_prefix("@transitions: ")?.trim().parse().ok())
        } else {
            Some(out.iter().filter(|&&b| b == b'\n').count() as u64)
        };
        Ok(Traced {
            connections,
            events,
            lost: Some(lost),
            unrecorded: 0,
            cpu_seconds: Some(cpu_seconds),
            programs,
        })
    }
}

/// A contender's process, its stdout and stderr in files.
struct Attached {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Attached {
    /// Starts `command` and waits (30 s at most) until `ready(stdout, stderr)` says it is
    /// attached.
    fn spawn(
        command: &mut Command,
        scratch: &Path,
        ready: impl Fn(&str, &str) -> bool,
    ) -> anyhow::Result<Attached> {
        let out = scratch.join("stdout");
        let err = scratch.join("stderr");
        let child = command
            .stdout(File::create(&out)?)
            .stderr(File::create(&err)?)
            .spawn()
            .with_context(|| format!("cannot start {}", command.get_program().to_string_lossy()))?;
        let mut attached = Attached { child, out, err };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let head = read_head(&attached.out);
            let err = std::fs::read_to_string(&attached.err).unwrap_or_default();
            if ready(&head, &err) {
                return Ok(attached);
            }
            if let Some(status) = attached.child.try_wait()? {
                bail!(
                    "{} ended ({status}) before it attached: {err}",
                    command.get_program().to_string_lossy()
                );
            }
            if Instant::now() > deadline {
                attached.stop()?;
                bail!(
                    "{} did not attach within 30 s: {err}",
                    command.get_program().to_string_lossy()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Churns once while attached, then stops the process: connections completed, the
    /// process's CPU seconds meanwhile, and with `stats` its BPF programs' run time.
    fn churn(
        &mut self,
        bench: &Bench<'_>,
        stats: bool,
    ) -> anyhow::Result<(u64, f64, ProgramStats)> {
        let pid = self.child.id();
        let cpu_before = process_usage(pid).0;
        let connections = bench.churn()?;
        let cpu_seconds = process_usage(pid).0 - cpu_before;
        let programs = if stats {
            program_stats(pid)?
        } else {
            BTreeMap::new()
        };
        self.stop()?;
        Ok((connections, cpu_seconds, programs))
    }

    /// Stops the process with SIGINT, as Ctrl-C does, and waits for it.
    fn stop(&mut self) -> anyhow::Result<()> {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait()?;
        if !status.success() && status.code() != Some(130) {
            bail!("the contender exited with {status}: {}", self.stderr()?);
        }
        Ok(())
    }

    fn stderr(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(&self.err)?)
    }

    /// The last line of stdout (read from its end: `--events` writes hundreds of MiB).
    fn last_line(&self) -> anyhow::Result<String> {
        let mut file = File::open(&self.out)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(64 << 10)))?;
        let mut tail = String::new();
        file.read_to_string(&mut tail)?;
        Ok(tail.lines().last().unwrap_or_default().to_owned())
    }
}

/// The first KiB of a file, as text.
fn read_head(path: &Path) -> String {
    let mut buf = [0u8; 1024];
    let n = File::open(path)
        .and_then(|mut f| f.read(&mut buf))
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Transitions and lost events from the text stop line ("stopped after 3.0s: 560123
/// transitions, 0 lost").
fn stop_line_totals(stderr: &str) -> (Option<u64>, Option<u64>) {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.contains("stopped after"))
        .unwrap_or_default();
    (
        stop_line_number(line, "transitions"),
        stop_line_number(line, "lost"),
    )
}

/// The number just before the word `word` in `text`, or just after it ("Lost 12 events").
fn stop_line_number(text: &str, word: &str) -> Option<u64> {
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .filter(|w| !w.is_empty())
        .collect();
    words.iter().enumerate().find_map(|(i, w)| {
        if *w != word {
            return None;
        }
        let before = i.checked_sub(1).and_then(|j| words[j].parse().ok());
        before.or_else(|| words.get(i + 1)?.parse().ok())
    })
}

/// The thread that drains the streaming floor's ring, as the tracer's loop does: every
/// record it finds, then a short sleep (the probe wakes no one), without a look into the
/// records, so that it costs the least any reader can.
struct Drainer {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<(u64, f64)>,
}

impl Drainer {
    /// How long the thread sleeps once the ring is empty: the tracer's poll period. The
    /// ring has room for about 170,000 records, most of a second of the churn's transitions.
    /// (Naps of 1, 20 and 100 ms measured the same in the kernel.)
    const NAP: Duration = Duration::from_millis(20);

    fn start(mut ring: RingBuf<MapData>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut records = 0u64;
            loop {
                // Read after the last drain, so that records committed before the stop are
                // counted.
                let last = stopping.load(Ordering::Acquire);
                while ring.next().is_some() {
                    records += 1;
                }
                if last {
                    break (records, thread_cpu_seconds());
                }
                thread::sleep(Self::NAP);
            }
        });
        Drainer { stop, thread }
    }

    /// Stops the thread: the records it read and the CPU seconds it used.
    fn stop(self) -> (u64, f64) {
        self.stop.store(true, Ordering::Release);
        self.thread.join().unwrap_or((0, 0.0))
    }
}

/// CPU seconds the calling thread has used.
fn thread_cpu_seconds() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into `t`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Whether a BPF program, by name, is a transition program (the tracer's two, the floor's
/// two, bpftrace's), rather than a send/receive one.
fn is_transition_program(name: &str) -> bool {
    !name.starts_with("sock_recv") && !name.starts_with("sock_send") && !name.starts_with("tcp_")
}

/// The ids of the BPF programs loaded on the machine.
fn loaded_program_ids() -> Vec<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect()
}

/// The median of `values` (0 when empty).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The date, kernel, CPU model and count, for the table's caption.
fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{date}, kernel {}, {model}, {cpus} CPUs", kernel.trim())
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

/// Run time (ns) and run count of each BPF program process `pid` holds, by program name,
/// from its fdinfo (the counts exist while BPF statistics are enabled).
fn program_stats(pid: u32) -> anyhow::Result<ProgramStats> {
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
