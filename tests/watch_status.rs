//! What `status` says of inbox entries still waiting: `writing` while `cp` copies a large
//! file, `since_secs` counted from the current state, and a name that is not UTF-8 shown
//! with its path, the bad bytes escaped.

mod common;

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use modelreg::protocol::Request;

const MIB: usize = 1 << 20;

/// Writes `mib` MiB of real (non-sparse, not all-zero) data to `path`, synced, so that
/// `cp` has every byte to copy.
fn big_file(path: &Path, mib: usize) {
    let mut f = std::io::BufWriter::with_capacity(MIB, std::fs::File::create(path).unwrap());
    let blocks: Vec<Vec<u8>> = (0..8).map(|i| bytes(i, MIB)).collect();
    for i in 0..mib {
        f.write_all(&blocks[i % blocks.len()]).unwrap();
    }
    f.into_inner().unwrap().sync_all().unwrap();
}

/// The `waiting` entry of model `name` in a `status` answer, if any.
fn waiting_of(status: &serde_json::Value, name: &str) -> Option<serde_json::Value> {
    status["waiting"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == name)
        .cloned()
}

#[test]
fn status_says_writing_while_cp_copies_a_large_file_into_the_inbox() {
    let d = TestDaemon::quick();
    let src = d.root.path().join("source.bin");
    big_file(&src, 400);
    // coreutils `cp` copies with one copy_file_range, whose only data-write event comes
    // when the copy is done: the states seen while it runs must still say `writing`.
    // A warm copy can be quick, so a few tries, each into a fresh name.
    let mut seen: Vec<(String, String)> = Vec::new();
    // Answers that came while cp had been running for long enough for the watcher to
    // have seen the file appear.
    let mut late_looks = 0usize;
    for attempt in 0..3 {
        let name = format!("big{attempt}");
        let mut cp = Command::new("cp")
            .arg(&src)
            .arg(d.inbox().join(format!("{name}.bin")))
            .spawn()
            .unwrap();
        let spawned = Instant::now();
        let mut client = d.client();
        loop {
            let s = client.call(&Request::Status {}).expect("status");
            let running = cp.try_wait().unwrap().is_none();
            if running && spawned.elapsed() >= Duration::from_millis(500) {
                late_looks += 1;
            }
            if let Some(w) = waiting_of(&s, &name)
                && running
            {
                seen.push((
                    w["state"].as_str().unwrap().to_string(),
                    w["reason"].as_str().unwrap_or_default().to_string(),
                ));
            }
            if !running {
                break;
            }
        }
        assert!(cp.wait().unwrap().success());
        d.wait_versions(&name, 1);
        if seen.iter().any(|(state, _)| state == "writing") {
            break;
        }
    }
    if seen.is_empty() && late_looks == 0 {
        // Every copy was over within half a second (a file system that clones instead of
        // copying, or a very fast one): no moment to look at, which proves nothing
        // either way.
        eprintln!("skipped: cp copied 400 MiB in under 0.5 s, three times; nothing to see");
        return;
    }
    let writing = seen
        .iter()
        .find(|(state, _)| state == "writing")
        .unwrap_or_else(|| panic!("never `writing` while cp ran; seen: {seen:?}"));
    assert!(
        writing.1.contains("is open for writing"),
        "the reason says a writer has it open: {writing:?}"
    );
}

#[test]
fn since_secs_counts_from_when_the_group_entered_its_current_state() {
    let d = TestDaemon::start("settle: 3s\n");
    let path = d.inbox().join("slow.bin");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&bytes(1, 4096)).unwrap();
    // Held open: `writing`, for at least a second.
    wait_until(
        Duration::from_secs(30),
        "slow to be writing for 1 s",
        || {
            let s = d.call(&Request::Status {}).unwrap();
            waiting_of(&s, "slow").is_some_and(|w| {
                w["state"] == "writing" && w["since_secs"].as_f64().unwrap() >= 1.0
            })
        },
    );
    f.write_all(&bytes(2, 4096)).unwrap();
    drop(f);
    let closed = Instant::now();
    // Settling since the close, not since the file was first seen over a second ago.
    let mut settling = None;
    wait_until(Duration::from_secs(30), "slow to be settling", || {
        let s = d.call(&Request::Status {}).unwrap();
        let w = waiting_of(&s, "slow");
        if let Some(w) = w.filter(|w| w["state"] == "settling") {
            settling = Some((w["since_secs"].as_f64().unwrap(), closed.elapsed()));
        }
        settling.is_some()
    });
    let (since, after_close) = settling.unwrap();
    assert!(
        since <= after_close.as_secs_f64(),
        "settling for {since} s, but the file was closed only {after_close:?} ago"
    );
    d.wait_versions("slow", 1);
}

/// The path as `status` shows it: the inbox's path, then the name with `\xNN` escapes.
fn shown(inbox: &Path, escaped_name: &str) -> String {
    format!("{}/{escaped_name}", inbox.display())
}

#[test]
fn a_name_that_is_not_utf8_is_a_problem_naming_its_path_with_the_bytes_escaped() {
    let mut d = TestDaemon::new("settle: 300ms\n");
    std::fs::create_dir_all(d.inbox()).unwrap();
    // One there before the start (found by the start-up scan), one arriving later.
    let before = d.inbox().join(OsStr::from_bytes(b"old\xff.pt"));
    write(&before, b"weights");
    d.spawn();
    let later = d.inbox().join(OsStr::from_bytes(b"bad\xff\xfename.pt"));
    write(&later, b"weights");
    for escaped in ["old\\xff.pt", "bad\\xff\\xfename.pt"] {
        let path = shown(&d.inbox(), escaped);
        let mut problem = None;
        wait_until(
            Duration::from_secs(30),
            &format!("a problem for {path}"),
            || {
                let s = d.call(&Request::Status {}).unwrap();
                problem = s["problems"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["path"] == path.as_str())
                    .cloned();
                problem.is_some()
            },
        );
        let message = problem.unwrap()["message"].as_str().unwrap().to_string();
        assert!(
            message.starts_with(&path) && message.contains("not valid UTF-8"),
            "the message names the path and why: {message}"
        );
    }
    // The text `status` names them too (it prints the messages).
    let text = ok(&d, &["status"]);
    assert!(
        text.contains("bad\\xff\\xfename.pt"),
        "status text names the file:\n{text}"
    );
    // Renamed to a UTF-8 name: registered, and the problem is gone.
    std::fs::rename(&later, d.inbox().join("fixed.pt")).unwrap();
    d.wait_versions("fixed", 1);
    let gone = shown(&d.inbox(), "bad\\xff\\xfename.pt");
    wait_until(Duration::from_secs(30), "the problem to be cleared", || {
        let s = d.call(&Request::Status {}).unwrap();
        !s["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["path"] == gone.as_str())
    });
}
