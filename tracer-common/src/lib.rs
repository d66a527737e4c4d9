//! Types shared by the kernel probe (`tracer-ebpf`) and userspace (`tracer`).
//!
//! Every layout here crosses the kernel/user boundary byte for byte, so each is
//! `#[repr(C)]`, has no implicit padding, and has its size pinned by a compile-time assert.
#![no_std]

/// Longest task command name the kernel keeps (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Most ports `--port` can push into the probe.
pub const MAX_PORTS: usize = 8;

/// Most network namespaces `--netns` can push into the probe.
pub const MAX_NETNS: usize = 8;

/// `AF_INET`, as the tracepoint reports it.
pub const AF_INET: u16 = 2;
/// `AF_INET6`, as the tracepoint reports it.
pub const AF_INET6: u16 = 10;
/// `IPPROTO_TCP`: the tracepoint also fires for other inet protocols; only TCP is kept.
pub const IPPROTO_TCP: u16 = 6;

/// Index in the probe's `STATS` per-CPU array of the count of events the ring buffer had
/// no room for.
pub const STAT_LOST: u32 = 0;
/// Index in `STATS` of the transitions whose record could not be read (bad offsets, a
/// fault): 0 unless the probe and the kernel disagree.
pub const STAT_UNREADABLE: u32 = 1;
/// Index in `STATS` of the transitions of sockets that are not TCP over IPv4/IPv6.
pub const STAT_NOT_TCP: u32 = 2;
/// Index in `STATS` of the TCP transitions the user's filters left out.
pub const STAT_FILTERED: u32 = 3;
/// Number of entries in the probe's `STATS` array.
pub const STAT_COUNT: u32 = 4;

/// One TCP state transition, as the probe writes it into the ring buffer.
///
/// Addresses are in network byte order; an IPv4 address fills the first 4 bytes.
/// Ports are in host byte order (the tracepoint already converted them).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransitionEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Kernel address of the `struct sock`: the socket's identity for its whole life.
    pub skaddr: u64,
    /// Thread-group id (the userspace pid) of the task current when the state changed.
    pub pid: u32,
    /// Thread id of that task.
    pub tid: u32,
    /// Local port, host order.
    pub sport: u16,
    /// Remote port, host order.
    pub dport: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// State before the change (kernel `TCP_*` number).
    pub oldstate: u8,
    /// State after the change.
    pub newstate: u8,
    /// Local address, network order.
    pub saddr: [u8; 16],
    /// Remote address, network order.
    pub daddr: [u8; 16],
    /// Command name of the current task, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// Inode of the socket's network namespace (`sk->__sk_common.skc_net.net->ns.inum`);
    /// 0 when the probe has no offsets for it or could not read it.
    pub netns: u32,
    /// Keeps the record a multiple of 8 bytes, as the ring buffer would pad it anyway.
    pub reserved: u32,
}

/// Byte size of a [`TransitionEvent`] record in the ring buffer.
pub const TRANSITION_EVENT_SIZE: usize = 88;
const _: () = assert!(core::mem::size_of::<TransitionEvent>() == TRANSITION_EVENT_SIZE);

/// Where each field sits in a `sock:inet_sock_set_state` record, read by userspace from the
/// tracepoint's format file so the probe never relies on one kernel's layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FieldOffsets {
    pub skaddr: u16,
    pub oldstate: u16,
    pub newstate: u16,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub protocol: u16,
    pub saddr: u16,
    pub daddr: u16,
    pub saddr_v6: u16,
    pub daddr_v6: u16,
    /// Bytes from the record's start through the end of its last field.
    pub record_len: u16,
}
const _: () = assert!(core::mem::size_of::<FieldOffsets>() == 24);

/// The `inet_sock_set_state` layout of Linux 4.16 and later (read off 6.18's format file).
/// When the running kernel's format file gives exactly this, userspace sets
/// [`ProbeConfig::direct_access`] and the probe loads fields straight from the tracepoint
/// context at these constant offsets instead of copying the record.
pub const KNOWN_LAYOUT: FieldOffsets = FieldOffsets {
    skaddr: 8,
    oldstate: 16,
    newstate: 20,
    sport: 24,
    dport: 26,
    family: 28,
    protocol: 30,
    saddr: 32,
    daddr: 36,
    saddr_v6: 40,
    daddr_v6: 56,
    record_len: 72,
};
// Direct context loads must be naturally aligned.
const _: () = assert!(
    KNOWN_LAYOUT.skaddr.is_multiple_of(8)
        && KNOWN_LAYOUT.oldstate.is_multiple_of(4)
        && KNOWN_LAYOUT.newstate.is_multiple_of(4)
        && KNOWN_LAYOUT.sport.is_multiple_of(2)
        && KNOWN_LAYOUT.dport.is_multiple_of(2)
        && KNOWN_LAYOUT.family.is_multiple_of(2)
        && KNOWN_LAYOUT.protocol.is_multiple_of(2)
        && KNOWN_LAYOUT.saddr.is_multiple_of(4)
        && KNOWN_LAYOUT.daddr.is_multiple_of(4)
        && KNOWN_LAYOUT.saddr_v6.is_multiple_of(8)
        && KNOWN_LAYOUT.daddr_v6.is_multiple_of(8)
);

/// The last send or receive on a TCP socket, as the probe keeps it per socket (keyed by
/// the socket's kernel address) from whichever send/receive hooks the kernel offers
/// (`sock:sock_recv_length`/`sock_send_length`, fexit/fentry or kprobes on
/// `tcp_recvmsg`/`tcp_sendmsg`). All run in the calling process's context: unlike the
/// task current at a transition, this names a process that really uses the socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketIo {
    /// `bpf_ktime_get_ns()` of the last call.
    pub ts_ns: u64,
    /// Thread-group id (the userspace pid) of the caller.
    pub pid: u32,
    /// What the last call was: [`IO_RECV`], [`IO_SEND`] or [`IO_EOF`].
    pub op: u32,
    /// Command name of the caller when it first used the socket, NUL-padded.
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<SocketIo>() == 32);

/// [`SocketIo::op`]: a receive that returned data or an error.
pub const IO_RECV: u32 = 1;
/// [`SocketIo::op`]: a send.
pub const IO_SEND: u32 = 2;
/// [`SocketIo::op`]: a receive that returned 0, the peer's end of stream.
pub const IO_EOF: u32 = 3;
/// `MSG_PEEK`: a peek that returns 0 has not consumed the end of stream.
pub const MSG_PEEK: i32 = 2;

/// Where the fields the probe reads sit in `sock:sock_recv_length` and
/// `sock:sock_send_length` records (both Linux 6.3+). Userspace checks the running kernel's
/// format files against it and leaves these tracepoints off when they differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoLayout {
    pub sk: u16,
    pub family: u16,
    pub protocol: u16,
    pub ret: u16,
    pub flags: u16,
}

/// The layout of `sock_recv_length` and `sock_send_length` on 6.3 to 6.18.
pub const IO_LAYOUT: IoLayout = IoLayout {
    sk: 8,
    family: 16,
    protocol: 18,
    ret: 20,
    flags: 24,
};
const _: () = assert!(
    IO_LAYOUT.sk.is_multiple_of(8)
        && IO_LAYOUT.family.is_multiple_of(2)
        && IO_LAYOUT.protocol.is_multiple_of(2)
        && IO_LAYOUT.ret.is_multiple_of(4)
        && IO_LAYOUT.flags.is_multiple_of(4)
);

/// Where the probe finds a socket's network namespace inode, from kernel BTF: the
/// `struct net *` at `sk_net` bytes into `struct sock` (`__sk_common.skc_net.net`), then
/// the inode at `net_inum` bytes into `struct net` (`ns.inum`). `sk_net == 0` means
/// unknown (no BTF): the probe then reports namespace 0 and cannot filter by namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetnsOffsets {
    pub sk_net: u16,
    pub net_inum: u16,
}
const _: () = assert!(core::mem::size_of::<NetnsOffsets>() == 4);

/// Where the BTF-enabled transition program (`tp_btf/inet_sock_set_state`) reads the
/// socket's fields, in bytes from the start of `struct sock`, from the running kernel's BTF:
/// the values the classic tracepoint copies into its record (see `sport`, `saddr`). `family == 0` means
/// unknown: userspace then attaches the classic tracepoint instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `__sk_common.skc_family` (u16).
    pub family: u16,
    /// `sk_protocol` (u16 since Linux 5.6).
    pub protocol: u16,
    /// `inet_sock.inet_sport` (big-endian u16), past `struct sock`: copied by a helper.
    pub sport: u16,
    /// `__sk_common.skc_dport` (big-endian u16).
    pub dport: u16,
    /// `__sk_common.skc_num` (the local port, host order): set with `inet_sport` and read
    /// without a helper; 0 once the port is released, and then `sport` is copied.
    pub num: u16,
    /// `__sk_common.skc_rcv_saddr` (IPv4, network order): set with the record's
    /// `inet_saddr` on bind, connect and accept.
    pub saddr: u16,
    /// `__sk_common.skc_daddr` (IPv4, network order).
    pub daddr: u16,
    /// `__sk_common.skc_v6_rcv_saddr` (16 bytes).
    pub saddr_v6: u16,
    /// `__sk_common.skc_v6_daddr` (16 bytes).
    pub daddr_v6: u16,
    /// `task_struct.comm` (16 bytes), read through the current task's BTF pointer: two
    /// loads, where `bpf_get_current_comm` costs a helper call and a string copy.
    pub task_comm: u16,
}
const _: () = assert!(core::mem::size_of::<SockOffsets>() == 20);

/// Largest tracepoint record the probe copies; offsets beyond it are refused in userspace.
pub const MAX_RECORD_LEN: usize = 128;

/// What the probe keeps, set once at load time as read-only global data so that the
/// verifier can prune disabled filters and nothing unwanted reaches the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    pub offsets: FieldOffsets,
    /// Ports kept (local or remote); only the first `port_count` are used.
    pub ports: [u16; MAX_PORTS],
    /// 0 keeps every port.
    pub port_count: u16,
    /// Family kept: 0 for both, else `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Bit `1 << state` set for each state kept on either side of a transition; 0 keeps all.
    pub state_mask: u32,
    /// Where the socket's network namespace inode is.
    pub netns_offsets: NetnsOffsets,
    /// Network namespaces kept (by inode); only the first `netns_count` are used.
    pub netns: [u32; MAX_NETNS],
    /// 0 keeps every namespace.
    pub netns_count: u32,
    /// Events one CPU writes between two wakeups of the reader; in between the reader
    /// finds events on its own short poll, which saves a wakeup per event under load.
    pub wakeup_events: u32,
    /// 1: `offsets` are [`KNOWN_LAYOUT`] and the probe loads fields straight from the
    /// tracepoint context; 0: it copies the record and reads it at `offsets`.
    pub direct_access: u32,
    /// 1: a send/receive mechanism may be attached, and the probe forgets a socket's
    /// [`SocketIo`] when a new socket is born at the same address in a transition that
    /// userspace does not get (filtered out, or lost to a full ring).
    pub io_hints: u32,
    /// Position (from 0) of `flags` among `tcp_recvmsg`'s arguments, which the fexit and
    /// kprobe programs read: 3 since Linux 5.19, 4 before (a `nonblock` argument preceded
    /// it). Userspace takes it from the kernel's BTF.
    pub recv_flags_arg: u32,
    /// 1: the programs log unexpected cases through aya-log (`TRACER_DEBUG=1`); 0 prunes
    /// the logging code at load time.
    pub debug: u32,
    /// Where `tp_btf/inet_sock_set_state` reads the socket's fields.
    pub sock_offsets: SockOffsets,
}
const _: () = assert!(core::mem::size_of::<ProbeConfig>() == 128);

impl ProbeConfig {
    /// A configuration that keeps everything, for records laid out as `offsets` says.
    pub const fn new(offsets: FieldOffsets) -> Self {
        Self {
            offsets,
            ports: [0; MAX_PORTS],
            port_count: 0,
            family: 0,
            state_mask: 0,
            netns_offsets: NetnsOffsets {
                sk_net: 0,
                net_inum: 0,
            },
            netns: [0; MAX_NETNS],
            netns_count: 0,
            wakeup_events: 0,
            direct_access: 0,
            io_hints: 0,
            recv_flags_arg: 0,
            debug: 0,
            sock_offsets: SockOffsets {
                family: 0,
                protocol: 0,
                sport: 0,
                dport: 0,
                num: 0,
                saddr: 0,
                daddr: 0,
                saddr_v6: 0,
                daddr_v6: 0,
                task_comm: 0,
            },
        }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: both are repr(C), made only of integers and integer arrays, with no padding
    // (sizes asserted above), so every byte pattern is valid.
    unsafe impl aya::Pod for super::ProbeConfig {}
    unsafe impl aya::Pod for super::TransitionEvent {}
    unsafe impl aya::Pod for super::SocketIo {}
}

/// Whether a transition from state number `old` to `new` starts a socket's life: connect()
/// or listen() on a fresh socket, or a connection created from a listener. The kernel reuses
/// a freed socket's memory, so what was noted at its address before belongs to another.
pub const fn is_birth(old: u32, new: u32) -> bool {
    old == TcpState::Close as u32 || new == TcpState::SynRecv as u32
}

/// The kernel's TCP states (`include/net/tcp_states.h`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    NewSynRecv = 12,
    BoundInactive = 13,
}

impl TcpState {
    /// Every state, in kernel order.
    pub const ALL: [TcpState; 13] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
        TcpState::BoundInactive,
    ];

    /// The state with kernel number `n`, if there is one.
    pub const fn from_u8(n: u8) -> Option<Self> {
        if n >= 1 && n as usize <= Self::ALL.len() {
            Some(Self::ALL[n as usize - 1])
        } else {
            None
        }
    }

    /// The kernel's name without its `TCP_` prefix, e.g. `CLOSE_WAIT`.
    pub const fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::NewSynRecv => "NEW_SYN_RECV",
            TcpState::BoundInactive => "BOUND_INACTIVE",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_numbers_round_trip() {
        for s in TcpState::ALL {
            assert_eq!(TcpState::from_u8(s as u8), Some(s));
        }
        assert_eq!(TcpState::from_u8(0), None);
        assert_eq!(TcpState::from_u8(14), None);
        assert_eq!(TcpState::CloseWait as u8, 8);
        assert_eq!(TcpState::from_u8(8).map(TcpState::name), Some("CLOSE_WAIT"));
    }
}
