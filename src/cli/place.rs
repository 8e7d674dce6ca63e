//! Placing a copy in the inbox: written under a hidden name, renamed into place (a folder
//! swapped with the one already there: `fsutil::rename_or_exchange`), and removed again
//! when interrupted.

use std::path::{Path, PathBuf};

use modelreg::client::ClientError;

use super::add::refuse;

/// A hidden name in the inbox for `entry` while it is written: the daemon ignores
/// names that start with a dot.
pub(super) fn hidden(inbox: &Path, entry: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    inbox.join(format!(".{entry}.{}-{nanos:08x}.tmp", std::process::id()))
}

/// Copies a folder recursively (following links, as `cp -rL` would).
pub(super) fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if std::fs::metadata(&src)?.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// Writes `tmp` with `write`, runs `ready` (which places the sidecar, if any), then
/// renames `tmp` to `dst`; removes `tmp` on any failure.
pub(super) fn place(
    tmp: &Path,
    dst: &Path,
    write: impl FnOnce(&Path) -> std::io::Result<()>,
    ready: impl FnOnce() -> Result<(), ClientError>,
) -> Result<(), ClientError> {
    // Interrupted (Ctrl-C, SIGTERM) while copying, the hidden copy would stay in the
    // inbox forever, ignored by the daemon: remove it, then exit as the signal would.
    let guard = interrupt_cleanup(tmp);
    let cannot = |e: std::io::Error| refuse(format!("cannot place {}: {e}", dst.display()));
    let result = write(tmp)
        .map_err(cannot)
        .and_then(|()| ready())
        .and_then(|()| modelreg::fsutil::rename_or_exchange(tmp, dst).map_err(cannot));
    if let Some(h) = guard {
        h.close();
    }
    if result.is_err() {
        remove_tmp(tmp);
    }
    result
}

pub(super) fn remove_tmp(tmp: &Path) {
    if tmp.is_dir() {
        let _ = std::fs::remove_dir_all(tmp);
    } else {
        let _ = std::fs::remove_file(tmp);
    }
}

/// Watches for SIGINT/SIGTERM while `tmp` is written: on one, removes `tmp` and exits
/// with 128 + the signal. `None` when the signals cannot be watched (the copy goes on).
pub(super) fn interrupt_cleanup(tmp: &Path) -> Option<signal_hook::iterator::Handle> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).ok()?;
    let handle = signals.handle();
    let tmp = tmp.to_path_buf();
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            remove_tmp(&tmp);
            std::process::exit(128 + sig);
        }
    });
    Some(handle)
}

/// What one inbox hand-over placed (the artifact, and the sidecar when one was
/// written), known by inode, so that only these are removed once the version is
/// registered: a later hand-over under the same name is another inode and stays.
pub(super) struct Placed(Vec<(PathBuf, Option<(u64, u64)>)>);

impl Placed {
    /// Notes the inodes now at `artifact` and `sidecar`, just placed.
    pub(super) fn note(artifact: &Path, sidecar: Option<PathBuf>) -> Placed {
        use std::os::unix::fs::MetadataExt;
        let id = |p: &Path| {
            std::fs::symlink_metadata(p)
                .ok()
                .map(|m| (m.dev(), m.ino()))
        };
        // The sidecar first: removed before the artifact, it is never left alone in the
        // inbox, where it would update the newest version's metrics.
        let mut v: Vec<(PathBuf, Option<(u64, u64)>)> = sidecar
            .into_iter()
            .map(|p| (id(&p), p))
            .map(|(i, p)| (p, i))
            .collect();
        v.push((artifact.to_path_buf(), id(artifact)));
        Placed(v)
    }

    /// Removes each of them still there as placed; returns the paths removed.
    pub(super) fn remove(&self) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let mut removed = Vec::new();
        for (p, id) in &self.0 {
            let now = std::fs::symlink_metadata(p).ok();
            if id.is_some() && now.as_ref().map(|m| (m.dev(), m.ino())) == *id {
                remove_tmp(p);
                removed.push(p.display().to_string());
            }
        }
        removed
    }
}
