//! A version's files downloaded to this machine, through either transport: each file
//! gathers in `<file>.part` beside its destination; over HTTP a cut connection is resumed
//! with `Range` (and `If-Range` naming the file's SHA-256, so kept bytes are only ever
//! extended by the same file's), by this call up to `retries` times and by the next call
//! after that; over the socket the stored file is copied. The whole is checked against
//! the stored SHA-256 before it is renamed into place; wrong bytes are removed.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::partial::Partial;
use super::{Client, ClientError, Conn, wire};
use crate::protocol::{FileInfo, VersionInfo};

/// What [`Client::download`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Downloaded {
    /// The model.
    pub name: String,
    /// `vN`.
    pub version: String,
    /// The file written (a file version) or the folder holding the files.
    pub path: String,
    /// Every file, at its path here, with the SHA-256 it was checked against.
    pub files: Vec<FileInfo>,
}

impl Client {
    /// Downloads version `v` (as `get` answered it) to `dest`: a file version to `dest`,
    /// or into it when it is a folder (or ends with `/`); a folder version's files under the folder `dest`,
    /// each at its path in the version. A file already there with the right SHA-256 is
    /// kept as it is.
    pub fn download(
        &mut self,
        v: &VersionInfo,
        dest: &Path,
        retries: u32,
    ) -> Result<Downloaded, ClientError> {
        let prefix = format!("{}/", v.dir.trim_end_matches('/'));
        let mut files = Vec::new();
        for f in &v.files {
            let rel = f.path.strip_prefix(&prefix).unwrap_or(&f.path);
            if rel.starts_with('/')
                || rel.contains('\\')
                || rel
                    .split('/')
                    .any(|p| p.is_empty() || p == "." || p == "..")
            {
                return Err(ClientError::Download(format!(
                    "the answer names a file {:?} that is not inside {:?}; nothing written",
                    f.path, v.dir
                )));
            }
            files.push((rel.to_string(), f));
        }
        let single = v.kind == crate::registry::Kind::File && files.len() == 1;
        // `weights/` names a folder even before it exists.
        let into = dest.is_dir() || dest.as_os_str().as_encoded_bytes().ends_with(b"/");
        let target = |rel: &str| -> PathBuf {
            match single {
                true if into => dest.join(rel),
                true => dest.to_path_buf(),
                false => dest.join(rel),
            }
        };
        let mut written = Vec::new();
        for (rel, f) in &files {
            let to = target(rel);
            // A folder inside the version must not be a link planted under `dest`: the
            // file would land wherever it points.
            let mut inside = dest.to_path_buf();
            for part in rel
                .split('/')
                .rev()
                .skip(1)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                inside.push(part);
                if std::fs::symlink_metadata(&inside).is_ok_and(|m| m.is_symlink()) {
                    return Err(ClientError::Download(format!(
                        "refusing to write {rel} through {}: it is a symbolic link (remove it and run again)",
                        inside.display()
                    )));
                }
            }
            self.download_file(v, rel, f, &to, retries)?;
            written.push(FileInfo {
                path: to.display().to_string(),
                sha256: f.sha256.clone(),
                size: f.size,
            });
        }
        let path = if single {
            written[0].path.clone()
        } else {
            dest.display().to_string()
        };
        Ok(Downloaded {
            name: v.name.clone(),
            version: v.version.clone(),
            path,
            files: written,
        })
    }

    /// One file of `v` (`rel` inside it) to `to`, through `to.part`.
    fn download_file(
        &mut self,
        v: &VersionInfo,
        rel: &str,
        f: &FileInfo,
        to: &Path,
        retries: u32,
    ) -> Result<(), ClientError> {
        let failed = |what: &str, p: &Path, e: std::io::Error| {
            ClientError::Download(format!("{what} {}: {e}", p.display()))
        };
        // The file already there is read without following a link at its name (a link
        // is replaced by the rename, never written through).
        let kept = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(to)
            .ok()
            .filter(|h| h.metadata().is_ok_and(|m| m.is_file() && m.len() == f.size));
        if kept.is_some_and(|h| wire::sha256_of(&h).is_ok_and(|s| s == f.sha256)) {
            return Ok(());
        }
        if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| failed("creating", dir, e))?;
        }
        let mut part = Partial::open(to, &f.sha256)?;
        match &self.conn {
            Conn::Socket(_) => {
                part.clear()?;
                std::fs::File::open(&f.path)
                    .and_then(|mut src| std::io::copy(&mut src, &mut part.file))
                    .and_then(|_| part.file.sync_all())
                    .map_err(|e| failed("copying to", &part.path, e))?;
            }
            Conn::Http(h) => {
                let mut cuts = 0;
                loop {
                    let have = part.len()?;
                    if have == f.size {
                        break;
                    }
                    let why = if have > f.size {
                        part.clear()?;
                        format!("{} held more bytes than the file has", part.path.display())
                    } else {
                        match h.fetch(&v.name, &v.version, rel, &f.sha256, &mut part, have)? {
                            Ok(()) => continue,
                            Err(why) => why,
                        }
                    };
                    cuts += 1;
                    if cuts > retries {
                        let kept = part.len().unwrap_or(0);
                        return Err(ClientError::Download(format!(
                            "downloading {rel} of {} {} was cut off ({why}) with {kept} of {} bytes in {}; run the same command again to resume",
                            v.name,
                            v.version,
                            f.size,
                            part.path.display()
                        )));
                    }
                }
            }
        }
        let got = wire::sha256_of(&part.file).map_err(|e| failed("reading", &part.path, e))?;
        if got != f.sha256 {
            let shown = part.path.display().to_string();
            part.remove()?;
            return Err(ClientError::Download(format!(
                "{rel} of {} {}: the bytes received have sha256 {got}, not the stored {}; {shown} was removed and {} not written (run the command again)",
                v.name,
                v.version,
                f.sha256,
                to.display()
            )));
        }
        part.finish(to)
    }
}
