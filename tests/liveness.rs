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

/// Same, for files on disk: `(relative path, bytes)`.
fn content_of_files(files: &[(&str, Vec<u8>)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = files
        .iter()
        .map(|(r, b)| (r.to_string(), modelreg::store::sha256_hex(b)))
        .collect();
    out.sort();
    out
}

/// Waits until `name` has one version holding exactly `files`, and checks that it stays
/// the only one once the daemon has seen `entry` as it is now.
fn assert_exactly_one(d: &TestDaemon, name: &str, entry: &str, files: &[(&str, Vec<u8>)]) {
    let want = content_of_files(files);
    let mut last = vec![];
    wait_until(
        Duration::from_secs(40),
        &format!("{name}: one version with the final bytes"),
        || {
            last = d.versions(name);
            last.iter().any(|v| version_content(v) == want)
        },
    );
    d.wait_seen(entry);
    let now = d.versions(name);
    assert_eq!(now.len(), 1, "exactly one version of {name}: {now:?}");
    for (rel, data) in files {
        let stored = Path::new(&now[0].dir).join(rel);
        assert_eq!(&std::fs::read(&stored).unwrap(), data, "{name}: {rel}");
    }
}

/// tar extracting into a folder that already exists in the inbox (files only).
#[test]
fn writer_tar_into_an_existing_folder() {
    let d = TestDaemon::quick();
    let work = d.root.path().join("work");
    let files = make_folder(&work, 310);
    let tarball = d.root.path().join("files.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&work)
        .arg("-cf")
        .arg(&tarball)
        .args(["model.safetensors", "config.json", "vocab.txt"]));
    let target = d.inbox().join("bert-base");
    std::fs::create_dir(&target).unwrap();
    run(Command::new("tar")
        .arg("-C")
        .arg(&target)
        .arg("-xf")
        .arg(&tarball));
    assert_exactly_one(&d, "bert-base", "bert-base", &files);
}

#[test]
fn writer_unzip() {
    let d = TestDaemon::quick();
    let work = d.root.path().join("work");
    let files = make_folder(&work.join("zipped"), 320);
    let zip = d.root.path().join("z.zip");
    run(Command::new("zip")
        .current_dir(&work)
        .arg("-qr")
        .arg(&zip)
        .arg("zipped"));
    run(Command::new("unzip")
        .arg("-q")
        .arg(&zip)
        .arg("-d")
        .arg(d.inbox()));
    assert_exactly_one(&d, "zipped", "zipped", &files);
}

#[test]
fn writer_cp_r() {
    let d = TestDaemon::quick();
    let src = d.root.path().join("work/copied");
    let files = make_folder(&src, 330);
    run(Command::new("cp").arg("-r").arg(&src).arg(d.inbox()));
    assert_exactly_one(&d, "copied", "copied", &files);
}

#[test]
fn writer_rsync_a_file_and_folder() {
    let d = TestDaemon::quick();
    let src = d.root.path().join("work/synced");
    let files = make_folder(&src, 340);
    let single = d.root.path().join("work/single.pt");
    let data = bytes(345, 700_000);
    std::fs::write(&single, &data).unwrap();
    run(Command::new("rsync")
        .arg("-a")
        .arg(&src)
        .arg(&single)
        .arg(d.inbox()));
    assert_exactly_one(&d, "synced", "synced", &files);
    assert_exactly_one(&d, "single", "single.pt", &[("single.pt", data)]);
}

#[test]
fn writer_python_shutil_copytree() {
    let d = TestDaemon::quick();
    let src = d.root.path().join("work/pytree");
    let files = make_folder(&src, 350);
    run(Command::new("python3")
        .arg("-c")
        .arg("import shutil, sys; shutil.copytree(sys.argv[1], sys.argv[2])")
        .arg(&src)
        .arg(d.inbox().join("pytree")));
    assert_exactly_one(&d, "pytree", "pytree", &files);
}

#[test]
fn writer_git_clone_of_a_local_repository() {
    let d = TestDaemon::quick();
    let repo = d.root.path().join("work/gitrepo");
    let files = make_folder(&repo, 360);
    let git = |args: &[&str]| {
        run(Command::new("git")
            .current_dir(&repo)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args));
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-qm", "model"]);
    run(Command::new("git")
        .arg("clone")
        .arg("-q")
        .arg(&repo)
        .arg(d.inbox().join("cloned")));
    assert_exactly_one(&d, "cloned", "cloned", &files);
}

/// `curl -o` from a loopback HTTP server at a limited rate: the file grows for a few
/// seconds, longer than the settle period.
#[test]
fn writer_curl_at_a_limited_rate() {
    use std::io::BufRead;
    let d = TestDaemon::quick();
    let served = d.root.path().join("work");
    std::fs::create_dir_all(&served).unwrap();
    let data = bytes(370, 400_000);
    std::fs::write(served.join("fetched.pt"), &data).unwrap();
    let mut server = Command::new("python3")
        .arg("-u")
        .args(["-m", "http.server", "0", "--bind", "127.0.0.1"])
        .current_dir(&served)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "Serving HTTP on 127.0.0.1 port 12345 (http://127.0.0.1:12345/) ..."
    let port: u16 = line
        .split_whitespace()
        .skip_while(|w| *w != "port")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    let out = Command::new("curl")
        .args(["-s", "--limit-rate", "150k", "-o"])
        .arg(d.inbox().join("fetched.pt"))
        .arg(format!("http://127.0.0.1:{port}/fetched.pt"))
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(out.status.success(), "{out:?}");
    assert_exactly_one(&d, "fetched", "fetched.pt", &[("fetched.pt", data)]);
}

#[test]
fn writer_mv_of_a_finished_file() {
    let d = TestDaemon::quick();
    let src = d.root.path().join("moved.pt");
    let data = bytes(380, 300_000);
    std::fs::write(&src, &data).unwrap();
    run(Command::new("mv").arg(&src).arg(d.inbox()));
    assert_exactly_one(&d, "moved", "moved.pt", &[("moved.pt", data)]);
}

/// registry.yaml (both its names) deleted while stopped: the daemon refuses to start (instead of giving
/// v1 again and serving the old bytes under the new hash); `recover` rebuilds it from
/// the store's manifests; the next version is v3, with its own bytes.
#[test]
fn a_lost_registry_never_reuses_version_numbers() {
    let mut d = TestDaemon::quick();
    let (a, b, c) = (bytes(400, 1000), bytes(401, 1000), bytes(402, 1000));
    write(&d.inbox().join("m.pt"), &a);
    d.wait_versions("m", 1);
    write(&d.inbox().join("m.pt"), &b);
    d.wait_versions("m", 2);
    d.stop();
    for n in [1, 2] {
        assert!(
            d.root
                .path()
                .join(format!("models/m/v{n}/.modelreg-version.json"))
                .is_file(),
            "v{n} carries its manifest"
        );
    }
    std::fs::remove_file(d.registry_path()).unwrap();
    // And its second name, which would otherwise give it back: the catalog is lost.
    std::fs::remove_file(modelreg::registry::persist::journal::base_path(
        &d.registry_path(),
    ))
    .unwrap();
    let out = Command::new(BIN)
        .arg("serve")
        .arg("--root")
        .arg(d.root.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused to start: {err}");
    assert!(
        err.contains("m/v1") && err.contains("modelreg recover"),
        "the reason names what was lost and the way out: {err}"
    );
    assert!(!d.registry_path().exists(), "no empty registry was written");
    let out = Command::new(BIN)
        .arg("recover")
        .arg("--root")
        .arg(d.root.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("recovered m/v2 from its manifest"), "{said}");
    assert!(said.contains("lost"), "{said}");
    d.spawn();
    let vs = d.versions("m");
    assert_eq!(vs.len(), 2, "{vs:?}");
    assert_eq!(std::fs::read(&vs[0].path).unwrap(), a);
    assert_eq!(vs[1].files[0].sha256, modelreg::store::sha256_hex(&b));
    write(&d.inbox().join("m.pt"), &c);
    let vs = d.wait_versions("m", 3);
    assert_eq!(vs[2].number, 3);
    assert_eq!(
        std::fs::read(&vs[2].path).unwrap(),
        c,
        "v3 holds the new bytes"
    );
    assert_eq!(vs[2].files[0].sha256, modelreg::store::sha256_hex(&c));
    assert_eq!(std::fs::read(&vs[0].path).unwrap(), a, "v1 untouched");
    let out = d.cli(&["verify"]);
    assert!(out.status.success(), "{out:?}");
}

/// A removed version's number stays taken even when the catalog is lost: its manifest
/// is kept as a tombstone.
#[test]
fn a_removed_number_is_not_given_again_after_recover() {
    let mut d = TestDaemon::quick();
    for (i, seed) in [410u64, 411].iter().enumerate() {
        write(&d.inbox().join("r.pt"), &bytes(*seed, 500));
        d.wait_versions("r", i + 1);
    }
    let out = d.cli(&["rm", "r", "v2"]);
    assert!(out.status.success(), "{out:?}");
    wait_until(Duration::from_secs(10), "v2 deleted", || {
        !d.root.path().join("models/r/v2").exists()
    });
    d.stop();
    std::fs::remove_file(d.registry_path()).unwrap();
    std::fs::remove_file(modelreg::registry::persist::journal::base_path(
        &d.registry_path(),
    ))
    .unwrap();
    let out = Command::new(BIN)
        .arg("recover")
        .arg("--root")
        .arg(d.root.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    d.spawn();
    write(&d.inbox().join("r.pt"), &bytes(412, 500));
    // v1, the tombstone of v2, and the new one: v3, never v2 again.
    let vs = d.wait_versions("r", 3);
    assert_eq!(vs.last().unwrap().number, 3, "{vs:?}");
    assert_eq!(vs.len(), 3, "{vs:?}");
}

/// Deleting the lock file and the socket while a daemon runs does not let a second one
/// start on the same root.
#[test]
fn a_second_daemon_is_refused_even_without_lock_file_and_socket() {
    let d = TestDaemon::quick();
    std::fs::remove_file(d.root.path().join(".modelreg.lock")).unwrap();
    std::fs::remove_file(d.socket()).unwrap();
    let out = Command::new(BIN)
        .arg("serve")
        .arg("--root")
        .arg(d.root.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("already running"), "{err}");
}

/// A daemon of another root whose config points at this root's store (absolute paths) is
/// refused too: the store's folder is locked, not only the root. (Found by a tester:
/// both daemons logged "registered dup v1" into one store.)
#[test]
fn a_second_daemon_sharing_the_store_through_its_config_is_refused() {
    let d = TestDaemon::quick();
    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(other.path().join("config")).unwrap();
    std::fs::write(
        other.path().join("config/modelreg.yaml"),
        format!(
            "store: {}\nregistry: {}\n",
            d.root.path().join("models").display(),
            d.root.path().join("registry.yaml").display()
        ),
    )
    .unwrap();
    let out = Command::new("timeout")
        .arg("20")
        .arg(BIN)
        .arg("serve")
        .arg("--root")
        .arg(other.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("already running"), "{err}");
    assert!(err.contains("models"), "names the shared folder: {err}");
}

/// Model and alias names past the maximum are refused with a reason, never retried
/// forever; a link that cannot be updated is a problem in `status` and the other links
/// still move.
#[test]
fn long_names_are_refused_and_a_failed_link_stops_no_other() {
    let d = TestDaemon::quick();
    let long = "n".repeat(modelreg::names::MAX_NAME_BYTES + 1);
    write(&d.inbox().join(format!("{long}.pt")), b"x");
    wait_until(Duration::from_secs(10), "the long name refused", || {
        d.status()
            .problems
            .iter()
            .any(|p| p.path.contains(&long) && p.message.contains("longer than"))
    });
    write(&d.inbox().join("k.pt"), &bytes(420, 100));
    d.wait_versions("k", 1);
    let set = |alias: &str, v: &str| {
        d.call(&modelreg::protocol::Request::AliasSet {
            name: "k".into(),
            alias: alias.into(),
            version: v.into(),
        })
    };
    let long_alias = "a".repeat(modelreg::names::MAX_NAME_BYTES + 1);
    let e = set(&long_alias, "v1").unwrap_err();
    assert!(e.to_string().contains("longer than"), "{e}");
    set("prod", "v1").unwrap();
    // `latest` becomes a folder with a file in it: it cannot be replaced by a symlink.
    let latest = d.root.path().join("models/k/latest");
    wait_until(Duration::from_secs(10), "latest link", || {
        latest.is_symlink()
    });
    std::fs::remove_file(&latest).unwrap();
    std::fs::create_dir(&latest).unwrap();
    std::fs::write(latest.join("x"), b"x").unwrap();
    write(&d.inbox().join("k.pt"), &bytes(421, 100));
    d.wait_versions("k", 2);
    set("prod", "v2").unwrap();
    let prod = d.root.path().join("models/k/prod");
    wait_until(Duration::from_secs(10), "prod moved to v2", || {
        std::fs::read_link(&prod).ok() == Some("v2".into())
    });
    let s = d.status();
    assert!(
        s.problems
            .iter()
            .any(|p| p.path.ends_with("models/k/latest") && p.message.contains("link not updated")),
        "{:?}",
        s.problems
    );
}

/// A version folder the catalog does not know, appearing while the daemon runs: the next
/// number goes above it, it is never touched, and `status` shows the problem.
#[test]
fn a_store_folder_the_catalog_does_not_know_is_never_overwritten() {
    let d = TestDaemon::quick();
    write(&d.inbox().join("u.pt"), &bytes(430, 100));
    d.wait_versions("u", 1);
    let stray = d.root.path().join("models/u/v5");
    std::fs::create_dir(&stray).unwrap();
    std::fs::write(stray.join("u.pt"), b"someone else's").unwrap();
    write(&d.inbox().join("u.pt"), &bytes(431, 100));
    let vs = d.wait_versions("u", 2);
    assert_eq!(vs[1].number, 6, "{vs:?}");
    assert_eq!(std::fs::read(&vs[1].path).unwrap(), bytes(431, 100));
    assert_eq!(
        std::fs::read(stray.join("u.pt")).unwrap(),
        b"someone else's"
    );
    let s = d.status();
    assert!(
        s.problems
            .iter()
            .any(|p| p.message.contains("u v5") && p.message.contains("does not name")),
        "{:?}",
        s.problems
    );
}
