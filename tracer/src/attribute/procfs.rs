//! Processes and their file descriptors, from `/proc` (or a tree laid out like it, for
//! tests). Processes come and go during a scan; one that vanishes is skipped, not an error.
//!
//! The per-process files (status, limits, cmdline, cgroup) are parsed by the `procfs`
//! crate. Reading a process's descriptors ([`Fds`], for the index of socket holders) is
//! one `readlink` per fd here: `procfs`'s `FDInfo` costs four system calls per fd.

use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
};

use procfs::process::{LimitValue, Process};

use super::fd_index::Fds;
use crate::model::ProcessInfo;

/// The descriptors that refer to sockets of interest in one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holding {
    pub pid: u32,
    /// `(socket inode, fd)` pairs, in fd order.
    pub fds: Vec<(u64, i32)>,
    /// How many descriptors the process has open.
    pub fd_count: usize,
}

/// A `/proc` tree.
#[derive(Clone, Debug)]
pub struct ProcFs {
    root: PathBuf,
    /// The size of a `/proc/PID/fd` directory is its descriptor count (Linux 6.2+; 0
    /// before): told by our own, which is never empty.
    sized: bool,
}

impl Default for ProcFs {
    fn default() -> Self {
        Self::at("/proc")
    }
}

impl ProcFs {
    /// The tree at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let sized = fs::metadata(root.join("self/fd")).is_ok_and(|m| m.len() > 0);
        Self { root, sized }
    }

    /// The inodes of the sockets process `pid` holds descriptors to (none once it is gone).
    pub fn socket_inodes(&self, pid: u32) -> HashSet<u64> {
        let Ok(fds) = fs::read_dir(self.root.join(pid.to_string()).join("fd")) else {
            return HashSet::new();
        };
        fds.flatten()
            .filter_map(|fd| socket_inode(&fs::read_link(fd.path()).ok()?))
            .collect()
    }

    /// How many descriptors process `pid` has open; `None` when it has gone.
    pub fn fd_count(&self, pid: u32) -> Option<usize> {
        if self.sized {
            return self.count(pid);
        }
        let p = Process::new_with_root(self.root.join(pid.to_string())).ok()?;
        p.fd_count().ok()
    }

    /// What is known of process `pid`; `None` when it has gone.
    pub fn process(&self, pid: u32) -> Option<ProcessInfo> {
        let p = Process::new_with_root(self.root.join(pid.to_string())).ok()?;
        let status = p.status().ok()?;
        let fd_limit = match p.limits().ok()?.max_open_files.soft_limit {
            LimitValue::Value(n) => Some(n),
            LimitValue::Unlimited => None,
        };
        let cgroup = p.cgroups().ok().and_then(|groups| {
            let groups: Vec<_> = groups.into_iter().collect();
            groups
                .iter()
                .find(|g| g.hierarchy == 0)
                .or(groups.first())
                .map(|g| g.pathname.clone())
        });
        Some(ProcessInfo {
            pid,
            comm: status.name,
            cmdline: p.cmdline().unwrap_or_default().join(" "),
            uid: status.ruid,
            fd_limit,
            cgroup,
        })
    }
}

impl Fds for ProcFs {
    fn pids(&self) -> Vec<u32> {
        let Ok(dir) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect()
    }

    fn count(&self, pid: u32) -> Option<usize> {
        if !self.sized {
            return None;
        }
        let m = fs::metadata(self.root.join(pid.to_string()).join("fd")).ok()?;
        usize::try_from(m.len()).ok()
    }

    fn read(&self, pid: u32) -> Option<(Vec<(u64, i32)>, usize)> {
        let fd_dir = self.root.join(pid.to_string()).join("fd");
        // Gone, or a kernel thread, or not ours to read: nothing to attribute there.
        let fds = fs::read_dir(&fd_dir).ok()?;
        let mut sockets = Vec::new();
        let mut count = 0;
        let mut link = PathBuf::new();
        for fd in fds.flatten() {
            count += 1;
            let name = fd.file_name();
            link.clear();
            link.push(&fd_dir);
            link.push(&name);
            let Ok(target) = fs::read_link(&link) else {
                continue;
            };
            if let Some(inode) = socket_inode(&target) {
                if let Some(n) = name.to_str().and_then(|s| s.parse().ok()) {
                    sockets.push((inode, n));
                }
            }
        }
        Some((sockets, count))
    }

    fn socket_at(&self, pid: u32, fd: i32) -> Option<u64> {
        let link = self
            .root
            .join(pid.to_string())
            .join("fd")
            .join(fd.to_string());
        socket_inode(&fs::read_link(link).ok()?)
    }
}

/// The inode of a `socket:[12345]` link target.
fn socket_inode(target: &Path) -> Option<u64> {
    let s = target.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}
