//! The journal beside registry.yaml, end to end on the real binary: SIGKILL at random
//! points during 1,000 commits loses nothing acknowledged and keeps a prefix of the
//! changes, registry.yaml rebuilt after each, a torn tail is
//! dropped with a warning, damage before intact records refuses the start, and
//! registry.yaml catches up within its interval and at SIGTERM, byte for byte what a
//! full write gives.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::journal::{Rng, file_catalog, journal_path, records};
use common::{BIN, TestDaemon, bytes, wait_until, write_renamed};
use modelreg::registry::persist;

/// Where alias `production` of `m` is sent in the i-th change: never where it already
/// points, so every acknowledged change is one entry of its history.
fn target(i: usize) -> u32 {
    1 + (i % 3) as u32
}

/// How many commits the SIGKILL test makes acknowledged, in all, across its kills.
const COMMITS: usize = 1_000;

#[test]
fn sigkill_at_random_points_during_1000_commits_keeps_a_prefix_and_loses_nothing_acknowledged() {
    let mut rng = Rng::new();
    // registry.yaml is rewritten (and the journal rotated) every 100 ms while changes
    // come: kills land before, during and after appends, rewrites and rotations.
    let mut d = TestDaemon::start("settle: 50ms\nregistry_write_interval: 100ms\n");
    for n in 1..=3u64 {
        write_renamed(&d.inbox(), "m.pt", &bytes(n, 256));
        d.wait_versions("m", n as usize);
    }
    let mut sent: Vec<u32> = Vec::new();
    // Files dropped, and those seen registered (acknowledged) before a kill, by name.
    let mut dropped = 0usize;
    let mut acked_files: BTreeMap<String, String> = BTreeMap::new();
    let mut total_acked = 0usize;
    let mut kills = 0;
    while total_acked < COMMITS {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let start = sent.len();
        let writer = {
            let (stop, acked, socket) = (stop.clone(), acked.clone(), d.socket());
            std::thread::spawn(move || {
                let mut asked = Vec::new();
                let Ok(mut c) = modelreg::client::Client::connect(&socket) else {
                    return asked;
                };
                let mut i = start;
                while !stop.load(Ordering::SeqCst) {
                    asked.push(target(i));
                    match c.alias_set("m", "production", &format!("v{}", target(i))) {
                        Ok(_) => acked.store(asked.len(), Ordering::SeqCst),
                        // The daemon was killed mid-request: not acknowledged.
                        Err(_) => break,
                    }
                    i += 1;
                }
                asked
            })
        };
        // A random point: after 1 to 150 more acknowledged commits (at most what is
        // left), plus up to 3 ms, so that the kill lands inside a commit or between two.
        let goal = (1 + rng.below(150) as usize).min(COMMITS - total_acked);
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.load(Ordering::SeqCst) < goal {
            assert!(
                Instant::now() < deadline,
                "no progress: {} acknowledged",
                acked.load(Ordering::SeqCst)
            );
            // Files dropped meanwhile: the kill lands before, during or after copies.
            if rng.below(20) == 0 {
                let name = format!("f{dropped}");
                write_renamed(
                    &d.inbox(),
                    &format!("{name}.pt"),
                    &bytes(1000 + dropped as u64, 4096 * (1 + rng.below(64) as usize)),
                );
                dropped += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_micros(rng.below(3000)));
        // What the socket shows as registered is acknowledged.
        if let Ok(list) = d.client().list() {
            for m in list.models.iter().filter(|m| m.name.starts_with('f')) {
                if let Ok(v) = d.get(&m.name, "v1") {
                    acked_files.insert(m.name.clone(), v.files[0].sha256.clone());
                }
            }
        }
        d.kill();
        kills += 1;
        stop.store(true, Ordering::SeqCst);
        let asked = writer.join().unwrap();
        let acked = acked.load(Ordering::SeqCst);
        total_acked += acked;
        sent.extend(asked);
        d.spawn();
        // The alias's history is a prefix of what was sent, holding everything
        // acknowledged; whatever was lost after that is dropped from `sent`.
        let history: Vec<u32> = d.catalog().models["m"]
            .alias_history
            .iter()
            .filter_map(|h| h.to)
            .collect();
        assert!(
            history.len() <= sent.len() && history[..] == sent[..history.len()],
            "kill {kills}: history {history:?} is not a prefix of {sent:?}"
        );
        assert!(
            history.len() >= start + acked,
            "kill {kills}: {} change(s) acknowledged, {} kept",
            start + acked,
            history.len()
        );
        sent.truncate(history.len());
        for (name, sha) in &acked_files {
            let v = d
                .get(name, "v1")
                .unwrap_or_else(|e| panic!("{name} lost: {e}"));
            assert_eq!(&v.files[0].sha256, sha, "{name}");
        }
        // registry.yaml is rebuilt from the journal replayed at start, within its
        // interval: the file alone holds every move kept.
        wait_until(Duration::from_secs(30), "registry.yaml rebuilt", || {
            file_catalog(&d)
                .models
                .get("m")
                .is_some_and(|m| m.alias_history.len() >= history.len())
        });
    }
    eprintln!(
        "{total_acked} alias change(s) acknowledged over {kills} kills, {} file(s) seen registered",
        acked_files.len()
    );
    // Every dropped file ends as exactly one v1 whose bytes match its hash; m keeps its
    // three versions, numbers never reused.
    wait_until(Duration::from_secs(60), "every file registered", || {
        d.client()
            .list()
            .map(|l| l.models.iter().filter(|m| m.name.starts_with('f')).count() == dropped)
            .unwrap_or(false)
    });
    let c = d.catalog();
    for (name, m) in c.models.iter().filter(|(n, _)| n.starts_with('f')) {
        assert_eq!(m.versions.len(), 1, "{name}");
        let v = d.get(name, "v1").unwrap();
        let on_disk = std::fs::read(&v.path).unwrap();
        assert_eq!(modelreg::store::sha256_hex(&on_disk), v.files[0].sha256);
    }
    assert_eq!(c.models["m"].highest, 3);
    assert!(d.cli(&["verify"]).status.success());
    // A clean stop folds everything into registry.yaml and empties the journal.
    let now = d.catalog();
    assert!(d.stop().success());
    assert_eq!(
        std::fs::read_to_string(d.registry_path()).unwrap(),
        persist::to_yaml(&now).unwrap()
    );
    assert!(records(&d).is_empty());
}

/// Starts `d` with aliases moved `n` times after registry.yaml was last written, then
/// kills it, so that the journal holds those records.
fn journal_of_alias_moves(n: usize) -> TestDaemon {
    let mut d = TestDaemon::start("settle: 50ms\nregistry_write_interval: 1h\n");
    for v in 1..=2u64 {
        write_renamed(&d.inbox(), "m.pt", &bytes(v, 128));
        d.wait_versions("m", v as usize);
    }
    let mut c = d.client();
    for i in 0..n {
        c.alias_set("m", "production", &format!("v{}", 1 + i % 2))
            .unwrap();
    }
    d.kill();
    d
}

#[test]
fn a_torn_journal_tail_is_dropped_with_a_warning_and_the_rest_kept() {
    let mut d = journal_of_alias_moves(5);
    let recs = records(&d);
    assert!(
        recs.len() >= 5,
        "the moves are in the journal: {}",
        recs.len()
    );
    // registry.yaml, rewritten only hourly, does not hold them yet.
    assert!(
        file_catalog(&d)
            .models
            .get("m")
            .is_none_or(|m| m.alias_history.is_empty())
    );
    // A crash in the middle of the last append: cut it short.
    let last_start = recs[recs.len() - 2].1;
    let full = std::fs::metadata(journal_path(&d)).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(journal_path(&d))
        .unwrap();
    f.set_len(full - 7).unwrap();
    drop(f);
    d.spawn();
    let log = d.log();
    assert!(
        log.contains("WARN") && log.contains(&format!("offset {last_start}")),
        "{log}"
    );
    let history = d.catalog().models["m"].alias_history.clone();
    assert_eq!(history.len(), 4, "only the torn move is lost");
    // The tail was cut: a new record follows intact ones, and the next start is clean.
    d.client().alias_set("m", "staging", "v2").unwrap();
    d.kill();
    d.spawn();
    let c = d.catalog();
    assert_eq!(c.models["m"].aliases["staging"], 2);
    assert_eq!(c.models["m"].alias_history.len(), 5);
}

#[test]
fn a_damaged_record_before_intact_ones_refuses_to_start_naming_path_and_offset() {
    let d = journal_of_alias_moves(4);
    let recs = records(&d);
    let path = journal_path(&d);
    let mut raw = std::fs::read(&path).unwrap();
    // The second record's payload.
    let second = recs[0].1;
    raw[second as usize + 30] ^= 0x01;
    std::fs::write(&path, &raw).unwrap();
    let out = d.serve_output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused: {err}");
    assert!(
        err.contains(&path.display().to_string()) && err.contains(&format!("offset {second}")),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        raw,
        "the journal is left as it is"
    );
    // `verify --offline` reads registry.yaml with the journal, and says the same.
    let out = Command::new(BIN)
        .args(["verify", "--offline", "--root"])
        .arg(d.root.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&format!("offset {second}")),
        "{err}"
    );
}

// Fresh-clone tester: one byte flipped in a complete record, and the record after it
// cut short, was dropped at start as if the two were one torn append ("dropped the last
// record ... 356 bytes"), losing an acknowledged alias move. A later record begun means
// the damaged one had been written whole.
#[test]
fn a_damaged_record_followed_by_a_torn_one_refuses_to_start() {
    let d = journal_of_alias_moves(4);
    let recs = records(&d);
    let path = journal_path(&d);
    let mut raw = std::fs::read(&path).unwrap();
    // The third record's payload damaged, the fourth (last) cut short.
    let (third, fourth) = (recs[1].1, recs[2].1);
    raw[third as usize + 30] ^= 0x01;
    raw.truncate(fourth as usize + 20);
    std::fs::write(&path, &raw).unwrap();
    let out = d.serve_output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused: {err}");
    assert!(
        err.contains(&format!("offset {third}")) && err.contains("followed by a later record"),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), raw, "left as it is");
}

#[test]
fn registry_yaml_follows_within_its_interval_on_reload_and_at_sigterm() {
    let mut d = TestDaemon::start("settle: 50ms\nregistry_write_interval: 1h\n");
    write_renamed(&d.inbox(), "m.pt", &bytes(1, 64));
    d.wait_versions("m", 1);
    d.client().alias_set("m", "production", "v1").unwrap();
    // Durable in the journal, answered by queries; registry.yaml waits for its hour.
    assert_eq!(d.catalog().models["m"].aliases["production"], 1);
    assert_eq!(d.get("m", "production").unwrap().number, 1);
    assert!(!file_catalog(&d).models.contains_key("m"));
    // A shorter interval, live on SIGHUP: registry.yaml catches up on its own.
    d.write_config("settle: 50ms\nregistry_write_interval: 200ms\n");
    d.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(30), "registry.yaml rewritten", || {
        file_catalog(&d)
            .models
            .get("m")
            .is_some_and(|m| m.aliases.get("production") == Some(&1))
    });
    // Rewritten whole, byte for byte what a full write of the catalog gives; the journal
    // no longer holds what it includes.
    wait_until(Duration::from_secs(30), "the journal rotated", || {
        records(&d).is_empty()
    });
    let text = std::fs::read_to_string(d.registry_path()).unwrap();
    assert_eq!(text, persist::to_yaml(&d.catalog()).unwrap());
    // Back to an hour: the next change waits in the journal until SIGTERM writes it.
    d.write_config("settle: 50ms\nregistry_write_interval: 1h\n");
    d.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(30), "reloaded", || {
        d.log().matches("settings reloaded").count() >= 2
    });
    d.client().alias_set("m", "staging", "v1").unwrap();
    assert!(!file_catalog(&d).models["m"].aliases.contains_key("staging"));
    let now = d.catalog();
    assert!(d.stop().success());
    let text = std::fs::read_to_string(d.registry_path()).unwrap();
    assert_eq!(text, persist::to_yaml(&now).unwrap());
    assert_eq!(file_catalog(&d).models["m"].aliases["staging"], 1);
    assert!(records(&d).is_empty());
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(journal_path(&d)).unwrap().permissions()
        ) & 0o777,
        0o600
    );
}
