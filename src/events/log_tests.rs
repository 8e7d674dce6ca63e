//! Unit tests of the event log: numbering, reopening, crash leftovers, compaction.

use super::super::Kind;
use super::*;

fn ev(commit: u64, model: &str) -> Event {
    let mut e = Event::new(commit, Kind::Registered, model);
    e.version = Some(1);
    e
}

fn append(log: &Log, commit: u64, n: usize, r: &Retention) {
    let p = log
        .write((0..n).map(|_| ev(commit, "m")).collect(), r)
        .unwrap();
    p.sync(log.dir()).unwrap();
    log.commit(p);
}

#[test]
fn events_are_numbered_read_back_and_survive_a_reopen() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("events");
    let r = Retention::default();
    let log = Log::open(&dir, &r, 0).unwrap();
    let mut rx = log.subscribe();
    append(&log, 1, 2, &r);
    append(&log, 2, 1, &r);
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), 3);
    let seqs: Vec<u64> = log.read(2, 10).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [2, 3]);
    drop(log);
    let log = Log::open(&dir, &r, 2).unwrap();
    assert_eq!((log.first(), log.last(), log.last_commit()), (1, 3, 2));
    append(&log, 3, 1, &r);
    assert_eq!(log.read(0, 10).unwrap().len(), 4);
}

#[test]
fn events_of_a_commit_not_durable_and_a_torn_line_are_dropped_at_open() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("events");
    let r = Retention::default();
    let log = Log::open(&dir, &r, 0).unwrap();
    append(&log, 1, 1, &r);
    append(&log, 2, 2, &r);
    drop(log);
    let seg = segment::list(&dir).unwrap().pop().unwrap().1;
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(b"{\"seq\":4,\"ti").unwrap();
    // The catalog holds commit 1 only: commit 2's events go, and the torn line.
    let log = Log::open(&dir, &r, 1).unwrap();
    assert_eq!((log.last(), log.last_commit()), (1, 1));
    append(&log, 2, 1, &r);
    let seqs: Vec<u64> = log.read(0, 10).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2]);
}

#[test]
fn an_abandoned_commit_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let r = Retention::default();
    let log = Log::open(&d.path().join("e"), &r, 0).unwrap();
    append(&log, 1, 1, &r);
    let p = log.write(vec![ev(2, "m")], &r).unwrap();
    log.abandon(p);
    append(&log, 2, 1, &r);
    let got: Vec<(u64, u64)> = log
        .read(0, 9)
        .unwrap()
        .iter()
        .map(|e| (e.seq, e.commit))
        .collect();
    assert_eq!(got, [(1, 1), (2, 2)]);
    drop(log);
    let log = Log::open(&d.path().join("e"), &r, 2).unwrap();
    assert_eq!(log.read(0, 9).unwrap().len(), 2);
}

#[test]
fn compaction_drops_old_segments_and_says_what_is_kept() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("events");
    let r = Retention {
        max_age: Duration::from_secs(3600),
        max_bytes: 1000,
    };
    let log = Log::open(&dir, &r, 0).unwrap();
    for c in 1..=40 {
        append(&log, c, 1, &r);
    }
    assert!(log.first() > 1, "nothing compacted");
    assert_eq!(log.last(), 40);
    // Still in memory, but compacted away: refused alike.
    let first = log.first();
    assert_eq!(log.read(1, 10), Err(ReadError::Compacted { first }));
    assert_eq!(log.read(0, 1).unwrap()[0].seq, first);
    // Past the memory's reach too: a reopened log reads from disk.
    drop(log);
    let log = Log::open(&dir, &r, 40).unwrap();
    let first = log.first();
    assert!(first > 1);
    assert_eq!(log.read(1, 10), Err(ReadError::Compacted { first }));
    assert_eq!(log.read(first, 100).unwrap().len() as u64, 41 - first);
    assert_eq!(log.read(0, 100).unwrap()[0].seq, first);
    let total: u64 = segment::list(&dir)
        .unwrap()
        .iter()
        .map(|(_, p)| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(total <= 1000 + 250, "{total} bytes kept");
}

#[test]
fn a_hole_is_told_from_memory_and_from_disk_and_past_the_end_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("events");
    let r = Retention::default();
    let log = Log::open(&dir, &r, 0).unwrap();
    append(&log, 1, 3, &r);
    // The catalog's mark says 4 and 5 were given: they are missing, 6 comes next.
    assert_eq!(log.continue_after(5), Some((4, 5)));
    append(&log, 2, 1, &r);
    let check = |log: &Log| {
        let seqs = |v: Vec<Event>| v.iter().map(|e| e.seq).collect::<Vec<u64>>();
        assert_eq!(seqs(log.read(0, 10).unwrap()), [1, 2, 3]);
        assert_eq!(log.read(4, 10), Err(ReadError::Missing { from: 4, to: 5 }));
        assert_eq!(log.read(5, 10), Err(ReadError::Missing { from: 4, to: 5 }));
        assert_eq!(seqs(log.read(6, 10).unwrap()), [6]);
        assert!(log.read(7, 10).unwrap().is_empty());
        assert_eq!(log.read(8, 10), Err(ReadError::Ahead { from: 8, last: 6 }));
    };
    check(&log);
    drop(log);
    // The same once reopened (from the segment, not memory); the mark is behind now.
    let log = Log::open(&dir, &r, 2).unwrap();
    assert_eq!(log.continue_after(5), None);
    check(&log);
}
