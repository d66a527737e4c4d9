//! The benchmark's floor (`cargo xtask bench`): the least a probe on the same tracepoint
//! can do, one per-CPU counter increment per transition. Not part of the tracer; it lets the
//! bench tell what the tracer's own work costs from what attaching anything at all costs.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{btf_tracepoint, map, tracepoint},
    maps::PerCpuArray,
    programs::{BtfTracePointContext, TracePointContext},
};

/// Transitions seen, per CPU.
#[map]
static COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The floor on the BTF-enabled tracepoint, as the tracer attaches where it can.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn floor_btf(_ctx: BtfTracePointContext) -> i32 {
    bump();
    0
}

/// The floor on the classic tracepoint, the tracer's fallback.
#[tracepoint]
pub fn floor_tracepoint(_ctx: TracePointContext) -> u32 {
    bump();
    0
}

#[inline(always)]
fn bump() {
    if let Some(n) = COUNT.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, touched only by this CPU with preemption disabled.
        unsafe { *n += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
