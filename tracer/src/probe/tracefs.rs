//! Finds tracefs, which aya needs to resolve the tracepoint's id, mounting it when a fresh
//! machine has not. tracefs is root's (mode 0700): a user without `CAP_DAC_READ_SEARCH` finds
//! it mounted but not readable, which is told apart from not mounted.

use std::{
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

/// Where tracefs is mounted on current kernels.
pub const TRACEFS: &str = "/sys/kernel/tracing";
/// Where older set-ups reach it, through debugfs.
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// Where tracefs was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracefs {
    pub path: PathBuf,
    /// True when this run mounted it (it stays mounted: other tools may now rely on it).
    pub mounted_by_us: bool,
}

/// Why tracefs cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is mounted at {} but not readable by this user (uid {uid}: {source}); reading \
         it needs root or CAP_DAC_READ_SEARCH",
        path.display()
    )]
    Unreadable {
        path: PathBuf,
        uid: u32,
        source: io::Error,
    },
    #[error(
        "tracefs is not mounted (neither at {TRACEFS} nor at {DEBUGFS_TRACING}) and mounting \
         it failed ({source}); mount it as root: mount -t tracefs nodev {TRACEFS}"
    )]
    NotMounted { source: io::Error },
}

/// What looking for tracefs found.
#[derive(Debug)]
pub enum Found {
    /// Mounted and readable.
    Readable(Tracefs),
    /// Mounted (the first such place), but this user may not look inside.
    Unreadable { path: PathBuf, source: io::Error },
    /// Mounted nowhere.
    NotMounted,
}

/// Where tracefs is mounted, from `/proc/self/mounts`: readable by anyone, unlike tracefs
/// itself.
pub fn mount_points() -> Vec<PathBuf> {
    tracefs_in(&std::fs::read_to_string("/proc/self/mounts").unwrap_or_default())
}

/// The tracefs mount points in a `/proc/self/mounts` text.
fn tracefs_in(mounts: &str) -> Vec<PathBuf> {
    mounts
        .lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let (point, fstype) = (fields.nth(1)?, fields.next()?);
            (fstype == "tracefs").then(|| PathBuf::from(point))
        })
        .collect()
}

/// Looks for tracefs where kernels put it, then wherever `/proc/self/mounts` says.
pub fn find() -> Found {
    let mut places: Vec<PathBuf> = vec![TRACEFS.into(), DEBUGFS_TRACING.into()];
    for point in mount_points() {
        if !places.contains(&point) {
            places.push(point);
        }
    }
    judge(places.iter().map(|p| (p.as_path(), events_of(p))))
}

/// A mounted tracefs shows its `events` directory; an unmounted mount point is empty, and
/// one this user may not search says so (EACCES).
fn events_of(path: &Path) -> io::Result<bool> {
    std::fs::metadata(path.join("events")).map(|m| m.is_dir())
}

/// The first readable place, else the first unreadable one, else none: what stat'ing each
/// place's `events` gave.
fn judge<'a>(places: impl Iterator<Item = (&'a Path, io::Result<bool>)>) -> Found {
    let mut unreadable = None;
    for (path, events) in places {
        match events {
            Ok(true) => {
                return Found::Readable(Tracefs {
                    path: path.to_owned(),
                    mounted_by_us: false,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied && unreadable.is_none() => {
                unreadable = Some((path.to_owned(), e));
            }
            _ => {}
        }
    }
    match unreadable {
        Some((path, source)) => Found::Unreadable { path, source },
        None => Found::NotMounted,
    }
}

/// This process's effective uid, for messages.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Returns the mounted tracefs, mounting it at [`TRACEFS`] when there is none; an error
/// names the real cause (not readable, or not mounted and not mountable).
pub fn ensure() -> Result<Tracefs, TracefsError> {
    match find() {
        Found::Readable(found) => Ok(found),
        Found::Unreadable { path, source } => Err(TracefsError::Unreadable {
            path,
            uid: euid(),
            source,
        }),
        Found::NotMounted => {
            mount().map_err(|source| TracefsError::NotMounted { source })?;
            Ok(Tracefs {
                path: TRACEFS.into(),
                mounted_by_us: true,
            })
        }
    }
}

/// What to add to an error reading a file in tracefs, from its cause.
pub fn read_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::PermissionDenied => "; reading tracefs needs root or CAP_DAC_READ_SEARCH",
        io::ErrorKind::NotFound => "; this kernel has no such tracepoint (Linux 4.16+ has it)",
        _ => "",
    }
}

fn mount() -> io::Result<()> {
    let source = CString::new("nodev").expect("no NUL");
    let target = CString::new(TRACEFS).expect("no NUL");
    let fstype = CString::new("tracefs").expect("no NUL");
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_unreadable_from_not_mounted() {
        let denied = || io::Error::from(io::ErrorKind::PermissionDenied);
        let missing = || io::Error::from(io::ErrorKind::NotFound);
        let (a, b) = (Path::new("/a"), Path::new("/b"));
        let found = judge([(a, Err(denied())), (b, Ok(true))].into_iter());
        assert!(
            matches!(found, Found::Readable(ref t) if t.path == b),
            "{found:?}"
        );
        let found = judge([(a, Err(missing())), (b, Err(denied()))].into_iter());
        assert!(
            matches!(found, Found::Unreadable { ref path, .. } if path == b),
            "{found:?}"
        );
        let found = judge([(a, Err(missing())), (b, Ok(false))].into_iter());
        assert!(matches!(found, Found::NotMounted), "{found:?}");
    }

    #[test]
    fn errors_name_the_real_cause() {
        let unreadable = TracefsError::Unreadable {
            path: TRACEFS.into(),
            uid: 65534,
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        let said = unreadable.to_string();
        assert!(
            said.starts_with("tracefs is mounted at /sys/kernel/tracing but not readable by this user (uid 65534: Permission denied"),
            "{said}"
        );
        assert!(
            said.ends_with("reading it needs root or CAP_DAC_READ_SEARCH"),
            "{said}"
        );
        assert!(!said.contains("not mounted"), "{said}");
        let not_mounted = TracefsError::NotMounted {
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert!(not_mounted
            .to_string()
            .starts_with("tracefs is not mounted"));
        assert!(read_hint(&io::Error::from(io::ErrorKind::PermissionDenied))
            .contains("CAP_DAC_READ_SEARCH"));
    }

    #[test]
    fn finds_tracefs_mount_points() {
        let mounts = "sysfs /sys sysfs rw,nosuid 0 0\n\
                      nodev /sys/kernel/tracing tracefs rw,relatime 0 0\n\
                      debugfs /sys/kernel/debug debugfs rw 0 0\n";
        assert_eq!(tracefs_in(mounts), [PathBuf::from(TRACEFS)]);
        assert!(tracefs_in("proc /proc proc rw 0 0\n").is_empty());
    }
}
