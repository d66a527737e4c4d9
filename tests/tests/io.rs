//! Each send/receive mechanism behind `last_io`, forced with `TRACER_IO_PROBES`: the one
//! the kernel accepts must tell an end-of-stream read from a peek and from a send, with the
//! same alert whichever it is; one the kernel refuses must fall back to none, with one
//! warning line, and the watch must go on without `last_io`.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Shutdown, TcpListener, TcpStream},
};

use integration_tests::{bound_socket, client_session, listen, privileged, Tracer};
use serde_json::{json, Value};

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A session whose client half-closes (and keeps its socket); the server reads the end of
/// stream, then sends: its last call on the socket is a send, and it stays in CLOSE_WAIT.
fn sent_after_eof(port: u16, listener: &TcpListener) -> (TcpStream, TcpStream, u16) {
    let client = TcpStream::connect((V4, port)).expect("connect");
    let client_port = client.local_addr().expect("client addr").port();
    let (mut server, _) = listener.accept().expect("accept");
    client.shutdown(Shutdown::Write).expect("half-close");
    let mut buf = [0u8; 4];
    assert_eq!(server.read(&mut buf).expect("read EOF"), 0);
    server.write_all(b"bye").expect("send after EOF");
    let mut client = client;
    client
        .read_exact(&mut buf[..3])
        .expect("client reads the reply");
    (server, client, client_port)
}

/// Forces mechanism `forced`, then leaks three server sockets whose last calls were an
/// end-of-stream read, a peek at it, and a send. Where the kernel accepts the mechanism,
/// `io_probes` must be `hooks` and each alert's `last_io` must say which call it was;
/// where it does not, the run must say so once and go on without `last_io`.
fn forced_mechanism(test: &str, forced: &str, hooks: &[&str]) {
    if !privileged(test) {
        return;
    }
    let (socket, port) = bound_socket(V4);
    let listener = listen(socket);
    let mut tracer = Tracer::start_with_env(
        &["--port", &port.to_string(), "--close-wait", "1s"],
        &[("TRACER_IO_PROBES", forced)],
    );
    let attached = tracer.records[0]["attached"]["io_probes"].clone();
    let exercised = attached == json!(hooks);
    assert!(
        exercised || attached == json!([]),
        "either the forced hooks or none: {attached}"
    );

    let (eof, _) = client_session(V4, port, &listener, true);
    let (peeked, _) = client_session(V4, port, &listener, false);
    let (sent, _client, sent_port) = sent_after_eof(port, &listener);
    let records = tracer.wait_for("three stuck records", |r| {
        r.iter().filter(|r| r["type"] == "stuck").count() >= 3
    });
    let stuck: Vec<Value> = records
        .iter()
        .filter(|r| r["type"] == "stuck")
        .cloned()
        .collect();
    let port_of = |s: &TcpStream| u64::from(s.peer_addr().unwrap().port());
    let expected = [
        (port_of(&eof), "eof"),
        (port_of(&peeked), "recv"),
        (u64::from(sent_port), "send"),
    ];
    for (client_port, op) in expected {
        let r = stuck
            .iter()
            .find(|r| r["dport"] == client_port)
            .unwrap_or_else(|| panic!("no alert for the {op} socket: {stuck:#?}"));
        if exercised {
            assert_eq!(r["last_io"]["op"], op, "{r}");
            assert_eq!(r["last_io"]["pid"], std::process::id(), "{r}");
        } else {
            assert_eq!(r["last_io"], Value::Null, "{r}");
        }
    }
    drop((eof, peeked, sent, listener));
    let (status, stderr) = tracer.stop_with(libc::SIGINT);
    assert!(status.success(), "{status}; stderr: {stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("send/receive"))
        .collect();
    if exercised {
        assert!(warnings.is_empty(), "{stderr}");
    } else {
        assert_eq!(warnings.len(), 1, "one warning line: {stderr}");
        let w = warnings[0];
        assert!(
            w.starts_with(&format!(
                "tracer: warning: TRACER_IO_PROBES={forced} forces "
            )) && w.contains("without their last send/receive"),
            "{w}"
        );
        eprintln!("NOT EXERCISED {test}: this kernel refuses {forced}; checked the fallback: {w}");
    }
}

#[test]
fn forced_tp_btf() {
    forced_mechanism(
        "forced_tp_btf",
        "tp_btf",
        &["tp_btf:sock_recv_length", "tp_btf:sock_send_length"],
    );
}

#[test]
fn forced_tracepoints() {
    forced_mechanism(
        "forced_tracepoints",
        "tracepoint",
        &["sock:sock_recv_length", "sock:sock_send_length"],
    );
}

#[test]
fn forced_fentry() {
    forced_mechanism(
        "forced_fentry",
        "fentry",
        &["fexit:tcp_recvmsg", "fentry:tcp_sendmsg"],
    );
}

#[test]
fn forced_kprobes() {
    forced_mechanism(
        "forced_kprobes",
        "kprobe",
        &[
            "kprobe:tcp_recvmsg",
            "kretprobe:tcp_recvmsg",
            "kprobe:tcp_sendmsg",
        ],
    );
}

#[test]
fn forced_none_warns_once_and_watches_on() {
    if !privileged("forced_none_warns_once_and_watches_on") {
        return;
    }
    let (socket, port) = bound_socket(V4);
    let listener = listen(socket);
    let mut tracer = Tracer::start_with_env(
        &["--port", &port.to_string(), "--close-wait", "1s"],
        &[("TRACER_IO_PROBES", "none")],
    );
    assert_eq!(tracer.records[0]["attached"]["io_probes"], json!([]));
    let (server, _) = client_session(V4, port, &listener, true);
    let records = tracer.wait_for("a stuck record", |r| r.iter().any(|r| r["type"] == "stuck"));
    let r = records.iter().find(|r| r["type"] == "stuck").unwrap();
    assert_eq!(r["last_io"], Value::Null, "{r}");
    drop((server, listener));
    let (status, stderr) = tracer.stop_with(libc::SIGINT);
    assert!(status.success());
    assert_eq!(
        stderr.trim_end(),
        "tracer: warning: send/receive hooks are off (TRACER_IO_PROBES=none); stuck sockets are \
         reported without their last send/receive, so no alert can say that the owner read the \
         end of stream"
    );
}

#[test]
fn an_unknown_mechanism_is_refused() {
    if !privileged("an_unknown_mechanism_is_refused") {
        return;
    }
    let mut child = integration_tests::spawn_tracer_with_env(
        &["watch", "--duration", "1s"],
        &[("TRACER_IO_PROBES", "fexit")],
    );
    let (status, stderr) = integration_tests::finish(&mut child);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        "tracer: error: TRACER_IO_PROBES=fexit is not one of auto, tp_btf, tracepoint, fentry, kprobe, \
         none\n"
    );
}
