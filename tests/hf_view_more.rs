//! The Hugging Face cache view `<root>/hf` as registrations move its refs: a moved ref
//! is rewritten in place (no inode made and freed per version), never through a link,
//! and the real `huggingface_hub` (offline) still loads exactly what the socket names.
//! Also the other per-version saving of the register path: the model's store folder is
//! not listed for every version, yet a `v<N>` folder put there by hand is still noticed.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::hf::{hf_load, register, snap};
use common::*;

/// The commit id of `name` `selector` as the socket names the version.
fn commit(d: &TestDaemon, name: &str, selector: &str) -> String {
    let number = d.get(name, selector).unwrap().number;
    let catalog = d.catalog();
    let stored = catalog.models[name].find(number).unwrap();
    modelreg::hfcache::version_commit("models", name, stored).unwrap()
}

/// The refs folder of `name`'s view.
fn refs(d: &TestDaemon, name: &str) -> PathBuf {
    d.root.path().join(format!("hf/models--{name}/refs"))
}

/// Names left in the view's folders of `name` that the daemon only uses for a moment.
fn leftovers(d: &TestDaemon, name: &str) -> Vec<String> {
    let dir = d.root.path().join(format!("hf/models--{name}"));
    ["refs", "snapshots", "blobs"]
        .iter()
        .flat_map(|sub| std::fs::read_dir(dir.join(sub)).unwrap().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn moved_refs_are_rewritten_in_place_and_loads_follow_them() {
    let d = TestDaemon::quick();
    register(&d, "m", 1, 0.5, 1);
    let inode = |r: &str| {
        std::fs::symlink_metadata(refs(&d, "m").join(r))
            .unwrap()
            .ino()
    };
    let before: Vec<u64> = ["latest", "main", "best"].map(inode).to_vec();
    // v2 moves latest, main and best; v3 moves latest and main, not best.
    for (n, (accuracy, best)) in [(0.9, "v2"), (0.6, "v2")].into_iter().enumerate() {
        register(&d, "m", 2 + n as u64, accuracy, n + 2);
        for (r, sel) in [("latest", "latest"), ("main", "latest"), ("best", best)] {
            let text = std::fs::read_to_string(refs(&d, "m").join(r)).unwrap();
            assert_eq!(text, commit(&d, "m", sel), "refs/{r} after v{}", n + 2);
        }
        let after: Vec<u64> = ["latest", "main", "best"].map(inode).to_vec();
        assert_eq!(after, before, "the same files, rewritten in place");
        assert!(leftovers(&d, "m").is_empty(), "{:?}", leftovers(&d, "m"));
    }
    // What huggingface_hub reads from them is what the socket answers.
    let revs = ["latest", "main", "best", "v1", "v3"];
    let got = hf_load(&d, &revs.map(|r| snap("m", r)));
    for (loaded, sel) in got.iter().zip(["v3", "v3", "v2", "v1", "v3"]) {
        let path = loaded.as_ref().unwrap_or_else(|e| panic!("{sel}: {e}"));
        assert!(
            path.ends_with(format!("snapshots/{}", commit(&d, "m", sel))),
            "{sel}: {}",
            path.display()
        );
        let v = d.get("m", sel).unwrap();
        assert_eq!(
            std::fs::read(path.join("m.pt")).unwrap(),
            std::fs::read(&v.path).unwrap(),
            "{sel}"
        );
    }
}

#[test]
fn a_ref_replaced_by_a_link_or_a_fifo_is_replaced_never_written_through() {
    let d = TestDaemon::quick();
    register(&d, "m", 11, 0.5, 1);
    let outside = d.root.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let (sym_to, hard_to) = (outside.join("a"), outside.join("b"));
    std::fs::write(&sym_to, "a".repeat(40)).unwrap();
    std::fs::write(&hard_to, "b".repeat(40)).unwrap();
    let r = refs(&d, "m");
    // refs/latest a symbolic link, refs/main a second name of another file, refs/best a
    // FIFO: each the length of a commit id (the FIFO's 0 aside), as a hand or a tool
    // might leave them.
    std::fs::remove_file(r.join("latest")).unwrap();
    std::os::unix::fs::symlink(&sym_to, r.join("latest")).unwrap();
    std::fs::remove_file(r.join("main")).unwrap();
    std::fs::hard_link(&hard_to, r.join("main")).unwrap();
    std::fs::remove_file(r.join("best")).unwrap();
    let fifo = std::ffi::CString::new(r.join("best").display().to_string()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    // v2 moves all three (a hang here would be the registrar opening the FIFO).
    register(&d, "m", 12, 0.9, 2);
    assert_eq!(std::fs::read_to_string(&sym_to).unwrap(), "a".repeat(40));
    assert_eq!(std::fs::read_to_string(&hard_to).unwrap(), "b".repeat(40));
    for name in ["latest", "main", "best"] {
        let m = std::fs::symlink_metadata(r.join(name)).unwrap();
        assert!(m.is_file() && m.nlink() == 1, "refs/{name}: {m:?}");
        let text = std::fs::read_to_string(r.join(name)).unwrap();
        assert_eq!(text, commit(&d, "m", "v2"), "refs/{name}");
    }
    assert!(leftovers(&d, "m").is_empty(), "{:?}", leftovers(&d, "m"));
}

#[test]
fn a_store_folder_made_by_hand_between_registrations_is_still_numbered_above() {
    let d = TestDaemon::quick();
    // Two versions each way, so that the folder has been listed and the next jobs of
    // each path trust the listing while the folder's link count adds up.
    register(&d, "m", 21, 0.5, 1);
    register(&d, "m", 22, 0.5, 2);
    let src = d.root.path().join("out/m.pt");
    std::fs::create_dir_all(src.parent().unwrap()).unwrap();
    write(&src, &bytes(23, 3000));
    ok(&d, &["add", src.to_str().unwrap()]);
    assert_eq!(d.versions("m").len(), 3);
    // A folder made by hand, then an inbox version and a hand-over.
    let stray = d.root.path().join("models/m/v9");
    std::fs::create_dir(&stray).unwrap();
    std::fs::write(stray.join("m.pt"), b"someone else's").unwrap();
    register(&d, "m", 24, 0.5, 4);
    assert_eq!(d.versions("m")[3].number, 10, "{:?}", d.versions("m"));
    let stray = d.root.path().join("models/m/v12");
    std::fs::create_dir(&stray).unwrap();
    write(&src, &bytes(25, 3000));
    ok(&d, &["add", src.to_str().unwrap()]);
    let vs = d.versions("m");
    assert_eq!(vs.len(), 5);
    assert_eq!(vs[4].number, 13, "{vs:?}");
    assert_eq!(std::fs::read(&vs[4].path).unwrap(), bytes(25, 3000));
    assert_eq!(
        std::fs::read(stray.parent().unwrap().join("v9/m.pt")).unwrap(),
        b"someone else's"
    );
}

/// At start the view is checked model by model in the background: `status` says how many
/// models are left while it runs (never more than the catalog holds, never growing) and
/// nothing once the log says the check is over, so an operator (or a benchmark) can tell
/// when the disk is its own again.
#[test]
fn status_shows_the_views_start_up_check_until_it_is_over() {
    let mut d = TestDaemon::quick();
    let models = 300;
    for i in 0..models {
        std::fs::write(d.inbox().join(format!("m{i:03}.pt")), format!("bytes {i}")).unwrap();
    }
    wait_until(Duration::from_secs(120), "300 versions", || {
        d.status().versions >= models
    });
    d.stop();
    d.spawn();
    let (mut seen, mut last) = (0, usize::MAX);
    let mut over = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        match d.status().hf_cache_checking {
            Some(left) => {
                assert!(left <= models && left <= last, "{left} after {last}");
                (seen, last) = (seen + 1, left);
            }
            None if d.log().contains("Hugging Face cache view") && d.log().contains("checked") => {
                over = true;
                break;
            }
            None => {}
        }
    }
    assert!(over, "the view's check never ended:\n{}", d.log());
    assert_eq!(d.status().hf_cache_checking, None);
    eprintln!("status showed the check under way {seen} time(s), last {last} model(s) to go");
}
