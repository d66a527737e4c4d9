//! `tracer doctor`: what this machine offers `watch`, found by trying it (the probe's
//! programs are loaded and attached for a moment, sock_diag is queried once), with one line
//! per missing piece saying what the user loses.
//!
//! Exit status: 0 when `watch` can run fully, 1 when it runs degraded, 2 when it cannot run.

use std::{
    io::{self, Write},
    path::Path,
};

use caps::CapsHashSet;
use serde::Serialize;

use crate::{
    attribute::sock_diag,
    cli::DoctorArgs,
    model::{Family, Format},
    probe::{
        btf, io::kernel_version, privileges, tracefs, IoMechanism, Trial, TP_BTF_TRANSITION_HOOK,
        TRANSITION_HOOK,
    },
};

/// Where the kernel's BTF is.
const BTF: &str = btf::VMLINUX;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Present and working (tried where it can be).
    Ok,
    /// Not offered by this kernel or machine.
    Missing,
    /// Offered, but trying it failed.
    Failed,
    /// Not tried: an earlier check it depends on failed.
    Skipped,
}

/// What a missing piece costs `watch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Impact {
    /// Nothing (something else covers it, or it is only informative).
    None,
    /// `watch` runs, without some of what it reports.
    Degraded,
    /// `watch` cannot run.
    Fatal,
}

/// One thing checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    /// What was found or what failed.
    pub detail: String,
    pub impact: Impact,
    /// What the user loses, when it is not ok.
    pub loses: Option<String>,
}

impl Check {
    fn ok(name: &str, detail: impl Into<String>) -> Check {
        Check {
            name: name.to_owned(),
            status: Status::Ok,
            detail: detail.into(),
            impact: Impact::None,
            loses: None,
        }
    }

    fn not_ok(
        name: &str,
        status: Status,
        detail: impl Into<String>,
        impact: Impact,
        loses: impl Into<String>,
    ) -> Check {
        Check {
            name: name.to_owned(),
            status,
            detail: detail.into(),
            impact,
            loses: Some(loses.into()),
        }
    }
}

/// What `watch` can do here, overall.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Full,
    Degraded,
    CannotRun,
}

impl Verdict {
    /// The process exit status for it.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Full => 0,
            Verdict::Degraded => 1,
            Verdict::CannotRun => 2,
        }
    }
}

/// Everything doctor found: the JSON record (`"type":"doctor"`).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `uname -r`.
    pub kernel: String,
    pub verdict: Verdict,
    pub exit_code: u8,
    /// The send/receive mechanism `watch` would use (`tracepoint`, `fentry`, `kprobe`, as
    /// `TRACER_IO_PROBES` names them), or `null` for none.
    pub io_mechanism: Option<&'static str>,
    /// Its hooks, as the start record's `attached.io_probes` would list them.
    pub io_probes: Vec<String>,
    pub checks: Vec<Check>,
}

impl Report {
    /// A report over `checks`, its verdict from the worst impact among them.
    pub fn new(kernel: String, io: Option<IoMechanism>, checks: Vec<Check>) -> Report {
        let verdict = match checks.iter().map(|c| c.impact).max() {
            Some(Impact::Fatal) => Verdict::CannotRun,
            Some(Impact::Degraded) => Verdict::Degraded,
            _ => Verdict::Full,
        };
        Report {
            kind: "doctor",
            kernel,
            verdict,
            exit_code: verdict.exit_code(),
            io_mechanism: io.map(IoMechanism::name),
            io_probes: io
                .map(|m| m.hooks().iter().map(|h| h.to_string()).collect())
                .unwrap_or_default(),
            checks,
        }
    }

    /// Writes the report as text (a line per check, the loss under it) or one JSON line.
    pub fn write(&self, format: Format, mut out: impl Write) -> io::Result<()> {
        if format == Format::Json {
            serde_json::to_writer(&mut out, self)?;
            writeln!(out)?;
            return out.flush();
        }
        writeln!(out, "tracer doctor: Linux {}", self.kernel)?;
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &self.checks {
            let status = match c.status {
                Status::Ok => "ok",
                Status::Missing => "MISSING",
                Status::Failed => "FAILED",
                Status::Skipped => "skipped",
            };
            writeln!(out, "  {status:<8} {:<width$}  {}", c.name, c.detail)?;
            if let Some(loses) = &c.loses {
                writeln!(out, "  {:<8} {:<width$}  -> {loses}", "", "")?;
            }
        }
        let verdict = match self.verdict {
            Verdict::Full => "watch can run fully",
            Verdict::Degraded => "watch runs degraded",
            Verdict::CannotRun => "watch cannot run here",
        };
        let io = match self.io_mechanism {
            Some(_) => format!("; last send/receive from {}", self.io_probes.join(", ")),
            None => "; no last send/receive".to_owned(),
        };
        writeln!(out, "verdict: {verdict} (exit {}){io}", self.exit_code)?;
        out.flush()
    }
}

/// Runs the checks and writes the report to `out`; returns the exit status.
pub fn run(args: &DoctorArgs, out: impl Write) -> io::Result<u8> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let held = privileges::effective();
    let mut checks = vec![user_check(held.as_ref())];
    if let Some(held) = &held {
        checks.extend(capability_checks(held));
    }
    checks.extend([memlock_check(&kernel), btf_check(), netns_check()]);
    // Without an answer from capget, let the kernel decide, as watch does.
    let privileged = held.is_none_or(|h| privileges::missing(&h).is_none());
    let tracefs = tracefs_check(privileged, &mut checks);
    let io = match tracefs {
        Some(tracefs) if privileged => trial_checks(&tracefs, &mut checks),
        _ => {
            let why = if privileged {
                "tracefs is not usable"
            } else {
                "needs root, or CAP_BPF and CAP_PERFMON"
            };
            for name in ["probe", "hooks"] {
                checks.push(Check {
                    name: name.to_owned(),
                    status: Status::Skipped,
                    detail: format!("not tried: {why}"),
                    impact: Impact::None,
                    loses: None,
                });
            }
            None
        }
    };
    checks.push(sock_diag_check());
    let report = Report::new(kernel, io, checks);
    report.write(args.format, out)?;
    Ok(report.exit_code)
}

/// Who runs this, and the capabilities that make `watch` do all it can.
fn user_check(held: Option<&CapsHashSet>) -> Check {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let who = if euid == 0 {
        "root".to_owned()
    } else {
        format!("uid {euid}")
    };
    let heard = match held {
        Some(_) => "",
        None => "; capget failed: the kernel decides",
    };
    Check::ok(
        "user",
        format!(
            "{who}{heard}; all of watch needs {} (root has them)",
            privileges::full_set()
        ),
    )
}

/// A check per capability `watch` uses: what it does with it, and what is lost without.
fn capability_checks(held: &CapsHashSet) -> Vec<Check> {
    privileges::USES
        .iter()
        .map(|u| {
            let name = u.cap.to_string();
            if held.contains(&u.cap) {
                Check::ok(&name, u.does)
            } else if privileges::covers(held, u.cap) {
                Check::ok(&name, format!("{} (CAP_SYS_ADMIN stands in)", u.does))
            } else if u.fatal {
                Check::not_ok(
                    &name,
                    Status::Missing,
                    u.does,
                    Impact::Fatal,
                    "watch cannot load its probe: run it as root, or with CAP_BPF and CAP_PERFMON",
                )
            } else {
                Check::not_ok(&name, Status::Missing, u.does, Impact::Degraded, u.loses)
            }
        })
        .collect()
}

/// `1.5 MiB`, `8 MiB`, `unlimited`.
fn bytes(n: u64) -> String {
    if n == libc::RLIM_INFINITY {
        "unlimited".to_owned()
    } else if n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else {
        format!("{:.1} MiB", n as f64 / f64::from(1 << 20))
    }
}

fn memlock_check(kernel: &str) -> Check {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Check::ok("memlock", "RLIMIT_MEMLOCK unreadable");
    }
    let limit = format!(
        "RLIMIT_MEMLOCK {} (hard {})",
        bytes(lim.rlim_cur),
        bytes(lim.rlim_max)
    );
    // Since 5.11 BPF memory is charged to the memory cgroup, not to this limit.
    let detail = if kernel_version(kernel).is_some_and(|v| v >= (5, 11)) {
        format!("{limit}; Linux 5.11+ charges BPF memory to the memory cgroup instead")
    } else {
        format!("{limit}; watch lifts it at start (BPF maps count against it before 5.11)")
    };
    Check::ok("memlock", detail)
}

fn btf_check() -> Check {
    match std::fs::metadata(BTF) {
        Ok(m) => Check::ok("btf", format!("{BTF} ({})", bytes(m.len()))),
        Err(e) => Check::not_ok(
            "btf",
            Status::Missing,
            format!("{BTF}: {e} (CONFIG_DEBUG_INFO_BTF)"),
            Impact::None,
            "fentry/fexit and tp_btf cannot load; kprobes find tcp_recvmsg's flags by the \
             kernel version",
        ),
    }
}

/// Whether the probe can read each socket's network namespace: offsets from kernel BTF.
fn netns_check() -> Check {
    let offsets = std::fs::read(BTF)
        .map_err(|e| e.to_string())
        .and_then(|data| {
            btf::Btf::parse(&data)
                .and_then(|b| btf::netns_offsets(&b))
                .map_err(|e| e.to_string())
        });
    match offsets {
        Ok(o) => Check::ok(
            "netns",
            format!(
                "each socket's namespace read at sock+{} -> net+{} (offsets from BTF)",
                o.sk_net, o.net_inum
            ),
        ),
        Err(e) => Check::not_ok(
            "netns",
            Status::Missing,
            e,
            Impact::Degraded,
            "sockets in other network namespaces (containers) are not told apart, their owners \
             are not found, and --netns is refused",
        ),
    }
}

/// Finds tracefs (mounting it as `watch` would when privileged) and checks that the
/// transition tracepoint's format is readable.
fn tracefs_check(privileged: bool, checks: &mut Vec<Check>) -> Option<tracefs::Tracefs> {
    let cannot_attach = "watch cannot attach to tracepoints: aya resolves them through tracefs";
    let failed = |status, detail: String| {
        Check::not_ok("tracefs", status, detail, Impact::Fatal, cannot_attach)
    };
    let found = match tracefs::find() {
        tracefs::Found::Readable(t) => t,
        tracefs::Found::NotMounted if !privileged => {
            let detail = format!(
                "not mounted; watch mounts it at {} as root",
                tracefs::TRACEFS
            );
            checks.push(failed(Status::Missing, detail));
            return None;
        }
        // Mounts it, or says why it cannot be used (not readable, not mountable).
        _ => match tracefs::ensure() {
            Ok(t) => t,
            Err(e) => {
                checks.push(failed(Status::Failed, e.to_string()));
                return None;
            }
        },
    };
    let mounted = if found.mounted_by_us {
        "was not mounted; mounted it"
    } else {
        "mounted"
    };
    match crate::probe::read_offsets(&found) {
        Ok(offsets) => {
            let access = if offsets == tracer_common::KNOWN_LAYOUT {
                "the known layout, read in place"
            } else {
                "another layout, copied and read at its offsets"
            };
            checks.push(Check::ok(
                "tracefs",
                format!(
                    "{mounted} at {}; sock:inet_sock_set_state's format is readable ({access})",
                    found.path.display()
                ),
            ));
            Some(found)
        }
        Err(e) => {
            checks.push(Check::not_ok(
                "tracefs",
                Status::Failed,
                format!("{mounted} at {}; {e}", found.path.display()),
                Impact::Fatal,
                "no transitions: watch cannot run (sock:inet_sock_set_state needs Linux 4.16+)",
            ));
            None
        }
    }
}

/// Loads the probe and tries each of its programs: the transition tracepoint, tp_btf, and
/// every send/receive mechanism. Returns the mechanism `watch` would use.
fn trial_checks(tracefs: &tracefs::Tracefs, checks: &mut Vec<Check>) -> Option<IoMechanism> {
    let mut trial = match Trial::load(tracefs) {
        Ok(t) => t,
        Err(e) => {
            checks.push(Check::not_ok(
                "probe",
                Status::Failed,
                e.to_string(),
                Impact::Fatal,
                "watch cannot load its probe",
            ));
            return None;
        }
    };
    checks.push(match trial.try_hook(&TRANSITION_HOOK) {
        Ok(()) => Check::ok("probe", format!("{TRANSITION_HOOK}: loaded and attached")),
        Err(e) => Check::not_ok(
            "probe",
            Status::Failed,
            e,
            Impact::Fatal,
            "no transitions: watch cannot run",
        ),
    });
    checks.push(match trial.try_hook(&TP_BTF_TRANSITION_HOOK) {
        Ok(()) => Check::ok(
            "tp_btf",
            format!("{TP_BTF_TRANSITION_HOOK}: loaded and attached; watch uses it for transitions"),
        ),
        Err(e) => Check::not_ok(
            "tp_btf",
            Status::Failed,
            e,
            Impact::None,
            "watch attaches the classic tracepoint for transitions instead (it costs more per event)",
        ),
    });

    // Every mechanism is tried, even one whose check failed (the result is shown), but
    // only one that passes both can be used, as in `watch`.
    let mut results = Vec::new();
    for m in IoMechanism::ALL {
        let checked = trial
            .plan
            .failed
            .iter()
            .find(|(f, _)| *f == m)
            .map(|(_, why)| why.clone());
        let tried = m.hooks().iter().try_for_each(|h| trial.try_hook(h));
        results.push((m, checked, tried));
    }
    let chosen = results
        .iter()
        .find(|(_, checked, tried)| checked.is_none() && tried.is_ok())
        .map(|(m, _, _)| *m);
    let loses = match chosen {
        Some(c) => format!("nothing: {} work", c.described()),
        None => "see last_io".to_owned(),
    };
    for (m, checked, tried) in results {
        let name = format!("io {}", m.described());
        let hooks: Vec<String> = m.hooks().iter().map(|h| h.to_string()).collect();
        checks.push(match (checked, tried) {
            (None, Ok(())) => {
                Check::ok(&name, format!("{}: loaded and attached", hooks.join(", ")))
            }
            (None, Err(e)) => Check::not_ok(&name, Status::Failed, e, Impact::None, &loses),
            (Some(why), Err(e)) => Check::not_ok(
                &name,
                Status::Missing,
                format!("{why}; trying anyway: {e}"),
                Impact::None,
                &loses,
            ),
            (Some(why), Ok(())) => Check::not_ok(
                &name,
                Status::Failed,
                format!("{why} (its programs load and attach, but watch cannot use them)"),
                Impact::None,
                &loses,
            ),
        });
    }
    checks.push(match chosen {
        Some(m) => Check::ok("last_io", format!("from {}", m.described())),
        None => Check::not_ok(
            "last_io",
            Status::Missing,
            "no send/receive mechanism works here",
            Impact::Degraded,
            "stuck sockets come without their last send/receive, so no alert can say that the \
             owner read the end of stream",
        ),
    });
    chosen
}

fn sock_diag_check() -> Check {
    let all_states = !0u32;
    let counts: Result<Vec<usize>, io::Error> = [Family::Ipv4, Family::Ipv6]
        .into_iter()
        .map(|f| sock_diag::dump(f, all_states, false).map(|s| s.len()))
        .collect();
    match counts {
        Ok(n) => Check::ok(
            "sock_diag",
            format!("listed {} IPv4 and {} IPv6 TCP sockets", n[0], n[1]),
        ),
        Err(e) => {
            let module = if Path::new("/sys/module/tcp_diag").exists() {
                ""
            } else {
                " (is the tcp_diag module loaded?)"
            };
            Check::not_ok(
                "sock_diag",
                Status::Failed,
                format!("a TCP socket dump failed: {e}{module}"),
                Impact::Degraded,
                "stuck sockets come without their owners (pid, fd, uid, cgroup), and sockets \
                 open before the start are not tracked",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, impact: Impact) -> Check {
        Check {
            name: name.to_owned(),
            status: if impact == Impact::None {
                Status::Ok
            } else {
                Status::Failed
            },
            detail: "d".to_owned(),
            impact,
            loses: (impact != Impact::None).then(|| "l".to_owned()),
        }
    }

    #[test]
    fn the_worst_impact_decides_the_exit_status() {
        let report = |impacts: &[Impact]| {
            let checks = impacts.iter().map(|&i| check("c", i)).collect::<Vec<_>>();
            Report::new("6.1.0".into(), None, checks).exit_code
        };
        assert_eq!(report(&[Impact::None, Impact::None]), 0);
        assert_eq!(report(&[Impact::None, Impact::Degraded]), 1);
        assert_eq!(report(&[Impact::Degraded, Impact::Fatal]), 2);
    }

    #[test]
    fn text_names_each_loss_and_the_mechanism() {
        let mut checks = vec![check("privileges", Impact::None)];
        checks.push(Check::not_ok(
            "io kprobes",
            Status::Missing,
            "no kprobes",
            Impact::None,
            "nothing: tracepoints work",
        ));
        let report = Report::new("6.18.44".into(), Some(IoMechanism::Tracepoint), checks);
        let mut text = Vec::new();
        report.write(Format::Text, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert_eq!(
            text,
            "tracer doctor: Linux 6.18.44\n\
             \x20 ok       privileges  d\n\
             \x20 MISSING  io kprobes  no kprobes\n\
             \x20                      -> nothing: tracepoints work\n\
             verdict: watch can run fully (exit 0); last send/receive from \
             sock:sock_recv_length, sock:sock_send_length\n"
        );
        let mut json = Vec::new();
        report.write(Format::Json, &mut json).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["type"], "doctor");
        assert_eq!(v["verdict"], "full");
        assert_eq!(v["io_mechanism"], "tracepoint");
        assert_eq!(v["checks"][1]["status"], "missing");
        assert_eq!(v["checks"][1]["loses"], "nothing: tracepoints work");
    }

    #[test]
    fn sizes_read_as_mebibytes() {
        assert_eq!(bytes(8 << 20), "8 MiB");
        assert_eq!(bytes(3 << 19), "1.5 MiB");
        assert_eq!(bytes(libc::RLIM_INFINITY), "unlimited");
    }
}
