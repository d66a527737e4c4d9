//! CRC-32 (IEEE) of any stretch of bytes in constant time, from running registers: what
//! keeps the reader's search for the next valid entry linear in the file's size, however
//! the damage looks (every offset may claim a 1 MiB payload).
//!
//! The CRC register is affine in its start value: after bytes `m` from state `s` it is
//! `shift(s, |m|) ^ r(0, m)`, where `shift(s, n)` feeds `s` n zero bytes, a multiplication
//! by `x^(8n)` modulo the polynomial (as zlib's `crc32_combine` does). So with the running
//! register `g` over a stretch (from any start), the CRC of its bytes `i..j` is
//! `!(g(j) ^ shift(g(i) ^ !0, j - i))`.

use std::collections::VecDeque;

/// The reflected CRC-32 polynomial.
const POLY: u32 = 0xedb8_8320;

/// The register's update for each byte value.
const TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// `x^(2^k)` modulo the polynomial, for k in 0..32.
const X2N: [u32; 32] = {
    let mut t = [0u32; 32];
    let mut p = 1u32 << 30; // x^1
    let mut k = 0;
    while k < 32 {
        t[k] = p;
        p = multmodp(p, p);
        k += 1;
    }
    t
};

/// `a * b` modulo the polynomial, in the reflected bit order.
const fn multmodp(a: u32, mut b: u32) -> u32 {
    let mut p = 0;
    let mut m = 1u32 << 31;
    while m != 0 {
        if a & m != 0 {
            p ^= b;
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
    p
}

/// `x^(8n)` modulo the polynomial: the shift by `n` zero bytes.
fn zeros(n: u64) -> u32 {
    let mut p = 1u32 << 31; // x^0
    let (mut n, mut k) = (n, 3);
    while n != 0 {
        if n & 1 != 0 {
            p = multmodp(X2N[k & 31], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// Running CRC registers over a stretch of a file, for the CRC of any part of it.
#[derive(Default)]
pub struct Running {
    /// File offset of `regs[0]`; `regs[k]` is the register after the bytes before
    /// `base + k` (from an arbitrary start at the stretch's first offset).
    base: u64,
    regs: VecDeque<u32>,
    /// Shifts by recent lengths, `(n, x^(8n))`: damage tends to repeat the same few.
    shifts: [(u64, u32); 4],
    next_shift: usize,
    /// Bytes run through the CRC, for tests of the reader's cost.
    #[cfg(test)]
    pub hashed: u64,
}

impl Running {
    /// Makes the registers cover `from..=to`, where `bytes` are the file's bytes from
    /// offset `from` on. Registers before `from` are dropped; a stretch that no longer
    /// reaches `from` starts over there.
    pub fn cover(&mut self, from: u64, to: u64, bytes: &[u8]) {
        let end = self.base + self.regs.len() as u64;
        if self.regs.is_empty() || end <= from || from < self.base {
            self.regs.clear();
            self.base = from;
            self.regs.push_back(0);
        } else if self.base < from {
            self.regs.drain(..(from - self.base) as usize);
            self.base = from;
        }
        let mut g = *self.regs.back().expect("a stretch has its first register");
        let have = self.base + self.regs.len() as u64 - 1;
        if to <= have {
            return;
        }
        for &b in &bytes[(have - from) as usize..(to - from) as usize] {
            g = (g >> 8) ^ TABLE[((g ^ u32::from(b)) & 0xff) as usize];
            self.regs.push_back(g);
        }
        #[cfg(test)]
        {
            self.hashed += to - have;
        }
    }

    /// The CRC-32 of the bytes at offsets `i..j`, which [`Running::cover`] covered.
    pub fn crc(&mut self, i: u64, j: u64) -> u32 {
        let at = |o: u64| self.regs[(o - self.base) as usize];
        let (gi, gj) = (at(i), at(j));
        !(gj ^ multmodp(self.shift(j - i), gi ^ !0))
    }

    fn shift(&mut self, n: u64) -> u32 {
        // A power of x is never 0 modulo the polynomial: 0 marks an empty place.
        if let Some(&(_, s)) = self.shifts.iter().find(|&&(len, s)| len == n && s != 0) {
            return s;
        }
        let s = zeros(n);
        self.shifts[self.next_shift] = (n, s);
        self.next_shift = (self.next_shift + 1) % self.shifts.len();
        s
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::Running;

    proptest! {
        /// Any stretch's CRC from the running registers is the CRC-32 of its bytes, also
        /// after the stretch moved on and started over.
        #[test]
        fn stretches_have_their_crc(
            bytes in proptest::collection::vec(any::<u8>(), 1..600),
            from in any::<prop::sample::Index>(),
            cuts in proptest::collection::vec(
                (any::<prop::sample::Index>(), any::<prop::sample::Index>()), 1..8),
        ) {
            let mut r = Running::default();
            let from = from.index(bytes.len());
            r.cover(from as u64, bytes.len() as u64, &bytes[from..]);
            for (a, b) in cuts {
                let (a, b) = (from + a.index(bytes.len() - from + 1), from + b.index(bytes.len() - from + 1));
                let (i, j) = (a.min(b), a.max(b));
                prop_assert_eq!(r.crc(i as u64, j as u64), crc32fast::hash(&bytes[i..j]));
            }
            // Moving on drops what lies before; the rest still adds up.
            let later = from + (bytes.len() - from) / 2;
            r.cover(later as u64, bytes.len() as u64, &bytes[later..]);
            prop_assert_eq!(
                r.crc(later as u64, bytes.len() as u64),
                crc32fast::hash(&bytes[later..])
            );
        }
    }
}
