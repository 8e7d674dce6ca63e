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
//! linked when its SHA-256 is that stored file's. So a folder's v2 with 9 of 10 files
//! unchanged writes only the changed file. After staging, [`link_duplicates`] links what
//! was copied anyway (a file equal to one staged before it, a stored file not probed).
//!
//! Either way a link is made only to a stored file whose actual bytes were compared with
//! the new file's and found equal (see `compare`): a recorded SHA-256 says what a stored
//! file held, not what it holds. One damaged in place is reported in [`Stored::damaged`]
//! and never linked to.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::compare::{Compare, Damaged, Verdict, identity, same_bytes};
use super::copy::hash_stream;
use super::links::check_no_link;
use super::staging::{OpenSource, Staged};
use super::stored_mode;
use crate::error::{Error, Result};

/// How many stored files of a new file's size are compared with it by samples.
const MAX_PROBED: usize = 4;
/// The bytes compared at each of the three sample offsets (start, middle, end); a file
/// of at most three samples is compared whole.
const SAMPLE: u64 = 64 * 1024;

/// The model's stored files a new version may share, as the catalog records them.
///
/// The two indexes are shared (`Arc`): the registrar keeps one `Stored` per model up to
/// date version by version, and a job gets a copy of it ([`Stored::for_job`]) for the
/// price of two pointers, not of the model's file count.
#[derive(Debug, Default, Clone)]
pub struct Stored {
    /// SHA-256 -> (absolute path of one stored file with that content, its size).
    by_sha: Arc<BTreeMap<String, (PathBuf, u64)>>,
    /// Size -> the SHA-256s of stored files of that size.
    by_size: Arc<BTreeMap<u64, Vec<String>>>,
    /// The latest version's files: path relative to the version folder -> SHA-256.
    latest: BTreeMap<String, String>,
    /// Stored files whose bytes were found not to be their recorded content.
    damaged: Damaged,
}

impl Stored {
    /// Records a stored file: its SHA-256, absolute path and size. The last path given
    /// for a content is the one linked to (given oldest first, the newest version's,
    /// which gc removes last).
    pub fn add(&mut self, sha256: &str, path: PathBuf, size: u64) {
        let known = Arc::make_mut(&mut self.by_sha)
            .insert(sha256.to_string(), (path, size))
            .is_some();
        if !known {
            Arc::make_mut(&mut self.by_size)
                .entry(size)
                .or_default()
                .push(sha256.to_string());
        }
    }

    /// The same stored files (shared, not copied), without a latest version and with a
    /// fresh [`Stored::damaged`] handle: what one job starts from.
    pub fn for_job(&self) -> Stored {
        Stored {
            by_sha: self.by_sha.clone(),
            by_size: self.by_size.clone(),
            latest: BTreeMap::new(),
            damaged: Damaged::default(),
        }
    }

    /// Whether `self` and `other` record the same stored files and latest version (the
    /// damaged reports aside).
    pub fn same_files(&self, other: &Stored) -> bool {
        self.by_sha == other.by_sha && self.by_size == other.by_size && self.latest == other.latest
    }

    /// Records that the latest version's file at `rel` has content `sha256`: a new
    /// file at the same path is compared with it first.
    pub fn add_latest(&mut self, rel: &str, sha256: &str) {
        self.latest.insert(rel.to_string(), sha256.to_string());
    }

    /// Where the stored files found damaged while staging are reported: a handle that
    /// stays valid after the job using these `Stored` has ended.
    pub fn damaged(&self) -> Damaged {
        self.damaged.clone()
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
/// nothing, while every chunk is compared with that stored file's bytes (`done` counts
/// the bytes read); if they are all equal and the SHA-256 is the one recorded for it,
/// `dst` becomes a hard link to it and `Some((sha256, size))` is returned. Otherwise
/// `None`, with the handle back at the start and `done` as it was: the caller copies.
/// A stored file whose recorded SHA-256 is the source's but whose bytes differ is
/// damaged: reported in [`Stored::damaged`]. Only a file whose samples matched but
/// whose bytes differ is read twice. The caller checks the handle afterwards either
/// way (was the source written meanwhile?).
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
    // The first stored file that can stand in and has the same samples, open: the one
    // compared whole, and linked only if it is still the inode compared.
    let probed = stored.candidates(rel, len).into_iter().find_map(|sha| {
        let path = stored.path_of(sha)?;
        want.met_by(store, path)?;
        let file = open_stored(path)?;
        same_samples(&source.file, &file, len).then_some((sha, path, file))
    });
    let Some((recorded, path, file)) = probed else {
        return Ok(None);
    };
    let mut cmp = Compare::new(&file);
    let (sha256, size) = hash_stream(&mut source.file, &source.shown, cancel, |chunk| {
        done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        cmp.feed(chunk);
        Ok(())
    })?;
    let verdict = cmp.finish();
    if size == len && sha256 == recorded {
        if verdict == Verdict::Same
            && let Some(id) = want.met_by(store, path)
            && identity(&file) == Some(id)
            && link_new(path, id, dst)
        {
            return Ok(Some((sha256, size)));
        }
        stored.damaged.report(path, recorded, &verdict);
    }
    // Equal samples, other bytes (or the link failed): copied from the start after all.
    done.fetch_sub(size, Ordering::Relaxed);
    source
        .file
        .seek(SeekFrom::Start(0))
        .map_err(|e| Error::io("seek", &source.shown, e))?;
    Ok(None)
}

/// Opens a stored file for reading, never through a link.
fn open_stored(path: &Path) -> Option<File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()
}

/// Whether `source` and `stored`, both `len` bytes, have the same bytes at the start,
/// the middle and the end (or whole, when that is short).
fn same_samples(source: &File, stored: &File, len: u64) -> bool {
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
/// to one staged before it with a link to that one, once their bytes are compared and
/// found equal (a stored file found damaged is reported in [`Stored::damaged`] and the
/// copy stays). Each replacement is a rename over the copy, so the staged file is whole
/// at every moment; [`super::seal`] then fsyncs the staging tree's folders with the rest
/// (the staged version must be durable before the catalog names it).
pub fn link_duplicates(store: &Path, staged: &Staged, stored: &Stored) -> Result<Deduped> {
    let mut saved = Deduped::default();
    let mut in_this: BTreeMap<&str, PathBuf> = BTreeMap::new();
    for f in &staged.files {
        let dst = staged.dir.join(&f.rel);
        let from_store = stored.path_of(&f.sha256).filter(|p| {
            p.parent()
                .is_some_and(|dir| check_no_link(store, dir).is_ok())
        });
        let earlier = |dst: &Path| {
            in_this
                .get(f.sha256.as_str())
                .is_some_and(|same| link_over(same, dst, f.size) == Ok(true))
        };
        let linked = match from_store.map(|p| (p, link_over(p, &dst, f.size))) {
            Some((_, Ok(linked))) => linked,
            Some((p, Err(verdict))) => {
                stored.damaged.report(p, &f.sha256, &verdict);
                earlier(&dst)
            }
            None => earlier(&dst),
        };
        if linked {
            saved.files += 1;
            saved.bytes += f.size;
        } else {
            in_this.entry(&f.sha256).or_insert(dst);
        }
    }
    Ok(saved)
}

/// Replaces `copy` (`size` bytes) with a hard link to `same` when both are plain files
/// of that size with the same mode and owner on one filesystem and the same bytes;
/// returns whether it did, or how `same`'s bytes differ from the copy's.
fn link_over(same: &Path, copy: &Path, size: u64) -> std::result::Result<bool, Verdict> {
    let (Some(s_file), Some(c_file)) = (open_stored(same), open_stored(copy)) else {
        return Ok(false);
    };
    let (Ok(s), Ok(c)) = (s_file.metadata(), c_file.metadata()) else {
        return Ok(false);
    };
    let alike = s.is_file()
        && c.is_file()
        && s.len() == size
        && c.len() == size
        && s.mode() == c.mode()
        && s.uid() == c.uid()
        && s.dev() == c.dev();
    if !alike || s.ino() == c.ino() {
        return Ok(false);
    }
    // The copy's SHA-256 is that of its bytes; `same`'s is only what was recorded.
    match same_bytes(&c_file, &s_file) {
        Verdict::Same => {}
        other => return Err(other),
    }
    let Some(name) = copy.file_name() else {
        return Ok(false);
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".dedup");
    let tmp = copy.with_file_name(tmp_name);
    if let Err(e) = fs::hard_link(same, &tmp) {
        // EMLINK (the inode has as many links as the filesystem allows), EXDEV, ...:
        // the copy stays.
        tracing::debug!(file = %copy.display(), "kept as a copy: cannot link to {}: {e}", same.display());
        return Ok(false);
    }
    // Linked to the inode compared, not to one put in its place meanwhile.
    if fs::symlink_metadata(&tmp).map(|m| (m.dev(), m.ino())).ok() != identity(&s_file) {
        let _ = fs::remove_file(&tmp);
        return Ok(false);
    }
    if let Err(e) = fs::rename(&tmp, copy) {
        let _ = fs::remove_file(&tmp);
        tracing::debug!(file = %copy.display(), "kept as a copy: {e}");
        return Ok(false);
    }
    Ok(true)
}

#[cfg(test)]
mod tests;
