//! The report over a synthetic recording with known answers, and over damaged files.

use std::{
    io,
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use serde_json::Value;
use tracer_common::TcpState::{self, *};

use crate::{
    cli::{Cli, Command},
    decode::Transition,
    model::{Comm, Family},
    record::{
        writer::{encode, prologue},
        *,
    },
};

const S: u64 = 1_000_000_000;
/// 2026-11-25T06:00:00Z at monotonic zero.
const EPOCH: i64 = 1_795_586_400 * 1_000_000_000;
const A: u64 = 0xa0;
const B: u64 = 0xb0;

fn ends(dport: u16) -> EndsEntry {
    EndsEntry {
        family: FamilyEntry::Ipv4,
        saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        sport: 61616,
        daddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
        dport,
        netns: 0,
    }
}

fn tr(ts_ns: u64, sk: u64, dport: u16, old: TcpState, new: TcpState) -> Entry {
    let e = ends(dport);
    Entry::Transition(
        (&Transition {
            ts_ns,
            sk,
            pid: 0,
            tid: 0,
            comm: Comm::from("swapper/0"),
            netns: e.netns,
            family: Family::Ipv4,
            saddr: e.saddr,
            sport: e.sport,
            daddr: e.daddr,
            dport: e.dport,
            old: old.into(),
            new: new.into(),
        })
            .into(),
    )
}

fn owners(ts_ns: u64, dport: u16, since_ns: u64, fd: i32, eof: bool) -> Entry {
    Entry::Owners(Box::new(OwnersEntry {
        ts_ns,
        ends: ends(dport),
        state: CloseWait as u8,
        since_ns,
        held_by: HeldByEntry::Fd,
        owners: vec![OwnerEntry {
            pid: 4242,
            comm: "java".into(),
            cmdline: "java -jar activemq.jar".into(),
            uid: 1000,
            fd_limit: Some(1024),
            cgroup: None,
            fds: vec![fd],
            fd_count: 1013,
        }],
        last_io: eof.then_some(IoEntry {
            ts_ns: since_ns + S / 2,
            task: TaskEntry {
                pid: 4242,
                comm: *b"java\0\0\0\0\0\0\0\0\0\0\0\0",
            },
            op: IoOpEntry::Eof,
        }),
    }))
}

/// A broker at :61616: a connection open before the start (41000), one that leaks in
/// CLOSE_WAIT from 3s (A, 40001, whose EOF java read), one stuck from 4s to 40s (B, 40002).
fn incident() -> Vec<Entry> {
    vec![
        Entry::Header(Box::new(Header {
            recording: 0xfeed,
            segment: 0,
            tracer_version: "0.1.0".into(),
            kernel: "6.18.0".into(),
            hostname: "broker-1".into(),
            clock_offset_ns: EPOCH,
            started_ns: S,
            thresholds: vec![(CloseWait as u8, 30_000)],
            ports: vec![],
            pid: None,
            family: None,
            states: vec![],
            max_sockets: 1024,
            checkpoint: 1,
            ext: HeaderExt::default(),
        })),
        Entry::Socket(SocketEntry {
            key: KeyEntry::Snapshot(7),
            ends: ends(41000),
            state: Established as u8,
            since_ns: S / 2,
            since_is_lower_bound: true,
            origin: OriginEntry::Accepted,
            hint: None,
        }),
        tr(2 * S, A, 40001, SynRecv, Established),
        tr(3 * S, A, 40001, Established, CloseWait),
        tr(4 * S, B, 40002, Established, CloseWait),
        Entry::Stuck(StuckEntry {
            ts_ns: 33 * S + 200,
            key: KeyEntry::Sk(A),
            ends: ends(40001),
            state: CloseWait as u8,
            since_ns: 3 * S,
            threshold_ms: 30_000,
        }),
        owners(33 * S + 200, 40001, 3 * S, 12, true),
        owners(34 * S + 200, 40002, 4 * S, 14, false),
        tr(40 * S, B, 40002, CloseWait, LastAck),
        Entry::Resolved(ResolvedEntry {
            ts_ns: 40 * S,
            key: KeyEntry::Sk(B),
            ends: ends(40002),
            state: CloseWait as u8,
            since_ns: 4 * S,
            new: LastAck as u8,
        }),
        tr(40 * S + 1_000_000, B, 40002, LastAck, Close),
        Entry::Stop(StopEntry {
            ts_ns: 60 * S,
            events: 5,
            lost: 0,
            unrecorded: 0,
        }),
    ]
}

fn bytes_of(entries: &[Entry]) -> Vec<u8> {
    let mut b = prologue();
    for e in entries {
        encode(e, &mut b);
    }
    b
}

/// Runs `tracer report FILE ARGS --format json` on `bytes`; the records, or the error.
fn report_bytes(bytes: &[u8], args: &[&str]) -> Result<Vec<Value>, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("incident.rec");
    std::fs::write(&path, bytes).unwrap();
    report_file(&path, args)
}

fn report_file(path: &Path, args: &[&str]) -> Result<Vec<Value>, String> {
    let path = path.to_str().unwrap();
    let mut argv = vec!["tracer", "report", path, "--format", "json"];
    argv.extend_from_slice(args);
    let Command::Report(r) = Cli::try_parse_checked(argv).unwrap().command else {
        unreachable!()
    };
    let mut out = Vec::new();
    super::run(&r, &mut out, io::sink()).map_err(|e| format!("{e:#}"))?;
    Ok(String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect())
}

fn report(args: &[&str]) -> Vec<Value> {
    report_bytes(&bytes_of(&incident()), args).unwrap()
}

fn of_type<'a>(records: &'a [Value], t: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["type"] == t).collect()
}

/// (dport, age_ms or stuck_ms) of the stuck or resolved records.
fn sockets(records: &[Value], t: &str, ms: &str) -> Vec<(u64, u64)> {
    of_type(records, t)
        .iter()
        .map(|r| (r["dport"].as_u64().unwrap(), r[ms].as_u64().unwrap()))
        .collect()
}

#[test]
fn rebuilds_stuck_sockets_owners_and_durations() {
    let r = report(&[]);
    let types: Vec<&str> = r.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "report",
            "stuck",
            "stuck",
            "resolved",
            "summary",
            "offender",
            "transitions",
            "state_times"
        ]
    );
    let info = &r[0];
    assert_eq!(info["host"], "broker-1");
    assert_eq!(info["start"], "2026-11-25T06:00:01.000000000Z");
    assert_eq!(info["end"], "2026-11-25T06:01:00.000000000Z");
    assert_eq!(info["thresholds"], serde_json::json!({"CLOSE_WAIT": 30000}));
    assert_eq!(info["live"]["stuck"], 1);
    assert_eq!(info["live"]["stopped"], true);
    assert_eq!(info["warnings"], serde_json::json!([]));

    assert_eq!(
        sockets(&r, "stuck", "age_ms"),
        [(40001, 30_000), (40002, 30_000)]
    );
    let a = &r[1];
    assert_eq!(a["time"], "2026-11-25T06:00:33.000000000Z");
    assert_eq!(a["owner"]["pid"], 4242);
    assert_eq!(a["owner"]["fds"], serde_json::json!([12]));
    assert_eq!(a["last_io"]["op"], "eof");
    assert_eq!(r[2]["owner"]["fds"], serde_json::json!([14]));
    // How long each stayed stuck in all: A to the end, B to its resolution.
    assert_eq!(
        (&a["stuck_ms"], &a["still_stuck"]),
        (&57_000.into(), &true.into())
    );
    assert_eq!(
        (&r[2]["stuck_ms"], &r[2]["still_stuck"]),
        (&36_000.into(), &false.into())
    );
    assert_eq!(sockets(&r, "resolved", "stuck_ms"), [(40002, 36_000)]);
    assert_eq!(r[3]["new"], "LAST_ACK");

    let summary = &r[4];
    assert_eq!(summary["reason"], "end");
    assert_eq!(summary["stuck"], 1);
    assert_eq!(summary["groups"][0]["oldest_ms"], 57_000);
    assert_eq!(summary["groups"][0]["eof_read"], 1);

    let off = &r[5];
    assert_eq!(
        (
            &off["pid"],
            &off["stuck"],
            &off["longest_ms"],
            &off["eof_read"]
        ),
        (&4242.into(), &2.into(), &57_000.into(), &1.into())
    );
    assert_eq!(off["ports"], serde_json::json!([":61616"]));

    let counts: Vec<(String, String, u64)> = r[6]["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["old"].as_str().unwrap().to_owned(),
                c["new"].as_str().unwrap().to_owned(),
                c["count"].as_u64().unwrap(),
            )
        })
        .collect();
    let c = |o: &str, n: &str, k| (o.to_owned(), n.to_owned(), k);
    assert_eq!(
        counts,
        [
            c("ESTABLISHED", "CLOSE_WAIT", 2),
            c("SYN_RECV", "ESTABLISHED", 1),
            c("CLOSE_WAIT", "LAST_ACK", 1),
            c("LAST_ACK", "CLOSE", 1)
        ]
    );
    let times = r[7]["states"].as_array().unwrap();
    let stay = |state: &str| {
        times
            .iter()
            .find(|t| t["state"] == state)
            .map(|t| (t["stays"].as_u64().unwrap(), t["max_us"].as_u64().unwrap()))
    };
    // Within the histogram's 3 significant figures.
    assert!(matches!(stay("ESTABLISHED"), Some((1, us)) if us.abs_diff(1_000_000) < 1000));
    assert!(matches!(stay("CLOSE_WAIT"), Some((1, us)) if us.abs_diff(36_000_000) < 36_000));
    assert!(matches!(stay("LAST_ACK"), Some((1, us)) if us.abs_diff(1000) < 2));
    assert_eq!(times.len(), 3);
}

#[test]
fn thresholds_are_chosen_at_report_time() {
    let r = report(&["--close-wait", "5s"]);
    assert_eq!(
        sockets(&r, "stuck", "age_ms"),
        [(40001, 5000), (40002, 5000)]
    );
    assert_eq!(r[1]["time"], "2026-11-25T06:00:08.000000000Z");
    // The owners the live run found for the same stays.
    assert_eq!(r[1]["owner"]["pid"], 4242);
    assert_eq!(r[0]["recorded_thresholds"]["CLOSE_WAIT"], 30_000);

    let r = report(&["--close-wait", "off", "--stuck", "ESTABLISHED=100ms"]);
    assert_eq!(r[0]["thresholds"], serde_json::json!({"ESTABLISHED": 100}));
    // The snapshot socket (a lower bound) and A, which stayed 1s.
    let stuck = of_type(&r, "stuck");
    assert_eq!(
        stuck
            .iter()
            .map(|s| s["dport"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [41000, 40001]
    );
    assert_eq!(stuck[0]["age_is_lower_bound"], true);
    assert_eq!(
        stuck[1]["owner"],
        Value::Null,
        "the live run never flagged it"
    );
    assert_eq!(sockets(&r, "resolved", "stuck_ms"), [(40001, 1000)]);
}

#[test]
fn window_and_filters() {
    let r = report(&["--to", "35s"]);
    assert_eq!(r[0]["end"], "2026-11-25T06:00:36.000000000Z");
    assert_eq!(sockets(&r, "stuck", "age_ms").len(), 2);
    assert!(of_type(&r, "resolved").is_empty());
    let summary = of_type(&r, "summary")[0];
    assert_eq!(summary["stuck"], 2);
    assert_eq!(summary["groups"][0]["oldest_ms"], 33_000);

    let r = report(&["--from", "2026-11-25T06:00:35Z"]);
    assert!(of_type(&r, "stuck").is_empty());
    assert_eq!(sockets(&r, "resolved", "stuck_ms"), [(40002, 36_000)]);
    // Only transitions inside the window are counted.
    assert_eq!(
        of_type(&r, "transitions")[0]["counts"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let r = report(&["--port", "40002"]);
    assert_eq!(sockets(&r, "stuck", "age_ms"), [(40002, 30_000)]);
    assert_eq!(of_type(&r, "summary")[0]["stuck"], 0);

    let err = report_bytes(&bytes_of(&incident()), &["--from", "30s", "--to", "10s"]).unwrap_err();
    assert_eq!(err, "--from is after --to: the window is empty");
    let r = report(&["--pid", "999"]);
    assert!(of_type(&r, "stuck").is_empty() && of_type(&r, "offender").is_empty());
    let r = report(&["--pid", "4242"]);
    assert_eq!(of_type(&r, "stuck").len(), 2);
}

const ID: &str = "3f2a1b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a";

/// The incident with A held by pid 5000 in a docker container, and B by java in a
/// systemd service.
fn incident_in_containers() -> Vec<Entry> {
    let mut entries = incident();
    for e in &mut entries {
        if let Entry::Owners(o) = e {
            let owner = &mut o.owners[0];
            if o.ends.dport == 40001 {
                owner.pid = 5000;
                owner.cgroup = Some(format!("/system.slice/docker-{ID}.scope"));
            } else {
                owner.cgroup = Some("/system.slice/activemq.service".into());
            }
        }
    }
    entries
}

#[test]
fn containers_come_from_the_recorded_cgroups_and_select_stuck_sockets() {
    let bytes = bytes_of(&incident_in_containers());
    let docker = serde_json::json!({"id": ID, "runtime": "docker", "pod_uid": null});
    let service =
        serde_json::json!({"id": "activemq.service", "runtime": "systemd", "pod_uid": null});
    let r = report_bytes(&bytes, &[]).unwrap();
    let stuck = of_type(&r, "stuck");
    assert_eq!(stuck[0]["owner"]["container"], docker);
    assert_eq!(stuck[1]["owner"]["container"], service);
    assert_eq!(of_type(&r, "resolved")[0]["owner"]["container"], service);
    // A alone is still stuck at the end.
    assert_eq!(of_type(&r, "summary")[0]["groups"][0]["container"], docker);
    let offenders: Vec<(&Value, &Value)> = of_type(&r, "offender")
        .iter()
        .map(|o| (&o["pid"], &o["container"]))
        .collect();
    assert_eq!(
        offenders,
        [(&5000.into(), &docker), (&4242.into(), &service)]
    );

    let kept = |args: &[&str]| {
        let r = report_bytes(&bytes, args).unwrap();
        // The report record names the criteria.
        for flag in ["container", "cgroup"] {
            let given = args.iter().position(|&a| a == format!("--{flag}"));
            let want = given.map_or(Value::Null, |i| args[i + 1].into());
            assert_eq!(r[0][flag], want, "{args:?}");
        }
        sockets(&r, "stuck", "age_ms")
            .into_iter()
            .map(|(port, _)| port)
            .collect::<Vec<_>>()
    };
    assert_eq!(kept(&["--container", &ID[..12]]), [40001]);
    assert_eq!(kept(&["--container", ID]), [40001]);
    assert_eq!(kept(&["--container", "activemq"]), [40002]);
    assert!(kept(&["--container", "deadbeef"]).is_empty());
    assert_eq!(kept(&["--cgroup", "/system.slice/docker-"]), [40001]);
    assert_eq!(kept(&["--cgroup", "/system.slice/"]), [40001, 40002]);
    assert!(kept(&["--cgroup", "/kubepods"]).is_empty());
    // Every criterion given must hold.
    assert_eq!(
        kept(&["--pid", "5000", "--cgroup", "/system.slice/"]),
        [40001]
    );
    assert!(kept(&["--pid", "5000", "--container", "activemq"]).is_empty());
}

#[test]
fn window_times_of_day_and_offsets_agree() {
    let window = |args: &[&str]| {
        let r = report(args);
        (
            r[0]["from"].clone(),
            r[0]["to"].clone(),
            sockets(&r, "resolved", "stuck_ms"),
        )
    };
    let want = window(&[
        "--from",
        "2026-11-25T06:00:35Z",
        "--to",
        "2026-11-25T06:00:50Z",
    ]);
    assert_eq!(want.0, "2026-11-25T06:00:35.000000000Z");
    assert_eq!(want.2, [(40002, 36_000)]);
    for args in [
        &["--from", "06:00:35", "--to", "06:00:50"][..],
        &["--from", "06:00:35.000", "--to", "06:00:50.0"],
        &[
            "--from",
            "2026-11-25T07:00:35+01:00",
            "--to",
            "2026-11-25T01:00:50-05:00",
        ],
        &["--from", "2026-11-25 06:00:35", "--to", "06:00:50"],
        &["--from", "34s", "--to", "49s"],
    ] {
        assert_eq!(window(args), want, "{args:?}");
    }
    // The recording starts at 06:00:01.000: its first second is in it, as printed.
    let r = report(&["--from", "06:00:01"]);
    assert_eq!(r[0]["from"], "2026-11-25T06:00:01.000000000Z");
    // --to is the first occurrence from the window's start, not from the recording's.
    let r = report(&["--from", "06:00:30", "--to", "06:00:40"]);
    assert_eq!(r[0]["to"], "2026-11-25T06:00:40.000000000Z");
}

#[test]
fn a_window_outside_the_recording_is_an_error() {
    let err = |args: &[&str]| report_bytes(&bytes_of(&incident()), args).unwrap_err();
    // The recording covers 06:00:01 to 06:01:00.
    assert_eq!(
        err(&["--from", "1h"]),
        "the window from 07:00:01 is outside the recording (06:00:01 to 06:01:00 UTC); \
         give --from/--to within it"
    );
    assert_eq!(
        err(&["--from", "06:10:00", "--to", "06:20:00"]),
        "the window 06:10:00 to 06:20:00 is outside the recording (06:00:01 to 06:01:00 \
         UTC); give --from/--to within it"
    );
    assert_eq!(
        err(&["--to", "2026-11-25T05:59:00Z"]),
        "the window up to 05:59:00 is outside the recording (06:00:01 to 06:01:00 UTC); \
         give --from/--to within it"
    );
    // 05:00 falls before the start, so it is the next day's: dates tell the days apart.
    assert_eq!(
        err(&["--from", "05:00"]),
        "the window from 2026-11-26 05:00:00 is outside the recording (2026-11-25 06:00:01 \
         to 2026-11-25 06:01:00 UTC); give --from/--to within it"
    );
    // Touching the recording is enough.
    let r = report(&["--to", "2026-11-25T06:00:01Z"]);
    assert!(of_type(&r, "stuck").is_empty());
    assert_eq!(
        err(&["--from", "30s", "--to", "10s"]),
        "--from is after --to: the window is empty"
    );
}

#[test]
fn a_quiet_stretch_without_a_stop_entry_is_inside_the_recording() {
    // Cut (no stop entry): the recording's end is its last transition, after the window.
    let mut entries = incident()[..3].to_vec();
    entries.push(tr(50 * S, A, 40001, Established, CloseWait));
    let r = report_bytes(&bytes_of(&entries), &["--from", "10s", "--to", "20s"]).unwrap();
    assert_eq!(r[0]["to"], "2026-11-25T06:00:21.000000000Z");
    assert_eq!(r[0]["end"], "2026-11-25T06:00:21.000000000Z");
}

#[test]
fn a_recording_that_failed_says_when_and_why_and_ends_there() {
    // The disk filled at 35s; the live run went on to 60s and left 3 entries out.
    let mut entries = incident()[..8].to_vec();
    entries.push(Entry::Failed(FailedEntry {
        ts_ns: 35 * S,
        error: "No space left on device (os error 28)".into(),
    }));
    entries.push(Entry::Stop(StopEntry {
        ts_ns: 60 * S,
        events: 5,
        lost: 0,
        unrecorded: 3,
    }));
    let r = report_bytes(&bytes_of(&entries), &[]).unwrap();
    let info = &r[0];
    assert_eq!(
        info["live"]["recording_stopped"],
        serde_json::json!({
            "time": "2026-11-25T06:00:35.000000000Z",
            "error": "No space left on device (os error 28)",
        })
    );
    assert_eq!(info["live"]["stopped"], true);
    assert_eq!(info["live"]["unrecorded"], 3);
    // Nothing is known of what followed the failure.
    assert_eq!(info["end"], "2026-11-25T06:00:35.000000000Z");
    assert_eq!(
        info["warnings"],
        serde_json::json!([
            "the recording left out 3 entries: those after it stopped, and any the disk could \
             not keep up with before",
            "recording stopped at 2026-11-25T06:00:35.000000000Z: No space left on device (os \
             error 28); the live run went on to 2026-11-25T06:01:00.000000000Z without \
             recording; it is reported up to then",
        ])
    );
    // Stuck by then: A since 33s, B since 34s.
    assert_eq!(of_type(&r, "stuck").len(), 2);

    // The stop entry may be missing too: still not a killed run.
    entries.pop();
    let r = report_bytes(&bytes_of(&entries), &[]).unwrap();
    let warnings = r[0]["warnings"].to_string();
    assert!(
        warnings.contains(
            "recording stopped at 2026-11-25T06:00:35.000000000Z: No space left on device (os \
             error 28); the end of the live run was not recorded either"
        ),
        "{warnings}"
    );
    assert!(!warnings.contains("killed"), "{warnings}");
}

#[test]
fn a_time_of_day_in_a_recording_of_several_days_is_its_first_occurrence() {
    let mut entries = incident();
    if let Some(Entry::Stop(stop)) = entries.last_mut() {
        stop.ts_ns = 3 * 86_400 * S;
    }
    let r = report(&[]);
    assert_eq!(r[0]["warnings"], serde_json::json!([]));
    let r = report_bytes(&bytes_of(&entries), &["--from", "06:00:35"]).unwrap();
    assert_eq!(r[0]["from"], "2026-11-25T06:00:35.000000000Z");
    assert_eq!(
        r[0]["warnings"],
        serde_json::json!([
            "the recording spans 2d23h: --from, a time of day, was taken as \
             2026-11-25T06:00:35.000000000Z, its first occurrence; give a date \
             (2026-11-25T03:00:00Z) or an offset (10m) for another day"
        ])
    );
}

#[test]
fn timeline_of_one_socket() {
    let r = report(&["--timeline", "0xb0"]);
    let seen: Vec<String> = r[1..]
        .iter()
        .map(|r| match r["type"].as_str().unwrap() {
            "transition" => format!(
                "{}->{}",
                r["old"].as_str().unwrap(),
                r["new"].as_str().unwrap()
            ),
            t => t.to_owned(),
        })
        .collect();
    assert_eq!(
        seen,
        [
            "ESTABLISHED->CLOSE_WAIT",
            "stuck",
            "CLOSE_WAIT->LAST_ACK",
            "resolved",
            "LAST_ACK->CLOSE"
        ]
    );
    assert_eq!(r[1]["sk"], "0xb0");

    assert_eq!(
        report_bytes(&bytes_of(&incident()), &["--timeline", "0xdead"]).unwrap_err(),
        "--timeline 0xdead: no such socket in the recording; check the address and port \
         (either end matches) or take `sk` from the JSON records"
    );
    let err = report_bytes(
        &bytes_of(&incident()),
        &["--timeline", "0xb0", "--to", "2s"],
    )
    .unwrap_err();
    assert!(
        err.starts_with("--timeline 0xb0: no such socket in the recording within the window;"),
        "{err}"
    );
    let r = report(&["--timeline", "10.0.0.9:41000"]);
    assert_eq!(r.len(), 2);
    assert_eq!(r[1]["type"], "existing");
    assert_eq!(r[1]["state"], "ESTABLISHED");
}

/// Runs `tracer report FILE ARGS` (text) on `entries`.
fn report_text(entries: &[Entry], args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("incident.rec");
    std::fs::write(&path, bytes_of(entries)).unwrap();
    let mut argv = vec!["tracer", "report", path.to_str().unwrap()];
    argv.extend_from_slice(args);
    let Command::Report(args) = Cli::try_parse_checked(argv).unwrap().command else {
        unreachable!()
    };
    let mut out = Vec::new();
    super::run(&args, &mut out, io::sink()).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn text_report_reads_like_the_live_alerts() {
    let text = report_text(&incident(), &[]);
    // The header names the day; everything happened on it.
    assert!(!text.contains("-- 2026"), "{text}");
    for want in [
        "(host broker-1, kernel 6.18.0, tracer 0.1.0)",
        "2026-11-25T06:00:01.000000000Z to 2026-11-25T06:01:00.000000000Z (59s), 5 transitions, 0 lost",
        "flagging CLOSE_WAIT after 30s (the live run: CLOSE_WAIT after 30s)",
        "06:00:33 STUCK CLOSE_WAIT for 30s 127.0.0.1:61616 -- 10.0.0.9:40001 java[4242] fd 12, fds 1013/1024 (98%), uid 1000; java[4242] read end of stream 29s ago and kept the socket",
        "read end of stream 29s ago and kept the socket; still stuck at the end, 57s in all\n",
        "10.0.0.9:40002 java[4242] fd 14, fds 1013/1024 (98%), uid 1000; left after 36s\n",
        "06:00:40 RESOLVED CLOSE_WAIT -> LAST_ACK after 36s",
        "java[4242] holds 1 socket in CLOSE_WAIT on :61616 (oldest 57s), fds 1013/1024 (98%); read end of stream on 1 and kept them",
        "1. java[4242]: 2 sockets stuck (2 CLOSE_WAIT) on :61616, longest 57s; read end of stream on 1 and kept them; fds 1013/1024 (98%)",
        "  ESTABLISHED -> CLOSE_WAIT             2",
        "  CLOSE_WAIT            1       36s       36s       36s       36s",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn text_report_dates_lines_across_midnight() {
    let mut entries = incident();
    // The recording starts at 23:59:31: A is flagged at 00:00:03 the next day.
    if let Entry::Header(h) = &mut entries[0] {
        h.clock_offset_ns = EPOCH + (17 * 3600 + 59 * 60 + 30) * S as i64;
    }
    let text = report_text(&entries, &[]);
    assert!(
        text.contains("  2026-11-25T23:59:31.000000000Z to 2026-11-26T00:00:30.000000000Z"),
        "{text}"
    );
    let dated: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("-- ") || l.contains(" STUCK ") || l.contains(" SUMMARY "))
        .map(|l| l.get(..22).unwrap_or(l))
        .collect();
    assert_eq!(
        dated,
        [
            "-- 2026-11-26 (UTC) --",
            "00:00:03 STUCK CLOSE_W",
            "00:00:04 STUCK CLOSE_W",
            "00:00:30 SUMMARY 1 soc"
        ]
    );

    let text = report_text(&entries, &["--time", "rfc3339"]);
    assert!(!text.contains("-- 2026"), "{text}");
    assert!(
        text.contains("\n2026-11-26T00:00:03.000000000Z STUCK CLOSE_WAIT for 30s 127.0.0.1:61616"),
        "{text}"
    );
    assert!(
        text.contains("\n2026-11-26T00:00:10.000000000Z RESOLVED CLOSE_WAIT -> LAST_ACK after 36s"),
        "{text}"
    );
}

#[test]
fn damaged_recordings_give_what_they_hold() {
    let full = bytes_of(&incident());
    // Cut inside the stop entry, as SIGKILL during a write would.
    let r = report_bytes(&full[..full.len() - 3], &[]).unwrap();
    let warnings = r[0]["warnings"].as_array().unwrap();
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .contains("ends inside an entry")
            && warnings[0]
                .as_str()
                .unwrap()
                .contains("the 11 entries before it were recovered"),
        "{warnings:?}"
    );
    assert!(warnings[1].as_str().unwrap().contains("no stop entry"));
    // Without the stop, the recording ends at its last transition; A is still stuck.
    assert_eq!(r[0]["end"], "2026-11-25T06:00:40.001000000Z");
    assert_eq!(sockets(&r, "resolved", "stuck_ms"), [(40002, 36_000)]);

    // Garbage in the middle costs the entry it hit, not the rest: here the owners of B.
    let entries = incident();
    let start = bytes_of(&entries[..7]).len();
    let len = bytes_of(&entries[..8]).len() - start;
    let mut hit = full.clone();
    hit[start + FRAME_LEN + 2..][..4].copy_from_slice(b"\xde\xad\xbe\xef");
    let r = report_bytes(&hit, &[]).unwrap();
    let warning = r[0]["warnings"][0].as_str().unwrap();
    assert!(
        warning.ends_with(&format!(
            ": {len} damaged bytes at offset {start} skipped; reading went on after them"
        )),
        "{warning}"
    );
    assert_eq!(r[0]["damaged_bytes"], len as u64);
    assert_eq!(r[0]["entries"], entries.len() as u64 - 1);
    assert_eq!(r[0]["live"]["stopped"], true);
    let stuck = of_type(&r, "stuck");
    assert_eq!(stuck[0]["owner"]["pid"], 4242);
    assert_eq!(
        stuck[1]["owner"],
        Value::Null,
        "B's owners were in the damage"
    );

    for (bytes, want) in [
        (&b""[..], "it is empty"),
        (b"CLOSE_WAIT 130\n", "it is not a tracer recording"),
        (&full[..7], "cut before its first entry"),
        (&full[..PROLOGUE_LEN + 5], "no entry could be read"),
        (
            b"\x89tracer\n\x02\x00\x00\x00",
            "format 2.0, newer than this tracer reads (1.x); report it with a newer tracer",
        ),
        (
            b"\x89tracer\n\x00\x00\x03\x00",
            "format 0.3, an early development format this tracer cannot read (it reads \
             1.x); report it with the tracer that wrote it",
        ),
    ] {
        let err = report_bytes(bytes, &[]).unwrap_err();
        assert!(err.contains(want), "{err}");
        assert!(err.starts_with("cannot report "), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
    let err = report_file(Path::new("/nonexistent/incident.rec"), &[]).unwrap_err();
    assert!(err.contains("No such file"), "{err}");
}

/// `entries` in a file of format 1.`minor`, with one entry of a kind format 1.3 does not
/// define after the header.
fn newer_minor(entries: &[Entry], minor: u16) -> Vec<u8> {
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&VERSION.0.to_le_bytes());
    b.extend_from_slice(&minor.to_le_bytes());
    encode(&entries[0], &mut b);
    let payload = [ENTRY_KINDS as u8, 1, 2, 3];
    b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    b.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    b.extend_from_slice(&payload);
    for e in &entries[1..] {
        encode(e, &mut b);
    }
    b
}

#[test]
fn a_newer_minor_version_is_read_and_warned_about_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("incident.rec");
    let all = incident();
    // Two segments of format 1.4, each with an entry kind this tracer does not know.
    let mut seg1 = vec![Entry::Header(Box::new(Header {
        segment: 1,
        checkpoint: 0,
        ..match &all[0] {
            Entry::Header(h) => (**h).clone(),
            _ => unreachable!(),
        }
    }))];
    seg1.extend_from_slice(&all[5..]);
    std::fs::write(writer::segment_path(&path, 1), newer_minor(&all[..5], 4)).unwrap();
    std::fs::write(&path, newer_minor(&seg1, 4)).unwrap();
    let r = report_file(&path, &[]).unwrap();
    assert_eq!(
        r[0]["warnings"],
        serde_json::json!([format!(
            "{} was written by a newer tracer (format 1.4): entries it added are skipped (2 \
             skipped); report it with a newer tracer to see them",
            path.display()
        )])
    );
    assert_eq!(
        r[1..],
        report(&[])[1..],
        "everything this tracer knows is read"
    );

    // Without entries of new kinds, the warning says only that some may be missing.
    let r = report_bytes(&newer_minor(&all, 4)[..], &[]).unwrap();
    let w = r[0]["warnings"][0].as_str().unwrap();
    assert!(
        w.contains("(format 1.4): entries it added are skipped (1 skipped)"),
        "{w}"
    );
    let mut b = bytes_of(&all);
    b[10] = 4;
    let r = report_bytes(&b, &[]).unwrap();
    assert!(r[0]["warnings"][0].as_str().unwrap().ends_with(
        "(format 1.4): entries it added are skipped; report it with a newer tracer to see them"
    ));

    // An unknown kind in a file of this tracer's own version is not blamed on a newer one.
    let r = report_bytes(&newer_minor(&all, VERSION.1), &[]).unwrap();
    assert_eq!(
        r[0]["warnings"].as_array().unwrap().len(),
        1,
        "{}",
        r[0]["warnings"]
    );
    assert!(r[0]["warnings"][0]
        .as_str()
        .unwrap()
        .ends_with(": skipped entries of kinds format 1.3 does not define: 1"));
}

#[test]
fn rotated_segments_are_read_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("incident.rec");
    let all = incident();
    // Segment 0 up to B's entry into CLOSE_WAIT; segment 1 restates the table and goes on.
    let mut seg1 = vec![Entry::Header(Box::new(Header {
        segment: 1,
        started_ns: 10 * S,
        checkpoint: 2,
        ..match &all[0] {
            Entry::Header(h) => (**h).clone(),
            _ => unreachable!(),
        }
    }))];
    for (sk, dport, since) in [(A, 40001, 3 * S), (B, 40002, 4 * S)] {
        seg1.push(Entry::Socket(SocketEntry {
            key: KeyEntry::Sk(sk),
            ends: ends(dport),
            state: CloseWait as u8,
            since_ns: since,
            since_is_lower_bound: false,
            origin: OriginEntry::Unknown,
            hint: None,
        }));
    }
    seg1.extend_from_slice(&all[5..]);
    std::fs::write(writer::segment_path(&path, 1), bytes_of(&all[..5])).unwrap();
    std::fs::write(&path, bytes_of(&seg1)).unwrap();
    let whole = report(&[]);
    let r = report_file(&path, &[]).unwrap();
    assert_eq!(r[0]["segments"], serde_json::json!([0, 1]));
    assert_eq!(r[1..], whole[1..], "two segments report as one file");

    // With the first segment rotated away, the checkpoint stands in for it.
    std::fs::remove_file(writer::segment_path(&path, 1)).unwrap();
    let r = report_file(&path, &[]).unwrap();
    assert!(r[0]["warnings"][0]
        .as_str()
        .unwrap()
        .contains("first 1 segment(s) were rotated away"));
    assert_eq!(
        sockets(&r, "stuck", "age_ms"),
        [(40001, 30_000), (40002, 30_000)]
    );
    assert_eq!(sockets(&r, "resolved", "stuck_ms"), [(40002, 36_000)]);
}

/// A busy recording: a socket stuck in CLOSE_WAIT from 1s to the end, and 20,000 short
/// connections one after another (CLOSE_WAIT for 0.5 ms, LAST_ACK for 1 ms); every 100th
/// stays 2 ms in CLOSE_WAIT, past the live threshold of 1 ms, and gets its owners after it
/// left (the live run resolves them before it writes the resolution).
const STAYS: u64 = 20_000;

fn busy() -> Vec<Entry> {
    const MS: u64 = 1_000_000;
    let mut e = vec![Entry::Header(Box::new(Header {
        thresholds: vec![(CloseWait as u8, 1)],
        checkpoint: 0,
        max_sockets: 1 << 20,
        ..match &incident()[0] {
            Entry::Header(h) => (**h).clone(),
            _ => unreachable!(),
        }
    }))];
    e.push(tr(S, 1, 50000, Established, CloseWait));
    for i in 0..STAYS {
        let (t, sk, dport) = (2 * S + i * 10 * MS, 0x1000 + i, 1000 + (i % 60_000) as u16);
        let owned = i % 100 == 0;
        let left = t + if owned { 2 * MS } else { MS / 2 };
        e.push(tr(t, sk, dport, Established, CloseWait));
        e.push(tr(left, sk, dport, CloseWait, LastAck));
        if owned {
            e.push(owners(left, dport, t, 7, true));
            e.push(Entry::Resolved(ResolvedEntry {
                ts_ns: left,
                key: KeyEntry::Sk(sk),
                ends: ends(dport),
                state: CloseWait as u8,
                since_ns: t,
                new: LastAck as u8,
            }));
        }
        e.push(tr(left + MS, sk, dport, LastAck, Close));
    }
    e
}

/// What the report keeps grows with the sockets alive, not with the stays: after 40,000
/// flags and resolutions, both passes hold a handful of entries (the first also one window
/// of per-flag notes; the rest went to its file), and the report of all of them is right.
#[test]
fn the_report_keeps_what_is_alive_not_every_stay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.rec");
    std::fs::write(&path, bytes_of(&busy())).unwrap();
    let args = ["--close-wait", "1ns", "--stuck", "LAST_ACK=1ns"];

    let mut segments = super::input::segments(&path, &mut Vec::new()).unwrap();
    let header = segments[0].header.clone();
    let options = super::Options {
        thresholds: crate::model::Thresholds::new(&[
            (CloseWait, std::time::Duration::from_nanos(1)),
            (LastAck, std::time::Duration::from_nanos(1)),
        ]),
        from_ns: 0,
        to_ns: u64::MAX,
        ports: vec![],
        timeline: None,
        live_thresholds: crate::model::Thresholds::new(&[(
            CloseWait,
            std::time::Duration::from_millis(1),
        )]),
    };
    let mut most = 0;
    let mut learn = super::Replay::new(
        options.clone(),
        &header,
        super::Pass::Learn(super::Learn::default()),
    );
    super::replay_segments(&mut segments, &mut learn, |r| {
        most = most.max(r.footprint());
        r.events.clear();
        Ok(())
    })
    .unwrap();
    let end_ns = learn.finish().unwrap();
    assert!(most <= 8, "the first pass held {most} entries");
    let super::Pass::Learn(learned) = learn.pass else {
        unreachable!()
    };
    let files = segments
        .iter_mut()
        .map(|s| {
            s.rewind().unwrap();
            s.file().unwrap()
        })
        .collect();
    let recorded = super::Recorded::new(files);
    let show = super::Show::new(learned.into_slots().unwrap(), recorded, end_ns);
    let mut second = super::Replay::new(options, &header, super::Pass::Show(show));
    let mut most = 0;
    super::replay_segments(&mut segments, &mut second, |r| {
        most = most.max(r.footprint());
        r.events.clear();
        Ok(())
    })
    .unwrap();
    assert!(most <= 8, "the second pass held {most} entries");

    let r = report_file(&path, &args).unwrap();
    let stuck = of_type(&r, "stuck");
    assert_eq!(stuck.len() as u64, 2 * STAYS + 1);
    assert_eq!(of_type(&r, "resolved").len() as u64, 2 * STAYS);
    let still: Vec<_> = stuck.iter().filter(|s| s["still_stuck"] == true).collect();
    assert_eq!(still.len(), 1);
    assert_eq!(still[0]["dport"], 50000);
    // Owners found after the stay ended, on the lines of every 100th CLOSE_WAIT.
    let owned: Vec<u64> = stuck
        .iter()
        .filter(|s| s["owner"]["pid"] == 4242)
        .map(|s| s["dport"].as_u64().unwrap())
        .collect();
    assert_eq!(
        owned,
        (0..STAYS)
            .step_by(100)
            .map(|i| 1000 + i % 60_000)
            .collect::<Vec<_>>()
    );
    // A line's outcome is its own stay's, from the notes on file as from memory.
    let last = stuck
        .iter()
        .rev()
        .find(|s| s["state"] == "CLOSE_WAIT" && s["still_stuck"] == false)
        .unwrap();
    assert_eq!(last["stuck_ms"], 0);
    let first_owned = stuck.iter().find(|s| s["owner"]["pid"] == 4242).unwrap();
    assert_eq!(first_owned["stuck_ms"], 2);

    // One socket's life has few events, written from the first pass: its lines are those
    // of the report of all, written by the second.
    let decisions = |r: &[Value]| -> Vec<Value> {
        r.iter()
            .filter(|r| (r["type"] == "stuck" || r["type"] == "resolved") && r["dport"] == 1000)
            .cloned()
            .collect()
    };
    let mut one = args.to_vec();
    one.extend(["--timeline", "10.0.0.9:1000"]);
    let life = report_file(&path, &one).unwrap();
    assert_eq!(decisions(&life).len(), 4);
    assert_eq!(decisions(&life), decisions(&r));
}

/// A segment missing in the middle: its successor's checkpoint restores a stuck socket,
/// flagged again; both flags of the stay say how it ended.
#[test]
fn a_stay_flagged_again_after_a_missing_segment_ends_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("incident.rec");
    let all = incident();
    let header = match &all[0] {
        Entry::Header(h) => (**h).clone(),
        _ => unreachable!(),
    };
    let mut seg2 = vec![Entry::Header(Box::new(Header {
        segment: 2,
        started_ns: 38 * S,
        checkpoint: 1,
        ..header
    }))];
    seg2.push(Entry::Socket(SocketEntry {
        key: KeyEntry::Sk(B),
        ends: ends(40002),
        state: CloseWait as u8,
        since_ns: 4 * S,
        since_is_lower_bound: false,
        origin: OriginEntry::Unknown,
        hint: None,
    }));
    // B's transition out of CLOSE_WAIT, its resolution, and the rest.
    seg2.extend_from_slice(&all[8..]);
    // Segment 0 up to after B's owners (B flagged at 34s by the 30s threshold).
    let mut seg0 = all[..8].to_vec();
    seg0.push(tr(35 * S, 0xc0, 40003, SynRecv, Established));
    std::fs::write(writer::segment_path(&path, 1), bytes_of(&seg0)).unwrap();
    std::fs::write(&path, bytes_of(&seg2)).unwrap();
    let r = report_file(&path, &[]).unwrap();
    let b: Vec<_> = of_type(&r, "stuck")
        .into_iter()
        .filter(|s| s["dport"] == 40002)
        .collect();
    assert_eq!(b.len(), 2, "{r:#?}");
    for s in b {
        assert_eq!(
            (&s["still_stuck"], &s["stuck_ms"]),
            (&false.into(), &36_000.into())
        );
    }
}

/// A timeline's transitions as (old, new, remote port), the report record left out.
fn transitions_after_the_header(r: &[Value]) -> Vec<(&str, &str, u64)> {
    r[1..]
        .iter()
        .map(|r| {
            (
                r["old"].as_str().unwrap(),
                r["new"].as_str().unwrap(),
                r["dport"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn timeline_by_address_includes_the_connect_before_the_port() {
    let mut entries = incident();
    let Entry::Transition(mut born) = tr(5 * S, 0xc0, 40003, Close, SynSent) else {
        unreachable!()
    };
    born.ends.dport = 0;
    entries.insert(5, Entry::Transition(born));
    // Another socket born meanwhile does not join the timeline.
    entries.insert(6, tr(5 * S + 1, 0xd0, 1, Close, SynSent));
    entries.insert(7, tr(5 * S + 2, 0xd0, 1, SynSent, Close));
    entries.insert(8, tr(5 * S + 3, 0xc0, 40003, SynSent, Established));
    let r = report_bytes(&bytes_of(&entries), &["--timeline", "10.0.0.9:40003"]).unwrap();
    let seen = transitions_after_the_header(&r);
    assert_eq!(
        seen,
        [("CLOSE", "SYN_SENT", 0), ("SYN_SENT", "ESTABLISHED", 40003)]
    );
}

/// On Debian's 6.1 and 6.12, an accepted socket's LISTEN -> SYN_RECV carries the listener's
/// addresses; its timeline by the peer's address still starts there.
#[test]
fn timeline_by_address_includes_an_accept_recorded_with_the_listeners_addresses() {
    let mut entries = incident();
    let Entry::Transition(mut born) = tr(5 * S, 0xc0, 40003, Listen, SynRecv) else {
        unreachable!()
    };
    born.ends.daddr = Ipv4Addr::UNSPECIFIED.into();
    born.ends.dport = 0;
    entries.insert(5, Entry::Transition(born));
    entries.insert(6, tr(5 * S + 1, 0xc0, 40003, SynRecv, Established));
    let r = report_bytes(&bytes_of(&entries), &["--timeline", "10.0.0.9:40003"]).unwrap();
    let seen = transitions_after_the_header(&r);
    assert_eq!(
        seen,
        [
            ("LISTEN", "SYN_RECV", 0),
            ("SYN_RECV", "ESTABLISHED", 40003)
        ]
    );
}

#[test]
fn any_clock_in_a_header_is_reported_without_panic() {
    for offset in [i64::MAX, i64::MIN, 0] {
        let mut entries = incident();
        if let Entry::Header(h) = &mut entries[0] {
            h.clock_offset_ns = offset;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odd.rec");
        std::fs::write(&path, bytes_of(&entries)).unwrap();
        for format in ["text", "json"] {
            let argv = [
                "tracer",
                "report",
                path.to_str().unwrap(),
                "--format",
                format,
            ];
            let Command::Report(args) = Cli::try_parse_checked(argv).unwrap().command else {
                unreachable!()
            };
            super::run(&args, io::sink(), io::sink()).unwrap();
        }
    }
}

/// A real incident recorded by the release that wrote format 1.0 (tests/golden/README.md):
/// leaks on 127.0.0.1 and [::1], flagged with their owner. Every later version must still
/// read it and report it exactly so; a change of the report's output that is meant updates
/// tests/golden/format-1.0.report.jsonl in the same commit (the README says how).
#[test]
fn the_golden_recording_of_format_1_0_reports_as_expected() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let path = golden.join("format-1.0.rec");
    let argv = [
        "tracer",
        "report",
        path.to_str().unwrap(),
        "--format",
        "json",
    ];
    let Command::Report(args) = Cli::try_parse_checked(argv).unwrap().command else {
        unreachable!()
    };
    let (mut out, mut status) = (Vec::new(), Vec::new());
    super::run(&args, &mut out, &mut status).unwrap();
    assert_eq!(String::from_utf8_lossy(&status), "", "no warnings");
    // The expected report was made from tracer/ with the path relative to it.
    let out = String::from_utf8(out).unwrap().replacen(
        &format!("\"file\":\"{}\"", path.display()),
        "\"file\":\"tests/golden/format-1.0.rec\"",
        1,
    );
    let expected = std::fs::read_to_string(golden.join("format-1.0.report.jsonl")).unwrap();
    for (i, (got, want)) in out.lines().zip(expected.lines()).enumerate() {
        assert_eq!(got, want, "line {} of the report differs", i + 1);
    }
    assert_eq!(out, expected);
}

/// One arbitrary entry over small domains, so that sockets, states and times collide.
fn any_entry() -> impl proptest::strategy::Strategy<Value = Entry> {
    use proptest::prelude::*;
    let transition =
        (0u64..100, 0u64..4, 0u16..3, 0u8..16, 0u8..16).prop_map(|(ts, sk, port, old, new)| {
            let Entry::Transition(mut e) = tr(ts * S / 10, sk, 40000 + port, Close, Close) else {
                unreachable!()
            };
            (e.old, e.new) = (old, new);
            Entry::Transition(e)
        });
    let socket = (0u64..3, 0u16..3, 0u8..16, 0u64..100, any::<bool>()).prop_map(
        |(key, port, state, since, named)| {
            Entry::Socket(SocketEntry {
                key: if named {
                    KeyEntry::Sk(key)
                } else {
                    KeyEntry::Snapshot(key)
                },
                ends: ends(40000 + port),
                state,
                since_ns: since * S / 10,
                since_is_lower_bound: !named,
                origin: OriginEntry::Unknown,
                hint: None,
            })
        },
    );
    let owners =
        (0u64..100, 0u16..3, 0u64..100, any::<bool>()).prop_map(|(ts, port, since, eof)| {
            owners(ts * S / 10, 40000 + port, since * S / 10, 3, eof)
        });
    let other = prop_oneof![
        (0u64..100, 0u64..5).prop_map(|(ts, total)| Entry::Lost {
            ts_ns: ts * S / 10,
            total
        }),
        (0u64..5).prop_map(|entries| Entry::Gap { entries }),
        (0u64..200).prop_map(|ts| Entry::Stop(StopEntry {
            ts_ns: ts * S / 10,
            events: 0,
            lost: 0,
            unrecorded: 0
        })),
    ];
    prop_oneof![6 => transition, 2 => socket, 1 => owners, 1 => other]
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 200, ..Default::default() })]

    /// Whatever valid entries a recording holds, in whatever order, the report is written,
    /// or refused for a window or timeline that shows nothing.
    #[test]
    fn report_survives_arbitrary_entries(
        body in proptest::collection::vec(any_entry(), 0..60),
        close_wait in 1u64..20,
    ) {
        let mut entries = vec![incident().remove(0)];
        entries.extend(body);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("any.rec");
        std::fs::write(&path, bytes_of(&entries)).unwrap();
        let cw = format!("{}00ms", close_wait);
        for extra in [&["--stuck", "FIN_WAIT2=1s"][..], &["--timeline", "10.0.0.9:40001"], &["--to", "5s"]] {
            for format in ["text", "json"] {
                let mut argv = vec!["tracer", "report", path.to_str().unwrap(), "--format", format, "--close-wait", &cw];
                argv.extend_from_slice(extra);
                let Command::Report(args) = Cli::try_parse_checked(argv).unwrap().command else {
                    unreachable!()
                };
                if let Err(e) = super::run(&args, io::sink(), io::sink()) {
                    let refused = e.downcast_ref::<super::window::WindowError>().is_some();
                    proptest::prop_assert!(refused, "{e:#}");
                }
            }
        }
    }
}

#[test]
fn the_live_runs_corrections_after_lost_transitions_are_replayed() {
    // Before the end, the live run lost transitions and set its table right: the snapshot
    // socket 41000 had closed unseen (gone), and a leak at 40003 it never saw born was
    // found in CLOSE_WAIT since 10s.
    let mut entries = incident();
    let stop = entries.pop().unwrap();
    entries.push(Entry::Lost {
        ts_ns: 9 * S,
        total: 12,
    });
    entries.push(Entry::Gone(GoneEntry {
        ts_ns: 11 * S,
        key: KeyEntry::Snapshot(7),
        ends: ends(41000),
        state: Established as u8,
        since_ns: S / 2,
    }));
    entries.push(Entry::Socket(SocketEntry {
        key: KeyEntry::Snapshot(9),
        ends: ends(40003),
        state: CloseWait as u8,
        since_ns: 10 * S,
        since_is_lower_bound: true,
        origin: OriginEntry::Accepted,
        hint: None,
    }));
    entries.push(stop);
    let r = report_bytes(&bytes_of(&entries), &[]).unwrap();
    let stuck = sockets(&r, "stuck", "age_ms");
    assert!(
        stuck.contains(&(40003, 30_000)),
        "the leak found by the correction is flagged at its threshold: {stuck:?}"
    );
    let end = of_type(&r, "summary");
    let end = end.last().unwrap();
    assert_eq!(end["tracked"], 2, "A and 40003; 41000 is gone: {end}");
    // The same entries in a segment that continues the previous one are applied too.
    let mut seg = vec![Entry::Header(Box::new(match &entries[0] {
        Entry::Header(h) => Header {
            segment: 1,
            checkpoint: 0,
            ..(**h).clone()
        },
        _ => unreachable!(),
    }))];
    seg.extend_from_slice(&entries[entries.len() - 4..]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("incident.rec");
    std::fs::write(
        writer::segment_path(&path, 1),
        bytes_of(&entries[..entries.len() - 4]),
    )
    .unwrap();
    std::fs::write(&path, bytes_of(&seg)).unwrap();
    let r = report_file(&path, &[]).unwrap();
    assert!(sockets(&r, "stuck", "age_ms").contains(&(40003, 30_000)));
}
