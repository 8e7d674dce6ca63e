//! Dedup by content: a new file already stored for the same model becomes a hard link.
//!
//! Stored files are immutable, read-only and owned by the daemon, so two versions may
//! share one inode: deleting either name (`rm`, gc) leaves the other intact, and `verify`
//! re-hashes each name as before. A file is linked only when the stored one is a plain
//! file on the same filesystem with the same size, mode and owner as the copy would have
//! (the mode is part of what was stored: a link must not widen or narrow who can read
//! it); anything else (EMLINK at the filesystem's link limit, EXDEV, a vanished file)
//! keeps or makes a copy, which is always correct.
//!
//! Two moments: before a file is copied, [`link_if_stored`] compares it by samples with
//! the stored files of its size (the latest version's file at the same path first); when
//! one looks the same, the new file is read and hashed without writing anything, and
//! linked when its SHA-256 is stored. So a folder's v2 with 9 of 10 files unchanged
//! writes only the changed file. After staging, [`link_duplicates`] links what was
//! copied anyway (a file equal to one staged before it, a stored file not probed).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::copy::hash_stream;
use super::links::check_no_link;
use super::staging::{OpenSource, Staged};
use super::stored_mode;
use crate::error::{Error, Result};
use crate::fsutil::sync_dir;

/// How many stored files of a new file's size are compared with it by samples.
const MAX_PROBED: usize = 4;
/// The bytes compared at each of the three sample offsets (start, middle, end); a file
/// of at most three samples is compared whole.
const SAMPLE: u64 = 64 * 1024;

/// The model's stored files a new version may share, as the catalog records them.
#[derive(Debug, Default, Clone)]
pub struct Stored {
    /// SHA-256 -> (absolute path of one stored file with that content, its size).
    by_sha: BTreeMap<String, (PathBuf, u64)>,
    /// Size -> the SHA-256s of stored files of that size.
    by_size: BTreeMap<u64, Vec<String>>,
    /// The latest version's files: path relative to the version folder -> SHA-256.
    latest: BTreeMap<String, String>,
}

impl Stored {
    /// Records a stored file: its SHA-256, absolute path and size. The last path given
    /// for a content is the one linked to (given oldest first, the newest version's,
    /// which gc removes last).
    pub fn add(&mut self, sha256: &str, path: PathBuf, size: u64) {
        let known = self
            .by_sha
            .insert(sha256.to_string(), (path, size))
            .is_some();
        if !known {
            self.by_size
                .entry(size)
                .or_default()
                .push(sha256.to_string());
        }
    }

    /// Records that the latest version's file at `rel` has content `sha256`: a new
    /// file at the same path is compared with it first.
    pub fn add_latest(&mut self, rel: &str, sha256: &str) {
        self.latest.insert(rel.to_string(), sha256.to_string());
    }

    fn path_of(&self, sha256: &str) -> Option<&Path> {
        self.by_sha.get(sha256).map(|(p, _)| p.as_path())
    }

    /// The contents a new file at `rel` of `size` bytes may have: stored files of that
    /// size, the latest version's file at `rel` first, at most [`MAX_PROBED`].
    fn candidates(&self, rel: &str, size: u64) -> Vec<&str> {
        let first = self
            .latest
            .get(rel)
            .filter(|sha| self.by_sha.get(*sha).is_some_and(|(_, s)| *s == size))
            .map(String::as_str);
        let same_size = self.by_size.get(&size).into_iter().flatten();
        first
            .into_iter()
            .chain(same_size.map(String::as_str).filter(|s| Some(*s) != first))
            .take(MAX_PROBED)
            .collect()
    }
}

/// What a new file must match for a stored file to stand in for its copy: what the copy
/// would be (size, [`stored_mode`], the daemon's owner and group, the filesystem).
struct Want {
    size: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    dev: u64,
}

impl Want {
    /// What a copy of `source` (`size` bytes) made in folder `dir` would be.
    fn copy_of(source: &OpenSource, size: u64, dir: &Path) -> Option<Want> {
        let d = fs::metadata(dir).ok()?;
        // SAFETY: plain getters without arguments.
        let (uid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        // A new file takes the folder's group when the folder is set-group-ID.
        let gid = if d.mode() & libc::S_ISGID != 0 {
            d.gid()
        } else {
            egid
        };
        Some(Want {
            size,
            mode: stored_mode(source.mode),
            uid,
            gid,
            dev: d.dev(),
        })
    }

    /// The (device, inode) of `path` when it is a stored file that can stand in for the
    /// copy: a plain file reached through no link in the store, alike in every respect.
    fn met_by(&self, store: &Path, path: &Path) -> Option<(u64, u64)> {
        check_no_link(store, path.parent()?).ok()?;
        let m = fs::symlink_metadata(path).ok()?;
        let alike = m.is_file()
            && m.len() == self.size
            && m.mode() & 0o7777 == self.mode
            && m.uid() == self.uid
            && m.gid() == self.gid
            && m.dev() == self.dev;
        alike.then(|| (m.dev(), m.ino()))
    }
}

/// Before `source` is copied to `dst` (the path `rel` of a staged version): when a
/// stored file of [`Stored::candidates`] can stand in for the copy and has the same
/// bytes at the start, middle and end, `source` is read to its end and hashed, writing
/// nothing (`done` counts the bytes read); if its SHA-256 is that of a stored file that
/// can stand in, `dst` becomes a hard link to it and `Some((sha256, size))` is returned.
/// Otherwise `None`, with the handle back at the start and `done` as it was: the caller
/// copies. Only a file whose samples matched but whose bytes differ is read twice. The
/// caller checks the handle afterwards either way (was the source written meanwhile?).
pub(super) fn link_if_stored(
    store: &Path,
    stored: &Stored,
    rel: &str,
    source: &mut OpenSource,
    dst: &Path,
    cancel: &AtomicBool,
    done: &AtomicU64,
) -> Result<Option<(String, u64)>> {
    let len = source
        .file
        .metadata()
        .map_err(|e| Error::io("stat", &source.shown, e))?
        .len();
    // An empty file costs nothing to copy.
    if len == 0 || stored.by_sha.is_empty() {
        return Ok(None);
    }
    let Some(want) = dst.parent().and_then(|d| Want::copy_of(source, len, d)) else {
        return Ok(None);
    };
    let looks_same = stored.candidates(rel, len).into_iter().any(|sha| {
        stored
            .path_of(sha)
            .filter(|p| want.met_by(store, p).is_some())
            .is_some_and(|p| same_samples(&source.file, p, len))
    });
    if !looks_same {
        return Ok(None);
    }
    let (sha256, size) = hash_stream(&mut source.file, &source.shown, cancel, |chunk| {
        done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        Ok(())
    })?;
    if size == len
        && let Some(path) = stored.path_of(&sha256)
        && let Some(id) = want.met_by(store, path)
        && link_new(path, id, dst)
    {
        return Ok(Some((sha256, size)));
    }
    // Equal samples, other bytes (or the link failed): copied from the start after all.
    done.fetch_sub(size, Ordering::Relaxed);
    source
        .file
        .seek(SeekFrom::Start(0))
        .map_err(|e| Error::io("seek", &source.shown, e))?;
    Ok(None)
}

/// Whether `source` and the file at `path`, both `len` bytes, have the same bytes at
/// the start, the middle and the end (or whole, when that is short).
fn same_samples(source: &File, path: &Path, len: u64) -> bool {
    let Ok(stored) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    else {
        return false;
    };
    let ranges = if len <= 3 * SAMPLE {
        vec![(0, len)]
    } else {
        vec![(0, SAMPLE), (len / 2, SAMPLE), (len - SAMPLE, SAMPLE)]
    };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    ranges.into_iter().all(|(at, n)| {
        a.resize(n as usize, 0);
        b.resize(n as usize, 0);
        source.read_exact_at(&mut a, at).is_ok()
            && stored.read_exact_at(&mut b, at).is_ok()
            && a == b
    })
}

/// Creates `dst` as a hard link to `stored`, which must still be the inode `id`
/// (device, inode) it was when checked; returns whether it did.
fn link_new(stored: &Path, id: (u64, u64), dst: &Path) -> bool {
    if let Err(e) = fs::hard_link(stored, dst) {
        // EMLINK (the inode has as many links as the filesystem allows), EXDEV, ...
        tracing::debug!(file = %dst.display(), "copied: cannot link to {}: {e}", stored.display());
        return false;
    }
    match fs::symlink_metadata(dst) {
        Ok(m) if (m.dev(), m.ino()) == id => true,
        _ => {
            let _ = fs::remove_file(dst);
            false
        }
    }
}

/// What [`link_duplicates`] saved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Deduped {
    /// Staged files now hard links to stored ones.
    pub files: usize,
    /// Their bytes: what the store no longer holds twice.
    pub bytes: u64,
}

/// Replaces each file of `staged` whose SHA-256 is that of a file in `stored` (the model's
/// published files under `store`) with a hard link to that file, and a file equal
/// to one staged before it with a link to that one. Each replacement is a rename over the
/// copy, so the staged file is whole at every moment; the changed folders are fsynced
/// before this returns, as the staged version must be durable before the catalog names it.
pub fn link_duplicates(store: &Path, staged: &Staged, stored: &Stored) -> Result<Deduped> {
    let mut saved = Deduped::default();
    let mut in_this: BTreeMap<&str, PathBuf> = BTreeMap::new();
    let mut changed_dirs = BTreeSet::new();
    for f in &staged.files {
        let dst = staged.dir.join(&f.rel);
        let candidate = stored
            .path_of(&f.sha256)
            .filter(|p| {
                p.parent()
                    .is_some_and(|dir| check_no_link(store, dir).is_ok())
            })
            .or_else(|| in_this.get(f.sha256.as_str()).map(PathBuf::as_path));
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
    use crate::store::{STAGING, publish, stage_sharing};

    /// Writes `files` (path in the version, bytes, mode) as sources and stages them as
    /// version `n` of model `m`, sharing `stored`; `done` counts the bytes read.
    fn stage_files(
        store: &Path,
        n: u32,
        files: &[(&str, &[u8], u32)],
        stored: &Stored,
        done: &AtomicU64,
    ) -> Result<Staged> {
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
        let no = AtomicBool::new(false);
        stage_sharing(store, "m", n, &list, &no, done, stored)
    }

    /// Stages `files` as version `n` with nothing shared while staging.
    fn copied(store: &Path, n: u32, files: &[(&str, &[u8], u32)]) -> Staged {
        let done = AtomicU64::new(0);
        stage_files(store, n, files, &Stored::default(), &done).unwrap()
    }

    /// Publishes `files` as v1 of model `m` in a new store; returns the store (in the
    /// kept temporary folder) and v1's files as the catalog would describe them.
    fn published_v1(tmp: &tempfile::TempDir, files: &[(&str, &[u8], u32)]) -> (PathBuf, Stored) {
        let store = tmp.path().join("models");
        let v1 = copied(&store, 1, files);
        let mut stored = Stored::default();
        for f in &v1.files {
            stored.add(&f.sha256, store.join("m/v1").join(&f.rel), f.size);
            stored.add_latest(&f.rel, &f.sha256);
        }
        publish(&v1).unwrap();
        (store, stored)
    }

    /// A store with `old` published as v1, and `new` staged as v2 sharing v1's files:
    /// the kept temporary folder, the store, v2 and the bytes counted while staging it.
    fn v2_after(
        old: &[(&str, &[u8], u32)],
        new: &[(&str, &[u8], u32)],
    ) -> (tempfile::TempDir, PathBuf, Staged, u64) {
        let tmp = tempfile::tempdir().unwrap();
        let (store, stored) = published_v1(&tmp, old);
        let done = AtomicU64::new(0);
        let v2 = stage_files(&store, 2, new, &stored, &done).unwrap();
        (tmp, store, v2, done.load(Ordering::Relaxed))
    }

    fn ino(p: &Path) -> u64 {
        fs::metadata(p).unwrap().ino()
    }

    /// `len` bytes, different for each `seed`.
    fn data(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(seed) ^ seed)
            .collect()
    }

    #[test]
    fn an_unchanged_file_becomes_a_link_to_the_stored_one_and_a_changed_one_stays_a_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, stored) =
            published_v1(&tmp, &[("a.bin", b"same", 0o644), ("b.bin", b"old", 0o644)]);
        let v2 = copied(
            &store,
            2,
            &[("a.bin", b"same", 0o644), ("b.bin", b"new", 0o644)],
        );
        let saved = link_duplicates(&store, &v2, &stored).unwrap();
        assert_eq!(saved, Deduped { files: 1, bytes: 4 });
        assert_eq!(ino(&v2.dir.join("a.bin")), ino(&store.join("m/v1/a.bin")));
        assert_ne!(ino(&v2.dir.join("b.bin")), ino(&store.join("m/v1/b.bin")));
        assert_eq!(fs::read(v2.dir.join("a.bin")).unwrap(), b"same");
        // No temporary is left beside it.
        assert_eq!(fs::read_dir(&v2.dir).unwrap().count(), 2);
    }

    #[test]
    fn a_stored_file_with_another_mode_is_not_shared() {
        // Readable by all this time: linking would keep it private (or the reverse).
        let (_tmp, store, v2, _) =
            v2_after(&[("a.bin", b"same", 0o600)], &[("a.bin", b"same", 0o644)]);
        assert_eq!(v2.linked, Deduped::default());
        let mut stored = Stored::default();
        stored.add(&v2.files[0].sha256, store.join("m/v1/a.bin"), 4);
        let saved = link_duplicates(&store, &v2, &stored).unwrap();
        assert_eq!(saved, Deduped::default());
        assert_ne!(ino(&v2.dir.join("a.bin")), ino(&store.join("m/v1/a.bin")));
    }

    #[test]
    fn equal_files_in_one_version_share_one_inode() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("models");
        let v1 = copied(
            &store,
            1,
            &[("x/a.bin", b"twin", 0o644), ("y/b.bin", b"twin", 0o644)],
        );
        let saved = link_duplicates(&store, &v1, &Stored::default()).unwrap();
        assert_eq!(saved.files, 1);
        assert_eq!(ino(&v1.dir.join("x/a.bin")), ino(&v1.dir.join("y/b.bin")));
    }

    #[test]
    fn a_file_found_stored_before_copying_is_read_and_linked_and_a_changed_one_copied() {
        let (same, old, new) = (data(3, 300_000), data(5, 300_000), data(7, 300_000));
        let (_tmp, store, v2, done) = v2_after(
            &[("w/a.bin", &same, 0o644), ("w/b.bin", &old, 0o644)],
            // b.bin: same size, other bytes.
            &[("w/a.bin", &same, 0o644), ("w/b.bin", &new, 0o644)],
        );
        let (files, bytes) = (1, 300_000);
        assert_eq!(v2.linked, Deduped { files, bytes });
        let v1 = store.join("m/v1");
        assert_eq!(ino(&v2.dir.join("w/a.bin")), ino(&v1.join("w/a.bin")));
        assert_ne!(ino(&v2.dir.join("w/b.bin")), ino(&v1.join("w/b.bin")));
        assert_eq!(fs::read(v2.dir.join("w/b.bin")).unwrap(), new);
        assert_eq!(v2.files[0].sha256, crate::fsutil::sha256_hex(&same));
        // Every byte counted once, read or copied: progress ends at the total.
        assert_eq!(done, 600_000);
    }

    #[test]
    fn a_file_that_differs_only_between_the_samples_is_copied_not_linked() {
        let old = data(3, 400_000);
        let mut new = old.clone();
        // Between the start and middle samples: only the full hash sees it.
        new[100_000] ^= 1;
        let (_tmp, store, v2, done) =
            v2_after(&[("a.bin", &old, 0o644)], &[("a.bin", &new, 0o644)]);
        assert_eq!(v2.linked, Deduped::default());
        assert_ne!(ino(&v2.dir.join("a.bin")), ino(&store.join("m/v1/a.bin")));
        assert_eq!(fs::read(v2.dir.join("a.bin")).unwrap(), new);
        assert_eq!(v2.files[0].sha256, crate::fsutil::sha256_hex(&new));
        // Read twice, counted once.
        assert_eq!(done, 400_000);
    }

    #[test]
    fn a_stored_file_at_another_path_is_found_by_its_size() {
        let bytes = data(9, 200_000);
        let (_tmp, store, v2, _) = v2_after(
            &[("old-name.bin", &bytes, 0o644)],
            &[("sub/new-name.bin", &bytes, 0o644)],
        );
        assert_eq!(v2.linked.files, 1);
        let new_name = v2.dir.join("sub/new-name.bin");
        assert_eq!(ino(&new_name), ino(&store.join("m/v1/old-name.bin")));
    }

    #[test]
    fn cancel_while_reading_a_stored_file_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = data(11, 200_000);
        let (store, stored) = published_v1(&tmp, &[("a.bin", &bytes, 0o644)]);
        let src = tmp.path().join("a.bin");
        fs::write(&src, &bytes).unwrap();
        let yes = AtomicBool::new(true);
        let err = stage_sharing(
            &store,
            "m",
            2,
            &[(src, "a.bin".into())],
            &yes,
            &AtomicU64::new(0),
            &stored,
        )
        .unwrap_err();
        assert!(matches!(err, Error::Cancelled));
        assert_eq!(fs::read_dir(store.join(STAGING)).unwrap().count(), 0);
        assert_eq!(fs::metadata(store.join("m/v1/a.bin")).unwrap().nlink(), 1);
    }
}
