//! A registration retried after it was blocked waits for the new attempt: the problem
//! left by the earlier attempt does not answer the new `wait`.

mod common;

use common::{TestDaemon, fails, ok};

#[test]
fn a_retry_after_a_blocked_registration_waits_for_the_new_attempt() {
    let d = TestDaemon::quick();
    let elsewhere = tempfile::tempdir().unwrap();
    let folder = elsewhere.path().join("retry");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("weights.bin"), b"first weights").unwrap();
    let folder = folder.to_str().unwrap();
    // A string over the sidecar's 64 KiB limit: the attempt is blocked.
    let long = format!("notes={}", "x".repeat(70_000));
    let err = fails(&d, &["add", folder, "--meta", &long, "--wait"]);
    assert!(err.contains("at most 65536"), "{err}");
    // Fixed and retried at once: the old problem is still on the board until the group
    // settles again, and must not answer this wait.
    let out = ok(
        &d,
        &["add", folder, "--meta", "notes=fixed", "--wait", "--json"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["version"]["version"], "v1", "{out}");
    assert_eq!(v["version"]["metadata"]["notes"], "fixed", "{out}");
    // A retry that is still bad is answered as blocked by its own attempt, not left to
    // time out.
    let err = fails(
        &d,
        &["add", folder, "--meta", &long, "--wait", "--timeout", "60"],
    );
    assert!(err.contains("at most 65536"), "{err}");
}

#[test]
fn a_wait_whose_entry_is_replaced_by_another_writer_says_so_at_once() {
    // Two hand-overs of one file name race: the second rename replaces the first before
    // it settled. The first one's wait cannot be answered with a version any more.
    let d = TestDaemon::start("settle: 10s\n");
    let inbox = d.inbox();
    std::fs::write(inbox.join(".m.pt.1.tmp"), b"mine").unwrap();
    std::fs::rename(inbox.join(".m.pt.1.tmp"), inbox.join("m.pt")).unwrap();
    let mut c = d.client();
    let waiter = std::thread::spawn(move || c.wait("m", "m.pt", Some(60_000)));
    // The wait has looked at the entry once it is waiting; then the other writer's file
    // replaces it in one rename.
    std::thread::sleep(std::time::Duration::from_millis(1000));
    std::fs::write(inbox.join(".m.pt.2.tmp"), b"theirs").unwrap();
    std::fs::rename(inbox.join(".m.pt.2.tmp"), inbox.join("m.pt")).unwrap();
    let t0 = std::time::Instant::now();
    let err = waiter
        .join()
        .unwrap()
        .expect_err("the replaced entry's wait must fail");
    assert!(
        err.to_string().contains("replaced by another writer"),
        "{err}"
    );
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(5),
        "answered only after {:?}",
        t0.elapsed()
    );
}
