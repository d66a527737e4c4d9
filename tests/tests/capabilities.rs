//! tracer run as a user other than root, with capabilities: each missing one that costs
//! something is one warning saying what (and the run goes on), the full set gives the
//! owners of root's processes, tracefs unreadable is said to be unreadable, and the
//! systemd unit's command, run with exactly the unit's capabilities, names owners.
//!
//! The tracer is copied into a directory anyone may enter (the workspace may be root's
//! alone), and given file capabilities there (`setcap`) or ambient ones (`setpriv`).

use std::{
    collections::BTreeSet,
    fs,
    net::{IpAddr, Ipv4Addr, TcpListener},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use integration_tests::{
    http_get, metric_samples, privileged, tracer_bin, Leaky, NamedNetns, Tracer, DEADLINE,
};
use serde_json::Value;

/// The unprivileged user the tracer runs as.
const NOBODY: &str = "65534";
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Every capability tracer uses (`setcap` spelling).
const FULL_SET: &str = "cap_bpf,cap_perfmon,cap_dac_read_search,cap_sys_ptrace,cap_sys_admin";

/// A copy of the tracer anyone may run, in a directory of its own (removed when dropped).
struct Binary {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Binary {
    /// A copy with file capabilities `caps` (`setcap` syntax, e.g. `cap_bpf=ep`), if any.
    fn new(caps: Option<&str>) -> Binary {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let bin = dir.path().join("tracer");
        fs::copy(tracer_bin(), &bin).expect("copy tracer");
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod");
        if let Some(caps) = caps {
            let status = Command::new("setcap")
                .args([caps, &bin.to_string_lossy()])
                .status()
                .expect("setcap (libcap2-bin)");
            assert!(status.success(), "setcap {caps} failed");
        }
        Binary { dir, bin }
    }

    /// A directory in the copy's that the unprivileged user owns.
    fn owned_dir(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join(name);
        fs::create_dir(&dir).expect("mkdir");
        let uid = NOBODY.parse().unwrap();
        std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).expect("chown");
        dir
    }
}

/// `setpriv` switching to the unprivileged user, without groups, then running `program`.
fn as_nobody(program: &Path) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups"])
        .arg(program);
    command
}

/// A root-owned `leaky` with one connection to itself in CLOSE_WAIT.
fn root_leak() -> Leaky {
    let leaky = Leaky::spawn_in(&[], LOOPBACK, 0, 1);
    assert_eq!(leaky.leaks.len(), 1);
    leaky
}

/// Waits for the stuck record of `leaky`'s leaked socket and returns it.
fn stuck_leak(tracer: &mut Tracer, leaky: &Leaky) -> Value {
    stuck_leak_within(tracer, leaky, DEADLINE)
}

/// Like [`stuck_leak`], waiting up to `within`.
fn stuck_leak_within(tracer: &mut Tracer, leaky: &Leaky, within: Duration) -> Value {
    let port = leaky.leaks[0].client_port;
    let is_leak = |r: &Value| {
        r["type"] == "stuck" && r["sport"] == leaky.port && r["dport"] == u64::from(port)
    };
    let records =
        tracer.wait_for_within("the leak's stuck record", within, |r| r.iter().any(is_leak));
    records.iter().find(|r| is_leak(r)).unwrap().clone()
}

/// The capability warnings among `stderr`'s lines.
fn capability_warnings(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("tracer: warning: no CAP_"))
        .collect()
}

/// Arguments that keep the run to `leaky`'s sockets and flag its leak within a second.
fn leak_args(leaky: &Leaky) -> Vec<String> {
    ["--close-wait", "1s", "--port"]
        .map(str::to_owned)
        .into_iter()
        .chain([leaky.port.to_string()])
        .collect()
}

#[test]
fn without_cap_sys_ptrace_one_warning_says_owners_are_unknown() {
    if !privileged("without_cap_sys_ptrace_one_warning_says_owners_are_unknown") {
        return;
    }
    let leaky = root_leak();
    let copy = Binary::new(Some(
        "cap_bpf,cap_perfmon,cap_dac_read_search,cap_sys_admin=ep",
    ));
    let mut command = as_nobody(&copy.bin);
    command
        .args(["watch", "--format", "json"])
        .args(leak_args(&leaky));
    let mut tracer = Tracer::spawn(command);
    let stuck = stuck_leak(&mut tracer, &leaky);
    assert_eq!(stuck["held_by"], "unknown", "{stuck}");
    assert!(stuck["owner"].is_null(), "{stuck}");
    let (status, stderr) = tracer.stop_with(libc::SIGINT);
    assert!(status.success(), "{status}: {stderr}");
    let warned = capability_warnings(&stderr);
    assert_eq!(warned.len(), 1, "one capability warning: {stderr}");
    assert!(
        warned[0].starts_with(
            "tracer: warning: no CAP_SYS_PTRACE: the owners of other users' processes are unknown"
        ),
        "{stderr}"
    );
}

#[test]
fn with_the_full_set_no_warning_and_the_owner_is_named() {
    if !privileged("with_the_full_set_no_warning_and_the_owner_is_named") {
        return;
    }
    let leaky = root_leak();
    let copy = Binary::new(Some(&format!("{FULL_SET}=ep")));
    let mut command = as_nobody(&copy.bin);
    command
        .args(["watch", "--format", "json"])
        .args(leak_args(&leaky));
    let mut tracer = Tracer::spawn(command);
    let stuck = stuck_leak(&mut tracer, &leaky);
    assert_owner_named(&stuck, &leaky);
    let (status, stderr) = tracer.stop_with(libc::SIGINT);
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(capability_warnings(&stderr), Vec::<&str>::new(), "{stderr}");
}

/// `stuck` names `leaky` (root's) and the descriptor of its leaked socket.
fn assert_owner_named(stuck: &Value, leaky: &Leaky) {
    assert_eq!(stuck["held_by"], "fd", "{stuck}");
    assert_eq!(stuck["owner"]["pid"], leaky.pid, "{stuck}");
    assert_eq!(stuck["owner"]["uid"], 0, "{stuck}");
    assert_eq!(
        stuck["owner"]["fds"],
        serde_json::json!([leaky.leaks[0].fd]),
        "{stuck}"
    );
}

/// Makes sure tracefs is mounted, as root's tracer would: the checks below are about
/// reading it.
fn mount_tracefs() {
    let out = Command::new(tracer_bin())
        .args(["doctor", "--format", "json"])
        .output()
        .expect("run tracer doctor");
    let report: Value = serde_json::from_slice(&out.stdout).expect("doctor's JSON");
    let tracefs = report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "tracefs"))
        .expect("a tracefs check");
    assert_eq!(tracefs["status"], "ok", "{report}");
}

#[test]
fn tracefs_not_readable_is_said_so_not_unmounted() {
    if !privileged("tracefs_not_readable_is_said_so_not_unmounted") {
        return;
    }
    mount_tracefs();
    // Everything but CAP_DAC_READ_SEARCH: tracefs (root's, 0700) stays closed.
    let stderr = refused_as_nobody("cap_bpf,cap_perfmon,cap_sys_ptrace,cap_sys_admin=ep");
    assert!(
        stderr.starts_with("tracer: error: tracefs is mounted at ")
            && stderr.contains("but not readable by this user (uid 65534")
            && stderr.contains("needs root or CAP_DAC_READ_SEARCH")
            && !stderr.contains("not mounted"),
        "{stderr}"
    );
}

#[test]
fn without_cap_bpf_the_error_names_it() {
    if !privileged("without_cap_bpf_the_error_names_it") {
        return;
    }
    let stderr = refused_as_nobody("cap_perfmon,cap_dac_read_search,cap_sys_ptrace=ep");
    assert!(stderr.contains("(missing CAP_BPF)"), "{stderr}");
}

/// Runs `watch` as nobody from a copy given `caps` (a `setcap` text), which must refuse to
/// start: exit 1, one line on stderr, nothing on stdout. Returns that line.
fn refused_as_nobody(caps: &str) -> String {
    let copy = Binary::new(Some(caps));
    let out = as_nobody(&copy.bin)
        .args(["watch", "--duration", "1s"])
        .output()
        .expect("run the copy");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(out.stdout.is_empty(), "{stderr}");
    stderr
}

/// The systemd unit, as `Key=value` pairs of its `[Service]` section.
struct Unit {
    service: Vec<(String, String)>,
}

impl Unit {
    fn read() -> Unit {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/tracer.service");
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut section = "";
        let mut service = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if line.starts_with('[') {
                section = line;
                continue;
            }
            if section == "[Service]" {
                let (k, v) = line.split_once('=').expect("Key=value");
                service.push((k.to_owned(), v.to_owned()));
            }
        }
        Unit { service }
    }

    /// The value of `key`, which must be set once.
    fn get(&self, key: &str) -> &str {
        let values: Vec<&str> = self
            .service
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(values.len(), 1, "{key} set once in the unit: {values:?}");
        values[0]
    }

    /// A capability list as `setpriv` takes it: `+bpf,+perfmon,...`.
    fn capabilities(&self, key: &str) -> String {
        self.get(key)
            .split_whitespace()
            .map(|c| {
                let name = c.strip_prefix("CAP_").expect("CAP_ names");
                format!("+{}", name.to_lowercase())
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The unit's ExecStart as its user would run it (through `setpriv`: that user, exactly
/// the unit's ambient and bounding capabilities, no new privileges when the unit says so),
/// with the tracer's copy in `binary`, its state directory at `state`, a free port for the
/// metrics (returned with the command), JSON out, and kept to `leaky`'s sockets. `wrapper`
/// runs it (e.g. strace).
fn unit_command(
    unit: &Unit,
    binary: &Binary,
    state: &Path,
    leaky: &Leaky,
    wrapper: &[&str],
) -> (Command, u16) {
    let exec = unit.get("ExecStart");
    assert!(
        !exec.contains(['"', '\'', '$', '%']),
        "no quoting to do: {exec}"
    );
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/bin/tracer"), "{exec}");
    // A free port for the metrics, rather than the unit's, which a real tracer may hold.
    let metrics = TcpListener::bind((LOOPBACK, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let mut args = Vec::new();
    let words: Vec<&str> = words.collect();
    let mut i = 0;
    while i < words.len() {
        match words[i] {
            "--metrics" => {
                args.extend(["--metrics".to_owned(), metrics.to_string()]);
                i += 1;
            }
            w => args.push(w.replace("/var/lib/tracer", &state.to_string_lossy())),
        }
        i += 1;
    }
    assert!(args.contains(&"--record".to_owned()), "{args:?}");

    let ambient = unit.capabilities("AmbientCapabilities");
    let bounding = unit.capabilities("CapabilityBoundingSet");
    let (program, rest) = wrapper.split_first().unwrap_or((&"setpriv", &[]));
    let mut command = Command::new(program);
    if !wrapper.is_empty() {
        command.args(rest).arg("setpriv");
    }
    command
        .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups"])
        .args(["--inh-caps", &ambient, "--ambient-caps", &ambient])
        .args(["--bounding-set", &format!("-all,{bounding}")]);
    if unit.get("NoNewPrivileges") == "yes" {
        command.arg("--no-new-privs");
    }
    command
        .arg(&binary.bin)
        .args(&args)
        .args(["--format", "json"])
        .args(leak_args(leaky));
    assert!(args.contains(&"--metrics".to_owned()), "{args:?}");
    (command, metrics.port())
}

#[test]
fn the_systemd_unit_runs_with_its_capabilities_and_names_owners() {
    if !privileged("the_systemd_unit_runs_with_its_capabilities_and_names_owners") {
        return;
    }
    let unit = Unit::read();
    let leaky = root_leak();
    let copy = Binary::new(None);
    let state = copy.owned_dir("state");
    let (command, metrics) = unit_command(&unit, &copy, &state, &leaky, &[]);
    let mut tracer = Tracer::spawn(command);
    let stuck = stuck_leak(&mut tracer, &leaky);
    assert_owner_named(&stuck, &leaky);
    // What a fleet sees of it: the leak by its owner's command and port.
    let series = format!(
        "{{state=\"CLOSE_WAIT\",comm=\"leaky\",port=\"{}\",",
        leaky.port
    );
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (code, body) = http_get(metrics, "/metrics");
        assert_eq!(code, 200, "{body}");
        let stuck = metric_samples(&body, "tracer_stuck_sockets");
        if stuck
            .iter()
            .any(|(labels, n)| labels.starts_with(&series) && *n == 1.0)
        {
            break;
        }
        assert!(Instant::now() < deadline, "no {series} in {stuck:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, stderr) = tracer.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(capability_warnings(&stderr), Vec::<&str>::new(), "{stderr}");
    assert!(
        fs::metadata(state.join("tracer.rec")).is_ok_and(|m| m.len() > 0),
        "the recording is in the state directory"
    );
}

/// The system calls `filter` (a `SystemCallFilter=` value: calls and @groups) allows, as
/// this machine's systemd expands its groups.
fn allowed_calls(filter: &str) -> BTreeSet<String> {
    let mut allowed = BTreeSet::new();
    let mut todo: Vec<String> = filter.split_whitespace().map(str::to_owned).collect();
    let mut seen = BTreeSet::new();
    while let Some(item) = todo.pop() {
        if !item.starts_with('@') {
            allowed.insert(item);
            continue;
        }
        if !seen.insert(item.clone()) {
            continue;
        }
        let out = Command::new("systemd-analyze")
            .args(["syscall-filter", &item])
            .output()
            .expect("systemd-analyze (systemd)");
        assert!(
            out.status.success(),
            "systemd-analyze syscall-filter {item}"
        );
        let text = String::from_utf8(out.stdout).expect("UTF-8");
        // The group's name, then its members (calls and groups) indented; `#` comments.
        for line in text.lines().skip(1).map(str::trim) {
            if !line.is_empty() && !line.starts_with('#') {
                todo.push(line.to_owned());
            }
        }
    }
    allowed
}

#[test]
fn the_systemd_units_filters_allow_all_tracer_does() {
    if !privileged("the_systemd_units_filters_allow_all_tracer_does") {
        return;
    }
    let unit = Unit::read();
    let leaky = root_leak();
    // A namespace of its own, which the start-up snapshot enters (setns).
    let _ns = NamedNetns::new("unitfilter");
    let copy = Binary::new(None);
    let state = copy.owned_dir("state");
    let trace = copy.dir.path().join("strace.out");
    let trace_arg = trace.to_string_lossy().into_owned();
    let strace = ["strace", "-f", "-qq", "-o", &trace_arg];
    // strace stops the tracer at every system call: its start took over 15 s on the
    // emulated CPU of the QEMU kernels.
    let mut tracer = Tracer::spawn_within(
        unit_command(&unit, &copy, &state, &leaky, &strace).0,
        4 * DEADLINE,
    );
    let stuck = stuck_leak_within(&mut tracer, &leaky, 4 * DEADLINE);
    assert_owner_named(&stuck, &leaky);
    // strace's child is setpriv, which became the tracer: signal it, not strace.
    let children = format!("/proc/{0}/task/{0}/children", tracer.pid());
    let pid: i32 = fs::read_to_string(&children)
        .expect("strace's children")
        .split_whitespace()
        .next()
        .expect("the traced tracer")
        .parse()
        .unwrap();
    // SAFETY: signalling the tracer this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let (status, stderr) = tracer.stop_with(0);
    assert!(status.success(), "{status}: {stderr}");

    // `PID call(args...) = result`; setpriv's calls come first, before its exec.
    let text = fs::read_to_string(&trace).expect("strace's output");
    let calls: Vec<(&str, &str)> = text
        .lines()
        .skip_while(|l| !l.contains("execve(\""))
        .skip(1)
        .skip_while(|l| !l.contains("execve(\""))
        .filter_map(|l| {
            let call = l.split_once(' ')?.1.trim_start();
            let (name, args) = call.split_once('(')?;
            Some((name, args))
        })
        .filter(|(name, _)| {
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .collect();
    assert!(
        calls.iter().any(|(n, _)| *n == "bpf"),
        "the tracer's calls are in the trace"
    );
    let allowed = allowed_calls(unit.get("SystemCallFilter"));
    let refused: BTreeSet<&str> = calls
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !allowed.contains(*n))
        .collect();
    assert!(
        refused.is_empty(),
        "SystemCallFilter would refuse {refused:?}"
    );

    let families = unit.get("RestrictAddressFamilies");
    for (_, args) in calls.iter().filter(|(n, _)| *n == "socket") {
        let family = args.split(',').next().unwrap();
        assert!(
            families.split_whitespace().any(|f| f == family),
            "RestrictAddressFamilies={families} would refuse socket({args}"
        );
    }
    assert_eq!(unit.get("RestrictNamespaces"), "net");
    let setns: Vec<&&str> = calls
        .iter()
        .filter(|(n, _)| *n == "setns")
        .map(|(_, a)| a)
        .collect();
    assert!(
        !setns.is_empty(),
        "the snapshot entered the test's namespace"
    );
    assert!(
        setns.iter().all(|a| a.contains("CLONE_NEWNET")),
        "{setns:?}"
    );
}

#[test]
fn the_systemd_unit_keeps_the_previous_recording() {
    if !privileged("the_systemd_unit_keeps_the_previous_recording") {
        return;
    }
    let unit = Unit::read();
    let pre = unit.get("ExecStartPre");
    let script = pre
        .strip_prefix("/bin/sh -c '")
        .and_then(|s| s.strip_suffix('\''))
        .unwrap_or_else(|| panic!("ExecStartPre is /bin/sh -c '...': {pre}"));
    // systemd would expand these itself.
    assert!(!script.contains(['$', '%', '\'']), "{script}");
    let copy = Binary::new(None);
    let state = copy.owned_dir("state");
    let script = script.replace("/var/lib/tracer", &state.to_string_lossy());
    let run = || {
        let status = as_nobody(Path::new("/bin/sh"))
            .args(["-c", &script])
            .status()
            .expect("run /bin/sh");
        assert!(status.success(), "ExecStartPre failed: {script}");
    };
    // The first start has nothing to keep.
    run();
    assert!(state.join("previous").is_dir());
    let write = |name: &str, text: &str| {
        as_nobody(Path::new("/bin/sh"))
            .args([
                "-c",
                &format!("echo {text} > {}", state.join(name).display()),
            ])
            .status()
            .expect("write as nobody");
    };
    write("tracer.rec", "run 1");
    write("tracer.rec.1", "run 1, older");
    run();
    let read = |p: &str| fs::read_to_string(state.join(p)).unwrap_or_default();
    assert_eq!(read("previous/tracer.rec"), "run 1\n");
    assert_eq!(read("previous/tracer.rec.1"), "run 1, older\n");
    assert!(!state.join("tracer.rec").exists());
    // The next start replaces it: one previous run is kept, not all.
    write("tracer.rec", "run 2");
    run();
    assert_eq!(read("previous/tracer.rec"), "run 2\n");
    assert!(!state.join("previous/tracer.rec.1").exists());
}
