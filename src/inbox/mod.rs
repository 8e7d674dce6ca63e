//! Looking at the inbox: what each top-level entry is, its files and their states, symlinks checked against the policy.
//!
//! Each file's (size, mtime, ctime, inode) is kept ([`FileStat`]); folders are walked;
//! symbolic links are checked against the policy. Used by the settler to decide when an
//! entry is quiet and by ingest to re-check it after copying. [`open_checked`] opens a
//! file for copying so that what is read is the file that was looked at, not whatever a
//! path leads to a moment later.
//!
//! By file: `stat` (FileStat, fingerprints), `open` (open_checked and its openat2),
//! `access` (may the daemon read it; the command that fixes it); here, [`look`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::names::{self, Entry};

mod access;
mod open;
mod stat;

use access::{not_allowed, readable};
pub use open::{OpenError, Opened, open_checked, open_dir, unchanged_through};
pub use stat::{FileStat, is_legacy_fingerprint};

/// Folders nested deeper than this inside an artifact folder are refused.
const MAX_DEPTH: usize = 32;

/// One file of an entry: where it is, where it goes in the version folder, its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFile {
    /// Absolute source path.
    pub src: PathBuf,
    /// Path relative to the version folder (for a single file: its file name).
    pub rel: String,
    /// Its state when looked at.
    pub stat: FileStat,
}

/// A top-level inbox entry as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Look {
    /// It no longer exists.
    Gone,
    /// It is not an artifact (hidden, temporary): nothing to do.
    Ignored,
    /// It cannot be registered; the reason says why. Shown in `status`.
    Refused(String),
    /// A folder that still holds temporaries (an rsync or download in progress).
    Incomplete(String),
    /// Its files, sorted by `rel`. A single file has exactly one.
    Files { folder: bool, files: Vec<EntryFile> },
}

/// Classifies and inspects the top-level entry `name` of `inbox`.
pub fn look(inbox: &Path, name: &str, follow_symlinks: bool) -> Look {
    let path = inbox.join(name);
    let lmeta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Look::Gone,
        Err(e) => return Look::Refused(format!("cannot stat {}: {e}", path.display())),
    };
    let meta = if lmeta.file_type().is_symlink() {
        match resolve_link(inbox, &path, follow_symlinks) {
            Ok(m) => m,
            Err(reason) => {
                // A link to a temporary name is as ignorable as the name itself.
                if names::is_temporary(name) {
                    return Look::Ignored;
                }
                return Look::Refused(reason);
            }
        }
    } else {
        lmeta
    };
    let is_dir = meta.is_dir();
    match names::classify(std::ffi::OsStr::new(name), is_dir) {
        Entry::Ignored => return Look::Ignored,
        Entry::Refused { reason } => return Look::Refused(reason),
        Entry::Artifact { .. } | Entry::Sidecar { .. } => {}
    }
    if is_dir {
        let mut files = Vec::new();
        if let Err(r) = walk(inbox, &path, "", 0, follow_symlinks, &mut files) {
            return r;
        }
        // `mkdir x` comes before the files are copied in, possibly later than the settle
        // period: a folder without a file is a writer not started yet, never a version.
        if files.is_empty() {
            return Look::Incomplete(format!(
                "{}: empty folder: waiting for files",
                path.display()
            ));
        }
        files.sort_by(|a, b| a.rel.cmp(&b.rel));
        Look::Files {
            folder: true,
            files,
        }
    } else if meta.is_file() {
        if let Err(reason) = readable(&path, &meta) {
            return Look::Refused(reason);
        }
        Look::Files {
            folder: false,
            files: vec![EntryFile {
                src: path,
                rel: name.to_string(),
                stat: FileStat::of(&meta),
            }],
        }
    } else {
        Look::Refused(format!(
            "{} is not a regular file or folder",
            path.display()
        ))
    }
}

/// Follows a symlink when the policy allows it: always when it stays inside the inbox,
/// otherwise only with `follow_symlinks`.
fn resolve_link(inbox: &Path, path: &Path, follow: bool) -> Result<fs::Metadata, String> {
    let target = fs::canonicalize(path)
        .map_err(|e| format!("symbolic link {} is broken: {e}", path.display()))?;
    let inbox_real = fs::canonicalize(inbox).unwrap_or_else(|_| inbox.to_path_buf());
    if !follow && !target.starts_with(&inbox_real) {
        return Err(format!(
            "symbolic link {} leads outside the inbox (to {}); set follow_symlinks: true to allow it",
            path.display(),
            target.display()
        ));
    }
    fs::metadata(&target).map_err(|e| format!("cannot stat {}: {e}", target.display()))
}

fn walk(
    inbox: &Path,
    dir: &Path,
    prefix: &str,
    depth: usize,
    follow: bool,
    out: &mut Vec<EntryFile>,
) -> Result<(), Look> {
    if depth > MAX_DEPTH {
        return Err(Look::Refused(format!(
            "{} is nested more than {MAX_DEPTH} folders deep",
            dir.display()
        )));
    }
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Look::Gone),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            let why = fs::metadata(dir)
                .map(|m| not_allowed(dir, &m, "list"))
                .unwrap_or_else(|_| format!("cannot list {}: {e}", dir.display()));
            return Err(Look::Refused(why));
        }
        Err(e) => return Err(Look::Refused(format!("cannot list {}: {e}", dir.display()))),
    };
    for entry in rd {
        let entry =
            entry.map_err(|e| Look::Refused(format!("cannot list {}: {e}", dir.display())))?;
        let os_name = entry.file_name();
        let Some(name) = os_name.to_str() else {
            return Err(Look::Refused(format!(
                "{} holds a file name that is not UTF-8: {} (bytes shown as \\xNN); rename it",
                dir.display(),
                crate::display::escape_path(&entry.path())
            )));
        };
        let path = entry.path();
        let rel = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        // Inside a folder, hidden entries (.gitattributes, .cache/) are not part of the
        // model, but a temporary (rsync's .name.XXXXXX, *.part) means a writer is not done.
        if looks_in_progress(name) {
            return Err(Look::Incomplete(format!(
                "{} is still being written",
                path.display()
            )));
        }
        if name.starts_with('.') {
            continue;
        }
        // The name rule registry.yaml is read with: a file stored under a name it would
        // refuse (a line break, a bidi control) would stop the next start.
        if let Err(reason) = names::check_component(name) {
            return Err(Look::Refused(format!(
                "{} holds a file or folder named {name:?}, which {reason}; rename it",
                dir.display()
            )));
        }
        let lmeta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Look::Refused(format!(
                    "cannot stat {}: {e}",
                    path.display()
                )));
            }
        };
        let meta = if lmeta.file_type().is_symlink() {
            resolve_link(inbox, &path, follow).map_err(Look::Refused)?
        } else {
            lmeta
        };
        if meta.is_dir() {
            walk(inbox, &path, &rel, depth + 1, follow, out)?;
        } else if meta.is_file() {
            readable(&path, &meta).map_err(Look::Refused)?;
            out.push(EntryFile {
                src: path,
                rel,
                stat: FileStat::of(&meta),
            });
        } else {
            // A pipe, socket or device cannot be copied as bytes; skipping it silently
            // would register a version that lacks what the uploader meant to send.
            return Err(Look::Refused(format!(
                "{} is a {}, not a regular file or folder; remove it from the folder",
                path.display(),
                special_kind(&meta)
            )));
        }
    }
    Ok(())
}

/// What a file that is neither regular nor a folder is, in words.
fn special_kind(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_fifo() {
        "named pipe (FIFO)"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}
/// Temporary names inside an artifact folder that mean a writer is still at work:
/// rsync's `.name.XXXXXX` and the temporary endings of downloaders and editors.
fn looks_in_progress(name: &str) -> bool {
    let rsync_temp = name.starts_with('.')
        && name.rsplit_once('.').is_some_and(|(head, tail)| {
            !head.is_empty() && tail.len() == 6 && tail.bytes().all(|b| b.is_ascii_alphanumeric())
        });
    rsync_temp
        || names::TEMPORARY_SUFFIXES
            .iter()
            .any(|s| name.len() > s.len() && name.ends_with(s))
}
/// The inbox's top-level entries, as [`list`] finds them.
#[derive(Debug, Default)]
pub struct Listing {
    /// The entry names (not classified), sorted.
    pub names: Vec<String>,
    /// The paths of entries whose names are not UTF-8: no model can be named after them.
    pub not_utf8: Vec<std::path::PathBuf>,
}

/// Lists the inbox's top-level entries.
pub fn list(inbox: &Path) -> io::Result<Listing> {
    let mut out = Listing::default();
    for entry in fs::read_dir(inbox)? {
        let entry = entry?;
        match entry.file_name().into_string() {
            Ok(s) => out.names.push(s),
            Err(_) => out.not_utf8.push(entry.path()),
        }
    }
    out.names.sort();
    Ok(out)
}

/// The model name a top-level entry belongs to: `Ok(None)` when it is ignored (hidden,
/// temporary), `Err(reason)` when its name cannot be a model name.
pub fn group_of(inbox: &Path, entry: &str) -> Result<Option<String>, String> {
    if names::is_temporary(entry) {
        return Ok(None);
    }
    let is_dir = fs::metadata(inbox.join(entry))
        .map(|m| m.is_dir())
        .unwrap_or(false);
    match names::classify(std::ffi::OsStr::new(entry), is_dir) {
        Entry::Artifact { name } | Entry::Sidecar { name } => Ok(Some(name)),
        Entry::Ignored => Ok(None),
        Entry::Refused { reason } => Err(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_folder_gone_ignored() {
        let t = tempfile::tempdir().unwrap();
        let inbox = t.path();
        fs::write(inbox.join("a.pt"), b"xy").unwrap();
        fs::create_dir_all(inbox.join("bert/sub")).unwrap();
        fs::write(inbox.join("bert/config.json"), b"{}").unwrap();
        fs::write(inbox.join("bert/sub/w.bin"), b"123").unwrap();
        fs::write(inbox.join("bert/.gitattributes"), b"").unwrap();
        match look(inbox, "a.pt", false) {
            Look::Files {
                folder: false,
                files,
            } => assert_eq!(files[0].stat.size, 2),
            other => panic!("{other:?}"),
        }
        match look(inbox, "bert", false) {
            Look::Files {
                folder: true,
                files,
            } => {
                let rels: Vec<_> = files.iter().map(|f| f.rel.as_str()).collect();
                assert_eq!(rels, ["config.json", "sub/w.bin"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(look(inbox, "nope.pt", false), Look::Gone);
        fs::write(inbox.join("x.part"), b"").unwrap();
        assert_eq!(look(inbox, "x.part", false), Look::Ignored);
    }

    #[test]
    fn folder_with_rsync_temp_is_incomplete() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("bert")).unwrap();
        fs::write(t.path().join("bert/.model.safetensors.Ab12Cd"), b"").unwrap();
        assert!(matches!(look(t.path(), "bert", false), Look::Incomplete(_)));
    }

    #[test]
    fn symlink_policy() {
        let t = tempfile::tempdir().unwrap();
        let inbox = t.path().join("inbox");
        fs::create_dir(&inbox).unwrap();
        fs::write(t.path().join("outside.pt"), b"o").unwrap();
        fs::write(inbox.join("inside.pt"), b"i").unwrap();
        std::os::unix::fs::symlink(t.path().join("outside.pt"), inbox.join("out.pt")).unwrap();
        std::os::unix::fs::symlink(inbox.join("inside.pt"), inbox.join("in.pt")).unwrap();
        match look(&inbox, "out.pt", false) {
            Look::Refused(r) => assert!(r.contains("outside the inbox"), "{r}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(look(&inbox, "out.pt", true), Look::Files { .. }));
        assert!(matches!(look(&inbox, "in.pt", false), Look::Files { .. }));
    }

    #[test]
    fn fingerprint_changes_with_content() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("a.pt"), b"1").unwrap();
        let f1 = look(t.path(), "a.pt", false).fingerprint().unwrap();
        fs::write(t.path().join("a.pt"), b"22").unwrap();
        let f2 = look(t.path(), "a.pt", false).fingerprint().unwrap();
        assert_ne!(f1, f2);
    }
}
