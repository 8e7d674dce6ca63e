//! PyTorch `.pt`/`.pth`: whether it is a torch zip archive and how many entries it holds, from the zip's central directory; never unpickled.
//!
//! `torch.save` writes a zip whose entries sit under one folder (`archive/data.pkl`,
//! `archive/data/0`, ...). The end-of-central-directory record (in the last 64 KiB) gives
//! the directory's place and entry count; the directory (at most [`MAX_DIRECTORY`]) is
//! read for the entry names, to find `data.pkl`. The pickle is never read: unpickling
//! runs code. An older torch file (a bare pickle) is named as such and not read either.

use serde_json::{Map, Value, json};

use super::reader::{Parsed, Reader, clip};

/// The largest central directory read (a torch file has one entry per tensor storage,
/// about 100 bytes each).
pub const MAX_DIRECTORY: u64 = 16 << 20;

/// Reads the facts of a zip file (`PK\3\4`); see the module docs.
pub fn read(r: &mut Reader) -> Parsed<Map<String, Value>> {
    let len = r.len();
    // The end record is 22 bytes plus a comment of at most 65535.
    let tail_len = len.min(22 + 65535);
    r.seek_to(len - tail_len)?;
    let tail = r.bytes(tail_len, 22 + 65535, "the zip's tail")?;
    let at = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| tail[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
        .ok_or("truncated: no zip end-of-central-directory record (a cut or damaged zip)")?;
    let eocd = &tail[at..];
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]) as u64;
    let u32_at =
        |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as u64;
    let mut entries = u16_at(eocd, 10);
    let mut dir_size = u32_at(eocd, 12);
    let mut dir_at = u32_at(eocd, 16);
    let eocd_pos = len - tail_len + at as u64;
    if entries == 0xffff || dir_size == 0xffff_ffff || dir_at == 0xffff_ffff {
        // Zip64 (torch writes it for files over 4 GiB): the locator sits just before.
        let loc = eocd_pos
            .checked_sub(20)
            .ok_or("truncated: a zip64 file without its locator")?;
        r.seek_to(loc)?;
        let l = r.bytes(20, 20, "the zip64 locator")?;
        if l[..4] != [0x50, 0x4b, 0x06, 0x07] {
            return Err("a zip64 file without its locator".into());
        }
        let rec = u64::from_le_bytes(l[8..16].try_into().expect("8 bytes"));
        r.seek_to(rec)?;
        let z = r.bytes(56, 56, "the zip64 end record")?;
        if z[..4] != [0x50, 0x4b, 0x06, 0x06] {
            return Err("the zip64 end record is not where its locator says".into());
        }
        let u64_at = |i: usize| u64::from_le_bytes(z[i..i + 8].try_into().expect("8 bytes"));
        entries = u64_at(32);
        dir_size = u64_at(40);
        dir_at = u64_at(48);
    }
    if dir_at.checked_add(dir_size).is_none_or(|e| e > eocd_pos) {
        return Err(format!(
            "truncated: the zip's directory ({dir_size} bytes at offset {dir_at}) is not before its end record"
        ));
    }
    r.seek_to(dir_at)?;
    let dir = r.bytes(dir_size, MAX_DIRECTORY, "the zip's central directory")?;
    // The entry names: each record is 46 bytes, then name, extra and comment.
    let (mut i, mut seen, mut pickle) = (0usize, 0u64, None);
    while i + 46 <= dir.len() && seen < entries {
        if dir[i..i + 4] != [0x50, 0x4b, 0x01, 0x02] {
            return Err(format!("the zip's directory is damaged at entry {seen}"));
        }
        let (n, x, c) = (
            u16_at(&dir, i + 28) as usize,
            u16_at(&dir, i + 30) as usize,
            u16_at(&dir, i + 32) as usize,
        );
        let name = dir
            .get(i + 46..i + 46 + n)
            .ok_or("the zip's directory is cut inside a name")?;
        if pickle.is_none() && name.ends_with(b"data.pkl") {
            pickle = Some(String::from_utf8_lossy(name).into_owned());
        }
        i += 46 + n + x + c;
        seen += 1;
    }
    if seen != entries {
        return Err(format!(
            "the zip's directory lists {seen} entries but its end record says {entries}"
        ));
    }
    let mut out = Map::new();
    match pickle {
        Some(p) => {
            let archive = p
                .strip_suffix("data.pkl")
                .unwrap_or_default()
                .trim_end_matches('/');
            out.insert("format".into(), json!("pytorch_zip"));
            out.insert("archive".into(), json!(clip(archive, 256)));
            out.insert(
                "pickle".into(),
                json!(format!("{} (not unpickled)", clip(&p, 256))),
            );
        }
        None => {
            out.insert("format".into(), json!("zip"));
            out.insert("note".into(), json!("no data.pkl: not a torch archive"));
        }
    }
    out.insert("entries".into(), json!(entries));
    Ok(out)
}

/// The facts of a legacy (pre-1.6) torch file: a bare pickle, not read.
pub fn legacy_pickle() -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("format".into(), json!("pytorch_pickle"));
    out.insert(
        "note".into(),
        json!("a legacy torch pickle: not unpickled (that would run code)"),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored (uncompressed) zip of `names`, each holding one byte.
    pub(crate) fn zip(names: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut dir = Vec::new();
        for n in names {
            let at = out.len() as u32;
            out.extend_from_slice(&[0x50, 0x4b, 3, 4, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            out.extend_from_slice(&[0; 4]); // crc (not checked)
            out.extend_from_slice(&1u32.to_le_bytes());
            out.extend_from_slice(&1u32.to_le_bytes());
            out.extend_from_slice(&(n.len() as u16).to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(n.as_bytes());
            out.push(b'x');
            dir.extend_from_slice(&[0x50, 0x4b, 1, 2, 20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            dir.extend_from_slice(&[0; 4]);
            dir.extend_from_slice(&1u32.to_le_bytes());
            dir.extend_from_slice(&1u32.to_le_bytes());
            dir.extend_from_slice(&(n.len() as u16).to_le_bytes());
            dir.extend_from_slice(&[0; 12]);
            dir.extend_from_slice(&at.to_le_bytes());
            dir.extend_from_slice(n.as_bytes());
        }
        let dir_at = out.len() as u32;
        out.extend_from_slice(&dir);
        out.extend_from_slice(&[0x50, 0x4b, 5, 6, 0, 0, 0, 0]);
        out.extend_from_slice(&(names.len() as u16).to_le_bytes());
        out.extend_from_slice(&(names.len() as u16).to_le_bytes());
        out.extend_from_slice(&(dir.len() as u32).to_le_bytes());
        out.extend_from_slice(&dir_at.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }

    fn parse(bytes: Vec<u8>) -> Parsed<Map<String, Value>> {
        crate::extract::reader::parse_bytes(read, bytes)
    }

    #[test]
    fn a_torch_zip_is_named_with_its_entries() {
        let f = parse(zip(&["m/data.pkl", "m/data/0", "m/version"])).unwrap();
        assert_eq!(f["format"], "pytorch_zip");
        assert_eq!(f["entries"], 3);
        assert_eq!(f["archive"], "m");
        let f = parse(zip(&["a.txt"])).unwrap();
        assert_eq!(f["format"], "zip");
    }

    #[test]
    fn a_cut_zip_is_unreadable() {
        let z = zip(&["m/data.pkl", "m/data/0"]);
        for cut in [4, z.len() / 2, z.len() - 1] {
            let e = parse(z[..cut].to_vec()).unwrap_err();
            assert!(e.starts_with("truncated"), "cut at {cut}: {e}");
        }
    }
}
