//! The catalog: models, their immutable versions, and the inbox sources they came from.
//! Pure data, queries (latest, best, a selector) and change rules, refusing with one
//! [`RegistryError`]; [`persist`] reads and writes it as `registry.yaml`. Only the registrar mutates it (see `daemon`).

mod changes;
pub mod compact;
mod delta;
mod error;
pub mod file_metrics;
pub mod persist;
mod selector;

pub use changes::{Changed, Doomed, Stamp, keep_last};
pub use delta::{Delta, ModelDelta, ModelState, Touched};
pub use error::RegistryError;
pub use selector::{BestBy, Selector, parse_version};

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::Direction;

/// Free-form metadata (dataset, params, tags, notes, ...).
pub type Metadata = compact::SortedMap<serde_json::Value>;
/// Numeric metrics by name.
pub type Metrics = compact::SortedMap<f64>;

/// Every model and every source the daemon has registered.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Models by name. `Arc` so that a snapshot handed to readers shares unchanged models.
    pub models: BTreeMap<String, Arc<Model>>,
    /// What was last seen of each inbox entry, by its name in the inbox: lets a restart or
    /// a rescan skip files that have not changed without hashing them again.
    pub sources: BTreeMap<String, SourceRecord>,
    /// The last journal record this catalog includes ([`Delta::seq`]); registry.yaml
    /// records it, so that replaying the journal applies each later change exactly once.
    pub journal_seq: u64,
    /// The highest event seq ever given (0: none, or a catalog written before events
    /// were numbered here): the event log's durable high-water mark, carried by each
    /// journal record and registry.yaml, so that a seq is never given twice even when
    /// the log lost its tail or its folder (see the event log's `continue_after`).
    pub event_seq: u64,
}

/// One model name and its versions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    /// The highest version number ever given; the next one is this + 1.
    pub highest: u32,
    /// Versions in ascending number, tombstones of removed ones included. Each behind
    /// an `Arc`: the registrar changes a model that the published snapshot shares
    /// (copy on write), and copying the model then copies pointers, not every version;
    /// a changed version is copied alone (`Arc::make_mut`).
    pub versions: Vec<Arc<Version>>,
    /// Named pointers (production, staging, ...) to version numbers.
    pub aliases: BTreeMap<String, u32>,
    /// Every move of every alias, oldest first.
    pub alias_history: Vec<AliasMove>,
}

/// One move of an alias: set, moved, rolled back or removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasMove {
    /// The alias.
    #[serde(deserialize_with = "de_alias")]
    pub alias: String,
    /// Where it pointed before (none: it did not exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u32>,
    /// Where it points after (none: removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u32>,
    /// When.
    pub at: String,
    /// The uid of the client that asked (SO_PEERCRED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// set, rollback, remove, or the operation that moved it (rm --force).
    pub by: String,
}

/// When, why and by whom a version was deprecated or removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mark {
    /// When.
    pub at: String,
    /// Why, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The uid of the client that asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
}

/// Whether a version holds one file or a folder of files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A single file.
    #[default]
    File,
    /// A folder (Hugging Face style), stored with its layout.
    Folder,
}

impl Kind {
    fn is_file(&self) -> bool {
        *self == Kind::File
    }
}

/// One immutable version. What most versions lack (a sidecar, a deprecation, a
/// removal) is boxed: 8 bytes when absent instead of 48 to 56, at 100,000 versions in
/// memory. Boxes serialise as what they hold, so registry.yaml and answers are the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Version {
    /// N in `vN`. Stored as the key of the version in registry.yaml.
    #[serde(skip)]
    pub number: u32,
    /// File or folder.
    #[serde(default, skip_serializing_if = "Kind::is_file")]
    pub kind: Kind,
    /// The stored files, paths relative to the root.
    pub files: Vec<StoredFile>,
    /// The inbox entry it was copied from, relative to the root.
    pub source: String,
    /// When it was registered (RFC 3339, UTC).
    pub registered_at: String,
    /// Numeric metrics from the sidecar.
    #[serde(default, skip_serializing_if = "Metrics::is_empty")]
    pub metrics: Metrics,
    /// Free metadata from the sidecar.
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    pub metadata: Metadata,
    /// Where each metric came from when not from the sidecar (e.g. `eval_accuracy:
    /// eval_results.json` for a Trainer folder's results); a sidecar's metrics win.
    #[serde(default, skip_serializing_if = "compact::SortedMap::is_empty")]
    pub metric_sources: compact::SortedMap<String>,
    /// Facts read from the artifact's headers at registration (format, tensors,
    /// parameters, dtypes, opset, ...), or `unreadable: reason`; never from the weights.
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    pub extracted: Metadata,
    /// Where the version came from, recorded automatically: the dropping user, host,
    /// source path and mtime, and a commit or run id when the sidecar or git says so.
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    pub provenance: Metadata,
    /// The sidecar whose content is applied, by hash: a sidecar with this content is
    /// stale for any newer artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<Box<SidecarRef>>,
    /// Earlier metrics replaced by later sidecar edits, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics_history: Vec<MetricsChange>,
    /// Hidden from latest and best, but kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated: Option<Box<Mark>>,
    /// Its files are deleted; this entry stays as a tombstone, so the number is never
    /// given again and `get` can say when and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<Box<Mark>>,
}

/// One stored file of a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredFile {
    /// Relative to the root (absolute when the store lies outside it).
    pub path: String,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
}

/// The sidecar applied to a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarRef {
    /// Relative to the root.
    pub path: String,
    /// SHA-256 of the sidecar's bytes.
    pub sha256: String,
}

/// Metrics a sidecar edit replaced, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsChange {
    /// When they were replaced.
    pub replaced_at: String,
    /// The metrics as they were before.
    #[serde(default)]
    pub metrics: Metrics,
}

/// What the daemon last saw of one inbox entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRecord {
    /// Size, mtime and inode (for a folder: a digest of those of every file).
    pub fingerprint: String,
    /// The model it belongs to.
    #[serde(deserialize_with = "crate::names::de_model_name")]
    pub model: String,
    /// For an artifact: the version its content is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// For a sidecar: the SHA-256 of its content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl Catalog {
    /// The number of versions over all models, removed ones not counted (their tombstones
    /// stay in the catalog, their files are gone): what `list` sums and `/metrics` says.
    pub fn version_count(&self) -> usize {
        self.models.values().map(|m| m.stored().count()).sum()
    }
}

impl Model {
    /// The newest version that is neither deprecated nor removed.
    pub fn latest(&self) -> Option<&Version> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.is_live())
            .map(|v| &**v)
    }

    /// The newest version whose files exist (deprecated ones included): what new bytes are
    /// compared with, and what a sidecar edit updates.
    pub fn newest(&self) -> Option<&Version> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.removed.is_none())
            .map(|v| &**v)
    }

    /// Versions whose files exist.
    pub fn stored(&self) -> impl Iterator<Item = &Version> {
        self.versions
            .iter()
            .filter(|v| v.removed.is_none())
            .map(|v| &**v)
    }

    /// Version `n`.
    pub fn find(&self, n: u32) -> Option<&Version> {
        self.versions
            .binary_search_by_key(&n, |v| v.number)
            .ok()
            .map(|i| &*self.versions[i])
    }

    /// The version with the best value of `metric` in `direction`; versions without the
    /// metric are skipped and a tie goes to the newer version.
    pub fn best(&self, metric: &str, direction: Direction) -> Option<&Version> {
        let mut best: Option<(&Version, f64)> = None;
        for v in self.versions.iter().filter(|v| v.is_live()) {
            let Some(&x) = v.metrics.get(metric) else {
                continue;
            };
            let better = match best {
                None => true,
                // Versions ascend, so `>=` / `<=` hands a tie to the newer one.
                Some((_, b)) => match direction {
                    Direction::Max => x >= b,
                    Direction::Min => x <= b,
                },
            };
            if better {
                best = Some((v, x));
            }
        }
        best.map(|(v, _)| v)
    }

    /// Adds a new version; its number must be above every number ever given.
    pub fn push(&mut self, v: Version) {
        debug_assert!(v.number > self.highest);
        self.highest = self.highest.max(v.number);
        self.versions.push(Arc::new(v));
    }
}

impl Version {
    /// Neither deprecated nor removed.
    pub fn is_live(&self) -> bool {
        self.deprecated.is_none() && self.removed.is_none()
    }

    /// Applies metrics and metadata given again for this version's unchanged bytes (an
    /// edited sidecar, or `register` of the same bytes; both use this one rule). A part
    /// given (not empty) replaces the version's; a part left empty keeps what the
    /// version has, so metadata alone never erases metrics. When metrics or metadata
    /// change, the metrics as they were are kept in `metrics_history` with the time `at`.
    /// Returns whether anything changed. Metrics read from the version's files
    /// (`metric_sources`) stay unless the metrics given name them: the sidecar wins
    /// where it speaks, as at registration; one it stops naming comes back with its file
    /// ([`file_metrics`]).
    pub fn update_metrics(&mut self, metrics: Metrics, metadata: Metadata, at: &str) -> bool {
        // Every metric read from the files, those the sidecar overrode before included
        // (kept in `extracted`): one the sidecar stops naming comes back.
        let files = file_metrics::FileMetrics::of(self);
        let (metrics, sources, extracted) = if metrics.is_empty() || files.is_empty() {
            (metrics, compact::SortedMap::default(), None)
        } else {
            let m = files.merge(&metrics);
            let extracted = file_metrics::with_overridden(&self.extracted, m.overridden);
            (m.metrics, m.sources, Some(extracted))
        };
        let metrics_change = !metrics.is_empty() && metrics != self.metrics;
        let metadata_change = !metadata.is_empty() && metadata != self.metadata;
        // The same values, now from the sidecar rather than a file (or back).
        let sources_change = !metrics.is_empty()
            && (sources != self.metric_sources
                || extracted.as_ref().is_some_and(|e| *e != self.extracted));
        if !metrics_change && !metadata_change && !sources_change {
            return false;
        }
        if metrics_change || metadata_change {
            self.metrics_history.push(MetricsChange {
                replaced_at: at.to_string(),
                metrics: self.metrics.clone(),
            });
        }
        if !metrics.is_empty() {
            self.metrics = metrics;
            self.metric_sources = sources;
        }
        if let Some(e) = extracted {
            self.extracted = e;
        }
        if metadata_change {
            self.metadata = metadata;
        }
        true
    }

    /// Whether this version holds exactly the same files as `files`: (path relative to
    /// the version folder, sha256) pairs in the stored order. `dir` is the version
    /// folder as it appears in the stored paths, without a trailing `/`.
    pub fn same_content(&self, dir: &str, files: &[(String, String)]) -> bool {
        self.files.len() == files.len()
            && self.files.iter().zip(files).all(|(a, (name, sha))| {
                a.sha256 == *sha
                    && a.path
                        .strip_prefix(dir)
                        .and_then(|rest| rest.strip_prefix('/'))
                        == Some(name.as_str())
            })
    }
}

/// Whether `alias` can name an alias: a safe name that is not `latest`, `best` or `vN`.
pub fn check_alias(alias: &str) -> Result<(), String> {
    crate::names::check_name(alias)?;
    if alias == "latest" || alias == "best" {
        return Err(format!("{alias:?} is reserved"));
    }
    if alias.starts_with('v') && alias[1..].bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{alias:?} looks like a version number"));
    }
    Ok(())
}

/// Serde helper: an alias read from registry.yaml or the start-up cache, checked with
/// [`check_alias`]; a bad one is an error at its position.
pub fn de_alias<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    check_alias(&s).map_err(|r| serde::de::Error::custom(format!("alias {s:?}: {r}")))?;
    Ok(s)
}

/// The deepest a version's metadata may nest, its own map counting as 1: what a sidecar
/// can give (see [`crate::sidecar::MAX_DEPTH`]). registry.yaml holds it 6 levels down.
pub const MAX_METADATA_DEPTH: usize = crate::sidecar::MAX_DEPTH;

/// How deep `m` nests: 1 for a map of scalars, one more per level of maps and lists.
pub fn metadata_depth(m: &Metadata) -> usize {
    fn depth(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
            serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    1 + m.iter().map(|(_, v)| depth(v)).max().unwrap_or(0)
}

/// `vN` -> N, N from 1 without leading zeros: the one rule for version numbers (selectors,
/// change arguments, registry.yaml keys). A bare `N` is no version.
pub fn parse_version_number(s: &str) -> Option<u32> {
    let digits = s.strip_prefix('v')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return None;
    }
    digits.parse().ok().filter(|n| *n > 0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Version `n` with `metrics` and no files.
    pub(crate) fn v(n: u32, metrics: &[(&str, f64)]) -> Version {
        Version {
            number: n,
            kind: Kind::File,
            files: vec![],
            source: String::new(),
            registered_at: String::new(),
            metrics: metrics.iter().map(|(k, x)| (k.to_string(), *x)).collect(),
            metadata: Default::default(),
            sidecar: None,
            metrics_history: vec![],
            metric_sources: Default::default(),
            extracted: Default::default(),
            provenance: Default::default(),
            deprecated: None,
            removed: None,
        }
    }

    /// A stamp for tests: a fixed time, uid 7.
    pub(crate) fn stamp() -> super::changes::Stamp {
        super::changes::Stamp {
            at: "2026-11-27T10:00:00Z".into(),
            uid: Some(7),
        }
    }

    /// A model of `vs`.
    pub(crate) fn model(vs: Vec<Version>) -> Model {
        let mut m = Model::default();
        for x in vs {
            m.push(x);
        }
        m
    }

    #[test]
    fn best_max_min_tie_and_skip() {
        let m = model(vec![
            v(1, &[("accuracy", 0.71), ("loss", 0.5)]),
            v(2, &[("accuracy", 0.69), ("loss", 0.4)]),
            v(3, &[("loss", 0.4)]),
            v(4, &[("accuracy", 0.71)]),
        ]);
        // Tie between v1 and v4 goes to the newer.
        assert_eq!(m.best("accuracy", Direction::Max).unwrap().number, 4);
        assert_eq!(m.best("accuracy", Direction::Min).unwrap().number, 2);
        // v2 and v3 tie on loss; newer wins.
        assert_eq!(m.best("loss", Direction::Min).unwrap().number, 3);
        assert!(m.best("f1", Direction::Max).is_none());
    }

    #[test]
    fn latest_and_find() {
        let m = model(vec![v(1, &[]), v(2, &[]), v(5, &[])]);
        assert_eq!(m.latest().unwrap().number, 5);
        assert_eq!(m.find(2).unwrap().number, 2);
        assert!(m.find(3).is_none());
        assert_eq!(m.highest, 5);
    }

    #[test]
    fn deprecated_and_removed_are_skipped_by_latest_and_best() {
        let mut m = model(vec![
            v(1, &[("accuracy", 0.9)]),
            v(2, &[("accuracy", 0.5)]),
            v(3, &[("accuracy", 0.4)]),
        ]);
        let mark = Mark {
            at: "t".into(),
            reason: None,
            uid: None,
        };
        std::sync::Arc::make_mut(&mut m.versions[0]).deprecated = Some(Box::new(mark.clone()));
        std::sync::Arc::make_mut(&mut m.versions[2]).removed = Some(Box::new(mark));
        assert_eq!(m.latest().unwrap().number, 2);
        assert_eq!(m.newest().unwrap().number, 2);
        assert_eq!(m.best("accuracy", Direction::Max).unwrap().number, 2);
        assert!(check_alias("production").is_ok());
        assert!(
            check_alias("latest").is_err()
                && check_alias("v3").is_err()
                && check_alias("../x").is_err()
        );
    }

    #[test]
    fn version_numbers() {
        assert_eq!(parse_version_number("v3"), Some(3));
        assert_eq!(parse_version_number("v12"), Some(12));
        assert_eq!(parse_version_number("12"), None);
        assert_eq!(parse_version_number("v0"), None);
        assert_eq!(parse_version_number("v03"), None);
        assert_eq!(parse_version_number("v"), None);
        assert_eq!(parse_version_number("latest"), None);
        assert_eq!(parse_version_number("v99999999999"), None);
    }

    #[test]
    fn a_sidecar_edit_keeps_metrics_read_from_files_unless_it_names_them() {
        let mut x = v(1, &[("acc", 0.5), ("eval_loss", 0.3), ("epoch", 3.0)]);
        x.metric_sources = [
            ("eval_loss".to_string(), "eval_results.json".to_string()),
            ("epoch".to_string(), "all_results.json".to_string()),
        ]
        .into();
        let given: Metrics = [("acc".to_string(), 0.9), ("epoch".to_string(), 4.0)].into();
        assert!(x.update_metrics(given, Default::default(), "t"));
        assert_eq!(x.metrics["acc"], 0.9);
        assert_eq!(x.metrics["epoch"], 4.0, "the sidecar wins where it speaks");
        assert_eq!(x.metrics["eval_loss"], 0.3);
        assert_eq!(x.metric_sources.len(), 1);
        assert_eq!(x.metric_sources["eval_loss"], "eval_results.json");
    }
}
