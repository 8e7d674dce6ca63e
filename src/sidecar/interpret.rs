//! A parsed sidecar split into metrics and metadata, in either form, refusals naming the line.
//!
//! The forms: a `metrics:` map, or flat top-level numbers.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{Sidecar, find_line, is_json, numbers};
use crate::error::ParseError;

/// Keys with a meaning of their own at the top of a sidecar.
const KNOWN_KEYS: &[&str] = &["metrics", "dataset", "params", "tags", "notes", "metadata"];

/// The longest `provenance: {source: ...}` path taken (PATH_MAX).
const MAX_SOURCE_BYTES: usize = 4096;

/// `provenance: {source: /abs/path}`, written by a client that copied the artifact into
/// the inbox: the path it was copied from. Anything else under `provenance:` is refused
/// (the rest of the provenance is the daemon's to record).
fn source_of(shown: &str, line: Option<usize>, value: Value) -> Result<String, ParseError> {
    let refuse = |why: &str| {
        ParseError::at(
            shown,
            line,
            format!(
                "`provenance:` {why}; it takes only `source`, the absolute path the artifact was copied from, such as `provenance: {{source: /home/me/runs/bert}}`"
            ),
        )
    };
    let Value::Object(mut m) = value else {
        return Err(refuse("must be a map"));
    };
    let source = m.remove("source");
    if let Some(k) = m.keys().next() {
        return Err(refuse(&format!("has the unknown key `{k}`")));
    }
    match source {
        Some(Value::String(s))
            if s.starts_with('/')
                && s.len() <= MAX_SOURCE_BYTES
                && !s.chars().any(char::is_control) =>
        {
            Ok(s)
        }
        Some(_) => Err(refuse(&format!(
            "`source` must be an absolute path of at most {MAX_SOURCE_BYTES} bytes without control characters"
        ))),
        None => Err(refuse("has no `source`")),
    }
}

/// Splits the parsed document into metrics and metadata (both forms).
pub(super) fn interpret(shown: &str, text: &str, top: Value) -> Result<Sidecar, ParseError> {
    let line_of = |key: &str| find_line(text, key);
    let Value::Object(top) = top else {
        return Err(ParseError::at(
            shown,
            Some(1),
            "a sidecar is a map such as `accuracy: 0.71` or `metrics: {accuracy: 0.71}`",
        ));
    };
    let mut metrics = BTreeMap::new();
    let mut metadata = Map::new();
    let mut loose = Map::new();
    let mut notes = Vec::new();
    let mut source = None;
    for (key, value) in top {
        match key.as_str() {
            "provenance" => source = Some(source_of(shown, line_of("provenance"), value)?),
            "metrics" => {
                let Value::Object(m) = value else {
                    return Err(ParseError::at(
                        shown,
                        line_of("metrics"),
                        "`metrics:` must be a map of names to numbers, such as `metrics: {accuracy: 0.71}`",
                    ));
                };
                for (name, v) in m {
                    if let Some(text) = quoted_number(&v) {
                        return Err(ParseError::at(
                            shown,
                            line_of(&name),
                            numbers::quoted_metric(&name, text),
                        ));
                    }
                    let Some(x) = v.as_f64() else {
                        return Err(ParseError::at(
                            shown,
                            line_of(&name),
                            format!(
                                "metric {name:?} is {v}, not a finite number; text and lists go under `metadata:`"
                            ),
                        ));
                    };
                    if metrics.insert(name.clone(), x).is_some() {
                        return Err(twice(shown, line_of(&name), &name));
                    }
                }
            }
            "metadata" => {
                let Value::Object(m) = value else {
                    return Err(ParseError::at(
                        shown,
                        line_of("metadata"),
                        "`metadata:` must be a map, such as `metadata: {git_commit: 1a2b3c}`",
                    ));
                };
                metadata = m;
            }
            k if KNOWN_KEYS.contains(&k) => {
                loose.insert(key, value);
            }
            _ => match value {
                Value::Number(n) => {
                    let x = n.as_f64().expect("finite numbers only");
                    if metrics.insert(key.clone(), x).is_some() {
                        return Err(twice(shown, line_of(&key), &key));
                    }
                }
                Value::Object(_) | Value::Array(_) => {
                    return Err(ParseError::at(
                        shown,
                        line_of(&key),
                        format!(
                            "unknown key `{key}` holds a {}: top-level numbers are metrics and \
                             other scalars metadata; put maps and lists under `metadata:` \
                             (free-form keys go under `metadata:`)",
                            if value.is_object() { "map" } else { "list" }
                        ),
                    ));
                }
                scalar => {
                    // Text by the rule (quoted is text), so metadata; but a training
                    // script that wrote f"{acc:.4f}" (or f"loss: {loss}" with a NaN loss)
                    // meant a metric: say so once.
                    let note = match scalar.as_str() {
                        Some(text) if quoted_number(&scalar).is_some() => {
                            Some(numbers::quoted_number_note(&key, text, is_json(shown)))
                        }
                        Some(text) if numbers::non_finite_word(text) => {
                            Some(numbers::non_finite_text_note(&key, text))
                        }
                        _ => None,
                    };
                    if let Some(note) = note {
                        notes.push((line_of(&key), note));
                    }
                    loose.insert(key, scalar);
                }
            },
        }
    }
    for name in metrics.keys() {
        if name.trim().is_empty() || name.chars().any(char::is_control) {
            return Err(ParseError::at(
                shown,
                line_of(name),
                format!("metric name {name:?} is empty or has control characters"),
            ));
        }
    }
    for (key, v) in loose {
        if metadata.contains_key(&key) {
            return Err(ParseError::at(
                shown,
                line_of(&key),
                format!("`{key}` is given both at the top and under `metadata:`; keep one"),
            ));
        }
        if metrics.contains_key(&key) {
            return Err(ParseError::at(
                shown,
                line_of(&key),
                format!("`{key}` is given both as a metric and as metadata; keep one"),
            ));
        }
        metadata.insert(key, v);
    }
    check_known_types(shown, &metadata, &line_of)?;
    // In the file's order (the map is in key order), each shown as `path:line: ...`, the
    // way refusals are.
    notes.sort_by_key(|(line, _)| *line);
    let notes = notes
        .into_iter()
        .map(|(line, note)| ParseError::at(shown, line, note).to_string())
        .collect();
    Ok(Sidecar {
        metrics,
        metadata,
        notes,
        source,
    })
}

/// The documented types of the known metadata keys, wherever they were given (at the top
/// or under `metadata:`): `dataset` and `notes` are text, `tags` a list of text (`null`
/// stands for "not given").
fn check_known_types(
    shown: &str,
    metadata: &Map<String, Value>,
    line_of: &dyn Fn(&str) -> Option<usize>,
) -> Result<(), ParseError> {
    for (key, want) in [("dataset", "text"), ("notes", "text"), ("tags", "tags")] {
        let ok = match (metadata.get(key), want) {
            (None | Some(Value::Null), _) => true,
            (Some(v), "text") => v.is_string(),
            (Some(Value::Array(items)), _) => items.iter().all(Value::is_string),
            _ => false,
        };
        if !ok {
            let v = &metadata[key];
            let what = if want == "text" {
                format!("`{key}` must be a string, such as `{key}: imagenet-1k`")
            } else {
                "`tags` must be a list of strings, such as `tags: [baseline, resnet]`".into()
            };
            return Err(ParseError::at(
                shown,
                line_of(key),
                format!(
                    "{what}; it is {v} (free-form values go under `metadata:` with another key)"
                ),
            ));
        }
    }
    Ok(())
}

/// The text of a string that reads as a finite decimal number (`"0.71"`, `'90'`).
fn quoted_number(v: &Value) -> Option<&str> {
    let text = v.as_str()?;
    numbers::decimal(text)
        .is_some_and(f64::is_finite)
        .then_some(text)
}

/// The error for a metric given both flat and under `metrics:`.
fn twice(shown: &str, line: Option<usize>, name: &str) -> ParseError {
    ParseError::at(
        shown,
        line,
        format!("metric `{name}` is given both at the top and under `metrics:`; keep one"),
    )
}

#[cfg(test)]
mod tests {
    use super::super::parse;

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
    fn unknown_key_hints_metadata() {
        let e = parse("x", b"metircs: {a: 1}\n").unwrap_err();
        assert_eq!(e.line, Some(1));
        assert!(e.reason.contains("metadata:"), "{e}");
    }

    #[test]
    fn provenance_takes_only_an_absolute_source() {
        let s = parse("x.json", br#"{"provenance": {"source": "/home/me/bert"}}"#).unwrap();
        assert_eq!(s.source.as_deref(), Some("/home/me/bert"));
        assert!(s.metrics.is_empty() && s.metadata.is_empty());
        for bad in [
            "provenance: {source: rel/path}\n",
            "provenance: {source: /a, commit: abc}\n",
            "provenance: /a\n",
            "provenance: {}\n",
        ] {
            let e = parse("x", bad.as_bytes()).unwrap_err();
            assert!(e.reason.contains("it takes only `source`"), "{bad}: {e}");
            assert_eq!(e.line, Some(1), "{bad}");
        }
    }

    #[test]
    fn duplicate_metadata_key() {
        let e = parse("x", b"dataset: a\nmetadata: {dataset: b}\n").unwrap_err();
        assert!(e.reason.contains("both"), "{e}");
    }

    #[test]
    fn flat_form_numbers_are_metrics_other_scalars_metadata() {
        let s = parse(
            "m.metrics.yaml",
            b"accuracy: 0.71\nloss: 0.3\nepochs: 90\ndataset: imagenet\nrun: abc\nok: true\n",
        )
        .unwrap();
        assert_eq!(s.metrics["accuracy"], 0.71);
        assert_eq!(s.metrics["epochs"], 90.0);
        assert_eq!(s.metadata["dataset"], "imagenet");
        assert_eq!(s.metadata["run"], "abc");
        assert_eq!(s.metadata["ok"], true);
        // Both forms at once.
        let s = parse("m", b"metrics: {a: 1}\nb: 2\n").unwrap();
        assert_eq!(s.metrics.len(), 2);
        let e = parse("m", b"metrics: {a: 1}\na: 2\n").unwrap_err();
        assert!(e.reason.contains("both"), "{e}");
    }

    #[test]
    fn quoted_numbers_at_the_top_are_metadata_with_a_note_and_refused_as_metrics() {
        let s = parse(
            "m.metrics.yaml",
            b"loss: 0.3\naccuracy: '0.71'\nrun: abc\nid: '1e999'\n",
        )
        .unwrap();
        assert_eq!(s.metadata["accuracy"], "0.71");
        assert_eq!(s.notes.len(), 1, "{:?}", s.notes);
        assert!(
            s.notes[0].starts_with("m.metrics.yaml:2: `accuracy` is \"0.71\", a quoted number"),
            "{:?}",
            s.notes
        );
        // Text that spells a non-finite number is noted too (YAML's NaN is `.nan`).
        let s = parse("m.metrics.yaml", b"loss: nan\ngain: -Infinity\nrun: nano\n").unwrap();
        assert_eq!(s.metadata["loss"], "nan");
        assert_eq!(s.notes.len(), 2, "{:?}", s.notes);
        assert!(s.notes[0].contains("`loss` is \"nan\""), "{:?}", s.notes);
        // Under `metadata:` or a known key, a quoted number is what was meant: no note.
        let s = parse("m", b"metadata: {v: '1.0'}\nnotes: '3'\n").unwrap();
        assert!(s.notes.is_empty(), "{:?}", s.notes);
        let e = parse("m", b"metrics:\n  a: '1'\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.reason.contains("write `a: 1` without quotes"), "{e}");
    }
}
