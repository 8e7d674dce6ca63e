//! Hostile sidecars, requests and catalogs: whatever an uploader drops or an attacker
//! writes beside registry.yaml, the daemon refuses it with path:line, keeps serving, and
//! never writes a registry.yaml it cannot read back.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// A sidecar whose metadata nests `depth` lists, in flow style.
fn nested_lists(depth: usize) -> String {
    format!(
        "metrics: {{accuracy: 0.5}}\nmetadata: {{x: {}1{}}}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

/// The peak resident memory of a process, in KiB (VmHWM).
fn peak_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// One raw request line on the socket, the answer as JSON.
fn raw_call(d: &TestDaemon, line: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(d.socket()).unwrap();
    s.write_all(line.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap()
}

#[test]
fn metadata_nested_too_deep_is_refused_and_the_daemon_restarts() {
    let mut d = TestDaemon::quick();
    write_renamed(&d.inbox(), "good.pt", &bytes(1, 100));
    d.wait_versions("good", 1);
    // 126 levels: the old parser took it, and registry.yaml (4 levels deeper) could not
    // be read back, neither by `get` nor by the next start.
    write_renamed(
        &d.inbox(),
        "deep.metrics.yaml",
        nested_lists(126).as_bytes(),
    );
    write_renamed(&d.inbox(), "deep.pt", &bytes(2, 100));
    let p = d.wait_problem_text("deep.metrics.yaml:2");
    assert!(p.contains("deeper than"), "{p}");
    assert!(d.versions("deep").is_empty(), "the artifact waits");
    assert!(d.get("good", "latest").is_ok());
    // What is written reads back: the daemon restarts on its own registry.yaml.
    d.stop();
    d.spawn();
    assert!(d.get("good", "latest").is_ok());
    d.wait_problem_text("deep.metrics.yaml:2");
    d.catalog();
    // A sidecar nested as deep as the limit allows is registered and reads back after a
    // restart, through registry.yaml and through the start-up cache.
    let limit = modelreg::sidecar::MAX_DEPTH - 2;
    write_renamed(
        &d.inbox(),
        "deep.metrics.yaml",
        nested_lists(limit).as_bytes(),
    );
    d.wait_versions("deep", 1);
    d.stop();
    d.spawn();
    assert!(d.get("deep", "latest").is_ok());
    std::fs::remove_file(modelreg::registry::persist::cache_path(&d.registry_path())).unwrap();
    d.stop();
    d.spawn();
    let v = d.get("deep", "latest").unwrap();
    assert_eq!(v.metrics["accuracy"], 0.5);
}

#[test]
fn very_deep_nesting_is_refused_quickly_and_sigterm_is_honoured() {
    let mut d = TestDaemon::quick();
    let n = 100_000;
    let flow_map = format!("metrics: {{a: 1}}\nmetadata: {}1\n", "{a: ".repeat(n));
    let block_seq = format!(
        "metrics: {{a: 1}}\nmetadata:\n  x:\n    {}1\n",
        "- ".repeat(n)
    );
    write_renamed(&d.inbox(), "lists.metrics.yaml", nested_lists(n).as_bytes());
    write_renamed(&d.inbox(), "lists.pt", &bytes(1, 10));
    write_renamed(&d.inbox(), "maps.metrics.yaml", flow_map.as_bytes());
    write_renamed(&d.inbox(), "maps.pt", &bytes(2, 10));
    write_renamed(&d.inbox(), "dashes.metrics.yaml", block_seq.as_bytes());
    write_renamed(&d.inbox(), "dashes.pt", &bytes(3, 10));
    for f in ["lists", "maps", "dashes"] {
        let p = d.wait_problem_text(&format!("{f}.metrics.yaml:"));
        assert!(p.contains("deeper than"), "{p}");
    }
    assert!(d.get("lists", "latest").is_err());
    // A hostile sidecar pending when SIGTERM arrives does not hold the daemon up.
    write_renamed(&d.inbox(), "late.metrics.yaml", nested_lists(n).as_bytes());
    write_renamed(&d.inbox(), "late.pt", &bytes(4, 10));
    wait_until(Duration::from_secs(30), "late to be noticed", || {
        let s = d.call(&modelreg::protocol::Request::Status {}).unwrap();
        s.to_string().contains("late")
    });
    let t0 = Instant::now();
    d.signal(libc::SIGTERM);
    let deadline = t0 + Duration::from_secs(5);
    while d.is_running() {
        assert!(Instant::now() < deadline, "still running 5 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An inotify watch on one file, for opens and read-only closes (the daemon's reads).
struct Watch(i32, std::cell::RefCell<std::collections::VecDeque<u32>>);

impl Watch {
    fn new(path: &Path) -> Watch {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        unsafe {
            let fd = libc::inotify_init1(libc::IN_NONBLOCK);
            assert!(fd >= 0);
            let mask = libc::IN_OPEN | libc::IN_CLOSE_NOWRITE;
            assert!(libc::inotify_add_watch(fd, c.as_ptr(), mask) >= 0);
            Watch(fd, Default::default())
        }
    }

    /// Waits (up to 60 s) for the next event whose mask has `bit`; earlier events of
    /// other kinds are dropped.
    fn next(&self, bit: u32) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            while let Some(mask) = self.1.borrow_mut().pop_front() {
                if mask & bit != 0 {
                    return;
                }
            }
            let mut buf = [0u8; 4096];
            let n = unsafe { libc::read(self.0, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                let mut off = 0;
                while off < n as usize {
                    // struct inotify_event: wd, mask, cookie, len, name[len].
                    let mask = u32::from_ne_bytes(buf[off + 4..off + 8].try_into().unwrap());
                    let len = u32::from_ne_bytes(buf[off + 12..off + 16].try_into().unwrap());
                    self.1.borrow_mut().push_back(mask);
                    off += 16 + len as usize;
                }
                continue;
            }
            assert!(
                Instant::now() < deadline,
                "no inotify event {bit:#x} in 60 s"
            );
            let mut p = libc::pollfd {
                fd: self.0,
                events: libc::POLLIN,
                revents: 0,
            };
            unsafe { libc::poll(&mut p, 1, 100) };
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        unsafe { libc::close(self.0) };
    }
}

#[test]
fn sidecar_grown_while_it_is_read_is_read_no_further_than_the_cap() {
    let d = TestDaemon::quick();
    let side = d.inbox().join("big.metrics.yaml");
    // Near the cap, so that reading it takes a while: valid YAML, then comments.
    let mut text = String::from("metrics: {accuracy: 0.5}\n");
    while text.len() < 900 * 1024 {
        text.push_str("# padding padding padding padding padding padding padding\n");
    }
    // As an attacker would: the moment the daemon opens the sidecar, grow it to 3 GB
    // (sparse) on the same inode. Several rounds, since the race may be lost (then the
    // daemon sees the change and refuses the file by its size).
    write(&side, text.as_bytes());
    for round in 0..5 {
        let w = Watch::new(&side);
        write(&side, text.as_bytes());
        w.next(libc::IN_OPEN); // the test's own write
        if round == 0 {
            write_renamed(&d.inbox(), "big.pt", &bytes(1, 100));
        }
        w.next(libc::IN_OPEN); // the daemon's read
        std::fs::OpenOptions::new()
            .write(true)
            .open(&side)
            .unwrap()
            .set_len(3 << 30)
            .unwrap();
        w.next(libc::IN_CLOSE_NOWRITE); // the daemon is done reading
        let rss = peak_rss_kib(d.pid());
        assert!(rss < 100 * 1024, "round {round}: daemon peak RSS {rss} KiB");
    }
    d.wait_problem_text("larger than");
    write(&side, text.as_bytes());
    let v = d.wait_versions("big", 1);
    assert_eq!(v[0].metrics["accuracy"], 0.5);
    let rss = peak_rss_kib(d.pid());
    assert!(rss < 100 * 1024, "daemon peak RSS {rss} KiB");
}

#[test]
fn poisoned_model_name_in_registry_yaml_is_refused_with_its_line() {
    let mut d = TestDaemon::new("settle: 300ms\n");
    // A folder outside the root that an interrupted removal of `../../<victim>` v1 would
    // reach: <root>/models/../../<victim>/v1.
    let outer = d.root.path().parent().unwrap().to_path_buf();
    let victim_name = format!(
        "victim-{}",
        d.root.path().file_name().unwrap().to_string_lossy()
    );
    let victim = outer.join(&victim_name);
    std::fs::create_dir_all(victim.join("v1")).unwrap();
    std::fs::write(victim.join("v1/keep.txt"), b"precious").unwrap();
    let registry = format!(
        "format: 1\nmodels:\n  ../../{victim_name}:\n    highest_version: 1\n    versions:\n      v1:\n        files: []\n        source: pretrained_models/x.pt\n        registered_at: 2026-01-01T00:00:00Z\n        removed: {{at: 2026-01-01T00:00:00Z}}\n"
    );
    std::fs::write(d.registry_path(), registry).unwrap();
    d.spawn_with(&[], false);
    let status = d.stop_wait();
    let kept = victim.join("v1/keep.txt").exists();
    let _ = std::fs::remove_dir_all(&victim);
    assert!(kept, "start-up deleted a folder outside the root");
    assert!(!status.success());
    let log = d.log();
    assert!(log.contains("registry.yaml:3"), "{log}");
    assert!(log.contains("model name"), "{log}");
}

#[test]
fn poisoned_start_up_cache_is_ignored() {
    let mut d = TestDaemon::quick();
    write_renamed(&d.inbox(), "m.pt", &bytes(1, 100));
    d.wait_versions("m", 1);
    d.stop();
    // An attacker rewrites the cache (its checksum still matches registry.yaml) to name a
    // model `../../x`: the cache is refused and registry.yaml, the truth, is read.
    let cache = modelreg::registry::persist::cache_path(&d.registry_path());
    let text = std::fs::read_to_string(&cache).unwrap();
    assert!(text.contains("\"m\":"), "{text}");
    std::fs::write(&cache, text.replace("\"m\":", "\"../../x\":")).unwrap();
    d.spawn();
    assert!(d.get("m", "latest").is_ok());
    let list = d.cli(&["list"]);
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains("../"),
        "{list:?}"
    );
}

#[test]
fn duplicate_keys_in_a_sidecar_are_refused_with_their_line() {
    let d = TestDaemon::quick();
    write_renamed(
        &d.inbox(),
        "dup.metrics.yaml",
        b"metrics:\n  accuracy: 0.5\n  accuracy: 0.9\n",
    );
    write_renamed(&d.inbox(), "dup.pt", &bytes(1, 10));
    let p = d.wait_problem_text("dup.metrics.yaml:3");
    assert!(p.contains("duplicate"), "{p}");
    write_renamed(
        &d.inbox(),
        "dup2.metrics.yaml",
        b"metrics: {a: 1}\nmetadata:\n  k: 1\n  k: 2\n",
    );
    write_renamed(&d.inbox(), "dup2.pt", &bytes(2, 10));
    let p = d.wait_problem_text("dup2.metrics.yaml:4");
    assert!(p.contains("duplicate"), "{p}");
    assert!(d.versions("dup").is_empty() && d.versions("dup2").is_empty());
}

#[test]
fn duplicate_keys_in_a_request_are_refused() {
    let d = TestDaemon::quick();
    write_renamed(&d.inbox(), "a.pt", &bytes(1, 10));
    d.wait_versions("a", 1);
    for line in [
        r#"{"op":"get","name":"b","name":"a"}"#,
        r#"{"op":"list","op":"get","name":"a"}"#,
        r#"{"op":"get","name":"a","selector":"v1","selector":"latest"}"#,
    ] {
        let v = raw_call(&d, line);
        assert_eq!(v["ok"], false, "{line}: {v}");
        assert_eq!(v["error"]["code"], "bad_request", "{line}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("duplicate"),
            "{line}: {v}"
        );
    }
    assert_eq!(raw_call(&d, r#"{"op":"get","name":"a"}"#)["ok"], true);
}

#[test]
fn non_finite_numbers_anywhere_in_a_sidecar_are_refused() {
    let d = TestDaemon::quick();
    for (i, (name, text)) in [
        ("nan", "metrics: {a: 1}\nmetadata:\n  x: .nan\n"),
        ("inf", "metrics: {a: 1}\nparams:\n  lr: [1, -.inf]\n"),
    ]
    .into_iter()
    .enumerate()
    {
        write_renamed(&d.inbox(), &format!("{name}.metrics.yaml"), text.as_bytes());
        write_renamed(&d.inbox(), &format!("{name}.pt"), &bytes(i as u64, 10));
    }
    let p = d.wait_problem_text("nan.metrics.yaml:3");
    assert!(p.contains("finite"), "{p}");
    let p = d.wait_problem_text("inf.metrics.yaml:3");
    assert!(p.contains("finite"), "{p}");
    assert!(d.versions("nan").is_empty() && d.versions("inf").is_empty());
}
