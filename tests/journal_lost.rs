//! A journal that lost records whose changes were answered (a fresh-clone tester's
//! finding): after kill -9, an older copy of registry.journal copied back, or the journal
//! emptied, made the start drop the later changes silently (a WARN said they "were not
//! made durable"; the event log held them). Now the start refuses and names `recover`,
//! which applies them again from the event log.

mod common;

use std::process::Command;

use common::journal::{aliases, journal_path, recover, two_versions};
use common::{BIN, TestDaemon, bytes, write_renamed};

/// The refused start's stderr (the daemon must not start: a test calling this hangs if
/// it does).
fn refused(d: &TestDaemon) -> String {
    let out = d.serve_output();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the start was not refused: {err}");
    err
}

/// Model m at v1 and v2 (in registry.yaml), then production, staging, canary set and
/// production moved, each answered, in the journal only; `d` killed.
fn answered_moves() -> TestDaemon {
    let mut d = two_versions();
    d.client().compact().unwrap();
    let mut c = d.client();
    c.alias_set("m", "production", "v1").unwrap();
    c.alias_set("m", "staging", "v2").unwrap();
    c.alias_set("m", "canary", "v1").unwrap();
    c.alias_set("m", "production", "v2").unwrap();
    c.deprecate("m", "v1", Some("drifted")).unwrap();
    d.kill();
    d
}

/// The seq of every event in `d`'s event log on disk, in order.
fn event_seqs(d: &TestDaemon) -> Vec<u64> {
    let dir = d.registry_path().parent().unwrap().join("events");
    let mut segs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ndjson"))
        .collect();
    segs.sort();
    segs.iter()
        .flat_map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            text.lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                        .as_u64()
                        .unwrap()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn pairs(p: &[(&str, u32)]) -> Vec<(String, u32)> {
    p.iter().map(|(a, n)| (a.to_string(), *n)).collect()
}

/// What `answered_moves` answered, as the catalog must hold it.
fn assert_all_kept(d: &TestDaemon) {
    assert_eq!(
        aliases(d),
        pairs(&[("canary", 1), ("production", 2), ("staging", 2)])
    );
    let c = d.catalog();
    let m = &c.models["m"];
    let moves: Vec<(String, Option<u32>, Option<u32>)> = m
        .alias_history
        .iter()
        .map(|h| (h.alias.clone(), h.from, h.to))
        .collect();
    assert_eq!(
        moves,
        [
            ("production".to_string(), None, Some(1)),
            ("staging".to_string(), None, Some(2)),
            ("canary".to_string(), None, Some(1)),
            ("production".to_string(), Some(1), Some(2)),
        ]
    );
    let dep = m
        .find(1)
        .unwrap()
        .deprecated
        .as_ref()
        .expect("v1 deprecated");
    assert_eq!(dep.reason.as_deref(), Some("drifted"));
}

// An older copy of the journal copied back over it after kill -9 (a backup restored, a
// sync tool): the start dropped the later answered moves and said they were never durable.
#[test]
fn an_older_journal_copied_back_refuses_the_start_and_recover_brings_back_every_change() {
    let mut d = two_versions();
    d.client().compact().unwrap();
    d.client().alias_set("m", "production", "v1").unwrap();
    let older = std::fs::read(journal_path(&d)).unwrap();
    let mut c = d.client();
    c.alias_set("m", "staging", "v2").unwrap();
    c.alias_set("m", "canary", "v1").unwrap();
    c.alias_set("m", "production", "v2").unwrap();
    c.deprecate("m", "v1", Some("drifted")).unwrap();
    d.kill();
    std::fs::write(journal_path(&d), &older).unwrap();
    let err = refused(&d);
    assert!(err.contains("modelreg recover"), "{err}");
    assert!(
        err.contains("replaced by an older copy, emptied or deleted"),
        "{err}"
    );
    let (ok, text) = recover(&d);
    assert!(ok, "{text}");
    assert!(text.contains("restored from the event log"), "{text}");
    assert!(text.contains("lost: nothing"), "{text}");
    d.spawn();
    assert_all_kept(&d);
    // The event log goes on after what was restored: no number given twice.
    d.client().alias_set("m", "canary", "v2").unwrap();
    let seqs = event_seqs(&d);
    let dense: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, dense);
    assert!(seqs.len() >= 8, "{seqs:?}");
}

// `: > registry.journal` after kill -9, with a version registered after registry.yaml's
// last write: the version comes back from the store, the moves from the event log.
#[test]
fn an_emptied_journal_refuses_the_start_and_recover_brings_back_versions_and_moves() {
    let mut d = answered_moves();
    d.spawn();
    d.client().compact().unwrap();
    write_renamed(&d.inbox(), "m.pt", &bytes(3, 128));
    d.wait_versions("m", 3);
    d.client().alias_set("m", "staging", "v3").unwrap();
    d.client().alias_set("m", "canary", "v3").unwrap();
    d.kill();
    std::fs::write(journal_path(&d), b"").unwrap();
    let err = refused(&d);
    assert!(err.contains("modelreg recover"), "{err}");
    let (ok, text) = recover(&d);
    assert!(ok, "{text}");
    assert!(text.contains("recovered m/v3 from its manifest"), "{text}");
    assert!(text.contains("restored from the event log"), "{text}");
    d.spawn();
    assert_eq!(
        aliases(&d),
        pairs(&[("canary", 3), ("production", 2), ("staging", 3)])
    );
    assert_eq!(d.versions("m").len(), 3);
    let h = &d.catalog().models["m"].alias_history;
    assert_eq!(h.len(), 6, "{h:?}");
}

// The commit a crash interrupted is the one case where the log may hold events the
// journal lacks; a journal that lost more than that is never taken for it. Here the
// journal lost only its last record: indistinguishable from that crash, the start drops
// it with a warning naming it (the limit of what the log can tell, docs/architecture.md).
#[test]
fn a_journal_short_of_only_its_last_record_is_taken_for_the_commit_in_flight() {
    let mut d = answered_moves();
    let recs = common::journal::records(&d);
    let last_start = recs[recs.len() - 2].1;
    let bytes = std::fs::read(journal_path(&d)).unwrap();
    std::fs::write(journal_path(&d), &bytes[..last_start as usize]).unwrap();
    d.spawn();
    assert!(
        d.log().contains("the commit a crash interrupted"),
        "{}",
        d.log()
    );
    assert!(
        d.catalog().models["m"]
            .find(1)
            .unwrap()
            .deprecated
            .is_none()
    );
}

// The tester's case past the one-record limit: a journal emptied (`: >`) or deleted after
// kill -9 is never a crash's doing (the daemon writes its header before any record, and a
// clean stop keeps it), so even one answered change past registry.yaml — an alias set, an
// `rm` whose tombstone the store holds — refuses the start; the daemon had started with v1
// listed live and its files gone.
#[test]
fn an_emptied_or_deleted_journal_one_answered_change_short_refuses_the_start() {
    for how in ["emptied", "deleted"] {
        let mut d = two_versions();
        d.client().compact().unwrap();
        d.client().alias_set("m", "z", "v2").unwrap();
        d.client().rm("m", "v1", Some("gone"), false).unwrap();
        d.kill();
        if how == "emptied" {
            std::fs::write(journal_path(&d), b"").unwrap();
        } else {
            std::fs::remove_file(journal_path(&d)).unwrap();
        }
        let err = refused(&d);
        assert!(err.contains("is missing or empty"), "{how}: {err}");
        assert!(err.contains("modelreg recover"), "{how}: {err}");
        let (ok, text) = recover(&d);
        assert!(ok, "{how}: {text}");
        d.spawn();
        assert_eq!(aliases(&d), pairs(&[("z", 2)]), "{how}");
        let c = d.catalog();
        let v1 = c.models["m"].find(1).unwrap();
        let mark = v1.removed.as_ref().expect("v1 removed");
        assert_eq!(mark.reason.as_deref(), Some("gone"), "{how}");
    }
}

// A tester followed the refusal's advice as root on a root owned by the daemon's user
// (65534): `recover` blamed the lock file, and once that was removed it left the lock,
// registry.yaml and the journal root's, so the service no longer started ("Permission
// denied"). Now it refuses before writing anything, naming the owner and how to run it.
#[test]
fn recover_run_by_another_user_than_the_roots_owner_refuses_and_writes_nothing() {
    if !common::can_switch_user("recover_run_by_another_user") {
        return;
    }
    let mut d = TestDaemon::new("settle: 50ms\nregistry_write_interval: 1h\n");
    d.give_to_nobody();
    d.spawn_as_nobody();
    write_renamed(&d.inbox(), "m.pt", &bytes(1, 128));
    d.wait_versions("m", 1);
    d.client().compact().unwrap();
    d.client().alias_set("m", "z", "v1").unwrap();
    d.kill();
    std::fs::write(journal_path(&d), b"").unwrap();
    let (ok, text) = recover(&d);
    assert!(!ok, "{text}");
    assert!(text.contains("uid 65534"), "{text}");
    assert!(text.contains("Nothing was done"), "{text}");
    assert!(text.contains("setpriv --reuid=65534"), "{text}");
    // As the owner, as it says: it mends the root and the daemon starts as that user.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
        .args(["recover", "--root"])
        .arg(d.root.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.spawn_as_nobody();
    assert_eq!(aliases(&d), pairs(&[("z", 1)]));
}

// A retester's case: a journal copied back from just before one answered `rm` looked like
// the commit in flight at a crash, and the start dropped the removal (v1 listed live, its
// files gone). A removal is carried out only once its record is durable, so its folder
// gone from the store tells the two apart.
#[test]
fn a_journal_one_rm_short_whose_removal_was_carried_out_refuses_the_start() {
    let mut d = two_versions();
    d.client().compact().unwrap();
    let older = std::fs::read(journal_path(&d)).unwrap();
    d.client().rm("m", "v1", Some("gone"), false).unwrap();
    d.kill();
    std::fs::write(journal_path(&d), &older).unwrap();
    let err = refused(&d);
    assert!(err.contains("the removal of m v1 was carried out"), "{err}");
    assert!(err.contains("modelreg recover"), "{err}");
    let (ok, text) = recover(&d);
    assert!(ok, "{text}");
    d.spawn();
    let c = d.catalog();
    let mark = c.models["m"]
        .find(1)
        .unwrap()
        .removed
        .clone()
        .expect("v1 removed");
    assert_eq!(mark.reason.as_deref(), Some("gone"));
    assert_ne!(mark.at, "unknown");
}
