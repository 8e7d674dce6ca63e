//! Dedup never links a new version to a stored file whose bytes were changed in place:
//! the stored file's actual bytes are compared, not its recorded SHA-256; the damaged
//! file is reported as a problem naming it, and the new version gets its own copy.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;

/// Bigger than three 64 KiB samples, so dedup compares samples before reading it whole.
const FILE: usize = 256 * 1024;
/// Between the start and middle samples: only a full comparison sees a change here.
const UNSAMPLED: u64 = 100_000;

fn ino(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().ino()
}

/// A daemon holding `tok` v1 (`bytes(7)`) and v2 (`bytes(8)`): v1's bytes again make a
/// new version, not the latest's.
fn daemon_with_v1_and_v2() -> TestDaemon {
    let d = TestDaemon::quick();
    for (n, seed) in [(1, 7), (2, 8)] {
        write_renamed(&d.inbox(), "tok.bin", &bytes(seed, FILE));
        d.wait_versions("tok", n);
    }
    d
}

/// [`daemon_with_v1_and_v2`], with v1's stored file then damaged in place; returns it
/// and v1's stored file.
fn daemon_with_v1_damaged() -> (TestDaemon, std::path::PathBuf) {
    let d = daemon_with_v1_and_v2();
    let v1 = d.root.path().join("models/tok/v1/tok.bin");
    damage_in_place(&v1, UNSAMPLED);
    (d, v1)
}

/// What is expected once v3 (v1's original bytes) is registered: its own copy of the
/// right bytes, the damaged v1 named as a problem and by `verify`, v3 verified.
fn assert_v3_copied_and_v1_reported(d: &TestDaemon, v1: &Path) {
    let v3 = d.root.path().join("models/tok/v3/tok.bin");
    assert_ne!(
        ino(&v3),
        ino(v1),
        "v3 must not share the damaged v1's inode"
    );
    assert!(
        std::fs::read(&v3).unwrap() == bytes(7, FILE),
        "v3 holds the bytes it was registered with"
    );
    assert_eq!(std::fs::metadata(v1).unwrap().nlink(), 1);
    let line = d.wait_problem_text(&v1.display().to_string());
    assert!(line.contains("damaged"), "{line}");
    assert!(line.contains("modelreg verify"), "{line}");
    let out = d.cli(&["verify", "tok"]);
    assert!(!out.status.success());
    let report = stdout(&out);
    assert!(
        report.contains(&format!("MODIFIED    {}", v1.display())),
        "{report}"
    );
    assert!(!report.contains("tok/v3"), "v3 verifies:\n{report}");
}

#[test]
fn an_inbox_file_equal_to_a_stored_file_damaged_in_place_gets_its_own_copy() {
    let (d, v1) = daemon_with_v1_damaged();
    write_renamed(&d.inbox(), "tok.bin", &bytes(7, FILE));
    d.wait_versions("tok", 3);
    assert_v3_copied_and_v1_reported(&d, &v1);
    assert!(
        !d.log().contains("already stored, hard-linked"),
        "{}",
        d.log()
    );
    assert_eq!(d.status().dedup_saved_bytes, 0);
}

#[test]
fn a_handed_over_file_equal_to_a_stored_file_damaged_in_place_gets_its_own_copy() {
    let (d, v1) = daemon_with_v1_damaged();
    let outside = d.root.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let file = outside.join("tok.bin");
    write(&file, &bytes(7, FILE));
    let out = ok(&d, &["add", file.to_str().unwrap(), "--wait"]);
    assert!(out.contains("tok v3"), "{out}");
    assert_v3_copied_and_v1_reported(&d, &v1);
    assert_eq!(d.status().dedup_saved_bytes, 0);
}

#[test]
fn an_undamaged_stored_file_is_still_shared_after_the_comparison() {
    let d = daemon_with_v1_and_v2();
    write_renamed(&d.inbox(), "tok.bin", &bytes(7, FILE));
    d.wait_versions("tok", 3);
    let store = d.root.path().join("models/tok");
    assert_eq!(
        ino(&store.join("v1/tok.bin")),
        ino(&store.join("v3/tok.bin"))
    );
    // And through a hand-over: v4 with v2's bytes.
    let outside = d.root.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let file = outside.join("tok.bin");
    write(&file, &bytes(8, FILE));
    ok(&d, &["add", file.to_str().unwrap(), "--wait"]);
    assert_eq!(
        ino(&store.join("v2/tok.bin")),
        ino(&store.join("v4/tok.bin"))
    );
    assert_eq!(d.status().dedup_saved_bytes, 2 * FILE as u64);
    assert!(d.problems_text().is_empty(), "{}", d.problems_text());
    ok(&d, &["verify", "tok"]);
}
