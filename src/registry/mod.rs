//! The catalog: models, their immutable versions, and the inbox sources they came from.
//! Pure data and queries (latest, best, a numbered version); [`persist`] reads and
//! writes it as `registry.yaml`. Only the registrar mutates it (see `daemon`).

pub mod compact;
pub mod persist;

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
}

/// One model name and its versions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    /// The highest version number ever given; the next one is this + 1.
    pub highest: u32,
    /// Versions in ascending number.
    pub versions: Vec<Version>,
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

/// One immutable version.
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
    /// The sidecar whose content is applied, by hash: a sidecar with this content is
    /// stale for any newer artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<SidecarRef>,
    /// Earlier metrics replaced by later sidecar edits, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics_history: Vec<MetricsChange>,
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
    pub model: String,
    /// For an artifact: the version its content is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// For a sidecar: the SHA-256 of its content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl Catalog {
    /// The number of versions over all models.
    pub fn version_count(&self) -> usize {
        self.models.values().map(|m| m.versions.len()).sum()
    }
}

impl Model {
    /// The newest version.
    pub fn latest(&self) -> Option<&Version> {
        self.versions.last()
    }

    /// Version `n`.
    pub fn find(&self, n: u32) -> Option<&Version> {
        self.versions
            .binary_search_by_key(&n, |v| v.number)
            .ok()
            .map(|i| &self.versions[i])
    }

    /// The version with the best value of `metric` in `direction`; versions without the
    /// metric are skipped and a tie goes to the newer version.
    pub fn best(&self, metric: &str, direction: Direction) -> Option<&Version> {
        let mut best: Option<(&Version, f64)> = None;
        for v in &self.versions {
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
        self.versions.push(v);
    }
}

impl Version {
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

/// Parses a selector of the form `vN` (or a bare `N`) into N.
pub fn parse_version_number(s: &str) -> Option<u32> {
    let digits = s.strip_prefix('v').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return None;
    }
    digits.parse().ok().filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: u32, metrics: &[(&str, f64)]) -> Version {
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
        }
    }

    fn model(vs: Vec<Version>) -> Model {
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
    fn version_numbers() {
        assert_eq!(parse_version_number("v3"), Some(3));
        assert_eq!(parse_version_number("12"), Some(12));
        assert_eq!(parse_version_number("v0"), None);
        assert_eq!(parse_version_number("v03"), None);
        assert_eq!(parse_version_number("v"), None);
        assert_eq!(parse_version_number("latest"), None);
        assert_eq!(parse_version_number("v99999999999"), None);
    }
}
