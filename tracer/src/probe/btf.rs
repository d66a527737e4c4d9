//! Reads what the probe needs from the kernel's BTF (`/sys/kernel/btf/vmlinux`): struct
//! members' offsets, function parameter names (so that the probe finds `tcp_recvmsg`'s
//! flags wherever this kernel's signature puts them), which tracepoints `tp_btf` can attach
//! to. aya parses BTF too, but does not expose these. The blob (5 MiB or more) is read and
//! indexed once, by [`Btf::parse`], for every question.

use tracer_common::{NetnsOffsets, SockOffsets};

/// Where the running kernel's BTF is.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
const TYPE_LEN: usize = 12;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

/// Why the kernel's BTF could not be read, or did not have what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BtfError {
    #[error("this kernel has no BTF ({VMLINUX} is missing: CONFIG_DEBUG_INFO_BTF is off)")]
    Missing,
    #[error("cannot read kernel BTF: {0}")]
    Unreadable(String),
    #[error("not BTF data (bad magic or header)")]
    BadHeader,
    #[error("BTF data is truncated")]
    Truncated,
    #[error("BTF has an unknown type kind {0}")]
    UnknownKind(u32),
    #[error("BTF has no function {0}")]
    NoFunction(String),
    #[error("BTF function {0} has no prototype")]
    NoPrototype(String),
    #[error("BTF has no {0}")]
    NoMember(String),
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    let bytes = data.get(at..at + 4).ok_or(BtfError::Truncated)?;
    Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
}

/// The NUL-terminated string at `offset` of the string section.
fn string_at(strings: &[u8], offset: u32) -> Result<&str, BtfError> {
    let tail = strings.get(offset as usize..).ok_or(BtfError::Truncated)?;
    let end = tail
        .iter()
        .position(|&b| b == 0)
        .ok_or(BtfError::Truncated)?;
    std::str::from_utf8(&tail[..end]).map_err(|_| BtfError::Truncated)
}

/// Bytes that follow a type's 12-byte header, by kind.
fn extra_len(kind: u32, vlen: usize) -> Result<usize, BtfError> {
    Ok(match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
        KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
        // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG.
        2 | 7..=12 | 16 | 18 => 0,
        k => return Err(BtfError::UnknownKind(k)),
    })
}

/// Where the probe finds a socket's network namespace inode in the running kernel, from
/// its BTF: `sock.__sk_common.skc_net.net` (a `struct net *`), then `net.ns.inum`.
pub fn netns_offsets(btf: &Btf<'_>) -> Result<NetnsOffsets, BtfError> {
    let sk_net = member_offset(btf, "sock", &["__sk_common", "skc_net", "net"])?;
    let net_inum = member_offset(btf, "net", &["ns", "inum"])?;
    let narrow = |o: u32, what: &str| {
        u16::try_from(o).map_err(|_| BtfError::NoMember(format!("{what} within 64 KiB")))
    };
    Ok(NetnsOffsets {
        sk_net: narrow(sk_net, "sock.__sk_common.skc_net")?,
        net_inum: narrow(net_inum, "net.ns.inum")?,
    })
}

/// Where `tp_btf/inet_sock_set_state` finds the socket's fields in the running kernel, from
/// its BTF. The classic tracepoint's record takes the local IPv4 address from `inet_sock`,
/// past the end of `struct sock`, where the verifier refuses loads through a `sock *`; the
/// kernel sets `skc_rcv_saddr` together with it (bind, connect, accept), so the program
/// reads that. The local port's twin, `skc_num`, is cleared before the move to CLOSE, so
/// the program copies `inet_sport` with a helper only when `skc_num` reads 0. The current
/// task's name is read the same way, through its BTF pointer.
pub fn sock_offsets(btf: &Btf<'_>) -> Result<SockOffsets, BtfError> {
    let at = |structure: &str, path: &[&str]| {
        let o = member_offset(btf, structure, path)?;
        u16::try_from(o).map_err(|_| {
            BtfError::NoMember(format!("{structure}.{} within 64 KiB", path.join(".")))
        })
    };
    let common = |field: &str| at("sock", &["__sk_common", field]);
    Ok(SockOffsets {
        family: common("skc_family")?,
        protocol: at("sock", &["sk_protocol"])?,
        sport: at("inet_sock", &["inet_sport"])?,
        dport: common("skc_dport")?,
        num: common("skc_num")?,
        saddr: common("skc_rcv_saddr")?,
        daddr: common("skc_daddr")?,
        saddr_v6: common("skc_v6_rcv_saddr")?,
        daddr_v6: common("skc_v6_daddr")?,
        task_comm: at("task_struct", &["comm"])?,
    })
}

/// Reads the running kernel's BTF.
pub fn read_vmlinux() -> Result<Vec<u8>, BtfError> {
    std::fs::read(VMLINUX).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => BtfError::Missing,
        _ => BtfError::Unreadable(e.to_string()),
    })
}

/// The kernel's BTF that [`read_vmlinux`] returned, parsed; the read's error if it failed.
pub fn parse_read(read: &Result<Vec<u8>, BtfError>) -> Result<Btf<'_>, BtfError> {
    read.as_ref()
        .map_err(Clone::clone)
        .and_then(|data| Btf::parse(data))
}

/// A parsed BTF blob: its types, indexed by id, and its strings.
pub struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Byte offset in `types` of each type, by id (ids start at 1; 0 is void).
    offsets: Vec<usize>,
}

/// A type's kind, name offset, member count and the word after them (size or type).
struct TypeHeader {
    name: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    size_or_type: u32,
}

impl<'a> Btf<'a> {
    /// Parses the (little-endian) BTF blob `data`.
    pub fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        if data.len() < HEADER_LEN || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            return Err(BtfError::BadHeader);
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let types = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Truncated)?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Truncated)?;
        let mut btf = Btf {
            types,
            strings,
            offsets: vec![0],
        };
        let mut at = 0;
        while at < types.len() {
            let h = btf.header_at(at)?;
            btf.offsets.push(at);
            at += TYPE_LEN + extra_len(h.kind, h.vlen)?;
        }
        Ok(btf)
    }

    fn header_at(&self, at: usize) -> Result<TypeHeader, BtfError> {
        let info = u32_at(self.types, at + 4)?;
        Ok(TypeHeader {
            name: u32_at(self.types, at)?,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            size_or_type: u32_at(self.types, at + 8)?,
        })
    }

    /// The offset in `types` and the header of type `id`.
    fn get(&self, id: u32) -> Option<(usize, TypeHeader)> {
        let at = *self.offsets.get(id as usize).filter(|_| id != 0)?;
        Some((at, self.header_at(at).ok()?))
    }

    fn name(&self, offset: u32) -> Result<&'a str, BtfError> {
        string_at(self.strings, offset)
    }

    /// The first type of `kind` named `name` (with members, for a struct: not a forward
    /// declaration's twin).
    fn find(&self, kind: u32, name: &str) -> Option<u32> {
        (1..self.offsets.len() as u32).find(|&id| {
            self.get(id).is_some_and(|(_, h)| {
                h.kind == kind
                    && (kind != KIND_STRUCT || h.vlen > 0)
                    && self.name(h.name) == Ok(name)
            })
        })
    }

    /// Type `id` with typedefs and qualifiers (const, volatile, restrict, type tags) peeled.
    fn resolve(&self, mut id: u32) -> Option<(usize, TypeHeader)> {
        for _ in 0..32 {
            let (at, h) = self.get(id)?;
            match h.kind {
                8..=11 | 18 => id = h.size_or_type,
                _ => return Some((at, h)),
            }
        }
        None
    }

    /// Byte offset and type of member `member` of the struct or union `id`, looking into
    /// anonymous members too (`union { struct { ... }; }`).
    fn member(&self, id: u32, member: &str) -> Option<(u32, u32)> {
        let (at, h) = self.resolve(id)?;
        if h.kind != KIND_STRUCT && h.kind != KIND_UNION {
            return None;
        }
        for i in 0..h.vlen {
            let m = at + TYPE_LEN + 12 * i;
            let name = u32_at(self.types, m).ok()?;
            let ty = u32_at(self.types, m + 4).ok()?;
            let raw = u32_at(self.types, m + 8).ok()?;
            // With kind_flag, the top 8 bits give a bitfield's size.
            let bits = if h.kind_flag { raw & 0xff_ffff } else { raw };
            if name == 0 {
                if let Some((inner, t)) = self.member(ty, member) {
                    return Some((bits / 8 + inner, t));
                }
            } else if self.name(name).ok()? == member {
                return Some((bits / 8, ty));
            }
        }
        None
    }
}

/// The parameter names of function `name`, in order.
pub fn function_params(btf: &Btf<'_>, name: &str) -> Result<Vec<String>, BtfError> {
    let func = btf
        .find(KIND_FUNC, name)
        .ok_or_else(|| BtfError::NoFunction(name.to_owned()))?;
    let (_, func) = btf.get(func).ok_or(BtfError::Truncated)?;
    let (at, proto) = btf
        .get(func.size_or_type)
        .filter(|(_, h)| h.kind == KIND_FUNC_PROTO)
        .ok_or_else(|| BtfError::NoPrototype(name.to_owned()))?;
    (0..proto.vlen)
        .map(|i| {
            btf.name(u32_at(btf.types, at + TYPE_LEN + 8 * i)?)
                .map(str::to_owned)
        })
        .collect()
}

/// Whether the kernel has the tracepoint `name` for BTF-enabled programs (`tp_btf`): its
/// BTF then types the arguments as `typedef ... btf_trace_<name>`, which the loader looks up.
pub fn has_raw_tracepoint(btf: &Btf<'_>, name: &str) -> bool {
    btf.find(KIND_TYPEDEF, &format!("btf_trace_{name}"))
        .is_some()
}

/// The byte offset of `path` (member names, one per level of nesting) in struct
/// `structure`, e.g. `("sock", ["__sk_common", "skc_net", "net"])`.
pub fn member_offset(btf: &Btf<'_>, structure: &str, path: &[&str]) -> Result<u32, BtfError> {
    let mut ty = btf
        .find(KIND_STRUCT, structure)
        .ok_or_else(|| BtfError::NoMember(structure.to_owned()))?;
    let mut offset = 0;
    for (i, member) in path.iter().enumerate() {
        let (o, t) = btf
            .member(ty, member)
            .ok_or_else(|| BtfError::NoMember(format!("{structure}.{}", path[..=i].join("."))))?;
        offset += o;
        ty = t;
    }
    Ok(offset)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A BTF blob with `int`, `void *`, and one function per (name, parameter names).
    pub(crate) fn blob(functions: &[(&str, &[&str])]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut string = |s: &str| {
            let at = strings.len() as u32;
            strings.extend_from_slice(s.as_bytes());
            strings.push(0);
            at
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int (with its extra word); 2: void * (a pointer to type 0).
        push(&[string("int"), KIND_INT << 24, 4, 32]);
        push(&[0, 2 << 24, 0]);
        let mut id = 3;
        for (name, params) in functions {
            let mut proto = vec![0, KIND_FUNC_PROTO << 24 | params.len() as u32, 1];
            for p in *params {
                proto.extend([string(p), 2]);
            }
            push(&proto);
            push(&[string(name), KIND_FUNC << 24 | 1, id]);
            id += 2;
        }
        let mut data = Vec::new();
        data.extend_from_slice(&MAGIC.to_le_bytes());
        data.extend_from_slice(&[1, 0]);
        for w in [HEADER_LEN as u32, 0, types.len() as u32, types.len() as u32] {
            data.extend_from_slice(&w.to_le_bytes());
        }
        data.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        data.extend_from_slice(&types);
        data.extend_from_slice(&strings);
        data
    }

    #[test]
    fn finds_a_functions_parameters() {
        let data = blob(&[
            ("tcp_sendmsg", &["sk", "msg", "size"]),
            ("tcp_recvmsg", &["sk", "msg", "len", "flags", "addr_len"]),
        ]);
        let data = Btf::parse(&data).unwrap();
        assert_eq!(
            function_params(&data, "tcp_recvmsg").unwrap(),
            ["sk", "msg", "len", "flags", "addr_len"]
        );
        assert_eq!(
            function_params(&data, "tcp_sendmsg").unwrap(),
            ["sk", "msg", "size"]
        );
        assert_eq!(
            function_params(&data, "tcp_close"),
            Err(BtfError::NoFunction("tcp_close".into()))
        );
    }

    #[test]
    fn refuses_what_is_not_btf() {
        assert_eq!(Btf::parse(b"ELF").err(), Some(BtfError::BadHeader));
        let data = blob(&[("f", &["a"])]);
        assert_eq!(
            Btf::parse(&data[..data.len() - 8]).err(),
            Some(BtfError::Truncated)
        );
    }

    #[test]
    fn reads_the_running_kernels_btf() {
        // Where the kernel has BTF (every kernel this project targets), tcp_recvmsg's first
        // parameter is the socket and its flags come third or fourth.
        let Ok(data) = read_vmlinux() else {
            eprintln!("no {VMLINUX}: nothing to check");
            return;
        };
        let data = Btf::parse(&data).unwrap();
        // The namespace is behind a pointer somewhere in sock_common, and its inode a
        // little way into struct net.
        let off = netns_offsets(&data).unwrap();
        assert!(
            off.sk_net > 0 && off.sk_net.is_multiple_of(8) && off.sk_net < 136,
            "{off:?}"
        );
        assert!(
            off.net_inum.is_multiple_of(4) && off.net_inum < 1024,
            "{off:?}"
        );
        // The socket's fields: a struct sock starts with its sock_common, and inet_sock
        // with its struct sock.
        let sock = sock_offsets(&data).unwrap();
        assert!(
            sock.family < 32 && sock.dport < 32 && sock.num < 32 && sock.saddr < 8,
            "{sock:?}"
        );
        assert!(
            sock.protocol > 136 && sock.sport > sock.protocol,
            "{sock:?}"
        );
        assert!(sock.saddr_v6.is_multiple_of(8) && sock.daddr_v6.is_multiple_of(8));
        assert!(
            sock.task_comm > 256 && sock.task_comm.is_multiple_of(8),
            "{sock:?}"
        );
        // The transition tracepoint is there for tp_btf on every kernel this project runs on.
        assert!(has_raw_tracepoint(&data, "inet_sock_set_state"));
        assert!(!has_raw_tracepoint(&data, "no_such_tracepoint"));
        let params = function_params(&data, "tcp_recvmsg").unwrap();
        assert_eq!(params[0], "sk");
        assert!(matches!(
            params.iter().position(|p| p == "flags"),
            Some(3 | 4)
        ));
    }
}
