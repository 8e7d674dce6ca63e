//! Liveness at the edges: files written through a hard link from outside the inbox,
//! empty files, `wait` on an entry deleted while waiting, entries of a deleted inbox.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

/// A writer holds `/outside/ckpt.pt` open, writes a chunk, hard-links it into the inbox
/// and keeps writing through its own name (no event in the inbox). The checkpoint must
/// be registered once, with its final bytes, not at its first chunk.
#[test]
fn a_hard_linked_file_still_written_outside_is_registered_with_its_final_bytes() {
    let d = TestDaemon::quick();
    let outside = d.root.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let src = outside.join("ckpt.pt");
    let data = bytes(1200, 4 * 256 * 1024);
    let mut f = std::fs::File::create(&src).unwrap();
    let chunks: Vec<&[u8]> = data.chunks(256 * 1024).collect();
    f.write_all(chunks[0]).unwrap();
    f.flush().unwrap();
    std::fs::hard_link(&src, d.inbox().join("ckpt.pt")).unwrap();
    for c in &chunks[1..] {
        // Longer than the settle period (300 ms) between chunks.
        std::thread::sleep(Duration::from_millis(900));
        f.write_all(c).unwrap();
        f.flush().unwrap();
    }
    drop(f);
    let vs = d.wait_versions("ckpt", 1);
    d.wait_seen("ckpt.pt");
    let now = d.versions("ckpt");
    assert_eq!(now.len(), 1, "one version, with the final bytes: {now:?}");
    assert_eq!(vs[0].size, data.len() as u64, "{:?}", vs[0]);
}

/// The same through a writer that opens, appends and closes each chunk: between chunks
/// no writer has it open, so only a later look at its stat can see the change. The
/// final bytes must become a version.
#[test]
fn a_hard_linked_file_appended_outside_gets_a_version_with_its_final_bytes() {
    let d = TestDaemon::quick();
    let outside = d.root.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let src = outside.join("ckpt.pt");
    let data = bytes(1300, 3 * 256 * 1024);
    let chunks: Vec<&[u8]> = data.chunks(256 * 1024).collect();
    std::fs::write(&src, chunks[0]).unwrap();
    std::fs::hard_link(&src, d.inbox().join("ckpt.pt")).unwrap();
    d.wait_versions("ckpt", 1);
    for c in &chunks[1..] {
        let mut f = std::fs::OpenOptions::new().append(true).open(&src).unwrap();
        f.write_all(c).unwrap();
    }
    wait_until(
        Duration::from_secs(30),
        "a version with the final bytes",
        || {
            d.versions("ckpt")
                .iter()
                .any(|v| v.size == data.len() as u64)
        },
    );
}

/// A daemon that cannot ask the kernel about another user's file (not its owner, no
/// CAP_LEASE) does not claim the file is open: it says it cannot tell, whose it is, and
/// when it will be registered unless it changes.
#[test]
fn status_says_it_cannot_tell_when_the_lease_probe_cannot_ask() {
    if !can_switch_user("status_says_it_cannot_tell_when_the_lease_probe_cannot_ask") {
        return;
    }
    let mut d = TestDaemon::new("settle: 300ms\n");
    d.give_to_nobody();
    d.spawn_as_nobody();
    let path = d.inbox().join("x.pt");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&bytes(1400, 10_000)).unwrap();
    let mut reason = String::new();
    wait_until(
        Duration::from_secs(30),
        "x to be waiting as written",
        || {
            let st = d.status();
            match st.waiting.iter().find(|w| w.name == "x") {
                Some(w) if w.state == "writing" => {
                    reason = w.reason.clone().unwrap_or_default();
                    true
                }
                _ => false,
            }
        },
    );
    assert!(
        reason.contains("cannot tell whether a writer still has x.pt open")
            && reason.contains("owner uid 0")
            && reason.contains("unless it changes"),
        "{reason}"
    );
    eprintln!("status reason: {reason}");
    assert!(!reason.contains("is open for writing"), "{reason}");
    drop(f);
}

/// `touch empty.pt` is not a version: like an empty folder it waits, visibly, for its
/// bytes; once written it is registered with them.
#[test]
fn an_empty_file_waits_for_its_bytes() {
    let d = TestDaemon::quick();
    let path = d.inbox().join("empty.pt");
    std::fs::File::create(&path).unwrap();
    let mut reason = String::new();
    wait_until(
        Duration::from_secs(30),
        "empty to wait with a reason",
        || {
            let st = d.status();
            reason = st
                .waiting
                .iter()
                .find(|w| w.name == "empty")
                .and_then(|w| w.reason.clone())
                .unwrap_or_default();
            reason.contains("empty file") && reason.contains("waiting for its bytes")
        },
    );
    eprintln!("status reason: {reason}");
    // Several settle periods later it still is not a version.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(d.versions("empty").is_empty(), "{:?}", d.versions("empty"));
    let data = bytes(1500, 5_000);
    write(&path, &data);
    let vs = d.wait_versions("empty", 1);
    assert_eq!(vs[0].size, data.len() as u64);
}

/// A `wait` on an entry deleted while it waits answers `entry_not_found` at once, not
/// `timeout` at its deadline.
#[test]
fn wait_on_an_entry_deleted_while_waiting_says_it_is_gone() {
    let d = TestDaemon::quick();
    let path = d.inbox().join("doomed.pt");
    // Held open by its writer, so it stays waiting.
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&bytes(1600, 10_000)).unwrap();
    let mut client = d.client();
    let waiter = std::thread::spawn(move || {
        client.call(&modelreg::protocol::Request::Wait {
            name: "doomed".into(),
            entry: "doomed.pt".into(),
            timeout_ms: Some(20_000),
        })
    });
    wait_until(Duration::from_secs(10), "doomed to be waiting", || {
        d.status().waiting.iter().any(|w| w.name == "doomed")
    });
    std::fs::remove_file(&path).unwrap();
    drop(f);
    let answer = waiter.join().unwrap();
    eprintln!("wait answered: {answer:?}");
    let err = answer.expect_err("no version for a deleted entry");
    assert_eq!(
        err.code(),
        Some(modelreg::protocol::ErrorCode::EntryNotFound),
        "{err}"
    );
}

/// After the inbox is deleted, `status` does not keep listing its vanished entries as
/// blocked; the missing inbox itself is the problem shown.
#[test]
fn entries_of_a_deleted_inbox_are_not_listed_as_waiting() {
    let d = TestDaemon::quick();
    let path = d.inbox().join("vanish.pt");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&bytes(1700, 10_000)).unwrap();
    wait_until(Duration::from_secs(10), "vanish to be waiting", || {
        d.status().waiting.iter().any(|w| w.name == "vanish")
    });
    drop(f);
    std::fs::remove_dir_all(d.inbox()).unwrap();
    let mut last = Vec::new();
    wait_until(Duration::from_secs(10), "vanish to be forgotten", || {
        last = d.status().waiting;
        !last.iter().any(|w| w.name == "vanish")
    });
    eprintln!("waiting after the inbox was deleted: {last:?}");
    let st = d.status();
    assert!(
        st.problems
            .iter()
            .any(|p| p.path == d.inbox().display().to_string()),
        "the missing inbox is shown: {:?}",
        st.problems
    );
}
