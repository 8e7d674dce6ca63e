//! The event log damaged on disk, on the real binary: a bad line mid-segment, a deleted
//! segment, a torn tail after a clean stop, the folder deleted. Nothing good is
//! destroyed, a seq is never given twice, and a reader is told of every hole.

mod common;

use std::time::Duration;

use common::*;
use modelreg::client::{ClientError, StreamLine};
use modelreg::events::{Event, Kind};
use modelreg::protocol::{ErrorCode, Request, Since};

/// An `events` request from `since`, not following.
fn req(since: u64) -> Request {
    Request::Events {
        since: Some(Since::Seq(since)),
        last: None,
        models: vec![],
        kinds: vec![],
        follow: false,
        heartbeat_ms: None,
    }
}

/// The events a stream from `since` sends, and the error that ended it, if any.
fn read_from(d: &TestDaemon, since: u64) -> (Vec<Event>, Option<ClientError>) {
    let mut out = Vec::new();
    let r = d.client().events(&req(since), |_, l| {
        if let StreamLine::Event(e) = l {
            out.push(*e);
        }
        true
    });
    (out, r.err())
}

fn seqs(es: &[Event]) -> Vec<u64> {
    es.iter().map(|e| e.seq).collect()
}

/// `n` changes of one event each (after one registration: 1 + n events).
fn changes(d: &TestDaemon, n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.pt");
    std::fs::write(&p, bytes(7, 100)).unwrap();
    let f = std::fs::File::open(&p).unwrap();
    let mut c = d.client();
    handed_over(|| c.register("m", "x.pt", &f, None, None)).expect("register");
    let mut c = d.client();
    for i in 0..n {
        if i % 2 == 0 {
            c.alias_set("m", "p", "v1").unwrap();
        } else {
            c.alias_remove("m", "p").unwrap();
        }
    }
}

/// The segments of the log, oldest first.
fn segments(d: &TestDaemon) -> Vec<std::path::PathBuf> {
    let mut segs: Vec<_> = std::fs::read_dir(d.root.path().join("events"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ndjson"))
        .collect();
    segs.sort();
    segs
}

/// The seq the next change gets (it makes one: an alias of a name not used before).
fn next_seq(d: &TestDaemon) -> u64 {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    d.client().alias_set("m", &format!("q{n}"), "v1").unwrap();
    let mut rx = Vec::new();
    d.client()
        .events(
            &Request::Events {
                since: None,
                last: Some(1),
                models: vec![],
                kinds: vec![],
                follow: false,
                heartbeat_ms: None,
            },
            |_, l| {
                if let StreamLine::Event(e) = l {
                    rx.push(*e);
                }
                true
            },
        )
        .unwrap();
    assert_eq!(rx[0].kind, Kind::AliasSet, "{rx:?}");
    rx[0].seq
}

fn code(e: &Option<ClientError>) -> Option<ErrorCode> {
    e.as_ref().and_then(|e| e.code())
}

#[test]
fn a_bad_line_mid_segment_is_skipped_kept_aside_and_the_events_after_it_are_kept() {
    let mut d = TestDaemon::start("settle: 300ms\n");
    changes(&d, 199);
    d.stop();
    let seg = segments(&d).pop().unwrap();
    let text = std::fs::read(&seg).unwrap();
    let mut lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
    lines.pop();
    assert_eq!(lines.len(), 200);
    let garbage = b"this is garbage \x00\xff not json".to_vec();
    lines[100] = &garbage;
    let mut damaged = lines.join(&b'\n');
    damaged.push(b'\n');
    std::fs::write(&seg, &damaged).unwrap();
    d.spawn();
    // A reader gets up to the hole, is told of it, and resumes after it.
    let (es, err) = read_from(&d, 0);
    assert_eq!(seqs(&es), (1..=100).collect::<Vec<u64>>());
    assert_eq!(code(&err), Some(ErrorCode::Missing), "{err:?}");
    assert!(err.unwrap().to_string().contains("101..101"));
    let (es, err) = read_from(&d, 102);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(seqs(&es), (102..=200).collect::<Vec<u64>>());
    // Numbering goes on after the highest seq ever given.
    assert_eq!(next_seq(&d), 201);
    // Nothing destroyed: the file as found is kept aside, and the segment keeps every
    // line (the new event appended after them).
    let mut aside = seg.clone().into_os_string();
    aside.push(".damaged");
    assert_eq!(std::fs::read(&aside).unwrap(), damaged);
    assert!(std::fs::read(&seg).unwrap().starts_with(&damaged));
    // The WARN names the line and says what was done, not "cut off".
    let log = d.log();
    assert!(log.contains("line 101") && log.contains("skipped"), "{log}");
    assert!(!log.contains("cut off"), "{log}");
}

#[test]
fn a_deleted_segment_is_warned_at_start_and_a_reader_is_told_of_the_hole() {
    let mut d = TestDaemon::start("settle: 300ms\nevents: {max_bytes: 16KiB}\n");
    changes(&d, 199);
    d.stop();
    let segs = segments(&d);
    assert!(segs.len() >= 4, "{segs:?}");
    let first_of =
        |p: &std::path::Path| -> u64 { p.file_stem().unwrap().to_str().unwrap().parse().unwrap() };
    let (gone, after) = (first_of(&segs[1]), first_of(&segs[2]));
    std::fs::remove_file(&segs[1]).unwrap();
    d.spawn();
    // Crossing the hole: the events before it, then the error naming where to resume.
    let (es, err) = read_from(&d, gone - 3);
    assert_eq!(seqs(&es), (gone - 3..gone).collect::<Vec<u64>>());
    assert_eq!(code(&err), Some(ErrorCode::Missing), "{err:?}");
    // Starting in it: the error at once; the raw line names the next kept seq.
    let (es, err) = read_from(&d, gone + 1);
    assert!(es.is_empty(), "{es:?}");
    assert!(err.unwrap().to_string().contains(&format!("since {after}")),);
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    writeln!(s, r#"{{"op":"events","since":{}}}"#, gone + 1).unwrap();
    let mut r = BufReader::new(s);
    // The error line alone: a stream that cannot start has no answer head.
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    let v: serde_json::Value = serde_json::from_str(&l).unwrap();
    assert_eq!(v["ok"], false, "{l}");
    assert_eq!(v["error"]["code"], "missing", "{l}");
    assert_eq!(v["error"]["first"], after, "{l}");
    let (es, err) = read_from(&d, after);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(es.last().unwrap().seq, 200);
    // Said at start too.
    let log = d.log();
    let range = format!("events {gone}..{} are missing", after - 1);
    assert!(log.contains(&range), "{log}");
}

#[test]
fn a_torn_tail_after_a_clean_stop_never_gives_its_seq_again() {
    let mut d = TestDaemon::start("settle: 300ms\n");
    changes(&d, 29);
    d.stop();
    let seg = segments(&d).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 40).unwrap();
    drop(f);
    d.spawn();
    let (es, err) = read_from(&d, 29);
    assert_eq!(seqs(&es), [29]);
    assert_eq!(code(&err), Some(ErrorCode::Missing), "{err:?}");
    assert_eq!(next_seq(&d), 31);
    let log = d.log();
    assert!(log.contains("events 30..30 are missing"), "{log}");
    // The mark survives another restart, with the hole still told.
    d.stop();
    d.spawn();
    let (_, err) = read_from(&d, 30);
    assert_eq!(code(&err), Some(ErrorCode::Missing), "{err:?}");
    assert_eq!(next_seq(&d), 32);
}

#[test]
fn a_deleted_event_folder_does_not_restart_the_numbering() {
    for crash in [false, true] {
        // Without a crash registry.yaml holds the mark; after one, the journal does.
        let mut d = TestDaemon::start("settle: 300ms\nregistry_write_interval: 1h\n");
        changes(&d, 29);
        if crash {
            d.kill();
        } else {
            d.stop();
        }
        std::fs::remove_dir_all(d.root.path().join("events")).unwrap();
        d.spawn();
        assert_eq!(next_seq(&d), 31, "crash {crash}");
        let log = d.log();
        assert!(
            log.contains("events 1..30 are missing"),
            "crash {crash}: {log}"
        );
        // Asking for what is gone: told; asking past the end: told, never left waiting.
        let (_, err) = read_from(&d, 5);
        assert_eq!(code(&err), Some(ErrorCode::Compacted), "{err:?}");
        let (_, err) = read_from(&d, 3023);
        assert_eq!(code(&err), Some(ErrorCode::BadRequest), "{err:?}");
        let msg = err.unwrap().to_string();
        assert!(msg.contains("the last is 31"), "{msg}");
    }
}

#[test]
fn a_since_that_is_not_a_whole_number_is_refused_clearly() {
    let d = TestDaemon::quick();
    for since in ["-1", "1.5", "true"] {
        let v = send_raw(
            &d.socket(),
            &format!(r#"{{"op":"events","since":{since}}}"#),
            &[],
        );
        let (code, msg) = error_of(&v);
        assert_eq!(code, "bad_request", "{v}");
        assert!(
            msg.contains("since must be a whole number >= 0 or \"now\""),
            "{msg}"
        );
    }
}

#[test]
fn the_cli_shows_the_last_matching_events_not_the_matching_among_the_last() {
    let d = TestDaemon::quick();
    changes(&d, 60);
    // One registration, then 60 alias events: --kind registered finds it.
    let out = ok(&d, &["events", "--kind", "registered"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(lines[0].trim_start().starts_with("1 "), "{out}");
    // The last 20 of the 30 alias_set events, ending with the newest.
    let out = ok(&d, &["events", "--kind", "alias_set"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 20, "{out}");
    assert!(lines[19].trim_start().starts_with("60 "), "{out}");
}

#[test]
fn old_segments_are_dropped_on_a_reload_and_logged() {
    let mut d = TestDaemon::start("settle: 300ms\nevents: {max_bytes: 16KiB}\n");
    changes(&d, 199);
    let segs = segments(&d);
    assert!(segs.len() >= 3, "{segs:?}");
    // The oldest segment a day old; then a reload that keeps an hour.
    let old = std::fs::File::options().write(true).open(&segs[0]).unwrap();
    old.set_modified(std::time::SystemTime::now() - Duration::from_secs(86_400))
        .unwrap();
    drop(old);
    d.write_config("settle: 300ms\nevents: {max_bytes: 16KiB, max_age: 1h}\n");
    d.signal(libc::SIGHUP);
    // The file goes before its log line is written: wait for both.
    wait_until(
        Duration::from_secs(30),
        "the old segment dropped and logged",
        || !segs[0].exists() && d.log().contains("dropped (compaction by max_age)"),
    );
    assert!(segs[1].exists());
}
