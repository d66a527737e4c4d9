//! Recordings for postmortems: `tracer watch --record FILE` writes one ([`writer`]),
//! `tracer report FILE` reads it back ([`reader`]) on any machine, without root.
//!
//! # Format, version 1
//! A file (one *segment* of a recording) is a 12-byte prologue, then entries:
//!
//! ```text
//! prologue: magic "\x89tracer\n" | major u16 LE | minor u16 LE
//! entry:    length u32 LE | CRC-32 (IEEE) of payload u32 LE | payload (postcard)
//! ```
//!
//! The payload is one [`Entry`] in postcard's encoding (varints, enum variant index
//! first). Entries are only appended; a crash cuts the file after some complete entries,
//! which the CRC and the length tell from the torn rest. The first entry of a segment is
//! its [`Header`], followed by a checkpoint: one [`Entry::Socket`] per socket the table
//! held, so that a segment can be read without those rotated away before it.
//!
//! Since 1.2, an entry about one socket (socket, transition, owners, stuck, resolved, gone)
//! carries after its 1.1 encoding the socket's network namespace inode (a varint), and a
//! header carries the tracer's own namespace and the `--netns` filter ([`HeaderExt`]).
//! Entries of older files have none: namespace 0, unknown. 1.2 also adds `NetnsUnreachable`
//! at the end of [`HeldByEntry`]; a 1.1 reader counts an owners entry that uses it as
//! damaged, and reads the rest.
//!
//! 1.3 adds [`Entry::Failed`]: writing stopped (a full disk, or `--record-max-size`
//! reached without room to rotate) and why. The writer keeps room allocated past the end
//! of the file for it and the stop entry after it (after the budget, a gap entry first).
//!
//! Compatibility: a reader refuses a newer major version, and major 0 (the development
//! format before the first release). Within a major version, a newer minor may add entry
//! kinds at the end of [`Entry`] (older readers skip and count them) and fields at the end
//! of an entry (older readers ignore trailing bytes). `tests/golden/` holds a recording of
//! format 1.0 that every later reader must report the same.

mod crc;
pub mod file;
pub mod reader;
pub mod writer;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{
    decode::Transition,
    model::{
        Comm, Endpoints, Family, HeldBy, IoOp, LastIo, Origin, Owner, Ownership, PidHint,
        ProcessInfo, Socket, SocketKey, State,
    },
};

/// First bytes of every segment: non-ASCII first, a newline last, so that text-mode
/// transfers and files of other kinds are told apart at once.
pub const MAGIC: [u8; 8] = *b"\x89tracer\n";
/// Format version written: entries change only by additions within a major version.
pub const VERSION: (u16, u16) = (1, 3);
/// Size of the prologue: magic and version.
pub const PROLOGUE_LEN: usize = 12;
/// Size of an entry's frame before the payload: length and CRC.
pub const FRAME_LEN: usize = 8;
/// Largest payload accepted; a larger length is corruption.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// One recorded entry. The order of the variants is part of the format: add new kinds at
/// the end only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Entry {
    /// What was recorded, where, and how: first in every segment. (Boxed, like `Owners`:
    /// rare entries must not make every queued transition larger; the encoding is the same.)
    Header(Box<Header>),
    /// A socket open when the recording (or the segment) started.
    Socket(SocketEntry),
    /// One state transition from the probe.
    Transition(TransitionEntry),
    /// The owners resolved for a socket the live run flagged.
    Owners(Box<OwnersEntry>),
    /// The live run flagged a socket as stuck.
    Stuck(StuckEntry),
    /// A socket the live run had flagged left its state.
    Resolved(ResolvedEntry),
    /// The probe's drop counter reached `total` (transitions lost before `ts_ns`).
    Lost { ts_ns: u64, total: u64 },
    /// The recorder could not keep up with the disk and left out `entries` entries here;
    /// before the stop entry of a recording that reached its budget, those left out since.
    Gap { entries: u64 },
    /// The live run ended normally. After a [`Entry::Failed`], written into the room kept
    /// for it.
    Stop(StopEntry),
    /// A socket the live run flagged was no longer in that state when it looked for its
    /// owners: its transition was lost. The live run dropped it without reporting it
    /// (since 1.1).
    Gone(GoneEntry),
    /// Writing the recording failed (a full disk), or the recording reached its budget
    /// without room to rotate: nothing after this entry was written but the stop entry
    /// (after the budget, behind a gap entry), which counts what was left out (since 1.3).
    Failed(FailedEntry),
}

/// Number of [`Entry`] kinds this build knows; higher variant indexes are skipped.
pub const ENTRY_KINDS: u32 = 11;

/// The first entry of each segment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Random number shared by the segments of one recording.
    pub recording: u64,
    /// 0 for the first segment, then one more per rotation.
    pub segment: u32,
    pub tracer_version: String,
    /// `uname -r` and host name of the recording machine.
    pub kernel: String,
    pub hostname: String,
    /// Wall-clock time at monotonic zero, in ns since the epoch: turns the monotonic
    /// timestamps of every entry into dates on any machine.
    pub clock_offset_ns: i64,
    /// When this segment started (monotonic ns).
    pub started_ns: u64,
    /// Live thresholds: `(state number, ms)`.
    pub thresholds: Vec<(u8, u64)>,
    /// Live filters applied in the kernel: what the recording can hold.
    pub ports: Vec<u16>,
    pub pid: Option<u32>,
    pub family: Option<FamilyEntry>,
    pub states: Vec<u8>,
    pub max_sockets: u32,
    /// How many [`Entry::Socket`] follow: the start-up snapshot in segment 0, the table's
    /// sockets at the rotation in later segments.
    pub checkpoint: u32,
    /// What 1.2 added, written after the rest (see the module's documentation).
    #[serde(skip)]
    pub ext: HeaderExt,
}

/// The header's fields since 1.2.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderExt {
    /// The tracer's own network namespace (inode); 0 when unknown.
    pub netns: u32,
    /// `--netns`: the namespaces the kernel kept (empty: all).
    pub netns_filter: Vec<u32>,
}

impl Entry {
    /// The socket an entry is about, for the kinds about one socket.
    fn ends_mut(&mut self) -> Option<&mut EndsEntry> {
        match self {
            Entry::Socket(e) => Some(&mut e.ends),
            Entry::Transition(e) => Some(&mut e.ends),
            Entry::Owners(e) => Some(&mut e.ends),
            Entry::Stuck(e) => Some(&mut e.ends),
            Entry::Resolved(e) => Some(&mut e.ends),
            Entry::Gone(e) => Some(&mut e.ends),
            Entry::Header(_)
            | Entry::Lost { .. }
            | Entry::Gap { .. }
            | Entry::Stop(_)
            | Entry::Failed(_) => None,
        }
    }

    /// Writes the entry's payload into `buf`: its postcard encoding, then the fields added
    /// since 1.1. `None` when `buf` is too small.
    pub fn encode_into<'b>(&self, buf: &'b mut [u8]) -> Option<&'b [u8]> {
        let main = postcard::to_slice(self, buf).ok()?.len();
        let ext = match self {
            Entry::Header(h) => postcard::to_slice(&h.ext, &mut buf[main..]).ok()?.len(),
            Entry::Socket(SocketEntry { ends, .. })
            | Entry::Transition(TransitionEntry { ends, .. })
            | Entry::Stuck(StuckEntry { ends, .. })
            | Entry::Resolved(ResolvedEntry { ends, .. })
            | Entry::Gone(GoneEntry { ends, .. }) => {
                postcard::to_slice(&ends.netns, &mut buf[main..])
                    .ok()?
                    .len()
            }
            Entry::Owners(o) => postcard::to_slice(&o.ends.netns, &mut buf[main..])
                .ok()?
                .len(),
            Entry::Lost { .. } | Entry::Gap { .. } | Entry::Stop(_) | Entry::Failed(_) => 0,
        };
        Some(&buf[..main + ext])
    }

    /// Reads a payload written by [`Entry::encode_into`] (or by an older version, without
    /// the later fields).
    pub fn decode(payload: &[u8]) -> Result<Entry, postcard::Error> {
        let (mut entry, rest) = postcard::take_from_bytes::<Entry>(payload)?;
        if rest.is_empty() {
            return Ok(entry);
        }
        if let Entry::Header(h) = &mut entry {
            if let Ok((ext, _)) = postcard::take_from_bytes::<HeaderExt>(rest) {
                h.ext = ext;
            }
        } else if let Some(ends) = entry.ends_mut() {
            if let Ok((netns, _)) = postcard::take_from_bytes::<u32>(rest) {
                ends.netns = netns;
            }
        }
        Ok(entry)
    }
}

/// Address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FamilyEntry {
    Ipv4,
    Ipv6,
}

impl From<Family> for FamilyEntry {
    fn from(f: Family) -> Self {
        match f {
            Family::Ipv4 => FamilyEntry::Ipv4,
            Family::Ipv6 => FamilyEntry::Ipv6,
        }
    }
}

impl From<FamilyEntry> for Family {
    fn from(f: FamilyEntry) -> Self {
        match f {
            FamilyEntry::Ipv4 => Family::Ipv4,
            FamilyEntry::Ipv6 => Family::Ipv6,
        }
    }
}

/// A socket's four-tuple, and its network namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndsEntry {
    pub family: FamilyEntry,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// Written after the entry since 1.2 (see the module's documentation).
    #[serde(skip)]
    pub netns: u32,
}

impl From<Endpoints> for EndsEntry {
    fn from(e: Endpoints) -> Self {
        EndsEntry {
            family: e.family.into(),
            saddr: e.saddr,
            sport: e.sport,
            daddr: e.daddr,
            dport: e.dport,
            netns: e.netns,
        }
    }
}

impl From<EndsEntry> for Endpoints {
    fn from(e: EndsEntry) -> Self {
        Endpoints {
            netns: e.netns,
            family: e.family.into(),
            saddr: e.saddr,
            sport: e.sport,
            daddr: e.daddr,
            dport: e.dport,
        }
    }
}

/// How the table knows a socket: its kernel address, or sock_diag's cookie for a socket
/// from the start-up snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyEntry {
    Sk(u64),
    Snapshot(u64),
}

impl From<SocketKey> for KeyEntry {
    fn from(k: SocketKey) -> Self {
        match k {
            SocketKey::Sk(sk) => KeyEntry::Sk(sk),
            SocketKey::Snapshot(c) => KeyEntry::Snapshot(c),
        }
    }
}

impl From<KeyEntry> for SocketKey {
    fn from(k: KeyEntry) -> Self {
        match k {
            KeyEntry::Sk(sk) => SocketKey::Sk(sk),
            KeyEntry::Snapshot(c) => SocketKey::Snapshot(c),
        }
    }
}

/// A task: pid and command name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEntry {
    pub pid: u32,
    #[serde(with = "comm_bytes")]
    pub comm: [u8; 16],
}

impl From<PidHint> for TaskEntry {
    fn from(h: PidHint) -> Self {
        TaskEntry {
            pid: h.pid,
            comm: comm_raw(&h.comm),
        }
    }
}

impl From<TaskEntry> for PidHint {
    fn from(t: TaskEntry) -> Self {
        PidHint {
            pid: t.pid,
            comm: Comm::new(t.comm),
        }
    }
}

/// A socket as the table held it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketEntry {
    pub key: KeyEntry,
    pub ends: EndsEntry,
    pub state: u8,
    /// When it entered `state` (monotonic ns); a lower bound when `since_is_lower_bound`.
    pub since_ns: u64,
    pub since_is_lower_bound: bool,
    pub origin: OriginEntry,
    pub hint: Option<TaskEntry>,
}

/// [`Origin`] on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OriginEntry {
    Accepted,
    Connected,
    Listener,
    Unknown,
}

impl SocketEntry {
    /// The entry of `socket`, held under `key`.
    pub fn new(key: SocketKey, socket: &Socket) -> Self {
        SocketEntry {
            key: key.into(),
            ends: socket.ends.into(),
            state: socket.state.0,
            since_ns: socket.since_ns,
            since_is_lower_bound: socket.since_is_lower_bound,
            origin: match socket.origin {
                Origin::Accepted => OriginEntry::Accepted,
                Origin::Connected => OriginEntry::Connected,
                Origin::Listener => OriginEntry::Listener,
                Origin::Unknown => OriginEntry::Unknown,
            },
            hint: socket.hint.map(TaskEntry::from),
        }
    }

    /// The socket it describes (not flagged: a report decides that by its own thresholds).
    pub fn socket(&self) -> (SocketKey, Socket) {
        let socket = Socket {
            id: 0,
            ends: self.ends.into(),
            state: State(self.state),
            since_ns: self.since_ns,
            since_is_lower_bound: self.since_is_lower_bound,
            origin: match self.origin {
                OriginEntry::Accepted => Origin::Accepted,
                OriginEntry::Connected => Origin::Connected,
                OriginEntry::Listener => Origin::Listener,
                OriginEntry::Unknown => Origin::Unknown,
            },
            hint: self.hint.map(PidHint::from),
            flagged: false,
            // Used only live, to tell a socket's send/receive note from an earlier one's.
            born_ns: 0,
        };
        (self.key.into(), socket)
    }
}

/// One transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionEntry {
    pub ts_ns: u64,
    /// Kernel addresses use all 64 bits: fixed width is shorter than a varint.
    #[serde(with = "postcard::fixint::le")]
    pub sk: u64,
    pub task: TaskEntry,
    pub tid: u32,
    pub ends: EndsEntry,
    pub old: u8,
    pub new: u8,
}

impl From<&Transition> for TransitionEntry {
    fn from(t: &Transition) -> Self {
        TransitionEntry {
            ts_ns: t.ts_ns,
            sk: t.sk,
            task: TaskEntry {
                pid: t.pid,
                comm: comm_raw(&t.comm),
            },
            tid: t.tid,
            ends: t.ends().into(),
            old: t.old.0,
            new: t.new.0,
        }
    }
}

impl From<&TransitionEntry> for Transition {
    fn from(e: &TransitionEntry) -> Self {
        Transition {
            ts_ns: e.ts_ns,
            sk: e.sk,
            pid: e.task.pid,
            tid: e.tid,
            comm: Comm::new(e.task.comm),
            netns: e.ends.netns,
            family: e.ends.family.into(),
            saddr: e.ends.saddr,
            sport: e.ends.sport,
            daddr: e.ends.daddr,
            dport: e.ends.dport,
            old: State(e.old),
            new: State(e.new),
        }
    }
}

/// The owners of a flagged socket, for the stay that began at `since_ns` in `state`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnersEntry {
    /// When they were resolved (monotonic ns).
    pub ts_ns: u64,
    pub ends: EndsEntry,
    pub state: u8,
    pub since_ns: u64,
    pub held_by: HeldByEntry,
    pub owners: Vec<OwnerEntry>,
    pub last_io: Option<IoEntry>,
}

/// [`HeldBy`] on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeldByEntry {
    Fd,
    AcceptQueue,
    Orphan,
    Gone,
    Unknown,
    NetnsUnreachable,
}

/// A process holding a socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerEntry {
    pub pid: u32,
    pub comm: String,
    pub cmdline: String,
    pub uid: u32,
    pub fd_limit: Option<u64>,
    pub cgroup: Option<String>,
    pub fds: Vec<i32>,
    pub fd_count: u64,
}

/// A socket's last send or receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoEntry {
    pub ts_ns: u64,
    pub task: TaskEntry,
    pub op: IoOpEntry,
}

/// [`IoOp`] on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoOpEntry {
    Recv,
    Send,
    Eof,
}

impl OwnersEntry {
    /// The entry for `ownership` of `socket`, resolved at `ts_ns`.
    pub fn new(ts_ns: u64, socket: &Socket, ownership: &Ownership) -> Self {
        OwnersEntry {
            ts_ns,
            ends: socket.ends.into(),
            state: socket.state.0,
            since_ns: socket.since_ns,
            held_by: match ownership.held_by {
                HeldBy::Fd => HeldByEntry::Fd,
                HeldBy::AcceptQueue => HeldByEntry::AcceptQueue,
                HeldBy::Orphan => HeldByEntry::Orphan,
                HeldBy::Gone => HeldByEntry::Gone,
                HeldBy::Unknown => HeldByEntry::Unknown,
                HeldBy::NetnsUnreachable => HeldByEntry::NetnsUnreachable,
            },
            owners: ownership
                .owners
                .iter()
                .map(|o| OwnerEntry {
                    pid: o.process.pid,
                    comm: o.process.comm.clone(),
                    cmdline: o.process.cmdline.clone(),
                    uid: o.process.uid,
                    fd_limit: o.process.fd_limit,
                    cgroup: o.process.cgroup.clone(),
                    fds: o.fds.clone(),
                    fd_count: o.fd_count as u64,
                })
                .collect(),
            last_io: ownership.last_io.map(|io| IoEntry {
                ts_ns: io.ts_ns,
                task: TaskEntry {
                    pid: io.pid,
                    comm: comm_raw(&io.comm),
                },
                op: match io.op {
                    IoOp::Recv => IoOpEntry::Recv,
                    IoOp::Send => IoOpEntry::Send,
                    IoOp::Eof => IoOpEntry::Eof,
                },
            }),
        }
    }

    /// The ownership it records.
    pub fn ownership(&self) -> Ownership {
        Ownership {
            held_by: match self.held_by {
                HeldByEntry::Fd => HeldBy::Fd,
                HeldByEntry::AcceptQueue => HeldBy::AcceptQueue,
                HeldByEntry::Orphan => HeldBy::Orphan,
                HeldByEntry::Gone => HeldBy::Gone,
                HeldByEntry::Unknown => HeldBy::Unknown,
                HeldByEntry::NetnsUnreachable => HeldBy::NetnsUnreachable,
            },
            owners: self
                .owners
                .iter()
                .map(|o| Owner {
                    process: ProcessInfo {
                        pid: o.pid,
                        comm: o.comm.clone(),
                        cmdline: o.cmdline.clone(),
                        uid: o.uid,
                        fd_limit: o.fd_limit,
                        cgroup: o.cgroup.clone(),
                    },
                    fds: o.fds.clone(),
                    fd_count: o.fd_count as usize,
                })
                .collect(),
            last_io: self.last_io.map(|io| LastIo {
                ts_ns: io.ts_ns,
                pid: io.task.pid,
                comm: Comm::new(io.task.comm),
                op: match io.op {
                    IoOpEntry::Recv => IoOp::Recv,
                    IoOpEntry::Send => IoOp::Send,
                    IoOpEntry::Eof => IoOp::Eof,
                },
            }),
        }
    }
}

/// A live stuck decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StuckEntry {
    pub ts_ns: u64,
    pub key: KeyEntry,
    pub ends: EndsEntry,
    pub state: u8,
    pub since_ns: u64,
    pub threshold_ms: u64,
}

/// A live resolution: the flagged socket left `state` for `new` at `ts_ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedEntry {
    pub ts_ns: u64,
    pub key: KeyEntry,
    pub ends: EndsEntry,
    pub state: u8,
    pub since_ns: u64,
    pub new: u8,
}

/// A flagged stay the live run found gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoneEntry {
    pub ts_ns: u64,
    pub key: KeyEntry,
    pub ends: EndsEntry,
    pub state: u8,
    pub since_ns: u64,
}

/// The end of a live run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopEntry {
    /// The time of the run's last summary (monotonic ns).
    pub ts_ns: u64,
    pub events: u64,
    pub lost: u64,
    /// Entries the recorder had to leave out (disk too slow, or failing).
    pub unrecorded: u64,
}

/// Writing the recording stopped at `ts_ns` (monotonic), for the reason `error`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedEntry {
    pub ts_ns: u64,
    /// What the system said, as `No space left on device (os error 28)`, or
    /// `--record-max-size 4MiB reached without room to rotate`.
    pub error: String,
}

/// The kernel's 16-byte command name.
fn comm_raw(c: &Comm) -> [u8; 16] {
    // The kernel's bytes with all after the name zeroed: one masked copy, where a copy of
    // the name's length was a call to memcpy per transition recorded.
    let (bytes, len) = c.raw();
    let mut raw = *bytes;
    for (i, b) in raw.iter_mut().enumerate() {
        if i >= len {
            *b = 0;
        }
    }
    raw
}

/// A command name is written without its NUL padding: length and bytes.
mod comm_bytes {
    use serde::{de, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(raw: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
        let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        s.serialize_bytes(&raw[..len])
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 16], D::Error> {
        struct Bytes;
        impl de::Visitor<'_> for Bytes {
            type Value = [u8; 16];
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("at most 16 bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<[u8; 16], E> {
                if v.len() > 16 {
                    return Err(E::invalid_length(v.len(), &self));
                }
                let mut raw = [0u8; 16];
                raw[..v.len()].copy_from_slice(v);
                Ok(raw)
            }
        }
        d.deserialize_bytes(Bytes)
    }
}

#[cfg(test)]
mod tests;
