//! Downloads of files of many chunks on the real daemon: the bytes are the stored bytes
//! whole, by ranges that start, end and straddle the server's chunk boundaries (512 KiB),
//! in a folder's tar, and over HTTPS; a file read from the disk rather than the page
//! cache comes out the same; a stored file that shrinks mid-download cuts the connection
//! short instead of passing for whole, and the daemon keeps serving.

mod common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;

use common::http::{address, extract_tar, get, make_cert, request};
use common::{TestDaemon, bytes, write_renamed};

const CONFIG: &str = "settle: 200ms\nhttp:\n  listen: 127.0.0.1:0\n  anonymous_read: true\n";
/// The server's chunk (src/http/body.rs).
const CHUNK: usize = 512 * 1024;

#[test]
fn a_file_of_several_chunks_is_its_stored_bytes_whole_by_ranges_and_in_a_tar() {
    let d = TestDaemon::start(CONFIG);
    let len = 3 * CHUNK + 1234;
    let content = bytes(21, len);
    write_renamed(&d.inbox(), "m.bin", &content);
    let staged = d.root.path().join("folder-staged");
    std::fs::create_dir_all(&staged).unwrap();
    std::fs::write(staged.join("weights.bin"), &content).unwrap();
    std::fs::write(staged.join("config.json"), b"{}\n").unwrap();
    std::fs::rename(&staged, d.inbox().join("folder")).unwrap();
    d.wait_versions("m", 1);
    d.wait_versions("folder", 1);
    let addr = address(&d);
    let path = "/api/v1/models/m/versions/v1/files/m.bin";

    let a = get(&addr, path);
    assert_eq!(a.status, 200);
    assert_eq!(a.body.len(), len);
    assert!(a.body == content, "the whole body is the stored file");

    for (start, end) in [
        (CHUNK - 1, CHUNK),       // the last byte of one chunk and the first of the next
        (CHUNK, 2 * CHUNK - 1),   // exactly the second chunk
        (1000, 3 * CHUNK + 10),   // from inside the first into the last, short one
        (2 * CHUNK + 7, len - 1), // a tail starting mid-chunk
        (len - 1, len - 1),       // the last byte
        (0, 0),                   // the first
    ] {
        let range = format!("bytes={start}-{end}");
        let a = request(&addr, "GET", path, &[("Range", &range)]);
        assert_eq!(a.status, 206, "{range}");
        assert!(a.body == content[start..=end], "{range}: other bytes");
        assert_eq!(
            a.header("content-range"),
            Some(format!("bytes {start}-{end}/{len}").as_str())
        );
    }

    // The same bytes as a file of a folder version's tar, read the way `tar` reads it.
    let a = get(&addr, "/api/v1/models/folder/versions/v1/tar");
    assert_eq!(a.status, 200);
    let (_, out) = extract_tar(d.root.path(), "folder", &a.body);
    let got = std::fs::read(out.join("folder-v1/weights.bin")).unwrap();
    assert!(got == content, "the tar's file is the stored file");
    assert_eq!(
        std::fs::read(out.join("folder-v1/config.json")).unwrap(),
        b"{}\n"
    );
}

#[test]
fn a_file_not_in_the_page_cache_downloads_the_same() {
    let d = TestDaemon::start(CONFIG);
    let content = bytes(22, 2 * CHUNK + 99);
    write_renamed(&d.inbox(), "cold.bin", &content);
    d.wait_versions("cold", 1);
    let addr = address(&d);
    let stored = d.get("cold", "v1").unwrap().files[0].path.clone();
    let path = "/api/v1/models/cold/versions/v1/files/cold.bin";
    for range in [None, Some((CHUNK - 5, 2 * CHUNK + 5))] {
        // The stored file's pages dropped from the page cache (they are clean: the store
        // synced them), so the server must wait for the disk for each chunk.
        let f = std::fs::File::open(&stored).unwrap();
        // SAFETY: advice on a descriptor open for the call; no memory is passed.
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
        let a = match range {
            None => get(&addr, path),
            Some((s, e)) => request(&addr, "GET", path, &[("Range", &format!("bytes={s}-{e}"))]),
        };
        let want = range.map_or(&content[..], |(s, e)| &content[s..=e]);
        assert!(a.body == want, "{range:?}: other bytes");
    }
}

#[test]
fn a_stored_file_that_shrinks_mid_download_cuts_the_connection_short() {
    let d = TestDaemon::start(CONFIG);
    let len = 32 << 20;
    write_renamed(&d.inbox(), "big.bin", &bytes(23, len));
    d.wait_versions("big", 1);
    let addr = address(&d);
    let stored = d.get("big", "v1").unwrap().files[0].path.clone();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    s.write_all(b"GET /api/v1/models/big/versions/v1/files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 4096];
    s.read_exact(&mut first).unwrap();
    assert!(first.starts_with(b"HTTP/1.1 200"));
    // Someone cuts the stored file in half behind the daemon's back (the answer's head,
    // with the whole length, is already sent; the server is at most a few MiB ahead).
    std::fs::OpenOptions::new()
        .write(true)
        .open(&stored)
        .unwrap()
        .set_len(len as u64 / 2)
        .unwrap();
    let mut rest = Vec::new();
    // The connection ends (not stalls) and what came is less than the length promised:
    // a client cannot take it for the whole file.
    let end = s.read_to_end(&mut rest);
    let got = first.len() + rest.len();
    assert!(
        end.is_ok() || end.as_ref().unwrap_err().kind() == std::io::ErrorKind::ConnectionReset,
        "{end:?}"
    );
    assert!(got < len, "{got} bytes came for a file cut to {}", len / 2);
    assert!(
        d.log().contains("HTTP download cut short"),
        "the daemon says why: {}",
        d.log()
    );
    // Still serving.
    let a = get(&addr, "/api/v1/ping");
    assert_eq!(a.status, 200);
}

#[test]
fn a_file_of_several_chunks_downloads_the_same_over_https() {
    let mut d = TestDaemon::new("");
    let tls = d.root.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    make_cert(&tls);
    d.write_config(&format!(
        "settle: 200ms\nhttp:\n  listen: 127.0.0.1:0\n  anonymous_read: true\n  tls:\n    cert: {}\n    key: {}\n",
        tls.join("cert.pem").display(),
        tls.join("key.pem").display()
    ));
    d.spawn();
    let len = 2 * CHUNK + 777;
    let content = bytes(24, len);
    write_renamed(&d.inbox(), "m.bin", &content);
    d.wait_versions("m", 1);
    let url = d.status().http.expect("status names the HTTPS address");
    let file = format!("{url}/api/v1/models/m/versions/v1/files/m.bin");
    let cacert = tls.join("cert.pem");
    let got = d.root.path().join("got.bin");
    let (start, end) = (CHUNK - 3, 2 * CHUNK + 3);
    for range in [None, Some(format!("{start}-{end}"))] {
        let mut curl = std::process::Command::new("curl");
        curl.args(["-sf", "-m", "30", "--cacert"])
            .arg(&cacert)
            .arg("-o")
            .arg(&got)
            .arg(&file);
        if let Some(r) = &range {
            curl.args(["-r", r]);
        }
        let out = curl.output().expect("curl");
        assert!(out.status.success(), "{range:?}: {}", common::stderr(&out));
        let want = if range.is_some() {
            &content[start..=end]
        } else {
            &content[..]
        };
        assert!(
            std::fs::read(&got).unwrap() == want,
            "{range:?}: other bytes"
        );
    }
}
