//! A small map kept as a sorted vector: what a version's metrics and metadata are. With
//! a handful of entries a `Vec` costs a tenth of a `BTreeMap` (whose first node reserves
//! eleven slots), which matters at 100,000 versions held in memory. Serialised as a map.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// String keys in ascending order, each once. A boxed slice, not a `Vec`: never grown
/// once built, and 16 bytes inline instead of 24 (a version holds five of these, mostly
/// empty).
#[derive(Debug, Clone, PartialEq)]
pub struct SortedMap<V>(Box<[(String, V)]>);

impl<V> Default for SortedMap<V> {
    fn default() -> Self {
        SortedMap(Box::default())
    }
}

impl<V> SortedMap<V> {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<V> FromIterator<(String, V)> for SortedMap<V> {
    /// Later duplicates of a key replace earlier ones, as in a map.
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        let mut v: Vec<(String, V)> = iter.into_iter().collect();
        // Stable sort keeps insertion order among equal keys; keep the last of each.
        v.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(String, V)> = Vec::with_capacity(v.len());
        for (k, x) in v {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = x,
                _ => out.push((k, x)),
            }
        }
        SortedMap(out.into_boxed_slice())
    }
}

impl<V, const N: usize> From<[(String, V); N]> for SortedMap<V> {
    fn from(a: [(String, V); N]) -> Self {
        a.into_iter().collect()
    }
}

impl<V> std::ops::Index<&str> for SortedMap<V> {
    type Output = V;
    fn index(&self, key: &str) -> &V {
        self.get(key).unwrap_or_else(|| panic!("no key {key:?}"))
    }
}

impl<V: Serialize> Serialize for SortedMap<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0.iter() {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for SortedMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V2<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V2<V> {
            type Value = SortedMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some(entry) = a.next_entry::<String, V>()? {
                    v.push(entry);
                }
                Ok(v.into_iter().collect())
            }
        }
        d.deserialize_map(V2(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_lookup_and_last_duplicate_wins() {
        let m: SortedMap<f64> = [
            ("b".to_string(), 2.0),
            ("a".to_string(), 1.0),
            ("b".to_string(), 3.0),
        ]
        .into_iter()
        .collect();
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("a"), Some(&1.0));
        assert_eq!(m["b"], 3.0);
        assert!(m.get("c").is_none());
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"a":1.0,"b":3.0}"#);
        let back: SortedMap<f64> = serde_json::from_str(r#"{"z":1,"a":2}"#).unwrap();
        assert_eq!(
            back.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["a", "z"]
        );
    }
}
