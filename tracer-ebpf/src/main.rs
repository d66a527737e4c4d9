//! Kernel side of the tracer: one program on `sock:inet_sock_set_state` that turns each TCP
//! state transition into a [`TransitionEvent`] in a ring buffer, after applying the user's
//! filters so that unwanted events never leave the kernel.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel_buf,
    },
    macros::{map, tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::TracePointContext,
    EbpfContext,
};
use tracer_common::{
    FieldOffsets, ProbeConfig, TransitionEvent, AF_INET, AF_INET6, IPPROTO_TCP, MAX_PORTS,
    MAX_RECORD_LEN, STAT_COUNT, STAT_LOST,
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
    let off = &cfg.offsets;

    // One copy of the whole record instead of one helper call per field.
    let mut rec = [0u8; MAX_RECORD_LEN];
    let len = off.record_len as usize;
    if len == 0 || len > MAX_RECORD_LEN {
        return Err(Skip::Unreadable);
    }
    // SAFETY: the tracepoint's context points at a record at least `record_len` long, as
    // the format file this length was computed from says.
    unsafe { bpf_probe_read_kernel_buf(ctx.as_ptr() as *const u8, &mut rec[..len]) }
        .map_err(|_| Skip::Unreadable)?;

    if read::<u16>(&rec, off.protocol)? != IPPROTO_TCP {
        return Err(Skip::Unwanted);
    }
    let family = read::<u16>(&rec, off.family)?;
    if family != AF_INET && family != AF_INET6 {
        return Err(Skip::Unwanted);
    }
    if cfg.family != 0 && family != cfg.family {
        return Err(Skip::Unwanted);
    }
    let sport = read::<u16>(&rec, off.sport)?;
    let dport = read::<u16>(&rec, off.dport)?;
    if cfg.port_count != 0 && !port_wanted(&cfg, sport, dport) {
        return Err(Skip::Unwanted);
    }
    let oldstate = read::<i32>(&rec, off.oldstate)? as u32;
    let newstate = read::<i32>(&rec, off.newstate)? as u32;
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

    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    if family == AF_INET {
        saddr[..4].copy_from_slice(&read::<[u8; 4]>(&rec, off.saddr)?);
        daddr[..4].copy_from_slice(&read::<[u8; 4]>(&rec, off.daddr)?);
    } else {
        saddr = read::<[u8; 16]>(&rec, off.saddr_v6)?;
        daddr = read::<[u8; 16]>(&rec, off.daddr_v6)?;
    }
    let skaddr = read::<u64>(&rec, off.skaddr)?;

    let Some(mut entry) = EVENTS.reserve::<TransitionEvent>(0) else {
        if let Some(lost) = STATS.get_ptr_mut(STAT_LOST) {
            // SAFETY: a per-CPU slot, touched only by this CPU with preemption disabled.
            unsafe { *lost += 1 };
        }
        return Err(Skip::Full);
    };
    entry.write(TransitionEvent {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        skaddr,
        pid,
        tid: pid_tgid as u32,
        sport,
        dport,
        family,
        oldstate: oldstate as u8,
        newstate: newstate as u8,
        saddr,
        daddr,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    entry.submit(wakeup_flags(&cfg));
    Ok(())
}

/// Wake the reader only once enough has piled up: a wakeup per event would cost more than
/// the event itself under load. Userspace polls on a short timer for the rest.
#[inline(always)]
fn wakeup_flags(cfg: &ProbeConfig) -> u64 {
    if cfg.wakeup_bytes == 0 {
        return 0;
    }
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= cfg.wakeup_bytes as u64 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
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

/// Reads a `T` at byte `offset` of the copied record, refusing offsets past its end.
#[inline(always)]
fn read<T: Copy>(rec: &[u8; MAX_RECORD_LEN], offset: u16) -> Result<T, Skip> {
    let o = offset as usize;
    if o + core::mem::size_of::<T>() > MAX_RECORD_LEN {
        return Err(Skip::Unreadable);
    }
    // SAFETY: bounds checked above; T is plain data read unaligned.
    Ok(unsafe { core::ptr::read_unaligned(rec.as_ptr().add(o) as *const T) })
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
