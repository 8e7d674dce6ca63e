//! The immutable store: `models/<name>/v<N>/...`. Copies (never moves) source files,
//! hashing them with SHA-256 in the same pass, into a staging folder
//! `models/.staging/v<N>.<random>.<name>`; files are fsynced and made read-only, the
//! folder and `.staging` fsynced. Only after the catalog names the version is the staging folder renamed
//! to `v<N>` ([`publish`]); a crash in between is rolled forward by [`recover`], which
//! also deletes staging folders the catalog never named. Knows nothing of YAML or sockets.
//!
//! The store describes itself: each version folder carries a [`Manifest`]
//! (`.modelreg-version.json`: name, number, per-file SHA-256 and size, time, metrics),
//! written and fsynced in the staging folder before the catalog names the version. A
//! removed version leaves its manifest in `<name>/.removed/v<N>.json`. So version numbers
//! can be allocated above everything the store holds ([`highest_in_store`]), a catalog
//! that lost versions is noticed ([`audit`]) and rebuilt ([`rebuild`]), and publishing
//! never replaces an existing `v<N>` ([`publish`] renames with RENAME_NOREPLACE).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::registry::Catalog;
use crate::fsutil::{hex, sync_dir};
/// Re-exported: the tests and the registrar hash small contents with it.
pub use crate::fsutil::sha256_hex;

/// The chunk size of the copy pipeline.
const CHUNK: usize = 1 << 20;
/// Files at least this big are copied by a reader/hasher thread feeding a writer thread.
const PIPELINE_THRESHOLD: u64 = 4 * CHUNK as u64;
/// The folder under the store where versions are staged (one folder, so that start-up
/// recovery reads a single directory however many models there are).
pub const STAGING: &str = ".staging";

/// The folder of version `n` of `name`.
pub fn version_dir(store: &Path, name: &str, n: u32) -> PathBuf {
    store.join(name).join(format!("v{n}"))
}

/// Fails when `path`, beneath `store`, leads through a symbolic link: every component
/// after the store's own path is looked at without following links (a missing one ends
/// the check: absence is the caller's business). Nothing in the store is ever read,
/// written or deleted through a link: a model folder `models/<name>` that is a link to
/// /tmp/victim would otherwise have start-up delete /tmp/victim/v1. The daemon's own
/// links (latest, best, aliases) are never on such a path: they are only ever replaced.
pub fn check_no_link(store: &Path, path: &Path) -> Result<()> {
    let Ok(rel) = path.strip_prefix(store) else {
        return Ok(());
    };
    let mut p = store.to_path_buf();
    for c in rel.components() {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => return Err(Error::Other(linked(&p))),
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// Why a link in the store is refused.
fn linked(p: &Path) -> String {
    let to = fs::read_link(p)
        .map(|t| format!(" (to {})", t.display()))
        .unwrap_or_default();
    format!(
        "{} is a symbolic link{to}; the store never follows links: nothing is read, written \
         or deleted through it. Put the real folder there, or remove the link",
        p.display()
    )
}

/// Links in the store where a folder belongs: a model folder, `v<N>`, `.removed` or
/// `.staging` that is a symbolic link (each a problem for `status`), as messages.
pub fn linked_folders(store: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let entries = |d: &Path| -> Vec<(PathBuf, String, fs::FileType)> {
        fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let t = e.file_type().ok()?;
                Some((e.path(), e.file_name().to_string_lossy().into_owned(), t))
            })
            .collect()
    };
    for (path, _, t) in entries(store) {
        if t.is_symlink() {
            out.push((path.clone(), linked(&path)));
        } else if t.is_dir() {
            for (p, name, t) in entries(&path) {
                if t.is_symlink() && (name == TOMBSTONES || version_number(&name).is_some()) {
                    out.push((p.clone(), linked(&p)));
                }
            }
        }
    }
    out.sort();
    out
}

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
}

/// Copies `files` (source path, path relative to the version folder) into a new staging
/// folder for version `n` of `name`, hashing while copying. `cancel` aborts between chunks;
/// on any error or cancellation nothing is left behind.
pub fn stage(
    store: &Path,
    name: &str,
    n: u32,
    files: &[(PathBuf, String)],
    cancel: &AtomicBool,
) -> Result<Staged> {
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
    let done = AtomicU64::new(0);
    stage_opened(
        store,
        name,
        n,
        &rels,
        &mut open,
        &mut |_, _| Ok(()),
        cancel,
        &done,
    )
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

/// The mode of a stored copy of a file whose mode is `source`: read-only, readable by
/// whom the source was readable (its class bits `& 0o444`) and by the daemon's own user,
/// who owns the copy and must read it back to verify it. Never writable by anyone.
pub fn stored_mode(source: u32) -> u32 {
    (source & 0o444) | 0o400
}

/// The mode of every folder the store creates, set explicitly whatever the umask: never
/// group- or world-writable, so that nobody but the daemon's user adds, removes or renames
/// anything in it. Files in it keep their own, possibly narrower, mode.
pub const FOLDER_MODE: u32 = 0o755;

/// Sets [`FOLDER_MODE`] on a folder the store created.
pub fn set_folder_mode(dir: &Path) -> Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(FOLDER_MODE))
        .map_err(|e| Error::io("set the mode of", dir, e))
}

/// Like [`stage`], but each source is opened by `open(i)` just before it is copied (so a
/// folder of many files holds one descriptor at a time, and the check made at the open
/// is as late as possible), every byte is read through that handle, and `check(i, &file)`
/// runs after the copy through the same handle (was it written meanwhile?). An error from
/// either, like any other, leaves nothing behind. `done` counts the bytes copied so far
/// (for `status`), added to once per chunk.
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
        let (sha256, size) = copy_and_hash_from(
            &mut source.file,
            &source.shown,
            &dst,
            source.mode,
            cancel,
            done,
        )?;
        check(i, &source.file)?;
        staged.push(StagedFile {
            rel: rel.clone(),
            sha256,
            size,
        });
    }
    // Deepest first, so that each folder is synced after the entries in it.
    made_dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    made_dirs.dedup();
    for d in &made_dirs {
        set_folder_mode(d)?;
        sync_dir(d)?;
    }
    sync_dir(dir.path())?;
    sync_dir(&staging)?;
    Ok(Staged {
        dir: dir.keep(),
        final_dir: version_dir(store, name, n),
        files: staged,
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
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes());
    let (Ok(a), Ok(b)) = (c(from), c(to)) else {
        return Err(Error::Other(format!("{}: NUL in path", to.display())));
    };
    // SAFETY: two valid NUL-terminated paths.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EEXIST) {
        return Err(Error::Other(format!(
            "{} already exists in the store; it is never overwritten (staged copy kept at {})",
            to.display(),
            from.display()
        )));
    }
    Err(Error::io("rename into place", to, e))
}

/// The manifest in every version folder.
pub const MANIFEST: &str = ".modelreg-version.json";
/// The folder, in a model's folder, keeping the manifests of removed versions.
pub const TOMBSTONES: &str = ".removed";
/// The manifest format this build writes.
pub const MANIFEST_FORMAT: u32 = 1;

/// What a version folder says about itself; see the module docs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The model name.
    pub name: String,
    /// N in `v<N>`.
    pub version: u32,
    /// File or folder.
    #[serde(default)]
    pub kind: crate::registry::Kind,
    /// When it was registered (RFC 3339, UTC).
    pub registered_at: String,
    /// The inbox entry it was copied from, relative to the root.
    #[serde(default)]
    pub source: String,
    /// Its files: path relative to the version folder, SHA-256, size.
    pub files: Vec<StagedFile>,
    /// Metrics from the sidecar when it was registered (later edits are in the catalog).
    #[serde(default)]
    pub metrics: crate::registry::Metrics,
    /// Metadata from the sidecar when it was registered.
    #[serde(default)]
    pub metadata: crate::registry::Metadata,
}

/// Writes `m` as the manifest of the (staging) folder `dir`: fsynced, read-only, and the
/// folder fsynced, so it is durable before the catalog names the version. It is readable
/// by no one the stored files are not readable by (the read bits they all share).
pub fn write_manifest(dir: &Path, m: &Manifest) -> Result<()> {
    let path = dir.join(MANIFEST);
    let text = serde_json::to_vec_pretty(m).map_err(|e| Error::Other(e.to_string()))?;
    let mode = m.files.iter().fold(0o444, |acc, f| {
        fs::metadata(dir.join(&f.rel)).map_or(0o400, |md| md.permissions().mode()) & acc
    }) | 0o400;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io("create", &path, e))?;
    f.write_all(&text)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io("write", &path, e))?;
    // Set explicitly: the umask does not decide who may read it.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("make read-only", &path, e))?;
    sync_dir(dir)
}

/// The manifest at `path`: `Ok(None)` when there is none.
pub fn read_manifest(path: &Path) -> Result<Option<Manifest>> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| Error::Other(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// `v<N>` -> N.
fn version_number(s: &str) -> Option<u32> {
    let d = s.strip_prefix('v')?;
    if d.is_empty() || d.starts_with('0') || !d.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    d.parse().ok()
}

/// Version numbers present in the store for `name`: `v<N>` folders (and anything else
/// so named) and tombstones of removed versions, `(number, removed)`, ascending.
pub fn numbers_in_store(store: &Path, name: &str) -> Vec<(u32, bool)> {
    let dir = store.join(name);
    let mut out = Vec::new();
    let names = |d: &Path| -> Vec<String> {
        fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    for f in names(&dir) {
        if let Some(n) = version_number(&f) {
            out.push((n, false));
        }
    }
    for f in names(&dir.join(TOMBSTONES)) {
        if let Some(n) = f.strip_suffix(".json").and_then(version_number) {
            out.push((n, true));
        }
    }
    out.sort();
    out
}

/// The highest version number the store holds for `name` (0 when none): new numbers
/// are allocated above it as well as above the catalog's.
pub fn highest_in_store(store: &Path, name: &str) -> u32 {
    numbers_in_store(store, name).last().map_or(0, |(n, _)| *n)
}

/// Deletes version `n` of `name`, keeping its manifest (or a minimal one) as a tombstone
/// in `<name>/.removed/v<N>.json`, so its number is never given again even if the catalog
/// is lost.
pub fn retire(store: &Path, name: &str, n: u32) -> Result<()> {
    let dir = version_dir(store, name, n);
    let graves = store.join(name).join(TOMBSTONES);
    let grave = graves.join(format!("v{n}.json"));
    check_no_link(store, &dir)?;
    check_no_link(store, &graves)?;
    if dir.exists() && !grave.exists() {
        if !graves.is_dir() {
            fs::create_dir_all(&graves).map_err(|e| Error::io("create folder", &graves, e))?;
            set_folder_mode(&graves)?;
        }
        let manifest = dir.join(MANIFEST);
        match fs::rename(&manifest, &grave) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Stored before manifests existed: the number is what matters.
                let m = Manifest {
                    format: MANIFEST_FORMAT,
                    name: name.to_string(),
                    version: n,
                    kind: Default::default(),
                    registered_at: String::new(),
                    source: String::new(),
                    files: vec![],
                    metrics: Default::default(),
                    metadata: Default::default(),
                };
                let text =
                    serde_json::to_vec_pretty(&m).map_err(|e| Error::Other(e.to_string()))?;
                fs::write(&grave, text).map_err(|e| Error::io("write", &grave, e))?;
                fs::set_permissions(&grave, fs::Permissions::from_mode(0o400))
                    .map_err(|e| Error::io("make read-only", &grave, e))?;
            }
            Err(e) => return Err(Error::io("keep tombstone", &grave, e)),
        }
        sync_dir(&graves)?;
    }
    discard(&dir)
}

/// Versions the store holds that the catalog does not know: `name/v<N>` folders it does
/// not name, and tombstones above its highest number. Any of these means the catalog
/// lost versions (deleted, restored from an old copy): starting would reuse numbers.
pub fn audit(store: &Path, catalog: &Catalog) -> Vec<String> {
    let mut out = Vec::new();
    let mut models: Vec<String> = fs::read_dir(store)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    models.sort();
    for name in models {
        let m = catalog.models.get(&name);
        for (n, removed) in numbers_in_store(store, &name) {
            let known = m.is_some_and(|m| {
                if removed {
                    n <= m.highest
                } else {
                    m.find(n).is_some()
                }
            });
            if !known {
                out.push(if removed {
                    format!("{name}/v{n} (removed)")
                } else {
                    format!("{name}/v{n}")
                });
            }
        }
    }
    out
}

/// What [`rebuild`] did.
#[derive(Debug, Default)]
pub struct Rebuilt {
    /// Versions added from their manifests.
    pub from_manifest: Vec<String>,
    /// Versions without a manifest (stored before manifests existed): files hashed;
    /// source, time, metrics and metadata unknown.
    pub hashed: Vec<String>,
    /// Tombstones added (removed versions), so their numbers stay taken.
    pub tombstones: Vec<String>,
    /// Folders that could not be read, left out (and untouched).
    pub unreadable: Vec<String>,
}

/// Adds to `catalog` every version the store holds that it lacks, from the manifests (or,
/// without one, by hashing the folder). `rel` turns a stored path into the catalog's form.
/// Nothing in the store is changed.
pub fn rebuild(store: &Path, catalog: &mut Catalog, rel: &dyn Fn(&Path) -> String) -> Rebuilt {
    let mut report = Rebuilt::default();
    let lost: Vec<String> = audit(store, catalog);
    for item in lost {
        let removed = item.ends_with(" (removed)");
        let key = item.trim_end_matches(" (removed)");
        let Some((name, v)) = key.rsplit_once('/') else {
            continue;
        };
        let Some(n) = version_number(v) else { continue };
        let dir = version_dir(store, name, n);
        let manifest_path = if removed {
            store.join(name).join(TOMBSTONES).join(format!("v{n}.json"))
        } else {
            dir.join(MANIFEST)
        };
        let manifest = match read_manifest(&manifest_path) {
            Ok(m) => m,
            Err(e) => {
                report.unreadable.push(format!("{key}: {e}"));
                continue;
            }
        };
        let mut version = match manifest {
            Some(m) => crate::registry::Version {
                number: n,
                kind: m.kind,
                files: m
                    .files
                    .iter()
                    .map(|f| crate::registry::StoredFile {
                        path: rel(&dir.join(&f.rel)),
                        sha256: f.sha256.clone(),
                        size: f.size,
                    })
                    .collect(),
                source: m.source,
                registered_at: m.registered_at,
                metrics: m.metrics,
                metadata: m.metadata,
                sidecar: None,
                metrics_history: vec![],
                deprecated: None,
                removed: None,
            },
            None if removed => continue,
            None => match hash_folder(&dir, rel) {
                Ok(v) => {
                    report.hashed.push(key.to_string());
                    crate::registry::Version { number: n, ..v }
                }
                Err(e) => {
                    report.unreadable.push(format!("{key}: {e}"));
                    continue;
                }
            },
        };
        if removed {
            version.removed = Some(crate::registry::Mark {
                at: "unknown".into(),
                reason: Some("removed before registry.yaml was rebuilt".into()),
                uid: None,
            });
            report.tombstones.push(key.to_string());
        } else if !report.hashed.iter().any(|h| h == key) {
            report.from_manifest.push(key.to_string());
        }
        let model = std::sync::Arc::make_mut(catalog.models.entry(name.to_string()).or_default());
        if model.find(n).is_none() {
            model.versions.push(version);
            model.versions.sort_by_key(|v| v.number);
        }
        model.highest = model.highest.max(n);
    }
    report
}

/// A version record for a folder without a manifest: every file (hidden ones aside)
/// hashed; a single file at the top makes a file version.
fn hash_folder(dir: &Path, rel: &dyn Fn(&Path) -> String) -> Result<crate::registry::Version> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>, dirs: &mut usize) -> Result<()> {
        let mut entries: Vec<_> = fs::read_dir(d)
            .map_err(|e| Error::io("list", d, e))?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let t = e
                .file_type()
                .map_err(|err| Error::io("stat", e.path(), err))?;
            if t.is_dir() {
                *dirs += 1;
                walk(&e.path(), out, dirs)?;
            } else if t.is_file() {
                out.push(e.path());
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    let mut dirs = 0;
    walk(dir, &mut files, &mut dirs)?;
    let mut stored = Vec::new();
    for f in &files {
        let (sha256, size) = hash_file(f)?;
        stored.push(crate::registry::StoredFile {
            path: rel(f),
            sha256,
            size,
        });
    }
    let mtime = fs::metadata(dir)
        .and_then(|m| m.modified())
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default();
    Ok(crate::registry::Version {
        number: 0,
        kind: if files.len() == 1 && dirs == 0 {
            crate::registry::Kind::File
        } else {
            crate::registry::Kind::Folder
        },
        files: stored,
        source: "unknown (rebuilt from the store)".into(),
        registered_at: mtime,
        metrics: Default::default(),
        metadata: Default::default(),
        sidecar: None,
        metrics_history: vec![],
        deprecated: None,
        removed: None,
    })
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

/// Removes group and world write from every folder of the store, and any write bit from
/// its files (a store made by an older version under a loose umask); returns how many
/// were changed. Symlinks are left alone (their mode means nothing).
pub fn tighten_modes(store: &Path) -> usize {
    let mut changed = 0;
    let mut dirs = vec![store.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(meta) = fs::symlink_metadata(&dir) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir()
            && mode & 0o022 != 0
            && fs::set_permissions(&dir, fs::Permissions::from_mode(mode & !0o022)).is_ok()
        {
            changed += 1;
        }
        let Ok(rd) = fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                dirs.push(e.path());
            } else if t.is_file()
                && let Ok(m) = e.metadata()
                && m.permissions().mode() & 0o222 != 0
                && fs::set_permissions(
                    e.path(),
                    fs::Permissions::from_mode(m.permissions().mode() & 0o7555),
                )
                .is_ok()
            {
                changed += 1;
            }
        }
    }
    changed
}

/// Copies `src` to the new file `dst`, returning its SHA-256 and size. The source is read
/// once: for large files a reader thread hashes each chunk and hands it to this thread,
/// which writes it, so reading, hashing and writing overlap. `dst` is fsynced and made
/// read-only ([`stored_mode`] of the source's mode).
pub fn copy_and_hash(src: &Path, dst: &Path, cancel: &AtomicBool) -> Result<(String, u64)> {
    let mut input = File::open(src).map_err(|e| Error::io("open", src, e))?;
    let mode = input
        .metadata()
        .map_err(|e| Error::io("stat", src, e))?
        .permissions()
        .mode();
    copy_and_hash_from(&mut input, src, dst, mode, cancel, &AtomicU64::new(0))
}

/// [`copy_and_hash`] from an open handle (`src` only names it in messages); the copy
/// gets [`stored_mode`] of `mode`. `done` grows by each chunk written (a relaxed add, no
/// system call), so `status` can show the progress of a long copy.
pub fn copy_and_hash_from(
    input: &mut File,
    src: &Path,
    dst: &Path,
    mode: u32,
    cancel: &AtomicBool,
    done: &AtomicU64,
) -> Result<(String, u64)> {
    let len = input
        .metadata()
        .map_err(|e| Error::io("stat", src, e))?
        .len();
    // Read as well as write: large files are hashed by reading the copy back.
    let mut out = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)
        .map_err(|e| Error::io("create", dst, e))?;
    let t0 = std::time::Instant::now();
    let (digest, size) = if len >= PIPELINE_THRESHOLD {
        match copy_in_kernel(input, &out, dst, cancel, done) {
            Ok(r) => r,
            Err(KernelCopy::Unsupported) => {
                copy_pipelined(input, src, &mut out, dst, cancel, done)?
            }
            Err(KernelCopy::Failed(e)) => return Err(e),
        }
    } else {
        copy_inline(input, src, &mut out, dst, cancel, done)?
    };
    let copied = t0.elapsed();
    // Through the handle, and never wider than the source: a hard link to a private
    // file stays private in the store. Before the fsync, so the mode is durable too.
    out.set_permissions(fs::Permissions::from_mode(stored_mode(mode)))
        .map_err(|e| Error::io("make read-only", dst, e))?;
    out.sync_all().map_err(|e| Error::io("fsync", dst, e))?;
    tracing::debug!(bytes = size, ?copied, fsync = ?(t0.elapsed() - copied), "copied {}", dst.display());
    Ok((digest, size))
}

fn cancelled(cancel: &AtomicBool) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        Err(Error::Cancelled)
    } else {
        Ok(())
    }
}

fn copy_inline(
    input: &mut File,
    src: &Path,
    out: &mut File,
    dst: &Path,
    cancel: &AtomicBool,
    done: &AtomicU64,
) -> Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        cancelled(cancel)?;
        let n = read_full(input, &mut buf).map_err(|e| Error::io("read", src, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| Error::io("write", dst, e))?;
        size += n as u64;
        done.fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok((hex(&hasher.finalize()), size))
}

fn copy_pipelined(
    input: &mut File,
    src: &Path,
    out: &mut File,
    dst: &Path,
    cancel: &AtomicBool,
    done: &AtomicU64,
) -> Result<(String, u64)> {
    use std::sync::Arc;
    // Three stages on three threads: a reader fills 1 MiB buffers and hands each to the
    // hasher and to the writer (this thread); whichever of the two finishes with a buffer
    // last returns it to the reader. So the source is read once, reading, hashing and
    // writing overlap, and at most DEPTH + 1 buffers exist.
    const DEPTH: usize = 6;
    let (free_tx, free_rx) = mpsc::sync_channel::<Vec<u8>>(DEPTH + 1);
    let (hash_tx, hash_rx) = mpsc::sync_channel::<(Arc<Vec<u8>>, usize)>(DEPTH);
    let (write_tx, write_rx) = mpsc::sync_channel::<(Arc<Vec<u8>>, usize)>(DEPTH);
    for _ in 0..=DEPTH {
        let _ = free_tx.send(vec![0u8; CHUNK]);
    }
    let recycle = |buf: Arc<Vec<u8>>, free: &mpsc::SyncSender<Vec<u8>>| {
        if let Ok(v) = Arc::try_unwrap(buf) {
            let _ = free.try_send(v);
        }
    };
    std::thread::scope(|s| {
        let reader = s.spawn(move || -> Result<u64> {
            let mut size = 0u64;
            while let Ok(mut buf) = free_rx.recv() {
                cancelled(cancel)?;
                let n = read_full(input, &mut buf).map_err(|e| Error::io("read", src, e))?;
                if n == 0 {
                    break;
                }
                size += n as u64;
                let buf = Arc::new(buf);
                if hash_tx.send((buf.clone(), n)).is_err() || write_tx.send((buf, n)).is_err() {
                    // The writer failed; its error is the one reported.
                    break;
                }
            }
            Ok(size)
        });
        let free_for_hasher = free_tx.clone();
        let hasher = s.spawn(move || {
            let mut h = Sha256::new();
            for (buf, n) in hash_rx.iter() {
                h.update(&buf[..n]);
                recycle(buf, &free_for_hasher);
            }
            hex(&h.finalize())
        });
        let mut write_err = None;
        let mut written = 0u64;
        let mut flushed = 0u64;
        for (buf, n) in write_rx.iter() {
            if let Err(e) = out.write_all(&buf[..n]) {
                write_err = Some(Error::io("write", dst, e));
                break;
            }
            written += n as u64;
            done.fetch_add(n as u64, Ordering::Relaxed);
            recycle(buf, &free_tx);
            // Start writeback of what is written so far, without waiting for it, so the
            // fsync at the end has little left to do.
            if written - flushed >= WRITEBACK_STEP {
                start_writeback(out, flushed, written - flushed);
                flushed = written;
            }
        }
        drop(write_rx);
        drop(free_tx);
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(Error::Other("copy reader thread panicked".into())));
        let digest = hasher
            .join()
            .map_err(|_| Error::Other("copy hasher thread panicked".into()));
        if let Some(e) = write_err {
            return Err(e);
        }
        let size = read?;
        Ok((digest?, size))
    })
}

enum KernelCopy {
    /// copy_file_range cannot copy between these files; nothing was written.
    Unsupported,
    Failed(Error),
}

/// Copies with copy_file_range (in the kernel, as `cp` does), starting writeback of each
/// chunk as it lands, while a second thread hashes the destination right behind the
/// copier, from the page cache. The source is read once, and the hash is by construction
/// that of the stored bytes.
fn copy_in_kernel(
    input: &File,
    out: &File,
    dst: &Path,
    cancel: &AtomicBool,
    done: &AtomicU64,
) -> std::result::Result<(String, u64), KernelCopy> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    const STEP: usize = 8 << 20;
    let (done_tx, done_rx) = mpsc::channel::<u64>();
    std::thread::scope(|s| {
        let hasher = s.spawn(move || -> std::io::Result<String> {
            let mut h = Sha256::new();
            let mut buf = vec![0u8; CHUNK];
            let mut hashed = 0u64;
            // Each message says how far the copy has got; hash up to there.
            for end in done_rx.iter() {
                while hashed < end {
                    let n = ((end - hashed) as usize).min(CHUNK);
                    out.read_exact_at(&mut buf[..n], hashed)?;
                    h.update(&buf[..n]);
                    hashed += n as u64;
                }
            }
            Ok(hex(&h.finalize()))
        });
        let mut copied = 0u64;
        let mut flushed = 0u64;
        let result = loop {
            if cancel.load(Ordering::Relaxed) {
                break Err(KernelCopy::Failed(Error::Cancelled));
            }
            // SAFETY: both fds are open; null offsets use and advance the file offsets.
            let n = unsafe {
                libc::copy_file_range(
                    input.as_raw_fd(),
                    std::ptr::null_mut(),
                    out.as_raw_fd(),
                    std::ptr::null_mut(),
                    STEP,
                    0,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                let unsupported = copied == 0
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                    );
                break Err(if unsupported {
                    KernelCopy::Unsupported
                } else {
                    KernelCopy::Failed(Error::io("copy", dst, e))
                });
            }
            if n == 0 {
                break Ok(());
            }
            copied += n as u64;
            done.fetch_add(n as u64, Ordering::Relaxed);
            let _ = done_tx.send(copied);
            if copied - flushed >= WRITEBACK_STEP {
                start_writeback(out, flushed, copied - flushed);
                flushed = copied;
            }
        };
        drop(done_tx);
        let digest = hasher
            .join()
            .map_err(|_| KernelCopy::Failed(Error::Other("hasher thread panicked".into())))?;
        result?;
        let digest = digest.map_err(|e| KernelCopy::Failed(Error::io("read back", dst, e)))?;
        Ok((digest, copied))
    })
}

/// How much is written before writeback of it is started.
const WRITEBACK_STEP: u64 = 8 << 20;

/// Asks the kernel to start writing `len` bytes at `offset` to disk, without waiting.
fn start_writeback(f: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open fd; failure only loses the head start.
    unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            offset as i64,
            len as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Reads until `buf` is full or the end of the file.
fn read_full(r: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Makes `<store>/<name>/<link>` a symlink to `v<N>` for each `(link, Some(N))`, and
/// removes links given as `(link, None)` and any other symlink in the model's folder
/// (aliases since removed). Each link is replaced atomically: a new symlink under a
/// temporary name, renamed over the old one, so a reader never finds it missing. One
/// link that cannot be updated does not stop the others: returns every link path looked
/// at with its error, if any.
pub fn refresh_links(
    store: &Path,
    name: &str,
    links: &[(String, Option<u32>)],
) -> Vec<(PathBuf, Option<Error>)> {
    let dir = store.join(name);
    let mut out = Vec::new();
    if let Err(e) = check_no_link(store, &dir) {
        out.push((dir, Some(e)));
        return out;
    }
    if !dir.is_dir() {
        return out;
    }
    for (link, target) in links {
        let path = dir.join(link);
        let r = (|| -> Result<()> {
            match target {
                Some(n) => {
                    let want = PathBuf::from(format!("v{n}"));
                    if fs::read_link(&path).ok().as_ref() == Some(&want) {
                        return Ok(());
                    }
                    let tmp = dir.join(format!(".{link}.{}.tmp", std::process::id()));
                    let _ = fs::remove_file(&tmp);
                    std::os::unix::fs::symlink(&want, &tmp)
                        .map_err(|e| Error::io("create symlink", &tmp, e))?;
                    fs::rename(&tmp, &path).map_err(|e| {
                        let _ = fs::remove_file(&tmp);
                        Error::io("replace symlink", &path, e)
                    })
                }
                None => {
                    if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
                        fs::remove_file(&path)
                            .map_err(|e| Error::io("remove symlink", &path, e))?;
                    }
                    Ok(())
                }
            }
        })();
        out.push((path, r.err()));
    }
    let keep: std::collections::BTreeSet<&str> = links.iter().map(|(l, _)| l.as_str()).collect();
    match fs::read_dir(&dir) {
        Err(e) => out.push((dir.clone(), Some(Error::io("list", &dir, e)))),
        Ok(rd) => {
            for e in rd.flatten() {
                let fname = e.file_name();
                let fname = fname.to_string_lossy();
                if e.file_type().is_ok_and(|t| t.is_symlink()) && !keep.contains(fname.as_ref()) {
                    let r = fs::remove_file(e.path())
                        .map_err(|err| Error::io("remove symlink", e.path(), err));
                    out.push((e.path(), r.err()));
                }
            }
        }
    }
    out
}

/// SHA-256 and size of a file, for verification.
pub fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut f = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = read_full(&mut f, &mut buf).map_err(|e| Error::io("read", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex(&hasher.finalize()), size))
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

#[cfg(test)]
mod tests {
    use super::*;
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
    fn user_space_pipeline_matches() {
        // The fallback when copy_file_range cannot copy between two filesystems.
        let tmp = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(3 * CHUNK + 777))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let src = tmp.path().join("s");
        fs::write(&src, &data).unwrap();
        let dst = tmp.path().join("d");
        let mut input = File::open(&src).unwrap();
        let mut out = File::create(&dst).unwrap();
        let (sha, size) = copy_pipelined(
            &mut input,
            &src,
            &mut out,
            &dst,
            &AtomicBool::new(false),
            &AtomicU64::new(0),
        )
        .unwrap();
        assert_eq!((sha, size), (sha256_hex(&data), data.len() as u64));
        assert_eq!(fs::read(&dst).unwrap(), data);
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
    fn manifests_tombstones_audit_and_rebuild() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("models");
        let src = tmp.path().join("m.pt");
        let no = AtomicBool::new(false);
        let stage_v = |n: u32, bytes: &[u8]| {
            fs::write(&src, bytes).unwrap();
            let s = stage(&store, "m", n, &[(src.clone(), "m.pt".into())], &no).unwrap();
            let m = Manifest {
                format: MANIFEST_FORMAT,
                name: "m".into(),
                version: n,
                kind: Default::default(),
                registered_at: "2026-01-01T00:00:00Z".into(),
                source: "pretrained_models/m.pt".into(),
                files: s.files.clone(),
                metrics: [("accuracy".to_string(), 0.5)].into(),
                metadata: Default::default(),
            };
            write_manifest(&s.dir, &m).unwrap();
            s
        };
        publish(&stage_v(1, b"one")).unwrap();
        publish(&stage_v(2, b"two")).unwrap();
        // An existing v2 is never replaced, not even by a rename.
        let again = stage_v(2, b"other");
        let e = publish(&again).unwrap_err().to_string();
        assert!(e.contains("never overwritten"), "{e}");
        assert_eq!(fs::read(store.join("m/v2/m.pt")).unwrap(), b"two");
        discard(&again.dir).unwrap();
        publish(&stage_v(3, b"three")).unwrap();
        retire(&store, "m", 3).unwrap();
        assert!(!store.join("m/v3").exists());
        assert_eq!(highest_in_store(&store, "m"), 3, "the tombstone counts");
        // A catalog that knows none of it: everything is reported, then rebuilt.
        let mut c = Catalog::default();
        assert_eq!(audit(&store, &c), vec!["m/v1", "m/v2", "m/v3 (removed)"]);
        let rel = |p: &Path| p.strip_prefix(tmp.path()).unwrap().display().to_string();
        let r = rebuild(&store, &mut c, &rel);
        assert_eq!(r.from_manifest, vec!["m/v1", "m/v2"]);
        assert_eq!(r.tombstones, vec!["m/v3"]);
        let m = &c.models["m"];
        assert_eq!(m.highest, 3);
        assert_eq!(m.versions.len(), 3);
        assert_eq!(m.versions[1].files[0].path, "models/m/v2/m.pt");
        assert_eq!(m.versions[1].files[0].sha256, sha256_hex(b"two"));
        assert_eq!(m.versions[1].metrics.get("accuracy"), Some(&0.5));
        assert!(m.versions[2].removed.is_some());
        assert!(audit(&store, &c).is_empty());
        // A version stored before manifests existed is rebuilt by hashing its files.
        fs::remove_file(store.join("m/v1").join(MANIFEST)).unwrap();
        let mut c = Catalog::default();
        let r = rebuild(&store, &mut c, &rel);
        assert_eq!(r.hashed, vec!["m/v1"]);
        assert_eq!(
            c.models["m"].versions[0].files[0].sha256,
            sha256_hex(b"one")
        );
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
        let mut model = crate::registry::Model::default();
        for n in [1, 2] {
            model.push(crate::registry::Version {
                number: n,
                kind: Default::default(),
                files: vec![],
                source: String::new(),
                registered_at: String::new(),
                metrics: Default::default(),
                metadata: Default::default(),
                sidecar: None,
                metrics_history: vec![],
                deprecated: None,
                removed: None,
            });
        }
        let mut c = Catalog::default();
        c.models.insert("m.v2".into(), Arc::new(model));
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
