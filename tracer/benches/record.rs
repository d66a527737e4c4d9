//! Cost of recording: encoding a transition on the watch loop, and reading entries back in
//! a report. Run with `cargo bench -p tracer --bench record`.

mod common;

use std::time::Instant;

use common::transition;
use tracer::{
    decode::Transition,
    record::{
        reader::Reader,
        writer::{encode, prologue},
        Entry,
    },
};

const N: u64 = 2_000_000;
/// Entries per chunk handed to the writer thread.
const CHUNK: usize = 4096;

fn main() {
    let transitions: Vec<Transition> = (0..N).map(transition).collect();
    // The watch loop's share: convert and queue, in chunks as it hands them over.
    let mut chunk: Vec<Entry> = Vec::with_capacity(CHUNK);
    let start = Instant::now();
    for t in &transitions {
        if chunk.len() == CHUNK {
            chunk.clear();
        }
        chunk.push(Entry::Transition(t.into()));
    }
    let queue_ns = start.elapsed().as_nanos() as f64 / N as f64;
    // The writer thread's share: encode a chunk into a reused buffer.
    let entries: Vec<Entry> = transitions[..CHUNK]
        .iter()
        .map(|t| Entry::Transition(t.into()))
        .collect();
    let mut buf = Vec::with_capacity(1 << 20);
    let rounds = N as usize / CHUNK;
    let start = Instant::now();
    for _ in 0..rounds {
        buf.clear();
        for e in &entries {
            encode(e, &mut buf);
        }
    }
    let encode_ns = start.elapsed().as_nanos() as f64 / (rounds * CHUNK) as f64;
    println!(
        "record: {queue_ns:.0} ns to queue a transition on the watch loop, {encode_ns:.0} ns to \
         encode it on the writer thread, {:.1} bytes each",
        buf.len() as f64 / CHUNK as f64
    );

    let mut chunk = prologue();
    for t in &transitions {
        encode(&Entry::Transition(t.into()), &mut chunk);
    }
    let start = Instant::now();
    let mut reader = Reader::new(&chunk[..]).expect("a recording");
    let mut read = 0u64;
    while let Some(e) = reader.next_entry().expect("in memory") {
        if let Entry::Transition(t) = e {
            read += Transition::from(&t).ts_ns & 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "record: {:.0} ns to read an entry back ({:.1}M entries/s, {:.0} MiB/s){}",
        secs * 1e9 / N as f64,
        N as f64 / secs / 1e6,
        chunk.len() as f64 / secs / f64::from(1 << 20),
        if read > N { "!" } else { "" }
    );
}
