//! Fields and their values in one version, and the evaluation of a compiled expression:
//! values are borrowed from the catalog, so that matching a version allocates nothing.

use std::cmp::Ordering;

use super::lexer::CmpOp;
use super::parser::{Lit, Node};
use crate::registry::compact::SortedMap;
use crate::registry::{Metadata, Version};

/// The value of `key` in `map`. A version's maps hold a handful of entries whose keys
/// live in their own allocations: a scan that compares lengths before bytes reads only
/// the keys of the right length, where a binary search reads the key of every probe;
/// over 100,000 versions that is a third of the time. Large maps are searched.
fn lookup<'a, V>(map: &'a SortedMap<V>, key: &str) -> Option<&'a V> {
    if map.len() > 16 {
        return map.get(key);
    }
    map.iter()
        .find(|(k, _)| k.len() == key.len() && k.as_str() == key)
        .map(|(_, v)| v)
}

/// What a field name refers to, resolved once when the expression is compiled.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    /// A bare name: the metric of that name, else the metadata key.
    Bare(Path),
    /// `metrics.x`.
    Metric(String),
    /// `metadata.x`.
    Metadata(Path),
    /// `extracted.x`: facts read from the artifact.
    Extracted(Path),
    /// `provenance.x`.
    Provenance(Path),
    /// `version`: N of `vN`.
    Version,
    /// `registered_at`: RFC 3339 text, which orders as time does.
    RegisteredAt,
    /// `state`: live, deprecated or removed.
    State,
    /// `size`: the version's total bytes.
    Size,
    /// `name`: the model's name.
    Name,
}

/// A key of a metadata-like map, or a dotted path into nested values
/// (`extracted.dtypes.F16`). Keys may hold dots themselves (`general.name` under
/// `extracted.general`, `ai.onnx` under `extracted.opsets`, a file name under
/// `extracted.files`): at each level the longest key that is there is taken first, then
/// shorter ones, so every such key can be reached by writing it as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    whole: String,
    /// Where its dots are, ascending.
    dots: Vec<usize>,
}

/// The most keys a path may be tried against for one version: a key with dots can be
/// split in several ways, and a hostile map holding every split must not make one
/// comparison cost thousands of lookups.
const PATH_TRIES: u32 = 256;

impl Path {
    fn new(s: &str) -> Path {
        Path {
            whole: s.to_string(),
            dots: s.match_indices('.').map(|(i, _)| i).collect(),
        }
    }

    /// Where a key that starts at `from` may end: the end of the path, then each dot
    /// after `from`, the latest first.
    fn ends(&self, from: usize) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(self.whole.len())
            .chain(self.dots.iter().rev().copied().filter(move |&d| d > from))
    }

    /// The value at this path in `map`.
    fn get<'a>(&self, map: &'a Metadata) -> Option<&'a serde_json::Value> {
        let mut tries = PATH_TRIES;
        for end in self.ends(0) {
            let Some(v) = lookup(map, &self.whole[..end]) else {
                continue;
            };
            if end == self.whole.len() {
                return Some(v);
            }
            if let Some(found) = self.under(v, end + 1, &mut tries) {
                return Some(found);
            }
        }
        None
    }

    /// The value at the rest of the path, from `from`, inside `v`.
    fn under<'a>(
        &self,
        v: &'a serde_json::Value,
        from: usize,
        tries: &mut u32,
    ) -> Option<&'a serde_json::Value> {
        let obj = v.as_object()?;
        for end in self.ends(from) {
            *tries = tries.checked_sub(1)?;
            let Some(x) = obj.get(&self.whole[from..end]) else {
                continue;
            };
            if end == self.whole.len() {
                return Some(x);
            }
            if let Some(found) = self.under(x, end + 1, tries) {
                return Some(found);
            }
        }
        None
    }
}

impl Field {
    /// The field a name refers to (docs/search.md "Fields").
    pub fn resolve(name: &str) -> Result<Field, String> {
        let prefixed = |prefix: &str| -> Result<Option<String>, String> {
            match name.strip_prefix(prefix) {
                None => Ok(None),
                Some("") => Err(format!("a key is missing after `{prefix}`")),
                Some(k) => Ok(Some(k.to_string())),
            }
        };
        if let Some(k) = prefixed("metrics.")? {
            return Ok(Field::Metric(k));
        }
        if let Some(k) = prefixed("metadata.")? {
            return Ok(Field::Metadata(Path::new(&k)));
        }
        if let Some(k) = prefixed("extracted.")? {
            return Ok(Field::Extracted(Path::new(&k)));
        }
        if let Some(k) = prefixed("provenance.")? {
            return Ok(Field::Provenance(Path::new(&k)));
        }
        Ok(match name {
            "version" => Field::Version,
            "registered_at" => Field::RegisteredAt,
            "state" => Field::State,
            "size" => Field::Size,
            "name" => Field::Name,
            _ => Field::Bare(Path::new(name)),
        })
    }

    /// A literal as this field compares it: `"v3"` (or `"V3"`, as people type it) is 3
    /// for `version`.
    pub(super) fn adapt(&self, lit: Lit) -> Lit {
        match (self, &lit) {
            (Field::Version, Lit::Str(s)) => {
                match s.strip_prefix(['v', 'V']).map(str::parse::<u32>) {
                    Some(Ok(n)) => Lit::Num(f64::from(n)),
                    _ => lit,
                }
            }
            _ => lit,
        }
    }

    /// The field as it is written (`accuracy`, `metrics.loss`), for a field a version
    /// may lack; `None` for a built-in one, which every version has.
    pub(super) fn written(&self) -> Option<String> {
        match self {
            Field::Bare(p) => Some(p.whole.clone()),
            Field::Metric(k) => Some(format!("metrics.{k}")),
            Field::Metadata(p) => Some(format!("metadata.{}", p.whole)),
            Field::Extracted(p) => Some(format!("extracted.{}", p.whole)),
            Field::Provenance(p) => Some(format!("provenance.{}", p.whole)),
            _ => None,
        }
    }

    /// Whether version `v` has this field at all, whatever its value (an object or a
    /// null included): a built-in field always.
    pub(super) fn present(&self, v: &Version) -> bool {
        match self {
            Field::Bare(p) => {
                lookup(&v.metrics, &p.whole).is_some() || p.get(&v.metadata).is_some()
            }
            Field::Metric(k) => lookup(&v.metrics, k).is_some(),
            Field::Metadata(p) => p.get(&v.metadata).is_some(),
            Field::Extracted(p) => p.get(&v.extracted).is_some(),
            Field::Provenance(p) => p.get(&v.provenance).is_some(),
            _ => true,
        }
    }

    /// This field's value in version `v` of model `name`.
    pub fn value<'a>(&self, name: &'a str, v: &'a Version) -> Value<'a> {
        match self {
            Field::Bare(p) => match lookup(&v.metrics, &p.whole) {
                Some(m) => Value::Num(*m),
                None => Value::json(p.get(&v.metadata)),
            },
            Field::Metric(k) => lookup(&v.metrics, k).map_or(Value::Missing, |m| Value::Num(*m)),
            Field::Metadata(p) => Value::json(p.get(&v.metadata)),
            Field::Extracted(p) => Value::json(p.get(&v.extracted)),
            Field::Provenance(p) => Value::json(p.get(&v.provenance)),
            Field::Version => Value::Num(f64::from(v.number)),
            Field::RegisteredAt => Value::Str(&v.registered_at),
            Field::State => Value::Str(match (&v.removed, &v.deprecated) {
                (Some(_), _) => "removed",
                (None, Some(_)) => "deprecated",
                (None, None) => "live",
            }),
            Field::Size => Value::Num(v.files.iter().map(|f| f.size).sum::<u64>() as f64),
            Field::Name => Value::Str(name),
        }
    }
}

/// A field's value in one version, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// A number (every metric; numeric metadata).
    Num(f64),
    /// Text.
    Str(&'a str),
    /// true or false.
    Bool(bool),
    /// A list (such as `tags`).
    List(&'a [serde_json::Value]),
    /// Absent, null, or an object (which compares with nothing).
    Missing,
}

impl<'a> Value<'a> {
    fn json(v: Option<&'a serde_json::Value>) -> Value<'a> {
        match v {
            Some(serde_json::Value::Number(n)) => n.as_f64().map_or(Value::Missing, Value::Num),
            Some(serde_json::Value::String(s)) => Value::Str(s),
            Some(serde_json::Value::Bool(b)) => Value::Bool(*b),
            Some(serde_json::Value::Array(a)) => Value::List(a),
            _ => Value::Missing,
        }
    }

    /// How this value orders against `lit`; `None` when they are of different types (or
    /// either is missing): then every comparison is false.
    fn cmp_lit(&self, lit: &Lit) -> Option<Ordering> {
        match (self, lit) {
            (Value::Num(a), Lit::Num(b)) => a.partial_cmp(b),
            (Value::Str(a), Lit::Str(b)) => Some((*a).cmp(b.as_str())),
            (Value::Bool(a), Lit::Bool(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }

    fn equals_json(j: &serde_json::Value, lit: &Lit) -> bool {
        Value::json(Some(j)).cmp_lit(lit) == Some(Ordering::Equal)
    }
}

/// Whether version `v` of model `name` satisfies `node`.
pub(super) fn matches(node: &Node, name: &str, v: &Version) -> bool {
    match node {
        Node::And(a, b) => matches(a, name, v) && matches(b, name, v),
        Node::Or(a, b) => matches(a, name, v) || matches(b, name, v),
        Node::Not(a) => !matches(a, name, v),
        Node::Cmp(f, op, lit) => {
            let Some(o) = f.value(name, v).cmp_lit(lit) else {
                return false;
            };
            match op {
                CmpOp::Eq => o == Ordering::Equal,
                CmpOp::Ne => o != Ordering::Equal,
                CmpOp::Lt => o == Ordering::Less,
                CmpOp::Le => o != Ordering::Greater,
                CmpOp::Gt => o == Ordering::Greater,
                CmpOp::Ge => o != Ordering::Less,
            }
        }
        Node::In(f, lits) => {
            let val = f.value(name, v);
            lits.iter().any(|l| val.cmp_lit(l) == Some(Ordering::Equal))
        }
        Node::Contains(f, lit) => match (f.value(name, v), lit) {
            (Value::List(items), _) => items.iter().any(|j| Value::equals_json(j, lit)),
            (Value::Str(s), Lit::Str(sub)) => s.contains(sub.as_str()),
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::parser::parse;
    use super::*;
    use crate::registry::StoredFile;

    fn version() -> Version {
        Version {
            number: 7,
            kind: Default::default(),
            files: vec![StoredFile {
                path: "models/m/v7/m.pt".into(),
                sha256: "0".repeat(64),
                size: 1000,
            }],
            source: "inbox/m.pt".into(),
            registered_at: "2026-11-27T10:00:00Z".into(),
            metrics: [("accuracy".to_string(), 0.8), ("loss".to_string(), 0.25)].into(),
            metadata: serde_json::from_value(serde_json::json!({
                "dataset": "imagenet",
                "tags": ["baseline", "resnet", 3],
                "accuracy": "shadowed",
                "epochs": 90,
                "frozen": true,
                "nested": {"depth": 50},
                "nothing": null,
            }))
            .unwrap(),
            metric_sources: Default::default(),
            extracted: serde_json::from_value(
                serde_json::json!({"format": "safetensors", "dtypes": {"F16": 10},
                    "opsets": {"ai.onnx": 17, "ai": {"onnx": 1}},
                    "general": {"general.name": "tinyllm"},
                    "files": {"model.safetensors": {"parameters": 10}}}),
            )
            .unwrap(),
            provenance: serde_json::from_value(serde_json::json!({"user": "ana"})).unwrap(),
            sidecar: None,
            metrics_history: vec![],
            deprecated: None,
            removed: None,
        }
    }

    fn is(expr: &str) -> bool {
        matches(&parse(expr).unwrap(), "resnet", &version())
    }

    #[test]
    fn every_operator_on_numbers_strings_and_bools() {
        assert!(is("accuracy == 0.8") && !is("accuracy != 0.8"));
        assert!(is("accuracy > 0.7") && is("accuracy >= 0.8") && !is("accuracy > 0.8"));
        assert!(is("loss < 0.3") && is("loss <= 0.25") && !is("loss < 0.25"));
        assert!(is(r#"dataset == "imagenet""#) && is(r#"dataset < "imagenf""#));
        assert!(is("frozen == true") && is("frozen != false"));
        assert!(is("epochs >= 90") && is("metadata.epochs == 90"));
    }

    #[test]
    fn a_bare_name_is_a_metric_before_metadata() {
        assert!(is("accuracy == 0.8"));
        assert!(is(r#"metadata.accuracy == "shadowed""#));
        assert!(is("metrics.accuracy == 0.8"));
    }

    #[test]
    fn missing_and_mismatched_fields_make_every_comparison_false() {
        for e in [
            "nope == 1",
            "nope != 1",
            "nope < 1",
            "nothing == 1",
            "nested >= 0",
        ] {
            assert!(!is(e), "{e}");
        }
        assert!(!is(r#"accuracy == "0.8""#) && !is(r#"accuracy != "0.8""#));
        assert!(!is("dataset != 1"));
        assert!(is("not nope == 1"));
    }

    #[test]
    fn in_and_contains() {
        assert!(is(r#"dataset in ["coco", "imagenet"]"#));
        assert!(is(r#"dataset not in ["coco"]"#));
        // `not in` is `not (.. in ..)`: true for a missing field.
        assert!(is(r#"nope not in ["coco"]"#) && !is(r#"nope in ["coco"]"#));
        assert!(is(r#"tags contains "baseline""#) && is("tags contains 3"));
        assert!(!is(r#"tags contains "base""#));
        assert!(is(r#"dataset contains "agen""#));
        assert!(!is(r#"tags == "baseline""#));
    }

    #[test]
    fn builtin_and_prefixed_fields() {
        assert!(is("version == 7") && is(r#"version > "v6""#) && is(r#"version >= "V7""#));
        assert!(is(r#"state == "live""#) && is("size == 1000"));
        assert!(is(r#"name == "resnet""#));
        assert!(is(r#"registered_at >= "2026-11-27""#));
        assert!(is(r#"extracted.format == "safetensors""#));
        assert!(is("extracted.dtypes.F16 == 10") && is("nested.depth == 50"));
        assert!(is(r#"provenance.user == "ana""#));
    }

    #[test]
    fn keys_with_dots_inside_nested_objects_are_reached_longest_first() {
        // An ONNX opset, a GGUF general.* key, a folder's file: keys with dots, below
        // the top; `diff` prints these paths, and they found nothing.
        assert!(is("extracted.opsets.ai.onnx == 17"));
        assert!(is(r#"extracted.general.general.name == "tinyllm""#));
        assert!(is("extracted.files.model.safetensors.parameters == 10"));
        assert!(!is("extracted.files.model.parameters == 10"));
    }

    #[test]
    fn precedence_decides_the_answer() {
        // not > and > or: read as (accuracy < 0) or (loss < 1 and not frozen == true).
        assert!(!is("accuracy < 0 or loss < 1 and not frozen == true"));
        assert!(is("(accuracy < 0 or loss < 1) and not frozen == false"));
        assert!(is("accuracy > 0 or loss > 1 and frozen == false"));
        assert!(!is("(accuracy > 0 or loss > 1) and frozen == false"));
    }
}
