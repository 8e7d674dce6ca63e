//! Team mode's one event log, end to end (real daemons, a real PostgreSQL 15,
//! tests/common/postgres.rs): every host serves the catalog's event log, numbered
//! team-wide (same seqs, kinds, models, versions, order and `commit` on every host, a
//! host started later included, over the socket and over HTTP); a subscriber on one
//! host sees another host's registration with the catalog's seq and can `get` that
//! version there at once; `migrate` numbers the team's events on after the local
//! registry's. Every wait polls with a deadline; nothing asserts a duration.

mod common;
#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/team_engines.rs"]
mod team_engines;

use std::sync::mpsc;
use std::time::Duration;

use common::http::{address, get};
use common::*;
use modelreg::client::{Client, StreamLine};
use modelreg::events::{Event, Kind};
use modelreg::protocol::{Request, Since};
use team_engines::Engines;

/// How long a change may take to reach a host before the test fails.
const REACH: Duration = Duration::from_secs(30);

/// Each host serves HTTP too (SSE), readable without a token.
const HTTP: &str = "http:\n  listen: 127.0.0.1:0\n  anonymous_read: true\n";

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

/// Every event `d` serves from `since` (a stream without follow).
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

/// What must agree between hosts: seq, commit, kind, model, version, alias, from, to.
type Line = (u64, u64, Kind, String, Option<u32>, Option<String>);

fn lines(es: &[Event]) -> Vec<Line> {
    es.iter()
        .map(|e| {
            let alias = e
                .alias
                .clone()
                .map(|a| format!("{a}:{:?}->{:?}", e.from, e.to));
            (e.seq, e.commit, e.kind, e.model.clone(), e.version, alias)
        })
        .collect()
}

/// The catalog's own event log: `seq change_seq kind model version` a line.
fn catalog_log(team: &Engines) -> Vec<(u64, u64, String, String, Option<u32>)> {
    let text = team.pg.psql(
        "team",
        "SELECT seq, change_seq, event->>'kind', event->>'model', coalesce(event->>'version', '-')
         FROM events ORDER BY seq",
    );
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].to_string(),
                f[3].to_string(),
                f[4].parse().ok(),
            )
        })
        .collect()
}

/// The events of `d`'s SSE stream from 0, without follow (ends with `event: end`).
fn sse(d: &TestDaemon) -> Vec<(u64, String, serde_json::Value)> {
    let a = get(&address(d), "/api/v1/events?since=0");
    let text = String::from_utf8_lossy(&a.body).into_owned();
    assert_eq!(a.status, 200, "{text}");
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let (mut id, mut kind, mut data) = (None, None, None);
        for l in block.lines() {
            if let Some(v) = l.strip_prefix("id: ") {
                id = v.parse().ok();
            } else if let Some(v) = l.strip_prefix("event: ") {
                kind = Some(v.to_string());
            } else if let Some(v) = l.strip_prefix("data: ") {
                data = serde_json::from_str(v).ok();
            }
        }
        if let (Some(id), Some(kind), Some(data)) = (id, kind, data)
            && kind != "end"
        {
            out.push((id, kind, data));
        }
    }
    out
}

/// Waits until `d` serves at least `n` events, and returns them.
fn wait_events(d: &TestDaemon, who: &str, n: usize) -> Vec<Event> {
    let mut got = Vec::new();
    wait_until(REACH, &format!("{who} to serve {n} events"), || {
        got = read_all(d, 0);
        got.len() >= n
    });
    got
}

#[test]
fn every_host_serves_the_catalogs_event_log_with_the_same_seqs_in_the_same_order() {
    let team = Engines::start();
    let (a, b) = (team.host_with(HTTP), team.host_with(HTTP));

    // A subscriber following on B from the start: on each registration it asks B for
    // the version at once, on a connection of its own.
    let (tx, rx) = mpsc::channel::<(Event, Result<u32, String>)>();
    let (mut sub, socket) = (b.client(), b.socket());
    std::thread::spawn(move || {
        let _ = sub.events(&req(1, true), |_, l| match l {
            StreamLine::Event(e) => {
                let found = match (e.kind, e.version) {
                    (Kind::Registered, Some(n)) => Client::connect(&socket)
                        .and_then(|mut c| c.get(&e.model, Some(&format!("v{n}")), None, None))
                        .map(|v| v.number)
                        .map_err(|err| err.to_string()),
                    _ => Ok(0),
                };
                tx.send((*e, found)).is_ok()
            }
            _ => true,
        });
    });

    // Registrations on A and on B, an alias move on A, a deprecation on B.
    register_bytes(&a, "resnet", &bytes(1, 30_000));
    register_bytes(&b, "resnet", &bytes(2, 30_000));
    wait_until(REACH, "A to hold resnet v2", || {
        a.versions("resnet").len() == 2
    });
    ok(&a, &["alias", "set", "resnet", "production", "v1"]);
    ok(&a, &["alias", "set", "resnet", "production", "v2"]);
    wait_until(REACH, "B to see production -> v2", || {
        b.get("resnet", "production").is_ok_and(|v| v.number == 2)
    });
    ok(&b, &["deprecate", "resnet", "v1", "--reason", "eval bug"]);

    let want = [
        (Kind::Registered, Some(1)),
        (Kind::Registered, Some(2)),
        (Kind::AliasSet, Some(1)),
        (Kind::AliasMoved, Some(2)),
        (Kind::Deprecated, Some(1)),
    ];
    let on_a = wait_events(&a, "A", want.len());
    let on_b = wait_events(&b, "B", want.len());
    // A host that joins afterwards reads the same log from PostgreSQL.
    let c = team.host_with(HTTP);
    let on_c = wait_events(&c, "C", want.len());

    let kinds: Vec<(Kind, Option<u32>)> = on_a.iter().map(|e| (e.kind, e.version)).collect();
    assert_eq!(kinds, want, "A: {on_a:#?}");
    let seqs: Vec<u64> = on_a.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    assert_eq!(lines(&on_b), lines(&on_a), "B and A differ");
    assert_eq!(lines(&on_c), lines(&on_a), "C and A differ");
    // The JSON is the same too (the time the writing host stamped included).
    assert_eq!(on_b, on_a);
    assert_eq!(on_c, on_a);

    // What they serve is the catalog's log: its seqs, `commit` its change seqs.
    let log = catalog_log(&team);
    let served: Vec<(u64, u64, String, String, Option<u32>)> = (on_a.iter())
        .map(|e| {
            let kind = e.kind.name().to_string();
            (e.seq, e.commit, kind, e.model.clone(), e.version)
        })
        .collect();
    assert_eq!(served, log);

    // The subscriber on B got each with the catalog's seq, and found every registered
    // version on B the moment it saw the event (A's v1 included).
    let mut seen = Vec::new();
    for i in 0..want.len() {
        let (e, found) = rx
            .recv_timeout(REACH)
            .unwrap_or_else(|_| panic!("event {} did not reach the subscriber on B", i + 1));
        if e.kind == Kind::Registered {
            assert_eq!(found, Ok(e.version.unwrap()), "get on B right after {e:?}");
        }
        seen.push(e);
    }
    assert_eq!(lines(&seen), lines(&on_a));

    // Over HTTP (SSE) too, on every host.
    for (who, d) in [("A", &a), ("B", &b), ("C", &c)] {
        let got: Vec<(u64, String)> = sse(d).into_iter().map(|(id, k, _)| (id, k)).collect();
        let want: Vec<(u64, String)> = (on_a.iter())
            .map(|e| (e.seq, e.kind.name().to_string()))
            .collect();
        assert_eq!(got, want, "SSE on {who}");
    }

    // `--last N` and `since` mean the same on every host.
    for d in [&a, &b, &c] {
        let out = ok(d, &["events", "--since", "4", "--json"]);
        let seqs: Vec<u64> = (out.lines())
            .map(|l| serde_json::from_str::<Event>(l).unwrap().seq)
            .collect();
        assert_eq!(seqs, vec![4, 5], "{out}");
    }
}

#[test]
fn migrate_numbers_the_teams_events_on_after_the_local_registrys() {
    let team = Engines::start();
    // A local registry with events 1..=3.
    let mut d = TestDaemon::start("settle: 300ms\n");
    register_bytes(&d, "bert", &bytes(1, 20_000));
    register_bytes(&d, "bert", &bytes(2, 20_000));
    ok(&d, &["alias", "set", "bert", "production", "v1"]);
    let local = read_all(&d, 0);
    assert_eq!(local.last().map(|e| e.seq), Some(3), "{local:#?}");
    d.stop();

    let out = std::process::Command::new(BIN)
        .args(["migrate", "--root", d.root.path().to_str().unwrap()])
        .args(["--to", &team.pg.url("team"), "--blobs"])
        .arg(team.blobs.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("numbers on after 3"),
        "{}",
        stdout(&out)
    );

    // The same root in team mode: its subscribers see the numbers go on.
    d.write_config(&format!(
        "settle: 300ms\ncatalog: \"{}\"\nblobs: {}\n",
        team.pg.url("team"),
        team.blobs.path().display()
    ));
    d.spawn();
    let last = Request::Events {
        since: None,
        last: Some(5),
        models: vec![],
        kinds: vec![],
        follow: false,
        heartbeat_ms: None,
    };
    let head = d
        .client()
        .events(&last, |_, _| true)
        .expect("events --last 5");
    assert_eq!(head["last"], 3, "{head}");
    assert_eq!(head["first"], 4, "{head}");
    // Before 4 is compacted away from the team log's point of view.
    let err = fails(&d, &["events", "--since", "1"]);
    assert!(err.contains("compacted"), "{err}");

    ok(&d, &["alias", "set", "bert", "production", "v2"]);
    let other = team.host();
    register_bytes(&other, "bert", &bytes(3, 20_000));
    for (who, h) in [("the migrated host", &d), ("another host", &other)] {
        let mut got = Vec::new();
        wait_until(REACH, &format!("{who} to serve events 4 and 5"), || {
            got = read_all(h, 4);
            got.len() >= 2
        });
        let kinds: Vec<(u64, Kind, Option<u32>)> =
            got.iter().map(|e| (e.seq, e.kind, e.version)).collect();
        assert_eq!(
            kinds,
            vec![
                (4, Kind::AliasMoved, Some(2)),
                (5, Kind::Registered, Some(3))
            ],
            "{who}"
        );
    }
}

#[test]
fn with_the_catalog_down_a_stream_serves_what_the_host_applied_and_an_older_read_names_the_catalog_and_the_seq()
 {
    let mut team = Engines::start();
    let a = team.host();
    register_bytes(&a, "vit", &bytes(1, 20_000));
    register_bytes(&a, "vit", &bytes(2, 20_000));
    wait_events(&a, "A", 2);
    // B starts afterwards: it knows the bounds from its snapshot, holds no event in
    // memory, and reads them from PostgreSQL.
    let b = team.host();
    assert_eq!(wait_events(&b, "B", 2).len(), 2);
    team.pg.stop();
    // A served both from memory: still served.
    let on_a: Vec<u64> = read_all(&a, 1).iter().map(|e| e.seq).collect();
    assert_eq!(on_a, vec![1, 2]);
    // B holds none in memory (its earlier read went to PostgreSQL, which is down now):
    // refused with an error naming the team's log, the catalog and where to resume.
    let err = fails(&b, &["events", "--since", "1"]);
    assert!(err.contains("team's event log"), "{err}");
    assert!(err.contains("catalog socket"), "{err}");
    assert!(err.contains("continue with since 1"), "{err}");
    team.pg.resume();
    let on_b: Vec<u64> = read_all(&b, 1).iter().map(|e| e.seq).collect();
    assert_eq!(on_b, vec![1, 2]);
}

/// A subscriber that moves to a host a moment behind (it has not applied the last event
/// yet) with `since` one past the last event it saw elsewhere waits for this host to
/// catch up (and then has that event, and the stream goes on from there); it was refused as past the end (`400`), which an
/// `EventSource` never retries. The host is held behind by stopping its process
/// (SIGSTOP) while the other registers, and let go while the request waits.
#[test]
fn a_subscriber_moving_to_a_host_a_moment_behind_waits_for_it_rather_than_being_refused() {
    let team = Engines::start();
    let (a, b) = (team.host(), team.host());
    register_seeded(&a, "mover", 0);
    wait_events(&b, "B", 1);
    for round in 1..=3u64 {
        let pid = b.pid().to_string();
        let signal = |s: &str| {
            let st = std::process::Command::new("kill")
                .args([s, &pid])
                .status()
                .unwrap();
            assert!(st.success(), "kill {s} {pid}");
        };
        signal("-STOP");
        register_seeded(&a, "mover", round);
        let seen = wait_events(&a, "A", 1 + round as usize);
        let last = seen.last().unwrap().seq;
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let next = req(last + 1, false);
                tx.send(b.client().events(&next, |_, _| true)).unwrap()
            });
            std::thread::sleep(Duration::from_millis(300));
            signal("-CONT");
        });
        let answer = rx.recv().unwrap();
        assert!(answer.is_ok(), "round {round}: {answer:?}");
        let got = read_all(&b, last);
        assert_eq!(lines(&got), lines(&seen[seen.len() - 1..]), "round {round}");
    }
}
