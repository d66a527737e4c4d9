//! The probe counts what it skips in the kernel, by reason, and the stop record says so.

use std::net::{IpAddr, Ipv4Addr, TcpStream};

use integration_tests::{bound_socket, listen, privileged, Tracer};

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Five loopback connections, accepted and closed on both ends.
fn some_traffic() {
    let (socket, port) = bound_socket(V4);
    let listener = listen(socket);
    for _ in 0..5 {
        let client = TcpStream::connect((V4, port)).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        drop((client, server));
    }
}

#[test]
fn a_port_nobody_uses_filters_everything_out_and_counts_it() {
    if !privileged("a_port_nobody_uses_filters_everything_out_and_counts_it") {
        return;
    }
    let tracer = Tracer::start(&["--events", "--port", "1"]);
    some_traffic();
    let records = tracer.stop();
    let stop = records.last().unwrap();
    assert_eq!(stop["events"], 0, "{stop}");
    let skipped = &stop["skipped"];
    assert!(
        skipped["filtered"].as_u64().is_some_and(|n| n >= 5 * 4),
        "each connection's transitions were filtered out: {stop}"
    );
    assert_eq!(skipped["unreadable"], 0, "{stop}");
}

#[test]
fn without_filters_nothing_is_filtered_out() {
    if !privileged("without_filters_nothing_is_filtered_out") {
        return;
    }
    let tracer = Tracer::start(&["--events"]);
    some_traffic();
    let records = tracer.stop();
    let stop = records.last().unwrap();
    assert!(
        stop["events"].as_u64().is_some_and(|n| n >= 5 * 4),
        "{stop}"
    );
    assert_eq!(stop["skipped"]["filtered"], 0, "{stop}");
    assert_eq!(stop["skipped"]["unreadable"], 0, "{stop}");
}
