//! When the tracer cannot follow everything: transitions lost while its reader was frozen
//! are healed against the kernel's own list of sockets (phantoms removed, missed leaks
//! found), and a full table never hides a leak.

use std::{
    net::{IpAddr, Ipv4Addr, TcpStream},
    process::Command,
};

use integration_tests::{allow_fds, bound_socket, leak, listen, privileged, Tracer};
use serde_json::Value;

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn of_type<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["type"] == kind).collect()
}

/// How many sockets the kernel has with `port` at either end, in the states the tracer's
/// table follows, as `ss` counts them: not TIME_WAIT, and not FIN_WAIT2, which here are all
/// orphans (their clients closed) that the kernel keeps as TIME_WAIT minisockets.
fn kernel_sockets(port: u16) -> usize {
    let out = Command::new("ss")
        .args([
            "-tanH",
            "state",
            "all",
            "exclude",
            "time-wait",
            "exclude",
            "fin-wait-2",
        ])
        .arg(format!("( sport = :{port} or dport = :{port} )"))
        .output()
        .expect("run ss");
    assert!(out.status.success(), "ss failed");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn lost_transitions_are_healed_against_the_kernel() {
    if !privileged("lost_transitions_are_healed_against_the_kernel") {
        return;
    }
    let (socket, port) = bound_socket(V4);
    let mut tracer = Tracer::start(&[
        "--buffer-size",
        "4KiB",
        "--close-wait",
        "1s",
        "--summary-interval",
        "1s",
        "--port",
        &port.to_string(),
    ]);
    // A frozen reader: 4 KiB holds about 46 records, the rest is lost.
    tracer.signal(libc::SIGSTOP);
    let listener = listen(socket);
    // Connections that come and go: phantoms if their closes are lost...
    let churn: Vec<_> = (0..100)
        .map(|_| {
            let c = TcpStream::connect((V4, port)).expect("connect");
            (c, listener.accept().expect("accept").0)
        })
        .collect();
    drop(churn);
    // ...connections that stay open, and a leak whose every transition is lost.
    let open: Vec<_> = (0..5)
        .map(|_| {
            let c = TcpStream::connect((V4, port)).expect("connect");
            (c, listener.accept().expect("accept").0)
        })
        .collect();
    let leaked = leak(V4, port, &listener, 3);
    tracer.signal(libc::SIGCONT);
    let records = tracer
        .wait_for("the table healed and the lost leak flagged", |r| {
            !of_type(r, "reconciled").is_empty() && of_type(r, "stuck").len() >= 3
        })
        .to_vec();
    let healed = of_type(&records, "reconciled")[0];
    assert_eq!(healed["reason"], "lost", "{healed}");
    let stuck = of_type(&records, "stuck");
    for (server, client_port) in &leaked {
        let r = stuck
            .iter()
            .find(|r| r["dport"] == *client_port)
            .unwrap_or_else(|| panic!("the leak from :{client_port} was not flagged: {stuck:#?}"));
        assert_eq!(r["owner"]["pid"], std::process::id(), "{r}");
        let fd = std::os::fd::AsRawFd::as_raw_fd(server);
        assert_eq!(r["owner"]["fds"], serde_json::json!([fd]), "{r}");
    }
    // The table now holds what the kernel holds: the next summary's count.
    let expected = kernel_sockets(port);
    let after = records.len();
    let records = tracer
        .wait_for("a summary after the healing", |r| {
            r[after..].iter().any(|r| r["type"] == "summary")
        })
        .to_vec();
    let summary = records[after..]
        .iter()
        .find(|r| r["type"] == "summary")
        .unwrap();
    assert_eq!(
        summary["tracked"].as_u64(),
        Some(expected as u64),
        "the kernel has {expected} sockets on :{port}: {summary}"
    );
    let (status, stderr) = tracer.stop_with(libc::SIGINT);
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains("transitions were lost: checked the table against the kernel's sockets"),
        "{stderr}"
    );
    drop((open, leaked, listener));
}

#[test]
fn a_full_table_still_flags_every_leak() {
    if !privileged("a_full_table_still_flags_every_leak") {
        return;
    }
    const IDLE: usize = 4500;
    const LEAKED: usize = 500;
    // Both ends of every connection are here: 10,000 descriptors.
    allow_fds(12_000);
    let (socket, port) = bound_socket(V4);
    let listener = listen(socket);
    let mut tracer = Tracer::start(&[
        "--port",
        &port.to_string(),
        "--max-sockets",
        "1024",
        "--close-wait",
        "2s",
    ]);
    let idle: Vec<_> = (0..IDLE)
        .map(|_| {
            let c = TcpStream::connect((V4, port)).expect("connect");
            (c, listener.accept().expect("accept").0)
        })
        .collect();
    let leaked = leak(V4, port, &listener, LEAKED);
    let records = tracer
        .wait_for("every leak flagged", |r| {
            of_type(r, "stuck").len() >= LEAKED
        })
        .to_vec();
    let mut flagged: Vec<u64> = of_type(&records, "stuck")
        .iter()
        .map(|r| r["dport"].as_u64().unwrap())
        .collect();
    flagged.sort_unstable();
    flagged.dedup();
    let mut expected: Vec<u64> = leaked.iter().map(|(_, p)| u64::from(*p)).collect();
    expected.sort_unstable();
    assert_eq!(flagged, expected, "each leak flagged once");
    let (status, stderr) = tracer.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}: {stderr}");
    let stop = tracer.records.last().unwrap();
    assert!(stop["evicted"].as_u64().is_some_and(|n| n > 0), "{stop}");
    assert_eq!(stop["evicted_stuck"], 0, "{stop}");
    assert!(
        stderr.contains("table full: ") && stderr.contains("raise --max-sockets"),
        "{stderr}"
    );
    drop((idle, leaked, listener));
}
