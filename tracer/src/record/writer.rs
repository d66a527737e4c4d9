//! Writes a recording while `tracer watch` runs, without slowing it down.
//!
//! The watch loop queues entries in a chunk (a copy each) and hands each chunk to a writer
//! thread, which owns the file: encodes (about 90 ns per transition), writes, runs
//! `fdatasync` once a second, and rotates. If the disk cannot keep up and chunks pile up,
//! a chunk is left out rather than the loop stalled; an [`Entry::Gap`] in its place says
//! how many entries are missing.
//!
//! A write that fails (a full disk) stops the recording, not the run: the thread keeps
//! [`RESERVE`] bytes allocated past the end of the file, so that on a full disk the
//! allocation for the next chunk fails before anything is written, and the room kept takes
//! an [`Entry::Failed`] at once and the stop entry at the end, which counts every entry
//! left out.
//!
//! With a size budget, the recording is split into [`SEGMENTS`] files: `FILE` is being
//! written, `FILE.1` is the one before, up to `FILE.3`; the oldest is deleted at each
//! rotation. Each segment starts with a header and a checkpoint of the sockets tracked, so
//! a report can start from any of them.

use std::{
    collections::VecDeque,
    fs::{self, File},
    io,
    os::{fd::AsRawFd, unix::fs::FileExt},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed},
        mpsc::{self, Receiver, SyncSender, TrySendError},
        Arc, Mutex, PoisonError,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use super::{
    file, Entry, FailedEntry, Header, OwnersEntry, SocketEntry, StopEntry, MAGIC, VERSION,
};
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
/// Room kept allocated past the end of the file being written: enough for the note of a
/// failure and the stop entry.
pub const RESERVE: usize = 4096;
/// Longest error message a failure's note keeps, within [`RESERVE`].
const ERROR_CHARS: usize = 512;

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

/// What the writer thread tells the loop: sizes, which decide rotations, and a failure.
#[derive(Default)]
struct Progress {
    /// Bytes in the current segment, of which its header and checkpoint.
    segment_bytes: AtomicU64,
    checkpoint_bytes: AtomicU64,
    /// The current segment's number.
    segment: AtomicU32,
    /// Writing failed: nothing more is written but the stop entry.
    failed: AtomicBool,
    /// Why, until the loop takes it to say so.
    failure: Mutex<Option<io::Error>>,
    /// Entries the thread received after the failure and left out.
    dropped: AtomicU64,
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
    thread: Option<JoinHandle<()>>,
    progress: Arc<Progress>,
    segment_limit: Option<u64>,
    /// The header of the newest segment asked for, the template for the next.
    header: Header,
    /// Entries left out so far, and since the last chunk that went through.
    unrecorded: u64,
    gap: u64,
    /// The writer thread's failure has been seen (and said): entries are only counted.
    failed: bool,
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
        file: File,
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
        let sink = Sink::start(file, &first).map_err(create_error)?;
        let progress = Arc::new(Progress::default());
        progress.segment_bytes.store(first.len() as u64, Relaxed);
        progress.checkpoint_bytes.store(first.len() as u64, Relaxed);
        let (tx, rx) = mpsc::sync_channel(BACKLOG);
        let thread_path = path.to_owned();
        let thread_progress = Arc::clone(&progress);
        let thread = thread::Builder::new()
            .name("tracer-record".into())
            .spawn(move || write_loop(&thread_path, sink, rx, &thread_progress))
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
            failed: false,
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

    /// Queues `entry`; after a failure, counts it as left out.
    pub fn push(&mut self, entry: Entry) {
        if self.failed {
            self.unrecorded += 1;
        } else {
            self.chunk.push(entry);
        }
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

    /// Entries left out so far because the disk was too slow or failed.
    pub fn unrecorded(&self) -> u64 {
        self.unrecorded + self.progress.dropped.load(Relaxed)
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
        if !self.failed && self.progress.failed.load(Relaxed) {
            // What is queued is left out with the rest; the failure is said once.
            self.failed = true;
            self.unrecorded += self.chunk.len() as u64 - u64::from(self.gap > 0);
            self.chunk.clear();
            return Err(self.failure());
        }
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
    /// until `deadline` at most: a stalled disk must not hold up the end of the run. The
    /// stop entry counts the entries left out, as [`Recorder::unrecorded`] then does.
    pub fn finish(&mut self, mut stop: StopEntry, deadline: Instant) -> Result<(), RecordError> {
        // The thread adds what it left out itself.
        stop.unrecorded = self.unrecorded;
        self.chunk.push(Entry::Stop(stop));
        self.close(deadline)?;
        match !self.failed && self.progress.failed.load(Relaxed) {
            true => Err(self.failure()),
            false => Ok(()),
        }
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

    /// Waits for the writer thread to end; an error if it panicked.
    fn join(&mut self) -> Result<(), RecordError> {
        self.tx = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Err(_)) => Err(self.stopped()),
            Some(Ok(())) | None => Ok(()),
        }
    }

    /// The writer thread's failure, taken to be said.
    fn failure(&self) -> RecordError {
        let error = self
            .progress
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        RecordError::Write {
            path: self.path.clone(),
            error: error.unwrap_or_else(|| io::Error::other("the writer thread failed")),
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

/// The segment being written, with room kept past its end.
struct Sink {
    file: File,
    /// Where the next entry goes: the bytes written.
    len: u64,
    /// Whether the file system keeps room allocated ahead (most do: fallocate).
    reserve: bool,
}

impl Sink {
    /// A segment in `file` (empty) that starts with `first`.
    fn start(file: File, first: &[u8]) -> io::Result<Sink> {
        let mut sink = Sink {
            file,
            len: 0,
            reserve: true,
        };
        sink.append(first)?;
        Ok(sink)
    }

    /// Appends `bytes`, having allocated them and [`RESERVE`] bytes more: on a full disk
    /// this fails before writing anything, and the room kept before stays for the note of
    /// the failure and the stop entry.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.reserve {
            let len = (bytes.len() + RESERVE) as libc::off_t;
            // SAFETY: fallocate on a descriptor we own; KEEP_SIZE leaves the file's size.
            let r = unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    libc::FALLOC_FL_KEEP_SIZE,
                    self.len as libc::off_t,
                    len,
                )
            };
            if r != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                    return Err(e);
                }
                // Without it a full disk may leave no room for the note of the failure.
                self.reserve = false;
            }
        }
        self.write(bytes)
    }

    /// Writes `bytes` after the last entry, into room kept for them.
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, self.len)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Cuts what a failed write left after the last entry, and frees the room kept.
    fn trim(&self) {
        let _ = self.file.set_len(self.len);
    }
}

/// The writer thread: encodes and appends entries, syncs, rotates. After a failure it
/// writes only the note of it and the stop entry, and counts what it leaves out.
fn write_loop(path: &Path, mut sink: Sink, rx: Receiver<Msg>, progress: &Progress) {
    let mut buf = Vec::with_capacity(1 << 20);
    // The rotated segments' files, newest first: kept open to keep them locked.
    let mut older: VecDeque<File> = VecDeque::new();
    let mut synced = Instant::now();
    let mut dirty = false;
    let mut failed = false;
    loop {
        let msg = match rx.recv_timeout(SYNC_PERIOD) {
            Ok(m) => Some(m),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        #[cfg(test)]
        let msg_handled = msg.is_some();
        let step = match msg {
            Some(Msg::Append(entries)) if failed => {
                stop_only(&mut sink, entries, &mut buf, progress);
                Ok(())
            }
            Some(Msg::Append(entries)) => {
                buf.clear();
                for e in &entries {
                    encode(e, &mut buf);
                }
                match sink.append(&buf) {
                    Ok(()) => {
                        progress.segment_bytes.fetch_add(buf.len() as u64, Relaxed);
                        dirty = true;
                        Ok(())
                    }
                    Err(e) => Err((e, entries)),
                }
            }
            // Checkpoints restate what is known: nothing is missing for their loss.
            Some(Msg::Rotate(..)) if failed => Ok(()),
            Some(Msg::Rotate(header, checkpoint)) => {
                match rotate(path, &mut sink, &mut older, &header, checkpoint) {
                    Ok(()) => {
                        progress.segment_bytes.store(sink.len, Relaxed);
                        progress.checkpoint_bytes.store(sink.len, Relaxed);
                        progress.segment.store(header.segment, Relaxed);
                        dirty = true;
                        Ok(())
                    }
                    Err(e) => Err((e, Vec::new())),
                }
            }
            None => Ok(()),
        };
        #[cfg(test)]
        progress.handled.fetch_add(u64::from(msg_handled), Relaxed);
        if let Err((error, entries)) = step {
            failed = true;
            fail(&mut sink, error, &mut buf, progress);
            stop_only(&mut sink, entries, &mut buf, progress);
        }
        if dirty && !failed && synced.elapsed() >= SYNC_PERIOD {
            if let Err(e) = sink.file.sync_data() {
                failed = true;
                fail(&mut sink, e, &mut buf, progress);
            }
            synced = Instant::now();
            dirty = false;
        }
    }
    if !failed {
        if let Err(e) = sink.file.sync_data() {
            fail(&mut sink, e, &mut buf, progress);
        }
    }
    sink.trim();
}

/// Writing failed with `error`: notes it in the room kept, and tells the loop.
fn fail(sink: &mut Sink, error: io::Error, buf: &mut Vec<u8>, progress: &Progress) {
    buf.clear();
    encode(
        &Entry::Failed(FailedEntry {
            ts_ns: monotonic_ns(),
            error: error.to_string().chars().take(ERROR_CHARS).collect(),
        }),
        buf,
    );
    // Only where no room could be kept does this fail too: the report then finds no stop.
    let _ = sink.write(buf);
    *progress
        .failure
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(error);
    progress.failed.store(true, Relaxed);
}

/// After a failure: counts `entries` as left out but for the stop entry, which is written
/// with them counted.
fn stop_only(sink: &mut Sink, entries: Vec<Entry>, buf: &mut Vec<u8>, progress: &Progress) {
    for entry in entries {
        match entry {
            Entry::Stop(mut stop) => {
                stop.unrecorded += progress.dropped.load(Relaxed);
                buf.clear();
                encode(&Entry::Stop(stop), buf);
                let _ = sink.write(buf);
            }
            // The loop counted the entries of its gaps.
            Entry::Gap { .. } => {}
            _ => {
                progress.dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Closes the current segment and starts the next, with `header` and `checkpoint`. If the
/// next cannot be started, the current one goes back to `FILE`, where a report looks.
fn rotate(
    path: &Path,
    sink: &mut Sink,
    older: &mut VecDeque<File>,
    header: &Header,
    checkpoint: Vec<Entry>,
) -> io::Result<()> {
    sink.file.sync_data()?;
    shift_segments(path)?;
    let first = segment_start(header, checkpoint.into_iter());
    match file::create_segment(path).and_then(|f| Sink::start(f, &first)) {
        Ok(next) => {
            let done = std::mem::replace(sink, next);
            done.trim();
            older.push_front(done.file);
            // The oldest was deleted by the shift.
            older.truncate(SEGMENTS as usize - 1);
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_file(path);
            let _ = fs::rename(segment_path(path, 1), path);
            Err(e)
        }
    }
}

/// Now on the kernel's monotonic clock, which dates every entry.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; the clock always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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
