//! Attribution off the event loop: a thread of its own owns the [`Attributor`], takes
//! batches of sockets to look up, and hands their owners back in the order asked, waking
//! the loop through a [`Notify`]. The loop never waits on sock_diag or `/proc`: a slow
//! lookup delays the flags it was asked about, never the reading of the ring buffer.
//!
//! Nothing here may print: the loop's output holds stderr locked for the whole run, and
//! the loop may be waiting for this thread (at the end of the run).

use std::{
    io,
    sync::{
        mpsc::{self, TryRecvError},
        Arc,
    },
    thread,
};

use tokio::sync::Notify;

use super::{Attribution, Attributor, System};
use crate::model::{Endpoints, State};

/// Sockets to look up: endpoints and state, as [`Attributor::owners`] takes them.
type Query = Vec<(Endpoints, State)>;

/// The lookup thread has ended (it panicked): no more answers will come.
#[derive(Debug, thiserror::Error)]
#[error("the owner lookup thread has stopped")]
pub struct Stopped;

/// The handle the event loop keeps on the lookup thread.
#[derive(Debug)]
pub struct Worker {
    queries: mpsc::Sender<Query>,
    answers: mpsc::Receiver<Attribution>,
    ready: Arc<Notify>,
}

/// Wakes the loop when the thread ends, however: a loop waiting for an answer then learns
/// that none will come.
struct WakeOnExit(Arc<Notify>);

impl Drop for WakeOnExit {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

impl Worker {
    /// Starts the thread, which owns `attributor` from now on and warms it up before the
    /// first lookup. It ends once this handle is dropped and its current lookup is done.
    pub fn spawn<S: System + Send + 'static>(mut attributor: Attributor<S>) -> io::Result<Self> {
        let (queries, asked) = mpsc::channel::<Query>();
        let (answer, answers) = mpsc::channel();
        let ready = Arc::new(Notify::new());
        let wake = WakeOnExit(Arc::clone(&ready));
        thread::Builder::new()
            .name("tracer-owners".into())
            .spawn(move || {
                attributor.warm_up();
                for query in asked {
                    if answer.send(attributor.owners(&query)).is_err() {
                        break;
                    }
                    wake.0.notify_one();
                }
            })?;
        Ok(Self {
            queries,
            answers,
            ready,
        })
    }

    /// Asks for the owners of `sockets`; answers come back in the order asked.
    pub fn ask(&self, sockets: Query) -> Result<(), Stopped> {
        self.queries.send(sockets).map_err(|_| Stopped)
    }

    /// Notified after each answer (and when the thread ends): await
    /// [`Notify::notified`] on it, then take what is there with [`Worker::try_answer`].
    pub fn ready(&self) -> Arc<Notify> {
        Arc::clone(&self.ready)
    }

    /// The next answer, if one is there.
    pub fn try_answer(&self) -> Result<Option<Attribution>, Stopped> {
        match self.answers.try_recv() {
            Ok(a) => Ok(Some(a)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(Stopped),
        }
    }

    /// The next answer, waiting for it: for the end of a run.
    pub fn answer(&self) -> Result<Attribution, Stopped> {
        self.answers.recv().map_err(|_| Stopped)
    }
}
