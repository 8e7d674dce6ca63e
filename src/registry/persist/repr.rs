//! The serde shapes of registry.yaml (and of the start-up cache): versions as a `v<N>` map, aliases checked on reading.
//!
//! Reading goes through owned shapes ([`FileRepr`]) that the parent module then checks
//! validates; writing borrows the catalog ([`FileReprRef`]) so nothing is copied.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::FORMAT;
use crate::names::{EntryName, ModelName};
use crate::registry::{AliasMove, Catalog, SourceRecord, Version};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
/// registry.yaml as read, before it is checked.
pub(super) struct FileRepr {
    pub(super) format: u32,
    /// The last journal record the file includes (absent in files written before the
    /// journal: none).
    #[serde(default)]
    pub(super) journal_seq: u64,
    /// The highest event seq ever given (absent in older files: 0).
    #[serde(default)]
    pub(super) event_seq: u64,
    #[serde(default)]
    pub(super) models: BTreeMap<ModelName, ModelRepr>,
    #[serde(default)]
    pub(super) sources: BTreeMap<EntryName, SourceRecord>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
/// One model as read.
pub(super) struct ModelRepr {
    pub(super) highest_version: u32,
    #[serde(default)]
    pub(super) versions: VersionMap,
    #[serde(default)]
    pub(super) aliases: BTreeMap<AliasName, u32>,
    #[serde(default)]
    pub(super) alias_history: Vec<AliasMove>,
}

/// An alias as a key in registry.yaml or the cache, checked on reading
/// ([`crate::registry::check_alias`]).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct AliasName(pub(super) String);

impl<'de> Deserialize<'de> for AliasName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        crate::registry::de_alias(d).map(AliasName)
    }
}

/// The same shape, borrowed, for writing without copying the catalog.
#[derive(Serialize)]
pub(super) struct FileReprRef<'a> {
    format: u32,
    journal_seq: u64,
    #[serde(skip_serializing_if = "is_zero")]
    event_seq: u64,
    models: BTreeMap<&'a str, ModelReprRef<'a>>,
    sources: &'a BTreeMap<String, SourceRecord>,
}

#[derive(Serialize)]
struct ModelReprRef<'a> {
    highest_version: u32,
    #[serde(serialize_with = "versions_as_map")]
    versions: &'a [std::sync::Arc<Version>],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    aliases: &'a BTreeMap<String, u32>,
    #[serde(skip_serializing_if = "<[AliasMove]>::is_empty")]
    alias_history: &'a [AliasMove],
}

/// Versions as a map `v1: ..., v2: ...` in numeric order (a plain map would sort v10
/// before v2).
fn versions_as_map<S: Serializer>(
    vs: &&[std::sync::Arc<Version>],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    let mut m = s.serialize_map(Some(vs.len()))?;
    for v in vs.iter() {
        m.serialize_entry(&format!("v{}", v.number), &**v)?;
    }
    m.end()
}

/// Versions read from the map form, sorted by number. Each is put behind its `Arc` as
/// it is read: built in place once, not moved from a vector of whole versions (a second
/// copy of every version at the peak, and holes between what stays once it is freed).
#[derive(Default)]
pub(super) struct VersionMap(pub(super) Vec<Arc<Version>>);

impl<'de> Deserialize<'de> for VersionMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = VersionMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of versions v1, v2, ...")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut a: A,
            ) -> std::result::Result<VersionMap, A::Error> {
                let mut out: Vec<Arc<Version>> = Vec::new();
                while let Some(key) = a.next_key::<String>()? {
                    let n = crate::registry::parse_version_number(&key).ok_or_else(|| {
                        de::Error::custom(format!("version key `{key}` is not of the form v<N>"))
                    })?;
                    let mut v: Version = a.next_value()?;
                    v.number = n;
                    v.files.shrink_to_fit();
                    out.push(Arc::new(v));
                }
                out.sort_by_key(|v| v.number);
                // Grown by doubling; the catalog keeps it for the daemon's life.
                out.shrink_to_fit();
                if let Some(w) = out.windows(2).find(|w| w[0].number == w[1].number) {
                    return Err(de::Error::custom(format!(
                        "version v{} is listed twice",
                        w[0].number
                    )));
                }
                Ok(VersionMap(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The catalog in its written shape, borrowed.
pub(super) fn repr_ref(c: &Catalog) -> FileReprRef<'_> {
    FileReprRef {
        format: FORMAT,
        journal_seq: c.journal_seq,
        event_seq: c.event_seq,
        models: c
            .models
            .iter()
            .map(|(name, m)| {
                (
                    name.as_str(),
                    ModelReprRef {
                        highest_version: m.highest,
                        versions: &m.versions,
                        aliases: &m.aliases,
                        alias_history: &m.alias_history,
                    },
                )
            })
            .collect(),
        sources: &c.sources,
    }
}

/// Whether `n` is 0 (a field left out of the file).
fn is_zero(n: &u64) -> bool {
    *n == 0
}
