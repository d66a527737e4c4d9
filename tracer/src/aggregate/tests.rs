use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;
use crate::model::{Comm, Family};
use TcpState::*;

const SEC: u64 = 1_000_000_000;

fn close_wait_after(secs: u64) -> Thresholds {
    Thresholds::new(&[(CloseWait, Duration::from_secs(secs))])
}

fn ends(sport: u16, dport: u16) -> Endpoints {
    Endpoints {
        netns: 0,
        family: Family::Ipv4,
        saddr: Ipv4Addr::LOCALHOST.into(),
        sport,
        daddr: Ipv4Addr::LOCALHOST.into(),
        dport,
    }
}

/// A transition of socket `sk` between 127.0.0.1:61616 and a peer port of its own.
pub(crate) fn t(ts_ns: u64, sk: u64, old: TcpState, new: TcpState) -> Transition {
    Transition {
        ts_ns,
        sk,
        pid: 7,
        tid: 7,
        comm: Comm::from("curl"),
        netns: 0,
        family: Family::Ipv4,
        saddr: Ipv4Addr::LOCALHOST.into(),
        sport: 61616,
        daddr: Ipv4Addr::LOCALHOST.into(),
        dport: 40000 + (sk % 1000) as u16,
        old: old.into(),
        new: new.into(),
    }
}

/// An accepted socket's life up to CLOSE_WAIT, entered at `at`.
fn accept_then_peer_closes(table: &mut Table, sk: u64, at: u64) {
    assert_eq!(table.apply(&t(at - 2, sk, Listen, SynRecv)), None);
    assert_eq!(table.apply(&t(at - 1, sk, SynRecv, Established)), None);
    assert_eq!(table.apply(&t(at, sk, Established, CloseWait)), None);
}

#[test]
fn flags_at_the_threshold_not_before_and_once() {
    let mut table = Table::new(close_wait_after(30), 1000);
    accept_then_peer_closes(&mut table, 0xa, 10 * SEC);
    assert_eq!(table.next_deadline(), Some(40 * SEC));
    assert!(table.due(40 * SEC - 1).is_empty());
    let stuck = table.due(40 * SEC);
    assert_eq!(stuck.len(), 1);
    let s = stuck[0];
    assert_eq!(s.key, SocketKey::Sk(0xa));
    assert_eq!(s.socket.state, CloseWait.into());
    assert_eq!(s.socket.since_ns, 10 * SEC);
    assert!(!s.socket.since_is_lower_bound);
    assert_eq!(s.socket.origin, Origin::Accepted);
    assert_eq!(s.socket.hint, None, "the softirq task is not the owner");
    assert!(table.due(100 * SEC).is_empty(), "flagged once");
    assert_eq!(table.next_deadline(), None);
    assert_eq!(table.stuck().count(), 1);
}

#[test]
fn resolves_with_the_time_stuck_and_forgets_closed_sockets() {
    let mut table = Table::new(close_wait_after(30), 1000);
    accept_then_peer_closes(&mut table, 0xa, 10 * SEC);
    table.due(50 * SEC);
    let mut close = t(75 * SEC, 0xa, CloseWait, LastAck);
    close.pid = 4242;
    close.comm = Comm::from("java");
    let r = table
        .apply(&close)
        .expect("a flagged socket that leaves resolves");
    assert_eq!(r.stuck_for(), Duration::from_secs(65));
    assert_eq!(r.new, LastAck.into());
    assert_eq!(r.socket.state, CloseWait.into());
    let now = table.get(SocketKey::Sk(0xa)).unwrap();
    assert_eq!(now.state, LastAck.into());
    assert!(!now.flagged);
    assert_eq!(
        now.hint.map(|h| (h.pid, h.comm.to_string())),
        Some((4242, "java".to_owned())),
        "close() runs in the owner"
    );
    assert_eq!(table.apply(&t(76 * SEC, 0xa, LastAck, Close)), None);
    assert_eq!(table.get(SocketKey::Sk(0xa)), None);
    assert_eq!(table.stats().tracked, 0);
    assert_eq!(table.stuck().count(), 0);
}

#[test]
fn a_socket_that_leaves_in_time_is_never_flagged() {
    let mut table = Table::new(close_wait_after(30), 1000);
    accept_then_peer_closes(&mut table, 0xa, 10 * SEC);
    assert_eq!(table.apply(&t(39 * SEC, 0xa, CloseWait, LastAck)), None);
    assert!(table.due(41 * SEC).is_empty());
    // Re-entering the state starts a new stay, with a deadline of its own.
    table.apply(&t(50 * SEC, 0xa, LastAck, CloseWait));
    assert!(table.due(79 * SEC).is_empty());
    assert_eq!(table.due(80 * SEC).len(), 1);
}

#[test]
fn several_watched_states_have_their_own_thresholds() {
    let mut table = Table::new(
        Thresholds::new(&[
            (CloseWait, Duration::from_secs(30)),
            (FinWait2, Duration::from_secs(5)),
        ]),
        1000,
    );
    accept_then_peer_closes(&mut table, 0xa, 10 * SEC);
    table.apply(&t(10 * SEC, 0xb, Close, SynSent));
    table.apply(&t(11 * SEC, 0xb, SynSent, Established));
    table.apply(&t(12 * SEC, 0xb, Established, FinWait1));
    table.apply(&t(12 * SEC, 0xb, FinWait1, FinWait2));
    assert_eq!(table.next_deadline(), Some(17 * SEC));
    let first = table.due(20 * SEC);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].socket.state, FinWait2.into());
    assert_eq!(first[0].socket.origin, Origin::Connected);
    assert_eq!(first[0].socket.hint.map(|h| h.pid), Some(7));
    assert_eq!(table.due(40 * SEC)[0].key, SocketKey::Sk(0xa));
}

#[test]
fn snapshot_sockets_age_from_a_lower_bound_and_take_their_address_later() {
    let mut table = Table::new(close_wait_after(30), 1000);
    table.seed(vec![
        SnapshotSocket {
            cookie: 9,
            inode: 0,
            ends: ends(61616, 40009),
            state: CloseWait.into(),
            since_ns: 5 * SEC,
            origin: Origin::Accepted,
        },
        SnapshotSocket {
            cookie: 10,
            inode: 0,
            ends: ends(61616, 0),
            state: Listen.into(),
            since_ns: 20 * SEC,
            origin: Origin::Listener,
        },
    ]);
    assert_eq!(table.stats().tracked, 2);
    let stuck = table.due(35 * SEC);
    assert_eq!(stuck.len(), 1);
    assert_eq!(stuck[0].key, SocketKey::Snapshot(9));
    assert!(stuck[0].socket.since_is_lower_bound);
    let id = stuck[0].socket.id;

    // The same endpoints under a kernel address: the snapshot socket, now named.
    let mut named = t(60 * SEC, 0xffff_0009, CloseWait, LastAck);
    named.dport = 40009;
    let r = table.apply(&named).expect("resolves");
    assert_eq!(r.key, SocketKey::Sk(0xffff_0009));
    assert_eq!(r.socket.id, id, "the id survives re-keying");
    assert_eq!(r.stuck_for(), Duration::from_secs(55));
    assert!(r.socket.since_is_lower_bound);
    assert_eq!(table.get(SocketKey::Snapshot(9)), None);
    assert_eq!(table.stats().tracked, 2);
}

#[test]
fn a_transition_racing_the_snapshot_gives_the_exact_entry_time() {
    let mut table = Table::new(close_wait_after(30), 1000);
    table.seed(vec![SnapshotSocket {
        cookie: 9,
        inode: 0,
        ends: ends(61616, 40009),
        state: CloseWait.into(),
        since_ns: 5 * SEC,
        origin: Origin::Accepted,
    }]);
    let mut raced = t(4 * SEC, 0xffff_0009, Established, CloseWait);
    raced.dport = 40009;
    table.apply(&raced);
    let s = table.get(SocketKey::Sk(0xffff_0009)).unwrap();
    assert_eq!((s.since_ns, s.since_is_lower_bound), (4 * SEC, false));
    let stuck = table.due(34 * SEC);
    assert_eq!(stuck.len(), 1, "flagged once, from the exact time");
    assert!(table.due(100 * SEC).is_empty());
}

#[test]
fn a_full_table_evicts_unwatched_sockets_first_and_counts_them() {
    let mut table = Table::new(close_wait_after(30), 32);
    accept_then_peer_closes(&mut table, 1, 10 * SEC);
    table.due(40 * SEC);
    accept_then_peer_closes(&mut table, 2, 41 * SEC);
    for sk in 100..140 {
        table.apply(&t(50 * SEC + sk, sk, Close, SynSent));
    }
    let stats = table.stats();
    assert!(stats.tracked <= 32, "{stats:?}");
    assert_eq!(stats.peak, 32);
    assert_eq!(stats.evicted, 2 + 40 - stats.tracked as u64);
    assert_eq!(stats.evicted_stuck, 0);
    assert!(table.get(SocketKey::Sk(1)).is_some_and(|s| s.flagged));
    assert!(table.get(SocketKey::Sk(2)).is_some());
    // The newest SYN_SENT sockets stay; the oldest went first.
    assert!(table.get(SocketKey::Sk(139)).is_some());
    assert!(table.get(SocketKey::Sk(100)).is_none());
    // An evicted socket is learnt again from its next transition.
    table.apply(&t(60 * SEC, 100, SynSent, Established));
    assert_eq!(
        table.get(SocketKey::Sk(100)).unwrap().origin,
        Origin::Unknown
    );
}

#[test]
fn churn_through_a_watched_state_keeps_the_deadline_queue_bounded() {
    let mut table = Table::new(close_wait_after(30), 1 << 20);
    for sk in 0..100_000u64 {
        let at = 10 * SEC + sk * 1000;
        accept_then_peer_closes(&mut table, sk, at);
        table.apply(&t(at + 500, sk, CloseWait, LastAck));
        table.apply(&t(at + 600, sk, LastAck, Close));
    }
    assert_eq!(table.stats().tracked, 0);
    assert!(
        table.deadlines.len() <= 1024 + 1,
        "{}",
        table.deadlines.len()
    );
    assert!(table.due(u64::MAX).is_empty());
}

#[test]
fn ipv6_and_unknown_states_are_kept() {
    let mut table = Table::new(close_wait_after(1), 1000);
    let mut ev = t(SEC, 0xb, Established, CloseWait);
    ev.family = Family::Ipv6;
    ev.saddr = Ipv6Addr::LOCALHOST.into();
    ev.daddr = Ipv6Addr::LOCALHOST.into();
    table.apply(&ev);
    let mut odd = t(SEC, 0xc, Established, CloseWait);
    odd.new = State(42);
    table.apply(&odd);
    assert_eq!(
        table.per_state().collect::<Vec<_>>(),
        vec![(CloseWait.into(), 1), (State(42), 1)]
    );
    let stuck = table.due(2 * SEC);
    assert_eq!(stuck.len(), 1);
    assert_eq!(stuck[0].socket.ends.family, Family::Ipv6);
    assert_eq!(stuck[0].socket.origin, Origin::Unknown);
}

#[test]
fn thresholds_list_watched_states_in_kernel_order() {
    let th = Thresholds::new(&[
        (LastAck, Duration::from_secs(5)),
        (CloseWait, Duration::from_secs(30)),
        (CloseWait, Duration::from_secs(60)),
    ]);
    assert_eq!(
        th.iter().collect::<Vec<_>>(),
        vec![
            (CloseWait, Duration::from_secs(60)),
            (LastAck, Duration::from_secs(5))
        ]
    );
    assert_eq!(th.get(State(42)), None);
}

/// On Debian's 6.1 and 6.12 (6.18 copies the peer first), an accepted socket's first record,
/// LISTEN -> SYN_RECV, carries the listener's addresses: the kernel sets the state before
/// it copies the peer. The next transition names the peer, and a stuck socket carries it.
#[test]
fn an_accepted_socket_takes_its_peer_from_the_transition_after_its_birth() {
    let mut table = Table::new(close_wait_after(1), 100);
    let listener = Transition {
        daddr: Ipv4Addr::UNSPECIFIED.into(),
        dport: 0,
        ..t(SEC - 2, 0xa, Listen, SynRecv)
    };
    table.apply(&listener);
    assert_eq!(table.get(SocketKey::Sk(0xa)).unwrap().ends.dport, 0);
    table.apply(&t(SEC - 1, 0xa, SynRecv, Established));
    table.apply(&t(SEC, 0xa, Established, CloseWait));
    let stuck = table.due(2 * SEC);
    assert_eq!(stuck.len(), 1);
    assert_eq!(
        stuck[0].socket.ends,
        t(0, 0xa, Established, CloseWait).ends()
    );
    assert_eq!(stuck[0].socket.origin, Origin::Accepted);
}

#[test]
fn a_birth_at_an_address_the_table_holds_starts_another_socket() {
    let mut table = Table::new(close_wait_after(30), 1000);
    let get = |table: &Table, sk| *table.get(SocketKey::Sk(sk)).unwrap();
    accept_then_peer_closes(&mut table, 0xa, 10 * SEC);
    assert_eq!(get(&table, 0xa).born_ns, 10 * SEC - 2, "born at its accept");
    // Met in mid-life: no birth known.
    table.apply(&t(11 * SEC, 0xb, Established, FinWait1));
    let mid_life = get(&table, 0xb);
    assert_eq!((mid_life.born_ns, mid_life.origin), (0, Origin::Unknown));
    // Its close was never seen (the kernel skipped the probe), and a connection accepted
    // from a listener reuses its memory: a new socket, not the old one moving on.
    table.apply(&t(12 * SEC, 0xb, Listen, SynRecv));
    let accepted = get(&table, 0xb);
    assert_eq!(accepted.born_ns, 12 * SEC);
    assert_eq!(accepted.origin, Origin::Accepted);
    assert_ne!(accepted.id, mid_life.id);
    assert_eq!(accepted.hint, None, "nothing of the old socket's");
    table.apply(&t(13 * SEC, 0xb, SynRecv, Established));
    assert_eq!(get(&table, 0xb).born_ns, 12 * SEC, "kept after its birth");
    assert_eq!(table.stats().tracked, 2);
    // A flagged socket whose end was missed resolves when another is born in its place.
    table.due(40 * SEC);
    assert!(get(&table, 0xa).flagged);
    let resolved = table.apply(&t(41 * SEC, 0xa, Close, SynSent)).unwrap();
    assert_eq!(resolved.socket.state, CloseWait.into());
    assert_eq!(get(&table, 0xa).origin, Origin::Connected);
    assert!(!get(&table, 0xa).flagged);
}
