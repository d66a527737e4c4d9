//! Writes a recording while `tracer watch` runs, without slowing it down.
//!
//! The watch loop queues entries in a chunk (a copy each) and hands each chunk to a writer
//! thread, which owns the file: encodes (transitions by an encoder of their own, held to
//! serde's bytes by a test), writes, has the data forced to disk once a second and each
//! segment it closes (`fdatasync`, on a thread of its own: under load one took up to a
//! second, and chunks piled up behind it), and rotates. If the disk cannot keep up and
//! chunks pile up, a chunk is left out rather than the loop stalled; an [`Entry::Gap`] in
//! its place says how many entries are missing.
//!
//! A write that fails (a full disk) stops the recording, not the run: the thread keeps
//! at least [`RESERVE`] bytes allocated past the end of the file (it allocates up to
//! [`AHEAD`] more at a time), so that on a full disk the allocation for the next chunk
//! fails before anything is written, and the room kept takes an [`Entry::Failed`] at once
//! and the stop entry at the end, which counts every entry left out.
//!
//! With a size budget, the recording is split into [`SEGMENTS`] files: `FILE` is being
//! written, `FILE.1` is the one before, up to `FILE.3`; the oldest is deleted at each
//! rotation. Each segment starts with a header and a checkpoint of the sockets tracked, so
//! a report can start from any of them.
//!
//! The budget counts everything on disk, checkpoints and the room kept for the end
//! included: the files together stay within it plus one chunk. A segment is closed before
//! the chunks in flight and the next would take it past its quarter, once it holds as many
//! bytes of new entries as its checkpoint: a large table makes segments larger and fewer
//! (the oldest are deleted, as the newest grows, to keep the budget), never rotations one
//! after another. When the next segment could not rotate within the budget (its checkpoint
//! and as much again do not fit), the recording stops rotating, says so in one warning,
//! goes on in one file and stops at the budget, as after a failed write: an
//! [`Entry::Failed`] says when and why, and at the end a gap entry counts what was left
//! out, then the stop entry. A budget that cannot hold the checkpoint at start is an error.

use std::{
    collections::VecDeque,
    fs::{self, File},
    io,
    net::IpAddr,
    os::{fd::AsRawFd, unix::fs::FileExt},
    path::{Path, PathBuf},
    sync::{
        atomic::{
            AtomicBool, AtomicU32, AtomicU64,
            Ordering::{Acquire, Relaxed, Release},
        },
        mpsc::{self, Receiver, SyncSender, TrySendError},
        Arc, Mutex, PoisonError,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use super::{
    file, Entry, FailedEntry, FamilyEntry, Header, OwnersEntry, SocketEntry, StopEntry,
    TransitionEntry, MAGIC, VERSION,
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
/// failure (or of the budget reached), a gap entry and the stop entry. It counts toward
/// the budget.
pub const RESERVE: usize = 4096;
/// Room allocated at once past what the next chunk needs: one fallocate per MiB instead of
/// one per chunk, each of which had the file system allocate a chunk's blocks on its own
/// (8% of the tracer's CPU with `--record` at 200k transitions/s). With a budget, at most
/// a 64th of a segment, so that the room kept stays small beside it.
const AHEAD: u64 = 1 << 20;
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
    match entry {
        Entry::Transition(t) => encode_transition(t, out),
        _ => encode_serde(entry, out),
    }
}

/// [`encode`] through serde, for any entry.
fn encode_serde(entry: &Entry, out: &mut Vec<u8>) {
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

/// [`Entry::Transition`]'s variant number, its encoding's first byte.
const TRANSITION_VARIANT: u8 = 2;

/// The longest transition payload: variant 1, time 10, socket 8, pid 5, name 17, tid 5,
/// family 1, addresses 2 x 17, ports 2 x 3, states 2, namespace 5.
const TRANSITION_MAX: usize = 94;
const _: () = assert!(TRANSITION_MAX <= 128);

/// Writes a transition entry exactly as the serde path of [`encode`] does, field by field
/// into one buffer: postcard's slice writer made a copy call per field, which with the CRC
/// was about a fifth of the tracer's CPU with `--record` at 200k transitions/s.
fn encode_transition(t: &TransitionEntry, out: &mut Vec<u8>) {
    let mut p = Payload {
        buf: [0; 128 + 16],
        len: 0,
    };
    p.byte(TRANSITION_VARIANT);
    p.varint(t.ts_ns);
    p.fixed(&t.sk.to_le_bytes());
    p.varint(t.task.pid.into());
    let name = t.task.comm.iter().position(|&b| b == 0).unwrap_or(16);
    p.byte(name as u8);
    p.fixed(&t.task.comm);
    p.len -= 16 - name;
    p.varint(t.tid.into());
    let ends = &t.ends;
    p.byte(match ends.family {
        FamilyEntry::Ipv4 => 0,
        FamilyEntry::Ipv6 => 1,
    });
    p.addr(ends.saddr);
    p.varint(ends.sport.into());
    p.addr(ends.daddr);
    p.varint(ends.dport.into());
    p.byte(t.old);
    p.byte(t.new);
    p.varint(ends.netns.into());
    let payload = &p.buf[..p.len];
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// A payload being written, in postcard's encoding. Positions are taken modulo 128, which
/// changes none (a payload is at most [`TRANSITION_MAX`] bytes) and proves every write in
/// bounds to the compiler: no check per byte.
struct Payload {
    buf: [u8; 128 + 16],
    len: usize,
}

impl Payload {
    fn byte(&mut self, b: u8) {
        self.buf[self.len & 127] = b;
        self.len += 1;
    }

    /// A fixed number of bytes, at most 16 (postcard's fixint, an address's octets, or a
    /// command name's room).
    fn fixed<const N: usize>(&mut self, bytes: &[u8; N]) {
        let at = self.len & 127;
        self.buf[at..at + N].copy_from_slice(bytes);
        self.len += N;
    }

    /// Seven bits a byte, lowest first, the top bit set on all but the last.
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.byte(v as u8 | 0x80);
            v >>= 7;
        }
        self.byte(v as u8);
    }

    /// serde's `IpAddr`: the variant (V4 0, V6 1), then the octets.
    fn addr(&mut self, a: IpAddr) {
        match a {
            IpAddr::V4(v4) => {
                self.byte(0);
                self.fixed(&v4.octets());
            }
            IpAddr::V6(v6) => {
                self.byte(1);
                self.fixed(&v6.octets());
            }
        }
    }
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
    /// Chunks the writer has taken (written or left out), and the bytes of the last one
    /// written: what is still in flight counts toward a segment's share.
    chunks: AtomicU64,
    chunk_bytes: AtomicU64,
    /// The current segment's number.
    segment: AtomicU32,
    /// Writing failed: nothing more is written but the stop entry.
    failed: AtomicBool,
    /// Why, until the loop takes it to say so.
    failure: Mutex<Option<io::Error>>,
    /// Entries the thread received after the failure, or once the recording reached its
    /// budget, and left out.
    dropped: AtomicU64,
    /// Budget warnings given, for tests.
    #[cfg(test)]
    warnings: Mutex<Vec<String>>,
    /// Messages handled, for tests that wait for the writer.
    #[cfg(test)]
    handled: AtomicU64,
}

impl Progress {
    /// Says one line about the budget on stderr.
    fn warn(&self, message: String) {
        eprintln!("tracer: warning: {message}");
        #[cfg(test)]
        self.warnings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(message);
    }
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
    max_bytes: Option<u64>,
    /// The header of the newest segment asked for, the template for the next.
    header: Header,
    /// Entries left out so far, and since the last chunk that went through.
    unrecorded: u64,
    gap: u64,
    /// Chunks sent to the writer thread.
    chunks: u64,
    /// The writer thread's failure has been seen (and said): entries are only counted.
    failed: bool,
    /// Messages sent, for tests that wait for the writer.
    #[cfg(test)]
    sent: u64,
}

impl Recorder {
    /// Starts recording to `file` (from [`file::prepare`] at `path`) with `header` and the
    /// sockets open at start. With `max_bytes`, the recording's files together stay within
    /// that size and one chunk; a budget that cannot hold the sockets open at start is an
    /// error, one that cannot rotate beside them a warning.
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
        let progress = Arc::new(Progress::default());
        let mut budget = Budget::new(max_bytes);
        if let Some(limit) = max_bytes {
            let checkpoint = first.len() as u64;
            if checkpoint + RESERVE as u64 > limit {
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
        let ahead = max_bytes.map_or(AHEAD, |limit| (limit / SEGMENTS / 64).min(AHEAD));
        let sink = Sink::start(file, &first, ahead).map_err(create_error)?;
        progress.segment_bytes.store(first.len() as u64, Relaxed);
        progress.checkpoint_bytes.store(first.len() as u64, Relaxed);
        let (tx, rx) = mpsc::sync_channel(BACKLOG);
        let thread_path = path.to_owned();
        let thread_progress = Arc::clone(&progress);
        let thread = thread::Builder::new()
            .name("tracer-record".into())
            .spawn(move || write_loop(&thread_path, sink, rx, &thread_progress, budget))
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

    /// The budget warnings given so far.
    #[cfg(test)]
    pub(super) fn warnings(&self) -> Vec<String> {
        self.progress
            .warnings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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

    /// Entries left out so far: the disk was too slow or failed, or the recording reached
    /// its budget.
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

    /// Whether the current segment would pass its quarter of the budget (checkpoint and
    /// room kept included) with the chunks in flight and the next one, and the last
    /// rotation asked for is done. A large checkpoint must not make every flush rotate: a
    /// segment holds as many bytes of new entries as its checkpoint first.
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
            && bytes + coming + RESERVE as u64 >= limit / SEGMENTS
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
    /// Where the room allocated ends.
    allocated: u64,
    /// Room allocated at once past what is needed (see [`AHEAD`]).
    ahead: u64,
}

impl Sink {
    /// A segment in `file` (empty) that starts with `first`, allocated `ahead` bytes at a
    /// time.
    fn start(file: File, first: &[u8], ahead: u64) -> io::Result<Sink> {
        let mut sink = Sink {
            file,
            len: 0,
            reserve: true,
            allocated: 0,
            ahead,
        };
        sink.append(first)?;
        Ok(sink)
    }

    /// Appends `bytes`, having allocated them and [`RESERVE`] bytes more: on a full disk
    /// this fails before writing anything, and the room kept before stays for the note of
    /// the failure and the stop entry.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let needed = self.len + (bytes.len() + RESERVE) as u64;
        if self.reserve && needed > self.allocated {
            self.allocate(needed)?;
        }
        self.write(bytes)
    }

    /// Allocates up to `needed` and [`Sink::ahead`] bytes more; where the disk has not that
    /// much room, up to `needed` only, so that a full disk stops the recording where it
    /// would have without the room ahead.
    fn allocate(&mut self, needed: u64) -> io::Result<()> {
        let mut result = self.fallocate(needed + self.ahead);
        if result.is_ok() {
            self.allocated = needed + self.ahead;
            return Ok(());
        }
        if self.ahead > 0 {
            result = self.fallocate(needed);
            if result.is_ok() {
                self.allocated = needed;
                return Ok(());
            }
        }
        match result {
            // Without it a full disk may leave no room for the note of the failure.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                self.reserve = false;
                Ok(())
            }
            r => r,
        }
    }

    /// Allocates the file up to `end` from where the next entry goes, its size unchanged.
    fn fallocate(&self, end: u64) -> io::Result<()> {
        // SAFETY: fallocate on a descriptor we own; KEEP_SIZE leaves the file's size.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_KEEP_SIZE,
                self.len as libc::off_t,
                (end - self.len) as libc::off_t,
            )
        };
        match r {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
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

/// The writer thread: encodes and appends entries, syncs, rotates, keeps the budget. After
/// a failure, or once the recording has reached its budget, it writes only the note of it
/// and the end (the stop entry), and counts what it leaves out.
fn write_loop(
    path: &Path,
    mut sink: Sink,
    rx: Receiver<Msg>,
    progress: &Progress,
    mut budget: Budget,
) {
    let mut buf = Vec::with_capacity(1 << 20);
    let mut syncer = Syncer::default();
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
            Some(Msg::Append(entries)) if failed || budget.full => {
                stop_only(&mut sink, entries, &mut buf, progress, &mut budget);
                progress.chunks.fetch_add(1, Release);
                Ok(())
            }
            Some(Msg::Append(entries)) => {
                buf.clear();
                for e in &entries {
                    encode(e, &mut buf);
                }
                let step = if budget.admits(path, sink.len, buf.len() as u64, progress) {
                    match sink.append(&buf) {
                        Ok(()) => {
                            progress.chunk_bytes.store(buf.len() as u64, Relaxed);
                            progress.segment_bytes.fetch_add(buf.len() as u64, Relaxed);
                            dirty = true;
                            Ok(())
                        }
                        Err(e) => Err((e, entries)),
                    }
                } else {
                    // The budget is reached: said in the room kept, as a failure is, and
                    // nothing more is written but the end.
                    note_stop(&mut sink, &budget.reached(), &mut buf);
                    stop_only(&mut sink, entries, &mut buf, progress, &mut budget);
                    dirty = true;
                    Ok(())
                };
                progress.chunks.fetch_add(1, Release);
                step
            }
            // Checkpoints restate what is known: nothing is missing for their loss.
            Some(Msg::Rotate(..)) if failed || budget.full => Ok(()),
            Some(Msg::Rotate(header, checkpoint)) => {
                let first = segment_start(&header, checkpoint.into_iter());
                // A refusal is for good: the loop, which waits for this segment's number,
                // never asks again.
                if !budget.rotates(path, progress, header.checkpoint, first.len() as u64) {
                    Ok(())
                } else {
                    match rotate(path, &mut sink, &mut budget, &mut syncer, &first) {
                        Ok(()) => {
                            progress.segment_bytes.store(sink.len, Relaxed);
                            progress.checkpoint_bytes.store(sink.len, Relaxed);
                            // Done: the loop may ask again.
                            progress.segment.store(header.segment, Relaxed);
                            dirty = true;
                            Ok(())
                        }
                        Err(e) => Err((e, Vec::new())),
                    }
                }
            }
            None => Ok(()),
        };
        #[cfg(test)]
        progress.handled.fetch_add(u64::from(msg_handled), Relaxed);
        if let Err((error, entries)) = step {
            failed = true;
            fail(&mut sink, error, &mut buf, progress);
            stop_only(&mut sink, entries, &mut buf, progress, &mut budget);
        }
        while let Some(result) = syncer.ended() {
            if let Err(e) = result {
                if !failed {
                    failed = true;
                    fail(&mut sink, e, &mut buf, progress);
                }
            }
        }
        if dirty && !failed && synced.elapsed() >= SYNC_PERIOD {
            match syncer.start(&sink.file) {
                Ok(false) => {}
                Ok(true) => {
                    synced = Instant::now();
                    dirty = false;
                }
                Err(e) => {
                    failed = true;
                    fail(&mut sink, e, &mut buf, progress);
                }
            }
        }
    }
    if let Err(e) = syncer.finish().and_then(|()| sink.file.sync_data()) {
        if !failed {
            fail(&mut sink, e, &mut buf, progress);
        }
    }
    sink.trim();
}

/// The syncing thread: where files go to be synced, where results come back, its handle.
type SyncThread = (SyncSender<File>, Receiver<io::Result<()>>, JoinHandle<()>);

/// Runs `fdatasync` on a thread of its own, so that the writer goes on writing while the
/// disk catches up: the segment being written at most one sync at a time, and each segment
/// a rotation closes.
#[derive(Default)]
struct Syncer {
    /// The thread, once started: files to sync go one way, results the other.
    thread: Option<SyncThread>,
    /// Syncs asked for whose results were not yet taken.
    pending: usize,
}

/// Syncs that may wait for the thread before asking for one more blocks the writer: the
/// segment being written and the closed segments the budget keeps.
const SYNCS_QUEUED: usize = SEGMENTS as usize + 1;

impl Syncer {
    /// Starts forcing `file`'s data to disk; false while a sync asked for before runs.
    fn start(&mut self, file: &File) -> io::Result<bool> {
        if self.pending > 0 {
            return Ok(false);
        }
        self.send(file.try_clone()?)?;
        Ok(true)
    }

    /// Has `file` (the segment being written, or one a rotation closed) forced to disk
    /// after the syncs asked for before it.
    fn send(&mut self, file: File) -> io::Result<()> {
        let (tx, ..) = match &mut self.thread {
            Some(thread) => thread,
            None => self.thread.insert(Self::spawn()?),
        };
        tx.send(file)
            .map_err(|_| io::Error::other("the thread that syncs the recording ended"))?;
        self.pending += 1;
        Ok(())
    }

    /// The thread: syncs each file it is sent and sends back the result.
    fn spawn() -> io::Result<SyncThread> {
        let (tx, files) = mpsc::sync_channel::<File>(SYNCS_QUEUED);
        // Room for every result, so that the thread never waits for the writer.
        let (results, rx) = mpsc::sync_channel(SYNCS_QUEUED + 1);
        let handle = thread::Builder::new()
            .name("tracer-sync".into())
            .spawn(move || {
                for file in files {
                    if results.send(file.sync_data()).is_err() {
                        break;
                    }
                }
            })?;
        Ok((tx, rx, handle))
    }

    /// The result of a sync that has ended, if one has.
    fn ended(&mut self) -> Option<io::Result<()>> {
        let (_, rx, _) = self.thread.as_ref().filter(|_| self.pending > 0)?;
        let result = rx.try_recv().ok()?;
        self.pending -= 1;
        Some(result)
    }

    /// Waits for the syncs asked for, and ends the thread; the first error of those.
    fn finish(&mut self) -> io::Result<()> {
        let Some((tx, rx, handle)) = self.thread.take() else {
            return Ok(());
        };
        drop(tx);
        let mut result = Ok(());
        for r in rx.iter().take(self.pending) {
            if result.is_ok() {
                result = r;
            }
        }
        self.pending = 0;
        let _ = handle.join();
        result
    }
}

/// Writing failed with `error`: notes it in the room kept, and tells the loop.
fn fail(sink: &mut Sink, error: io::Error, buf: &mut Vec<u8>, progress: &Progress) {
    note_stop(sink, &error.to_string(), buf);
    *progress
        .failure
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(error);
    progress.failed.store(true, Relaxed);
}

/// Notes in the room kept that writing stopped now, and `why`.
fn note_stop(sink: &mut Sink, why: &str, buf: &mut Vec<u8>) {
    buf.clear();
    encode(
        &Entry::Failed(FailedEntry {
            ts_ns: monotonic_ns(),
            error: why.chars().take(ERROR_CHARS).collect(),
        }),
        buf,
    );
    // Only where no room could be kept does this fail too: the report then finds no stop.
    let _ = sink.write(buf);
}

/// After a failure, or once the budget is reached: counts `entries` as left out but for
/// the stop entry, which is written with them counted; after the budget, behind a gap
/// entry that counts every entry left out since.
fn stop_only(
    sink: &mut Sink,
    entries: Vec<Entry>,
    buf: &mut Vec<u8>,
    progress: &Progress,
    budget: &mut Budget,
) {
    for entry in entries {
        match entry {
            Entry::Stop(mut stop) => {
                let dropped = progress.dropped.load(Relaxed);
                stop.unrecorded += dropped;
                buf.clear();
                let left_out = dropped + budget.gaps;
                if budget.full && left_out > 0 {
                    encode(&Entry::Gap { entries: left_out }, buf);
                }
                encode(&Entry::Stop(stop), buf);
                let _ = sink.write(buf);
            }
            // The loop counted the entries of its gaps.
            Entry::Gap { entries } => budget.gaps += entries,
            _ => {
                progress.dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Closes the current segment and starts the next with `first`, its header and
/// checkpoint; older segments give way to keep the budget. If the next cannot be started,
/// the current one goes back to `FILE`, where a report looks.
fn rotate(
    path: &Path,
    sink: &mut Sink,
    budget: &mut Budget,
    syncer: &mut Syncer,
    first: &[u8],
) -> io::Result<()> {
    shift_segments(path)?;
    budget.shifted(path, sink.len, first.len() as u64);
    match file::create_segment(path).and_then(|f| Sink::start(f, first, sink.ahead)) {
        Ok(next) => {
            let done = std::mem::replace(sink, next);
            done.trim();
            // Forced to disk on the syncing thread, not here: a sync can take a second
            // under load, and chunks were left out while the writer waited (1 run in 4
            // with an 8 MiB budget, which rotates 5 times a second at 200k transitions/s).
            // A crash before it ends may cut the closed segment's end, as it may the
            // current one's; the reader skips what is damaged.
            let closed = done.file.try_clone();
            budget.rotated(path, done, sink.len);
            syncer.send(closed?)
        }
        Err(e) => {
            let _ = fs::remove_file(path);
            let _ = fs::rename(segment_path(path, 1), path);
            Err(e)
        }
    }
}

/// A rotated segment on disk.
struct Closed {
    bytes: u64,
    /// Kept open to keep it locked ([`file`]).
    _file: File,
}

/// What the writer thread keeps of the budget: the rotated segments on disk, and whether
/// the recording still rotates or has stopped at its budget.
struct Budget {
    limit: Option<u64>,
    /// The rotated segments, newest (`FILE.1`) first.
    closed: VecDeque<Closed>,
    /// The next segment could not rotate within the budget: the current one goes on.
    no_rotation: bool,
    /// The recording reached its budget: entries are left out from here.
    full: bool,
    /// Entries of the loop's gap notes among those left out since (already counted by the
    /// loop).
    gaps: u64,
}

impl Budget {
    fn new(limit: Option<u64>) -> Self {
        Budget {
            limit,
            closed: VecDeque::new(),
            no_rotation: false,
            full: false,
            gaps: 0,
        }
    }

    /// Whether `chunk` bytes may be appended to a segment of `segment` bytes, with the room
    /// kept past them. The rotated segments give way, oldest first, once the recording has
    /// passed its budget (so by one chunk at most); when the current segment alone would,
    /// the recording is full.
    fn admits(&mut self, path: &Path, segment: u64, chunk: u64, progress: &Progress) -> bool {
        let Some(limit) = self.limit else {
            return true;
        };
        if self.full {
            return false;
        }
        let segment = segment + RESERVE as u64;
        self.make_room(path, segment, 1);
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

    /// Why the recording stopped, once full: for its note.
    fn reached(&self) -> String {
        format!(
            "--record-max-size {} reached without room to rotate",
            mib(self.limit.unwrap_or_default())
        )
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

    /// The files were shifted: the current segment, `current` bytes, is `FILE.1` now, and
    /// the rename replaced the oldest beyond `FILE.3`. The older ones give way, if needed,
    /// before the next segment's first `next` bytes (and the room kept past them) are
    /// written.
    fn shifted(&mut self, path: &Path, current: u64, next: u64) {
        self.closed.truncate(SEGMENTS as usize - 2);
        self.make_room(path, current + next + RESERVE as u64, 2);
    }

    /// The segment `done` was closed (it is `FILE.1`) and the next started, `segment`
    /// bytes: `FILE.1` gives way too if it must.
    fn rotated(&mut self, path: &Path, done: Sink, segment: u64) {
        self.closed.push_front(Closed {
            bytes: done.len,
            _file: done.file,
        });
        self.make_room(path, segment + RESERVE as u64, 1);
    }

    /// Deletes the oldest rotated segments while they and a current segment of `segment`
    /// bytes pass the budget; the newest of them is `FILE.newest`.
    fn make_room(&mut self, path: &Path, segment: u64, newest: u64) {
        let Some(limit) = self.limit else {
            return;
        };
        while !self.closed.is_empty()
            && self.closed.iter().map(|c| c.bytes).sum::<u64>() + segment > limit
        {
            // A file already gone is gone: the budget is kept either way.
            let oldest = newest + self.closed.len() as u64 - 1;
            let _ = fs::remove_file(segment_path(path, oldest));
            self.closed.pop_back();
        }
    }
}

/// Whether a segment that starts with `checkpoint` bytes can rotate within `limit`: it
/// must first hold as many bytes of new entries, beside the room kept past its end.
fn can_rotate(limit: u64, checkpoint: u64) -> bool {
    2 * checkpoint + RESERVE as u64 <= limit
}

/// A budget whose quarters hold checkpoints of `checkpoint` bytes as designed: in at most
/// half of each (beside the room kept), in whole MiB.
fn suggested_budget(checkpoint: u64) -> u64 {
    ((2 * checkpoint + RESERVE as u64) * SEGMENTS).div_ceil(1 << 20) << 20
}

/// `bytes` in MiB, as the options take them.
fn mib(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{}MiB", bytes >> 20)
    } else {
        format!("{:.1}MiB", bytes as f64 / f64::from(1 << 20))
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

#[cfg(test)]
mod encode_tests {
    use proptest::prelude::*;

    use super::*;
    use crate::output::arbitrary;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn transitions_are_written_as_serde_writes_them(t in arbitrary::transition()) {
            let entry = Entry::Transition((&t).into());
            let (mut fast, mut serde) = (Vec::new(), Vec::new());
            encode(&entry, &mut fast);
            encode_serde(&entry, &mut serde);
            prop_assert_eq!(&fast, &serde);
            prop_assert!(fast.len() <= 8 + TRANSITION_MAX);
        }
    }

    #[test]
    fn the_longest_transition_fits() {
        let t = TransitionEntry {
            ts_ns: u64::MAX,
            sk: u64::MAX,
            task: super::super::TaskEntry {
                pid: u32::MAX,
                comm: [b'x'; 16],
            },
            tid: u32::MAX,
            ends: super::super::EndsEntry {
                family: FamilyEntry::Ipv6,
                saddr: IpAddr::V6(std::net::Ipv6Addr::from(u128::MAX)),
                sport: u16::MAX,
                daddr: IpAddr::V6(std::net::Ipv6Addr::from(u128::MAX)),
                dport: u16::MAX,
                netns: u32::MAX,
            },
            old: u8::MAX,
            new: u8::MAX,
        };
        let entry = Entry::Transition(t);
        let (mut fast, mut serde) = (Vec::new(), Vec::new());
        encode(&entry, &mut fast);
        encode_serde(&entry, &mut serde);
        assert_eq!(fast, serde);
        assert_eq!(fast.len(), 8 + TRANSITION_MAX);
    }
}

#[cfg(test)]
mod sink_tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn room_is_allocated_a_mib_ahead_and_freed_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec");
        let file = File::options()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut sink = Sink::start(file, b"first", AHEAD).unwrap();
        if !sink.reserve {
            eprintln!(
                "skipped: {} does not allocate ahead (fallocate)",
                dir.path().display()
            );
            return;
        }
        let allocated = |path: &Path| fs::metadata(path).unwrap().blocks() * 512;
        assert_eq!(sink.allocated, 5 + RESERVE as u64 + AHEAD);
        assert!(allocated(&path) >= AHEAD, "{}", allocated(&path));
        // The next chunks fit the room allocated: no allocation until it is used up.
        sink.append(&[7; 1000]).unwrap();
        assert_eq!(sink.allocated, 5 + RESERVE as u64 + AHEAD);
        sink.append(&vec![7; AHEAD as usize]).unwrap();
        assert_eq!(sink.allocated, 1005 + AHEAD + RESERVE as u64 + AHEAD);
        assert_eq!(fs::metadata(&path).unwrap().len(), 1005 + AHEAD);
        sink.trim();
        assert!(
            allocated(&path) < 1005 + AHEAD + 64 * 1024,
            "{}",
            allocated(&path)
        );
    }
}

#[cfg(test)]
mod sync_tests {
    use super::*;

    #[test]
    fn one_sync_at_a_time_and_its_result_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("rec")).unwrap();
        let mut syncer = Syncer::default();
        assert!(syncer.ended().is_none(), "nothing started");
        assert!(syncer.start(&file).unwrap());
        assert!(
            !syncer.start(&file).unwrap(),
            "a second while the first runs"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let result = loop {
            if let Some(r) = syncer.ended() {
                break r;
            }
            assert!(Instant::now() < deadline, "the sync never ended");
            thread::sleep(Duration::from_millis(1));
        };
        result.unwrap();
        assert!(syncer.start(&file).unwrap(), "the next once it ended");
        syncer.finish().unwrap();
        assert!(syncer.thread.is_none() && syncer.pending == 0);
    }

    #[test]
    fn closed_segments_are_synced_behind_the_running_sync() {
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str| File::create(dir.path().join(name)).unwrap();
        let mut syncer = Syncer::default();
        assert!(syncer.start(&open("rec")).unwrap());
        // As many as the budget keeps, without waiting for the one running.
        for n in 1..=SEGMENTS {
            syncer.send(open(&format!("rec.{n}"))).unwrap();
        }
        assert_eq!(syncer.pending, SYNCS_QUEUED);
        assert!(
            !syncer.start(&open("rec")).unwrap(),
            "none more while they run"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut results = 0;
        while syncer.pending > 0 {
            if let Some(r) = syncer.ended() {
                r.unwrap();
                results += 1;
            }
            assert!(Instant::now() < deadline, "the syncs never ended");
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(results, SYNCS_QUEUED);
        syncer.finish().unwrap();
    }

    #[test]
    fn finish_waits_for_every_sync_and_returns_the_first_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut syncer = Syncer::default();
        assert!(syncer
            .start(&File::create(dir.path().join("rec")).unwrap())
            .unwrap());
        // A pipe cannot be synced: fdatasync fails with EINVAL.
        let (read, _write) = std::io::pipe().unwrap();
        syncer
            .send(File::from(std::os::fd::OwnedFd::from(read)))
            .unwrap();
        let e = syncer.finish().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
        assert_eq!(syncer.pending, 0);
    }

    #[test]
    fn a_failed_sync_is_returned() {
        // A pipe cannot be synced: fdatasync fails with EINVAL.
        let (read, _write) = std::io::pipe().unwrap();
        let file = File::from(std::os::fd::OwnedFd::from(read));
        let mut syncer = Syncer::default();
        assert!(syncer.start(&file).unwrap());
        let e = syncer.finish().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
    }
}
