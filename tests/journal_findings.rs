//! The journal and the hand-over, end to end on the real binary (a fresh-clone tester's
//! findings): an older copy written into registry.yaml in place, a journal damaged before
//! its end mended by `recover`, a dropped torn tail shown in `status`, and the inbox
//! hand-over leaving no copy behind.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::journal::{
    aliases, file_catalog, journal_path, records, recover, two_versions, with_an_older_copy,
};
use common::{
    BIN, TestDaemon, assert_good_v2_and_damaged_v1_shown, bytes, can_switch_user, inbox_names, ok,
    socket_open_inbox_closed, stderr, stdout, write,
};
use modelreg::registry::persist;

fn pairs(p: &[(&str, u32)]) -> Vec<(String, u32)> {
    p.iter().map(|(a, n)| (a.to_string(), *n)).collect()
}

/// m's aliases as the tests below set them: canary and production at v1, staging at v2.
fn assert_three_aliases(d: &TestDaemon) {
    assert_eq!(
        aliases(d),
        pairs(&[("canary", 1), ("production", 1), ("staging", 2)])
    );
}

/// `old` written into registry.yaml and its last copy (an operator restoring a backup of
/// both, the daemon stopped), the start-up cache removed.
fn restore_with_its_copy(d: &TestDaemon, old: &str) {
    std::fs::write(d.registry_path(), old).unwrap();
    std::fs::write(persist::journal::base_path(&d.registry_path()), old).unwrap();
    let _ = std::fs::remove_file(persist::cache_path(&d.registry_path()));
}

/// [`with_an_older_copy`], then canary at v1, only in the journal.
fn with_an_older_copy_and_a_record() -> (TestDaemon, String) {
    let (d, old) = with_an_older_copy();
    d.client().alias_set("m", "canary", "v1").unwrap();
    (d, old)
}

// `cp old.yaml registry.yaml` (the daemon stopped) writes into registry.yaml's inode:
// its last copy was a second name of that inode, changed with it, and the start refused
// ("move the journal aside"), then refused again before naming `recover`.
#[test]
fn an_older_copy_written_into_registry_yaml_in_place_loses_nothing() {
    let (mut d, old) = with_an_older_copy_and_a_record();
    d.kill();
    // As cp does: open with O_TRUNC, write.
    std::fs::write(d.registry_path(), &old).unwrap();
    let _ = std::fs::remove_file(persist::cache_path(&d.registry_path()));
    d.spawn();
    assert_three_aliases(&d);
    assert_eq!(file_catalog(&d).models["m"].aliases["staging"], 2);
}

// Both registry.yaml and its last copy older than the journal: the first refusal names
// `modelreg recover`, which mends it and says what it did and what was lost.
#[test]
fn registry_yaml_and_its_copy_older_than_the_journal_are_mended_by_recover() {
    let (mut d, old) = with_an_older_copy_and_a_record();
    d.kill();
    restore_with_its_copy(&d, &old);
    let out = d.serve_output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("modelreg recover"), "{err}");
    let (ok, text) = recover(&d);
    assert!(ok, "{text}");
    assert!(!text.contains("Not starting"), "{text}");
    // The records in neither file: staging's move is applied from the event log (it was
    // named lost before the log was used); `compact`'s record made no event, so the log
    // cannot vouch for it and it is named.
    assert!(text.contains("restored from the event log"), "{text}");
    assert!(
        text.contains("those the event log holds no event of (1 of 2)"),
        "{text}"
    );
    assert!(text.contains("kept as"), "{text}");
    d.spawn();
    assert_three_aliases(&d);
}

// `recover` with a journal damaged before its end printed the daemon's "Not starting"
// refusal and did nothing; moved aside, its "lost:" line was the same boilerplate
// whatever was lost.
#[test]
fn recover_mends_a_journal_damaged_before_its_end_and_lists_what_was_lost() {
    let mut d = two_versions();
    d.client().compact().unwrap();
    for (a, v) in [("production", "v1"), ("staging", "v2"), ("canary", "v1")] {
        d.client().alias_set("m", a, v).unwrap();
    }
    d.kill();
    let recs = records(&d);
    assert_eq!(recs.len(), 3, "three records in the journal");
    // A byte of the second record's payload flipped: intact records follow.
    let at = recs[0].1 as usize + 30;
    let mut bytes = std::fs::read(journal_path(&d)).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(journal_path(&d), &bytes).unwrap();
    let err = String::from_utf8_lossy(&d.serve_output().stderr).into_owned();
    assert!(err.contains("modelreg recover"), "{err}");
    let (ok, text) = recover(&d);
    assert!(ok, "{text}");
    assert!(!text.contains("Not starting"), "{text}");
    assert!(
        text.contains(&format!("offset {}", recs[0].1)) && text.contains("lost:"),
        "{text}"
    );
    assert!(
        text.contains("applied 2 of the 2 intact record(s)"),
        "{text}"
    );
    d.spawn();
    // The third record carries m's whole alias state: nothing of it is lost.
    assert_three_aliases(&d);
}

// A torn last record dropped at start was a log line only; `status` said "problems: none".
#[test]
fn a_dropped_torn_tail_is_a_problem_in_status() {
    let mut d = two_versions();
    d.client().alias_set("m", "production", "v1").unwrap();
    d.kill();
    let size = std::fs::metadata(journal_path(&d)).unwrap().len();
    // An append cut short: the record's head and part of its payload.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(journal_path(&d))
        .unwrap();
    std::io::Write::write_all(&mut f, b"\0REC\x40\0\0\x0001234567{\"seq\":9").unwrap();
    drop(f);
    d.spawn();
    let line = d.wait_problem_text("registry.journal");
    assert!(
        line.contains(&format!("offset {size}")) && line.contains("not acknowledged"),
        "{line}"
    );
    let out = common::ok(&d, &["status"]);
    assert!(out.contains("dropped the last record"), "{out}");
    assert!(!out.contains("problems: none"), "{out}");
}

/// A settle period no test waits out: a version that appears came by a hand-over.
const NO_SETTLE: &str = "settle: 1h\n";

/// A daemon whose inbox settles fast: the inbox hand-over is what these tests take.
fn quick_inbox() -> TestDaemon {
    TestDaemon::start("settle: 100ms\n")
}

// The inbox hand-over (a folder, or metadata too large for one request) left the full
// copy and its sidecar in the inbox after the version was registered.
#[test]
fn add_of_a_folder_leaves_nothing_in_the_inbox_once_registered() {
    let d = quick_inbox();
    let src = tempfile::tempdir().unwrap();
    let folder = src.path().join("net");
    std::fs::create_dir(&folder).unwrap();
    write(&folder.join("w.bin"), &bytes(1, 4096));
    // No --wait: the answer is the version all the same.
    let out = ok(
        &d,
        &["add", folder.to_str().unwrap(), "--metric", "acc=0.5"],
    );
    assert!(out.contains("net v1"), "{out}");
    assert_eq!(inbox_names(&d), Vec::<String>::new());
    let v = d.get("net", "latest").unwrap();
    assert_eq!(v.metrics["acc"], 0.5);
    // A second version over the same name: the same.
    write(&folder.join("w.bin"), &bytes(2, 4096));
    let out = ok(&d, &["add", folder.to_str().unwrap(), "--wait"]);
    assert!(out.contains("net v2"), "{out}");
    assert_eq!(inbox_names(&d), Vec::<String>::new());
    assert_eq!(d.versions("net").len(), 2);
}

#[test]
fn add_with_metadata_too_large_for_a_request_leaves_nothing_in_the_inbox() {
    let d = quick_inbox();
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("big.pt");
    write(&file, &bytes(3, 2048));
    let (a, b) = ("a".repeat(40_000), "b".repeat(40_000));
    let out = ok(
        &d,
        &[
            "add",
            file.to_str().unwrap(),
            "--meta",
            &format!("one={a}"),
            "--meta",
            &format!("two={b}"),
        ],
    );
    assert!(out.contains("big v1"), "{out}");
    assert_eq!(inbox_names(&d), Vec::<String>::new());
    assert_eq!(d.get("big", "v1").unwrap().metadata["one"], a.as_str());
}

#[test]
fn python_register_of_a_folder_leaves_nothing_in_the_inbox() {
    let d = quick_inbox();
    let src = tempfile::tempdir().unwrap();
    let folder = src.path().join("pynet");
    std::fs::create_dir(&folder).unwrap();
    write(&folder.join("w.bin"), &bytes(4, 4096));
    let o = Command::new("python3")
        .arg("-c")
        .arg(
            "import os, modelreg\n\
             r = modelreg.ModelRegistry(socket=os.environ['SOCK'])\n\
             v = r.register('pynet', os.environ['SRC'], metrics={'acc': 0.25}, progress=False)\n\
             print(v.version)\n",
        )
        .env("SOCK", d.socket())
        .env("SRC", &folder)
        .env(
            "PYTHONPATH",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python"),
        )
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "v1");
    assert_eq!(inbox_names(&d), Vec::<String>::new());
    assert_eq!(d.get("pynet", "v1").unwrap().metrics["acc"], 0.25);
}

// The CLI said only `cannot place INBOX/m.pt: Permission denied` where the Python client
// says what was tried, which inbox, which user and what to do.
#[test]
fn add_refused_by_the_daemon_and_the_inbox_says_path_user_and_what_to_do() {
    let test = "add_refused_by_the_daemon_and_the_inbox_says_path_user_and_what_to_do";
    if !can_switch_user(test) {
        return;
    }
    let d = TestDaemon::start(NO_SETTLE);
    let (_public, src) = socket_open_inbox_closed(&d);
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
        .arg("--socket")
        .arg(d.socket())
        .arg("add")
        .arg(&src)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    let inbox = d.inbox().display().to_string();
    for needle in [
        format!("{} was not registered", src.display()),
        "refused the hand-over".into(),
        format!("the inbox {inbox}"),
        "not writable by user nobody (uid 65534)".into(),
        "nothing was copied".into(),
        "Register as the daemon's user or root".into(),
    ] {
        assert!(err.contains(&needle), "{needle:?} in {err}");
    }
    assert!(!err.contains("cannot place"), "{err}");
    assert!(d.versions("m").is_empty());
    assert_eq!(inbox_names(&d), Vec::<String>::new());
}

// A registry.yaml cut short in place (a failed `cp`, a full disk) after a clean stop: the
// start refused it, but had first copied it over its good last copy, so `recover` could
// only rebuild the cut models from the store, their aliases lost.
#[test]
fn a_refused_start_leaves_registry_yamls_last_copy_as_it_was() {
    let mut d = two_versions();
    common::write_renamed(&d.inbox(), "a.pt", &bytes(9, 64));
    d.wait_versions("a", 1);
    d.client().alias_set("m", "production", "v1").unwrap();
    d.client().compact().unwrap();
    d.stop();
    let base = persist::journal::base_path(&d.registry_path());
    let good = std::fs::read(&base).unwrap();
    assert_eq!(good, std::fs::read(d.registry_path()).unwrap());
    // Cut before the model: the store holds versions registry.yaml no longer names.
    let text = String::from_utf8(good.clone()).unwrap();
    let cut = text.find("\n  m:").expect("model m in registry.yaml");
    std::fs::write(d.registry_path(), format!("{}\n", &text[..cut])).unwrap();
    let out = d.serve_output();
    assert!(!out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(&base).unwrap(),
        good,
        "the refused start changed registry.yaml's last copy"
    );
}

// `modelreg recover | head -1`: the first line printed, the reader gone, recover ended
// with 0 having mended nothing.
#[test]
fn recover_into_a_reader_that_stops_reading_still_mends_the_registry() {
    let (mut d, old) = with_an_older_copy_and_a_record();
    d.kill();
    restore_with_its_copy(&d, &old);
    let mut child = Command::new(BIN)
        .args(["recover", "--root"])
        .arg(d.root.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes before anything is read: every write of recover's meets a closed pipe.
    drop(child.stdout.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "recover failed: {status}");
    d.spawn();
    assert_three_aliases(&d);
}

// `rm m v1`, then an older registry.yaml (naming v1 live) restored with its last copy:
// `recover` brought v1 back as live with its files gone ("stored file ... is missing").
#[test]
fn recover_keeps_a_version_removed_after_the_restored_registry_yaml_removed() {
    let mut d = two_versions();
    d.client().compact().unwrap();
    let old = std::fs::read_to_string(d.registry_path()).unwrap();
    d.client().rm("m", "v1", None, false).unwrap();
    // The journal now starts after the removal: the old copy no longer joins it.
    d.client().compact().unwrap();
    d.kill();
    restore_with_its_copy(&d, &old);
    let (ok, text) = recover(&d);
    assert!(ok, "{text}");
    assert!(text.contains("marked m/v1 removed"), "{text}");
    let catalog = persist::load(&d.registry_path()).unwrap().unwrap();
    let v1 = catalog.models["m"].find(1).expect("v1 still recorded");
    assert!(v1.removed.is_some(), "v1 came back live:\n{text}");
    d.spawn();
    assert!(d.status().problems.is_empty(), "{:?}", d.status().problems);
}

// The newest version's file damaged in place, then its good bytes handed over again with
// `modelreg add`: answered "identical to the newest version", nothing kept, and the
// damaged file handed back as the newest.
#[test]
fn the_good_bytes_of_a_newest_version_damaged_in_place_are_kept_as_a_new_version() {
    let d = TestDaemon::start("settle: 50ms\n");
    let outside = d.root.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let file = outside.join("dd.bin");
    let good = bytes(5, 4096);
    write(&file, &good);
    ok(&d, &["add", file.to_str().unwrap(), "--wait"]);
    let stored = d.root.path().join("models/dd/v1/dd.bin");
    common::damage_in_place(&stored, 1000);
    let out = ok(&d, &["add", file.to_str().unwrap(), "--wait"]);
    assert!(out.contains("dd v2"), "{out}");
    assert_good_v2_and_damaged_v1_shown(&d, &good);
}
