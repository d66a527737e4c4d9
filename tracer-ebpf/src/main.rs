//! Kernel side of the tracer: one program on `sock:inet_sock_set_state` that turns each TCP
//! state transition into a [`TransitionEvent`] in a ring buffer, after applying the user's
//! filters so that unwanted events never leave the kernel; and programs that remember, per
//! socket, the last process to receive or send on it ([`SocketIo`]), for userspace to read
//! when it flags one. Those come in four interchangeable sets, of which userspace loads the
//! best one the running kernel accepts: the tracepoints `sock:sock_recv_length` /
//! `sock:sock_send_length` (Linux 6.3+), BTF-enabled or classic, fexit/fentry on
//! `tcp_recvmsg` / `tcp_sendmsg` (BTF and trampolines), or kprobes on the same functions.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated as gen},
    macros::{btf_tracepoint, fentry, fexit, kprobe, kretprobe, map, tracepoint},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::{
        BtfTracePointContext, FEntryContext, FExitContext, ProbeContext, RetProbeContext,
        TracePointContext,
    },
    EbpfContext,
};
use aya_log_ebpf::{debug, warn};
use core::{mem::MaybeUninit, ptr::addr_of_mut};

use tracer_common::{
    is_birth, FieldOffsets, ProbeConfig, SockOffsets, SocketIo, TransitionEvent, AF_INET, AF_INET6,
    COMM_LEN, IO_EOF, IO_LAYOUT, IO_RECV, IO_SEND, IPPROTO_TCP, KNOWN_LAYOUT, MAX_NETNS, MAX_PORTS,
    MAX_RECORD_LEN, MSG_PEEK, STAT_COUNT, STAT_FILTERED, STAT_LOST, STAT_NOT_TCP, STAT_UNREADABLE,
};

/// Filters and field offsets; userspace overrides it at load time. The kernel freezes it
/// read-only, so the verifier sees constants and prunes the filters that are off.
#[no_mangle]
static CONFIG: ProbeConfig = ProbeConfig::new(FieldOffsets {
    skaddr: 0,
    oldstate: 0,
    newstate: 0,
    sport: 0,
    dport: 0,
    family: 0,
    protocol: 0,
    saddr: 0,
    daddr: 0,
    saddr_v6: 0,
    daddr_v6: 0,
    record_len: 0,
});

/// CONFIG as userspace loaded it. Its address goes through a volatile read, so the compiler
/// cannot fold the zeros CONFIG was compiled with, and each field used is a load from the
/// map where it is used (which the verifier, the map being frozen, knows as a constant). A
/// volatile copy of the whole struct instead cost about 80 instructions per run.
#[inline(always)]
fn config() -> &'static ProbeConfig {
    let at: *const ProbeConfig = &CONFIG;
    // SAFETY: reads the local just written; CONFIG is plain data that lives forever.
    unsafe { &*core::ptr::read_volatile(&at) }
}

/// Transitions for userspace. Its size is set by userspace at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 23, 0);

/// Per-CPU counters of skipped events, by reason (`STAT_LOST`: the ring buffer was full;
/// `STAT_UNREADABLE`, `STAT_NOT_TCP`, `STAT_FILTERED`).
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// Per CPU, the events written since it last woke the reader (see `wakeup_flags`).
#[map]
static UNWOKEN: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// The last send or receive on each TCP socket, by kernel address. Its size is set by
/// userspace at load time; LRU, so sockets nobody uses any more make room by themselves.
#[map]
static SOCKET_IO: LruHashMap<u64, SocketIo> = LruHashMap::with_max_entries(1 << 16, 0);

/// What a kprobe on `tcp_recvmsg` saw on entry, for the kretprobe, which only sees the
/// return value: keyed by the calling thread (`pid_tgid`). LRU, because a kretprobe can miss
/// a return (too many calls in flight) and leave an entry behind. Sized by userspace.
#[map]
static RECV_ARGS: LruHashMap<u64, RecvArgs> = LruHashMap::with_max_entries(1 << 13, 0);

/// `tcp_recvmsg`'s arguments the return needs.
#[derive(Clone, Copy)]
#[repr(C)]
struct RecvArgs {
    sk: u64,
    flags: u64,
}

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    // A tracepoint program's return value is ignored; a skipped event is only counted
    // (and, with TRACER_DEBUG, logged when it should not happen).
    if let Err(skip) = try_inet_sock_set_state(&ctx) {
        count(skip);
        if debug_on() {
            log_skip(&ctx, skip);
        }
    }
    0
}

/// Whether userspace asked for logs (`TRACER_DEBUG=1`). CONFIG is frozen read-only, so the
/// verifier knows the answer and drops the logging code when it is no.
#[inline(always)]
fn debug_on() -> bool {
    config().debug != 0
}

/// Logs the skips that should not happen: a record the probe cannot read, a full ring.
#[inline(always)]
fn log_skip<C: EbpfContext>(ctx: &C, skip: Skip) {
    if skip.stat == STAT_UNREADABLE {
        warn!(
            ctx,
            "inet_sock_set_state: record unreadable at byte {}: the format file and the record disagree",
            skip.at
        );
    } else if skip.stat == STAT_LOST {
        warn!(
            ctx,
            "inet_sock_set_state: ring buffer full, lost state {} -> {} of port {} -> {}",
            skip.old,
            skip.new,
            skip.sport,
            skip.dport
        );
    }
}

/// Why an event was not recorded: `stat` is its per-CPU counter in `STATS`, and the rest
/// what the log says about it. Every field is always set: an enum's payload is undefined
/// for the variants without one, and the verifier refuses the code that moves it around.
#[derive(Clone, Copy)]
struct Skip {
    stat: u32,
    /// Unreadable: the byte that could not be read.
    at: u16,
    /// Full: the transition's old and new states, local and remote ports.
    old: u32,
    new: u32,
    sport: u16,
    dport: u16,
}

impl Skip {
    /// Not TCP over IPv4 or IPv6.
    const NOT_TCP: Skip = Skip::of(STAT_NOT_TCP);
    /// Left out by the user's filters.
    const FILTERED: Skip = Skip::of(STAT_FILTERED);

    const fn of(stat: u32) -> Skip {
        Skip {
            stat,
            at: 0,
            old: 0,
            new: 0,
            sport: 0,
            dport: 0,
        }
    }

    /// The record could not be read (bad offsets or a fault) at byte `at`.
    #[inline(always)]
    fn unreadable(at: u16) -> Skip {
        Skip {
            at,
            ..Skip::of(STAT_UNREADABLE)
        }
    }

    /// The ring buffer was full.
    #[inline(always)]
    fn full(old: u32, new: u32, sport: u16, dport: u16) -> Skip {
        Skip {
            old,
            new,
            sport,
            dport,
            ..Skip::of(STAT_LOST)
        }
    }
}

/// Counts a skipped event in its `STATS` slot.
#[inline(always)]
fn count(skip: Skip) {
    if let Some(n) = STATS.get_ptr_mut(skip.stat) {
        // SAFETY: a per-CPU slot, touched only by this CPU with preemption disabled.
        unsafe { *n += 1 };
    }
}

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<(), Skip> {
    let cfg = config();
    if cfg.direct_access != 0 {
        // Userspace saw KNOWN_LAYOUT in the format file. CONFIG is frozen read-only, so the
        // verifier knows which branch runs; constant offsets become immediate loads from
        // the context: no helper call, no copy.
        let rec = Direct(ctx.as_ptr() as *const u8);
        record(
            cfg,
            &Record {
                rec: &rec,
                off: &KNOWN_LAYOUT,
            },
        )
    } else {
        let mut buf = RecordBuf::uninit();
        let rec = Copied::new(ctx, &cfg.offsets, &mut buf)?;
        record(
            cfg,
            &Record {
                rec: &rec,
                off: &cfg.offsets,
            },
        )
    }
}

/// The transition program on the BTF-enabled tracepoint: it gets the socket itself and
/// reads its fields where the kernel's BTF says they are (`CONFIG.sock_offsets`). Unlike the
/// classic tracepoint, the kernel fills no trace record first. Named apart from the classic
/// program within the kernel's 15 characters, so `bpftool` and `--probe-cost` tell them apart.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn set_state_btf(ctx: BtfTracePointContext) -> i32 {
    let cfg = config();
    // SAFETY: the tracepoint's arguments are (const struct sock *sk, int oldstate,
    // int newstate), each in a u64 slot.
    let transition = unsafe {
        BtfTransition {
            sock: Sock {
                sk: ctx.arg::<*const u8>(0),
                off: cfg.sock_offsets,
            },
            oldstate: ctx.arg::<u64>(1) as u32,
            newstate: ctx.arg::<u64>(2) as u32,
        }
    };
    if let Err(skip) = record(cfg, &transition) {
        count(skip);
        if debug_on() {
            log_skip(&ctx, skip);
        }
    }
    0
}

/// A socket handed to a `tp_btf` program, read at offsets from kernel BTF.
struct Sock {
    sk: *const u8,
    off: SockOffsets,
}

impl Sock {
    /// The `T` at byte `offset` of the socket.
    #[inline(always)]
    fn read<T: Copy>(&self, offset: u16) -> T {
        // SAFETY: `sk` is the kernel's trusted socket pointer and `offset` a constant the
        // verifier checks against the kernel's `struct sock` (or `inet_sock`) layout; a
        // load the kernel cannot do faults into 0 rather than crash.
        unsafe { core::ptr::read(self.sk.add(offset as usize).cast::<T>()) }
    }
}

impl Sock {
    /// The `T` at byte `offset` of the `inet_sock` this socket is, copied by a helper: the
    /// verifier refuses loads past `struct sock` through a `sock *`.
    #[inline(always)]
    fn read_beyond<T: Copy>(&self, offset: u16) -> Result<T, Skip> {
        let mut v = MaybeUninit::<T>::uninit();
        // SAFETY: the helper checks the kernel address and writes only into `v`.
        let r = unsafe {
            gen::bpf_probe_read_kernel(
                v.as_mut_ptr().cast(),
                core::mem::size_of::<T>() as u32,
                self.sk.add(offset as usize).cast(),
            )
        };
        if r != 0 {
            return Err(Skip::unreadable(offset));
        }
        // SAFETY: written by the helper, which returned success.
        Ok(unsafe { v.assume_init() })
    }

    /// `(protocol, family)`.
    #[inline(always)]
    fn proto_family(&self) -> (u16, u16) {
        (self.read(self.off.protocol), self.read(self.off.family))
    }
}

/// A `tp_btf` transition: the socket, and the states it moves between.
struct BtfTransition {
    sock: Sock,
    oldstate: u32,
    newstate: u32,
}

impl Transition for BtfTransition {
    #[inline(always)]
    fn proto_family(&self) -> Result<(u16, u16), Skip> {
        Ok(self.sock.proto_family())
    }
    #[inline(always)]
    fn states(&self) -> Result<(u32, u32), Skip> {
        Ok((self.oldstate, self.newstate))
    }
    #[inline(always)]
    fn skaddr(&self) -> Result<u64, Skip> {
        Ok(self.sock.sk as u64)
    }
    #[inline(always)]
    fn ports(&self) -> Result<(u16, u16), Skip> {
        let (sock, off) = (&self.sock, self.sock.off);
        let dport = u16::from_be(sock.read(off.dport));
        // `skc_num` is `inet_sport` in host order, a direct load, while the socket holds its
        // port; after it released it (the move to CLOSE) only `inet_sport` still has it.
        let num: u16 = sock.read(off.num);
        if num != 0 {
            return Ok((num, dport));
        }
        Ok((u16::from_be(sock.read_beyond(off.sport)?), dport))
    }
    #[inline(always)]
    fn addrs_v4(&self) -> Result<(u32, u32), Skip> {
        let (sock, off) = (&self.sock, self.sock.off);
        Ok((sock.read(off.saddr), sock.read(off.daddr)))
    }
    #[inline(always)]
    fn addrs_v6(&self) -> Result<([u64; 2], [u64; 2]), Skip> {
        let (sock, o) = (&self.sock, self.sock.off);
        Ok((
            [sock.read(o.saddr_v6), sock.read(o.saddr_v6 + 8)],
            [sock.read(o.daddr_v6), sock.read(o.daddr_v6 + 8)],
        ))
    }
    #[inline(always)]
    fn netns(&self, cfg: &ProbeConfig, _skaddr: u64) -> u32 {
        let off = cfg.netns_offsets;
        if off.sk_net == 0 {
            return 0;
        }
        // Loads through the kernel's typed pointers: a NULL `net` reads as 0.
        let net: *const u8 = self.sock.read(off.sk_net);
        if net.is_null() {
            return 0;
        }
        // SAFETY: as in `Sock::read`; `net` is the kernel's `struct net *` of the socket.
        unsafe { core::ptr::read(net.add(off.net_inum as usize).cast::<u32>()) }
    }
    #[inline(always)]
    fn comm(&self) -> [u64; 2] {
        task_comm(self.sock.off.task_comm)
    }
}

/// Where the tracepoint record's fields are read from.
trait Fields {
    /// Reads a plain integer `T` at byte `offset` of the record.
    fn read<T: Copy>(&self, offset: u16) -> Result<T, Skip>;
}

/// The tracepoint context itself, read at constant, naturally aligned offsets.
struct Direct(*const u8);

impl Fields for Direct {
    #[inline(always)]
    fn read<T: Copy>(&self, offset: u16) -> Result<T, Skip> {
        // SAFETY: only called with KNOWN_LAYOUT's or IO_LAYOUT's offsets, which the
        // kernel's own format files confirmed, are within the record and are aligned
        // (asserted in tracer-common); the verifier checks each constant-offset context
        // load again.
        Ok(unsafe { core::ptr::read(self.0.add(offset as usize).cast::<T>()) })
    }
}

/// Stack room for a copied record.
type RecordBuf = MaybeUninit<[u64; MAX_RECORD_LEN / 8]>;

/// A copy of the record on the stack, for layouts this build does not know. It borrows a
/// buffer in the caller's frame: moving 128 bytes around would copy them and overflow the
/// 512-byte BPF stack.
struct Copied<'a> {
    buf: &'a RecordBuf,
    len: usize,
}

impl<'a> Copied<'a> {
    #[inline(always)]
    fn new(
        ctx: &TracePointContext,
        offsets: &FieldOffsets,
        buf: &'a mut RecordBuf,
    ) -> Result<Self, Skip> {
        let len = offsets.record_len as u32;
        if len == 0 || len as usize > MAX_RECORD_LEN {
            return Err(Skip::unreadable(offsets.record_len));
        }
        // BPF has no native memset/memcpy (they become byte loops): the buffer stays
        // uninitialised for the helper to fill, and every read is integer-sized.
        // SAFETY: the context points at a record at least `record_len` long, as the format
        // file this length came from says; `buf` has room for MAX_RECORD_LEN bytes.
        if unsafe { gen::bpf_probe_read_kernel(buf.as_mut_ptr().cast(), len, ctx.as_ptr()) } != 0 {
            return Err(Skip::unreadable(0));
        }
        Ok(Copied {
            buf,
            len: len as usize,
        })
    }
}

impl Fields for Copied<'_> {
    #[inline(always)]
    fn read<T: Copy>(&self, offset: u16) -> Result<T, Skip> {
        let o = offset as usize;
        if o + core::mem::size_of::<T>() > self.len {
            return Err(Skip::unreadable(offset));
        }
        // SAFETY: within the bytes the helper initialised (checked above).
        Ok(unsafe { core::ptr::read_unaligned(self.buf.as_ptr().cast::<u8>().add(o).cast::<T>()) })
    }
}

/// One transition's fields, wherever they are read from: a classic tracepoint record, or
/// the socket itself (`tp_btf`).
trait Transition {
    /// `(protocol, family)`.
    fn proto_family(&self) -> Result<(u16, u16), Skip>;
    /// `(oldstate, newstate)`.
    fn states(&self) -> Result<(u32, u32), Skip>;
    /// The socket's kernel address.
    fn skaddr(&self) -> Result<u64, Skip>;
    /// `(sport, dport)`, host order.
    fn ports(&self) -> Result<(u16, u16), Skip>;
    /// IPv4 `(saddr, daddr)`, network order.
    fn addrs_v4(&self) -> Result<(u32, u32), Skip>;
    /// IPv6 `(saddr, daddr)` as two u64 halves each, network order.
    fn addrs_v6(&self) -> Result<([u64; 2], [u64; 2]), Skip>;
    /// The inode of the socket's network namespace, 0 when unknown.
    #[inline(always)]
    fn netns(&self, cfg: &ProbeConfig, skaddr: u64) -> u32 {
        netns_of(cfg, skaddr)
    }
    /// The current task's name: a record's 16 bytes.
    #[inline(always)]
    fn comm(&self) -> [u64; 2] {
        helper_comm()
    }
}

/// The current task's name ([`COMM_LEN`] bytes, as two words a record stores whole) from
/// the helper that every program type may call: NUL-padded, or zeros when it fails. Going
/// through `bpf_get_current_comm()`'s Result instead costs byte-wise copies and memset
/// calls.
#[inline(always)]
fn helper_comm() -> [u64; 2] {
    let mut comm = [0u64; 2];
    // SAFETY: the helper writes at most COMM_LEN bytes, the local's size.
    if unsafe { gen::bpf_get_current_comm(comm.as_mut_ptr().cast(), COMM_LEN as u32) } != 0 {
        return [0, 0];
    }
    comm
}

/// The current task's name, as [`helper_comm`], with two loads through the task's BTF
/// pointer at `task_struct.comm` (`offset`, from kernel BTF), which the kernel keeps
/// NUL-terminated and NUL-padded: the helper and its string copy were a quarter of the
/// transition program. For BTF-enabled programs (`tp_btf`) only.
#[inline(always)]
fn task_comm(offset: u16) -> [u64; 2] {
    // SAFETY: the current task's trusted BTF pointer, read like the socket in `Sock::read`.
    unsafe {
        let task = gen::bpf_get_current_task_btf() as *const u8;
        let at = task.add(offset as usize);
        [
            core::ptr::read(at.cast::<u64>()),
            core::ptr::read(at.add(8).cast::<u64>()),
        ]
    }
}

/// A classic tracepoint record read through `R` at `offsets`.
struct Record<'a, R: Fields> {
    rec: &'a R,
    off: &'a FieldOffsets,
}

impl<R: Fields> Transition for Record<'_, R> {
    #[inline(always)]
    fn proto_family(&self) -> Result<(u16, u16), Skip> {
        Ok((
            self.rec.read::<u16>(self.off.protocol)?,
            self.rec.read::<u16>(self.off.family)?,
        ))
    }
    #[inline(always)]
    fn states(&self) -> Result<(u32, u32), Skip> {
        Ok((
            self.rec.read::<i32>(self.off.oldstate)? as u32,
            self.rec.read::<i32>(self.off.newstate)? as u32,
        ))
    }
    #[inline(always)]
    fn skaddr(&self) -> Result<u64, Skip> {
        self.rec.read::<u64>(self.off.skaddr)
    }
    #[inline(always)]
    fn ports(&self) -> Result<(u16, u16), Skip> {
        Ok((
            self.rec.read::<u16>(self.off.sport)?,
            self.rec.read::<u16>(self.off.dport)?,
        ))
    }
    #[inline(always)]
    fn addrs_v4(&self) -> Result<(u32, u32), Skip> {
        Ok((
            self.rec.read::<u32>(self.off.saddr)?,
            self.rec.read::<u32>(self.off.daddr)?,
        ))
    }
    #[inline(always)]
    fn addrs_v6(&self) -> Result<([u64; 2], [u64; 2]), Skip> {
        let o = self.off;
        Ok((
            [
                self.rec.read::<u64>(o.saddr_v6)?,
                self.rec.read::<u64>(o.saddr_v6 + 8)?,
            ],
            [
                self.rec.read::<u64>(o.daddr_v6)?,
                self.rec.read::<u64>(o.daddr_v6 + 8)?,
            ],
        ))
    }
}

/// Filters one transition and writes it to the ring buffer.
#[inline(always)]
fn record<T: Transition>(cfg: &ProbeConfig, t: &T) -> Result<(), Skip> {
    let (protocol, family) = t.proto_family()?;
    if protocol != IPPROTO_TCP {
        return Err(Skip::NOT_TCP);
    }
    if family != AF_INET && family != AF_INET6 {
        return Err(Skip::NOT_TCP);
    }
    let (oldstate, newstate) = t.states()?;
    let skaddr = t.skaddr()?;
    let (sport, dport) = t.ports()?;
    let netns = t.netns(cfg, skaddr);
    if !wanted(cfg, family, oldstate, newstate, sport, dport, netns) {
        forget_io(cfg, oldstate, newstate, skaddr);
        return Err(Skip::FILTERED);
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    // Addresses move as integers, loaded and stored in native order, so their bytes keep
    // network order; an IPv4 address in the low half of a u64 lands in the first 4 bytes
    // on this little-endian target (bpfel, the only one built).
    let (saddr, daddr) = if family == AF_INET {
        let (s, d) = t.addrs_v4()?;
        ([s as u64, 0], [d as u64, 0])
    } else {
        t.addrs_v6()?
    };

    let Some(mut entry) = EVENTS.reserve::<TransitionEvent>(0) else {
        forget_io(cfg, oldstate, newstate, skaddr);
        return Err(Skip::full(oldstate, newstate, sport, dport));
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a reserved, 8-byte aligned TransitionEvent in the ring buffer; every
    // field is written before submit, each with one aligned store (no memcpy).
    unsafe {
        addr_of_mut!((*ev).ts_ns).write(bpf_ktime_get_ns());
        addr_of_mut!((*ev).skaddr).write(skaddr);
        addr_of_mut!((*ev).pid).write(pid);
        addr_of_mut!((*ev).tid).write(pid_tgid as u32);
        addr_of_mut!((*ev).sport).write(sport);
        addr_of_mut!((*ev).dport).write(dport);
        addr_of_mut!((*ev).family).write(family);
        addr_of_mut!((*ev).oldstate).write(oldstate as u8);
        addr_of_mut!((*ev).newstate).write(newstate as u8);
        addr_of_mut!((*ev).saddr).cast::<[u64; 2]>().write(saddr);
        addr_of_mut!((*ev).daddr).cast::<[u64; 2]>().write(daddr);
        addr_of_mut!((*ev).netns).write(netns);
        addr_of_mut!((*ev).reserved).write(0);
    }
    let comm = t.comm();
    // SAFETY: `ev` is the reserved record, as above; its name field is 8-byte aligned and
    // 16 bytes long.
    unsafe { addr_of_mut!((*ev).comm).cast::<[u64; 2]>().write(comm) };
    entry.submit(wakeup_flags(cfg));
    Ok(())
}

/// Wake the reader only once enough has piled up: a wakeup per event would cost more than
/// the event itself under load. Userspace polls on a short timer for the rest. Each CPU
/// counts its own events (`UNWOKEN`): asking the ring how much is pending costs a helper
/// call and reads positions other CPUs write.
#[inline(always)]
fn wakeup_flags(cfg: &ProbeConfig) -> u64 {
    let Some(n) = UNWOKEN.get_ptr_mut(0) else {
        return BPF_RB_FORCE_WAKEUP as u64;
    };
    // SAFETY: a per-CPU slot, touched only by this CPU with preemption disabled.
    unsafe {
        *n += 1;
        if *n < cfg.wakeup_events {
            return BPF_RB_NO_WAKEUP as u64;
        }
        *n = 0;
    }
    BPF_RB_FORCE_WAKEUP as u64
}

/// Whether the user's filters keep a transition.
#[inline(always)]
fn wanted(
    cfg: &ProbeConfig,
    family: u16,
    oldstate: u32,
    newstate: u32,
    sport: u16,
    dport: u16,
    netns: u32,
) -> bool {
    if cfg.family != 0 && family != cfg.family {
        return false;
    }
    if cfg.port_count != 0 && !port_wanted(cfg, sport, dport) {
        return false;
    }
    if cfg.state_mask != 0 {
        let seen = (1u32 << (oldstate & 31)) | (1u32 << (newstate & 31));
        if seen & cfg.state_mask == 0 {
            return false;
        }
    }
    cfg.netns_count == 0 || netns_wanted(cfg, netns)
}

/// Drops the send/receive note at the address of a socket born in a transition userspace
/// will not see. Socket memory is reused, so the note belongs to a socket that is gone;
/// userspace tells such notes apart by time only for the births it sees (a note older
/// than the socket), which spares the common path a map update.
#[inline(always)]
fn forget_io(cfg: &ProbeConfig, oldstate: u32, newstate: u32, skaddr: u64) {
    if cfg.io_hints != 0 && is_birth(oldstate, newstate) {
        let _ = SOCKET_IO.remove(&skaddr);
    }
}

#[tracepoint]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    // The return value is ignored, as for every hook here.
    noted(&ctx, "sock_recv_length", try_sock_io_length(&ctx, true));
    0
}

#[tracepoint]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    noted(&ctx, "sock_send_length", try_sock_io_length(&ctx, false));
    0
}

/// Why a send or receive was not noted.
#[derive(Clone, Copy)]
enum IoSkip {
    /// Not a TCP socket.
    NotTcp,
    /// An argument or the return value could not be read.
    Unreadable,
    /// The kretprobe found no entry from its kprobe (attached mid-call, or evicted).
    NoEntry,
    /// The map refused the update, with this error.
    Map(i32),
}

/// The end of every send/receive hook: a skip only means "not noted"; with TRACER_DEBUG,
/// the ones that should not happen are logged.
#[inline(always)]
fn noted<C: EbpfContext>(ctx: &C, program: &'static str, result: Result<(), IoSkip>) {
    let Err(skip) = result else {
        return;
    };
    if !debug_on() {
        return;
    }
    match skip {
        IoSkip::Unreadable => warn!(
            ctx,
            "{}: an argument or the return value is unreadable", program
        ),
        IoSkip::Map(e) => warn!(ctx, "{}: a map update failed ({})", program, e),
        IoSkip::NoEntry => debug!(
            ctx,
            "{}: no entry from the kprobe (attached mid-call, or evicted)", program
        ),
        IoSkip::NotTcp => {}
    }
}

/// `sock:sock_recv_length` / `sock:sock_send_length`: every socket's sends and receives,
/// TCP's among them.
#[inline(always)]
fn try_sock_io_length(ctx: &TracePointContext, recv: bool) -> Result<(), IoSkip> {
    // Userspace attaches these programs only after checking the format files against
    // IO_LAYOUT, so its constant offsets are the running kernel's.
    let rec = Direct(ctx.as_ptr() as *const u8);
    let protocol = rec
        .read::<u16>(IO_LAYOUT.protocol)
        .map_err(|_| IoSkip::Unreadable)?;
    let family = rec
        .read::<u16>(IO_LAYOUT.family)
        .map_err(|_| IoSkip::Unreadable)?;
    if protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6) {
        return Err(IoSkip::NotTcp);
    }
    let sk = rec
        .read::<u64>(IO_LAYOUT.sk)
        .map_err(|_| IoSkip::Unreadable)?;
    let op = if recv {
        let ret = rec
            .read::<i32>(IO_LAYOUT.ret)
            .map_err(|_| IoSkip::Unreadable)?;
        let flags = rec
            .read::<i32>(IO_LAYOUT.flags)
            .map_err(|_| IoSkip::Unreadable)?;
        recv_op(ret, flags as u64)
    } else {
        IO_SEND
    };
    note_io(sk, op, helper_comm)
}

/// `tp_btf/sock_recv_length`: the same tracepoint as `sock_recv_length`, BTF-enabled. The
/// kernel hands over its arguments as they are instead of filling a trace record first
/// (with it, the hooks cost 22% more CPU per call); the socket is read at offsets from
/// BTF. Named apart within the kernel's 15 characters.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_btf(ctx: BtfTracePointContext) -> i32 {
    noted(&ctx, "sock_recv_btf", try_sock_io_btf(&ctx, true));
    0
}

/// `tp_btf/sock_send_length`, as [`sock_recv_btf`].
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_btf(ctx: BtfTracePointContext) -> i32 {
    noted(&ctx, "sock_send_btf", try_sock_io_btf(&ctx, false));
    0
}

/// `sock_recv_length(sk, ret, flags)` / `sock_send_length(sk, ret, flags)`: every socket's
/// sends and receives, TCP's among them.
#[inline(always)]
fn try_sock_io_btf(ctx: &BtfTracePointContext, recv: bool) -> Result<(), IoSkip> {
    let off = config().sock_offsets;
    // SAFETY: the tracepoint's arguments, each in a u64 slot.
    let (sk, ret, flags) = unsafe {
        (
            ctx.arg::<*const u8>(0),
            ctx.arg::<u64>(1) as i32,
            ctx.arg::<u64>(2),
        )
    };
    let (protocol, family) = Sock { sk, off }.proto_family();
    if protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6) {
        return Err(IoSkip::NotTcp);
    }
    let op = if recv { recv_op(ret, flags) } else { IO_SEND };
    note_io(sk as u64, op, || task_comm(off.task_comm))
}

#[fexit(function = "tcp_recvmsg")]
pub fn tcp_recvmsg_fexit(ctx: FExitContext) -> i32 {
    noted(&ctx, "tcp_recvmsg_fexit", try_tcp_recvmsg_fexit(&ctx));
    0
}

/// After `tcp_recvmsg(sk, msg, len, [nonblock,] flags, addr_len)` returned.
#[inline(always)]
fn try_tcp_recvmsg_fexit(ctx: &FExitContext) -> Result<(), IoSkip> {
    let sk: u64 = ctx.arg(0);
    // The position comes from the kernel's BTF, the helper takes it at run time (no
    // constant context offset needed). The helpers need Linux 5.17; older kernels refuse
    // the program and userspace falls back to kprobes.
    let mut flags = 0u64;
    // SAFETY: the helper writes one u64 into `flags`, a local.
    if unsafe { gen::bpf_get_func_arg(ctx.as_ptr(), cfg_recv_flags_arg(), &mut flags) } != 0 {
        return Err(IoSkip::Unreadable);
    }
    let ret: i32 = ctx.ret().map_err(|_| IoSkip::Unreadable)?;
    note_io(sk, recv_op(ret, flags), helper_comm)
}

#[fentry(function = "tcp_sendmsg")]
pub fn tcp_sendmsg_fentry(ctx: FEntryContext) -> i32 {
    noted(&ctx, "tcp_sendmsg_fentry", try_tcp_sendmsg_fentry(&ctx));
    0
}

/// On entry to `tcp_sendmsg(sk, msg, size)`, whose signature has not changed since 4.x.
#[inline(always)]
fn try_tcp_sendmsg_fentry(ctx: &FEntryContext) -> Result<(), IoSkip> {
    note_io(ctx.arg(0), IO_SEND, helper_comm)
}

#[kprobe]
pub fn tcp_recvmsg_kprobe(ctx: ProbeContext) -> u32 {
    noted(&ctx, "tcp_recvmsg_kprobe", try_tcp_recvmsg_kprobe(&ctx));
    0
}

/// On entry to `tcp_recvmsg`: keeps the socket and the flags for the return.
#[inline(always)]
fn try_tcp_recvmsg_kprobe(ctx: &ProbeContext) -> Result<(), IoSkip> {
    let sk: u64 = ctx.arg(0).ok_or(IoSkip::Unreadable)?;
    // Context loads must sit at constant offsets: load both candidate registers and pick
    // one by the (constant) position rather than index the registers at run time.
    let flags_at_3: u64 = ctx.arg(3).ok_or(IoSkip::Unreadable)?;
    let flags_at_4: u64 = ctx.arg(4).ok_or(IoSkip::Unreadable)?;
    let flags = if cfg_recv_flags_arg() == 3 {
        flags_at_3
    } else {
        flags_at_4
    };
    RECV_ARGS
        .insert(&bpf_get_current_pid_tgid(), &RecvArgs { sk, flags }, 0)
        .map_err(IoSkip::Map)
}

#[kretprobe]
pub fn tcp_recvmsg_kretprobe(ctx: RetProbeContext) -> u32 {
    noted(
        &ctx,
        "tcp_recvmsg_kretprobe",
        try_tcp_recvmsg_kretprobe(&ctx),
    );
    0
}

/// On return from `tcp_recvmsg`: the entry's socket and flags, with the result.
#[inline(always)]
fn try_tcp_recvmsg_kretprobe(ctx: &RetProbeContext) -> Result<(), IoSkip> {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: copied out at once; the entry is removed right after.
    let args = unsafe { RECV_ARGS.get(&id) }
        .copied()
        .ok_or(IoSkip::NoEntry)?;
    let _ = RECV_ARGS.remove(&id);
    let ret: i32 = ctx.ret();
    note_io(args.sk, recv_op(ret, args.flags), helper_comm)
}

#[kprobe]
pub fn tcp_sendmsg_kprobe(ctx: ProbeContext) -> u32 {
    noted(&ctx, "tcp_sendmsg_kprobe", try_tcp_sendmsg_kprobe(&ctx));
    0
}

/// On entry to `tcp_sendmsg(sk, msg, size)`.
#[inline(always)]
fn try_tcp_sendmsg_kprobe(ctx: &ProbeContext) -> Result<(), IoSkip> {
    note_io(ctx.arg(0).ok_or(IoSkip::Unreadable)?, IO_SEND, helper_comm)
}

/// `CONFIG.recv_flags_arg`, read as the verifier's constant.
#[inline(always)]
fn cfg_recv_flags_arg() -> u32 {
    config().recv_flags_arg
}

/// A receive's [`SocketIo::op`]: the end of stream when it returned 0 without `MSG_PEEK`
/// (a peek leaves the end of stream for the next read).
#[inline(always)]
fn recv_op(ret: i32, flags: u64) -> u32 {
    if ret == 0 && flags & MSG_PEEK as u64 == 0 {
        IO_EOF
    } else {
        IO_RECV
    }
}

/// Notes that the current process did `op` on the TCP socket at `sk`. These hooks fire on
/// every send and receive on the machine, so the common case (the same process again) is
/// one lookup and two stores in place; only a new socket or a new process costs an insert.
#[inline(always)]
fn note_io(sk: u64, op: u32, comm: impl FnOnce() -> [u64; 2]) -> Result<(), IoSkip> {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // (The cheaper coarse clock is refused in tracing programs.)
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(io) = SOCKET_IO.get_ptr_mut(&sk) {
        // SAFETY: a pointer into the map's value for `sk`; a racing update from another
        // CPU can at worst mix two callers' times, which userspace reads as a hint.
        unsafe {
            if (*io).pid == pid {
                (*io).ts_ns = now;
                (*io).op = op;
                return Ok(());
            }
        }
    }
    let mut io = MaybeUninit::<SocketIo>::uninit();
    let p = io.as_mut_ptr();
    let comm = comm();
    // SAFETY: every field of `p`, a local, is written before it is read; the name, 8-byte
    // aligned, is 16 bytes long.
    let io = unsafe {
        addr_of_mut!((*p).ts_ns).write(now);
        addr_of_mut!((*p).pid).write(pid);
        addr_of_mut!((*p).op).write(op);
        addr_of_mut!((*p).comm).cast::<[u64; 2]>().write(comm);
        io.assume_init_ref()
    };
    SOCKET_IO.insert(&sk, io, 0).map_err(IoSkip::Map)
}

/// The inode of the network namespace of the socket at `sk`
/// (`sk->__sk_common.skc_net.net->ns.inum`), at offsets userspace took from kernel BTF; 0
/// without them or when a read fails. Two reads, because the namespace is behind a pointer.
#[inline(always)]
fn netns_of(cfg: &ProbeConfig, sk: u64) -> u32 {
    let off = cfg.netns_offsets;
    if off.sk_net == 0 {
        return 0;
    }
    let mut net = 0u64;
    let mut inum = 0u32;
    // SAFETY: the helpers check the kernel addresses and write only into the locals.
    unsafe {
        if gen::bpf_probe_read_kernel(
            addr_of_mut!(net).cast(),
            8,
            (sk + off.sk_net as u64) as *const _,
        ) != 0
            || net == 0
            || gen::bpf_probe_read_kernel(
                addr_of_mut!(inum).cast(),
                4,
                (net + off.net_inum as u64) as *const _,
            ) != 0
        {
            return 0;
        }
    }
    inum
}

#[inline(always)]
fn netns_wanted(cfg: &ProbeConfig, netns: u32) -> bool {
    let mut i = 0;
    while i < MAX_NETNS {
        if i < cfg.netns_count as usize && cfg.netns[i] == netns {
            return true;
        }
        i += 1;
    }
    false
}

#[inline(always)]
fn port_wanted(cfg: &ProbeConfig, sport: u16, dport: u16) -> bool {
    let mut i = 0;
    while i < MAX_PORTS {
        if i < cfg.port_count as usize && (cfg.ports[i] == sport || cfg.ports[i] == dport) {
            return true;
        }
        i += 1;
    }
    false
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
