//! The journal open for appending: fsynced appends, a torn tail cut, rotation by an atomic replacement.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::Scan;
use super::frame::{HEADER_LEN, encode, header};
use crate::error::{Error, Result};
use crate::registry::Delta;

/// The journal open for appending, owned by the registrar.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    len: u64,
    base: u64,
    /// Each record's sequence number and the offset just past it.
    ends: Vec<(u64, u64)>,
}

fn open_rw(path: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io("open journal", path, e))?;
    let meta = f
        .metadata()
        .map_err(|e| Error::io("stat journal", path, e))?;
    if !meta.is_file() {
        return Err(Error::Other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    // Owner-only whatever the umask, like the lock and the cache.
    if meta.permissions().mode() & 0o7777 != 0o600 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io("set permissions of", path, e))?;
    }
    Ok(f)
}

/// Writes a journal continuing from `base` holding `records` (encoded), atomically as
/// registry.yaml is (its temporaries are removed at start the same way), owner-only.
fn write_fresh(path: &Path, base: u64, records: &[u8]) -> Result<()> {
    let mut bytes = header(base);
    bytes.extend_from_slice(records);
    super::super::write_atomic_as(path, &bytes, 0o600)
}

/// Copies the bytes from `offset` to the end of the journal, about to be cut off, to
/// `registry.journal.dropped-at-<offset>` (0600): a record that may have been
/// acknowledged is not destroyed by the daemon, only set aside for a person to look at.
fn keep_dropped(path: &Path, file: &File, offset: u64) -> Result<()> {
    let len = file
        .metadata()
        .map_err(|e| Error::io("stat journal", path, e))?
        .len();
    let mut bytes = vec![0u8; len.saturating_sub(offset) as usize];
    file.read_exact_at(&mut bytes, offset)
        .map_err(|e| Error::io("read journal", path, e))?;
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".dropped-at-{offset}"));
    let aside = PathBuf::from(name);
    super::super::write_atomic_as(&aside, &bytes, 0o600)?;
    tracing::warn!(kept = %aside.display(), "the dropped bytes are kept in {}", aside.display());
    Ok(())
}

impl Journal {
    /// Opens the journal at `path` for appending after `scan` was replayed into a
    /// catalog that now includes record `seq`: a torn tail is cut off (durably, so the
    /// next record does not follow damage); a missing journal, or one that ends before
    /// `seq`, is replaced by an empty one continuing from `seq`.
    pub fn open(path: &Path, scan: Option<Scan>, seq: u64) -> Result<Journal> {
        let last = scan
            .as_ref()
            .map(|s| s.records.last().map_or(s.base, |(d, _)| d.seq));
        let Some(scan) = scan.filter(|_| last == Some(seq)) else {
            write_fresh(path, seq, &[])?;
            return Ok(Journal {
                file: open_rw(path)?,
                path: path.to_path_buf(),
                len: HEADER_LEN,
                base: seq,
                ends: Vec::new(),
            });
        };
        let file = open_rw(path)?;
        if let Some(t) = &scan.torn {
            if !matches!(t.damage, super::Damage::CutShort(_)) {
                keep_dropped(path, &file, t.offset)?;
            }
            file.set_len(scan.good_len)
                .and_then(|_| file.sync_all())
                .map_err(|e| Error::io("cut the torn tail of", path, e))?;
        }
        Ok(Journal {
            file,
            path: path.to_path_buf(),
            len: scan.good_len,
            base: scan.base,
            ends: scan.records.iter().map(|(d, end)| (d.seq, *end)).collect(),
        })
    }

    /// The sequence number of the last record (or the base when there is none).
    pub fn last_seq(&self) -> u64 {
        self.ends.last().map_or(self.base, |(s, _)| *s)
    }

    /// The file's size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Appends `d` (numbered one past the last record) and fsyncs it. On failure the file
    /// is cut back to its last intact record (best effort: a leftover is a torn tail).
    pub fn append(&mut self, d: &Delta) -> Result<()> {
        debug_assert_eq!(d.seq, self.last_seq() + 1);
        let bytes = encode(d)?;
        let written = self
            .file
            .write_all_at(&bytes, self.len)
            .and_then(|_| self.file.sync_data());
        if let Err(e) = written {
            let _ = self.file.set_len(self.len);
            return Err(Error::io("append to journal", &self.path, e));
        }
        self.len += bytes.len() as u64;
        self.ends.push((d.seq, self.len));
        Ok(())
    }

    /// After registry.yaml was written including record `upto`: replaces the journal,
    /// atomically, by one holding only the records after `upto`. A crash before the
    /// rename leaves the old journal, whose records up to `upto` replay skips.
    pub fn rotate(&mut self, upto: u64) -> Result<()> {
        let keep = self.ends.partition_point(|(s, _)| *s <= upto);
        let from = if keep == 0 {
            HEADER_LEN
        } else {
            self.ends[keep - 1].1
        };
        let mut tail = vec![0u8; (self.len - from) as usize];
        self.file
            .read_exact_at(&mut tail, from)
            .map_err(|e| Error::io("read journal", &self.path, e))?;
        let base = upto.max(self.base);
        write_fresh(&self.path, base, &tail)?;
        self.file = open_rw(&self.path)?;
        self.len = HEADER_LEN + tail.len() as u64;
        self.base = base;
        self.ends = self.ends[keep..]
            .iter()
            .map(|(s, end)| (*s, end - from + HEADER_LEN))
            .collect();
        Ok(())
    }

    /// Whether the journal's path still leads to the file being appended to, as this
    /// daemon left it: see [`Self::displaced`].
    pub fn in_place(&self) -> bool {
        self.displaced().is_none()
    }

    /// What happened to the journal behind the daemon's back, if anything: deleted or
    /// replaced (the open file has no name left, or the path leads to another inode), or
    /// changed in size (truncated in place, or written to by something else: the inode
    /// is the same, but the next record would not follow the last one).
    pub fn displaced(&self) -> Option<&'static str> {
        let here = std::fs::symlink_metadata(&self.path).ok();
        let open = self.file.metadata().ok();
        match (here, open) {
            (Some(a), Some(b)) if b.nlink() > 0 && a.dev() == b.dev() && a.ino() == b.ino() => {
                (b.len() != self.len).then_some("changed in size (truncated in place?)")
            }
            _ => Some("deleted or replaced"),
        }
    }

    /// Where the journal lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{journal_with, rec};
    use super::super::{replay, scan};
    use super::*;
    use crate::registry::Catalog;
    use crate::registry::persist::tests::catalog_of;

    #[test]
    fn append_replay_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = journal_with(dir.path(), 3);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let s = scan(&p).unwrap().unwrap();
        assert_eq!(s.records.len(), 3);
        let mut c = Catalog::default();
        assert_eq!(replay(&mut c, &s, &p).unwrap(), 3);
        assert_eq!((c.journal_seq, c.sources.len()), (3, 3));
        // A catalog that already includes record 2 takes only record 3.
        let mut c = Catalog {
            journal_seq: 2,
            ..Default::default()
        };
        assert_eq!(replay(&mut c, &s, &p).unwrap(), 1);
        let mut j = Journal::open(&p, Some(s), 3).unwrap();
        j.append(&rec(4, "e4")).unwrap();
        assert_eq!(scan(&p).unwrap().unwrap().records.len(), 4);
    }

    #[test]
    fn a_torn_tail_is_dropped_and_cut_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let p = journal_with(dir.path(), 3);
        let full = std::fs::metadata(&p).unwrap().len();
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(full - 5).unwrap();
        let s = scan(&p).unwrap().unwrap();
        assert_eq!(s.records.len(), 2);
        let t = s.torn.clone().unwrap();
        assert_eq!(t.offset, s.good_len);
        assert!(matches!(&t.damage, super::super::Damage::CutShort(w) if w.contains("cut short")));
        let mut j = Journal::open(&p, Some(s), 2).unwrap();
        j.append(&rec(3, "again")).unwrap();
        let s = scan(&p).unwrap().unwrap();
        assert!(s.torn.is_none());
        assert_eq!(s.records.len(), 3);
    }

    #[test]
    fn rotation_keeps_only_the_records_registry_yaml_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let p = journal_with(dir.path(), 5);
        let s = scan(&p).unwrap().unwrap();
        let mut j = Journal::open(&p, Some(s), 5).unwrap();
        j.rotate(3).unwrap();
        let s = scan(&p).unwrap().unwrap();
        assert_eq!(s.base, 3);
        let seqs: Vec<u64> = s.records.iter().map(|(d, _)| d.seq).collect();
        assert_eq!(seqs, [4, 5]);
        j.append(&rec(6, "e6")).unwrap();
        j.rotate(6).unwrap();
        let s = scan(&p).unwrap().unwrap();
        assert_eq!((s.base, s.records.len()), (6, 0));
        // registry.yaml older than the journal's start: refused.
        let mut c = catalog_of("m", &[1]);
        c.journal_seq = 2;
        let e = replay(&mut c, &s, &p).unwrap_err().to_string();
        assert!(e.contains("continues from record 6"), "{e}");
    }
}
