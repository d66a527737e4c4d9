//! Reads a recording segment back, entry by entry, recovering what a crash or damage left.
//!
//! An entry is accepted only when its whole frame is there and its CRC matches. Anything
//! else is damage: the reader notes where and how many bytes, then looks for the next
//! valid entry byte by byte. A file that ends inside an entry (a crash, SIGKILL, or a
//! recording still being written) has a torn tail; every entry before it is returned.
//!
//! Reading costs O(file size) whatever the bytes: the search checks each offset's claimed
//! payload (up to 1 MiB) against running CRC registers in constant time (`crc.rs`),
//! never by hashing the payload again, so each byte goes through the CRC at most twice.

use std::{
    fs::File,
    io::{self, Read},
    os::unix::fs::FileExt,
};

use bytes::{Buf, BytesMut};

use super::{
    crc::Running, Entry, ENTRY_KINDS, FRAME_LEN, MAGIC, MAX_PAYLOAD, PROLOGUE_LEN, VERSION,
};

/// Why a file cannot be read as a recording at all.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot read it: {0}")]
    Io(io::Error),
    #[error("it is empty")]
    Empty,
    #[error("it is not a tracer recording (it does not start with the recording's magic bytes)")]
    NotARecording,
    #[error("it ends inside its 12-byte prologue: the recording was cut before its first entry")]
    Truncated,
    #[error(
        "it is a recording of format {major}.{minor}, an early development format this \
         tracer cannot read (it reads {}.x); report it with the tracer that wrote it",
        VERSION.0
    )]
    Early { major: u16, minor: u16 },
    #[error(
        "it is a recording of format {major}.{minor}, newer than this tracer reads ({}.x); \
         report it with a newer tracer",
        VERSION.0
    )]
    Newer { major: u16, minor: u16 },
}

// A new major version must decide how the files of older releases are refused (or read),
// not have them called early development formats.
const _: () = assert!(VERSION.0 == 1);

// Not `#[from]`: that would also make the error its source, and the message says it already.
impl From<io::Error> for OpenError {
    fn from(e: io::Error) -> Self {
        OpenError::Io(e)
    }
}

/// Bytes that did not hold valid entries; the reader went on past them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damage {
    /// Invalid bytes at `offset`, skipped up to the next valid entry (or the end).
    Corrupt { offset: u64, bytes: u64 },
    /// The file ends inside an entry starting at `offset`: cut by a crash, or still being
    /// written.
    TornTail { offset: u64, bytes: u64 },
}

/// What the reader met so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Valid entries returned.
    pub entries: u64,
    /// Valid entries of kinds this build does not know (from a newer tracer), skipped.
    pub unknown: u64,
    /// Damaged stretches, in file order.
    pub damage: Vec<Damage>,
}

impl ReadStats {
    /// Bytes lost to damage.
    pub fn damaged_bytes(&self) -> u64 {
        self.damage
            .iter()
            .map(|d| match d {
                Damage::Corrupt { bytes, .. } | Damage::TornTail { bytes, .. } => *bytes,
            })
            .sum()
    }
}

/// How much is read from the file at a time.
const READ_CHUNK: usize = 256 << 10;

/// Reads the entries of one segment from `src`.
pub struct Reader<R> {
    src: R,
    /// Bytes read and not yet consumed: the read position is `buf[0]`.
    buf: BytesMut,
    /// File offset of the read position, and of the last entry returned.
    offset: u64,
    entry_offset: u64,
    eof: bool,
    version: (u16, u16),
    stats: ReadStats,
    /// Running CRC registers over the bytes the search for a valid entry looks at.
    running: Running,
    /// Payload bytes run through the CRC outside the search, for tests of the reader's cost.
    #[cfg(test)]
    crc_bytes: u64,
}

/// What the bytes at the read position hold.
enum Frame {
    /// A valid entry of `len` payload bytes.
    Valid(usize),
    /// Fewer bytes than the frame says are left in the file, which is otherwise plausible.
    Incomplete,
    Invalid,
}

impl<R: Read> Reader<R> {
    /// Checks the prologue of `src`.
    pub fn new(src: R) -> Result<Self, OpenError> {
        let mut r = Reader {
            src,
            buf: BytesMut::with_capacity(READ_CHUNK),
            offset: 0,
            entry_offset: 0,
            eof: false,
            version: (0, 0),
            stats: ReadStats::default(),
            running: Running::default(),
            #[cfg(test)]
            crc_bytes: 0,
        };
        if !r.fill(PROLOGUE_LEN)? {
            let got = r.buf.len();
            return Err(match got {
                0 => OpenError::Empty,
                _ if r.buf[..got.min(MAGIC.len())] != MAGIC[..got.min(MAGIC.len())] => {
                    OpenError::NotARecording
                }
                _ => OpenError::Truncated,
            });
        }
        if r.buf[..MAGIC.len()] != MAGIC {
            return Err(OpenError::NotARecording);
        }
        let mut version = &r.buf[MAGIC.len()..PROLOGUE_LEN];
        let (major, minor) = (version.get_u16_le(), version.get_u16_le());
        // Below our major is only 0, the format before the first release (see the
        // assertion after `OpenError`).
        if major < VERSION.0 {
            return Err(OpenError::Early { major, minor });
        }
        if major > VERSION.0 {
            return Err(OpenError::Newer { major, minor });
        }
        r.version = (major, minor);
        r.consume(PROLOGUE_LEN);
        Ok(r)
    }

    /// The format version of the file.
    pub fn version(&self) -> (u16, u16) {
        self.version
    }

    /// What was read so far.
    pub fn stats(&self) -> &ReadStats {
        &self.stats
    }

    /// Where the last entry returned starts in the file, for [`entry_at`].
    pub fn entry_offset(&self) -> u64 {
        self.entry_offset
    }

    /// Bytes taken from the source so far: at the end, the size of the file as read.
    pub fn bytes_read(&self) -> u64 {
        self.offset + self.buf.len() as u64
    }

    /// Bytes run through the CRC so far.
    #[cfg(test)]
    pub(super) fn crc_bytes(&self) -> u64 {
        self.crc_bytes + self.running.hashed
    }

    /// The next valid entry, or `None` at the end of the file. Damage is skipped and noted
    /// in [`Reader::stats`]; only a failing read of the file is an error.
    pub fn next_entry(&mut self) -> io::Result<Option<Entry>> {
        loop {
            match self.frame()? {
                Frame::Valid(len) => {
                    let at = self.offset;
                    let payload = &self.buf[FRAME_LEN..FRAME_LEN + len];
                    let kind = variant_index(payload);
                    let entry = if kind.is_some_and(|k| k >= ENTRY_KINDS) {
                        None
                    } else {
                        Some(Entry::decode(payload))
                    };
                    self.consume(FRAME_LEN + len);
                    match entry {
                        None => self.stats.unknown += 1,
                        Some(Ok(e)) => {
                            self.stats.entries += 1;
                            self.entry_offset = at;
                            return Ok(Some(e));
                        }
                        // A sound frame around a payload this build cannot decode.
                        Some(Err(_)) => self.stats.damage.push(Damage::Corrupt {
                            offset: at,
                            bytes: (FRAME_LEN + len) as u64,
                        }),
                    }
                }
                Frame::Incomplete | Frame::Invalid if self.buf.is_empty() => return Ok(None),
                first => {
                    if !self.resync(matches!(first, Frame::Incomplete))? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Skips bytes from the read position to the next valid entry, noting the damage.
    /// Returns false when the file ended first.
    fn resync(&mut self, incomplete: bool) -> io::Result<bool> {
        let offset = self.offset;
        let mut skipped = 0u64;
        loop {
            self.consume(1);
            skipped += 1;
            if !self.fill(1)? {
                // Nothing valid up to the end: a cut if the first bad frame only lacked
                // its end (or was too short to hold a frame at all).
                let torn = incomplete || skipped < FRAME_LEN as u64;
                self.stats.damage.push(if torn {
                    Damage::TornTail {
                        offset,
                        bytes: skipped,
                    }
                } else {
                    Damage::Corrupt {
                        offset,
                        bytes: skipped,
                    }
                });
                return Ok(false);
            }
            if let Frame::Valid(_) = self.candidate()? {
                self.stats.damage.push(Damage::Corrupt {
                    offset,
                    bytes: skipped,
                });
                return Ok(true);
            }
        }
    }

    /// Looks at the frame at the read position, reading as much of it as the file has.
    fn frame(&mut self) -> io::Result<Frame> {
        let Some((len, crc)) = self.frame_head()? else {
            return Ok(Frame::Incomplete);
        };
        if len == 0 {
            return Ok(Frame::Invalid);
        }
        if !self.fill(FRAME_LEN + len)? {
            return Ok(Frame::Incomplete);
        }
        let payload = &self.buf[FRAME_LEN..FRAME_LEN + len];
        #[cfg(test)]
        {
            self.crc_bytes += len as u64;
        }
        Ok(if crc32fast::hash(payload) == crc {
            Frame::Valid(len)
        } else {
            Frame::Invalid
        })
    }

    /// [`Reader::frame`] while searching for a valid entry: the payload's CRC comes from
    /// the running registers, which each byte enters once however many frames claim it.
    fn candidate(&mut self) -> io::Result<Frame> {
        let Some((len, crc)) = self.frame_head()? else {
            return Ok(Frame::Incomplete);
        };
        if len == 0 {
            return Ok(Frame::Invalid);
        }
        if !self.fill(FRAME_LEN + len)? {
            return Ok(Frame::Incomplete);
        }
        let start = self.offset + FRAME_LEN as u64;
        let end = start + len as u64;
        self.running.cover(self.offset, end, &self.buf);
        Ok(if self.running.crc(start, end) == crc {
            Frame::Valid(len)
        } else {
            Frame::Invalid
        })
    }

    /// The length and CRC of the frame at the read position, `None` if the file ends
    /// first; a length of 0 when it cannot be one.
    fn frame_head(&mut self) -> io::Result<Option<(usize, u32)>> {
        if !self.fill(FRAME_LEN)? {
            return Ok(None);
        }
        let mut frame = &self.buf[..FRAME_LEN];
        let (len, crc) = (frame.get_u32_le() as usize, frame.get_u32_le());
        // Every entry has at least one byte (its kind): a run of zeros is not a frame.
        Ok(Some((if len > MAX_PAYLOAD { 0 } else { len }, crc)))
    }

    /// Moves the read position `n` bytes on.
    fn consume(&mut self, n: usize) {
        self.buf.advance(n);
        self.offset += n as u64;
    }

    /// Reads until `need` bytes are available from the read position; false if the file
    /// ends first.
    fn fill(&mut self, need: usize) -> io::Result<bool> {
        while self.buf.len() < need && !self.eof {
            let len = self.buf.len();
            let want = (need - len).max(READ_CHUNK);
            // Takes the room of consumed bytes back before it allocates more.
            self.buf.reserve(want);
            self.buf.resize(len + want, 0);
            let got = loop {
                match self.src.read(&mut self.buf[len..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r,
                }
            };
            match got {
                Ok(n) => {
                    self.buf.truncate(len + n);
                    self.eof = n == 0;
                }
                Err(e) => {
                    self.buf.truncate(len);
                    return Err(e);
                }
            }
        }
        Ok(self.buf.len() >= need)
    }
}

/// The entry at `offset` of `file`, where a [`Reader`] found one ([`Reader::entry_offset`]);
/// `None` if it is no longer a valid entry there.
pub fn entry_at(file: &File, offset: u64) -> io::Result<Option<Entry>> {
    let mut frame = [0u8; FRAME_LEN];
    file.read_exact_at(&mut frame, offset)?;
    let mut head = &frame[..];
    let (len, crc) = (head.get_u32_le() as usize, head.get_u32_le());
    if len == 0 || len > MAX_PAYLOAD {
        return Ok(None);
    }
    let mut payload = vec![0u8; len];
    file.read_exact_at(&mut payload, offset + FRAME_LEN as u64)?;
    if crc32fast::hash(&payload) != crc {
        return Ok(None);
    }
    Ok(Entry::decode(&payload).ok())
}

/// The enum variant index postcard writes first: a varint.
fn variant_index(payload: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for (i, &b) in payload.iter().take(5).enumerate() {
        v |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}
