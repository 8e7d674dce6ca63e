//! What a new version records besides its files: facts read from its headers, Trainer metrics merged under the sidecar's, provenance; and its catalog record.
//!
//! Gathered by the copy job (inbox or hand-over) from the staged copy, which nobody else
//! can write, after hashing and before the manifest is sealed: the manifest keeps them,
//! so a catalog rebuilt from the store keeps them too.

use std::path::Path;

use crate::extract::{self, Origin};
use crate::messages::HandedFiles;
use crate::registry::compact::SortedMap;
use crate::registry::file_metrics::{self, FileMetrics};
use crate::registry::{Metadata, Metrics, SidecarRef, StoredFile, Version};
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
        // Info, not a warning: the version is fine, and the reason is in `extracted`.
        tracing::info!(
            source = origin.source.as_deref().unwrap_or_default(),
            "header not read: {why}; the version has no facts from it (extracted.unreadable)"
        );
    }
    // The sidecar wins where it speaks; the file values it overrides are kept, to come
    // back when an edited sidecar stops naming them (registry::file_metrics).
    let merged = FileMetrics::found(&found.metrics, &found.sources).merge(&sidecar_metrics);
    let empty = serde_json::Map::new();
    let provenance = extract::provenance(&origin, sidecar_meta.unwrap_or(&empty));
    Facts {
        metrics: merged.metrics,
        metric_sources: merged.sources,
        extracted: match merged.overridden {
            Some(o) => file_metrics::with_overridden(&found.extracted, Some(o)),
            None => found.extracted,
        },
        provenance: provenance.into_iter().collect(),
    }
}

/// Where handed-over files come from: a descriptor's file is named by the path the
/// kernel knows it by (its owner is who dropped it, and the nearest git checkout above
/// it, if that user's, gives the commit); an upload by its model name.
pub fn handed_origin(files: &HandedFiles) -> Origin {
    use std::os::unix::fs::MetadataExt;
    match files {
        HandedFiles::File { file, stat, .. } => {
            use std::os::fd::AsRawFd;
            let linked = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
                .ok()
                .filter(|p| p.is_absolute())
                .map(|p| p.display().to_string());
            // A file with no name left: deleted since it was opened, or an HTTP upload
            // (an unnamed file of the daemon's own, whose owner says nothing).
            let path = linked.filter(|p| !p.ends_with(" (deleted)"));
            let uid = file.metadata().ok().map(|m| m.uid());
            // SAFETY: geteuid has no preconditions.
            let upload = path.is_none() && uid == Some(unsafe { libc::geteuid() });
            Origin {
                via: if upload { "upload" } else { "register" },
                git: path
                    .as_deref()
                    .and_then(|p| std::path::Path::new(p).parent())
                    .map(std::path::PathBuf::from),
                walk_up: true,
                source: path,
                uid: uid.filter(|_| !upload),
                mtime_ns: Some(stat.mtime_ns),
            }
        }
        // The files are the daemon's own copy of the upload: their owner says nothing.
        HandedFiles::Folder { files, .. } => Origin {
            via: "upload",
            mtime_ns: files.iter().map(|f| f.1.mtime_ns).max(),
            ..Default::default()
        },
    }
}

/// Where an inbox entry at `path` came from. A client that copied it there
/// (`modelreg add FOLDER`) names the original in its sidecar (`claimed`): that path is
/// the source, and its checkout (its own `.git` or the nearest above, if the dropping
/// user's, as for a handed-over file) gives the commit when the daemon can read it;
/// otherwise the copy's own `.git` in the inbox does. The `.git` is read in the inbox
/// before the copy into the store, where hidden files never go.
pub fn inbox_origin(
    path: &std::path::Path,
    folder: bool,
    claimed: Option<&str>,
    uid: Option<u32>,
    mtime_ns: Option<i128>,
) -> Origin {
    let claimed = claimed.map(std::path::PathBuf::from);
    let readable = claimed
        .as_deref()
        .filter(|p| extract::provenance::git_head(p, true, uid).is_some());
    let (git, walk_up) = match readable {
        Some(p) => (Some(p.to_path_buf()), true),
        None => (folder.then(|| path.to_path_buf()), false),
    };
    Origin {
        via: "inbox",
        source: Some(claimed.as_deref().unwrap_or(path).display().to_string()),
        uid,
        mtime_ns,
        git,
        walk_up,
    }
}

/// What a new version's catalog record is made of (an inbox job's or a hand-over's).
pub(super) struct NewRecord<'a> {
    pub(super) kind: crate::registry::Kind,
    pub(super) files: &'a [crate::store::StagedFile],
    pub(super) registered_at: &'a str,
    /// The source as registry.yaml shows it.
    pub(super) source: String,
    pub(super) facts: &'a Facts,
    pub(super) metadata: Metadata,
    pub(super) sidecar: Option<Box<SidecarRef>>,
}

/// The catalog record of new version `number` stored in `dir` (`models/<name>/v<N>`):
/// what registry.yaml and, in team mode, the shared catalog hold.
pub(super) fn record(
    cfg: &crate::config::Config,
    r: NewRecord<'_>,
    dir: &Path,
    number: u32,
) -> Version {
    Version {
        number,
        kind: r.kind,
        files: (r.files.iter())
            .map(|f| StoredFile {
                path: cfg.relative(&dir.join(&f.rel)).into_owned(),
                sha256: f.sha256.clone(),
                size: f.size,
            })
            .collect(),
        source: r.source,
        registered_at: r.registered_at.to_string(),
        // The sidecar's (or request's) metrics and the Trainer's it does not name.
        metrics: r.facts.metrics.clone(),
        metadata: r.metadata,
        sidecar: r.sidecar,
        metrics_history: vec![],
        metric_sources: r.facts.metric_sources.clone(),
        extracted: r.facts.extracted.clone(),
        provenance: r.facts.provenance.clone(),
        deprecated: None,
        removed: None,
    }
}

/// The record of an inbox job's new version `nv` stored in `dir`; `fresh` is the
/// sidecar whose metrics and metadata it takes, if any.
pub(super) fn record_of(
    cfg: &crate::config::Config,
    nv: &super::copy::NewVersion,
    fresh: Option<&super::copy::SidecarRead>,
    dir: &Path,
) -> Version {
    let rel = |p: &Path| cfg.relative(p).into_owned();
    let fresh = fresh.filter(|s| s.fresh);
    let r = NewRecord {
        kind: nv.kind,
        files: &nv.staged.files,
        registered_at: &nv.registered_at,
        source: rel(&cfg.inbox.join(&nv.entry)),
        facts: &nv.facts,
        metadata: fresh.map(|s| s.metadata()).unwrap_or_default(),
        sidecar: fresh.map(|s| {
            Box::new(SidecarRef {
                path: rel(&cfg.inbox.join(&s.entry)),
                sha256: s.sha256.clone(),
            })
        }),
    };
    record(cfg, r, dir, nv.number)
}
