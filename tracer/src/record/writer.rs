//! Writes a recording while `tracer watch` runs, without slowing it down.
//!
//! The watch loop encodes entries into a chunk (a few hundred ns each) and hands each
//! chunk to a writer thread, which owns the file: writes, `fdatasync` once a second, and
//! rotation. If the disk cannot keep up and chunks pile up, a chunk is left out rather than
//! the loop stalled; a [`Entry::Gap`] in its place says how many entries are missing.
//!
//! With a size budget, the recording is split into [`SEGMENTS`] files: `FILE` is being
//! written, `FILE.1` is the one before, up to `FILE.3`; the oldest is deleted at each
//! rotation. Each segment starts with a header and a checkpoint of the sockets tracked, so
//! a report can start from any of them.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    path::{Path, PathBuf},
    sync::mpsc::{self, Receiver, SyncSender, TrySendError},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use super::{Entry, Header, OwnersEntry, SocketEntry, StopEntry, FRAME_LEN, MAGIC, VERSION};
use crate::{
    aggregate::{Socket, SocketKey},
    attribute::Ownership,
    decode::Transition,
};

/// Files a size-bounded recording is split into: the budget is shared among them.
pub const SEGMENTS: u64 = 4;
/// Chunks waiting for the disk before new ones are left out.
const BACKLOG: usize = 32;
/// How often written data is forced to disk, against a machine crash.
const SYNC_PERIOD: Duration = Duration::from_secs(1);

/// Why recording failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot create the recording {}: {error}", path.display())]
    Create { path: PathBuf, error: io::Error },
    #[error(
        "{} exists and is not a tracer recording; refusing to overwrite it (choose another file)",
        path.display()
    )]
    NotARecording { path: PathBuf },
    #[error("writing the recording {} failed: {error}; recording stopped", path.display())]
    Write { path: PathBuf, error: io::Error },
}

/// Appends `entry` to `out` as one frame.
pub fn encode(entry: &Entry, out: &mut Vec<u8>) {
    let at = out.len();
    out.extend_from_slice(&[0; FRAME_LEN]);
    // Writing into a Vec cannot fail, and every entry type serializes.
    if postcard::to_io(entry, &mut *out).is_err() {
        out.truncate(at);
        return;
    }
    let len = (out.len() - at - FRAME_LEN) as u32;
    let crc = crc32fast::hash(&out[at + FRAME_LEN..]);
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The 12 bytes every segment starts with.
pub fn prologue() -> Vec<u8> {
    let mut p = MAGIC.to_vec();
    p.extend_from_slice(&VERSION.0.to_le_bytes());
    p.extend_from_slice(&VERSION.1.to_le_bytes());
    p
}

/// What the writer thread is asked to do.
enum Msg {
    Append(Vec<u8>),
    /// Close the current segment and start a new one with these bytes.
    Rotate(Vec<u8>),
}

/// Records entries to a file through a writer thread.
pub struct Recorder {
    path: PathBuf,
    chunk: Vec<u8>,
    /// Entries in `chunk` (not counting a gap note).
    chunk_entries: u64,
    tx: Option<SyncSender<Msg>>,
    thread: Option<JoinHandle<Result<(), RecordError>>>,
    /// Bytes handed over for the current segment, of which its header and checkpoint,
    /// and its size limit.
    segment_bytes: u64,
    checkpoint_bytes: u64,
    segment_limit: Option<u64>,
    /// The header of the current segment, the template for the next.
    header: Header,
    /// Entries left out so far, and since the last chunk that went through.
    unrecorded: u64,
    gap: u64,
}

impl Recorder {
    /// Starts a recording at `path` with `header` and the sockets open at start. With
    /// `max_bytes`, the recording's files together stay within about that size.
    pub fn create(
        path: &Path,
        max_bytes: Option<u64>,
        mut header: Header,
        snapshot: &[SocketEntry],
    ) -> Result<Self, RecordError> {
        refuse_foreign(path)?;
        for n in 1..SEGMENTS {
            // Segments of an earlier recording under this name go; other files stay, and
            // rotation would overwrite them.
            let old = segment_path(path, n);
            refuse_foreign(&old)?;
            let _ = fs::remove_file(old);
        }
        let file = File::create(path).map_err(|error| RecordError::Create {
            path: path.to_owned(),
            error,
        })?;
        header.checkpoint = snapshot.len() as u32;
        let mut first = prologue();
        encode(&Entry::Header(header.clone()), &mut first);
        for s in snapshot {
            encode(&Entry::Socket(*s), &mut first);
        }
        let (tx, rx) = mpsc::sync_channel(BACKLOG);
        let thread_path = path.to_owned();
        let thread = thread::Builder::new()
            .name("tracer-record".into())
            .spawn(move || write_loop(&thread_path, file, rx))
            .map_err(|error| RecordError::Create {
                path: path.to_owned(),
                error,
            })?;
        let mut r = Recorder {
            path: path.to_owned(),
            chunk: Vec::with_capacity(1 << 16),
            chunk_entries: 0,
            tx: Some(tx),
            thread: Some(thread),
            segment_bytes: 0,
            checkpoint_bytes: 0,
            segment_limit: max_bytes.map(|m| (m / SEGMENTS).max(1)),
            header,
            unrecorded: 0,
            gap: 0,
        };
        r.segment_bytes = first.len() as u64;
        r.checkpoint_bytes = r.segment_bytes;
        r.send(Msg::Append(first))?;
        Ok(r)
    }

    /// Adds `entry` to the chunk being built.
    pub fn push(&mut self, entry: &Entry) {
        encode(entry, &mut self.chunk);
        self.chunk_entries += 1;
    }

    /// Adds a transition.
    pub fn transition(&mut self, t: &Transition) {
        self.push(&Entry::Transition(t.into()));
    }

    /// Adds the owners resolved at `ts_ns` for a flagged socket.
    pub fn owners(&mut self, ts_ns: u64, socket: &Socket, ownership: &Ownership) {
        self.push(&Entry::Owners(OwnersEntry::new(ts_ns, socket, ownership)));
    }

    /// Entries left out so far because the disk was too slow.
    pub fn unrecorded(&self) -> u64 {
        self.unrecorded
    }

    /// Hands the chunk to the writer thread. When the segment is full, starts the next
    /// one with a checkpoint of `sockets` and the `owners` of the flagged ones, at
    /// monotonic `now_ns`.
    pub fn flush<'a>(
        &mut self,
        now_ns: u64,
        sockets: impl Iterator<Item = (SocketKey, &'a Socket)>,
        owners: impl Fn(&Socket) -> Option<&'a Ownership>,
    ) -> Result<(), RecordError> {
        if !self.chunk.is_empty() {
            let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(1 << 16));
            let len = chunk.len() as u64;
            if self.try_send(Msg::Append(chunk))? {
                self.segment_bytes += len;
                self.chunk_entries = 0;
                self.gap = 0;
            } else {
                // The disk is behind: leave this chunk out and say so in the next.
                self.unrecorded += self.chunk_entries;
                self.gap += self.chunk_entries;
                self.chunk_entries = 0;
                encode(&Entry::Gap { entries: self.gap }, &mut self.chunk);
            }
        }
        // A checkpoint larger than the limit must not make every flush rotate: a segment
        // holds at least half a limit of new entries.
        if self.segment_limit.is_some_and(|limit| {
            self.segment_bytes >= limit && self.segment_bytes - self.checkpoint_bytes >= limit / 2
        }) {
            self.rotate(now_ns, sockets, owners)?;
        }
        Ok(())
    }

    fn rotate<'a>(
        &mut self,
        now_ns: u64,
        sockets: impl Iterator<Item = (SocketKey, &'a Socket)>,
        owners: impl Fn(&Socket) -> Option<&'a Ownership>,
    ) -> Result<(), RecordError> {
        let mut body = Vec::new();
        let mut checkpoint = 0u32;
        let mut flagged = Vec::new();
        for (key, s) in sockets {
            encode(&Entry::Socket(SocketEntry::new(key, s)), &mut body);
            checkpoint += 1;
            if let Some(o) = owners(s) {
                flagged.push(OwnersEntry::new(now_ns, s, o));
            }
        }
        for o in flagged {
            encode(&Entry::Owners(o), &mut body);
        }
        let mut header = self.header.clone();
        header.segment += 1;
        header.started_ns = now_ns;
        header.checkpoint = checkpoint;
        let mut first = prologue();
        encode(&Entry::Header(header.clone()), &mut first);
        first.extend_from_slice(&body);
        let len = first.len() as u64;
        // A full backlog postpones the rotation to a later flush.
        if self.try_send(Msg::Rotate(first))? {
            self.header = header;
            self.segment_bytes = len;
            self.checkpoint_bytes = len;
        }
        Ok(())
    }

    /// Writes the stop entry and waits for the writer thread to put everything on disk.
    pub fn finish(mut self, mut stop: StopEntry) -> Result<(), RecordError> {
        stop.unrecorded = self.unrecorded;
        self.push(&Entry::Stop(stop));
        let chunk = std::mem::take(&mut self.chunk);
        self.send(Msg::Append(chunk))?;
        self.tx = None;
        self.join()
    }

    fn send(&mut self, msg: Msg) -> Result<(), RecordError> {
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(msg).is_ok());
        if sent {
            Ok(())
        } else {
            self.join().and(Err(self.stopped()))
        }
    }

    /// Sends without waiting; false when the backlog is full.
    fn try_send(&mut self, msg: Msg) -> Result<bool, RecordError> {
        match self.tx.as_ref().map(|tx| tx.try_send(msg)) {
            Some(Ok(())) => Ok(true),
            Some(Err(TrySendError::Full(_))) => Ok(false),
            Some(Err(TrySendError::Disconnected(_))) | None => self.join().and(Err(self.stopped())),
        }
    }

    /// The writer thread's result, once it has ended.
    fn join(&mut self) -> Result<(), RecordError> {
        self.tx = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(self.stopped()),
            None => Ok(()),
        }
    }

    fn stopped(&self) -> RecordError {
        RecordError::Write {
            path: self.path.clone(),
            error: io::Error::other("the writer thread ended"),
        }
    }
}

/// The writer thread: appends chunks, syncs, rotates.
fn write_loop(path: &Path, mut file: File, rx: Receiver<Msg>) -> Result<(), RecordError> {
    let fail = |error| RecordError::Write {
        path: path.to_owned(),
        error,
    };
    let mut synced = Instant::now();
    let mut dirty = false;
    loop {
        let msg = match rx.recv_timeout(SYNC_PERIOD) {
            Ok(m) => Some(m),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        match msg {
            Some(Msg::Append(bytes)) => {
                file.write_all(&bytes).map_err(fail)?;
                dirty = true;
            }
            Some(Msg::Rotate(bytes)) => {
                file.sync_data().map_err(fail)?;
                shift_segments(path).map_err(fail)?;
                file = File::create(path).map_err(fail)?;
                file.write_all(&bytes).map_err(fail)?;
                dirty = true;
            }
            None => {}
        }
        if dirty && synced.elapsed() >= SYNC_PERIOD {
            file.sync_data().map_err(fail)?;
            synced = Instant::now();
            dirty = false;
        }
    }
    file.sync_data().map_err(fail)
}

/// `FILE.2` -> `FILE.3`, `FILE.1` -> `FILE.2`, `FILE` -> `FILE.1`; the oldest goes.
fn shift_segments(path: &Path) -> io::Result<()> {
    for n in (1..SEGMENTS).rev() {
        let from = if n == 1 {
            path.to_owned()
        } else {
            segment_path(path, n - 1)
        };
        match fs::rename(&from, segment_path(path, n)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            r => r?,
        }
    }
    Ok(())
}

/// The file of the `n`th segment before the current one: `FILE.n`.
pub fn segment_path(path: &Path, n: u64) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{n}"));
    PathBuf::from(p)
}

/// Refuses to overwrite a file that exists, is not empty and is not a recording.
fn refuse_foreign(path: &Path) -> Result<(), RecordError> {
    let mut magic = [0u8; MAGIC.len()];
    let n = match OpenOptions::new().read(true).open(path) {
        Ok(mut f) => f.read(&mut magic).unwrap_or(0),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(RecordError::Create {
                path: path.to_owned(),
                error,
            })
        }
    };
    if n == 0 || magic[..n] == MAGIC[..n] {
        Ok(())
    } else {
        Err(RecordError::NotARecording {
            path: path.to_owned(),
        })
    }
}
