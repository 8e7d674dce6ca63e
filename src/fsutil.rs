//! Small filesystem helpers shared by the store, registry.yaml and the inbox: SHA-256 as hex, folder fsync, free space.
//!
//! Layer 0: depends on nothing in the crate but [`crate::error`], so that the modules
//! above it (store, persist, inbox) need not import each other for a helper.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// SHA-256 of a byte slice, as hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// True for an error text that says the file system is full or the quota is spent
/// (ENOSPC, EDQUOT): waiting does not fix it, someone must free space.
pub fn is_out_of_space(error: &str) -> bool {
    [libc::ENOSPC, libc::EDQUOT]
        .iter()
        .any(|n| error.contains(&format!("(os error {n})")))
}

/// `renameat2(from, to, flags)`: `libc::RENAME_NOREPLACE` (fail rather than replace,
/// even an empty folder) or `libc::RENAME_EXCHANGE` (swap the two in one step).
pub fn rename2(from: &Path, to: &Path, flags: u32) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (a, b) = (c(from)?, c(to)?);
    // SAFETY: two valid NUL-terminated paths.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// fsyncs a folder, so that a rename or a new entry in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("fsync folder", dir, e))
}

/// Bytes an unprivileged writer may still use on the file system holding `dir`
/// (statvfs: available blocks times the fragment size).
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs only writes the struct it is given; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Whether a writer has the file behind `file` open, as the kernel tells it (fcntl(2)
/// F_SETLEASE): `Some(true)` when a read lease is refused with EAGAIN (some descriptor has
/// it open for writing), `Some(false)` when it is granted (and released at once), `None`
/// when leases cannot be taken here (the file belongs to another user and the caller
/// lacks CAP_LEASE, the filesystem has none, it is not a regular file). A descriptor
/// itself open for reading and writing (a client's `open(p, 'r+b')` handed over) is not
/// counted as a writer: a read lease is never granted on it, so a write lease is asked
/// instead, which the kernel grants when that descriptor is the file's only opening for
/// writing (and, where IMA counts readers, its only opening at all: then another
/// reader reads as a writer here, which errs on the side of waiting).
pub fn open_for_writing(file: &std::fs::File) -> Option<bool> {
    use std::os::fd::AsRawFd;
    // A writer opening the file in the instant the lease is held makes the kernel send
    // the holder SIGIO, whose default action ends the process. Neither the daemon (tokio
    // polls with epoll) nor the CLI uses SIGIO otherwise, so it is ignored, once.
    static IGNORE_SIGIO: std::sync::Once = std::sync::Once::new();
    // SAFETY: setting a signal's disposition to SIG_IGN; no handler runs.
    IGNORE_SIGIO.call_once(|| unsafe {
        libc::signal(libc::SIGIO, libc::SIG_IGN);
    });
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let lease = match descriptor_writable(file) {
        true => libc::F_WRLCK,
        false => libc::F_RDLCK,
    };
    // SAFETY: plain fcntl calls on a descriptor the caller keeps open.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, lease) };
    if r == 0 {
        // SAFETY: as above; releasing before the fd closes keeps writers from waiting.
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
        return Some(false);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) => Some(true),
        _ => None,
    }
}

/// Whether `file` is open for writing itself (O_WRONLY or O_RDWR), as fcntl(2) F_GETFL
/// tells it; false when that cannot be asked.
pub fn descriptor_writable(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: F_GETFL only reads the descriptor's flags.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    flags >= 0 && flags & libc::O_ACCMODE != libc::O_RDONLY
}

/// Renames `tmp` to `dst`. A folder already at `dst` (the inbox keeps what was handed
/// over before) cannot be renamed over, so the two are swapped in one step
/// (`RENAME_EXCHANGE`: the daemon never sees the name missing or half there) and the old
/// one, now under the hidden name, is deleted.
pub fn rename_or_exchange(tmp: &Path, dst: &Path) -> std::io::Result<()> {
    if !std::fs::symlink_metadata(dst).is_ok_and(|m| m.is_dir()) {
        return std::fs::rename(tmp, dst);
    }
    rename2(tmp, dst, libc::RENAME_EXCHANGE)?;
    // The new folder is in place: a failure to delete the old copy (now hidden, so
    // ignored by the daemon) does not undo the hand-over.
    let _ = std::fs::remove_dir_all(tmp);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_sha256_are_lower_case_hex() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
