//! The hand-over of a file by descriptor (`register`), or of a folder the daemon
//! extracted from an upload: copied, numbered, committed.
//!
//! The files are copied and hashed on the blocking pool, and numbered and committed by
//! the registrar like a version from the inbox.
//!
//! No settle wait: the client says the file is complete, and the copy is checked through
//! the descriptor instead (its size, mtime, ctime and inode as received, and again after
//! the copy; a file changed meanwhile is refused and nothing is kept). One job per model
//! runs at a time, inbox jobs included, so version numbers are given once.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use tokio::sync::oneshot;

use super::plan::{Known, known};
use super::{JobResult, Registrar, RegistrarMsg};
use crate::error::Error;
use crate::messages::{ChangeResult, HandedFiles, Handover, HandoverResult};
use crate::protocol::{ChangeAnswer, ErrorBody, ErrorCode};
use crate::registry::{Kind, Model};
use crate::sidecar::Sidecar;
use crate::store::{self, Staged};

/// A hand-over whose copy ended.
#[derive(Debug)]
pub struct Copied {
    name: String,
    sidecar: Option<Sidecar>,
    reply: oneshot::Sender<HandoverResult>,
    result: Result<Outcome, ErrorBody>,
    /// The listing of the model's store folder the copy used.
    listed: Option<store::Listed>,
}

/// What the copy found.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Bytes identical to this version: no new version.
    Same(u32),
    /// Team mode: bytes identical to the newest version of the shared catalog (which
    /// this host may not hold yet): no new version.
    InCatalog(Box<crate::registry::Version>),
    /// A new version, staged.
    New {
        number: u32,
        kind: Kind,
        staged: Staged,
        registered_at: String,
        source: String,
        copy_secs: f64,
        /// Bytes hard-linked to files already stored (dedup).
        dedup_saved: u64,
        /// Its metrics, extracted facts and provenance (boxed: the largest part).
        facts: Box<super::facts::Facts>,
    },
}

/// Everything the copy needs, owned, for the blocking pool.
struct Job {
    name: String,
    files: HandedFiles,
    next: u32,
    store: PathBuf,
    latest: Option<Known>,
    /// The model's stored files, for dedup.
    stored: store::Stored,
    /// The last listing of the model's store folder, as it should look now.
    listed: Option<store::Listed>,
    sidecar: Option<Sidecar>,
    layout: Option<Arc<crate::layout::Layout>>,
    /// Whether headers are read for facts (`extract:`).
    extract: bool,
}

pub(super) fn refusal(code: ErrorCode, message: String) -> ErrorBody {
    ErrorBody { code, message }
}

impl Registrar {
    /// Starts the copy of a hand-over (or queues it behind the model's job under way).
    pub(super) fn hand_over(&mut self, h: Handover) {
        if self.busy.contains(&h.name) {
            return self.defer(h.name.clone(), RegistrarMsg::Handover(Box::new(h)));
        }
        let model = self.catalog.models.get(&h.name).cloned();
        let store_dir = self
            .config
            .relative(&self.config.store.join(&h.name))
            .into_owned();
        let latest = model
            .as_ref()
            .and_then(|m| m.newest())
            .map(|v| known(&store_dir, v));
        let job = Job {
            name: h.name.clone(),
            files: h.files,
            next: model.as_ref().map_or(0, |m| m.highest) + 1,
            store: self.config.store.clone(),
            stored: self.stored_files(&h.name, model.as_deref(), latest.clone()),
            listed: self.index.listing_for_job(&h.name),
            latest,
            sidecar: h.sidecar,
            layout: self.layout.clone(),
            extract: self.config.extract,
        };
        let reply = h.reply;
        self.busy.insert(h.name);
        self.in_flight += 1;
        let (sem, cancel, tx) = (self.jobs.clone(), self.cancel.clone(), self.self_tx.clone());
        // `status` shows the copy as it shows an inbox job's, by the file's name, from
        // now (also while it waits for a copy slot).
        let shown = match &job.files {
            HandedFiles::File { filename, .. } => filename.clone(),
            HandedFiles::Folder { .. } => format!("{}/ (upload)", job.name),
        };
        let copying = self
            .board
            .start_handover(&job.name, job.files.size(), &shown);
        let board = self.board.clone();
        let (config, shared) = (self.config.clone(), self.shared.clone());
        let team = self.team.clone().map(|t| (t, self.config.clone()));
        tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let done = copying.progress.clone();
            let (name, sidecar) = (job.name.clone(), job.sidecar.clone());
            let damaged = job.stored.damaged();
            let (result, listed) = tokio::task::spawn_blocking(move || {
                let mut listed = None;
                (copy(job, &cancel, &done.done, &mut listed), listed)
            })
            .await
            .unwrap_or_else(|e| {
                let why = format!("copy of the hand-over panicked: {e}");
                (Err(refusal(ErrorCode::Internal, why)), None)
            });
            drop(copying);
            // Team mode: uploaded and numbered by the shared catalog first (team.rs).
            let result = match (&team, result) {
                (Some((team, cfg)), Ok(new @ Outcome::New { .. })) => {
                    super::team::record_handover(team, cfg, &board, &name, sidecar.as_ref(), new)
                        .await
                }
                // Identical bytes with metrics given: to that version in the shared
                // catalog first, so that every host sees them.
                (Some((team, _)), Ok(same)) => match &sidecar {
                    Some(s) if !s.metrics.is_empty() || !s.metadata.is_empty() => {
                        let given = (metrics(s), metadata(s));
                        super::team::share_handover_metrics(team, &board, &name, given, same).await
                    }
                    _ => Ok(same),
                },
                (_, result) => result,
            };
            // Stored files found changed in place (see plan.rs).
            for (path, why) in damaged.take() {
                let at = (config.root.as_path(), config.store.as_path());
                super::report_damaged(&board, at, &shared.catalog(), &path, &why);
            }
            let copied = Copied {
                name: name.clone(),
                sidecar,
                reply,
                result,
                listed,
            };
            let result = JobResult::HandedOver(Box::new(copied));
            let _ = tx.send(RegistrarMsg::JobDone { name, result });
        });
    }

    /// Takes a finished hand-over into the catalog (answered after the next commit).
    pub(super) fn handed_over(&mut self, c: Copied, stopping: bool) {
        self.in_flight -= 1;
        self.busy.remove(&c.name);
        self.index.listed(&c.name, c.listed);
        match c.result {
            Err(e) => {
                let _ = c.reply.send(Err(e));
            }
            Ok(Outcome::InCatalog(v)) => {
                let number = v.number;
                tracing::info!(
                    model = c.name,
                    "hand-over identical to v{number} in the team's catalog (its newest version); no new version"
                );
                self.take_from_catalog(&c.name, *v);
                if let Some(s) = &c.sidecar {
                    self.update_metrics(&c.name, number, s);
                }
                self.answer_after_commit(c.reply, number, false);
            }
            Ok(Outcome::Same(number)) => {
                tracing::info!(
                    model = c.name,
                    "hand-over identical to v{number}; no new version"
                );
                if let Some(s) = &c.sidecar {
                    self.update_metrics(&c.name, number, s);
                }
                self.answer_after_commit(c.reply, number, false);
            }
            Ok(Outcome::New {
                number,
                kind,
                staged,
                registered_at,
                source,
                copy_secs,
                dedup_saved,
                facts,
            }) => {
                self.board.count_dedup(dedup_saved);
                let cfg = self.config.clone();
                let parts = super::facts::NewRecord {
                    kind,
                    files: &staged.files,
                    registered_at: &registered_at,
                    source,
                    facts: &facts,
                    metadata: c.sidecar.as_ref().map(metadata).unwrap_or_default(),
                    sidecar: None,
                };
                let version = super::facts::record(&cfg, parts, &staged.final_dir, number);
                let size: u64 = version.files.iter().map(|f| f.size).sum();
                tracing::info!(
                    model = c.name,
                    version = format!("v{number}"),
                    bytes = size,
                    "registered {} v{number} from a hand-over: {} in {copy_secs:.2}s",
                    c.name,
                    crate::status::human_bytes(size)
                );
                let model = Arc::make_mut(
                    self.catalog
                        .models
                        .entry(c.name.clone())
                        .or_insert_with(|| Arc::new(Model::default())),
                );
                super::team::insert_version(model, version);
                if let Some(team) = &self.team {
                    team.applied(&c.name, number);
                }
                // Noted for the batch's journal record.
                self.batch.changed.version(&c.name, number);
                self.batch.staged.push(staged);
                self.batch
                    .registered
                    .push((size, super::commit::began(copy_secs)));
                self.batch.touched.insert(c.name.clone());
                self.batch.dirty = true;
                self.answer_after_commit(c.reply, number, true);
            }
        }
        self.run_deferred(&c.name, stopping);
    }

    /// Keeps `msg` until the job under way for model `name` ends.
    pub(super) fn defer(&mut self, name: String, msg: RegistrarMsg) {
        self.deferred.entry(name).or_default().push_back(msg);
    }

    /// Runs what waited for `name`'s job, until one starts a job of its own.
    pub(super) fn run_deferred(&mut self, name: &str, stopping: bool) {
        while !self.busy.contains(name) {
            let Some(msg) = self.deferred.get_mut(name).and_then(|q| q.pop_front()) else {
                self.deferred.remove(name);
                return;
            };
            self.handle(msg, stopping);
        }
    }

    /// Answers with version `number` once the batch is durable (a failed write answers
    /// that nothing was saved).
    fn answer_after_commit(
        &mut self,
        reply: oneshot::Sender<HandoverResult>,
        number: u32,
        created: bool,
    ) {
        // The registrar answers changes through one channel type; a hand-over's rides
        // it through a forwarding task, so the commit's roll-back covers it too.
        let (tx, rx) = oneshot::channel::<ChangeResult>();
        tokio::spawn(async move {
            if let Ok(r) = rx.await {
                let _ = reply.send(Ok(r));
            }
        });
        self.batch
            .replies
            .push((tx, Ok(ChangeAnswer::Registered { number, created })));
    }

    /// Identical bytes with metrics or metadata given: applied to that version by the
    /// rule an edited sidecar follows ([`Version::update_metrics`]).
    fn update_metrics(&mut self, name: &str, number: u32, s: &Sidecar) {
        let Some(m) = self.catalog.models.get_mut(name) else {
            return;
        };
        let m = Arc::make_mut(m);
        let Some(v) = m
            .versions
            .iter_mut()
            .find(|v| v.number == number)
            .map(Arc::make_mut)
        else {
            return;
        };
        if !v.update_metrics(metrics(s), metadata(s), &crate::status::now_rfc3339()) {
            return;
        }
        tracing::info!(
            model = name,
            "metrics of v{number} updated from a hand-over"
        );
        self.batch.changed.version(name, number);
        self.batch.touched.insert(name.to_string());
        self.batch.dirty = true;
    }
}

pub(super) fn metrics(s: &Sidecar) -> crate::registry::Metrics {
    s.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

pub(super) fn metadata(s: &Sidecar) -> crate::registry::Metadata {
    s.metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Copies and hashes the handed-over files into a staging folder; see the module docs.
/// `listed`: the listing of the model's store folder used to number it.
fn copy(
    job: Job,
    cancel: &AtomicBool,
    done: &AtomicU64,
    listed: &mut Option<store::Listed>,
) -> Result<Outcome, ErrorBody> {
    let (shown, kind, rels, source) = match &job.files {
        HandedFiles::File { filename, .. } => (
            format!("the file handed over as {filename}"),
            Kind::File,
            vec![filename.clone()],
            format!("handover:{filename}"),
        ),
        HandedFiles::Folder { files, .. } => (
            format!("the folder uploaded as {}", job.name),
            Kind::Folder,
            files.iter().map(|f| f.0.clone()).collect(),
            // No trailing slash: the loader reads `source` as a plain path.
            format!("upload:{}", job.name),
        ),
    };
    let unusable = |why: String| refusal(ErrorCode::UnusableFile, format!("{shown}: {why}"));
    if let Some(layout) = &job.layout
        && let Err(why) = layout.store()
    {
        return Err(refusal(ErrorCode::Internal, why));
    }
    let total = job.files.size();
    let origin = super::facts::handed_origin(&job.files);
    let (in_store, seen) = store::highest_in_store_since(&job.store, &job.name, job.listed);
    *listed = seen;
    let number = job.next.max(in_store + 1);
    let (mut file, stats) = match job.files {
        HandedFiles::File {
            file, stat, mode, ..
        } => (Some(file), vec![(PathBuf::new(), stat, mode)]),
        HandedFiles::Folder { dir, files } => (
            None,
            files
                .into_iter()
                .map(|(rel, stat, mode)| (dir.join(rel), stat, mode))
                .collect(),
        ),
    };
    let mut open = |i: usize| -> crate::error::Result<store::OpenSource> {
        let (path, _, mode) = &stats[i];
        let mut f = match file.take() {
            Some(f) => f,
            // A folder's file, in the daemon's private folder: opened without following
            // a link (none is ever made there).
            None => {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(path)
                    .map_err(|e| Error::io("open", path, e))?
            }
        };
        // The description may have been read from: copy from the start.
        f.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io("seek", std::path::Path::new(&shown), e))?;
        Ok(store::OpenSource {
            file: f,
            shown: if path.as_os_str().is_empty() {
                PathBuf::from(&shown)
            } else {
                path.clone()
            },
            mode: *mode,
        })
    };
    let changed = || {
        refusal(
            ErrorCode::SourceChanged,
            format!("{shown} changed while copying; nothing kept"),
        )
    };
    let mut check = |i: usize, f: &File| -> crate::error::Result<()> {
        match f.metadata() {
            Ok(now) if stats[i].1.still_describes(&now) => Ok(()),
            _ => Err(Error::SourceChanged(String::new())),
        }
    };
    let t0 = std::time::Instant::now();
    let staged = match store::stage_opened(
        &job.store, &job.name, number, &rels, &mut open, &mut check, cancel, done,
    ) {
        Ok(s) => s,
        Err(Error::Cancelled) => {
            return Err(refusal(
                ErrorCode::ShuttingDown,
                format!(
                    "the daemon is stopping: the copy of {shown} was cancelled and nothing of it was kept; register it again once the daemon is back"
                ),
            ));
        }
        Err(Error::SourceChanged(_)) => return Err(changed()),
        Err(e) => return Err(unusable(e.to_string())),
    };
    // Fewer or more bytes than fstat said: written meanwhile (a shared offset moved).
    if staged.files.iter().map(|f| f.size).sum::<u64>() != total {
        let _ = store::discard(&staged.dir);
        return Err(changed());
    }
    let content: Vec<(String, String)> = staged
        .files
        .iter()
        .map(|f| (f.rel.clone(), f.sha256.clone()))
        .collect();
    // The newest version's recorded hashes are what it held when stored; its bytes are
    // compared too, so one damaged in place is not answered "identical" (the new bytes
    // then become a version of their own, and the damage a problem).
    if let Some(k) = job.latest.as_ref().filter(|k| {
        k.files == content
            && store::staged_equals_version(
                &job.store,
                &job.name,
                k.number,
                &staged.dir,
                &content,
                &job.stored.damaged(),
            )
    }) {
        let _ = store::discard(&staged.dir);
        return Ok(Outcome::Same(k.number));
    }
    // The same bytes stored under another version become a hard link, as for the inbox.
    let saved = match super::copy::dedup(&job.store, &staged, &job.stored, &job.name, number) {
        Ok(saved) => saved,
        Err(e) => {
            let _ = store::discard(&staged.dir);
            return Err(refusal(ErrorCode::Internal, e.to_string()));
        }
    };
    let registered_at = crate::status::now_rfc3339();
    let facts = super::facts::gather(
        job.extract,
        &staged,
        kind == Kind::Folder,
        origin,
        job.sidecar.as_ref().map(|s| (metrics(s), &s.metadata)),
    );
    let manifest = store::Manifest {
        format: store::MANIFEST_FORMAT,
        name: job.name.clone(),
        version: number,
        kind,
        registered_at: registered_at.clone(),
        source: source.clone(),
        files: staged.files.clone(),
        metrics: facts.metrics.clone(),
        metadata: job.sidecar.as_ref().map(metadata).unwrap_or_default(),
        metric_sources: facts.metric_sources.clone(),
        extracted: facts.extracted.clone(),
        provenance: facts.provenance.clone(),
    };
    // The manifest, then the whole version durable in one round of fsyncs.
    if let Err(e) = store::seal(&staged, &manifest) {
        let _ = store::discard(&staged.dir);
        return Err(refusal(ErrorCode::Internal, e.to_string()));
    }
    Ok(Outcome::New {
        number,
        kind,
        staged,
        registered_at,
        source,
        copy_secs: t0.elapsed().as_secs_f64(),
        dedup_saved: saved.bytes,
        facts: Box::new(facts),
    })
}
