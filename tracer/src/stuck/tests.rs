use proptest::prelude::*;
use tracer_common::TcpState::{self, *};

use super::*;
use crate::{
    aggregate::tests::t,
    model::{Endpoints, HeldBy, Origin},
};

const SEC: u64 = 1_000_000_000;

fn close_wait_after(secs: u64) -> Thresholds {
    Thresholds::new(&[(CloseWait, Duration::from_secs(secs))])
}

/// An accepted socket whose peer closes at `at`.
fn leak(engine: &mut Engine, sk: u64, at: u64, out: &mut Vec<Decision>) {
    engine.transition(&t(at - 2, sk, Listen, SynRecv), out);
    engine.transition(&t(at - 1, sk, SynRecv, Established), out);
    engine.transition(&t(at, sk, Established, CloseWait), out);
}

fn stuck(decisions: &[Decision]) -> Vec<Flag> {
    decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Stuck(f) => Some(*f),
            _ => None,
        })
        .collect()
}

#[test]
fn a_flag_is_dated_at_its_threshold_however_late_the_tick() {
    let mut e = Engine::new(close_wait_after(3), 100, 0);
    let mut out = Vec::new();
    leak(&mut e, 0xa, SEC, &mut out);
    assert!(out.is_empty());
    assert_eq!(e.next_deadline(), Some(4 * SEC));
    e.tick(4 * SEC - 1, &mut out);
    assert!(out.is_empty(), "not before the threshold");
    e.tick(9 * SEC, &mut out);
    let flags = stuck(&out);
    assert_eq!(flags.len(), 1);
    assert_eq!(flags[0].at_ns, 4 * SEC);
    assert_eq!(flags[0].age(), Duration::from_secs(3));
    assert_eq!(flags[0].threshold, Duration::from_secs(3));
    assert_eq!(flags[0].key, SocketKey::Sk(0xa));
    out.clear();
    e.tick(20 * SEC, &mut out);
    assert!(out.is_empty(), "once per stay");
}

#[test]
fn a_socket_open_before_the_start_is_flagged_at_the_start_not_before() {
    let start = 100 * SEC;
    let mut e = Engine::new(close_wait_after(3), 100, start);
    let snap = SnapshotSocket {
        cookie: 1,
        inode: 0,
        ends: t(0, 0xa, Established, CloseWait).ends(),
        state: CloseWait.into(),
        since_ns: 40 * SEC,
        origin: Origin::Accepted,
    };
    let mut out = Vec::new();
    e.seed(vec![snap], &mut out);
    assert_eq!(
        e.next_deadline(),
        Some(start),
        "due at once, but not before the start"
    );
    e.tick(start, &mut out);
    let flags = stuck(&out);
    assert_eq!(flags.len(), 1);
    assert_eq!(flags[0].at_ns, start);
    assert_eq!(flags[0].age(), Duration::from_secs(60));
    assert!(flags[0].socket.since_is_lower_bound);
}

#[test]
fn a_transition_first_flags_what_fell_due_before_it() {
    let mut e = Engine::new(close_wait_after(3), 100, 0);
    let mut out = Vec::new();
    leak(&mut e, 0xa, SEC, &mut out);
    e.transition(&t(6 * SEC, 0xa, CloseWait, LastAck), &mut out);
    assert_eq!(out.len(), 2, "{out:?}");
    let Decision::Stuck(f) = out[0] else {
        panic!("stuck first: {out:?}")
    };
    assert_eq!(f.at_ns, 4 * SEC);
    let Decision::Resolved(r) = out[1] else {
        panic!("then resolved: {out:?}")
    };
    assert_eq!(r.left_ns, 6 * SEC);
    assert_eq!(r.new, LastAck.into());
    assert_eq!(r.stuck_for(), Duration::from_secs(5));
}

#[test]
fn leaving_exactly_at_the_threshold_is_not_stuck() {
    let mut e = Engine::new(close_wait_after(3), 100, 0);
    let mut out = Vec::new();
    leak(&mut e, 0xa, SEC, &mut out);
    e.transition(&t(4 * SEC, 0xa, CloseWait, LastAck), &mut out);
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn a_gone_socket_leaves_without_a_resolution() {
    let mut e = Engine::new(close_wait_after(3), 100, 0);
    let mut out = Vec::new();
    leak(&mut e, 0xa, SEC, &mut out);
    e.tick(5 * SEC, &mut out);
    let f = stuck(&out)[0];
    assert!(e.current(&f));
    e.owned(
        f.socket.stay(),
        Ownership {
            held_by: HeldBy::Gone,
            owners: Vec::new(),
            last_io: None,
        },
    );
    e.gone(f.key, f.socket.stay());
    assert!(!e.current(&f));
    assert!(e.owners_of(&f.socket).is_none());
    assert_eq!(e.stats().tracked, 0);
    out.clear();
    // Its next transition brings it back as a socket first seen mid-life: no resolution.
    e.transition(&t(6 * SEC, 0xa, CloseWait, LastAck), &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(e.stats().tracked, 1);
}

#[test]
fn owners_of_resolved_stays_are_pruned() {
    let mut e = Engine::new(close_wait_after(3), 100, 0);
    let mut out = Vec::new();
    leak(&mut e, 0xa, SEC, &mut out);
    leak(&mut e, 0xb, SEC, &mut out);
    e.tick(5 * SEC, &mut out);
    let unknown = Ownership {
        held_by: HeldBy::Unknown,
        owners: Vec::new(),
        last_io: None,
    };
    for f in stuck(&out) {
        e.owned(f.socket.stay(), unknown.clone());
    }
    out.clear();
    e.transition(&t(6 * SEC, 0xa, CloseWait, LastAck), &mut out);
    e.prune_owners();
    let left: Vec<_> = e.stuck().map(|(k, _, o)| (k, o.is_some())).collect();
    assert_eq!(left, vec![(SocketKey::Sk(0xb), true)]);
    assert_eq!(e.owners.len(), 1);
}

#[test]
fn a_full_table_says_what_it_dropped() {
    let mut e = Engine::new(close_wait_after(3), 16, 0);
    let mut out = Vec::new();
    for sk in 1..=16 {
        e.transition(&t(sk * SEC, sk, Close, SynSent), &mut out);
    }
    assert!(out.is_empty());
    e.transition(&t(20 * SEC, 99, Close, SynSent), &mut out);
    assert_eq!(
        out,
        vec![Decision::Evicted {
            sockets: 1,
            stuck: 0,
            watched: 0
        }]
    );
}

/// One step of a generated incident: a transition of one of a few sockets, or a clock
/// tick (only the live run has those).
#[derive(Clone, Debug)]
enum Step {
    /// Socket index, next state index, nanoseconds since the previous step.
    Move(u8, u8, u32),
    Tick(u32),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            (0u8..6, 0u8..5, 0u32..3_000_000_000).prop_map(|(s, n, d)| Step::Move(s, n, d)),
            (0u32..3_000_000_000).prop_map(Step::Tick),
        ],
        1..80,
    )
}

/// Stuck and resolved decisions, as (kind, sk, ns) triples.
fn verdicts(out: &[Decision]) -> Vec<(char, u64, u64)> {
    out.iter()
        .filter_map(|d| match d {
            Decision::Stuck(f) => Some(('S', f.key.sk()?, f.at_ns)),
            Decision::Resolved(r) => Some(('R', r.key.sk()?, r.left_ns)),
            Decision::Evicted { .. } => None,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// The live run ticks whenever its timer fires; a report of its recording sees only
    /// the transitions and the end. Whatever the ticks, the decisions are the same.
    #[test]
    fn decisions_do_not_depend_on_when_the_clock_ticks(steps in steps()) {
        const STATES: [TcpState; 5] = [Established, CloseWait, LastAck, FinWait2, Close];
        let thresholds = Thresholds::new(&[
            (CloseWait, Duration::from_secs(2)),
            (FinWait2, Duration::from_millis(1500)),
        ]);
        let mut live = Engine::new(thresholds.clone(), 1000, SEC);
        let mut report = Engine::new(thresholds, 1000, SEC);
        let (mut live_out, mut report_out) = (Vec::new(), Vec::new());
        let mut state = [Close; 6];
        let mut now = SEC;
        for step in steps {
            match step {
                Step::Move(s, n, d) => {
                    now += u64::from(d);
                    let new = STATES[n as usize];
                    let old = std::mem::replace(&mut state[s as usize], new);
                    let tr = t(now, 0x100 + u64::from(s), old, new);
                    live.transition(&tr, &mut live_out);
                    report.transition(&tr, &mut report_out);
                }
                Step::Tick(d) => {
                    now += u64::from(d);
                    live.tick(now, &mut live_out);
                }
            }
        }
        live.tick(now, &mut live_out);
        report.tick(now, &mut report_out);
        prop_assert_eq!(verdicts(&live_out), verdicts(&report_out));
    }
}

#[test]
fn endpoints_of_a_transition() {
    let e: Endpoints = t(1, 0xa, Established, CloseWait).ends();
    assert_eq!((e.sport, e.dport), (61616, 40010));
}

/// The kernel's listing of a socket with `t`'s endpoints for `sk`, in `state` since `since`.
fn listed(sk: u64, state: TcpState, since: u64, cookie: u64) -> SnapshotSocket {
    SnapshotSocket {
        cookie,
        inode: 0,
        ends: t(0, sk, Established, CloseWait).ends(),
        state: state.into(),
        since_ns: since,
        origin: Origin::Accepted,
    }
}

#[test]
fn reconciling_removes_phantoms_corrects_states_and_adds_what_was_missed() {
    let mut e = Engine::new(close_wait_after(3), 100, 0);
    let mut out = Vec::new();
    // 0xa: a phantom (its close was lost); 0xb: its FIN was lost, the kernel has it in
    // CLOSE_WAIT; 0xc: agrees; 0xd: born while transitions were lost; 0xe: touched after
    // the listing began, newer than it.
    for sk in [0xa, 0xb, 0xc, 0xe] {
        e.transition(&t(SEC, sk, SynRecv, Established), &mut out);
    }
    let touched: HashSet<Endpoints> = [t(0, 0xe, Established, CloseWait).ends()]
        .into_iter()
        .collect();
    let done = e.reconcile(
        vec![
            listed(0xb, CloseWait, 10 * SEC, 2),
            listed(0xc, Established, 10 * SEC, 3),
            listed(0xd, CloseWait, 10 * SEC, 4),
            listed(0xe, FinWait1, 10 * SEC, 5),
        ],
        &touched,
        &mut out,
    );
    assert_eq!(
        done.removed.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        [SocketKey::Sk(0xa)]
    );
    assert_eq!(done.corrected.len(), 1);
    let (key, was, b) = done.corrected[0];
    assert_eq!(was.state, Established.into());
    assert_eq!(key, SocketKey::Sk(0xb));
    assert_eq!((b.state, b.since_ns), (CloseWait.into(), 10 * SEC));
    assert!(b.since_is_lower_bound);
    assert_eq!(
        done.added.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        [SocketKey::Snapshot(4)]
    );
    assert_eq!(e.stats().tracked, 4);
    assert_eq!(
        e.table().get(SocketKey::Sk(0xe)).map(|s| s.state),
        Some(Established.into()),
        "newer than the listing: kept"
    );
    // Both missed leaks are flagged at their threshold from the listing's lower bound.
    e.tick(13 * SEC, &mut out);
    let mut flagged: Vec<SocketKey> = stuck(&out).iter().map(|f| f.key).collect();
    flagged.sort();
    assert_eq!(flagged, [SocketKey::Sk(0xb), SocketKey::Snapshot(4)]);
    // Reconciling again against the same kernel changes nothing.
    let again = e.reconcile(
        vec![
            listed(0xb, CloseWait, 10 * SEC, 2),
            listed(0xc, Established, 10 * SEC, 3),
            listed(0xd, CloseWait, 10 * SEC, 4),
            listed(0xe, Established, 10 * SEC, 5),
        ],
        &HashSet::default(),
        &mut out,
    );
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn a_flagged_socket_found_in_another_state_loses_its_flag_without_a_resolution() {
    let mut e = Engine::new(close_wait_after(3), 100, 0);
    let mut out = Vec::new();
    leak(&mut e, 0xa, SEC, &mut out);
    e.tick(10 * SEC, &mut out);
    assert_eq!(stuck(&out).len(), 1);
    out.clear();
    // Its close (CLOSE_WAIT -> LAST_ACK) was lost.
    let done = e.reconcile(
        vec![listed(0xa, LastAck, 20 * SEC, 1)],
        &HashSet::default(),
        &mut out,
    );
    assert_eq!(done.corrected.len(), 1);
    assert!(
        out.is_empty(),
        "no resolution: the leaving transition was not seen"
    );
    assert_eq!(e.stuck().count(), 0);
}
