//! Arbitrary transitions for the property tests that hold each format's hand-written
//! transition writer to what serde or `fmt` would write.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use crate::{
    decode::Transition,
    model::{Comm, Family, State},
};

/// The namespace the tests take for the tracer's own: transitions in it are not marked.
pub const OWN_NETNS: u32 = 7;

/// Any address, with the IPv6 shapes written specially: short runs of zeros and
/// IPv4-mapped addresses.
fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        (any::<u128>(), 0u32..4).prop_map(|(a, shape)| IpAddr::V6(Ipv6Addr::from(match shape {
            0 => a,
            1 => a & 0xffff_ffff,
            2 => 0xffff_0000_0000 | (a & 0xffff_ffff),
            _ => a & !(0xffff_ffff_ffff << 32),
        }))),
    ]
}

/// A command name's 16 bytes: any bytes, or printable ASCII (the names writers copy as
/// they are, quotes and backslashes among them) ended by a NUL and followed by anything.
fn comm() -> impl Strategy<Value = [u8; 16]> {
    prop_oneof![
        any::<[u8; 16]>(),
        (
            proptest::collection::vec(b' '..=b'~', 0..=16),
            any::<[u8; 16]>()
        )
            .prop_map(|(name, mut bytes)| {
                bytes[..name.len()].copy_from_slice(&name);
                if name.len() < 16 {
                    bytes[name.len()] = 0;
                }
                bytes
            }),
    ]
}

/// Any transition: any times, ids and bytes of command name, no namespace, the tracer's
/// own or another, and states known or not.
pub fn transition() -> impl Strategy<Value = Transition> {
    (
        // A null socket address too: `0x0`, the one hex number without leading digits.
        (
            any::<u64>(),
            prop_oneof![Just(0u64), any::<u64>()],
            any::<u32>(),
            any::<u32>(),
        ),
        comm(),
        prop_oneof![Just(0u32), Just(OWN_NETNS), any::<u32>()],
        (ip(), any::<u16>(), ip(), any::<u16>()),
        (0u8..16, 0u8..16),
    )
        .prop_map(
            |((ts_ns, sk, pid, tid), comm, netns, (saddr, sport, daddr, dport), (old, new))| {
                Transition {
                    ts_ns,
                    sk,
                    pid,
                    tid,
                    comm: Comm::new(comm),
                    netns,
                    family: if saddr.is_ipv6() {
                        Family::Ipv6
                    } else {
                        Family::Ipv4
                    },
                    saddr,
                    sport,
                    daddr,
                    dport,
                    old: State(old),
                    new: State(new),
                }
            },
        )
}
