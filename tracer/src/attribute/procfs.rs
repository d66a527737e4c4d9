//! Processes and their file descriptors, from `/proc` (or a tree laid out like it, for
//! tests). Processes come and go during a scan; one that vanishes is skipped, not an error.
//!
//! The per-process files (status, limits, cmdline, cgroup) are parsed by the `procfs`
//! crate. The descriptor scan, which touches every fd on the machine, is one `readlink`
//! per fd here: `procfs`'s `FDInfo` costs four system calls per fd.

use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
};

use procfs::process::{LimitValue, Process};

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
}

impl Default for ProcFs {
    fn default() -> Self {
        Self::at("/proc")
    }
}

impl ProcFs {
    /// The tree at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Every process holding a descriptor to one of `inodes`, in pid order.
    pub fn holders(&self, inodes: &HashSet<u64>) -> Vec<Holding> {
        let mut found = Vec::new();
        let Ok(dir) = fs::read_dir(&self.root) else {
            return found;
        };
        let mut link = PathBuf::new();
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let fd_dir = entry.path().join("fd");
            // Gone, or a kernel thread, or not ours to read: nothing to attribute there.
            let Ok(fds) = fs::read_dir(&fd_dir) else {
                continue;
            };
            let mut holding = Holding {
                pid,
                fds: Vec::new(),
                fd_count: 0,
            };
            for fd in fds.flatten() {
                holding.fd_count += 1;
                let name = fd.file_name();
                link.clear();
                link.push(&fd_dir);
                link.push(&name);
                let Ok(target) = fs::read_link(&link) else {
                    continue;
                };
                if let Some(inode) = socket_inode(&target) {
                    if inodes.contains(&inode) {
                        if let Some(n) = name.to_str().and_then(|s| s.parse().ok()) {
                            holding.fds.push((inode, n));
                        }
                    }
                }
            }
            if !holding.fds.is_empty() {
                holding.fds.sort_by_key(|&(_, fd)| fd);
                found.push(holding);
            }
        }
        found.sort_by_key(|h| h.pid);
        found
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

/// The inode of a `socket:[12345]` link target.
fn socket_inode(target: &Path) -> Option<u64> {
    let s = target.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}
