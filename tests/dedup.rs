//! Dedup by content: a new version's files already stored for the model are hard links to
//! the stored ones, not second copies, and are only read, never written again; `verify`
//! and `rm` stay correct with shared inodes.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::*;

const FILE: usize = 256 * 1024;
const FILES: usize = 10;

fn name(i: usize) -> String {
    format!("shard-{i}.bin")
}

/// What the daemon (process `pid`) has caused to be written to storage so far:
/// write_bytes of /proc/<pid>/io.
fn written(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("/proc/<pid>/io");
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("write_bytes in /proc/<pid>/io")
}

/// What a version writes besides its files' bytes: the manifest, the catalog's commit,
/// the links and the daemon's debug log lines.
const SLACK: u64 = 128 * 1024;

/// The (device, inode) of every file of version folder `dir` with its bytes on disk
/// (st_blocks), by file name.
fn inodes(dir: &Path) -> Vec<(String, (u64, u64), u64)> {
    (0..FILES)
        .map(|i| {
            let m = std::fs::metadata(dir.join(name(i))).unwrap();
            (name(i), (m.dev(), m.ino()), m.blocks() * 512)
        })
        .collect()
}

#[test]
fn a_folder_v2_with_nine_of_ten_files_unchanged_stores_only_the_changed_files_bytes() {
    let d = TestDaemon::quick();
    // v1: a folder of ten different files, built outside and moved in whole.
    let build = d.root.path().join("build");
    std::fs::create_dir(&build).unwrap();
    for i in 0..FILES {
        write(&build.join(name(i)), &bytes(i as u64, FILE));
    }
    std::fs::rename(&build, d.inbox().join("enc")).unwrap();
    d.wait_versions("enc", 1);
    // v2: one file rewritten (renamed into place, as a training script would).
    let changed = bytes(1000, FILE);
    let before = written(d.pid());
    write_renamed(&d.inbox().join("enc"), &name(3), &changed);
    d.wait_versions("enc", 2);
    // The nine unchanged files were read to verify them, never written again.
    let v2_wrote = written(d.pid()) - before;
    assert!(
        v2_wrote as f64 <= 1.1 * FILE as f64 + SLACK as f64,
        "the daemon wrote {v2_wrote} bytes for v2, whose one changed file has {FILE}"
    );

    let store = d.root.path().join("models/enc");
    let (v1, v2) = (inodes(&store.join("v1")), inodes(&store.join("v2")));
    for ((file, ino1, _), (_, ino2, _)) in v1.iter().zip(&v2) {
        if *file == name(3) {
            assert_ne!(ino1, ino2, "the changed file is a copy of its own");
        } else {
            assert_eq!(ino1, ino2, "{file} is shared with v1");
        }
    }
    // What v2 added to the disk: the blocks of inodes v1 does not have.
    let in_v1: BTreeSet<_> = v1.iter().map(|(_, ino, _)| *ino).collect();
    let added: u64 = v2
        .iter()
        .filter(|(_, ino, _)| !in_v1.contains(ino))
        .map(|(_, _, blocks)| blocks)
        .sum();
    assert!(
        added as f64 <= 1.1 * FILE as f64,
        "v2 stored {added} bytes for one changed file of {FILE}"
    );
    assert!(
        d.log()
            .contains("9 of 10 file(s) already stored, hard-linked"),
        "the log says what was saved:\n{}",
        d.log()
    );
    assert_eq!(d.status().dedup_saved_bytes, 9 * FILE as u64);
    let text = ok(&d, &["status"]);
    assert!(
        text.contains("2.2 MiB stored once by dedup"),
        "status says what dedup saved:\n{text}"
    );
    ok(&d, &["verify"]);

    // rm of v1 leaves v2 whole, verified, each file with its one remaining name.
    ok(&d, &["rm", "enc", "v1"]);
    wait_until(Duration::from_secs(30), "v1's files to be deleted", || {
        !store.join("v1").exists()
    });
    ok(&d, &["verify", "enc"]);
    for i in 0..FILES {
        let p = store.join("v2").join(name(i));
        let expected = if i == 3 {
            changed.clone()
        } else {
            bytes(i as u64, FILE)
        };
        assert_eq!(std::fs::read(&p).unwrap(), expected, "{}", p.display());
        assert_eq!(std::fs::metadata(&p).unwrap().nlink(), 1);
    }
}

#[test]
fn rm_of_the_newer_sharer_leaves_the_older_intact_and_verified() {
    let d = TestDaemon::quick();
    write_renamed(&d.inbox(), "tok.bin", &bytes(7, FILE));
    d.wait_versions("tok", 1);
    write_renamed(&d.inbox(), "tok.bin", &bytes(8, FILE));
    d.wait_versions("tok", 2);
    // Back to v1's bytes: a new version (it differs from the latest), stored once.
    write_renamed(&d.inbox(), "tok.bin", &bytes(7, FILE));
    d.wait_versions("tok", 3);
    let store = d.root.path().join("models/tok");
    let ino = |v: &str| {
        std::fs::metadata(store.join(v).join("tok.bin"))
            .unwrap()
            .ino()
    };
    assert_eq!(ino("v1"), ino("v3"), "v3's bytes are v1's: one inode");
    assert_ne!(ino("v1"), ino("v2"));
    ok(&d, &["rm", "--force", "tok", "v3"]);
    wait_until(Duration::from_secs(30), "v3's files to be deleted", || {
        !store.join("v3").exists()
    });
    ok(&d, &["verify", "tok"]);
    assert_eq!(
        std::fs::read(store.join("v1/tok.bin")).unwrap(),
        bytes(7, FILE)
    );
}

#[test]
fn a_same_size_file_with_other_bytes_is_copied_not_linked() {
    let d = TestDaemon::quick();
    let v1 = bytes(21, FILE);
    write_renamed(&d.inbox(), "w.bin", &v1);
    d.wait_versions("w", 1);
    // Same size, other bytes everywhere (a retrained model of the same shape).
    let v2 = bytes(22, FILE);
    write_renamed(&d.inbox(), "w.bin", &v2);
    d.wait_versions("w", 2);
    // Same size, same start, middle and end: one byte differs where no sample looks.
    let mut v3 = v2.clone();
    v3[100_000] ^= 0x55;
    write_renamed(&d.inbox(), "w.bin", &v3);
    d.wait_versions("w", 3);
    let store = d.root.path().join("models/w");
    let meta = |v: &str| std::fs::metadata(store.join(v).join("w.bin")).unwrap();
    for (v, expected) in [("v1", &v1), ("v2", &v2), ("v3", &v3)] {
        assert_eq!(meta(v).nlink(), 1, "{v} shares no inode");
        let stored = std::fs::read(store.join(v).join("w.bin")).unwrap();
        assert!(stored == *expected, "{v} holds its own bytes");
    }
    assert!(
        !d.log().contains("already stored, hard-linked"),
        "{}",
        d.log()
    );
    assert_eq!(d.status().dedup_saved_bytes, 0);
    ok(&d, &["verify", "w"]);
}
