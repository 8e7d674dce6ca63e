//! What identifies a file's or an inbox entry's state without reading it: FileStat and the catalog's fingerprints.
//!
//! A file's state is its (size, mtime, inode, device, ctime); an entry's fingerprint,
//! recorded in the catalog's `sources`, is made from the states of its files. Both are
//! how "did it change since it was looked at" is answered everywhere.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;

use super::Look;
use crate::fsutil::sha256_hex;

/// What identifies a file's state without reading it. The ctime is in it because no
/// user can set it: a rewrite in place that restores the mtime (`touch -d`, utimensat)
/// still moves the ctime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    /// Bytes.
    pub size: u64,
    /// Modification time in nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Inode number.
    pub ino: u64,
    /// Device of the filesystem holding it (with `ino`, the file's identity).
    pub dev: u64,
    /// Status change time in nanoseconds since the epoch.
    pub ctime_ns: i128,
}

impl FileStat {
    /// From metadata (of the file itself, or of a symlink's target).
    pub fn of(m: &fs::Metadata) -> Self {
        FileStat {
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ino: m.ino(),
            dev: m.dev(),
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        }
    }

    /// Whether this state still describes the file whose metadata is `now`: the same
    /// file (device, inode), not written since (size, mtime, and the ctime no one can
    /// set back).
    pub fn still_describes(&self, now: &fs::Metadata) -> bool {
        FileStat::of(now) == *self
    }
}

impl Look {
    /// The fingerprint recorded in the catalog's `sources`: `size:mtime:inode:cctime` of
    /// a file, or `dir2:` and a digest of the relative paths and states of every file of a
    /// folder.
    pub fn fingerprint(&self) -> Option<String> {
        self.fingerprint_with("dir2", file_fingerprint)
    }

    /// The fingerprint as versions before ctime was added wrote it (`size:mtime:inode`,
    /// `dir:`), so that sources registered by them are still recognised after an upgrade
    /// instead of all being copied and hashed again.
    pub fn legacy_fingerprint(&self) -> Option<String> {
        self.fingerprint_with("dir", legacy_file_fingerprint)
    }

    fn fingerprint_with(&self, dir_tag: &str, file: fn(&FileStat) -> String) -> Option<String> {
        match self {
            Look::Files {
                folder: false,
                files,
            } => files.first().map(|f| file(&f.stat)),
            Look::Files {
                folder: true,
                files,
            } => {
                let mut listing = String::new();
                for f in files {
                    listing.push_str(&format!("{}\0{}\n", f.rel, file(&f.stat)));
                }
                Some(format!(
                    "{dir_tag}:{}:{}",
                    files.len(),
                    &sha256_hex(listing.as_bytes())[..32]
                ))
            }
            _ => None,
        }
    }

    /// Whether `recorded` (a catalog fingerprint) describes this look: equal to its
    /// fingerprint, or written in the legacy format (no ctime) and equal to its legacy
    /// fingerprint.
    pub fn matches(&self, recorded: &str) -> bool {
        if self.fingerprint().as_deref() == Some(recorded) {
            return true;
        }
        is_legacy_fingerprint(recorded) && self.legacy_fingerprint().as_deref() == Some(recorded)
    }

    /// The states of the files, keyed by path relative to the inbox, for quiet checks.
    pub fn stats(&self, entry: &str) -> BTreeMap<String, FileStat> {
        match self {
            Look::Files {
                folder: false,
                files,
            } => files.iter().map(|f| (entry.to_string(), f.stat)).collect(),
            Look::Files {
                folder: true,
                files,
            } => files
                .iter()
                .map(|f| (format!("{entry}/{}", f.rel), f.stat))
                .collect(),
            _ => BTreeMap::new(),
        }
    }
}

fn file_fingerprint(s: &FileStat) -> String {
    format!("{}:{}:{}:c{}", s.size, s.mtime_ns, s.ino, s.ctime_ns)
}

fn legacy_file_fingerprint(s: &FileStat) -> String {
    format!("{}:{}:{}", s.size, s.mtime_ns, s.ino)
}

/// Whether a recorded fingerprint predates ctime: `dir:...`, or a file's three fields.
pub fn is_legacy_fingerprint(recorded: &str) -> bool {
    recorded.starts_with("dir:") || (!recorded.starts_with("dir2:") && !recorded.contains(":c"))
}
