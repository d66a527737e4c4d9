//! `TRACER_DEBUG=1`: the probe logs what should not happen through aya-log, forwarded to
//! stderr; without it, nothing of the kind (the verifier drops the logging code).

use std::net::{IpAddr, Ipv4Addr};

use integration_tests::{bound_socket, closed_session, listen, privileged, Tracer};

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Overflows a 4 KiB ring buffer behind a frozen reader; returns the stderr of the run.
fn overflow(env: &[(&str, &str)]) -> String {
    let (socket, port) = bound_socket(V4);
    let mut tracer = Tracer::start_with_env(
        &[
            "--events",
            "--buffer-size",
            "4KiB",
            "--port",
            &port.to_string(),
        ],
        env,
    );
    // A frozen reader makes the overflow certain: 4 KiB holds about 46 records.
    tracer.signal(libc::SIGSTOP);
    let listener = listen(socket);
    for _ in 0..50 {
        closed_session(&listener);
    }
    drop(listener);
    tracer.signal(libc::SIGCONT);
    tracer.wait_for("a lost record", |r| r.iter().any(|r| r["type"] == "lost"));
    let (status, stderr) = tracer.stop_with(libc::SIGINT);
    assert!(status.success(), "{status}: {stderr}");
    stderr
}

#[test]
fn debug_logs_come_from_the_probe() {
    if !privileged("debug_logs_come_from_the_probe") {
        return;
    }
    let stderr = overflow(&[("TRACER_DEBUG", "1")]);
    let logged: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("tracer: probe: warn: inet_sock_set_state: ring buffer full"))
        .collect();
    assert!(!logged.is_empty(), "{stderr}");
    assert!(
        logged[0].contains(", lost state ") && logged[0].contains(" of port "),
        "{}",
        logged[0]
    );
}

#[test]
fn without_debug_the_probe_says_nothing() {
    if !privileged("without_debug_the_probe_says_nothing") {
        return;
    }
    let stderr = overflow(&[]);
    assert!(stderr.contains("transitions lost"), "{stderr}");
    assert!(!stderr.contains("tracer: probe:"), "{stderr}");
}

#[test]
fn the_verifier_takes_the_logging_code_wherever_it_takes_the_probe() {
    if !privileged("the_verifier_takes_the_logging_code_wherever_it_takes_the_probe") {
        return;
    }
    // The same mechanisms attach with logging compiled in as without it.
    for forced in ["tp_btf", "tracepoint", "fentry", "kprobe"] {
        let io_probes = |debug: &str| {
            let tracer = Tracer::start_with_env(
                &["--duration", "1s"],
                &[("TRACER_IO_PROBES", forced), ("TRACER_DEBUG", debug)],
            );
            tracer.records[0]["attached"]["io_probes"].clone()
        };
        assert_eq!(io_probes("1"), io_probes("0"), "TRACER_IO_PROBES={forced}");
    }
}
