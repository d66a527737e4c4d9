//! The capabilities tracer uses, read with `capget`, and what a run loses without each:
//! checked before touching the kernel, so that a missing privilege is reported by name
//! (one error when the probe cannot load, one warning per capability whose absence costs
//! something) instead of as a bare EPERM or a silent "owner unknown".
//!
//! Found by running a setcap'd copy as `nobody` on Linux 6.18, each capability taken away
//! in turn (the README's "Privileges" section has the details); the checks behind them
//! (`bpf_capable`, `perfmon_capable`, DAC on tracefs and `/proc/PID/fd`, `ptrace_may_access`,
//! `setns`) are the same since Linux 5.8, which tracer needs.

use caps::{CapSet, Capability, CapsHashSet};

use super::ProbeError;

/// A capability tracer uses, and what it costs to go without.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Use {
    /// The capability.
    pub cap: Capability,
    /// What tracer does with it.
    pub does: &'static str,
    /// What a run loses without it.
    pub loses: &'static str,
    /// Without it the probe cannot be loaded (unless `CAP_SYS_ADMIN` stands in).
    pub fatal: bool,
}

/// Every capability `watch` uses, in the order they are checked: together the least a
/// non-root user needs for all that tracer does (root has them all).
pub const USES: [Use; 5] = [
    Use {
        cap: Capability::CAP_BPF,
        does: "loads the probe and creates its maps",
        loses: "watch cannot load its probe",
        fatal: true,
    },
    Use {
        cap: Capability::CAP_PERFMON,
        does: "attaches the probe to tracepoints and lets it read the kernel's sockets",
        loses: "watch cannot load its probe",
        fatal: true,
    },
    Use {
        cap: Capability::CAP_DAC_READ_SEARCH,
        does: "reads tracefs (root's, mode 0700) and other users' /proc/PID/fd directories",
        // tracefs unreadable is an error of its own, when it happens.
        loses: "the owners of other users' processes are unknown (their /proc/PID/fd cannot \
                be listed)",
        fatal: false,
    },
    Use {
        cap: Capability::CAP_SYS_PTRACE,
        does: "reads which sockets other users' processes hold (/proc/PID/fd/N, /proc/PID/ns/net)",
        loses: "the owners of other users' processes are unknown (their descriptors cannot \
                be read), and network namespaces only they are in are not looked into",
        fatal: false,
    },
    Use {
        cap: Capability::CAP_SYS_ADMIN,
        does: "enters other network namespaces (setns) to list their sockets",
        loses: "sockets in other network namespaces (containers) are not listed at start and \
                their owners are unknown",
        fatal: false,
    },
];

/// The capabilities of [`USES`], as `CAP_BPF, CAP_PERFMON, ...`.
pub fn full_set() -> String {
    USES.iter()
        .map(|u| u.cap.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// This process's effective capabilities, if `capget` answers.
pub fn effective() -> Option<CapsHashSet> {
    caps::read(None, CapSet::Effective).ok()
}

/// Whether `held` covers `cap` for what tracer does with it: `CAP_SYS_ADMIN` stands in for
/// `CAP_BPF` and `CAP_PERFMON` (the kernel's `bpf_capable` and `perfmon_capable`).
pub fn covers(held: &CapsHashSet, cap: Capability) -> bool {
    held.contains(&cap)
        || (matches!(cap, Capability::CAP_BPF | Capability::CAP_PERFMON)
            && held.contains(&Capability::CAP_SYS_ADMIN))
}

/// What `held` lacks to load the probe, as `CAP_BPF and CAP_PERFMON`, or `None`.
pub fn missing(held: &CapsHashSet) -> Option<String> {
    let lacking: Vec<String> = USES
        .iter()
        .filter(|u| u.fatal && !covers(held, u.cap))
        .map(|u| u.cap.to_string())
        .collect();
    (!lacking.is_empty()).then(|| lacking.join(" and "))
}

/// One line per capability `held` lacks whose absence costs a running `watch` something:
/// `no CAP_SYS_PTRACE: the owners of ...`. `CAP_SYS_ADMIN` is only said when the probe
/// tells sockets' network namespaces apart (`namespaces`): otherwise none are entered.
pub fn warnings(held: &CapsHashSet, namespaces: bool) -> Vec<String> {
    USES.iter()
        .filter(|u| !u.fatal && !covers(held, u.cap))
        .filter(|u| namespaces || u.cap != Capability::CAP_SYS_ADMIN)
        .map(|u| {
            format!(
                "no {cap}: {loses}; give tracer {cap} or run it as root",
                cap = u.cap,
                loses = u.loses
            )
        })
        .collect()
}

/// Fails with one line naming what is missing when this process cannot load the probe.
pub fn check() -> Result<(), ProbeError> {
    // Without an answer from capget let the kernel decide; its error is reported then.
    let Some(held) = effective() else {
        return Ok(());
    };
    match missing(&held) {
        None => Ok(()),
        Some(what) => Err(ProbeError::Privileges(format!(
            "tracer needs root, or CAP_BPF and CAP_PERFMON, to load its BPF probe (missing {what}); \
             run it with sudo, or give it the capabilities of the README's \"Privileges\" ({})",
            full_set()
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
    use Capability::*;

    fn set(caps: &[Capability]) -> CapsHashSet {
        caps.iter().copied().collect()
    }

    #[test]
    fn names_what_the_probe_cannot_load_without() {
        assert_eq!(
            missing(&set(&[])),
            Some("CAP_BPF and CAP_PERFMON".to_owned())
        );
        assert_eq!(missing(&set(&[CAP_BPF])), Some("CAP_PERFMON".to_owned()));
        assert_eq!(missing(&set(&[CAP_PERFMON])), Some("CAP_BPF".to_owned()));
        assert_eq!(missing(&set(&[CAP_BPF, CAP_PERFMON])), None);
        assert_eq!(missing(&set(&[CAP_SYS_ADMIN])), None);
        assert_eq!(missing(&caps::all()), None);
    }

    #[test]
    fn warns_once_per_missing_capability_that_costs_something() {
        assert!(warnings(&caps::all(), true).is_empty());
        let all = set(&USES.map(|u| u.cap));
        assert!(warnings(&all, true).is_empty(), "the set is complete");

        let no_ptrace = set(&[CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH, CAP_SYS_ADMIN]);
        let said = warnings(&no_ptrace, true);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0]
                .starts_with("no CAP_SYS_PTRACE: the owners of other users' processes are unknown"),
            "{said:?}"
        );
        assert!(said[0].ends_with("give tracer CAP_SYS_PTRACE or run it as root"));

        // The probe's capabilities are errors, not warnings; CAP_SYS_ADMIN covers them.
        let bare = warnings(&set(&[]), true);
        let named: Vec<&str> = bare.iter().map(|w| w.split(':').next().unwrap()).collect();
        assert_eq!(
            named,
            [
                "no CAP_DAC_READ_SEARCH",
                "no CAP_SYS_PTRACE",
                "no CAP_SYS_ADMIN"
            ]
        );
        assert!(warnings(
            &set(&[CAP_SYS_ADMIN, CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE]),
            true
        )
        .is_empty());
    }

    #[test]
    fn namespaces_are_only_entered_when_the_probe_tells_them_apart() {
        let no_admin = set(&[CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE]);
        assert_eq!(warnings(&no_admin, true).len(), 1);
        assert!(warnings(&no_admin, false).is_empty());
    }

    #[test]
    fn the_full_set_is_listed_in_order() {
        assert_eq!(
            full_set(),
            "CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, CAP_SYS_ADMIN"
        );
    }

    #[test]
    fn capget_reads_this_process() {
        // Whatever this test runs as, capget answers for it.
        assert!(effective().is_some());
    }
}
