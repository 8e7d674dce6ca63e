//! Staging and publishing a version: copy into `.staging/v<N>.<random>.<name>`, rename to `v<N>`, crash recovery.
//!
//! A version is copied in a hidden staging folder and made durable there (`seal`); only
//! after the catalog names it is the folder renamed into place ([`publish`], never replacing an existing
//! `v<N>`). A crash in between is rolled forward at start-up by [`recover`], which also
//! deletes staging folders the catalog never named.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};

use super::copy::copy_and_hash_from;
use super::dedup::{Deduped, Stored, link_if_stored};
use super::links::{check_no_link, linked};
use super::{STAGING, set_folder_mode, version_dir};
use crate::error::{Error, Result};
use crate::fsutil::sync_dir;
use crate::registry::Catalog;

/// One file copied into a staging folder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagedFile {
    /// Path relative to the version folder.
    pub rel: String,
    /// Hex SHA-256.
    pub sha256: String,
    /// Bytes copied.
    pub size: u64,
}

/// A staged, durable, not yet published version.
#[derive(Debug)]
pub struct Staged {
    /// The hidden staging folder.
    pub dir: PathBuf,
    /// Where [`publish`] will rename it.
    pub final_dir: PathBuf,
    /// Its files, in the order given.
    pub files: Vec<StagedFile>,
    /// Those of its files that are hard links to stored files, not copies (read and
    /// hashed, nothing written; see [`stage_reusing`]).
    pub linked: Deduped,
    /// The copies written and not yet fsynced: made durable, with the manifest and the
    /// folders, by [`super::seal`] before the catalog may name the version.
    pub unsynced: Vec<PathBuf>,
}

/// A source file opened by the caller of [`stage_opened`].
#[derive(Debug)]
pub struct OpenSource {
    /// The handle every byte is read through.
    pub file: File,
    /// Its path, for messages.
    pub shown: PathBuf,
    /// Its permission bits: the stored file is never more readable than this (see
    /// [`stored_mode`]).
    pub mode: u32,
}

/// Copies the files `rels` (paths relative to the version folder) into a new staging
/// folder for version `n` of `name`, hashing while copying. Each source is opened by
/// `open(i)` just before it is copied (so a folder of many files holds one descriptor at
/// a time, and the check made at the open is as late as possible), every byte is read
/// through that handle, and `check(i, &file)` runs after the copy through the same handle
/// (was it written meanwhile?). `cancel` aborts between chunks. An error from either,
/// like any other, or a cancellation leaves nothing behind. `done` counts the bytes
/// copied so far (for `status`), added to once per chunk. Nothing is fsynced yet: the
/// caller adds the manifest and makes it all durable at once with [`super::seal`].
#[allow(clippy::too_many_arguments)]
pub fn stage_opened(
    store: &Path,
    name: &str,
    n: u32,
    rels: &[String],
    open: &mut dyn FnMut(usize) -> Result<OpenSource>,
    check: &mut dyn FnMut(usize, &File) -> Result<()>,
    cancel: &AtomicBool,
    done: &AtomicU64,
) -> Result<Staged> {
    let nothing_stored = Stored::default();
    stage_reusing(
        store,
        name,
        n,
        rels,
        open,
        check,
        cancel,
        done,
        &nothing_stored,
    )
}

/// [`stage_opened`], where a file that turns out to equal one of the model's `stored`
/// files is read and hashed, not copied, and becomes a hard link to it (see
/// [`link_if_stored`]); `check` runs after that read too, and `done` counts its bytes.
#[allow(clippy::too_many_arguments)]
pub fn stage_reusing(
    store: &Path,
    name: &str,
    n: u32,
    rels: &[String],
    open: &mut dyn FnMut(usize) -> Result<OpenSource>,
    check: &mut dyn FnMut(usize, &File) -> Result<()>,
    cancel: &AtomicBool,
    done: &AtomicU64,
    stored: &Stored,
) -> Result<Staged> {
    let staging = store.join(STAGING);
    check_no_link(store, &staging)?;
    ensure_dir(store, &staging)?;
    // v<N>.<random>.<name>: the name last, since it may itself hold dots.
    let dir = tempfile::Builder::new()
        .prefix(&format!("v{n}."))
        .suffix(&format!(".{name}"))
        .rand_bytes(8)
        .tempdir_in(&staging)
        .map_err(|e| Error::io("create staging folder in", &staging, e))?;
    set_folder_mode(dir.path())?;
    let mut staged = Vec::with_capacity(rels.len());
    let mut linked = Deduped::default();
    let mut unsynced = Vec::new();
    let mut made_dirs: Vec<PathBuf> = Vec::new();
    for (i, rel) in rels.iter().enumerate() {
        let dst = dir.path().join(rel);
        if let Some(parent) = dst.parent()
            && parent != dir.path()
            && !parent.exists()
        {
            fs::create_dir_all(parent).map_err(|e| Error::io("create folder", parent, e))?;
            let mut p = parent.to_path_buf();
            while p != dir.path() {
                made_dirs.push(p.clone());
                if !p.pop() {
                    break;
                }
            }
        }
        let mut source = open(i)?;
        let (sha256, size) =
            match link_if_stored(store, stored, rel, &mut source, &dst, cancel, done)? {
                Some(same) => {
                    linked.files += 1;
                    linked.bytes += same.1;
                    same
                }
                None => {
                    let copied = copy_and_hash_from(
                        &mut source.file,
                        &source.shown,
                        &dst,
                        source.mode,
                        cancel,
                        done,
                    )?;
                    unsynced.push(dst.clone());
                    copied
                }
            };
        check(i, &source.file)?;
        staged.push(StagedFile {
            rel: rel.clone(),
            sha256,
            size,
        });
    }
    made_dirs.sort();
    made_dirs.dedup();
    for d in &made_dirs {
        set_folder_mode(d)?;
    }
    Ok(Staged {
        dir: dir.keep(),
        final_dir: version_dir(store, name, n),
        files: staged,
        linked,
        unsynced,
    })
}

/// Renames a staged version into place (creating the model's folder the first time). No
/// fsync is needed for correctness: the catalog already names the version, and
/// [`recover`] redoes a rename a crash lost. An existing `v<N>` is never replaced.
pub fn publish(staged: &Staged) -> Result<()> {
    if let Some(model_dir) = staged.final_dir.parent()
        && fs::symlink_metadata(model_dir).is_ok_and(|m| m.file_type().is_symlink())
    {
        return Err(Error::Other(linked(model_dir)));
    }
    if let Some(model_dir) = staged.final_dir.parent()
        && !model_dir.is_dir()
    {
        fs::create_dir_all(model_dir).map_err(|e| Error::io("create folder", model_dir, e))?;
        set_folder_mode(model_dir)?;
    }
    rename_noreplace(&staged.dir, &staged.final_dir)
}

/// `rename(from, to)` that fails instead of replacing an existing `to` (even an empty
/// folder, which a plain rename would silently replace).
fn rename_noreplace(from: &Path, to: &Path) -> Result<()> {
    let Err(e) = crate::fsutil::rename2(from, to, libc::RENAME_NOREPLACE) else {
        return Ok(());
    };
    if e.raw_os_error() == Some(libc::EEXIST) {
        return Err(Error::Other(format!(
            "{} already exists in the store; it is never overwritten (staged copy kept at {})",
            to.display(),
            from.display()
        )));
    }
    Err(Error::io("rename into place", to, e))
}

/// Removes a staged version that will not be published.
pub fn discard(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove staging folder", dir, e)),
    }
}

/// Creates `dir` (one level under `store`, or the store itself) when missing, and makes
/// the new entry durable.
fn ensure_dir(store: &Path, dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if !store.is_dir() {
        fs::create_dir_all(store).map_err(|e| Error::io("create store", store, e))?;
        set_folder_mode(store)?;
        if let Some(parent) = store.parent() {
            sync_dir(parent)?;
        }
    }
    match fs::create_dir(dir) {
        Ok(()) => {
            set_folder_mode(dir)?;
            sync_dir(store)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io("create folder", dir, e)),
    }
}

/// What [`recover`] did at start-up.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Versions the catalog named whose rename a crash lost, now in place.
    pub rolled_forward: Vec<String>,
    /// Staging folders of versions the catalog never named, deleted.
    pub removed: Vec<String>,
}

/// Brings the store in line with the catalog after a crash: finishes renames of versions
/// the catalog names, deletes staging folders it does not. Never touches `v<N>` folders.
pub fn recover(store: &Path, catalog: &Catalog) -> Result<Recovery> {
    let mut report = Recovery::default();
    let staging = store.join(STAGING);
    if let Err(e) = check_no_link(store, &staging) {
        // Left alone; `status` shows it (see [`linked_folders`]).
        tracing::error!("{e}");
        return Ok(report);
    }
    let entries = match fs::read_dir(&staging) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(Error::io("list", &staging, e)),
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let parsed = parse_staging_name(&file_name);
        let named = parsed.and_then(|(n, name)| {
            let m = catalog.models.get(name)?;
            m.find(n).map(|_| (n, name))
        });
        match named.map(|(n, name)| (n, name, version_dir(store, name, n))) {
            Some((_, _, fd)) if check_no_link(store, &fd).is_err() => {
                tracing::error!(
                    "{}; the staged copy is kept",
                    check_no_link(store, &fd)
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or_default()
                );
            }
            Some((n, name, fd)) if !fd.exists() => {
                let model_dir = store.join(name);
                fs::create_dir_all(&model_dir)
                    .map_err(|e| Error::io("create folder", &model_dir, e))?;
                rename_noreplace(&entry.path(), &fd)?;
                sync_dir(&model_dir)?;
                report.rolled_forward.push(format!("{name}/v{n}"));
            }
            _ => {
                discard(&entry.path())?;
                report.removed.push(format!("{STAGING}/{file_name}"));
            }
        }
    }
    if !report.rolled_forward.is_empty() || !report.removed.is_empty() {
        sync_dir(&staging)?;
    }
    Ok(report)
}

/// `v<N>.<random>.<name>` -> (N, name).
fn parse_staging_name(s: &str) -> Option<(u32, &str)> {
    let rest = s.strip_prefix('v')?;
    let (n, rest) = rest.split_once('.')?;
    let (_random, name) = rest.split_once('.')?;
    Some((n.parse().ok()?, name))
}

/// Copies `files` (source path, path relative to the version folder) into a new staging
/// folder: [`stage_opened`] with each source opened by path, for tests.
#[cfg(test)]
pub(crate) fn stage(
    store: &Path,
    name: &str,
    n: u32,
    files: &[(PathBuf, String)],
    cancel: &AtomicBool,
) -> Result<Staged> {
    let done = AtomicU64::new(0);
    stage_sharing(store, name, n, files, cancel, &done, &Stored::default())
}

/// [`stage`], sharing `stored` files as [`stage_reusing`] does and counting the bytes
/// read in `done`, for tests.
#[cfg(test)]
pub(crate) fn stage_sharing(
    store: &Path,
    name: &str,
    n: u32,
    files: &[(PathBuf, String)],
    cancel: &AtomicBool,
    done: &AtomicU64,
    stored: &Stored,
) -> Result<Staged> {
    use std::os::unix::fs::PermissionsExt;
    let rels: Vec<String> = files.iter().map(|(_, r)| r.clone()).collect();
    let mut open = |i: usize| -> Result<OpenSource> {
        let src = &files[i].0;
        let file = File::open(src).map_err(|e| Error::io("open", src, e))?;
        let mode = file
            .metadata()
            .map_err(|e| Error::io("stat", src, e))?
            .permissions()
            .mode();
        Ok(OpenSource {
            file,
            shown: src.clone(),
            mode,
        })
    };
    stage_reusing(
        store,
        name,
        n,
        &rels,
        &mut open,
        &mut |_, _| Ok(()),
        cancel,
        done,
        stored,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::sha256_hex;
    use crate::registry::tests::{model, v};
    use crate::store::copy::PIPELINE_THRESHOLD;
    use crate::store::{FOLDER_MODE, stored_mode, tighten_modes};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    #[test]
    fn stage_publish_and_hash_both_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let src_small = tmp.path().join("small.pt");
        let src_big = tmp.path().join("big.bin");
        fs::write(&src_small, b"hello").unwrap();
        let big: Vec<u8> = (0..(PIPELINE_THRESHOLD as usize + 12345))
            .map(|i| (i * 7) as u8)
            .collect();
        fs::write(&src_big, &big).unwrap();
        let store = tmp.path().join("models");
        let no = AtomicBool::new(false);
        let staged = stage(
            &store,
            "m",
            1,
            &[
                (src_small.clone(), "small.pt".into()),
                (src_big.clone(), "sub/big.bin".into()),
            ],
            &no,
        )
        .unwrap();
        assert_eq!(staged.files[0].sha256, sha256_hex(b"hello"));
        assert_eq!(staged.files[1].sha256, sha256_hex(&big));
        assert_eq!(staged.files[1].size, big.len() as u64);
        publish(&staged).unwrap();
        let stored = store.join("m/v1/sub/big.bin");
        assert_eq!(fs::read(&stored).unwrap(), big);
        assert_eq!(
            fs::metadata(&stored).unwrap().permissions().mode() & 0o777,
            0o444
        );
        // The source is untouched.
        assert_eq!(fs::read(&src_small).unwrap(), b"hello");
    }

    #[test]
    fn copies_are_never_more_readable_than_the_source_and_loose_stores_are_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("private.pt");
        fs::write(&src, b"p").unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o600)).unwrap();
        let store = tmp.path().join("models");
        let no = AtomicBool::new(false);
        let staged = stage(&store, "p", 1, &[(src, "sub/p.pt".into())], &no).unwrap();
        publish(&staged).unwrap();
        let mode = |p: &str| fs::metadata(store.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("p/v1/sub/p.pt"), 0o400);
        for d in ["", ".staging", "p", "p/v1", "p/v1/sub"] {
            assert_eq!(mode(d), FOLDER_MODE, "{d:?}");
        }
        assert_eq!(stored_mode(0o640), 0o440);
        assert_eq!(stored_mode(0o044), 0o444);
        fs::set_permissions(store.join("p"), fs::Permissions::from_mode(0o775)).unwrap();
        fs::set_permissions(
            store.join("p/v1/sub/p.pt"),
            fs::Permissions::from_mode(0o664),
        )
        .unwrap();
        assert_eq!(tighten_modes(&store), 2);
        assert_eq!(mode("p"), 0o755);
        assert_eq!(mode("p/v1/sub/p.pt"), 0o444);
        assert_eq!(tighten_modes(&store), 0);
    }

    #[test]
    fn cancel_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("a.pt");
        fs::write(&src, vec![1u8; PIPELINE_THRESHOLD as usize * 2]).unwrap();
        let store = tmp.path().join("models");
        let yes = AtomicBool::new(true);
        let err = stage(&store, "a", 1, &[(src, "a.pt".into())], &yes).unwrap_err();
        assert!(matches!(err, Error::Cancelled));
        assert_eq!(fs::read_dir(store.join(STAGING)).unwrap().count(), 0);
    }

    #[test]
    fn recover_rolls_forward_named_and_removes_unnamed() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("models");
        let staging = store.join(STAGING);
        fs::create_dir_all(staging.join("v2.abcdefgh.m.v2")).unwrap();
        fs::write(staging.join("v2.abcdefgh.m.v2/m.pt"), b"x").unwrap();
        fs::create_dir_all(staging.join("v3.ijklmnop.m.v2")).unwrap();
        fs::create_dir_all(store.join("m.v2/v1")).unwrap();
        let mut c = Catalog::default();
        c.models
            .insert("m.v2".into(), Arc::new(model(vec![v(1, &[]), v(2, &[])])));
        let r = recover(&store, &c).unwrap();
        assert_eq!(r.rolled_forward, vec!["m.v2/v2".to_string()]);
        assert_eq!(r.removed, vec![".staging/v3.ijklmnop.m.v2".to_string()]);
        assert!(store.join("m.v2/v2/m.pt").exists());
        assert!(store.join("m.v2/v1").exists());
        assert_eq!(
            parse_staging_name("v12.Ab3dEf9h.Llama-3.1-8B"),
            Some((12, "Llama-3.1-8B"))
        );
    }
}
