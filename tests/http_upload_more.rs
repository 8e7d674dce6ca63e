//! Folder uploads and the HTTP listener, on the real daemon with curl, the real `tar` and
//! Python's tarfile: a folder upload never touches what a user has in the inbox (an
//! unfinished folder of the same name, a link or a file at that name) and leaves
//! nothing there; archives without folder entries are taken; hidden entries are left
//! out by the inbox's rule and named in the answer; a compressed body is refused (415);
//! a start refused for a port in use leaves nothing in the root; and one client address
//! cannot take every connection.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::http::{address, with_write_token};
use common::{BIN, TestDaemon, bytes};

const CONFIG: &str = "settle: 200ms\nhttp:\n  listen: 127.0.0.1:0\n  max_upload: 1MiB\n";

/// What curl got: status, the answer's headers (names lower-cased), the JSON body.
struct Sent {
    status: u16,
    headers: String,
    body: serde_json::Value,
}

/// `curl -T file` (PUT) to `path` with the write token and `headers`.
fn put(addr: &str, token: &str, path: &str, file: &Path, headers: &[&str]) -> Sent {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "120", "-D", "-", "-w", "\n%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {token}"));
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg("-T")
        .arg(file)
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (rest, status) = text.rsplit_once('\n').expect("curl's status line");
    // Heads (a 100 Continue first, maybe), then the body.
    let split = rest.rfind("\r\n\r\n").map_or(0, |i| i + 4);
    let (head, body) = rest.split_at(split);
    Sent {
        status: status.trim().parse().unwrap_or(0),
        headers: head.to_ascii_lowercase(),
        body: serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    }
}

const TAR: &str = "Content-Type: application/x-tar";

/// `tar -cf FILE ARGS` run in `dir`.
fn tar(dir: &Path, file: &Path, args: &[&str]) {
    let out = Command::new("tar")
        .current_dir(dir)
        .arg("-cf")
        .arg(file)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
}

/// The entries of the inbox (hidden ones too).
fn inbox(d: &TestDaemon) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(d.inbox())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The stored files of `name` `sel`, as (path inside the version, bytes).
fn stored(d: &TestDaemon, name: &str, sel: &str) -> Vec<(String, Vec<u8>)> {
    let v = d.get(name, sel).unwrap();
    let mut out: Vec<_> = v
        .files
        .iter()
        .map(|f| {
            let rel = f.path.strip_prefix(&format!("{}/", v.dir)).unwrap();
            (rel.to_string(), std::fs::read(&f.path).unwrap())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_folder_upload_leaves_the_users_inbox_alone_and_nothing_behind() {
    let (mut d, addr, token) = with_write_token(CONFIG);
    // A user's unfinished drop of the same name (a file still being downloaded, so the
    // daemon waits for it), a link and a plain file at the names of two more uploads.
    let mine = d.inbox().join("bert");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("weights.bin.part"), b"half of it").unwrap();
    std::os::unix::fs::symlink("/nonexistent", d.inbox().join("linked")).unwrap();
    // (A plain file is an artifact of its own: model `plain`, v1, before the upload.)
    std::fs::write(d.inbox().join("plain"), b"not a folder").unwrap();
    d.wait_versions("plain", 1);
    let before = inbox(&d);

    let src = d.root.path().join("bert-src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("model.safetensors"), bytes(1, 50_000)).unwrap();
    std::fs::write(src.join("sub/vocab.txt"), b"a\nb\n").unwrap();
    let file = d.root.path().join("bert.tar");
    tar(&src, &file, &["."]);
    let want = vec![
        ("model.safetensors".to_string(), bytes(1, 50_000)),
        ("sub/vocab.txt".to_string(), b"a\nb\n".to_vec()),
    ];
    for name in ["bert", "linked", "plain"] {
        let up = format!("/api/v1/models/{name}/upload");
        let a = put(
            &addr,
            &token,
            &up,
            &file,
            &[TAR, r#"X-Modelreg-Metrics: {"loss": 0.5}"#],
        );
        assert_eq!(a.status, 201, "{name}: {}", a.body);
        assert_eq!(a.body["kind"], "folder");
        assert_eq!(a.body["metrics"]["loss"], 0.5);
        let v = a.body["version"].as_str().unwrap();
        assert!(
            stored(&d, name, v) == want,
            "{name} {v}: other files stored"
        );
    }
    // The user's folder, link and file are as they were, and the uploads left nothing
    // in the inbox (not the folder, not a sidecar, not a hidden copy).
    assert_eq!(inbox(&d), before);
    assert_eq!(
        std::fs::read(mine.join("weights.bin.part")).unwrap(),
        b"half of it"
    );
    assert_eq!(std::fs::read_dir(&mine).unwrap().count(), 1);
    assert_eq!(
        std::fs::read_link(d.inbox().join("linked")).unwrap(),
        Path::new("/nonexistent")
    );
    assert_eq!(
        std::fs::read(d.inbox().join("plain")).unwrap(),
        b"not a folder"
    );
    // Nor in the store's staging folder.
    let staging = d.root.path().join("models/.staging");
    let left: Vec<_> = std::fs::read_dir(&staging)
        .map(|rd| rd.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    // The same folder again is the same version (200).
    let a = put(&addr, &token, "/api/v1/models/bert/upload", &file, &[TAR]);
    assert_eq!((a.status, a.body["version"].as_str()), (200, Some("v1")));
    // What the uploads recorded reads back: the daemon starts again on it (a folder's
    // source was written as `upload:bert/`, which the loader refused at the next start).
    d.stop();
    d.spawn();
    let v = d.get("bert", "v1").unwrap();
    assert_eq!(v.source, "upload:bert");
    let out = d.cli(&["verify"]);
    assert!(out.status.success(), "{}", common::stdout(&out));
}

#[test]
fn archives_without_folder_entries_are_taken() {
    let (d, addr, token) = with_write_token(CONFIG);
    let src = d.root.path().join("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::write(src.join("a/b/w.bin"), bytes(2, 3000)).unwrap();
    std::fs::write(src.join("top.json"), b"{}").unwrap();
    // GNU tar given the files only writes no entry for a/ or a/b/.
    let gnu = d.root.path().join("gnu.tar");
    tar(&src, &gnu, &["a/b/w.bin", "top.json"]);
    let listed = Command::new("tar").arg("-tf").arg(&gnu).output().unwrap();
    assert_eq!(common::stdout(&listed), "a/b/w.bin\ntop.json\n");
    // Python's tarfile, adding files by name, neither.
    let py = d.root.path().join("py.tar");
    let script = format!(
        "import tarfile\nwith tarfile.open({:?}, 'w', format=tarfile.PAX_FORMAT) as t:\n    t.add('a/b/w.bin')\n    t.add('top.json')\n",
        py.display().to_string()
    );
    let out = Command::new("python3")
        .current_dir(&src)
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    let want = vec![
        ("a/b/w.bin".to_string(), bytes(2, 3000)),
        ("top.json".to_string(), b"{}".to_vec()),
    ];
    for (name, file) in [("gnu", &gnu), ("py", &py)] {
        let a = put(
            &addr,
            &token,
            &format!("/api/v1/models/{name}/upload"),
            file,
            &[TAR],
        );
        assert_eq!(a.status, 201, "{name}: {}", a.body);
        assert!(stored(&d, name, "v1") == want, "{name}: other files stored");
    }
}

#[test]
fn hidden_entries_are_left_out_and_named_in_the_answer() {
    let (d, addr, token) = with_write_token(CONFIG);
    let src = d.root.path().join("hf-src");
    std::fs::create_dir_all(src.join(".cache/huggingface")).unwrap();
    std::fs::write(src.join(".gitattributes"), b"*.bin filter=lfs").unwrap();
    std::fs::write(src.join(".cache/huggingface/x.lock"), b"").unwrap();
    std::fs::write(src.join("model.bin"), bytes(3, 2000)).unwrap();
    let file = d.root.path().join("hf.tar");
    tar(&src, &file, &["."]);
    let a = put(&addr, &token, "/api/v1/models/hf/upload", &file, &[TAR]);
    assert_eq!(a.status, 201, "{}", a.body);
    // The version is what the same folder dropped in the inbox gives: no hidden entry.
    assert_eq!(
        stored(&d, "hf", "v1"),
        vec![("model.bin".to_string(), bytes(3, 2000))]
    );
    // And the answer says what was left out.
    let line = a
        .headers
        .lines()
        .find(|l| l.starts_with("x-modelreg-left-out:"))
        .unwrap_or_else(|| panic!("no x-modelreg-left-out in {}", a.headers));
    assert!(line.contains(".gitattributes"), "{line}");
    assert!(line.contains(".cache"), "{line}");
    assert!(d.log().contains("left out of the version"), "{}", d.log());
    // A temporary name (a download not finished) is refused, naming the entry.
    std::fs::write(src.join("model.bin.part"), b"half").unwrap();
    tar(&src, &file, &["."]);
    let a = put(&addr, &token, "/api/v1/models/hf/upload", &file, &[TAR]);
    assert_eq!(a.status, 400, "{}", a.body);
    let msg = a.body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("model.bin.part") && msg.contains("temporary name"),
        "{msg}"
    );
    assert_eq!(d.versions("hf").len(), 1);
}

#[test]
fn a_compressed_upload_is_refused_with_415() {
    let (d, addr, token) = with_write_token(CONFIG);
    let raw = d.root.path().join("w.bin");
    std::fs::write(&raw, bytes(4, 5000)).unwrap();
    let out = Command::new("gzip").arg("-k").arg(&raw).output().unwrap();
    assert!(out.status.success());
    let gz = d.root.path().join("w.bin.gz");
    let up = "/api/v1/models/gz/upload?filename=w.bin";
    let a = put(&addr, &token, up, &gz, &["Content-Encoding: gzip"]);
    assert_eq!(a.status, 415, "{}", a.body);
    let msg = a.body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("Content-Encoding") && msg.contains("gzip"),
        "{msg}"
    );
    assert!(d.get("gz", "latest").is_err(), "nothing was registered");
    // The bytes as they are (or `identity`) are taken.
    let a = put(&addr, &token, up, &raw, &["Content-Encoding: identity"]);
    assert_eq!(a.status, 201, "{}", a.body);
    assert!(stored(&d, "gz", "v1")[0].1 == bytes(4, 5000));
}

#[test]
fn a_start_refused_for_a_port_in_use_leaves_nothing_in_the_root() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let d = TestDaemon::new(&format!("http:\n  listen: 127.0.0.1:{port}\n"));
    let out = d.serve_output();
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("in use"),
        "{err}"
    );
    // Only the settings the test wrote: no socket, lock, registry, inbox or store.
    let names: Vec<_> = std::fs::read_dir(d.root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["config"]);
}

/// A local address that is not loopback (connections from it are counted per client),
/// or `None` when the machine has none.
fn non_loopback_ip() -> Option<String> {
    let out = Command::new("hostname").arg("-I").output().ok()?;
    common::stdout(&out)
        .split_whitespace()
        .find(|a| {
            a.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| !ip.is_loopback())
        })
        .map(str::to_string)
}

/// Sends a ping on `s` (kept alive) and answers the status and what was read.
fn ping(s: &mut TcpStream) -> (u16, String) {
    s.write_all(b"GET /api/v1/ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[test]
fn one_client_address_cannot_take_every_connection() {
    let Some(ip) = non_loopback_ip() else {
        eprintln!("no address other than loopback here: nothing to test");
        return;
    };
    let mut d = TestDaemon::new("http:\n  listen: 0.0.0.0:0\n  header_timeout: 60s\n");
    // A low open-files limit makes the connection limit small (about 100).
    let mut launcher = Command::new("prlimit");
    launcher
        .args(["--nofile=256:256", BIN, "serve", "--root"])
        .arg(d.root.path());
    d.spawn_via(launcher);
    let port = address(&d).rsplit_once(':').unwrap().1.to_string();
    let remote = format!("{ip}:{port}");
    let mut open = Vec::new();
    let refused = loop {
        assert!(
            open.len() < 256,
            "no connection refused after {}",
            open.len()
        );
        let mut s = TcpStream::connect(&remote).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (status, text) = ping(&mut s);
        if status != 200 {
            break (status, text, open.len());
        }
        open.push(s);
    };
    let (status, text, held) = refused;
    assert_eq!(status, 503, "{text}");
    assert!(
        text.contains("the most one client address may") && text.contains(&ip),
        "{text}"
    );
    // Refused by the per-address share, well below the whole limit: other clients
    // (here loopback) are still served while this address holds its share.
    assert!(held >= 4, "{held}");
    let mut other = TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(ping(&mut other).0, 200);
    // Closing some frees the address's share again.
    open.truncate(held - 2);
    common::wait_until(Duration::from_secs(10), "a slot freed", || {
        let mut s = TcpStream::connect(&remote).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        ping(&mut s).0 == 200
    });
}

#[test]
fn a_bad_file_name_is_refused_before_the_body_and_never_written_raw_to_the_log() {
    let (d, addr, token) = with_write_token(CONFIG);
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // A name that would forge a log line, and a body announced but never sent: the
    // answer must come without it.
    let forged = "a%0A2026-11-27T17:00:00Z%20ERROR%20forged%1B%5B31m";
    write!(
        s,
        "PUT /api/v1/models/inj/upload?filename={forged} HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {token}\r\nContent-Length: 900000\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).expect("answered before the body was sent");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("invalid_name"), "{text}");
    let log = d.log();
    assert!(
        !log.lines()
            .any(|l| l.starts_with("2026-11-27T17:00:00Z ERROR forged")),
        "{log}"
    );
    assert!(!log.contains('\u{1b}'), "a raw escape in the log");
}

#[test]
fn an_upload_cut_by_the_client_leaves_no_private_folder_behind() {
    let config = "settle: 200ms\nhttp:\n  listen: 127.0.0.1:0\n  max_upload: 200MiB\n";
    let (d, addr, token) = with_write_token(config);
    let src = d.root.path().join("big-src");
    std::fs::create_dir(&src).unwrap();
    // Many files in their own folders: the extraction makes each entry's folder as it
    // goes, which is how a removed private folder came back.
    for i in 0..60 {
        let dir = src.join(format!("d{i}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("w.bin"), vec![i as u8; 2 << 20]).unwrap();
    }
    let file = d.root.path().join("big.tar");
    tar(&src, &file, &["."]);
    let body = std::fs::read(&file).unwrap();
    let staging = d.root.path().join("models/.staging");
    let uploads = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&staging)
            .map(|rd| {
                rd.map(|e| e.unwrap().path())
                    .filter(|p| {
                        p.file_name()
                            .unwrap()
                            .to_string_lossy()
                            .starts_with("upload.")
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    for _ in 0..3 {
        let mut s = TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "PUT /api/v1/models/cut/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/x-tar\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(&body).unwrap();
        // The whole body received: the extraction has begun.
        common::wait_until(Duration::from_secs(30), "the extraction begun", || {
            uploads().iter().any(|p| p.join("folder").exists())
        });
        // Reset, as a killed client's kernel does: the request is dropped mid-extraction.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid socket and a linger value of the size given.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
        drop(s);
        // Every private folder goes once its extraction stops (before, one dropped
        // while the extraction ran was made again by it and stayed until the next start).
        common::wait_until(
            Duration::from_secs(60),
            "the private folder removed",
            || uploads().is_empty(),
        );
    }
    assert!(
        d.cli(&["status"]).status.success(),
        "the daemon still serves"
    );
}

#[test]
fn a_client_that_half_closes_after_its_body_is_answered() {
    let (d, addr, token) = with_write_token(CONFIG);
    let body = bytes(9, 4000);
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "PUT /api/v1/models/hc/upload?filename=hc.bin HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body).unwrap();
    // As `nc -N` does: the sending side shut once the body is sent.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer:?}");
    assert_eq!(d.versions("hc").len(), 1);
}

#[test]
fn a_transfer_coding_other_than_chunked_is_refused() {
    let (d, addr, token) = with_write_token(CONFIG);
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // A gzip coding under the chunks: hyper takes the chunks off, not the gzip.
    write!(
        s,
        "PUT /api/v1/models/te/upload?filename=te.bin HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {token}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
         5\r\nhello\r\n0\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 501"), "{text}");
    assert!(text.contains("Transfer-Encoding"), "{text}");
    assert!(d.get("te", "latest").is_err(), "nothing was registered");
}
