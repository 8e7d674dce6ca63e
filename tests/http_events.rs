//! The event log as Server-Sent Events (`GET /api/v1/events`) on the real binary: read
//! with curl, raw connections and headless Chromium's EventSource, resumed with
//! `Last-Event-ID`, the compacted-away case, tokens, the daemon's stop; and the Python
//! client's `reg.events()` over the socket and over HTTP
//! (clients/python/tests/over_events.py).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::http::{address, get, request};
use common::*;

const CONFIG: &str = "settle: 200ms\nhttp:\n  listen: 127.0.0.1:0\n  anonymous_read: true\n";

/// Hands `bytes` over as a new version of `name`.
fn hand_over(d: &TestDaemon, name: &str, bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.pt");
    std::fs::write(&p, bytes).unwrap();
    let f = std::fs::File::open(&p).unwrap();
    let mut c = d.client();
    handed_over(|| c.register(name, "x.pt", &f, None, None)).expect("register");
}

/// The SSE blocks of `text`: each block's `(field, value)` lines, comments as `("", text)`.
fn blocks(text: &str) -> Vec<Vec<(String, String)>> {
    text.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|b| {
            b.lines()
                .map(|l| match l.strip_prefix(':') {
                    Some(c) => (String::new(), c.trim().to_string()),
                    None => {
                        let (k, v) = l.split_once(':').unwrap_or((l, ""));
                        (k.to_string(), v.trim_start().to_string())
                    }
                })
                .collect()
        })
        .collect()
}

fn field<'a>(b: &'a [(String, String)], name: &str) -> Option<&'a str> {
    b.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The `(id, event, data)` of every event block of `text` (comments left out).
fn sse_events(text: &str) -> Vec<(Option<u64>, String, serde_json::Value)> {
    blocks(text)
        .iter()
        .filter_map(|b| {
            let data = field(b, "data")?;
            Some((
                field(b, "id").map(|i| i.parse().unwrap()),
                field(b, "event").unwrap_or("message").to_string(),
                serde_json::from_str(data).unwrap(),
            ))
        })
        .collect()
}

#[test]
fn curl_follows_the_stream_and_gets_each_change_with_its_seq_and_kind() {
    let d = TestDaemon::start(CONFIG);
    let addr = address(&d);
    let mut curl = Command::new("curl")
        .args(["-sN", "--max-time", "60"])
        .arg(format!(
            "http://{addr}/api/v1/events?since=now&follow=true&heartbeat_ms=200"
        ))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl is installed");
    let (tx, rx) = mpsc::channel();
    let out = curl.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            if tx.send(l.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    // The head comes at once: the stream is open before anything is registered.
    let head = rx.recv_timeout(Duration::from_secs(30)).expect("a head");
    assert!(head.starts_with(": events {"), "{head}");
    hand_over(&d, "m", &bytes(1, 100));
    d.client().alias_set("m", "prod", "v1").unwrap();
    let mut text = String::new();
    // An idle stream's heartbeat says how far it has read (the `id:` of its block).
    while sse_events(&text).len() < 2 || !text.contains(": heartbeat\nid: 2\n") {
        let l = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("the stream stopped short: {text}"));
        text.push_str(&l);
        text.push('\n');
    }
    let _ = curl.kill();
    let _ = curl.wait();
    let evs = sse_events(&text);
    assert_eq!(evs[0].0, Some(1), "{text}");
    assert_eq!(evs[0].1, "registered");
    assert_eq!(evs[0].2["model"], "m");
    assert_eq!(evs[0].2["seq"], 1);
    assert_eq!(evs[1].0, Some(2));
    assert_eq!(evs[1].1, "alias_set");
    assert_eq!(evs[1].2["alias"], "prod");
    // The same JSON the socket sends, fields in the same order.
    let socket = ok(&d, &["events", "--since", "1", "--json"]);
    let first_line = socket.lines().next().unwrap();
    assert!(
        text.contains(&format!("data: {first_line}\n")),
        "{text}\n{socket}"
    );
}

#[test]
fn last_event_id_resumes_after_it_and_filters_apply() {
    let d = TestDaemon::start(CONFIG);
    let addr = address(&d);
    hand_over(&d, "m", &bytes(1, 100));
    hand_over(&d, "other", &bytes(2, 100));
    d.client().alias_set("m", "prod", "v1").unwrap();
    let a = request(
        &addr,
        "GET",
        "/api/v1/events?since=0",
        &[("Last-Event-ID", "1")],
    );
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("text/event-stream"));
    let text = String::from_utf8(a.body).unwrap();
    let evs = sse_events(&text);
    let ids: Vec<_> = evs.iter().map(|e| e.0).collect();
    assert_eq!(ids, [Some(2), Some(3), None], "{text}");
    assert_eq!(evs[2].1, "end");
    assert_eq!(evs[2].2["last"], 3);
    let a = get(
        &addr,
        "/api/v1/events?since=0&model=m*&kind=alias_set,registered",
    );
    let evs = sse_events(&String::from_utf8(a.body).unwrap());
    let kinds: Vec<_> = evs.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(kinds, ["registered", "alias_set", "end"]);
    // Bad parameters are told as the socket tells them.
    let a = get(&addr, "/api/v1/events?kind=nope");
    assert_eq!(a.status, 400);
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("kinds are")
    );
    let a = get(&addr, "/api/v1/events?since=soon");
    assert_eq!(a.status, 400);
}

#[test]
fn events_compacted_away_are_answered_410_with_the_first_kept() {
    let d = TestDaemon::start(&format!("{CONFIG}events: {{max_bytes: 1KiB}}\n"));
    let addr = address(&d);
    hand_over(&d, "m", &bytes(1, 100));
    hand_over(&d, "m", &bytes(2, 100));
    let mut c = d.client();
    for i in 0..30 {
        c.alias_set("m", "p", if i % 2 == 0 { "v1" } else { "v2" })
            .unwrap();
    }
    // Before the stream starts: a status an EventSource does not retry, and JSON.
    let a = get(&addr, "/api/v1/events?since=1&follow=true");
    assert_eq!(a.status, 410);
    let v = a.json();
    assert_eq!(v["error"]["code"], "compacted");
    let first = v["error"]["first"].as_u64().unwrap();
    assert!(first > 1, "{v}");
    // From there on, everything kept.
    let a = get(&addr, &format!("/api/v1/events?since={first}"));
    let evs = sse_events(&String::from_utf8(a.body).unwrap());
    assert_eq!(evs[0].0, Some(first));
    assert_eq!(evs.last().unwrap().2["last"], 32);
}

#[test]
fn reading_events_over_http_needs_a_token() {
    let d = TestDaemon::start("settle: 200ms\nhttp:\n  listen: 127.0.0.1:0\n");
    let addr = address(&d);
    let token = ok(&d, &["token", "create", "r", "--scope", "read"])
        .trim()
        .to_string();
    assert_eq!(get(&addr, "/api/v1/events?since=0").status, 401);
    let a = request(
        &addr,
        "GET",
        "/api/v1/events?since=0",
        &[("Authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(a.status, 200);
    assert!(String::from_utf8(a.body).unwrap().contains("event: end"));
}

#[test]
fn a_stream_ends_with_an_error_event_when_the_daemon_stops_and_does_not_hold_it_up() {
    let mut d = TestDaemon::start(CONFIG);
    let addr = address(&d);
    hand_over(&d, "m", &bytes(1, 100));
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /api/v1/events?since=0&follow=true HTTP/1.1\r\nHost: {addr}\r\n\r\n"
    )
    .unwrap();
    // Read until the first event is in: the stream is live.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("event: registered") {
        let n = s.read(&mut buf).expect("the stream sends the event");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let status = d.stop();
    assert!(status.success(), "{status:?}");
    // The stream ended (the daemon is gone) with the reason and where to resume.
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("event: error"), "{text}");
    assert!(text.contains("\"code\":\"shutting_down\""), "{text}");
    assert!(text.contains("\"resume\":2"), "{text}");
    // Not held to the end of the grace: the listener said nothing of busy connections.
    assert!(!d.log().contains("still busy"), "{}", d.log());
}

#[test]
fn python_reads_events_over_the_socket_and_over_http_alike() {
    common::tools::python_unittest(&["-v", "over_events"]);
}

#[test]
fn a_browsers_event_source_reads_the_stream() {
    let d = TestDaemon::start(CONFIG);
    let addr = address(&d);
    hand_over(&d, "m", &bytes(1, 100));
    d.client().alias_set("m", "prod", "v1").unwrap();
    // A page (from a file: cross-origin, hence --disable-web-security) whose
    // EventSource writes what it hears into the DOM, closing the stream after two
    // events so that the page goes idle and the DOM is dumped.
    let dir = tempfile::tempdir().unwrap();
    let browser = common::tools::Browser::new(dir.path());
    let page = common::tools::event_source_page(
        dir.path(),
        &format!("http://{addr}/api/v1/events?since=0&follow=true&heartbeat_ms=200"),
        &["registered", "alias_set"],
        2,
    );
    let dom = browser.run(
        &page,
        &[
            "--disable-web-security",
            "--virtual-time-budget=3000",
            "--dump-dom",
        ],
    );
    assert!(
        dom.contains("1 registered m|2 alias_set m|"),
        "the page heard: {dom}"
    );
}
