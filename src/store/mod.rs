//! The immutable store `models/<name>/v<N>/...`: staged, hashed copies published by rename, self-describing on disk.
//!
//! Copies (never moves) source files, hashing them with SHA-256 in the same pass, into a
//! staging folder `models/.staging/v<N>.<random>.<name>`, read-only; [`seal`] adds the
//! manifest and fsyncs the files, the folders and `.staging` in one parallel round. Only
//! after the catalog names the version
//! is the staging folder renamed to `v<N>` ([`publish`]); a crash in between is rolled
//! forward by [`recover`], which also deletes staging folders the catalog never named.
//! Knows nothing of YAML or sockets.
//!
//! The store describes itself: each version folder carries a [`Manifest`]
//! (`.modelreg-version.json`: name, number, per-file SHA-256 and size, time, metrics),
//! written and fsynced in the staging folder before the catalog names the version. A
//! removed version leaves its manifest in `<name>/.removed/v<N>.json`. So version numbers
//! can be allocated above everything the store holds ([`highest_in_store`]), a catalog
//! that lost versions is noticed ([`audit`]) and rebuilt ([`rebuild`]), and publishing
//! never replaces an existing `v<N>` ([`publish`] renames with RENAME_NOREPLACE).
//!
//! By file: `staging` (stage, publish, recover), `seal` (the staged version made durable
//! in one round of fsyncs), `copy` (one file copied and hashed),
//! `manifest` (manifests and tombstones), `rebuild` (audit and rebuild from disk),
//! `links` (never through a link; latest, best and alias links), `dedup` (a file already
//! stored for the model is hard-linked, not kept twice, and when found before copying,
//! only read), `compare` (its bytes compared with the stored file's first; damaged stored
//! files reported), `trash` (removed versions' folders moved aside at once, deleted by a
//! worker); here, the layout and
//! the modes every folder and file of the store gets.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
// `v<N>` -> N: the registry's one rule for version numbers, also for folder names.
use crate::registry::parse_version_number as version_number;

mod compare;
mod copy;
mod dedup;
mod links;
mod manifest;
mod rebuild;
mod seal;
mod staging;
pub mod trash;

pub use compare::{Damaged, staged_equals_version};
pub use copy::hash_file;
pub use dedup::{Deduped, Stored, link_duplicates};
pub use links::{check_no_link, linked_folders, refresh_links};
pub use manifest::{
    Listed, MANIFEST, MANIFEST_FORMAT, Manifest, TOMBSTONES, highest_in_store,
    highest_in_store_since, numbers_in_store, place_manifest, read_manifest, retire,
    write_manifest,
};
pub use rebuild::{Rebuilt, audit, rebuild};
pub use seal::{Beside, beside, seal};
pub use staging::{
    OpenSource, Recovery, Staged, StagedFile, discard, publish, recover, stage_opened,
    stage_reusing,
};
#[cfg(test)]
pub(crate) use staging::{stage, stage_sharing};

/// Re-exported: the tests and the registrar hash small contents with it.
pub use crate::fsutil::sha256_hex;

/// The folder under the store where versions are staged (one folder, so that start-up
/// recovery reads a single directory however many models there are).
pub const STAGING: &str = ".staging";

/// The folder of version `n` of `name`.
pub fn version_dir(store: &Path, name: &str, n: u32) -> PathBuf {
    store.join(name).join(format!("v{n}"))
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
