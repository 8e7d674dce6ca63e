//! The partial file `<file>.part` a download gathers in, opened so that nothing planted
//! at its name is written through: never through a symbolic link (`O_NOFOLLOW`), never
//! into anything but a regular file with one name, created with `O_EXCL`, sized by
//! `fstat` of the open descriptor, held under an exclusive `flock` (a second download to
//! the same destination is refused, not interleaved), and tied by `<file>.part.sha256`
//! to the SHA-256 its bytes belong to (a partial of other bytes starts again from 0).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::ClientError;

/// An open, locked partial file and the sidecar naming the SHA-256 it belongs to.
pub(super) struct Partial {
    /// `<file>.part`.
    pub path: PathBuf,
    /// Its descriptor, locked.
    pub file: File,
    sidecar: PathBuf,
}

fn err(what: &str, p: &Path, e: impl std::fmt::Display) -> ClientError {
    ClientError::Download(format!("{what} {}: {e}", p.display()))
}

/// Opens `path` without following a link at it; `create`: a new file (`O_EXCL`).
fn open_nofollow(path: &Path, create: bool) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if create {
        o.create_new(true).mode(0o644);
    }
    o.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

impl Partial {
    /// Opens (or creates) the partial of `to`, for the file whose SHA-256 is `sha256`:
    /// kept bytes of another SHA-256 (an alias or `latest` moved since) are dropped.
    pub fn open(to: &Path, sha256: &str) -> Result<Partial, ClientError> {
        let mut name = to.file_name().unwrap_or_default().to_os_string();
        name.push(".part");
        let path = to.with_file_name(&name);
        name.push(".sha256");
        let sidecar = to.with_file_name(name);
        let file = loop {
            let file = match open_nofollow(&path, false) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    match open_nofollow(&path, true) {
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                        r => r,
                    }
                }
                r => r,
            }
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => err(
                    "refusing to write through",
                    &path,
                    "it is a symbolic link (remove it and run again)",
                ),
                _ => err("opening", &path, e),
            })?;
            let meta = file.metadata().map_err(|e| err("reading", &path, e))?;
            if !meta.is_file() || meta.nlink() != 1 {
                return Err(err(
                    "refusing to write into",
                    &path,
                    "it is not a regular file with one name (remove it and run again)",
                ));
            }
            // SAFETY: flock on a descriptor this function owns.
            if unsafe {
                libc::flock(
                    std::os::fd::AsRawFd::as_raw_fd(&file),
                    libc::LOCK_EX | libc::LOCK_NB,
                )
            } != 0
            {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    return Err(ClientError::Download(format!(
                        "another download of {} is writing {}; wait for it to finish (or stop it) and run again",
                        to.display(),
                        path.display()
                    )));
                }
                return Err(err("locking", &path, e));
            }
            // The lock is on the file opened; the name may have been renamed into place
            // (or replaced) by the download that held it until now: open the name again.
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.dev() == meta.dev() && m.ino() == meta.ino() => break file,
                _ => continue,
            }
        };
        let p = Partial {
            path,
            file,
            sidecar,
        };
        if p.recorded().as_deref() != Some(sha256) {
            p.file.set_len(0).map_err(|e| err("emptying", &p.path, e))?;
            p.record(sha256)?;
        }
        Ok(p)
    }

    /// The SHA-256 the sidecar names (None when missing, linked or unreadable).
    fn recorded(&self) -> Option<String> {
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&self.sidecar)
            .ok()?;
        if !f.metadata().ok()?.is_file() {
            return None;
        }
        let mut s = String::new();
        (&mut f).take(128).read_to_string(&mut s).ok()?;
        Some(s.trim().to_string())
    }

    fn record(&self, sha256: &str) -> Result<(), ClientError> {
        // A new file every time (never written through a link planted at its name).
        match std::fs::remove_file(&self.sidecar) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(err("removing", &self.sidecar, e));
            }
            _ => {}
        }
        open_nofollow(&self.sidecar, true)
            .and_then(|mut f| f.write_all(format!("{sha256}\n").as_bytes()))
            .map_err(|e| err("writing", &self.sidecar, e))
    }

    /// Bytes kept (fstat of the descriptor, not of the name).
    pub fn len(&self) -> Result<u64, ClientError> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| err("reading", &self.path, e))
    }

    /// Empties the partial (its bytes cannot be extended).
    pub fn clear(&mut self) -> Result<(), ClientError> {
        self.file
            .set_len(0)
            .and_then(|()| self.file.seek(SeekFrom::Start(0)).map(drop))
            .map_err(|e| err("emptying", &self.path, e))
    }

    /// Removes the partial and its sidecar (wrong bytes).
    pub fn remove(self) -> Result<(), ClientError> {
        let _ = std::fs::remove_file(&self.sidecar);
        std::fs::remove_file(&self.path).map_err(|e| err("removing", &self.path, e))
    }

    /// Renames the checked partial to `to` (a link at `to` is replaced, not followed)
    /// and removes the sidecar; the lock goes with the descriptor.
    pub fn finish(self, to: &Path) -> Result<(), ClientError> {
        std::fs::rename(&self.path, to).map_err(|e| err("renaming into place", to, e))?;
        let _ = std::fs::remove_file(&self.sidecar);
        Ok(())
    }
}
