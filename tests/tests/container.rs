//! Owners in containers: a leaking server in a cgroup laid out as docker's (systemd
//! driver) is named with its container, and `--container` and `--cgroup` show its stuck
//! sockets and not those of this test process beside it.

use std::{
    fs,
    hash::BuildHasher,
    net::{IpAddr, Ipv4Addr, TcpStream},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use integration_tests::{bound_socket, leak, listen, privileged, Leaky, Tracer};
use serde_json::{json, Value};

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Where cgroup v2 is mounted with its root visible: `/sys/fs/cgroup` on a unified host,
/// often `/sys/fs/cgroup/unified` on a hybrid one.
fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    mounts.lines().find_map(|l| {
        // `36 25 0:31 / /sys/fs/cgroup rw,... shared:9 - cgroup2 cgroup2 rw,...`
        let (left, right) = l.split_once(" - ")?;
        let fields: Vec<&str> = left.split(' ').collect();
        let (root, mount_point) = (fields.get(3)?, fields.get(4)?);
        (right.starts_with("cgroup2 ") && *root == "/").then(|| PathBuf::from(mount_point))
    })
}

/// Where cgroup v2 is mounted; otherwise says why the test is skipped, or fails under CI,
/// whose guests mount it.
fn have_cgroup2(test: &str) -> Option<PathBuf> {
    let mount = cgroup2_mount();
    if mount.is_none() {
        let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
        assert!(
            !in_ci,
            "{test}: CI must run this, but cgroup v2 is not mounted"
        );
        eprintln!("SKIPPED {test}: no cgroup v2 mounted at its root");
    }
    mount
}

/// A cgroup as docker's systemd driver makes one, `/system.slice/docker-<id>.scope`, with
/// a random id. Dropped, it moves what is left in it to the root and removes what it made.
struct DockerCgroup {
    root: PathBuf,
    /// `/system.slice`, when it did not exist before.
    made_slice: Option<PathBuf>,
    dir: PathBuf,
    id: String,
}

impl DockerCgroup {
    fn create(root: &Path) -> DockerCgroup {
        let random = std::collections::hash_map::RandomState::new();
        let id: String = (0..4u8)
            .map(|i| format!("{:016x}", random.hash_one(i)))
            .collect();
        let slice = root.join("system.slice");
        let made_slice = (!slice.exists()).then(|| {
            fs::create_dir(&slice).expect("create system.slice");
            slice.clone()
        });
        let dir = slice.join(format!("docker-{id}.scope"));
        let cgroup = DockerCgroup {
            root: root.to_owned(),
            made_slice,
            dir,
            id,
        };
        fs::create_dir(&cgroup.dir).expect("create the container's cgroup");
        cgroup
    }

    /// The path `/proc/PID/cgroup` gives for it.
    fn path(&self) -> String {
        format!("/system.slice/docker-{}.scope", self.id)
    }

    /// Moves process `pid` in.
    fn enter(&self, pid: u32) {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .expect("move the server into the container's cgroup");
        let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read its cgroup");
        assert!(
            cgroup.lines().any(|l| l == format!("0::{}", self.path())),
            "the server is not in the container's cgroup: {cgroup}"
        );
    }
}

impl Drop for DockerCgroup {
    fn drop(&mut self) {
        let procs = self.dir.join("cgroup.procs");
        let root = self.root.join("cgroup.procs");
        // A cgroup with processes cannot be removed, and one just killed may linger.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            for pid in fs::read_to_string(&procs).unwrap_or_default().lines() {
                let _ = fs::write(&root, pid);
            }
            let removed = fs::remove_dir(&self.dir);
            let gone =
                removed.is_ok() || removed.is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
            if gone || Instant::now() > deadline {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        if let Some(slice) = &self.made_slice {
            let _ = fs::remove_dir(slice);
        }
    }
}

fn records_of<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["type"] == kind).collect()
}

/// One socket leaked by a server in a docker-shaped cgroup and one by this process, under
/// a tracer given `select(&cgroup)`; returns the cgroup made and all records. Exactly the
/// first is shown when `shown`, neither otherwise, and both are flagged.
fn leaks_in_and_out_of_a_container(
    test: &str,
    select: impl Fn(&DockerCgroup) -> Vec<String>,
    shown: bool,
) -> Option<(String, Vec<Value>)> {
    if !privileged(test) {
        return None;
    }
    let root = have_cgroup2(test)?;
    let cgroup = DockerCgroup::create(&root);
    let server = Leaky::spawn(V4);
    cgroup.enter(server.pid);
    let (socket, port) = bound_socket(V4);
    let listener = listen(socket);

    let (server_port, port) = (server.port.to_string(), port.to_string());
    let mut args = vec![
        "--close-wait",
        "1s",
        "--port",
        &server_port,
        "--port",
        &port,
    ];
    let select = select(&cgroup);
    args.extend(select.iter().map(String::as_str));
    let mut tracer = Tracer::start(&args);
    // The client closes; the server reads the end of stream and keeps its socket.
    drop(TcpStream::connect((V4, server.port)).expect("connect to the server"));
    let mine = leak(V4, listener.local_addr().unwrap().port(), &listener, 1);
    if shown {
        tracer.wait_for("the server's stuck socket", |r| {
            !records_of(r, "stuck").is_empty()
        });
    }
    // Both are flagged a second after the leak; wait past that before stopping.
    thread::sleep(Duration::from_millis(2500));
    let records = tracer.stop();
    let stop = records.last().unwrap();
    assert_eq!(stop["flagged"], 2, "both leaks are flagged: {stop}");
    let stuck = records_of(&records, "stuck");
    let want: &[u64] = if shown { &[server.port as u64] } else { &[] };
    let shown_ports: Vec<u64> = stuck.iter().map(|r| r["sport"].as_u64().unwrap()).collect();
    assert_eq!(shown_ports, want, "{stuck:#?}");
    drop((mine, listener, server));
    Some((cgroup.id.clone(), records))
}

/// Checks the stuck record and the final summary of the server's leak in container `id`.
fn assert_named_with_its_container(id: &str, records: &[Value]) {
    let container = json!({"id": id, "runtime": "docker", "pod_uid": null});
    let r = records_of(records, "stuck")[0];
    assert_eq!(r["owner"]["comm"], "leaky", "{r}");
    assert_eq!(
        r["owner"]["cgroup"],
        format!("/system.slice/docker-{id}.scope"),
        "{r}"
    );
    assert_eq!(r["owner"]["container"], container, "{r}");
    let summary = records_of(records, "summary").pop().unwrap();
    let groups = summary["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "the server's leak alone: {summary}");
    assert_eq!(groups[0]["container"], container, "{summary}");
}

#[test]
fn container_prefix_selects_the_containers_leak() {
    let test = "container_prefix_selects_the_containers_leak";
    let select = |c: &DockerCgroup| vec!["--container".into(), c.id[..12].to_owned()];
    if let Some((id, records)) = leaks_in_and_out_of_a_container(test, select, true) {
        assert_named_with_its_container(&id, &records);
    }
}

#[test]
fn cgroup_prefix_selects_the_containers_leak() {
    let test = "cgroup_prefix_selects_the_containers_leak";
    let select = |c: &DockerCgroup| {
        let path = c.path();
        vec!["--cgroup".into(), path[..path.len() - 20].to_owned()]
    };
    if let Some((id, records)) = leaks_in_and_out_of_a_container(test, select, true) {
        assert_named_with_its_container(&id, &records);
    }
}

#[test]
fn another_container_selects_nothing() {
    let test = "another_container_selects_nothing";
    let select = |_: &DockerCgroup| vec!["--container".into(), "deadbeef".into()];
    leaks_in_and_out_of_a_container(test, select, false);
}
