//! A small HTTP/1.1 client on std::net for the HTTP API's tests: whole requests written
//! as given (so hostile ones can be sent byte for byte), answers read to the end.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::TestDaemon;

/// One answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// Header names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    /// The value of header `name` (lower case), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The error code of a JSON error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code in {}", self.json()))
            .to_string()
    }
}

/// A daemon started with `config`, its HTTP API's `host:port` and a new write token.
pub fn with_write_token(config: &str) -> (TestDaemon, String, String) {
    let d = TestDaemon::start(config);
    let token = super::ok(&d, &["token", "create", "ci", "--scope", "write"])
        .trim()
        .to_string();
    let addr = address(&d);
    (d, addr, token)
}

/// Token files `reader.token` (scope read) and `writer.token` (scope write) in `dir`,
/// made on the daemon's machine as a user would (`modelreg token create`).
pub fn token_files(
    d: &TestDaemon,
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let token = |name: &str, scope: &str| {
        let t = super::ok(d, &["token", "create", name, "--scope", scope]);
        let path = dir.join(format!("{name}.token"));
        std::fs::write(&path, t).unwrap();
        path
    };
    (token("reader", "read"), token("writer", "write"))
}

/// `host:port` of the daemon's HTTP API, from its `status` (it listens on port 0).
pub fn address(d: &TestDaemon) -> String {
    let url = d.status().http.expect("status names the HTTP address");
    url.trim_start_matches("http://").to_string()
}

/// Sends `raw` on a new connection and reads the answer until the server closes it.
pub fn send(addr: &str, raw: &[u8]) -> std::io::Result<Answer> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(raw)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    Ok(parse(&buf))
}

/// Parses one answer (head and everything after it as the body).
pub fn parse(buf: &[u8]) -> Answer {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer head in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: buf[end + 4..].to_vec(),
    }
}

/// A request as a receiver read it: headers (names lower-cased) and body.
pub type Received = (Vec<(String, String)>, Vec<u8>);

/// Reads one request from `conn` (a receiver's side): its headers (names lower-cased)
/// and its body (`Content-Length` bytes). `buf` holds bytes read past it (the next
/// request on a kept-alive connection). `None` when the connection ends first.
pub fn read_request(conn: &mut impl Read, buf: &mut Vec<u8>) -> Option<Received> {
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[head_end..head_end + len].to_vec();
    buf.drain(..head_end + len);
    Some((headers, body))
}

/// `METHOD path` with extra header lines, on a connection closed after the answer.
pub fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        raw.push_str(&format!("{n}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    send(addr, raw.as_bytes()).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// `GET path`.
pub fn get(addr: &str, path: &str) -> Answer {
    request(addr, "GET", path, &[])
}

/// A self-signed certificate for 127.0.0.1 and its key (PEM) in `dir`.
pub fn make_cert(dir: &std::path::Path) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ])
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", super::stderr(&out));
}

/// Writes `archive` (a tar's bytes) to `dir/NAME.tar` and extracts it with the real `tar`
/// into `dir/extracted`; returns the archive's path and that folder.
pub fn extract_tar(
    dir: &std::path::Path,
    name: &str,
    archive: &[u8],
) -> (std::path::PathBuf, std::path::PathBuf) {
    let out = dir.join("extracted");
    std::fs::create_dir(&out).unwrap();
    let path = dir.join(format!("{name}.tar"));
    std::fs::write(&path, archive).unwrap();
    let tar = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&path)
        .arg("-C")
        .arg(&out)
        .output()
        .expect("run tar");
    assert!(tar.status.success(), "{}", super::stderr(&tar));
    (path, out)
}
