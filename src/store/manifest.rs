//! Per-version manifests (`.modelreg-version.json`) and tombstones (`<name>/.removed/v<N>.json`).
//!
//! The store describes itself: a manifest is written and fsynced in the staging folder
//! before the catalog names the version; a removed version leaves it as a tombstone, so
//! its number stays taken even if the catalog is lost ([`highest_in_store`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::links::check_no_link;
use super::{StagedFile, discard, set_folder_mode, version_dir, version_number};
use crate::error::{Error, Result};
use crate::fsutil::sync_dir;

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
    /// Where each metric not from the sidecar came from (`Version.metric_sources`).
    #[serde(
        default,
        skip_serializing_if = "crate::registry::compact::SortedMap::is_empty"
    )]
    pub metric_sources: crate::registry::compact::SortedMap<String>,
    /// Facts read from the files' headers (`Version.extracted`): kept here so that a
    /// catalog rebuilt from the store keeps them.
    #[serde(default, skip_serializing_if = "crate::registry::Metadata::is_empty")]
    pub extracted: crate::registry::Metadata,
    /// Where the version came from (`Version.provenance`).
    #[serde(default, skip_serializing_if = "crate::registry::Metadata::is_empty")]
    pub provenance: crate::registry::Metadata,
}

impl Manifest {
    /// A manifest that says only which version it is: all a tombstone needs to keep the
    /// number taken (and the base of the ones rebuilt by hashing a folder).
    pub fn minimal(name: &str, version: u32) -> Self {
        Manifest {
            format: MANIFEST_FORMAT,
            name: name.to_string(),
            version,
            kind: Default::default(),
            registered_at: String::new(),
            source: String::new(),
            files: vec![],
            metrics: Default::default(),
            metadata: Default::default(),
            metric_sources: Default::default(),
            extracted: Default::default(),
            provenance: Default::default(),
        }
    }
}

/// Writes `m` as the manifest of the (staging) folder `dir`: fsynced, read-only, and the
/// folder fsynced, so it is durable before the catalog names the version. It is readable
/// by no one the stored files are not readable by (the read bits they all share).
pub fn write_manifest(dir: &Path, m: &Manifest) -> Result<()> {
    let path = create_manifest(dir, m)?;
    File::open(&path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("fsync", &path, e))?;
    sync_dir(dir)
}

/// Writes `m` as the manifest of `dir`, read-only, without waiting for it to reach the
/// disk (see [`super::seal`], which fsyncs it with the rest of the staged version);
/// returns its path.
pub(super) fn create_manifest(dir: &Path, m: &Manifest) -> Result<PathBuf> {
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
        .map_err(|e| Error::io("write", &path, e))?;
    // Set explicitly: the umask does not decide who may read it.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("make read-only", &path, e))?;
    Ok(path)
}

/// Writes `m` as the manifest of the published version folder `dir` when it has none
/// (team mode: a version registered on another host, once all its files are fetched
/// here): written to a hidden temp file beside it with the mode [`create_manifest`]
/// gives (the read bits its files share), fsynced, renamed into place, and the folder
/// fsynced, so a reader never finds a partial manifest. Returns whether it wrote one
/// (not when there is one, nor when `dir` is not a folder).
pub fn place_manifest(dir: &Path, m: &Manifest) -> Result<bool> {
    let path = dir.join(MANIFEST);
    // A version of no files has no folder to describe (nor a stored one to keep).
    if fs::symlink_metadata(&path).is_ok() || !dir.is_dir() {
        return Ok(false);
    }
    let text = serde_json::to_vec_pretty(m).map_err(|e| Error::Other(e.to_string()))?;
    let mode = m.files.iter().fold(0o444, |acc, f| {
        fs::metadata(dir.join(&f.rel)).map_or(0o400, |md| md.permissions().mode()) & acc
    }) | 0o400;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!("{MANIFEST}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| Error::io("create a temp file in", dir, e))?;
    tmp.write_all(&text)
        .map_err(|e| Error::io("write", tmp.path(), e))?;
    let f = tmp.as_file();
    f.set_permissions(fs::Permissions::from_mode(mode))
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io("make read-only and fsync", tmp.path(), e))?;
    tmp.persist(&path)
        .map_err(|e| Error::io("rename into place", &path, e.error))?;
    sync_dir(dir)?;
    Ok(true)
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

/// What one listing of a model's folder found ([`highest_in_store_since`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    /// The folder's link count, taken just before the listing: 2 plus its subfolders on
    /// ext4, xfs and tmpfs.
    pub nlink: u64,
    /// The highest number found ([`highest_in_store`]).
    pub highest: u32,
}

/// [`highest_in_store`], without listing the folder again when its link count is what
/// `expected` says (a listing taken earlier, with the daemon's own `v<N>` folders
/// published since added to its count): no folder came or went since, so the highest
/// number is the same. Returns the highest number and what to expect next time (`None`
/// where the count says nothing: no folder yet, or a file system that always reports
/// 1 for folders, as btrfs does).
///
/// Why: a model's folder holds a name per version, and listing it for every new version
/// (to notice a `v<N>` folder put there by hand while running) cost a tenth of the
/// daemon's CPU in a loop of 1,000 `register()` calls, more with each version. A folder
/// put there by hand raises the count, so it is still noticed by the next job. Not
/// noticed: one folder added and another removed by hand between two jobs (the count
/// is the same); the next listing (after any other change of the count, or a restart)
/// finds it, and publishing never replaces an existing `v<N>` meanwhile. Tombstones
/// (`.removed/`) are only looked at when the folder is listed: the daemon writes them
/// for numbers the catalog holds.
pub fn highest_in_store_since(
    store: &Path,
    name: &str,
    expected: Option<Listed>,
) -> (u32, Option<Listed>) {
    use std::os::unix::fs::MetadataExt;
    let nlink = fs::symlink_metadata(store.join(name))
        .ok()
        .filter(|m| m.is_dir() && m.nlink() >= 2)
        .map(|m| m.nlink());
    if let (Some(now), Some(e)) = (nlink, expected)
        && now == e.nlink
    {
        return (e.highest, Some(e));
    }
    let highest = highest_in_store(store, name);
    (highest, nlink.map(|nlink| Listed { nlink, highest }))
}

/// Deletes version `n` of `name`, keeping its manifest (or a minimal one) as a tombstone
/// in `<name>/.removed/v<N>.json`, so its number is never given again even if the catalog
/// is lost.
pub fn retire(store: &Path, name: &str, n: u32) -> Result<()> {
    let dir = version_dir(store, name, n);
    if bury(store, name, n)? {
        sync_dir(&store.join(name).join(TOMBSTONES))?;
    }
    discard(&dir)
}

/// Keeps version `n`'s manifest (or a minimal one) as its tombstone
/// `<name>/.removed/v<N>.json`, leaving the rest of its folder where it is; returns
/// whether a tombstone was made (the folder is there and had none yet). Not fsynced: the
/// caller syncs `.removed` once for all it buried (the catalog's record, durable before
/// any of this, already keeps the number taken).
pub(super) fn bury(store: &Path, name: &str, n: u32) -> Result<bool> {
    let dir = version_dir(store, name, n);
    let graves = store.join(name).join(TOMBSTONES);
    let grave = graves.join(format!("v{n}.json"));
    check_no_link(store, &dir)?;
    check_no_link(store, &graves)?;
    if !dir.exists() || grave.exists() {
        return Ok(false);
    }
    if !graves.is_dir() {
        fs::create_dir_all(&graves).map_err(|e| Error::io("create folder", &graves, e))?;
        set_folder_mode(&graves)?;
    }
    let manifest = dir.join(MANIFEST);
    match fs::rename(&manifest, &grave) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Stored before manifests existed: the number is what matters.
            let m = Manifest::minimal(name, n);
            let text = serde_json::to_vec_pretty(&m).map_err(|e| Error::Other(e.to_string()))?;
            fs::write(&grave, text).map_err(|e| Error::io("write", &grave, e))?;
            fs::set_permissions(&grave, fs::Permissions::from_mode(0o400))
                .map_err(|e| Error::io("make read-only", &grave, e))?;
        }
        Err(e) => return Err(Error::io("keep tombstone", &grave, e)),
    }
    Ok(true)
}
