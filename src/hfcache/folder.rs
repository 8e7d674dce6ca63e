//! One model's folder in the view: read back, and brought to its [`Plan`] in the order
//! that keeps every reader's path whole (blobs, snapshots, refs; then what is stale).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{Plan, ViewFile};

/// The mode of a ref file: readable by all who can list the view (it names a commit id).
const REF_MODE: u32 = 0o644;

/// What a model's folder holds now, by the same keys as a [`Plan`].
#[derive(Debug, Default)]
pub(super) struct There {
    /// Blob name -> link target.
    blobs: BTreeMap<String, String>,
    /// Snapshot commit -> whether it holds exactly its version's links.
    snapshots: BTreeMap<String, bool>,
    /// Ref -> commit id.
    refs: BTreeMap<String, String>,
    /// Anything else in blobs/, snapshots/ or refs/ (temporary names a crash left, files
    /// where links belong): removed.
    junk: Vec<PathBuf>,
}

impl There {
    /// What a folder holds when it matches `plan`.
    pub(super) fn of(plan: &Plan) -> There {
        There {
            blobs: plan
                .blobs
                .iter()
                .map(|(sha, stored)| (sha.clone(), blob_target(stored)))
                .collect(),
            snapshots: plan
                .versions
                .values()
                .map(|(c, _)| (c.clone(), true))
                .collect(),
            refs: plan
                .refs
                .keys()
                .filter_map(|r| Some((r.clone(), plan.commit_of_ref(r)?.to_string())))
                .collect(),
            junk: Vec::new(),
        }
    }
}

/// What the folder `dir` holds, each snapshot compared with its version in `want`.
pub(super) fn read_back(dir: &Path, want: &Plan) -> There {
    let mut there = There::default();
    let list = |sub: &str| -> Vec<(String, PathBuf, fs::FileType)> {
        fs::read_dir(dir.join(sub))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                Some((
                    e.file_name().into_string().ok()?,
                    e.path(),
                    e.file_type().ok()?,
                ))
            })
            .collect()
    };
    for (name, path, t) in list("blobs") {
        match fs::read_link(&path) {
            Ok(to) if t.is_symlink() => {
                there.blobs.insert(name, to.to_string_lossy().into_owned());
            }
            _ => there.junk.push(path),
        }
    }
    let files: BTreeMap<&str, &[ViewFile]> = want
        .versions
        .values()
        .map(|(c, f)| (c.as_str(), f.as_slice()))
        .collect();
    for (name, path, t) in list("snapshots") {
        match files.get(name.as_str()) {
            Some(f) if t.is_dir() => {
                let ok = snapshot_links(&path) == Some(expected_links(f));
                there.snapshots.insert(name, ok);
            }
            _ => there.junk.push(path),
        }
    }
    for (name, path, t) in list("refs") {
        match fs::read_to_string(&path) {
            Ok(commit) if t.is_file() && want.refs.contains_key(&name) => {
                there.refs.insert(name, commit);
            }
            _ => there.junk.push(path),
        }
    }
    there
}

/// Brings `dir` from `there` to `want`; with `trusting`, a snapshot already in place is
/// taken as made. Returns the errors met (each step is tried).
pub(super) fn apply(dir: &Path, there: There, want: &Plan, trusting: bool) -> Vec<String> {
    let mut errors = Vec::new();
    let mut note = |r: Result<(), String>| {
        if let Err(e) = r {
            errors.push(e);
        }
    };
    if want.versions.is_empty() {
        note(remove_any(dir));
        return errors;
    }
    let work = !trusting
        || want
            .blobs
            .iter()
            .any(|(s, t)| there.blobs.get(s) != Some(&blob_target(t)))
        || want
            .versions
            .values()
            .any(|(c, _)| !there.snapshots.contains_key(c))
        || want
            .refs
            .keys()
            .any(|r| there.refs.get(r).map(String::as_str) != want.commit_of_ref(r));
    if work {
        for d in [
            dir.to_path_buf(),
            dir.join("blobs"),
            dir.join("snapshots"),
            dir.join("refs"),
        ] {
            note(ensure_dir(&d));
        }
    }
    for (sha, stored) in &want.blobs {
        let to = blob_target(stored);
        if there.blobs.get(sha) != Some(&to) {
            note(put_link(&dir.join("blobs"), sha, &to));
        }
    }
    for (commit, files) in want.versions.values() {
        match there.snapshots.get(commit) {
            Some(true) => {}
            Some(false) => note(make_snapshot(&dir.join("snapshots"), commit, files, true)),
            None => note(make_snapshot(
                &dir.join("snapshots"),
                commit,
                files,
                !trusting,
            )),
        }
    }
    for r in want.refs.keys() {
        let Some(commit) = want.commit_of_ref(r) else {
            continue;
        };
        if there.refs.get(r).map(String::as_str) != Some(commit) {
            note(write_ref(&dir.join("refs"), r, commit));
        }
    }
    for r in there.refs.keys().filter(|r| !want.refs.contains_key(*r)) {
        note(remove_any(&dir.join("refs").join(r)));
    }
    let commits: BTreeSet<&str> = want.versions.values().map(|(c, _)| c.as_str()).collect();
    for c in there
        .snapshots
        .keys()
        .filter(|c| !commits.contains(c.as_str()))
    {
        note(remove_any(&dir.join("snapshots").join(c)));
    }
    for sha in there.blobs.keys().filter(|s| !want.blobs.contains_key(*s)) {
        note(remove_any(&dir.join("blobs").join(sha)));
    }
    for p in &there.junk {
        note(remove_any(p));
    }
    errors
}

/// Does `step` in `dir`, whose folder matched the plan `step` was worked out from;
/// `plan` is the plan after it. The same order as [`apply`]: blobs, snapshots, refs,
/// then what went. Returns the errors met (each step is tried).
pub(super) fn apply_step(dir: &Path, plan: &Plan, step: &super::step::Step) -> Vec<String> {
    let mut errors = Vec::new();
    let mut note = |r: Result<(), String>| {
        if let Err(e) = r {
            errors.push(e);
        }
    };
    for (sha, stored) in &step.blobs_add {
        note(put_link(&dir.join("blobs"), sha, &blob_target(stored)));
    }
    for n in &step.snapshots_add {
        if let Some((commit, files)) = plan.versions.get(n) {
            note(make_snapshot(&dir.join("snapshots"), commit, files, true));
        }
    }
    for (r, commit) in &step.refs_set {
        note(write_ref(&dir.join("refs"), r, commit));
    }
    for r in &step.refs_gone {
        note(remove_any(&dir.join("refs").join(r)));
    }
    for c in &step.snapshots_gone {
        note(remove_any(&dir.join("snapshots").join(c)));
    }
    for sha in &step.blobs_gone {
        note(remove_any(&dir.join("blobs").join(sha)));
    }
    errors
}

/// A blob's link to the stored file whose catalog path is `stored`: relative from
/// `<root>/hf/models--<name>/blobs/` when the path is (the store lies in the root), so
/// that moving the root keeps it; else the absolute path.
fn blob_target(stored: &str) -> String {
    if Path::new(stored).is_absolute() {
        stored.to_string()
    } else {
        format!("../../../{stored}")
    }
}

/// A snapshot's link for a file at `rel`: `../` up to the model's folder, then
/// `blobs/<sha>`, as huggingface_hub makes it.
fn snapshot_target(rel: &str, sha: &str) -> String {
    format!("{}blobs/{sha}", "../".repeat(rel.matches('/').count() + 2))
}

/// Each file of a snapshot and the link it should be.
fn expected_links(files: &[ViewFile]) -> BTreeMap<String, String> {
    files
        .iter()
        .map(|f| (f.rel.clone(), snapshot_target(&f.rel, &f.sha256)))
        .collect()
}

/// Each link in the snapshot folder `dir` (paths inside it) and where it points; `None`
/// when it holds anything but folders and links.
fn snapshot_links(dir: &Path) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = todo.pop() {
        for e in fs::read_dir(&d).ok()?.flatten() {
            let name = e.file_name().into_string().ok()?;
            let rel = format!("{prefix}{name}");
            let t = e.file_type().ok()?;
            if t.is_dir() {
                todo.push((e.path(), format!("{rel}/")));
            } else if t.is_symlink() {
                out.insert(
                    rel,
                    fs::read_link(e.path()).ok()?.to_string_lossy().into_owned(),
                );
            } else {
                return None;
            }
        }
    }
    Some(out)
}

/// Makes `snapshots/<commit>`. A new one is made in place (no temporary folder to
/// create, rename and free: see [`rewrite_in_place`] on why inodes count). That is safe
/// because nothing names a snapshot before it is whole: refs are written after
/// snapshots, and a commit id is only learnt from a ref. One left half made (a crash,
/// a full disk) holds too few links; the model is then checked again (read back and
/// compared link by link, [`read_back`]) at its next change or at start, and the
/// snapshot remade. One already there is kept, or, with `replace` (found wrong or not
/// trusted), a whole new one is made under a temporary name and swapped in, so that a
/// reader of a ref naming it never finds it missing.
fn make_snapshot(
    snapshots: &Path,
    commit: &str,
    files: &[ViewFile],
    replace: bool,
) -> Result<(), String> {
    let dest = snapshots.join(commit);
    match fs::create_dir(&dest) {
        Ok(()) => {
            crate::store::set_folder_mode(&dest).map_err(|e| e.to_string())?;
            return fill_snapshot(&dest, files);
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if !replace {
                // Made before, trusted: nothing to place.
                return Ok(());
            }
        }
        Err(e) => return Err(format!("create {}: {e}", dest.display())),
    }
    let tmp = snapshots.join(format!(".tmp.{}.{commit}", std::process::id()));
    let _ = remove_any(&tmp);
    make_dir(&tmp)?;
    let placed = fill_snapshot(&tmp, files).and_then(|()| {
        if fs::symlink_metadata(&dest).is_ok() {
            exchange(&tmp, &dest)
        } else {
            fs::rename(&tmp, &dest)
                .map_err(|e| format!("rename {} into place: {e}", dest.display()))
        }
    });
    let _ = remove_any(&tmp);
    placed
}

/// Makes each file's link (and the folders of its path) in the snapshot folder `dir`.
fn fill_snapshot(dir: &Path, files: &[ViewFile]) -> Result<(), String> {
    for f in files {
        let path = dir.join(&f.rel);
        let mut made = dir.to_path_buf();
        for c in Path::new(&f.rel)
            .parent()
            .into_iter()
            .flat_map(|p| p.components())
        {
            made.push(c);
            if !made.is_dir() {
                make_dir(&made)?;
            }
        }
        std::os::unix::fs::symlink(snapshot_target(&f.rel, &f.sha256), &path)
            .map_err(|e| format!("link {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Swaps two paths in one step (renameat2 RENAME_EXCHANGE): a reader sees either.
fn exchange(a: &Path, b: &Path) -> Result<(), String> {
    crate::fsutil::rename2(a, b, libc::RENAME_EXCHANGE)
        .map_err(|e| format!("swap {} into place: {e}", b.display()))
}

/// Makes `dir/<name>` a symlink to `to`: made directly when the name is free (a link
/// appears whole), else a new link under a temporary name renamed over the old one, so
/// it is never missing.
fn put_link(dir: &Path, name: &str, to: &str) -> Result<(), String> {
    let path = dir.join(name);
    match std::os::unix::fs::symlink(to, &path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("link {}: {e}", path.display())),
    }
    let tmp = dir.join(format!(".tmp.{}.{name}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(to, &tmp).map_err(|e| format!("link {}: {e}", tmp.display()))?;
    if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
        remove_any(&path)?;
    }
    fs::rename(&tmp, &path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("rename {} into place: {e}", path.display())
    })
}

/// Writes `refs/<name>` holding `commit` (no newline: huggingface_hub reads it whole).
/// A ref that is already a file of the same length (a commit id is always 40 hex) is
/// overwritten in place ([`rewrite_in_place`]); a new one is a temporary file renamed
/// into place, so that it never appears empty.
fn write_ref(refs: &Path, name: &str, commit: &str) -> Result<(), String> {
    let path = refs.join(name);
    if rewrite_in_place(&path, commit.as_bytes()) {
        return Ok(());
    }
    let tmp = refs.join(format!(".tmp.{}.{name}", std::process::id()));
    let r = (|| {
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(REF_MODE)
            .open(&tmp)?;
        f.write_all(commit.as_bytes())?;
        // Whatever the umask: as readable as the store's folders.
        f.set_permissions(fs::Permissions::from_mode(REF_MODE))?;
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            fs::remove_dir_all(&path)?;
        }
        fs::rename(&tmp, &path)
    })();
    r.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("write {}: {e}", path.display())
    })
}

/// Overwrites the ref file `path` with `text` in place, with one `pwrite` at offset 0,
/// when it is a regular file (not a link, one name) of exactly `text`'s length. Returns
/// whether it did; otherwise the caller writes a new file and renames it over.
///
/// Why in place: `latest` and `main` move at every registration. A new file renamed
/// over the old one creates one inode and frees another per ref per version, and on an
/// ext4 without a journal (as here) every later inode allocation in the folder's group
/// walks past each inode freed in the last minutes (`find_inode_bit` ->
/// `recently_deleted`): a loop of 1,000 `register()` calls spent over half of the
/// daemon's CPU there, more with each version. In place, a moved ref costs no inode.
///
/// What a reader sees: the length never changes, so the file is never empty, short or
/// missing; `open` + `read` gets the old id or the new one. The one exception is a
/// `read` that runs during the kernel's copy of these 40 bytes into the page cache
/// (buffered reads take no lock against writes): it can get a mix of the two ids,
/// which names no snapshot, and huggingface_hub then fails the load as for an unknown
/// revision (a retry gets the new id). The window is the length of a 40-byte copy,
/// once per moved ref; a rename would close it at the cost above. The view is derived
/// data and says nothing the socket does not: the socket's answers are exact.
///
/// A crash: the overwrite stays within one block and never changes the size, so after
/// a crash the file holds the old id or the new one; either way the start-up check
/// reads every ref back and rewrites those that differ from the catalog's plan
/// ([`read_back`], [`apply`]), before the view is trusted again.
fn rewrite_in_place(path: &Path, text: &[u8]) -> bool {
    use std::os::unix::fs::{FileExt, MetadataExt};
    // O_NONBLOCK: a FIFO put there by hand must not hang the registrar; O_NOFOLLOW:
    // never write through a link.
    let Ok(f) = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return false;
    };
    let same = f
        .metadata()
        .is_ok_and(|m| m.is_file() && m.len() == text.len() as u64 && m.nlink() == 1);
    // A short write leaves a mix: the caller's rename then replaces the file whole.
    same && f.write_all_at(text, 0).is_ok()
}

/// Creates `dir` with the store's folder mode (0755 whatever the umask).
pub(super) fn make_dir(dir: &Path) -> Result<(), String> {
    fs::create_dir(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    crate::store::set_folder_mode(dir).map_err(|e| e.to_string())
}

/// `dir` as a folder: made when missing; a link or file in its place is replaced.
fn ensure_dir(dir: &Path) -> Result<(), String> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => {
            remove_any(dir)?;
            make_dir(dir)
        }
        Err(_) => make_dir(dir),
    }
}

/// Removes `path` whatever it is, never following a link; gone already is fine.
pub(super) fn remove_any(path: &Path) -> Result<(), String> {
    let r = match fs::symlink_metadata(path) {
        Err(_) => return Ok(()),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    };
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("remove {}: {e}", path.display()))
        }
        _ => Ok(()),
    }
}
