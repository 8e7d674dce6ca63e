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
    // Nothing outside shows when the daemon has looked at the waited-for entry, so the
    // replacement comes after a pause. On a busy machine the wait may only be looked at
    // after the replacement: it is then the other writer's file it waits for, and it is
    // answered with that version. That proves nothing either way, so it is tried again
    // under a new name with a longer pause (all well inside the 10 s settle).
    for (attempt, pause_ms) in [1000u64, 2000, 4000].into_iter().enumerate() {
        let (name, file) = (format!("m{attempt}"), format!("m{attempt}.pt"));
        std::fs::write(inbox.join(".m.pt.1.tmp"), b"mine").unwrap();
        std::fs::rename(inbox.join(".m.pt.1.tmp"), inbox.join(&file)).unwrap();
        let mut c = d.client();
        let waiter = {
            let (name, file) = (name.clone(), file.clone());
            std::thread::spawn(move || c.wait(&name, &file, Some(60_000)))
        };
        std::thread::sleep(std::time::Duration::from_millis(pause_ms));
        std::fs::write(inbox.join(".m.pt.2.tmp"), b"theirs").unwrap();
        std::fs::rename(inbox.join(".m.pt.2.tmp"), inbox.join(&file)).unwrap();
        let t0 = std::time::Instant::now();
        match waiter.join().unwrap() {
            Err(err) => {
                assert!(
                    err.to_string().contains("replaced by another writer"),
                    "{err}"
                );
                // Well before the 10 s settle could have registered anything.
                assert!(
                    t0.elapsed() < std::time::Duration::from_secs(5),
                    "answered only after {:?}",
                    t0.elapsed()
                );
                return;
            }
            Ok(w) => {
                let got = std::fs::read(&w.version.path).unwrap();
                assert_eq!(
                    got, b"theirs",
                    "a wait answered with the replaced file's version: {w:?}"
                );
                eprintln!(
                    "attempt {attempt}: the wait was looked at only after the replacement \
                     ({pause_ms} ms pause on a busy machine); trying again"
                );
            }
        }
    }
    panic!("the wait was never looked at before the replacement, even after a 4 s pause");
}
