//! What a new version records besides its files: facts read from its headers, Trainer metrics merged under the sidecar's, and provenance.
//!
//! Gathered by the copy job (inbox or hand-over) from the staged copy, which nobody else
//! can write, after hashing and before the manifest is sealed: the manifest keeps them,
//! so a catalog rebuilt from the store keeps them too.

use crate::extract::{self, Origin};
use crate::registry::compact::SortedMap;
use crate::registry::{Metadata, Metrics};
use crate::store::Staged;

/// What a version gets besides its files (see the module docs).
#[derive(Debug, Default, Clone)]
pub struct Facts {
    /// The sidecar's metrics and those found in the files that it does not name.
    pub metrics: Metrics,
    /// Where each metric not from the sidecar came from.
    pub metric_sources: SortedMap<String>,
    /// Facts read from the headers.
    pub extracted: Metadata,
    /// Who, where, when, which commit and run.
    pub provenance: Metadata,
}

/// The facts of the staged version `staged` (`folder`: a folder version) from `origin`,
/// with the sidecar's metrics and metadata when it gives them. With `read` off
/// (`extract: false`), no file is read: the sidecar's metrics and the provenance the copy
/// already knows (user, host, source, mtime, the sidecar's commit and run) only.
pub fn gather(
    read: bool,
    staged: &Staged,
    folder: bool,
    mut origin: Origin,
    sidecar: Option<(Metrics, &serde_json::Map<String, serde_json::Value>)>,
) -> Facts {
    let (sidecar_metrics, sidecar_meta) = match sidecar {
        Some((m, md)) => (m, Some(md)),
        None => (Metrics::default(), None),
    };
    let found = if read {
        let rels: Vec<String> = staged.files.iter().map(|f| f.rel.clone()).collect();
        let t0 = std::time::Instant::now();
        let found = extract::inspect(&staged.dir, &rels, folder);
        tracing::debug!(took = ?t0.elapsed(), "extraction");
        found
    } else {
        origin.git = None;
        extract::Found::default()
    };
    if let Some(why) = found.extracted.get("unreadable") {
        tracing::warn!(
            source = origin.source.as_deref().unwrap_or_default(),
            "header not read: {why}; registered without its facts"
        );
    }
    let (metrics, metric_sources) = extract::merge_metrics(sidecar_metrics, &found);
    let empty = serde_json::Map::new();
    let provenance = extract::provenance(&origin, sidecar_meta.unwrap_or(&empty));
    Facts {
        metrics,
        metric_sources,
        extracted: found.extracted,
        provenance: provenance.into_iter().collect(),
    }
}
