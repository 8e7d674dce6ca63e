//! The folder backend: blobs as files under a folder the hosts share, written to a hidden temp file, hashed, fsynced, renamed into place.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::error::{BlobError, BlobResult};
use super::local::{Reader, TempDest, blocking, hash_file};
use super::{BlobInfo, BlobOptions, PutJob, PutOutcome, Upload, Verification, sha256_of_key};
use crate::fsutil::sync_dir;

/// Bytes read and written at a time.
const CHUNK: usize = 1 << 20;

/// Blobs under a shared folder: `<folder>/sha256/ab/ab12...`.
#[derive(Debug, Clone)]
pub(super) struct PathBlobs {
    root: PathBuf,
    describe: String,
    read_back: bool,
}

impl PathBlobs {
    /// The folder must exist (a share not mounted must not be filled on the local disk).
    pub fn open(setting: &str, root: &Path, options: &BlobOptions) -> BlobResult<Self> {
        if !root.is_dir() {
            return Err(BlobError::Config {
                given: setting.to_string(),
                reason: format!("{} is not a folder (is the share mounted?)", root.display()),
            });
        }
        Ok(PathBlobs {
            root: root.to_path_buf(),
            describe: format!("folder {}", root.display()),
            read_back: options.read_back,
        })
    }

    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Makes and deletes a hidden temp file in the folder.
    pub fn check_writable(&self) -> BlobResult<()> {
        tempfile::Builder::new()
            .prefix(".modelreg-write-check-")
            .tempfile_in(&self.root)
            .map(drop)
            .map_err(|e| BlobError::Config {
                given: self.root.display().to_string(),
                reason: format!(
                    "this host cannot write in {}: {e} (mounted read-only? owned by another user?)",
                    self.root.display()
                ),
            })
    }

    /// The blob's file.
    pub fn file(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub async fn put_file(&self, job: PutJob) -> BlobResult<PutOutcome> {
        let this = self.clone();
        blocking(move || this.put_blocking(&job)).await
    }

    fn put_blocking(&self, job: &PutJob) -> BlobResult<PutOutcome> {
        let PutJob {
            src,
            sha256,
            size,
            rel,
            replace,
        } = job;
        let (sha256, size) = (sha256.as_str(), *size);
        let dst = self.file(rel);
        let key = dst.display().to_string();
        if !replace && std::fs::metadata(&dst).is_ok_and(|m| m.len() == size) {
            return Ok(PutOutcome::already_present(key));
        }
        let mut reader = Reader::open(src, size, &self.describe, &key)?;
        let dir = dst.parent().expect("a blob file has a folder");
        std::fs::create_dir_all(dir).map_err(|e| BlobError::local("create folder", dir, e))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{sha256}.put-"))
            .tempfile_in(dir)
            .map_err(|e| BlobError::local("create temp file in", dir, e))?;
        loop {
            let part = reader.next_part(CHUNK)?;
            if part.is_empty() {
                break;
            }
            tmp.write_all(&part)
                .map_err(|e| BlobError::local("write", tmp.path(), e))?;
        }
        let sent = reader.read();
        let actual = reader.sha256();
        // Dropping `tmp` deletes it: a mismatch leaves nothing in the folder.
        let mismatch = |step, actual: String| BlobError::Mismatch {
            store: self.describe.clone(),
            step,
            key: key.clone(),
            expected: sha256.to_string(),
            actual,
        };
        if actual != sha256 {
            return Err(mismatch("upload", actual));
        }
        let file = tmp.as_file();
        file.sync_all()
            .map_err(|e| BlobError::local("fsync", tmp.path(), e))?;
        let mut verified = Verification::Written;
        if self.read_back {
            // What a network file system gives back, not what this host's cache holds.
            let (again, _) = hash_file(tmp.path())?;
            if again != sha256 {
                return Err(mismatch("read back", again));
            }
            verified = Verification::ReadBack;
        }
        // Read-only: a blob is never written in place.
        file.set_permissions(std::fs::Permissions::from_mode(0o444))
            .map_err(|e| BlobError::local("make read-only", tmp.path(), e))?;
        tmp.persist(&dst)
            .map_err(|e| BlobError::local("rename into place", &dst, e.error))?;
        sync_dir(dir).map_err(|e| {
            BlobError::local("fsync folder", dir, std::io::Error::other(e.to_string()))
        })?;
        Ok(PutOutcome {
            key,
            upload: Upload::Uploaded,
            bytes_sent: sent,
            verified,
        })
    }

    pub async fn fetch(&self, sha256: &str, rel: &str, dest: &Path) -> BlobResult<u64> {
        let (src, describe) = (self.file(rel), self.describe.clone());
        let (sha256, dest) = (sha256.to_string(), dest.to_path_buf());
        blocking(move || {
            let key = src.display().to_string();
            let mut input = match std::fs::File::open(&src) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(BlobError::NotFound {
                        store: describe,
                        key,
                    });
                }
                Err(e) => return Err(BlobError::local("open", &src, e)),
            };
            let mut out = TempDest::new(&dest)?;
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match std::io::Read::read(&mut input, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(BlobError::local("read", &src, e)),
                };
                out.write(&buf[..n])?;
            }
            out.finish(&sha256, &describe, &key)
        })
        .await
    }

    pub fn size(&self, rel: &str) -> BlobResult<Option<u64>> {
        let file = self.file(rel);
        match std::fs::metadata(&file) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BlobError::local("stat", &file, e)),
        }
    }

    pub fn delete(&self, rel: &str) -> BlobResult<()> {
        let file = self.file(rel);
        match std::fs::remove_file(&file) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BlobError::local("delete", &file, e)),
        }
    }

    pub async fn list(&self) -> BlobResult<Vec<BlobInfo>> {
        let root = self.root.clone();
        blocking(move || {
            let mut out = Vec::new();
            let top = root.join("sha256");
            for fan in read_dir(&top)? {
                for file in read_dir(&fan)? {
                    let rel = file.strip_prefix(&root).unwrap_or(&file);
                    // Hidden temp files of uploads in progress do not parse as keys.
                    let Some(sha256) = sha256_of_key(&rel.to_string_lossy()) else {
                        continue;
                    };
                    let Ok(meta) = std::fs::metadata(&file) else {
                        continue; // deleted meanwhile
                    };
                    out.push(BlobInfo {
                        key: file.display().to_string(),
                        sha256,
                        size: meta.len(),
                        last_modified: meta
                            .modified()
                            .map_err(|e| BlobError::local("stat", &file, e))?,
                    });
                }
            }
            Ok(out)
        })
        .await
    }
}

impl PathBlobs {
    /// The bytes of file `rel` (a small one: the marker); `None` when there is none.
    pub fn read_small(&self, rel: &str) -> BlobResult<Option<Vec<u8>>> {
        let file = self.file(rel);
        match std::fs::read(&file) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BlobError::local("read", &file, e)),
        }
    }

    /// Writes file `rel` unless it exists: a hidden temp file written and fsynced, then
    /// linked into place (never replacing one), the folder fsynced. `false`: one was there.
    pub fn write_new(&self, rel: &str, bytes: &[u8]) -> BlobResult<bool> {
        let file = self.file(rel);
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{rel}.tmp-"))
            .tempfile_in(&self.root)
            .map_err(|e| BlobError::local("create temp file in", &self.root, e))?;
        tmp.write_all(bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| BlobError::local("write", tmp.path(), e))?;
        match tmp.persist_noclobber(&file) {
            Ok(_) => {}
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(BlobError::local("rename into place", &file, e.error)),
        }
        sync_dir(&self.root).map_err(|e| {
            BlobError::local(
                "fsync folder",
                &self.root,
                std::io::Error::other(e.to_string()),
            )
        })?;
        Ok(true)
    }

    /// Deletes the hidden temp files of uploads (`.<sha256>.put-XXXX`) last written
    /// before `cutoff`: their host died mid-write (a live upload writes on).
    pub async fn collect_abandoned(
        &self,
        cutoff: std::time::SystemTime,
    ) -> BlobResult<Vec<(String, u64)>> {
        let root = self.root.clone();
        blocking(move || {
            let mut out = Vec::new();
            for fan in read_dir(&root.join("sha256"))? {
                for file in read_dir(&fan)? {
                    let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
                    if !name.is_some_and(|n| n.starts_with('.') && n.contains(".put-")) {
                        continue;
                    }
                    let Ok(meta) = std::fs::symlink_metadata(&file) else {
                        continue; // renamed into place or deleted meanwhile
                    };
                    if !meta.is_file() || meta.modified().map_or(true, |m| m > cutoff) {
                        continue;
                    }
                    match std::fs::remove_file(&file) {
                        Ok(()) => out.push((file.display().to_string(), meta.len())),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(BlobError::local("delete", &file, e)),
                    }
                }
            }
            Ok(out)
        })
        .await
    }
}

/// The entries of a folder; none when it does not exist (no blob stored yet).
fn read_dir(dir: &Path) -> BlobResult<Vec<PathBuf>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .map_err(|e| BlobError::local("list", dir, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(BlobError::local("list", dir, e)),
    }
}
