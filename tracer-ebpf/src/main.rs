//! Kernel side of the tracer: one program on `sock:inet_sock_set_state` that turns each TCP
//! state transition into a [`TransitionEvent`] in a ring buffer, after applying the user's
//! filters so that unwanted events never leave the kernel; and two on
//! `sock:sock_recv_length` / `sock:sock_send_length` that remember, per socket, the last
//! process to receive or send on it ([`SocketIo`]), for userspace to read when it flags one.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated as gen},
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
    EbpfContext,
};
use core::{mem::MaybeUninit, ptr::addr_of_mut};

use tracer_common::{
    FieldOffsets, ProbeConfig, SocketIo, TcpState, TransitionEvent, AF_INET, AF_INET6, COMM_LEN,
    IO_EOF, IO_LAYOUT, IO_RECV, IO_SEND, IPPROTO_TCP, KNOWN_LAYOUT, MAX_PORTS, MAX_RECORD_LEN,
    MSG_PEEK, STAT_COUNT, STAT_LOST,
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

/// Transitions for userspace. Its size is set by userspace at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 23, 0);

/// Per-CPU counters (index `STAT_LOST`: events dropped because the ring buffer was full).
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// The last send or receive on each TCP socket, by kernel address. Its size is set by
/// userspace at load time; LRU, so sockets nobody uses any more make room by themselves.
#[map]
static SOCKET_IO: LruHashMap<u64, SocketIo> = LruHashMap::with_max_entries(1 << 16, 0);

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    // A tracepoint program's return value is ignored; errors only mean "not recorded".
    let _ = try_inet_sock_set_state(&ctx);
    0
}

/// Why an event was not recorded.
enum Skip {
    /// Filtered out, or not TCP.
    Unwanted,
    /// The record could not be read (bad offsets or a fault).
    Unreadable,
    /// The ring buffer was full; counted in `STATS`.
    Full,
}

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<(), Skip> {
    // SAFETY: CONFIG is plain data; the volatile read keeps the compiler from folding the
    // zeros it was compiled with instead of the values userspace loaded.
    let cfg: ProbeConfig = unsafe { core::ptr::read_volatile(&CONFIG) };
    if cfg.direct_access != 0 {
        // Userspace saw KNOWN_LAYOUT in the format file. CONFIG is frozen read-only, so the
        // verifier knows which branch runs; constant offsets become immediate loads from
        // the context: no helper call, no copy.
        record(&cfg, &Direct(ctx.as_ptr() as *const u8), &KNOWN_LAYOUT)
    } else {
        let mut buf = RecordBuf::uninit();
        record(
            &cfg,
            &Copied::new(ctx, &cfg.offsets, &mut buf)?,
            &cfg.offsets,
        )
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
            return Err(Skip::Unreadable);
        }
        // BPF has no native memset/memcpy (they become byte loops): the buffer stays
        // uninitialised for the helper to fill, and every read is integer-sized.
        // SAFETY: the context points at a record at least `record_len` long, as the format
        // file this length came from says; `buf` has room for MAX_RECORD_LEN bytes.
        if unsafe { gen::bpf_probe_read_kernel(buf.as_mut_ptr().cast(), len, ctx.as_ptr()) } != 0 {
            return Err(Skip::Unreadable);
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
            return Err(Skip::Unreadable);
        }
        // SAFETY: within the bytes the helper initialised (checked above).
        Ok(unsafe { core::ptr::read_unaligned(self.buf.as_ptr().cast::<u8>().add(o).cast::<T>()) })
    }
}

/// Filters one transition and writes it to the ring buffer.
#[inline(always)]
fn record<R: Fields>(cfg: &ProbeConfig, rec: &R, off: &FieldOffsets) -> Result<(), Skip> {
    if rec.read::<u16>(off.protocol)? != IPPROTO_TCP {
        return Err(Skip::Unwanted);
    }
    let family = rec.read::<u16>(off.family)?;
    if family != AF_INET && family != AF_INET6 {
        return Err(Skip::Unwanted);
    }
    let oldstate = rec.read::<i32>(off.oldstate)? as u32;
    let newstate = rec.read::<i32>(off.newstate)? as u32;
    let skaddr = rec.read::<u64>(off.skaddr)?;
    if cfg.io_hints != 0 && is_birth(oldstate, newstate) {
        // Socket memory is reused: what was noted at this address belongs to a socket
        // that is gone. Done before the filters, which must not keep a stale note alive.
        let _ = SOCKET_IO.remove(&skaddr);
    }
    if cfg.family != 0 && family != cfg.family {
        return Err(Skip::Unwanted);
    }
    let sport = rec.read::<u16>(off.sport)?;
    let dport = rec.read::<u16>(off.dport)?;
    if cfg.port_count != 0 && !port_wanted(&cfg, sport, dport) {
        return Err(Skip::Unwanted);
    }
    if cfg.state_mask != 0 {
        let seen = (1u32 << (oldstate & 31)) | (1u32 << (newstate & 31));
        if seen & cfg.state_mask == 0 {
            return Err(Skip::Unwanted);
        }
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    if cfg.pid != 0 && pid != cfg.pid {
        return Err(Skip::Unwanted);
    }
    // Addresses move as integers, loaded and stored in native order, so their bytes keep
    // network order; an IPv4 address in the low half of a u64 lands in the first 4 bytes
    // on this little-endian target (bpfel, the only one built).
    let (saddr, daddr) = if family == AF_INET {
        (
            [rec.read::<u32>(off.saddr)? as u64, 0],
            [rec.read::<u32>(off.daddr)? as u64, 0],
        )
    } else {
        (
            [
                rec.read::<u64>(off.saddr_v6)?,
                rec.read::<u64>(off.saddr_v6 + 8)?,
            ],
            [
                rec.read::<u64>(off.daddr_v6)?,
                rec.read::<u64>(off.daddr_v6 + 8)?,
            ],
        )
    };

    let Some(mut entry) = EVENTS.reserve::<TransitionEvent>(0) else {
        if let Some(lost) = STATS.get_ptr_mut(STAT_LOST) {
            // SAFETY: a per-CPU slot, touched only by this CPU with preemption disabled.
            unsafe { *lost += 1 };
        }
        return Err(Skip::Full);
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
        let comm = addr_of_mut!((*ev).comm);
        if gen::bpf_get_current_comm(comm.cast(), COMM_LEN as u32) != 0 {
            comm.cast::<[u64; 2]>().write([0, 0]);
        }
    }
    entry.submit(wakeup_flags(&cfg));
    Ok(())
}

/// Wake the reader only once enough has piled up: a wakeup per event would cost more than
/// the event itself under load. Userspace polls on a short timer for the rest.
#[inline(always)]
fn wakeup_flags(cfg: &ProbeConfig) -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= cfg.wakeup_bytes as u64 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Whether a transition starts a socket's life: connect() or listen() on a fresh socket,
/// or a connection created from a listener.
#[inline(always)]
fn is_birth(oldstate: u32, newstate: u32) -> bool {
    oldstate == TcpState::Close as u32 || newstate == TcpState::SynRecv as u32
}

#[tracepoint]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    note_io(&ctx, true);
    0
}

#[tracepoint]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    note_io(&ctx, false);
    0
}

/// Notes who received or sent on a TCP socket. These fire on every send and receive on
/// the machine, so the common case (the same process again) is one lookup and two stores
/// in place; only a new socket or a new process costs an insert.
#[inline(always)]
fn note_io(ctx: &TracePointContext, recv: bool) {
    // Userspace attaches these programs only after checking the format files against
    // IO_LAYOUT, so its constant offsets are the running kernel's.
    let rec = Direct(ctx.as_ptr() as *const u8);
    let (Ok(protocol), Ok(family)) = (
        rec.read::<u16>(IO_LAYOUT.protocol),
        rec.read::<u16>(IO_LAYOUT.family),
    ) else {
        return;
    };
    if protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6) {
        return;
    }
    let (Ok(sk), Ok(ret), Ok(flags)) = (
        rec.read::<u64>(IO_LAYOUT.sk),
        rec.read::<i32>(IO_LAYOUT.ret),
        rec.read::<i32>(IO_LAYOUT.flags),
    ) else {
        return;
    };
    let op = if !recv {
        IO_SEND
    } else if ret == 0 && flags & MSG_PEEK == 0 {
        IO_EOF
    } else {
        IO_RECV
    };
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
                return;
            }
        }
    }
    let io = SocketIo {
        ts_ns: now,
        pid,
        op,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    };
    let _ = SOCKET_IO.insert(&sk, &io, 0);
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
