//! Both renderers over the same records: exact text lines and JSON fields.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tracer_common::TcpState;

use super::{
    text::{fd_usage, human_duration},
    *,
};
use crate::{
    model::{Comm, Family, HeldBy, IoOp, LastIo, Origin, Owner, Socket, TimeStyle},
    probe::SkipCounts,
};

/// The network namespace of the host, which the tests' tracer runs in too.
const HOST_NETNS: u32 = 4026531840;

/// 2026-11-25T06:00:00Z at monotonic zero.
const EPOCH: i128 = 1_795_586_400 * 1_000_000_000;

fn transition(family: Family) -> Transition {
    let (saddr, daddr) = match family {
        Family::Ipv4 => (
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
        ),
        Family::Ipv6 => (
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()),
        ),
    };
    Transition {
        ts_ns: 61_000_000_123,
        sk: 0xffff_8880_0abc_d000,
        pid: 4242,
        tid: 4243,
        comm: Comm::from("java"),
        netns: HOST_NETNS,
        family,
        saddr,
        sport: 61616,
        daddr,
        dport: 40000,
        old: TcpState::Established.into(),
        new: TcpState::CloseWait.into(),
    }
}

fn render(
    format: Format,
    f: impl FnOnce(&mut Output<&mut Vec<u8>, &mut Vec<u8>>),
) -> (String, String) {
    render_styled(
        format,
        TextStyle {
            own_netns: HOST_NETNS,
            ..TextStyle::default()
        },
        f,
    )
}

/// What `f` writes to an output of `format` (text in `style`): data, then status.
fn render_styled(
    format: Format,
    style: TextStyle,
    f: impl FnOnce(&mut Output<&mut Vec<u8>, &mut Vec<u8>>),
) -> (String, String) {
    let (mut out, mut status) = (Vec::new(), Vec::new());
    f(&mut Output::new(
        format,
        style,
        WallClock::with_offset(EPOCH),
        &mut out,
        &mut status,
    ));
    (
        String::from_utf8(out).unwrap(),
        String::from_utf8(status).unwrap(),
    )
}

#[test]
fn transition_as_json() {
    let (out, _) = render(Format::Json, |o| {
        o.transition(&transition(Family::Ipv6)).unwrap()
    });
    assert_eq!(
        out,
        "{\"type\":\"transition\",\"time\":\"2026-11-25T06:01:01.000000123Z\",\"ts_ns\":61000000123,\
         \"netns\":4026531840,\"family\":\"ipv6\",\"saddr\":\"::1\",\"sport\":61616,\"daddr\":\"::ffff:10.0.0.1\",\"dport\":40000,\
         \"old\":\"ESTABLISHED\",\"new\":\"CLOSE_WAIT\",\"pid\":4242,\"tid\":4243,\"comm\":\"java\",\
         \"sk\":\"0xffff88800abcd000\"}\n"
    );
}

/// A stuck alert for `socket` at 31.5 s and the summary it makes, in `format`.
fn stuck_and_summary(format: Format, socket: &Socket, ownership: &Ownership) -> String {
    let report = SocketReport {
        key: SocketKey::Sk(1),
        socket,
        ownership,
    };
    let groups = summary::group(std::iter::once((socket, Some(ownership))), |_| None);
    render(format, |o| {
        o.stuck(&report, 31_500_000_000, Duration::from_secs(30))
            .unwrap();
        o.summary(
            SummaryReason::Interval,
            &groups,
            TableStats::default(),
            &BTreeMap::new(),
            31_500_000_000,
        )
        .unwrap();
    })
    .0
}

fn leaked() -> (Socket, Ownership) {
    use crate::{attribute::tests::java as java_process, model::Endpoints};
    let socket = Socket {
        id: 1,
        ends: Endpoints {
            netns: HOST_NETNS,
            family: Family::Ipv4,
            saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sport: 61616,
            daddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
            dport: 40000,
        },
        state: TcpState::CloseWait.into(),
        since_ns: 1_000_000_000,
        since_is_lower_bound: false,
        origin: Origin::Accepted,
        hint: None,
        flagged: true,
        born_ns: 0,
    };
    let java = |pid, fd| Owner {
        process: java_process(pid),
        fds: vec![fd],
        fd_count: 1013,
    };
    let ownership = Ownership {
        held_by: HeldBy::Fd,
        owners: vec![java(4242, 17), java(4300, 17)],
        last_io: None,
    };
    (socket, ownership)
}

/// `java[4242]` received `op` at monotonic 2 s.
fn java_io(op: IoOp) -> Option<LastIo> {
    Some(LastIo {
        ts_ns: 2_000_000_000,
        pid: 4242,
        comm: "java".into(),
        op,
    })
}

#[test]
fn stuck_and_resolved_as_json() {
    let (socket, mut ownership) = leaked();
    ownership.last_io = java_io(IoOp::Eof);
    let report = SocketReport {
        key: SocketKey::Sk(0xffff_8880_0000_1000),
        socket: &socket,
        ownership: &ownership,
    };
    let (out, _) = render(Format::Json, |o| {
        o.stuck(&report, 31_500_000_000, Duration::from_secs(30))
            .unwrap();
        o.resolved(&report, 91_000_000_000, TcpState::LastAck.into())
            .unwrap();
    });
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let service = serde_json::json!({"id":"activemq.service","runtime":"systemd","pod_uid":null});
    let owner = serde_json::json!({"pid":4242,"comm":"java","cmdline":"java -jar activemq.jar",
        "uid":1000,"fds":[17],"fd_count":1013,"fd_limit":1024,"cgroup":"/system.slice/activemq.service",
        "container":service});
    assert_eq!(
        lines[0],
        serde_json::json!({"type":"stuck","time":"2026-11-25T06:00:31.500000000Z","state":"CLOSE_WAIT",
            "age_ms":30500,"age_is_lower_bound":false,"threshold_ms":30000,"netns":HOST_NETNS,"family":"ipv4",
            "saddr":"127.0.0.1","sport":61616,"daddr":"10.0.0.9","dport":40000,"sk":"0xffff888000001000",
            "origin":"accepted","held_by":"fd","owner":owner,
            "other_owners":[{"pid":4300,"comm":"java","cmdline":"java -jar activemq.jar","uid":1000,
                "fds":[17],"fd_count":1013,"fd_limit":1024,"cgroup":"/system.slice/activemq.service",
                "container":service}],
            "last_caller":null,"last_io":{"pid":4242,"comm":"java","op":"eof","ago_ms":29500}})
    );
    assert_eq!(lines[1]["type"], "resolved");
    assert_eq!(lines[1]["last_io"]["ago_ms"], 89_000, "as of leaving");
    assert_eq!(lines[1]["stuck_ms"], 90_000);
    assert_eq!(lines[1]["new"], "LAST_ACK");
    assert_eq!(lines[1]["owner"], owner);
    assert!(lines[1].get("age_ms").is_none());
}

#[test]
fn stuck_resolved_and_summary_as_text() {
    let (mut socket, ownership) = leaked();
    socket.since_is_lower_bound = true;
    let report = SocketReport {
        key: SocketKey::Snapshot(7),
        socket: &socket,
        ownership: &ownership,
    };
    let groups = summary::group(std::iter::once((&socket, Some(&ownership))), |_| None);
    let (out, _) = render(Format::Text, |o| {
        o.stuck(&report, 7_981_000_000_000, Duration::from_secs(30))
            .unwrap();
        o.resolved(&report, 7_990_000_000_000, TcpState::LastAck.into())
            .unwrap();
        let stats = TableStats {
            tracked: 1523,
            ..TableStats::default()
        };
        o.summary(
            SummaryReason::Interval,
            &groups,
            stats,
            &BTreeMap::new(),
            7_981_000_000_000,
        )
        .unwrap();
        o.summary(SummaryReason::Interval, &[], stats, &BTreeMap::new(), 0)
            .unwrap();
    });
    let lines: Vec<&str> = out.lines().collect();
    // Nothing named the date before: the first line does.
    assert_eq!(lines[0], "-- 2026-11-25 (UTC) --");
    assert_eq!(
        lines[1],
        "08:13:01 STUCK CLOSE_WAIT for at least 2h13m 127.0.0.1:61616 <- 10.0.0.9:40000 \
         java[4242] fd 17, fds 1013/1024 (98%), uid 1000, cgroup /system.slice/activemq.service; \
         also java[4300] fd 17"
    );
    assert_eq!(
        lines[2],
        "08:13:10 RESOLVED CLOSE_WAIT -> LAST_ACK after at least 2h13m 127.0.0.1:61616 <- 10.0.0.9:40000 java[4242]"
    );
    assert_eq!(lines[3], "08:13:01 SUMMARY 1 socket stuck, 1523 tracked");
    assert_eq!(
        lines[4],
        "  java[4242] holds 1 socket in CLOSE_WAIT on :61616 (oldest at least 2h13m), fds 1013/1024 (98%)"
    );
    assert!(
        lines[5].starts_with("  advice: CLOSE_WAIT means"),
        "{}",
        lines[5]
    );
    // The leak is over: said once.
    assert_eq!(lines[6], "06:00:00 SUMMARY no sockets stuck, 1523 tracked");
    assert_eq!(lines.len(), 7, "{out}");
}

/// A stuck socket and who holds it.
type Held = (Socket, Ownership);

/// A socket stuck in `state` on local port `port` since 1 s, its peer at `peer`, held by
/// `java[pid]` (or by nobody found).
fn held(pid: Option<u32>, state: TcpState, port: u16, peer: u16) -> Held {
    let (mut socket, mut ownership) = leaked();
    socket.state = state.into();
    socket.ends.sport = port;
    socket.ends.dport = peer;
    match pid {
        Some(pid) => {
            ownership.owners.truncate(1);
            ownership.owners[0].process.pid = pid;
        }
        None => {
            ownership.owners.clear();
            ownership.held_by = HeldBy::Unknown;
        }
    }
    (socket, ownership)
}

/// A batch of alerts, each of `(pid, state, port)` repeated `n` times on peers from 40000.
fn burst(groups: &[(Option<u32>, TcpState, u16, usize)]) -> Vec<Held> {
    let mut peer = 40_000;
    let mut all = Vec::new();
    for &(pid, state, port, n) in groups {
        for _ in 0..n {
            all.push(held(pid, state, port, peer));
            peer += 1;
        }
    }
    all
}

/// Reports every socket of `sockets` stuck at `at_ns`, as one batch.
fn flag_all(o: &mut Output<&mut Vec<u8>, &mut Vec<u8>>, sockets: &[Held], at_ns: u64) {
    for (socket, ownership) in sockets {
        let r = SocketReport {
            key: SocketKey::Sk(1),
            socket,
            ownership,
        };
        o.stuck(&r, at_ns, Duration::from_secs(30)).unwrap();
    }
    o.flush().unwrap();
}

/// What text a live run prints for `f`: folded alerts, clock times.
fn live_text(f: impl FnOnce(&mut Output<&mut Vec<u8>, &mut Vec<u8>>)) -> Vec<String> {
    let style = TextStyle {
        own_netns: HOST_NETNS,
        fold: true,
        ..TextStyle::default()
    };
    let (out, _) = render_styled(Format::Text, style, f);
    out.lines().map(str::to_owned).collect()
}

/// The alert lines of `lines` cut after the peer's port: enough to tell them apart.
fn heads(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| match l.find(" <- 10.0.0.9:") {
            Some(i) => l[..i + " <- 10.0.0.9:40000".len()].to_owned(),
            None => l.clone(),
        })
        .collect()
}

#[test]
fn a_burst_shows_the_first_few_of_each_group_then_one_line_for_the_rest() {
    use TcpState::{CloseWait, FinWait2};
    let sockets = burst(&[
        (Some(4242), CloseWait, 61616, 5),
        // Another process, another port, another state, no owner: other groups.
        (Some(4300), CloseWait, 61616, 4),
        (Some(4242), CloseWait, 8080, 3),
        (Some(4242), FinWait2, 61616, 4),
        (None, CloseWait, 61616, 6),
    ]);
    let lines = live_text(|o| {
        flag_all(o, &sockets, 31_500_000_000);
        // The next batch: its own first few.
        flag_all(o, &sockets[..4], 32_500_000_000);
    });
    let stuck = "STUCK CLOSE_WAIT for 30s 127.0.0.1";
    assert_eq!(
        heads(&lines),
        [
            "-- 2026-11-25 (UTC) --".to_owned(),
            format!("06:00:31 {stuck}:61616 <- 10.0.0.9:40000"),
            format!("06:00:31 {stuck}:61616 <- 10.0.0.9:40001"),
            format!("06:00:31 {stuck}:61616 <- 10.0.0.9:40002"),
            format!("06:00:31 {stuck}:61616 <- 10.0.0.9:40005"),
            format!("06:00:31 {stuck}:61616 <- 10.0.0.9:40006"),
            format!("06:00:31 {stuck}:61616 <- 10.0.0.9:40007"),
            format!("06:00:31 {stuck}:8080 <- 10.0.0.9:40009"),
            format!("06:00:31 {stuck}:8080 <- 10.0.0.9:40010"),
            format!("06:00:31 {stuck}:8080 <- 10.0.0.9:40011"),
            "06:00:31 STUCK FIN_WAIT2 for 30s 127.0.0.1:61616 <- 10.0.0.9:40012".to_owned(),
            "06:00:31 STUCK FIN_WAIT2 for 30s 127.0.0.1:61616 <- 10.0.0.9:40013".to_owned(),
            "06:00:31 STUCK FIN_WAIT2 for 30s 127.0.0.1:61616 <- 10.0.0.9:40014".to_owned(),
            format!("06:00:31 {stuck}:61616 <- 10.0.0.9:40016"),
            format!("06:00:31 {stuck}:61616 <- 10.0.0.9:40017"),
            format!("06:00:31 {stuck}:61616 <- 10.0.0.9:40018"),
            "06:00:31 STUCK java[4242] 2 more sockets stuck in CLOSE_WAIT on :61616 (oldest 30s)"
                .to_owned(),
            "06:00:31 STUCK java[4300] 1 more socket stuck in CLOSE_WAIT on :61616 (oldest 30s)"
                .to_owned(),
            "06:00:31 STUCK java[4242] 1 more socket stuck in FIN_WAIT2 on :61616 (oldest 30s)"
                .to_owned(),
            "06:00:31 STUCK no owner found: 3 more sockets stuck in CLOSE_WAIT on :61616 (oldest 30s)"
                .to_owned(),
            "06:00:32 STUCK CLOSE_WAIT for 31s 127.0.0.1:61616 <- 10.0.0.9:40000".to_owned(),
            "06:00:32 STUCK CLOSE_WAIT for 31s 127.0.0.1:61616 <- 10.0.0.9:40001".to_owned(),
            "06:00:32 STUCK CLOSE_WAIT for 31s 127.0.0.1:61616 <- 10.0.0.9:40002".to_owned(),
            "06:00:32 STUCK java[4242] 1 more socket stuck in CLOSE_WAIT on :61616 (oldest 31s)"
                .to_owned(),
        ]
    );
    // The lines shown are whole alerts.
    assert!(
        lines[1].ends_with("10.0.0.9:40000 java[4242] fd 17, fds 1013/1024 (98%), uid 1000, cgroup /system.slice/activemq.service"),
        "{}",
        lines[1]
    );
    assert!(
        lines[13].ends_with("10.0.0.9:40016 owner unknown"),
        "{}",
        lines[13]
    );
}

#[test]
fn folded_lines_tell_the_oldest_and_follow_the_time_style_and_colour() {
    let mut sockets = burst(&[(Some(4242), TcpState::CloseWait, 61616, 6)]);
    // Held back: one seen entering 2 s before the others, one known only since the start.
    sockets[4].0.since_ns = 0;
    sockets[5].0.since_ns = 500_000_000;
    sockets[5].0.since_is_lower_bound = true;
    sockets[5].0.ends.netns = 4026532999;
    let style = TextStyle {
        color: true,
        time: TimeStyle::Rfc3339,
        own_netns: HOST_NETNS,
        fold: true,
    };
    let (out, _) = render_styled(Format::Text, style, |o| {
        flag_all(o, &sockets[..5], 31_500_000_000);
        // Another namespace, another group: shown.
        flag_all(o, &sockets[..4], 31_500_000_000);
        flag_all(o, &sockets[5..], 31_500_000_000);
    });
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[3],
        "2026-11-25T06:00:31.500000000Z \x1b[1;31mSTUCK\x1b[0m java[4242] 2 more sockets stuck \
         in CLOSE_WAIT on :61616 (oldest 31s)"
    );
    assert_eq!(
        lines[7],
        "2026-11-25T06:00:31.500000000Z \x1b[1;31mSTUCK\x1b[0m java[4242] 1 more socket stuck \
         in CLOSE_WAIT on :61616 (oldest 30s)"
    );
    assert!(
        lines[8].contains(" netns 4026532999 java[4242] fd 17"),
        "{}",
        lines[8]
    );
    assert_eq!(lines.len(), 9, "{out}");

    // Alone in its group past the first few, a lower bound says so.
    let (out, _) = render_styled(
        Format::Text,
        TextStyle {
            fold: true,
            ..TextStyle::default()
        },
        |o| {
            let mut all = sockets[..3].to_vec();
            all.push(sockets[5].clone());
            for s in &mut all {
                s.0.ends.netns = 0;
            }
            flag_all(o, &all, 31_500_000_000);
        },
    );
    assert!(
        out.ends_with(
            " STUCK java[4242] 1 more socket stuck in CLOSE_WAIT on :61616 (oldest at least 31s)\n"
        ),
        "{out}"
    );
}

#[test]
fn a_burst_of_resolutions_folds_as_flags_do() {
    let sockets = burst(&[
        (Some(4242), TcpState::CloseWait, 61616, 5),
        (None, TcpState::CloseWait, 61616, 4),
    ]);
    let lines = live_text(|o| {
        for (i, (socket, ownership)) in sockets.iter().enumerate() {
            let r = SocketReport {
                key: SocketKey::Sk(1),
                socket,
                ownership,
            };
            // The last one left after 89 s in CLOSE_WAIT.
            o.resolved(
                &r,
                60_000_000_000 + i as u64 * 1_000_000_000,
                TcpState::LastAck.into(),
            )
            .unwrap();
        }
        o.flush().unwrap();
    });
    assert_eq!(
        heads(&lines[1..]),
        [
            "06:01:00 RESOLVED CLOSE_WAIT -> LAST_ACK after 59s 127.0.0.1:61616 <- 10.0.0.9:40000",
            "06:01:01 RESOLVED CLOSE_WAIT -> LAST_ACK after 1m0s 127.0.0.1:61616 <- 10.0.0.9:40001",
            "06:01:02 RESOLVED CLOSE_WAIT -> LAST_ACK after 1m1s 127.0.0.1:61616 <- 10.0.0.9:40002",
            "06:01:05 RESOLVED CLOSE_WAIT -> LAST_ACK after 1m4s 127.0.0.1:61616 <- 10.0.0.9:40005",
            "06:01:06 RESOLVED CLOSE_WAIT -> LAST_ACK after 1m5s 127.0.0.1:61616 <- 10.0.0.9:40006",
            "06:01:07 RESOLVED CLOSE_WAIT -> LAST_ACK after 1m6s 127.0.0.1:61616 <- 10.0.0.9:40007",
            "06:01:04 RESOLVED java[4242] 2 more sockets left CLOSE_WAIT on :61616 (longest 1m3s)",
            "06:01:08 RESOLVED no owner found: 1 more socket left CLOSE_WAIT on :61616 (longest 1m7s)",
        ]
    );
}

#[test]
fn any_other_record_ends_a_batch_and_a_report_folds_nothing() {
    let sockets = burst(&[(Some(4242), TcpState::CloseWait, 61616, 5)]);
    let alert = |o: &mut Output<&mut Vec<u8>, &mut Vec<u8>>, (socket, ownership): &Held| {
        let r = SocketReport {
            key: SocketKey::Sk(1),
            socket,
            ownership,
        };
        o.stuck(&r, 31_500_000_000, Duration::from_secs(30))
            .unwrap();
    };
    let lines = live_text(|o| {
        for s in &sockets {
            alert(o, s);
        }
        // What was held back comes before the next record.
        o.transition(&transition(Family::Ipv4)).unwrap();
        for s in &sockets[..4] {
            alert(o, s);
        }
        o.lost(1, 1).unwrap();
    });
    let kinds: Vec<&str> = lines
        .iter()
        .map(|l| match l {
            l if l.starts_with("-- ") => "date",
            l if l.contains(" more socket") => "folded",
            l if l.contains(" STUCK ") => "stuck",
            _ => "transition",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "date",
            "stuck",
            "stuck",
            "stuck",
            "folded",
            "transition",
            "stuck",
            "stuck",
            "stuck",
            "folded"
        ],
        "{lines:#?}"
    );
    assert!(
        lines[9].contains(" java[4242] 1 more socket "),
        "{}",
        lines[9]
    );
    // A report lists every socket (`fold` off), as JSON always does.
    let (text, _) = render(Format::Text, |o| {
        for s in &sockets {
            alert(o, s);
        }
        o.flush().unwrap();
    });
    assert_eq!(
        text.matches(" STUCK CLOSE_WAIT for 30s ").count(),
        5,
        "{text}"
    );
    let style = TextStyle {
        fold: true,
        ..TextStyle::default()
    };
    let (json, _) = render_styled(Format::Json, style, |o| {
        flag_all(o, &sockets, 31_500_000_000)
    });
    assert_eq!(json.matches("{\"type\":\"stuck\",").count(), 5, "{json}");
}

/// The groups `sockets` make.
fn groups_of(sockets: &[Held]) -> Vec<Group> {
    summary::group(sockets.iter().map(|(s, o)| (s, Some(o))), |_| None)
}

#[test]
fn a_summary_is_printed_in_full_when_it_changed_and_advice_once_per_group() {
    use TcpState::{CloseWait, FinWait2};
    let java = burst(&[(Some(4242), CloseWait, 61616, 4)]);
    let peer = burst(&[(Some(4300), FinWait2, 61616, 2)]);
    let other_java = burst(&[(Some(4300), CloseWait, 8080, 1)]);
    let both: Vec<_> = java.iter().chain(&peer).cloned().collect();
    let stats = TableStats {
        tracked: 10,
        ..TableStats::default()
    };
    let s = 1_000_000_000;
    let summaries: [(SummaryReason, &[Held], u64); 11] = [
        (SummaryReason::Interval, &java[..3], 11 * s),
        // Nothing changed but the ages: one line.
        (SummaryReason::Interval, &java[..3], 21 * s),
        // One more in the group: in full, the advice already given.
        (SummaryReason::Interval, &java, 31 * s),
        // A new group in another state: its advice.
        (SummaryReason::Interval, &both, 41 * s),
        (SummaryReason::Interval, &both, 51 * s),
        // Gone: said once, then nothing.
        (SummaryReason::Interval, &[], 61 * s),
        (SummaryReason::Interval, &[], 71 * s),
        // Back: its advice again.
        (SummaryReason::Interval, &java[..1], 81 * s),
        // A new group in a state already advised about: advice once more, for it.
        (SummaryReason::Interval, &other_java, 91 * s),
        (SummaryReason::Interval, &other_java, 101 * s),
        // The end: in full, no advice given already.
        (SummaryReason::Stop, &other_java, 111 * s),
    ];
    let lines = live_text(|o| {
        for (reason, sockets, at) in summaries {
            o.summary(reason, &groups_of(sockets), stats, &BTreeMap::new(), at)
                .unwrap();
        }
    });
    let short: Vec<String> = lines
        .iter()
        .map(|l| match l.split_once(" means ") {
            Some((advice, _)) => advice.to_owned(),
            None => l.clone(),
        })
        .collect();
    assert_eq!(
        short,
        [
            "-- 2026-11-25 (UTC) --",
            "06:00:11 SUMMARY 3 sockets stuck, 10 tracked",
            "  java[4242] holds 3 sockets in CLOSE_WAIT on :61616 (oldest 10s), fds 1013/1024 (98%)",
            "  advice: CLOSE_WAIT",
            "06:00:21 SUMMARY unchanged: 3 sockets stuck in 1 group (oldest 20s)",
            "06:00:31 SUMMARY 4 sockets stuck, 10 tracked",
            "  java[4242] holds 4 sockets in CLOSE_WAIT on :61616 (oldest 30s), fds 1013/1024 (98%)",
            "06:00:41 SUMMARY 6 sockets stuck, 10 tracked",
            "  java[4242] holds 4 sockets in CLOSE_WAIT on :61616 (oldest 40s), fds 1013/1024 (98%)",
            "  java[4300] holds 2 sockets in FIN_WAIT2 on :61616 (oldest 40s), fds 1013/1024 (98%)",
            "  advice: FIN_WAIT2",
            "06:00:51 SUMMARY unchanged: 6 sockets stuck in 2 groups (oldest 50s)",
            "06:01:01 SUMMARY no sockets stuck, 10 tracked",
            "06:01:21 SUMMARY 1 socket stuck, 10 tracked",
            "  java[4242] holds 1 socket in CLOSE_WAIT on :61616 (oldest 1m20s), fds 1013/1024 (98%)",
            "  advice: CLOSE_WAIT",
            "06:01:31 SUMMARY 1 socket stuck, 10 tracked",
            "  java[4300] holds 1 socket in CLOSE_WAIT on :8080 (oldest 1m30s), fds 1013/1024 (98%)",
            "  advice: CLOSE_WAIT",
            "06:01:41 SUMMARY unchanged: 1 socket stuck in 1 group (oldest 1m40s)",
            "06:01:51 SUMMARY 1 socket stuck, 10 tracked",
            "  java[4300] holds 1 socket in CLOSE_WAIT on :8080 (oldest 1m50s), fds 1013/1024 (98%)",
        ]
    );

    // JSON: every summary, every time.
    let style = TextStyle {
        fold: true,
        ..TextStyle::default()
    };
    let (json, _) = render_styled(Format::Json, style, |o| {
        for (reason, sockets, at) in summaries {
            o.summary(reason, &groups_of(sockets), stats, &BTreeMap::new(), at)
                .unwrap();
        }
    });
    assert_eq!(json.lines().count(), summaries.len(), "{json}");
}

/// The owners of `leaked()` moved to the cgroups `first` and `second`.
fn leaked_in(first: Option<&str>, second: Option<&str>) -> (Socket, Ownership) {
    let (socket, mut ownership) = leaked();
    ownership.owners[0].process.cgroup = first.map(str::to_owned);
    ownership.owners[1].process.cgroup = second.map(str::to_owned);
    (socket, ownership)
}

const ID: &str = "3f2a1b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a";

#[test]
fn containers_name_their_owners_in_json() {
    let docker = format!("/system.slice/docker-{ID}.scope");
    let pod = format!(
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0d2f6c1e_9a4b_4e8d_b3c7_5f1a2e9d8c6b.slice/cri-containerd-{ID}.scope"
    );
    let (socket, ownership) = leaked_in(Some(&docker), Some(&pod));
    let out = stuck_and_summary(Format::Json, &socket, &ownership);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let in_docker = serde_json::json!({"id":ID,"runtime":"docker","pod_uid":null});
    assert_eq!(lines[0]["owner"]["container"], in_docker);
    assert_eq!(lines[0]["owner"]["cgroup"], docker);
    assert_eq!(
        lines[0]["other_owners"][0]["container"],
        serde_json::json!({"id":ID,"runtime":"containerd",
            "pod_uid":"0d2f6c1e-9a4b-4e8d-b3c7-5f1a2e9d8c6b"})
    );
    assert_eq!(lines[1]["groups"][0]["container"], in_docker);

    // Neither a container nor a service, or no cgroup at all: null.
    for cgroup in [Some("/user.slice/user-1000.slice/session-3.scope"), None] {
        let (socket, ownership) = leaked_in(cgroup, cgroup);
        let report = SocketReport {
            key: SocketKey::Sk(1),
            socket: &socket,
            ownership: &ownership,
        };
        let (out, _) = render(Format::Json, |o| {
            o.stuck(&report, 31_500_000_000, Duration::from_secs(30))
                .unwrap()
        });
        let line: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(
            line["owner"]["container"],
            serde_json::Value::Null,
            "{cgroup:?}"
        );
    }
}

#[test]
fn containers_name_their_owners_in_text() {
    let docker = format!("/system.slice/docker-{ID}.scope");
    let pod = format!("/kubepods/burstable/pod0d2f6c1e-9a4b-4e8d-b3c7-5f1a2e9d8c6b/crio-{ID}");
    for (cgroup, said) in [
        (docker.as_str(), "container 3f2a1b9c8d7e (docker)"),
        (
            pod.as_str(),
            "container 3f2a1b9c8d7e (cri-o, pod 0d2f6c1e-9a4b-4e8d-b3c7-5f1a2e9d8c6b)",
        ),
    ] {
        let (socket, ownership) = leaked_in(Some(cgroup), None);
        let out = stuck_and_summary(Format::Text, &socket, &ownership);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[1],
            format!(
                "06:00:31 STUCK CLOSE_WAIT for 30s 127.0.0.1:61616 <- 10.0.0.9:40000 \
                 java[4242] fd 17, fds 1013/1024 (98%), uid 1000, {said}, cgroup {cgroup}; \
                 also java[4300] fd 17"
            )
        );
        assert_eq!(
            lines[3],
            format!(
                "  java[4242] in {said} holds 1 socket in CLOSE_WAIT on :61616 (oldest 30s), \
                 fds 1013/1024 (98%)"
            )
        );
    }
}

#[test]
fn last_io_explains_the_alert() {
    let (socket, mut ownership) = leaked();
    let alert = |ownership: &Ownership| {
        let report = SocketReport {
            key: SocketKey::Sk(1),
            socket: &socket,
            ownership,
        };
        let (out, _) = render(Format::Text, |o| {
            o.stuck(&report, 31_500_000_000, Duration::from_secs(30))
                .unwrap()
        });
        out.trim_end().to_owned()
    };
    ownership.last_io = java_io(IoOp::Eof);
    assert!(
        alert(&ownership).ends_with(
            "also java[4300] fd 17; java[4242] read end of stream 29s ago and kept the socket"
        ),
        "{}",
        alert(&ownership)
    );
    ownership.last_io = java_io(IoOp::Send);
    assert!(alert(&ownership).ends_with("; last send by java[4242] 29s ago"));
    ownership.last_io = java_io(IoOp::Recv);
    assert!(alert(&ownership).ends_with("; last receive by java[4242] 29s ago"));
    // No holder found: the last user is the name left.
    ownership.owners.clear();
    ownership.held_by = HeldBy::Unknown;
    assert!(alert(&ownership)
        .ends_with("10.0.0.9:40000 owner unknown; last receive by java[4242] 29s ago"));
}

#[test]
fn a_namespace_nothing_holds_is_explained_in_words() {
    let (mut socket, mut ownership) = leaked();
    socket.ends.netns = 4026532201;
    ownership.owners.clear();
    ownership.held_by = HeldBy::NetnsUnreachable;
    ownership.last_io = java_io(IoOp::Recv);
    let report = SocketReport {
        key: SocketKey::Sk(1),
        socket: &socket,
        ownership: &ownership,
    };
    let (text, _) = render(Format::Text, |o| {
        o.stuck(&report, 31_500_000_000, Duration::from_secs(30))
            .unwrap()
    });
    assert!(
        text.trim_end().ends_with(
            "owner unknown: no process or mount holds network namespace 4026532201 any more; \
             last receive by java[4242] 29s ago"
        ),
        "{text}"
    );
    let (json, _) = render(Format::Json, |o| {
        o.stuck(&report, 31_500_000_000, Duration::from_secs(30))
            .unwrap()
    });
    assert!(json.contains("\"held_by\":\"netns_unreachable\""), "{json}");
}

#[test]
fn ages_read_like_an_sre_writes_them() {
    let d = Duration::from_secs;
    assert_eq!(human_duration(Duration::from_millis(450)), "450ms");
    assert_eq!(human_duration(d(31)), "31s");
    assert_eq!(human_duration(d(151)), "2m31s");
    assert_eq!(human_duration(d(7980)), "2h13m");
    assert_eq!(human_duration(d(2 * 86_400 + 3 * 3600)), "2d3h");
    assert_eq!(fd_usage(12, None), "fds 12 (no limit)");
}

#[test]
fn transition_as_text() {
    let step = |old: TcpState, new: TcpState| Transition {
        old: old.into(),
        new: new.into(),
        ..transition(Family::Ipv4)
    };
    let (out, _) = render(Format::Text, |o| {
        o.transition(&transition(Family::Ipv4)).unwrap();
        o.transition(&transition(Family::Ipv6)).unwrap();
        o.transition(&step(TcpState::Close, TcpState::SynSent))
            .unwrap();
        o.transition(&step(TcpState::SynSent, TcpState::Established))
            .unwrap();
        o.transition(&step(TcpState::Listen, TcpState::SynRecv))
            .unwrap();
        o.transition(&step(TcpState::SynRecv, TcpState::Established))
            .unwrap();
        o.transition(&step(TcpState::Close, TcpState::Listen))
            .unwrap();
    });
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "-- 2026-11-25 (UTC) --");
    // Past the handshake a transition cannot tell who connected: `--`.
    assert_eq!(
        lines[1],
        "06:01:01.000000    4242 java                   127.0.0.1:61616 -- 127.0.0.1:40000       ESTABLISHED -> CLOSE_WAIT"
    );
    assert_eq!(
        lines[2],
        "06:01:01.000000    4242 java                       [::1]:61616 -- [::ffff:10.0.0.1]:40000 ESTABLISHED -> CLOSE_WAIT"
    );
    let arrows: Vec<&str> = lines[3..]
        .iter()
        .map(|l| l.split_whitespace().nth(4).unwrap())
        .collect();
    assert_eq!(arrows, ["->", "->", "<-", "<-", "--"]);
}

/// A `watch --events` start at `time`.
fn start_info(time: SystemTime) -> StartInfo {
    StartInfo {
        time: Rfc3339(time),
        version: "0.1.0",
        kernel: "6.18.0".into(),
        mode: "events",
        attached: Attached {
            probe: "tracepoint",
            tp_btf_refused: None,
            tracepoint: "sock:inet_sock_set_state".into(),
            tracefs: "/sys/kernel/tracing".into(),
            tracefs_mounted_by_tracer: false,
            record_access: "direct",
            io_probes: Vec::new(),
            netns_offsets: Some(NetnsOffsetsInfo {
                sk_net: 48,
                net_inum: 136,
            }),
        },
        filters: FilterInfo::default(),
        ring_buffer_bytes: 1 << 24,
        thresholds: BTreeMap::from([("CLOSE_WAIT", 30_000)]),
        summary_interval_ms: 10_000,
        max_sockets: 1024,
        existing_sockets: 0,
        record: None,
    }
}

/// Monotonic ns of 2026-11-25T23:59:59.5Z, half a second before midnight.
const BEFORE_MIDNIGHT_NS: u64 = (17 * 3600 + 59 * 60 + 59) * 1_000_000_000 + 500_000_000;

#[test]
fn a_date_line_when_the_day_changes() {
    let clock = WallClock::with_offset(EPOCH);
    let at = |ts_ns| Transition {
        ts_ns,
        ..transition(Family::Ipv4)
    };
    let (out, status) = render(Format::Text, |o| {
        o.start(&start_info(clock.at(BEFORE_MIDNIGHT_NS))).unwrap();
        o.transition(&at(BEFORE_MIDNIGHT_NS)).unwrap();
        o.transition(&at(BEFORE_MIDNIGHT_NS + 1_000_000_000))
            .unwrap();
        o.transition(&at(BEFORE_MIDNIGHT_NS + 2_000_000_000))
            .unwrap();
    });
    // The start line names the day, so the first transition needs no date line.
    assert!(
        status.starts_with(
            "tracer 0.1.0: attached to tracepoint sock:inet_sock_set_state \
             (tracepoint, tracefs at /sys/kernel/tracing) on 2026-11-25 (UTC); Ctrl-C to stop\n"
        ),
        "{status}"
    );
    let heads: Vec<&str> = out.lines().map(|l| l.get(..15).unwrap_or(l)).collect();
    assert_eq!(
        heads,
        [
            "TIME(UTC)      ",
            "23:59:59.500000",
            "-- 2026-11-26 (",
            "00:00:00.500000",
            "00:00:01.500000"
        ]
    );
    assert!(out.contains("\n-- 2026-11-26 (UTC) --\n"), "{out}");
}

#[test]
fn rfc3339_times_on_every_line() {
    let clock = WallClock::with_offset(EPOCH);
    let (socket, ownership) = leaked();
    let report = SocketReport {
        key: SocketKey::Sk(1),
        socket: &socket,
        ownership: &ownership,
    };
    let style = TextStyle {
        color: false,
        time: TimeStyle::Rfc3339,
        own_netns: HOST_NETNS,
        fold: false,
    };
    let (out, status) = render_styled(Format::Text, style, |o| {
        o.start(&start_info(clock.at(0))).unwrap();
        o.transition(&transition(Family::Ipv4)).unwrap();
        // The next day: no date line, every line has its own.
        o.stuck(
            &report,
            BEFORE_MIDNIGHT_NS + 1_000_000_000,
            Duration::from_secs(30),
        )
        .unwrap();
    });
    assert!(
        status.contains(
            "(tracepoint, tracefs at /sys/kernel/tracing) at 2026-11-25T06:00:00.000000000Z;"
        ),
        "{status}"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "TIME(UTC)                          PID COMM                             LOCAL    REMOTE                TRANSITION",
            "2026-11-25T06:01:01.000000123Z    4242 java                   127.0.0.1:61616 -- 127.0.0.1:40000       ESTABLISHED -> CLOSE_WAIT",
            "2026-11-26T00:00:00.500000000Z STUCK CLOSE_WAIT for 17h59m 127.0.0.1:61616 <- 10.0.0.9:40000 \
             java[4242] fd 17, fds 1013/1024 (98%), uid 1000, cgroup /system.slice/activemq.service; \
             also java[4300] fd 17",
        ]
    );
}

#[test]
fn stop_and_lost_records() {
    let stop = StopInfo {
        time: Rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_586_400)),
        reason: StopReason::Signal,
        events: 12,
        lost: 3,
        skipped: SkipCounts::default(),
        undecodable: 0,
        duration_ms: 1500,
        flagged: 2,
        resolved: 1,
        stuck: 1,
        tracked: 10,
        peak_tracked: 12,
        evicted: 0,
        evicted_stuck: 0,
        unrecorded: 0,
    };
    let (out, status) = render(Format::Json, |o| {
        o.lost(3, 3).unwrap();
        o.missed(1, 2).unwrap();
        o.stop(&stop).unwrap();
    });
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["type"], "lost");
    assert_eq!(
        (lines[0]["lost"].as_u64(), lines[0]["total"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(lines[1]["type"], "missed");
    assert_eq!(
        (lines[1]["missed"].as_u64(), lines[1]["total"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(
        lines[2],
        serde_json::json!({"type":"stop","time":"2026-11-25T06:00:00.000000000Z","reason":"signal","events":12,"lost":3,
            "skipped":{"unreadable":0,"not_tcp":0,"filtered":0,"missed":0},"undecodable":0,"duration_ms":1500,
            "flagged":2,"resolved":1,"stuck":1,"tracked":10,"peak_tracked":12,"evicted":0,"evicted_stuck":0,"unrecorded":0})
    );
    assert!(
        status.starts_with("tracer: warning: 3 transitions lost (3 in all)"),
        "{status}"
    );
    assert!(
        status.contains("\ntracer: warning: the kernel skipped the probe 1 time (2 in all): a BPF program was already running on that CPU when a socket changed state; up to 1 transition not seen\n"),
        "{status}"
    );

    let (out, status) = render(Format::Text, |o| o.stop(&stop).unwrap());
    assert_eq!(out, "");
    assert_eq!(
        status,
        "tracer: stopped after 1.5s: 12 transitions, 3 lost\n"
    );
    let skipped = StopInfo {
        skipped: SkipCounts {
            unreadable: 0,
            not_tcp: 2,
            filtered: 40,
            missed: 1,
        },
        ..stop
    };
    let (_, status) = render(Format::Text, |o| o.stop(&skipped).unwrap());
    assert_eq!(
        status,
        "tracer: stopped after 1.5s: 12 transitions, 3 lost; skipped 40 filtered out, 2 not TCP, 1 missed by the kernel\n"
    );
    let unrecorded = StopInfo {
        unrecorded: 26_348,
        ..stop
    };
    let (_, status) = render(Format::Text, |o| o.stop(&unrecorded).unwrap());
    assert_eq!(
        status,
        "tracer: stopped after 1.5s: 12 transitions, 3 lost; 26348 entries not recorded\n"
    );
}

#[test]
fn text_names_a_namespace_other_than_the_tracers() {
    let (mut socket, ownership) = leaked();
    let home = stuck_and_summary(Format::Text, &socket, &ownership);
    assert!(!home.contains("netns"), "{home}");
    socket.ends.netns = 4026532999;
    let away = stuck_and_summary(Format::Text, &socket, &ownership);
    assert!(
        away.contains("127.0.0.1:61616 <- 10.0.0.9:40000 netns 4026532999 java[4242]"),
        "{away}"
    );
    assert!(
        away.contains("on :61616 netns 4026532999 (oldest"),
        "{away}"
    );
}
