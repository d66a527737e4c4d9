//! How a run starts and ends: text output, --duration, signals, a closed pipe, missing
//! privileges, and bad arguments.

use std::{
    io::{BufRead, BufReader, Read},
    net::{IpAddr, Ipv4Addr, TcpStream},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use integration_tests::{
    bound_socket, closed_session, finish, listen, privileged, spawn_tracer, tracer_bin, Tracer,
    DEADLINE,
};

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Opens and closes one connection to a fresh listener on `socket`.
fn connection(socket: socket2::Socket) {
    closed_session(&listen(socket));
}

#[test]
fn text_output_shows_each_transition_on_one_line() {
    if !privileged("text_output_shows_each_transition_on_one_line") {
        return;
    }
    let (socket, port) = bound_socket(V4);
    let mut child = spawn_tracer(&["watch", "--events", "--port", &port.to_string()]);
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let header = rx.recv_timeout(DEADLINE).expect("header line");
    assert!(
        header.starts_with("TIME(UTC)") && header.contains("TRANSITION"),
        "{header}"
    );
    connection(socket);
    let deadline = Instant::now() + DEADLINE;
    let line = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("a CLOSE_WAIT line");
        if line.contains("ESTABLISHED -> CLOSE_WAIT") {
            break line;
        }
    };
    let me = std::process::id().to_string();
    let fields: Vec<&str> = line.split_whitespace().collect();
    // TIME PID COMM LOCAL -- REMOTE OLD -> NEW; loopback FINs run in the sender's context (us).
    assert_eq!(fields.len(), 9, "{line}");
    assert_eq!(fields[0].len(), 15, "HH:MM:SS.micros: {line}");
    assert_eq!(fields[1], me, "{line}");
    assert_eq!(fields[3], format!("127.0.0.1:{port}"), "{line}");
    assert!(fields[5].starts_with("127.0.0.1:"), "{line}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let (status, stderr) = finish(&mut child);
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains("attached to tracepoint sock:inet_sock_set_state"),
        "{stderr}"
    );
    // The totals: "N lost", then what the probe skipped when anything was (other traffic
    // on the machine, filtered out by --port).
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("tracer: stopped after")
                && (l.ends_with(" lost") || l.contains(" lost; skipped "))),
        "{stderr}"
    );
}

#[test]
fn duration_stops_by_itself() {
    if !privileged("duration_stops_by_itself") {
        return;
    }
    let started = Instant::now();
    let mut tracer = Tracer::start(&["--duration", "500ms", "--port", "9"]);
    tracer.wait_for("the stop record", |r| {
        r.last().is_some_and(|r| r["type"] == "stop")
    });
    let stop = tracer.records.last().unwrap().clone();
    assert_eq!(stop["reason"], "duration");
    assert!(stop["duration_ms"].as_u64().unwrap() >= 500, "{stop}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    let (status, stderr) = tracer.stop_with(0); // signal 0: only waits for the exit
    assert!(status.success(), "{status}: {stderr}");
}

#[test]
fn sigterm_ends_with_a_stop_record() {
    if !privileged("sigterm_ends_with_a_stop_record") {
        return;
    }
    let mut tracer = Tracer::start(&["--port", "9"]);
    let (status, stderr) = tracer.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}: {stderr}");
    let stop = tracer.records.last().unwrap();
    assert_eq!(
        (stop["type"].as_str(), stop["reason"].as_str()),
        (Some("stop"), Some("signal"))
    );
    let kinds: Vec<&str> = tracer
        .records
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["start", "summary", "stop"], "{:?}", tracer.records);
    assert_eq!(tracer.records[1]["reason"], "stop");
}

#[test]
fn closed_stdout_ends_quietly_with_success() {
    if !privileged("closed_stdout_ends_quietly_with_success") {
        return;
    }
    let (socket, port) = bound_socket(V4);
    let mut child = spawn_tracer(&[
        "watch",
        "--events",
        "--format",
        "json",
        "--port",
        &port.to_string(),
    ]);
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .expect("start record");
    assert!(first.starts_with("{\"type\":\"start\""), "{first}");
    // The reader is gone (like `tracer ... | head -1`); the next transition hits EPIPE.
    connection(socket);
    let (status, stderr) = finish(&mut child);
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(stderr, "", "a closed pipe is not an error");
}

#[test]
fn without_privileges_says_what_is_missing() {
    if !privileged("without_privileges_says_what_is_missing") {
        return;
    }
    // Run as nobody: setuid away from root clears the effective capabilities.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(tracer_bin())
        .args(["watch", "--events"])
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("needs root, or CAP_BPF and CAP_PERFMON") && stderr.contains("sudo"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_arguments_exit_2_with_one_error_line() {
    // Needs no privileges: arguments are checked before anything touches the kernel.
    for args in [
        &["watch", "--duration", "soon"][..],
        &["watch", "--state", "HALF_OPEN"],
        &["watch", "--port", "65536"],
        &["watch", "--family", "ipx"],
        &["watch", "--nope"],
        &[
            "watch", "--port=1", "--port=2", "--port=3", "--port=4", "--port=5", "--port=6",
            "--port=7", "--port=8", "--port=9",
        ],
    ] {
        let out = Command::new(tracer_bin())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tracer");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        // One line, as the README says: no usage lines or hints after it.
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(
            stderr.contains("(see `tracer watch --help`)"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty());
    }
    let mut help = Command::new(tracer_bin())
        .args(["watch", "--help"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut text = String::new();
    help.stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert!(help.wait().unwrap().success());
    assert!(text.contains("--events") && text.contains("--duration"));
}

/// A full table says what it dropped: a warning within a second, an `evicted` record, and
/// the same count in the stop record.
#[test]
fn a_full_table_says_what_it_evicts() {
    if !privileged("a_full_table_says_what_it_evicts") {
        return;
    }
    // 600 open connections hold 1,200 descriptors here.
    let limit = libc::rlimit {
        rlim_cur: 4096,
        rlim_max: 4096,
    };
    // SAFETY: setrlimit reads one rlimit we own.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let (socket, port) = bound_socket(V4);
    let listener = listen(socket);
    let mut tracer = Tracer::start(&["--port", &port.to_string(), "--max-sockets", "1024"]);
    let open: Vec<_> = (0..600)
        .map(|_| {
            let client = TcpStream::connect((V4, port)).expect("connect");
            (client, listener.accept().expect("accept").0)
        })
        .collect();
    tracer.wait_for("an evicted record", |r| {
        r.iter().any(|r| r["type"] == "evicted")
    });
    let (status, stderr) = tracer.stop_with(libc::SIGTERM);
    drop(open);
    assert!(status.success(), "{status}: {stderr}");
    let said: u64 = tracer
        .records
        .iter()
        .filter(|r| r["type"] == "evicted")
        .map(|r| r["sockets"].as_u64().unwrap())
        .sum();
    let stop = tracer.records.last().unwrap();
    assert_eq!(stop["type"], "stop");
    assert!(
        said >= 1201 - 1024,
        "{said} evicted of 1201 sockets in a 1024 table"
    );
    assert_eq!(stop["evicted"], said, "{stop}");
    assert!(
        stderr.contains("table full: ") && stderr.contains("raise --max-sockets"),
        "{stderr}"
    );
}
