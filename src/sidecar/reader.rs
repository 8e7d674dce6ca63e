//! The bounded reader: sidecar YAML or JSON into a `serde_json::Value`, within the limits.
//!
//! It refuses deep nesting, non-finite numbers, duplicate keys, too many values and too
//! much text as it goes, each at its position.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::{MAX_DEPTH, MAX_NODES, MAX_STRING_BYTES, MAX_TOTAL_STRING_BYTES, numbers};

/// The error for nesting beyond [`MAX_DEPTH`].
fn too_deep() -> String {
    format!("nested deeper than {MAX_DEPTH} levels; a sidecar holds metrics and a little metadata")
}

/// What one sidecar may still spend: values and string bytes (shared by every level).
#[derive(Default)]
pub(super) struct Budget {
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

/// A seed that is also its own [`Visitor`]: it hands itself to the deserializer's
/// `$how` (`deserialize_any` for a value, `deserialize_str` for a key).
macro_rules! seed_is_its_own_visitor {
    ($seed:ident, $out:ty, $how:ident) => {
        impl<'de> DeserializeSeed<'de> for $seed<'_> {
            type Value = $out;
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<$out, D::Error> {
                d.$how(self)
            }
        }
    };
}

/// Reads any value at a given depth into a `serde_json::Value`, refusing what the
/// catalog could not hold: nesting beyond [`MAX_DEPTH`], non-finite numbers, duplicate
/// keys, too many values or too much text. Errors raised here carry the position of
/// the value (or key) concerned, which the parser adds.
#[derive(Clone, Copy)]
pub(super) struct NodeSeed<'a> {
    pub(super) depth: usize,
    pub(super) budget: &'a Budget,
    /// The whole YAML text (None for JSON): a string borrowed from it shows by the byte
    /// before it whether it was written plain or quoted.
    pub(super) yaml_text: Option<&'a str>,
}

impl<'a> NodeSeed<'a> {
    /// Counts a list or a map and gives the seed for its members, refusing nesting
    /// beyond [`MAX_DEPTH`].
    fn enter<E: de::Error>(self) -> Result<NodeSeed<'a>, E> {
        self.budget.node()?;
        if self.depth > MAX_DEPTH {
            return Err(E::custom(too_deep()));
        }
        Ok(NodeSeed {
            depth: self.depth + 1,
            ..self
        })
    }
}

seed_is_its_own_visitor!(NodeSeed, Value, deserialize_any);

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
            .ok_or_else(|| E::custom(numbers::non_finite_yaml(v)))
    }

    // serde_yaml hands over integers beyond 64 bits as 128-bit ones; neither the catalog
    // nor JSON (which `json_big_integer` checks the same way) keeps them exactly.
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Err(E::custom(numbers::out_of_range(&v.to_string())))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Err(E::custom(numbers::out_of_range(&v.to_string())))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.budget.string(v)?;
        Ok(Value::String(v.to_string()))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Value, E> {
        // serde_yaml hands a plain scalar that looks like a number but does not fit a
        // float (`1e999`) over as text; YAML means a number, so it is an error here, as
        // `.inf` is. Quoted (`"1e999"`), it is text.
        if is_plain(self.yaml_text, v) && numbers::decimal(v).is_some_and(f64::is_infinite) {
            return Err(E::custom(numbers::beyond_float(v)));
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
        let inner = self.enter()?;
        let mut out = Vec::new();
        while let Some(v) = a.next_element_seed(inner)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
        let inner = self.enter()?;
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

seed_is_its_own_visitor!(KeySeed, String, deserialize_str);

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

#[cfg(test)]
mod tests {
    use super::super::{MAX_DEPTH, MAX_NODES, MAX_SIDECAR_BYTES, MAX_STRING_BYTES, parse};

    #[test]
    fn nan_refused() {
        let e = parse("x", b"metrics:\n  loss: .nan\n").unwrap_err();
        assert!(e.reason.contains("not a finite number"), "{e}");
        assert_eq!(e.line, Some(2));
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
    fn integers_beyond_64_bits_are_out_of_range_in_yaml_and_json() {
        for (name, text, line) in [
            ("x.metrics.yaml", "a: 1\nflos: 1180591620717411303424\n", 2),
            (
                "x.metrics.yaml",
                "metadata: {h: 0x1ffffffffffffffffffff}\n",
                1,
            ),
            (
                "x.metrics.json",
                "{\"a\": 1,\n \"flos\": -1180591620717411303424}",
                2,
            ),
        ] {
            let e = parse(name, text.as_bytes()).unwrap_err();
            assert!(e.reason.contains("out of range"), "{text}: {e}");
            assert_eq!(e.line, Some(line), "{text}: {e}");
        }
        let s = parse(
            "x.metrics.json",
            b"{\"n\": 18446744073709551615, \"m\": -9223372036854775808}",
        )
        .unwrap();
        assert_eq!(s.metrics["n"], 18446744073709551615u64 as f64);
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
