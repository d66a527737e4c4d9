//! Recording and reporting on real sockets: a live run records a leak, then `tracer report`
//! run as an unprivileged user rebuilds the same stuck sockets, owners and durations. Also
//! a recording cut by SIGKILL and a torn write, and rotation under real traffic.

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream},
    os::unix::{
        fs::PermissionsExt,
        process::{CommandExt, ExitStatusExt},
    },
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    time::{Duration, Instant},
};

use integration_tests::{
    allow_fds, bound_socket, client_session, leak, listen, privileged, tracer_bin, Tracer, DEADLINE,
};
use serde_json::Value;

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);
/// The user the reports run as: no privileges at all.
const NOBODY: u32 = 65534;

/// A directory the unprivileged user can read.
fn scratch_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod 755");
    dir
}

/// `tracer report FILE --format json ARGS` as user `uid`: exit status, records, stderr.
fn report_as(uid: u32, file: &Path, args: &[&str]) -> (ExitStatus, Vec<Value>, String) {
    let out = Command::new(tracer_bin())
        .arg("report")
        .arg(file)
        .args(["--format", "json"])
        .args(args)
        .uid(uid)
        .gid(uid)
        .output()
        .expect("run tracer report");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 report");
    let records = stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("report line not JSON ({e}): {l}"))
        })
        .collect();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status, records, stderr)
}

fn of_type<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["type"] == kind).collect()
}

/// What must agree between the live run and the report about one socket, by `sk`.
fn by_socket(records: &[Value], kind: &str, fields: &[&str]) -> BTreeMap<String, Vec<Value>> {
    of_type(records, kind)
        .into_iter()
        .map(|r| {
            let sk = r["sk"].as_str().unwrap_or_else(|| panic!("sk in {r}"));
            (
                sk.to_owned(),
                fields
                    .iter()
                    .map(|f| r.pointer(f).cloned().unwrap_or_default())
                    .collect(),
            )
        })
        .collect()
}

/// A timeline as `OLD->NEW` for transitions and the record type for the rest.
fn steps<'a>(records: impl Iterator<Item = &'a Value>) -> Vec<String> {
    records
        .map(|r| match r["type"].as_str().unwrap() {
            "transition" => format!(
                "{}->{}",
                r["old"].as_str().unwrap(),
                r["new"].as_str().unwrap()
            ),
            t => t.to_owned(),
        })
        .collect()
}

fn report_matches_live_run(test: &str, ip: IpAddr) {
    if !privileged(test) {
        return;
    }
    let dir = scratch_dir();
    let rec = dir.path().join("incident.rec");
    let (socket, port) = bound_socket(ip);
    let listener = listen(socket);
    let mut tracer = Tracer::start(&[
        "--port",
        &port.to_string(),
        "--close-wait",
        "1s",
        "--summary-interval",
        "1h",
        "--record",
        rec.to_str().unwrap(),
    ]);
    assert_eq!(tracer.records[0]["record"]["path"], rec.to_str().unwrap());

    // One session that behaves, three that leak; then the server closes one leak late.
    let (server, _) = client_session(ip, port, &listener, true);
    drop(server);
    let mut leaked = leak(ip, port, &listener, 3);
    tracer.wait_for("three stuck records", |r| of_type(r, "stuck").len() >= 3);
    drop(leaked.remove(1));
    tracer.wait_for("one resolution", |r| !of_type(r, "resolved").is_empty());
    let live = tracer.stop();

    let (status, report, stderr) = report_as(NOBODY, &rec, &[]);
    assert!(status.success(), "report as nobody failed: {stderr}");
    assert!(!stderr.contains("warning"), "a clean recording: {stderr}");
    let info = &report[0];
    assert_eq!(info["type"], "report");
    assert_eq!(info["live"]["stopped"], true);
    assert_eq!(info["warnings"], serde_json::json!([]));
    let stop = live.last().unwrap();
    assert_eq!(
        info["transitions"], stop["events"],
        "every transition recorded"
    );

    // The same stuck sockets with the same owners, fds and last send/receive.
    let fields = [
        "/dport",
        "/owner/pid",
        "/owner/fds",
        "/held_by",
        "/last_io/op",
        "/last_io/pid",
    ];
    let live_stuck = by_socket(&live, "stuck", &fields);
    assert_eq!(live_stuck.len(), 3, "{live:#?}");
    assert_eq!(by_socket(&report, "stuck", &fields), live_stuck);
    // Both date a flag when the socket crossed its threshold.
    for r in of_type(&report, "stuck")
        .into_iter()
        .chain(of_type(&live, "stuck"))
    {
        assert_eq!(r["owner"]["pid"], std::process::id(), "{r}");
        assert_eq!(r["age_ms"], 1000, "{r}");
    }
    // The same resolution, to the millisecond.
    let fields = ["/stuck_ms", "/new", "/owner/pid"];
    let live_resolved = by_socket(&live, "resolved", &fields);
    assert_eq!(live_resolved.len(), 1);
    assert_eq!(by_socket(&report, "resolved", &fields), live_resolved);
    // The same sockets still stuck at the end, as old.
    let groups = |records: &[Value], reason: &str| {
        let s = of_type(records, "summary")
            .into_iter()
            .rfind(|s| s["reason"] == reason)
            .unwrap_or_else(|| panic!("no {reason} summary"))
            .clone();
        let g: Vec<_> = s["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                (
                    g["pid"].clone(),
                    g["count"].clone(),
                    g["oldest_ms"].clone(),
                    g["eof_read"].clone(),
                    g["port"].clone(),
                )
            })
            .collect();
        g
    };
    let live_groups = groups(&live, "stop");
    assert_eq!(live_groups.len(), 1);
    assert_eq!(live_groups[0].1, 2);
    assert_eq!(groups(&report, "end"), live_groups);
    // Each stuck record of the report says how long it stayed stuck in all.
    for r in of_type(&report, "stuck") {
        let sk = r["sk"].as_str().unwrap();
        match live_resolved.get(sk) {
            Some(resolved) => {
                assert_eq!(
                    (&r["stuck_ms"], &r["still_stuck"]),
                    (&resolved[0], &false.into())
                )
            }
            None => assert_eq!(r["still_stuck"], true, "{r}"),
        }
    }
    let longest = of_type(&report, "stuck")
        .iter()
        .filter(|r| r["still_stuck"] == true)
        .map(|r| r["stuck_ms"].as_u64().unwrap())
        .max();
    assert_eq!(longest, live_groups[0].2.as_u64());

    let offender = of_type(&report, "offender");
    assert_eq!(offender[0]["pid"], std::process::id());
    assert_eq!(offender[0]["stuck"], 3);
    assert_eq!(
        offender[0]["ports"],
        serde_json::json!([format!(":{port}")])
    );
    let counts = &of_type(&report, "transitions")[0]["counts"];
    let count = |old: &str, new: &str| {
        counts
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["old"] == old && c["new"] == new)
            .map_or(0, |c| c["count"].as_u64().unwrap())
    };
    assert_eq!(count("ESTABLISHED", "CLOSE_WAIT"), 4, "{counts}");
    assert_eq!(count("CLOSE_WAIT", "LAST_ACK"), 2, "{counts}");

    // A lower threshold at report time finds the same leaks, and the owners of each stay.
    let (status, low, _) = report_as(NOBODY, &rec, &["--close-wait", "100ms"]);
    assert!(status.success());
    let stuck = of_type(&low, "stuck");
    assert_eq!(stuck.len(), 3, "{low:#?}");
    assert!(stuck
        .iter()
        .all(|r| r["age_ms"] == 100 && r["owner"]["pid"] == std::process::id()));
    // The timeline of the resolved socket: its whole life, in order. The kernel reuses a
    // closed socket's memory (readily on one CPU), so other sockets may have lived at the
    // same address before or after: each life starts at its birth.
    let sk = live_resolved.keys().next().unwrap();
    let (status, life, _) = report_as(NOBODY, &rec, &["--timeline", sk]);
    assert!(status.success());
    let mut lives: Vec<Vec<String>> = Vec::new();
    for step in steps(life[1..].iter()) {
        if step.starts_with("CLOSE->") || step == "LISTEN->SYN_RECV" || lives.is_empty() {
            lives.push(Vec::new());
        }
        lives.last_mut().unwrap().push(step);
    }
    let flagged: Vec<_> = lives
        .iter()
        .filter(|l| l.contains(&"stuck".to_owned()))
        .collect();
    assert_eq!(flagged.len(), 1, "{lives:#?}");
    for other in lives.iter().filter(|l| !l.contains(&"stuck".to_owned())) {
        assert!(other.last().unwrap().ends_with("->CLOSE"), "{lives:#?}");
    }
    assert_eq!(
        *flagged[0],
        [
            "LISTEN->SYN_RECV",
            "SYN_RECV->ESTABLISHED",
            "ESTABLISHED->CLOSE_WAIT",
            "stuck",
            "CLOSE_WAIT->LAST_ACK",
            "resolved",
            "LAST_ACK->CLOSE"
        ],
        "{life:#?}"
    );
    // By address: the client's port names both ends of the connection, and the client's
    // life starts at its connect(), before it had that port.
    let client_port = of_type(&live, "resolved")[0]["dport"].as_u64().unwrap();
    let addr = std::net::SocketAddr::new(ip, client_port as u16).to_string();
    let (status, both, _) = report_as(NOBODY, &rec, &["--timeline", &addr]);
    assert!(status.success());
    let client = both[1..]
        .iter()
        .filter(|r| r["type"] == "transition" && r["sk"] != sk.as_str());
    assert_eq!(
        steps(client),
        [
            "CLOSE->SYN_SENT",
            "SYN_SENT->ESTABLISHED",
            "ESTABLISHED->FIN_WAIT1",
            "FIN_WAIT1->FIN_WAIT2",
            "FIN_WAIT2->CLOSE"
        ],
        "{both:#?}"
    );
    drop(leaked);
}

#[test]
fn report_as_nobody_matches_the_live_run_ipv4() {
    report_matches_live_run("report_as_nobody_matches_the_live_run_ipv4", V4);
}

#[test]
fn report_as_nobody_matches_the_live_run_ipv6() {
    report_matches_live_run("report_as_nobody_matches_the_live_run_ipv6", V6);
}

/// Waits until `tracer report` of `rec` satisfies `done`; returns those records.
/// The stuck and resolved records of a run, as the live run writes them (a report's stuck
/// records also say how the stay ended: those fields are left out).
fn decisions(records: &[Value]) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["type"] == "stuck" || r["type"] == "resolved")
        .map(|r| {
            let mut r = r.clone();
            if r["type"] == "stuck" {
                let fields = r.as_object_mut().unwrap();
                for hindsight in ["stuck_ms", "stuck_is_lower_bound", "still_stuck"] {
                    fields.remove(hindsight);
                }
            }
            r
        })
        .collect()
}

/// One decision engine serves the live run and the report: replaying the recording with
/// the live run's thresholds gives the same stuck and resolved records, field for field
/// (sockets, owners, last send/receive, times to the nanosecond), in the same order. A leak
/// that predates the run is flagged when the run (and the recording) began, not before.
#[test]
fn live_and_report_decide_alike() {
    if !privileged("live_and_report_decide_alike") {
        return;
    }
    let dir = scratch_dir();
    let rec = dir.path().join("incident.rec");
    let (socket, p4) = bound_socket(V4);
    let l4 = listen(socket);
    let (socket, p6) = bound_socket(V6);
    let l6 = listen(socket);
    let mut before = leak(V4, p4, &l4, 1);
    let mut tracer = Tracer::start(&[
        "--port",
        &p4.to_string(),
        "--port",
        &p6.to_string(),
        "--close-wait",
        "1s",
        "--summary-interval",
        "1h",
        "--record",
        rec.to_str().unwrap(),
    ]);
    let (behaving, _) = client_session(V6, p6, &l6, true);
    drop(behaving);
    let mut leaked = leak(V4, p4, &l4, 2);
    let _leaked6 = leak(V6, p6, &l6, 2);
    tracer.wait_for("five stuck records", |r| of_type(r, "stuck").len() >= 5);
    drop(leaked.remove(0));
    drop(before.remove(0));
    tracer.wait_for("two resolutions", |r| of_type(r, "resolved").len() >= 2);
    let live = tracer.stop();

    let (status, report, stderr) = report_as(NOBODY, &rec, &[]);
    assert!(status.success(), "report failed: {stderr}");
    let started = report[0]["start"].as_str().unwrap().to_owned();
    let (live, report) = (decisions(&live), decisions(&report));
    assert_eq!(live.len(), 7, "5 stuck, 2 resolved: {live:#?}");
    for (i, (l, r)) in live.iter().zip(&report).enumerate() {
        assert_eq!(r, l, "record {i} differs: report (left) vs live (right)");
    }
    assert_eq!(report.len(), live.len(), "{report:#?}");

    // The leak from before the run: flagged at the run's start, its age a lower bound.
    let old = live
        .iter()
        .find(|r| r["type"] == "stuck" && r["sk"].is_null())
        .unwrap_or_else(|| panic!("the leak from before the run: {live:#?}"));
    assert_eq!(old["age_is_lower_bound"], true, "{old}");
    assert!(
        old["time"].as_str().unwrap() >= started.as_str(),
        "{old} vs {started}"
    );
    for r in live
        .iter()
        .filter(|r| r["type"] == "stuck" && !r["sk"].is_null())
    {
        assert_eq!(
            (&r["age_ms"], &r["age_is_lower_bound"]),
            (&1000.into(), &false.into())
        );
    }
}

fn wait_for_report(rec: &Path, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, records, stderr) = report_as(0, rec, &[]);
        if done(&records) {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "waited {DEADLINE:?} for {what} in the recording; stderr: {stderr}; {records:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn killed_and_torn_recordings_keep_what_was_written() {
    if !privileged("killed_and_torn_recordings_keep_what_was_written") {
        return;
    }
    let dir = scratch_dir();
    let rec = dir.path().join("killed.rec");
    let (socket, port) = bound_socket(V4);
    let listener = listen(socket);
    let mut tracer = Tracer::start(&[
        "--port",
        &port.to_string(),
        "--close-wait",
        "500ms",
        "--record",
        rec.to_str().unwrap(),
    ]);
    let leaked = leak(V4, port, &listener, 1);
    tracer.wait_for("the stuck record", |r| !of_type(r, "stuck").is_empty());
    // The decision reaches the disk through the writer thread, a moment after stdout.
    wait_for_report(&rec, "the stuck socket and its owner", |r| {
        of_type(r, "stuck")
            .first()
            .is_some_and(|s| s["owner"]["pid"] == std::process::id())
    });
    let status = tracer.kill();
    assert_eq!(status.signal(), Some(libc::SIGKILL));

    // A write cut in the middle of an entry, as a crash leaves it.
    let len = fs::metadata(&rec).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&rec)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let (status, report, stderr) = report_as(NOBODY, &rec, &[]);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("ends inside an entry"), "{stderr}");
    assert!(stderr.contains("were recovered"), "{stderr}");
    assert!(stderr.contains("no stop entry"), "{stderr}");
    let stuck = of_type(&report, "stuck");
    // The leak is still found from the transitions; its owners were the last entry, which
    // the cut may have taken.
    assert_eq!(stuck.len(), 1, "{report:#?}");
    assert_eq!(stuck[0]["dport"], leaked[0].1);

    // Nothing readable: one line, exit status 1.
    let bad = dir.path().join("bad.rec");
    for (bytes, want) in [
        (&fs::read(&rec).unwrap()[..10], "cut before its first entry"),
        (
            &b"Proto Recv-Q Send-Q Local Address\n"[..],
            "not a tracer recording",
        ),
    ] {
        fs::write(&bad, bytes).unwrap();
        fs::set_permissions(&bad, fs::Permissions::from_mode(0o644)).unwrap();
        let (status, records, stderr) = report_as(NOBODY, &bad, &[]);
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(records.is_empty());
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("tracer: error: cannot report") && stderr.contains(want),
            "{stderr}"
        );
    }
}

/// `FILE.n`.
fn segment(rec: &Path, n: u32) -> PathBuf {
    PathBuf::from(format!("{}.{n}", rec.display()))
}

#[test]
fn rotation_bounds_the_recording_under_real_traffic() {
    if !privileged("rotation_bounds_the_recording_under_real_traffic") {
        return;
    }
    let dir = scratch_dir();
    let rec = dir.path().join("week.rec");
    let (socket, port) = bound_socket(V4);
    let listener = listen(socket);
    let budget: u64 = 4 << 20;
    let tracer = Tracer::start(&[
        "--port",
        &port.to_string(),
        "--record",
        rec.to_str().unwrap(),
        "--record-max-size",
        "4MiB",
    ]);
    // Connections until a fifth segment has pushed the first one out (about 10k).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut connections = 0;
    let first_segment = |rec: &Path| {
        let (_, r, _) = report_as(0, &segment(rec, 3), &[]);
        r.first().and_then(|i| i["segments"][0].as_u64())
    };
    while !segment(&rec, 3).exists() || first_segment(&rec).is_none_or(|s| s < 1) {
        assert!(
            Instant::now() < deadline && connections < 100_000,
            "{connections} connections did not rotate the recording 4 times"
        );
        for _ in 0..500 {
            let client = TcpStream::connect((V4, port)).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            drop(client);
            drop(server);
        }
        connections += 500;
    }
    let live = tracer.stop();
    let mut total = 0;
    for n in 1..=3 {
        total += fs::metadata(segment(&rec, n)).unwrap().len();
    }
    total += fs::metadata(&rec).unwrap().len();
    assert!(!segment(&rec, 4).exists(), "at most 4 files");
    // Checkpoints included, the files pass the budget by one chunk at most.
    assert!(
        total <= budget + CHUNK,
        "{total} bytes for a {budget}-byte budget"
    );

    let (status, report, stderr) = report_as(NOBODY, &rec, &[]);
    assert!(status.success(), "{stderr}");
    let segs: Vec<u64> = report[0]["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    assert_eq!(segs.len(), 4, "{segs:?}");
    assert!(
        segs[0] >= 1 && segs.windows(2).all(|w| w[1] == w[0] + 1),
        "{segs:?}"
    );
    assert!(stderr.contains("rotated away"), "{stderr}");
    assert!(
        !stderr.contains("damaged") && !stderr.contains("inside an entry"),
        "{stderr}"
    );
    assert_eq!(report[0]["live"]["stopped"], true);
    let read = report[0]["transitions"].as_u64().unwrap();
    let events = live.last().unwrap()["events"].as_u64().unwrap();
    assert!(
        read > 0 && read < events,
        "the oldest transitions rotated away: {read} of {events}"
    );
}

/// `n` connections to each of `listeners` on [::1], never accepted: each makes two
/// sockets for one descriptor (the client's), the server's waiting in the accept queue.
fn queued_connections(listeners: &[TcpListener], n: usize) -> Vec<TcpStream> {
    listeners
        .iter()
        .flat_map(|l| {
            let port = l.local_addr().unwrap().port();
            (0..n).map(move |_| TcpStream::connect((V6, port)).expect("connect"))
        })
        .collect()
}

/// `n` listeners on [::1] whose accept queues hold 4,096 connections.
fn queues(n: usize) -> Vec<TcpListener> {
    (0..n)
        .map(|_| {
            let (socket, _) = bound_socket(V6);
            socket.listen(4096).expect("listen");
            socket.into()
        })
        .collect()
}

/// Bytes in the recording's files.
fn on_disk(rec: &Path) -> u64 {
    std::iter::once(rec.to_owned())
        .chain((1..=4).map(|n| segment(rec, n)))
        .filter_map(|p| fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// What a chunk may add beyond the budget: 20 ms of this test's events are far less.
const CHUNK: u64 = 256 << 10;

/// Tens of thousands of sockets open, with a 4 MiB budget. 18,000 make a checkpoint of
/// about 1.2 MiB, more than half a quarter: checkpoints count toward the budget, the files
/// stay within it and one chunk, and segments rotate once they hold as much again. 34,000
/// make one of about 2.2 MiB, which leaves no room to rotate: one warning at start, one
/// file, and the recording stops at the budget.
#[test]
fn the_budget_holds_with_tens_of_thousands_of_sockets_open() {
    if !privileged("the_budget_holds_with_tens_of_thousands_of_sockets_open") {
        return;
    }
    // 17,000 queued connections hold a descriptor each here.
    allow_fds(20_000);
    let (churned, churn_port) = bound_socket(V4);
    let churned = listen(churned);
    let mut listeners = queues(3);
    let mut held = queued_connections(&listeners, 3_000);
    let budget: u64 = 4 << 20;
    let dir = scratch_dir();
    // Connections in batches of 250 while `more` says so, checking the budget after each.
    let churn = |rec: &Path, more: &mut dyn FnMut(&Path) -> bool| {
        let mut connections = 0;
        while more(rec) {
            assert!(connections < 40_000, "{connections} connections");
            for _ in 0..250 {
                let client = TcpStream::connect((V4, churn_port)).expect("connect");
                let (server, _) = churned.accept().expect("accept");
                drop(client);
                drop(server);
            }
            connections += 250;
            let total = on_disk(rec);
            assert!(
                total <= budget + CHUNK,
                "{total} bytes on disk for a budget of {budget}, after {connections} connections"
            );
        }
    };
    let watch = |rec: &Path, listeners: &[TcpListener]| {
        let ports: Vec<String> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port().to_string())
            .chain([churn_port.to_string()])
            .collect();
        let mut args: Vec<&str> = ports.iter().flat_map(|p| ["--port", p]).collect();
        let rec = rec.to_str().unwrap();
        args.extend([
            "--summary-interval",
            "1h",
            "--record",
            rec,
            "--record-max-size",
            "4MiB",
        ]);
        Tracer::start(&args)
    };
    let last_segment = |rec: &Path| {
        let (_, r, _) = report_as(0, rec, &[]);
        r.first()
            .and_then(|i| i["segments"].as_array()?.last()?.as_u64())
            .unwrap_or(0)
    };

    let rec = dir.path().join("big.rec");
    let mut tracer = watch(&rec, &listeners);
    churn(&rec, &mut |rec| last_segment(rec) < 3);
    let (status, stderr) = tracer.stop_with(libc::SIGINT);
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("room to rotate"), "{stderr}");
    let events = tracer.records.last().unwrap()["events"].as_u64().unwrap();
    let rotations = last_segment(&rec);
    // Each segment holds at least its checkpoint's worth of new entries (18,000 sockets
    // of at least 30 bytes), each transition at most 80: no rotation after every flush.
    assert!(
        rotations <= events * 80 / (18_000 * 30) + 1,
        "{rotations} rotations for {events} transitions"
    );
    let (status, report, stderr) = report_as(NOBODY, &rec, &[]);
    assert!(status.success(), "{stderr}");
    assert_eq!(report[0]["live"]["stopped"], true);
    assert!(!stderr.contains("damaged"), "{stderr}");

    let more = queues(2);
    held.extend(queued_connections(&more, 4_000));
    listeners.extend(more);
    let rec = dir.path().join("bigger.rec");
    let mut tracer = watch(&rec, &listeners);
    churn(&rec, &mut |rec| on_disk(rec) < budget - CHUNK);
    // Past the budget: entries are left out.
    let mut batches = 0;
    churn(&rec, &mut |_| {
        batches += 1;
        batches <= 4
    });
    let (status, stderr) = tracer.stop_with(libc::SIGINT);
    assert!(status.success(), "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("room to rotate"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].starts_with("tracer: warning: --record-max-size 4MiB leaves no room"),
        "{stderr}"
    );
    assert!(!segment(&rec, 1).exists(), "no rotation");
    assert!(on_disk(&rec) <= budget + CHUNK);
    let (status, report, stderr) = report_as(NOBODY, &rec, &[]);
    assert!(status.success(), "{stderr}");
    assert_eq!(report[0]["live"]["stopped"], true);
    assert!(
        report[0]["live"]["unrecorded"].as_u64().unwrap() > 0,
        "{stderr}"
    );
    assert!(stderr.contains("left out"), "{stderr}");
    // Where the recording stopped, and why, as after a full disk; not a killed run.
    assert!(
        report[0]["live"]["recording_stopped"]["error"]
            .as_str()
            .is_some_and(|e| e == "--record-max-size 4MiB reached without room to rotate"),
        "{}",
        report[0]["live"]
    );
    assert!(stderr.contains("recording stopped at "), "{stderr}");
    assert!(!stderr.contains("killed"), "{stderr}");
    drop(held);
}
