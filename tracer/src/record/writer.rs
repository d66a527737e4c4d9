//! Writes a recording while `tracer watch` runs, without slowing it down.
//!
//! The watch loop queues entries in a chunk (a copy each) and hands each chunk to a writer
//! thread, which owns the file: encodes (about 90 ns per transition), writes, runs
//! `fdatasync` once a second, and rotates. If the disk cannot keep up and chunks pile up,
//! a chunk is left out rather than the loop stalled; an [`Entry::Gap`] in its place says
//! how many entries are missing.
//!
//! With a size budget, the recording is split into [`SEGMENTS`] files: `FILE` is being
//! written, `FILE.1` is the one before, up to `FILE.3`; the oldest is deleted at each
//! rotation. Each segment starts with a header and a checkpoint of the sockets tracked, so
//! a report can start from any of them.

use std::{
    collections::VecDeque,
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
        mpsc::{self, Receiver, SyncSender, TrySendError},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use super::{file, Entry, Header, OwnersEntry, SocketEntry, StopEntry, MAGIC, VERSION};
use crate::{
    decode::Transition,
    model::{Ownership, Socket, SocketKey},
};

/// Files a size-bounded recording is split into: the budget is shared among them.
pub const SEGMENTS: u64 = 4;
/// Chunks waiting for the disk before new ones are left out.
const BACKLOG: usize = 32;
/// How often written data is forced to disk, against a machine crash.
const SYNC_PERIOD: Duration = Duration::from_secs(1);
/// How often the end of a run looks whether the writer thread is done.
const CLOSE_POLL: Duration = Duration::from_millis(2);
/// How long a recorder dropped early waits for its disk.
const DROP_GRACE: Duration = Duration::from_millis(800);

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
    #[error(
        "{} is {what}; a recording must be a regular file (choose another path)",
        path.display()
    )]
    NotAFile { path: PathBuf, what: &'static str },
    #[error(
        "{} is being recorded by another tracer{}; choose another file",
        path.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Busy { path: PathBuf, pid: Option<u32> },
    #[error(
        "cannot lock the recording {}: {error}; choose a file on a file system that supports locks",
        path.display()
    )]
    Lock { path: PathBuf, error: io::Error },
    #[error("writing the recording {} failed: {error}; recording stopped", path.display())]
    Write { path: PathBuf, error: io::Error },
    #[error(
        "the recording {} was still being written when the run had to end (its disk is stalled): its last entries may be missing",
        path.display()
    )]
    Stalled { path: PathBuf },
}

/// Appends `entry` to `out` as one frame.
pub fn encode(entry: &Entry, out: &mut Vec<u8>) {
    // Most entries fit a small stack buffer, which postcard fills faster than it appends
    // to a Vec byte by byte; larger ones (owners with long command lines) take a Vec.
    // Every entry type serializes: only the small buffer can be too small.
    let mut small = [0u8; 256];
    let mut large = Vec::new();
    let payload = match entry.encode_into(&mut small) {
        Some(p) => p,
        None => {
            // Room for its 1.1 encoding and the fields added since (at most 9 varints).
            let Ok(len) = postcard::to_stdvec(entry).map(|v| v.len()) else {
                return;
            };
            large.resize(len + 64, 0);
            match entry.encode_into(&mut large) {
                Some(p) => p,
                None => return,
            }
        }
    };
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
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
    Append(Vec<Entry>),
    /// Close the current segment and start the next with this header and checkpoint.
    Rotate(Box<Header>, Vec<Entry>),
}

/// Sizes the writer thread keeps for the loop, which decides rotations.
#[derive(Default)]
struct Progress {
    /// Bytes in the current segment, of which its header and checkpoint.
    segment_bytes: AtomicU64,
    checkpoint_bytes: AtomicU64,
    /// The current segment's number.
    segment: AtomicU32,
    /// Messages handled, for tests that wait for the writer.
    #[cfg(test)]
    handled: AtomicU64,
}

/// Records entries to a file. The loop only queues entries; the writer thread encodes
/// and writes them, so recording costs the loop a copy per entry.
pub struct Recorder {
    path: PathBuf,
    /// Entries queued; while `gap` is not zero, the first is the note of that gap.
    chunk: Vec<Entry>,
    tx: Option<SyncSender<Msg>>,
    thread: Option<JoinHandle<Result<(), RecordError>>>,
    progress: Arc<Progress>,
    segment_limit: Option<u64>,
    /// The header of the newest segment asked for, the template for the next.
    header: Header,
    /// Entries left out so far, and since the last chunk that went through.
    unrecorded: u64,
    gap: u64,
    /// Messages sent, for tests that wait for the writer.
    #[cfg(test)]
    sent: u64,
}

impl Recorder {
    /// Starts recording to `file` (from [`file::prepare`] at `path`) with `header` and the
    /// sockets open at start. With `max_bytes`, the recording's files together stay within
    /// about that size.
    pub fn start(
        path: &Path,
        mut file: File,
        max_bytes: Option<u64>,
        mut header: Header,
        snapshot: &[SocketEntry],
    ) -> Result<Self, RecordError> {
        let create_error = |error| RecordError::Create {
            path: path.to_owned(),
            error,
        };
        header.checkpoint = snapshot.len() as u32;
        let first = segment_start(&header, snapshot.iter().map(|s| Entry::Socket(*s)));
        // Written here, so that a disk that refuses it is an error at start.
        file.write_all(&first).map_err(create_error)?;
        let progress = Arc::new(Progress::default());
        progress.segment_bytes.store(first.len() as u64, Relaxed);
        progress.checkpoint_bytes.store(first.len() as u64, Relaxed);
        let (tx, rx) = mpsc::sync_channel(BACKLOG);
        let thread_path = path.to_owned();
        let thread_progress = Arc::clone(&progress);
        let thread = thread::Builder::new()
            .name("tracer-record".into())
            .spawn(move || write_loop(&thread_path, file, rx, &thread_progress))
            .map_err(create_error)?;
        Ok(Recorder {
            path: path.to_owned(),
            chunk: Vec::with_capacity(4096),
            tx: Some(tx),
            thread: Some(thread),
            progress,
            segment_limit: max_bytes.map(|m| (m / SEGMENTS).max(1)),
            header,
            unrecorded: 0,
            gap: 0,
            #[cfg(test)]
            sent: 0,
        })
    }

    /// Waits until the writer thread has handled every message sent.
    #[cfg(test)]
    pub(super) fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.progress.handled.load(Relaxed) < self.sent {
            assert!(Instant::now() < deadline, "the writer thread is stuck");
            thread::yield_now();
        }
    }

    /// Queues `entry`.
    pub fn push(&mut self, entry: Entry) {
        self.chunk.push(entry);
    }

    /// Queues a transition.
    pub fn transition(&mut self, t: &Transition) {
        self.push(Entry::Transition(t.into()));
    }

    /// Queues the owners resolved at `ts_ns` for a flagged socket.
    pub fn owners(&mut self, ts_ns: u64, socket: &Socket, ownership: &Ownership) {
        self.push(Entry::Owners(Box::new(OwnersEntry::new(
            ts_ns, socket, ownership,
        ))));
    }

    /// Entries left out so far because the disk was too slow.
    pub fn unrecorded(&self) -> u64 {
        self.unrecorded
    }

    /// Hands the queued entries to the writer thread. When the segment is full, starts
    /// the next one with a checkpoint of `sockets` and the `owners` of the flagged ones,
    /// at monotonic `now_ns`.
    pub fn flush<'a>(
        &mut self,
        now_ns: u64,
        sockets: impl Iterator<Item = (SocketKey, &'a Socket)>,
        owners: impl Fn(&Socket) -> Option<&'a Ownership>,
    ) -> Result<(), RecordError> {
        if !self.chunk.is_empty() {
            // The entries in the chunk, its gap note aside.
            let entries = self.chunk.len() as u64 - u64::from(self.gap > 0);
            let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(4096));
            if self.try_send(Msg::Append(chunk))? {
                self.gap = 0;
            } else {
                // The disk is behind: leave this chunk out and say so in the next.
                self.unrecorded += entries;
                self.gap += entries;
                self.chunk.push(Entry::Gap { entries: self.gap });
            }
        }
        if self.rotation_due() {
            self.rotate(now_ns, sockets, owners)?;
        }
        Ok(())
    }

    /// Whether the current segment is full and the last rotation asked for is done. A
    /// checkpoint larger than the limit must not make every flush rotate: a segment holds
    /// at least half a limit of new entries.
    fn rotation_due(&self) -> bool {
        let Some(limit) = self.segment_limit else {
            return false;
        };
        let p = &self.progress;
        let bytes = p.segment_bytes.load(Relaxed);
        p.segment.load(Relaxed) == self.header.segment
            && bytes >= limit
            && bytes - p.checkpoint_bytes.load(Relaxed) >= limit / 2
    }

    fn rotate<'a>(
        &mut self,
        now_ns: u64,
        sockets: impl Iterator<Item = (SocketKey, &'a Socket)>,
        owners: impl Fn(&Socket) -> Option<&'a Ownership>,
    ) -> Result<(), RecordError> {
        let mut checkpoint = Vec::new();
        let mut flagged = Vec::new();
        for (key, s) in sockets {
            checkpoint.push(Entry::Socket(SocketEntry::new(key, s)));
            if let Some(o) = owners(s) {
                flagged.push(Entry::Owners(Box::new(OwnersEntry::new(now_ns, s, o))));
            }
        }
        let mut header = self.header.clone();
        header.segment += 1;
        header.started_ns = now_ns;
        header.checkpoint = checkpoint.len() as u32;
        checkpoint.extend(flagged);
        // A full backlog postpones the rotation to a later flush.
        if self.try_send(Msg::Rotate(Box::new(header.clone()), checkpoint))? {
            self.header = header;
        }
        Ok(())
    }

    /// Writes the stop entry and waits for the writer thread to put everything on disk,
    /// until `deadline` at most: a stalled disk must not hold up the end of the run.
    pub fn finish(mut self, mut stop: StopEntry, deadline: Instant) -> Result<(), RecordError> {
        stop.unrecorded = self.unrecorded;
        self.push(Entry::Stop(stop));
        self.close(deadline)
    }

    /// Hands the queued entries to the writer thread, which then ends, and waits for it
    /// until `deadline`; a thread still writing then is left to the process's exit.
    fn close(&mut self, deadline: Instant) -> Result<(), RecordError> {
        let Some(tx) = self.tx.take() else {
            return self.join();
        };
        let mut msg = Msg::Append(std::mem::take(&mut self.chunk));
        loop {
            match tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    thread::sleep(CLOSE_POLL);
                }
                Err(TrySendError::Full(_)) => return Err(self.stalled()),
                Err(TrySendError::Disconnected(_)) => return self.join().and(Err(self.stopped())),
            }
        }
        drop(tx);
        while self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            if Instant::now() >= deadline {
                return Err(self.stalled());
            }
            thread::sleep(CLOSE_POLL);
        }
        self.join()
    }

    /// Sends without waiting; false when the backlog is full.
    fn try_send(&mut self, msg: Msg) -> Result<bool, RecordError> {
        match self.tx.as_ref().map(|tx| tx.try_send(msg)) {
            Some(Ok(())) => {
                #[cfg(test)]
                {
                    self.sent += 1;
                }
                Ok(true)
            }
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

    /// The writer thread is still writing at the deadline: it is let go.
    fn stalled(&mut self) -> RecordError {
        self.thread = None;
        RecordError::Stalled {
            path: self.path.clone(),
        }
    }

    fn stopped(&self) -> RecordError {
        RecordError::Write {
            path: self.path.clone(),
            error: io::Error::other("the writer thread ended"),
        }
    }
}

impl Drop for Recorder {
    /// A run that ends early (an error, a closed stdout) still gets what it queued onto
    /// the disk before the process exits, unless the disk is stalled.
    fn drop(&mut self) {
        let _ = self.close(Instant::now() + DROP_GRACE);
    }
}

/// The bytes a segment starts with: prologue, header, checkpoint.
fn segment_start(header: &Header, checkpoint: impl Iterator<Item = Entry>) -> Vec<u8> {
    let mut bytes = prologue();
    encode(&Entry::Header(Box::new(header.clone())), &mut bytes);
    for e in checkpoint {
        encode(&e, &mut bytes);
    }
    bytes
}

/// The writer thread: encodes and appends entries, syncs, rotates.
fn write_loop(
    path: &Path,
    mut file: File,
    rx: Receiver<Msg>,
    progress: &Progress,
) -> Result<(), RecordError> {
    let fail = |error| RecordError::Write {
        path: path.to_owned(),
        error,
    };
    let mut buf = Vec::with_capacity(1 << 20);
    // The rotated segments' files, newest first: kept open to keep them locked.
    let mut older: VecDeque<File> = VecDeque::new();
    let mut synced = Instant::now();
    let mut dirty = false;
    loop {
        let msg = match rx.recv_timeout(SYNC_PERIOD) {
            Ok(m) => Some(m),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        #[cfg(test)]
        let msg_handled = msg.is_some();
        match msg {
            Some(Msg::Append(entries)) => {
                buf.clear();
                for e in &entries {
                    encode(e, &mut buf);
                }
                file.write_all(&buf).map_err(fail)?;
                progress.segment_bytes.fetch_add(buf.len() as u64, Relaxed);
                dirty = true;
            }
            Some(Msg::Rotate(header, checkpoint)) => {
                file.sync_data().map_err(fail)?;
                shift_segments(path).map_err(fail)?;
                older.push_front(std::mem::replace(
                    &mut file,
                    file::create_segment(path).map_err(fail)?,
                ));
                // The oldest was deleted by the shift.
                older.truncate(SEGMENTS as usize - 1);
                let first = segment_start(&header, checkpoint.into_iter());
                file.write_all(&first).map_err(fail)?;
                progress.segment_bytes.store(first.len() as u64, Relaxed);
                progress.checkpoint_bytes.store(first.len() as u64, Relaxed);
                progress.segment.store(header.segment, Relaxed);
                dirty = true;
            }
            None => {}
        }
        #[cfg(test)]
        progress.handled.fetch_add(u64::from(msg_handled), Relaxed);
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
