//! Writes a stream (stdout) from a thread of its own, so that a reader that stops reading
//! never blocks the watch loop: signals, `--duration` and the recording go on. Writes only
//! queue bytes; the loop stops reading the probe while [`Queued::backlog`] is large and
//! resumes on [`Queued::room`], so memory stays bounded and a slow reader costs what a
//! blocked one did before (events the kernel drops, counted as lost).

use std::{
    collections::VecDeque,
    future::Future,
    io::{self, Write},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed},
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
    },
    thread,
    time::{Duration, Instant},
};

use tokio::sync::Notify;

/// Bytes gathered before they are handed to the thread; a flush hands them over sooner.
const CHUNK: usize = 64 << 10;
/// A hand-over smaller than this joins the last chunk waiting, if that has room, rather
/// than waiting as a chunk of its own: a run of small flushes takes a few chunks' memory.
const SMALL: usize = CHUNK / 8;
/// Emptied chunks kept for reuse: enough for what the thread writes in one go under load.
const SPARES: usize = 8;
/// How long dropping a queue waits for its bytes to be written.
const DROP_GRACE: Duration = Duration::from_millis(500);

/// Why a queue's bytes did not all reach the stream.
#[derive(Debug, thiserror::Error)]
pub enum CloseError {
    #[error("the last {bytes} bytes of output were not written")]
    Stalled { bytes: usize },
    #[error(transparent)]
    Failed(io::Error),
}

/// A stream written by a thread: writing and flushing queue bytes and never wait.
pub struct Queued {
    /// Written since the last hand-over.
    buf: Vec<u8>,
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the thread when there is something to write or nothing more, and whoever
    /// waits for the thread to end.
    wake: Condvar,
    /// Wakes the loop when the thread has written something, or failed.
    room: Notify,
    /// Bytes handed over and not yet written.
    queued: AtomicUsize,
    /// A write failed: nothing more is written.
    failed: AtomicBool,
}

#[derive(Default)]
struct State {
    /// Chunks handed over, in order, not yet taken by the thread. They move whole: under
    /// load, copying each into one buffer cost as much as formatting the events did.
    pending: VecDeque<Vec<u8>>,
    /// Chunks the thread has written and emptied, for the next ones: without them every
    /// chunk would grow from nothing, copied at each doubling.
    spare: Vec<Vec<u8>>,
    /// Nothing more will be handed over.
    closed: bool,
    /// The thread has ended.
    done: bool,
    /// What the failed write returned.
    error: Option<io::Error>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The error of the failed write, again.
    fn error(&self) -> io::Error {
        match &self.lock().error {
            Some(e) => match e.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(e.kind(), e.to_string()),
            },
            None => io::ErrorKind::Other.into(),
        }
    }
}

impl Queued {
    /// Starts the thread that writes to `out`.
    pub fn spawn(out: impl Write + Send + 'static) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            room: Notify::new(),
            queued: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
        });
        let theirs = Arc::clone(&shared);
        thread::Builder::new()
            .name("tracer-stdout".into())
            .spawn(move || write_loop(out, &theirs))?;
        Ok(Queued {
            buf: Vec::with_capacity(CHUNK),
            shared,
        })
    }

    /// Bytes written to the queue and not yet to the stream; none once the stream has
    /// failed, since they never will be (the next write says why).
    pub fn backlog(&self) -> usize {
        if self.shared.failed.load(Relaxed) {
            return 0;
        }
        self.buf.len() + self.shared.queued.load(Relaxed)
    }

    /// Resolves once the thread has written something since (or failed): the backlog
    /// may have shrunk.
    pub fn room(&self) -> impl Future<Output = ()> + '_ {
        self.shared.room.notified()
    }

    /// Hands everything over and waits, until `deadline` at most, for the thread to have
    /// written it; more may be written after.
    pub fn drain(&mut self, deadline: Instant) -> Result<(), CloseError> {
        self.hand_over().map_err(CloseError::Failed)?;
        let queued = &self.shared.queued;
        self.wait(deadline, |state| state.done || queued.load(Relaxed) == 0)
    }

    /// Hands everything over and waits, until `deadline` at most, for the thread to write
    /// it. Bytes it could not write by then stay with the thread, which the process's
    /// exit ends.
    pub fn close(&mut self, deadline: Instant) -> Result<(), CloseError> {
        self.hand_over().map_err(CloseError::Failed)?;
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
        self.wait(deadline, |state| state.done)
    }

    /// Waits until `done` holds of the thread's state, or `deadline`; then says whether
    /// everything handed over was written.
    fn wait(&self, deadline: Instant, done: impl Fn(&State) -> bool) -> Result<(), CloseError> {
        let mut state = self.shared.lock();
        while !done(&state) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(CloseError::Stalled {
                    bytes: self.shared.queued.load(Relaxed),
                });
            }
            state = self
                .shared
                .wake
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        drop(state);
        match self.shared.failed.load(Relaxed) {
            true => Err(CloseError::Failed(self.shared.error())),
            false => Ok(()),
        }
    }

    fn hand_over(&mut self) -> io::Result<()> {
        if self.shared.failed.load(Relaxed) {
            return Err(self.shared.error());
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut state = self.shared.lock();
        self.shared.queued.fetch_add(self.buf.len(), Relaxed);
        let len = self.buf.len();
        match state.pending.back_mut() {
            Some(last) if len < SMALL && last.capacity() - last.len() >= len => {
                last.extend_from_slice(&self.buf);
                self.buf.clear();
            }
            _ => {
                let next = state.spare.pop().unwrap_or_default();
                state
                    .pending
                    .push_back(std::mem::replace(&mut self.buf, next));
            }
        }
        self.shared.wake.notify_all();
        Ok(())
    }
}

impl Write for Queued {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.shared.failed.load(Relaxed) {
            return Err(self.shared.error());
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.hand_over()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.hand_over()
    }
}

impl Drop for Queued {
    /// A run that ends early still gets its output out, if it can; one closed already has
    /// waited its time.
    fn drop(&mut self) {
        if !self.shared.lock().closed {
            let _ = self.close(Instant::now() + DROP_GRACE);
        }
    }
}

/// The thread: writes what is handed over, in order, until closed or a write fails.
fn write_loop(mut out: impl Write, shared: &Shared) {
    let mut chunks = VecDeque::new();
    let mut state = shared.lock();
    loop {
        while state.pending.is_empty() && !state.closed {
            state = shared
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if state.pending.is_empty() {
            break;
        }
        std::mem::swap(&mut chunks, &mut state.pending);
        drop(state);
        let written = chunks
            .iter()
            .try_for_each(|chunk| out.write_all(chunk))
            .and_then(|()| out.flush());
        // What a failed write left is never written: it is not waiting any more either.
        let handed: usize = chunks.iter().map(Vec::len).sum();
        shared.queued.fetch_sub(handed, Relaxed);
        state = shared.lock();
        for mut chunk in chunks.drain(..) {
            if state.spare.len() < SPARES {
                chunk.clear();
                state.spare.push(chunk);
            }
        }
        if let Err(e) = written {
            state.error = Some(e);
            shared.failed.store(true, Relaxed);
            break;
        }
        shared.room.notify_one();
        shared.wake.notify_all();
    }
    state.done = true;
    shared.wake.notify_all();
    shared.room.notify_one();
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// A stream that blocks every write until told to go on, and keeps what it got.
    struct Gate {
        go: mpsc::Receiver<()>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.go
                .recv()
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
            self.got.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn gated() -> (Queued, mpsc::Sender<()>, Arc<Mutex<Vec<u8>>>) {
        let (go, rx) = mpsc::channel();
        let got = Arc::new(Mutex::new(Vec::new()));
        let q = Queued::spawn(Gate {
            go: rx,
            got: Arc::clone(&got),
        })
        .unwrap();
        (q, go, got)
    }

    #[test]
    fn writes_never_wait_for_a_stalled_stream_and_the_backlog_says_how_much_waits() {
        let (mut q, go, got) = gated();
        let started = Instant::now();
        for _ in 0..1000 {
            q.write_all(&[b'x'; 1000]).unwrap();
            q.flush().unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(q.backlog(), 1_000_000);
        let started = Instant::now();
        let err = q
            .close(Instant::now() + Duration::from_millis(100))
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            matches!(err, CloseError::Stalled { bytes: 1_000_000 }),
            "{err}"
        );
        // Once the stream goes on, everything arrives, in order.
        drop(go);
        let (mut q, go, got2) = gated();
        q.write_all(b"one\n").unwrap();
        q.flush().unwrap();
        q.write_all(b"two\n").unwrap();
        for _ in 0..2 {
            go.send(()).unwrap();
        }
        q.close(Instant::now() + Duration::from_secs(10)).unwrap();
        assert_eq!(*got2.lock().unwrap(), b"one\ntwo\n");
        assert_eq!(q.backlog(), 0);
        assert!(got.lock().unwrap().is_empty());
    }

    #[test]
    fn chunks_small_and_large_arrive_whole_and_in_order() {
        // The stream is stalled while everything is written, so chunks pile up waiting.
        let (mut q, go, got) = gated();
        let mut sent = Vec::new();
        // Sizes around SMALL and CHUNK, flushed or not.
        for i in 0..400usize {
            let len = [1, SMALL - 1, SMALL, CHUNK - 1, CHUNK + 1, 3 * CHUNK][i % 6] + i;
            let data: Vec<u8> = (0..len).map(|j| (i * 7 + j) as u8).collect();
            q.write_all(&data).unwrap();
            sent.extend_from_slice(&data);
            if i % 3 != 0 {
                q.flush().unwrap();
            }
        }
        assert!(
            q.shared.lock().pending.len() > 100,
            "chunks did not pile up"
        );
        // One go per write the stream is asked for: one per chunk at most.
        for _ in 0..1000 {
            go.send(()).unwrap();
        }
        q.close(Instant::now() + Duration::from_secs(30)).unwrap();
        assert!(*got.lock().unwrap() == sent, "the stream got other bytes");
        assert_eq!(q.backlog(), 0);
        assert!(q.shared.lock().spare.len() <= SPARES);
    }

    #[test]
    fn drain_waits_for_the_stream_and_leaves_it_open() {
        let (mut q, go, got) = gated();
        q.write_all(b"one\n").unwrap();
        let err = q
            .drain(Instant::now() + Duration::from_millis(50))
            .unwrap_err();
        assert!(matches!(err, CloseError::Stalled { bytes: 4 }), "{err}");
        go.send(()).unwrap();
        q.drain(Instant::now() + Duration::from_secs(10)).unwrap();
        assert_eq!(*got.lock().unwrap(), b"one\n");
        q.write_all(b"two\n").unwrap();
        go.send(()).unwrap();
        q.close(Instant::now() + Duration::from_secs(10)).unwrap();
        assert_eq!(*got.lock().unwrap(), b"one\ntwo\n");
    }

    #[test]
    fn room_wakes_the_loop_once_bytes_are_written() {
        let (mut q, go, _got) = gated();
        q.write_all(b"line\n").unwrap();
        q.flush().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let waited =
            rt.block_on(async { tokio::time::timeout(Duration::from_millis(50), q.room()).await });
        assert!(waited.is_err(), "no room while the stream is stalled");
        go.send(()).unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), q.room())
                .await
                .expect("room once written")
        });
        assert_eq!(q.backlog(), 0);
    }

    #[test]
    fn a_failed_write_is_returned_to_the_writer() {
        let (mut q, go, _got) = gated();
        q.write_all(b"one\n").unwrap();
        q.flush().unwrap();
        // Once the thread is writing it, more waits behind it, and is never written.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !q.shared.lock().pending.is_empty() {
            assert!(Instant::now() < deadline, "the thread never took the bytes");
            thread::yield_now();
        }
        q.write_all(b"two\n").unwrap();
        q.flush().unwrap();
        drop(go);
        let err = q
            .close(Instant::now() + Duration::from_secs(10))
            .unwrap_err();
        assert!(
            matches!(&err, CloseError::Failed(e) if e.kind() == io::ErrorKind::BrokenPipe),
            "{err}"
        );
        assert_eq!(q.backlog(), 0, "nothing waits for a stream that failed");
        assert_eq!(
            q.write_all(b"more\n").unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
    }
}
