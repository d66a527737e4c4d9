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
    assert_eq!(
        lines.len(),
        6,
        "an empty interval summary prints nothing: {out}"
    );
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
             (tracefs at /sys/kernel/tracing) on 2026-11-25 (UTC); Ctrl-C to stop\n"
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
        status.contains("(tracefs at /sys/kernel/tracing) at 2026-11-25T06:00:00.000000000Z;"),
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
