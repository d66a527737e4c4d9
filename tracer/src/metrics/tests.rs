use std::net::{IpAddr, Ipv4Addr};

use super::*;

fn group(
    state: u8,
    comm: Option<&str>,
    pid: Option<u32>,
    port: ServicePort,
    count: usize,
) -> Group {
    Group {
        state: State(state),
        pid,
        comm: comm.map(String::from),
        netns: Some(4026531840),
        container: None,
        port,
        count,
        oldest_since_ns: 1_000_000_000,
        oldest_is_lower_bound: false,
        fd_count: Some(7),
        fd_limit: Some(1024),
        eof_read: 0,
    }
}

const CLOSE_WAIT: u8 = 8;

fn lines<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .collect()
}

#[test]
fn label_values_are_escaped() {
    let snap = Snapshot {
        groups: vec![group(
            CLOSE_WAIT,
            Some("a\"b\\c\nd"),
            Some(42),
            ServicePort::Local(80),
            3,
        )],
        ..Snapshot::default()
    };
    let text = render(&snap, 20, 3_000_000_000, |_| (None, None));
    let stuck = lines(&text, "tracer_stuck_sockets");
    assert_eq!(stuck.len(), 1, "{text}");
    assert!(stuck[0].contains(r#"comm="a\"b\\c\nd""#), "{}", stuck[0]);
    assert!(stuck[0].ends_with(" 3"), "{}", stuck[0]);
    let oldest = lines(&text, "tracer_stuck_oldest_seconds");
    assert!(oldest[0].ends_with(" 2.0"), "{}", oldest[0]);
}

#[test]
fn groups_past_the_top_are_summed_under_other() {
    let groups: Vec<_> = (0..5)
        .map(|i| {
            group(
                CLOSE_WAIT,
                Some(&format!("app{i}")),
                Some(100 + i),
                ServicePort::Local(8000),
                10 - i as usize,
            )
        })
        .collect();
    let snap = Snapshot {
        groups,
        ..Snapshot::default()
    };
    let text = render(&snap, 2, 2_000_000_000, |pid| {
        (Some(pid as usize), Some(4096))
    });
    let stuck = lines(&text, "tracer_stuck_sockets");
    assert_eq!(stuck.len(), 3, "{text}");
    assert!(stuck
        .iter()
        .any(|l| l.contains(r#"comm="app0""#) && l.ends_with(" 10")));
    assert!(stuck
        .iter()
        .any(|l| l.contains(r#"comm="app1""#) && l.ends_with(" 9")));
    // 8 + 7 + 6.
    assert!(
        stuck.iter().any(|l| l.contains(r#"comm="other""#)
            && l.contains(r#"port="""#)
            && l.ends_with(" 21")),
        "{text}"
    );
    // Only the top owners, with what /proc says now.
    let open = lines(&text, "tracer_owner_open_fds");
    assert_eq!(open.len(), 2, "{text}");
    assert!(open
        .iter()
        .any(|l| l.contains(r#"pid="100""#) && l.ends_with(" 100")));
    assert_eq!(lines(&text, "tracer_owner_fd_limit").len(), 2);
}

#[test]
fn service_port_is_local_when_accepted_remote_when_connected() {
    let remote = ServicePort::Remote(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)), 5432);
    let snap = Snapshot {
        groups: vec![
            group(
                CLOSE_WAIT,
                Some("server"),
                Some(1),
                ServicePort::Local(61616),
                2,
            ),
            group(CLOSE_WAIT, Some("client"), Some(2), remote, 1),
            // Another peer on the same port, same comm: the same series.
            group(
                CLOSE_WAIT,
                Some("client"),
                Some(3),
                ServicePort::Remote(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 6)), 5432),
                4,
            ),
            group(CLOSE_WAIT, None, None, ServicePort::Local(9), 1),
        ],
        ..Snapshot::default()
    };
    let text = render(&snap, 20, 2_000_000_000, |_| (None, None));
    let stuck = lines(&text, "tracer_stuck_sockets");
    assert_eq!(stuck.len(), 3, "{text}");
    assert!(stuck.iter().any(|l| l.contains(r#"comm="server""#)
        && l.contains(r#"port="61616""#)
        && l.ends_with(" 2")));
    assert!(stuck.iter().any(|l| l.contains(r#"comm="client""#)
        && l.contains(r#"port="5432""#)
        && l.ends_with(" 5")));
    assert!(stuck
        .iter()
        .any(|l| l.contains(r#"comm="unknown""#) && l.ends_with(" 1")));
}

#[test]
fn counters_render_by_state() {
    let mut counters = Counters::default();
    counters.transition(State(1), State(CLOSE_WAIT));
    counters.transition(State(1), State(CLOSE_WAIT));
    counters.stuck(State(CLOSE_WAIT));
    let snap = Snapshot {
        counters,
        events: 2,
        lost: 0,
        missed: 3,
        sockets: vec![(State(CLOSE_WAIT), 2)],
        ..Snapshot::default()
    };
    let text = render(&snap, 20, 0, |_| (None, None));
    assert!(
        text.contains(r#"tracer_transitions_total{from="ESTABLISHED",to="CLOSE_WAIT"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"tracer_stuck_total{state="CLOSE_WAIT"} 1"#),
        "{text}"
    );
    assert!(text.contains("tracer_events_total 2"), "{text}");
    assert!(text.contains("tracer_events_lost_total 0"), "{text}");
    assert!(text.contains("tracer_events_missed_total 3"), "{text}");
    assert!(
        text.contains(r#"tracer_sockets{state="CLOSE_WAIT"} 2"#),
        "{text}"
    );
    assert!(text.contains("tracer_build_info{version="), "{text}");
}

#[test]
fn addresses() {
    assert_eq!(parse_addr("9977"), Ok("127.0.0.1:9977".parse().unwrap()));
    assert_eq!(parse_addr("0.0.0.0:80"), Ok("0.0.0.0:80".parse().unwrap()));
    assert!(parse_addr("localhost").is_err());
    assert!(parse_addr("1.2.3.4:99999").is_err());
}

#[test]
fn counters_are_named_with_their_suffix_in_the_classic_format() {
    let snap = Snapshot {
        sockets: vec![(State(CLOSE_WAIT), 1)],
        ..Snapshot::default()
    };
    let text = render(&snap, 20, 0, |_| (None, None));
    assert!(
        text.contains("# TYPE tracer_events_total counter\n"),
        "{text}"
    );
    assert!(
        text.contains("# HELP tracer_events_total Transitions read"),
        "{text}"
    );
    assert!(text.contains("# TYPE tracer_sockets gauge\n"), "{text}");
    assert!(!text.contains("# EOF"), "{text}");
}
