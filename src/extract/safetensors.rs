//! safetensors: tensor count, parameters, dtypes with counts and `__metadata__`, from the header alone.
//!
//! The file is an 8-byte little-endian header length, a JSON header of that length
//! (`{"name": {"dtype", "shape", "data_offsets"}, "__metadata__": {..}}`), then the
//! weights, which are never read. A header length over [`MAX_HEADER_BYTES`] or past the
//! end of the file, a header that is not such JSON, or tensors that break the library's
//! own rules (a known dtype; data of exactly elements x dtype size; offsets contiguous
//! from 0 to the end of the file: [`check_spans`]) are unreadable, so a parameter count
//! is never one the file cannot hold.

use serde_json::{Map, Value, json};

use super::reader::{Parsed, Reader, clip};

/// The longest header read: the safetensors library's own limit (100 MB).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// `__metadata__` keys kept, and the length each value is cut to.
const MAX_METADATA_KEYS: usize = 64;
const MAX_VALUE_BYTES: usize = 1024;

/// Reads the facts of a safetensors file; see the module docs.
pub fn read(r: &mut Reader) -> Parsed<Map<String, Value>> {
    let n = r
        .u64()
        .map_err(|e| format!("{e} (reading the header length)"))?;
    if n > MAX_HEADER_BYTES {
        return Err(format!(
            "the header length says {n} bytes, over the {MAX_HEADER_BYTES}-byte limit"
        ));
    }
    if n > r.left() {
        return Err(format!(
            "truncated: the header length says {n} bytes but only {} follow it, file has {} bytes",
            r.left(),
            r.len()
        ));
    }
    let header = r.bytes(n, MAX_HEADER_BYTES, "the header")?;
    facts(&header, r.pos(), r.len())
}

/// The dtypes the safetensors library knows, with their sizes in bits (its
/// `Dtype::bitsize`): any other is refused, as the library refuses it.
const DTYPES: [(&str, u64); 20] = [
    ("BOOL", 8),
    ("F4", 4),
    ("F6_E2M3", 6),
    ("F6_E3M2", 6),
    ("U8", 8),
    ("I8", 8),
    ("F8_E5M2", 8),
    ("F8_E4M3", 8),
    ("F8_E8M0", 8),
    ("I16", 16),
    ("U16", 16),
    ("F16", 16),
    ("BF16", 16),
    ("I32", 32),
    ("U32", 32),
    ("F32", 32),
    ("C64", 64),
    ("F64", 64),
    ("I64", 64),
    ("U64", 64),
];

/// The size in bits of one element of `dtype`, when the library knows it.
fn dtype_bits(dtype: &str) -> Option<u64> {
    DTYPES.iter().find(|(d, _)| *d == dtype).map(|(_, b)| *b)
}

/// The library's rules for where the tensors' data lies: sorted by their offsets, the
/// first starts at 0, each starts where the one before ends (no gap, no overlap), and
/// the last ends at the end of the data section (the file after the header, which
/// starts at byte `data_at` of a file of `len` bytes). A data section ending early is a
/// cut file, said as such.
fn check_spans(mut spans: Vec<(u64, u64, String)>, data_at: u64, len: u64) -> Parsed<()> {
    let data = len.saturating_sub(data_at);
    spans.sort();
    let mut at = 0u64;
    for (start, end, name) in &spans {
        if *start != at {
            let how = if *start < at {
                "overlaps the one before"
            } else {
                "leaves a gap before it"
            };
            return Err(format!(
                "tensor {name:?}: its data starts at {start}, not at {at} where the one before ends: it {how}"
            ));
        }
        at = *end;
    }
    if at > data {
        let name = spans.last().map(|(_, _, n)| n.as_str()).unwrap_or_default();
        return Err(format!(
            "truncated: tensor {name:?} ends at byte {}, file has {len} bytes",
            data_at.saturating_add(at)
        ));
    }
    if at < data {
        return Err(format!(
            "the tensors' data ends at {at} but {data} bytes follow the header ({} not covered by any tensor)",
            data - at
        ));
    }
    Ok(())
}

/// The facts of a header's JSON bytes, the data after it starting at byte `data_at` of
/// a file of `len` bytes.
pub fn facts(header: &[u8], data_at: u64, len: u64) -> Parsed<Map<String, Value>> {
    // serde_json refuses nesting deeper than 128 levels: a hostile header cannot recurse.
    let top: Map<String, Value> =
        serde_json::from_slice(header).map_err(|e| format!("the header is not a JSON map: {e}"))?;
    let mut tensors = 0u64;
    let mut parameters = 0u64;
    let mut dtypes: std::collections::BTreeMap<String, u64> = Default::default();
    let mut metadata = Map::new();
    // Each tensor's data (start, end, name), to be checked as the library does.
    let mut spans: Vec<(u64, u64, String)> = Vec::new();
    for (name, v) in &top {
        if name == "__metadata__" {
            let Some(m) = v.as_object() else {
                return Err("`__metadata__` is not a map".into());
            };
            // The "N more keys" marker takes the last place, so that at most
            // MAX_METADATA_KEYS entries are kept in all, as docs/extraction.md says.
            let keep = if m.len() > MAX_METADATA_KEYS {
                MAX_METADATA_KEYS - 1
            } else {
                m.len()
            };
            for (k, v) in m.iter().take(keep) {
                let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                metadata.insert(clip(k, 256), Value::String(clip(&text, MAX_VALUE_BYTES)));
            }
            if m.len() > keep {
                metadata.insert(
                    "…".into(),
                    json!(format!("{} more keys not kept", m.len() - keep)),
                );
            }
            continue;
        }
        let bad = |why: &str| format!("tensor {:?}: {why}", clip(name, 128));
        let t = v.as_object().ok_or_else(|| bad("not a map"))?;
        let dtype = t
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no dtype"))?;
        let shape = t
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no shape"))?;
        let mut count = 1u64;
        for d in shape {
            let d = d
                .as_u64()
                .ok_or_else(|| bad("a dimension is not a count"))?;
            count = count
                .checked_mul(d)
                .ok_or_else(|| bad("its shape overflows 64 bits"))?;
        }
        let bits = dtype_bits(dtype).ok_or_else(|| {
            bad(&format!(
                "unknown dtype {:?} (the safetensors library's are {})",
                clip(dtype, 32),
                DTYPES.map(|(d, _)| d).join(", ")
            ))
        })?;
        let offsets = t
            .get("data_offsets")
            .and_then(Value::as_array)
            .filter(|o| o.len() == 2)
            .ok_or_else(|| bad("no data_offsets (two numbers)"))?;
        let (Some(start), Some(end)) = (offsets[0].as_u64(), offsets[1].as_u64()) else {
            return Err(bad("its data_offsets are not two counts"));
        };
        // The library's rule: the data holds elements x bits, whole bytes, exactly.
        let size = count
            .checked_mul(bits)
            .filter(|b| b % 8 == 0)
            .map(|b| b / 8)
            .ok_or_else(|| bad("its size in bytes overflows 64 bits or is not whole bytes"))?;
        if end < start || end - start != size {
            return Err(bad(&format!(
                "its data_offsets [{start}, {end}] hold {} bytes, its shape and dtype need {size}",
                end.saturating_sub(start)
            )));
        }
        spans.push((start, end, clip(name, 128)));
        tensors += 1;
        parameters = parameters
            .checked_add(count)
            .ok_or_else(|| "the parameter count overflows 64 bits".to_string())?;
        *dtypes.entry(dtype.to_string()).or_default() += 1;
    }
    check_spans(spans, data_at, len)?;
    let mut out = Map::new();
    out.insert("format".into(), json!("safetensors"));
    out.insert("tensors".into(), json!(tensors));
    out.insert("parameters".into(), json!(parameters));
    out.insert("dtypes".into(), json!(dtypes));
    if !metadata.is_empty() {
        out.insert("metadata".into(), Value::Object(metadata));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.resize(v.len() + data, 0);
        v
    }

    fn parse(bytes: Vec<u8>) -> Parsed<Map<String, Value>> {
        crate::extract::reader::parse_bytes(read, bytes)
    }

    const HEADER: &str = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"b":{"dtype":"F16","shape":[4],"data_offsets":[24,32]},"c":{"dtype":"F32","shape":[],"data_offsets":[32,36]}}"#;

    #[test]
    fn counts_tensors_parameters_and_dtypes() {
        let f = parse(file(HEADER, 36)).unwrap();
        assert_eq!(f["tensors"], 3);
        assert_eq!(f["parameters"], 6 + 4 + 1);
        assert_eq!(f["dtypes"], json!({"F32": 2, "F16": 1}));
        assert_eq!(f["metadata"], json!({"format": "pt"}));
    }

    #[test]
    fn metadata_keeps_at_most_64_entries_marker_included() {
        let keys: Vec<String> = (0..70).map(|i| format!("\"k{i:02}\":\"v\"")).collect();
        let h = format!("{{\"__metadata__\":{{{}}}}}", keys.join(","));
        let f = parse(file(&h, 0)).unwrap();
        let m = f["metadata"].as_object().unwrap();
        assert_eq!(m.len(), MAX_METADATA_KEYS);
        assert_eq!(m["…"], "7 more keys not kept");
        let exact: Vec<String> = (0..64).map(|i| format!("\"k{i:02}\":\"v\"")).collect();
        let h = format!("{{\"__metadata__\":{{{}}}}}", exact.join(","));
        let f = parse(file(&h, 0)).unwrap();
        assert_eq!(f["metadata"].as_object().unwrap().len(), 64);
        assert!(f["metadata"].get("…").is_none());
    }

    #[test]
    fn hostile_and_truncated_headers_are_unreadable() {
        let mut huge = (1u64 << 60).to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(
            parse(huge)
                .unwrap_err()
                .contains("over the 100000000-byte limit")
        );
        let mut short = 1000u64.to_le_bytes().to_vec();
        short.extend_from_slice(b"{}");
        assert!(parse(short).unwrap_err().starts_with("truncated"));
        // Cut inside the last tensor's data: the tensor, where it ends, the file's length.
        let cut = file(HEADER, 35);
        assert_eq!(
            parse(cut.clone()).unwrap_err(),
            format!(
                "truncated: tensor \"c\" ends at byte {}, file has {} bytes",
                cut.len() + 1,
                cut.len()
            )
        );
        let e = parse(vec![1, 2, 3]).unwrap_err();
        assert!(
            e.starts_with("truncated") && e.ends_with("(reading the header length)"),
            "{e}"
        );
        let e = parse(file(HEADER, 36)[..50].to_vec()).unwrap_err();
        assert!(e.starts_with("truncated: the header length says"), "{e}");
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(
            parse(file(&deep, 0))
                .unwrap_err()
                .contains("not a JSON map")
        );
        // Sub-byte dtypes: 3 F4 elements are not whole bytes, 4 are 2 bytes.
        let f4 = |n: u32, end: u32| {
            format!(r#"{{"a":{{"dtype":"F4","shape":[{n}],"data_offsets":[0,{end}]}}}}"#)
        };
        assert!(
            parse(file(&f4(3, 2), 2))
                .unwrap_err()
                .contains("not whole bytes")
        );
        assert_eq!(parse(file(&f4(4, 2), 2)).unwrap()["parameters"], 4);
        let overflow =
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}"#;
        assert!(parse(file(overflow, 0)).unwrap_err().contains("overflows"));
    }
}
