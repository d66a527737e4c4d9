//! Checks, before touching the kernel, that this process may load and attach the probe, so
//! that a missing privilege is reported by name instead of as a bare EPERM.

use super::ProbeError;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Names what `effective` (a `CapEff` mask) lacks to load a BPF program and attach it to a
/// tracepoint, or `None` when nothing is missing.
pub fn missing(effective: u64) -> Option<String> {
    let has = |cap: u32| effective & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        return None;
    }
    let lacking: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(cap, _)| !has(*cap))
        .map(|(_, name)| name)
        .collect();
    (!lacking.is_empty()).then(|| lacking.join(" and "))
}

/// The effective capability mask from `/proc/self/status`.
fn effective_capabilities(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// This process's effective capability mask (`CapEff`), if it can be read.
pub fn effective() -> Option<u64> {
    effective_capabilities(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// Which of the capabilities the probe can use are in `effective`.
pub fn relevant_names(effective: u64) -> Vec<&'static str> {
    [
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
    ]
    .into_iter()
    .filter(|(cap, _)| effective & (1 << cap) != 0)
    .map(|(_, name)| name)
    .collect()
}

/// Fails with one line naming what is missing when this process cannot load the probe.
pub fn check() -> Result<(), ProbeError> {
    // Without a readable CapEff let the kernel decide; its error is reported then.
    let Some(effective) = effective() else {
        return Ok(());
    };
    match missing(effective) {
        None => Ok(()),
        Some(what) => Err(ProbeError::Privileges(format!(
            "tracer needs root, or CAP_BPF and CAP_PERFMON, to load its BPF probe (missing {what}); \
             run it with sudo"
        ))),
    }
}

/// Lifts RLIMIT_MEMLOCK for kernels older than 5.11 that still charge BPF maps to it;
/// newer kernels charge the cgroup and ignore it, so failure here is not an error.
pub fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass and nothing else.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_missing_capabilities() {
        assert_eq!(missing(0), Some("CAP_BPF and CAP_PERFMON".to_owned()));
        assert_eq!(missing(1 << CAP_BPF), Some("CAP_PERFMON".to_owned()));
        assert_eq!(missing(1 << CAP_PERFMON), Some("CAP_BPF".to_owned()));
        assert_eq!(missing((1 << CAP_BPF) | (1 << CAP_PERFMON)), None);
        assert_eq!(missing(1 << CAP_SYS_ADMIN), None);
        assert_eq!(missing(0x000001ffffffffff), None);
    }

    #[test]
    fn names_the_capabilities_held() {
        assert_eq!(
            relevant_names(0x000001ffffffffff),
            ["CAP_SYS_ADMIN", "CAP_BPF", "CAP_PERFMON"]
        );
        assert_eq!(relevant_names(1 << CAP_BPF), ["CAP_BPF"]);
        assert!(relevant_names(0).is_empty());
    }

    #[test]
    fn reads_cap_eff() {
        let status = "Name:\ttracer\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_capabilities(status), Some(0x1ff_ffff_ffff));
        assert_eq!(effective_capabilities("Name:\tx\n"), None);
    }
}
