//! Placing a copy in the inbox: written under a hidden name, renamed into place (a folder
//! swapped with the one already there), and removed again when interrupted.

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

/// Renames `tmp` to `dst`. A folder already at `dst` (the inbox keeps what was handed
/// over before) cannot be renamed over, so the two are swapped in one step
/// (`RENAME_EXCHANGE`: the daemon never sees the name missing or half there) and the old
/// one, now under the hidden name, is deleted.
pub(super) fn rename_into_place(tmp: &Path, dst: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    if !std::fs::symlink_metadata(dst).is_ok_and(|m| m.is_dir()) {
        return std::fs::rename(tmp, dst);
    }
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    let (from, to) = (c(tmp)?, c(dst)?);
    // SAFETY: both are valid NUL-terminated paths for the duration of the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The new folder is in place: a failure to delete the old copy (now hidden, so
    // ignored by the daemon) does not undo the hand-over.
    let _ = std::fs::remove_dir_all(tmp);
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
        .and_then(|()| rename_into_place(tmp, dst).map_err(cannot));
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
