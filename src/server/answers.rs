//! The answer forms of catalog items: a version or a model with absolute paths.

use crate::config::Config;
use crate::protocol::{FileInfo, ModelSummary, VersionInfo};
use crate::registry::{Kind, Model, Version};

fn abs(cfg: &Config, rel: &str) -> String {
    cfg.root.join(rel).display().to_string()
}

fn version_dir(cfg: &Config, name: &str, v: &Version) -> String {
    crate::store::version_dir(&cfg.store, name, v.number)
        .display()
        .to_string()
}

fn primary_path(cfg: &Config, name: &str, v: &Version) -> String {
    match (v.kind, v.files.as_slice()) {
        (Kind::File, [only]) => abs(cfg, &only.path),
        _ => version_dir(cfg, name, v),
    }
}

/// The answer form of a version, with its state and the aliases pointing to it.
pub(super) fn version_info_in(cfg: &Config, name: &str, v: &Version, m: &Model) -> VersionInfo {
    let mut info = version_info(cfg, name, v);
    info.aliases = m
        .aliases
        .iter()
        .filter(|(_, n)| **n == v.number)
        .map(|(a, _)| a.clone())
        .collect();
    info
}

/// The answer form of a version: absolute paths, sizes, metrics.
pub(super) fn version_info(cfg: &Config, name: &str, v: &Version) -> VersionInfo {
    let (state, mark) = match (&v.removed, &v.deprecated) {
        (Some(m), _) => ("removed", Some((**m).clone())),
        (None, Some(m)) => ("deprecated", Some((**m).clone())),
        (None, None) => ("live", None),
    };
    VersionInfo {
        state: state.to_string(),
        aliases: Vec::new(),
        mark,
        name: name.to_string(),
        version: format!("v{}", v.number),
        number: v.number,
        kind: v.kind,
        path: primary_path(cfg, name, v),
        dir: version_dir(cfg, name, v),
        files: v
            .files
            .iter()
            .map(|f| FileInfo {
                path: abs(cfg, &f.path),
                sha256: f.sha256.clone(),
                size: f.size,
            })
            .collect(),
        size: v.files.iter().map(|f| f.size).sum(),
        source: v.source.clone(),
        registered_at: v.registered_at.clone(),
        metrics: v.metrics.clone(),
        metadata: v.metadata.clone(),
        metric_sources: v.metric_sources.clone(),
        extracted: v.extracted.clone(),
        provenance: v.provenance.clone(),
        metrics_updated_at: v.metrics_history.last().map(|c| c.replaced_at.clone()),
        best_by: None,
        directions: Default::default(),
    }
}
/// The `list` row of a model: its latest live version, or, when none is live, its newest
/// one with a note of the states (a missing row made such a model look unregistered).
pub(super) fn model_summary(cfg: &Config, name: &str, m: &Model) -> Option<ModelSummary> {
    let shown = m
        .latest()
        .or_else(|| m.newest())
        .or(m.versions.last().map(|v| &**v))?;
    let live = m.latest().is_some();
    Some(ModelSummary {
        name: name.to_string(),
        latest: if live {
            format!("v{}", shown.number)
        } else {
            "-".to_string()
        },
        versions: m.stored().count(),
        registered_at: shown.registered_at.clone(),
        path: if shown.removed.is_none() {
            primary_path(cfg, name, shown)
        } else {
            "-".to_string()
        },
        note: (!live).then(|| format!("no live version: {}", m.version_states())),
        matches: None,
        newest_match: None,
    })
}
