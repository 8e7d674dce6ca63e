//! Webhooks on the real binary, against a real HTTP receiver in the test (a std
//! TcpListener thread): signed deliveries, every event at least once and in order across
//! a receiver that is down and a SIGKILL, and a hanging receiver that delays no other.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// One delivery the receiver answered 200.
#[derive(Debug, Clone)]
struct Got {
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Got {
    fn seq(&self) -> u64 {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        v["seq"].as_u64().unwrap()
    }
}

/// A local HTTP receiver: answers 200 and records each request, or (`hang`) reads the
/// request and never answers.
struct Receiver {
    port: u16,
    /// Connections accepted.
    conns: Arc<AtomicU32>,
    got: Arc<Mutex<Vec<Got>>>,
    /// Requests read (answered or not).
    seen: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    /// Listens on 127.0.0.1:`port` (0: any free port).
    fn start(port: u16, hang: bool) -> Receiver {
        Receiver::start_with(port, hang, None)
    }

    /// Listens for HTTPS with the certificate and key of `common::http::make_cert`
    /// in `dir`.
    fn start_tls(dir: &std::path::Path) -> Receiver {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(dir.join("cert.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        Receiver::start_with(0, false, Some(Arc::new(config)))
    }

    fn start_with(port: u16, hang: bool, tls: Option<Arc<rustls::ServerConfig>>) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the receiver");
        let port = listener.local_addr().unwrap().port();
        let (got, seen, stop) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(AtomicU32::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let conns = Arc::new(AtomicU32::new(0));
        let (g, s, st, n) = (got.clone(), seen.clone(), stop.clone(), conns.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                n.fetch_add(1, Ordering::SeqCst);
                let (g, s, st, tls) = (g.clone(), s.clone(), st.clone(), tls.clone());
                std::thread::spawn(move || match tls {
                    Some(c) => {
                        let tls = rustls::ServerConnection::new(c).unwrap();
                        serve(rustls::StreamOwned::new(tls, conn), hang, &g, &s, &st)
                    }
                    None => serve(conn, hang, &g, &s, &st),
                });
            }
        });
        Receiver {
            port,
            conns,
            got,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    fn seqs(&self) -> Vec<u64> {
        self.got().iter().map(Got::seq).collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads requests from `conn` (kept alive) answering each 200 and recording it, or hangs
/// at the first until the stop.
fn serve(
    mut conn: impl Read + Write,
    hang: bool,
    got: &Mutex<Vec<Got>>,
    seen: &AtomicU32,
    stop: &AtomicBool,
) {
    let mut buf = Vec::new();
    while let Some((headers, body)) = http::read_request(&mut conn, &mut buf) {
        if stop.load(Ordering::SeqCst) && !hang {
            // Stopped: the kept connection is closed with the request unanswered.
            return;
        }
        let headers: HashMap<String, String> = headers.into_iter().collect();
        seen.fetch_add(1, Ordering::SeqCst);
        if hang {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
            return;
        }
        got.lock().unwrap().push(Got { headers, body });
        if conn
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

/// A port nobody listens on now (bound, then let go).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes a webhook secret (0600) into `dir` and returns its path.
fn secret_file(dir: &std::path::Path, secret: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("webhook.secret");
    std::fs::write(&p, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// A webhook entry for the settings: quick retries (max_backoff 500ms unless `extra`
/// sets it) and the `extra` keys.
fn webhook(name: &str, url: &str, secret: &std::path::Path, extra: &str) -> String {
    let cap = if extra.contains("max_backoff") {
        ""
    } else {
        "  max_backoff: 500ms\n"
    };
    format!(
        "- name: {name}\n  url: {url}\n  secret_file: {}\n  backoff: 100ms\n{cap}{extra}",
        secret.display()
    )
}

/// Two versions of `m`, then `n - 2` alias moves: `n` events.
fn make_events(d: &TestDaemon, n: usize) {
    register_seeded(d, "m", 1);
    register_seeded(d, "m", 2);
    let mut c = d.client();
    for i in 0..n - 2 {
        c.alias_set("m", "prod", if i % 2 == 0 { "v1" } else { "v2" })
            .expect("alias set");
    }
}

/// The signature check of docs/events.md, the Python snippet itself (the block that
/// defines `verify`).
fn python_verify_snippet() -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/events.md")).unwrap();
    doc.split("```python\n")
        .skip(1)
        .map(|b| b.split("\n```").next().unwrap())
        .find(|b| b.contains("def verify("))
        .expect("docs/events.md has a python block defining verify()")
        .to_string()
}

/// Runs the documented snippet on a delivery: whether `verify` accepts it under `secret`.
fn python_accepts(g: &Got, secret: &str) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let case = serde_json::json!({
        "secret": secret,
        "headers": {
            "X-Modelreg-Timestamp": g.headers["x-modelreg-timestamp"],
            "X-Modelreg-Signature": g.headers["x-modelreg-signature"],
        },
        "body": modelreg::fsutil::hex(&g.body),
    });
    std::fs::write(dir.path().join("case.json"), case.to_string()).unwrap();
    let program = format!(
        "{}\nimport json, sys\nc = json.load(open(sys.argv[1]))\nsys.exit(0 if verify(c['secret'].encode(), c['headers'], bytes.fromhex(c['body'])) else 1)\n",
        python_verify_snippet()
    );
    std::fs::write(dir.path().join("check.py"), program).unwrap();
    let out = std::process::Command::new("python3")
        .arg(dir.path().join("check.py"))
        .arg(dir.path().join("case.json"))
        .output()
        .expect("python3");
    assert!(out.status.code().is_some(), "{}", stderr(&out));
    out.status.success()
}

#[test]
fn a_receiver_verifies_each_delivery_with_the_documented_signature() {
    let rx = Receiver::start(0, false);
    let keys = tempfile::tempdir().unwrap();
    let secret = secret_file(keys.path(), "s3cr3t");
    let d = TestDaemon::start(&format!(
        "settle: 300ms\nwebhooks:\n{}",
        webhook("ci", &rx.url(), &secret, "  kinds: [registered]\n")
    ));
    register_seeded(&d, "m", 1);
    register_seeded(&d, "m", 2);
    wait_until(Duration::from_secs(20), "two deliveries", || {
        rx.got().len() >= 2
    });
    let got = rx.got();
    assert_eq!(rx.seqs(), [1, 2]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for g in &got {
        assert_eq!(g.headers["content-type"], "application/json");
        assert_eq!(g.headers["x-modelreg-event-seq"], g.seq().to_string());
        let ts: u64 = g.headers["x-modelreg-timestamp"].parse().unwrap();
        assert!(ts.abs_diff(now) < 120, "{ts} vs {now}");
        // HMAC-SHA256 over "<timestamp>.<body>", as docs/events.md says.
        let mut msg = format!("{ts}.").into_bytes();
        msg.extend_from_slice(&g.body);
        let mac = modelreg::deliver::hmac_sha256(b"s3cr3t", &msg);
        assert_eq!(
            g.headers["x-modelreg-signature"],
            format!("sha256={}", modelreg::fsutil::hex(&mac))
        );
        let v: serde_json::Value = serde_json::from_slice(&g.body).unwrap();
        assert_eq!(
            (v["kind"].as_str(), v["model"].as_str()),
            (Some("registered"), Some("m"))
        );
        assert!(
            python_accepts(g, "s3cr3t"),
            "the documented snippet refused a delivery"
        );
        assert!(
            !python_accepts(g, "wrong"),
            "the documented snippet took a wrong secret"
        );
    }
    assert_eq!(delivery_row(&d, "ci").delivered, 2);
}

#[test]
fn a_sigkilled_daemon_delivers_every_pending_event_in_order_after_restart() {
    let port = free_port();
    let keys = tempfile::tempdir().unwrap();
    let secret = secret_file(keys.path(), "k");
    let url = format!("http://127.0.0.1:{port}/hook");
    let mut d = TestDaemon::start(&format!(
        "settle: 300ms\nwebhooks:\n{}",
        webhook("down", &url, &secret, "")
    ));
    // The receiver is down: 100 events pile up.
    make_events(&d, 100);
    wait_until(Duration::from_secs(20), "a retrying row", || {
        let r = delivery_row(&d, "down");
        r.retrying_since.is_some() && r.pending == 100
    });
    let e = delivery_row(&d, "down").last_error.unwrap();
    assert!(e.contains("seq 1") && e.contains("connecting"), "{e}");
    d.kill();
    let rx = Receiver::start(port, false);
    d.spawn();
    wait_until(Duration::from_secs(60), "all 100 events delivered", || {
        rx.got().len() >= 100
    });
    let seqs = rx.seqs();
    // At least once: each seq; in order: never back once a seq was answered.
    let mut expect = seqs.clone();
    expect.dedup();
    assert_eq!(expect, (1..=100).collect::<Vec<u64>>(), "{seqs:?}");
    wait_until(Duration::from_secs(10), "the row caught up", || {
        delivery_row(&d, "down").delivered == 100
    });
    let r = delivery_row(&d, "down");
    assert_eq!((r.pending, r.retrying_since, r.skipped), (0, None, 0));
}

#[test]
fn a_receiver_down_for_30_s_then_up_gets_everything() {
    let port = free_port();
    let keys = tempfile::tempdir().unwrap();
    let secret = secret_file(keys.path(), "k");
    let url = format!("http://127.0.0.1:{port}/hook");
    // The default backoff (1 s doubled, with jitter, up to 5 min), as an operator has it.
    let d = TestDaemon::start(&format!(
        "settle: 300ms\nwebhooks:\n{}",
        webhook("later", &url, &secret, "")
    ));
    make_events(&d, 10);
    // Down for 30 s, while more events come.
    let down = std::time::Instant::now();
    while down.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut c = d.client();
    c.alias_set("m", "staging", "v1").unwrap();
    let r = delivery_row(&d, "later");
    assert!(r.last_error.is_some() && r.pending >= 10, "{r:?}");
    let rx = Receiver::start(port, false);
    // The next retry comes at most one doubled wait later (~32 s after 30 s down).
    wait_until(Duration::from_secs(90), "11 events delivered", || {
        rx.got().len() >= 11
    });
    let mut seqs = rx.seqs();
    seqs.dedup();
    assert_eq!(seqs, (1..=11).collect::<Vec<u64>>());
    wait_until(Duration::from_secs(10), "the row caught up", || {
        let r = delivery_row(&d, "later");
        r.delivered == 11 && r.pending == 0
    });
}

#[test]
fn a_hanging_receiver_delays_neither_another_receiver_nor_registration() {
    let hung = Receiver::start(0, true);
    let fine = Receiver::start(0, false);
    let keys = tempfile::tempdir().unwrap();
    let secret = secret_file(keys.path(), "k");
    let d = TestDaemon::start(&format!(
        "settle: 300ms\nwebhooks:\n{}{}",
        webhook("hung", &hung.url(), &secret, "  timeout: 1h\n"),
        webhook("fine", &fine.url(), &secret, "")
    ));
    register_seeded(&d, "m", 1);
    wait_until(
        Duration::from_secs(20),
        "the hung receiver holding seq 1",
        || hung.seen.load(Ordering::SeqCst) >= 1,
    );
    // Registrations are answered, and the other receiver gets each, while one hangs.
    for seed in 2..=5 {
        register_seeded(&d, "m", seed);
    }
    assert_eq!(d.versions("m").len(), 5);
    wait_until(
        Duration::from_secs(20),
        "five deliveries to the other",
        || fine.got().len() >= 5,
    );
    assert_eq!(fine.seqs(), [1, 2, 3, 4, 5]);
    let r = delivery_row(&d, "hung");
    assert_eq!((r.delivered, r.pending), (0, 5));
    assert_eq!(hung.seen.load(Ordering::SeqCst), 1);
}

#[test]
fn events_compacted_away_before_delivery_are_named_in_status() {
    let port = free_port();
    let keys = tempfile::tempdir().unwrap();
    let secret = secret_file(keys.path(), "k");
    let url = format!("http://127.0.0.1:{port}/hook");
    // A tiny log: segments of 256 bytes, 1 KiB kept, so old events go quickly.
    let d = TestDaemon::start(&format!(
        "settle: 300ms\nevents: {{max_bytes: 1KiB}}\nwebhooks:\n{}",
        webhook("late", &url, &secret, "")
    ));
    make_events(&d, 40);
    assert_eq!(delivery_row(&d, "late").delivered, 0);
    let rx = Receiver::start(port, false);
    wait_until(Duration::from_secs(30), "the row caught up", || {
        delivery_row(&d, "late").delivered == 40
    });
    let problem = d.wait_problem_text("compacted away before they were delivered");
    assert!(problem.contains("late:"), "{problem}");
    // Seq 1 was under way (held by the worker) and is delivered; then, past the gap,
    // from the oldest kept.
    let seqs = rx.seqs();
    assert_eq!(seqs[0], 1);
    assert!(seqs.len() < 40, "{seqs:?}");
    assert_eq!(*seqs.last().unwrap(), 40);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

#[test]
fn an_https_receiver_is_reached_with_its_certificate_pinned_and_refused_without() {
    let certs = tempfile::tempdir().unwrap();
    common::http::make_cert(certs.path());
    let rx = Receiver::start_tls(certs.path());
    let url = format!("https://127.0.0.1:{}/hook", rx.port);
    let keys = tempfile::tempdir().unwrap();
    let secret = secret_file(keys.path(), "k");
    let ca = format!("  ca_file: {}\n", certs.path().join("cert.pem").display());
    let d = TestDaemon::start(&format!(
        "settle: 300ms\nwebhooks:\n{}{}",
        webhook("pinned", &url, &secret, &ca),
        webhook("system", &url, &secret, "")
    ));
    register_seeded(&d, "m", 1);
    wait_until(Duration::from_secs(20), "the delivery over https", || {
        rx.got().len() == 1 && delivery_row(&d, "pinned").delivered == 1
    });
    let g = &rx.got()[0];
    let ts: u64 = g.headers["x-modelreg-timestamp"].parse().unwrap();
    let mut msg = format!("{ts}.").into_bytes();
    msg.extend_from_slice(&g.body);
    assert_eq!(
        g.headers["x-modelreg-signature"],
        format!(
            "sha256={}",
            modelreg::fsutil::hex(&modelreg::deliver::hmac_sha256(b"k", &msg))
        )
    );
    // The system's authorities do not know a self-signed certificate: retried, shown.
    wait_until(Duration::from_secs(20), "the refused handshake", || {
        delivery_row(&d, "system")
            .last_error
            .is_some_and(|e| e.contains("TLS") && e.contains("give the webhook `ca_file:`"))
    });
    assert_eq!(rx.got().len(), 1);
}

/// A webhook's connection is kept between its events: 20 events over one connection
/// (one per event before: a TCP connect, and over https a handshake, each time), in
/// order; and a receiver that closes it gets the next event on a new one.
#[test]
fn a_webhooks_connection_is_kept_between_events() {
    let rx = Receiver::start(0, false);
    let keys = tempfile::tempdir().unwrap();
    let secret = secret_file(keys.path(), "k");
    let d = TestDaemon::start(&format!(
        "settle: 300ms\nwebhooks:\n{}",
        webhook("kept", &rx.url(), &secret, "")
    ));
    make_events(&d, 20);
    wait_until(Duration::from_secs(30), "20 events delivered", || {
        rx.got().len() >= 20
    });
    assert_eq!(rx.seqs(), (1..=20).collect::<Vec<u64>>());
    assert_eq!(
        rx.conns.load(Ordering::SeqCst),
        1,
        "connections for 20 events"
    );
    // The receiver goes away; its kept connection is closed at the next request, which
    // then goes to the new receiver on a new connection.
    let port = rx.port;
    drop(rx);
    let rx = Receiver::start(port, false);
    d.client().alias_set("m", "staging", "v1").unwrap();
    wait_until(
        Duration::from_secs(30),
        "seq 21 on the new receiver",
        || rx.seqs().contains(&21),
    );
    let r = delivery_row(&d, "kept");
    assert_eq!((r.delivered, r.skipped), (21, 0), "{r:?}");
}
