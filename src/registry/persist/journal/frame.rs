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
}
