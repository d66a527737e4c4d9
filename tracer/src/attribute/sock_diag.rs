//! The kernel's own list of TCP sockets, from sock_diag netlink (INET_DIAG), as `ss` reads
//! it: endpoints, state, the inode that ties a socket to file descriptors, and tcp_info.
//!
//! A netlink socket lists the sockets of the network namespace it was created in: a
//! [`Diag`] made inside another namespace (see [`super::netns`]) lists that one's.
//!
//! netlink-packet-sock-diag builds and parses the messages (the rust-netlink project's
//! crate, also used by rtnetlink); only the one tcp_info field we need is read by hand, so
//! that a kernel with a shorter or longer tcp_info still parses.

use std::{io, net::IpAddr};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{nlas::Nla, ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

use crate::model::{Endpoints, Family, State};

/// One socket as sock_diag reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    /// The kernel's cookie for the socket (stable for its life).
    pub cookie: u64,
    pub ends: Endpoints,
    pub state: State,
    /// Inode of the socket's file; 0 when no file refers to it (in a listener's accept
    /// queue, or closed by its process and finishing on its own).
    pub inode: u64,
    /// Milliseconds since the last ACK arrived (`tcpi_last_ack_recv`), when asked for;
    /// TIME_WAIT minisockets have no tcp_info, so `None` for them even then.
    pub last_ack_recv_ms: Option<u32>,
}

/// A sock_diag netlink socket. It lists the sockets of the network namespace it was
/// created in, whichever thread uses it.
#[derive(Debug)]
pub struct Diag {
    socket: Socket,
    /// What the sockets it lists say as their namespace.
    netns: u32,
}

impl Diag {
    /// A socket in the calling thread's namespace, whose listings say `netns`.
    pub fn new(netns: u32) -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket, netns })
    }

    /// Lists the TCP sockets of `family` in `states` (a mask of `1 << state`); with
    /// `info`, also reads each socket's tcp_info.
    pub fn dump(&mut self, family: Family, states: u32, info: bool) -> io::Result<Vec<DiagSocket>> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut request = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family: match family {
                    Family::Ipv4 => AF_INET,
                    Family::Ipv6 => AF_INET6,
                },
                protocol: IPPROTO_TCP,
                extensions: if info {
                    ExtensionFlags::INFO
                } else {
                    ExtensionFlags::empty()
                },
                states: StateFlags::from_bits_truncate(states),
                socket_id: match family {
                    Family::Ipv4 => SocketId::new_v4(),
                    Family::Ipv6 => SocketId::new_v6(),
                },
            })
            .into(),
        );
        request.finalize();
        let mut buf = vec![0; request.buffer_len()];
        request.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let mut sockets = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = self.socket.recv(&mut &mut buf[..], 0)?;
            let mut offset = 0;
            while offset < n {
                let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[offset..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(sockets),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                        if let Some(s) = from_response(self.netns, family, &r) {
                            sockets.push(s);
                        }
                    }
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }
}

/// Lists the TCP sockets of `family` in `states` in the tracer's own namespace, with
/// namespace 0 on each; with `info`, also reads each socket's tcp_info.
pub fn dump(family: Family, states: u32, info: bool) -> io::Result<Vec<DiagSocket>> {
    Diag::new(0)?.dump(family, states, info)
}

fn from_response(netns: u32, family: Family, r: &InetResponse) -> Option<DiagSocket> {
    let h = &r.header;
    let id = &h.socket_id;
    let last_ack_recv_ms = r.nlas.iter().find_map(|nla| match nla {
        Nla::TcpInfo(bytes) => last_ack_recv(bytes),
        _ => None,
    });
    Some(DiagSocket {
        cookie: u64::from_ne_bytes(id.cookie),
        ends: Endpoints {
            netns,
            family,
            saddr: address(family, id.source_address)?,
            sport: id.source_port,
            daddr: address(family, id.destination_address)?,
            dport: id.destination_port,
        },
        state: State(h.state),
        inode: h.inode.into(),
        last_ack_recv_ms,
    })
}

/// The crate gives IPv4 addresses of AF_INET sockets as IPv4; keep them as the probe does.
fn address(family: Family, a: IpAddr) -> Option<IpAddr> {
    match (family, a) {
        (Family::Ipv4, IpAddr::V4(_)) | (Family::Ipv6, IpAddr::V6(_)) => Some(a),
        _ => None,
    }
}

/// `tcpi_last_ack_recv` of a `struct tcp_info`: a u32 at byte 56 since Linux 2.6.
fn last_ack_recv(tcp_info: &[u8]) -> Option<u32> {
    let bytes = tcp_info.get(56..60)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_last_ack_recv_from_tcp_info() {
        let mut info = vec![0u8; 232];
        info[56..60].copy_from_slice(&1234u32.to_ne_bytes());
        assert_eq!(last_ack_recv(&info), Some(1234));
        assert_eq!(last_ack_recv(&info[..59]), None);
    }
}
