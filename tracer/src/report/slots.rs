//! What the report's first pass learns about each flag, for the second to show with it: how
//! the stay ended, and where its owners were recorded. 16 bytes a flag, in flag order; past
//! the first [`WINDOW`] flags they go to a temporary file (in `$TMPDIR`), so that memory
//! does not grow with the number of flags.

use std::{
    fs::File,
    io::{self, BufReader, Read, Seek, SeekFrom},
    os::unix::fs::FileExt,
};

/// Flags whose slots are kept in memory before they go to the file.
pub const WINDOW: usize = 8192;

/// Bytes of a slot on file.
const SLOT_LEN: u64 = 16;

/// `Slot::end` of a stay still going on at the end (or evicted while stuck).
pub const STILL: u64 = u64::MAX;
/// `Slot::end` of a stay the live run found gone: never shown.
pub const GONE: u64 = u64::MAX - 1;

/// What the first pass learned about one flag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    /// When the stay ended (monotonic ns), or [`STILL`] or [`GONE`].
    pub end: u64,
    /// Where the live run's owners of the stay were recorded: 0 for nowhere, else the
    /// position (see `replay::position`) plus one.
    pub owners: u64,
}

impl Slot {
    fn bytes(&self) -> [u8; SLOT_LEN as usize] {
        let mut b = [0u8; SLOT_LEN as usize];
        b[..8].copy_from_slice(&self.end.to_le_bytes());
        b[8..].copy_from_slice(&self.owners.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8; SLOT_LEN as usize]) -> Slot {
        let (end, owners) = b.split_at(8);
        Slot {
            end: u64::from_le_bytes(end.try_into().expect("8 bytes")),
            owners: u64::from_le_bytes(owners.try_into().expect("8 bytes")),
        }
    }
}

/// The slots as the first pass fills them: the newest [`WINDOW`] in memory, the older on
/// the file (a slot filled late is written there in place).
#[derive(Default)]
pub struct Slots {
    /// Slots from `base` on.
    window: Vec<Slot>,
    base: u64,
    /// Created when the first window is full.
    file: Option<File>,
}

impl Slots {
    /// Takes the next slot; returns its index.
    pub fn add(&mut self) -> io::Result<u64> {
        if self.window.len() == WINDOW {
            let file = match &mut self.file {
                Some(f) => f,
                None => self.file.insert(tempfile::tempfile()?),
            };
            let bytes: Vec<u8> = self.window.iter().flat_map(|s| s.bytes()).collect();
            file.write_all_at(&bytes, self.base * SLOT_LEN)?;
            self.base += WINDOW as u64;
            self.window.clear();
        }
        self.window.push(Slot::default());
        Ok(self.base + self.window.len() as u64 - 1)
    }

    /// Fills slot `index`.
    pub fn set(&mut self, index: u64, slot: Slot) -> io::Result<()> {
        match index.checked_sub(self.base) {
            Some(i) => self.window[i as usize] = slot,
            None => {
                let file = self.file.as_ref().expect("older slots are on the file");
                file.write_all_at(&slot.bytes(), index * SLOT_LEN)?;
            }
        }
        Ok(())
    }

    /// Slot `index`, as filled so far.
    pub fn get(&self, index: u64) -> io::Result<Slot> {
        if let Some(i) = index.checked_sub(self.base) {
            return Ok(self.window.get(i as usize).copied().unwrap_or_default());
        }
        let mut b = [0u8; SLOT_LEN as usize];
        let file = self.file.as_ref().expect("older slots are on the file");
        file.read_exact_at(&mut b, index * SLOT_LEN)?;
        Ok(Slot::from_bytes(&b))
    }

    /// The slots in order, for the second pass.
    pub fn into_reader(self) -> io::Result<SlotReader> {
        let file = match self.file {
            Some(mut f) => {
                f.seek(SeekFrom::Start(0))?;
                Some(BufReader::new(f.take(self.base * SLOT_LEN)))
            }
            None => None,
        };
        Ok(SlotReader {
            file,
            window: self.window.into_iter(),
        })
    }

    /// Slots in memory now.
    #[cfg(test)]
    pub fn in_memory(&self) -> usize {
        self.window.len()
    }
}

/// Reads the slots back in order.
pub struct SlotReader {
    file: Option<BufReader<io::Take<File>>>,
    window: std::vec::IntoIter<Slot>,
}

impl SlotReader {
    /// The next flag's slot; a flag the first pass did not see (the recording changed in
    /// between) gets an empty one.
    pub fn next_slot(&mut self) -> io::Result<Slot> {
        if let Some(f) = &mut self.file {
            let mut b = [0u8; SLOT_LEN as usize];
            match f.read_exact(&mut b) {
                Ok(()) => return Ok(Slot::from_bytes(&b)),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => self.file = None,
                Err(e) => return Err(e),
            }
        }
        Ok(self.window.next().unwrap_or(Slot {
            end: STILL,
            owners: 0,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots filled in any order, before and after they went to the file, read back in
    /// order; memory holds one window at most.
    #[test]
    fn slots_come_back_in_order_from_memory_and_file() {
        let n = 3 * WINDOW as u64 + 17;
        let mut slots = Slots::default();
        for i in 0..n {
            assert_eq!(slots.add().unwrap(), i);
            assert!(slots.in_memory() <= WINDOW);
            // Every third flag ends at once, every third a window later, the rest never.
            if i % 3 == 0 {
                slots
                    .set(
                        i,
                        Slot {
                            end: i,
                            owners: i + 1,
                        },
                    )
                    .unwrap();
            }
            if i >= WINDOW as u64 && (i - WINDOW as u64) % 3 == 1 {
                let j = i - WINDOW as u64;
                slots.set(j, Slot { end: j, owners: 0 }).unwrap();
            }
        }
        let mut reader = slots.into_reader().unwrap();
        for i in 0..n {
            let want = if i % 3 == 0 {
                Slot {
                    end: i,
                    owners: i + 1,
                }
            } else if i % 3 == 1 && i + (WINDOW as u64) < n {
                Slot { end: i, owners: 0 }
            } else {
                Slot::default()
            };
            assert_eq!(reader.next_slot().unwrap(), want, "slot {i}");
        }
        assert_eq!(reader.next_slot().unwrap().end, STILL);
    }
}
