//! Signals always end a run with its totals, whatever stdout and the recording do; one
//! tracer per recording; honest stop records after disk errors.

use std::{fs, path::Path};

use integration_tests::{privileged, run_tracer, Tracer};
use serde_json::Value;

/// A directory for recordings, removed after the test.
fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

/// The first record of `tracer report FILE --format json`: what it read.
fn report_info(rec: &Path) -> Value {
    let records = run_tracer(&["report", rec.to_str().unwrap(), "--format", "json"]);
    assert_eq!(records[0]["type"], "report", "{records:?}");
    records[0].clone()
}

#[test]
fn sighup_ends_the_run_like_sigterm() {
    if !privileged("sighup_ends_the_run_like_sigterm") {
        return;
    }
    let dir = scratch_dir();
    let rec = dir.path().join("hup.rec");
    let mut tracer = Tracer::start(&["--port", "9", "--record", rec.to_str().unwrap()]);
    let (status, stderr) = tracer.stop_with(libc::SIGHUP);
    assert_eq!(status.code(), Some(0), "{status}: {stderr}");
    let stop = tracer.records.last().unwrap();
    assert_eq!(
        (stop["type"].as_str(), stop["reason"].as_str()),
        (Some("stop"), Some("signal")),
        "{stop}"
    );
    let live = &report_info(&rec)["live"];
    assert_eq!(
        live["stopped"], true,
        "the recording has its stop entry: {live}"
    );
    assert!(fs::metadata(&rec).unwrap().len() > 0);
}
