//! Issue 16's remaining findings of a fresh-clone tester, on the real binary: a large `gc`
//! with the Hugging Face cache view on no longer holds other changes (the view's removals
//! are its worker's, before the trash is emptied); `add FOLDER` that the daemon cannot
//! read says which file and why; a descriptor the client opened for reading and writing
//! is accepted when it is the file's only opening.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// The snapshot folders of `name` in the view.
fn snapshots(d: &TestDaemon, name: &str) -> Vec<PathBuf> {
    let dir = d.root.path().join(format!("hf/models--{name}/snapshots"));
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}

/// Every symbolic link under `dir` whose target is not there.
fn dangling(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let t = e.file_type().unwrap();
        if t.is_symlink() {
            if std::fs::metadata(&p).is_err() {
                out.push(p);
            }
        } else if t.is_dir() {
            out.extend(dangling(&p));
        }
    }
    out
}

/// What the store's trash holds.
fn trash(d: &TestDaemon) -> Vec<String> {
    std::fs::read_dir(d.root.path().join("models/.trash"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_large_gc_with_the_view_on_leaves_the_views_removals_to_its_worker_and_changes_beside_it_are_answered()
 {
    let gate = tempfile::NamedTempFile::new().unwrap();
    let mut d = TestDaemon::new("settle: 1h\nretention: {\"m\": 1}\n");
    let hold = (
        "MODELREG_DEBUG_HOLD_HF_REMOVALS",
        gate.path().display().to_string(),
    );
    d.spawn_with(&[hold], true);
    // A file every version shares: its blob links to v1's copy, which gc removes.
    let shared = bytes(7, 4096);
    for seed in 0..40u64 {
        let mut content = shared.clone();
        content.extend(bytes(100 + seed, 4096));
        register_bytes(&d, "m", &content);
        if seed == 0 {
            register_bytes(&d, "other", &shared);
        }
    }
    assert_eq!(snapshots(&d, "m").len(), 40);
    let out = ok(&d, &["gc", "m"]);
    assert!(out.contains("39 version(s), freed"), "{out}");
    // Answered while the view's worker has not started on the removal: the view still
    // shows the removed versions, and each of its links still leads to a file (the
    // store's folders are moved to the trash only after the view lets go of them).
    for args in [
        ["alias", "set", "other", "production", "v1"],
        ["alias", "set", "m", "production", "v40"],
    ] {
        let said = ok(&d, &args);
        assert!(said.contains("production"), "{said}");
    }
    assert_eq!(
        snapshots(&d, "m").len(),
        40,
        "the view's removals were done before gc answered"
    );
    assert_eq!(dangling(&d.root.path().join("hf")), Vec::<PathBuf>::new());
    assert!(d.root.path().join("models/m/v1/w.bin").is_file());
    // The other model's change is in the view at once.
    assert!(
        d.root
            .path()
            .join("hf/models--other/refs/production")
            .is_file()
    );
    // Let go: the view drops the removed versions, then the store's folders go.
    drop(gate);
    wait_until(Duration::from_secs(60), "the removal to finish", || {
        snapshots(&d, "m").len() == 1
            && !d.root.path().join("models/m/v39").exists()
            && trash(&d).is_empty()
    });
    assert_eq!(dangling(&d.root.path().join("hf")), Vec::<PathBuf>::new());
    let refs = d.root.path().join("hf/models--m/refs");
    let mut names: Vec<String> = std::fs::read_dir(&refs)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.contains(&"production".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n == "v1" || n == "v39"), "{names:?}");
    assert_eq!(d.get("m", "production").unwrap().version, "v40");
    ok(&d, &["verify"]);
}

#[test]
fn add_of_a_folder_with_a_file_the_daemon_cannot_read_names_the_file_and_why() {
    if !can_switch_user("add_of_a_folder_with_a_file_the_daemon_cannot_read_names_the_file_and_why")
    {
        return;
    }
    let mut d = TestDaemon::new("settle: 300ms\n");
    d.give_to_nobody();
    d.spawn_as_nobody();
    let src = tempfile::tempdir().unwrap();
    let folder = src.path().join("m");
    std::fs::create_dir(&folder).unwrap();
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o755)).unwrap();
    write(&folder.join("config.json"), b"{}");
    write(&folder.join("weights.bin"), &bytes(1, 4096));
    std::fs::set_permissions(
        folder.join("weights.bin"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    let err = fails(&d, &["add", folder.to_str().unwrap()]);
    assert!(!err.contains("is not an artifact"), "{err}");
    assert!(err.contains("cannot read file"), "{err}");
    assert!(err.contains("m/weights.bin"), "{err}");
    assert!(err.contains("mode 0000"), "{err}");
    assert!(err.contains("nothing was registered"), "{err}");
    assert!(d.versions("m").is_empty());
}

#[test]
fn a_descriptor_opened_for_reading_and_writing_by_the_client_itself_is_accepted() {
    let d = TestDaemon::start("settle: 1h\n");
    let req = r#"{"op":"register","name":"m","filename":"m.pt"}"#;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.pt");
    write(&p, &bytes(3, 10_000));
    // Python's open(p, 'r+b'): the client's only opening of the file.
    let rw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    let answer = send_raw(&d.socket(), req, &[rw.as_raw_fd()]);
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(d.versions("m").len(), 1);
    // Another opening for writing beside it: that one may still write, so refused,
    // saying what was handed over.
    write(&p, &bytes(4, 10_000));
    let writer = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    let (code, message) = error_of(&send_raw(&d.socket(), req, &[rw.as_raw_fd()]));
    assert_eq!(code, "source_changed");
    assert!(
        message.contains("still open for writing by another process")
            && message.contains("open for reading and writing"),
        "{message}"
    );
    drop(writer);
    assert_eq!(d.versions("m").len(), 1);
}

/// Model m with a long alias history, registry.yaml cut short (by a full disk, as a
/// tester's was) under a journal whose last move continues it, and the start refused
/// naming the last copy: the daemon, the aliases it answered, registry.yaml's last copy.
fn a_registry_yaml_cut_short() -> (TestDaemon, Vec<(String, u32)>, PathBuf) {
    use modelreg::registry::persist;
    let mut d = common::journal::two_versions();
    // An alias history long enough that a cut can fall inside it.
    for n in [1, 2, 1, 2, 1, 2, 1, 2] {
        d.client()
            .alias_set("m", "production", &format!("v{n}"))
            .unwrap();
    }
    d.client().compact().unwrap();
    // Only in the journal: a move continuing that history.
    d.client().alias_set("m", "production", "v1").unwrap();
    let want = common::journal::aliases(&d);
    d.kill();
    let reg = d.registry_path();
    let full = std::fs::read(&reg).unwrap();
    let base = persist::journal::base_path(&reg);
    assert_eq!(std::fs::read(&base).unwrap(), full);
    // The longest cut that still reads as a registry.yaml the journal's record does not
    // fit.
    let cut = (1..full.len())
        .rev()
        .find(|&n| {
            std::fs::write(&reg, &full[..n]).unwrap();
            matches!(persist::load(&reg), Ok(Some(_)))
                && persist::journal::load_current(&reg)
                    .is_err_and(|e| e.to_string().contains("does not fit"))
        })
        .expect("a cut that reads but does not fit");
    std::fs::write(&reg, &full[..cut]).unwrap();
    let _ = std::fs::remove_file(persist::cache_path(&reg));
    let out = d.serve_output();
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(said.contains("does not fit"), "{said}");
    assert!(said.contains(&base.display().to_string()), "{said}");
    assert!(
        said.contains("every later journal record fits it"),
        "{said}"
    );
    assert!(said.contains("modelreg recover"), "{said}");
    (d, want, base)
}

#[test]
fn a_registry_yaml_cut_short_under_a_journal_that_continues_it_names_its_last_copy() {
    let (mut d, want, base) = a_registry_yaml_cut_short();
    let reg = d.registry_path();
    // The fix it names: registry.yaml aside, its last copy in its place.
    let aside = reg.with_extension("yaml.damaged");
    std::fs::rename(&reg, &aside).unwrap();
    let cp = std::process::Command::new("cp")
        .arg("-p")
        .arg(&base)
        .arg(&reg)
        .status()
        .unwrap();
    assert!(cp.success());
    d.spawn();
    assert_eq!(common::journal::aliases(&d), want, "an alias move was lost");
    assert_eq!(d.versions("m").len(), 2);
}

// The other fix it names: `recover` failed with the start's own error ("does not fit").
#[test]
fn recover_mends_a_registry_yaml_cut_short_from_its_last_copy() {
    let (mut d, want, _) = a_registry_yaml_cut_short();
    let (ok, said) = common::journal::recover(&d);
    assert!(ok, "{said}");
    assert!(said.contains("started from its last copy"), "{said}");
    d.spawn();
    assert_eq!(common::journal::aliases(&d), want, "an alias move was lost");
    assert_eq!(d.versions("m").len(), 2);
}

#[test]
fn add_of_the_bytes_of_a_deprecated_newest_version_says_it_is_deprecated() {
    let d = TestDaemon::start("settle: 1h\n");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.pt");
    write(&p, &bytes(5, 5000));
    ok(&d, &["add", p.to_str().unwrap(), "--name", "m"]);
    ok(&d, &["deprecate", "m", "v1"]);
    let out = ok(&d, &["add", p.to_str().unwrap(), "--name", "m"]);
    assert!(out.contains("identical to the newest version"), "{out}");
    assert!(out.contains("m v1 is deprecated"), "{out}");
    assert!(out.contains("alias set m ALIAS v1"), "{out}");
}

// As for a hand-over (commit 113a832), for a file cp'd into the inbox: the newest
// version's stored bytes are compared, not only its recorded hashes.
#[test]
fn the_good_bytes_of_a_damaged_newest_version_cp_d_into_the_inbox_become_a_new_version() {
    let d = TestDaemon::start("settle: 50ms\n");
    let good = bytes(6, 4096);
    write_renamed(&d.inbox(), "dd.bin", &good);
    d.wait_versions("dd", 1);
    let stored = d.root.path().join("models/dd/v1/dd.bin");
    common::damage_in_place(&stored, 1000);
    // Another file with the same bytes, put in the inbox as `cp` does.
    std::fs::remove_file(d.inbox().join("dd.bin")).ok();
    write(&d.inbox().join("dd.bin"), &good);
    let v = d.wait_versions("dd", 2);
    assert_eq!(v[1].version, "v2");
    assert_good_v2_and_damaged_v1_shown(&d, &good);
}

// A sysfs attribute reports 4096 bytes and reads as a few: it was refused as "changed
// while copying".
#[test]
fn add_of_a_pseudo_file_says_its_size_is_not_its_content() {
    let Some(sys) = [
        "/sys/kernel/mm/transparent_hugepage/enabled",
        "/sys/kernel/profiling",
        "/sys/power/state",
    ]
    .into_iter()
    .map(Path::new)
    .find(|p| std::fs::File::open(p).is_ok()) else {
        eprintln!(
            "SKIPPED add_of_a_pseudo_file_says_its_size_is_not_its_content: no readable sysfs file"
        );
        return;
    };
    let d = TestDaemon::start("settle: 1h\n");
    let err = fails(&d, &["add", sys.to_str().unwrap(), "--name", "sysfile"]);
    assert!(!err.contains("changed while copying"), "{err}");
    assert!(err.contains("sysfs"), "{err}");
    assert!(err.contains("is not its content"), "{err}");
    assert!(d.versions("sysfile").is_empty());
}

// `add FOLDER` removes its inbox copy once registered; `status` showed that deletion as a
// model settling for a settle period.
#[test]
fn status_after_add_of_a_folder_shows_nothing_waiting() {
    let d = TestDaemon::start("settle: 1s\n");
    let src = tempfile::tempdir().unwrap();
    let folder = src.path().join("f");
    std::fs::create_dir(&folder).unwrap();
    write(&folder.join("config.json"), b"{}");
    write(&folder.join("weights.bin"), &bytes(2, 4096));
    ok(&d, &["add", folder.to_str().unwrap(), "--wait"]);
    assert!(inbox_names(&d).is_empty(), "{:?}", inbox_names(&d));
    // Over a settle period and a half: never listed as waiting.
    let until = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < until {
        let waiting = d.status().waiting;
        assert!(
            waiting.iter().all(|w| w.name != "f"),
            "the removed inbox copy is shown: {waiting:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
