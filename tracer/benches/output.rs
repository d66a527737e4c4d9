//! Cost of printing one transition (`watch --events`), as text and as JSON, into a
//! buffered stream. Run with `cargo bench -p tracer --bench output`.

mod common;

use std::{
    hint::black_box,
    io::{self, BufWriter},
    time::Instant,
};

use common::transition;
use tracer::{
    decode::Transition,
    model::Format,
    output::{Output, TextStyle, WallClock},
};

const N: u64 = 2_000_000;
/// 2026-11-25T06:00:00Z at monotonic zero.
const EPOCH_NS: i128 = 1_795_586_400 * 1_000_000_000;

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
