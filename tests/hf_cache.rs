//! The Hugging Face cache view `<root>/hf`, loaded offline by the real `huggingface_hub`
//! from PyPI (pinned in tests/common/hf.rs) in a venv made once and reused:
//! `HF_HUB_CACHE=<root>/hf HF_HUB_OFFLINE=1` and `snapshot_download(NAME, revision=...)`
//! or `hf_hub_download(...)`, with no server.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use common::hf::{Load, hf_load, register, register_folder, snap};
use common::*;

/// Asserts that `loaded` holds exactly the files of `name` `selector` as the socket
/// names them, byte for byte, in the snapshot of that version's commit id.
fn assert_is_version(d: &TestDaemon, loaded: &Result<PathBuf, String>, name: &str, sel: &str) {
    let path = loaded
        .as_ref()
        .unwrap_or_else(|e| panic!("{name} {sel}: {e}"));
    let v = d.get(name, sel).unwrap();
    assert_eq!(tree_content(path), version_content(&v), "{name} {sel}");
    let catalog = d.catalog();
    let stored = catalog.models[name].find(v.number).unwrap();
    let commit = modelreg::hfcache::version_commit("models", name, stored).unwrap();
    assert!(
        path.ends_with(format!("hf/models--{name}/snapshots/{commit}")),
        "{name} {sel}: {}",
        path.display()
    );
}

#[test]
fn offline_loads_by_alias_number_latest_and_best_give_the_stored_bytes() {
    let d = TestDaemon::quick();
    register(&d, "resnet18", 1, 0.91, 1);
    register(&d, "resnet18", 2, 0.85, 2);
    ok(&d, &["alias", "set", "resnet18", "production", "v1"]);

    let got = hf_load(
        &d,
        &[
            snap("resnet18", "production"),
            snap("resnet18", "v1"),
            snap("resnet18", "v2"),
            snap("resnet18", "latest"),
            snap("resnet18", "best"),
            Load {
                name: "resnet18",
                revision: None,
                file: None,
            },
            Load {
                name: "resnet18",
                revision: Some("production"),
                file: Some("resnet18.pt"),
            },
        ],
    );
    assert_is_version(&d, &got[0], "resnet18", "production");
    assert_is_version(&d, &got[1], "resnet18", "v1");
    assert_is_version(&d, &got[2], "resnet18", "v2");
    assert_is_version(&d, &got[3], "resnet18", "latest");
    // best: by the configured default metric (accuracy, maximised): v1.
    assert_is_version(&d, &got[4], "resnet18", "best");
    assert_eq!(d.get("resnet18", "best").unwrap().number, 1);
    // No revision: huggingface_hub asks for `main`, which is latest.
    assert_is_version(&d, &got[5], "resnet18", "latest");
    let file = got[6].as_ref().unwrap();
    assert_eq!(std::fs::read(file).unwrap(), bytes(1, 3000));

    // No copies: blobs are links to the stored files; folders as readable as the store's.
    let blobs = d.root.path().join("hf/models--resnet18/blobs");
    for e in std::fs::read_dir(&blobs).unwrap().flatten() {
        let to = std::fs::read_link(e.path()).unwrap();
        assert!(to.starts_with("../../../models/resnet18/"), "{to:?}");
    }
    for dir in ["hf", "hf/models--resnet18", "hf/models--resnet18/snapshots"] {
        let mode = std::fs::metadata(d.root.path().join(dir))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{dir}");
    }
}

#[test]
fn an_alias_moved_is_what_the_next_offline_load_gets() {
    let d = TestDaemon::quick();
    register(&d, "enc", 11, 0.5, 1);
    register(&d, "enc", 12, 0.6, 2);
    ok(&d, &["alias", "set", "enc", "production", "v1"]);
    assert_is_version(
        &d,
        &hf_load(&d, &[snap("enc", "production")])[0],
        "enc",
        "v1",
    );
    // Answered once the view is updated: no waiting before the next load.
    ok(&d, &["alias", "set", "enc", "production", "v2"]);
    assert_is_version(
        &d,
        &hf_load(&d, &[snap("enc", "production")])[0],
        "enc",
        "v2",
    );
    ok(&d, &["alias", "rm", "enc", "production"]);
    let gone = hf_load(&d, &[snap("enc", "production")]);
    let e = gone[0].as_ref().unwrap_err();
    assert!(e.contains("LocalEntryNotFoundError"), "{e}");
}

#[test]
fn a_folder_version_with_nested_paths_loads_offline() {
    let d = TestDaemon::quick();
    let files = [
        ("config.json", b"{\"hidden\": 8}".to_vec()),
        ("onnx/model.onnx", bytes(21, 5000)),
        ("tokenizer/sub/vocab.txt", b"a\nb\n".to_vec()),
    ];
    register_folder(&d, "bert-tiny", &files, 1);
    let got = hf_load(
        &d,
        &[
            snap("bert-tiny", "v1"),
            Load {
                name: "bert-tiny",
                revision: Some("latest"),
                file: Some("onnx/model.onnx"),
            },
        ],
    );
    assert_is_version(&d, &got[0], "bert-tiny", "v1");
    assert_eq!(std::fs::read(got[1].as_ref().unwrap()).unwrap(), files[1].1);
    // Links as huggingface_hub makes them: relative, one ../ more per folder level.
    let snapshot = got[0].as_ref().unwrap();
    let link = std::fs::read_link(snapshot.join("tokenizer/sub/vocab.txt")).unwrap();
    assert!(link.starts_with("../../../../blobs/"), "{link:?}");
}

#[test]
fn the_view_is_made_again_after_it_is_deleted_and_the_daemon_restarts() {
    let mut d = TestDaemon::quick();
    register(&d, "m", 31, 0.7, 1);
    register_folder(&d, "f", &[("a/b.bin", bytes(32, 100))], 1);
    ok(&d, &["alias", "set", "m", "prod", "v1"]);
    assert!(hf_load(&d, &[snap("m", "prod")])[0].is_ok());
    d.stop();
    let hf = d.root.path().join("hf");
    std::fs::remove_dir_all(&hf).unwrap();
    d.spawn();
    let refs = hf.join("models--f/refs/latest");
    wait_until(Duration::from_secs(60), "the view made again", || {
        refs.exists() && hf.join("models--m/refs/prod").exists()
    });
    let got = hf_load(&d, &[snap("m", "prod"), snap("f", "latest")]);
    assert_is_version(&d, &got[0], "m", "v1");
    assert_is_version(&d, &got[1], "f", "v1");

    // Damage and leftovers are repaired at the next start: a stale model folder, a
    // snapshot emptied, a ref pointing elsewhere.
    d.stop();
    std::fs::create_dir_all(hf.join("models--ghost/refs")).unwrap();
    let snapshot = got[1].as_ref().unwrap();
    std::fs::remove_dir_all(snapshot.join("a")).unwrap();
    std::fs::write(hf.join("models--m/refs/prod"), "0".repeat(40)).unwrap();
    d.spawn();
    wait_until(Duration::from_secs(60), "the view repaired", || {
        !hf.join("models--ghost").exists() && snapshot.join("a/b.bin").exists()
    });
    let got = hf_load(&d, &[snap("m", "prod"), snap("f", "latest")]);
    assert_is_version(&d, &got[0], "m", "v1");
    assert_is_version(&d, &got[1], "f", "v1");

    // Deleted while running: the next change makes it whole again.
    std::fs::remove_dir_all(&hf).unwrap();
    ok(&d, &["alias", "set", "f", "prod", "v1"]);
    wait_until(Duration::from_secs(60), "the view made again", || {
        hf.join("models--f/refs/prod").exists() && hf.join("models--m/refs/v1").exists()
    });
    let got = hf_load(&d, &[snap("m", "prod"), snap("f", "prod")]);
    assert_is_version(&d, &got[0], "m", "v1");
    assert_is_version(&d, &got[1], "f", "v1");
}

#[test]
fn a_removed_version_leaves_the_view() {
    let d = TestDaemon::quick();
    register(&d, "r", 41, 0.9, 1);
    register(&d, "r", 42, 0.8, 2);
    let v1 = hf_load(&d, &[snap("r", "v1")]).remove(0).unwrap();
    ok(&d, &["rm", "--force", "r", "v1"]);
    let model = d.root.path().join("hf/models--r");
    assert!(!model.join("refs/v1").exists());
    assert!(!v1.exists(), "v1's snapshot removed");
    assert_eq!(std::fs::read_dir(model.join("blobs")).unwrap().count(), 1);
    let got = hf_load(&d, &[snap("r", "v1"), snap("r", "best"), snap("r", "v2")]);
    assert!(got[0].is_err(), "{:?}", got[0]);
    assert_is_version(&d, &got[1], "r", "v2");
    assert_is_version(&d, &got[2], "r", "v2");
}

#[test]
fn hf_cache_off_removes_the_view_and_on_makes_it() {
    let mut d = TestDaemon::start("settle: 300ms\nhf_cache: false\n");
    register(&d, "x", 51, 0.5, 1);
    let hf = d.root.path().join("hf");
    assert!(!hf.exists());
    d.write_config("settle: 300ms\nhf_cache: true\n");
    d.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(30), "the view made on reload", || {
        hf.join("models--x/refs/latest").exists()
    });
    d.write_config("settle: 300ms\nhf_cache: false\n");
    d.signal(libc::SIGHUP);
    wait_until(
        Duration::from_secs(30),
        "the view removed on reload",
        || !hf.exists(),
    );
    d.stop();
}
