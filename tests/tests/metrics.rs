//! `watch --metrics`: a real Prometheus scrapes the tracer while a process leaks sockets,
//! and its query API reports exactly the leak, by owner command and service port.

use std::{
    fs,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use integration_tests::{
    allow_fds, dechunk, finish, http_get, metric_samples, privileged, spawn_tracer, Leaky, Tracer,
    DEADLINE,
};
use serde_json::Value;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Prometheus starts in seconds here, and much slower in an emulated guest.
const PROMETHEUS_DEADLINE: Duration = Duration::from_secs(120);

/// A free loopback port (free when this returns; nothing else here binds it meanwhile).
fn free_port() -> u16 {
    TcpListener::bind((LOOPBACK, 0))
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server of Debian's package on a free loopback port, scraping `target`
/// every second, its data in a temporary directory; killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts one, or returns why it cannot (not installed).
    fn start(target: u16) -> Result<Prometheus, String> {
        let bin = Path::new("/usr/bin/prometheus");
        if !bin.is_file() {
            return Err(
                "no /usr/bin/prometheus (Debian's `prometheus`; `cargo xtask test` installs it)"
                    .into(),
            );
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = dir.path().join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: tracer\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .expect("write the Prometheus config");
        let port = free_port();
        let log = fs::File::create(dir.path().join("log")).expect("log file");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start prometheus: {e}"))?;
        Ok(Prometheus {
            child,
            port,
            _dir: dir,
        })
    }

    /// The result vector of the instant query `q`, empty while Prometheus is not up.
    fn query(&self, q: &str) -> Vec<Value> {
        let Ok(mut s) = TcpStream::connect((LOOPBACK, self.port)) else {
            return Vec::new();
        };
        drop(s.set_read_timeout(Some(DEADLINE)));
        let path = format!("/api/v1/query?query={}", encode(q));
        if write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .is_err()
        {
            return Vec::new();
        }
        let mut text = String::new();
        if s.read_to_string(&mut text).is_err() {
            return Vec::new();
        }
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return Vec::new();
        };
        let body = match head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            true => dechunk(body),
            false => body.to_owned(),
        };
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `q` returns one series whose value is `want`; returns its labels.
    fn wait_for(&mut self, q: &str, want: impl Fn(f64) -> bool) -> Value {
        let deadline = Instant::now() + PROMETHEUS_DEADLINE;
        let mut last = Vec::new();
        while Instant::now() < deadline {
            last = self.query(q);
            if let [one] = last.as_slice() {
                let value = one["value"][1].as_str().and_then(|v| v.parse().ok());
                if value.is_some_and(&want) {
                    return one["metric"].clone();
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}); its log: {}", self.log());
            }
            thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "waited {PROMETHEUS_DEADLINE:?} for `{q}`; last answer {last:?}; prometheus log: {}",
            self.log()
        );
    }

    fn log(&self) -> String {
        fs::read_to_string(self._dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_the_stuck_sockets_by_owner_and_port() {
    if !privileged("prometheus_scrapes_the_stuck_sockets_by_owner_and_port") {
        return;
    }
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let tracer = Tracer::start(&["--close-wait", "1s", "--metrics", &addr]);
    let mut prometheus = match Prometheus::start(port) {
        Ok(p) => p,
        Err(why) => panic!("{why}"),
    };
    let leaky = Leaky::spawn_in(&[], LOOPBACK, 0, 3);

    let q = format!(
        r#"tracer_stuck_sockets{{state="CLOSE_WAIT",comm="leaky",port="{}"}}"#,
        leaky.port
    );
    let labels = prometheus.wait_for(&q, |v| v == 3.0);
    assert_eq!(labels["job"], "tracer", "{labels}");
    assert_eq!(
        labels["netns"].as_str().and_then(|n| n.parse::<u64>().ok()),
        Some(leaky.netns()),
        "{labels}"
    );
    // The three accepted connections' ESTABLISHED -> CLOSE_WAIT, among others'.
    prometheus.wait_for(
        r#"tracer_transitions_total{from="ESTABLISHED",to="CLOSE_WAIT"}"#,
        |v| v >= 3.0,
    );
    prometheus.wait_for(
        &format!(
            r#"tracer_owner_open_fds{{comm="leaky",pid="{}"}}"#,
            leaky.pid
        ),
        |v| v >= 7.0,
    );

    // The exposition itself passes promtool's checks.
    let (code, text) = http_get(port, "/metrics");
    assert_eq!(code, 200);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's `prometheus` package)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let checked = promtool.wait_with_output().expect("promtool");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert_eq!(http_get(port, "/nothing").0, 404);
    drop(prometheus);
    tracer.stop();
}

#[test]
fn two_thousand_sockets_leaked_at_once_are_all_counted() {
    if !privileged("two_thousand_sockets_leaked_at_once_are_all_counted") {
        return;
    }
    const LEAKED: usize = 2_000;
    // Both ends of each connection are leaky's.
    allow_fds(20_000);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let tracer = Tracer::start(&["--close-wait", "1s", "--metrics", &addr]);
    // In a namespace of its own: other leaks on the machine (other tests') are not summed,
    // and the sum is over every group there, whatever service port each was given.
    let leaky = Leaky::spawn_in(&Leaky::anonymous_netns(), LOOPBACK, 0, LEAKED);
    let mine = r#"state="CLOSE_WAIT""#;
    let our_netns = format!(r#"netns="{}""#, leaky.netns());

    let deadline = Instant::now() + 4 * DEADLINE;
    let mut latencies = Vec::new();
    let (total, text) = loop {
        let started = Instant::now();
        let (code, text) = http_get(port, "/metrics");
        latencies.push(started.elapsed());
        assert_eq!(code, 200);
        let total: f64 = metric_samples(&text, "tracer_stuck_sockets")
            .iter()
            .filter(|(l, _)| l.contains(mine) && l.contains(&our_netns))
            .map(|(_, v)| v)
            .sum();
        if total == LEAKED as f64 || Instant::now() > deadline {
            break (total, text);
        }
        thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(total, LEAKED as f64, "{text}");
    // More scrapes with the leak in place, for the latency.
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(http_get(port, "/metrics").0, 200);
        latencies.push(started.elapsed());
    }
    latencies.sort_unstable();
    let series = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    eprintln!(
        "GET /metrics with {LEAKED} stuck sockets: median {:?}, max {:?} over {} scrapes; {series} series",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        latencies.len()
    );
    drop(leaky);
    tracer.stop();
}

#[test]
fn a_bad_metrics_address_is_refused_in_one_line() {
    for bad in ["localhost", "127.0.0.1:99999", "9977x"] {
        let mut child = spawn_tracer(&["watch", "--metrics", bad]);
        let (status, stderr) = finish(&mut child);
        assert_eq!(status.code(), Some(2), "--metrics {bad}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("IP:PORT"), "{stderr}");
    }
}

#[test]
fn a_busy_metrics_port_is_an_error_in_one_line() {
    let busy = TcpListener::bind((LOOPBACK, 0)).expect("bind");
    let addr = busy.local_addr().expect("address").to_string();
    let mut child = spawn_tracer(&["watch", "--metrics", &addr]);
    let (status, stderr) = finish(&mut child);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot serve metrics on {addr}")) && stderr.contains("in use"),
        "{stderr}"
    );
}
