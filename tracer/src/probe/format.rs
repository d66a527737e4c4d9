//! Reads a tracepoint's `format` file into the field offsets the probe uses, so the probe
//! follows the running kernel's layout instead of one compiled in.

use tracer_common::{FieldOffsets, IO_LAYOUT, MAX_RECORD_LEN};

/// Why a format file cannot drive the probe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("field `{0}` is missing")]
    Missing(&'static str),
    #[error("field `{name}` is {size} bytes, expected {expected}")]
    Size {
        name: &'static str,
        size: usize,
        expected: usize,
    },
    #[error("field `{name}` ends at byte {end}, past the {MAX_RECORD_LEN} bytes the probe copies")]
    TooFar { name: &'static str, end: usize },
    #[error("malformed line: {0}")]
    Malformed(String),
    #[error("field `{name}` is at byte {offset}, expected {expected}")]
    Moved {
        name: &'static str,
        offset: usize,
        expected: usize,
    },
}

/// The fields the probe reads, with the size each must have.
const FIELDS: [(&str, usize); 11] = [
    ("skaddr", 8),
    ("oldstate", 4),
    ("newstate", 4),
    ("sport", 2),
    ("dport", 2),
    ("family", 2),
    ("protocol", 2),
    ("saddr", 4),
    ("daddr", 4),
    ("saddr_v6", 16),
    ("daddr_v6", 16),
];

/// One `field:` line: its name, offset and size.
fn parse_line(line: &str) -> Result<Option<(&str, usize, usize)>, FormatError> {
    let line = line.trim();
    let Some(rest) = line.strip_prefix("field:") else {
        return Ok(None);
    };
    let malformed = || FormatError::Malformed(line.to_owned());
    let mut parts = rest.split(';').map(str::trim);
    // "const void * skaddr" or "__u8 saddr[4]": the name is the last word, less any [N].
    let decl = parts.next().ok_or_else(malformed)?;
    let name = decl.rsplit([' ', '*']).next().ok_or_else(malformed)?;
    let name = name.split('[').next().unwrap_or(name);
    let mut offset = None;
    let mut size = None;
    for part in parts {
        if let Some(v) = part.strip_prefix("offset:") {
            offset = Some(v.parse().map_err(|_| malformed())?);
        } else if let Some(v) = part.strip_prefix("size:") {
            size = Some(v.parse().map_err(|_| malformed())?);
        }
    }
    match (offset, size) {
        (Some(o), Some(s)) => Ok(Some((name, o, s))),
        _ => Err(malformed()),
    }
}

/// The offsets of `fields` (name, required size) in a format file, in the same order.
fn offsets<const N: usize>(
    text: &str,
    fields: &[(&'static str, usize); N],
) -> Result<[usize; N], FormatError> {
    let mut found = [None::<usize>; N];
    for line in text.lines() {
        let Some((name, offset, size)) = parse_line(line)? else {
            continue;
        };
        let Some(i) = fields.iter().position(|(n, _)| *n == name) else {
            continue;
        };
        let (name, expected) = fields[i];
        if size != expected {
            return Err(FormatError::Size {
                name,
                size,
                expected,
            });
        }
        found[i] = Some(offset);
    }
    let mut at = [0; N];
    for (i, (name, _)) in fields.iter().enumerate() {
        at[i] = found[i].ok_or(FormatError::Missing(name))?;
    }
    Ok(at)
}

/// Parses `events/sock/inet_sock_set_state/format`.
pub fn parse(text: &str) -> Result<FieldOffsets, FormatError> {
    let found = offsets(text, &FIELDS)?;
    let mut record_len = 0;
    let mut at = [0u16; FIELDS.len()];
    for (i, (name, size)) in FIELDS.iter().enumerate() {
        let end = found[i] + size;
        if end > MAX_RECORD_LEN {
            return Err(FormatError::TooFar { name, end });
        }
        record_len = record_len.max(end);
        // Bounded by MAX_RECORD_LEN above, so the narrowing is exact.
        at[i] = found[i] as u16;
    }
    let [skaddr, oldstate, newstate, sport, dport, family, protocol, saddr, daddr, saddr_v6, daddr_v6] =
        at;
    Ok(FieldOffsets {
        skaddr,
        oldstate,
        newstate,
        sport,
        dport,
        family,
        protocol,
        saddr,
        daddr,
        saddr_v6,
        daddr_v6,
        record_len: record_len as u16,
    })
}

/// Checks a `sock_recv_length` or `sock_send_length` format file against [`IO_LAYOUT`],
/// the constant layout the probe reads those records with.
pub fn check_io(text: &str) -> Result<(), FormatError> {
    let l = IO_LAYOUT;
    let fields = [
        ("sk", 8),
        ("family", 2),
        ("protocol", 2),
        ("ret", 4),
        ("flags", 4),
    ];
    let expected = [l.sk, l.family, l.protocol, l.ret, l.flags];
    let found = offsets(text, &fields)?;
    for ((name, _), (&offset, &at)) in fields.iter().zip(found.iter().zip(&expected)) {
        if offset != at as usize {
            return Err(FormatError::Moved {
                name,
                offset,
                expected: at as usize,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The format file of kernel 6.18, verbatim but for the long print fmt line.
    const KERNEL_6_18: &str = "name: inet_sock_set_state
ID: 2287
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: \"family=%s protocol=%s\", REC->family
";

    #[test]
    fn parses_the_running_kernels_layout() {
        // KNOWN_LAYOUT, which the probe reads directly, is this file's layout.
        assert_eq!(parse(KERNEL_6_18), Ok(tracer_common::KNOWN_LAYOUT));
    }

    #[test]
    fn follows_moved_fields() {
        let moved = KERNEL_6_18.replace("offset:24;\tsize:2", "offset:90;\tsize:2");
        let o = parse(&moved).unwrap();
        assert_eq!(o.sport, 90);
        assert_eq!(o.record_len, 92);
    }

    #[test]
    fn refuses_what_the_probe_cannot_read() {
        let no_sport = KERNEL_6_18.replace("__u16 sport", "__u16 lport");
        assert_eq!(parse(&no_sport), Err(FormatError::Missing("sport")));
        let wide = KERNEL_6_18.replace("offset:26;\tsize:2", "offset:26;\tsize:4");
        assert_eq!(
            parse(&wide),
            Err(FormatError::Size {
                name: "dport",
                size: 4,
                expected: 2
            })
        );
        let far = KERNEL_6_18.replace("offset:56;\tsize:16", "offset:120;\tsize:16");
        assert_eq!(
            parse(&far),
            Err(FormatError::TooFar {
                name: "daddr_v6",
                end: 136
            })
        );
        let bad = KERNEL_6_18.replace("offset:8;", "offset:eight;");
        assert!(matches!(parse(&bad), Err(FormatError::Malformed(_))));
    }

    /// `sock_recv_length`'s format file on 6.18 (`sock_send_length`'s has the same fields).
    const RECV_6_18: &str = "name: sock_recv_length
ID: 2283
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * sk;\toffset:8;\tsize:8;\tsigned:0;
\tfield:__u16 family;\toffset:16;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:18;\tsize:2;\tsigned:0;
\tfield:int ret;\toffset:20;\tsize:4;\tsigned:1;
\tfield:int flags;\toffset:24;\tsize:4;\tsigned:1;

print fmt: \"sk address = %p\", REC->sk
";

    #[test]
    fn io_records_must_match_the_compiled_layout() {
        assert_eq!(check_io(RECV_6_18), Ok(()));
        let moved = RECV_6_18.replace("offset:20;\tsize:4", "offset:28;\tsize:4");
        assert_eq!(
            check_io(&moved),
            Err(FormatError::Moved {
                name: "ret",
                offset: 28,
                expected: 20
            })
        );
        let no_flags = RECV_6_18.replace("int flags", "int msg_flags");
        assert_eq!(check_io(&no_flags), Err(FormatError::Missing("flags")));
    }
}
