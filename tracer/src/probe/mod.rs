//! Stage 1: loads the BPF probe, attaches it to `sock:inet_sock_set_state` (and to the best
//! send/receive hooks the kernel offers, which name a socket's users: see [`io`]), and hands
//! out its ring buffer, drop counters and per-socket last send/receive.

pub mod btf;
mod debug;
pub mod format;
pub mod io;
pub mod privileges;
pub mod tracefs;

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
};

use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{ProgramError, TracePoint},
    Btf, Ebpf, EbpfLoader,
};
use tracer_common::{
    FieldOffsets, NetnsOffsets, ProbeConfig, SocketIo, TcpState, KNOWN_LAYOUT, MAX_NETNS,
    MAX_PORTS, STAT_FILTERED, STAT_LOST, STAT_NOT_TCP, STAT_UNREADABLE, TRANSITION_EVENT_SIZE,
};

pub use io::{Hook, HookKind, IoChoice, IoMechanism, IoStatus};
pub use tracefs::Tracefs;

use crate::model::{Endpoints, Family, State};

/// The probe object built by `build.rs`; empty when no BPF toolchain was found at build time.
static PROBE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-probe.o"));

/// Tracepoint category and name the probe attaches to.
pub const TRACEPOINT: (&str, &str) = ("sock", "inet_sock_set_state");

/// Threads that may be inside `tcp_recvmsg` at once for the kprobe mechanism to follow:
/// its kretprobe finds the socket by thread (16 bytes of key and value each, allocated
/// up front, only when kprobes may be used).
const RECV_CALLS: u32 = 1 << 13;

/// Why the probe could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "this tracer binary was built without its BPF probe (no BPF toolchain at build time); \
         build it with `cargo xtask build`"
    )]
    NotBuilt,
    #[error("{0}")]
    Privileges(String),
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
    #[error(
        "cannot read the tracepoint format {path}: {source}{}",
        tracefs::read_hint(source)
    )]
    FormatRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unsupported tracepoint format {path}: {source}")]
    Format {
        path: PathBuf,
        source: format::FormatError,
    },
    #[error("loading the BPF probe failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error(
        "the BPF probe has no program {0}: the probe embedded in this binary is from another \
         version; rebuild with `cargo xtask build`"
    )]
    NoProgram(&'static str),
    #[error("loading the BPF program {program} failed: {source}")]
    LoadProgram {
        program: &'static str,
        source: ProgramError,
    },
    #[error("attaching to {target} failed: {source}")]
    Attach {
        target: String,
        source: ProgramError,
    },
    #[error("detaching the BPF program {program} failed: {source}")]
    Detach {
        program: &'static str,
        source: ProgramError,
    },
    #[error("reading the kernel's statistics of the BPF program {program} failed: {source}")]
    ProgramStats {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("reading the probe's map {name} failed: {source}")]
    Read {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("opening the probe's map {name} failed: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("at most {MAX_PORTS} ports can be filtered, got {0}")]
    TooManyPorts(usize),
    #[error("at most {MAX_NETNS} network namespaces can be filtered, got {0}")]
    TooManyNetns(usize),
    #[error("--netns needs the kernel's BTF ({path}) to read each socket's namespace: {error}", path = btf::VMLINUX)]
    NetnsUnknown { error: btf::BtfError },
    #[error("{0}")]
    Diagnostics(String),
    #[error(
        "TRACER_TRANSITION_PROBE=tp_btf, but the BTF-enabled tracepoint cannot be used here: \
         {0}; unset it to fall back to the classic tracepoint"
    )]
    TpBtfForced(String),
}

/// What the kernel keeps: the user's filters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// Keep a transition when either port is one of these (empty: all).
    pub ports: Vec<u16>,
    /// Keep only sockets in these network namespaces, by inode (empty: all).
    pub netns: Vec<u32>,
    /// Keep only this family.
    pub family: Option<Family>,
    /// Keep a transition when either side is one of these states (empty: all).
    pub states: Vec<TcpState>,
}

impl Filters {
    /// Whether a socket already in `state` passes the port, family, state and namespace
    /// filters: the probe's rule, for the sockets it never saw change (the start-up
    /// snapshot).
    pub fn admits_socket(&self, ends: &Endpoints, state: State) -> bool {
        let ports = [ends.sport, ends.dport];
        (self.ports.is_empty() || self.ports.iter().any(|p| ports.contains(p)))
            && self.family.is_none_or(|f| f == ends.family)
            && (self.netns.is_empty() || self.netns.contains(&ends.netns))
            && (self.states.is_empty() || self.states.iter().any(|&s| state == s.into()))
    }
}

/// The most CPUs the wakeup threshold is shared among (see [`RingConfig::with_bytes`]).
const WAKING_CPUS: u32 = 16;

/// Sizes of the ring buffer and its wakeup threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingConfig {
    /// Ring buffer size in bytes: a power of two, a multiple of the page size.
    pub bytes: u32,
    /// Events each CPU writes before it wakes the reader.
    pub wakeup_events: u32,
}

impl RingConfig {
    /// A ring of `bytes` on a machine of `cpus` possible CPUs. The probe wakes the reader
    /// once a quarter of the ring, at most 256 KiB, may be pending, each CPU after its share
    /// of that: under load one wakeup per ~1000 events per CPU instead of one per event, and
    /// room left for the burst that arrives before the reader runs. The share counts at most
    /// [`WAKING_CPUS`] CPUs, so that a large machine is not woken every few events; there the
    /// reader's own short poll bounds what is pending.
    pub fn with_bytes(bytes: u32, cpus: u32) -> Self {
        let pending = (bytes / 4).min(256 << 10);
        // Each record carries the ring's 8-byte header.
        let record = TRANSITION_EVENT_SIZE as u32 + 8;
        Self {
            bytes,
            wakeup_events: (pending / record / cpus.clamp(1, WAKING_CPUS)).max(1),
        }
    }
}

/// Diagnostics switches, from the environment: they force the paths other kernels take,
/// so each can be tested on a kernel that has a better one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics {
    /// `TRACER_RECORD_ACCESS=copy`: copy the tracepoint record even when its layout is known
    /// (this attaches the classic tracepoint, unless `TRACER_TRANSITION_PROBE` says else).
    pub access: RecordAccess,
    /// `TRACER_IO_PROBES=auto|tracepoint|fentry|kprobe|none`: the send/receive hooks to try.
    pub io: IoChoice,
    /// `TRACER_DEBUG=1`: the probe logs what should not happen, forwarded to stderr.
    pub debug: bool,
    /// `TRACER_TRANSITION_PROBE=auto|tp_btf|tracepoint`: the transition program to attach.
    pub transition: TransitionChoice,
}

/// Which transition program to attach (`TRACER_TRANSITION_PROBE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TransitionChoice {
    /// `tp_btf` where the kernel has BTF and accepts it, else the classic tracepoint.
    #[default]
    Auto,
    /// Only `tp_btf`: an error where it does not work.
    TpBtf,
    /// Only the classic tracepoint (the fallback path, for tests and diagnostics).
    Tracepoint,
}

impl TransitionChoice {
    /// The environment variable that forces a choice.
    pub const ENV: &'static str = "TRACER_TRANSITION_PROBE";
}

impl std::str::FromStr for TransitionChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "tp_btf" => Ok(Self::TpBtf),
            "tracepoint" => Ok(Self::Tracepoint),
            _ => Err(format!(
                "{}={s} is not one of auto, tp_btf, tracepoint",
                Self::ENV
            )),
        }
    }
}

/// The transition program attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransitionMechanism {
    /// `tp_btf/inet_sock_set_state`: reads the socket at offsets from kernel BTF.
    TpBtf,
    /// The classic tracepoint `sock:inet_sock_set_state`, through its trace record.
    Tracepoint,
}

impl TransitionMechanism {
    /// `tp_btf` or `tracepoint`, as the start record says.
    pub fn name(self) -> &'static str {
        match self {
            TransitionMechanism::TpBtf => "tp_btf",
            TransitionMechanism::Tracepoint => "tracepoint",
        }
    }

    /// The BPF program's name.
    fn program(self) -> &'static str {
        match self {
            TransitionMechanism::TpBtf => TP_BTF_TRANSITION_HOOK.program,
            TransitionMechanism::Tracepoint => TRACEPOINT.1,
        }
    }
}

impl Diagnostics {
    /// Reads the switches; a value that names nothing known is an error.
    pub fn from_env() -> Result<Diagnostics, ProbeError> {
        let access = match std::env::var_os("TRACER_RECORD_ACCESS") {
            Some(v) if v == "copy" => RecordAccess::Copy,
            _ => RecordAccess::Auto,
        };
        let io = match std::env::var(IoChoice::ENV) {
            Ok(v) if !v.is_empty() => v.parse().map_err(ProbeError::Diagnostics)?,
            _ => IoChoice::Auto,
        };
        let debug = std::env::var_os("TRACER_DEBUG").is_some_and(|v| v == "1");
        let transition = match std::env::var(TransitionChoice::ENV) {
            Ok(v) if !v.is_empty() => v.parse().map_err(ProbeError::Diagnostics)?,
            _ => TransitionChoice::Auto,
        };
        Ok(Diagnostics {
            access,
            io,
            debug,
            transition,
        })
    }
}

/// How the probe reads the tracepoint record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecordAccess {
    /// Straight from the context when the layout is [`KNOWN_LAYOUT`], else by copy.
    #[default]
    Auto,
    /// Always copy the record (the path other kernels' layouts take; for diagnostics).
    Copy,
}

impl RecordAccess {
    /// Whether the probe may load fields straight from the context for `offsets`.
    fn direct(self, offsets: &FieldOffsets) -> bool {
        self == RecordAccess::Auto && *offsets == KNOWN_LAYOUT
    }
}

impl Filters {
    /// The probe configuration for these filters over records laid out as `offsets` says.
    pub fn to_config(
        &self,
        offsets: FieldOffsets,
        ring: RingConfig,
        access: RecordAccess,
    ) -> Result<ProbeConfig, ProbeError> {
        if self.ports.len() > MAX_PORTS {
            return Err(ProbeError::TooManyPorts(self.ports.len()));
        }
        let mut cfg = ProbeConfig::new(offsets);
        cfg.ports[..self.ports.len()].copy_from_slice(&self.ports);
        cfg.port_count = self.ports.len() as u16;
        if self.netns.len() > MAX_NETNS {
            return Err(ProbeError::TooManyNetns(self.netns.len()));
        }
        cfg.netns[..self.netns.len()].copy_from_slice(&self.netns);
        cfg.netns_count = self.netns.len() as u32;
        cfg.family = self.family.map_or(0, Family::af);
        cfg.state_mask = self.states.iter().fold(0, |m, s| m | 1 << (*s as u8));
        cfg.wakeup_events = ring.wakeup_events;
        cfg.direct_access = access.direct(&offsets) as u32;
        Ok(cfg)
    }
}

/// The attached probe. Dropping it detaches the programs.
pub struct Probe {
    /// Holds the programs and their links.
    ebpf: Ebpf,
    stats: PerCpuArray<MapData, u64>,
    /// Last send/receive per socket; `None` without send/receive hooks.
    socket_io: Option<HashMap<MapData, u64, SocketIo>>,
    /// The probe's log, forwarded to stderr (`TRACER_DEBUG=1`).
    logs: Option<debug::Logs>,
    /// The send/receive hooks attached, or why there are none.
    pub io: IoStatus,
    /// How tracefs was found.
    pub tracefs: Tracefs,
    /// True when the probe reads fields straight from the tracepoint context.
    pub direct_access: bool,
    /// Whether the probe reads each socket's network namespace (at offsets from kernel
    /// BTF), or why not: then every namespace is reported as 0.
    pub netns: Result<NetnsOffsets, btf::BtfError>,
    /// What [`Probe::missed`] read last before the transition program was detached.
    missed_at_detach: Option<u64>,
    /// The transition program attached.
    pub transition: TransitionMechanism,
    /// Why `tp_btf` was not used when it was allowed (the classic tracepoint was).
    pub tp_btf_refused: Option<String>,
}

impl Probe {
    /// Checks privileges, finds (or mounts) tracefs, loads the probe with `filters` pushed
    /// into it, and attaches it. Returns it with the ring buffer its transitions arrive on.
    /// The best send/receive hooks the kernel accepts (of those `diagnostics.io` allows),
    /// remembering up to `io_sockets` sockets, are attached too; without any,
    /// [`IoStatus::off`] in [`Probe::io`] says why, and the rest works without them.
    pub fn attach(
        filters: &Filters,
        ring: RingConfig,
        diagnostics: &Diagnostics,
        io_sockets: u32,
    ) -> Result<(Probe, RingBuf<MapData>), ProbeError> {
        if PROBE_OBJECT.is_empty() {
            return Err(ProbeError::NotBuilt);
        }
        privileges::check()?;
        let tracefs = tracefs::ensure()?;
        let offsets = read_offsets(&tracefs)?;
        let mut config = filters.to_config(offsets, ring, diagnostics.access)?;
        let vmlinux = btf::read_vmlinux();
        let kernel_btf = btf::parse_read(&vmlinux);
        let parsed = || kernel_btf.as_ref().map_err(Clone::clone);
        let netns = parsed().and_then(btf::netns_offsets);
        let sock = parsed().and_then(btf::sock_offsets);
        if let Ok(off) = &sock {
            config.sock_offsets = *off;
        }
        match &netns {
            Ok(off) => config.netns_offsets = *off,
            Err(e) if !filters.netns.is_empty() => {
                return Err(ProbeError::NetnsUnknown { error: e.clone() })
            }
            Err(_) => {}
        }
        // The configuration is frozen at load time, before any hook is tried: it is set
        // for what may work. If every candidate then fails, the transition program forgets
        // notes at births in an empty map, a cheap miss.
        let plan = io::IoPlan::new(
            diagnostics.io,
            &tracefs.path,
            kernel_btf.as_ref(),
            sock.as_ref().map(|_| ()),
        );
        let any_io = !plan.candidates.is_empty();
        config.io_hints = any_io as u32;
        config.recv_flags_arg = plan.recv_flags_arg.unwrap_or(0);
        config.debug = diagnostics.debug as u32;
        let kprobes = plan.candidates.contains(&IoMechanism::Kprobe);

        privileges::raise_memlock_limit();
        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", &config, true)
            .map_max_entries("EVENTS", ring.bytes)
            // Maps are allocated whole at load time: only as big as what may use them.
            .map_max_entries("SOCKET_IO", if any_io { io_sockets.max(1) } else { 1 })
            .map_max_entries("RECV_ARGS", if kprobes { RECV_CALLS } else { 1 })
            // aya-log's ring: its default 128 KiB only when logging, a page otherwise.
            .map_max_entries("AYA_LOGS", if diagnostics.debug { 1 << 17 } else { 4096 })
            .load(PROBE_OBJECT)?;
        let logs = match diagnostics.debug {
            true => Some(debug::Logs::forward(&mut ebpf)?),
            false => None,
        };
        // Copying the record is the classic tracepoint's path: forcing it forces that program.
        let choice = match diagnostics.access {
            RecordAccess::Copy if diagnostics.transition == TransitionChoice::Auto => {
                TransitionChoice::Tracepoint
            }
            _ => diagnostics.transition,
        };
        let (transition, tp_btf_refused) = attach_transition(&mut ebpf, choice, &sock)?;
        let io = plan.attach(&mut ebpf)?;

        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(ProbeError::Map {
                name,
                source: aya::maps::MapError::InvalidName { name: name.into() },
            })
        };
        let ring =
            RingBuf::try_from(take(&mut ebpf, "EVENTS")?).map_err(|source| ProbeError::Map {
                name: "EVENTS",
                source,
            })?;
        let stats =
            PerCpuArray::try_from(take(&mut ebpf, "STATS")?).map_err(|source| ProbeError::Map {
                name: "STATS",
                source,
            })?;
        let socket_io = if io.mechanism.is_some() {
            let map = take(&mut ebpf, "SOCKET_IO")?;
            Some(HashMap::try_from(map).map_err(|source| ProbeError::Map {
                name: "SOCKET_IO",
                source,
            })?)
        } else {
            None
        };
        Ok((
            Probe {
                ebpf,
                stats,
                socket_io,
                logs,
                io,
                tracefs,
                direct_access: config.direct_access != 0,
                netns,
                missed_at_detach: None,
                transition,
                tp_btf_refused,
            },
            ring,
        ))
    }

    /// Detaches and unloads the programs, so that nothing more is written: what the ring
    /// buffer and the drop counter hold afterwards is final.
    pub fn detach(&mut self) -> Result<(), ProbeError> {
        // The kernel's count of missed runs goes with the program: read it last now.
        let missed = self.missed()?;
        self.missed_at_detach = Some(missed);
        let name = self.transition.program();
        if let Some(program) = self.ebpf.program_mut(name) {
            io::unload_program(program).map_err(|source| ProbeError::Detach {
                program: name,
                source,
            })?;
        }
        if let Some(m) = self.io.mechanism {
            io::unload_hooks(&mut self.ebpf, m.hooks())?;
        }
        if let Some(logs) = &self.logs {
            logs.flush();
        }
        Ok(())
    }

    /// The last send or receive the probe saw on the socket at kernel address `sk`, if
    /// any since that socket was born (and still remembered).
    pub fn last_io(&self, sk: u64) -> Result<Option<SocketIo>, ProbeError> {
        let Some(map) = &self.socket_io else {
            return Ok(None);
        };
        match map.get(&sk, 0) {
            Ok(io) => Ok(Some(io)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(ProbeError::Read {
                name: "SOCKET_IO",
                source,
            }),
        }
    }

    /// Events the probe had to drop because the ring buffer was full, summed over CPUs.
    pub fn lost(&self) -> Result<u64, ProbeError> {
        self.stat(STAT_LOST)
    }

    /// Transitions the probe skipped before the ring buffer, by reason, summed over CPUs.
    pub fn skipped(&self) -> Result<SkipCounts, ProbeError> {
        Ok(SkipCounts {
            unreadable: self.stat(STAT_UNREADABLE)?,
            not_tcp: self.stat(STAT_NOT_TCP)?,
            filtered: self.stat(STAT_FILTERED)?,
            missed: self.missed()?,
        })
    }

    /// Transitions the kernel did not run the probe for: a BPF program was already running
    /// on that CPU (a transition in an interrupt that came during one), and the kernel
    /// skips nested runs. Their sockets and ports are unknown, so the count may include
    /// transitions the filters would have left out. Read from the program's
    /// `recursion_misses` (Linux 5.12 and later; 0 before).
    pub fn missed(&self) -> Result<u64, ProbeError> {
        if let Some(missed) = self.missed_at_detach {
            return Ok(missed);
        }
        let name = self.transition.program();
        let stats_failed = |source| ProbeError::ProgramStats {
            program: name,
            source,
        };
        let program = self
            .ebpf
            .program(name)
            .ok_or_else(|| stats_failed(std::io::ErrorKind::NotFound.into()))?;
        let fd = program
            .fd()
            .map_err(|e| stats_failed(std::io::Error::other(e)))?;
        let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
        let info = std::fs::read_to_string(path).map_err(stats_failed)?;
        Ok(fdinfo_field(&info, "recursion_misses").unwrap_or(0))
    }

    /// The counter at `index` of `STATS`, summed over CPUs.
    fn stat(&self, index: u32) -> Result<u64, ProbeError> {
        let per_cpu = self
            .stats
            .get(&index, 0)
            .map_err(|source| ProbeError::Read {
                name: "STATS",
                source,
            })?;
        Ok(per_cpu.iter().sum())
    }
}

/// Where the fields of `sock:inet_sock_set_state` records are, from its format file.
pub fn read_offsets(tracefs: &Tracefs) -> Result<FieldOffsets, ProbeError> {
    let path = tracefs
        .path
        .join("events")
        .join(TRACEPOINT.0)
        .join(TRACEPOINT.1)
        .join("format");
    let text = std::fs::read_to_string(&path).map_err(|source| ProbeError::FormatRead {
        path: path.clone(),
        source,
    })?;
    format::parse(&text).map_err(|source| ProbeError::Format { path, source })
}

/// The transition program, as a hook to try on its own.
pub const TRANSITION_HOOK: Hook = Hook {
    program: TRACEPOINT.1,
    kind: HookKind::Tracepoint(TRACEPOINT.0),
    target: TRACEPOINT.1,
};

/// The transition program on the BTF-enabled tracepoint, preferred where it works.
pub const TP_BTF_TRANSITION_HOOK: Hook = Hook {
    program: "set_state_btf",
    kind: HookKind::TpBtf,
    target: TRACEPOINT.1,
};

/// The probe loaded with minimal maps but none of its programs, to try them one at a time
/// (`tracer doctor`). Dropping it unloads whatever is still loaded.
pub struct Trial {
    ebpf: Ebpf,
    btf: Option<Btf>,
    /// What the kernel offers each send/receive mechanism, checked before loading.
    pub plan: io::IoPlan,
}

impl Trial {
    /// Loads the probe as `watch` would with no filters (the transition record's layout
    /// read from `tracefs`), after checking privileges.
    pub fn load(tracefs: &Tracefs) -> Result<Trial, ProbeError> {
        if PROBE_OBJECT.is_empty() {
            return Err(ProbeError::NotBuilt);
        }
        privileges::check()?;
        let offsets = read_offsets(tracefs)?;
        // The smallest ring: a page.
        let ring = RingConfig::with_bytes(4096, 1);
        let mut config = Filters::default().to_config(offsets, ring, RecordAccess::Auto)?;
        // Without BTF the offsets stay 0 and tp_btf fails its check, as in `watch`.
        let vmlinux = btf::read_vmlinux();
        let kernel_btf = btf::parse_read(&vmlinux);
        let sock = kernel_btf
            .as_ref()
            .map_err(Clone::clone)
            .and_then(btf::sock_offsets);
        if let Ok(off) = &sock {
            config.sock_offsets = *off;
        }
        let plan = io::IoPlan::new(
            IoChoice::Auto,
            &tracefs.path,
            kernel_btf.as_ref(),
            sock.as_ref().map(|_| ()),
        );
        config.io_hints = 1;
        config.recv_flags_arg = plan.recv_flags_arg.unwrap_or(0);
        privileges::raise_memlock_limit();
        let ebpf = EbpfLoader::new()
            .override_global("CONFIG", &config, true)
            .map_max_entries("EVENTS", ring.bytes)
            .map_max_entries("SOCKET_IO", 1)
            .map_max_entries("RECV_ARGS", 1)
            .map_max_entries("AYA_LOGS", 4096)
            .load(PROBE_OBJECT)?;
        Ok(Trial {
            ebpf,
            btf: None,
            plan,
        })
    }

    /// Loads and attaches `hook`'s program, then detaches and unloads it; the error says
    /// which step failed, in one line.
    pub fn try_hook(&mut self, hook: &Hook) -> Result<(), String> {
        let tried = io::attach_hook(&mut self.ebpf, hook, &mut self.btf);
        let unloaded = io::unload_hooks(&mut self.ebpf, std::slice::from_ref(hook));
        tried?;
        unloaded.map_err(|e| e.to_string())
    }
}

/// Transitions the probe saw and did not pass on, by why; events the ring buffer had no
/// room for are counted apart (`lost`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SkipCounts {
    /// The record could not be read: 0 unless the probe and the kernel disagree.
    pub unreadable: u64,
    /// Not TCP over IPv4/IPv6 (the tracepoint also fires for other protocols).
    pub not_tcp: u64,
    /// Left out by `--port`, `--netns`, `--family` or `--state`.
    pub filtered: u64,
    /// Never seen: the kernel did not run the probe for them ([`Probe::missed`]).
    pub missed: u64,
}

impl std::fmt::Display for SkipCounts {
    /// The non-zero counts, e.g. `40 filtered out, 2 not TCP`; empty when all are 0.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts = [
            (self.filtered, "filtered out"),
            (self.not_tcp, "not TCP"),
            (self.unreadable, "unreadable"),
            (self.missed, "missed by the kernel"),
        ];
        let shown: Vec<String> = parts
            .iter()
            .filter(|(n, _)| *n != 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect();
        f.write_str(&shown.join(", "))
    }
}

/// The number a BPF object's `/proc/PID/fdinfo` gives for `field`, if it has one.
fn fdinfo_field(info: &str, field: &str) -> Option<u64> {
    info.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field).then(|| value.trim().parse().ok())?
    })
}

/// Attaches the transition program `choice` allows: `tp_btf` when the socket's offsets
/// (`sock`) are known and the kernel accepts it, else the classic tracepoint. Returns what
/// was attached and why `tp_btf` was not, if it was allowed and failed.
fn attach_transition(
    ebpf: &mut Ebpf,
    choice: TransitionChoice,
    sock: &Result<tracer_common::SockOffsets, btf::BtfError>,
) -> Result<(TransitionMechanism, Option<String>), ProbeError> {
    if choice == TransitionChoice::Tracepoint {
        attach_tracepoint(ebpf, TRACEPOINT)?;
        return Ok((TransitionMechanism::Tracepoint, None));
    }
    let tried = match sock {
        Ok(_) => io::attach_hook(ebpf, &TP_BTF_TRANSITION_HOOK, &mut None),
        Err(e) => Err(format!("the socket's field offsets are unknown: {e}")),
    };
    match tried {
        Ok(()) => Ok((TransitionMechanism::TpBtf, None)),
        Err(why) if choice == TransitionChoice::TpBtf => Err(ProbeError::TpBtfForced(why)),
        Err(why) => {
            // A half-loaded tp_btf program is unloaded before the fallback attaches.
            let _ = io::unload_hooks(ebpf, &[TP_BTF_TRANSITION_HOOK]);
            attach_tracepoint(ebpf, TRACEPOINT)?;
            Ok((TransitionMechanism::Tracepoint, Some(why)))
        }
    }
}

/// Loads the program named for tracepoint `tp` and attaches it there.
fn attach_tracepoint(ebpf: &mut Ebpf, tp: (&'static str, &'static str)) -> Result<(), ProbeError> {
    let loading = |source| ProbeError::LoadProgram {
        program: tp.1,
        source,
    };
    let program: &mut TracePoint = ebpf
        .program_mut(tp.1)
        .ok_or(ProbeError::NoProgram(tp.1))?
        .try_into()
        .map_err(loading)?;
    program.load().map_err(loading)?;
    program
        .attach(tp.0, tp.1)
        .map_err(|source| ProbeError::Attach {
            target: format!("tracepoint {}:{}", tp.0, tp.1),
            source,
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_sockets_pass_the_same_filters() {
        let f = Filters {
            ports: vec![61616],
            family: Some(Family::Ipv4),
            states: vec![TcpState::CloseWait],
            netns: vec![4026532001],
        };
        let at = |family, sport, dport, netns| {
            let ip = match family {
                Family::Ipv4 => std::net::Ipv4Addr::LOCALHOST.into(),
                Family::Ipv6 => std::net::Ipv6Addr::LOCALHOST.into(),
            };
            Endpoints {
                netns,
                family,
                saddr: ip,
                sport,
                daddr: ip,
                dport,
            }
        };
        let cw = State::from(TcpState::CloseWait);
        let ns = 4026532001;
        assert!(f.admits_socket(&at(Family::Ipv4, 61616, 40000, ns), cw));
        assert!(f.admits_socket(&at(Family::Ipv4, 40000, 61616, ns), cw));
        assert!(!f.admits_socket(&at(Family::Ipv4, 40000, 40001, ns), cw));
        assert!(!f.admits_socket(&at(Family::Ipv6, 61616, 40000, ns), cw));
        assert!(!f.admits_socket(&at(Family::Ipv4, 61616, 40000, ns + 1), cw));
        let established = TcpState::Established.into();
        assert!(!f.admits_socket(&at(Family::Ipv4, 61616, 40000, ns), established));
        assert!(Filters::default().admits_socket(&at(Family::Ipv6, 1, 2, 0), State(42)));
    }

    #[test]
    fn errors_name_what_failed() {
        let read = ProbeError::Read {
            name: "STATS",
            source: aya::maps::MapError::KeyNotFound,
        };
        assert!(read
            .to_string()
            .starts_with("reading the probe's map STATS failed"));
        let detach = ProbeError::Detach {
            program: "inet_sock_set_state",
            source: ProgramError::NotLoaded,
        };
        assert_eq!(
            detach.to_string(),
            "detaching the BPF program inet_sock_set_state failed: the program is not loaded"
        );
        let attach = ProbeError::Attach {
            target: "tracepoint sock:inet_sock_set_state".into(),
            source: ProgramError::AlreadyAttached,
        };
        assert!(attach
            .to_string()
            .starts_with("attaching to tracepoint sock:inet_sock_set_state failed"));
        let load = ProbeError::LoadProgram {
            program: "inet_sock_set_state",
            source: ProgramError::NotLoaded,
        };
        assert!(load
            .to_string()
            .starts_with("loading the BPF program inet_sock_set_state failed"));
    }

    #[test]
    fn skip_counts_show_what_is_not_zero() {
        assert_eq!(SkipCounts::default().to_string(), "");
        let counts = SkipCounts {
            unreadable: 1,
            not_tcp: 0,
            filtered: 40,
            missed: 3,
        };
        assert_eq!(
            counts.to_string(),
            "40 filtered out, 1 unreadable, 3 missed by the kernel"
        );
        assert_eq!(
            serde_json::to_value(counts).unwrap(),
            serde_json::json!({"unreadable":1,"not_tcp":0,"filtered":40,"missed":3})
        );
    }

    #[test]
    fn fdinfo_fields_are_found_by_name() {
        let info = "pos:\t0\nflags:\t02000002\nprog_type:\t5\nrun_cnt:\t0\nrecursion_misses:\t38\nverified_insns:\t412\n";
        assert_eq!(fdinfo_field(info, "recursion_misses"), Some(38));
        assert_eq!(fdinfo_field(info, "run_cnt"), Some(0));
        assert_eq!(fdinfo_field(info, "recursion"), None);
        assert_eq!(
            fdinfo_field("recursion_misses:\tmany\n", "recursion_misses"),
            None
        );
    }

    #[test]
    fn transition_choice_names_every_path() {
        assert_eq!("auto".parse(), Ok(TransitionChoice::Auto));
        assert_eq!("tp_btf".parse(), Ok(TransitionChoice::TpBtf));
        assert_eq!("tracepoint".parse(), Ok(TransitionChoice::Tracepoint));
        assert_eq!(
            "kprobe".parse::<TransitionChoice>(),
            Err("TRACER_TRANSITION_PROBE=kprobe is not one of auto, tp_btf, tracepoint".into())
        );
        assert_eq!(TransitionMechanism::TpBtf.program(), "set_state_btf");
        assert_eq!(TransitionMechanism::Tracepoint.program(), TRACEPOINT.1);
    }

    #[test]
    fn each_cpu_wakes_the_reader_after_its_share_of_a_quarter_ring() {
        // 16 MiB: 256 KiB may be pending, 2,730 records of 96 bytes.
        assert_eq!(RingConfig::with_bytes(16 << 20, 1).wakeup_events, 2730);
        assert_eq!(RingConfig::with_bytes(16 << 20, 2).wakeup_events, 1365);
        // A large machine shares it among 16, not one wakeup per few events.
        assert_eq!(RingConfig::with_bytes(16 << 20, 256).wakeup_events, 170);
        // A 4 KiB ring: 1 KiB, ten records; never fewer than one.
        assert_eq!(RingConfig::with_bytes(4096, 2).wakeup_events, 5);
        assert_eq!(RingConfig::with_bytes(4096, 64).wakeup_events, 1);
    }

    #[test]
    fn filters_become_probe_config() {
        let filters = Filters {
            ports: vec![61616, 8080],
            netns: vec![4026531840, 4026532000],
            family: Some(Family::Ipv6),
            states: vec![TcpState::CloseWait, TcpState::LastAck],
        };
        let ring = RingConfig {
            bytes: 1 << 20,
            wakeup_events: 40,
        };
        let cfg = filters
            .to_config(FieldOffsets::default(), ring, RecordAccess::Auto)
            .unwrap();
        assert_eq!(&cfg.ports[..3], &[61616, 8080, 0]);
        assert_eq!(cfg.port_count, 2);
        assert_eq!(&cfg.netns[..3], &[4026531840, 4026532000, 0]);
        assert_eq!(cfg.netns_count, 2);
        assert_eq!(cfg.family, 10);
        assert_eq!(cfg.state_mask, (1 << 8) | (1 << 9));
        assert_eq!(cfg.wakeup_events, 40);

        let all = Filters::default()
            .to_config(KNOWN_LAYOUT, ring, RecordAccess::Auto)
            .unwrap();
        assert_eq!(
            (all.port_count, all.netns_count, all.family, all.state_mask),
            (0, 0, 0, 0)
        );
        // Direct context loads only for the layout they were written for, and not when
        // the copy path is asked for.
        assert_eq!((cfg.direct_access, all.direct_access), (0, 1));
        let copy = Filters::default()
            .to_config(KNOWN_LAYOUT, ring, RecordAccess::Copy)
            .unwrap();
        assert_eq!(copy.direct_access, 0);

        let many = Filters {
            ports: (1..=9).collect(),
            ..Filters::default()
        };
        assert!(matches!(
            many.to_config(FieldOffsets::default(), ring, RecordAccess::Auto),
            Err(ProbeError::TooManyPorts(9))
        ));
    }
}
