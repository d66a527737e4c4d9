//! A burst: 2,000 sockets leaked at once by one process. In text the alerts of one group
//! fold after the first few into one `N more sockets` line per batch, for the flags and for
//! the resolutions; JSON still has one record per socket, for machines that count.

use std::{
    cell::Cell,
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, TcpStream},
    process::Child,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use integration_tests::{allow_fds, privileged, spawn_tracer, wait_exit, Leaky, Tracer, DEADLINE};
use serde_json::Value;

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const LEAKS: usize = 2000;
/// Lines of text a batch of the burst may take (a few), up to its `N more sockets` line.
const MOST_PER_BATCH: usize = 50;
/// Lines of text the burst may take in all, each way (flags, resolutions): how many
/// batches it comes in depends on the machine (an emulated one spreads it over more).
const MOST_LINES: usize = LEAKS / 4;

/// A running `tracer watch` in text, and its lines of stdout so far.
struct TextTracer {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl TextTracer {
    /// Starts `tracer ARGS` and waits until it says it is attached.
    fn start(args: &[&str]) -> TextTracer {
        let mut child = spawn_tracer(args);
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout piped");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (tx, status) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr piped");
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("text tracer: {line}");
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + DEADLINE;
        loop {
            let line = status
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("the text tracer says it is attached");
            if line.contains("Ctrl-C to stop") {
                break;
            }
        }
        TextTracer {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until `done(all lines so far)`; panics at the deadline.
    fn read_until(&mut self, what: &str, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !done(&self.seen) {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("waited {DEADLINE:?} for {what}; lines: {:#?}", self.seen),
            }
        }
    }

    /// SIGINT; checks a clean exit and returns every line of stdout.
    fn stop(mut self) -> Vec<String> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = wait_exit(&mut self.child);
        assert!(status.success(), "text tracer exited with {status}");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
            self.seen.push(line);
        }
        std::mem::take(&mut self.seen)
    }
}

impl Drop for TextTracer {
    fn drop(&mut self) {
        // A failed test must not leave a probe attached.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Of `lines`, the alerts with `head` (`STUCK`, `RESOLVED`): how many lines, and how many
/// sockets they name (one each, or N for `N more sockets`).
fn alerts(lines: &[String], head: &str) -> (usize, usize) {
    let head = format!(" {head} ");
    let mut count = (0, 0);
    for l in lines.iter().filter(|l| l.contains(&head)) {
        count.0 += 1;
        count.1 += match l.split_once(" more socket") {
            Some((before, _)) => before
                .rsplit(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no count before `more sockets`: {l}")),
            None => 1,
        };
    }
    count
}

/// Counts the records of `kind` among those given, reading each record once however
/// often it is asked (it is asked after every record).
fn counter(kind: &'static str) -> impl Fn(&[Value]) -> usize {
    let counted = Cell::new((0, 0));
    move |records| {
        let (read, n) = counted.get();
        let n = n + records[read..].iter().filter(|r| r["type"] == kind).count();
        counted.set((records.len(), n));
        n
    }
}

/// Checks that `lines`, the alerts with `head` of a burst, fold: no batch (the lines up to
/// and including an `N more sockets` line) takes [`MOST_PER_BATCH`] lines or more, nor all
/// of them [`MOST_LINES`], and together they name every leaked socket once.
fn assert_folded(lines: &[String], head: &str) {
    let (alerts, sockets) = alerts(lines, head);
    eprintln!(
        "{LEAKS} sockets {head} at once: {} lines ({alerts} alerts), {} bytes of text",
        lines.len(),
        bytes(lines)
    );
    assert_eq!(sockets, LEAKS, "{lines:#?}");
    for batch in lines.split_inclusive(|l| l.contains(" more socket")) {
        assert!(
            batch.len() < MOST_PER_BATCH,
            "a batch of {head} alerts took {} lines: {batch:#?}",
            batch.len()
        );
    }
    assert!(
        lines.len() < MOST_LINES,
        "{LEAKS} sockets {head} at once took {} lines, {} bytes",
        lines.len(),
        bytes(lines)
    );
}

/// The bytes of `lines` as printed.
fn bytes(lines: &[String]) -> usize {
    lines.iter().map(|l| l.len() + 1).sum()
}

#[test]
fn a_burst_of_leaks_folds_in_text_and_lists_each_socket_in_json() {
    if !privileged("a_burst_of_leaks_folds_in_text_and_lists_each_socket_in_json") {
        return;
    }
    // This process holds the clients, leaky (which inherits the limit) the servers.
    allow_fds(LEAKS as u64 + 1024);
    let leaky = Leaky::spawn(V4);
    let port = leaky.port.to_string();
    let watch = ["--port", port.as_str(), "--close-wait", "1s"];
    let mut text = TextTracer::start(&[&["watch"][..], &watch].concat());
    let mut json = Tracer::start(&watch);

    // Every connection accepted (leaky holds a descriptor for each), then all closed at
    // once: the server ends enter CLOSE_WAIT together. Connected 100 at a time, each
    // batch accepted before the next: its accept queue holds 128, and a connection
    // beyond that waits a second for its SYN to be sent again.
    let held = || {
        std::fs::read_dir(format!("/proc/{}/fd", leaky.pid))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let before = held();
    let mut clients = Vec::with_capacity(LEAKS);
    while clients.len() < LEAKS {
        // Each batch gets the whole deadline: an emulated CPU (the QEMU kernels) with two
        // tracers attached takes over 15 s for all 2,000.
        let deadline = Instant::now() + DEADLINE;
        for _ in 0..100 {
            let c = TcpStream::connect((V4, leaky.port))
                .unwrap_or_else(|e| panic!("connection {}: {e}", clients.len()));
            clients.push(c);
        }
        while held() < before + clients.len() {
            assert!(
                Instant::now() < deadline,
                "leaky accepted {} of {} connections",
                held().saturating_sub(before),
                clients.len()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
    drop(clients);

    text.read_until("every leaked socket named stuck", |l| {
        alerts(l, "STUCK").1 >= LEAKS
    });
    let flagged = text.seen.clone();
    assert_folded(&flagged, "STUCK");
    let owner = format!("leaky[{}] ", leaky.pid);
    let folded: Vec<&String> = flagged
        .iter()
        .filter(|l| l.contains(" more socket"))
        .collect();
    assert!(!folded.is_empty(), "{flagged:#?}");
    for l in &folded {
        assert!(
            l.contains(&owner) && l.contains(&format!(" stuck in CLOSE_WAIT on :{port} (oldest ")),
            "{l}"
        );
    }
    let stuck = counter("stuck");
    json.wait_for("a stuck record for every leaked socket", |r| {
        stuck(r) >= LEAKS
    });

    // The server exits: every socket leaves CLOSE_WAIT at once.
    drop(leaky);
    text.read_until("every leaked socket named resolved", |l| {
        alerts(l, "RESOLVED").1 >= LEAKS
    });
    let resolved = &text.seen[flagged.len()..];
    assert_folded(resolved, "RESOLVED");
    assert!(
        resolved
            .iter()
            .any(|l| l.contains(&owner) && l.contains(&format!(" left CLOSE_WAIT on :{port} ("))),
        "{resolved:#?}"
    );
    let left = counter("resolved");
    json.wait_for("a resolved record for every leaked socket", |r| {
        left(r) >= LEAKS
    });

    let lines = text.stop();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" SUMMARY no sockets stuck")),
        "{lines:#?}"
    );
    let records = json.stop();
    let count = |kind: &str| records.iter().filter(|r| r["type"] == kind).count();
    assert_eq!((count("stuck"), count("resolved")), (LEAKS, LEAKS));
}
