//! What the benches share: a synthetic stream of transitions.

use std::net::Ipv4Addr;

use tracer::{
    decode::Transition,
    model::{Comm, Family, State},
};
use tracer_common::TcpState;

/// The `i`th transition of a busy broker's stream: one port, peers spread over 64k
/// addresses and 28k ports, socket addresses recycled every 65,536.
pub fn transition(i: u64) -> Transition {
    Transition {
        ts_ns: 3_600_000_000_000 + i * 5_000,
        sk: 0xffff_8880_0000_0000 + (i % 65536) * 2048,
        pid: 123_456,
        tid: 123_470,
        comm: Comm::from("java"),
        netns: 4026531840,
        family: Family::Ipv4,
        saddr: Ipv4Addr::LOCALHOST.into(),
        sport: 61616,
        daddr: Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8).into(),
        dport: (i % 28000) as u16 + 32768,
        old: State::from(TcpState::Established),
        new: State::from(TcpState::CloseWait),
    }
}
