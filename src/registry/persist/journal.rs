//! registry.journal: the append-only record of every commit since registry.yaml was last written, checksummed, replayed at start.
//!
//! A commit appends one [`Delta`] and fsyncs it before anything is acknowledged or
//! published; registry.yaml is rewritten from memory now and then (see the registrar) and
//! names the last record it includes (`journal_seq`), so that replay applies each later
//! record exactly once, whatever a crash interrupted.
//!
//! Layout: a 24-byte header (`MRJOURNL`, the `base` sequence number the file continues
//! from, a checksum), then records: the marker `\0REC`, the payload's length (u32 LE), a
//! checksum of length and payload (the first 8 bytes of their SHA-256), and the payload,
//! a [`Delta`] as JSON. JSON never holds a raw NUL, so a marker is never inside a payload.
//!
//! A record cut short or damaged at the end of the file is what a crash during an append
//! leaves: it was never acknowledged, and it is dropped with a warning naming its offset.
//! A damaged record followed by intact ones is not a crash's doing: acknowledged changes
//! would be lost, so loading refuses, naming the file and the offset.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::fsutil::sync_dir;
use crate::registry::{Catalog, Delta};

const MAGIC: &[u8; 8] = b"MRJOURNL";
const HEADER_LEN: u64 = 24;
const MARKER: &[u8; 4] = b"\0REC";
const RECORD_HEAD: usize = 16;
/// A record longer than this is damage, not a commit (a commit of 10,000 new versions is
/// a few MB).
const MAX_RECORD: usize = 1 << 30;

/// Where the journal of `registry` lives: beside it, `registry.journal` for `registry.yaml`.
pub fn journal_path(registry: &Path) -> PathBuf {
    registry.with_extension("journal")
}

fn checksum(parts: &[&[u8]]) -> [u8; 8] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    let d = h.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

fn header(base: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN as usize);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&base.to_le_bytes());
    let sum = checksum(&[&h]);
    h.extend_from_slice(&sum);
    h
}

/// One record as bytes: marker, length, checksum, payload.
pub fn encode(d: &Delta) -> Result<Vec<u8>> {
    let payload = serde_json::to_vec(d)
        .map_err(|e| Error::Other(format!("cannot serialise a journal record: {e}")))?;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|n| (*n as usize) < MAX_RECORD)
        .ok_or_else(|| Error::Other("a journal record over 1 GiB".into()))?
        .to_le_bytes();
    let mut out = Vec::with_capacity(RECORD_HEAD + payload.len());
    out.extend_from_slice(MARKER);
    out.extend_from_slice(&len);
    out.extend_from_slice(&checksum(&[&len, &payload]));
    out.extend_from_slice(&payload);
    Ok(out)
}

/// The record at the start of `buf` and its length in bytes, or why there is none.
pub fn decode(buf: &[u8]) -> std::result::Result<(Delta, usize), String> {
    if buf.len() < RECORD_HEAD {
        return Err(format!(
            "{} byte(s), shorter than a record's head",
            buf.len()
        ));
    }
    if &buf[..4] != MARKER {
        return Err("no record marker".into());
    }
    let len = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
    if len >= MAX_RECORD {
        return Err(format!("a length of {len} bytes"));
    }
    let end = RECORD_HEAD + len;
    if buf.len() < end {
        return Err(format!(
            "cut short: {len} byte(s) announced, {} present",
            buf.len() - RECORD_HEAD
        ));
    }
    let payload = &buf[RECORD_HEAD..end];
    if checksum(&[&buf[4..8], payload]) != buf[8..16] {
        return Err("checksum mismatch".into());
    }
    let d = serde_json::from_slice(payload).map_err(|e| format!("unreadable record: {e}"))?;
    Ok((d, end))
}

/// A journal as read: the records it holds and where each ends.
#[derive(Debug)]
pub struct Scan {
    /// The sequence number the first record follows.
    pub base: u64,
    /// The records in order, each with the offset just past it.
    pub records: Vec<(Delta, u64)>,
    /// The bytes up to the end of the last intact record.
    pub good_len: u64,
    /// A damaged tail that was dropped: its offset, size and why.
    pub torn: Option<(u64, u64, String)>,
}

/// Reads the journal at `path`; `Ok(None)` when there is none (or it is empty). A damaged
/// record with intact records after it, or records out of sequence, is an error naming
/// the path and the offset.
pub fn scan(path: &Path) -> Result<Option<Scan>> {
    let bytes = match std::fs::read(path) {
        Ok(b) if b.is_empty() => return Ok(None),
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read journal", path, e)),
    };
    let shown = path.display();
    let refuse = |offset: u64, why: String| {
        Error::Other(format!(
            "{shown}: offset {offset}: {why}. Not starting: changes that were acknowledged would \
             be lost. Restore the file, or move it aside to start from registry.yaml alone."
        ))
    };
    let h = HEADER_LEN as usize;
    if bytes.len() < h || &bytes[..8] != MAGIC || checksum(&[&bytes[..16]]) != bytes[16..h] {
        return Err(refuse(0, "not a modelreg journal (bad header)".into()));
    }
    let base = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let mut records: Vec<(Delta, u64)> = Vec::new();
    let mut pos = h;
    let mut torn = None;
    while pos < bytes.len() {
        match decode(&bytes[pos..]) {
            Ok((d, n)) => {
                let expected = records.last().map_or(base, |(r, _)| r.seq) + 1;
                if d.seq != expected {
                    return Err(refuse(
                        pos as u64,
                        format!("record {} where record {expected} belongs", d.seq),
                    ));
                }
                pos += n;
                records.push((d, pos as u64));
            }
            Err(why) => {
                // Intact records after the damage: not a torn append.
                if let Some(q) = (pos + 1..bytes.len())
                    .find(|&q| bytes[q..].starts_with(MARKER) && decode(&bytes[q..]).is_ok())
                {
                    return Err(refuse(
                        pos as u64,
                        format!(
                            "damaged record ({why}) followed by intact records (at offset {q})"
                        ),
                    ));
                }
                torn = Some((pos as u64, (bytes.len() - pos) as u64, why));
                break;
            }
        }
    }
    Ok(Some(Scan {
        base,
        records,
        good_len: pos as u64,
        torn,
    }))
}

/// Applies the records of `scan` that `c` does not include yet (those after
/// `c.journal_seq`). A journal that starts after the catalog ends (registry.yaml older
/// than its journal) or a record that does not fit is an error naming `path`.
pub fn replay(c: &mut Catalog, scan: &Scan, path: &Path) -> Result<usize> {
    if scan.base > c.journal_seq {
        return Err(Error::Other(format!(
            "{}: it continues from record {}, but registry.yaml includes only up to record {}: \
             the changes in between are in neither (registry.yaml restored from an older copy?). \
             Not starting; move the journal aside to start from registry.yaml as it is.",
            path.display(),
            scan.base,
            c.journal_seq
        )));
    }
    let mut applied = 0;
    let mut start = HEADER_LEN;
    for (d, end) in &scan.records {
        if d.seq > c.journal_seq {
            d.apply(c).map_err(|why| {
                Error::Other(format!(
                    "{}: offset {start}: record {} does not fit the catalog: {why}",
                    path.display(),
                    d.seq
                ))
            })?;
            applied += 1;
        }
        start = *end;
    }
    Ok(applied)
}

/// The catalog to start from: `loaded` (registry.yaml; `None` when it does not exist)
/// with the records of `scan` it lacks, and how many were applied. A journal that
/// continues a registry.yaml that no longer exists (its base is past 0) cannot be
/// replayed on nothing: it is set aside with a warning (its records are skipped from now
/// on), and the store audit decides whether versions were lost.
pub fn continue_from(
    loaded: Option<Catalog>,
    scan: Option<&Scan>,
    path: &Path,
) -> Result<(Catalog, usize)> {
    let Some(scan) = scan else {
        return Ok((loaded.unwrap_or_default(), 0));
    };
    warn_torn(path, scan);
    match loaded {
        None if scan.base > 0 => {
            let last = scan.records.last().map_or(scan.base, |(d, _)| d.seq);
            tracing::warn!(
                "{}: registry.yaml, which it continues, does not exist; its records are not applied",
                path.display()
            );
            Ok((
                Catalog {
                    journal_seq: last,
                    ..Default::default()
                },
                0,
            ))
        }
        loaded => {
            let mut c = loaded.unwrap_or_default();
            let n = replay(&mut c, scan, path)?;
            Ok((c, n))
        }
    }
}

/// Warns about a torn tail (what a crash during an append leaves).
pub fn warn_torn(path: &Path, scan: &Scan) {
    if let Some((offset, size, why)) = &scan.torn {
        tracing::warn!(
            journal = %path.display(),
            offset,
            "{}: dropped an incomplete record at offset {offset} ({size} byte(s): {why}): \
             a commit a crash interrupted, never acknowledged",
            path.display()
        );
    }
}

/// registry.yaml with the journal beside it replayed: the catalog as the daemon last
/// committed it. `Ok(None)` when neither exists. Reads only (a torn tail is warned
/// about, not removed): for `verify --offline`, `recover` and tests.
pub fn load_current(registry: &Path) -> Result<Option<Catalog>> {
    let loaded = super::load(registry)?;
    let path = journal_path(registry);
    let Some(scan) = scan(&path)? else {
        return Ok(loaded);
    };
    Ok(Some(continue_from(loaded, Some(&scan), &path)?.0))
}

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

/// Writes a journal continuing from `base` holding `records` (encoded), atomically:
/// temporary file, fsync, rename, fsync of the folder.
fn write_fresh(path: &Path, base: u64, records: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Named like registry.yaml's temporaries, so start-up removes a leftover the same way.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(|e| Error::io("create temporary file in", dir, e))?;
    tmp.write_all(&header(base))
        .and_then(|_| tmp.write_all(records))
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| Error::io("write", tmp.path(), e))?;
    tmp.persist(path)
        .map_err(|e| Error::io("rename into place", path, e.error))?;
    sync_dir(dir)
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
        if scan.torn.is_some() {
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

    /// Whether the journal's path still leads to the file being appended to (it was not
    /// deleted or replaced while running).
    pub fn in_place(&self) -> bool {
        let here = std::fs::symlink_metadata(&self.path).ok();
        let open = self.file.metadata().ok();
        match (here, open) {
            (Some(a), Some(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::persist::tests::catalog_of;
    use crate::registry::{SourceRecord, Touched};

    /// A record that sets source `entry`.
    fn rec(seq: u64, entry: &str) -> Delta {
        let before = Catalog::default();
        let mut after = Catalog::default();
        after.sources.insert(
            entry.into(),
            SourceRecord {
                fingerprint: format!("fp{seq}"),
                model: "m".into(),
                version: Some(1),
                sha256: None,
            },
        );
        let mut t = Touched::default();
        t.source(entry);
        Delta::between(seq, &before, &after, &t)
    }

    fn journal_with(dir: &Path, n: u64) -> PathBuf {
        let p = dir.join("registry.journal");
        let mut j = Journal::open(&p, None, 0).unwrap();
        for s in 1..=n {
            j.append(&rec(s, &format!("e{s}"))).unwrap();
        }
        p
    }

    #[test]
    fn records_encode_and_decode_and_damage_is_detected() {
        let d = rec(3, "a.pt");
        let bytes = encode(&d).unwrap();
        let (back, n) = decode(&bytes).unwrap();
        assert_eq!((back, n), (d, bytes.len()));
        assert!(
            decode(&bytes[..bytes.len() - 1])
                .unwrap_err()
                .contains("cut short")
        );
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(decode(&flipped).unwrap_err().contains("checksum"));
        assert!(decode(&bytes[1..]).unwrap_err().contains("marker"));
    }

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
        let (offset, _, why) = s.torn.clone().unwrap();
        assert_eq!(offset, s.good_len);
        assert!(why.contains("cut short"), "{why}");
        let mut j = Journal::open(&p, Some(s), 2).unwrap();
        j.append(&rec(3, "again")).unwrap();
        let s = scan(&p).unwrap().unwrap();
        assert!(s.torn.is_none());
        assert_eq!(s.records.len(), 3);
    }

    #[test]
    fn a_damaged_record_before_intact_ones_refuses_with_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = journal_with(dir.path(), 3);
        let s = scan(&p).unwrap().unwrap();
        let second = s.records[0].1;
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[second as usize + 20] ^= 0x20;
        std::fs::write(&p, &bytes).unwrap();
        let e = scan(&p).unwrap_err().to_string();
        assert!(e.contains(&format!("offset {second}")), "{e}");
        assert!(e.contains("registry.journal"), "{e}");
        // A bad header refuses too.
        bytes[3] = b'x';
        std::fs::write(&p, &bytes).unwrap();
        assert!(scan(&p).unwrap_err().to_string().contains("bad header"));
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

    #[test]
    fn load_current_is_registry_yaml_plus_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let reg = dir.path().join("registry.yaml");
        let c = catalog_of("m", &[1]);
        super::super::write_atomic(&reg, super::super::to_yaml(&c).unwrap().as_bytes()).unwrap();
        journal_with(dir.path(), 2);
        let now = load_current(&reg).unwrap().unwrap();
        assert_eq!(now.journal_seq, 2);
        assert_eq!(now.sources.len(), 2);
        assert_eq!(now.models.len(), 1);
    }
}
