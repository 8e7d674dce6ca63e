//! The metrics sidecar `<name>.metrics.yaml`: numeric metrics plus free metadata.
//!
//! ```yaml
//! metrics:            # numbers only; used by `best`
//!   accuracy: 0.71
//!   loss: 0.93
//! dataset: imagenet-1k
//! params: {lr: 0.01, epochs: 90}
//! tags: [baseline]
//! notes: first run on the new cluster
//! metadata: {git_commit: 1a2b3c}   # anything else, free-form
//! ```
//! Parsing is kept apart from I/O: [`parse`] takes the bytes and the name to show.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::error::ParseError;

/// The largest sidecar read; anything longer is refused (it is a metrics file).
pub const MAX_SIDECAR_BYTES: u64 = 1 << 20;

/// A parsed sidecar.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Sidecar {
    /// Numeric metrics by name.
    pub metrics: BTreeMap<String, f64>,
    /// Free metadata: dataset, params, tags, notes and the `metadata:` map, merged.
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSidecar {
    #[serde(default)]
    metrics: BTreeMap<String, Metric>,
    dataset: Option<String>,
    params: Option<serde_json::Value>,
    tags: Option<Vec<String>>,
    notes: Option<String>,
    #[serde(default)]
    metadata: serde_json::Map<String, serde_json::Value>,
}

/// A finite number, written as an integer or a float.
struct Metric(f64);

impl<'de> Deserialize<'de> for Metric {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Metric;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a finite number")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Metric, E> {
                Ok(Metric(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Metric, E> {
                Ok(Metric(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Metric, E> {
                if v.is_finite() {
                    Ok(Metric(v))
                } else {
                    Err(E::custom(format!("{v} is not a finite number")))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses a sidecar's bytes. `shown` names the file in errors.
pub fn parse(shown: &str, bytes: &[u8]) -> Result<Sidecar, ParseError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ParseError::at(shown, None, format!("not valid UTF-8 ({e})")))?;
    if text.trim().is_empty() {
        return Err(ParseError::at(
            shown,
            Some(1),
            "the file is empty; write at least `metrics: {}`",
        ));
    }
    let raw: RawSidecar = serde_yaml::from_str(text).map_err(|e| {
        let mut pe = ParseError::from_yaml(shown, &e);
        if pe.reason.contains("unknown field") {
            pe.reason.push_str(" (free-form keys go under `metadata:`)");
        }
        pe
    })?;
    let line_of = |key: &str| find_line(text, key);
    for name in raw.metrics.keys() {
        if name.trim().is_empty() || name.chars().any(char::is_control) {
            return Err(ParseError::at(
                shown,
                line_of(name),
                format!("metric name {name:?} is empty or has control characters"),
            ));
        }
    }
    let mut metadata = raw.metadata;
    let fixed: [(&str, Option<serde_json::Value>); 4] = [
        ("dataset", raw.dataset.map(serde_json::Value::String)),
        ("params", raw.params),
        (
            "tags",
            raw.tags
                .map(|t| serde_json::Value::Array(t.into_iter().map(Into::into).collect())),
        ),
        ("notes", raw.notes.map(serde_json::Value::String)),
    ];
    for (key, value) in fixed {
        if let Some(v) = value {
            if metadata.contains_key(key) {
                return Err(ParseError::at(
                    shown,
                    line_of(key),
                    format!("`{key}` is given both at the top and under `metadata:`"),
                ));
            }
            metadata.insert(key.to_string(), v);
        }
    }
    Ok(Sidecar {
        metrics: raw.metrics.into_iter().map(|(k, v)| (k, v.0)).collect(),
        metadata,
    })
}

/// The 1-based line where `key:` first appears, for errors found after parsing.
fn find_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let t = l.trim_start().trim_start_matches(['"', '\'']);
            t.starts_with(key)
                && t[key.len()..]
                    .trim_start_matches(['"', '\''])
                    .starts_with(':')
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_sidecar() {
        let s = parse(
            "r.metrics.yaml",
            b"metrics:\n  accuracy: 0.71\n  epochs: 90\ndataset: imagenet-1k\nparams: {lr: 0.01}\ntags: [a, b]\nnotes: hi\nmetadata: {commit: abc}\n",
        )
        .unwrap();
        assert_eq!(s.metrics["accuracy"], 0.71);
        assert_eq!(s.metrics["epochs"], 90.0);
        assert_eq!(s.metadata["dataset"], "imagenet-1k");
        assert_eq!(s.metadata["params"]["lr"], 0.01);
        assert_eq!(s.metadata["tags"][1], "b");
        assert_eq!(s.metadata["commit"], "abc");
    }

    #[test]
    fn metrics_only() {
        let s = parse("x", b"metrics: {loss: 0.3}").unwrap();
        assert_eq!(s.metrics.len(), 1);
        assert!(s.metadata.is_empty());
    }

    #[test]
    fn non_numeric_metric_names_line() {
        let e = parse(
            "r.metrics.yaml",
            b"metrics:\n  accuracy: 0.7\n  loss: high\n",
        )
        .unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.to_string().starts_with("r.metrics.yaml:3:"), "{e}");
        assert!(e.reason.contains("finite number"), "{e}");
    }

    #[test]
    fn nan_refused() {
        let e = parse("x", b"metrics:\n  loss: .nan\n").unwrap_err();
        assert!(e.reason.contains("not a finite number"), "{e}");
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn syntax_error_names_line() {
        let e = parse("x", b"metrics:\n  accuracy: [0.7\n").unwrap_err();
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn unknown_key_hints_metadata() {
        let e = parse("x", b"metircs: {a: 1}\n").unwrap_err();
        assert_eq!(e.line, Some(1));
        assert!(e.reason.contains("metadata:"), "{e}");
    }

    #[test]
    fn empty_and_binary_refused() {
        assert!(parse("x", b"").unwrap_err().reason.contains("empty"));
        assert!(
            parse("x", b"\xff\xfe")
                .unwrap_err()
                .reason
                .contains("UTF-8")
        );
        assert!(parse("x", b"- 1\n- 2\n").is_err());
    }

    #[test]
    fn duplicate_metadata_key() {
        let e = parse("x", b"dataset: a\nmetadata: {dataset: b}\n").unwrap_err();
        assert!(e.reason.contains("both"), "{e}");
    }
}
