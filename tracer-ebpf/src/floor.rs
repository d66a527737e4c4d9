//! The benchmark's floors (`cargo xtask bench`): the least a probe on the same tracepoint
//! can do, one per-CPU counter increment per transition; and the least a probe that streams
//! every transition to userspace can do, one record of the tracer's size through a ring
//! buffer. Not part of the tracer; they let the bench tell what the tracer's own work costs
//! from what attaching anything at all, and streaming at all, cost.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, map, tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};
use tracer_common::TRANSITION_EVENT_SIZE;

/// Transitions seen, per CPU.
#[map]
static COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The floor on the BTF-enabled tracepoint, as the tracer attaches where it can.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn floor_btf(_ctx: BtfTracePointContext) -> i32 {
    bump(&COUNT);
    0
}

/// The floor on the classic tracepoint, the tracer's fallback.
#[tracepoint]
pub fn floor_tracepoint(_ctx: TracePointContext) -> u32 {
    bump(&COUNT);
    0
}

#[inline(always)]
fn bump(counter: &PerCpuArray<u64>) {
    if let Some(n) = counter.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, touched only by this CPU with preemption disabled.
        unsafe { *n += 1 };
    }
}

/// The streaming floor's records: as large as the tracer's ring (`--buffer-size` default).
#[map]
static RING: RingBuf = RingBuf::with_byte_size(1 << 24, 0);

/// Records the streaming floor could not reserve (the ring was full), per CPU.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// A record as long as the tracer's transition record, in words.
type Record = [u64; TRANSITION_EVENT_SIZE / 8];

/// The streaming floor: a record of the tracer's size per transition, with the one field
/// no stream can do without (the time), through a ring buffer that the bench drains.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn floor_ring_btf(_ctx: BtfTracePointContext) -> i32 {
    stream();
    0
}

/// The streaming floor on the classic tracepoint.
#[tracepoint]
pub fn floor_ring_tracepoint(_ctx: TracePointContext) -> u32 {
    stream();
    0
}

#[inline(always)]
fn stream() {
    let Some(mut entry) = RING.reserve::<Record>(0) else {
        bump(&LOST);
        return;
    };
    let record = entry.as_mut_ptr().cast::<u64>();
    // SAFETY: `record` is the reserved, 8-byte aligned record; each word is written once
    // with an aligned store before submit (no memset, which BPF lacks).
    unsafe {
        record.write(bpf_ktime_get_ns());
        let mut i = 1;
        while i < TRANSITION_EVENT_SIZE / 8 {
            record.add(i).write(0);
            i += 1;
        }
    }
    // The bench polls: as the tracer under load, no wakeup per record.
    entry.submit(BPF_RB_NO_WAKEUP as u64);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
