//! `tracer doctor` on the running kernel: it tries the probe's programs, names the
//! send/receive mechanism `watch` uses, and exits 0 (full), 1 (degraded) or 2 (cannot run).

use std::process::Command;

use integration_tests::{privileged, tracer_bin, Tracer};
use serde_json::Value;

fn doctor(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(tracer_bin())
        .arg("doctor")
        .args(args)
        .output()
        .expect("run tracer doctor");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code(),
        String::from_utf8(out.stdout).expect("UTF-8"),
    )
}

#[test]
fn doctor_names_the_mechanism_watch_uses() {
    if !privileged("doctor_names_the_mechanism_watch_uses") {
        return;
    }
    let (code, json) = doctor(&["--format", "json"]);
    let report: Value = serde_json::from_str(json.trim_end())
        .unwrap_or_else(|e| panic!("doctor printed no JSON object ({e}): {json}"));
    assert_eq!(report["type"], "doctor");
    assert_eq!(
        report["exit_code"].as_i64(),
        code.map(i64::from),
        "{report}"
    );
    let checks = report["checks"].as_array().expect("checks");
    let status_of = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check: {report}"))["status"]
            .clone()
    };
    // Root on a kernel this project supports: the essentials were tried and work.
    for name in [
        "user",
        "CAP_BPF",
        "CAP_PERFMON",
        "CAP_DAC_READ_SEARCH",
        "CAP_SYS_PTRACE",
        "CAP_SYS_ADMIN",
        "tracefs",
        "probe",
        "sock_diag",
    ] {
        assert_eq!(status_of(name), "ok", "{report}");
    }
    match code {
        Some(0) => assert_eq!(report["verdict"], "full", "{report}"),
        // Degraded is documented: every check that costs something says what.
        Some(1) => {
            for c in checks.iter().filter(|c| c["impact"] == "degraded") {
                assert!(c["loses"].as_str().is_some_and(|l| !l.is_empty()), "{c}");
                eprintln!("doctor: degraded here: {} ({})", c["name"], c["loses"]);
            }
        }
        other => panic!("doctor exited {other:?}: {report}"),
    }

    // The mechanism named is the one watch attaches.
    let tracer = Tracer::start(&["--duration", "1s"]);
    let start = tracer.records[0].clone();
    drop(tracer);
    assert_eq!(
        report["io_probes"], start["attached"]["io_probes"],
        "doctor and watch agree: {report}"
    );
    assert_eq!(
        report["io_mechanism"].is_null(),
        report["io_probes"].as_array().is_some_and(|p| p.is_empty())
    );

    // Text says the same, one line per check and a verdict.
    let (text_code, text) = doctor(&[]);
    assert_eq!(text_code, code, "{text}");
    assert!(text.starts_with("tracer doctor: Linux "), "{text}");
    let verdict = text.lines().last().expect("a verdict line");
    assert!(verdict.starts_with("verdict: watch "), "{text}");
}

#[test]
fn doctor_without_privileges_says_watch_cannot_run() {
    if !privileged("doctor_without_privileges_says_watch_cannot_run") {
        return;
    }
    // Root's doctor mounts tracefs where the machine has not, so that it is there.
    doctor(&[]);
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(tracer_bin())
        .args(["doctor", "--format", "json"])
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["verdict"], "cannot_run");
    // One check per capability: the probe's two are fatal, the others cost something.
    let check = |name: &str| {
        report["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check: {report}"))
            .clone()
    };
    for (name, impact) in [
        ("CAP_BPF", "fatal"),
        ("CAP_PERFMON", "fatal"),
        ("CAP_DAC_READ_SEARCH", "degraded"),
        ("CAP_SYS_PTRACE", "degraded"),
        ("CAP_SYS_ADMIN", "degraded"),
    ] {
        let c = check(name);
        assert_eq!(
            (&c["status"], &c["impact"]),
            (&"missing".into(), &impact.into()),
            "{c}"
        );
    }
    assert!(
        check("CAP_BPF")["loses"]
            .as_str()
            .is_some_and(|l| l.contains("run it as root")),
        "{report}"
    );
    // The user line names the full set.
    assert!(
        check("user")["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("uid 65534;")
                && d.contains(
                    "CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, CAP_SYS_ADMIN"
                )),
        "{report}"
    );
    // tracefs is there, but root's: said so, not "not mounted".
    let tracefs = check("tracefs");
    assert!(
        tracefs["detail"]
            .as_str()
            .is_some_and(|d| d.contains("not readable") && !d.contains("not mounted")),
        "{tracefs}"
    );
}
