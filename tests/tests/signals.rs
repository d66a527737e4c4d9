//! Signals always end a run with its totals, whatever stdout and the recording do; one
//! tracer per recording; honest stop records after disk errors.

use std::{ffi::CString, fs, os::unix::ffi::OsStrExt, path::Path, process::Child, time::Instant};

use integration_tests::{finish, privileged, run_tracer, spawn_tracer, Tracer, DEADLINE};
use serde_json::Value;

/// A directory for recordings, removed after the test.
fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

/// A tracer started with [`spawn_tracer`], killed if the test fails before it exits: a
/// failed test must not leave a probe attached.
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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

#[test]
fn a_fifo_as_the_recording_is_refused_at_once() {
    if !privileged("a_fifo_as_the_recording_is_refused_at_once") {
        return;
    }
    let dir = scratch_dir();
    let fifo = dir.path().join("pipe.rec");
    let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let started = Instant::now();
    // Nobody opens the FIFO's other end: opening it for writing would block.
    let mut child = Spawned(spawn_tracer(&["watch", "--record", fifo.to_str().unwrap()]));
    let (status, stderr) = finish(&mut child.0);
    assert_eq!(status.code(), Some(1), "{status}: {stderr}");
    assert_eq!(
        stderr,
        format!(
            "tracer: error: {} is a FIFO; a recording must be a regular file (choose another path)\n",
            fifo.display()
        )
    );
    assert!(started.elapsed() < DEADLINE / 3, "{:?}", started.elapsed());
}

#[test]
fn a_second_tracer_on_the_same_recording_is_refused() {
    if !privileged("a_second_tracer_on_the_same_recording_is_refused") {
        return;
    }
    let dir = scratch_dir();
    let rec = dir.path().join("shared.rec");
    let mut first = Tracer::start(&["--port", "9", "--record", rec.to_str().unwrap()]);
    let mut second = Spawned(spawn_tracer(&[
        "watch",
        "--port",
        "9",
        "--record",
        rec.to_str().unwrap(),
    ]));
    let (status, stderr) = finish(&mut second.0);
    assert_eq!(status.code(), Some(1), "{status}: {stderr}");
    assert_eq!(
        stderr,
        format!(
            "tracer: error: {} is being recorded by another tracer (pid {}); choose another file\n",
            rec.display(),
            first.pid()
        )
    );
    let (status, stderr) = first.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}: {stderr}");
    let info = report_info(&rec);
    assert_eq!(info["damaged_bytes"], 0, "{info}");
    assert_eq!(info["live"]["stopped"], true, "{info}");
}
