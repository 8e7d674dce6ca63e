//! Issue 3, end to end: real writers (in place, slow, killed, rsync, mv, appends,
//! bursts, an overflowed kernel queue, folders, symlinks) and the daemon registers every
//! complete artifact exactly once and nothing partial.

mod common;

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::process::Command;
use std::time::Duration;

use common::*;

fn assert_one_version_with(d: &TestDaemon, name: &str, entry: &str, data: &[u8]) {
    let vs = d.wait_versions(name, 1);
    d.wait_seen(entry);
    let vs2 = d.versions(name);
    assert_eq!(vs2.len(), 1, "exactly one version of {name}: {vs2:?}");
    assert_eq!(std::fs::read(&vs[0].path).unwrap(), data, "the final bytes");
}

/// 10 chunks over 3 s, in place: one version, of the bytes after the last write.
#[test]
fn ten_chunks_over_three_seconds_make_one_version() {
    let d = TestDaemon::start("settle: 1s\n");
    let data = bytes(11, 10 * 50_000);
    let mut f = std::fs::File::create(d.inbox().join("chunked.pt")).unwrap();
    for c in data.chunks(50_000) {
        f.write_all(c).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(f);
    assert_one_version_with(&d, "chunked", "chunked.pt", &data);
}

/// A writer that keeps its file open and pauses longer than the settle period is not
/// registered half-way (its close has not been seen); then one version of all of it.
#[test]
fn open_write_paused_longer_than_settle_waits_for_close() {
    let d = TestDaemon::start("settle: 300ms\n");
    let data = bytes(12, 200_000);
    let mut f = std::fs::File::create(d.inbox().join("paused.pt")).unwrap();
    f.write_all(&data[..100_000]).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        d.versions("paused").is_empty(),
        "nothing registered while the write is open"
    );
    let s = d.status();
    assert!(
        s.waiting
            .iter()
            .any(|w| w.name == "paused" && w.state == "writing"),
        "{:?}",
        s.waiting
    );
    f.write_all(&data[100_000..]).unwrap();
    drop(f);
    assert_one_version_with(&d, "paused", "paused.pt", &data);
}

/// A writer killed mid-way (its close comes from the kernel) and resumed by another
/// within the settle period: one version, of the final bytes only.
#[test]
fn killed_writer_resumed_by_another_makes_one_version() {
    let d = TestDaemon::start("settle: 2s\n");
    let data = bytes(13, 400_000);
    let part1 = d.root.path().join("part1");
    std::fs::write(&part1, &data[..150_000]).unwrap();
    let target = d.inbox().join("killed.pt");
    // `exec sleep` keeps the file open in the same process, so SIGKILL closes it.
    let mut writer = Command::new("sh")
        .arg("-c")
        .arg("cat \"$1\"; exec sleep 30")
        .arg("sh")
        .arg(&part1)
        .stdout(std::fs::File::create(&target).unwrap())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), "the first part", || {
        std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0) == 150_000
    });
    writer.kill().unwrap();
    writer.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&target)
        .unwrap();
    f.write_all(&data[150_000..]).unwrap();
    drop(f);
    assert_one_version_with(&d, "killed", "killed.pt", &data);
}

/// rsync writes `.name.XXXXXX` and renames it: one version, its temporary never.
#[test]
fn rsync_copy_registers_once() {
    let d = TestDaemon::start("settle: 500ms\n");
    let src = d.root.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let data = bytes(14, 600_000);
    std::fs::write(src.join("synced.pt"), &data).unwrap();
    // Slow enough that the temporary exists for a couple of seconds.
    let st = Command::new("rsync")
        .args(["--bwlimit=300"])
        .arg(src.join("synced.pt"))
        .arg(format!("{}/", d.inbox().display()))
        .status()
        .expect("rsync is installed (.ci/run installs it)");
    assert!(st.success());
    assert_one_version_with(&d, "synced", "synced.pt", &data);
    let c = d.catalog();
    assert_eq!(c.models.keys().collect::<Vec<_>>(), ["synced"]);
    assert_eq!(c.sources.keys().collect::<Vec<_>>(), ["synced.pt"]);
}

/// `mv` from outside the inbox gives only a moved-to event: one version.
#[test]
fn mv_from_outside_registers_once() {
    let d = TestDaemon::quick();
    let data = bytes(15, 300_000);
    let outside = d.root.path().join("trained.pt");
    std::fs::write(&outside, &data).unwrap();
    let st = Command::new("mv")
        .arg(&outside)
        .arg(d.inbox())
        .status()
        .unwrap();
    assert!(st.success());
    assert_one_version_with(&d, "trained", "trained.pt", &data);
}

/// Temporary names never register; a `.part` renamed to its final name registers once.
#[test]
fn temporaries_never_register_and_renamed_part_registers_once() {
    let d = TestDaemon::quick();
    for n in [
        "dl.pt.part",
        "dl2.pt.incomplete",
        "x.tmp",
        "x.pt~",
        ".x.pt.swp",
        ".dotfile",
    ] {
        write(&d.inbox().join(n), b"temporary");
    }
    let data = bytes(16, 100_000);
    let part = d.inbox().join("download.pt.part");
    let mut f = std::fs::File::create(&part).unwrap();
    for c in data.chunks(25_000) {
        f.write_all(c).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(f);
    std::fs::rename(&part, d.inbox().join("download.pt")).unwrap();
    assert_one_version_with(&d, "download", "download.pt", &data);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(d.catalog().models.keys().collect::<Vec<_>>(), ["download"]);
}

/// Appending to a registered file (`curl -C -`, `wget -c`): exactly one new version
/// after it settles again.
#[test]
fn append_makes_one_new_version() {
    let d = TestDaemon::quick();
    let p = d.inbox().join("grown.pt");
    let data = bytes(17, 90_000);
    write(&p, &data[..30_000]);
    d.wait_versions("grown", 1);
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    for c in data[30_000..].chunks(20_000) {
        f.write_all(c).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(f);
    let vs = d.wait_versions("grown", 2);
    d.wait_seen("grown.pt");
    assert_eq!(d.versions("grown").len(), 2);
    assert_eq!(std::fs::read(&vs[1].path).unwrap(), data);
    assert_eq!(
        std::fs::read(&vs[0].path).unwrap(),
        &data[..30_000],
        "v1 unchanged"
    );
}

fn wait_all_registered(d: &TestDaemon, n: usize, timeout: Duration) {
    wait_until(timeout, &format!("{n} models"), || d.status().versions >= n);
    // Let anything in flight finish, then check there is no extra version.
    wait_until(Duration::from_secs(30), "nothing waiting", || {
        d.status().waiting.is_empty()
    });
    let c = d.catalog();
    assert_eq!(c.models.len(), n, "every file is a model");
    for (name, m) in &c.models {
        assert_eq!(m.versions.len(), 1, "{name} registered exactly once");
        assert_eq!(m.highest, 1);
    }
}

/// A burst of 5,000 small files: exactly 5,000 versions, none duplicated, none missing.
#[test]
fn burst_of_5000_files_registers_each_once() {
    let d = TestDaemon::quick();
    for i in 0..5000 {
        write(&d.inbox().join(format!("b{i:05}.pt")), &bytes(i, 64));
    }
    wait_all_registered(&d, 5000, Duration::from_secs(180));
}

/// The daemon stopped (SIGSTOP) while files are written: the kernel's event queue
/// overflows, and the files created after that have no event at all; after SIGCONT the
/// rescan registers every file exactly once.
#[test]
fn event_queue_overflow_while_stopped_is_rescanned() {
    // The queue (16,384 events by default here) is overflowed by rewriting two files in
    // turn (each rewrite queues open, modify and close-write, and alternating names are
    // never merged into the event before), so that only a few files are registrations:
    // 9,000 new files each registered made this test two minutes of CI. Then new files
    // whose events the full queue dropped, which only a rescan can find.
    let limit: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(16_384);
    let rewrites = limit / 2 + 1000;
    if rewrites > 200_000 {
        eprintln!("skipped: max_queued_events is {limit}; overflowing it takes too long");
        return;
    }
    let d = TestDaemon::quick();
    d.signal(libc::SIGSTOP);
    for i in 0..rewrites {
        let name = format!("churn{}.pt", i % 2);
        write(&d.inbox().join(name), &bytes(i as u64 + 100_000, 32));
    }
    let late = 300;
    for i in 0..late {
        write(
            &d.inbox().join(format!("o{i:05}.pt")),
            &bytes(i as u64 + 900_000, 32),
        );
    }
    d.signal(libc::SIGCONT);
    wait_all_registered(&d, 2 + late, Duration::from_secs(300));
    assert!(
        d.log().contains("rescanning"),
        "the overflow was seen and answered by a rescan"
    );
    // The rewritten files hold their last bytes.
    for k in 0..2u64 {
        let last = (rewrites as u64 - 1 - k) + 100_000;
        let name = format!("churn{}", (rewrites as u64 - 1 - k) % 2);
        let v = &d.versions(&name)[0];
        assert_eq!(std::fs::read(&v.path).ok(), Some(bytes(last, 32)), "{name}");
    }
}

/// `mkdir -p a/b/c` with files written into it at once: one folder artifact, all files.
#[test]
fn new_folder_filled_at_once_is_one_artifact() {
    let d = TestDaemon::quick();
    let top = d.inbox().join("bert");
    std::fs::create_dir_all(top.join("b/c")).unwrap();
    let files = [
        ("config.json", 100),
        ("b/tokenizer.json", 2000),
        ("b/c/model.safetensors", 300_000),
        ("b/c/x.bin", 10),
    ];
    for (i, (rel, len)) in files.iter().enumerate() {
        write(&top.join(rel), &bytes(200 + i as u64, *len));
    }
    let vs = d.wait_versions("bert", 1);
    d.wait_seen("bert");
    assert_eq!(d.versions("bert").len(), 1);
    let v = &vs[0];
    assert_eq!(v.kind, modelreg::registry::Kind::Folder);
    assert_eq!(v.files.len(), 4, "{:?}", v.files);
    for (i, (rel, len)) in files.iter().enumerate() {
        let stored = std::path::Path::new(&v.dir).join(rel);
        assert_eq!(
            std::fs::read(&stored).unwrap(),
            bytes(200 + i as u64, *len),
            "{rel}"
        );
        let f = v
            .files
            .iter()
            .find(|f| f.path == stored.display().to_string())
            .unwrap();
        assert_eq!(
            f.sha256,
            modelreg::store::sha256_hex(&bytes(200 + i as u64, *len))
        );
    }
    assert_eq!(v.path, v.dir, "a folder version's path is its folder");
}

/// A sidecar written 1 s before its artifact, and one written 1 s after: each joins the
/// same version as its artifact (not a later metrics update).
#[test]
fn sidecar_before_or_after_artifact_joins_its_version() {
    let d = TestDaemon::start("settle: 2s\n");
    write(
        &d.inbox().join("early.metrics.yaml"),
        sidecar(&[("accuracy", 0.8)]).as_bytes(),
    );
    std::thread::sleep(Duration::from_secs(1));
    write(&d.inbox().join("early.pt"), b"early weights");

    write(&d.inbox().join("late.pt"), b"late weights");
    std::thread::sleep(Duration::from_secs(1));
    write(
        &d.inbox().join("late.metrics.yaml"),
        sidecar(&[("accuracy", 0.7)]).as_bytes(),
    );

    for (name, acc) in [("early", 0.8), ("late", 0.7)] {
        let vs = d.wait_versions(name, 1);
        assert_eq!(vs[0].metrics.get("accuracy"), Some(&acc), "{name}");
        assert!(
            vs[0].metrics_updated_at.is_none(),
            "{name}: joined the version, not updated later"
        );
    }
}

/// A symlink leading out of the inbox is not registered and status says why; one
/// staying inside the inbox is followed.
#[test]
fn symlink_out_of_inbox_refused_and_inside_followed() {
    let d = TestDaemon::quick();
    let outside = d.root.path().join("secret.pt");
    std::fs::write(&outside, b"outside").unwrap();
    std::os::unix::fs::symlink(&outside, d.inbox().join("leak.pt")).unwrap();
    wait_until(
        Duration::from_secs(10),
        "the symlink refusal in status",
        || {
            d.status()
                .problems
                .iter()
                .any(|p| p.path.ends_with("leak.pt") && p.message.contains("outside the inbox"))
        },
    );
    assert!(d.versions("leak").is_empty());

    std::fs::create_dir(d.inbox().join(".stash")).unwrap();
    std::fs::write(d.inbox().join(".stash/real.pt"), b"inside").unwrap();
    std::os::unix::fs::symlink(
        d.inbox().join(".stash/real.pt"),
        d.inbox().join("linked.pt"),
    )
    .unwrap();
    let vs = d.wait_versions("linked", 1);
    assert_eq!(std::fs::read(&vs[0].path).unwrap(), b"inside");
    assert!(
        !std::fs::symlink_metadata(&vs[0].path)
            .unwrap()
            .file_type()
            .is_symlink(),
        "stored as a copy"
    );
}

/// Deleting the source never touches the stored version; new bytes under the same name
/// make the next version.
#[test]
fn deleting_source_keeps_version_and_new_bytes_make_next() {
    let d = TestDaemon::quick();
    let p = d.inbox().join("gone.pt");
    write(&p, b"first");
    let v1 = d.wait_versions("gone", 1);
    std::fs::remove_file(&p).unwrap();
    wait_until(
        Duration::from_secs(10),
        "the source to be forgotten",
        || !d.catalog().sources.contains_key("gone.pt"),
    );
    assert_eq!(std::fs::read(&v1[0].path).unwrap(), b"first");
    assert_eq!(d.get("gone", "latest").unwrap().version, "v1");
    write(&p, b"second");
    let vs = d.wait_versions("gone", 2);
    assert_eq!(std::fs::read(&vs[1].path).unwrap(), b"second");
    assert_eq!(std::fs::read(&vs[0].path).unwrap(), b"first");
}

/// Names that cannot be model names are refused with a reason in status; nothing is
/// written outside the store.
#[test]
fn unsafe_names_refused_with_reason_in_status() {
    let d = TestDaemon::quick();
    let ctl = std::ffi::OsStr::from_bytes(b"bad\x01name.pt");
    write(&d.inbox().join(ctl), b"x");
    let non_utf8 = std::ffi::OsStr::from_bytes(b"caf\xe9.pt");
    write(&d.inbox().join(non_utf8), b"y");
    wait_until(Duration::from_secs(10), "both refusals in status", || {
        let s = d.status();
        s.problems
            .iter()
            .filter(|p| p.message.contains("not registered"))
            .count()
            >= 2
    });
    write(&d.inbox().join("fine.pt"), b"z");
    d.wait_versions("fine", 1);
    // Model folders only (the store also holds its `.staging` folder).
    let stored: Vec<_> = std::fs::read_dir(d.root.path().join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(stored, ["fine"]);
}

/// `watch: poll` (for network filesystems): files are still registered, status says so.
#[test]
fn poll_watcher_registers_files() {
    let d = TestDaemon::start("settle: 300ms\nwatch: poll\npoll_interval: 200ms\n");
    assert!(d.status().watch.starts_with("poll"), "{}", d.status().watch);
    write(&d.inbox().join("polled.pt"), b"seen by polling");
    d.wait_versions("polled", 1);
}
