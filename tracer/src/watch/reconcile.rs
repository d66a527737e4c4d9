//! Healing after lost transitions: the table is set right against the kernel's own list of
//! sockets (the start-up snapshot's sock_diag listing, in every namespace), so that
//! phantoms of sockets whose close was lost leave, and leaks whose transitions were lost
//! (or that a full table evicted) are found again.
//!
//! The listing runs on a thread of its own: on a busy host it takes a while, and the
//! event loop must keep draining the ring meanwhile. Transitions that arrive while it runs
//! are newer than the list, so the sockets they touch are left as the table has them.

use std::{
    sync::mpsc::{self, Receiver, TryRecvError},
    thread,
    time::{Duration, Instant},
};

use foldhash::HashSet;

use crate::{
    attribute::{Attributor, Host, Namespaces},
    model::{Endpoints, SnapshotSocket},
    output::monotonic_ns,
    probe::Filters,
};

/// How long after the first loss the table is checked: a burst of losses is one check.
const SETTLE: Duration = Duration::from_secs(1);

/// Why the table is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reason {
    /// Transitions were lost.
    Lost,
    /// A full table evicted sockets in watched states.
    Evicted,
}

impl Reason {
    /// The name used in the `reconciled` record.
    pub(super) const fn name(self) -> &'static str {
        match self {
            Reason::Lost => "lost",
            Reason::Evicted => "evicted",
        }
    }
}

/// A finished listing: the kernel's sockets, and how long listing them took.
pub(super) struct Listing {
    pub(super) sockets: Vec<SnapshotSocket>,
    pub(super) took: Duration,
    pub(super) reason: Reason,
    /// Endpoints of the sockets transitions touched while it ran.
    pub(super) touched: HashSet<Endpoints>,
}

/// Schedules and runs the listings.
pub(super) struct Reconciler {
    filters: Filters,
    namespaces: Namespaces,
    /// A check asked for, not started yet: why, and from when it may start.
    due: Option<(Reason, Instant)>,
    running: Option<Running>,
}

struct Running {
    reason: Reason,
    started: Instant,
    result: Receiver<Vec<SnapshotSocket>>,
    touched: HashSet<Endpoints>,
}

impl Reconciler {
    /// Lists sockets as the start-up snapshot did: in `namespaces`, kept by `filters`.
    pub(super) fn new(filters: Filters, namespaces: Namespaces) -> Self {
        Self {
            filters,
            namespaces,
            due: None,
            running: None,
        }
    }

    /// Asks for a check soon; one already asked for or running covers this one.
    pub(super) fn ask(&mut self, reason: Reason) {
        if self.due.is_none() {
            self.due = Some((reason, Instant::now() + SETTLE));
        }
    }

    /// Notes a transition of the socket at `ends` while a listing runs.
    pub(super) fn touched(&mut self, ends: Endpoints) {
        if let Some(r) = &mut self.running {
            r.touched.insert(ends);
        }
    }

    /// Starts a due listing (none runs at a time), or returns a finished one.
    pub(super) fn poll(&mut self) -> Option<Listing> {
        if let Some(r) = &self.running {
            return match r.result.try_recv() {
                Ok(sockets) => {
                    let r = self.running.take().expect("running");
                    Some(Listing {
                        sockets,
                        took: r.started.elapsed(),
                        reason: r.reason,
                        touched: r.touched,
                    })
                }
                Err(TryRecvError::Empty) => None,
                // The thread died (it cannot panic short of a bug): try again later.
                Err(TryRecvError::Disconnected) => {
                    let r = self.running.take().expect("running");
                    self.ask(r.reason);
                    None
                }
            };
        }
        let (reason, at) = self.due?;
        if Instant::now() < at {
            return None;
        }
        self.due = None;
        let (tx, result) = mpsc::channel();
        let (filters, namespaces) = (self.filters.clone(), self.namespaces);
        let spawned = thread::Builder::new()
            .name("reconcile".into())
            .spawn(move || {
                let found = Attributor::new(Host::default(), namespaces).snapshot(monotonic_ns());
                let mut sockets = found.sockets;
                sockets.retain(|s| filters.admits_socket(&s.ends, s.state));
                let _ = tx.send(sockets);
            });
        if spawned.is_ok() {
            self.running = Some(Running {
                reason,
                started: Instant::now(),
                result,
                touched: HashSet::default(),
            });
        }
        None
    }
}
