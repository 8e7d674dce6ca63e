//! Liveness and never-reuse, end to end with real tools: every inbox entry ends
//! registered (exactly once, with its final bytes), refused with a reason, or visibly
//! waiting with a reason; version numbers are never given twice; one daemon per root.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Runs a command, panicking with its output when it fails.
fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `bert-tiny/` with three files, in `dir`; returns (relative path, bytes).
fn make_folder(dir: &Path, seed: u64) -> Vec<(&'static str, Vec<u8>)> {
    let files = vec![
        ("model.safetensors", bytes(seed, 600_000)),
        ("config.json", bytes(seed + 1, 300)),
        ("vocab.txt", bytes(seed + 2, 5_000)),
    ];
    std::fs::create_dir_all(dir).unwrap();
    for (rel, data) in &files {
        std::fs::write(dir.join(rel), data).unwrap();
    }
    files
}

/// Waits for exactly one version of `name` whose files are exactly `files` (for a folder)
/// and that stays the only one once the daemon has looked at `entry` as it is now.
fn assert_one_folder_version(d: &TestDaemon, name: &str, entry: &str, files: &[(&str, Vec<u8>)]) {
    let vs = d.wait_versions(name, 1);
    d.wait_seen(entry);
    let now = d.versions(name);
    assert_eq!(now.len(), 1, "exactly one version of {name}: {now:?}");
    let v = &vs[0];
    assert_eq!(v.files.len(), files.len(), "{:?}", v.files);
    for (rel, data) in files {
        let stored = Path::new(&v.dir).join(rel);
        assert_eq!(&std::fs::read(&stored).unwrap(), data, "{rel}");
    }
}

/// `tar -C inbox -xf bert.tar` creating `bert-tiny/`: tar writes files before the new
/// folder's watch exists, then sets the folder's times (events on the folder path
/// itself). It must be registered, once, with every file.
#[test]
fn tar_creating_a_folder_is_registered() {
    let d = TestDaemon::quick();
    let work = d.root.path().join("work");
    let files = make_folder(&work.join("bert-tiny"), 300);
    let tarball = d.root.path().join("bert.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&work)
        .arg("-cf")
        .arg(&tarball)
        .arg("bert-tiny"));
    run(Command::new("tar")
        .arg("-C")
        .arg(d.inbox())
        .arg("-xf")
        .arg(&tarball));
    assert_one_folder_version(&d, "bert-tiny", "bert-tiny", &files);
    wait_until(Duration::from_secs(10), "nothing waiting", || {
        d.status().waiting.is_empty()
    });
}
