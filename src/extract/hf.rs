//! Hugging Face folders: config.json's model type, the shard index, and the Trainer's results as metrics.
//!
//! Only small JSON files at the top of the folder are read, each bounded
//! ([`MAX_JSON_BYTES`]; serde_json refuses nesting past 128 levels). The Trainer's
//! metrics come from `all_results.json`, then `eval_results.json`, then
//! `trainer_state.json`'s `best_metric`: the first file to name a metric gives it, and the
//! file's name is recorded as its source. The sidecar, when it names a metric, wins
//! (see [`super::merge_metrics`]).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// The largest JSON file read (a trainer_state.json with a long log_history is a few MB).
pub const MAX_JSON_BYTES: u64 = 16 << 20;
/// Metrics taken from one file.
const MAX_METRICS: usize = 256;

/// The Trainer's results files, in the order they are trusted.
pub const RESULTS: [&str; 3] = [
    "all_results.json",
    "eval_results.json",
    "trainer_state.json",
];

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

/// The metrics a Trainer results file `file` gives: every finite top-level number of
/// `all_results.json` / `eval_results.json`; `best_metric` of `trainer_state.json`.
pub fn results(file: &str, text: &[u8]) -> Result<BTreeMap<String, f64>, String> {
    let v: Map<String, Value> =
        serde_json::from_slice(text).map_err(|e| format!("not a JSON map: {e}"))?;
    let numbers = |keys: &mut dyn Iterator<Item = (&String, &Value)>| {
        keys.filter_map(|(k, v)| Some((k.clone(), v.as_f64().filter(|x| x.is_finite())?)))
            // The sidecar's rule for metric names, and short.
            .filter(|(k, _)| !k.is_empty() && k.len() <= 128 && !k.chars().any(char::is_control))
            .take(MAX_METRICS)
            .collect::<BTreeMap<_, _>>()
    };
    Ok(if file == "trainer_state.json" {
        numbers(&mut v.iter().filter(|(k, _)| *k == "best_metric"))
    } else {
        numbers(&mut v.iter())
    })
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
        let r = results(
            "all_results.json",
            br#"{"eval_accuracy":0.9,"epoch":3,"name":"x","bad":1e999}"#,
        );
        assert!(r.is_err(), "1e999 is not JSON serde reads as finite");
        let r = results(
            "eval_results.json",
            br#"{"eval_accuracy":0.9,"epoch":3,"name":"x"}"#,
        )
        .unwrap();
        assert_eq!(r["eval_accuracy"], 0.9);
        assert_eq!(r.len(), 2);
        let s = results(
            "trainer_state.json",
            br#"{"best_metric":0.5,"global_step":10}"#,
        )
        .unwrap();
        assert_eq!(
            s.into_iter().collect::<Vec<_>>(),
            vec![("best_metric".into(), 0.5)]
        );
    }
}
