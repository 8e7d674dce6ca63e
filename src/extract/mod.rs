//! What is inside a version, read from its files' headers at registration: formats, tensors, parameters, model config, Trainer metrics.
//!
//! One file per format (safetensors, GGUF, ONNX, torch zip), each reading through a
//! bounded [`reader::Reader`]: headers only, never the weights, every length checked
//! against the file before it is used. A file that cannot be read this way (a hostile or
//! truncated header) gives `unreadable: <reason>` in its facts; extraction never fails a
//! registration. Hugging Face folders add config.json, the shard index and the Trainer's
//! results ([`hf`]); [`provenance`] says where a version came from. docs/extraction.md
//! lists what is read and the limits.

mod gguf;
mod hf;
mod onnx;
pub mod provenance;
mod reader;
mod safetensors;
mod torchzip;
mod trainer;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde_json::{Map, Value, json};

pub use provenance::{Origin, provenance};
use reader::{Parsed, Reader};

use crate::registry::Metadata;

/// Weight files of a folder examined (the rest are listed as not examined).
pub const MAX_FILES: usize = 64;

/// What extraction found in a version's files.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Found {
    /// The facts, for `Version.extracted`.
    pub extracted: Metadata,
    /// Metrics found in the files (a Trainer folder's results), by name.
    pub metrics: BTreeMap<String, f64>,
    /// The file each of `metrics` came from.
    pub sources: BTreeMap<String, String>,
}

/// Reads the facts of the version whose files `rels` lie in `dir` (`folder`: a folder
/// version, whose relative paths matter; else one file). Never fails: what cannot be
/// read is said in the facts.
pub fn inspect(dir: &Path, rels: &[String], folder: bool) -> Found {
    if !folder {
        let Some(rel) = rels.first() else {
            return Found::default();
        };
        let facts = file_facts(&dir.join(rel), rel).unwrap_or_default();
        return Found {
            extracted: capped(facts),
            ..Found::default()
        };
    }
    inspect_folder(dir, rels)
}

fn inspect_folder(dir: &Path, rels: &[String]) -> Found {
    let mut out = Map::new();
    let mut found = Found::default();
    let mut first_problem: Option<String> = None;
    let mut problem = |rel: &str, why: &str| {
        first_problem.get_or_insert_with(|| format!("{rel}: {why}"));
    };
    let top = |name: &str| rels.iter().any(|r| r == name);
    if top("config.json") {
        let c = small_json(&dir.join("config.json")).and_then(|b| hf::config(&b));
        out.insert("format".into(), json!("huggingface"));
        out.insert(
            "config".into(),
            c.unwrap_or_else(|e| {
                problem("config.json", &e);
                unreadable_map(None, e)
            })
            .into(),
        );
    } else {
        out.insert("format".into(), json!("folder"));
    }
    if let Some(index) = hf::INDEXES.iter().find(|i| top(i)) {
        let i = small_json(&dir.join(index)).and_then(|b| hf::shard_index(&b));
        let mut m = i.unwrap_or_else(|e| {
            problem(index, &e);
            unreadable_map(None, e)
        });
        m.insert("file".into(), json!(index));
        out.insert("shard_index".into(), m.into());
    }
    // (file, key, why) of each metric left out; bounded per file by the trainer module.
    let mut left_out: Vec<(&str, String, String)> = Vec::new();
    for file in trainer::FILES {
        if !top(file) {
            continue;
        }
        match small_json(&dir.join(file)).and_then(|b| trainer::results(file, &b)) {
            Ok(r) => {
                for (k, v) in r.metrics {
                    if !found.metrics.contains_key(&k) {
                        found.sources.insert(k.clone(), file.to_string());
                        found.metrics.insert(k, v);
                    }
                }
                for (key, why) in r.left_out {
                    tracing::warn!(file = %dir.join(file).display(), key, "a Trainer metric left out: {why}");
                    left_out.push((file, key, why));
                }
                if let Some(f) = r.facts {
                    out.insert("trainer_state".into(), f.into());
                }
            }
            Err(e) => problem(file, &e),
        }
    }
    if !left_out.is_empty() {
        // A key left out of one file but given by another is a metric all the same:
        // said so, not reported as lost.
        let m: Map<String, Value> = left_out
            .into_iter()
            .map(|(file, key, why)| {
                let why = match found.sources.get(&key) {
                    Some(from) => format!("{why}; the metric was taken from {from}"),
                    None => why,
                };
                (format!("{file}: {key}"), json!(why))
            })
            .collect();
        out.insert("metrics_left_out".into(), m.into());
    }
    let (mut files, mut skipped) = (Map::new(), 0usize);
    let (mut params, mut tensors, mut all_counted) = (0u64, 0u64, true);
    for rel in rels.iter().filter(|r| is_weights(r)) {
        if files.len() >= MAX_FILES {
            skipped += 1;
            continue;
        }
        let Some(f) = file_facts(&dir.join(rel), rel) else {
            continue;
        };
        if let Some(Value::String(why)) = f.get("unreadable") {
            problem(rel, why);
        }
        match f.get("parameters").and_then(Value::as_u64) {
            Some(p) => params = params.saturating_add(p),
            None => all_counted = false,
        }
        tensors = tensors.saturating_add(f.get("tensors").and_then(Value::as_u64).unwrap_or(0));
        files.insert(rel.clone(), f.into());
    }
    if !files.is_empty() {
        if all_counted && skipped == 0 {
            out.insert("parameters".into(), json!(params));
            out.insert("tensors".into(), json!(tensors));
        }
        out.insert("files".into(), files.into());
    }
    if skipped > 0 {
        out.insert(
            "files_not_examined".into(),
            json!(format!(
                "{skipped} weight files beyond the first {MAX_FILES}"
            )),
        );
    }
    if let Some(p) = first_problem {
        out.insert("unreadable".into(), json!(p));
    }
    found.extracted = capped(out);
    found
}

/// The facts as kept: every text (a reason, a name, a value) at most
/// [`reader::MAX_TEXT`] bytes, whatever a parser or a library's error echoed.
fn capped(facts: Map<String, Value>) -> Metadata {
    match reader::clip_all(Value::Object(facts)) {
        Value::Object(m) => m.into_iter().collect(),
        _ => Metadata::default(),
    }
}

/// Whether a folder's file `rel` is a weights file worth a header read, by its name.
fn is_weights(rel: &str) -> bool {
    let ext = rel.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    matches!(
        ext.as_deref(),
        Some("safetensors" | "gguf" | "onnx" | "pt" | "pth" | "bin" | "ckpt")
    )
}

/// `{format, unreadable: why}`.
fn unreadable_map(format: Option<&str>, why: String) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(f) = format {
        m.insert("format".into(), json!(f));
    }
    m.insert("unreadable".into(), json!(why));
    m
}

/// A small JSON file's bytes, refused above [`hf::MAX_JSON_BYTES`].
fn small_json(path: &Path) -> Result<Vec<u8>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("open: {e}"))?;
    let mut b = Vec::new();
    f.take(hf::MAX_JSON_BYTES + 1)
        .read_to_end(&mut b)
        .map_err(|e| format!("read: {e}"))?;
    if b.len() as u64 > hf::MAX_JSON_BYTES {
        return Err(format!("larger than {} bytes", hf::MAX_JSON_BYTES));
    }
    Ok(b)
}

/// The facts of one file, by its magic bytes or its name: `None` for a format not read.
fn file_facts(path: &Path, rel: &str) -> Option<Map<String, Value>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return Some(unreadable_map(None, format!("open: {e}"))),
    };
    let len = match f.metadata() {
        Ok(m) => m.len(),
        Err(e) => return Some(unreadable_map(None, format!("stat: {e}"))),
    };
    let mut head = [0u8; 10];
    let got = read_head(&mut f, &mut head);
    let ext = rel
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    let torch_ext = matches!(ext.as_str(), "pt" | "pth" | "bin" | "ckpt");
    type Parser = fn(&mut Reader) -> Parsed<Map<String, Value>>;
    let (format, parse): (&str, Parser) = if got >= 4 && &head[..4] == b"GGUF" || ext == "gguf" {
        ("gguf", gguf::read)
    } else if got >= 4 && head[..4] == [0x50, 0x4b, 3, 4] {
        ("zip", torchzip::read)
    } else if ext == "safetensors" || looks_like_safetensors(&head[..got], len) {
        ("safetensors", safetensors::read)
    } else if ext == "onnx" {
        ("onnx", onnx::read)
    } else if torch_ext && got >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        return Some(torchzip::legacy_pickle());
    } else if torch_ext && ext != "bin" {
        // `.bin` is anyone's extension (raw arrays, GGML): no format is assumed for it.
        return Some(unreadable_map(
            Some("pytorch"),
            "neither a torch zip archive nor a pickle".into(),
        ));
    } else {
        return None;
    };
    let result = Reader::new(&mut f, len).and_then(|mut r| parse(&mut r));
    Some(result.unwrap_or_else(|why| unreadable_map(Some(format), why)))
}

/// Reads up to `buf.len()` bytes from the start; how many.
fn read_head(f: &mut std::fs::File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}

/// A safetensors file without its extension: a header length that fits the file,
/// then `{"`.
fn looks_like_safetensors(head: &[u8], len: u64) -> bool {
    head.len() >= 10
        && u64::from_le_bytes(head[..8].try_into().expect("8 bytes")) <= len.saturating_sub(8)
        && &head[8..10] == b"{\""
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trainer_folder_gives_its_metrics_and_the_sidecar_wins() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::write(d.join("config.json"), r#"{"model_type":"bert"}"#).unwrap();
        std::fs::write(
            d.join("all_results.json"),
            r#"{"eval_accuracy":0.8,"epoch":2}"#,
        )
        .unwrap();
        std::fs::write(
            d.join("eval_results.json"),
            r#"{"eval_accuracy":0.1,"eval_loss":0.3}"#,
        )
        .unwrap();
        std::fs::write(
            d.join("trainer_state.json"),
            r#"{"best_metric":0.7,"metric_for_best_model":"accuracy"}"#,
        )
        .unwrap();
        std::fs::write(d.join("model.safetensors"), b"\x02\0\0\0\0\0\0\0{}").unwrap();
        let rels: Vec<String> = [
            "all_results.json",
            "config.json",
            "eval_results.json",
            "model.safetensors",
            "trainer_state.json",
        ]
        .map(String::from)
        .to_vec();
        let f = inspect(d, &rels, true);
        assert_eq!(f.extracted["format"], "huggingface");
        assert_eq!(f.extracted["config"]["model_type"], "bert");
        assert_eq!(f.extracted["parameters"], 0);
        assert_eq!(f.metrics["eval_accuracy"], 0.8);
        assert_eq!(f.sources["eval_accuracy"], "all_results.json");
        assert_eq!(f.sources["eval_loss"], "eval_results.json");
        assert_eq!(f.sources["best_eval_accuracy"], "trainer_state.json");
        assert_eq!(f.sources["epoch"], "all_results.json");
    }

    #[test]
    fn a_file_of_no_known_format_has_no_facts_and_a_bad_one_is_unreadable() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("notes.txt"), b"hello").unwrap();
        assert!(
            inspect(t.path(), &["notes.txt".into()], false)
                .extracted
                .is_empty()
        );
        std::fs::write(t.path().join("m.pt"), b"hello").unwrap();
        let f = inspect(t.path(), &["m.pt".into()], false);
        assert!(f.extracted.contains_key("unreadable"));
    }
}
