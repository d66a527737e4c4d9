//! The aggregator on real sockets: a server that leaks (accepts, replies, never closes)
//! beside one that behaves; exactly the leaked sockets are flagged, after the threshold,
//! with this test process as their owner and the right fds, and each resolves when the
//! server finally closes. Also: leaks older than the tracer, and a connection frozen in an
//! accept queue.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::Path,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use integration_tests::{
    bound_socket, client_session, finish, leak, listen, privileged, spawn_tracer, Tracer, DEADLINE,
};
use serde_json::Value;

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);
const THRESHOLD_MS: u64 = 2000;

fn records_of<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["type"] == kind).collect()
}

fn soft_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_cur
}

/// Checks the owner of a stuck or resolved record: this process, through `fd`.
fn assert_owned_by_me(r: &Value, fd: i32) {
    let owner = &r["owner"];
    assert_eq!(owner["pid"], std::process::id(), "{r}");
    assert_eq!(owner["fds"], serde_json::json!([fd]), "{r}");
    assert_eq!(owner["uid"], unsafe { libc::getuid() }, "{r}");
    assert_eq!(owner["fd_limit"], soft_nofile(), "{r}");
    assert!(owner["fd_count"].as_u64().is_some_and(|n| n >= 3), "{r}");
    let exe = std::env::current_exe().unwrap();
    let name = exe.file_name().unwrap().to_str().unwrap();
    assert!(
        owner["cmdline"].as_str().is_some_and(|c| c.contains(name)),
        "{r}"
    );
    assert!(
        owner["cgroup"].as_str().is_some_and(|c| c.starts_with('/')),
        "{r}"
    );
    assert_eq!(r["other_owners"], serde_json::json!([]), "{r}");
}

/// Checks that the start record names the best send/receive hooks: the tracepoints where
/// the kernel has them (6.3+), BTF-enabled (every kernel this suite runs on has BTF), else
/// fentry/fexit or kprobes (this suite's `last_io` checks need one of them).
fn assert_best_io_probes(start: &Value) {
    let io = &start["attached"]["io_probes"];
    if Path::new("/sys/kernel/tracing/events/sock/sock_recv_length").exists() {
        assert_eq!(
            io,
            &serde_json::json!(["tp_btf:sock_recv_length", "tp_btf:sock_send_length"]),
            "the send/receive tracepoints (Linux 6.3+), BTF-enabled, come first"
        );
    } else {
        assert!(
            io.as_array().is_some_and(|a| !a.is_empty()),
            "without the 6.3+ tracepoints, fentry/fexit or kprobes: {io}"
        );
    }
}

fn leaking_and_behaving_servers(test: &str, ip: IpAddr, family: &str) {
    if !privileged(test) {
        return;
    }
    let (socket, port) = bound_socket(ip);
    let listener = listen(socket);
    let mut tracer = Tracer::start(&[
        "--port",
        &port.to_string(),
        "--close-wait",
        "2s",
        "--summary-interval",
        "1s",
    ]);
    assert_eq!(tracer.records[0]["thresholds"]["CLOSE_WAIT"], THRESHOLD_MS);
    assert_best_io_probes(&tracer.records[0]);

    // Two behaving sessions (the server closes on EOF) around three leaked ones.
    let mut behaved = BTreeSet::new();
    let mut behave = |listener: &TcpListener| {
        let (server, client_port) = client_session(ip, port, listener, true);
        drop(server);
        behaved.insert(client_port);
    };
    behave(&listener);
    let leaked = leak(ip, port, &listener, 3);
    let leaked_at = Instant::now();
    behave(&listener);
    let fd_of = |client_port: u64| {
        leaked
            .iter()
            .find(|(_, p)| u64::from(*p) == client_port)
            .map(|(s, _)| s.as_raw_fd())
            .unwrap_or_else(|| panic!("flagged a socket that did not leak: {client_port}"))
    };

    let records = tracer.wait_for("three stuck records", |r| records_of(r, "stuck").len() >= 3);
    assert!(
        leaked_at.elapsed() >= Duration::from_millis(THRESHOLD_MS),
        "flagged before the threshold"
    );
    let stuck: Vec<Value> = records_of(records, "stuck").into_iter().cloned().collect();
    let mut flagged_ports = BTreeSet::new();
    for r in &stuck {
        assert_eq!(r["state"], "CLOSE_WAIT", "{r}");
        assert_eq!(r["family"], family, "{r}");
        assert_eq!(
            (r["saddr"].as_str(), &r["sport"]),
            (Some(&*ip.to_string()), &port.into())
        );
        assert!(
            r["age_ms"].as_u64().is_some_and(|a| a >= THRESHOLD_MS),
            "{r}"
        );
        assert!(
            r["age_ms"]
                .as_u64()
                .is_some_and(|a| a < THRESHOLD_MS + 2000),
            "late: {r}"
        );
        assert_eq!(r["age_is_lower_bound"], false, "{r}");
        assert_eq!(r["threshold_ms"], THRESHOLD_MS, "{r}");
        assert_eq!(r["held_by"], "fd", "{r}");
        assert_eq!(r["origin"], "accepted", "{r}");
        assert!(r["sk"].as_str().is_some_and(|s| s.starts_with("0x")), "{r}");
        let client_port = r["dport"].as_u64().unwrap();
        assert_owned_by_me(r, fd_of(client_port));
        flagged_ports.insert(client_port as u16);
        // The last receive (read or peek at the end of stream) was this process's, after
        // the socket entered CLOSE_WAIT.
        let io = &r["last_io"];
        assert_eq!(io["pid"], std::process::id(), "{r}");
        let read_eof = client_port == u64::from(leaked[0].1);
        assert_eq!(io["op"], if read_eof { "eof" } else { "recv" }, "{r}");
        assert!(io["ago_ms"].as_u64() <= r["age_ms"].as_u64(), "{r}");
    }
    let leaked_ports: BTreeSet<u16> = leaked.iter().map(|(_, p)| *p).collect();
    assert_eq!(
        flagged_ports, leaked_ports,
        "every leaked socket, once each"
    );
    assert!(flagged_ports.is_disjoint(&behaved));

    // A summary groups them under this process and the service port.
    let records = tracer.wait_for("a summary with the leak", |r| {
        records_of(r, "summary").iter().any(|s| s["stuck"] == 3)
    });
    let summary = records_of(records, "summary")
        .into_iter()
        .find(|s| s["stuck"] == 3)
        .unwrap()
        .clone();
    let group = &summary["groups"][0];
    assert_eq!(summary["groups"].as_array().unwrap().len(), 1, "{summary}");
    assert_eq!(group["pid"], std::process::id(), "{summary}");
    assert_eq!(group["count"], 3);
    assert_eq!(group["state"], "CLOSE_WAIT");
    assert_eq!(group["port"], format!(":{port}"));
    assert_eq!(group["eof_read"], 1, "{summary}");
    assert!(group["advice"].as_str().unwrap().contains("close()"));

    // The server finally closes: each flag resolves, with how long it was stuck.
    let sks: BTreeSet<String> = stuck.iter().map(|r| r["sk"].to_string()).collect();
    let fds: Vec<(i32, u16)> = leaked.iter().map(|(s, p)| (s.as_raw_fd(), *p)).collect();
    drop(leaked);
    let records = tracer.wait_for("three resolved records", |r| {
        records_of(r, "resolved").len() >= 3
    });
    for r in records_of(records, "resolved") {
        assert_eq!(
            (&r["state"], &r["new"]),
            (&"CLOSE_WAIT".into(), &"LAST_ACK".into()),
            "{r}"
        );
        assert!(sks.contains(&r["sk"].to_string()), "{r}");
        assert!(
            r["stuck_ms"].as_u64().is_some_and(|a| a >= THRESHOLD_MS),
            "{r}"
        );
        let client_port = r["dport"].as_u64().unwrap() as u16;
        let fd = fds.iter().find(|(_, p)| *p == client_port).unwrap().0;
        assert_owned_by_me(r, fd);
    }
    drop(listener);
    let records = tracer.stop();
    assert_eq!(records_of(&records, "stuck").len(), 3, "flagged once each");
    let stop = records.last().unwrap();
    assert_eq!(
        (&stop["flagged"], &stop["resolved"], &stop["stuck"]),
        (&3.into(), &3.into(), &0.into())
    );
}

#[test]
fn leaking_server_ipv4() {
    leaking_and_behaving_servers("leaking_server_ipv4", V4, "ipv4");
}

#[test]
fn leaking_server_ipv6() {
    leaking_and_behaving_servers("leaking_server_ipv6", V6, "ipv6");
}

/// Leaks made before the tracer started are found by the snapshot, with their owner, and
/// their age is a lower bound.
fn leaked_before_start(test: &str, ip: IpAddr, family: &str) {
    if !privileged(test) {
        return;
    }
    let (socket, port) = bound_socket(ip);
    let listener = listen(socket);
    let leaked = leak(ip, port, &listener, 2);
    let mut tracer = Tracer::start(&["--port", &port.to_string(), "--close-wait", "1s"]);
    assert!(tracer.records[0]["existing_sockets"]
        .as_u64()
        .is_some_and(|n| n >= 3));
    let records = tracer.wait_for("two stuck records", |r| records_of(r, "stuck").len() >= 2);
    for r in records_of(records, "stuck") {
        assert_eq!(r["family"], family, "{r}");
        assert_eq!(r["age_is_lower_bound"], true, "{r}");
        assert!(r["age_ms"].as_u64().is_some_and(|a| a >= 1000), "{r}");
        assert_eq!(r["sk"], Value::Null, "sock_diag gives no address: {r}");
        assert_eq!(
            r["last_io"],
            Value::Null,
            "no address, no last send/receive: {r}"
        );
        assert_eq!(r["origin"], "accepted", "{r}");
        let client_port = r["dport"].as_u64().unwrap() as u16;
        let (server, _) = leaked
            .iter()
            .find(|(_, p)| *p == client_port)
            .expect("a leaked socket");
        assert_owned_by_me(r, server.as_raw_fd());
    }
    drop(leaked);
    let records = tracer.wait_for("two resolved records", |r| {
        records_of(r, "resolved").len() >= 2
    });
    for r in records_of(records, "resolved") {
        assert_eq!(r["stuck_is_lower_bound"], true, "{r}");
        assert!(
            r["sk"].as_str().is_some_and(|s| s.starts_with("0x")),
            "named by its transition: {r}"
        );
    }
    drop(listener);
    tracer.stop();
}

#[test]
fn leaked_before_start_ipv4() {
    leaked_before_start("leaked_before_start_ipv4", V4, "ipv4");
}

#[test]
fn leaked_before_start_ipv6() {
    leaked_before_start("leaked_before_start_ipv6", V6, "ipv6");
}

#[test]
fn a_connection_never_accepted_belongs_to_the_listener() {
    if !privileged("a_connection_never_accepted_belongs_to_the_listener") {
        return;
    }
    let (socket, port) = bound_socket(V4);
    let listener = listen(socket);
    let mut tracer = Tracer::start(&["--port", &port.to_string(), "--close-wait", "1s"]);
    // The handshake completes in the kernel; nobody calls accept(). The client leaves.
    let client = TcpStream::connect((V4, port)).expect("connect");
    let client_port = client.local_addr().unwrap().port();
    drop(client);
    let records = tracer.wait_for("a stuck record", |r| !records_of(r, "stuck").is_empty());
    let r = records_of(records, "stuck")[0].clone();
    assert_eq!(r["dport"], client_port, "{r}");
    assert_eq!(r["held_by"], "accept_queue", "{r}");
    assert_owned_by_me(&r, listener.as_raw_fd());
    // Nobody ever received on it, whatever an earlier socket at its address did.
    assert_eq!(r["last_io"], Value::Null, "{r}");
    // Closing the listener drops its queue: the flag resolves.
    drop(listener);
    let records = tracer.wait_for("a resolved record", |r| {
        !records_of(r, "resolved").is_empty()
    });
    assert_eq!(records_of(records, "resolved")[0]["dport"], client_port);
    tracer.stop();
}

#[test]
fn stuck_watches_other_states_fin_wait2_on_the_client() {
    if !privileged("stuck_watches_other_states_fin_wait2_on_the_client") {
        return;
    }
    let (socket, port) = bound_socket(V4);
    let listener = listen(socket);
    let mut tracer = Tracer::start(&[
        "--port",
        &port.to_string(),
        "--close-wait",
        "off",
        "--stuck",
        "FIN_WAIT2=1s",
    ]);
    // The client half-closes and keeps its socket; the server never closes its side.
    let client = TcpStream::connect((V4, port)).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    client.shutdown(Shutdown::Write).expect("shutdown");
    let records = tracer.wait_for("a stuck record", |r| !records_of(r, "stuck").is_empty());
    let r = records_of(records, "stuck")[0].clone();
    assert_eq!(r["state"], "FIN_WAIT2", "{r}");
    assert_eq!(r["origin"], "connected", "{r}");
    assert_eq!(r["dport"], port, "{r}");
    assert_eq!(r["last_caller"]["pid"], std::process::id(), "{r}");
    assert_owned_by_me(&r, client.as_raw_fd());
    assert_eq!(
        r["last_io"],
        Value::Null,
        "the client never sent or received: {r}"
    );
    drop(server);
    let records = tracer.wait_for("a resolved record", |r| {
        !records_of(r, "resolved").is_empty()
    });
    assert_eq!(records_of(records, "resolved")[0]["new"], "CLOSE");
    drop(client);
    drop(listener);
    let records = tracer.stop();
    assert!(records_of(&records, "stuck")
        .iter()
        .all(|r| r["state"] == "FIN_WAIT2"));
}

#[test]
fn text_alerts_and_summary_name_the_process() {
    if !privileged("text_alerts_and_summary_name_the_process") {
        return;
    }
    let (socket, port) = bound_socket(V4);
    let listener = listen(socket);
    let leaked = leak(V4, port, &listener, 2);
    let mut child = spawn_tracer(&[
        "watch",
        "--port",
        &port.to_string(),
        "--close-wait",
        "1s",
        "--summary-interval",
        "1s",
    ]);
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let me = format!("[{}]", std::process::id());
    let deadline = Instant::now() + DEADLINE;
    let mut lines = Vec::new();
    let read_until = |lines: &mut Vec<String>, done: &dyn Fn(&[String]) -> bool| {
        while !done(lines) {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no more lines; so far: {lines:#?}"));
            lines.push(line);
        }
    };
    let alerts_in = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.contains(" STUCK "))
            .cloned()
            .collect()
    };
    read_until(&mut lines, &|l| alerts_in(l).len() >= 2);
    let alerts = alerts_in(&lines);
    for a in &alerts {
        assert!(a.contains("CLOSE_WAIT for at least"), "{a}");
        assert!(
            a.contains(&format!("127.0.0.1:{port} <- 127.0.0.1:")),
            "{a}"
        );
        assert!(a.contains(&me) && a.contains("fds "), "{a}");
        assert!(!a.contains('\x1b'), "no colour into a pipe: {a:?}");
        // Known by cookie only (they predate the tracer): nothing to say of their I/O.
        assert!(!a.contains("end of stream"), "{a}");
    }
    // One more leak, under the tracer's eyes: the server read the end of stream and kept
    // the socket, which the alert and the summary say.
    let (late, _) = client_session(V4, port, &listener, true);
    read_until(&mut lines, &|l| alerts_in(l).len() >= 3);
    let alert = alerts_in(&lines).pop().unwrap();
    assert!(
        alert.contains("CLOSE_WAIT for ") && !alert.contains("at least"),
        "seen entering CLOSE_WAIT: {alert}"
    );
    assert!(
        alert.contains(&format!("{me} read end of stream "))
            && alert.ends_with(" ago and kept the socket"),
        "{alert}"
    );
    read_until(&mut lines, &|l| {
        l.iter()
            .any(|l| l.contains("holds 3 sockets in CLOSE_WAIT"))
    });
    let group = lines
        .iter()
        .find(|l| l.contains("holds 3 sockets in CLOSE_WAIT"))
        .unwrap();
    assert!(
        group.contains(&me) && group.contains(&format!("on :{port} (oldest at least ")),
        "{group}"
    );
    assert!(
        group.ends_with("; read end of stream on 1 and kept them"),
        "{group}"
    );
    // The next summary finds the same groups: one line. Advice came once, with the group.
    read_until(&mut lines, &|l| {
        l.last()
            .is_some_and(|l| l.contains(" SUMMARY unchanged: 3 sockets stuck in 1 group (oldest "))
    });
    let advice: Vec<&String> = lines.iter().filter(|l| l.contains("advice:")).collect();
    assert_eq!(advice.len(), 1, "{lines:#?}");
    assert!(
        advice[0].starts_with("  advice: CLOSE_WAIT means"),
        "{lines:#?}"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let (status, _) = finish(&mut child);
    assert!(status.success());
    drop((leaked, late));
}
