use std::{
    cell::{Cell, RefCell},
    collections::BTreeMap,
};

use super::*;

/// Processes made of lists: pid -> fds as `(fd, socket inode)` (0: not a socket), and
/// whether their count can be had without reading them. Counts what is read.
#[derive(Default)]
struct Fake {
    processes: RefCell<BTreeMap<u32, Vec<(i32, u64)>>>,
    counted: bool,
    reads: RefCell<Vec<u32>>,
    checks: Cell<usize>,
}

impl Fake {
    fn new(processes: &[(u32, &[(i32, u64)])]) -> Self {
        Self {
            processes: RefCell::new(processes.iter().map(|(p, f)| (*p, f.to_vec())).collect()),
            counted: true,
            ..Self::default()
        }
    }

    fn set(&self, pid: u32, fds: &[(i32, u64)]) {
        self.processes.borrow_mut().insert(pid, fds.to_vec());
    }

    fn exit(&self, pid: u32) {
        self.processes.borrow_mut().remove(&pid);
    }

    /// The pids read since the last call.
    fn read_since(&self) -> Vec<u32> {
        let mut r = std::mem::take(&mut *self.reads.borrow_mut());
        r.sort_unstable();
        r
    }
}

impl Fds for Fake {
    fn pids(&self) -> Vec<u32> {
        self.processes.borrow().keys().copied().collect()
    }

    fn count(&self, pid: u32) -> Option<usize> {
        let n = self.processes.borrow().get(&pid)?.len();
        self.counted.then_some(n)
    }

    fn read(&self, pid: u32) -> Option<(Vec<(u64, i32)>, usize)> {
        self.reads.borrow_mut().push(pid);
        let p = self.processes.borrow();
        let fds = p.get(&pid)?;
        let sockets = fds
            .iter()
            .filter(|&&(_, i)| i != 0)
            .map(|&(fd, i)| (i, fd))
            .collect();
        Some((sockets, fds.len()))
    }

    fn socket_at(&self, pid: u32, fd: i32) -> Option<u64> {
        self.checks.set(self.checks.get() + 1);
        let p = self.processes.borrow();
        p.get(&pid)?
            .iter()
            .find(|&&(f, i)| f == fd && i != 0)
            .map(|&(_, i)| i)
    }
}

fn inodes(i: &[u64]) -> HashSet<u64> {
    i.iter().copied().collect()
}

/// `(pid, [(inode, fd)], fd_count)` of one holding.
type Held = (u32, Vec<(u64, i32)>, usize);

fn found(h: Vec<Holding>) -> Vec<Held> {
    h.into_iter().map(|h| (h.pid, h.fds, h.fd_count)).collect()
}

fn host() -> Fake {
    Fake::new(&[
        (1, &[(0, 0), (1, 0)]),
        (4242, &[(0, 0), (3, 100), (17, 101), (20, 105)]),
        // A child that inherited one socket.
        (4300, &[(20, 105)]),
        (5000, &[(4, 500), (5, 501), (6, 502)]),
    ])
}

#[test]
fn the_first_lookup_reads_every_process_and_later_ones_only_check() {
    let fake = host();
    let mut index = FdIndex::default();
    let got = index.holders(&fake, &inodes(&[101, 105]));
    assert_eq!(
        found(got),
        vec![
            (4242, vec![(101, 17), (105, 20)], 4),
            (4300, vec![(105, 20)], 1)
        ]
    );
    assert_eq!(fake.read_since(), vec![1, 4242, 4300, 5000]);
    assert_eq!(index.last_cost().fds_read, 10);

    let got = index.holders(&fake, &inodes(&[100, 502]));
    assert_eq!(
        found(got),
        vec![(4242, vec![(100, 3)], 4), (5000, vec![(502, 6)], 3)]
    );
    assert_eq!(fake.read_since(), Vec::<u32>::new(), "nothing changed");
    assert_eq!(fake.checks.get(), 2, "one readlink per holder");
    assert_eq!(
        index.last_cost(),
        LookupCost {
            processes_read: 0,
            fds_read: 0,
            checked: 2,
            full_scan: false
        }
    );
}

#[test]
fn only_new_processes_and_changed_counts_are_read_again() {
    let fake = host();
    let mut index = FdIndex::default();
    index.holders(&fake, &inodes(&[101]));
    fake.read_since();
    // 5000 accepted one more connection, 4242 forked 4400, 4300 exited.
    fake.set(5000, &[(4, 500), (5, 501), (6, 502), (7, 503)]);
    fake.set(4400, &[(3, 100), (17, 101)]);
    fake.exit(4300);
    let got = index.holders(&fake, &inodes(&[101, 503, 105]));
    assert_eq!(fake.read_since(), vec![4400, 5000]);
    assert_eq!(
        found(got),
        vec![
            (4242, vec![(101, 17), (105, 20)], 4),
            (4400, vec![(101, 17)], 2),
            (5000, vec![(503, 7)], 4)
        ]
    );
}

#[test]
fn a_socket_in_a_reused_fd_with_the_count_unchanged_is_found_by_reading_all() {
    let fake = host();
    let mut index = FdIndex::default();
    index.holders(&fake, &inodes(&[101]));
    fake.read_since();
    // 5000 closed fd 5 and accepted a connection into it: same count.
    fake.set(5000, &[(4, 500), (5, 777), (6, 502)]);
    let got = index.holders(&fake, &inodes(&[777]));
    assert_eq!(found(got), vec![(5000, vec![(777, 5)], 3)]);
    assert_eq!(fake.read_since(), vec![1, 4242, 4300, 5000]);
    assert!(index.last_cost().full_scan);
    // The index now has it: the next lookup only checks.
    index.holders(&fake, &inodes(&[777]));
    assert_eq!(fake.read_since(), Vec::<u32>::new());
}

#[test]
fn a_holder_whose_fd_now_holds_another_socket_is_read_again() {
    let fake = host();
    let mut index = FdIndex::default();
    index.holders(&fake, &inodes(&[101]));
    fake.read_since();
    // 4242 moved socket 101 from fd 17 to fd 18 and put another socket in 17.
    fake.set(4242, &[(0, 0), (3, 100), (17, 900), (18, 101)]);
    let got = index.holders(&fake, &inodes(&[101]));
    assert_eq!(found(got), vec![(4242, vec![(101, 18)], 4)]);
    assert_eq!(fake.read_since(), vec![4242], "only the stale holder");
    assert!(!index.last_cost().full_scan);
}

#[test]
fn a_socket_nobody_holds_any_more_is_not_found() {
    let fake = host();
    let mut index = FdIndex::default();
    index.holders(&fake, &inodes(&[500]));
    fake.set(5000, &[(5, 501), (6, 502)]);
    assert_eq!(found(index.holders(&fake, &inodes(&[500]))), vec![]);
    // Forgotten with its descriptor: a second holder left over would be found here.
    fake.set(4242, &[(0, 0), (3, 100), (17, 101)]);
    fake.exit(4300);
    fake.read_since();
    assert_eq!(found(index.holders(&fake, &inodes(&[105]))), vec![]);
    assert_eq!(
        fake.read_since(),
        vec![1, 4242, 5000],
        "4242 changed; then all"
    );
}

#[test]
fn without_counts_every_process_is_read_every_time() {
    let mut fake = host();
    fake.counted = false;
    let mut index = FdIndex::default();
    index.holders(&fake, &inodes(&[101]));
    fake.read_since();
    let got = index.holders(&fake, &inodes(&[501]));
    assert_eq!(found(got), vec![(5000, vec![(501, 5)], 3)]);
    assert_eq!(fake.read_since(), vec![1, 4242, 4300, 5000]);
    assert_eq!(fake.checks.get(), 0);
}

#[test]
fn a_lookup_of_nothing_builds_the_index_for_the_first_real_one() {
    let fake = host();
    let mut index = FdIndex::default();
    assert_eq!(found(index.holders(&fake, &inodes(&[]))), vec![]);
    assert_eq!(fake.read_since(), vec![1, 4242, 4300, 5000]);
    let got = index.holders(&fake, &inodes(&[501]));
    assert_eq!(found(got), vec![(5000, vec![(501, 5)], 3)]);
    assert_eq!(fake.read_since(), Vec::<u32>::new());
}
