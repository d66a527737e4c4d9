//! Harness for the privileged integration tests: runs the real `tracer` binary, which loads
//! the real probe, reads its JSON Lines, and waits on conditions with deadlines.
//!
//! Tests panic with context rather than return errors. Without root they print why they
//! are skipped and pass, except under CI (`CI` set), where skipping is a failure.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// How long any single condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// True when this process may load BPF programs. Otherwise prints why the calling test is
/// skipped and returns false, or panics under CI, where the tests must run.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
    assert!(
        !in_ci,
        "{test}: CI must run the privileged tests, but this is not root"
    );
    eprintln!("SKIPPED {test}: loading the BPF probe needs root (run `sudo cargo xtask test`)");
    false
}

/// Whether the tests run on an emulated CPU (the QEMU guests of `cargo xtask test --kernel`
/// set `TRACER_TEST_EMULATED_CPU=1`), tens of times slower than a real one: bounds on
/// latency that hold on a real CPU are not meant for it.
pub fn emulated_cpu() -> bool {
    std::env::var_os("TRACER_TEST_EMULATED_CPU").is_some_and(|v| v == "1")
}

/// Lets this process (and what it starts) open `n` descriptors: root raises the hard limit
/// too where it may (a kernel's default is 4,096); where it may not, the hard limit is
/// what there is.
pub fn allow_fds(n: u64) {
    let wanted = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: setrlimit reads one rlimit we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
        return;
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct passed; setrlimit reads it.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max.min(n);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

/// The running kernel's version as (major, minor), e.g. (6, 12), for the tests whose
/// expectations differ by kernel.
pub fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("read /proc/sys/kernel/osrelease");
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse().unwrap_or(0));
    match (numbers.next(), numbers.next()) {
        (Some(major), Some(minor)) => (major, minor),
        _ => panic!("kernel release {release:?} does not start with MAJOR.MINOR"),
    }
}

/// The tracer binary under test: `$TRACER_BIN`, else the workspace's release build.
pub fn tracer_bin() -> PathBuf {
    let path = std::env::var_os("TRACER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/tracer")
        });
    assert!(
        path.is_file(),
        "no tracer binary at {}; run `cargo xtask test` or `cargo xtask build`",
        path.display()
    );
    path
}

/// Starts `tracer ARGS` with stdout and stderr piped to the test.
pub fn spawn_tracer(args: &[&str]) -> Child {
    spawn_tracer_with_env(args, &[])
}

/// Like [`spawn_tracer`], with extra environment variables.
pub fn spawn_tracer_with_env(args: &[&str], env: &[(&str, &str)]) -> Child {
    Command::new(tracer_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tracer")
}

/// Waits for a child from [`spawn_tracer`] to exit; returns its status and stderr (small
/// enough never to fill the pipe: status lines only).
pub fn finish(child: &mut Child) -> (ExitStatus, String) {
    let status = wait_exit(child);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr piped")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    (status, stderr)
}

/// A running `tracer watch --format json`.
pub struct Tracer {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: thread::JoinHandle<String>,
    /// Every record read so far, in order.
    pub records: Vec<Value>,
}

impl Tracer {
    /// Starts `tracer watch --format json ARGS` and waits for its start record.
    pub fn start(args: &[&str]) -> Tracer {
        Tracer::start_with_env(args, &[])
    }

    /// Like [`Tracer::start`], with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Tracer {
        let mut command = Command::new(tracer_bin());
        command
            .args(["watch", "--format", "json"])
            .args(args)
            .envs(env.iter().copied());
        Tracer::spawn(command)
    }

    /// Runs `command`, a `tracer watch --format json` however started (another binary,
    /// another user: it must exec the tracer, keeping its pid), and waits for its start
    /// record.
    pub fn spawn(command: Command) -> Tracer {
        Tracer::spawn_within(command, DEADLINE)
    }

    /// Like [`Tracer::spawn`], waiting up to `start_within` for the start record: for a
    /// tracer slowed down on purpose (under strace, on an emulated CPU).
    pub fn spawn_within(mut command: Command, start_within: Duration) -> Tracer {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tracer");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().expect("stderr");
        let stderr = thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut tracer = Tracer {
            child,
            lines,
            stderr,
            records: Vec::new(),
        };
        let start = tracer.wait_for_within("the start record", start_within, |r| {
            r.iter().any(|r| r["type"] == "start")
        });
        assert_eq!(
            start[0]["type"], "start",
            "the first record must be the start record: {start:?}"
        );
        tracer
    }

    /// Reads records until `done(all records so far)` holds; panics at the deadline with
    /// what was seen. Returns all records so far.
    pub fn wait_for(&mut self, what: &str, done: impl Fn(&[Value]) -> bool) -> &[Value] {
        self.wait_for_within(what, DEADLINE, done)
    }

    /// Like [`Tracer::wait_for`], with a deadline of `within`.
    pub fn wait_for_within(
        &mut self,
        what: &str,
        within: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> &[Value] {
        let deadline = Instant::now() + within;
        while !done(&self.records) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.records.push(parse(&line)),
                Err(_) => panic!(
                    "waited {within:?} for {what}; tracer status {:?}; records: {:#?}",
                    self.child.try_wait(),
                    self.records
                ),
            }
        }
        &self.records
    }

    /// The tracer's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the tracer.
    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Sends `signal`, waits for the exit, and returns the status and the stderr text; all
    /// remaining records are appended to `records`.
    pub fn stop_with(&mut self, signal: i32) -> (ExitStatus, String) {
        self.signal(signal);
        self.wait_for("the stop record", |r| {
            r.last().is_some_and(|r| r["type"] == "stop")
        });
        let status = wait_exit(&mut self.child);
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.records.push(parse(&line));
        }
        let stderr = std::mem::replace(&mut self.stderr, thread::spawn(String::new))
            .join()
            .expect("stderr reader");
        (status, stderr)
    }

    /// SIGKILL, as a crash would end it; returns the exit status.
    pub fn kill(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        wait_exit(&mut self.child)
    }

    /// SIGINT, then checks a clean exit and the stop record; returns the records.
    pub fn stop(mut self) -> Vec<Value> {
        let (status, stderr) = self.stop_with(libc::SIGINT);
        assert!(
            status.success(),
            "tracer exited with {status}; stderr: {stderr}"
        );
        let stop = self.records.last().expect("records");
        assert_eq!(stop["type"], "stop");
        assert_eq!(
            stop["lost"], 0,
            "no event may be lost in a test this small: {stop}"
        );
        assert_eq!(stop["undecodable"], 0);
        // With --pid, only that process's sockets' transitions are printed.
        if self.records[0]["mode"] != "events" || !self.records[0]["filters"]["pid"].is_null() {
            return std::mem::take(&mut self.records);
        }
        let transitions = self
            .records
            .iter()
            .filter(|r| r["type"] == "transition")
            .count() as u64;
        assert_eq!(
            stop["events"].as_u64(),
            Some(transitions),
            "stop record counts every transition printed"
        );
        std::mem::take(&mut self.records)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        // A failed test must not leave a probe attached.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `child` to exit, panicking at the deadline.
pub fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("wait for tracer") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "tracer did not exit within {DEADLINE:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("tracer printed a line that is not JSON ({e}): {line}"))
}

/// A socket bound to a free port on `ip` but not yet listening, so that a tracer started
/// afterwards sees its CLOSE -> LISTEN.
pub fn bound_socket(ip: IpAddr) -> (socket2::Socket, u16) {
    let domain = if ip.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None).expect("socket");
    if ip.is_ipv6() {
        socket.set_only_v6(true).expect("IPV6_V6ONLY");
    }
    socket
        .bind(&SocketAddr::new(ip, 0).into())
        .expect("bind loopback");
    let port = socket
        .local_addr()
        .expect("local addr")
        .as_socket()
        .expect("inet")
        .port();
    (socket, port)
}

/// Starts listening on a socket from [`bound_socket`].
pub fn listen(socket: socket2::Socket) -> TcpListener {
    socket.listen(16).expect("listen");
    socket.into()
}

/// One transition record, reduced to what the tests compare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub sk: String,
    pub old: String,
    pub new: String,
    pub saddr: String,
    pub sport: u64,
    pub daddr: String,
    pub dport: u64,
    pub pid: u64,
}

/// The transition records among `records`.
pub fn transitions(records: &[Value]) -> Vec<Seen> {
    records
        .iter()
        .filter(|r| r["type"] == "transition")
        .map(|r| Seen {
            sk: r["sk"].as_str().expect("sk").to_owned(),
            old: r["old"].as_str().expect("old").to_owned(),
            new: r["new"].as_str().expect("new").to_owned(),
            saddr: r["saddr"].as_str().expect("saddr").to_owned(),
            sport: r["sport"].as_u64().expect("sport"),
            daddr: r["daddr"].as_str().expect("daddr").to_owned(),
            dport: r["dport"].as_u64().expect("dport"),
            pid: r["pid"].as_u64().expect("pid"),
        })
        .collect()
}

/// The transitions of one socket, as `OLD->NEW` strings in order.
pub fn life(seen: &[Seen], sk: &str) -> Vec<String> {
    seen.iter()
        .filter(|s| s.sk == sk)
        .map(|s| format!("{}->{}", s.old, s.new))
        .collect()
}

/// The socket of the first transition matching `pred`.
pub fn socket_of(seen: &[Seen], what: &str, pred: impl Fn(&Seen) -> bool) -> String {
    seen.iter()
        .find(|s| pred(s))
        .unwrap_or_else(|| panic!("no transition for {what} in {seen:#?}"))
        .sk
        .clone()
}

/// A connection to `listener` that the client closes and the server reads to the end of
/// stream; both ends are closed on return.
pub fn closed_session(listener: &TcpListener) {
    let addr = listener.local_addr().expect("listener address");
    let client = TcpStream::connect(addr).expect("connect");
    let (mut server, _) = listener.accept().expect("accept");
    drop(client);
    assert_eq!(server.read(&mut [0u8; 1]).expect("read EOF"), 0);
}

/// A client that connects, reads the greeting, and closes. The server then reads the end
/// of stream when `read_eof`, else only peeks at it.
pub fn client_session(
    ip: IpAddr,
    port: u16,
    listener: &TcpListener,
    read_eof: bool,
) -> (TcpStream, u16) {
    let mut client = TcpStream::connect((ip, port)).expect("connect");
    let client_port = client.local_addr().expect("client addr").port();
    let (mut server, _) = listener.accept().expect("accept");
    server.write_all(b"hi").expect("greet");
    let mut buf = [0u8; 2];
    client.read_exact(&mut buf).expect("read greeting");
    drop(client);
    // Reaching EOF proves the FIN arrived: the server side is in CLOSE_WAIT now.
    if read_eof {
        assert_eq!(server.read(&mut buf).expect("read EOF"), 0);
    } else {
        assert_eq!(server.peek(&mut buf).expect("peek EOF"), 0);
    }
    (server, client_port)
}

/// `count` leaked server sockets (CLOSE_WAIT, still open here) and their client ports.
/// The server read the end of stream on the first and only peeked at it on the others.
pub fn leak(ip: IpAddr, port: u16, listener: &TcpListener, count: usize) -> Vec<(TcpStream, u16)> {
    (0..count)
        .map(|i| client_session(ip, port, listener, i == 0))
        .collect()
}

/// A `leaky` server (`tests/src/bin/leaky.rs`) in a process of its own: it accepts every
/// connection, reads it to the end of stream and never closes it. Killed when dropped.
pub struct Leaky {
    pub child: Child,
    /// Its pid as the host sees it (not the child's when a wrapper forks it).
    pub pid: u32,
    /// The port it listens on.
    pub port: u16,
    /// The connections it made to itself and leaked, when asked to.
    pub leaks: Vec<LeakedSocket>,
}

/// A connection `leaky` made to itself and keeps in CLOSE_WAIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeakedSocket {
    /// The client's port: the leaked socket's remote port.
    pub client_port: u16,
    /// The leaked socket's descriptor in `leaky`.
    pub fd: i32,
}

impl Leaky {
    /// Starts one listening on a free port of `ip`, and waits until it listens.
    pub fn spawn(ip: IpAddr) -> Leaky {
        Leaky::spawn_in(&[], ip, 0, 0)
    }

    /// Starts one through `wrapper` (a command that runs the rest of its arguments, such
    /// as `ip netns exec NAME`), listening on `ip` port `port` (0: any), that then leaks
    /// `clients` connections to itself; returns once they are in CLOSE_WAIT.
    pub fn spawn_in(wrapper: &[String], ip: IpAddr, port: u16, clients: usize) -> Leaky {
        let args = [ip.to_string(), port.to_string(), clients.to_string()];
        Leaky::start(wrapper, &args, clients)
    }

    /// Starts one through `wrapper` that leaks one connection to itself,
    /// `127.0.0.1:port <- 127.0.0.1:client_port`: the same 4-tuple in every namespace.
    pub fn spawn_pair_in(wrapper: &[String], port: u16, client_port: u16) -> Leaky {
        let args = [
            "127.0.0.1".to_owned(),
            port.to_string(),
            "1".to_owned(),
            client_port.to_string(),
        ];
        Leaky::start(wrapper, &args, 1)
    }

    fn start(wrapper: &[String], args: &[String], clients: usize) -> Leaky {
        let leaky = leaky_bin();
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&leaky);
                c
            }
            None => Command::new(&leaky),
        };
        let mut child = command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start leaky through {wrapper:?}: {e}"));
        let mut lines = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
        let mut line = || lines.next().and_then(Result::ok).unwrap_or_default();
        let first = line();
        let Some(port) = first.strip_prefix("ready ").and_then(|p| p.parse().ok()) else {
            let _ = child.kill();
            panic!("leaky did not say `ready <port>` but {first:?} (its stderr is above)");
        };
        let leaks = (0..clients)
            .map(|_| {
                let l = line();
                let mut words = l.split(' ');
                match (words.next(), words.next(), words.next()) {
                    (Some("leak"), Some(p), Some(fd)) => LeakedSocket {
                        client_port: p.parse().expect("client port"),
                        fd: fd.parse().expect("fd"),
                    },
                    _ => panic!("leaky said {l:?}, not `leak <port> <fd>`"),
                }
            })
            .collect();
        if clients > 0 {
            assert_eq!(line(), "leaked");
        }
        let pid = leaky_pid(child.id());
        Leaky {
            child,
            pid,
            port,
            leaks,
        }
    }

    /// Its network namespace (inode), as the tracer reports it.
    pub fn netns(&self) -> u64 {
        netns_inode(&format!("/proc/{}/ns/net", self.pid))
    }

    /// A wrapper that runs `leaky` in a new anonymous network namespace (no bind mount
    /// names it) with its loopback up.
    pub fn anonymous_netns() -> Vec<String> {
        [
            "unshare",
            "--net",
            "sh",
            "-c",
            "ip link set lo up && exec \"$0\" \"$@\"",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// A wrapper that runs `leaky` in new pid and mount namespaces, as pid 1 there.
    pub fn own_pid_namespace() -> Vec<String> {
        ["unshare", "-m", "-p", "-f", "--mount-proc"]
            .map(str::to_owned)
            .to_vec()
    }
}

/// The host pid of `leaky` started as `pid` or under it (a wrapper may fork it).
fn leaky_pid(pid: u32) -> u32 {
    let mut pid = pid;
    for _ in 0..4 {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end() == "leaky" {
            return pid;
        }
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        match children
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
        {
            Some(child) => pid = child,
            None => break,
        }
    }
    panic!("no leaky process at or under pid {pid}");
}

impl Drop for Leaky {
    fn drop(&mut self) {
        // Its end of stdin closing ends leaky, also where a wrapper forked it.
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The inode of the namespace file at `path`: the namespace's number.
pub fn netns_inode(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {path}: {e}"))
        .ino()
}

/// A network namespace made with `ip netns add` (bind-mounted at `/run/netns/NAME`), its
/// loopback up; deleted when dropped.
pub struct NamedNetns {
    pub name: String,
}

impl NamedNetns {
    /// A new namespace named after `tag` and this process.
    pub fn new(tag: &str) -> NamedNetns {
        let name = format!("tracer-{tag}-{}", std::process::id());
        // Left over by a killed run of the same pid: start afresh.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let ns = NamedNetns { name };
        for args in [
            vec!["netns", "add", &ns.name],
            vec!["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"],
        ] {
            let status = Command::new("ip").args(&args).status().expect("run ip");
            assert!(status.success(), "ip {args:?} failed");
        }
        ns
    }

    /// The wrapper that runs a command inside it.
    pub fn exec(&self) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.name.clone(),
        ]
    }

    /// Its bind mount.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Its inode.
    pub fn inode(&self) -> u64 {
        netns_inode(&self.path())
    }

    /// The inode of this process's own namespace.
    pub fn own() -> u64 {
        netns_inode("/proc/self/ns/net")
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Nanoseconds since the epoch of a time as the tracer's JSON writes it, RFC 3339 in UTC
/// (`2026-11-26T17:36:27.497796406Z`).
pub fn epoch_ns(time: &str) -> u64 {
    let parsed = (|| {
        let (date, clock) = time.strip_suffix('Z')?.split_once('T')?;
        let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
        let (y, m, day) = (d.next()??, d.next()??, d.next()??);
        let (hms, frac) = clock.split_once('.').unwrap_or((clock, "0"));
        let mut t = hms.split(':').map(|p| p.parse::<u64>().ok());
        let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
        let nanos: u64 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
        // Days from the civil date (Howard Hinnant's algorithm).
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
        let days =
            u64::try_from(era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468).ok()?;
        Some(((days * 86_400 + h * 3600 + min * 60 + sec) * 1_000_000_000) + nanos)
    })();
    parsed.unwrap_or_else(|| panic!("not an RFC 3339 UTC time: {time:?}"))
}

/// Runs `tracer ARGS` to its end and returns its JSON Lines (for `tracer report`).
pub fn run_tracer(args: &[&str]) -> Vec<Value> {
    let out = Command::new(tracer_bin())
        .args(args)
        .output()
        .expect("run tracer");
    assert!(
        out.status.success(),
        "tracer {args:?} exited with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8 output")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Idle loopback connections held by a process of their own (`tests/src/bin/idle.rs`),
/// two ESTABLISHED sockets each. Killed when dropped.
pub struct Idle {
    child: Child,
}

impl Idle {
    /// At least `sockets` idle sockets, in as few processes as this process's hard
    /// descriptor limit (which they inherit) allows; returns once all are open.
    pub fn hold(sockets: usize) -> Vec<Idle> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes only the struct passed.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        // A few descriptors for the process itself beside its sockets.
        let per_process = (limit.rlim_max.saturating_sub(64) / 2).max(1) as usize;
        let mut left = sockets.div_ceil(2);
        let mut started = Vec::new();
        while left > 0 {
            let n = left.min(per_process);
            started.push(Idle::spawn(n));
            left -= n;
        }
        started
    }

    /// Starts one holding `connections` connections, and waits until they are open.
    pub fn spawn(connections: usize) -> Idle {
        let mut child = Command::new(helper_bin("idle"))
            .arg(connections.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start idle");
        let mut first = String::new();
        let _ = BufReader::new(child.stdout.take().expect("stdout piped")).read_line(&mut first);
        if first.trim() != "ready" {
            let _ = child.kill();
            panic!("idle did not say `ready` but {first:?} (its stderr is above)");
        }
        Idle { child }
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `leaky` binary: cargo builds it beside the test executables' `deps` directory
/// (what `CARGO_BIN_EXE_leaky` names, which only the test crates get), also when they are
/// run without cargo, as `cargo xtask test` and its guests do.
fn leaky_bin() -> PathBuf {
    helper_bin("leaky")
}

/// A binary of this crate, `name`, found as [`leaky_bin`] says.
fn helper_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe.parent().expect("the test executable's directory");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("the target directory")
    } else {
        dir
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "no {name} binary at {}; `cargo test -p integration-tests` builds it",
        path.display()
    );
    path
}

/// Whether the running kernel lays `sock:inet_sock_set_state` records out as
/// [`tracer_common::KNOWN_LAYOUT`], the layout the probe reads straight from the context;
/// read from tracefs by a parser of the tests' own, not the tracer's. Call it while a
/// tracer runs: that mounts tracefs if the machine had not.
pub fn kernel_has_known_layout() -> bool {
    let format = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|t| {
            std::fs::read_to_string(format!("{t}/events/sock/inet_sock_set_state/format")).ok()
        })
        .expect("the inet_sock_set_state format file in tracefs");
    // `field:const void * skaddr;	offset:8;	size:8;	signed:0;` -> (skaddr, 8, 8)
    let fields: Vec<(String, u16, u16)> = format
        .lines()
        .filter_map(|l| l.trim().strip_prefix("field:"))
        .map(|l| {
            let parts: Vec<&str> = l.split(';').map(str::trim).collect();
            let name = parts[0].rsplit([' ', '*']).next().unwrap();
            let number = |key: &str| {
                parts
                    .iter()
                    .find_map(|p| p.strip_prefix(key))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no {key} in {l}"))
            };
            let name = name.split('[').next().unwrap().to_owned();
            (name, number("offset:"), number("size:"))
        })
        .collect();
    let field = |name: &str| {
        fields
            .iter()
            .find(|f| f.0 == name)
            .map(|f| (f.1, f.2))
            .unwrap_or_else(|| panic!("no field {name} in {format}"))
    };
    let l = tracer_common::KNOWN_LAYOUT;
    let known = [
        ("skaddr", l.skaddr),
        ("oldstate", l.oldstate),
        ("newstate", l.newstate),
        ("sport", l.sport),
        ("dport", l.dport),
        ("family", l.family),
        ("protocol", l.protocol),
        ("saddr", l.saddr),
        ("daddr", l.daddr),
        ("saddr_v6", l.saddr_v6),
        ("daddr_v6", l.daddr_v6),
    ];
    let record_len = known
        .iter()
        .map(|(name, _)| field(name).0 + field(name).1)
        .max();
    known.iter().all(|&(name, offset)| field(name).0 == offset) && record_len == Some(l.record_len)
}

/// The body of `GET http://127.0.0.1:port{path}` and its status code.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the response");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    // tiny_http sends small bodies whole; a chunked one is decoded here.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (code, body)
}

/// The body of a chunked HTTP response, whole.
pub fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// The samples of `name` in an exposition `text`: (labels, value).
pub fn metric_samples<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let labels = series.strip_prefix(name)?;
            if !labels.is_empty() && !labels.starts_with('{') {
                return None;
            }
            Some((labels, value.parse().ok()?))
        })
        .collect()
}
