use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::{
    file::prepare,
    reader::{Damage, OpenError, Reader},
    writer::{encode, prologue, segment_path, RecordError, Recorder, SEGMENTS},
    *,
};
use crate::{
    attribute::tests::java,
    decode::Transition,
    model::{Comm, Family, IoOp, LastIo, Origin, PidHint, Socket, SocketKey},
};
use tracer_common::TcpState;

fn header(segment: u32) -> Header {
    Header {
        recording: 0x1234_5678_9abc_def0,
        segment,
        tracer_version: "0.1.0".into(),
        kernel: "6.18.0".into(),
        hostname: "broker-1".into(),
        clock_offset_ns: 1_795_586_400_000_000_000,
        started_ns: 5_000_000_000,
        thresholds: vec![(TcpState::CloseWait as u8, 30_000)],
        ports: vec![61616],
        pid: None,
        family: Some(FamilyEntry::Ipv6),
        states: vec![],
        max_sockets: 262_144,
        checkpoint: 0,
        ext: HeaderExt {
            netns: 4026531840,
            netns_filter: vec![4026532001],
        },
    }
}

fn transition(i: u64) -> Transition {
    Transition {
        ts_ns: 6_000_000_000 + i,
        sk: 0xffff_8880_0abc_d000 + i * 0x100,
        pid: 4242,
        tid: 4243,
        comm: Comm::from("java"),
        netns: 4026532000 + i as u32,
        family: if i.is_multiple_of(2) {
            Family::Ipv4
        } else {
            Family::Ipv6
        },
        saddr: if i.is_multiple_of(2) {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        },
        sport: 61616,
        daddr: if i.is_multiple_of(2) {
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5))
        } else {
            IpAddr::V6(Ipv4Addr::new(10, 0, 0, 5).to_ipv6_mapped())
        },
        dport: 40000 + i as u16,
        old: TcpState::Established.into(),
        new: TcpState::CloseWait.into(),
    }
}

fn socket(i: u64) -> Socket {
    let t = transition(i);
    Socket {
        id: 0,
        ends: t.ends(),
        state: TcpState::CloseWait.into(),
        since_ns: t.ts_ns,
        since_is_lower_bound: i.is_multiple_of(3),
        origin: Origin::Accepted,
        hint: Some(PidHint {
            pid: 77,
            comm: Comm::from("a-very-long-comm"),
        }),
        flagged: false,
        born_ns: 0,
    }
}

fn ownership() -> Ownership {
    Ownership {
        held_by: crate::model::HeldBy::Fd,
        owners: vec![crate::model::Owner {
            process: java(4242),
            fds: vec![12, 14],
            fd_count: 1013,
        }],
        last_io: Some(LastIo {
            ts_ns: 5_500_000_000,
            pid: 4242,
            comm: Comm::from("java"),
            op: IoOp::Eof,
        }),
    }
}

/// One entry of every kind.
fn every_kind() -> Vec<Entry> {
    let s = socket(1);
    vec![
        Entry::Header(Box::new(header(0))),
        Entry::Socket(SocketEntry::new(SocketKey::Snapshot(99), &s)),
        Entry::Transition((&transition(0)).into()),
        Entry::Transition((&transition(1)).into()),
        Entry::Owners(Box::new(OwnersEntry::new(7_000_000_000, &s, &ownership()))),
        Entry::Stuck(StuckEntry {
            ts_ns: 36_000_000_000,
            key: KeyEntry::Sk(0xffff_8880_0abc_d100),
            ends: s.ends.into(),
            state: 8,
            since_ns: 6_000_000_001,
            threshold_ms: 30_000,
        }),
        Entry::Resolved(ResolvedEntry {
            ts_ns: 40_000_000_000,
            key: KeyEntry::Snapshot(99),
            ends: s.ends.into(),
            state: 8,
            since_ns: 6_000_000_001,
            new: 9,
        }),
        Entry::Lost {
            ts_ns: 41_000_000_000,
            total: 3,
        },
        Entry::Gap { entries: 1000 },
        Entry::Gone(GoneEntry {
            ts_ns: 41_500_000_000,
            key: KeyEntry::Sk(0xffff_8880_0abc_d200),
            ends: s.ends.into(),
            state: 8,
            since_ns: 7_000_000_000,
        }),
        Entry::Failed(FailedEntry {
            ts_ns: 41_800_000_000,
            error: "No space left on device (os error 28)".into(),
        }),
        Entry::Stop(StopEntry {
            ts_ns: 42_000_000_000,
            events: 2,
            lost: 3,
            unrecorded: 1000,
        }),
    ]
}

fn file_of(entries: &[Entry]) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = prologue();
    let mut ends = Vec::new();
    for e in entries {
        encode(e, &mut bytes);
        ends.push(bytes.len());
    }
    (bytes, ends)
}

fn read_all(bytes: &[u8]) -> Result<(Vec<Entry>, super::reader::ReadStats), OpenError> {
    let mut r = Reader::new(bytes)?;
    let mut out = Vec::new();
    while let Some(e) = r.next_entry().expect("reading a slice cannot fail") {
        out.push(e);
    }
    Ok((out, r.stats().clone()))
}

#[test]
fn every_entry_kind_round_trips() {
    let entries = every_kind();
    assert_eq!(entries.len() as u32, ENTRY_KINDS + 1, "one of each kind");
    let (bytes, _) = file_of(&entries);
    let (read, stats) = read_all(&bytes).unwrap();
    assert_eq!(read, entries);
    assert_eq!(stats.entries, entries.len() as u64);
    assert!(stats.damage.is_empty() && stats.unknown == 0);
    // The domain values come back whole.
    let Entry::Transition(t) = &read[3] else {
        panic!("{:?}", read[3])
    };
    assert_eq!(Transition::from(t), transition(1));
    let Entry::Owners(o) = &read[4] else { panic!() };
    assert_eq!(o.ownership(), ownership());
    let Entry::Socket(s) = &read[1] else { panic!() };
    assert_eq!(s.socket(), (SocketKey::Snapshot(99), socket(1)));
}

#[test]
fn every_way_of_holding_round_trips_at_its_fixed_index() {
    use crate::model::HeldBy::*;
    // Variant indexes are on disk: a new way is added at the end.
    for (index, held_by) in [Fd, AcceptQueue, Orphan, Gone, Unknown, NetnsUnreachable]
        .into_iter()
        .enumerate()
    {
        let o = Ownership {
            held_by,
            owners: Vec::new(),
            last_io: None,
        };
        let entry = OwnersEntry::new(1, &socket(0), &o);
        assert_eq!(
            postcard::to_allocvec(&entry.held_by).unwrap(),
            [index as u8]
        );
        assert_eq!(entry.ownership(), o);
    }
}

#[test]
fn entries_larger_than_the_stack_buffer_round_trip() {
    let mut o = ownership();
    o.owners[0].process.cmdline = "java -Dx=".to_owned() + &"y".repeat(5000);
    o.owners[0].fds = (0..300).collect();
    let entry = Entry::Owners(Box::new(OwnersEntry::new(1, &socket(0), &o)));
    let (bytes, _) = file_of(std::slice::from_ref(&entry));
    assert!(bytes.len() > 5000);
    assert_eq!(read_all(&bytes).unwrap().0, vec![entry]);
}

#[test]
fn transitions_are_compact() {
    let mut v4 = Vec::new();
    encode(&Entry::Transition((&transition(0)).into()), &mut v4);
    let mut v6 = Vec::new();
    encode(&Entry::Transition((&transition(1)).into()), &mut v6);
    // Frame included; a transition is 88 bytes in the ring buffer whatever its family.
    assert!(v4.len() <= 57, "IPv4 transition takes {} bytes", v4.len());
    assert!(v6.len() <= 81, "IPv6 transition takes {} bytes", v6.len());
}

#[test]
fn a_cut_anywhere_keeps_every_complete_entry() {
    let entries = every_kind();
    let (bytes, ends) = file_of(&entries);
    for cut in PROLOGUE_LEN..bytes.len() {
        let (read, stats) = read_all(&bytes[..cut]).unwrap();
        let complete = ends.iter().filter(|&&e| e <= cut).count();
        assert_eq!(read, entries[..complete], "cut at {cut}");
        let boundary = cut == PROLOGUE_LEN || ends.contains(&cut);
        if boundary {
            assert!(stats.damage.is_empty(), "cut at {cut}: {stats:?}");
        } else {
            let start = ends[..complete].last().copied().unwrap_or(PROLOGUE_LEN);
            assert_eq!(
                stats.damage,
                vec![Damage::TornTail {
                    offset: start as u64,
                    bytes: (cut - start) as u64
                }],
                "cut at {cut}"
            );
        }
    }
}

#[test]
fn a_corrupted_entry_is_skipped_and_the_rest_recovered() {
    let entries = every_kind();
    let (mut bytes, ends) = file_of(&entries);
    // A flipped bit in the payload of the third entry.
    bytes[ends[1] + FRAME_LEN + 3] ^= 0x10;
    let (read, stats) = read_all(&bytes).unwrap();
    let mut expected = entries.clone();
    expected.remove(2);
    assert_eq!(read, expected);
    assert_eq!(
        stats.damage,
        vec![Damage::Corrupt {
            offset: ends[1] as u64,
            bytes: (ends[2] - ends[1]) as u64
        }]
    );
}

#[test]
fn zeros_after_a_crash_are_damage_not_entries() {
    let entries = every_kind();
    let (mut bytes, _) = file_of(&entries);
    let end = bytes.len();
    bytes.extend_from_slice(&[0; 4096]);
    let (read, stats) = read_all(&bytes).unwrap();
    assert_eq!(read, entries);
    assert_eq!(
        stats.damage,
        vec![Damage::Corrupt {
            offset: end as u64,
            bytes: 4096
        }]
    );
    assert_eq!(stats.damaged_bytes(), 4096);
}

/// Damage where every offset claims a payload of up to 1 MiB (a length of 1 MiB every 4
/// bytes, and what their bytes make at the other offsets): finding the next valid entry
/// runs each byte through the CRC a bounded number of times, not once per claim.
#[test]
fn the_search_past_damage_is_linear() {
    let first = Entry::Gap { entries: 1 };
    let last = Entry::Gap { entries: 2 };
    let mut bytes = prologue();
    encode(&first, &mut bytes);
    let damage_at = bytes.len();
    let claim = (MAX_PAYLOAD as u32).to_le_bytes();
    let damage = 2 * MAX_PAYLOAD;
    bytes.extend(claim.iter().cycle().take(damage));
    encode(&last, &mut bytes);
    let mut r = Reader::new(&bytes[..]).unwrap();
    assert_eq!(r.next_entry().unwrap(), Some(first));
    assert_eq!(r.next_entry().unwrap(), Some(last));
    assert_eq!(r.next_entry().unwrap(), None);
    assert_eq!(
        r.stats().damage,
        vec![Damage::Corrupt {
            offset: damage_at as u64,
            bytes: damage as u64
        }]
    );
    assert!(
        r.crc_bytes() <= 2 * bytes.len() as u64,
        "{} bytes through the CRC for a file of {}",
        r.crc_bytes(),
        bytes.len()
    );
}

#[test]
fn entries_of_a_newer_kind_are_skipped_and_counted() {
    let mut bytes = prologue();
    encode(&Entry::Gap { entries: 1 }, &mut bytes);
    // Variant 200 with a payload: what a newer tracer might write.
    let payload = [200u8, 1, 2, 3];
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    encode(&Entry::Gap { entries: 2 }, &mut bytes);
    let (read, stats) = read_all(&bytes).unwrap();
    assert_eq!(
        read,
        vec![Entry::Gap { entries: 1 }, Entry::Gap { entries: 2 }]
    );
    assert_eq!(stats.unknown, 1);
    assert!(stats.damage.is_empty());
}

#[test]
fn files_that_are_not_recordings_are_refused() {
    let err = |b: &[u8]| read_all(b).unwrap_err().to_string();
    assert_eq!(err(b""), "it is empty");
    assert!(err(b"{\"type\":\"start\"}\n").contains("not a tracer recording"));
    assert!(err(b"\x89tr").contains("cut before its first entry"));
    assert!(err(b"\x89tracer\n\x01").contains("cut before its first entry"));
    assert!(err(b"hello").contains("not a tracer recording"));
    let mut newer = MAGIC.to_vec();
    newer.extend_from_slice(&[2, 0, 7, 0]);
    assert_eq!(
        err(&newer),
        "it is a recording of format 2.7, newer than this tracer reads (1.x); \
         report it with a newer tracer"
    );
    let mut early = MAGIC.to_vec();
    early.extend_from_slice(&[0, 0, 9, 0]);
    assert_eq!(
        err(&early),
        "it is a recording of format 0.9, an early development format this tracer cannot \
         read (it reads 1.x); report it with the tracer that wrote it"
    );
    // A newer minor version is read, and says so.
    let mut later = MAGIC.to_vec();
    later.extend_from_slice(&[1, 0, 7, 0]);
    assert_eq!(Reader::new(&later[..]).unwrap().version(), (1, 7));
    // A prologue alone is a valid, empty recording.
    assert_eq!(read_all(&prologue()).unwrap().0, vec![]);
}

/// The golden recording (tests/golden/README.md, reported in report's tests) stays the
/// format 1.0 the first release wrote, whole.
#[test]
fn the_golden_recording_is_format_1_0() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/format-1.0.rec");
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(bytes[..PROLOGUE_LEN], *b"\x89tracer\n\x01\x00\x00\x00");
    let (entries, stats) = read_all(&bytes).unwrap();
    assert!(stats.damage.is_empty() && stats.unknown == 0, "{stats:?}");
    assert!(matches!(&entries[0], Entry::Header(h) if h.tracer_version == "0.1.0"));
    assert!(matches!(entries.last(), Some(Entry::Stop(_))));
}

/// A file in a fresh directory.
fn scratch(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    (dir, path)
}

/// A deadline no test reaches: the writer always finishes.
fn far() -> std::time::Instant {
    std::time::Instant::now() + std::time::Duration::from_secs(3600)
}

fn read_file(path: &std::path::Path) -> Vec<Entry> {
    read_all(&std::fs::read(path).unwrap()).unwrap().0
}

#[test]
fn recorder_writes_header_snapshot_entries_and_stop() {
    let (_dir, path) = scratch("rec");
    let snapshot = [SocketEntry::new(SocketKey::Snapshot(7), &socket(0))];
    let mut r =
        Recorder::start(&path, prepare(&path).unwrap(), None, header(0), &snapshot).unwrap();
    r.transition(&transition(0));
    r.owners(9, &socket(0), &ownership());
    r.flush(10, std::iter::empty(), |_| None).unwrap();
    r.transition(&transition(1));
    let stop = StopEntry {
        ts_ns: 11,
        events: 2,
        lost: 0,
        unrecorded: 0,
    };
    r.finish(stop, far()).unwrap();
    let read = read_file(&path);
    let mut h = header(0);
    h.checkpoint = 1;
    assert_eq!(
        read,
        vec![
            Entry::Header(Box::new(h)),
            Entry::Socket(snapshot[0]),
            Entry::Transition((&transition(0)).into()),
            Entry::Owners(Box::new(OwnersEntry::new(9, &socket(0), &ownership()))),
            Entry::Transition((&transition(1)).into()),
            Entry::Stop(stop),
        ]
    );
}

#[test]
fn a_recorder_dropped_early_still_writes_what_it_queued() {
    let (_dir, path) = scratch("rec");
    let mut r = Recorder::start(&path, prepare(&path).unwrap(), None, header(0), &[]).unwrap();
    r.transition(&transition(0));
    r.flush(1, std::iter::empty(), |_| None).unwrap();
    r.transition(&transition(1));
    drop(r);
    let read = read_file(&path);
    assert_eq!(read.len(), 3, "{read:?}");
    assert_eq!(read[2], Entry::Transition((&transition(1)).into()));
}

#[test]
fn rotation_keeps_the_budget_and_each_segment_stands_alone() {
    let (_dir, path) = scratch("rec");
    let budget = 64 << 10;
    let mut r =
        Recorder::start(&path, prepare(&path).unwrap(), Some(budget), header(0), &[]).unwrap();
    let (k0, s0) = (SocketKey::Sk(1), socket(0));
    let mut flagged = s0;
    flagged.flagged = true;
    let (k1, s1) = (SocketKey::Snapshot(5), flagged);
    let o = ownership();
    for i in 0..20_000 {
        r.transition(&transition(i));
        if i % 100 == 99 {
            let table = [(k0, &s0), (k1, &s1)];
            r.flush(i, table.into_iter(), |s| s.flagged.then_some(&o))
                .unwrap();
            // Rotation follows the sizes the writer reports; let it catch up.
            r.settle();
        }
    }
    r.finish(
        StopEntry {
            ts_ns: 1,
            events: 20_000,
            lost: 0,
            unrecorded: 0,
        },
        far(),
    )
    .unwrap();
    assert!(
        !segment_path(&path, SEGMENTS).exists(),
        "at most {SEGMENTS} files"
    );
    let mut total = 0;
    let mut segments = Vec::new();
    for n in (0..SEGMENTS).rev() {
        let p = if n == 0 {
            path.clone()
        } else {
            segment_path(&path, n)
        };
        let len = std::fs::metadata(&p).unwrap().len();
        total += len;
        // A segment closes before the chunks in flight and the next would pass its quarter
        // (the last one also holds the stop entry).
        assert!(
            len <= budget / SEGMENTS + 64,
            "{} is {len} bytes",
            p.display()
        );
        let entries = read_file(&p);
        let Entry::Header(h) = &entries[0] else {
            panic!("{} starts with {:?}", p.display(), entries[0])
        };
        segments.push(h.segment);
        if h.segment > 0 {
            assert_eq!(h.checkpoint, 2);
            assert_eq!(entries[1], Entry::Socket(SocketEntry::new(k0, &s0)));
            assert_eq!(entries[2], Entry::Socket(SocketEntry::new(k1, &s1)));
            assert!(matches!(&entries[3], Entry::Owners(e) if e.ownership() == o));
        }
    }
    assert!(total <= budget, "{total} bytes in all");
    let first = segments[0];
    assert!(first >= 3, "rotated several times: {segments:?}");
    assert_eq!(segments, (first..first + 4).collect::<Vec<_>>());
    assert!(matches!(
        read_file(&path).last(),
        Some(Entry::Stop(s)) if s.events == 20_000
    ));
}

/// The files of the recording at `path`: their total size, and the numbers of their
/// segments, oldest first.
fn on_disk(path: &std::path::Path) -> (u64, Vec<u32>) {
    let mut total = 0;
    let mut segments = Vec::new();
    for n in (0..=SEGMENTS).rev() {
        let p = if n == 0 {
            path.to_owned()
        } else {
            segment_path(path, n)
        };
        let Ok(bytes) = std::fs::read(&p) else {
            continue;
        };
        total += bytes.len() as u64;
        match read_all(&bytes).unwrap().0.first() {
            Some(Entry::Header(h)) => segments.push(h.segment),
            e => panic!("{} starts with {e:?}", p.display()),
        }
    }
    (total, segments)
}

/// A table of `n` sockets, for checkpoints of about 70 bytes a socket.
fn table(n: u64) -> Vec<(SocketKey, Socket)> {
    (0..n)
        .map(|i| (SocketKey::Sk(0xffff_0000 + i), socket(i)))
        .collect()
}

/// Records 100 transitions per flush until `transitions`, with `table` as the table at
/// each flush, checking after each that the files stay within `budget` and one chunk;
/// returns the recorder and the bytes of a chunk.
fn record_with_table(
    path: &std::path::Path,
    budget: u64,
    table: &[(SocketKey, Socket)],
    mut r: Recorder,
    transitions: std::ops::Range<u64>,
) -> (Recorder, u64) {
    let mut chunk = Vec::new();
    for i in transitions.clone().take(100) {
        encode(&Entry::Transition((&transition(i)).into()), &mut chunk);
    }
    for i in transitions {
        r.transition(&transition(i));
        if i % 100 == 99 {
            r.flush(i, table.iter().map(|(k, s)| (*k, s)), |_| None)
                .unwrap();
            r.settle();
            let (total, segments) = on_disk(path);
            assert!(
                total <= budget + chunk.len() as u64,
                "{total} bytes on disk for a budget of {budget} (segments {segments:?})"
            );
        }
    }
    (r, chunk.len() as u64)
}

fn stop(events: u64) -> StopEntry {
    StopEntry {
        ts_ns: 1,
        events,
        lost: 0,
        unrecorded: 0,
    }
}

/// Checkpoints of a table larger than a quarter of the budget count toward it: segments
/// grow (each holds as many bytes of new entries as its checkpoint), the oldest give way,
/// and the files stay within the budget and one chunk, without a rotation per flush.
#[test]
fn a_large_table_keeps_the_budget_without_rotating_in_a_loop() {
    let (_dir, path) = scratch("rec");
    let budget = 64 << 10;
    let big = table(300);
    let r = Recorder::start(&path, prepare(&path).unwrap(), Some(budget), header(0), &[]).unwrap();
    let (mut r, _) = record_with_table(&path, budget, &big, r, 0..20_000);
    r.finish(stop(20_000), far()).unwrap();
    let mut checkpoint = Vec::new();
    for (k, s) in &big {
        encode(&Entry::Socket(SocketEntry::new(*k, s)), &mut checkpoint);
    }
    let checkpoint = checkpoint.len() as u64;
    assert!(
        checkpoint > budget / SEGMENTS,
        "a checkpoint of {checkpoint} bytes"
    );
    // 200 flushes of 100 transitions (6.7 KB): without the rule, a rotation at each; with
    // it, one per checkpoint's worth of new entries at most.
    let (_, segments) = on_disk(&path);
    let last = u64::from(*segments.last().unwrap());
    assert!(
        (2..=20_000 * 67 / checkpoint).contains(&last),
        "{last} rotations, segments on disk {segments:?}"
    );
    for n in 1..SEGMENTS {
        if let Ok(bytes) = std::fs::read(segment_path(&path, n)) {
            assert!(
                bytes.len() as u64 >= 2 * checkpoint,
                "FILE.{n} holds {} bytes, for a checkpoint of {checkpoint}",
                bytes.len()
            );
        }
    }
}

/// A budget that cannot hold a checkpoint of the sockets open at start and as much again:
/// one warning at start, no rotation, and the recording stops at the budget with a note
/// of when and why (as after a failed write), a gap note and its stop entry.
#[test]
fn a_budget_too_small_to_rotate_says_so_once_and_stops_at_it() {
    let (_dir, path) = scratch("rec");
    let budget = 64 << 10;
    let snapshot: Vec<SocketEntry> = table(600)
        .iter()
        .map(|(k, s)| SocketEntry::new(*k, s))
        .collect();
    let big = table(600);
    let r = Recorder::start(
        &path,
        prepare(&path).unwrap(),
        Some(budget),
        header(0),
        &snapshot,
    )
    .unwrap();
    assert_eq!(r.warnings().len(), 1);
    let (mut r, _) = record_with_table(&path, budget, &big, r, 0..5_000);
    let warnings = r.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("leaves no room to rotate")
            && warnings[0].contains("of the 600 sockets open"),
        "{}",
        warnings[0]
    );
    let unrecorded = r.unrecorded();
    assert!(unrecorded > 0);
    r.finish(stop(5_000), far()).unwrap();
    assert_eq!(on_disk(&path).1, vec![0], "no rotation");
    let entries = read_file(&path);
    let transitions = entries
        .iter()
        .filter(|e| matches!(e, Entry::Transition(_)))
        .count();
    let n = entries.len();
    assert_eq!(
        entries[n - 2..],
        [
            Entry::Gap {
                entries: 5_000 - transitions as u64
            },
            Entry::Stop(StopEntry {
                unrecorded: 5_000 - transitions as u64,
                ..stop(5_000)
            })
        ]
    );
    assert_eq!(unrecorded, 5_000 - transitions as u64);
    // Where it stopped, and why, as after a failed write.
    assert!(
        matches!(
            &entries[n - 3],
            Entry::Failed(f) if f.error == "--record-max-size 0.1MiB reached without room to rotate"
        ),
        "{:?}",
        entries[n - 3]
    );
}

/// A table that grows past what the budget can rotate with: the rotation is refused once,
/// with one warning, the recording goes on in one file (older ones give way) and stops
/// at the budget.
#[test]
fn a_table_that_outgrows_the_budget_stops_rotating_once() {
    let (_dir, path) = scratch("rec");
    let budget = 64 << 10;
    let r = Recorder::start(&path, prepare(&path).unwrap(), Some(budget), header(0), &[]).unwrap();
    let (r, _) = record_with_table(&path, budget, &table(2), r, 0..3_000);
    let before = on_disk(&path).1;
    assert!(before.len() >= 2, "rotated: {before:?}");
    let (mut r, _) = record_with_table(&path, budget, &table(600), r, 3_000..10_000);
    let warnings = r.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("of the 600 sockets tracked"),
        "{}",
        warnings[0]
    );
    r.finish(stop(10_000), far()).unwrap();
    let (_, after) = on_disk(&path);
    assert_eq!(
        after,
        vec![*before.last().unwrap()],
        "the current segment alone"
    );
    assert!(matches!(read_file(&path).last(), Some(Entry::Stop(_))));
}

/// A budget that cannot even hold the sockets open at start is an error at once.
#[test]
fn a_budget_smaller_than_the_first_checkpoint_is_an_error() {
    let (_dir, path) = scratch("rec");
    let snapshot: Vec<SocketEntry> = table(2_000)
        .iter()
        .map(|(k, s)| SocketEntry::new(*k, s))
        .collect();
    let err = Recorder::start(
        &path,
        prepare(&path).unwrap(),
        Some(64 << 10),
        header(0),
        &snapshot,
    )
    .err()
    .expect("refused");
    let message = err.to_string();
    assert!(
        matches!(err, RecordError::Budget { sockets: 2_000, .. }),
        "{message}"
    );
    assert!(
        message.starts_with(
            "--record-max-size 0.1MiB cannot hold a checkpoint of the 2000 sockets open"
        ),
        "{message}"
    );
}

#[test]
fn rotated_segments_stay_locked_until_the_recording_ends() {
    let (_dir, path) = scratch("rec");
    let mut r = Recorder::start(
        &path,
        prepare(&path).unwrap(),
        Some(64 << 10),
        header(0),
        &[],
    )
    .unwrap();
    for i in 0..2_000 {
        r.transition(&transition(i));
        if i % 100 == 99 {
            r.flush(i, std::iter::empty(), |_| None).unwrap();
            r.settle();
        }
    }
    assert!(segment_path(&path, 2).exists(), "rotated twice");
    // Whichever of its files a second tracer looks at, the recording is in use.
    for n in 0..3 {
        let file = if n == 0 {
            path.clone()
        } else {
            segment_path(&path, n)
        };
        let f = std::fs::File::open(&file).unwrap();
        // SAFETY: flock on a descriptor we own.
        let locked = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        assert_eq!(locked, -1, "{} is not locked", file.display());
    }
    let err = prepare(&path).unwrap_err();
    assert!(matches!(err, RecordError::Busy { .. }), "{err}");
    r.finish(
        StopEntry {
            ts_ns: 1,
            events: 2_000,
            lost: 0,
            unrecorded: 0,
        },
        far(),
    )
    .unwrap();
    prepare(&path).expect("free once the recording has ended");
}

#[test]
fn recorder_refuses_to_overwrite_other_files() {
    let (_dir, path) = scratch("notes.txt");
    std::fs::write(&path, "precious").unwrap();
    let err = prepare(&path).unwrap_err();
    assert!(matches!(err, RecordError::NotARecording { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    // A sibling that rotation would overwrite counts too.
    let (_dir, path) = scratch("rec");
    std::fs::write(segment_path(&path, 2), "precious").unwrap();
    assert!(prepare(&path).is_err());
    assert_eq!(std::fs::read(segment_path(&path, 2)).unwrap(), b"precious");
    // An earlier recording is replaced, its segments removed.
    let (_dir, path) = scratch("rec");
    std::fs::write(segment_path(&path, 1), prologue()).unwrap();
    Recorder::start(&path, prepare(&path).unwrap(), None, header(0), &[])
        .unwrap()
        .finish(
            StopEntry {
                ts_ns: 0,
                events: 0,
                lost: 0,
                unrecorded: 0,
            },
            far(),
        )
        .unwrap();
    assert!(!segment_path(&path, 1).exists());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Any bytes after a prologue: the reader ends, never panics, and counts every byte
    /// that held no entry as damage, in stretches that follow each other to the end.
    #[test]
    fn reader_survives_arbitrary_bytes(tail in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut bytes = prologue();
        bytes.extend_from_slice(&tail);
        let mut r = Reader::new(&bytes[..]).unwrap();
        let mut read = 0;
        while r.next_entry().unwrap().is_some() {
            read += 1;
        }
        // Random bytes hold a valid entry only where a CRC-32 matches by chance.
        prop_assume!(read == 0 && r.stats().unknown == 0);
        prop_assert_eq!(r.stats().damaged_bytes(), tail.len() as u64);
        let mut at = PROLOGUE_LEN as u64;
        for d in &r.stats().damage {
            let (Damage::Corrupt { offset, bytes } | Damage::TornTail { offset, bytes }) = *d;
            prop_assert_eq!(offset, at, "{:?}", r.stats().damage);
            at += bytes;
        }
    }

    /// A valid recording with bytes overwritten: entries away from the damage come back
    /// unchanged, and nothing that was not written comes back.
    #[test]
    fn reader_recovers_around_damage(
        hits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let entries = every_kind();
        let (mut bytes, ends) = file_of(&entries);
        let body = bytes.len() - PROLOGUE_LEN;
        let mut hit_at = Vec::new();
        for (at, v) in &hits {
            let at = PROLOGUE_LEN + at.index(body);
            bytes[at] = *v;
            hit_at.push(at);
        }
        let cut = PROLOGUE_LEN + cut.index(body + 1);
        let (read, _) = read_all(&bytes[..cut]).unwrap();
        for e in &read {
            prop_assert!(entries.contains(e), "{e:?} was never written");
        }
        let mut start = PROLOGUE_LEN;
        for (e, &end) in entries.iter().zip(&ends) {
            if end <= cut && !hit_at.iter().any(|&h| (start..end).contains(&h)) {
                prop_assert!(read.contains(e), "lost an intact entry {e:?}");
            }
            start = end;
        }
    }
}
