//! The send/receive hooks behind a stuck socket's `last_io`: the best of four mechanisms
//! the running kernel accepts, tried in order, each failure falling back to the next.
//!
//! 1. the tracepoints `sock:sock_recv_length` / `sock:sock_send_length` (Linux 6.3+),
//!    BTF-enabled (`tp_btf`): the kernel hands over the socket without filling a record;
//! 2. the same tracepoints, classic: where the kernel lacks BTF or refuses `tp_btf`;
//! 3. fexit on `tcp_recvmsg` and fentry on `tcp_sendmsg` (BTF, BPF trampolines, and the
//!    `bpf_get_func_arg/ret` helpers of Linux 5.17+);
//! 4. kprobes: a kprobe and a kretprobe on `tcp_recvmsg`, a kprobe on `tcp_sendmsg`;
//!
//! else none, and the warning says what is lost. All live in the one probe object; the
//! programs of the mechanisms not used are never loaded.

use std::{fmt, io, path::Path, str::FromStr};

use aya::{
    programs::{BtfTracePoint, FEntry, FExit, KProbe, Program, ProgramError, TracePoint},
    Btf, Ebpf,
};

use super::{btf, format, ProbeError};

/// A way to see which process sends or receives on a TCP socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoMechanism {
    /// `tp_btf/sock_recv_length` and `tp_btf/sock_send_length`.
    TpBtf,
    /// `sock:sock_recv_length` and `sock:sock_send_length`.
    Tracepoint,
    /// fexit on `tcp_recvmsg`, fentry on `tcp_sendmsg`.
    Fentry,
    /// kprobe and kretprobe on `tcp_recvmsg`, kprobe on `tcp_sendmsg`.
    Kprobe,
}

impl IoMechanism {
    /// Every mechanism, best first: the order they are tried in.
    pub const ALL: [IoMechanism; 4] = [
        IoMechanism::TpBtf,
        IoMechanism::Tracepoint,
        IoMechanism::Fentry,
        IoMechanism::Kprobe,
    ];

    /// The name `TRACER_IO_PROBES` and `tracer doctor` use.
    pub fn name(self) -> &'static str {
        match self {
            IoMechanism::TpBtf => "tp_btf",
            IoMechanism::Tracepoint => "tracepoint",
            IoMechanism::Fentry => "fentry",
            IoMechanism::Kprobe => "kprobe",
        }
    }

    /// The mechanism in words, for messages.
    pub fn described(self) -> &'static str {
        match self {
            IoMechanism::TpBtf => "BTF-enabled tracepoints",
            IoMechanism::Tracepoint => "tracepoints",
            IoMechanism::Fentry => "fentry/fexit",
            IoMechanism::Kprobe => "kprobes",
        }
    }

    /// The programs this mechanism attaches, and where.
    pub fn hooks(self) -> &'static [Hook] {
        match self {
            IoMechanism::TpBtf => &[
                Hook {
                    program: "sock_recv_btf",
                    kind: HookKind::TpBtf,
                    target: "sock_recv_length",
                },
                Hook {
                    program: "sock_send_btf",
                    kind: HookKind::TpBtf,
                    target: "sock_send_length",
                },
            ],
            IoMechanism::Tracepoint => &[
                Hook {
                    program: "sock_recv_length",
                    kind: HookKind::Tracepoint("sock"),
                    target: "sock_recv_length",
                },
                Hook {
                    program: "sock_send_length",
                    kind: HookKind::Tracepoint("sock"),
                    target: "sock_send_length",
                },
            ],
            IoMechanism::Fentry => &[
                Hook {
                    program: "tcp_recvmsg_fexit",
                    kind: HookKind::FExit,
                    target: RECVMSG,
                },
                Hook {
                    program: "tcp_sendmsg_fentry",
                    kind: HookKind::FEntry,
                    target: SENDMSG,
                },
            ],
            IoMechanism::Kprobe => &[
                Hook {
                    program: "tcp_recvmsg_kprobe",
                    kind: HookKind::KProbe,
                    target: RECVMSG,
                },
                Hook {
                    program: "tcp_recvmsg_kretprobe",
                    kind: HookKind::KRetProbe,
                    target: RECVMSG,
                },
                Hook {
                    program: "tcp_sendmsg_kprobe",
                    kind: HookKind::KProbe,
                    target: SENDMSG,
                },
            ],
        }
    }
}

impl fmt::Display for IoMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kernel functions the fentry and kprobe mechanisms hook.
const RECVMSG: &str = "tcp_recvmsg";
const SENDMSG: &str = "tcp_sendmsg";

/// Which mechanisms to try: all in order, or one forced (the diagnostics switch
/// `TRACER_IO_PROBES`, to exercise a fallback on a kernel that has a better mechanism).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoChoice {
    /// The best that works.
    #[default]
    Auto,
    /// Only this one; if it fails, none (with the warning).
    Only(IoMechanism),
    /// None at all.
    Off,
}

impl IoChoice {
    /// The environment variable that forces a mechanism.
    pub const ENV: &'static str = "TRACER_IO_PROBES";

    /// The mechanisms to try, in order.
    fn candidates(self) -> Vec<IoMechanism> {
        match self {
            IoChoice::Auto => IoMechanism::ALL.to_vec(),
            IoChoice::Only(m) => vec![m],
            IoChoice::Off => Vec::new(),
        }
    }
}

impl FromStr for IoChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IoChoice::Auto),
            "none" => Ok(IoChoice::Off),
            _ => IoMechanism::ALL
                .into_iter()
                .find(|m| m.name() == s)
                .map(IoChoice::Only)
                .ok_or_else(|| {
                    format!(
                        "{}={s} is not one of auto, tp_btf, tracepoint, fentry, kprobe, none",
                        Self::ENV
                    )
                }),
        }
    }
}

/// One program of a mechanism and where it attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hook {
    /// The program's name in the probe object.
    pub program: &'static str,
    pub kind: HookKind,
    /// The tracepoint's name, or the kernel function's.
    pub target: &'static str,
}

/// How a [`Hook`] attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookKind {
    /// A tracepoint in this category.
    Tracepoint(&'static str),
    /// A BTF-enabled tracepoint (`tp_btf`).
    TpBtf,
    FEntry,
    FExit,
    KProbe,
    KRetProbe,
}

impl fmt::Display for Hook {
    /// `sock:sock_recv_length`, `fexit:tcp_recvmsg`, `kretprobe:tcp_recvmsg`...
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self.kind {
            HookKind::Tracepoint(category) => category,
            HookKind::TpBtf => "tp_btf",
            HookKind::FEntry => "fentry",
            HookKind::FExit => "fexit",
            HookKind::KProbe => "kprobe",
            HookKind::KRetProbe => "kretprobe",
        };
        write!(f, "{prefix}:{}", self.target)
    }
}

/// What this kernel offers, found before the probe is loaded (its read-only configuration
/// depends on it): the mechanisms worth trying, and why the others are not.
#[derive(Debug)]
pub struct IoPlan {
    choice: IoChoice,
    /// In order of preference.
    pub candidates: Vec<IoMechanism>,
    /// Mechanisms that failed their check, with the reason.
    pub failed: Vec<(IoMechanism, String)>,
    /// Where `tcp_recvmsg`'s flags are (for fexit and kprobes).
    pub recv_flags_arg: Option<u32>,
}

impl IoPlan {
    /// Checks each mechanism `choice` allows, without loading anything, against the
    /// kernel's BTF `btf`. `sock` is whether the probe knows where the socket's fields are
    /// (from BTF), which `tp_btf` needs.
    pub fn new(
        choice: IoChoice,
        tracefs: &Path,
        btf: Result<&btf::Btf<'_>, &btf::BtfError>,
        sock: Result<(), &btf::BtfError>,
    ) -> IoPlan {
        let mut plan = IoPlan {
            choice,
            candidates: Vec::new(),
            failed: Vec::new(),
            recv_flags_arg: None,
        };
        for m in choice.candidates() {
            let checked = match m {
                IoMechanism::TpBtf => tp_btf_tracepoints(btf, sock),
                IoMechanism::Tracepoint => tracepoint_formats(tracefs),
                IoMechanism::Fentry => recv_flags_from_btf(btf),
                IoMechanism::Kprobe => {
                    kprobes_available(tracefs).and_then(|()| recv_flags_for_kprobes(btf))
                }
            };
            match checked {
                Ok(flags) => {
                    plan.recv_flags_arg = plan.recv_flags_arg.or(flags);
                    plan.candidates.push(m);
                }
                Err(why) => plan.failed.push((m, why)),
            }
        }
        plan
    }

    /// Attaches the first candidate that loads and attaches, unloading what a failed one
    /// loaded. Errors only when unloading fails.
    pub fn attach(mut self, ebpf: &mut Ebpf) -> Result<IoStatus, ProbeError> {
        let mut btf = None;
        for &m in &self.candidates {
            match attach_mechanism(ebpf, m, &mut btf)? {
                Ok(()) => {
                    return Ok(IoStatus {
                        mechanism: Some(m),
                        probes: m.hooks().iter().map(Hook::to_string).collect(),
                        off: None,
                    })
                }
                Err(why) => self.failed.push((m, why)),
            }
        }
        Ok(IoStatus {
            mechanism: None,
            probes: Vec::new(),
            off: Some(self.off_reason()),
        })
    }

    /// The warning for a run without send/receive hooks: why, and what it loses.
    fn off_reason(&self) -> String {
        let why = match self.choice {
            IoChoice::Off => format!("send/receive hooks are off ({}=none)", IoChoice::ENV),
            IoChoice::Only(m) => {
                let why = self
                    .failed
                    .iter()
                    .map(|(_, why)| why.as_str())
                    .collect::<Vec<_>>();
                format!(
                    "{}={m} forces {}, which failed ({})",
                    IoChoice::ENV,
                    m.described(),
                    why.join("; ")
                )
            }
            IoChoice::Auto => {
                let tried: Vec<String> = self
                    .failed
                    .iter()
                    .map(|(m, why)| format!("{}: {why}", m.described()))
                    .collect();
                format!(
                    "no send/receive hook works on this kernel ({})",
                    tried.join("; ")
                )
            }
        };
        format!(
            "{why}; stuck sockets are reported without their last send/receive, so no alert \
             can say that the owner read the end of stream"
        )
    }
}

/// The send/receive hooks attached.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IoStatus {
    /// The mechanism in use, if any.
    pub mechanism: Option<IoMechanism>,
    /// Its hooks, e.g. `["fexit:tcp_recvmsg", "fentry:tcp_sendmsg"]`; empty without one.
    pub probes: Vec<String>,
    /// Without one: the warning that says why, and what is lost.
    pub off: Option<String>,
}

/// Checks that both send/receive tracepoints exist with the layout the probe reads, naming
/// every one that is missing.
fn tracepoint_formats(tracefs: &Path) -> Result<Option<u32>, String> {
    let mut missing = Vec::new();
    for hook in IoMechanism::Tracepoint.hooks() {
        let HookKind::Tracepoint(category) = hook.kind else {
            continue;
        };
        let path = tracefs
            .join("events")
            .join(category)
            .join(hook.target)
            .join("format");
        match std::fs::read_to_string(&path) {
            Ok(text) => format::check_io(&text)
                .map_err(|e| format!("unsupported format {}: {e}", path.display()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(hook.to_string()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        }
    }
    match missing.len() {
        0 => Ok(None),
        1 => Err(format!(
            "this kernel has no tracepoint {} (Linux 6.3+)",
            missing[0]
        )),
        _ => Err(format!(
            "this kernel has no tracepoints {} (Linux 6.3+)",
            missing.join(" and ")
        )),
    }
}

/// Checks that the kernel's BTF has both send/receive tracepoints, and the probe the
/// socket's field offsets.
fn tp_btf_tracepoints(
    btf: Result<&btf::Btf<'_>, &btf::BtfError>,
    sock: Result<(), &btf::BtfError>,
) -> Result<Option<u32>, String> {
    sock.map_err(|e| format!("the socket's fields are not known: {e}"))?;
    let btf = btf.map_err(|e| e.to_string())?;
    let missing: Vec<_> = IoMechanism::TpBtf
        .hooks()
        .iter()
        .map(|hook| hook.target)
        .filter(|target| !btf::has_raw_tracepoint(btf, target))
        .collect();
    match missing.len() {
        0 => Ok(None),
        _ => Err(format!(
            "this kernel has no tracepoint {} (Linux 6.3+)",
            missing.join(" or ")
        )),
    }
}

/// Where `flags` is among `tcp_recvmsg`'s parameters, from their names: 3 since Linux 5.19
/// (`sk, msg, len, flags, addr_len`), 4 before (`sk, msg, len, nonblock, flags, addr_len`).
pub fn recv_flags_position(params: &[String]) -> Result<u32, String> {
    let flags = params.iter().position(|p| p == "flags");
    match flags {
        Some(at @ (3 | 4)) if params[0] == "sk" => Ok(at as u32),
        _ => Err(format!(
            "{RECVMSG}({}) is not a signature the probe knows",
            params.join(", ")
        )),
    }
}

/// Checks both functions in BTF (fentry and fexit attach by their BTF ids) and returns where
/// `tcp_recvmsg`'s flags are.
fn recv_flags_from_btf(btf: Result<&btf::Btf<'_>, &btf::BtfError>) -> Result<Option<u32>, String> {
    let btf = btf.map_err(|e| e.to_string())?;
    let params = |f: &str| btf::function_params(btf, f).map_err(|e| e.to_string());
    params(SENDMSG)?;
    recv_flags_position(&params(RECVMSG)?).map(Some)
}

/// Whether this kernel can attach kprobes: through the kprobe PMU (4.17+) or tracefs'
/// `kprobe_events`, which aya uses in that order.
fn kprobes_available(tracefs: &Path) -> Result<(), String> {
    if Path::new("/sys/bus/event_source/devices/kprobe/type").exists()
        || tracefs.join("kprobe_events").exists()
    {
        Ok(())
    } else {
        Err("this kernel has no kprobes (CONFIG_KPROBES is off)".to_owned())
    }
}

/// `tcp_recvmsg`'s flags position for kprobes: from BTF when the kernel has it, else from
/// the kernel version (the signature changed in 5.19).
fn recv_flags_for_kprobes(
    btf: Result<&btf::Btf<'_>, &btf::BtfError>,
) -> Result<Option<u32>, String> {
    if let Ok(btf) = btf {
        let params = btf::function_params(btf, RECVMSG).map_err(|e| e.to_string())?;
        return recv_flags_position(&params).map(Some);
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_err(|e| format!("cannot read the kernel version: {e}"))?;
    let version = kernel_version(&release)
        .ok_or_else(|| format!("cannot read the kernel version {:?}", release.trim()))?;
    Ok(Some(if version >= (5, 19) { 3 } else { 4 }))
}

/// `(major, minor)` of a release such as `6.1.0-28-cloud-amd64`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Loads and attaches every hook of `m`. `Ok(Err(why))` when the kernel refuses one (what
/// was loaded is unloaded again: half a mechanism would cost every send or receive for
/// nothing); `Err` only when that unloading fails.
fn attach_mechanism(
    ebpf: &mut Ebpf,
    m: IoMechanism,
    btf: &mut Option<Btf>,
) -> Result<Result<(), String>, ProbeError> {
    for hook in m.hooks() {
        if let Err(why) = attach_hook(ebpf, hook, btf) {
            unload_hooks(ebpf, m.hooks())?;
            return Ok(Err(why));
        }
    }
    Ok(Ok(()))
}

/// Loads and attaches one hook; the error says which step failed, in one line.
pub fn attach_hook(ebpf: &mut Ebpf, hook: &Hook, btf: &mut Option<Btf>) -> Result<(), String> {
    let loading = |e: ProgramError| format!("loading {hook} failed: {}", one_line(&e));
    let attaching = |e: ProgramError| format!("attaching {hook} failed: {}", one_line(&e));
    let program = ebpf
        .program_mut(hook.program)
        .ok_or_else(|| format!("the probe has no program {}", hook.program))?;
    match hook.kind {
        HookKind::Tracepoint(category) => {
            let p: &mut TracePoint = program.try_into().map_err(loading)?;
            p.load().map_err(loading)?;
            p.attach(category, hook.target).map_err(attaching)?;
        }
        HookKind::TpBtf | HookKind::FEntry | HookKind::FExit => {
            if btf.is_none() {
                *btf = Some(Btf::from_sys_fs().map_err(|e| {
                    format!("loading {hook} failed: reading the kernel's BTF failed: {e}")
                })?);
            }
            let btf = btf.as_ref().expect("set above");
            match hook.kind {
                HookKind::TpBtf => {
                    let p: &mut BtfTracePoint = program.try_into().map_err(loading)?;
                    p.load(hook.target, btf).map_err(loading)?;
                    p.attach().map_err(attaching)?;
                }
                HookKind::FEntry => {
                    let p: &mut FEntry = program.try_into().map_err(loading)?;
                    p.load(hook.target, btf).map_err(loading)?;
                    p.attach().map_err(attaching)?;
                }
                _ => {
                    let p: &mut FExit = program.try_into().map_err(loading)?;
                    p.load(hook.target, btf).map_err(loading)?;
                    p.attach().map_err(attaching)?;
                }
            }
        }
        HookKind::KProbe | HookKind::KRetProbe => {
            let p: &mut KProbe = program.try_into().map_err(loading)?;
            p.load().map_err(loading)?;
            p.attach(hook.target, 0).map_err(attaching)?;
        }
    }
    Ok(())
}

/// Detaches and unloads those of `hooks`' programs that are loaded.
pub fn unload_hooks(ebpf: &mut Ebpf, hooks: &[Hook]) -> Result<(), ProbeError> {
    for hook in hooks {
        if let Some(program) = ebpf.program_mut(hook.program) {
            unload_program(program).map_err(|source| ProbeError::Detach {
                program: hook.program,
                source,
            })?;
        }
    }
    Ok(())
}

/// Detaches and unloads `program` if it is loaded.
pub fn unload_program(program: &mut Program) -> Result<(), ProgramError> {
    if program.fd().is_err() {
        return Ok(());
    }
    match program {
        Program::TracePoint(p) => p.unload(),
        Program::FEntry(p) => p.unload(),
        Program::FExit(p) => p.unload(),
        Program::KProbe(p) => p.unload(),
        Program::BtfTracePoint(p) => p.unload(),
        _ => Err(ProgramError::UnexpectedProgramType),
    }
}

/// A program error in one line, with its causes: the verifier's log, which may follow, is
/// left out.
pub fn one_line(e: &ProgramError) -> String {
    if let ProgramError::LoadError { io_error, .. } = e {
        return format!("the kernel refused it: {io_error}");
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text.lines().next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(params: &[&str]) -> Vec<String> {
        params.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn finds_recvmsg_flags_in_both_signatures() {
        // 5.19 and later, then 5.18 and earlier (with `nonblock`).
        let new = names(&["sk", "msg", "len", "flags", "addr_len"]);
        let old = names(&["sk", "msg", "len", "nonblock", "flags", "addr_len"]);
        assert_eq!(recv_flags_position(&new), Ok(3));
        assert_eq!(recv_flags_position(&old), Ok(4));
        let odd = names(&["sk", "flags", "msg"]);
        assert_eq!(
            recv_flags_position(&odd),
            Err("tcp_recvmsg(sk, flags, msg) is not a signature the probe knows".to_owned())
        );
        assert!(recv_flags_position(&names(&["msg", "a", "b", "flags"])).is_err());
    }

    #[test]
    fn forced_mechanisms_parse() {
        assert_eq!("auto".parse(), Ok(IoChoice::Auto));
        assert_eq!("none".parse(), Ok(IoChoice::Off));
        assert_eq!("fentry".parse(), Ok(IoChoice::Only(IoMechanism::Fentry)));
        assert_eq!("kprobe".parse(), Ok(IoChoice::Only(IoMechanism::Kprobe)));
        assert_eq!(
            "tracepoint".parse(),
            Ok(IoChoice::Only(IoMechanism::Tracepoint))
        );
        let bad = "fexit".parse::<IoChoice>().unwrap_err();
        assert!(
            bad.starts_with("TRACER_IO_PROBES=fexit is not one of"),
            "{bad}"
        );
    }

    #[test]
    fn hooks_are_named_as_the_start_record_lists_them() {
        let names =
            |m: IoMechanism| -> Vec<String> { m.hooks().iter().map(Hook::to_string).collect() };
        assert_eq!(
            names(IoMechanism::Tracepoint),
            ["sock:sock_recv_length", "sock:sock_send_length"]
        );
        assert_eq!(
            names(IoMechanism::Fentry),
            ["fexit:tcp_recvmsg", "fentry:tcp_sendmsg"]
        );
        assert_eq!(
            names(IoMechanism::Kprobe),
            [
                "kprobe:tcp_recvmsg",
                "kretprobe:tcp_recvmsg",
                "kprobe:tcp_sendmsg"
            ]
        );
    }

    #[test]
    fn a_missing_tracepoint_pair_is_named_in_full() {
        // An empty tracefs: both are missing, and the message names both.
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            tracepoint_formats(dir.path()),
            Err("this kernel has no tracepoints sock:sock_recv_length and \
                 sock:sock_send_length (Linux 6.3+)"
                .to_owned())
        );
    }

    #[test]
    fn the_warning_says_what_is_lost() {
        let plan = IoPlan {
            choice: IoChoice::Auto,
            candidates: Vec::new(),
            failed: vec![
                (IoMechanism::Tracepoint, "no tracepoints".to_owned()),
                (IoMechanism::Fentry, "EPERM".to_owned()),
                (IoMechanism::Kprobe, "no kprobes".to_owned()),
            ],
            recv_flags_arg: None,
        };
        let why = plan.off_reason();
        assert!(
            why.starts_with(
                "no send/receive hook works on this kernel (tracepoints: no tracepoints; \
                 fentry/fexit: EPERM; kprobes: no kprobes); stuck sockets are reported \
                 without their last send/receive"
            ),
            "{why}"
        );
        assert!(!why.contains('\n'));
        let forced = IoPlan {
            choice: IoChoice::Only(IoMechanism::Fentry),
            failed: vec![(IoMechanism::Fentry, "EPERM".to_owned())],
            ..plan
        };
        assert!(forced
            .off_reason()
            .starts_with("TRACER_IO_PROBES=fentry forces fentry/fexit, which failed (EPERM); "));
        let off = IoPlan {
            choice: IoChoice::Off,
            failed: Vec::new(),
            ..forced
        };
        assert!(off
            .off_reason()
            .starts_with("send/receive hooks are off (TRACER_IO_PROBES=none); "));
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.1.0-28-cloud-amd64\n"), Some((6, 1)));
        assert_eq!(kernel_version("5.15.0"), Some((5, 15)));
        assert_eq!(kernel_version("6.18.44-fc-v782"), Some((6, 18)));
        assert_eq!(kernel_version("x"), None);
    }
}
