//! Containers: leaks in other network namespaces (named with `ip netns add`, anonymous
//! with `unshare --net`, and a process in its own pid namespace) are flagged with their
//! owner and their namespace, live and in a report; `--netns` keeps one namespace in the
//! kernel. Each leaking server is a process of its own (`leaky`), inside the namespace,
//! that connects to itself and keeps the sockets its clients closed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use integration_tests::{privileged, run_tracer, Leaky, NamedNetns, Tracer};
use serde_json::Value;

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

fn stuck(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|r| r["type"] == "stuck").collect()
}

/// The stuck records of `leaky`'s sockets (its namespace and port), among others the host
/// may have.
fn stuck_of<'a>(records: &'a [Value], leaky: &Leaky) -> Vec<&'a Value> {
    let netns = leaky.netns();
    stuck(records)
        .into_iter()
        .filter(|r| r["netns"] == netns && r["sport"] == leaky.port)
        .collect()
}

/// Waits until each of `leakies` has a stuck record per leak; returns the records.
fn wait_flagged(tracer: &mut Tracer, leakies: &[&Leaky]) -> Vec<Value> {
    tracer
        .wait_for("every leak flagged", |r| {
            leakies
                .iter()
                .all(|l| stuck_of(r, l).len() >= l.leaks.len())
        })
        .to_vec()
}

/// Checks that `leaky` owns exactly its leaked sockets among `records`' stuck records, with
/// the right pid, fds and namespace.
fn assert_flagged(records: &[Value], leaky: &Leaky, family: &str) {
    let netns = leaky.netns();
    let mine = stuck_of(records, leaky);
    assert_eq!(
        mine.len(),
        leaky.leaks.len(),
        "one stuck record per leak in namespace {netns}: {mine:#?}"
    );
    for leak in &leaky.leaks {
        let r = mine
            .iter()
            .find(|r| r["dport"] == leak.client_port)
            .unwrap_or_else(|| panic!("no stuck record for {leak:?} in {mine:#?}"));
        assert_eq!(r["family"], family, "{r}");
        assert_eq!(r["sport"], leaky.port, "{r}");
        assert_eq!(r["held_by"], "fd", "{r}");
        assert_eq!(r["owner"]["pid"], leaky.pid, "{r}");
        assert_eq!(r["owner"]["comm"], "leaky", "{r}");
        assert_eq!(r["owner"]["fds"], serde_json::json!([leak.fd]), "{r}");
    }
}

fn leaks_in_named_and_anonymous_namespaces(test: &str, ip: IpAddr, family: &str) {
    if !privileged(test) {
        return;
    }
    let named = NamedNetns::new("named");
    let mut tracer = Tracer::start(&["--close-wait", "1s"]);
    let in_named = Leaky::spawn_in(&named.exec(), ip, 0, 2);
    let in_anonymous = Leaky::spawn_in(&Leaky::anonymous_netns(), ip, 0, 2);
    assert_ne!(in_named.netns(), in_anonymous.netns());
    assert_ne!(in_named.netns(), NamedNetns::own());
    let records = wait_flagged(&mut tracer, &[&in_named, &in_anonymous]);
    assert_flagged(&records, &in_named, family);
    assert_flagged(&records, &in_anonymous, family);
    drop((in_named, in_anonymous));
    tracer.stop();
}

#[test]
fn leaks_in_named_and_anonymous_namespaces_ipv4() {
    leaks_in_named_and_anonymous_namespaces(
        "leaks_in_named_and_anonymous_namespaces_ipv4",
        V4,
        "ipv4",
    );
}

#[test]
fn leaks_in_named_and_anonymous_namespaces_ipv6() {
    leaks_in_named_and_anonymous_namespaces(
        "leaks_in_named_and_anonymous_namespaces_ipv6",
        V6,
        "ipv6",
    );
}

#[test]
fn the_same_addresses_in_two_namespaces_are_two_sockets() {
    if !privileged("the_same_addresses_in_two_namespaces_are_two_sockets") {
        return;
    }
    let (a, b) = (NamedNetns::new("pair-a"), NamedNetns::new("pair-b"));
    let mut tracer = Tracer::start(&["--close-wait", "1s", "--port", "8080"]);
    // 127.0.0.1:8080 <- 127.0.0.1:40000 in both.
    let in_a = Leaky::spawn_pair_in(&a.exec(), 8080, 40000);
    let in_b = Leaky::spawn_pair_in(&b.exec(), 8080, 40000);
    let records = wait_flagged(&mut tracer, &[&in_a, &in_b]);
    let mut flagged = stuck_of(&records, &in_a);
    flagged.extend(stuck_of(&records, &in_b));
    assert_eq!(flagged.len(), 2, "{flagged:#?}");
    for r in &flagged {
        let leaky = [&in_a, &in_b]
            .into_iter()
            .find(|l| r["netns"] == l.netns())
            .unwrap_or_else(|| panic!("no namespace of ours: {r}"));
        assert_eq!(
            (&r["saddr"], &r["sport"], &r["daddr"], &r["dport"]),
            (
                &Value::from("127.0.0.1"),
                &Value::from(8080),
                &Value::from("127.0.0.1"),
                &Value::from(40000)
            ),
            "{r}"
        );
        assert_eq!(r["owner"]["pid"], leaky.pid, "{r}");
        assert_eq!(
            r["owner"]["fds"],
            serde_json::json!([leaky.leaks[0].fd]),
            "{r}"
        );
    }
    assert_ne!(flagged[0]["netns"], flagged[1]["netns"]);
    drop((in_a, in_b));
    tracer.stop();
}

#[test]
fn a_leak_in_a_namespace_before_start_is_flagged_with_a_lower_bound_age() {
    if !privileged("a_leak_in_a_namespace_before_start_is_flagged_with_a_lower_bound_age") {
        return;
    }
    let named = NamedNetns::new("before");
    let leaky = Leaky::spawn_in(&named.exec(), V4, 0, 1);
    let mut tracer = Tracer::start(&["--close-wait", "1s"]);
    let records = wait_flagged(&mut tracer, &[&leaky]);
    assert_flagged(&records, &leaky, "ipv4");
    let r = stuck_of(&records, &leaky)[0];
    assert_eq!(r["age_is_lower_bound"], true, "{r}");
    assert_eq!(r["sk"], Value::Null, "from the snapshot: {r}");
    drop(leaky);
    tracer.stop();
}

#[test]
fn a_process_in_its_own_pid_namespace_is_named_by_its_host_pid() {
    if !privileged("a_process_in_its_own_pid_namespace_is_named_by_its_host_pid") {
        return;
    }
    let mut tracer = Tracer::start(&["--close-wait", "1s"]);
    let leaky = Leaky::spawn_in(&Leaky::own_pid_namespace(), V4, 0, 1);
    assert_ne!(leaky.pid, 1, "the host's pid, not the one inside");
    let records = wait_flagged(&mut tracer, &[&leaky]);
    assert_flagged(&records, &leaky, "ipv4");
    drop(leaky);
    tracer.stop();
}

#[test]
fn netns_filter_keeps_exactly_one_namespace() {
    if !privileged("netns_filter_keeps_exactly_one_namespace") {
        return;
    }
    let (kept, other) = (NamedNetns::new("kept"), NamedNetns::new("other"));
    // By path; the namespace's inode works the same (parsed by the CLI's unit tests).
    let mut tracer = Tracer::start(&["--events", "--close-wait", "1s", "--netns", &kept.path()]);
    let in_other = Leaky::spawn_in(&other.exec(), V4, 0, 2);
    let in_kept = Leaky::spawn_in(&kept.exec(), V4, 0, 2);
    let records = wait_flagged(&mut tracer, &[&in_kept]);
    assert_flagged(&records, &in_kept, "ipv4");
    drop((in_kept, in_other));
    let records = tracer.stop();
    let transitions: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "transition")
        .collect();
    // Listener, 2 clients and 2 accepted sockets, each through their handshake and close.
    assert!(transitions.len() >= 10, "{transitions:#?}");
    let strays: Vec<&&Value> = transitions
        .iter()
        .filter(|r| r["netns"] != kept.inode())
        .collect();
    assert!(strays.is_empty(), "--netns let through: {strays:#?}");
    let stop = records.last().unwrap();
    assert!(
        stop["skipped"]["filtered"]
            .as_u64()
            .is_some_and(|n| n >= 10),
        "the other namespace's transitions were dropped in the kernel: {stop}"
    );
}

#[test]
fn a_report_names_the_live_owners_and_namespaces() {
    if !privileged("a_report_names_the_live_owners_and_namespaces") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("netns.rec");
    let named = NamedNetns::new("report");
    let mut tracer = Tracer::start(&["--close-wait", "1s", "--record", file.to_str().unwrap()]);
    let leaky = Leaky::spawn_in(&named.exec(), V4, 0, 2);
    let live = wait_flagged(&mut tracer, &[&leaky]);
    let netns = leaky.netns();
    drop(leaky);
    tracer.stop();
    let report = run_tracer(&[
        "report",
        file.to_str().unwrap(),
        "--format",
        "json",
        "--close-wait",
        "1s",
    ]);
    let key = |r: &Value| {
        (
            r["netns"].clone(),
            r["sport"].clone(),
            r["dport"].clone(),
            r["owner"]["pid"].clone(),
            r["owner"]["fds"].clone(),
            r["held_by"].clone(),
        )
    };
    let ours = |records: &[Value]| -> Vec<_> {
        stuck(records)
            .into_iter()
            .filter(|r| r["netns"] == netns)
            .map(key)
            .collect()
    };
    let (mut live, mut reported) = (ours(&live), ours(&report));
    assert_eq!(live.len(), 2, "{live:?}");
    live.sort_by_key(|k| format!("{k:?}"));
    reported.sort_by_key(|k| format!("{k:?}"));
    assert_eq!(reported, live);
}
