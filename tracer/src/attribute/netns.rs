//! Network namespaces: every container has its own, with its own sockets and its own
//! `127.0.0.1`. A namespace is named by the inode of its file (`/proc/PID/ns/net`).
//!
//! Finding them: each process's `/proc/PID/ns/net` and the bind mounts `ip netns add` makes
//! under `/run/netns`, told apart by the inode `stat` gives (it follows the link to the
//! namespace itself). Only a thread-group leader's namespace is seen: one held by another
//! thread alone (it called `unshare` or `setns`) is missed, because `/proc/PID/task/*/ns/net`
//! would cost one `stat` per thread on the host (a JVM has hundreds) for a rare case;
//! containers hold theirs in processes or bind mounts. A namespace not found is gone, unless
//! some process's `ns/net` may not be opened (even root may not open that of an outer
//! namespace's init) and its `net/dev`, which proc numbers per namespace and shows to
//! anyone, puts it in a namespace no other process shows: then it may be that one.
//!
//! Entering one: `setns` changes the namespace of the calling thread only, so it runs on a
//! short-lived helper thread, which creates there what must belong to the namespace (a
//! netlink socket) and hands it back; the descriptor keeps its namespace in any thread.

use std::{
    collections::{HashMap, HashSet},
    fs::{self, File},
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

/// The tracer's own network namespace (inode); 0 when `/proc/self/ns/net` is unreadable.
pub fn own() -> u32 {
    fs::metadata("/proc/self/ns/net")
        .ok()
        .and_then(|m| u32::try_from(m.ino()).ok())
        .unwrap_or(0)
}

/// Why a network namespace could not be entered.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {netns} at {}: {source}", path.display())]
    Open {
        netns: u32,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "network namespace {netns} was not found, and some processes are in namespaces this \
         tracer may not open (/proc/PID/ns/net: permission denied); run tracer as root"
    )]
    Hidden { netns: u32 },
    #[error(
        "cannot enter network namespace {netns} (setns): {source}; entering another namespace \
         needs CAP_SYS_ADMIN, run tracer as root"
    )]
    Enter { netns: u32, source: io::Error },
    #[error("cannot create a socket inside network namespace {netns}: {source}")]
    Create { netns: u32, source: io::Error },
}

/// Where each network namespace on the host can be entered: a path per namespace inode
/// (`/run/netns/NAME` or `/proc/PID/ns/net`). Paths go stale (the process exits, its pid
/// is reused), so each is checked when opened (the opened file must have the inode), and
/// the host is scanned again only when a namespace asked for is missing or stale: an
/// attribution costs one `open` per namespace, not one `stat` per process.
#[derive(Debug)]
pub struct Registry {
    proc: PathBuf,
    run: PathBuf,
    paths: HashMap<u32, PathBuf>,
    /// The last scan met a process whose namespace it could not name: what it did not
    /// find may exist all the same.
    incomplete: bool,
}

impl Default for Registry {
    fn default() -> Self {
        Self::at("/proc", "/run/netns")
    }
}

impl Registry {
    /// Namespaces found through the processes under `proc` and the bind mounts in `run`.
    pub fn at(proc: impl Into<PathBuf>, run: impl Into<PathBuf>) -> Self {
        Self {
            proc: proc.into(),
            run: run.into(),
            paths: HashMap::new(),
            incomplete: false,
        }
    }

    /// Every namespace on the host now (scanned afresh), by inode, in ascending order.
    pub fn all(&mut self) -> Vec<u32> {
        self.rescan();
        let mut all: Vec<u32> = self.paths.keys().copied().collect();
        all.sort_unstable();
        all
    }

    /// Opens each namespace of `inodes`, in order: `Ok(None)` for one that nothing on the
    /// host holds any more (no process is in it, no bind mount names it).
    pub fn open(&mut self, inodes: &[u32]) -> Vec<Result<Option<File>, NetnsError>> {
        let mut opened: Vec<_> = inodes.iter().map(|&n| self.open_known(n)).collect();
        if opened.iter().any(|o| matches!(o, Ok(None))) {
            self.rescan();
            for (o, &n) in opened.iter_mut().zip(inodes) {
                if matches!(o, Ok(None)) {
                    *o = match self.open_known(n) {
                        Ok(None) if self.incomplete => Err(NetnsError::Hidden { netns: n }),
                        other => other,
                    };
                }
            }
        }
        opened
    }

    /// Opens namespace `netns` at the path last found for it, if that still names it.
    fn open_known(&self, netns: u32) -> Result<Option<File>, NetnsError> {
        let Some(path) = self.paths.get(&netns) else {
            return Ok(None);
        };
        let open = || {
            let file = File::open(path)?;
            let ino = file.metadata()?.ino();
            io::Result::Ok((ino == u64::from(netns)).then_some(file))
        };
        match open() {
            Ok(file) => Ok(file),
            Err(e) if vanished(&e) => Ok(None),
            Err(source) => Err(NetnsError::Open {
                netns,
                path: path.clone(),
                source,
            }),
        }
    }

    fn rescan(&mut self) {
        (self.paths, self.incomplete) = scan(&self.proc, &self.run);
    }
}

/// Every namespace under `run` (bind mounts, named: preferred) and `proc` (processes),
/// by inode, and whether some process is in a namespace that could not be named.
fn scan(proc: &Path, run: &Path) -> (HashMap<u32, PathBuf>, bool) {
    let mut paths = HashMap::new();
    let mut add = |path: PathBuf| {
        let m = fs::metadata(&path)?;
        // Namespace inodes are 32-bit (`ns_common.inum`); anything else is no namespace.
        if let Ok(ino) = u32::try_from(m.ino()) {
            paths.entry(ino).or_insert(path);
        }
        io::Result::Ok(())
    };
    let mut mounts: Vec<PathBuf> = fs::read_dir(run)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    mounts.sort();
    for path in mounts {
        // Not a namespace, or deleted meanwhile.
        let _ = add(path);
    }
    // Processes only (not `self` and the rest), the oldest first: the likeliest to stay.
    let mut pids: Vec<u32> = fs::read_dir(proc)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let (mut readable, mut unreadable) = (Vec::new(), Vec::new());
    for pid in pids {
        let dir = proc.join(pid.to_string());
        match add(dir.join("ns/net")) {
            Ok(()) => readable.push(dir),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => unreadable.push(dir),
            // Gone, or a process without namespaces to show.
            Err(_) => {}
        }
    }
    (paths, !unnamed(&readable, &unreadable).is_empty())
}

/// Which of the namespaces the processes in `unreadable` (whose `ns/net` this tracer may
/// not open) are in are none of those of the processes in `readable`, each namespace told
/// by the inode of its `net/dev`, which proc numbers per namespace and shows to anyone.
fn unnamed(readable: &[PathBuf], unreadable: &[PathBuf]) -> HashSet<u64> {
    let dev = |dir: &PathBuf| fs::metadata(dir.join("net/dev")).ok().map(|m| m.ino());
    let mut unnamed: HashSet<u64> = unreadable.iter().filter_map(dev).collect();
    for dir in readable {
        if unnamed.is_empty() {
            break;
        }
        if let Some(ino) = dev(dir) {
            unnamed.remove(&ino);
        }
    }
    unnamed
}

/// Whether an error opening a namespace's file means that what held it is gone.
fn vanished(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// Runs `make` inside each namespace of `namespaces` (inode, open file), in order, on one
/// helper thread that enters them in turn; the calling thread stays where it is.
pub fn inside<T: Send>(
    namespaces: &[(u32, File)],
    make: impl Fn(u32) -> io::Result<T> + Sync,
) -> Vec<Result<T, NetnsError>> {
    if namespaces.is_empty() {
        return Vec::new();
    }
    let enter_all = || {
        namespaces
            .iter()
            .map(|(netns, file)| {
                // SAFETY: setns only reads the descriptor, which `file` keeps open; it
                // changes this helper thread's namespace, which ends with the thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(NetnsError::Enter {
                        netns: *netns,
                        source: io::Error::last_os_error(),
                    });
                }
                make(*netns).map_err(|source| NetnsError::Create {
                    netns: *netns,
                    source,
                })
            })
            .collect()
    };
    std::thread::scope(|s| {
        s.spawn(enter_all)
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory laid out like `/proc` and `/run/netns`, with plain files for
    /// namespaces: hard links share an inode as the links of one namespace do.
    struct Tree {
        dir: tempfile::TempDir,
    }

    impl Tree {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir_all(dir.path().join("proc")).unwrap();
            fs::create_dir_all(dir.path().join("run")).unwrap();
            Self { dir }
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }

        /// A new namespace file at `rel`; its inode.
        fn namespace(&self, rel: &str) -> u32 {
            let path = self.path(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, b"").unwrap();
            self.ino(rel)
        }

        /// Process `pid` (or a bind mount, for `run/NAME`) holding the namespace at `of`.
        fn holds(&self, rel: &str, of: &str) {
            let path = self.path(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::hard_link(self.path(of), path).unwrap();
        }

        fn ino(&self, rel: &str) -> u32 {
            fs::metadata(self.path(rel)).unwrap().ino() as u32
        }

        fn registry(&self) -> Registry {
            Registry::at(self.path("proc"), self.path("run"))
        }
    }

    #[test]
    fn scan_dedupes_by_inode_prefers_bind_mounts_and_skips_the_rest() {
        let t = Tree::new();
        let a = t.namespace("proc/1/ns/net");
        t.holds("proc/200/ns/net", "proc/1/ns/net");
        let b = t.namespace("proc/300/ns/net");
        t.holds("run/blue", "proc/300/ns/net");
        let c = t.namespace("run/red");
        // Not processes, or gone (no ns directory left).
        t.holds("proc/self/ns/net", "proc/1/ns/net");
        fs::create_dir_all(t.path("proc/400")).unwrap();
        fs::write(t.path("proc/uptime"), b"1.0 1.0").unwrap();

        let (paths, incomplete) = scan(&t.path("proc"), &t.path("run"));
        assert!(!incomplete);
        let mut got: Vec<(u32, PathBuf)> = paths.into_iter().collect();
        got.sort();
        let mut want = vec![
            (a, t.path("proc/1/ns/net")),
            (b, t.path("run/blue")),
            (c, t.path("run/red")),
        ];
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn a_stale_path_is_found_again_and_a_namespace_nothing_holds_is_none() {
        let t = Tree::new();
        let a = t.namespace("proc/10/ns/net");
        let b = t.namespace("proc/20/ns/net");
        let mut r = t.registry();
        assert_eq!(r.all(), {
            let mut v = vec![a, b];
            v.sort();
            v
        });

        // Process 10 exits and its pid is reused in another namespace; another process
        // joins a. Process 20 exits and nothing else holds b.
        t.holds("proc/30/ns/net", "proc/10/ns/net");
        fs::remove_file(t.path("proc/10/ns/net")).unwrap();
        let c = t.namespace("proc/10/ns/net");
        fs::remove_dir_all(t.path("proc/20")).unwrap();

        let opened = r.open(&[a, b, c]);
        let inode = |o: &Result<Option<File>, NetnsError>| {
            o.as_ref()
                .unwrap()
                .as_ref()
                .map(|f| f.metadata().unwrap().ino() as u32)
        };
        assert_eq!(
            opened.iter().map(inode).collect::<Vec<_>>(),
            [Some(a), None, Some(c)]
        );
    }

    #[test]
    fn a_process_whose_namespace_cannot_be_opened_is_placed_by_its_net_dev() {
        let t = Tree::new();
        // net/dev stands for its namespace's proc entries: one inode per namespace.
        t.namespace("proc/1/net/dev");
        t.holds("proc/2/net/dev", "proc/1/net/dev");
        t.namespace("proc/3/net/dev");
        let dir = |pid: &str| t.path("proc").join(pid);
        assert!(
            unnamed(&[dir("1")], &[dir("2")]).is_empty(),
            "pid 2 is where pid 1 is"
        );
        assert_eq!(
            unnamed(&[dir("1")], &[dir("2"), dir("3"), dir("4")]),
            HashSet::from([t.ino("proc/3/net/dev") as u64]),
            "pid 3 is somewhere else; pid 4 is gone"
        );
    }

    #[test]
    fn entering_a_namespace_needs_an_open_namespace_file() {
        let t = Tree::new();
        let a = t.namespace("run/plain");
        let file = File::open(t.path("run/plain")).unwrap();
        let got = inside(&[(a, file)], |_| Ok(()));
        assert!(
            matches!(got[..], [Err(NetnsError::Enter { netns, .. })] if netns == a),
            "{got:?}"
        );
    }
}
