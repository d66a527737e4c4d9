//! Cost of the socket table: memory per tracked socket and time per applied transition.
//! Run with `cargo bench -p tracer --bench table`.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use tracer::{
    aggregate::Table,
    decode::Transition,
    model::{Comm, Family, State, Thresholds},
};
use tracer_common::TcpState;

const SOCKETS: u64 = 1 << 20;

fn transition(sk: u64, ts_ns: u64, old: TcpState, new: TcpState) -> Transition {
    Transition {
        ts_ns,
        sk: 0xffff_8880_0000_0000 + sk * 2048,
        pid: 4242,
        tid: 4242,
        comm: Comm::from("java"),
        netns: 4026531840,
        family: Family::Ipv4,
        saddr: Ipv4Addr::LOCALHOST.into(),
        sport: 61616,
        daddr: Ipv4Addr::new(10, (sk >> 16) as u8, (sk >> 8) as u8, sk as u8).into(),
        dport: (sk % 60000) as u16 + 1024,
        old: State::from(old),
        new: State::from(new),
    }
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn main() {
    let thresholds = Thresholds::new(&[(TcpState::CloseWait, Duration::from_secs(30))]);
    let mut table = Table::new(thresholds.clone(), SOCKETS as usize);
    let before = rss();
    for sk in 0..SOCKETS {
        table.apply(&transition(sk, sk, TcpState::Listen, TcpState::SynRecv));
        table.apply(&transition(
            sk,
            sk + 1,
            TcpState::SynRecv,
            TcpState::Established,
        ));
    }
    let per_socket = (rss() - before) as f64 / SOCKETS as f64;
    println!(
        "table: {} sockets tracked, {:.0} bytes of RSS per socket",
        table.stats().tracked,
        per_socket
    );

    // Churn: whole lives through CLOSE_WAIT, as on a busy server, 10 transitions each.
    let mut churn = Table::new(thresholds, SOCKETS as usize);
    let lives = 1_000_000u64;
    let start = Instant::now();
    for sk in 0..lives {
        let t = sk * 1000;
        for (i, (old, new)) in [
            (TcpState::Listen, TcpState::SynRecv),
            (TcpState::SynRecv, TcpState::Established),
            (TcpState::Established, TcpState::CloseWait),
            (TcpState::CloseWait, TcpState::LastAck),
            (TcpState::LastAck, TcpState::Close),
        ]
        .into_iter()
        .enumerate()
        {
            churn.apply(&transition(sk, t + i as u64, old, new));
        }
        if sk % 1024 == 0 {
            churn.due(t);
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / (lives * 5) as f64;
    println!("table: {ns:.0} ns per transition applied (churn through CLOSE_WAIT)");
}
