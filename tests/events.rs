//! The event log on the real binary: every change to the catalog as a numbered event,
//! durable across restarts and crashes, streamed on the socket and shown by the CLI.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::*;
use modelreg::client::{ClientError, StreamLine};
use modelreg::events::{Event, Kind};
use modelreg::protocol::{ErrorCode, Request, Since};

/// An `events` request from `since`, following or not.
fn req(since: u64, follow: bool) -> Request {
    Request::Events {
        since: Some(Since::Seq(since)),
        last: None,
        models: vec![],
        kinds: vec![],
        follow,
        heartbeat_ms: None,
    }
}

/// Every event retained from `since` (a stream without follow).
fn read_all(d: &TestDaemon, since: u64) -> Vec<Event> {
    let mut out = Vec::new();
    d.client()
        .events(&req(since, false), |_, l| {
            if let StreamLine::Event(e) = l {
                out.push(*e);
            }
            true
        })
        .expect("events");
    out
}

/// A follower on its own thread: its events arrive on the receiver.
fn follow(d: &TestDaemon, since: u64) -> mpsc::Receiver<Event> {
    let (tx, rx) = mpsc::channel();
    let mut c = d.client();
    std::thread::spawn(move || {
        let _ = c.events(&req(since, true), |_, l| match l {
            StreamLine::Event(e) => tx.send(*e).is_ok(),
            _ => true,
        });
    });
    rx
}

/// The next `n` events of `rx`, each within 30 s.
fn take(rx: &mpsc::Receiver<Event>, n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            rx.recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("event {} of {n} did not arrive", i + 1))
        })
        .collect()
}

fn summary(es: &[Event]) -> Vec<(Kind, String, Option<u32>, Option<String>)> {
    es.iter()
        .map(|e| (e.kind, e.model.clone(), e.version, e.alias.clone()))
        .collect()
}

fn hand_over(d: &TestDaemon, name: &str, bytes: &[u8], acc: f64) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.pt");
    std::fs::write(&p, bytes).unwrap();
    let f = std::fs::File::open(&p).unwrap();
    let mut metrics = serde_json::Map::new();
    metrics.insert("acc".into(), serde_json::json!(acc));
    let mut c = d.client();
    handed_over(|| c.register(name, "x.pt", &f, Some(metrics.clone()), None)).expect("register");
}

fn assert_numbered(es: &[Event]) {
    for w in es.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1, "seqs not consecutive: {es:#?}");
    }
}

#[test]
fn a_subscription_from_zero_sees_every_change_in_order() {
    let d = TestDaemon::start("settle: 300ms\nretention: {g: 1}\n");
    let rx = follow(&d, 0);
    let mut c = d.client();
    // By the inbox, by hand-over, then metrics from a sidecar written alone.
    write(&d.inbox().join("m.pt"), &bytes(1, 1000));
    d.wait_versions("m", 1);
    hand_over(&d, "m", &bytes(2, 1000), 0.5);
    write(
        &d.inbox().join("m.metrics.yaml"),
        sidecar(&[("acc", 0.9)]).as_bytes(),
    );
    wait_until(Duration::from_secs(30), "metrics from the sidecar", || {
        d.get("m", "v2")
            .is_ok_and(|v| v.metrics.get("acc") == Some(&0.9))
    });
    c.alias_set("m", "production", "v1").unwrap();
    c.alias_set("m", "production", "v2").unwrap();
    c.rollback("m", "production").unwrap();
    c.alias_remove("m", "production").unwrap();
    c.deprecate("m", "v1", Some("leak")).unwrap();
    c.rm("m", "v2", Some("bad"), false).unwrap();
    write(&d.inbox().join("g.pt"), &bytes(3, 100));
    d.wait_versions("g", 1);
    write(&d.inbox().join("g.pt"), &bytes(4, 100));
    d.wait_versions("g", 2);
    c.gc(None, false).unwrap();

    let s = |x: &str| Some(x.to_string());
    let m = || "m".to_string();
    let expected = vec![
        (Kind::Registered, m(), Some(1), None),
        (Kind::Registered, m(), Some(2), None),
        (Kind::MetricsUpdated, m(), Some(2), None),
        (Kind::AliasSet, m(), Some(1), s("production")),
        (Kind::AliasMoved, m(), Some(2), s("production")),
        (Kind::AliasRolledBack, m(), Some(1), s("production")),
        (Kind::AliasRemoved, m(), None, s("production")),
        (Kind::Deprecated, m(), Some(1), None),
        (Kind::Removed, m(), Some(2), None),
        (Kind::Registered, "g".into(), Some(1), None),
        (Kind::Registered, "g".into(), Some(2), None),
        (Kind::Gc, "g".into(), Some(1), None),
    ];
    let got = take(&rx, expected.len());
    assert_eq!(summary(&got), expected);
    assert_eq!(got[0].seq, 1);
    assert_numbered(&got);
    // What each carries: metrics, reasons, alias moves, the commit it came from.
    assert_eq!(got[1].metrics.as_ref().unwrap().get("acc"), Some(&0.5));
    assert_eq!(got[2].metrics.as_ref().unwrap().get("acc"), Some(&0.9));
    assert_eq!((got[4].from, got[4].to), (Some(1), Some(2)));
    assert_eq!(got[7].reason.as_deref(), Some("leak"));
    assert!(got[11].reason.as_deref().unwrap().starts_with("gc:"));
    assert!(got.windows(2).all(|w| w[0].commit <= w[1].commit));
    // Nothing more, and the log read back (not followed) says the same.
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    assert_eq!(read_all(&d, 0), got);
}

#[test]
fn a_reconnect_with_its_last_seq_misses_nothing() {
    let d = TestDaemon::quick();
    hand_over(&d, "m", &bytes(1, 100), 0.1);
    hand_over(&d, "m", &bytes(2, 100), 0.2);
    let rx = follow(&d, 0);
    let first = take(&rx, 2);
    drop(rx);
    // Changes made while nobody listens.
    let mut c = d.client();
    for v in ["v1", "v2", "v1"] {
        c.alias_set("m", "p", v).unwrap();
    }
    let rx = follow(&d, first[1].seq + 1);
    hand_over(&d, "m", &bytes(3, 100), 0.3);
    let rest = take(&rx, 4);
    let kinds: Vec<Kind> = rest.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            Kind::AliasSet,
            Kind::AliasMoved,
            Kind::AliasMoved,
            Kind::Registered
        ]
    );
    assert_eq!(rest[0].seq, 3);
    assert_numbered(&rest);
}

#[test]
fn events_compacted_away_are_answered_with_the_first_kept() {
    let d = TestDaemon::start("settle: 300ms\nevents: {max_bytes: 1KiB}\n");
    hand_over(&d, "m", &bytes(1, 100), 0.1);
    hand_over(&d, "m", &bytes(2, 100), 0.2);
    let mut c = d.client();
    for i in 0..30 {
        c.alias_set("m", "p", if i % 2 == 0 { "v1" } else { "v2" })
            .unwrap();
    }
    let kept = read_all(&d, 0);
    let first = kept[0].seq;
    assert!(first > 1, "nothing was compacted: {kept:?}");
    assert_eq!(kept.last().unwrap().seq, 32);
    let e = d
        .client()
        .events(&req(1, true), |_, _| true)
        .expect_err("seq 1 was compacted away");
    assert_eq!(e.code(), Some(ErrorCode::Compacted), "{e}");
    let ClientError::Remote(body) = &e else {
        panic!("{e}")
    };
    assert!(
        body.message
            .contains(&format!("the oldest kept is {first}")),
        "{e}"
    );
    // The raw error line names the first retained seq for programs.
    // (the error line alone: a stream that cannot start has no answer head)
    let line = send_raw_lines(&d, r#"{"op":"events","since":1}"#, 1);
    let v: serde_json::Value = serde_json::from_str(&line[0]).unwrap();
    assert_eq!(v["error"]["code"], "compacted");
    assert_eq!(v["error"]["first"], first);
    // The CLI says so and fails.
    let out = fails(&d, &["events", "--since", "1"]);
    assert!(out.contains("compacted"), "{out}");
    // From the first kept on, everything is there.
    assert_eq!(read_all(&d, first), kept);
}

/// The first `n` lines the daemon answers `line` with, on a raw connection.
fn send_raw_lines(d: &TestDaemon, line: &str, n: usize) -> Vec<String> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    (0..n)
        .map(|_| {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            l
        })
        .collect()
}

#[test]
fn events_survive_a_restart_and_a_sigkill_right_after_registrations_unchanged() {
    // registry.yaml rewritten rarely: after the kill, the journal holds the records.
    let mut d = TestDaemon::start("settle: 300ms\nregistry_write_interval: 1h\n");
    for i in 0..20 {
        hand_over(&d, "m", &bytes(100 + i, 200), i as f64);
    }
    d.stop();
    d.spawn();
    assert_eq!(read_all(&d, 0).len(), 20);
    for i in 20..40 {
        hand_over(&d, "m", &bytes(100 + i, 200), i as f64);
    }
    let seen = read_all(&d, 0);
    d.kill();
    d.spawn();
    let es = read_all(&d, 0);
    // The same events, times included: the last commit's, cut off and derived again
    // from its journal record, once came back stamped with the restart's time — a
    // second body for a seq a webhook receiver may already have had.
    assert_eq!(es, seen);
    let versions: Vec<u32> = es.iter().map(|e| e.version.unwrap()).collect();
    assert_eq!(versions, (1..=40).collect::<Vec<u32>>());
    assert!(es.iter().all(|e| e.kind == Kind::Registered));
    assert_eq!(es[0].seq, 1);
    assert_numbered(&es);
    // Numbering goes on after the restart, never reusing a seq.
    d.client().alias_set("m", "p", "v40").unwrap();
    assert_eq!(read_all(&d, 41)[0].seq, 41);
}

/// The segment file of the log (one: the default retention begins few).
fn segment(d: &TestDaemon) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(d.root.path().join("events"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    segs.pop().expect("a segment")
}

#[test]
fn start_up_derives_lost_events_again_and_drops_those_of_changes_not_kept() {
    let mut d = TestDaemon::start("settle: 300ms\nregistry_write_interval: 1h\n");
    for i in 0..6 {
        hand_over(&d, "m", &bytes(200 + i, 200), 0.5);
    }
    d.kill();
    // A crash between the journal's fsync and the events': the last three events are
    // gone and a fourth torn; an event of a change whose record never became durable.
    let seg = segment(&d);
    let text = std::fs::read_to_string(&seg).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut kept = lines[..3].join("\n");
    kept.push('\n');
    kept.push_str(&lines[3][..20]);
    std::fs::write(&seg, &kept).unwrap();
    d.spawn();
    let es = read_all(&d, 0);
    let versions: Vec<u32> = es.iter().map(|e| e.version.unwrap()).collect();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
    assert_numbered(&es);
    let log = d.log();
    assert!(log.contains("cut off"), "{log}");
    // The last commit left in the log (3) may be incomplete: derived again with 4..6.
    assert!(
        log.contains("derived 4 event(s) again from journal records 3..6"),
        "{log}"
    );
    d.kill();
    let mut text = std::fs::read_to_string(&seg).unwrap();
    // The commit in flight at a crash: its record (the last one's next) not durable.
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let next = last["commit"].as_u64().unwrap() + 1;
    text.push_str(&format!(r#"{{"seq":7,"time":"2026-11-27T10:00:00Z","commit":{next},"kind":"registered","model":"m","version":7}}"#));
    text.push('\n');
    std::fs::write(&seg, text).unwrap();
    d.spawn();
    assert_eq!(read_all(&d, 0).len(), 6);
    assert!(
        d.log().contains("the commit a crash interrupted"),
        "{}",
        d.log()
    );
    hand_over(&d, "m", &bytes(300, 200), 0.5);
    let last = read_all(&d, 7);
    assert_eq!((last[0].seq, last[0].version), (7, Some(7)));
}

#[test]
fn the_cli_shows_the_last_events_filters_and_prints_json() {
    let d = TestDaemon::quick();
    hand_over(&d, "resnet18", &bytes(1, 100), 0.1);
    hand_over(&d, "bert", &bytes(2, 100), 0.2);
    let mut c = d.client();
    for _ in 0..25 {
        c.alias_set("bert", "p", "v1").unwrap();
        c.alias_remove("bert", "p").unwrap();
    }
    // 52 events: the last 20 without --since, as a table.
    let out = ok(&d, &["events"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 20, "{out}");
    assert!(
        lines[19].contains("alias_removed") && lines[19].contains("bert"),
        "{out}"
    );
    assert!(lines[19].trim_start().starts_with("52 "), "{out}");
    // Filters by model (a glob) and kind, from a seq, as JSON.
    let out = ok(&d, &["events", "--since", "0", "--model", "res*", "--json"]);
    let es: Vec<Event> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(es.len(), 1, "{out}");
    assert_eq!(
        (es[0].kind, es[0].model.as_str()),
        (Kind::Registered, "resnet18")
    );
    let out = ok(&d, &["events", "--since", "0", "--kind", "alias_set"]);
    assert_eq!(out.lines().count(), 25, "{out}");
    let out = fails(&d, &["events", "--kind", "nope"]);
    assert!(out.contains("no event kind \"nope\""), "{out}");
    // --follow prints what comes next.
    let mut child = std::process::Command::new(BIN)
        .args([
            "--socket",
            d.socket().to_str().unwrap(),
            "events",
            "--follow",
            "--since",
            "now",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout).lines() {
            if tx.send(l.unwrap()).is_err() {
                break;
            }
        }
    });
    // The follower is connected once its stream has begun: poll by making changes
    // until one shows (each is an event either way).
    let mut seen = None;
    for _ in 0..100 {
        c.alias_set("resnet18", "prod", "v1").unwrap();
        c.alias_remove("resnet18", "prod").unwrap();
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            seen = Some(l);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let l = seen.expect("the follower printed nothing");
    assert!(l.contains("resnet18") && l.contains("alias_"), "{l}");
}

#[test]
fn a_stream_sends_heartbeats_while_idle_and_is_not_closed_as_idle() {
    let d = TestDaemon::quick();
    let lines = send_raw_lines(
        &d,
        r#"{"op":"events","since":"now","follow":true,"heartbeat_ms":200}"#,
        4,
    );
    let head: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(head["ok"], true, "{lines:?}");
    for l in &lines[1..] {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["heartbeat"], true, "{l}");
        assert_eq!(v["last"], 0, "{l}");
    }
}

#[test]
fn a_subscription_is_not_closed_to_admit_others_at_the_connection_limit() {
    // An open-files limit of 300 leaves the daemon room for 150 connections.
    let mut d = TestDaemon::new("settle: 300ms\n");
    let mut sh = std::process::Command::new("sh");
    sh.arg("-c")
        .arg("ulimit -n 300 && exec \"$0\" serve --root \"$1\"")
        .arg(BIN)
        .arg(d.root.path());
    d.spawn_via(sh);
    hand_over(&d, "m", &bytes(1, 100), 0.1);
    let rx = follow(&d, 0);
    assert_eq!(take(&rx, 1)[0].kind, Kind::Registered);
    // 400 idle connections: each past the limit closes the longest idle one, which
    // the subscription (now the oldest) must not be.
    let others: Vec<std::os::unix::net::UnixStream> = (0..400)
        .map(|_| std::os::unix::net::UnixStream::connect(d.socket()).expect("connect"))
        .collect();
    d.client().alias_set("m", "p", "v1").unwrap();
    assert_eq!(take(&rx, 1)[0].kind, Kind::AliasSet);
    // The limit was the one meant (the flood went past it).
    let log = d.log();
    assert!(log.contains("up to 150 connections"), "{log}");
    assert_eq!(others.len(), 400);
}

#[test]
fn a_subscriber_that_does_not_read_holds_up_nothing_and_is_told_to_resume() {
    use std::io::{Read, Write};
    let d = TestDaemon::quick();
    let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    s.write_all(b"{\"op\":\"events\",\"since\":0,\"follow\":true}\n")
        .unwrap();
    // Events of ~20 KB each (500 metrics), far more than the socket buffers hold,
    // while the subscriber reads nothing: every change is still answered.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.pt");
    std::fs::write(&p, bytes(1, 100)).unwrap();
    let mut c = d.client();
    for round in 0..40 {
        let metrics: serde_json::Map<String, serde_json::Value> = (0..500)
            .map(|i| {
                (
                    format!("metric_{i:04}"),
                    serde_json::json!(round * 1000 + i),
                )
            })
            .collect();
        let f = std::fs::File::open(&p).unwrap();
        handed_over(|| c.register("m", "x.pt", &f, Some(metrics.clone()), None)).expect("register");
    }
    // Past WRITE_TIMEOUT (10 s) unread, the stream ends with the seq to resume from.
    std::thread::sleep(Duration::from_secs(12));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    let last = all.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(v["error"]["code"], "too_slow", "{last}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("ask again with since"), "{msg}");
    // Resuming from there gives the rest.
    let n: u64 = msg
        .split("since ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // Nothing is skipped: the resume point is at most one past the last whole event.
    let got = all
        .lines()
        .filter_map(|l| serde_json::from_str::<Event>(l).ok())
        .map(|e| e.seq)
        .max()
        .unwrap_or(0);
    assert!(n <= got + 1, "resume at {n}, but only up to {got} arrived");
    let rest = read_all(&d, n);
    assert_eq!(rest.last().unwrap().seq, 40);
}

/// A subscriber far behind on many small events is cut mid-batch, most likely inside
/// a line: the `too_slow` error still comes as a line of its own, and every line of the
/// stream is JSON (an NDJSON reader parses each).
#[test]
fn a_too_slow_stream_cut_inside_an_event_still_ends_with_a_whole_error_line() {
    use std::io::{Read, Write};
    let d = TestDaemon::quick();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.pt");
    let mut c = d.client();
    for i in 0..2u64 {
        std::fs::write(&p, bytes(i, 100)).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        handed_over(|| c.register("m", "x.pt", &f, None, None)).expect("register");
    }
    // ~3,000 events of ~200 bytes: several batches of 512, far more than the socket holds.
    for i in 0..3000 {
        let v = if i % 2 == 0 { "v1" } else { "v2" };
        c.alias_set("m", "production", v).expect("alias set");
    }
    let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    s.write_all(b"{\"op\":\"events\",\"since\":0,\"follow\":true}\n")
        .unwrap();
    // Past WRITE_TIMEOUT (10 s) unread.
    std::thread::sleep(Duration::from_secs(12));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    for l in all.lines() {
        let parsed = serde_json::from_str::<serde_json::Value>(l);
        assert!(parsed.is_ok(), "a line that is not JSON: {l:.300}");
    }
    let last = all.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(v["error"]["code"], "too_slow", "{last:.300}");
}
