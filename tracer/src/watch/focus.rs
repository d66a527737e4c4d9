//! `--pid P` with `--events`: the transitions of the sockets P holds or acts on.
//!
//! The pid current at a transition names P only for what P does in a system call
//! (connect, listen, close), and only those transitions are taken as P's. Arrivals (a peer's FIN that moves P's socket into CLOSE_WAIT,
//! the handshake of a connection to P's listener) run in softirq, in whatever task was
//! current. So P's sockets are learnt and then followed whoever runs their transitions:
//! sockets P made a transition on, connections accepted on P's listeners, the sockets P
//! held at start, and the stuck ones found in P's hands.

use foldhash::HashSet;

use tracer_common::TcpState;

use crate::{
    aggregate::runs_in_caller,
    decode::Transition,
    model::{Endpoints, Family, State},
};

/// The sockets one process holds or acts on.
#[derive(Debug)]
pub(super) struct Focus {
    pid: u32,
    /// Kernel addresses of its sockets.
    sockets: HashSet<u64>,
    /// Its sockets from the start-up snapshot, which have no address until their next
    /// transition.
    existing: HashSet<Endpoints>,
    /// Where its listeners listen: connections accepted there are its own.
    listeners: HashSet<(u32, Family, u16)>,
}

impl Focus {
    /// Follows process `pid`, which held `existing` sockets at start.
    pub(super) fn new(pid: u32, existing: impl IntoIterator<Item = (Endpoints, State)>) -> Self {
        let mut focus = Focus {
            pid,
            sockets: HashSet::default(),
            existing: HashSet::default(),
            listeners: HashSet::default(),
        };
        for (ends, state) in existing {
            if state == TcpState::Listen.into() {
                focus.listeners.insert(listener(&ends));
            }
            focus.existing.insert(ends);
        }
        focus
    }

    /// Whether `t` is about one of the process's sockets; learns from it.
    pub(super) fn admits(&mut self, t: &Transition) -> bool {
        let ends = t.ends();
        let mine = (t.pid == self.pid && runs_in_caller(t.old, t.new))
            || self.sockets.contains(&t.sk)
            || self.existing.remove(&ends)
            // A connection born on one of its listeners (LISTEN -> SYN_RECV).
            || (t.new == TcpState::SynRecv.into() && self.listeners.contains(&listener(&ends)));
        if !mine {
            return false;
        }
        if t.new == TcpState::Close.into() {
            self.sockets.remove(&t.sk);
            if t.old == TcpState::Listen.into() {
                self.listeners.remove(&listener(&ends));
            }
        } else {
            self.sockets.insert(t.sk);
            if t.new == TcpState::Listen.into() {
                self.listeners.insert(listener(&ends));
            }
        }
        true
    }

    /// A socket at `sk` (`None`: from the snapshot, at `ends`) was found in the process's
    /// hands when it was flagged.
    pub(super) fn holds(&mut self, sk: Option<u64>, ends: Endpoints) {
        match sk {
            Some(sk) => self.sockets.insert(sk),
            None => self.existing.insert(ends),
        };
    }
}

/// Where a listener listens: namespace, family and port (the address may be a wildcard).
fn listener(ends: &Endpoints) -> (u32, Family, u16) {
    (ends.netns, ends.family, ends.sport)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::tests::t;
    use TcpState::*;

    #[test]
    fn follows_what_the_process_does_and_what_arrives_on_its_sockets() {
        let mut f = Focus::new(7, []);
        // t() makes transitions in the context of pid 7 on port 61616.
        let mut listen = t(1, 0x100, Close, Listen);
        assert!(f.admits(&listen));
        // A connection to its listener, in softirq (pid 0).
        let mut born = t(2, 0x200, Listen, SynRecv);
        born.pid = 0;
        assert!(f.admits(&born));
        let mut fin = t(3, 0x200, Established, CloseWait);
        fin.pid = 999;
        assert!(
            f.admits(&fin),
            "the FIN that makes the leak arrives in softirq"
        );
        // Someone else's socket.
        let mut other = t(4, 0x300, Established, CloseWait);
        other.pid = 999;
        other.sport = 8080;
        assert!(!f.admits(&other));
        // A peer's socket moved by a segment the process sent: softirq in its context.
        other.pid = 7;
        assert!(!f.admits(&other));
        // Closed: forgotten, and its address can be someone else's next.
        let mut closed = t(5, 0x200, LastAck, Close);
        closed.pid = 0;
        assert!(f.admits(&closed));
        let mut reused = t(6, 0x200, Established, CloseWait);
        reused.pid = 999;
        reused.sport = 8080;
        assert!(!f.admits(&reused));
        // After the listener closes, new connections on its port are not the process's.
        listen.old = Listen.into();
        listen.new = Close.into();
        assert!(f.admits(&listen));
        born.sk = 0x400;
        assert!(!f.admits(&born));
    }

    #[test]
    fn knows_the_sockets_it_held_at_start() {
        let old = t(1, 0x500, Established, CloseWait);
        let mut f = Focus::new(7, [(old.ends(), State::from(Established))]);
        let mut fin = old.clone();
        fin.pid = 0;
        assert!(f.admits(&fin));
        let mut close = t(2, 0x500, CloseWait, LastAck);
        close.pid = 0;
        assert!(f.admits(&close), "followed by address from then on");
    }
}
