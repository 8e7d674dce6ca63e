//! Downloads over HTTP on the real daemon: every stored file with ETag (its SHA-256),
//! Content-Length, Last-Modified, HEAD, one Range, 304; a folder version as one tar that
//! the real `tar` extracts to the stored bytes; and only files the version lists, however
//! the path is encoded.

mod common;

use std::process::Command;

use common::http::{Answer, address, extract_tar, get, request, send};
use common::{TestDaemon, bytes, write_renamed};

const CONFIG: &str = "settle: 200ms\nhttp:\n  listen: 127.0.0.1:0\n  anonymous_read: true\n";

/// A daemon with `m` v1 (one file of 300 KiB: several chunks) and `bert` v1 (a folder).
fn daemon() -> (TestDaemon, String, Vec<u8>) {
    let d = TestDaemon::start(CONFIG);
    let content = bytes(7, 300 * 1024 + 17);
    write_renamed(&d.inbox(), "m.pt", &content);
    let staged = d.root.path().join("bert-staged");
    std::fs::create_dir_all(staged.join("sub/deeper")).unwrap();
    std::fs::write(staged.join("model.safetensors"), bytes(8, 70_000)).unwrap();
    std::fs::write(staged.join("config.json"), b"{\"layers\": 2}\n").unwrap();
    std::fs::write(staged.join("sub/deeper/vocab.txt"), b"a\nb\n").unwrap();
    std::fs::write(staged.join("empty"), b"").unwrap();
    std::fs::rename(&staged, d.inbox().join("bert")).unwrap();
    d.wait_versions("m", 1);
    d.wait_versions("bert", 1);
    let addr = address(&d);
    (d, addr, content)
}

const M: &str = "/api/v1/models/m/versions/v1/files/m.pt";

fn without_date(a: &Answer) -> Vec<(String, String)> {
    a.headers
        .iter()
        .filter(|(n, _)| n != "date")
        .cloned()
        .collect()
}

#[test]
fn a_stored_file_downloads_whole_with_its_hash_as_etag() {
    let (d, addr, content) = daemon();
    let v = d.get("m", "latest").unwrap();
    let a = get(&addr, "/api/v1/models/m/versions/latest/files/m.pt");
    assert_eq!(a.status, 200);
    assert!(a.body == content, "the body is the stored file");
    assert_eq!(
        a.header("etag"),
        Some(format!("\"{}\"", v.files[0].sha256).as_str())
    );
    assert_eq!(
        a.header("content-length"),
        Some(content.len().to_string().as_str())
    );
    assert_eq!(a.header("accept-ranges"), Some("bytes"));
    assert_eq!(a.header("x-modelreg-version"), Some("v1"));
    let modified = a.header("last-modified").expect("last-modified");
    assert!(modified.ends_with(" GMT"), "{modified}");
}

#[test]
fn head_answers_exactly_the_headers_of_get_without_a_body() {
    let (_d, addr, _) = daemon();
    for path in [
        M,
        "/api/v1/models/bert/versions/latest/files/sub/deeper/vocab.txt",
        "/api/v1/models/bert/versions/v1/tar",
    ] {
        let g = get(&addr, path);
        let h = request(&addr, "HEAD", path, &[]);
        assert_eq!(g.status, 200, "{path}");
        assert_eq!(h.status, 200, "{path}");
        assert_eq!(without_date(&h), without_date(&g), "{path}");
        assert!(h.body.is_empty(), "{path}: HEAD sent a body");
        assert_eq!(
            g.header("content-length").unwrap(),
            g.body.len().to_string(),
            "{path}"
        );
    }
}

#[test]
fn one_range_is_served_and_many_are_refused() {
    let (_d, addr, content) = daemon();
    let len = content.len();
    let a = request(&addr, "GET", M, &[("Range", "bytes=1000-262999")]);
    assert_eq!(a.status, 206);
    assert!(a.body == content[1000..263_000]);
    assert_eq!(
        a.header("content-range"),
        Some(format!("bytes 1000-262999/{len}").as_str())
    );
    let a = request(&addr, "GET", M, &[("Range", "bytes=-5")]);
    assert_eq!((a.status, a.body.as_slice()), (206, &content[len - 5..]));
    // Resuming from where a download stopped (curl -C -, wget -c).
    let a = request(
        &addr,
        "GET",
        M,
        &[("Range", &format!("bytes={}-", len - 100))],
    );
    assert_eq!((a.status, a.body.as_slice()), (206, &content[len - 100..]));
    // If-Range with another ETag: the file changed for this client, so all of it.
    let a = request(
        &addr,
        "GET",
        M,
        &[("Range", "bytes=0-9"), ("If-Range", "\"other\"")],
    );
    assert_eq!((a.status, a.body.len()), (200, len));
    // Beyond the end, several ranges, thousands of ranges: 416, told why.
    let thousands = format!(
        "bytes={}",
        (0..4000)
            .map(|i| format!("{i}-{i}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    for range in [format!("bytes={len}-"), "bytes=0-1,5-6".into(), thousands] {
        let a = request(&addr, "GET", M, &[("Range", &range)]);
        assert_eq!(a.status, 416, "{}", &range[..20.min(range.len())]);
        assert_eq!(a.code(), "range_not_satisfiable");
        assert_eq!(
            a.header("content-range"),
            Some(format!("bytes */{len}").as_str())
        );
    }
    assert_eq!(get(&addr, M).status, 200, "still serving");
}

#[test]
fn a_known_etag_gets_304_without_a_body() {
    let (_d, addr, _) = daemon();
    let etag = get(&addr, M).header("etag").unwrap().to_string();
    for inm in [etag.clone(), format!("\"x\", W/{etag}"), "*".into()] {
        let a = request(&addr, "GET", M, &[("If-None-Match", &inm)]);
        assert_eq!(a.status, 304, "{inm}");
        assert!(a.body.is_empty());
        assert_eq!(a.header("etag"), Some(etag.as_str()));
    }
    let a = request(&addr, "GET", M, &[("If-None-Match", "\"stale\"")]);
    assert_eq!(a.status, 200);
}

#[test]
fn a_folder_version_is_one_tar_that_extracts_to_the_stored_bytes() {
    let (d, addr, _) = daemon();
    let a = get(&addr, "/api/v1/models/bert/versions/latest/tar");
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.header("content-type"), Some("application/x-tar"));
    let (archive, out) = extract_tar(d.root.path(), "bert", &a.body);
    let v = d.get("bert", "v1").unwrap();
    assert_eq!(v.files.len(), 4);
    for f in &v.files {
        let rel = f.path.strip_prefix(&format!("{}/", v.dir)).unwrap();
        let got = std::fs::read(out.join("bert-v1").join(rel)).unwrap();
        assert!(got == std::fs::read(&f.path).unwrap(), "{rel} differs");
        // And each file alone, by its path in the version.
        let one = get(
            &addr,
            &format!("/api/v1/models/bert/versions/v1/files/{rel}"),
        );
        assert!(one.status == 200 && one.body == got, "{rel}");
    }
    // Nothing but the version's files (no manifest) is in it.
    let listed = Command::new("tar")
        .arg("-tf")
        .arg(&archive)
        .output()
        .unwrap();
    let names = common::stdout(&listed);
    assert!(!names.contains(".modelreg-version.json"), "{names}");
}

#[test]
fn traversal_and_unlisted_paths_are_refused_however_encoded() {
    let (d, addr, _) = daemon();
    std::fs::write(d.root.path().join("secret.txt"), b"not for you").unwrap();
    let base = "/api/v1/models/bert/versions/v1/files/";
    for (path, status) in [
        ("../../../../secret.txt", 400),
        ("..%2f..%2f..%2f..%2fsecret.txt", 400),
        ("%2e%2e/%2e%2e/%2e%2e/%2e%2e/secret.txt", 400),
        ("%2e%2e%2f%2e%2e%2fregistry.yaml", 400),
        ("%252e%252e%252fsecret.txt", 400),
        ("..%5c..%5csecret.txt", 400),
        ("sub\\deeper\\vocab.txt", 400),
        ("config.json%00.png", 400),
        ("%2fetc%2fpasswd", 400),
        ("sub//deeper/vocab.txt", 400),
        ("%c0%ae%c0%ae/secret.txt", 400),
        (".modelreg-version.json", 404),
        ("sub", 404),
        ("secret.txt", 404),
    ] {
        let raw = format!("GET {base}{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let a = send(&addr, raw.as_bytes()).unwrap();
        assert_eq!(
            a.status,
            status,
            "{path}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert!(!a.body.windows(11).any(|w| w == b"not for you"), "{path}");
        let code = a.code();
        assert!(
            code == "bad_request" || code == "not_found",
            "{path}: {code}"
        );
    }
    // The model and selector segments are checked by the catalog's rules.
    let a = get(&addr, "/api/v1/models/%2e%2e/versions/v1/files/x");
    assert_eq!((a.status, a.code().as_str()), (400, "invalid_name"));
    assert_eq!(get(&addr, M).status, 200, "still serving");
}

#[test]
fn a_download_that_stalls_does_not_hold_up_shutdown() {
    use std::io::{Read, Write};
    let mut d = TestDaemon::start(CONFIG);
    write_renamed(&d.inbox(), "big.bin", &bytes(9, 16 << 20));
    d.wait_versions("big", 1);
    let addr = address(&d);
    // A client that asks for 16 MiB and reads only the first bytes: the answer cannot be
    // finished, so the daemon's grace period (5 s) ends it.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /api/v1/models/big/versions/v1/files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 4096];
    s.read_exact(&mut first).unwrap();
    assert!(first.starts_with(b"HTTP/1.1 200"));
    let t = std::time::Instant::now();
    assert_eq!(d.stop().code(), Some(0));
    assert!(
        d.log().contains("still busy after 5s; closed"),
        "{}",
        d.log()
    );
    eprintln!("stopped in {:?} with a stalled download", t.elapsed());
    drop(s);
}

#[test]
fn a_lost_file_is_file_missing_and_its_siblings_are_still_served() {
    use std::os::unix::fs::PermissionsExt;
    let (d, addr, _) = daemon();
    let v = d.get("bert", "v1").unwrap();
    // Someone deletes one stored file behind the daemon's back.
    let lost = v
        .files
        .iter()
        .find(|f| f.path.ends_with("config.json"))
        .unwrap();
    let dir = std::path::Path::new(&lost.path)
        .parent()
        .unwrap()
        .to_path_buf();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::remove_file(&lost.path).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
    let base = "/api/v1/models/bert/versions/v1";
    for (method, path) in [("GET", "files/config.json"), ("HEAD", "files/config.json")] {
        let a = request(&addr, method, &format!("{base}/{path}"), &[]);
        assert_eq!(a.status, 500, "{method} {path}");
        if method == "GET" {
            assert_eq!(a.code(), "file_missing");
            let msg = a.json()["error"]["message"].as_str().unwrap().to_string();
            assert!(msg.contains("config.json"), "{msg}");
        }
    }
    // The archive is refused whole before its first byte, as `get` refuses the version.
    let a = get(&addr, &format!("{base}/tar"));
    assert_eq!((a.status, a.code().as_str()), (500, "file_missing"));
    // Each download checks the file it serves: the others are intact and served.
    let a = get(&addr, &format!("{base}/files/sub/deeper/vocab.txt"));
    assert_eq!((a.status, a.body.as_slice()), (200, &b"a\nb\n"[..]));
}
