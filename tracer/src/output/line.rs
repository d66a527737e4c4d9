//! A record line written in place, for the records `--events` writes once per transition.
//! Room is made once and each field is stored at a cursor: constant text and short fields
//! as fixed-size copies, numbers digit by digit where they go. Appending field by field
//! (`extend_from_slice` of an `itoa` string) instead calls memmove once per field, with a
//! length known only at run time.

use std::net::Ipv4Addr;

use tracer_common::TcpState;

use crate::model::{Comm, State};

/// Room made at a time: enough for a whole transition line but for its rare long fields,
/// so that it is made once. (128 made JSON lines, about 290 bytes, grow three times.)
const ROOM: usize = 384;

/// Two decimal digits for each number below 100.
const PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// A line being written at the end of `out`; [`Line::finish`] drops the unused room.
pub(super) struct Line<'a> {
    out: &'a mut Vec<u8>,
    /// Where the next byte goes.
    at: usize,
}

impl<'a> Line<'a> {
    /// A line appended to `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        let at = out.len();
        out.resize(at + ROOM, 0);
        Line { out, at }
    }

    /// Makes sure `n` more bytes fit.
    #[inline(always)]
    fn room(&mut self, n: usize) {
        if self.at + n > self.out.len() {
            self.out.resize(self.at + n + ROOM, 0);
        }
    }

    /// Constant text: inlined, its copy has a length known at compile time.
    #[inline(always)]
    pub fn text(&mut self, s: &[u8]) {
        self.room(s.len());
        self.out[self.at..self.at + s.len()].copy_from_slice(s);
        self.at += s.len();
    }

    /// One byte.
    #[inline(always)]
    pub fn byte(&mut self, b: u8) {
        self.room(1);
        self.out[self.at] = b;
        self.at += 1;
    }

    /// The first `len` bytes of `bytes`: all 16 are copied, the cursor moves by `len`.
    #[inline(always)]
    fn short(&mut self, bytes: &[u8; 16], len: usize) {
        self.room(16);
        self.out[self.at..self.at + 16].copy_from_slice(bytes);
        self.at += len.min(16);
    }

    /// `n` in decimal.
    pub fn uint(&mut self, n: u64) {
        let digits = n.checked_ilog10().map_or(1, |d| d as usize + 1);
        self.room(digits);
        self.digits(n, digits);
    }

    /// `n` in exactly `width` decimal digits, zeros first (`n` must fit).
    pub fn zero_padded(&mut self, n: u64, width: usize) {
        self.room(width);
        self.digits(n, width);
    }

    /// The last `width` decimal digits of `n`, two at a time from the right.
    #[inline(always)]
    fn digits(&mut self, mut n: u64, width: usize) {
        let digits = &mut self.out[self.at..self.at + width];
        let mut end = width;
        while end >= 2 {
            let pair = (n % 100) as usize * 2;
            digits[end - 2..end].copy_from_slice(&PAIRS[pair..pair + 2]);
            n /= 100;
            end -= 2;
        }
        if end == 1 {
            digits[0] = b'0' + (n % 10) as u8;
        }
        self.at += width;
    }

    /// `0x` and the lowercase hex digits, as `{:#x}` writes them.
    pub fn hex(&mut self, value: u64) {
        let digits = (64 - value.leading_zeros()).div_ceil(4).max(1) as usize;
        self.room(2 + digits);
        self.out[self.at..self.at + 2].copy_from_slice(b"0x");
        self.at += 2;
        for (i, d) in self.out[self.at..self.at + digits]
            .iter_mut()
            .rev()
            .enumerate()
        {
            *d = b"0123456789abcdef"[(value >> (i * 4)) as usize & 0xf];
        }
        self.at += digits;
    }

    /// An IPv4 address as its `Display` writes it.
    pub fn ipv4(&mut self, ip: Ipv4Addr) {
        let [a, b, c, d] = ip.octets();
        self.uint(a.into());
        self.byte(b'.');
        self.uint(b.into());
        self.byte(b'.');
        self.uint(c.into());
        self.byte(b'.');
        self.uint(d.into());
    }

    /// A state's name as its `Display` writes it.
    pub fn state(&mut self, state: State) {
        match state.known() {
            Some(s) => {
                let (bytes, len) = &STATE_NAMES[s as usize];
                self.short(bytes, *len as usize);
            }
            None => {
                self.text(b"STATE_");
                self.uint(state.0.into());
            }
        }
    }

    /// The command name when it is printable ASCII without `"` and `\`, the common case,
    /// which needs no escaping; `None` otherwise.
    pub fn plain_comm(&mut self, comm: &Comm) -> Option<()> {
        let (bytes, len) = comm.raw();
        let plain = bytes[..len]
            .iter()
            .all(|&b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
        plain.then(|| self.short(bytes, len))
    }

    /// Whatever `write` appends to the line's bytes, for the rare fields that take
    /// general machinery (IPv6 addresses, names to escape).
    pub fn with_vec(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        self.out.truncate(self.at);
        write(self.out);
        self.at = self.out.len();
        self.out.resize(self.at + ROOM, 0);
    }

    /// Pads what was written since `start` with spaces to `width` bytes: after it (left
    /// aligned) or before it (right aligned). Wider text is left as it is.
    pub fn pad(&mut self, start: usize, width: usize, right: bool) {
        let len = self.at - start;
        if len >= width {
            return;
        }
        let fill = width - len;
        self.room(fill);
        if right {
            self.out.copy_within(start..self.at, start + fill);
            self.out[start..start + fill].fill(b' ');
        } else {
            self.out[self.at..self.at + fill].fill(b' ');
        }
        self.at += fill;
    }

    /// Where the next byte goes, for [`Line::pad`].
    pub fn at(&self) -> usize {
        self.at
    }

    /// Ends the line: the room left over is dropped.
    pub fn finish(self) {
        self.out.truncate(self.at);
    }
}

/// Each known state's name, padded to 16 bytes, and its length: indexed by the state.
static STATE_NAMES: [([u8; 16], u8); 16] = {
    let mut names = [([0u8; 16], 0u8); 16];
    let mut n = 0u8;
    while n < 16 {
        if let Some(s) = TcpState::from_u8(n) {
            let name = s.name().as_bytes();
            let mut i = 0;
            while i < name.len() {
                names[n as usize].0[i] = name[i];
                i += 1;
            }
            names[n as usize].1 = name.len() as u8;
        }
        n += 1;
    }
    names
};

#[cfg(test)]
mod tests {
    use super::*;

    /// What `line` writes into a fresh buffer.
    fn written(write: impl FnOnce(&mut Line<'_>)) -> String {
        let mut out = Vec::new();
        let mut line = Line::new(&mut out);
        write(&mut line);
        line.finish();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn numbers_are_written_as_display_writes_them_at_every_length() {
        let mut values = vec![0, u64::MAX, u64::MAX - 1];
        let mut power = 1u64;
        while let Some(next) = power.checked_mul(10) {
            values.extend([power - 1, power, power + 1, next / 2 + 7]);
            power = next;
        }
        values.extend([power - 1, power, 3_600_000_000_005_000, 4026531840]);
        for n in values {
            assert_eq!(written(|l| l.uint(n)), n.to_string(), "{n}");
            let width = n.to_string().len().max(9);
            assert_eq!(
                written(|l| l.zero_padded(n, width)),
                format!("{n:0width$}"),
                "{n} in {width}"
            );
        }
        assert_eq!(written(|l| l.zero_padded(7, 2)), "07");
        assert_eq!(written(|l| l.zero_padded(123_456, 6)), "123456");
    }

    #[test]
    fn every_octet_and_ipv4_address_is_written_as_display_writes_it() {
        for n in 0..=255u8 {
            let ip = Ipv4Addr::new(n, 255 - n, n / 7, n.wrapping_mul(37));
            assert_eq!(written(|l| l.ipv4(ip)), ip.to_string());
        }
        // Past the room made at first, as a long line has it.
        let ip = Ipv4Addr::new(255, 255, 255, 255);
        let s = written(|l| {
            l.text(&[b'x'; ROOM - 3]);
            l.ipv4(ip);
        });
        assert_eq!(&s[ROOM - 3..], "255.255.255.255");
    }
}
