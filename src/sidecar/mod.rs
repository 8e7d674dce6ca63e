//! The metrics sidecar `<name>.metrics.yaml` (or `.json`): numeric metrics plus free metadata.
//!
//! Either of two forms, nested:
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
//! or flat, as a training script writes it (`yaml.safe_dump({"accuracy": 0.71})`,
//! `json.dump(...)`): top-level numbers are metrics, the known keys above are metadata,
//! other top-level scalars go to metadata.
//!
//! Parsing is kept apart from I/O: [`parse`] takes the bytes and the name to show. It is
//! bounded: a sidecar is refused when it is larger than [`MAX_SIDECAR_BYTES`], nests
//! deeper than [`MAX_DEPTH`], holds more than [`MAX_NODES`] values or a string longer than
//! [`MAX_STRING_BYTES`]. The limits keep what is accepted well inside what registry.yaml
//! and the start-up cache read back (serde_yaml and serde_json stop at 128 levels; a
//! sidecar's metadata sits 5 levels deeper in registry.yaml and 6 in the cache), and a
//! linear pre-scan refuses deep nesting before the YAML parser, whose time grows faster
//! than linearly with flow nesting, sees it.

mod interpret;
mod numbers;
mod prescan;
mod reader;

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeSeed;
use serde_json::{Map, Value};

use crate::error::ParseError;

pub use prescan::MAX_PRESCAN_DEPTH;

/// The largest sidecar read; anything longer is refused (it is a metrics file).
pub const MAX_SIDECAR_BYTES: u64 = 1 << 20;

/// The deepest nesting of maps and lists, the top-level map counting as 1 (`metadata:
/// {x: [1]}` is 3 deep). registry.yaml adds 5 levels and the start-up cache 6, against
/// the 128 that serde_yaml and serde_json read: a wide margin.
pub const MAX_DEPTH: usize = 32;

/// The most values (keys, list items and scalars, aliases counted each time they are
/// used) in one sidecar.
pub const MAX_NODES: usize = 20_000;

/// The longest string (a value or a key), in bytes.
pub const MAX_STRING_BYTES: usize = 64 * 1024;

/// All strings together, aliases counted each time they are used: registry.yaml never
/// grows by more than about this much per version.
pub const MAX_TOTAL_STRING_BYTES: usize = 1 << 20;

/// A parsed sidecar.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Sidecar {
    /// Numeric metrics by name.
    pub metrics: BTreeMap<String, f64>,
    /// Free metadata: dataset, params, tags, notes, other top-level scalars and the
    /// `metadata:` map, merged.
    pub metadata: Map<String, Value>,
    /// What was accepted but may not be what the writer meant (a quoted number at the
    /// top, kept as text), as `path:line: what to write instead`: to be said once, when
    /// the sidecar is applied.
    #[serde(skip)]
    pub notes: Vec<String>,
    /// `provenance: {source: PATH}`: where the artifact was before a client copied it
    /// into the inbox (`modelreg add FOLDER`), recorded as its provenance's source
    /// instead of the inbox path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Whether a sidecar's text is YAML or JSON (by its name: `.metrics.json` is JSON).
fn is_json(shown: &str) -> bool {
    shown.ends_with(".json")
}

/// Parses a sidecar's bytes. `shown` names the file in errors; a name ending in `.json`
/// is parsed as JSON, any other as YAML.
pub fn parse(shown: &str, bytes: &[u8]) -> Result<Sidecar, ParseError> {
    parse_as(shown, bytes, is_json(shown))
}

/// Reads the `metrics` and `metadata` of a `register` request, given as their JSON text
/// exactly as it came in the request line, as a JSON sidecar of the form
/// `{"metrics": {...}, "metadata": {...}}` is read: the same parser on the same kind of
/// text, so the same rules, limits and wording (an integer beyond 64 bits included,
/// which a parsed value could no longer tell). `shown` names them in errors.
pub fn from_request(
    shown: &str,
    metrics: Option<&str>,
    metadata: Option<&str>,
) -> Result<Sidecar, ParseError> {
    let mut text = format!("{{\"metrics\": {}", metrics.unwrap_or("{}"));
    if let Some(m) = metadata {
        text.push_str(", \"metadata\": ");
        text.push_str(m);
    }
    text.push('}');
    parse_as(shown, text.as_bytes(), true)
}

fn parse_as(shown: &str, bytes: &[u8], json: bool) -> Result<Sidecar, ParseError> {
    if bytes.len() as u64 > MAX_SIDECAR_BYTES {
        return Err(ParseError::at(
            shown,
            None,
            format!("larger than {MAX_SIDECAR_BYTES} bytes; a sidecar holds metrics"),
        ));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ParseError::at(shown, None, format!("not valid UTF-8 ({e})")))?;
    if text.trim().is_empty() {
        return Err(ParseError::at(
            shown,
            Some(1),
            "the file is empty; write at least `metrics: {}`",
        ));
    }
    prescan::prescan(text).map_err(|(line, column, reason)| ParseError {
        path: shown.to_string(),
        line: Some(line),
        column: Some(column),
        reason,
    })?;
    let budget = reader::Budget::default();
    let seed = reader::NodeSeed {
        depth: 1,
        budget: &budget,
        yaml_text: (!json).then_some(text),
    };
    let top = if json {
        let mut de = serde_json::Deserializer::from_str(text);
        let v = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
        let v = v.map_err(|e| from_json(shown, text, &e))?;
        if let Some((line, column, reason)) = numbers::json_big_integer(text) {
            return Err(ParseError {
                path: shown.to_string(),
                line: Some(line),
                column: Some(column),
                reason,
            });
        }
        v
    } else {
        seed.deserialize(serde_yaml::Deserializer::from_str(text))
            .map_err(|e| ParseError::from_yaml(shown, &e))?
    };
    interpret::interpret(shown, text, top)
}

/// A serde_json error as a [`ParseError`], its position in its own fields; stopped at
/// `NaN` or `Infinity`, it says that JSON has none and what to write instead.
fn from_json(shown: &str, text: &str, e: &serde_json::Error) -> ParseError {
    let mut reason = e.to_string();
    if let Some(i) = reason.find(" at line ") {
        reason.truncate(i);
    }
    if let Some(why) = numbers::json_non_finite_at(text, e.line(), e.column()) {
        reason = why;
    } else if reason == "number out of range"
        && let Some(token) = number_before(text, e.line(), e.column())
    {
        // `1e999`: beyond the largest float; the same advice as YAML's.
        reason = numbers::beyond_float(&token);
    }
    ParseError {
        path: shown.to_string(),
        line: (e.line() > 0).then_some(e.line()),
        column: (e.column() > 0).then_some(e.column()),
        reason,
    }
}

/// The number that ends at (1-based) `line`:`column` of `text`, where serde_json stopped.
fn number_before(text: &str, line: usize, column: usize) -> Option<String> {
    let l = text.lines().nth(line.checked_sub(1)?)?;
    let end = l.char_indices().nth(column).map_or(l.len(), |(i, _)| i);
    let head = &l[..end];
    let start = head
        .rfind(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
        .map_or(0, |i| i + 1);
    let token = head[start..].trim();
    (!token.is_empty()).then(|| token.to_string())
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
    fn a_json_number_beyond_the_largest_float_says_what_to_write() {
        let e = parse("inf.metrics.json", b"{\"accuracy\": 1e999}").unwrap_err();
        let shown = e.to_string();
        assert!(shown.contains("`1e999` is not a finite number"), "{shown}");
        assert!(shown.contains("beyond the largest float"), "{shown}");
        assert!(shown.starts_with("inf.metrics.json:1:"), "{shown}");
    }

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
    fn syntax_error_names_line() {
        let e = parse("x", b"metrics:\n  accuracy: [0.7\n").unwrap_err();
        assert!(e.line.is_some(), "{e}");
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
    fn request_metrics_follow_the_sidecar_rules() {
        let s = from_request(
            "register m",
            Some(r#"{"acc": 0.5}"#),
            Some(r#"{"dataset": "d"}"#),
        )
        .unwrap();
        assert_eq!(s.metrics["acc"], 0.5);
        assert_eq!(s.metadata["dataset"], "d");
        let e = from_request("register m", Some(r#"{"acc": "high"}"#), None).unwrap_err();
        assert!(e.reason.contains("not a finite number"), "{e}");
        let e =
            from_request("register m", Some(r#"{"x": 18446744073709551616}"#), None).unwrap_err();
        assert!(e.reason.contains("out of range"), "{e}");
        let e = from_request("register m", None, Some(r#"{"tags": "a"}"#)).unwrap_err();
        assert!(e.reason.contains("list of strings"), "{e}");
    }

    #[test]
    fn json_sidecar_same_meaning() {
        let s = parse(
            "m.metrics.json",
            br#"{"eval_accuracy": 0.8, "epoch": 3.0, "model": "bert", "metrics": {"f1": 0.5}}"#,
        )
        .unwrap();
        assert_eq!(s.metrics["eval_accuracy"], 0.8);
        assert_eq!(s.metrics["f1"], 0.5);
        assert_eq!(s.metadata["model"], "bert");
        let e = parse("m.metrics.json", b"{\"a\": 1,\n \"a\": 2}").unwrap_err();
        assert!(e.reason.contains("duplicate"), "{e}");
        assert_eq!(e.line, Some(2), "{e}");
    }
}
