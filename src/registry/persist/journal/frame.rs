//! The journal's bytes: the header, and each record framed with a marker, its length and a checksum.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::registry::Delta;

pub(super) const MAGIC: &[u8; 8] = b"MRJOURNL";
pub(super) const HEADER_LEN: u64 = 24;
pub(super) const MARKER: &[u8; 4] = b"\0REC";
const RECORD_HEAD: usize = 16;
/// A record longer than this is damage, not a commit (a commit of 10,000 new versions is
/// a few MB).
const MAX_RECORD: usize = 1 << 30;

pub(super) fn checksum(parts: &[&[u8]]) -> [u8; 8] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    let d = h.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

pub(super) fn header(base: u64) -> Vec<u8> {
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

/// What is wrong with the bytes where a record should start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// Fewer bytes than the record's head announces: an append cut short (what a crash
    /// during a write leaves; such a record's fsync never returned).
    CutShort(String),
    /// All the announced bytes are there but the checksum (or the payload) is wrong:
    /// damage after the write, or a crash that left the file's length ahead of its data.
    /// Which one cannot be told, so it may have been acknowledged.
    Checksum(String),
    /// Not a record at all (no marker, an impossible length).
    NotARecord(String),
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::CutShort(w) | Damage::Checksum(w) | Damage::NotARecord(w) => f.write_str(w),
        }
    }
}

/// The record at the start of `buf` and its length in bytes, or what is wrong there.
pub fn decode(buf: &[u8]) -> std::result::Result<(Delta, usize), Damage> {
    if buf.len() < RECORD_HEAD {
        return Err(Damage::CutShort(format!(
            "cut short: {} byte(s), shorter than a record's head",
            buf.len()
        )));
    }
    if &buf[..4] != MARKER {
        return Err(Damage::NotARecord("no record marker".into()));
    }
    let len = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
    if len >= MAX_RECORD {
        return Err(Damage::NotARecord(format!("a length of {len} bytes")));
    }
    let end = RECORD_HEAD + len;
    if buf.len() < end {
        return Err(Damage::CutShort(format!(
            "cut short: {len} byte(s) announced, {} present",
            buf.len() - RECORD_HEAD
        )));
    }
    let payload = &buf[RECORD_HEAD..end];
    if checksum(&[&buf[4..8], payload]) != buf[8..16] {
        return Err(Damage::Checksum("checksum mismatch".into()));
    }
    let d = serde_json::from_slice(payload)
        .map_err(|e| Damage::Checksum(format!("unreadable record: {e}")))?;
    Ok((d, end))
}

/// What a damaged record at the start of `buf` seems to hold, as far as it can be read
/// (for the warning that says what was dropped): its number and the models it touched
/// with their versions, or the model names found in the bytes there are.
pub fn describe_damaged(buf: &[u8]) -> String {
    let payload = buf.get(RECORD_HEAD..).unwrap_or_default();
    let len = buf.get(4..8).map_or(0, |b| {
        u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize
    });
    if let Ok(d) = serde_json::from_slice::<Delta>(&payload[..len.min(payload.len())]) {
        let models: Vec<String> = d
            .models
            .iter()
            .map(|m| {
                let vs: Vec<String> = m
                    .state
                    .iter()
                    .flat_map(|s| &s.versions)
                    .map(|(n, _)| format!("v{n}"))
                    .chain(m.state.iter().flat_map(|s| &s.history).map(|h| {
                        let to = h.to.map_or("removed".into(), |n| format!("v{n}"));
                        format!("alias {} -> {to}", h.alias)
                    }))
                    .collect();
                if vs.is_empty() {
                    m.name.clone()
                } else {
                    format!("{} {}", m.name, vs.join(" "))
                }
            })
            .collect();
        return format!(
            "record {}: model(s) {}",
            d.seq,
            if models.is_empty() {
                "none (inbox sources only)".into()
            } else {
                models.join(", ")
            }
        );
    }
    // Cut short or damaged JSON: the model names that can still be read.
    let text = String::from_utf8_lossy(payload);
    let mut names: Vec<&str> = ["\"name\":\"", "\"model\":\""]
        .iter()
        .flat_map(|key| text.match_indices(key))
        .filter_map(|(i, k)| text[i + k.len()..].split('"').next())
        .collect();
    names.sort_unstable();
    names.dedup();
    names.truncate(5);
    if names.is_empty() {
        "unreadable: no model name in it".into()
    } else {
        format!("readable in part: model(s) {}", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::persist::journal::tests::rec;

    #[test]
    fn records_encode_and_decode_and_damage_is_detected() {
        let d = rec(3, "a.pt");
        let bytes = encode(&d).unwrap();
        let (back, n) = decode(&bytes).unwrap();
        assert_eq!((back, n), (d, bytes.len()));
        let short = &bytes[..bytes.len() - 1];
        assert!(matches!(decode(short), Err(Damage::CutShort(_))));
        assert!(
            describe_damaged(short).contains("model(s) m"),
            "{}",
            describe_damaged(short)
        );
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(decode(&flipped), Err(Damage::Checksum(w)) if w.contains("checksum")));
        assert!(matches!(decode(&bytes[1..]), Err(Damage::NotARecord(w)) if w.contains("marker")));
    }
}
