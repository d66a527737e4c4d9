//! Cost of printing one transition (`watch --events`), as text and as JSON, into a
//! buffered stream. Run with `cargo bench -p tracer --bench output`.

use std::{
    hint::black_box,
    io::{self, BufWriter},
    net::Ipv4Addr,
    time::Instant,
};

use tracer::{
    decode::Transition,
    model::{Comm, Family, Format, State},
    output::{Output, TextStyle, WallClock},
};
use tracer_common::TcpState;

const N: u64 = 2_000_000;
/// 2026-11-25T06:00:00Z at monotonic zero.
const EPOCH_NS: i128 = 1_795_586_400 * 1_000_000_000;

fn transition(i: u64) -> Transition {
    Transition {
        ts_ns: 3_600_000_000_000 + i * 5_000,
        sk: 0xffff_8880_0000_0000 + (i % 65536) * 2048,
        pid: 123_456,
        tid: 123_470,
        comm: Comm::from("java"),
        family: Family::Ipv4,
        saddr: Ipv4Addr::LOCALHOST.into(),
        sport: 61616,
        daddr: Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8).into(),
        dport: (i % 28000) as u16 + 32768,
        old: State::from(TcpState::Established),
        new: State::from(TcpState::CloseWait),
    }
}

/// ns per transition written in `format`.
fn measure(format: Format, transitions: &[Transition]) -> f64 {
    // As watch writes: a 64 KiB buffer in front of stdout (here a sink).
    let out = BufWriter::with_capacity(1 << 16, io::sink());
    let clock = WallClock::with_offset(EPOCH_NS);
    let mut output = Output::new(format, TextStyle::default(), clock, out, io::sink());
    let start = Instant::now();
    for t in transitions {
        output
            .transition(black_box(t))
            .expect("a sink takes anything");
    }
    start.elapsed().as_nanos() as f64 / transitions.len() as f64
}

fn main() {
    let transitions: Vec<Transition> = (0..N).map(transition).collect();
    // The first round warms caches and the allocator; the best of three is reported.
    let best = |format| {
        (0..3)
            .map(|_| measure(format, &transitions))
            .fold(f64::INFINITY, f64::min)
    };
    println!(
        "output: {:.0} ns to print a transition as text, {:.0} ns as JSON",
        best(Format::Text),
        best(Format::Json)
    );
}
