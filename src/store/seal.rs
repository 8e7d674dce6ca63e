//! Making a staged version durable in one round of parallel fsyncs, before the catalog names it.
//!
//! Staging writes without waiting for the disk: the copies, then (here) the manifest. Only
//! [`seal`] waits, once, for everything the version needs after a power cut: the data and
//! inode of each copy and of the manifest, and the entries of every folder of the staging
//! tree and of `.staging` itself. None of these has to reach the disk before another —
//! nothing names the staging folder until the catalog's journal record does, and that is
//! written only after `seal` returns; a crash before then leaves a staging folder the
//! catalog does not name, which start-up deletes. So the fsyncs are issued together, on
//! a few threads, and the filesystem can complete them in one journal commit instead of
//! one after another (six in a row per version before: ~6 commits, each 0.3–30 ms on a
//! busy disk).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::manifest::{Manifest, create_manifest};
use super::staging::Staged;
use crate::error::{Error, Result};

/// At most this many fsyncs wait at once (threads of one seal).
const MAX_PARALLEL: usize = 8;

/// Writes `manifest` into the staged version and makes the version durable: every copy
/// staging wrote, the manifest, and every folder of the staging tree and `.staging`,
/// fsynced together. After it returns, a journal record may name the version.
pub fn seal(staged: &Staged, manifest: &Manifest) -> Result<()> {
    let manifest = create_manifest(&staged.dir, manifest)?;
    let mut paths: Vec<PathBuf> = staged.unsynced.clone();
    paths.push(manifest);
    // Every folder of the tree (its entries: copies, links, the manifest, sub-folders)
    // and `.staging` (the staging folder's own entry).
    let mut dirs: Vec<PathBuf> = staged
        .files
        .iter()
        .flat_map(|f| Path::new(&f.rel).ancestors().skip(1))
        .filter(|a| !a.as_os_str().is_empty())
        .map(|a| staged.dir.join(a))
        .collect();
    dirs.sort();
    dirs.dedup();
    paths.extend(dirs);
    paths.push(staged.dir.clone());
    if let Some(staging) = staged.dir.parent() {
        paths.push(staging.to_path_buf());
    }
    fsync_all(&paths)
}

/// fsyncs every path of `paths` (files or folders), several at a time; the first error,
/// if any, once all have been tried.
pub(super) fn fsync_all(paths: &[PathBuf]) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let work = || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(p) = paths.get(i) else { return };
            // Any descriptor of the inode will do: fsync is of the file, not of the handle.
            let r = std::fs::File::open(p).and_then(|f| f.sync_all());
            if let Err(e) = r {
                let mut slot = failed.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert(Error::io("fsync", p, e));
            }
        }
    };
    let threads = paths.len().min(MAX_PARALLEL);
    std::thread::scope(|s| {
        for _ in 1..threads {
            s.spawn(work);
        }
        work();
    });
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
