//! Event subscriptions attacked from the client's side, on the real binary: a subscriber
//! that pauses past the write timeout, a stream cut inside a line or by a SIGKILL (the
//! CLI and the Python client say where to continue), `modelreg events --url` over
//! Server-Sent Events, refusals before a stream starts (socket: the error line alone;
//! SSE: a status and a JSON body), CORS for a browser on another origin, and one message
//! for a bad `since` on every path.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::http::{address, get, request};
use common::*;

const HTTP: &str = "settle: 200ms\nhttp:\n  listen: 127.0.0.1:0\n  anonymous_read: true\n";

/// Two versions of `m`, then `flips` alias events (the alias moved back and forth).
fn changes(d: &TestDaemon, flips: usize) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.pt");
    let mut c = d.client();
    for i in 0..2u64 {
        std::fs::write(&p, bytes(i, 100)).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        handed_over(|| c.register("m", "x.pt", &f, None, None)).expect("register");
    }
    for i in 0..flips {
        let v = if i % 2 == 0 { "v1" } else { "v2" };
        c.alias_set("m", "p", v).expect("alias set");
    }
}

/// The seq to continue from that `message` names (`... since N ...`).
fn since_in(message: &str) -> u64 {
    let at = message.find("since ").expect("a since in the message") + "since ".len();
    message[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

/// A raw socket connection with a 4 KiB receive buffer that asks `line`.
fn small_reader(d: &TestDaemon, line: &str) -> UnixStream {
    use std::os::fd::AsRawFd;
    let s = UnixStream::connect(d.socket()).unwrap();
    let size: libc::c_int = 4096;
    // SAFETY: setsockopt reads `size` for the duration of the call; the fd is open.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    (&s).write_all(format!("{line}\n").as_bytes()).unwrap();
    s
}

/// A subscriber (a raw client, and the CLI behind a pipe nobody reads) that stops
/// reading for longer than the write timeout and then reads again gets the rest of the
/// line the timeout cut and a `too_slow` line naming exactly the seq after the last
/// event it got; the daemon logs it at info. (Before, the closing write had the same
/// 10 s as the first: a client back after 22 s got a cut line and EOF.)
#[test]
fn a_subscriber_paused_past_the_write_timeout_gets_a_whole_last_line_and_where_to_resume() {
    let d = TestDaemon::quick();
    changes(&d, 2500);
    let s = small_reader(&d, r#"{"op":"events","since":0,"follow":true}"#);
    let mut cli = Command::new(BIN)
        .arg("--socket")
        .arg(d.socket())
        .args(["events", "--follow", "--since", "0", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Past WRITE_TIMEOUT (10 s) and past what a second 10 s would have allowed.
    std::thread::sleep(Duration::from_secs(22));
    let mut s = s;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let all = String::from_utf8(all).unwrap();
    assert!(all.ends_with('\n'), "cut: {:.200}", &all[all.len() - 200..]);
    let mut seqs = Vec::new();
    for l in all.lines().skip(1) {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:.300}"));
        if let Some(s) = v["seq"].as_u64() {
            seqs.push(s);
        }
    }
    let last = all.lines().last().unwrap();
    assert!(
        last.starts_with(r#"{"ok":false,"error":{"code":"too_slow""#),
        "{last}"
    );
    let resume = since_in(last);
    assert_eq!(resume, seqs.last().unwrap() + 1, "{last}");
    assert_eq!(seqs, (1..resume).collect::<Vec<_>>());
    // The CLI: its output read now, it fails naming the seq to continue from.
    let mut out = String::new();
    cli.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let o = cli.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("was not read for 10s"), "{err}");
    let printed: Vec<u64> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(since_in(&err), printed.last().unwrap() + 1, "{err}");
    wait_until(Duration::from_secs(10), "the info line", || {
        d.log().contains("INFO") && d.log().contains("events subscriber closed")
    });
}

/// An event line of the fake daemon below.
fn fake_event(seq: u64) -> String {
    format!(
        r#"{{"seq":{seq},"time":"2026-11-27T19:28:41.132Z","commit":{seq},"kind":"registered","model":"m","version":{seq},"metrics":{{}}}}"#
    )
}

/// A fake daemon on `path`: a stream asked from seq 1 gets events 1 and 2, then half of
/// event 3 and the connection closes; one asked from a later seq gets the events from
/// there to 4 and its end.
fn fake_daemon(path: &std::path::Path) {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut line = String::new();
            BufReader::new(&conn).read_line(&mut line).unwrap();
            let req: serde_json::Value = serde_json::from_str(&line).unwrap();
            let since = req["since"].as_u64().unwrap_or(1);
            let mut out =
                format!(r#"{{"ok":true,"result":{{"first":1,"last":4,"from":{since}}}}}"#);
            out.push('\n');
            if since == 1 {
                for s in 1..=2 {
                    out.push_str(&fake_event(s));
                    out.push('\n');
                }
                out.push_str(&fake_event(3)[..40]);
            } else {
                for s in since..=4 {
                    out.push_str(&fake_event(s));
                    out.push('\n');
                }
                out.push_str("{\"end\":true,\"last\":4}\n");
            }
            let _ = conn.write_all(out.as_bytes());
        }
    });
}

/// A stream cut inside a line: the CLI fails naming the last seq it printed and the
/// one to continue from (it said "EOF while parsing a string"); Python without follow
/// raises saying the same, and with follow reconnects after the last event it yielded:
/// every event once, none lost.
#[test]
fn a_stream_cut_inside_a_line_is_reported_with_the_seq_to_continue_from() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("fake.sock");
    fake_daemon(&sock);
    let o = Command::new(BIN)
        .arg("--socket")
        .arg(&sock)
        .args(["events", "--since", "1", "--follow"])
        .output()
        .unwrap();
    let (out, err) = (stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        err.contains("the event stream ended unexpectedly after seq 2 (cut off inside a line"),
        "{err}"
    );
    assert!(err.contains("continue with --since 3"), "{err}");
    let script = r#"
import sys
import modelreg
reg = modelreg.ModelRegistry(socket=sys.argv[1])
try:
    list(reg.events(since=1))
    print("no error")
except modelreg.DaemonNotRunning as e:
    print("error:", e)
print("follow:", [e["seq"] for e in reg.events(since=1, follow=True)])
"#;
    let o = Command::new("python3")
        .args(["-c", script])
        .arg(&sock)
        .env(
            "PYTHONPATH",
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python"),
        )
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(
        out.contains(
            "error: the event stream ended unexpectedly after seq 2 (cut off inside a line"
        ),
        "{out}"
    );
    assert!(out.contains("continue with since=3"), "{out}");
    assert!(out.contains("follow: [1, 2, 3, 4]"), "{out}");
}

/// `modelreg events --follow` on the socket and over `--url`, the daemon SIGKILLed: each
/// fails naming the last seq and where to continue (it printed nothing and exited 0).
#[test]
fn a_followed_stream_says_where_to_continue_when_the_daemon_is_killed() {
    let mut d = TestDaemon::start(HTTP);
    changes(&d, 3);
    let url = format!("http://{}", address(&d));
    let follow = |via: &[&str]| {
        let mut c = Command::new(BIN);
        c.args(via)
            .args(["events", "--follow", "--since", "4"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    let sock = d.socket().display().to_string();
    let mut on_socket = follow(&["--socket", &sock]);
    let mut over_http = follow(&["--url", &url]);
    // Each has printed event 5 (the last) before the kill.
    let mut first_lines = Vec::new();
    for child in [&mut on_socket, &mut over_http] {
        let mut r = BufReader::new(child.stdout.take().unwrap());
        let mut lines = String::new();
        for _ in 0..2 {
            r.read_line(&mut lines).unwrap();
        }
        first_lines.push(lines);
    }
    d.kill();
    for (child, lines) in [on_socket, over_http].into_iter().zip(first_lines) {
        let o = child.wait_with_output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{lines}{err}");
        assert!(lines.contains("     5  "), "{lines}");
        assert!(
            err.contains("the event stream ended unexpectedly after seq 5 (the connection closed without an end"),
            "{err}"
        );
        assert!(err.contains("continue with --since 6"), "{err}");
    }
}

/// `modelreg --url ... events` reads the Server-Sent Events and prints what the socket
/// gives, options alike (it was refused: "streamed on the control socket only").
#[test]
fn the_cli_reads_events_over_url_with_the_sockets_output() {
    let d = TestDaemon::start("settle: 200ms\nhttp:\n  listen: 127.0.0.1:0\n");
    changes(&d, 40);
    let dir = tempfile::tempdir().unwrap();
    let (reader, _) = common::http::token_files(&d, dir.path());
    let url = format!("http://{}", address(&d));
    let over_url = |args: &[&str]| {
        let mut all = vec!["--url", &url, "--token-file", reader.to_str().unwrap()];
        all.extend_from_slice(args);
        Command::new(BIN).args(&all).output().unwrap()
    };
    for args in [
        &["events", "--since", "30"][..],
        &["events", "--since", "0", "--json"],
        &["events"],
        &["events", "--kind", "registered"],
        &["events", "--model", "m*", "--kind", "alias_set", "--json"],
    ] {
        let o = over_url(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert_eq!(stdout(&o), ok(&d, args), "{args:?}");
    }
    assert_eq!(
        stdout(&over_url(&["events", "--since", "0"]))
            .lines()
            .count(),
        42
    );
    // Refusals read the same.
    let o = over_url(&["events", "--since", "99"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), fails(&d, &["events", "--since", "99"]));
    // Without a token: told to give one.
    let o = Command::new(BIN)
        .args(["--url", &url, "events"])
        .output()
        .unwrap();
    assert!(stderr(&o).contains("--token-file"), "{}", stderr(&o));
}

/// A `since` past the end (or `Last-Event-ID` past it) and events compacted away are
/// answered before the stream with a status and a JSON body, which an `EventSource`
/// does not retry (it was 200, then `event: error`, then the end: a reconnect loop).
#[test]
fn sse_refuses_a_start_it_cannot_make_with_a_status_and_a_json_body() {
    let d = TestDaemon::start(&format!("{HTTP}events: {{max_bytes: 1KiB}}\n"));
    changes(&d, 30);
    let addr = address(&d);
    for a in [
        get(&addr, "/api/v1/events?since=99999999&follow=true"),
        request(
            &addr,
            "GET",
            "/api/v1/events?follow=true",
            &[("Last-Event-ID", "99999999")],
        ),
    ] {
        assert_eq!(a.status, 400);
        assert_eq!(a.header("content-type"), Some("application/json"));
        let v = a.json();
        assert_eq!(v["error"]["code"], "bad_request", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("the last is 32"),
            "{v}"
        );
    }
    let a = get(&addr, "/api/v1/events?since=1&follow=true");
    assert_eq!(a.status, 410);
    let v = a.json();
    assert_eq!(v["error"]["code"], "compacted", "{v}");
    let first = v["error"]["first"].as_u64().unwrap();
    assert!(first > 1, "{v}");
    let a = get(&addr, &format!("/api/v1/events?since={first}"));
    assert_eq!(a.status, 200);
}

/// The socket answers a `since` past the end with the error line alone, `ok` first as
/// every answer line (it sent `{"ok":true,...}` first, then `{"error":...,"ok":false}`).
#[test]
fn the_socket_refuses_a_since_past_the_end_with_the_error_line_alone() {
    let d = TestDaemon::quick();
    changes(&d, 1);
    let mut s = UnixStream::connect(d.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"{\"op\":\"events\",\"since\":99,\"follow\":true,\"id\":7}\n")
        .unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    assert_eq!(
        all,
        "{\"ok\":false,\"id\":7,\"error\":{\"code\":\"bad_request\",\"message\":\"there is no event 99 yet: the last is 3; ask from 4 at most (or \\\"now\\\")\"}}\n"
    );
}

/// One parser, one message for a bad `since`: socket, CLI and HTTP; `Last-Event-ID`
/// takes plain digits the same way.
#[test]
fn a_bad_since_gets_one_message_on_the_socket_the_cli_and_http() {
    let d = TestDaemon::start(HTTP);
    let addr = address(&d);
    let want = r#"since must be a whole number >= 0 or "now", not "-1""#;
    let v = send_raw(&d.socket(), r#"{"op":"events","since":"-1"}"#, &[]);
    assert_eq!(error_of(&v), ("bad_request".into(), want.into()));
    assert_eq!(
        fails(&d, &["events", "--since", "-1"]).trim(),
        format!("modelreg: {want}")
    );
    let a = get(&addr, "/api/v1/events?since=-1");
    assert_eq!(
        (a.status, a.json()["error"]["message"].as_str()),
        (400, Some(want))
    );
    for bad in ["%205", "+5", "1.5", "later"] {
        let a = get(&addr, &format!("/api/v1/events?since={bad}"));
        assert_eq!(a.status, 400, "{bad}");
        let m = a.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(
            m.starts_with(r#"since must be a whole number >= 0 or "now", not"#),
            "{m}"
        );
    }
    let a = request(&addr, "GET", "/api/v1/events", &[("Last-Event-ID", "+5")]);
    assert_eq!(a.status, 400);
    // A number given as a string on the socket reads as on the command line.
    let v = send_raw(&d.socket(), r#"{"op":"events","since":"0"}"#, &[]);
    assert_eq!(v["ok"], true, "{v}");
}

/// With `http.anonymous_read`, a page from another origin (here a file: page, without
/// --disable-web-security) reads the stream with an EventSource (it was blocked by CORS);
/// without it, no header: the API's reads need a token, which stays same-origin.
#[test]
fn a_browser_on_another_origin_reads_events_with_anonymous_read() {
    let d = TestDaemon::start(HTTP);
    changes(&d, 1);
    let addr = address(&d);
    let a = request(
        &addr,
        "GET",
        "/api/v1/models",
        &[("Origin", "http://elsewhere")],
    );
    assert_eq!(a.header("access-control-allow-origin"), Some("*"));
    assert_eq!(a.header("access-control-allow-credentials"), None);
    let a = request(
        &addr,
        "PUT",
        "/api/v1/models/m/upload",
        &[("Origin", "http://x")],
    );
    assert_eq!(a.header("access-control-allow-origin"), None);
    let dir = tempfile::tempdir().unwrap();
    let browser = common::tools::Browser::new(dir.path());
    let page = common::tools::event_source_page(
        dir.path(),
        &format!("http://{addr}/api/v1/events?since=0&follow=true&heartbeat_ms=200"),
        &["registered", "alias_set"],
        3,
    );
    let dom = browser.run(&page, &["--virtual-time-budget=3000", "--dump-dom"]);
    assert!(
        dom.contains("1 registered m|2 registered m|3 alias_set m|"),
        "the page heard: {dom}"
    );
    // A start refused with a status (a since past the end): the EventSource gives up
    // (readyState 2, CLOSED) rather than reconnecting for ever (it did, every ~3 s,
    // on the 200 that ended with `event: error`).
    let page = dir.path().join("refused.html");
    std::fs::write(
        &page,
        format!(
            r#"<html><body><pre id="out"></pre><script>
const es = new EventSource("http://{addr}/api/v1/events?since=99999999&follow=true");
es.onerror = () => {{ document.getElementById("out").textContent += "error " + es.readyState + "|"; }};
</script></body></html>"#
        ),
    )
    .unwrap();
    let dom = browser.run(
        &format!("file://{}", page.display()),
        &["--virtual-time-budget=8000", "--dump-dom"],
    );
    assert!(dom.contains(r#"<pre id="out">error 2|</pre>"#), "{dom}");
    drop(d);
    let d = TestDaemon::start("settle: 200ms\nhttp:\n  listen: 127.0.0.1:0\n");
    let addr = address(&d);
    let token = ok(&d, &["token", "create", "r", "--scope", "read"]);
    let auth = format!("Bearer {}", token.trim());
    let a = request(
        &addr,
        "GET",
        "/api/v1/models",
        &[("Origin", "http://elsewhere"), ("Authorization", &auth)],
    );
    assert_eq!(a.status, 200);
    assert_eq!(a.header("access-control-allow-origin"), None);
}
