//! Edges of uploads and the HTTP listener, on the real daemon: a body trickled below
//! `http.body_min_rate` is cut with 408 while a slow but steady one is taken; a renewed
//! TLS certificate is served after SIGHUP (a bad one keeps the old, said in `status`);
//! folder uploads follow the inbox's rules for temporary names, name a path the tar
//! holds twice, and say when the tar is gzip-compressed; a metrics header with a key
//! twice names the key and the header.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::http::{parse, with_write_token};

/// Small windows so that a trickle is cut within seconds.
const PACED: &str =
    "settle: 200ms\nhttp:\n  listen: 127.0.0.1:0\n  body_timeout: 1s\n  body_min_rate: 1KiB/s\n";

/// A connection that has sent `head` (a request line and headers, without the blank line).
fn open(addr: &str, head: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    s.write_all(format!("{head}\r\n\r\n").as_bytes()).unwrap();
    s
}

/// Sends one byte at a time, `every` apart, until the server answers and closes (its
/// answer) or `limit` passes (`None`: the trickle was never cut).
fn trickle(mut s: TcpStream, every: Duration, limit: Duration) -> Option<Vec<u8>> {
    let start = Instant::now();
    let mut got = Vec::new();
    while start.elapsed() < limit {
        // A write after the server closed may fail: the answer is read below anyway.
        let _ = s.write_all(b"x");
        let until = Instant::now() + every;
        while Instant::now() < until {
            let mut buf = [0u8; 4096];
            match s.read(&mut buf) {
                Ok(0) => return Some(got),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Some(got),
            }
        }
    }
    None
}

#[test]
fn a_trickled_body_is_cut_with_408_and_the_daemon_keeps_serving() {
    let (d, addr, token) = with_write_token(PACED);
    // An upload sending a byte every 200 ms: 5 bytes a second, far below 1 KiB/s.
    let s = open(
        &addr,
        &format!(
            "PUT /api/v1/models/slow/upload?filename=slow.bin HTTP/1.1\r\nHost: x\r\n\
             Authorization: Bearer {token}\r\nContent-Length: 1000000"
        ),
    );
    let got = trickle(s, Duration::from_millis(200), Duration::from_secs(60))
        .expect("a trickled upload was never cut (60 s)");
    let a = parse(&got);
    assert_eq!(a.status, 408, "{}", String::from_utf8_lossy(&got));
    assert_eq!(a.code(), "timeout");
    assert_eq!(a.header("connection"), Some("close"));
    let msg = a.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("http.body_min_rate") && msg.contains("nothing was kept"),
        "{msg}"
    );
    // A change's JSON body is paced too.
    let s = open(
        &addr,
        &format!(
            "PUT /api/v1/models/slow/aliases/prod HTTP/1.1\r\nHost: x\r\n\
             Authorization: Bearer {token}\r\nContent-Length: 100000"
        ),
    );
    let got = trickle(s, Duration::from_millis(200), Duration::from_secs(60))
        .expect("a trickled change was never cut (60 s)");
    assert_eq!(parse(&got).status, 408, "{}", String::from_utf8_lossy(&got));
    // Nothing registered, and the daemon serves on.
    assert!(d.versions("slow").is_empty());
    let ping = common::http::get(&addr, "/api/v1/ping");
    assert_eq!(ping.status, 200);
    assert!(d.log().contains("HTTP request cut"), "{}", d.log());
}

#[test]
fn a_slow_but_steady_upload_is_taken() {
    let (d, addr, token) = with_write_token(PACED);
    // 96 KiB at about 16 KiB/s, in bursts a quarter of a second apart: six seconds, many
    // windows, each well above 1 KiB/s.
    let data: Vec<u8> = (0..96 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let mut s = open(
        &addr,
        &format!(
            "PUT /api/v1/models/steady/upload?filename=steady.bin HTTP/1.1\r\nHost: x\r\n\
             Authorization: Bearer {token}\r\nConnection: close\r\nContent-Length: {}",
            data.len()
        ),
    );
    for chunk in data.chunks(4096) {
        s.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(250));
    }
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    let a = parse(&got);
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&got));
    let v = d.versions("steady");
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].size, data.len() as u64);
}

/// A self-signed certificate for 127.0.0.1 named `cn`, written as `cert.pem` and
/// `key.pem` in `dir` (made aside, then renamed into place, as certbot's links move).
fn make_cert_named(dir: &std::path::Path, cn: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-keyout", "key.new", "-out", "cert.new", "-subj"])
        .arg(format!("/CN={cn}"))
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", common::stderr(&out));
    std::fs::rename(dir.join("key.new"), dir.join("key.pem")).unwrap();
    std::fs::rename(dir.join("cert.new"), dir.join("cert.pem")).unwrap();
}

/// The SHA-256 fingerprint of a PEM certificate, as `openssl x509 -fingerprint` prints it.
fn fingerprint(pem: &[u8]) -> String {
    let mut child = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    child.stdin.take().unwrap().write_all(pem).unwrap();
    let out = child.wait_with_output().unwrap();
    common::stdout(&out).trim().to_string()
}

/// The fingerprint of the certificate a new TLS handshake with `addr` is served
/// (`openssl s_client`), or "" when the handshake failed.
fn served(addr: &str) -> String {
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", addr])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = common::stdout(&out);
    match (
        text.find("-----BEGIN CERTIFICATE-----"),
        text.find("-----END CERTIFICATE-----"),
    ) {
        (Some(a), Some(b)) => fingerprint(&text.as_bytes()[a..b + 25]),
        _ => String::new(),
    }
}

fn tls_config(dir: &str) -> String {
    format!(
        "http:\n  listen: 127.0.0.1:0\n  tls:\n    cert: {dir}/cert.pem\n    key: {dir}/key.pem\n"
    )
}

/// Waits until new handshakes are served the certificate in `dir`.
fn wait_served(addr: &str, dir: &std::path::Path) {
    let want = fingerprint(&std::fs::read(dir.join("cert.pem")).unwrap());
    let mut last = String::new();
    common::wait_until(
        Duration::from_secs(30),
        "the certificate to be served",
        || {
            last = served(addr);
            last == want
        },
    );
}

#[test]
fn sighup_serves_a_renewed_certificate_and_keeps_the_old_one_when_the_new_is_bad() {
    let mut d = common::TestDaemon::new("");
    let live = d.root.path().join("tls");
    make_cert_named(&live, "first");
    d.write_config(&tls_config("tls"));
    d.spawn();
    let url = d.status().http.expect("status names the API's address");
    let addr = url.trim_start_matches("https://").to_string();
    wait_served(&addr, &live);
    let first = served(&addr);

    // A connection made before the renewal, kept open across it.
    let mut old = std::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-ign_eof", "-connect", &addr])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_client");

    // Renewed in place (certbot), then SIGHUP: new handshakes get the new certificate.
    make_cert_named(&live, "renewed");
    d.signal(libc::SIGHUP);
    wait_served(&addr, &live);
    let renewed = served(&addr);
    assert_ne!(renewed, first);
    assert!(
        d.log().contains("HTTPS certificate reloaded"),
        "{}",
        d.log()
    );
    // The connection made before is still served, with the certificate it was made with.
    old.stdin
        .take()
        .unwrap()
        .write_all(b"GET /api/v1/ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let out = old.wait_with_output().unwrap();
    let text = common::stdout(&out);
    assert!(text.contains("\"pong\":true"), "{text}");

    // A bad renewal (a key of another certificate): the certificate in use is still
    // served, and `status` names the file and the reason until a reload succeeds.
    let other = d.root.path().join("other");
    make_cert_named(&other, "other");
    std::fs::copy(other.join("key.pem"), live.join("key.pem")).unwrap();
    d.signal(libc::SIGHUP);
    let problem = d.wait_problem_text("not reloaded");
    assert!(
        problem.contains("http.tls")
            && problem.contains(&live.join("key.pem").display().to_string())
            && problem.contains("does not go with the certificate"),
        "{problem}"
    );
    assert_eq!(served(&addr), renewed);
    assert!(d.is_running());

    // New paths in the settings are read by the reload itself; the problem clears.
    let moved = d.root.path().join("tls2");
    make_cert_named(&moved, "moved");
    d.write_config(&tls_config("tls2"));
    d.signal(libc::SIGHUP);
    wait_served(&addr, &moved);
    common::wait_until(Duration::from_secs(30), "the problem to clear", || {
        !d.problems_text().contains("not reloaded")
    });
    assert!(
        !d.problems_text().contains("needs a restart"),
        "{}",
        d.problems_text()
    );
}

/// PUT of `file`'s bytes to `path` with `token` and `headers` (`Name: value` lines), on
/// a connection closed after the answer: (status, JSON body).
fn put(
    addr: &str,
    token: &str,
    path: &str,
    file: &Path,
    headers: &[&str],
) -> (u16, serde_json::Value) {
    let data = std::fs::read(file).unwrap();
    let mut raw = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Authorization: Bearer {token}\r\nContent-Length: {}\r\n",
        data.len()
    )
    .into_bytes();
    for h in headers {
        raw.extend_from_slice(format!("{h}\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(&data);
    let a = common::http::send(addr, &raw).unwrap();
    (
        a.status,
        serde_json::from_slice(&a.body).unwrap_or(serde_json::Value::Null),
    )
}

/// `dir/NAME.tar` (or `.tar.gz` when `gzip`), made by the real `tar` from a folder
/// `dir/NAME` holding `files` (paths and contents).
fn folder_tar(dir: &Path, name: &str, files: &[(&str, &[u8])], gzip: bool) -> std::path::PathBuf {
    for (rel, data) in files {
        let path = dir.join(name).join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
    let (flags, tar) = if gzip {
        ("-czf", format!("{name}.tar.gz"))
    } else {
        ("-cf", format!("{name}.tar"))
    };
    run_in(dir, &["tar", "-C", name, flags, &tar, "."]);
    dir.join(tar)
}

/// The error message of an error answer.
fn message(body: &serde_json::Value) -> String {
    body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Runs `cmd` in `dir`, which must succeed.
fn run_in(dir: &Path, cmd: &[&str]) {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", common::stderr(&out));
}

const TAR: &str = "Content-Type: application/x-tar";
const CONFIG: &str = "settle: 200ms\nhttp:\n  listen: 127.0.0.1:0\n";

/// Uploads `tar` as a folder version of `model`: (status, error message).
fn put_tar(addr: &str, token: &str, model: &str, tar: &Path) -> (u16, String) {
    let path = format!("/api/v1/models/{model}/upload");
    let (status, body) = put(addr, token, &path, tar, &[TAR]);
    (status, message(&body))
}

#[test]
fn a_folder_upload_with_a_temporary_folder_is_refused_as_the_inbox_waits_for_it() {
    let (d, addr, token) = with_write_token(CONFIG);
    let work = tempfile::tempdir().unwrap();
    let files: &[(&str, &[u8])] = &[("config.json", b"{}"), ("shards.tmp/part-1.bin", b"half")];
    let tar = folder_tar(work.path(), "bert", files, false);
    let (status, msg) = put_tar(&addr, &token, "bert", &tar);
    assert_eq!(status, 400, "{msg}");
    // The entry is named as the archive names it (tar lists the folder first).
    assert!(
        msg.contains("\"./shards.tmp/\"") && msg.contains("temporary name"),
        "{msg}"
    );
    assert!(d.versions("bert").is_empty());
    // The same folder dropped in the inbox is waited for, never registered: the same rule.
    let bert = work.path().join("bert");
    run_in(
        work.path(),
        &[
            "cp",
            "-r",
            bert.to_str().unwrap(),
            d.inbox().to_str().unwrap(),
        ],
    );
    common::wait_until(Duration::from_secs(30), "the inbox to wait for it", || {
        let v = d.call(&modelreg::protocol::Request::Status {}).unwrap();
        v.to_string().contains("shards.tmp is still being written")
    });
    assert!(d.versions("bert").is_empty());
}

#[test]
fn a_tar_holding_a_path_twice_is_refused_naming_it() {
    let (d, addr, token) = with_write_token(CONFIG);
    let work = tempfile::tempdir().unwrap();
    let m = work.path().join("m");
    std::fs::create_dir(&m).unwrap();
    // Written, then appended again with new bytes, as `tar -r` does.
    for (data, flags) in [(&b"first"[..], "-cf"), (&b"second"[..], "-rf")] {
        std::fs::write(m.join("weights.bin"), data).unwrap();
        run_in(&m, &["tar", flags, "../m.tar", "weights.bin"]);
    }
    let (status, msg) = put_tar(&addr, &token, "m", &work.path().join("m.tar"));
    assert_eq!(status, 400, "{msg}");
    assert!(
        msg.contains("the tar holds \"weights.bin\" twice")
            && msg.contains("nothing was registered"),
        "{msg}"
    );
    assert!(!msg.contains("File exists"), "{msg}");
    assert!(d.versions("m").is_empty());
}

#[test]
fn a_gzip_compressed_tar_sent_as_a_tar_is_told_so() {
    let (d, addr, token) = with_write_token(CONFIG);
    let work = tempfile::tempdir().unwrap();
    // Large enough that the old reader got to a header (a checksum refused), and small.
    let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    let tar = folder_tar(work.path(), "m", &[("weights.bin", &data)], true);
    let (status, msg) = put_tar(&addr, &token, "m", &tar);
    assert_eq!(status, 415, "{msg}");
    assert!(
        msg.contains("gzip-compressed") && msg.contains("not a tar"),
        "{msg}"
    );
    assert!(d.versions("m").is_empty());
}

#[test]
fn a_metrics_header_with_a_key_twice_names_the_key_and_the_header() {
    let (d, addr, token) = with_write_token(CONFIG);
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("m.bin");
    std::fs::write(&file, b"weights").unwrap();
    let tar = folder_tar(work.path(), "f", &[("w.bin", b"weights")], false);
    let metrics = r#"X-Modelreg-Metrics: {"loss": 0.3, "accuracy": 0.9, "loss": 0.2}"#;
    for (path, body, headers) in [
        (
            "/api/v1/models/m/upload?filename=m.bin",
            &file,
            vec![metrics],
        ),
        ("/api/v1/models/f/upload", &tar, vec![metrics, TAR]),
    ] {
        let (status, answer) = put(&addr, &token, path, body, &headers);
        assert_eq!(status, 400, "{path}: {answer}");
        let msg = message(&answer);
        assert!(
            msg.contains("X-Modelreg-Metrics") && msg.contains("\"loss\" twice"),
            "{path}: {msg}"
        );
        assert!(!msg.contains("column"), "{path}: {msg}");
    }
    assert!(d.versions("m").is_empty() && d.versions("f").is_empty());
}
