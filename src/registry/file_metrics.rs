//! Metrics read from a version's files (a Trainer folder's results) beside the sidecar's:
//! which ones the version shows, and where those the sidecar overrides are kept.
//!
//! A version's metrics are the sidecar's, plus each metric read from the files that the
//! sidecar does not name (recorded in `metric_sources`). A file metric the sidecar names
//! is kept, with its value and file, in `extracted.metrics_overridden`: so when an edited
//! sidecar stops naming it, it comes back (docs/extraction.md "Trainer metrics"). Kept in
//! `extracted`, which registry.yaml, the journal and the store's manifest already carry
//! whole, rather than in a field of its own that each of them would have to learn.

use std::collections::BTreeMap;

use super::compact::SortedMap;
use super::{Metadata, Metrics, Version};

/// The key of `extracted` holding the file metrics the sidecar overrides:
/// `{name: {value, from}}`.
pub const OVERRIDDEN: &str = "metrics_overridden";

/// Every metric read from a version's files: name -> (value, the file it came from).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FileMetrics(BTreeMap<String, (f64, String)>);

/// What a version records once the sidecar's metrics are merged with its files'.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Merged {
    /// The sidecar's metrics, and the files' it does not name.
    pub metrics: Metrics,
    /// The file of each metric that came from one.
    pub sources: SortedMap<String>,
    /// The files' metrics the sidecar names, as `extracted.metrics_overridden` holds them
    /// (`None`: there are none).
    pub overridden: Option<serde_json::Value>,
}

impl FileMetrics {
    /// Metrics found in the files (`metrics`) and the file of each (`sources`; a metric
    /// without one is said to come from "files").
    pub fn found(metrics: &BTreeMap<String, f64>, sources: &BTreeMap<String, String>) -> Self {
        FileMetrics(
            metrics
                .iter()
                .map(|(k, x)| {
                    let from = sources.get(k).cloned().unwrap_or_else(|| "files".into());
                    (k.clone(), (*x, from))
                })
                .collect(),
        )
    }

    /// The file metrics version `v` records: those it shows (`metric_sources`) and those
    /// the sidecar overrides (`extracted.metrics_overridden`).
    pub fn of(v: &Version) -> Self {
        let mut all = BTreeMap::new();
        if let Some(serde_json::Value::Object(o)) = v.extracted.get(OVERRIDDEN) {
            for (k, e) in o {
                let value = e.get("value").and_then(serde_json::Value::as_f64);
                let from = e.get("from").and_then(serde_json::Value::as_str);
                if let (Some(x), Some(from)) = (value, from) {
                    all.insert(k.clone(), (x, from.to_string()));
                }
            }
        }
        for (k, from) in v.metric_sources.iter() {
            if let Some(x) = v.metrics.get(k) {
                all.insert(k.clone(), (*x, from.clone()));
            }
        }
        FileMetrics(all)
    }

    /// Whether no metric was read from the files.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The sidecar's `given` metrics merged with these: the sidecar wins where it speaks.
    pub fn merge(&self, given: &Metrics) -> Merged {
        let mut metrics: BTreeMap<String, f64> =
            given.iter().map(|(k, x)| (k.clone(), *x)).collect();
        let (mut sources, mut overridden) = (Vec::new(), serde_json::Map::new());
        for (k, (x, from)) in &self.0 {
            if given.contains_key(k) {
                overridden.insert(k.clone(), serde_json::json!({"value": x, "from": from}));
            } else {
                metrics.insert(k.clone(), *x);
                sources.push((k.clone(), from.clone()));
            }
        }
        Merged {
            metrics: metrics.into_iter().collect(),
            sources: sources.into_iter().collect(),
            overridden: (!overridden.is_empty()).then_some(serde_json::Value::Object(overridden)),
        }
    }
}

/// `extracted` with its `metrics_overridden` entry replaced by `overridden` (or left out).
pub fn with_overridden(extracted: &Metadata, overridden: Option<serde_json::Value>) -> Metadata {
    extracted
        .iter()
        .filter(|(k, _)| k.as_str() != OVERRIDDEN)
        .map(|(k, x)| (k.clone(), x.clone()))
        .chain(overridden.map(|o| (OVERRIDDEN.to_string(), o)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::v;
    use super::*;

    #[test]
    fn an_overridden_file_metric_is_kept_and_comes_back() {
        let mut x = v(1, &[("accuracy", 0.9), ("eval_loss", 0.2)]);
        x.metric_sources = [("eval_loss".to_string(), "all_results.json".to_string())].into();
        let given: Metrics = [
            ("accuracy".to_string(), 0.92),
            ("eval_loss".to_string(), 0.05),
        ]
        .into();
        let m = FileMetrics::of(&x).merge(&given);
        assert_eq!(m.metrics, given);
        assert!(m.sources.is_empty());
        x.metrics = m.metrics;
        x.metric_sources = m.sources;
        x.extracted = with_overridden(&x.extracted, m.overridden);
        assert_eq!(
            x.extracted[OVERRIDDEN],
            serde_json::json!({"eval_loss": {"value": 0.2, "from": "all_results.json"}})
        );
        let m = FileMetrics::of(&x).merge(&[("accuracy".to_string(), 0.93)].into());
        assert_eq!(m.metrics["eval_loss"], 0.2);
        assert_eq!(m.sources["eval_loss"], "all_results.json");
        assert_eq!(m.overridden, None);
        assert!(!with_overridden(&x.extracted, None).contains_key(OVERRIDDEN));
    }
}
