//! Finds tracefs, which aya needs to resolve the tracepoint's id, mounting it when a fresh
//! machine has not.

use std::{
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

use super::ProbeError;

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

/// A mounted tracefs shows its `events` directory; an unmounted mount point is empty.
fn is_mounted(path: &Path) -> bool {
    path.join("events").is_dir()
}

/// Where tracefs is mounted, from `/proc/self/mounts`: readable by anyone, unlike tracefs
/// itself, so this also tells "mounted but not readable" from "not mounted".
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

/// The mounted tracefs, if there is one.
pub fn find() -> Option<Tracefs> {
    [TRACEFS, DEBUGFS_TRACING]
        .into_iter()
        .find(|path| is_mounted(Path::new(path)))
        .map(|path| Tracefs {
            path: path.into(),
            mounted_by_us: false,
        })
}

/// Returns the mounted tracefs, mounting it at [`TRACEFS`] when there is none.
pub fn ensure() -> Result<Tracefs, ProbeError> {
    if let Some(found) = find() {
        return Ok(found);
    }
    mount().map_err(|e| {
        ProbeError::Tracefs(format!(
            "tracefs is not mounted at {TRACEFS} and mounting it failed ({e}); run as root or \
             mount it: mount -t tracefs nodev {TRACEFS}"
        ))
    })?;
    Ok(Tracefs {
        path: TRACEFS.into(),
        mounted_by_us: true,
    })
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
    fn finds_tracefs_mount_points() {
        let mounts = "sysfs /sys sysfs rw,nosuid 0 0\n\
                      nodev /sys/kernel/tracing tracefs rw,relatime 0 0\n\
                      debugfs /sys/kernel/debug debugfs rw 0 0\n";
        assert_eq!(tracefs_in(mounts), [PathBuf::from(TRACEFS)]);
        assert!(tracefs_in("proc /proc proc rw 0 0\n").is_empty());
    }
}
