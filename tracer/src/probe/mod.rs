//! Stage 1: loads the BPF probe, attaches it to `sock:inet_sock_set_state` (and, where the
//! kernel has them, to the send/receive tracepoints that name a socket's users), and hands
//! out its ring buffer, drop counters and per-socket last send/receive.

pub mod format;
mod privileges;
mod tracefs;

use std::{io, path::PathBuf};

use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
    Ebpf, EbpfLoader,
};
use tracer_common::{
    FieldOffsets, ProbeConfig, SocketIo, TcpState, KNOWN_LAYOUT, MAX_PORTS, STAT_LOST,
};

pub use tracefs::Tracefs;

use crate::model::{Family, State};

/// The probe object built by `build.rs`; empty when no BPF toolchain was found at build time.
static PROBE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-probe.o"));

/// Tracepoint category and name the probe attaches to.
pub const TRACEPOINT: (&str, &str) = ("sock", "inet_sock_set_state");

/// Tracepoints that run in the process receiving or sending on a socket (Linux 6.3+);
/// program names match the tracepoint names.
pub const IO_TRACEPOINTS: [(&str, &str); 2] =
    [("sock", "sock_recv_length"), ("sock", "sock_send_length")];

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
    #[error("{0}")]
    Tracefs(String),
    #[error("cannot read the tracepoint format {path}: {source}; run as root")]
    FormatRead { path: PathBuf, source: io::Error },
    #[error("unsupported tracepoint format {path}: {source}")]
    Format {
        path: PathBuf,
        source: format::FormatError,
    },
    #[error("loading the BPF probe failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("attaching to tracepoint sock:inet_sock_set_state failed: {0}")]
    Attach(#[from] aya::programs::ProgramError),
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
}

/// What the kernel keeps: the user's filters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// Keep a transition when either port is one of these (empty: all).
    pub ports: Vec<u16>,
    /// Keep only transitions run in this process's context.
    pub pid: Option<u32>,
    /// Keep only this family.
    pub family: Option<Family>,
    /// Keep a transition when either side is one of these states (empty: all).
    pub states: Vec<TcpState>,
}

impl Filters {
    /// Whether a socket already in `state` passes the port, family and state filters: the
    /// probe's rule, for the sockets it never saw change (the start-up snapshot).
    pub fn admits_socket(&self, family: Family, sport: u16, dport: u16, state: State) -> bool {
        (self.ports.is_empty() || self.ports.contains(&sport) || self.ports.contains(&dport))
            && self.family.is_none_or(|f| f == family)
            && (self.states.is_empty() || self.states.iter().any(|&s| state == s.into()))
    }
}

/// Sizes of the ring buffer and its wakeup threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingConfig {
    /// Ring buffer size in bytes: a power of two, a multiple of the page size.
    pub bytes: u32,
    /// Bytes pending before the probe wakes the reader.
    pub wakeup_bytes: u32,
}

impl RingConfig {
    /// A ring of `bytes`. The probe wakes the reader once a quarter of it, at most 256 KiB,
    /// is pending: under load that is one wakeup per ~3000 events instead of one per event,
    /// and it leaves room for the burst that arrives before the reader runs.
    pub fn with_bytes(bytes: u32) -> Self {
        Self {
            bytes,
            wakeup_bytes: (bytes / 4).min(256 << 10),
        }
    }
}

/// How the probe reads the tracepoint record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordAccess {
    /// Straight from the context when the layout is [`KNOWN_LAYOUT`], else by copy.
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
        cfg.pid = self.pid.unwrap_or(0);
        cfg.family = self.family.map_or(0, Family::af);
        cfg.state_mask = self.states.iter().fold(0, |m, s| m | 1 << (*s as u8));
        cfg.wakeup_bytes = ring.wakeup_bytes;
        cfg.direct_access = access.direct(&offsets) as u32;
        Ok(cfg)
    }
}

/// The attached probe. Dropping it detaches the programs.
pub struct Probe {
    /// Holds the programs and their links.
    ebpf: Ebpf,
    stats: PerCpuArray<MapData, u64>,
    /// Last send/receive per socket; `None` when the send/receive tracepoints are off.
    socket_io: Option<HashMap<MapData, u64, SocketIo>>,
    /// Why the send/receive tracepoints are off, when they are.
    pub io_off: Option<String>,
    /// How tracefs was found.
    pub tracefs: Tracefs,
    /// True when the probe reads fields straight from the tracepoint context.
    pub direct_access: bool,
}

impl Probe {
    /// Checks privileges, finds (or mounts) tracefs, loads the probe with `filters` pushed
    /// into it, and attaches it. Returns it with the ring buffer its transitions arrive on.
    /// The send/receive tracepoints, remembering up to `io_sockets` sockets, are attached
    /// when the kernel has them with the layout the probe reads; otherwise
    /// [`Probe::io_off`] says why not, and the rest works without them.
    pub fn attach(
        filters: &Filters,
        ring: RingConfig,
        access: RecordAccess,
        io_sockets: u32,
    ) -> Result<(Probe, RingBuf<MapData>), ProbeError> {
        if PROBE_OBJECT.is_empty() {
            return Err(ProbeError::NotBuilt);
        }
        privileges::check()?;
        let tracefs = tracefs::ensure()?;
        let format_path = tracefs
            .path
            .join("events")
            .join(TRACEPOINT.0)
            .join(TRACEPOINT.1)
            .join("format");
        let text =
            std::fs::read_to_string(&format_path).map_err(|source| ProbeError::FormatRead {
                path: format_path.clone(),
                source,
            })?;
        let offsets = format::parse(&text).map_err(|source| ProbeError::Format {
            path: format_path,
            source,
        })?;
        let mut config = filters.to_config(offsets, ring, access)?;
        let mut io_off = io_formats(&tracefs.path).err();
        config.io_hints = io_off.is_none() as u32;

        privileges::raise_memlock_limit();
        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", &config, true)
            .map_max_entries("EVENTS", ring.bytes)
            .map_max_entries("SOCKET_IO", io_sockets.max(1))
            .load(PROBE_OBJECT)?;
        attach_tracepoint(&mut ebpf, TRACEPOINT)?;
        if io_off.is_none() {
            for tp in IO_TRACEPOINTS {
                if let Err(e) = attach_tracepoint(&mut ebpf, tp) {
                    // The first line only: a verifier log may follow.
                    let e = e.to_string();
                    let e = e.lines().next().unwrap_or_default();
                    io_off = Some(format!(
                        "attaching to tracepoint {}:{} failed: {e}",
                        tp.0, tp.1
                    ));
                    // Half of them would cost every send or receive for nothing.
                    unload(&mut ebpf, &IO_TRACEPOINTS)?;
                    break;
                }
            }
        }

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
        let socket_io = if io_off.is_none() {
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
                io_off,
                tracefs,
                direct_access: config.direct_access != 0,
            },
            ring,
        ))
    }

    /// Detaches and unloads the programs, so that nothing more is written: what the ring
    /// buffer and the drop counter hold afterwards is final.
    pub fn detach(&mut self) -> Result<(), ProbeError> {
        unload(&mut self.ebpf, &[TRACEPOINT])?;
        unload(&mut self.ebpf, &IO_TRACEPOINTS)
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
        let per_cpu = self
            .stats
            .get(&STAT_LOST, 0)
            .map_err(|source| ProbeError::Map {
                name: "STATS",
                source,
            })?;
        Ok(per_cpu.iter().sum())
    }
}

/// Loads the program named for tracepoint `tp` and attaches it there.
fn attach_tracepoint(ebpf: &mut Ebpf, tp: (&str, &str)) -> Result<(), aya::programs::ProgramError> {
    let program: &mut TracePoint = ebpf
        .program_mut(tp.1)
        .ok_or(aya::programs::ProgramError::UnexpectedProgramType)?
        .try_into()?;
    program.load()?;
    program.attach(tp.0, tp.1)?;
    Ok(())
}

/// Detaches and unloads those of the programs for `tracepoints` that are loaded.
fn unload(ebpf: &mut Ebpf, tracepoints: &[(&str, &str)]) -> Result<(), ProbeError> {
    for (_, name) in tracepoints {
        if let Some(program) = ebpf.program_mut(name) {
            let program: &mut TracePoint = program.try_into()?;
            if program.fd().is_ok() {
                program.unload()?;
            }
        }
    }
    Ok(())
}

/// Checks that the send/receive tracepoints exist with the layout the probe reads.
fn io_formats(tracefs: &std::path::Path) -> Result<(), String> {
    for (category, name) in IO_TRACEPOINTS {
        let path = tracefs
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => {
                format!("this kernel has no tracepoint {category}:{name} (Linux 6.3+)")
            }
            _ => format!("cannot read {}: {e}", path.display()),
        })?;
        format::check_io(&text)
            .map_err(|e| format!("unsupported format {}: {e}", path.display()))?;
    }
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
            ..Filters::default()
        };
        let cw = State::from(TcpState::CloseWait);
        assert!(f.admits_socket(Family::Ipv4, 61616, 40000, cw));
        assert!(f.admits_socket(Family::Ipv4, 40000, 61616, cw));
        assert!(!f.admits_socket(Family::Ipv4, 40000, 40001, cw));
        assert!(!f.admits_socket(Family::Ipv6, 61616, 40000, cw));
        assert!(!f.admits_socket(Family::Ipv4, 61616, 40000, TcpState::Established.into()));
        assert!(Filters::default().admits_socket(Family::Ipv6, 1, 2, State(42)));
    }

    #[test]
    fn filters_become_probe_config() {
        let filters = Filters {
            ports: vec![61616, 8080],
            pid: Some(4242),
            family: Some(Family::Ipv6),
            states: vec![TcpState::CloseWait, TcpState::LastAck],
        };
        let ring = RingConfig {
            bytes: 1 << 20,
            wakeup_bytes: 4096,
        };
        let cfg = filters
            .to_config(FieldOffsets::default(), ring, RecordAccess::Auto)
            .unwrap();
        assert_eq!(&cfg.ports[..3], &[61616, 8080, 0]);
        assert_eq!(cfg.port_count, 2);
        assert_eq!(cfg.pid, 4242);
        assert_eq!(cfg.family, 10);
        assert_eq!(cfg.state_mask, (1 << 8) | (1 << 9));
        assert_eq!(cfg.wakeup_bytes, 4096);

        let all = Filters::default()
            .to_config(KNOWN_LAYOUT, ring, RecordAccess::Auto)
            .unwrap();
        assert_eq!(
            (all.port_count, all.pid, all.family, all.state_mask),
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
