//! Unit tests of the GGUF reader on hand-made bytes.

use super::*;

fn s(v: &mut Vec<u8>, text: &str) {
    v.extend_from_slice(&(text.len() as u64).to_le_bytes());
    v.extend_from_slice(text.as_bytes());
}

/// A small GGUF: two keys, one string array, one F32 tensor of 2x3.
fn small() -> Vec<u8> {
    let mut v = b"GGUF".to_vec();
    v.extend_from_slice(&3u32.to_le_bytes());
    v.extend_from_slice(&1u64.to_le_bytes());
    v.extend_from_slice(&4u64.to_le_bytes());
    s(&mut v, "general.architecture");
    v.extend_from_slice(&8u32.to_le_bytes());
    s(&mut v, "llama");
    s(&mut v, "llama.context_length");
    v.extend_from_slice(&4u32.to_le_bytes());
    v.extend_from_slice(&4096u32.to_le_bytes());
    s(&mut v, "general.file_type");
    v.extend_from_slice(&4u32.to_le_bytes());
    v.extend_from_slice(&15u32.to_le_bytes());
    s(&mut v, "tokenizer.ggml.tokens");
    v.extend_from_slice(&9u32.to_le_bytes());
    v.extend_from_slice(&8u32.to_le_bytes());
    v.extend_from_slice(&2u64.to_le_bytes());
    s(&mut v, "a");
    s(&mut v, "b");
    s(&mut v, "w");
    v.extend_from_slice(&2u32.to_le_bytes());
    v.extend_from_slice(&2u64.to_le_bytes());
    v.extend_from_slice(&3u64.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u64.to_le_bytes());
    v.resize(v.len().div_ceil(32) * 32 + 24, 0);
    v
}

/// Where [`small`]'s tensor type (u32) and its dims (two u64) sit: from the end of the
/// tensor description, before the 8-byte offset.
fn tensor_fields(v: &[u8]) -> (usize, usize) {
    let name = v
        .windows(9)
        .position(|w| w == b"\x01\0\0\0\0\0\0\0w")
        .unwrap()
        + 9;
    // name, then n_dims (4), dims (16), type (4), offset (8).
    (name + 4, name + 4 + 16)
}

fn parse(bytes: Vec<u8>) -> Parsed<Map<String, Value>> {
    crate::extract::reader::parse_bytes(read, bytes)
}

#[test]
fn reads_architecture_parameters_and_quantization() {
    let f = parse(small()).unwrap();
    assert_eq!(f["architecture"], "llama");
    assert_eq!(f["context_length"], 4096);
    assert_eq!(f["parameters"], 6);
    assert_eq!(f["quantization"], "Q4_K_M");
    assert_eq!(f["tensor_types"], json!({"F32": 1}));
    assert_eq!(f["general"]["general.architecture"], "llama");
}

#[test]
fn hostile_counts_and_truncation_are_unreadable() {
    let mut v = small();
    v[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(parse(v).unwrap_err().contains("claims 1099511627776 keys"));
    let mut v = small();
    v[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(parse(v).unwrap_err().contains("tensors"));
    let full = small();
    for cut in [3, 30, 60, full.len() - 30] {
        assert!(parse(full[..cut].to_vec()).is_err(), "cut at {cut}");
    }
    // A cut header says where it ends and what it was reading, not the count.
    let e = parse(full[..40].to_vec()).unwrap_err();
    assert!(
        e.starts_with("truncated") && e.contains("reading key 1 of 4"),
        "{e}"
    );
    let mut v = small();
    // The first key's length: 2^50 bytes.
    v[24..32].copy_from_slice(&(1u64 << 50).to_le_bytes());
    assert!(parse(v).is_err());
}

#[test]
fn tensor_data_is_checked_against_the_file() {
    let full = small();
    // Cut inside the last tensor's data (its start is still within the file).
    let e = parse(full[..full.len() - 4].to_vec()).unwrap_err();
    assert_eq!(
        e,
        format!(
            "truncated: tensor \"w\" ends at byte {}, file has {} bytes",
            full.len(),
            full.len() - 4
        )
    );
    // A fuzzed dimension: 2^40 x 3 parameters in a file of a few hundred bytes.
    let (dims, ty) = tensor_fields(&full);
    let mut v = full.clone();
    v[dims..dims + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(parse(v).unwrap_err().starts_with("truncated: tensor \"w\""));
    // Q4_0 packs 32 elements per block: a first dimension of 2 is not whole blocks.
    let mut v = full.clone();
    v[ty..ty + 4].copy_from_slice(&2u32.to_le_bytes());
    assert!(parse(v).unwrap_err().contains("not a multiple"));
    // A type of unknown size: facts, but no parameter count and a reason.
    let mut v = full.clone();
    v[ty..ty + 4].copy_from_slice(&4u32.to_le_bytes());
    let f = parse(v).unwrap();
    assert!(f.get("parameters").is_none(), "{f:?}");
    assert!(f["unchecked"].as_str().unwrap().contains("ggml type 4"));
}

#[test]
fn overlapping_tensors_cannot_claim_more_than_the_file_holds() {
    let spans: Vec<(String, u32, u64, u64, u64)> =
        (0..4).map(|i| (format!("t{i}"), 0, 4, 4, 0)).collect();
    // Each tensor's 16 bytes fit in the 32-byte section; the four together do not.
    let e = check_data(&spans, 32, 64).unwrap_err();
    assert!(e.contains("adds up to 64 bytes"), "{e}");
    assert_eq!(check_data(&spans[..2], 32, 64), Ok(None));
}

#[test]
fn general_keeps_at_most_64_entries_marker_included() {
    let mut v = b"GGUF".to_vec();
    v.extend_from_slice(&3u32.to_le_bytes());
    v.extend_from_slice(&0u64.to_le_bytes());
    v.extend_from_slice(&70u64.to_le_bytes());
    for i in 0..70 {
        s(&mut v, &format!("general.k{i:02}"));
        v.extend_from_slice(&4u32.to_le_bytes());
        v.extend_from_slice(&(i as u32).to_le_bytes());
    }
    let f = parse(v).unwrap();
    let g = f["general"].as_object().unwrap();
    assert_eq!(g.len(), 64);
    assert_eq!(g["…"], "7 more keys not kept");
}
