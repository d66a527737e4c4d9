//! Which processes hold which sockets: an index from socket inode to `(pid, fd)`, kept
//! between attributions and refreshed incrementally.
//!
//! Reading a process's descriptors costs microseconds per descriptor (proc builds an
//! entry for each, then one `readlink`): a host with 200,000 sockets takes 0.5-2 s to read
//! whole, and reading it whole for every batch of flags made the cost of each batch grow
//! with every fd on the host. So each lookup first asks every process only how many
//! descriptors it has (one `stat` of `/proc/PID/fd`, whose size is that count since Linux
//! 6.2) and re-reads just the processes that are new or whose count changed. The holders
//! the index then has for each inode asked about are checked with one `readlink` each; a
//! process whose checked descriptor no longer refers to its socket is re-read. Only an
//! inode still held by nobody (a process closed one descriptor and opened another since it
//! was read, which leaves its count alone) makes the lookup read every process it did not
//! read this time, as it did before the index.
//!
//! What it can miss: an extra holder of a socket that another process was found holding,
//! when that extra holder received it (fd passing) and closed as many descriptors since
//! it was last read. Without the count (kernels before 6.2) every process is re-read on
//! every lookup.

use std::collections::{HashMap, HashSet};

use super::procfs::Holding;

/// Where the index reads descriptors: [`super::procfs::ProcFs`] on a host, fakes in tests.
pub trait Fds {
    /// Every process now, by pid.
    fn pids(&self) -> Vec<u32>;
    /// How many descriptors process `pid` has open, when that is known without reading
    /// them.
    fn count(&self, pid: u32) -> Option<usize>;
    /// The socket descriptors of process `pid` as `(inode, fd)`, and how many descriptors
    /// it has; `None` when it has gone or cannot be read.
    fn read(&self, pid: u32) -> Option<(Vec<(u64, i32)>, usize)>;
    /// The inode of the socket descriptor `fd` of process `pid` refers to now.
    fn socket_at(&self, pid: u32, fd: i32) -> Option<u64>;
}

/// What the index knows of one process.
#[derive(Debug)]
struct Process {
    /// Its descriptor count when last asked (`None`: not known without reading).
    count: Option<usize>,
    /// Its descriptor count when last read: as asked just before reading when known (the
    /// reader's own count includes the directory it reads through, and a change after
    /// the asking shows at the next lookup), else as read.
    read_count: usize,
    /// Its socket descriptors when last read, as `(inode, fd)`.
    sockets: Vec<(u64, i32)>,
}

/// The holders of one inode: nearly always one descriptor of one process, so that one
/// takes no allocation of its own.
#[derive(Debug)]
enum Holders {
    One((u32, i32)),
    Many(Vec<(u32, i32)>),
}

impl Holders {
    fn as_slice(&self) -> &[(u32, i32)] {
        match self {
            Holders::One(h) => std::slice::from_ref(h),
            Holders::Many(v) => v,
        }
    }
}

/// Counts of what one lookup read, for its cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LookupCost {
    /// Processes whose descriptors were read whole.
    pub processes_read: usize,
    /// Descriptors those had.
    pub fds_read: usize,
    /// Holders checked with one `readlink` each.
    pub checked: usize,
    /// Whether some inode was found nowhere it was looked for first, so every process was
    /// read.
    pub full_scan: bool,
}

/// The index, built by its first lookup.
#[derive(Debug, Default)]
pub struct FdIndex {
    processes: HashMap<u32, Process>,
    by_inode: HashMap<u64, Holders>,
    last: LookupCost,
}

/// One lookup's findings: `(pid, inode, fd)` of each holder, the processes whose indexed
/// descriptors no longer hold what they did, and whether an inode was found nowhere.
struct Found {
    hits: Vec<(u32, u64, i32)>,
    stale: Vec<u32>,
    missing: bool,
}

impl FdIndex {
    /// Every process holding a descriptor to one of `inodes`, in pid order, each with its
    /// descriptors to them in fd order.
    pub fn holders(&mut self, fds: &impl Fds, inodes: &HashSet<u64>) -> Vec<Holding> {
        self.last = LookupCost::default();
        let pids = fds.pids();
        let alive: HashSet<u32> = pids.iter().copied().collect();
        let gone: Vec<u32> = self
            .processes
            .keys()
            .filter(|p| !alive.contains(p))
            .copied()
            .collect();
        for pid in gone {
            self.forget(pid);
        }
        let mut read = HashSet::new();
        for &pid in &pids {
            let count = fds.count(pid);
            let changed = match (self.processes.get_mut(&pid), count) {
                (Some(p), Some(c)) => {
                    p.count = Some(c);
                    p.read_count != c
                }
                _ => true,
            };
            if changed {
                self.read(fds, pid, count);
                read.insert(pid);
            }
        }
        let mut found = self.look_up(fds, inodes, &read);
        if !found.stale.is_empty() {
            for pid in std::mem::take(&mut found.stale) {
                self.read_again(fds, pid, &mut read);
            }
            found = self.look_up(fds, inodes, &read);
        }
        if found.missing {
            self.last.full_scan = true;
            for &pid in &pids {
                self.read_again(fds, pid, &mut read);
            }
            found = self.look_up(fds, inodes, &read);
        }
        self.holdings(found.hits)
    }

    /// What the last lookup read.
    pub fn last_cost(&self) -> LookupCost {
        self.last
    }

    /// How many descriptors process `pid` had when last asked or read.
    fn fd_count(&self, pid: u32) -> usize {
        self.processes
            .get(&pid)
            .map_or(0, |p| p.count.unwrap_or(p.read_count))
    }

    /// The holders the index has for `inodes`: trusted for processes in `read` (read by
    /// this lookup), checked with one `readlink` for the others.
    fn look_up(&mut self, fds: &impl Fds, inodes: &HashSet<u64>, read: &HashSet<u32>) -> Found {
        let mut found = Found {
            hits: Vec::new(),
            stale: Vec::new(),
            missing: false,
        };
        for &inode in inodes {
            let before = found.hits.len();
            for &(pid, fd) in self.by_inode.get(&inode).map_or(&[][..], Holders::as_slice) {
                if !read.contains(&pid) {
                    self.last.checked += 1;
                    if fds.socket_at(pid, fd) != Some(inode) {
                        found.stale.push(pid);
                        continue;
                    }
                }
                found.hits.push((pid, inode, fd));
            }
            found.missing |= found.hits.len() == before;
        }
        found.stale.sort_unstable();
        found.stale.dedup();
        found
    }

    /// Reads process `pid` afresh unless this lookup already did (in `read`).
    fn read_again(&mut self, fds: &impl Fds, pid: u32, read: &mut HashSet<u32>) {
        if read.insert(pid) {
            let count = self.processes.get(&pid).and_then(|p| p.count);
            self.read(fds, pid, count);
        }
    }

    /// Reads process `pid` afresh (its count asked just before, if known).
    fn read(&mut self, fds: &impl Fds, pid: u32, count: Option<usize>) {
        self.forget(pid);
        let Some((sockets, read_count)) = fds.read(pid) else {
            // Gone, a kernel thread, or not ours to read: remembered as holding nothing,
            // and read again only once its count changes.
            if let Some(c) = count {
                self.processes.insert(
                    pid,
                    Process {
                        count,
                        read_count: c,
                        sockets: Vec::new(),
                    },
                );
            }
            return;
        };
        self.last.processes_read += 1;
        self.last.fds_read += read_count;
        for &(inode, fd) in &sockets {
            match self.by_inode.get_mut(&inode) {
                None => {
                    self.by_inode.insert(inode, Holders::One((pid, fd)));
                }
                Some(Holders::One(first)) => {
                    let first = *first;
                    self.by_inode
                        .insert(inode, Holders::Many(vec![first, (pid, fd)]));
                }
                Some(Holders::Many(v)) => v.push((pid, fd)),
            }
        }
        self.processes.insert(
            pid,
            Process {
                count,
                read_count: count.unwrap_or(read_count),
                sockets,
            },
        );
    }

    /// Drops what the index knows of process `pid`.
    fn forget(&mut self, pid: u32) {
        let Some(p) = self.processes.remove(&pid) else {
            return;
        };
        for (inode, fd) in p.sockets {
            let emptied = match self.by_inode.get_mut(&inode) {
                Some(Holders::One(..)) => true,
                Some(Holders::Many(v)) => {
                    v.retain(|&h| h != (pid, fd));
                    match v[..] {
                        [] => true,
                        [last] => {
                            self.by_inode.insert(inode, Holders::One(last));
                            false
                        }
                        _ => false,
                    }
                }
                None => false,
            };
            if emptied {
                self.by_inode.remove(&inode);
            }
        }
    }

    /// The hits grouped by process, in pid order, each process's fds in fd order.
    fn holdings(&self, mut hits: Vec<(u32, u64, i32)>) -> Vec<Holding> {
        hits.sort_unstable_by_key(|&(pid, _, fd)| (pid, fd));
        let mut out: Vec<Holding> = Vec::new();
        for (pid, inode, fd) in hits {
            match out.last_mut() {
                Some(h) if h.pid == pid => h.fds.push((inode, fd)),
                _ => out.push(Holding {
                    pid,
                    fds: vec![(inode, fd)],
                    fd_count: self.fd_count(pid),
                }),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
