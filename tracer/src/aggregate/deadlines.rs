//! The deadline queues that tell when a socket has stayed in a watched state for its
//! threshold (what is done then is decided in [`crate::stuck`]).
//!
//! A socket that enters a watched state is queued with the time it entered. Times arrive in
//! (nearly) increasing order and a state's threshold is fixed, so each state's queue is
//! kept ordered by deadline at almost no cost: the timer only ever looks at the fronts. Entries of sockets
//! that have since moved on are skipped when they reach the front, and dropped in bulk when
//! they outnumber the live ones, so a busy box churning through CLOSE_WAIT in microseconds
//! costs one push per transition and bounded memory.

use std::collections::VecDeque;

use crate::model::{SocketKey, State, Thresholds};

/// One queue per watched state of `(entered_ns, socket)`, oldest first.
#[derive(Debug)]
pub(super) struct Deadlines {
    queues: Vec<Queue>,
}

#[derive(Debug)]
struct Queue {
    state: State,
    threshold_ns: u64,
    entries: VecDeque<(u64, SocketKey)>,
}

impl Deadlines {
    pub(super) fn new(thresholds: &Thresholds) -> Self {
        let queues = thresholds
            .iter()
            .map(|(state, d)| Queue {
                state: state.into(),
                threshold_ns: d.as_nanos().min(u64::MAX as u128) as u64,
                entries: VecDeque::new(),
            })
            .collect();
        Self { queues }
    }

    /// Queues `key`, which entered watched `state` at `since_ns`; a state that is not
    /// watched is ignored.
    pub(super) fn push(&mut self, state: State, since_ns: u64, key: SocketKey) {
        if let Some(q) = self.queues.iter_mut().find(|q| q.state == state) {
            // Events from different CPUs, and snapshot sockets, can come slightly out of
            // order; keep the queue sorted (the insert point is nearly always the back).
            match q.entries.back() {
                Some(&(last, _)) if last > since_ns => {
                    let at = q.entries.partition_point(|&(s, _)| s <= since_ns);
                    q.entries.insert(at, (since_ns, key));
                }
                _ => q.entries.push_back((since_ns, key)),
            }
        }
    }

    /// The earliest deadline queued, in monotonic ns.
    pub(super) fn next(&self) -> Option<u64> {
        self.queues
            .iter()
            .filter_map(|q| {
                let &(since, _) = q.entries.front()?;
                Some(since.saturating_add(q.threshold_ns))
            })
            .min()
    }

    /// Pops every entry whose deadline is at or before `now_ns`, as `(state, entered_ns,
    /// socket)`; the caller checks that the socket is still in that stay.
    pub(super) fn pop_due(&mut self, now_ns: u64, mut f: impl FnMut(State, u64, SocketKey)) {
        for q in &mut self.queues {
            while let Some(&(since, key)) = q.entries.front() {
                if since.saturating_add(q.threshold_ns) > now_ns {
                    break;
                }
                q.entries.pop_front();
                f(q.state, since, key);
            }
        }
    }

    /// Drops stale entries of `state` once they outnumber the `live` sockets in it.
    pub(super) fn compact(
        &mut self,
        state: State,
        live: usize,
        mut still_there: impl FnMut(u64, SocketKey) -> bool,
    ) {
        if let Some(q) = self.queues.iter_mut().find(|q| q.state == state) {
            if q.entries.len() > 2 * live + 1024 {
                q.entries.retain(|&(since, key)| still_there(since, key));
            }
        }
    }

    /// Entries queued in all states (live and stale).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.queues.iter().map(|q| q.entries.len()).sum()
    }
}
