//! Hugging Face folders: config.json's model type and the shard index.
//!
//! Only small JSON files at the top of the folder are read, each bounded
//! ([`MAX_JSON_BYTES`]; serde_json refuses nesting past 128 levels). The Trainer's
//! results files are [`super::trainer`]'s.

use serde_json::{Map, Value, json};

/// The largest JSON file read (a trainer_state.json with a long log_history is a few MB).
pub const MAX_JSON_BYTES: u64 = 16 << 20;
/// Shard indexes: the safetensors one, then the PyTorch one.
pub const INDEXES: [&str; 2] = [
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
];

/// `config.json`'s model_type, architectures and torch_dtype (`dtype` in newer files).
pub fn config(text: &[u8]) -> Result<Map<String, Value>, String> {
    let v: Map<String, Value> =
        serde_json::from_slice(text).map_err(|e| format!("not a JSON map: {e}"))?;
    let mut out = Map::new();
    for (k, from) in [
        ("model_type", "model_type"),
        ("architectures", "architectures"),
        ("torch_dtype", "torch_dtype"),
        ("torch_dtype", "dtype"),
    ] {
        if out.contains_key(k) {
            continue;
        }
        match v.get(from) {
            Some(Value::String(s)) => {
                out.insert(k.into(), json!(super::reader::clip(s, 256)));
            }
            Some(Value::Array(a)) => {
                let names: Vec<String> = a
                    .iter()
                    .take(16)
                    .filter_map(Value::as_str)
                    .map(|s| super::reader::clip(s, 256))
                    .collect();
                out.insert(k.into(), json!(names));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// A shard index's shard count, tensor count and total size.
pub fn shard_index(text: &[u8]) -> Result<Map<String, Value>, String> {
    let v: Map<String, Value> =
        serde_json::from_slice(text).map_err(|e| format!("not a JSON map: {e}"))?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or("no weight_map")?;
    let shards: std::collections::BTreeSet<&str> = map.values().filter_map(Value::as_str).collect();
    let mut out = Map::new();
    out.insert("shards".into(), json!(shards.len()));
    out.insert("tensors".into(), json!(map.len()));
    if let Some(s) = v
        .get("metadata")
        .and_then(|m| m.get("total_size"))
        .and_then(Value::as_u64)
    {
        out.insert("total_size".into(), json!(s));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_index_and_results_are_read() {
        let c = config(br#"{"model_type":"bert","architectures":["BertModel"],"torch_dtype":"float32","hidden_size":8}"#).unwrap();
        assert_eq!(c["model_type"], "bert");
        assert_eq!(c["architectures"], json!(["BertModel"]));
        assert_eq!(c["torch_dtype"], "float32");
        let i = shard_index(
            br#"{"metadata":{"total_size":10},"weight_map":{"a":"s1","b":"s2","c":"s1"}}"#,
        )
        .unwrap();
        assert_eq!(i["shards"], 2);
        assert_eq!(i["tensors"], 3);
    }
}
