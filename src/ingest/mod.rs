//! The registrar: the one task that owns the catalog and every change to it.
//!
//! For each settled group it decides, from the catalog's fingerprints, what changed; the
//! copying and hashing run as a job on the blocking pool (a few at once). Finished jobs
//! are applied in batches: one registry.yaml write covers every version that finished
//! while the previous write was under way (group commit). Only after that write are the
//! staging folders renamed into place and the new snapshot published to readers, so a
//! version is never visible before it is durable.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::{Semaphore, mpsc};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::inbox::{self, Look};
use crate::registry::{
    AliasMove, Catalog, Kind, Mark, MetricsChange, Model, SidecarRef, SourceRecord, StoredFile,
    Version, persist,
};
use crate::shutdown::Shutdown;
use crate::sidecar::{self, MAX_SIDECAR_BYTES, Sidecar};
use crate::status::{StatusBoard, now_rfc3339};
use crate::store::{self, Staged};
use crate::watcher::{Outcome, SettlerMsg};

/// How many copy jobs run at once.
const JOBS: usize = 16;

/// A group whose entries have all been quiet for the settle period.
#[derive(Debug)]
pub struct Settled {
    /// The model name.
    pub name: String,
    /// Artifact entries (files or folders) as they were when found quiet.
    pub artifacts: Vec<(String, Look)>,
    /// The sidecar entry, if present.
    pub sidecar: Option<(String, Look)>,
    /// Entries of the group that no longer exist.
    pub gone: Vec<String>,
}

/// Messages to the registrar.
#[derive(Debug)]
pub enum RegistrarMsg {
    /// A group to register.
    Settled(Settled),
    /// Every top-level entry of the inbox after a rescan: sources not among them are
    /// forgotten.
    Present(BTreeSet<String>),
    /// A copy job finished.
    JobDone { name: String, result: JobResult },
    /// A change asked for on the socket; answered once it is durable.
    Change {
        change: Change,
        uid: Option<u32>,
        reply: tokio::sync::oneshot::Sender<ChangeResult>,
    },
    /// Bring every model's latest/best/alias links in line (start-up, reload).
    RefreshLinks,
    /// registry.yaml may have been deleted while running: write it again if so.
    CheckRegistry,
}

/// A change to the registry asked for by a client.
#[derive(Debug, Clone)]
pub enum Change {
    /// Point `alias` at version `version`.
    AliasSet {
        name: String,
        alias: String,
        version: u32,
    },
    /// Remove `alias`.
    AliasRemove { name: String, alias: String },
    /// Move `alias` back to where it pointed before its last move.
    Rollback { name: String, alias: String },
    /// Hide a version from latest and best.
    Deprecate {
        name: String,
        version: u32,
        reason: Option<String>,
    },
    /// Delete a version's files, keeping a tombstone.
    Remove {
        name: String,
        version: u32,
        reason: Option<String>,
        force: bool,
    },
    /// Apply the retention policy (of one model, or all).
    Gc { name: Option<String>, dry_run: bool },
}

/// The answer to a change: a JSON result, or an error code and message.
pub type ChangeResult =
    std::result::Result<serde_json::Value, (crate::protocol::ErrorCode, String)>;

/// The snapshot readers query. Replaced whole after each durable catalog write.
#[derive(Debug, Default)]
pub struct Shared {
    catalog: RwLock<Arc<Catalog>>,
    published: tokio::sync::Notify,
}

impl Shared {
    /// A new holder of `catalog`.
    pub fn new(catalog: Catalog) -> Self {
        Shared {
            catalog: RwLock::new(Arc::new(catalog)),
            published: tokio::sync::Notify::new(),
        }
    }

    /// The current catalog; cheap (an `Arc` clone), never blocks on a write.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn publish(&self, c: Arc<Catalog>) {
        *self.catalog.write().unwrap_or_else(|p| p.into_inner()) = c;
        self.published.notify_waiters();
    }

    /// Resolves at the next publication of the catalog. Create the future before checking
    /// the catalog, so that a publication in between is not missed.
    pub fn published(&self) -> tokio::sync::futures::Notified<'_> {
        self.published.notified()
    }
}

/// The content of a known version, for "identical bytes make no new version".
#[derive(Debug, Clone)]
struct Known {
    number: u32,
    files: Vec<(String, String)>,
}

fn known(store_dir: &str, v: &Version) -> Known {
    let prefix = format!("{store_dir}/v{}/", v.number);
    Known {
        number: v.number,
        files: v
            .files
            .iter()
            .map(|f| {
                (
                    f.path.strip_prefix(&prefix).unwrap_or(&f.path).to_string(),
                    f.sha256.clone(),
                )
            })
            .collect(),
    }
}

/// A copy job: everything it needs, owned, so it can run on the blocking pool.
#[derive(Debug)]
struct Job {
    name: String,
    next: u32,
    store: PathBuf,
    root: PathBuf,
    inbox: PathBuf,
    follow_symlinks: bool,
    artifacts: Vec<(String, Look)>,
    sidecar: Option<(String, Look)>,
    latest: Option<Known>,
    latest_sidecar: Option<String>,
    /// The sidecar's fingerprint when it was last looked at.
    sidecar_seen: Option<String>,
    /// For each artifact entry, the version its content was last time.
    same_source: BTreeMap<String, Known>,
    /// The folders pinned at start: the inbox is opened through it.
    layout: Option<Arc<crate::layout::Layout>>,
}

/// A version staged by a job, to be named by the catalog.
#[derive(Debug)]
pub struct NewVersion {
    entry: String,
    number: u32,
    /// When it was staged: the time its manifest records.
    registered_at: String,
    kind: Kind,
    fingerprint: String,
    staged: Staged,
    /// How long copying and hashing it took.
    copy_secs: f64,
}

/// A sidecar read by a job.
#[derive(Debug)]
pub struct SidecarRead {
    entry: String,
    fingerprint: String,
    sha256: String,
    parsed: Sidecar,
    /// Whether its content is new, i.e. not the one already applied to the latest version.
    fresh: bool,
}

impl SidecarRead {
    fn metrics(&self) -> crate::registry::Metrics {
        self.parsed
            .metrics
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    fn metadata(&self) -> crate::registry::Metadata {
        self.parsed
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// What a job produced.
#[derive(Debug)]
pub enum JobResult {
    /// Versions to add and entries whose content is already registered.
    Done {
        new: Vec<NewVersion>,
        unchanged: Vec<(String, String, u32)>,
        sidecar: Option<SidecarRead>,
        /// The highest number the store holds when it is above the catalog's: versions
        /// the catalog does not know (numbering went above them).
        store_ahead: Option<u32>,
    },
    /// The sidecar is invalid: the artifact waits. (path, message)
    Blocked(String, String),
    /// A file changed while being copied; nothing was kept.
    Changed,
    /// An error; nothing was kept. Retried with backoff.
    Failed(String),
    /// Shutdown interrupted it; nothing was kept.
    Cancelled,
}

/// Owns the catalog; see the module docs.
pub struct Registrar {
    /// The published settings; `config` is their value read when the current message
    /// began, so every decision (gc's retention, `best`, paths) uses the settings of now.
    settings: tokio::sync::watch::Receiver<Arc<Config>>,
    config: Arc<Config>,
    catalog: Catalog,
    shared: Arc<Shared>,
    board: Arc<StatusBoard>,
    to_settler: mpsc::UnboundedSender<SettlerMsg>,
    self_tx: mpsc::UnboundedSender<RegistrarMsg>,
    jobs: Arc<Semaphore>,
    cancel: Arc<AtomicBool>,
    in_flight: usize,
    /// Changes applied to `catalog` but not yet written.
    batch: Batch,
    /// The folders pinned at start; see [`Registrar::set_layout`].
    layout: Option<Arc<crate::layout::Layout>>,
}

#[derive(Debug, Default)]
struct Batch {
    dirty: bool,
    staged: Vec<Staged>,
    outcomes: Vec<(String, Outcome)>,
    registered: Vec<String>,
    /// Models whose latest, best or aliases may have moved.
    touched: BTreeSet<String>,
    /// Versions (name, number) to delete once the catalog no longer needs them.
    deletions: Vec<(String, u32)>,
    replies: Vec<(tokio::sync::oneshot::Sender<ChangeResult>, ChangeResult)>,
    refresh_all: bool,
}

impl Registrar {
    /// A registrar for `catalog`, publishing to `shared`.
    pub fn new(
        settings: Arc<crate::config::Settings>,
        catalog: Catalog,
        shared: Arc<Shared>,
        board: Arc<StatusBoard>,
        to_settler: mpsc::UnboundedSender<SettlerMsg>,
        self_tx: mpsc::UnboundedSender<RegistrarMsg>,
    ) -> Self {
        let mut settings = settings.subscribe();
        let config = settings.borrow_and_update().clone();
        Registrar {
            settings,
            config,
            catalog,
            shared,
            board,
            to_settler,
            self_tx,
            jobs: Arc::new(Semaphore::new(JOBS)),
            cancel: Arc::new(AtomicBool::new(false)),
            in_flight: 0,
            batch: Batch::default(),
            layout: None,
        }
    }

    /// Copies only from the inbox and into the store pinned in `layout` at start.
    pub fn set_layout(&mut self, layout: Arc<crate::layout::Layout>) {
        self.layout = Some(layout);
    }

    /// Runs until shutdown: then cancels the copies under way (they roll back), commits
    /// what finished, and returns.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<RegistrarMsg>, shutdown: Shutdown) {
        let mut stopping = false;
        let mut live = true;
        loop {
            if stopping && self.in_flight == 0 {
                break;
            }
            let msg = tokio::select! {
                biased;
                _ = shutdown.wait(), if !stopping => {
                    stopping = true;
                    self.cancel.store(true, Ordering::SeqCst);
                    continue;
                }
                r = self.settings.changed(), if live => {
                    match r {
                        Ok(()) => {
                            self.settings_changed();
                            self.commit().await;
                        }
                        // The daemon is ending: the settings stay as they are.
                        Err(_) => live = false,
                    }
                    continue;
                }
                m = rx.recv() => m,
            };
            let Some(msg) = msg else { break };
            self.handle(msg, stopping);
            // Group commit: take everything already waiting before writing once.
            while let Ok(m) = rx.try_recv() {
                self.handle(m, stopping);
            }
            self.commit().await;
        }
        self.commit().await;
    }

    /// Takes the newly published settings; when what `best` means changed, every model's
    /// links are brought in line at the next commit.
    fn settings_changed(&mut self) {
        let new = self.settings.borrow_and_update().clone();
        if new.best != self.config.best {
            self.batch.refresh_all = true;
        }
        self.config = new;
    }

    fn handle(&mut self, msg: RegistrarMsg, stopping: bool) {
        match msg {
            RegistrarMsg::Settled(s) if stopping => {
                self.batch
                    .outcomes
                    .push((s.name, Outcome::Failed("shutting down".into())));
            }
            RegistrarMsg::Settled(s) => self.plan(s),
            RegistrarMsg::Present(present) => {
                let before = self.catalog.sources.len();
                self.catalog
                    .sources
                    .retain(|entry, _| present.contains(entry));
                if self.catalog.sources.len() != before {
                    self.batch.dirty = true;
                }
            }
            RegistrarMsg::JobDone { name, result } => {
                self.in_flight -= 1;
                self.apply(name, result);
            }
            RegistrarMsg::Change { change, uid, reply } => {
                let result = self.change(change, uid);
                self.batch.replies.push((reply, result));
            }
            RegistrarMsg::RefreshLinks => self.batch.refresh_all = true,
            RegistrarMsg::CheckRegistry => {
                if std::fs::symlink_metadata(&self.config.registry).is_err() {
                    // Deleted while running: the catalog in memory is whole; write it.
                    tracing::error!(registry = %self.config.registry.display(), "registry.yaml is missing; writing it again from memory");
                    self.batch.dirty = true;
                }
            }
        }
    }

    /// Decides what a settled group needs; starts a copy job when anything changed.
    fn plan(&mut self, s: Settled) {
        for entry in &s.gone {
            if self.catalog.sources.remove(entry).is_some() {
                self.batch.dirty = true;
            }
        }
        // Sources recorded before ctime was part of fingerprints: when the legacy form
        // still matches, take the new form, so an upgrade does not copy and hash every
        // registered file again (identical bytes would make no new version anyway).
        for (entry, look) in s.artifacts.iter().chain(s.sidecar.iter()) {
            if let Some(r) = self.catalog.sources.get_mut(entry)
                && inbox::is_legacy_fingerprint(&r.fingerprint)
                && look.matches(&r.fingerprint)
                && let Some(now) = look.fingerprint()
            {
                r.fingerprint = now;
                self.batch.dirty = true;
            }
        }
        let model = self.catalog.models.get(&s.name).cloned();
        let unchanged = |entry: &str, look: &Look| {
            self.catalog.sources.get(entry).is_some_and(|r| {
                Some(&r.fingerprint) == look.fingerprint().as_ref()
                    && r.model == s.name
                    && (r.version.is_none()
                        || model
                            .as_ref()
                            .is_some_and(|m| r.version.and_then(|n| m.find(n)).is_some()))
            })
        };
        let artifacts: Vec<(String, Look)> = s
            .artifacts
            .into_iter()
            .filter(|(e, l)| !unchanged(e, l))
            .collect();
        let sidecar_changed = s.sidecar.as_ref().is_some_and(|(e, l)| !unchanged(e, l));
        if artifacts.is_empty() && !sidecar_changed {
            self.batch.outcomes.push((s.name, Outcome::Done));
            return;
        }
        let store_dir = self
            .config
            .relative(&self.config.store.join(&s.name))
            .into_owned();
        let latest = model.as_ref().and_then(|m| m.newest());
        let same_source = artifacts
            .iter()
            .filter_map(|(entry, _)| {
                let r = self.catalog.sources.get(entry)?;
                let v = model.as_ref()?.find(r.version?)?;
                Some((entry.clone(), known(&store_dir, v)))
            })
            .collect();
        let sidecar_seen = s
            .sidecar
            .as_ref()
            .and_then(|(e, _)| self.catalog.sources.get(e))
            .map(|r| r.fingerprint.clone());
        let job = Job {
            name: s.name.clone(),
            next: model.as_ref().map_or(0, |m| m.highest) + 1,
            store: self.config.store.clone(),
            root: self.config.root.clone(),
            inbox: self.config.inbox.clone(),
            follow_symlinks: self.config.follow_symlinks,
            artifacts,
            sidecar: s.sidecar,
            latest: latest.map(|v| known(&store_dir, v)),
            latest_sidecar: latest.and_then(|v| v.sidecar.as_ref().map(|r| r.sha256.clone())),
            sidecar_seen,
            same_source,
            layout: self.layout.clone(),
        };
        self.in_flight += 1;
        let (sem, cancel, tx) = (self.jobs.clone(), self.cancel.clone(), self.self_tx.clone());
        let board = self.board.clone();
        tokio::spawn(async move {
            let name = job.name.clone();
            let _permit = sem.acquire_owned().await;
            // What `status` shows while it copies: the settled sizes of its files, and
            // a counter the copy adds to per chunk. Removed when the job ends.
            let (count, total) = job.artifacts.iter().fold((0, 0), |(n, b), (_, look)| {
                let Look::Files { files, .. } = look else {
                    return (n, b);
                };
                (
                    n + files.len(),
                    b + files.iter().map(|f| f.stat.size).sum::<u64>(),
                )
            });
            let copying = board.start_copy(&name, total);
            if count > 0 {
                tracing::info!(
                    model = %name,
                    files = count,
                    bytes = total,
                    "registering {name}: {} in {count} file(s)",
                    crate::status::human_bytes(total)
                );
            }
            let done = copying.progress.clone();
            let result = tokio::task::spawn_blocking(move || run_job(job, &cancel, &done.done))
                .await
                .unwrap_or_else(|e| JobResult::Failed(format!("copy job panicked: {e}")));
            drop(copying);
            let _ = tx.send(RegistrarMsg::JobDone { name, result });
        });
    }

    /// Applies a finished job to the catalog (not yet written).
    fn apply(&mut self, name: String, result: JobResult) {
        let outcome = match result {
            JobResult::Done {
                new,
                unchanged,
                sidecar,
                store_ahead,
            } => {
                if let Some(n) = store_ahead {
                    let dir = self.config.store.join(&name);
                    self.board.set_problem(
                        &dir.display().to_string(),
                        &format!(
                            "the store holds {name} v{n}, which registry.yaml does not name; new versions are numbered above it and nothing stored is overwritten (see `modelreg verify`, `modelreg recover`)"
                        ),
                    );
                }
                self.apply_done(&name, new, unchanged, sidecar);
                Outcome::Done
            }
            JobResult::Blocked(path, message) => {
                self.board.set_problem(
                    &path,
                    &format!("{message} (its artifact waits until this is fixed)"),
                );
                Outcome::Blocked(message)
            }
            JobResult::Changed => Outcome::Changed,
            JobResult::Failed(e) => {
                self.board
                    .error(format!("registering {name}: {e}; will retry"));
                Outcome::Failed(e)
            }
            JobResult::Cancelled => Outcome::Failed("cancelled".into()),
        };
        self.batch.outcomes.push((name, outcome));
    }

    fn apply_done(
        &mut self,
        name: &str,
        new: Vec<NewVersion>,
        unchanged: Vec<(String, String, u32)>,
        sidecar: Option<SidecarRead>,
    ) {
        let cfg = self.config.clone();
        let now = now_rfc3339();
        let rel = |p: &Path| cfg.relative(p).into_owned();
        let sidecar_ref = sidecar.as_ref().map(|s| SidecarRef {
            path: rel(&cfg.inbox.join(&s.entry)),
            sha256: s.sha256.clone(),
        });
        let model = Arc::make_mut(
            self.catalog
                .models
                .entry(name.to_string())
                .or_insert_with(|| Arc::new(Model::default())),
        );
        let added = !new.is_empty();
        for nv in new {
            let fresh = sidecar.as_ref().filter(|s| s.fresh);
            if sidecar.is_some() && fresh.is_none() {
                tracing::info!(
                    model = name,
                    "sidecar unchanged since the previous version: v{} gets no metrics from it",
                    nv.number
                );
            }
            let version = Version {
                number: nv.number,
                kind: nv.kind,
                files: nv
                    .staged
                    .files
                    .iter()
                    .map(|f| StoredFile {
                        path: rel(&nv.staged.final_dir.join(&f.rel)),
                        sha256: f.sha256.clone(),
                        size: f.size,
                    })
                    .collect(),
                source: rel(&cfg.inbox.join(&nv.entry)),
                registered_at: nv.registered_at.clone(),
                metrics: fresh.map(|s| s.metrics()).unwrap_or_default(),
                metadata: fresh.map(|s| s.metadata()).unwrap_or_default(),
                sidecar: fresh.and(sidecar_ref.clone()),
                metrics_history: vec![],
                deprecated: None,
                removed: None,
            };
            let size: u64 = version.files.iter().map(|f| f.size).sum();
            let rate = size as f64 / nv.copy_secs.max(1e-3);
            tracing::info!(
                model = name,
                version = format!("v{}", nv.number),
                source = %version.source,
                bytes = size,
                secs = format!("{:.2}", nv.copy_secs),
                "registered {name} v{}: {} in {:.1}s ({}/s)",
                nv.number,
                crate::status::human_bytes(size),
                nv.copy_secs,
                crate::status::human_bytes(rate as u64)
            );
            model.push(version);
            self.catalog.sources.insert(
                nv.entry,
                SourceRecord {
                    fingerprint: nv.fingerprint,
                    model: name.to_string(),
                    version: Some(nv.number),
                    sha256: None,
                },
            );
            self.batch.staged.push(nv.staged);
            self.batch.registered.push(format!("{name}/v{}", nv.number));
            self.batch.touched.insert(name.to_string());
        }
        for (entry, fingerprint, number) in unchanged {
            tracing::info!(
                model = name,
                entry,
                "content identical to v{number}; no new version"
            );
            self.catalog.sources.insert(
                entry,
                SourceRecord {
                    fingerprint,
                    model: name.to_string(),
                    version: Some(number),
                    sha256: None,
                },
            );
        }
        if let Some(s) = sidecar {
            let shown = cfg.inbox.join(&s.entry).display().to_string();
            self.board.clear_problem(&shown);
            if s.fresh
                && !added
                && let Some(latest) = model
                    .versions
                    .iter_mut()
                    .rev()
                    .find(|v| v.removed.is_none())
            {
                {
                    self.batch.touched.insert(name.to_string());
                    let (metrics, metadata) = (s.metrics(), s.metadata());
                    if latest.metrics != metrics || latest.metadata != metadata {
                        latest.metrics_history.push(MetricsChange {
                            replaced_at: now.clone(),
                            metrics: std::mem::take(&mut latest.metrics),
                        });
                        latest.metrics = metrics;
                        latest.metadata = metadata;
                    }
                    latest.sidecar = sidecar_ref.clone();
                    tracing::info!(
                        model = name,
                        version = format!("v{}", latest.number),
                        "metrics updated from {shown}"
                    );
                }
            }
            self.catalog.sources.insert(
                s.entry,
                SourceRecord {
                    fingerprint: s.fingerprint,
                    model: name.to_string(),
                    version: None,
                    sha256: Some(s.sha256),
                },
            );
        }
        if model.versions.is_empty() {
            // A sidecar with no artifact yet: nothing to keep under models.
            self.catalog.models.remove(name);
        }
        self.batch.dirty = true;
    }

    /// Writes the catalog if anything changed, then publishes staged versions and the new
    /// snapshot, then tells the settler how each group ended.
    async fn commit(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        let mut outcomes = batch.outcomes;
        let mut replies = batch.replies;
        if batch.dirty || batch.refresh_all {
            let snapshot = Arc::new(self.catalog.clone());
            let path = self.config.registry.clone();
            let snap = snapshot.clone();
            let staged = batch.staged;
            let deletions = batch.deletions;
            let store_dir = self.config.store.clone();
            let best = self.config.best.clone();
            let board = self.board.clone();
            let links: Vec<String> = if batch.refresh_all {
                snapshot.models.keys().cloned().collect()
            } else {
                batch.touched.into_iter().collect()
            };
            let dirty = batch.dirty;
            let written = tokio::task::spawn_blocking(move || -> (Result<()>, Vec<Staged>) {
                let t0 = std::time::Instant::now();
                let r = if dirty {
                    persist::to_yaml(&snap)
                        .and_then(|text| persist::write_atomic(&path, text.as_bytes()))
                } else {
                    Ok(())
                };
                tracing::debug!(took = ?t0.elapsed(), versions = staged.len(), "catalog written");
                if r.is_ok() {
                    for s in &staged {
                        if let Err(e) = store::publish(s) {
                            // The catalog names it: start-up recovery finishes the rename.
                            tracing::error!("{e}");
                        }
                    }
                    // Files of removed versions go only now that the tombstone is durable;
                    // start-up finishes a deletion a crash interrupted.
                    for (name, n) in &deletions {
                        if let Err(e) = store::retire(&store_dir, name, *n) {
                            tracing::error!("{e}");
                        }
                    }
                    // Each link on its own: one that cannot be made (a name too long,
                    // a full disk) is a problem in `status`, and the others still move.
                    for name in &links {
                        let Some(m) = snap.models.get(name) else {
                            continue;
                        };
                        let targets = link_targets(m, name, &best);
                        for (path, err) in store::refresh_links(&store_dir, name, &targets) {
                            let shown = path.display().to_string();
                            match err {
                                None => board.clear_problem(&shown),
                                Some(e) => {
                                    tracing::error!("link of {name}: {e}");
                                    board.set_problem(
                                        &shown,
                                        &format!("{name}: link not updated: {e}"),
                                    );
                                }
                            }
                        }
                    }
                }
                (r, staged)
            })
            .await;
            match written {
                Ok((Ok(()), _)) => {
                    self.shared.publish(snapshot);
                    self.board.count_registered(batch.registered.len() as u64);
                }
                Ok((Err(e), staged)) => {
                    self.roll_back(e.to_string(), staged, &mut outcomes, &mut replies)
                }
                Err(e) => self.roll_back(
                    format!("catalog writer panicked: {e}"),
                    Vec::new(),
                    &mut outcomes,
                    &mut replies,
                ),
            }
        }
        for (name, outcome) in outcomes {
            let _ = self.to_settler.send(SettlerMsg::Done { name, outcome });
        }
        for (reply, result) in replies {
            let _ = reply.send(result);
        }
    }

    fn roll_back(
        &mut self,
        error: String,
        staged: Vec<Staged>,
        outcomes: &mut [(String, Outcome)],
        replies: &mut [(tokio::sync::oneshot::Sender<ChangeResult>, ChangeResult)],
    ) {
        self.board.error(format!(
            "writing {}: {error}; nothing of this batch was registered, will retry",
            self.config.registry.display()
        ));
        self.catalog = (*self.shared.catalog()).clone();
        for s in staged {
            let _ = store::discard(&s.dir);
        }
        for (_, o) in outcomes.iter_mut() {
            if *o == Outcome::Done {
                *o = Outcome::Failed(error.clone());
            }
        }
        for (_, r) in replies.iter_mut() {
            if r.is_ok() {
                *r = Err((
                    crate::protocol::ErrorCode::Internal,
                    format!("not saved: {error}"),
                ));
            }
        }
    }
}

/// Where a model's links point: latest, best (by the configured metric) and its aliases.
pub fn link_targets(
    m: &Model,
    name: &str,
    best: &crate::config::BestPolicy,
) -> Vec<(String, Option<u32>)> {
    let metric = best.metric_for(name);
    let mut out = vec![
        ("latest".to_string(), m.latest().map(|v| v.number)),
        (
            "best".to_string(),
            m.best(metric, best.direction_of(metric)).map(|v| v.number),
        ),
    ];
    out.extend(m.aliases.iter().map(|(a, n)| (a.clone(), Some(*n))));
    out
}

type ChangeError = (crate::protocol::ErrorCode, String);

fn model_not_found(name: &str, catalog: &Catalog) -> ChangeError {
    let hint = crate::suggest::hint(name, catalog.models.keys().map(String::as_str));
    (
        crate::protocol::ErrorCode::ModelNotFound,
        format!("no model named {name:?}{hint} (`modelreg list` shows the models)"),
    )
}

fn alias_not_found(name: &str, alias: &str, m: &Model) -> ChangeError {
    let hint = crate::suggest::hint(alias, m.aliases.keys().map(String::as_str));
    let known: Vec<&String> = m.aliases.keys().collect();
    (
        crate::protocol::ErrorCode::AliasNotFound,
        format!("{name:?} has no alias {alias:?}{hint} (aliases: {known:?})"),
    )
}

fn stored_version(m: &Model, name: &str, n: u32) -> std::result::Result<(), ChangeError> {
    use crate::protocol::ErrorCode;
    match m.find(n) {
        None => Err((
            ErrorCode::VersionNotFound,
            format!("{name:?} has no version v{n}"),
        )),
        Some(v) if v.removed.is_some() => Err((
            ErrorCode::VersionRemoved,
            format!("{name} v{n} was removed"),
        )),
        Some(_) => Ok(()),
    }
}

impl Registrar {
    /// Applies a client's change to the catalog (written with the next commit).
    fn change(&mut self, change: Change, uid: Option<u32>) -> ChangeResult {
        use crate::protocol::ErrorCode;
        let now = now_rfc3339();
        let name = match &change {
            Change::AliasSet { name, .. }
            | Change::AliasRemove { name, .. }
            | Change::Rollback { name, .. }
            | Change::Deprecate { name, .. }
            | Change::Remove { name, .. } => name.clone(),
            Change::Gc { name, dry_run } => return self.gc(name.as_deref(), *dry_run, uid),
        };
        if !self.catalog.models.contains_key(&name) {
            return Err(model_not_found(&name, &self.catalog));
        }
        let model = self.catalog.models.get_mut(&name).expect("checked");
        let m = Arc::make_mut(model);
        let result = match change {
            Change::AliasSet { alias, version, .. } => {
                crate::registry::check_alias(&alias).map_err(|r| {
                    (
                        ErrorCode::InvalidName,
                        format!("invalid alias {alias:?}: {r}"),
                    )
                })?;
                stored_version(m, &name, version)?;
                if m.aliases.get(&alias) == Some(&version) {
                    // Already there: no `v1 -> v1` history entry, which `rollback` would
                    // then "undo" by doing nothing.
                    return Ok(
                        serde_json::json!({"name": name, "alias": alias, "version": format!("v{version}"), "from": format!("v{version}"), "unchanged": true}),
                    );
                }
                let from = m.aliases.insert(alias.clone(), version);
                m.alias_history.push(AliasMove {
                    alias: alias.clone(),
                    from,
                    to: Some(version),
                    at: now,
                    uid,
                    by: "set".into(),
                });
                let was = from.map(|f| format!(" (was v{f})")).unwrap_or_default();
                self.board
                    .event(format!("{name}: alias {alias} -> v{version}{was}"));
                serde_json::json!({"name": name, "alias": alias, "version": format!("v{version}"), "from": from.map(|f| format!("v{f}"))})
            }
            Change::AliasRemove { alias, .. } => {
                if !m.aliases.contains_key(&alias) {
                    return Err(alias_not_found(&name, &alias, m));
                }
                let from = m.aliases.remove(&alias).expect("checked");
                m.alias_history.push(AliasMove {
                    alias: alias.clone(),
                    from: Some(from),
                    to: None,
                    at: now,
                    uid,
                    by: "remove".into(),
                });
                self.board
                    .event(format!("{name}: alias {alias} removed (was v{from})"));
                serde_json::json!({"name": name, "alias": alias, "removed": format!("v{from}")})
            }
            Change::Rollback { alias, .. } => {
                let current = *m
                    .aliases
                    .get(&alias)
                    .ok_or_else(|| alias_not_found(&name, &alias, m))?;
                // The move that brought it here says where it was before.
                let previous = m
                    .alias_history
                    .iter()
                    .rev()
                    .find(|h| h.alias == alias && h.to == Some(current) && h.from != h.to)
                    .and_then(|h| h.from)
                    .ok_or_else(|| {
                        (
                            ErrorCode::NothingToRollBack,
                            format!("alias {alias} of {name} has no earlier position"),
                        )
                    })?;
                stored_version(m, &name, previous)?;
                m.aliases.insert(alias.clone(), previous);
                m.alias_history.push(AliasMove {
                    alias: alias.clone(),
                    from: Some(current),
                    to: Some(previous),
                    at: now,
                    uid,
                    by: "rollback".into(),
                });
                self.board.event(format!(
                    "{name}: alias {alias} rolled back v{current} -> v{previous}"
                ));
                serde_json::json!({"name": name, "alias": alias, "version": format!("v{previous}"), "from": format!("v{current}")})
            }
            Change::Deprecate {
                version, reason, ..
            } => {
                stored_version(m, &name, version)?;
                let v = m
                    .versions
                    .iter_mut()
                    .find(|v| v.number == version)
                    .expect("checked");
                v.deprecated = Some(Mark {
                    at: now,
                    reason: reason.clone(),
                    uid,
                });
                self.board.event(format!(
                    "{name} v{version} deprecated{}",
                    reason.map(|r| format!(": {r}")).unwrap_or_default()
                ));
                serde_json::json!({"name": name, "version": format!("v{version}"), "deprecated": true})
            }
            Change::Remove {
                version,
                reason,
                force,
                ..
            } => {
                let (moved, dir) =
                    remove_version(m, &name, version, reason, force, uid, &now, "rm")?;
                self.batch.deletions.push(dir);
                self.board.event(format!(
                    "{name} v{version} removed{}",
                    if moved.is_empty() {
                        String::new()
                    } else {
                        format!("; aliases dropped: {}", moved.join(", "))
                    }
                ));
                serde_json::json!({"name": name, "version": format!("v{version}"), "removed": true, "aliases_dropped": moved})
            }
            Change::Gc { .. } => unreachable!("handled above"),
        };
        self.batch.touched.insert(name);
        self.batch.dirty = true;
        Ok(result)
    }

    /// Retention: per model, keep the newest `keep_last` stored versions, the best one and
    /// every aliased one; remove the rest (or, with `dry_run`, say what would go).
    fn gc(&mut self, only: Option<&str>, dry_run: bool, uid: Option<u32>) -> ChangeResult {
        let now = now_rfc3339();
        let mut report = Vec::new();
        let mut freed = 0u64;
        let names: Vec<String> = match only {
            Some(n) if !self.catalog.models.contains_key(n) => {
                return Err(model_not_found(n, &self.catalog));
            }
            Some(n) => vec![n.to_string()],
            None => self.catalog.models.keys().cloned().collect(),
        };
        for name in names {
            let Some(keep) = self
                .config
                .retention
                .get(&name)
                .or_else(|| self.config.retention.get("*"))
                .copied()
            else {
                continue;
            };
            let m = &self.catalog.models[&name];
            let metric = self.config.best.metric_for(&name);
            let best = m
                .best(metric, self.config.best.direction_of(metric))
                .map(|v| v.number);
            let stored: Vec<&Version> = m.stored().collect();
            let cut = stored.len().saturating_sub(keep as usize);
            let doomed: Vec<(u32, u64)> = stored[..cut]
                .iter()
                .filter(|v| Some(v.number) != best && !m.aliases.values().any(|n| *n == v.number))
                .map(|v| (v.number, v.files.iter().map(|f| f.size).sum()))
                .collect();
            for (n, size) in &doomed {
                freed += size;
                report.push(
                    serde_json::json!({"name": name, "version": format!("v{n}"), "size": size}),
                );
            }
            if !dry_run && !doomed.is_empty() {
                let m = Arc::make_mut(self.catalog.models.get_mut(&name).expect("present"));
                for (n, _) in &doomed {
                    let reason = Some(format!("gc: keep_last {keep}"));
                    let (_, dir) = remove_version(m, &name, *n, reason, false, uid, &now, "gc")?;
                    self.batch.deletions.push(dir);
                }
                self.board
                    .event(format!("gc removed {} version(s) of {name}", doomed.len()));
                self.batch.touched.insert(name.clone());
                self.batch.dirty = true;
            }
        }
        Ok(serde_json::json!({"dry_run": dry_run, "versions": report, "bytes": freed}))
    }
}

/// Turns version `n` into a tombstone; returns the aliases dropped (with `force`) and the
/// folder to delete after the commit. An aliased version is refused without `force`.
#[allow(clippy::too_many_arguments)]
fn remove_version(
    m: &mut Model,
    name: &str,
    n: u32,
    reason: Option<String>,
    force: bool,
    uid: Option<u32>,
    now: &str,
    by: &str,
) -> std::result::Result<(Vec<String>, (String, u32)), ChangeError> {
    use crate::protocol::ErrorCode;
    stored_version(m, name, n)?;
    let aliased: Vec<String> = m
        .aliases
        .iter()
        .filter(|(_, v)| **v == n)
        .map(|(a, _)| a.clone())
        .collect();
    if !aliased.is_empty() && !force {
        return Err((
            ErrorCode::Aliased,
            format!(
                "{name} v{n} is what {} point(s) to; move the alias first, or use --force to drop it",
                aliased.join(", ")
            ),
        ));
    }
    for a in &aliased {
        m.aliases.remove(a);
        m.alias_history.push(AliasMove {
            alias: a.clone(),
            from: Some(n),
            to: None,
            at: now.to_string(),
            uid,
            by: format!("{by} --force"),
        });
    }
    let v = m
        .versions
        .iter_mut()
        .find(|v| v.number == n)
        .expect("checked");
    v.removed = Some(Mark {
        at: now.to_string(),
        reason,
        uid,
    });
    Ok((aliased, (name.to_string(), n)))
}

/// Runs a copy job on the blocking pool; see [`Job`].
/// `done` counts the bytes copied, for `status`.
fn run_job(job: Job, cancel: &AtomicBool, done: &AtomicU64) -> JobResult {
    let mut staged_so_far: Vec<Staged> = Vec::new();
    let result = run_job_inner(&job, cancel, done, &mut staged_so_far);
    if !matches!(result, JobResult::Done { .. }) {
        for s in staged_so_far {
            let _ = store::discard(&s.dir);
        }
    }
    result
}

fn run_job_inner(
    job: &Job,
    cancel: &AtomicBool,
    done: &AtomicU64,
    staged_out: &mut Vec<Staged>,
) -> JobResult {
    let relative = |p: &Path| {
        p.strip_prefix(&job.root)
            .map(|r| r.display().to_string())
            .unwrap_or_else(|_| p.display().to_string())
    };
    let mut newest = job.latest.clone();
    // Above every number the catalog and the store (folders and tombstones) hold: a
    // catalog that lost versions must never make a number be given twice.
    let in_store = store::highest_in_store(&job.store, &job.name);
    if in_store >= job.next {
        tracing::error!(
            model = job.name,
            "the store holds v{in_store}, which the catalog does not know; numbering continues above it"
        );
    }
    let mut next = job.next.max(in_store + 1);
    let registered_at = crate::status::now_rfc3339();
    let mut new = Vec::new();
    let mut unchanged = Vec::new();
    // The inbox folder the files are opened beneath, checked to be the one pinned at
    // start; and the store must be the one pinned too.
    let inbox_dir = match &job.layout {
        Some(layout) => {
            if let Err(why) = layout.store() {
                return JobResult::Failed(why);
            }
            match layout.open_inbox() {
                Ok(d) => d,
                Err(why) => {
                    tracing::warn!(model = %job.name, "{why}");
                    return JobResult::Changed;
                }
            }
        }
        None => match inbox::open_dir(&job.inbox) {
            Ok(d) => d,
            Err(e) => return JobResult::Failed(format!("open {}: {e}", job.inbox.display())),
        },
    };
    let sidecar = match &job.sidecar {
        None => None,
        Some((entry, look)) => match read_sidecar(job, &inbox_dir, entry, look, &relative) {
            Ok(Some(s)) => Some(s),
            Ok(None) => return JobResult::Changed,
            Err(r) => return *r,
        },
    };
    let fresh = sidecar.as_ref().filter(|s| s.fresh);
    for (entry, look) in &job.artifacts {
        let Look::Files { folder, files } = look else {
            continue;
        };
        // What the entry is decides its model name (a file `rw.pt` is model `rw`, a
        // folder `rw.pt` is model `rw.pt`): re-read here, at registration time, from what
        // was looked at, so an entry that changed kind is never registered under the
        // name of its old kind. The settler regroups it.
        match crate::names::classify(std::ffi::OsStr::new(entry), *folder) {
            crate::names::Entry::Artifact { name } if name == job.name => {}
            _ => return JobResult::Changed,
        }
        let fingerprint = look.fingerprint().unwrap_or_default();
        // Re-check before and after copying: a file that changed in between is retried,
        // never half-registered (as Syncthing does).
        if inbox::look(&job.inbox, entry, job.follow_symlinks)
            .fingerprint()
            .as_ref()
            != Some(&fingerprint)
        {
            return JobResult::Changed;
        }
        let rels: Vec<String> = files.iter().map(|f| f.rel.clone()).collect();
        // Each file is opened once, checked through its handle against what settled,
        // copied and hashed from that handle, and checked again through it afterwards.
        let mut open = |i: usize| -> Result<store::OpenSource> {
            let f = &files[i];
            match inbox::open_checked(&inbox_dir, &job.inbox, f, job.follow_symlinks) {
                Ok(o) => Ok(store::OpenSource {
                    file: o.file,
                    shown: f.src.clone(),
                    mode: o.mode,
                }),
                Err(inbox::OpenError::Changed(why)) => Err(Error::SourceChanged(why)),
                Err(inbox::OpenError::Io(e)) => Err(Error::io("open", &f.src, e)),
            }
        };
        let mut check = |i: usize, file: &std::fs::File| -> Result<()> {
            let f = &files[i];
            inbox::unchanged_through(file, &f.src, &f.stat).map_err(Error::SourceChanged)
        };
        let t0 = std::time::Instant::now();
        let staged = match store::stage_opened(
            &job.store, &job.name, next, &rels, &mut open, &mut check, cancel, done,
        ) {
            Ok(s) => s,
            Err(Error::Cancelled) => return JobResult::Cancelled,
            Err(Error::SourceChanged(why)) => {
                tracing::info!(model = %job.name, "{why}; looking at it again");
                return JobResult::Changed;
            }
            Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => {
                return JobResult::Changed;
            }
            Err(e) => return JobResult::Failed(e.to_string()),
        };
        let content: Vec<(String, String)> = staged
            .files
            .iter()
            .map(|f| (f.rel.clone(), f.sha256.clone()))
            .collect();
        if inbox::look(&job.inbox, entry, job.follow_symlinks)
            .fingerprint()
            .as_ref()
            != Some(&fingerprint)
        {
            let _ = store::discard(&staged.dir);
            return JobResult::Changed;
        }
        let same = newest
            .iter()
            .chain(job.same_source.get(entry))
            .find(|k| k.files == content)
            .map(|k| k.number);
        if let Some(number) = same {
            let _ = store::discard(&staged.dir);
            unchanged.push((entry.clone(), fingerprint, number));
            continue;
        }
        let manifest = store::Manifest {
            format: store::MANIFEST_FORMAT,
            name: job.name.clone(),
            version: next,
            kind: if *folder { Kind::Folder } else { Kind::File },
            registered_at: registered_at.clone(),
            source: relative(&job.inbox.join(entry)),
            files: staged.files.clone(),
            metrics: fresh.map(|s| s.metrics()).unwrap_or_default(),
            metadata: fresh.map(|s| s.metadata()).unwrap_or_default(),
        };
        if let Err(e) = store::write_manifest(&staged.dir, &manifest) {
            let _ = store::discard(&staged.dir);
            return JobResult::Failed(e.to_string());
        }
        newest = Some(Known {
            number: next,
            files: content,
        });
        staged_out.push(staged);
        new.push((
            entry.clone(),
            next,
            if *folder { Kind::Folder } else { Kind::File },
            fingerprint,
            t0.elapsed().as_secs_f64(),
        ));
        next += 1;
    }
    let new = new
        .into_iter()
        .zip(staged_out.drain(..))
        .map(
            |((entry, number, kind, fingerprint, copy_secs), staged)| NewVersion {
                entry,
                number,
                registered_at: registered_at.clone(),
                kind,
                fingerprint,
                staged,
                copy_secs,
            },
        )
        .collect();
    JobResult::Done {
        new,
        unchanged,
        sidecar,
        store_ahead: (in_store >= job.next).then_some(in_store),
    }
}

/// Reads at most `cap` bytes from `f`: `Ok(None)` when there is more.
fn read_capped(f: &std::fs::File, cap: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    f.take(cap + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= cap).then_some(bytes))
}

fn read_sidecar(
    job: &Job,
    inbox_dir: &std::fs::File,
    entry: &str,
    look: &Look,
    relative: &dyn Fn(&Path) -> String,
) -> Result<Option<SidecarRead>, Box<JobResult>> {
    let Look::Files { files, .. } = look else {
        return Ok(None);
    };
    let Some(f) = files.first() else {
        return Ok(None);
    };
    let shown = f.src.display().to_string();
    let too_large = || {
        Box::new(JobResult::Blocked(
            shown.clone(),
            format!(
                "{}: larger than {MAX_SIDECAR_BYTES} bytes; a sidecar holds metrics",
                relative(&f.src)
            ),
        ))
    };
    if f.stat.size > MAX_SIDECAR_BYTES {
        return Err(too_large());
    }
    // Opened as artifacts are (no link followed out of the inbox, the handle checked
    // against what was looked at), then read through that one handle and never more
    // than the cap + 1 bytes: the file may grow (to a huge sparse file) once it is open.
    let file = match inbox::open_checked(inbox_dir, &job.inbox, f, job.follow_symlinks) {
        Ok(o) => o.file,
        Err(inbox::OpenError::Changed(_)) => return Ok(None),
        Err(inbox::OpenError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(inbox::OpenError::Io(e)) => {
            return Err(Box::new(JobResult::Failed(format!("open {shown}: {e}"))));
        }
    };
    let bytes = match read_capped(&file, MAX_SIDECAR_BYTES) {
        Ok(Some(b)) => b,
        Ok(None) => return Err(too_large()),
        Err(e) => return Err(Box::new(JobResult::Failed(format!("read {shown}: {e}")))),
    };
    let fingerprint = look.fingerprint().unwrap_or_default();
    if inbox::look(&job.inbox, entry, job.follow_symlinks)
        .fingerprint()
        .as_ref()
        != Some(&fingerprint)
    {
        return Ok(None);
    }
    let parsed = sidecar::parse(&relative(&f.src), &bytes)
        .map_err(|e| Box::new(JobResult::Blocked(shown.clone(), e.to_string())))?;
    let sha256 = store::sha256_hex(&bytes);
    // Stale: the content already applied to the latest version, in a file nobody has
    // written since. Written again, even with the same content, it is meant for the
    // artifact that comes with it.
    let stale = job.latest_sidecar.as_deref() == Some(sha256.as_str())
        && job.sidecar_seen.as_ref() == Some(&fingerprint);
    let fresh = !stale;
    Ok(Some(SidecarRead {
        entry: entry.to_string(),
        fingerprint,
        sha256,
        parsed,
        fresh,
    }))
}
