//! GGUF: architecture, parameters, file type (quantization), context length and general.* keys, from the header.
//!
//! The file is `GGUF`, a version (2 or 3), the tensor and key counts, the key/value
//! metadata, then the tensor descriptions (name, shape, type, offset); the weights
//! follow and are never read. Counts are checked against what the file could hold
//! before anything is read, arrays of numbers are skipped by seeking, and every string
//! and the values visited in all are bounded: a header claiming 2^40 keys, a string of
//! 2^50 bytes or a truncated file is unreadable.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::reader::{Parsed, Reader, clip};

/// Keys read; a header claiming more is unreadable (real files have tens to hundreds).
pub const MAX_KEYS: u64 = 1 << 16;
/// Tensors described; a header claiming more is unreadable.
pub const MAX_TENSORS: u64 = 1 << 20;
/// Values visited in all (a vocabulary of 256k tokens is one value per token).
const MAX_VALUES: u64 = 1 << 24;
/// The longest string read (a key, a chat template).
const MAX_STRING: u64 = 1 << 20;
/// general.* keys kept, and the length their text values are cut to.
const MAX_GENERAL: usize = 64;
const MAX_TEXT: usize = 1024;

struct Walk<'r, 'a> {
    r: &'r mut Reader<'a>,
    visited: u64,
}

impl Walk<'_, '_> {
    fn string(&mut self, what: &str) -> Parsed<String> {
        let n = self.r.u64()?;
        let b = self.r.bytes(n, MAX_STRING, what)?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }

    fn count(&mut self) -> Parsed<()> {
        self.visited += 1;
        if self.visited > MAX_VALUES {
            return Err(format!("more than {MAX_VALUES} metadata values"));
        }
        Ok(())
    }

    /// A value of type `t`: scalars and strings as JSON, arrays summarised (numbers
    /// skipped by seeking, strings walked by their lengths only).
    fn value(&mut self, t: u32, depth: u32) -> Parsed<Value> {
        self.count()?;
        let fixed = |t| match t {
            0 | 1 | 7 => Some(1u64),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            _ => None,
        };
        Ok(match t {
            8 => Value::String(self.string("a string value")?),
            9 => {
                if depth >= 4 {
                    return Err("arrays nested deeper than 4".into());
                }
                let et = self.r.u32()?;
                let n = self.r.u64()?;
                if let Some(size) = fixed(et) {
                    let bytes = n
                        .checked_mul(size)
                        .filter(|b| *b <= self.r.left())
                        .ok_or_else(|| format!("truncated: an array of {n} values does not fit"))?;
                    self.r.skip(bytes)?;
                } else {
                    // Strings or arrays: each at least 8 bytes, so `n` is bounded by the file.
                    if n > self.r.left() / 8 {
                        return Err(format!("truncated: an array of {n} values does not fit"));
                    }
                    for _ in 0..n {
                        self.value(et, depth + 1)?;
                    }
                }
                json!(format!("[{n} values]"))
            }
            _ => {
                let size = fixed(t).ok_or_else(|| format!("unknown value type {t}"))?;
                let mut b = [0u8; 8];
                self.r.read_exact(&mut b[..size as usize])?;
                let u = u64::from_le_bytes(b);
                match t {
                    0 | 2 | 4 | 10 => json!(u),
                    1 => json!(b[0] as i8),
                    3 => json!(i16::from_le_bytes([b[0], b[1]])),
                    5 => json!(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    11 => json!(u as i64),
                    6 => json!(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    12 => json!(f64::from_bits(u)),
                    _ => json!(b[0] != 0),
                }
            }
        })
    }
}

/// Reads the facts of a GGUF file; see the module docs.
pub fn read(r: &mut Reader) -> Parsed<Map<String, Value>> {
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    if &magic != b"GGUF" {
        return Err("no GGUF magic".into());
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version} is not read (2 and 3 are)"));
    }
    let tensors = r.u64()?;
    let keys = r.u64()?;
    // Only the hard limits are checked up front: a count within them that the file
    // cannot hold is a cut file, and the walk below says where it ends and what it was
    // reading (a count alone would blame the header for the cut).
    if keys > MAX_KEYS {
        return Err(format!(
            "the header claims {keys} keys (at most {MAX_KEYS})"
        ));
    }
    if tensors > MAX_TENSORS {
        return Err(format!(
            "the header claims {tensors} tensors (at most {MAX_TENSORS})"
        ));
    }
    let mut w = Walk { r, visited: 0 };
    let mut general = Map::new();
    let mut more_general = 0usize;
    let mut kv: BTreeMap<String, Value> = BTreeMap::new();
    for i in 0..keys {
        let reading = |e: String| format!("{e} (reading key {} of {keys})", i + 1);
        let key = w.string("a key").map_err(reading)?;
        let t = w.r.u32().map_err(reading)?;
        let v = w
            .value(t, 0)
            .map_err(|e| format!("{e} (reading the value of {:?})", clip(&key, 128)))?;
        if key.starts_with("general.") {
            if general.len() < MAX_GENERAL {
                let v = match v {
                    Value::String(s) => Value::String(clip(&s, MAX_TEXT)),
                    v => v,
                };
                general.insert(clip(&key, 256), v);
            } else {
                more_general += 1;
            }
        } else if key.ends_with(".context_length") || key.ends_with(".block_count") {
            kv.insert(key, v);
        }
    }
    let mut params = 0u64;
    let mut types: BTreeMap<String, u64> = BTreeMap::new();
    let mut spans = Vec::new();
    for i in 0..tensors {
        let reading = |e: String| format!("{e} (reading tensor {} of {tensors})", i + 1);
        let name = w.string("a tensor name").map_err(reading)?;
        let name = clip(&name, 128);
        let dims = w.r.u32().map_err(reading)?;
        if dims > 8 {
            return Err(format!("tensor {name:?} has {dims} dimensions (at most 8)"));
        }
        let mut shape = [1u64; 8];
        for d in shape.iter_mut().take(dims as usize) {
            *d = w.r.u64().map_err(reading)?;
        }
        let t = w.r.u32().map_err(reading)?;
        let offset = w.r.u64().map_err(reading)?;
        let count = shape
            .iter()
            .try_fold(1u64, |c, d| c.checked_mul(*d))
            .ok_or_else(|| format!("tensor {name:?}: its shape overflows 64 bits"))?;
        params = params
            .checked_add(count)
            .ok_or("the parameter count overflows 64 bits")?;
        *types.entry(tensor_type(t)).or_default() += 1;
        spans.push((name, t, shape[0], count, offset));
    }
    let align = general
        .get("general.alignment")
        .and_then(Value::as_u64)
        .filter(|a| *a > 0 && *a <= 1 << 20)
        .unwrap_or(32);
    let data = w.r.pos().div_ceil(align) * align;
    let unchecked = check_data(&spans, data, w.r.len())?;
    let mut out = Map::new();
    out.insert("format".into(), json!("gguf"));
    out.insert("gguf_version".into(), json!(version));
    out.insert("tensors".into(), json!(tensors));
    match unchecked {
        // A tensor of a type whose size is not known: its data could not be checked
        // against the file, so the parameter count is not claimed.
        Some(why) => {
            out.insert("unchecked".into(), json!(why));
        }
        None => {
            out.insert("parameters".into(), json!(params));
        }
    }
    out.insert("tensor_types".into(), json!(types));
    let arch = general.get("general.architecture").and_then(Value::as_str);
    if let Some(a) = arch {
        out.insert("architecture".into(), json!(a));
        for (k, name) in [
            ("context_length", "context_length"),
            ("block_count", "layers"),
        ] {
            if let Some(v) = kv.get(&format!("{a}.{k}")) {
                out.insert(name.into(), v.clone());
            }
        }
    }
    if let Some(ft) = general.get("general.file_type").and_then(Value::as_u64) {
        out.insert("file_type".into(), json!(ft));
        out.insert("quantization".into(), json!(file_type(ft)));
    }
    if more_general > 0 {
        // The marker takes the last kept key's place: at most MAX_GENERAL entries in
        // all, as docs/extraction.md says.
        if let Some(k) = general.keys().next_back().cloned() {
            general.remove(&k);
            more_general += 1;
        }
        general.insert(
            "…".into(),
            json!(format!("{more_general} more keys not kept")),
        );
    }
    out.insert("general".into(), Value::Object(general));
    Ok(out)
}

/// Checks that every tensor's data lies within the file and that together they fit in
/// the data section (`data`: where it starts; `len`: the file's length). Each span is
/// (name, ggml type, first dimension, elements, offset in the data section). `Ok(Some)`
/// says why the data could not be checked (a type of unknown size); `Err` that the file
/// is cut or claims more than it holds.
fn check_data(
    spans: &[(String, u32, u64, u64, u64)],
    data: u64,
    len: u64,
) -> Parsed<Option<String>> {
    let held = len.saturating_sub(data);
    let mut total = 0u64;
    for (name, t, first, count, offset) in spans {
        let Some((block, bytes)) = block_size(*t) else {
            return Ok(Some(format!(
                "tensor {name:?} has ggml type {t}, whose size is not known here: the tensors' data is not checked against the file and the parameter count is not given"
            )));
        };
        // Quantized types pack whole blocks along the first dimension.
        if first % block != 0 {
            return Err(format!(
                "tensor {name:?}: its first dimension {first} is not a multiple of its type's block of {block}"
            ));
        }
        let size = (count / block)
            .checked_mul(bytes)
            .ok_or_else(|| format!("tensor {name:?}: its data size overflows 64 bits"))?;
        let end = data
            .checked_add(*offset)
            .and_then(|s| s.checked_add(size))
            .ok_or_else(|| format!("tensor {name:?}: its data end overflows 64 bits"))?;
        if end > len {
            return Err(format!(
                "truncated: tensor {name:?} ends at byte {end}, file has {len} bytes"
            ));
        }
        total = total.saturating_add(size);
    }
    // Tensors do not share bytes: together they cannot claim more than the section.
    if total > held {
        return Err(format!(
            "the tensors' data adds up to {total} bytes but the file holds {held} bytes after its header"
        ));
    }
    Ok(None)
}

/// ggml's (elements per block, bytes per block) of tensor type `t`, as the gguf
/// package's GGML_QUANT_SIZES has them; `None` for a type not listed (removed ones
/// such as 4, 5 and 31-33, or one newer than this table).
fn block_size(t: u32) -> Option<(u64, u64)> {
    Some(match t {
        0 | 26 => (1, 4),
        1 | 25 | 30 => (1, 2),
        24 => (1, 1),
        27 | 28 => (1, 8),
        2 | 20 => (32, 18),
        3 => (32, 20),
        6 => (32, 22),
        7 => (32, 24),
        8 => (32, 34),
        9 => (32, 40),
        39 => (32, 17),
        40 => (64, 36),
        41 => (128, 18),
        10 => (256, 84),
        11 | 21 => (256, 110),
        12 => (256, 144),
        13 => (256, 176),
        14 => (256, 210),
        15 => (256, 292),
        16 | 35 => (256, 66),
        17 => (256, 74),
        18 => (256, 98),
        19 => (256, 50),
        22 => (256, 82),
        23 => (256, 136),
        29 => (256, 56),
        34 => (256, 54),
        _ => return None,
    })
}

/// llama.cpp's names of `general.file_type` (llama_ftype).
fn file_type(t: u64) -> String {
    const NAMES: &[(u64, &str)] = &[
        (0, "F32"),
        (1, "F16"),
        (2, "Q4_0"),
        (3, "Q4_1"),
        (7, "Q8_0"),
        (8, "Q5_0"),
        (9, "Q5_1"),
        (10, "Q2_K"),
        (11, "Q3_K_S"),
        (12, "Q3_K_M"),
        (13, "Q3_K_L"),
        (14, "Q4_K_S"),
        (15, "Q4_K_M"),
        (16, "Q5_K_S"),
        (17, "Q5_K_M"),
        (18, "Q6_K"),
        (19, "IQ2_XXS"),
        (20, "IQ2_XS"),
        (21, "Q2_K_S"),
        (22, "IQ3_XS"),
        (23, "IQ3_XXS"),
        (24, "IQ1_S"),
        (25, "IQ4_NL"),
        (26, "IQ3_S"),
        (27, "IQ3_M"),
        (28, "IQ2_S"),
        (29, "IQ2_M"),
        (30, "IQ4_XS"),
        (31, "IQ1_M"),
        (32, "BF16"),
        (36, "TQ1_0"),
        (37, "TQ2_0"),
    ];
    NAMES
        .iter()
        .find(|(n, _)| *n == t)
        .map_or_else(|| format!("type {t}"), |(_, s)| s.to_string())
}

/// ggml's names of tensor types.
fn tensor_type(t: u32) -> String {
    const NAMES: [&str; 42] = [
        "F32", "F16", "Q4_0", "Q4_1", "type 4", "type 5", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
        "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL",
        "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16", "type 31",
        "type 32", "type 33", "TQ1_0", "TQ2_0", "type 36", "type 37", "type 38", "MXFP4", "NVFP4",
        "Q1_0",
    ];
    NAMES
        .get(t as usize)
        .map_or_else(|| format!("type {t}"), |s| s.to_string())
}

#[cfg(test)]
#[path = "gguf_tests.rs"]
mod tests;
