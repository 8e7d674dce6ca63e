//! The journal and registry.yaml changed behind the daemon's back, end to end on the real
//! binary (breaks a fresh-clone tester found): the journal truncated in place while
//! running, registry.yaml replaced by an older copy (while running, and then killed
//! before it was noticed), `recover` with both names of registry.yaml gone, and a journal
//! deleted while the daemon was stopped. Nothing acknowledged may be lost, and what
//! cannot be known is said. (Beside tests/journal_more.rs, which is near the size limit.)

mod common;

use std::process::Command;

use common::journal::{
    aliases, file_catalog, journal_path, records, two_versions, with_an_older_copy,
};
use common::{BIN, TestDaemon};
use modelreg::registry::persist;

/// Kills `d`, starts it again, and checks that the three aliases set are all there.
fn all_three_after_sigkill(d: &mut TestDaemon) {
    d.kill();
    d.spawn();
    assert_eq!(
        aliases(d),
        pairs(&[("canary", 1), ("production", 1), ("staging", 2)])
    );
}

fn pairs(p: &[(&str, u32)]) -> Vec<(String, u32)> {
    p.iter().map(|(a, n)| (a.to_string(), *n)).collect()
}

/// Whether the daemon's log has a WARN line holding every one of `needles`.
fn warned(d: &TestDaemon, needles: &[&str]) -> bool {
    d.log()
        .lines()
        .any(|l| l.contains("WARN") && needles.iter().all(|n| l.contains(n)))
}

/// registry.yaml replaced the way `cp old registry.yaml.new; mv registry.yaml.new
/// registry.yaml` does: a new inode under the name.
fn replace_registry(d: &TestDaemon, text: &str) {
    let tmp = d.root.path().join("registry.yaml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, d.registry_path()).unwrap();
}

// Fresh-clone tester: `truncate -s 0 registry.journal` while running left the inode
// unchanged; the next record went to the old offset behind zeros, was acknowledged, and
// after kill -9 the start refused ("offset 0: not a modelreg journal (bad header)").
#[test]
fn a_journal_truncated_in_place_while_running_loses_no_acknowledged_change() {
    let mut d = two_versions();
    d.client().alias_set("m", "production", "v1").unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(journal_path(&d))
        .unwrap();
    f.set_len(0).unwrap();
    drop(f);
    d.client().alias_set("m", "staging", "v2").unwrap();
    assert_eq!(file_catalog(&d).models["m"].aliases["staging"], 2);
    let shown = journal_path(&d).display().to_string();
    assert!(warned(&d, &[&shown, "size"]), "{}", d.log());
    d.client().alias_set("m", "canary", "v1").unwrap();
    all_three_after_sigkill(&mut d);
}

// Fresh-clone tester: registry.yaml replaced by an older copy while running, then an
// acknowledged change and kill -9: the start refused ("continues from record N, but
// registry.yaml includes only up to record M ... move the journal aside"), and moving it
// aside lost acknowledged changes.
#[test]
fn registry_yaml_replaced_by_an_older_copy_while_running_is_written_again_at_once() {
    let (mut d, old) = with_an_older_copy();
    replace_registry(&d, &old);
    d.client().alias_set("m", "canary", "v1").unwrap();
    // Noticed before the change was acknowledged: registry.yaml is whole again.
    let shown = d.registry_path().display().to_string();
    assert!(warned(&d, &[&shown, "replaced"]), "{}", d.log());
    assert_eq!(file_catalog(&d).models["m"].aliases["staging"], 2);
    all_three_after_sigkill(&mut d);
}

// The window the check before each append leaves: registry.yaml replaced by an older
// copy, then SIGKILL before the daemon noticed. Its second name still holds what the
// journal continues.
#[test]
fn registry_yaml_older_than_the_journal_at_start_starts_from_its_second_name() {
    let (mut d, old) = with_an_older_copy();
    d.client().alias_set("m", "canary", "v1").unwrap();
    replace_registry(&d, &old);
    all_three_after_sigkill(&mut d);
    assert!(warned(&d, &[".registry.yaml.base", "older"]), "{}", d.log());
    // Written again at start; the older copy is kept for a person to look at.
    assert_eq!(file_catalog(&d).models["m"].aliases["staging"], 2);
    assert!(d.root.path().join("registry.yaml.older").exists());
    // Both names older than the journal: the refusal names the second name too.
    d.kill();
    let base = persist::journal::base_path(&d.registry_path());
    replace_registry(&d, &old);
    std::fs::copy(d.registry_path(), &base).unwrap();
    // The start-up cache would stand in for registry.yaml: remove it.
    let _ = std::fs::remove_file(persist::cache_path(&d.registry_path()));
    let out = d.serve_output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(".registry.yaml.base"), "{err}");
}

// Fresh-clone tester: `recover` with registry.yaml and its second name both gone rebuilt
// the versions from the store's manifests but dropped the journal's records (aliases,
// history) without a word, and set journal_seq past them.
#[test]
fn recover_without_registry_yaml_applies_the_journal_records() {
    let mut d = two_versions();
    d.client().alias_set("m", "production", "v1").unwrap();
    d.client().compact().unwrap();
    d.client().alias_set("m", "staging", "v2").unwrap();
    assert!(!records(&d).is_empty(), "staging is only in the journal");
    d.kill();
    std::fs::remove_file(d.registry_path()).unwrap();
    std::fs::remove_file(persist::journal::base_path(&d.registry_path())).unwrap();
    let _ = std::fs::remove_file(persist::cache_path(&d.registry_path()));
    let out = Command::new(BIN)
        .args(["recover", "--root"])
        .arg(d.root.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("journal"), "{text}");
    // Each record carries the model's whole alias state: production comes back too.
    let c = file_catalog(&d);
    assert_eq!(c.models["m"].aliases["staging"], 2, "{text}");
    assert_eq!(c.models["m"].aliases["production"], 1, "{text}");
    d.spawn();
    assert_eq!(aliases(&d), pairs(&[("production", 1), ("staging", 2)]));
}

// Fresh-clone tester: registry.journal deleted while the daemon was stopped, after a
// kill: the acknowledged changes it held were lost at start without a word (then with a
// WARN only). The event log holds them, so the start now refuses naming `recover`, which
// brings them back.
#[test]
fn a_journal_deleted_while_stopped_is_warned_about_at_start() {
    let mut d = two_versions();
    d.client().compact().unwrap();
    d.client().alias_set("m", "production", "v1").unwrap();
    d.kill();
    std::fs::remove_file(journal_path(&d)).unwrap();
    let out = d.serve_output();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{err}");
    let shown = journal_path(&d).display().to_string();
    assert!(
        err.contains(&format!("{shown} is missing or empty")),
        "{err}"
    );
    assert!(err.contains("modelreg recover"), "{err}");
    let (ok, text) = common::journal::recover(&d);
    assert!(ok, "{text}");
    d.spawn();
    assert_eq!(aliases(&d), pairs(&[("production", 1)]));
    // A clean stop leaves an empty journal: its start says nothing of the kind.
    assert!(d.stop().success());
    let before = d.log().len();
    d.spawn();
    assert!(!d.log()[before..].contains("is missing"), "{}", d.log());
}
