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

/// Returns the mounted tracefs, mounting it at [`TRACEFS`] when there is none.
pub fn ensure() -> Result<Tracefs, ProbeError> {
    for path in [TRACEFS, DEBUGFS_TRACING] {
        if is_mounted(Path::new(path)) {
            return Ok(Tracefs {
                path: path.into(),
                mounted_by_us: false,
            });
        }
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
