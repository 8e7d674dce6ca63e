//! The local side of a transfer: a file read in parts and hashed, a fetched blob written to a temp file, checked, fsynced and renamed.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::{BlobError, BlobResult};
use crate::fsutil::{hex, sync_dir};

/// A file being read in order, part by part, with the SHA-256 of all it gave so far.
pub(super) struct Reader {
    file: File,
    path: PathBuf,
    hasher: Sha256,
    read: u64,
}

impl Reader {
    /// Opens `path` and checks that it holds `size` bytes (a file that grew or shrank
    /// since it was hashed is refused before anything is sent).
    pub fn open(path: &Path, size: u64, store: &str, key: &str) -> BlobResult<Self> {
        let file = File::open(path).map_err(|e| BlobError::local("open", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| BlobError::local("stat", path, e))?
            .len();
        if len != size {
            return Err(BlobError::Size {
                store: store.to_string(),
                step: "read file",
                key: format!("{key} from {}", path.display()),
                expected: size,
                actual: len,
            });
        }
        Ok(Reader {
            file,
            path: path.to_path_buf(),
            hasher: Sha256::new(),
            read: 0,
        })
    }

    /// Reads the next `len` bytes (fewer at the end), adding them to the whole file's
    /// hash. Blocking: call it from `spawn_blocking`, as [`read_part`] does.
    pub fn next_part(&mut self, len: usize) -> BlobResult<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            match self.file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(BlobError::local("read", &self.path, e)),
            }
        }
        buf.truncate(filled);
        self.hasher.update(&buf);
        self.read += filled as u64;
        Ok(buf)
    }

    /// Bytes read so far.
    pub fn read(&self) -> u64 {
        self.read
    }

    /// The SHA-256 of everything read, as hex.
    pub fn sha256(self) -> String {
        hex(&self.hasher.finalize())
    }
}

/// [`Reader::next_part`] on the blocking pool (reading and hashing a part of several MiB
/// would hold an async worker for milliseconds); the reader goes there and back.
pub(super) async fn read_part(mut reader: Reader, len: usize) -> BlobResult<(Reader, Vec<u8>)> {
    blocking(move || {
        let part = reader.next_part(len)?;
        Ok((reader, part))
    })
    .await
}

/// Runs blocking file work on tokio's blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> BlobResult<T> + Send + 'static,
) -> BlobResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BlobError::local("run", "(blocking task)", std::io::Error::other(e)))?
}

/// The mode of a fetched file: the store's mode for a stored copy of a readable file
/// (`store::stored_mode(0o644)`), read-only and readable by all.
pub(super) const FETCHED_MODE: u32 = 0o444;

/// A fetched blob on its way to `dest`: written to a hidden temp file in the same
/// folder, hashed as written; [`TempDest::finish`] checks it, makes it [`FETCHED_MODE`], fsyncs it and renames it
/// into place. Dropped unfinished (an error, a mismatch), the temp file is deleted:
/// nothing is ever left at `dest`.
pub(super) struct TempDest {
    tmp: tempfile::NamedTempFile,
    dest: PathBuf,
    hasher: Sha256,
    written: u64,
}

impl TempDest {
    /// Creates the temp file beside `dest`.
    pub fn new(dest: &Path) -> BlobResult<Self> {
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}.fetch-"))
            .tempfile_in(dir)
            .map_err(|e| BlobError::local("create temp file in", dir, e))?;
        Ok(TempDest {
            tmp,
            dest: dest.to_path_buf(),
            hasher: Sha256::new(),
            written: 0,
        })
    }

    /// Appends and hashes `bytes`. Blocking.
    pub fn write(&mut self, bytes: &[u8]) -> BlobResult<()> {
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        self.tmp
            .write_all(bytes)
            .map_err(|e| BlobError::local("write", self.tmp.path(), e))
    }

    /// Checks the bytes written against `sha256`, then fsyncs the file, renames it to
    /// `dest` and fsyncs the folder. A mismatch is an error naming `key` and both hashes,
    /// and the temp file is deleted. Blocking.
    pub fn finish(self, sha256: &str, store: &str, key: &str) -> BlobResult<u64> {
        let actual = hex(&self.hasher.finalize());
        if actual != sha256 {
            return Err(BlobError::Mismatch {
                store: store.to_string(),
                step: "fetch",
                key: key.to_string(),
                expected: sha256.to_string(),
                actual,
            });
        }
        // Read-only and readable by all, as the store keeps a stored copy of a readable
        // file (store::stored_mode): a fetched file is one of the store's files, and
        // whoever may read a locally registered one may read it. Set before the fsync,
        // so the mode is durable with the bytes (a private temp file's 0600 before).
        self.tmp
            .as_file()
            .set_permissions(std::fs::Permissions::from_mode(FETCHED_MODE))
            .map_err(|e| BlobError::local("make read-only", self.tmp.path(), e))?;
        self.tmp
            .as_file()
            .sync_all()
            .map_err(|e| BlobError::local("fsync", self.tmp.path(), e))?;
        self.tmp
            .persist(&self.dest)
            .map_err(|e| BlobError::local("rename into place", &self.dest, e.error))?;
        if let Some(dir) = self.dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(dir).map_err(|e| {
                BlobError::local("fsync folder", dir, std::io::Error::other(e.to_string()))
            })?;
        }
        Ok(self.written)
    }
}

/// The SHA-256 and size of a file, read in 1 MiB chunks. Blocking.
pub(super) fn hash_file(path: &Path) -> BlobResult<(String, u64)> {
    let mut f = File::open(path).map_err(|e| BlobError::local("open", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BlobError::local("read", path, e)),
        }
    }
    Ok((hex(&hasher.finalize()), size))
}
