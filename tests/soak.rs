//! Soak: mixed writers (in place, renamed into place, folders), renames, deletes and
//! SIGKILL/restarts for a while; then every surviving inbox entry is registered exactly
//! once with its final bytes, and `verify` is clean.
//!
//! 60 s by default (CI); `MODELREG_SOAK_SECS=600 cargo test --release --test soak -- --nocapture`
//! for the long run. The figures are printed at the end.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// The content of an inbox entry as (relative path, sha256), sorted.
fn entry_content(inbox: &Path, entry: &str) -> Vec<(String, String)> {
    let p = inbox.join(entry);
    let mut out = Vec::new();
    if p.is_dir() {
        for e in std::fs::read_dir(&p).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            out.push((
                name,
                modelreg::store::sha256_hex(&std::fs::read(e.path()).unwrap()),
            ));
        }
    } else {
        out.push((
            entry.to_string(),
            modelreg::store::sha256_hex(&std::fs::read(&p).unwrap()),
        ));
    }
    out.sort();
    out
}

#[test]
fn soak_mixed_writers_renames_deletes_and_kills() {
    let secs: u64 = std::env::var("MODELREG_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let mut d = TestDaemon::start("settle: 300ms\nreconcile_interval: 5s\n");
    let inbox = d.inbox();
    let outside = d.root.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let mut rng = 0x2545F4914F6CDD1Du64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut seed = 1000u64;
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let started = Instant::now();
    let mut last_kill = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        let name = format!("s{}", next(12));
        seed += 1;
        // Every write has bytes no other write has, so "exactly once" is checkable.
        let data = bytes(seed, 1000 + next(200_000) as usize);
        match next(10) {
            0..=2 => {
                write(&inbox.join(format!("{name}.pt")), &data);
                *counts.entry("in-place writes").or_default() += 1;
            }
            3..=4 => {
                write_renamed(&inbox, &format!("{name}.pt"), &data);
                *counts.entry("renamed-into-place writes").or_default() += 1;
            }
            5 => {
                let dir = outside.join(format!("f{seed}"));
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("a.bin"), &data).unwrap();
                std::fs::write(dir.join("b.json"), format!("{seed}")).unwrap();
                let target = inbox.join(format!("dir{}", next(4)));
                let _ = std::fs::remove_dir_all(&target);
                let ok = std::process::Command::new("cp")
                    .arg("-r")
                    .arg(&dir)
                    .arg(&target)
                    .status()
                    .unwrap()
                    .success();
                assert!(ok);
                *counts.entry("folder copies (cp -r)").or_default() += 1;
            }
            6 => {
                // To a name never used before: renaming back and forth would bring old
                // bytes back under a name, which is a legitimate second version.
                if std::fs::rename(
                    inbox.join(format!("{name}.pt")),
                    inbox.join(format!("r{seed}.pt")),
                )
                .is_ok()
                {
                    *counts.entry("renames").or_default() += 1;
                }
            }
            7 => {
                if std::fs::remove_file(inbox.join(format!("{name}.pt"))).is_ok() {
                    *counts.entry("deletes").or_default() += 1;
                }
            }
            _ => {
                let tmp = outside.join(format!("{name}.{seed}"));
                std::fs::write(&tmp, &data).unwrap();
                std::fs::rename(&tmp, inbox.join(format!("{name}.pt"))).unwrap();
                *counts.entry("mv of finished files").or_default() += 1;
            }
        }
        if last_kill.elapsed() > Duration::from_secs(7) {
            d.kill();
            d.spawn();
            last_kill = Instant::now();
            *counts.entry("SIGKILL + restarts").or_default() += 1;
        }
        std::thread::sleep(Duration::from_millis(next(60)));
    }
    let drain = Instant::now();
    // Every surviving entry: its final content is a version of its model, exactly once.
    let mut entries: Vec<String> = std::fs::read_dir(&inbox)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    entries.sort();
    for entry in &entries {
        let model = entry.trim_end_matches(".pt");
        let want = entry_content(&inbox, entry);
        let mut matching = 0;
        wait_until(
            Duration::from_secs(120),
            &format!("{entry} registered with its final bytes"),
            || {
                matching = d
                    .versions(model)
                    .iter()
                    .filter(|v| version_content(v) == want)
                    .count();
                matching >= 1
            },
        );
        d.wait_seen(entry);
        let matching = d
            .versions(model)
            .iter()
            .filter(|v| version_content(v) == want)
            .count();
        assert_eq!(
            matching, 1,
            "{entry}: its final bytes registered exactly once"
        );
    }
    let drained = drain.elapsed();
    let out = d.cli(&["verify"]);
    assert!(out.status.success(), "verify: {out:?}");
    let catalog = d.catalog();
    let versions: usize = catalog.models.values().map(|m| m.versions.len()).sum();
    for (name, m) in &catalog.models {
        let mut numbers: Vec<u32> = m.versions.iter().map(|v| v.number).collect();
        numbers.dedup();
        assert_eq!(numbers.len(), m.versions.len(), "{name}: no number twice");
    }
    let mut hashes = std::collections::BTreeSet::new();
    for (name, m) in &catalog.models {
        for v in &m.versions {
            let key: Vec<&str> = v.files.iter().map(|f| f.sha256.as_str()).collect();
            assert!(
                hashes.insert((name.clone(), key.join(","))),
                "{name} v{}: the same bytes registered twice",
                v.number
            );
        }
    }
    eprintln!(
        "soak figures: {secs} s of writing; {counts:?}; {} surviving entries all registered exactly once (drained in {drained:?}); {} models, {versions} versions; verify clean",
        entries.len(),
        catalog.models.len()
    );
}
