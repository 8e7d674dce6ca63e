//! `modelreg show NAME SELECTOR`: one version as a model card in the terminal.
//!
//! The card is the `get` answer laid out for people: the header (state, aliases pointing
//! here, when and from where), metrics with their source when not the sidecar, metadata,
//! the facts read from the artifact's headers, the files and the provenance. Metadata,
//! extracted facts and provenance are rendered as any JSON map, so that facts a newer
//! daemon records show up without a change here.

use modelreg::client::Client;
use modelreg::display::{compact_number, escape_for_terminal as esc};
use modelreg::protocol::{FileInfo, Request, VersionInfo, VersionList};
use modelreg::status::human_bytes as human_size;
use serde_json::Value;

use super::render::table;

/// Shown characters of one value at most: a header's free-text metadata can be long, and
/// the card is for reading (`--json` has it whole).
const MAX_VALUE_CHARS: usize = 160;

/// An object whose values are all scalars, with at most this many keys, is shown on one
/// line (`F16: 2, F32: 10`); a bigger or nested one gets a line per key.
const INLINE_KEYS: usize = 8;

/// Hex digits of a SHA-256 shown: enough to tell files apart by eye.
pub(super) const SHORT_SHA: usize = 12;

/// The removed version `selector` (`vN`) of `name` as the catalog keeps its tombstone:
/// number, registration, files' SHA-256 and sizes, metrics, metadata, provenance and who
/// removed it; `None` when it cannot be found.
pub(super) fn tombstone(c: &mut Client, name: &str, selector: &str) -> Option<VersionInfo> {
    let number: u32 = selector
        .strip_prefix('v')
        .unwrap_or(selector)
        .parse()
        .ok()?;
    let list: VersionList = c.call_as(&Request::versions(name)).ok()?;
    list.versions
        .into_iter()
        .find(|v| v.number == number && v.state == "removed")
}

/// Prints the card of `v`.
pub(super) fn print_card(v: &VersionInfo) {
    outln!("{} {}", esc(&v.name), esc(&v.version));
    let removed = v.state == "removed";
    let mut state = v.state.clone();
    if let Some(m) = &v.mark {
        state.push_str(&format!(" since {}", m.at));
        if let Some(uid) = m.uid {
            state.push_str(&format!(
                " by {} (uid {uid})",
                modelreg::users::user_name(uid)
            ));
        }
        if let Some(r) = &m.reason {
            state.push_str(&format!(": {r}"));
        }
    }
    let mut head = vec![row("state", state)];
    if !v.aliases.is_empty() {
        head.push(row("aliases", v.aliases.join(", ")));
    }
    head.push(row("registered", v.registered_at.clone()));
    if let Some(at) = &v.metrics_updated_at {
        head.push(row("metrics updated", at.clone()));
    }
    head.push(row("source", v.source.clone()));
    head.push(row(
        "path",
        match removed {
            true => format!("{} (deleted: the files are gone)", v.path),
            false => v.path.clone(),
        },
    ));
    head.push(row(
        "size",
        format!("{} in {} file(s)", human_size(v.size), v.files.len()),
    ));
    if let Some(b) = &v.best_by {
        head.push(row(
            "best by",
            format!("{} ({})", b.metric, b.mode.as_str()),
        ));
    }
    table(&head);

    let metrics: Vec<Vec<String>> = v
        .metrics
        .iter()
        .map(|(k, x)| {
            let mut r = row(k, compact_number(*x));
            // The sidecar is the usual source: only another one is worth a word.
            if let Some(from) = v.metric_sources.get(k) {
                r.push(format!("(from {from})"));
            }
            r
        })
        .collect();
    section("metrics", metrics);
    section("metadata", map_rows(v.metadata.iter(), 1));
    section("extracted", map_rows(v.extracted.iter(), 1));
    let files = v
        .files
        .iter()
        .map(|f| {
            vec![
                format!("  {}", relative(v, f)),
                human_size(f.size),
                short_sha(&f.sha256),
            ]
        })
        .collect();
    section(
        match removed {
            true => "files (deleted; the tombstone keeps their sizes and SHA-256)",
            false => "files",
        },
        files,
    );
    section("provenance", map_rows(v.provenance.iter(), 1));
}

/// A blank line, `title`, and its rows; nothing when there are none.
fn section(title: &str, rows: Vec<Vec<String>>) {
    if rows.is_empty() {
        return;
    }
    outln!();
    outln!("{title}");
    table(&rows);
}

/// A `key:  value` row, indented under its heading.
fn row(key: &str, value: String) -> Vec<String> {
    vec![format!("  {key}"), value]
}

/// The first [`SHORT_SHA`] hex digits.
pub(super) fn short_sha(sha: &str) -> String {
    sha.chars().take(SHORT_SHA).collect()
}

/// A stored file's path inside its version folder (`config.json`, `tokenizer/vocab.txt`):
/// what tells a folder's files apart, and what two versions share.
pub(super) fn relative(v: &VersionInfo, f: &FileInfo) -> String {
    let dir = v.dir.trim_end_matches('/');
    f.path
        .strip_prefix(dir)
        .and_then(|p| p.strip_prefix('/'))
        .unwrap_or(&f.path)
        .to_string()
}

/// Rows for a JSON map at nesting `depth` (1: right under a heading): a scalar or a small
/// flat object on its key's line, anything bigger as its own rows one level deeper.
fn map_rows<'a>(
    entries: impl Iterator<Item = (&'a String, &'a Value)>,
    depth: usize,
) -> Vec<Vec<String>> {
    let indent = "  ".repeat(depth);
    let mut rows = Vec::new();
    for (k, x) in entries {
        match x {
            Value::Object(m) if !is_flat(m) => {
                rows.push(vec![format!("{indent}{k}"), String::new()]);
                rows.extend(map_rows(m.iter(), depth + 1));
            }
            // ONNX graph inputs/outputs: one line each, `X [N, 4] float32`.
            Value::Array(a) if (k == "inputs" || k == "outputs") && !a.is_empty() => {
                for (i, io) in a.iter().enumerate() {
                    let key = if i == 0 {
                        format!("{indent}{k}")
                    } else {
                        String::new()
                    };
                    rows.push(vec![key, io_text(io)]);
                }
            }
            _ => rows.push(vec![format!("{indent}{k}"), value_text(k, x)]),
        }
    }
    rows
}

/// An ONNX graph input or output (`{name, type, shape}`) as people write it:
/// `input [batch, 3, 224, 224] float32`; a scalar has `[]`, an unknown shape or type is
/// left out. Anything else is shown as JSON.
fn io_text(io: &Value) -> String {
    let Some(name) = io.get("name").and_then(Value::as_str) else {
        return cut(io.to_string());
    };
    let mut parts = vec![name.to_string()];
    if let Some(shape) = io.get("shape").and_then(Value::as_array) {
        let dims: Vec<String> = shape
            .iter()
            .map(|d| match d {
                Value::String(s) => s.clone(),
                Value::Null => "?".into(),
                d => d.to_string(),
            })
            .collect();
        parts.push(format!("[{}]", dims.join(", ")));
    }
    if let Some(t) = io.get("type").and_then(Value::as_str) {
        parts.push(t.to_string());
    }
    cut(parts.join(" "))
}

/// Whether `m` fits on one line: a few keys, every value a scalar.
fn is_flat(m: &serde_json::Map<String, Value>) -> bool {
    m.len() <= INLINE_KEYS && m.values().all(|x| !x.is_object() && !x.is_array())
}

/// One value as shown: strings bare, counts humanised, small objects `k: v, ...`, and
/// cut at [`MAX_VALUE_CHARS`].
pub(super) fn value_text(key: &str, x: &Value) -> String {
    let full = match x {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Number(n) if is_count(key) && n.as_u64().is_some() => {
            humanise_count(n.as_u64().unwrap_or(0))
        }
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) => compact_number(f),
            _ => n.to_string(),
        },
        Value::Object(m) if is_flat(m) => m
            .iter()
            .map(|(k, v)| format!("{k}: {}", value_text(k, v)))
            .collect::<Vec<_>>()
            .join(", "),
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => a
            .iter()
            .map(|x| value_text("", x))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    };
    cut(full)
}

/// Keys whose integer value is a parameter count, shown humanised.
pub(super) fn is_count(key: &str) -> bool {
    matches!(key, "parameters" | "parameter_count" | "params")
}

/// `1.23M (1,234,567)`; a count under a thousand as it is.
pub(super) fn humanise_count(n: u64) -> String {
    const UNITS: [(f64, &str); 4] = [(1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")];
    let Some((div, unit)) = UNITS.iter().find(|(d, _)| n as f64 >= *d) else {
        return n.to_string();
    };
    let short = format!("{:.2}", n as f64 / div);
    let short = short.trim_end_matches('0').trim_end_matches('.');
    format!("{short}{unit} ({})", grouped(n as i128))
}

/// Digits grouped by thousands: `1,234,567`, `-65,433`.
pub(super) fn grouped(n: i128) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn cut(s: String) -> String {
    if s.chars().count() <= MAX_VALUE_CHARS {
        return s;
    }
    let total = s.chars().count();
    let head: String = s.chars().take(MAX_VALUE_CHARS).collect();
    format!("{head}... ({total} characters; --json shows it whole)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_humanised_with_their_digits() {
        assert_eq!(humanise_count(999), "999");
        assert_eq!(humanise_count(1_234_567), "1.23M (1,234,567)");
        assert_eq!(humanise_count(7_000_000_000), "7B (7,000,000,000)");
        assert_eq!(humanise_count(1_500), "1.5K (1,500)");
        assert_eq!(grouped(-65_433), "-65,433");
        assert_eq!(grouped(100), "100");
    }

    #[test]
    fn values_render_as_people_read_them() {
        let dtypes = serde_json::json!({"F32": 10, "F16": 2});
        assert_eq!(value_text("dtypes", &dtypes), "F16: 2, F32: 10");
        assert_eq!(
            value_text("parameters", &serde_json::json!(1234567)),
            "1.23M (1,234,567)"
        );
        assert_eq!(
            value_text("tensors", &serde_json::json!(1234567)),
            "1234567"
        );
        assert_eq!(value_text("lr", &serde_json::json!(0.001)), "0.001");
        assert_eq!(
            value_text("shape", &serde_json::json!([1, 3, 224])),
            "1, 3, 224"
        );
        let long = "x".repeat(500);
        assert!(
            value_text("k", &Value::String(long))
                .ends_with("(500 characters; --json shows it whole)")
        );
    }

    #[test]
    fn onnx_inputs_and_outputs_read_as_name_shape_type() {
        let m: serde_json::Map<String, Value> = serde_json::from_value(serde_json::json!({
            "inputs": [
                {"name": "input", "type": "float32", "shape": ["batch", 3, 224, 224]},
                {"name": "mask", "type": "bool", "shape": []}
            ],
            "outputs": [{"name": "y"}]
        }))
        .unwrap();
        let text: Vec<String> = map_rows(m.iter(), 1).iter().map(|r| r.join("|")).collect();
        assert_eq!(
            text,
            [
                "  inputs|input [batch, 3, 224, 224] float32",
                "|mask [] bool",
                "  outputs|y"
            ]
        );
    }

    #[test]
    fn nested_maps_get_a_row_per_key() {
        let m: serde_json::Map<String, Value> = serde_json::from_value(serde_json::json!({
            "format": "safetensors",
            "metadata": {"a": {"deep": 1}, "b": "x"},
            "unreadable": "header claims 2^60 bytes"
        }))
        .unwrap();
        let rows = map_rows(m.iter(), 1);
        let text: Vec<String> = rows.iter().map(|r| r.join("|")).collect();
        assert_eq!(
            text,
            [
                "  format|safetensors",
                "  metadata|",
                "    a|deep: 1",
                "    b|x",
                "  unreadable|header claims 2^60 bytes"
            ]
        );
    }
}
