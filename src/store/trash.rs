//! The store's trash `models/.trash/`: removed versions' folders, moved aside with one rename each and deleted off the registrar's path.
//!
//! Deleting a removed version's files takes what the file system needs: after a `gc` of
//! thousands of versions, minutes on a busy disk. The registrar must not wait for that
//! (every other change and registration queues behind it). So once the catalog's record of
//! the removal is durable, each removed version's manifest becomes its tombstone and its
//! folder is renamed into `.trash` ([`move_to_trash`]); the change is answered; a worker
//! deletes the trash ([`empty`]). The number stays taken: the catalog keeps the removed
//! version as a tombstone and the store keeps `<name>/.removed/v<N>.json`. Whatever a
//! crash or a shutdown leaves in the trash is deleted after the next start
//! ([`leftovers`]). The store is daemon-owned: nothing else is ever put in `.trash`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::links::check_no_link;
use super::manifest::{TOMBSTONES, bury};
use super::{set_folder_mode, version_dir};
use crate::error::{Error, Result};
use crate::fsutil::sync_dir;

/// The trash folder under the store.
pub const TRASH: &str = ".trash";

/// Makes trash names unique within one run (with the time, across runs).
static SEQ: AtomicU64 = AtomicU64::new(0);

/// Moves the folders of the removed `versions` (name, number) into the trash: each keeps
/// its tombstone and is renamed, in one rename, to `.trash/<name>.v<N>.<unique>`. The
/// tombstone folders are fsynced once per model, not once per version. Returns the trash
/// entries made and the errors (each version on its own: one that fails is left where it
/// is, and start-up's removal check finishes it).
pub fn move_to_trash(store: &Path, versions: &[(String, u32)]) -> (Vec<PathBuf>, Vec<Error>) {
    let (mut moved, mut errors) = (Vec::new(), Vec::new());
    if versions.is_empty() {
        return (moved, errors);
    }
    let trash = store.join(TRASH);
    if let Err(e) = ensure_trash(store, &trash) {
        errors.push(e);
        return (moved, errors);
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut buried = std::collections::BTreeSet::new();
    for (name, n) in versions {
        let dir = version_dir(store, name, *n);
        match bury(store, name, *n) {
            Ok(true) => {
                buried.insert(name.as_str());
            }
            Ok(false) => {}
            Err(e) => {
                errors.push(e);
                continue;
            }
        }
        if !dir.exists() {
            continue;
        }
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let to = trash.join(format!("{name}.v{n}.{stamp:x}.{seq}"));
        match fs::rename(&dir, &to) {
            Ok(()) => moved.push(to),
            Err(e) => errors.push(Error::io("move to the trash", &dir, e)),
        }
    }
    for name in buried {
        if let Err(e) = sync_dir(&store.join(name).join(TOMBSTONES)) {
            errors.push(e);
        }
    }
    (moved, errors)
}

/// Creates `.trash` when missing; refuses one that is a symbolic link.
fn ensure_trash(store: &Path, trash: &Path) -> Result<()> {
    check_no_link(store, trash)?;
    match fs::create_dir(trash) {
        Ok(()) => set_folder_mode(trash),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io("create folder", trash, e)),
    }
}

/// What the trash holds (left by a crash or a shutdown before it was emptied).
pub fn leftovers(store: &Path) -> Vec<PathBuf> {
    let trash = store.join(TRASH);
    if check_no_link(store, &trash).is_err() {
        return Vec::new();
    }
    fs::read_dir(&trash)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}

/// Deletes the trash `entries` one by one, until done or `stop` is set (at shutdown: the
/// rest is deleted after the next start). Returns how many were deleted and the errors.
pub fn empty(store: &Path, entries: &[PathBuf], stop: &AtomicBool) -> (usize, Vec<Error>) {
    hold_for_tests(stop);
    let (mut done, mut errors) = (0, Vec::new());
    for entry in entries {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // Never through a link: `.trash` replaced by a link must not delete its target.
        if let Err(e) = check_no_link(store, entry) {
            errors.push(e);
            continue;
        }
        let removed = match fs::symlink_metadata(entry) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(entry),
            Ok(_) => fs::remove_file(entry),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        match removed {
            Ok(()) => done += 1,
            Err(e) => errors.push(Error::io("delete", entry, e)),
        }
    }
    (done, errors)
}

/// Debug builds only (what the end-to-end tests run): while the file named by
/// `MODELREG_DEBUG_HOLD_TRASH` exists, the trash is not emptied, so that a test can
/// observe that changes are answered while a deletion is still under way, without
/// racing the clock.
fn hold_for_tests(stop: &AtomicBool) {
    #[cfg(debug_assertions)]
    if let Some(gate) = std::env::var_os("MODELREG_DEBUG_HOLD_TRASH") {
        while Path::new(&gate).exists() && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    let _ = stop;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{TOMBSTONES, highest_in_store, publish, stage};

    #[test]
    fn a_trashed_version_keeps_its_tombstone_and_the_trash_empties() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("models");
        let src = tmp.path().join("a.bin");
        fs::write(&src, b"abc").unwrap();
        let no = AtomicBool::new(false);
        for n in 1..=2 {
            let files = [(src.clone(), "a.bin".to_string())];
            publish(&stage(&store, "m", n, &files, &no).unwrap()).unwrap();
        }
        let (moved, errors) = move_to_trash(&store, &[("m".into(), 1)]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(moved.len(), 1);
        assert!(!version_dir(&store, "m", 1).exists());
        assert!(store.join("m").join(TOMBSTONES).join("v1.json").exists());
        assert_eq!(highest_in_store(&store, "m"), 2);
        assert_eq!(leftovers(&store), moved);
        let (done, errors) = empty(&store, &moved, &AtomicBool::new(false));
        assert_eq!((done, errors.len()), (1, 0));
        assert!(leftovers(&store).is_empty());
        assert!(version_dir(&store, "m", 2).join("a.bin").exists());
    }
}
