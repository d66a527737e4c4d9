//! Stage 2: turns the probe's raw records (ring-buffer transitions, per-socket last
//! send/receive) into typed values.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tracer_common::{
    SocketIo, TransitionEvent, AF_INET, AF_INET6, IO_EOF, IO_RECV, IO_SEND, TRANSITION_EVENT_SIZE,
};

use crate::model::{Comm, Endpoints, Family, IoOp, LastIo, State};

/// One TCP state change of one socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Kernel monotonic time of the change, in nanoseconds.
    pub ts_ns: u64,
    /// Kernel address of the socket.
    pub sk: u64,
    /// Process (thread-group) id of the task current at the change.
    pub pid: u32,
    /// Thread id of that task.
    pub tid: u32,
    /// Command name of that task.
    pub comm: Comm,
    /// Inode of the socket's network namespace; 0 when the probe could not read it.
    pub netns: u32,
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub old: State,
    pub new: State,
}

impl Transition {
    /// The endpoints of the socket it is about.
    pub fn ends(&self) -> Endpoints {
        Endpoints {
            netns: self.netns,
            family: self.family,
            saddr: self.saddr,
            sport: self.sport,
            daddr: self.daddr,
            dport: self.dport,
        }
    }
}

/// Why a ring-buffer record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("transition record is {got} bytes, expected {TRANSITION_EVENT_SIZE}")]
    Length { got: usize },
    #[error("transition record has unknown address family {0}")]
    Family(u16),
}

/// Decodes one record written by the probe.
pub fn decode(bytes: &[u8]) -> Result<Transition, DecodeError> {
    // The ring buffer pads records to 8 bytes; the probe's record is exactly 88.
    if bytes.len() != TRANSITION_EVENT_SIZE {
        return Err(DecodeError::Length { got: bytes.len() });
    }
    // SAFETY: length checked; TransitionEvent is plain integers, valid for any bytes.
    let ev: TransitionEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    from_event(&ev)
}

/// Converts the shared kernel layout into a [`Transition`].
pub fn from_event(ev: &TransitionEvent) -> Result<Transition, DecodeError> {
    let (family, saddr, daddr) = match ev.family {
        AF_INET => (Family::Ipv4, ipv4(&ev.saddr), ipv4(&ev.daddr)),
        AF_INET6 => (
            Family::Ipv6,
            IpAddr::V6(Ipv6Addr::from(ev.saddr)),
            IpAddr::V6(Ipv6Addr::from(ev.daddr)),
        ),
        other => return Err(DecodeError::Family(other)),
    };
    Ok(Transition {
        ts_ns: ev.ts_ns,
        sk: ev.skaddr,
        pid: ev.pid,
        tid: ev.tid,
        comm: Comm::new(ev.comm),
        netns: ev.netns,
        family,
        saddr,
        sport: ev.sport,
        daddr,
        dport: ev.dport,
        old: State(ev.oldstate),
        new: State(ev.newstate),
    })
}

/// Converts the probe's per-socket note; `None` for an operation this build does not know.
pub fn last_io(io: &SocketIo) -> Option<LastIo> {
    let op = match io.op {
        IO_RECV => IoOp::Recv,
        IO_SEND => IoOp::Send,
        IO_EOF => IoOp::Eof,
        _ => return None,
    };
    Some(LastIo {
        ts_ns: io.ts_ns,
        pid: io.pid,
        comm: Comm::new(io.comm),
        op,
    })
}

fn ipv4(bytes: &[u8; 16]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::{TcpState, COMM_LEN};

    fn event(family: u16, saddr: [u8; 16], daddr: [u8; 16]) -> TransitionEvent {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"java");
        TransitionEvent {
            ts_ns: 123_456_789,
            skaddr: 0xffff_8880_1234_5678,
            pid: 4242,
            tid: 4243,
            sport: 61616,
            dport: 40000,
            family,
            oldstate: TcpState::Established as u8,
            newstate: TcpState::CloseWait as u8,
            saddr,
            daddr,
            comm,
            netns: 4026532111,
            reserved: 0,
        }
    }

    fn bytes_of(ev: &TransitionEvent) -> Vec<u8> {
        // SAFETY: plain data without padding (size asserted in tracer-common).
        unsafe {
            std::slice::from_raw_parts(
                (ev as *const TransitionEvent).cast::<u8>(),
                TRANSITION_EVENT_SIZE,
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_ipv4_in_network_order() {
        let mut s = [0u8; 16];
        s[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut d = [0u8; 16];
        d[..4].copy_from_slice(&[10, 1, 2, 3]);
        let t = decode(&bytes_of(&event(AF_INET, s, d))).unwrap();
        assert_eq!(t.family, Family::Ipv4);
        assert_eq!(t.saddr.to_string(), "127.0.0.1");
        assert_eq!(t.daddr.to_string(), "10.1.2.3");
        assert_eq!((t.sport, t.dport), (61616, 40000));
        assert_eq!(
            (t.pid, t.tid, t.comm.to_string()),
            (4242, 4243, "java".to_owned())
        );
        assert_eq!(t.sk, 0xffff_8880_1234_5678);
        assert_eq!(
            format!("{} -> {}", t.old, t.new),
            "ESTABLISHED -> CLOSE_WAIT"
        );
    }

    #[test]
    fn decodes_ipv6_short_and_mapped_forms() {
        let lo: [u8; 16] = Ipv6Addr::LOCALHOST.octets();
        let mapped: [u8; 16] = Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped().octets();
        let t = decode(&bytes_of(&event(AF_INET6, lo, mapped))).unwrap();
        assert_eq!(t.family, Family::Ipv6);
        assert_eq!(t.saddr.to_string(), "::1");
        assert_eq!(t.daddr.to_string(), "::ffff:192.0.2.7");
        let doc: [u8; 16] = "2001:db8::1:0:0:1".parse::<Ipv6Addr>().unwrap().octets();
        let t = decode(&bytes_of(&event(AF_INET6, doc, lo))).unwrap();
        assert_eq!(t.saddr.to_string(), "2001:db8::1:0:0:1");
    }

    #[test]
    fn rejects_bad_length_and_family() {
        let ev = event(AF_INET, [0; 16], [0; 16]);
        let bytes = bytes_of(&ev);
        assert_eq!(decode(&bytes[..87]), Err(DecodeError::Length { got: 87 }));
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0; 8]);
        assert_eq!(decode(&padded), Err(DecodeError::Length { got: 96 }));
        assert_eq!(
            decode(&bytes_of(&event(1, [0; 16], [0; 16]))),
            Err(DecodeError::Family(1))
        );
    }

    #[test]
    fn keeps_unknown_states_and_full_comm() {
        let mut ev = event(AF_INET, [0; 16], [0; 16]);
        ev.newstate = 42;
        ev.comm = *b"sixteen-chars-xx";
        let t = from_event(&ev).unwrap();
        assert_eq!(t.new.to_string(), "STATE_42");
        assert_eq!(t.comm.to_string(), "sixteen-chars-xx");
        ev.comm = *b"caf\xc3\xa9\xff\0\0\0\0\0\0\0\0\0\0";
        assert_eq!(from_event(&ev).unwrap().comm.to_string(), "café\u{fffd}");
    }

    #[test]
    fn decodes_last_io() {
        let mut io = SocketIo {
            ts_ns: 7,
            pid: 4242,
            op: IO_EOF,
            comm: *b"java\0\0\0\0\0\0\0\0\0\0\0\0",
        };
        let l = last_io(&io).unwrap();
        assert_eq!(
            (l.ts_ns, l.pid, l.comm.to_string(), l.op),
            (7, 4242, "java".to_owned(), IoOp::Eof)
        );
        io.op = IO_SEND;
        assert_eq!(last_io(&io).map(|l| l.op.name()), Some("send"));
        io.op = IO_RECV;
        assert_eq!(last_io(&io).map(|l| l.op.name()), Some("recv"));
        io.op = 9;
        assert_eq!(last_io(&io), None);
    }
}
