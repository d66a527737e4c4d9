//! Signals always end a run with its totals, whatever stdout and the recording do; one
//! tracer per recording; honest stop records after disk errors.

use std::{
    ffi::{CStr, CString},
    fs::{self, File},
    io::Read,
    net::{IpAddr, Ipv4Addr, TcpListener},
    os::{
        fd::AsRawFd,
        unix::{ffi::OsStrExt, fs::OpenOptionsExt, process::CommandExt},
    },
    path::Path,
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{
    bound_socket, closed_session, finish, listen, privileged, run_tracer, spawn_tracer, tracer_bin,
    wait_exit, Tracer, DEADLINE,
};
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

/// Bytes waiting in the pipe behind `stdout`, unread.
fn unread(stdout: &ChildStdout) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int we own.
    assert_eq!(
        unsafe { libc::ioctl(stdout.as_raw_fd(), libc::FIONREAD, &mut n) },
        0
    );
    n as usize
}

/// Connections to `listener` until `done`, failing at the deadline.
fn churn_until(listener: &TcpListener, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "waited {DEADLINE:?} for {what}");
        for _ in 0..100 {
            closed_session(listener);
        }
    }
}

/// `tracer watch ARGS --events` under traffic with a stdout nobody reads, stopped by
/// `stop` once the pipe is full and much more waits: exits 0, within the deadline,
/// with its totals on stderr. Returns the stderr, when output was first seen flowing (the
/// tracer was attached by then), and when `stop` was called and the tracer had exited.
fn stalled_stdout_run(args: &[&str], stop: impl FnOnce(&Child)) -> (String, StalledTimes) {
    let (socket, port) = bound_socket(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let listener = listen(socket);
    let port = port.to_string();
    let mut all = vec!["watch", "--events", "--port", &port];
    all.extend_from_slice(args);
    let mut child = Spawned(spawn_tracer(&all));
    let stdout = child.0.stdout.take().unwrap();
    // A pipe holds 64 KiB; the tracer queues 4 MiB more before it stops reading the
    // probe: 3000 connections, about 30k transitions, fill both.
    // Output flows and nobody reads it; then far more than the pipe holds.
    churn_until(&listener, "output in the pipe", || {
        unread(&stdout) >= 32 << 10
    });
    let flowing = Instant::now();
    for _ in 0..3000 {
        closed_session(&listener);
    }
    let signalled = Instant::now();
    stop(&child.0);
    let (status, stderr) = finish(&mut child.0);
    let exited = Instant::now();
    assert_eq!(status.code(), Some(0), "{status}: {stderr}");
    assert!(
        stderr.contains("tracer: stopped after") && stderr.contains(" transitions, "),
        "the totals on stderr: {stderr}"
    );
    assert!(
        stderr.contains("tracer: warning: stdout was not being read: the last "),
        "{stderr}"
    );
    drop(stdout);
    let times = StalledTimes {
        flowing,
        signalled,
        exited,
    };
    (stderr, times)
}

/// The moments of a [`stalled_stdout_run`].
struct StalledTimes {
    flowing: Instant,
    signalled: Instant,
    exited: Instant,
}

#[test]
fn sigterm_ends_a_run_whose_stdout_nobody_reads() {
    if !privileged("sigterm_ends_a_run_whose_stdout_nobody_reads") {
        return;
    }
    let dir = scratch_dir();
    let rec = dir.path().join("stalled.rec");
    let (stderr, times) = stalled_stdout_run(
        &["--format", "json", "--record", rec.to_str().unwrap()],
        |child| {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        },
    );
    let took = times.exited - times.signalled;
    eprintln!("stdout stalled: exit {took:?} after SIGTERM");
    // The goal is one second; a loaded machine gets some slack.
    assert!(took < Duration::from_secs(3), "{took:?}");
    let info = report_info(&rec);
    // An emulated CPU (the QEMU kernels) may not write the recording's backlog within the
    // grace; then the run says so rather than wait.
    if info["live"]["stopped"] != true {
        assert!(
            stderr.contains("was still being written when the run had to end"),
            "no stop entry and no warning: {info}\n{stderr}"
        );
    }
}

#[test]
fn duration_ends_a_run_whose_stdout_nobody_reads() {
    if !privileged("duration_ends_a_run_whose_stdout_nobody_reads") {
        return;
    }
    // Text: the totals are on stderr anyway; the output lost is the transitions'.
    let (_, times) = stalled_stdout_run(&["--duration", "2s"], |_| {});
    // The run was attached before its output flowed, so its 2 s were over by `flowing` +
    // 2 s, or by the end of the churn if an emulated CPU took longer than that to make it
    // (the test's own work, not the tracer's).
    let due = (times.flowing + Duration::from_secs(2)).max(times.signalled);
    let late = times.exited.saturating_duration_since(due);
    eprintln!("stdout stalled: exit {late:?} after the duration was over");
    // The goal is one second; a loaded machine gets some slack.
    assert!(late < Duration::from_secs(3), "{late:?}");
}

/// A pseudo-terminal: its master side (not inherited by children: the terminal hangs up
/// when the test closes it), and the path of its slave.
fn pty() -> (File, String) {
    let master = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/ptmx")
        .expect("open /dev/ptmx");
    let fd = master.as_raw_fd();
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: calls on a descriptor we own; ptsname_r fills a buffer of ours.
    unsafe {
        assert_eq!(libc::grantpt(fd), 0);
        assert_eq!(libc::unlockpt(fd), 0);
        assert_eq!(libc::ptsname_r(fd, name.as_mut_ptr(), name.len()), 0);
    }
    // SAFETY: ptsname_r wrote a NUL-terminated name.
    let slave = unsafe { CStr::from_ptr(name.as_ptr()) };
    (master, slave.to_str().unwrap().to_owned())
}

/// Reads `master` until `text` has appeared, failing at the deadline; without a thread,
/// which would keep the master open.
fn read_until(master: &mut File, text: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(text) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {text:?} on the terminal: {seen:?}");
        let mut fd = libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own.
        unsafe { libc::poll(&mut fd, 1, left.as_millis() as i32) };
        let mut buf = [0u8; 4096];
        if fd.revents & libc::POLLIN != 0 {
            let n = master.read(&mut buf).expect("read the terminal");
            seen.extend_from_slice(&buf[..n]);
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn a_terminal_that_hangs_up_ends_the_run_cleanly() {
    if !privileged("a_terminal_that_hangs_up_ends_the_run_cleanly") {
        return;
    }
    let dir = scratch_dir();
    let rec = dir.path().join("ssh.rec");
    let (mut master, slave) = pty();
    let tty = || {
        File::options()
            .read(true)
            .write(true)
            .open(&slave)
            .expect("open the terminal")
    };
    let mut command = Command::new(tracer_bin());
    command
        .args(["watch", "--port", "9", "--record", rec.to_str().unwrap()])
        .stdin(Stdio::from(tty()))
        .stdout(Stdio::from(tty()))
        .stderr(Stdio::from(tty()));
    // As a login shell's job: its own session, the terminal its controlling one, so that
    // the hangup signals it.
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = Spawned(command.spawn().expect("start tracer"));
    drop(command);
    read_until(&mut master, "Ctrl-C to stop");
    // The terminal goes away, as when an ssh connection drops: SIGHUP, and every write
    // to it fails from now on.
    drop(master);
    let status = wait_exit(&mut child.0);
    assert_eq!(status.code(), Some(0), "{status}");
    let info = report_info(&rec);
    assert_eq!(info["live"]["stopped"], true, "{info}");
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = scratch_dir();
        let target = CString::new(dir.path().as_os_str().as_bytes()).unwrap();
        let options = CString::new(format!("size={size}")).unwrap();
        // SAFETY: NUL-terminated strings that outlive the call.
        let r = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(r, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.dir.path().as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
fn a_full_disk_stops_the_recording_and_the_stop_record_says_what_was_left_out() {
    if !privileged("a_full_disk_stops_the_recording_and_the_stop_record_says_what_was_left_out") {
        return;
    }
    let disk = Tmpfs::mount("1M");
    let rec = disk.dir.path().join("full.rec");
    let (socket, port) = bound_socket(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let listener = listen(socket);
    let mut tracer = Tracer::start(&[
        "--port",
        &port.to_string(),
        "--record",
        rec.to_str().unwrap(),
    ]);
    // About 10 transitions of 53 bytes each per connection: twice what 1 MiB holds.
    for _ in 0..4000 {
        closed_session(&listener);
    }
    let (status, stderr) = tracer.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains(&format!(
            "tracer: warning: writing the recording {} failed: No space left on device",
            rec.display()
        )),
        "{stderr}"
    );
    let stop = tracer.records.last().unwrap().clone();
    assert_eq!(stop["type"], "stop");
    assert_eq!(stop["lost"], 0, "{stop}");
    let info = report_info(&rec);
    let live = &info["live"];
    // Nothing but transitions was recorded in this run: those on disk and those left out
    // are every one the live run saw.
    let events = stop["events"].as_u64().unwrap();
    let unrecorded = stop["unrecorded"].as_u64().unwrap();
    let recorded = info["transitions"].as_u64().unwrap();
    eprintln!("full disk: {recorded} transitions recorded, {unrecorded} left out of {events}");
    assert!(unrecorded > 0, "{stop}");
    assert_eq!(recorded + unrecorded, events, "{stop} {info}");
    assert_eq!(info["damaged_bytes"], 0, "no torn entry: {info}");
    assert_eq!(live["unrecorded"], unrecorded, "{info}");
    assert_eq!(
        live["stopped"], true,
        "the stop entry fits in the room kept: {info}"
    );
    assert!(
        live["recording_stopped"]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("No space left on device")),
        "{info}"
    );
    let warnings = info["warnings"].to_string();
    assert!(warnings.contains("recording stopped at "), "{warnings}");
    assert!(!warnings.contains("killed"), "{warnings}");
}

/// An ext4 file system on a loop device, mounted on a fresh directory; unmounted when
/// dropped.
struct LoopDisk {
    mnt: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// A [`LoopDisk`] frozen, as a hung disk is: every write to it waits. Thawed when dropped,
/// which must come before a tracer writing to it is killed and reaped: a thread waiting
/// in the kernel holds its process's exit.
struct Frozen<'a>(&'a LoopDisk);

impl LoopDisk {
    /// `None`, with the reason printed, where loop devices or ext4 are missing (some
    /// kernels the suite runs on have them as modules nobody loaded).
    fn mount() -> Option<LoopDisk> {
        let dir = scratch_dir();
        let image = dir.path().join("disk.img");
        let mnt = dir.path().join("mnt");
        File::create(&image).unwrap().set_len(32 << 20).unwrap();
        fs::create_dir(&mnt).unwrap();
        let mounted = quietly("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()])
            && quietly(
                "mount",
                &["-o", "loop", image.to_str().unwrap(), mnt.to_str().unwrap()],
            );
        if !mounted {
            eprintln!("NOT EXERCISED: a hung recording disk (no loop device or ext4 here)");
            return None;
        }
        Some(LoopDisk { mnt, _dir: dir })
    }

    fn freeze(&self) -> Frozen<'_> {
        assert!(
            quietly("fsfreeze", &["-f", self.mnt.to_str().unwrap()]),
            "fsfreeze -f"
        );
        Frozen(self)
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        quietly("umount", &[self.mnt.to_str().unwrap()]);
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        quietly("fsfreeze", &["-u", self.0.mnt.to_str().unwrap()]);
    }
}

/// Runs `program ARGS` without its output; whether it succeeded.
fn quietly(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_hung_recording_disk_does_not_hold_the_end_of_the_run() {
    if !privileged("a_hung_recording_disk_does_not_hold_the_end_of_the_run") {
        return;
    }
    let Some(disk) = LoopDisk::mount() else {
        return;
    };
    let rec = disk.mnt.join("hung.rec");
    let (socket, port) = bound_socket(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let listener = listen(socket);
    let mut tracer = Tracer::start(&[
        "--port",
        &port.to_string(),
        "--record",
        rec.to_str().unwrap(),
    ]);
    let frozen = disk.freeze();
    // The recorder's thread hangs at its next write.
    for _ in 0..500 {
        closed_session(&listener);
    }
    let signalled = Instant::now();
    tracer.signal(libc::SIGTERM);
    tracer.wait_for("the stop record", |r| {
        r.last().is_some_and(|r| r["type"] == "stop")
    });
    let took = signalled.elapsed();
    eprintln!("recording disk hung: stop record {took:?} after SIGTERM");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // The process exits once its thread is out of the kernel.
    drop(frozen);
    let (status, stderr) = tracer.stop_with(0);
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains(&format!(
            "tracer: warning: the recording {} was still being written when the run had to end",
            rec.display()
        )),
        "{stderr}"
    );
}
