//! The events scenario: how soon a subscriber hears of a registration (issue 18's bar:
//! p99 within 5 ms of the commit, loopback), on the socket's `events` and on the HTTP
//! API's Server-Sent Events.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use modelreg::client::{Client, StreamLine};
use modelreg::protocol::{Request, Since};

use super::{Daemon, Table, fill, pct};

/// Scenario: `n` registrations by hand-over, one at a time, from this process, with a
/// socket subscriber and an SSE subscriber on their own threads. The commit happens
/// between the call's start and its answer (the answer comes once it is durable), so
/// per registration and subscriber two figures are kept: arrival − answer (the
/// subscriber may hear before the registering client: negative) and arrival − call
/// start, an upper bound on commit-to-arrival that is mostly the call's own fsyncs.
/// Each registration waits for both subscribers before the next.
pub(super) fn events(t: &mut Table, scratch: &Path, quick: bool) {
    let n = if quick { 100 } else { 1000 };
    let mut d = Daemon::new(
        scratch,
        "events",
        "settle: 50ms\nhttp:\n  listen: 127.0.0.1:0\n  anonymous_read: true\n",
    );
    d.start();
    let url = d.status().http.expect("HTTP is on");
    let addr = url.trim_start_matches("http://").to_string();
    let (tx, rx) = mpsc::channel::<(char, u64, Instant)>();
    let sock = d.socket();
    let stx = tx.clone();
    std::thread::spawn(move || {
        let mut c = Client::connect(&sock).unwrap();
        let req = Request::Events {
            since: Some(Since::Word("now".into())),
            last: None,
            models: vec![],
            kinds: vec!["registered".into()],
            follow: true,
            heartbeat_ms: None,
        };
        let _ = c.events(&req, |_, l| match l {
            StreamLine::Event(e) => stx.send(('s', e.seq, Instant::now())).is_ok(),
            _ => true,
        });
    });
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let _ = s.set_nodelay(true);
        write!(
            s,
            "GET /api/v1/events?since=now&follow=true&kind=registered HTTP/1.1\r\nHost: {addr}\r\n\r\n"
        )
        .unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        while r.read_line(&mut line).is_ok_and(|k| k > 0) {
            if line.starts_with(": events") {
                let _ = ready_tx.send(());
            }
            if let Some(id) = line.strip_prefix("id: ") {
                let seq = id.trim().parse().unwrap_or(0);
                if tx.send(('h', seq, Instant::now())).is_err() {
                    return;
                }
            }
            line.clear();
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the SSE stream opened");
    let src = d.root().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let p = src.join("x.bin");
    let mut buf = vec![0u8; 4096];
    let mut c = Client::connect(&d.socket()).unwrap();
    // One untimed registration: both subscribers are connected once they hear it.
    let mut seq_of = |c: &mut Client, i: u64| -> (Instant, Instant) {
        fill(2 * i + 1, &mut buf);
        std::fs::write(&p, &buf).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let start = Instant::now();
        c.register("ev", "x.bin", &f, None, None).expect("register");
        (start, Instant::now())
    };
    let wait_both = |seq: u64| -> [Instant; 2] {
        let mut at = [None, None];
        while at.iter().any(Option::is_none) {
            let (who, s, when) = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("a subscriber heard the event");
            if s == seq {
                at[usize::from(who == 'h')] = Some(when);
            }
        }
        [at[0].unwrap(), at[1].unwrap()]
    };
    seq_of(&mut c, 0);
    wait_both(1);
    let ms = |a: Instant, b: Instant| -> f64 {
        if a >= b {
            (a - b).as_secs_f64() * 1e3
        } else {
            -((b - a).as_secs_f64() * 1e3)
        }
    };
    let (mut after_answer, mut after_start) = ([vec![], vec![]], [vec![], vec![]]);
    let mut calls = vec![];
    for i in 1..=n as u64 {
        let (start, answer) = seq_of(&mut c, i);
        let at = wait_both(i + 1);
        calls.push(ms(answer, start));
        for k in 0..2 {
            after_answer[k].push(ms(at[k], answer));
            after_start[k].push(ms(at[k], start));
        }
    }
    let (p50, p99) = (pct(&mut calls, 0.5), pct(&mut calls, 0.99));
    for (k, door) in ["socket events", "SSE"].iter().enumerate() {
        let (a50, a99) = (
            pct(&mut after_answer[k], 0.5),
            pct(&mut after_answer[k], 0.99),
        );
        let (s50, s99) = (
            pct(&mut after_start[k], 0.5),
            pct(&mut after_start[k], 0.99),
        );
        let min = after_answer[k].first().copied().unwrap_or(0.0);
        // The commit (durable, then published) comes after the call's fsyncs and just
        // before its answer is written: arrival - answer is the figure of the bar;
        // arrival - call start bounds it from above and is mostly the call itself.
        t.add(
            &format!("events ({door})"),
            &format!(
                "{n} registrations: arrival - register() answer p50/p99 (min {min:.2}); arrival - call start p50/p99"
            ),
            format!("{a50:.2}/{a99:.2} ms; {s50:.2}/{s99:.2} ms"),
            format!("register() call p50/p99 {p50:.2}/{p99:.2} ms"),
            format!("{:.2}x of 5 ms", a99 / 5.0),
            "p99 <= 5 ms after the commit",
            Some(a99 <= 5.0),
        );
    }
    d.stop();
}
