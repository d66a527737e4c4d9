//! Cost of finding which processes hold sockets, on this host as it is: the first lookup
//! reads every process's descriptors, later ones re-read only the processes whose
//! descriptor count changed and check each holder with one `readlink`. Run with
//! `cargo bench -p tracer --bench owners` (as root to see every process), with as many
//! idle sockets open on the host as you want to measure against.

use std::{
    collections::HashSet,
    net::{TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    time::Instant,
};

use tracer::attribute::{
    fd_index::{FdIndex, Fds},
    procfs::ProcFs,
};

/// Loopback connections this process opens and looks up: 2,000 sockets, a leak's worth.
const CONNECTIONS: usize = 1000;

fn inode(fd: &impl AsRawFd) -> u64 {
    std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .expect("own fd")
        .ino()
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm's resident pages");
    pages * 4096
}

/// Runs one lookup and prints what it cost.
fn lookup(what: &str, index: &mut FdIndex, proc: &ProcFs, inodes: &HashSet<u64>) {
    let start = Instant::now();
    let found: usize = index
        .holders(proc, inodes)
        .iter()
        .map(|h| h.fds.len())
        .sum();
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let cost = index.last_cost();
    println!(
        "owners: {what}: {ms:.1} ms, {found} of {} sockets found; {} processes read ({} fds), {} holders checked{}",
        inodes.len(),
        cost.processes_read,
        cost.fds_read,
        cost.checked,
        if cost.full_scan { ", then every process" } else { "" }
    );
}

fn main() {
    let proc = ProcFs::default();
    let pids = proc.pids();
    let fds: usize = pids.iter().filter_map(|&p| proc.count(p)).sum();
    println!(
        "owners: host has {} processes, {fds} descriptors",
        pids.len()
    );

    let start = Instant::now();
    for &p in &pids {
        proc.count(p);
    }
    println!(
        "owners: counting every process's descriptors: {:.2} ms",
        start.elapsed().as_secs_f64() * 1e3
    );

    let mut index = FdIndex::default();
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let first: HashSet<u64> = [inode(&listener)].into();
    let before = rss();
    lookup("first lookup (reads all)", &mut index, &proc, &first);
    println!(
        "owners: the index takes {:.1} MiB of RSS",
        (rss() - before) as f64 / f64::from(1 << 20)
    );

    let addr = listener.local_addr().expect("address");
    let mut kept = Vec::new();
    for _ in 0..CONNECTIONS {
        let client = TcpStream::connect(addr).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        kept.push((client, server));
    }
    let leaked: HashSet<u64> = kept
        .iter()
        .flat_map(|(c, s)| [inode(c), inode(s)])
        .collect();
    lookup("new sockets in one process", &mut index, &proc, &leaked);
    lookup(
        "the same again, nothing changed",
        &mut index,
        &proc,
        &leaked,
    );
    lookup(
        "from scratch, as before the index",
        &mut FdIndex::default(),
        &proc,
        &leaked,
    );
}
