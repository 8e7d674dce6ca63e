//! Dedup by content: a staged file already stored for the same model becomes a hard link.
//!
//! Stored files are immutable, read-only and owned by the daemon, so two versions may
//! share one inode: deleting either name (`rm`, gc) leaves the other intact, and `verify`
//! re-hashes each name as before. A file is linked only when the stored one is a plain
//! file on the same filesystem with the same size, mode and owner as the fresh copy (the
//! mode is part of what was stored: a link must not widen or narrow who can read it);
//! anything else (EMLINK at the filesystem's link limit, EXDEV, a vanished file) keeps the
//! copy, which is always correct.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::links::check_no_link;
use super::staging::Staged;
use crate::error::Result;
use crate::fsutil::sync_dir;

/// What [`link_duplicates`] saved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Deduped {
    /// Staged files now hard links to stored ones.
    pub files: usize,
    /// Their bytes: what the store no longer holds twice.
    pub bytes: u64,
}

/// Replaces each file of `staged` whose SHA-256 is in `stored` (SHA-256 -> a published
/// file of the same model under `store`) with a hard link to that file, and a file equal
/// to one staged before it with a link to that one. Each replacement is a rename over the
/// copy, so the staged file is whole at every moment; the changed folders are fsynced
/// before this returns, as the staged version must be durable before the catalog names it.
pub fn link_duplicates(
    store: &Path,
    staged: &Staged,
    stored: &BTreeMap<String, PathBuf>,
) -> Result<Deduped> {
    let mut saved = Deduped::default();
    let mut in_this: BTreeMap<&str, PathBuf> = BTreeMap::new();
    let mut changed_dirs = BTreeSet::new();
    for f in &staged.files {
        let dst = staged.dir.join(&f.rel);
        let candidate = stored
            .get(&f.sha256)
            .filter(|p| {
                p.parent()
                    .is_some_and(|dir| check_no_link(store, dir).is_ok())
            })
            .or_else(|| in_this.get(f.sha256.as_str()));
        match candidate {
            Some(same) if link_over(same, &dst, f.size) => {
                saved.files += 1;
                saved.bytes += f.size;
                if let Some(dir) = dst.parent() {
                    changed_dirs.insert(dir.to_path_buf());
                }
            }
            _ => {
                in_this.entry(&f.sha256).or_insert(dst);
            }
        }
    }
    for dir in &changed_dirs {
        sync_dir(dir)?;
    }
    Ok(saved)
}

/// Replaces `copy` (`size` bytes) with a hard link to `same` when both are plain files
/// of that size with the same mode and owner on one filesystem; returns whether it did.
fn link_over(same: &Path, copy: &Path, size: u64) -> bool {
    let (Ok(s), Ok(c)) = (fs::symlink_metadata(same), fs::symlink_metadata(copy)) else {
        return false;
    };
    let alike = s.is_file()
        && c.is_file()
        && s.len() == size
        && c.len() == size
        && s.mode() == c.mode()
        && s.uid() == c.uid()
        && s.dev() == c.dev();
    if !alike || s.ino() == c.ino() {
        return false;
    }
    let Some(name) = copy.file_name() else {
        return false;
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".dedup");
    let tmp = copy.with_file_name(tmp_name);
    if let Err(e) = fs::hard_link(same, &tmp) {
        // EMLINK (the inode has as many links as the filesystem allows), EXDEV, ...:
        // the copy stays.
        tracing::debug!(file = %copy.display(), "kept as a copy: cannot link to {}: {e}", same.display());
        return false;
    }
    if let Err(e) = fs::rename(&tmp, copy) {
        let _ = fs::remove_file(&tmp);
        tracing::debug!(file = %copy.display(), "kept as a copy: {e}");
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{publish, stage};
    use std::sync::atomic::AtomicBool;

    fn stage_files(store: &Path, n: u32, files: &[(&str, &[u8], u32)]) -> Staged {
        use std::os::unix::fs::PermissionsExt;
        let src = store.parent().unwrap().join(format!("src{n}"));
        fs::create_dir_all(&src).unwrap();
        let list: Vec<(PathBuf, String)> = files
            .iter()
            .map(|(rel, bytes, mode)| {
                let p = src.join(rel.replace('/', "_"));
                fs::write(&p, bytes).unwrap();
                fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).unwrap();
                (p, rel.to_string())
            })
            .collect();
        stage(store, "m", n, &list, &AtomicBool::new(false)).unwrap()
    }

    /// Publishes `files` as v1 of model `m` in a new store; returns the store (in the
    /// kept temporary folder) and v1's files by SHA-256.
    fn published_v1(
        tmp: &tempfile::TempDir,
        files: &[(&str, &[u8], u32)],
    ) -> (PathBuf, BTreeMap<String, PathBuf>) {
        let store = tmp.path().join("models");
        let v1 = stage_files(&store, 1, files);
        let stored = v1
            .files
            .iter()
            .map(|f| (f.sha256.clone(), store.join("m/v1").join(&f.rel)))
            .collect();
        publish(&v1).unwrap();
        (store, stored)
    }

    #[test]
    fn an_unchanged_file_becomes_a_link_to_the_stored_one_and_a_changed_one_stays_a_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, stored) =
            published_v1(&tmp, &[("a.bin", b"same", 0o644), ("b.bin", b"old", 0o644)]);
        let v2 = stage_files(
            &store,
            2,
            &[("a.bin", b"same", 0o644), ("b.bin", b"new", 0o644)],
        );
        let saved = link_duplicates(&store, &v2, &stored).unwrap();
        assert_eq!(saved, Deduped { files: 1, bytes: 4 });
        let ino = |p: PathBuf| fs::metadata(p).unwrap().ino();
        assert_eq!(ino(v2.dir.join("a.bin")), ino(store.join("m/v1/a.bin")));
        assert_ne!(ino(v2.dir.join("b.bin")), ino(store.join("m/v1/b.bin")));
        assert_eq!(fs::read(v2.dir.join("a.bin")).unwrap(), b"same");
        // No temporary is left beside it.
        assert_eq!(fs::read_dir(&v2.dir).unwrap().count(), 2);
    }

    #[test]
    fn a_stored_file_with_another_mode_is_not_shared() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, stored) = published_v1(&tmp, &[("a.bin", b"same", 0o600)]);
        // Readable by all this time: linking would keep it private (or the reverse).
        let v2 = stage_files(&store, 2, &[("a.bin", b"same", 0o644)]);
        let saved = link_duplicates(&store, &v2, &stored).unwrap();
        assert_eq!(saved, Deduped::default());
    }

    #[test]
    fn equal_files_in_one_version_share_one_inode() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("models");
        let v1 = stage_files(
            &store,
            1,
            &[("x/a.bin", b"twin", 0o644), ("y/b.bin", b"twin", 0o644)],
        );
        let saved = link_duplicates(&store, &v1, &BTreeMap::new()).unwrap();
        assert_eq!(saved.files, 1);
        let ino = |p: &str| fs::metadata(v1.dir.join(p)).unwrap().ino();
        assert_eq!(ino("x/a.bin"), ino("y/b.bin"));
    }
}
