//! `gc` and `rm` with shared (dedup'd) files, on the real binary: removal is answered once
//! the catalog's change is durable while the files are deleted off the registrar's path
//! (the store's trash); freed bytes count each inode once, and only when its last version
//! goes; a damaged stored file's problem names every version sharing it and goes with them.

mod common;

use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// Bigger than dedup's three 64 KiB samples.
const FILE: usize = 256 * 1024;

/// The store's trash and what it holds.
fn trash(d: &TestDaemon) -> (PathBuf, Vec<String>) {
    let dir = d.root.path().join("models/.trash");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    (dir, names)
}

/// `modelreg ARGS --json`, parsed.
fn json(d: &TestDaemon, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_str(&ok(d, &all)).expect("a JSON answer")
}

/// A daemon keeping 1 version of `m` whose trash is not emptied while `gate` exists (a
/// debug build's test hold: deletion is observably still under way, without a clock).
fn held_daemon(gate: &Path) -> TestDaemon {
    let mut d = TestDaemon::new("settle: 300ms\nretention: {\"m\": 1}\n");
    let hold = ("MODELREG_DEBUG_HOLD_TRASH", gate.display().to_string());
    d.spawn_with(&[hold], true);
    d
}

#[test]
fn gc_and_a_change_beside_it_are_answered_while_the_removed_files_are_still_being_deleted() {
    let gate = tempfile::NamedTempFile::new().unwrap();
    let d = held_daemon(gate.path());
    for seed in 0..30 {
        register_bytes(&d, "m", &bytes(seed, 4096));
    }
    // Answered although nothing can be deleted yet: the removal is the catalog's change.
    let out = ok(&d, &["gc", "m"]);
    assert!(out.contains("29 version(s), freed"), "{out}");
    let alias = ok(&d, &["alias", "set", "m", "production", "v30"]);
    assert!(alias.contains("v30"), "{alias}");
    // The removed folders are out of the model's folder, in the trash, each with its
    // tombstone kept; `verify` sees a whole store. (With the Hugging Face cache view on,
    // a removal this large is moved by the view's worker once the view lets go of it.)
    wait_until(
        Duration::from_secs(30),
        "the removed folders in the trash",
        || trash(&d).1.len() == 29,
    );
    let (dir, held) = trash(&d);
    assert_eq!(held.len(), 29, "{held:?}");
    let model = d.root.path().join("models/m");
    for n in 1..30 {
        assert!(!model.join(format!("v{n}")).exists(), "v{n} still in place");
        assert!(model.join(format!(".removed/v{n}.json")).exists());
    }
    ok(&d, &["verify"]);
    // Let go: the worker deletes the trash.
    drop(gate);
    wait_until(Duration::from_secs(30), "the trash to be emptied", || {
        trash(&d).1.is_empty()
    });
    assert!(dir.is_dir(), "the trash folder itself stays");
    assert_eq!(d.get("m", "production").unwrap().version, "v30");
}

#[test]
fn trash_left_by_a_killed_daemon_is_deleted_at_the_next_start_and_numbers_stay_taken() {
    let gate = tempfile::NamedTempFile::new().unwrap();
    let mut d = held_daemon(gate.path());
    for seed in 0..5 {
        register_bytes(&d, "m", &bytes(seed, 4096));
    }
    ok(&d, &["gc", "m"]);
    assert_eq!(trash(&d).1.len(), 4);
    d.kill();
    drop(gate);
    d.spawn();
    wait_until(Duration::from_secs(30), "the leftover trash to go", || {
        trash(&d).1.is_empty()
    });
    // v1..v4 are tombstones for good: the next version is v6.
    register_bytes(&d, "m", &bytes(99, 4096));
    let numbers: Vec<String> = d.versions("m").into_iter().map(|v| v.version).collect();
    assert_eq!(numbers, ["v1", "v2", "v3", "v4", "v5", "v6"]);
    ok(&d, &["verify", "m"]);
}

#[test]
fn rm_frees_a_shared_file_only_with_its_last_version() {
    let d = TestDaemon::quick();
    let (x, y) = (bytes(1, FILE), bytes(2, FILE));
    // v3 holds v1's bytes: dedup hard-links them (one inode).
    for content in [&x, &y, &x] {
        register_bytes(&d, "r", content);
    }
    let store = d.root.path().join("models/r");
    let ino = |n: u32| {
        std::fs::metadata(store.join(format!("v{n}/w.bin")))
            .unwrap()
            .ino()
    };
    assert_eq!(ino(1), ino(3), "v1 and v3 share one inode");
    let first = json(&d, &["rm", "r", "v1"]);
    assert_eq!(first["freed"], 0, "v3 still has the file: {first}");
    let text = ok(&d, &["rm", "r", "v3"]);
    assert!(text.contains("freed 256.0 KiB"), "{text}");
}

#[test]
fn gc_counts_each_freed_inode_once_and_nothing_a_kept_version_shares() {
    let d = TestDaemon::start("settle: 300ms\nretention: {\"m\": 1, \"k\": 1}\n");
    let (x, y, z) = (bytes(1, FILE), bytes(2, FILE), bytes(3, FILE));
    // m: v1 and v3 share x; all three go. k: v1 shares x with the kept v3.
    for content in [&x, &y, &x, &z] {
        register_bytes(&d, "m", content);
    }
    for content in [&x, &y, &x] {
        register_bytes(&d, "k", content);
    }
    let would = json(&d, &["gc", "m", "--dry-run"]);
    assert_eq!(would["bytes"], 2 * FILE as u64, "{would}");
    let m = json(&d, &["gc", "m"]);
    assert_eq!(m["bytes"], 2 * FILE as u64, "x once and y: {m}");
    assert_eq!(m["versions"].as_array().unwrap().len(), 3);
    let k = json(&d, &["gc", "k"]);
    assert_eq!(k["bytes"], FILE as u64, "only y; x stays with v3: {k}");
}

/// The `damaged` problems of `status`: (path, message).
fn damaged(d: &TestDaemon) -> Vec<(String, String)> {
    (d.status().problems.into_iter())
        .filter(|p| p.message.contains("damaged"))
        .map(|p| (p.path, p.message))
        .collect()
}

/// `tok` v1 and v3 sharing one inode of `x` (v2 and v4 other bytes), then that inode
/// damaged.
fn damaged_sharers() -> (TestDaemon, Vec<u8>) {
    let d = TestDaemon::quick();
    let (x, y, z) = (bytes(7, FILE), bytes(8, FILE), bytes(9, FILE));
    for content in [&x, &y, &x, &z] {
        register_bytes(&d, "tok", content);
    }
    damage_in_place(&d.root.path().join("models/tok/v1/w.bin"), 100_000);
    (d, x)
}

#[test]
fn a_damaged_shared_file_is_one_problem_naming_each_version_until_the_last_is_removed() {
    let (d, x) = damaged_sharers();
    // Found by dedup (x registered again gets its own copy) and by verify alike.
    register_bytes(&d, "tok", &x);
    d.wait_problem_text("damaged");
    assert!(!d.cli(&["verify", "tok"]).status.success());
    let found = damaged(&d);
    assert_eq!(found.len(), 1, "one inode, one problem: {found:?}");
    let (path, message) = &found[0];
    assert!(path.ends_with("models/tok/v1/w.bin"), "{path}");
    assert!(
        message.contains("tok v1 w.bin") && message.contains("tok v3 w.bin"),
        "names both versions whose file it is: {message}"
    );
    assert!(
        !message.contains("tok v5"),
        "v5 has its own copy: {message}"
    );
    // One sharer removed: the problem names the other one alone.
    ok(&d, &["rm", "tok", "v1"]);
    let found = damaged(&d);
    assert_eq!(found.len(), 1, "{found:?}");
    let (path, message) = &found[0];
    assert!(path.ends_with("models/tok/v3/w.bin"), "{path}");
    assert!(message.contains("tok v3 w.bin"), "{message}");
    assert!(!message.contains("tok v1"), "{message}");
    // The last one removed (by gc as by rm): nothing damaged is left.
    ok(&d, &["rm", "tok", "v3"]);
    assert_eq!(damaged(&d), vec![], "cleared with its last version");
    ok(&d, &["verify", "tok"]);
}

#[test]
fn a_damaged_file_put_right_is_cleared_by_the_next_verify() {
    let (d, x) = damaged_sharers();
    assert!(!d.cli(&["verify"]).status.success());
    assert_eq!(damaged(&d).len(), 1, "verify's finding lasts in status");
    // Put right (the same bytes written back in place): the next verify clears it.
    let v1 = d.root.path().join("models/tok/v1/w.bin");
    std::fs::set_permissions(&v1, std::fs::Permissions::from_mode(0o644)).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&v1).unwrap();
    f.write_all_at(&x, 0).unwrap();
    drop(f);
    std::fs::set_permissions(&v1, std::fs::Permissions::from_mode(0o444)).unwrap();
    ok(&d, &["verify", "tok"]);
    assert_eq!(damaged(&d), vec![]);
}

#[test]
fn a_retention_rule_written_as_keep_last_is_refused_showing_the_map_form() {
    let d = TestDaemon::new("retention: {keep_last: 2}\n");
    let out = d.serve_output();
    let err = common::stderr(&out);
    assert!(!out.status.success(), "started: {err}");
    let file = d.root.path().join("config/modelreg.yaml");
    assert!(
        err.contains(&format!("{}: retention: ", file.display())),
        "{err}"
    );
    assert!(
        err.contains("`keep_last: 2`") && err.contains("retention: {\"*\": 2}"),
        "{err}"
    );
}
