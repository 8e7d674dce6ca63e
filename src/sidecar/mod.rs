//! The metrics sidecar `<name>.metrics.yaml` (or `<name>.metrics.json`, same meaning):
//! numeric metrics plus free metadata, in either of two forms.
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

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::ParseError;

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

/// Keys with a meaning of their own at the top of a sidecar.
const KNOWN_KEYS: &[&str] = &["metrics", "dataset", "params", "tags", "notes", "metadata"];

/// A parsed sidecar.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Sidecar {
    /// Numeric metrics by name.
    pub metrics: BTreeMap<String, f64>,
    /// Free metadata: dataset, params, tags, notes, other top-level scalars and the
    /// `metadata:` map, merged.
    pub metadata: Map<String, Value>,
}

/// Whether a sidecar's text is YAML or JSON (by its name: `.metrics.json` is JSON).
fn is_json(shown: &str) -> bool {
    shown.ends_with(".json")
}

/// Parses a sidecar's bytes. `shown` names the file in errors; a name ending in `.json`
/// is parsed as JSON, any other as YAML.
pub fn parse(shown: &str, bytes: &[u8]) -> Result<Sidecar, ParseError> {
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
    prescan(text).map_err(|(line, column, reason)| ParseError {
        path: shown.to_string(),
        line: Some(line),
        column: Some(column),
        reason,
    })?;
    let budget = Budget::default();
    let seed = NodeSeed {
        depth: 1,
        budget: &budget,
        yaml_text: (!is_json(shown)).then_some(text),
    };
    let top = if is_json(shown) {
        let mut de = serde_json::Deserializer::from_str(text);
        let v = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
        v.map_err(|e| from_json(shown, &e))?
    } else {
        seed.deserialize(serde_yaml::Deserializer::from_str(text))
            .map_err(|e| ParseError::from_yaml(shown, &e))?
    };
    interpret(shown, text, top)
}

/// Splits the parsed document into metrics and metadata (both forms).
fn interpret(shown: &str, text: &str, top: Value) -> Result<Sidecar, ParseError> {
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
    for (key, value) in top {
        match key.as_str() {
            "metrics" => {
                let Value::Object(m) = value else {
                    return Err(ParseError::at(
                        shown,
                        line_of("metrics"),
                        "`metrics:` must be a map of names to numbers, such as `metrics: {accuracy: 0.71}`",
                    ));
                };
                for (name, v) in m {
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
    Ok(Sidecar { metrics, metadata })
}

/// The error for a metric given both flat and under `metrics:`.
fn twice(shown: &str, line: Option<usize>, name: &str) -> ParseError {
    ParseError::at(
        shown,
        line,
        format!("metric `{name}` is given both at the top and under `metrics:`; keep one"),
    )
}

/// A serde_json error as a [`ParseError`], its position in its own fields.
fn from_json(shown: &str, e: &serde_json::Error) -> ParseError {
    let mut reason = e.to_string();
    if let Some(i) = reason.find(" at line ") {
        reason.truncate(i);
    }
    ParseError {
        path: shown.to_string(),
        line: (e.line() > 0).then_some(e.line()),
        column: (e.column() > 0).then_some(e.column()),
        reason,
    }
}

/// The pre-scan's error: it cannot tell text from nesting, and says so.
fn too_deep_prescan() -> String {
    format!(
        "nested deeper than {MAX_DEPTH} levels: more than {MAX_PRESCAN_DEPTH} `[`, `{{` or `- ` \
         are open at once here (those in strings and comments count too)"
    )
}

/// The error for nesting beyond [`MAX_DEPTH`].
fn too_deep() -> String {
    format!("nested deeper than {MAX_DEPTH} levels; a sidecar holds metrics and a little metadata")
}

/// How deep the pre-scan lets nesting go, as it counts it. Above [`MAX_DEPTH`] because
/// it counts brackets inside strings, comments and block scalars too (`notes: "[[["` is
/// text); the exact limit is [`MAX_DEPTH`], checked while parsing with line and column.
/// The parser's time at this depth was measured no worse than at [`MAX_DEPTH`] for a
/// whole [`MAX_SIDECAR_BYTES`] sidecar; it is the depth in the thousands that it is slow at.
pub const MAX_PRESCAN_DEPTH: usize = 4 * MAX_DEPTH;

/// A linear pass over the text that refuses deep nesting before any parser sees it: YAML
/// flow collections (`[`, `{`) and block indicators (`- - -`) on one line, beyond
/// [`MAX_PRESCAN_DEPTH`]. It errs only towards counting too deep: every `[` and `{` is
/// counted, even inside strings and comments (which a scan this simple may misjudge, and
/// an attacker could make it misjudge), while a `]` or `}` inside what looks like a
/// string or a comment closes only what that string opened. So harmless brackets in text
/// are allowed up to that bound, and the real depth is checked exactly while parsing.
/// Returns the 1-based line and column (in characters) and the reason.
fn prescan(text: &str) -> Result<(), (usize, usize, String)> {
    #[derive(PartialEq)]
    enum In {
        Plain,
        Single,
        Double,
        Comment,
    }
    let b = text.as_bytes();
    let mut state = In::Plain;
    let mut depth = 0usize;
    // Depth when the current string or comment began: closers inside it stop there.
    let mut floor = 0usize;
    let mut line = 1usize;
    let mut line_begins = 0usize;
    let too_deep_at = |line: usize, line_begins: usize, i: usize| {
        let column = text[line_begins..i].chars().count() + 1;
        (line, column, too_deep_prescan())
    };
    // Where a node (and so a quoted scalar or a comment) may begin: a superset of YAML's
    // rule, so that no real string is missed.
    let mut node_start = true;
    let mut line_start = true;
    let mut indicators = 0usize;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == b'\n' {
            line += 1;
            line_begins = i + 1;
            line_start = true;
            indicators = 0;
            node_start = true;
            if state == In::Comment {
                state = In::Plain;
            }
            i += 1;
            continue;
        }
        match c {
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_PRESCAN_DEPTH {
                    return Err(too_deep_at(line, line_begins, i));
                }
            }
            b']' | b'}' => {
                let low = if state == In::Plain { 0 } else { floor };
                if depth > low {
                    depth -= 1;
                }
            }
            _ => {}
        }
        match state {
            In::Comment => {}
            In::Single => {
                if c == b'\'' {
                    if next == Some(b'\'') {
                        i += 1;
                    } else {
                        state = In::Plain;
                    }
                }
            }
            In::Double => {
                if c == b'\\' {
                    i += 1;
                } else if c == b'"' {
                    state = In::Plain;
                }
            }
            In::Plain => {
                let blank_next = matches!(next, None | Some(b' ' | b'\t' | b'\r' | b'\n'));
                if line_start && matches!(c, b'-' | b'?' | b':') && blank_next {
                    // `- - - x`: each indicator opens one more level on the same line.
                    indicators += 1;
                    if indicators > MAX_PRESCAN_DEPTH {
                        return Err(too_deep_at(line, line_begins, i));
                    }
                } else if !matches!(c, b' ' | b'\t' | b'\r') {
                    line_start = false;
                }
                if c == b'#' && (node_start || i == 0 || matches!(b[i - 1], b' ' | b'\t')) {
                    state = In::Comment;
                    floor = depth;
                } else if c == b'\'' && node_start {
                    state = In::Single;
                    floor = depth;
                } else if c == b'"' && node_start {
                    state = In::Double;
                    floor = depth;
                }
                node_start = matches!(
                    c,
                    b' ' | b'\t'
                        | b'\r'
                        | b'['
                        | b'{'
                        | b']'
                        | b'}'
                        | b','
                        | b':'
                        | b'-'
                        | b'?'
                        | b'\''
                        | b'"'
                );
            }
        }
        i += 1;
    }
    Ok(())
}

/// What one sidecar may still spend: values and string bytes (shared by every level).
#[derive(Default)]
struct Budget {
    nodes: Cell<usize>,
    string_bytes: Cell<usize>,
}

impl Budget {
    fn node<E: de::Error>(&self) -> Result<(), E> {
        let n = self.nodes.get() + 1;
        self.nodes.set(n);
        if n > MAX_NODES {
            return Err(E::custom(format!(
                "more than {MAX_NODES} values; a sidecar holds metrics and a little metadata"
            )));
        }
        Ok(())
    }

    fn string<E: de::Error>(&self, s: &str) -> Result<(), E> {
        self.node()?;
        if s.len() > MAX_STRING_BYTES {
            return Err(E::custom(format!(
                "a string of {} bytes; at most {MAX_STRING_BYTES} are allowed",
                s.len()
            )));
        }
        let total = self.string_bytes.get() + s.len();
        self.string_bytes.set(total);
        if total > MAX_TOTAL_STRING_BYTES {
            return Err(E::custom(format!(
                "more than {MAX_TOTAL_STRING_BYTES} bytes of text in all"
            )));
        }
        Ok(())
    }
}

/// Reads any value at a given depth into a `serde_json::Value`, refusing what the
/// catalog could not hold: nesting beyond [`MAX_DEPTH`], non-finite numbers, duplicate
/// keys, too many values or too much text. Errors raised here carry the position of
/// the value (or key) concerned, which the parser adds.
#[derive(Clone, Copy)]
struct NodeSeed<'a> {
    depth: usize,
    budget: &'a Budget,
    /// The whole YAML text (None for JSON): a string borrowed from it shows by the byte
    /// before it whether it was written plain or quoted.
    yaml_text: Option<&'a str>,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number, string, boolean, list or map")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.budget.node()?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.budget.node()?;
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.budget.node()?;
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.budget.node()?;
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("{v} is not a finite number")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.budget.string(v)?;
        Ok(Value::String(v.to_string()))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Value, E> {
        // serde_yaml hands a plain scalar that looks like a number but does not fit a
        // float (`1e999`) over as text; YAML means a number, so it is an error here, as
        // `.inf` is. Quoted (`"1e999"`), it is text.
        if is_plain(self.yaml_text, v) && overflowing_number(v) {
            return Err(E::custom(format!(
                "{v} is not a finite number (it is beyond the largest float); quote it if it is text"
            )));
        }
        self.visit_str(v)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.budget.string(&v)?;
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.budget.node()?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
        self.budget.node()?;
        if self.depth > MAX_DEPTH {
            return Err(de::Error::custom(too_deep()));
        }
        let inner = NodeSeed {
            depth: self.depth + 1,
            ..self
        };
        let mut out = Vec::new();
        while let Some(v) = a.next_element_seed(inner)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
        self.budget.node()?;
        if self.depth > MAX_DEPTH {
            return Err(de::Error::custom(too_deep()));
        }
        let inner = NodeSeed {
            depth: self.depth + 1,
            ..self
        };
        let mut out = Map::new();
        // What each plain key means to YAML (`~` and `null` are both null): two keys
        // with one meaning are a duplicate, though spelled differently.
        let meanings = std::cell::RefCell::new(std::collections::BTreeSet::new());
        loop {
            let key = a.next_key_seed(KeySeed {
                seen: &out,
                budget: self.budget,
                yaml_text: self.yaml_text,
                meanings: &meanings,
            })?;
            let Some(key) = key else { break };
            let v = a.next_value_seed(inner)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// Reads a map key as a string, refusing one already present in the same map (at the
/// key's own position).
struct KeySeed<'a> {
    seen: &'a Map<String, Value>,
    budget: &'a Budget,
    yaml_text: Option<&'a str>,
    meanings: &'a std::cell::RefCell<std::collections::BTreeSet<String>>,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        self.budget.string(v)?;
        if self.seen.contains_key(v) {
            return Err(E::custom(format!(
                "duplicate key `{v}`; each key may appear once in a map"
            )));
        }
        Ok(v.to_string())
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<String, E> {
        if is_plain(self.yaml_text, v)
            && let Some(meaning) = plain_key_meaning(v)
            && !self.meanings.borrow_mut().insert(meaning.to_string())
        {
            return Err(E::custom(format!(
                "duplicate key `{v}`: YAML reads it as {meaning}, as another key of this map; each key may appear once in a map"
            )));
        }
        self.visit_str(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        self.visit_str(&v.to_string())
    }
}

/// Whether `v`, a string the YAML parser borrowed from `text`, was written as a plain
/// scalar: its bytes lie in `text` and are not preceded by a quote. (A quoted scalar is
/// borrowed from just inside its quotes; one with escapes or folded lines is not
/// borrowed at all, and is not plain either way.) Always false for JSON (`text` None).
fn is_plain(text: Option<&str>, v: &str) -> bool {
    let Some(text) = text else { return false };
    let (start, at) = (text.as_ptr() as usize, v.as_ptr() as usize);
    if at < start || at + v.len() > start + text.len() {
        return false;
    }
    let offset = at - start;
    offset == 0 || !matches!(text.as_bytes()[offset - 1], b'"' | b'\'')
}

/// Whether a plain scalar is written as a decimal number (YAML 1.2's core schema:
/// `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`) whose value is beyond f64.
fn overflowing_number(v: &str) -> bool {
    let body = v.strip_prefix(['-', '+']).unwrap_or(v);
    let (mantissa, exponent) = match body.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (body, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            (digits(int) && (frac.is_empty() || digits(frac))) || (int.is_empty() && digits(frac))
        }
        None => digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e)));
    mantissa_ok && exponent_ok && body.parse::<f64>().is_ok_and(f64::is_infinite)
}

/// What a plain map key means to YAML when that is not the text itself: null
/// (`~`, `null`, `Null`, `NULL`) or a boolean (`true`, `True`, `TRUE`, ...).
fn plain_key_meaning(v: &str) -> Option<&'static str> {
    match v {
        "~" | "null" | "Null" | "NULL" => Some("null"),
        "true" | "True" | "TRUE" => Some("true"),
        "false" | "False" | "FALSE" => Some("false"),
        _ => None,
    }
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

    #[test]
    fn duplicate_keys_name_their_line() {
        let e = parse("x", b"metrics:\n  a: 1\n  a: 2\n").unwrap_err();
        assert!(e.reason.contains("duplicate key `a`"), "{e}");
        assert_eq!(e.line, Some(3), "{e}");
        let e = parse("x", b"metadata:\n  k: {z: 1, z: 2}\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
    }

    #[test]
    fn non_finite_anywhere_refused() {
        for text in [
            "metadata:\n  x: .nan\n",
            "params: {lr: [1, .inf]}\n",
            "x: -.inf\n",
        ] {
            let e = parse("x", text.as_bytes()).unwrap_err();
            assert!(e.reason.contains("not a finite number"), "{text}: {e}");
            assert!(e.line.is_some(), "{text}: {e}");
        }
    }

    #[test]
    fn overflowing_numbers_and_keys_with_one_meaning() {
        for text in [
            "accuracy: 1e999\n",
            "metadata: {x: [-1E+400]}\n",
            "m: .5e999\n",
        ] {
            let e = parse("x", text.as_bytes()).unwrap_err();
            assert!(e.reason.contains("not a finite number"), "{text}: {e}");
            assert!(e.line.is_some(), "{text}: {e}");
        }
        // Quoted, or not a number at all, it is text.
        let s = parse("x", b"notes: '1e999'\nrun: \"2e999\"\nid: 1e999x\n").unwrap();
        assert_eq!(s.metadata["notes"], "1e999");
        assert_eq!(s.metadata["run"], "2e999");
        assert_eq!(s.metadata["id"], "1e999x");
        assert!(parse("x.metrics.json", b"{\"a\": \"1e999\"}").is_ok());
        for text in [
            "metadata: {~: 1, null: 2}\n",
            "metadata: {True: 1, true: 2}\n",
        ] {
            let e = parse("x", text.as_bytes()).unwrap_err();
            assert!(e.reason.contains("duplicate"), "{text}: {e}");
        }
        // A quoted "null" is text, not null.
        assert!(parse("x", b"metadata: {~: 1, 'null': 2}\n").is_ok());
    }

    #[test]
    fn prescan_allows_brackets_in_text_and_says_where() {
        let b = "[".repeat(MAX_DEPTH + 20);
        for text in [
            format!("notes: \"{b}\"\n"),
            format!("# {b}\nnotes: x\n"),
            format!("notes: |\n  {b}\n"),
            format!("notes: x#{b}\n"),
        ] {
            assert!(parse("x", text.as_bytes()).is_ok(), "{text}");
        }
        let e = parse(
            "x",
            format!("a: 1\nnotes: \"{}\"\n", "[".repeat(200)).as_bytes(),
        )
        .unwrap_err();
        assert_eq!(
            (e.line, e.column),
            (Some(2), Some(9 + MAX_PRESCAN_DEPTH)),
            "{e}"
        );
    }

    fn nested(depth: usize) -> String {
        format!(
            "metadata: {{x: {}1{}}}\n",
            "[".repeat(depth),
            "]".repeat(depth)
        )
    }

    #[test]
    fn depth_limit_is_exact() {
        // The top map and metadata's map are 2 levels; lists add the rest.
        assert!(parse("x", nested(MAX_DEPTH - 2).as_bytes()).is_ok());
        let e = parse("x", nested(MAX_DEPTH - 1).as_bytes()).unwrap_err();
        assert!(e.reason.contains("deeper than"), "{e}");
        assert_eq!(e.line, Some(1));
        // Block style, past the pre-scan: the parse itself refuses it, with the line.
        let mut block = String::from("metadata:\n");
        for i in 0..=MAX_DEPTH {
            block.push_str(&format!("{}k:\n", " ".repeat(2 * (i + 1))));
        }
        block.push_str(&format!("{}1\n", " ".repeat(2 * (MAX_DEPTH + 2))));
        let e = parse("x", block.as_bytes()).unwrap_err();
        assert!(e.reason.contains("deeper than"), "{e}");
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn prescan_refuses_deep_nesting_quickly_and_is_not_fooled() {
        let n = 100_000;
        for text in [
            format!("metadata: {{x: {}}}", "[".repeat(n)),
            format!("metadata: {}1", "{a: ".repeat(n)),
            format!("metadata:\n  x:\n    {}1\n", "- ".repeat(n)),
            // Closers hidden in strings and comments do not hide the real depth.
            format!("metadata: {}", "[\"]\", ".repeat(n)),
            format!("metadata: {}", "[ # ]\n".repeat(n)),
            format!("metadata: {}", "['a'']', ".repeat(n)),
        ] {
            let t0 = std::time::Instant::now();
            let e = parse("x", text.as_bytes()).unwrap_err();
            assert!(e.reason.contains("deeper than"), "{e}");
            assert!(e.line.is_some(), "{e}");
            // Not a timing assertion on the parser: the pre-scan answers, not serde_yaml.
            assert!(prescan(&text).is_err());
            let _ = t0;
        }
        // Brackets inside strings and comments do not count against a shallow file.
        let mut ok = String::from("notes: \"");
        ok.push_str(&"[1] ".repeat(100));
        ok.push_str("\"\n# ]]]] [[[[ ]]]]\nmetrics: {a: 1}\n");
        assert!(parse("x", ok.as_bytes()).is_ok());
    }

    #[test]
    fn size_nodes_and_strings_limited() {
        let big = vec![b'#'; MAX_SIDECAR_BYTES as usize + 1];
        assert!(parse("x", &big).unwrap_err().reason.contains("larger"));
        let long = format!("notes: {}\n", "a".repeat(MAX_STRING_BYTES + 1));
        assert!(
            parse("x", long.as_bytes())
                .unwrap_err()
                .reason
                .contains("string")
        );
        let many = format!("metadata: {{x: [{}]}}\n", "1,".repeat(MAX_NODES));
        assert!(
            parse("x", many.as_bytes())
                .unwrap_err()
                .reason
                .contains("values")
        );
        // Aliases count each time they are used.
        let mut laughs = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let mut prev = 'a';
        for c in 'b'..='h' {
            laughs.push_str(&format!(
                "{c}: &{c} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
            prev = c;
        }
        assert!(parse("x", laughs.as_bytes()).is_err());
    }
}
