//! Network namespaces: every container has its own, with its own sockets and its own
//! `127.0.0.1`. A namespace is named by the inode of its file (`/proc/PID/ns/net`).

use std::os::unix::fs::MetadataExt;

/// The tracer's own network namespace (inode); 0 when `/proc/self/ns/net` is unreadable.
pub fn own() -> u32 {
    std::fs::metadata("/proc/self/ns/net")
        .ok()
        .and_then(|m| u32::try_from(m.ino()).ok())
        .unwrap_or(0)
}
