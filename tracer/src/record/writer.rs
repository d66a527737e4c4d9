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
//!
//! The budget counts everything on disk, checkpoints included: the files together stay
//! within it plus one chunk. A segment is closed before the chunks in flight and the next
//! would take it past its quarter, once it holds as many bytes of new entries as its
//! checkpoint: a large table makes segments larger and fewer (the oldest are deleted, as
//! the newest grows, to keep the budget), never rotations one after another. When the next
//! segment could not rotate within the budget (its checkpoint and as much again do not
//! fit), the recording stops rotating, says so in one warning, goes on in one file and
//! stops at the budget; the stop entry is still written, after a gap entry counting what
//! was left out. A budget that cannot hold the checkpoint at start is an error.

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    path::{Path, PathBuf},
    sync::{
        atomic::{
            AtomicU32, AtomicU64,
            Ordering::{Acquire, Relaxed, Release},
        },
        mpsc::{self, Receiver, SyncSender, TrySendError},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use super::{Entry, Header, OwnersEntry, SocketEntry, StopEntry, MAGIC, VERSION};
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
    #[error(
        "--record-max-size {} cannot hold a checkpoint of the {sockets} sockets open ({}); \
         give at least {}",
        mib(*budget),
        mib(*checkpoint),
        mib(suggested_budget(*checkpoint))
    )]
    Budget {
        budget: u64,
        sockets: u32,
        checkpoint: u64,
    },
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
    /// Chunks the writer has taken (written or left out), and the bytes of the last one
    /// written: what is still in flight counts toward a segment's share.
    chunks: AtomicU64,
    chunk_bytes: AtomicU64,
    /// The current segment's number.
    segment: AtomicU32,
    /// Entries the writer left out because the recording reached its budget.
    dropped: AtomicU64,
    /// Budget warnings given, for tests.
    #[cfg(test)]
    warnings: std::sync::Mutex<Vec<String>>,
    /// Messages handled, for tests that wait for the writer.
    #[cfg(test)]
    handled: AtomicU64,
}

impl Progress {
    /// Says one line about the budget on stderr.
    fn warn(&self, message: String) {
        eprintln!("tracer: warning: {message}");
        #[cfg(test)]
        self.warnings.lock().expect("not poisoned").push(message);
    }
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
    max_bytes: Option<u64>,
    /// The header of the newest segment asked for, the template for the next.
    header: Header,
    /// Entries left out so far, and since the last chunk that went through.
    unrecorded: u64,
    gap: u64,
    /// Chunks sent to the writer thread.
    chunks: u64,
    /// Messages sent, for tests that wait for the writer.
    #[cfg(test)]
    sent: u64,
}

/// Creates the recording's file at `path`, before anything else is set up, so that a
/// bad path fails at once. An earlier recording there (and its rotated files) is replaced;
/// any other file is refused, as are rotated names that hold something else.
pub fn prepare(path: &Path) -> Result<File, RecordError> {
    refuse_foreign(path)?;
    for n in 1..SEGMENTS {
        let old = segment_path(path, n);
        refuse_foreign(&old)?;
        let _ = fs::remove_file(old);
    }
    File::create(path).map_err(|error| RecordError::Create {
        path: path.to_owned(),
        error,
    })
}

impl Recorder {
    /// Starts recording to `file` (from [`prepare`] at `path`) with `header` and the
    /// sockets open at start. With `max_bytes`, the recording's files together stay within
    /// that size and one chunk; a budget that cannot hold the sockets open at start is an
    /// error, one that cannot rotate beside them a warning.
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
        let progress = Arc::new(Progress::default());
        let mut budget = Budget::new(max_bytes);
        if let Some(limit) = max_bytes {
            let checkpoint = first.len() as u64;
            if checkpoint > limit {
                return Err(RecordError::Budget {
                    budget: limit,
                    sockets: header.checkpoint,
                    checkpoint,
                });
            }
            if !can_rotate(limit, checkpoint) {
                budget.stop_rotating(path, &progress, header.checkpoint, checkpoint, "open");
            }
        }
        // Written here, so that a disk that refuses it is an error at start.
        file.write_all(&first).map_err(create_error)?;
        progress.segment_bytes.store(first.len() as u64, Relaxed);
        progress.checkpoint_bytes.store(first.len() as u64, Relaxed);
        let (tx, rx) = mpsc::sync_channel(BACKLOG);
        let thread_path = path.to_owned();
        let thread_progress = Arc::clone(&progress);
        let thread = thread::Builder::new()
            .name("tracer-record".into())
            .spawn(move || write_loop(&thread_path, file, rx, &thread_progress, budget))
            .map_err(create_error)?;
        Ok(Recorder {
            path: path.to_owned(),
            chunk: Vec::with_capacity(4096),
            tx: Some(tx),
            thread: Some(thread),
            progress,
            max_bytes,
            header,
            unrecorded: 0,
            gap: 0,
            chunks: 0,
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

    /// The budget warnings given so far.
    #[cfg(test)]
    pub(super) fn warnings(&self) -> Vec<String> {
        self.progress.warnings.lock().expect("not poisoned").clone()
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

    /// Entries left out so far: the disk was too slow, or the recording reached its budget.
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
        if !self.chunk.is_empty() {
            // The entries in the chunk, its gap note aside.
            let entries = self.chunk.len() as u64 - u64::from(self.gap > 0);
            let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(4096));
            if self.try_send(Msg::Append(chunk))? {
                self.gap = 0;
                self.chunks += 1;
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

    /// Whether the current segment would pass its quarter of the budget (checkpoint
    /// included) with the chunks in flight and the next one, and the last rotation asked for
    /// is done. A large checkpoint must not make every flush rotate: a segment holds as
    /// many bytes of new entries as its checkpoint first.
    fn rotation_due(&self) -> bool {
        let Some(limit) = self.max_bytes else {
            return false;
        };
        let p = &self.progress;
        // Chunks taken first: a chunk counted as written has its bytes in the segment's
        // (one that has them before it is counted is counted twice: a rotation a chunk early).
        let in_flight = self.chunks.saturating_sub(p.chunks.load(Acquire));
        let bytes = p.segment_bytes.load(Relaxed);
        let checkpoint = p.checkpoint_bytes.load(Relaxed);
        let coming = (in_flight + 1) * p.chunk_bytes.load(Relaxed);
        p.segment.load(Relaxed) == self.header.segment
            && bytes + coming >= limit / SEGMENTS
            && bytes - checkpoint >= checkpoint
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

    /// Writes the stop entry and waits for the writer thread to put everything on disk.
    pub fn finish(mut self, mut stop: StopEntry) -> Result<(), RecordError> {
        stop.unrecorded = self.unrecorded;
        self.push(Entry::Stop(stop));
        let chunk = std::mem::take(&mut self.chunk);
        let sent = self
            .tx
            .take()
            .is_some_and(|tx| tx.send(Msg::Append(chunk)).is_ok());
        let joined = self.join();
        if sent {
            joined
        } else {
            joined.and(Err(self.stopped()))
        }
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

    fn stopped(&self) -> RecordError {
        RecordError::Write {
            path: self.path.clone(),
            error: io::Error::other("the writer thread ended"),
        }
    }
}

impl Drop for Recorder {
    /// A run that ends early (an error, a closed stdout) still gets what it queued onto
    /// the disk before the process exits.
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let chunk = std::mem::take(&mut self.chunk);
            if !chunk.is_empty() {
                let _ = tx.send(Msg::Append(chunk));
            }
        }
        let _ = self.join();
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

/// The writer thread: encodes and appends entries, syncs, rotates, keeps the budget.
fn write_loop(
    path: &Path,
    mut file: File,
    rx: Receiver<Msg>,
    progress: &Progress,
    mut budget: Budget,
) -> Result<(), RecordError> {
    let fail = |error| RecordError::Write {
        path: path.to_owned(),
        error,
    };
    let mut buf = Vec::with_capacity(1 << 20);
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
                let segment = progress.segment_bytes.load(Relaxed);
                if budget.admits(path, segment, buf.len() as u64, progress) {
                    file.write_all(&buf).map_err(fail)?;
                    progress.chunk_bytes.store(buf.len() as u64, Relaxed);
                    progress.segment_bytes.fetch_add(buf.len() as u64, Relaxed);
                    dirty = true;
                } else if let Some(end) = budget.leave_out(entries, progress) {
                    buf.clear();
                    for e in &end {
                        encode(e, &mut buf);
                    }
                    file.write_all(&buf).map_err(fail)?;
                    dirty = true;
                }
                progress.chunks.fetch_add(1, Release);
            }
            Some(Msg::Rotate(header, checkpoint)) => {
                let first = segment_start(&header, checkpoint.into_iter());
                let checkpoint = first.len() as u64;
                if budget.rotates(path, progress, header.checkpoint, checkpoint) {
                    file.sync_data().map_err(fail)?;
                    shift_segments(path).map_err(fail)?;
                    let closed = progress.segment_bytes.load(Relaxed);
                    budget.rotated(path, closed, checkpoint);
                    file = File::create(path).map_err(fail)?;
                    file.write_all(&first).map_err(fail)?;
                    progress.segment_bytes.store(checkpoint, Relaxed);
                    progress.checkpoint_bytes.store(checkpoint, Relaxed);
                    // Done: the loop may ask again. A refusal is for good, and the loop,
                    // which waits for this number, never asks again.
                    progress.segment.store(header.segment, Relaxed);
                    dirty = true;
                }
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

/// What the writer thread keeps of the budget: the rotated segments on disk, and whether
/// the recording still rotates or has stopped at its budget.
struct Budget {
    limit: Option<u64>,
    /// Sizes of the rotated segments on disk, newest (`FILE.1`) first.
    closed: VecDeque<u64>,
    /// The next segment could not rotate within the budget: the current one goes on.
    no_rotation: bool,
    /// The recording reached its budget: entries are left out from here.
    full: bool,
    /// Entries left out since, and the entries of gap notes among them (already counted
    /// by the loop).
    dropped: u64,
    gaps: u64,
}

impl Budget {
    fn new(limit: Option<u64>) -> Self {
        Budget {
            limit,
            closed: VecDeque::new(),
            no_rotation: false,
            full: false,
            dropped: 0,
            gaps: 0,
        }
    }

    /// Whether `chunk` bytes may be appended to a segment of `segment` bytes. The rotated
    /// segments give way, oldest first, once the recording has passed its budget (so by
    /// one chunk at most); when the current segment alone would, the recording is full.
    fn admits(&mut self, path: &Path, segment: u64, chunk: u64, progress: &Progress) -> bool {
        let Some(limit) = self.limit else {
            return true;
        };
        if self.full {
            return false;
        }
        self.make_room(path, segment, limit);
        if self.closed.is_empty() && segment + chunk > limit {
            self.full = true;
            if !self.no_rotation {
                progress.warn(format!(
                    "the recording {} reached --record-max-size ({}) without room to rotate; \
                     entries are left out from here",
                    path.display(),
                    mib(limit)
                ));
            }
            return false;
        }
        true
    }

    /// Counts `entries`, left out of a full recording; at the end of the run, returns what
    /// is still written: a gap note for everything left out, and the stop entry.
    fn leave_out(&mut self, entries: Vec<Entry>, progress: &Progress) -> Option<Vec<Entry>> {
        let mut stop = None;
        for e in entries {
            match e {
                Entry::Gap { entries } => self.gaps += entries,
                Entry::Stop(s) => stop = Some(s),
                _ => self.dropped += 1,
            }
        }
        progress.dropped.store(self.dropped, Relaxed);
        let mut stop = stop?;
        stop.unrecorded += self.dropped;
        let left_out = self.dropped + self.gaps;
        let gap = (left_out > 0).then_some(Entry::Gap { entries: left_out });
        Some(gap.into_iter().chain([Entry::Stop(stop)]).collect())
    }

    /// Whether to start a segment whose header and checkpoint (of `sockets` sockets) take
    /// `checkpoint` bytes. One that could not rotate within the budget is refused, once
    /// and for all, with a warning: the current segment goes on until the budget.
    fn rotates(&mut self, path: &Path, progress: &Progress, sockets: u32, checkpoint: u64) -> bool {
        let Some(limit) = self.limit else {
            return false;
        };
        if self.full || self.no_rotation {
            return false;
        }
        if can_rotate(limit, checkpoint) {
            return true;
        }
        self.stop_rotating(path, progress, sockets, checkpoint, "tracked");
        false
    }

    /// No more rotations: a checkpoint of `sockets` sockets (`what`: open at start, or
    /// tracked now) takes `checkpoint` bytes, too many for the budget.
    fn stop_rotating(
        &mut self,
        path: &Path,
        progress: &Progress,
        sockets: u32,
        checkpoint: u64,
        what: &str,
    ) {
        let limit = self.limit.unwrap_or_default();
        self.no_rotation = true;
        progress.warn(format!(
            "--record-max-size {} leaves no room to rotate {}: a checkpoint of the {sockets} \
             sockets {what} takes {}, and a segment must hold as much again; the recording \
             goes on in one file and stops at the budget (give at least {})",
            mib(limit),
            path.display(),
            mib(checkpoint),
            mib(suggested_budget(checkpoint))
        ));
    }

    /// The current segment, `closed` bytes, became `FILE.1` (the rename dropped the oldest
    /// beyond `FILE.3`); the next starts with `checkpoint` bytes, for which older segments
    /// give way if needed.
    fn rotated(&mut self, path: &Path, closed: u64, checkpoint: u64) {
        self.closed.push_front(closed);
        self.closed.truncate(SEGMENTS as usize - 1);
        self.make_room(path, checkpoint, self.limit.unwrap_or(u64::MAX));
    }

    /// Deletes the oldest rotated segments while they and a current segment of `segment`
    /// bytes pass `limit`.
    fn make_room(&mut self, path: &Path, segment: u64, limit: u64) {
        while !self.closed.is_empty() && self.closed.iter().sum::<u64>() + segment > limit {
            // A file already gone is gone: the budget is kept either way.
            let _ = fs::remove_file(segment_path(path, self.closed.len() as u64));
            self.closed.pop_back();
        }
    }
}

/// Whether a segment that starts with `checkpoint` bytes can rotate within `limit`: it
/// must first hold as many bytes of new entries.
fn can_rotate(limit: u64, checkpoint: u64) -> bool {
    2 * checkpoint <= limit
}

/// A budget whose quarters hold checkpoints of `checkpoint` bytes as designed: in at most
/// half of each, in whole MiB.
fn suggested_budget(checkpoint: u64) -> u64 {
    (checkpoint * 2 * SEGMENTS).div_ceil(1 << 20) << 20
}

/// `bytes` in MiB, as the options take them.
fn mib(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{}MiB", bytes >> 20)
    } else {
        format!("{:.1}MiB", bytes as f64 / f64::from(1 << 20))
    }
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
