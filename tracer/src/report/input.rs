//! Finds a recording's segments and reads their entries in order, saying what was damaged
//! or missing instead of failing; reads them again, the same bytes, for the report's second
//! pass, and single entries where the first pass found them.

use std::{
    fs::File,
    io::{self, BufReader, Read, Seek, SeekFrom, Take},
    path::{Path, PathBuf},
};

use crate::record::{
    reader::{Damage, OpenError, ReadStats, Reader},
    writer::{segment_path, SEGMENTS},
    Entry, Header, VERSION,
};

/// Why a recording cannot be reported at all.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot report {}: {error}", path.display())]
    Open { path: PathBuf, error: OpenError },
    #[error("cannot report {}: no entry could be read from it", path.display())]
    NothingRead { path: PathBuf },
    #[error(
        "cannot report {}: its header entry is damaged, so its times cannot be placed",
        path.display()
    )]
    NoHeader { path: PathBuf },
    #[error("reading {} failed: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
}

/// How a segment is read: its first bytes (all, or as many as the first reading found).
type SegmentReader = Reader<BufReader<Take<File>>>;

/// One segment file, opened.
pub struct Segment {
    pub path: PathBuf,
    pub header: Header,
    /// The file as opened (renamed or deleted by a rotation since, it is still this one).
    file: File,
    reader: SegmentReader,
    /// Whether it follows the previous segment read, so its checkpoint restates sockets
    /// already known.
    pub continues: bool,
}

/// The segments of the recording at `path`, oldest first: `path` and the rotated files
/// beside it (`path.1` to `path.3`) that belong to the same recording. Unreadable rotated
/// files are skipped with a warning in `warnings`.
pub fn segments(path: &Path, warnings: &mut Vec<String>) -> Result<Vec<Segment>, InputError> {
    let mut found = vec![open(path)?];
    let recording = found[0].header.recording;
    for n in 1..SEGMENTS {
        let p = segment_path(path, n);
        if !p.exists() {
            continue;
        }
        match open(&p) {
            Ok(s) if s.header.recording == recording => found.push(s),
            Ok(_) => warnings.push(format!(
                "{} belongs to another recording; left out",
                p.display()
            )),
            Err(e) => warnings.push(format!("{e}; left out")),
        }
    }
    found.sort_by_key(|s| s.header.segment);
    for i in 0..found.len() {
        let prev = i.checked_sub(1).map(|p| found[p].header.segment);
        let seg = found[i].header.segment;
        found[i].continues = prev.is_some_and(|p| p + 1 == seg);
        if i == 0 && seg > 0 {
            warnings.push(format!(
                "the recording's first {seg} segment(s) were rotated away; it starts at {}",
                found[i].path.display()
            ));
        } else if let Some(p) = prev.filter(|&p| p + 1 != seg) {
            warnings.push(format!(
                "segments {} to {} of the recording are missing; sockets are taken again from \
                 the checkpoint of {}",
                p + 1,
                seg - 1,
                found[i].path.display()
            ));
        }
    }
    Ok(found)
}

/// Opens one segment and reads its header.
fn open(path: &Path) -> Result<Segment, InputError> {
    let file = File::open(path).map_err(|e| InputError::Open {
        path: path.to_owned(),
        error: OpenError::Io(e),
    })?;
    let (reader, header) = read_header(path, &file, u64::MAX)?;
    Ok(Segment {
        path: path.to_owned(),
        header,
        file,
        reader,
        continues: false,
    })
}

/// A reader of the first `len` bytes of `file`, past its header entry.
fn read_header(path: &Path, file: &File, len: u64) -> Result<(SegmentReader, Header), InputError> {
    let read_error = |error| InputError::Read {
        path: path.to_owned(),
        error,
    };
    let mut file = file.try_clone().map_err(read_error)?;
    file.seek(SeekFrom::Start(0)).map_err(read_error)?;
    let mut reader =
        Reader::new(BufReader::with_capacity(1 << 20, file.take(len))).map_err(|error| {
            InputError::Open {
                path: path.to_owned(),
                error,
            }
        })?;
    match reader.next_entry().map_err(read_error)? {
        Some(Entry::Header(header)) => Ok((reader, *header)),
        Some(_) => Err(InputError::NoHeader {
            path: path.to_owned(),
        }),
        None => Err(InputError::NothingRead {
            path: path.to_owned(),
        }),
    }
}

impl Segment {
    /// The next entry after the header, and where it starts in the file.
    pub fn next_entry(&mut self) -> Result<Option<(Entry, u64)>, InputError> {
        let entry = self.reader.next_entry().map_err(|error| InputError::Read {
            path: self.path.clone(),
            error,
        })?;
        Ok(entry.map(|e| (e, self.reader.entry_offset())))
    }

    /// Starts reading again after the header, up to where the reading so far ended: a
    /// recording still being written reads the same both times.
    pub fn rewind(&mut self) -> Result<(), InputError> {
        let len = self.reader.bytes_read();
        self.reader = read_header(&self.path, &self.file, len)?.0;
        Ok(())
    }

    /// The file, for entries at the offsets [`Segment::next_entry`] gave.
    pub fn file(&self) -> Result<File, InputError> {
        self.file.try_clone().map_err(|error| InputError::Read {
            path: self.path.clone(),
            error,
        })
    }

    /// What reading found, once done.
    pub fn stats(&self) -> &ReadStats {
        self.reader.stats()
    }

    /// One line per damaged stretch, for the warnings.
    pub fn damage_report(&self) -> Vec<String> {
        let stats = self.reader.stats();
        let mut lines: Vec<String> = stats
            .damage
            .iter()
            .map(|d| match *d {
                Damage::TornTail { offset, bytes } => format!(
                    "{} ends inside an entry ({bytes} bytes at offset {offset}): the recording \
                     was cut (crash or kill) or is still being written; the {} entries before \
                     it were recovered",
                    self.path.display(),
                    stats.entries
                ),
                Damage::Corrupt { offset, bytes } => format!(
                    "{}: {bytes} damaged bytes at offset {offset} skipped; reading went on after them",
                    self.path.display()
                ),
            })
            .collect();
        // Entries of unknown kinds in a file of a known version are damage in all but the
        // name; in a newer one, `version_warning` tells them.
        if stats.unknown > 0 && self.reader.version().1 <= VERSION.1 {
            lines.push(format!(
                "{}: skipped entries of kinds format {}.{} does not define: {}",
                self.path.display(),
                VERSION.0,
                VERSION.1,
                stats.unknown
            ));
        }
        lines
    }
}

/// One warning for a recording written by a newer tracer of the same major version (read,
/// without the entry kinds it added), with the count of entries skipped in all segments.
pub fn version_warning(path: &Path, segments: &[Segment]) -> Option<String> {
    let minor = segments.iter().map(|s| s.reader.version().1).max()?;
    if minor <= VERSION.1 {
        return None;
    }
    let skipped: u64 = segments
        .iter()
        .filter(|s| s.reader.version().1 > VERSION.1)
        .map(|s| s.stats().unknown)
        .sum();
    Some(format!(
        "{} was written by a newer tracer (format {}.{minor}): entries it added are skipped{}; \
         report it with a newer tracer to see them",
        path.display(),
        VERSION.0,
        match skipped {
            0 => String::new(),
            n => format!(" ({n} skipped)"),
        }
    ))
}
