//! For `recover`: every record a journal still holds, however damaged, applied as far as each fits.

use std::path::Path;

use super::frame::{HEADER_LEN, MAGIC, MARKER, checksum};
use super::{Damage, Scan, Torn, decode, describe_damaged};
use crate::error::{Error, Result};
use crate::registry::Catalog;

/// Reads the journal at `path` for `recover`, whatever is damaged: every intact record
/// in sequence, and each damaged stretch (its offset, size, what is wrong and what it
/// seems to hold), up to the next intact record or the end. A bad header makes the whole
/// file one damaged stretch. `Ok(None)` when there is no journal (or it is empty).
pub fn scan_all(path: &Path) -> Result<Option<(Scan, Vec<Torn>)>> {
    let bytes = match std::fs::read(path) {
        Ok(b) if b.is_empty() => return Ok(None),
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read journal", path, e)),
    };
    let h = HEADER_LEN as usize;
    let mut scan = Scan {
        base: 0,
        records: Vec::new(),
        good_len: 0,
        torn: None,
    };
    if bytes.len() < h || &bytes[..8] != MAGIC || checksum(&[&bytes[..16]]) != bytes[16..h] {
        let whole = Torn {
            offset: 0,
            size: bytes.len() as u64,
            damage: Damage::NotARecord("not a modelreg journal (bad header)".into()),
            what: describe_damaged(&bytes),
        };
        return Ok(Some((scan, vec![whole])));
    }
    scan.base = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let mut damaged = Vec::new();
    let mut pos = h;
    while pos < bytes.len() {
        let last = scan.records.last().map_or(scan.base, |(d, _)| d.seq);
        let why = match decode(&bytes[pos..]) {
            Ok((d, n)) if d.seq > last => {
                pos += n;
                scan.records.push((d, pos as u64));
                continue;
            }
            Ok((d, _)) => Damage::NotARecord(format!("record {} out of sequence", d.seq)),
            Err(why) => why,
        };
        let next = (pos + 1..bytes.len())
            .find(|&q| bytes[q..].starts_with(MARKER) && decode(&bytes[q..]).is_ok())
            .unwrap_or(bytes.len());
        damaged.push(Torn {
            offset: pos as u64,
            size: (next - pos) as u64,
            what: describe_damaged(&bytes[pos..next]),
            damage: why,
        });
        pos = next;
    }
    scan.good_len = bytes.len() as u64;
    Ok(Some((scan, damaged)))
}

/// For `recover` when the journal does not continue what registry.yaml holds (both
/// gone, registry.yaml older than the journal, or the journal damaged): applies every
/// record of `scan` to `c` (rebuilt from the store's manifests) as far as each fits, and
/// returns how many applied and what could not be kept. A record carries the touched
/// model's whole alias state, its changed versions whole and the alias moves it
/// appended, so the aliases come back; the moves made before the journal's first record
/// do not (said once per model).
pub fn salvage(c: &mut Catalog, scan: &Scan) -> (usize, Vec<String>) {
    let mut notes = Vec::new();
    let mut short = std::collections::BTreeSet::new();
    let mut applied = 0;
    for (d, _) in &scan.records {
        let mut d = d.clone();
        for md in &mut d.models {
            let Some(s) = &mut md.state else { continue };
            let m = c.models.get(&md.name);
            let held = m.map_or(0, |m| m.alias_history.len());
            if s.history_from > held {
                if short.insert(md.name.clone()) {
                    notes.push(format!(
                        "{}: the alias history's first {} move(s), made before the journal's records, are lost",
                        md.name,
                        s.history_from - held
                    ));
                }
                s.history_from = held;
            }
            let top = m.and_then(|m| m.versions.last()).map_or(0, |v| v.number);
            s.highest = s.highest.max(top).max(m.map_or(0, |m| m.highest));
            let stored = |n: u32| {
                s.versions
                    .iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| v)
                    .or_else(|| m.and_then(|m| m.find(n)))
                    .is_some_and(|v| v.removed.is_none())
            };
            let gone: Vec<(String, u32)> = s
                .aliases
                .iter()
                .filter(|(_, n)| !stored(**n))
                .map(|(a, n)| (a.clone(), *n))
                .collect();
            for (a, n) in gone {
                s.aliases.remove(&a);
                notes.push(format!("{}: alias {a} -> v{n} (not in the store)", md.name));
            }
        }
        match d.apply(c) {
            Ok(()) => applied += 1,
            Err(why) => notes.push(format!("journal record {}: not applied: {why}", d.seq)),
        }
    }
    let last = scan.records.last().map_or(scan.base, |(d, _)| d.seq);
    c.journal_seq = c.journal_seq.max(last);
    (applied, notes)
}
