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
//! A last record cut short is what a crash during an append leaves (its fsync never
//! returned, so it was not acknowledged): it is dropped with a warning naming its offset
//! and what it held. A last record complete in length whose checksum fails is dropped
//! too, but said to be what it is: damage after the write (then it may have been
//! acknowledged) or a crash that left the length ahead of the data; which one cannot be
//! told, so its bytes are kept beside the journal. A damaged record followed by intact
//! ones is not a crash's doing: acknowledged changes would be lost, so loading refuses,
//! naming the file and the offset.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::registry::{Catalog, Delta};

mod base;
mod file;
mod frame;
mod salvage;

pub use base::{base_continued, base_joining, base_newer, base_path, keep_base};
pub use file::Journal;
pub use frame::{Damage, decode, describe_damaged, encode};
use frame::{HEADER_LEN, MAGIC, MARKER, checksum};
pub use salvage::{salvage, scan_all};

/// Where the journal of `registry` lives: beside it, `registry.journal` for `registry.yaml`.
pub fn journal_path(registry: &Path) -> PathBuf {
    registry.with_extension("journal")
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
    /// A damaged last record, dropped.
    pub torn: Option<Torn>,
}

/// A damaged last record: where, how big, what is wrong and what it seems to hold.
#[derive(Debug, Clone)]
pub struct Torn {
    /// Its offset in the file.
    pub offset: u64,
    /// The bytes from there to the end of the file.
    pub size: u64,
    /// Cut short, or complete with a bad checksum, or not a record.
    pub damage: Damage,
    /// What it held, as far as it can be read (see [`describe_damaged`]).
    pub what: String,
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
             be lost. Run `modelreg recover` (with the daemon's --root or --config): it sets the \
             journal aside, applies every intact record and adds back the versions the store \
             holds, and lists what is lost. Or restore the journal from a backup."
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
                // A later record begun after it, even one cut short: appends follow each
                // other's fsync, so the damaged one had been written whole and may have
                // been acknowledged — not a torn append either. (A record's payload is
                // JSON, which never holds the marker's NUL byte.)
                if let Some(q) = (pos + 1..bytes.len()).find(|&q| bytes[q..].starts_with(MARKER)) {
                    return Err(refuse(
                        pos as u64,
                        format!(
                            "damaged record ({why}) followed by a later record (at offset {q}, \
                             itself cut short): it was written whole before that one began"
                        ),
                    ));
                }
                torn = Some(Torn {
                    offset: pos as u64,
                    size: (bytes.len() - pos) as u64,
                    what: describe_damaged(&bytes[pos..]),
                    damage: why,
                });
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
        let base = base_path(&path.with_extension("yaml"));
        return Err(Error::Other(format!(
            "{}: it continues from record {}, but registry.yaml includes only up to record {}, \
             and its last copy {} no further: the changes in between are in neither \
             (registry.yaml restored from an older copy?). Not starting. Run `modelreg recover` \
             (with the daemon's --root or --config): it keeps registry.yaml, adds back the \
             versions the store holds, applies the journal's records, and lists what is lost. \
             Or restore a registry.yaml that includes record {} (a backup's, with its journal).",
            path.display(),
            scan.base,
            c.journal_seq,
            base.display(),
            scan.base,
        )));
    }
    let mut applied = 0;
    let mut start = HEADER_LEN;
    for (d, end) in &scan.records {
        if d.seq > c.journal_seq {
            d.apply(c).map_err(|why| {
                let registry = path.with_extension("yaml");
                Error::Other(format!(
                    "{}: offset {start}: record {} does not fit the catalog: {why}. {}",
                    path.display(),
                    d.seq,
                    base::fix_for_misfit(&registry, scan, c.journal_seq)
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

/// Warns about a damaged last record, saying which kind it is and what was dropped.
pub fn warn_torn(path: &Path, scan: &Scan) {
    let Some(t) = &scan.torn else { return };
    let offset = t.offset;
    tracing::warn!(journal = %path.display(), offset, "{}", describe_torn(path, t));
}

/// What dropping the damaged last record `t` of the journal at `path` means, in one
/// sentence: where, how many bytes, which kind of damage, what it held, and whether it
/// had been acknowledged. The start-up shows it in `status` too (see the daemon).
pub fn describe_torn(path: &Path, t: &Torn) -> String {
    let shown = path.display();
    let (offset, size, what) = (t.offset, t.size, &t.what);
    match &t.damage {
        Damage::CutShort(why) => format!(
            "{shown}: dropped the last record at offset {offset} ({size} byte(s), {why}; {what}): \
             a torn tail, an append cut short by a crash before its fsync returned, so this \
             change was not acknowledged"
        ),
        Damage::Checksum(why) => format!(
            "{shown}: dropped the last record at offset {offset} ({size} byte(s), complete in \
             length but {why}; {what}): either damaged on disk after it was written (then it \
             may have been acknowledged) or left by a crash with the file's length ahead of its \
             data; which one cannot be told, so its bytes are kept beside the journal"
        ),
        Damage::NotARecord(why) => format!(
            "{shown}: dropped {size} byte(s) at offset {offset} that are not a record ({why}; \
             {what}); its bytes are kept beside the journal"
        ),
    }
}

/// registry.yaml (or, when it is gone, its last copy: see [`base_joining`]) with the
/// journal beside it replayed: the catalog as the daemon last committed it. `Ok(None)` when neither exists. Reads only (a torn tail is warned
/// about, not removed): for `verify --offline`, `recover` and tests.
pub fn load_current(registry: &Path) -> Result<Option<Catalog>> {
    let path = journal_path(registry);
    let scan = scan(&path)?;
    let loaded = match super::load(registry)? {
        Some(c) => base_newer(registry, Some(&c), scan.as_ref()).or(Some(c)),
        None => base_joining(registry, scan.as_ref()),
    };
    let Some(scan) = scan else {
        return Ok(loaded);
    };
    Ok(Some(continue_from(loaded, Some(&scan), &path)?.0))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::registry::persist::tests::catalog_of;
    use crate::registry::{SourceRecord, Touched};

    /// A record that sets source `entry`.
    pub(crate) fn rec(seq: u64, entry: &str) -> Delta {
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

    pub(crate) fn journal_with(dir: &Path, n: u64) -> PathBuf {
        let p = dir.join("registry.journal");
        let mut j = Journal::open(&p, None, 0).unwrap();
        for s in 1..=n {
            j.append(&rec(s, &format!("e{s}"))).unwrap();
        }
        p
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
