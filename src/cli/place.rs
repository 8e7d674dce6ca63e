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
