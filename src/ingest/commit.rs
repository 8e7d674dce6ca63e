//! Applying finished jobs to the catalog and the group commit that makes them durable.

use std::path::Path;
use std::sync::Arc;

use super::Registrar;
use super::copy::{JobResult, NewVersion, SidecarRead};
use super::writeback::durable;
use crate::messages::{ChangeResult, Outcome, SettlerMsg};
use crate::registry::{Delta, Model, SidecarRef, SourceRecord, Touched};
use crate::status::now_rfc3339;
use crate::store::{self, Staged};

/// Removals of up to this many versions in one commit are taken out of the Hugging Face
/// cache view before the answer (~5 ms a version); larger ones by the view's worker.
const INLINE_REMOVALS: usize = 16;

impl Registrar {
    /// Applies a finished job to the catalog (not yet written).
    pub(super) fn apply(&mut self, name: String, result: JobResult) {
        let outcome = match result {
            JobResult::Done {
                new,
                unchanged,
                in_catalog,
                sidecar,
                store_ahead,
                listed,
            } => {
                self.index.listed(&name, listed);
                if let Some(n) = store_ahead {
                    let dir = self.config.store.join(&name);
                    self.board.set_problem(
                        &dir.display().to_string(),
                        &format!(
                            "the store holds {name} v{n}, which registry.yaml does not name; new versions are numbered above it and nothing stored is overwritten (see `modelreg verify`, `modelreg recover`)"
                        ),
                    );
                }
                // A copy went through: a full store (below) is no longer the case.
                self.board
                    .clear_problem(&self.config.store.display().to_string());
                for v in in_catalog {
                    self.take_from_catalog(&name, v);
                }
                self.apply_done(&name, new, unchanged, sidecar.map(|s| *s));
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
                if crate::fsutil::is_out_of_space(&e) {
                    // Retrying does not make room: a lasting problem, named on the store
                    // so that `status` shows it and `wait` answers with it.
                    let store = &self.config.store;
                    let free = crate::fsutil::free_bytes(store)
                        .map_or_else(|e| format!("unknown: {e}"), crate::status::human_bytes);
                    self.board.set_problem(
                        &store.display().to_string(),
                        &format!(
                            "the store's file system is full ({free} free in {}): registering {name} failed: {e}; retried until there is room (free space, or `modelreg gc`)",
                            store.display()
                        ),
                    );
                }
                Outcome::Failed(e)
            }
            JobResult::FailedInStatus(e) => Outcome::Failed(e),
            JobResult::Cancelled => Outcome::Failed("cancelled".into()),
            // Taken by `handed_over` before `apply`; never an inbox group's result.
            JobResult::HandedOver(_) => return,
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
        let sidecar_ref = sidecar.as_ref().map(|s| {
            Box::new(SidecarRef {
                path: rel(&cfg.inbox.join(&s.entry)),
                sha256: s.sha256.clone(),
            })
        });
        let model = Arc::make_mut(
            self.catalog
                .models
                .entry(name.to_string())
                .or_insert_with(|| Arc::new(Model::default())),
        );
        let added = !new.is_empty();
        // The version the sidecar's metrics went to, if any: its notes are said then.
        let mut applied_to = None;
        for nv in new {
            let fresh = sidecar.as_ref().filter(|s| s.fresh);
            if fresh.is_some() {
                applied_to = Some(nv.number);
            }
            if sidecar.is_some() && fresh.is_none() {
                tracing::info!(
                    model = name,
                    "sidecar unchanged since the previous version: v{} gets no metrics from it",
                    nv.number
                );
            }
            let version = super::facts::record_of(&cfg, &nv, fresh, &nv.staged.final_dir);
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
            super::team::insert_version(model, version);
            self.batch.changed.version(name, nv.number);
            self.batch.changed.source(&nv.entry);
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
            self.batch.registered.push((size, began(nv.copy_secs)));
            self.batch.touched.insert(name.to_string());
        }
        for (entry, fingerprint, number) in unchanged {
            tracing::info!(
                model = name,
                entry,
                "content identical to v{number}; no new version"
            );
            self.batch.changed.source(&entry);
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
            // In team mode the shared catalog made this change first (`team::record_job`),
            // and the version as it holds it was taken above: this then changes nothing.
            if s.fresh
                && !added
                && s.gives()
                && let Some(latest) = model
                    .versions
                    .iter_mut()
                    .rev()
                    .find(|v| v.removed.is_none())
                    .map(Arc::make_mut)
            {
                {
                    self.batch.touched.insert(name.to_string());
                    self.batch.changed.version(name, latest.number);
                    // The same rule as `register` of identical bytes (see there).
                    let updated = latest.update_metrics(s.metrics(), s.metadata(), &now);
                    latest.sidecar = sidecar_ref.clone();
                    applied_to = Some(latest.number);
                    let version = format!("v{}", latest.number);
                    if updated {
                        tracing::info!(model = name, version, "metrics updated from {shown}");
                    } else {
                        // Saved again, or edited back: the log says nothing changed.
                        tracing::info!(
                            model = name,
                            version,
                            "{shown} read again: the same metrics and metadata"
                        );
                    }
                }
            }
            if let Some(n) = applied_to {
                for note in &s.parsed.notes {
                    self.board.event(format!("{name} v{n}: {note}"));
                }
            }
            self.batch.changed.source(&s.entry);
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
            self.batch.changed.model(name);
        }
        self.batch.dirty = true;
    }

    /// Makes the batch durable if anything changed (its journal record appended and
    /// fsynced, or, without a usable journal, registry.yaml written whole), then
    /// publishes staged versions and the new snapshot, then tells the settler how each
    /// group ended. registry.yaml itself follows later (see `writeback`).
    pub(super) async fn commit(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        let mut outcomes = batch.outcomes;
        let mut replies = batch.replies;
        let record = if batch.dirty {
            self.record(&batch.changed, batch.compact)
        } else {
            None
        };
        if record.is_some() || batch.refresh_all {
            let snapshot = self.next_snapshot(&batch.changed);
            let path = self.config.registry.clone();
            let snap = snapshot.clone();
            let staged = batch.staged;
            let deletions = batch.deletions;
            let removed_any = !deletions.is_empty();
            let store_dir = self.config.store.clone();
            let best = self.config.best.clone();
            let board = self.board.clone();
            let (before, hf, hf_on) =
                (self.shared.catalog(), self.hf.clone(), self.config.hf_cache);
            let refresh_all = batch.refresh_all;
            let links: Vec<String> = if batch.refresh_all {
                snapshot.models.keys().cloned().collect()
            } else {
                batch.touched.into_iter().collect()
            };
            // Whether each model's folder is listed for symlinks no longer wanted.
            let links: Vec<(String, bool)> = links
                .into_iter()
                .map(|name| {
                    let names = snapshot.models.get(&name).map(|m| link_names(m));
                    let prune =
                        batch.refresh_all | self.index.links_made(&name, names.unwrap_or_default());
                    (name, prune)
                })
                .collect();
            let mut journal = self.writeback.journal.take();
            let whole = self.writeback.failed || journal.is_none() || batch.compact;
            let recorded = record.is_some();
            let ours = self.writeback.ours.clone();
            let (log, cfg) = (self.shared.events().cloned(), self.config.clone());
            let stop = self.cancel.clone();
            let written = tokio::task::spawn_blocking(move || {
                let t0 = std::time::Instant::now();
                let mut trashed = Vec::new();
                let ((r, fresh, whole), events) = match &record {
                    None => ((Ok(()), true, whole), None),
                    // The record's events are made durable in the same round (events.rs).
                    Some(d) => super::events::durable_with(log.as_deref(), &cfg, &before, d, whole, || {
                        durable(d, &path, &snap, journal.as_mut(), whole, &ours)
                    }),
                };
                tracing::debug!(took = ?t0.elapsed(), versions = staged.len(), whole, "commit durable");
                // The models each version was published into (one more folder each).
                let mut published = Vec::new();
                if r.is_ok() {
                    for s in &staged {
                        match store::publish(s) {
                            Ok(()) => published.extend(
                                s.final_dir
                                    .parent()
                                    .and_then(|p| p.file_name())
                                    .map(|n| n.to_string_lossy().into_owned()),
                            ),
                            // The catalog names it: start-up recovery finishes the rename.
                            Err(e) => tracing::error!("{e}"),
                        }
                    }
                    // A large removal with the view on is the view's worker's: taking
                    // thousands of versions out of the view takes seconds, which every
                    // other change would wait for (hfcache/sync.rs).
                    let later = hf_on && deletions.len() > INLINE_REMOVALS;
                    let removed: &[(String, u32)] = if later { &deletions } else { &[] };
                    // Before the files of removed versions go: the view never shows them gone.
                    let names: Vec<String> = links.iter().map(|(n, _)| n.clone()).collect();
                    hf.after_commit(hf_on, &before, &snap, &names, refresh_all, &best, removed);
                    // Files of removed versions go only now that the tombstone is durable,
                    // and not on this path: each folder is renamed into the trash, which a
                    // worker empties after the answer (store::trash); start-up finishes a
                    // removal a crash interrupted. A removal left to the view's worker is
                    // moved by it, once the view no longer shows the versions.
                    if later {
                        hf.remove_then_trash(deletions, store_dir.clone(), stop);
                    } else {
                        let (moved, errors) = store::trash::move_to_trash(&store_dir, &deletions);
                        trashed = moved;
                        for e in errors {
                            tracing::error!("{e}");
                        }
                    }
                    // Each link on its own: one that cannot be made (a name too long,
                    // a full disk) is a problem in `status`, and the others still move.
                    for (name, prune) in &links {
                        let Some(m) = snap.models.get(name) else {
                            continue;
                        };
                        let targets = link_targets(m, name, &best);
                        for (path, err) in store::refresh_links(&store_dir, name, &targets, *prune) {
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
                (r, fresh, whole, staged, journal, published, events, trashed)
            })
            .await;
            match written {
                Ok((r, fresh, whole, staged, journal, published, events, trashed)) => {
                    self.writeback.journal = journal;
                    self.empty_trash(trashed);
                    for name in &published {
                        self.index.published(name);
                    }
                    match r {
                        Ok(()) => {
                            if recorded {
                                if whole {
                                    self.writeback.written = snapshot.journal_seq;
                                }
                                self.writeback.failed = !fresh;
                                self.board.clear_problem(&self.journal_shown());
                            }
                            let previous = self.shared.publish(snapshot);
                            if removed_any {
                                // A damaged file's problem names only versions still stored.
                                let now = self.shared.catalog();
                                self.board.damaged_keep(|m, n| {
                                    now.models
                                        .get(m)
                                        .and_then(|m| m.find(n))
                                        .is_some_and(|v| v.removed.is_none())
                                });
                            }
                            self.keep_spare(previous, batch.changed.clone());
                            if let (Some(log), Some(p)) = (self.shared.events(), events) {
                                log.commit(p);
                            }
                            let done: Vec<_> = (batch.registered.iter())
                                .map(|(bytes, began)| (*bytes, began.elapsed()))
                                .collect();
                            self.board.count_registered(&done);
                        }
                        Err(e) => {
                            if let (Some(log), Some(p)) = (self.shared.events(), events) {
                                log.abandon(p);
                            }
                            self.writeback.failed = true;
                            // Shown until a commit is durable again.
                            self.board.set_problem(
                                &self.journal_shown(),
                                &format!("the last change could not be made durable, and was not kept: {e}; the next change writes registry.yaml whole and starts a fresh journal"),
                            );
                            self.roll_back(e.to_string(), staged, &mut outcomes, &mut replies)
                        }
                    }
                }
                Err(e) => {
                    self.writeback.failed = true;
                    self.roll_back(
                        format!("catalog writer panicked: {e}"),
                        Vec::new(),
                        &mut outcomes,
                        &mut replies,
                    )
                }
            }
            self.writeback.schedule(
                self.catalog.journal_seq,
                self.config.registry_write_interval,
                false,
            );
        }
        for (name, outcome) in outcomes {
            let _ = self.to_settler.send(SettlerMsg::Done { name, outcome });
        }
        for (reply, result) in replies {
            let _ = reply.send(result);
        }
        self.show_team_events();
    }

    /// Team mode: makes the events of changes merged and published here visible, in
    /// seq order, stopping at a registration of this host's whose job has not committed
    /// it yet (the follower may read it first): a reader that sees an event finds its
    /// change on this host.
    fn show_team_events(&mut self) {
        let Some(team) = self.team.clone() else {
            return;
        };
        if self.batch.dirty {
            return;
        }
        if let Some((first, last)) = self.team_bounds.take() {
            team.events().start(first, last);
        }
        let mut shown = Vec::new();
        while let Some(e) = self.team_events.front() {
            let waiting = e.kind == crate::events::Kind::Registered
                && e.version.is_some_and(|n| team.is_pending(&e.model, n));
            if waiting {
                break;
            }
            shown.extend(self.team_events.pop_front());
        }
        team.events().publish(shown);
    }

    /// The journal record of this batch (numbering it, and the catalog with it), or
    /// `None` when it changed nothing. Without a usable journal even an empty change gets
    /// a number, so that the next commit writes registry.yaml and a fresh journal; so
    /// does a `compact`.
    fn record(&mut self, changed: &Touched, compact: bool) -> Option<Delta> {
        let before = self.shared.catalog();
        let mut d = Delta::between(before.journal_seq + 1, &before, &self.catalog, changed);
        if d.is_empty() && !self.writeback.failed && !compact {
            return None;
        }
        self.catalog.journal_seq = d.seq;
        // The event log's high-water mark travels with the record (and registry.yaml),
        // so that a seq is never given twice whatever later happens to the log.
        if let Some(log) = self.shared.events() {
            let made = crate::events::derive(&before, &d).len() as u64;
            if made > 0 {
                d.event_seq = log.next_seq() + made - 1;
            }
        }
        self.catalog.event_seq = self.catalog.event_seq.max(d.event_seq);
        // In test builds, every record is checked to reproduce the catalog it stands for:
        // a change the registrar forgot to note in `changed` would be lost by a crash.
        #[cfg(debug_assertions)]
        {
            let mut replayed = (*before).clone();
            d.apply(&mut replayed).expect("a journal record applies");
            assert!(
                replayed.models == self.catalog.models
                    && replayed.sources == self.catalog.sources
                    && replayed.journal_seq == self.catalog.journal_seq,
                "journal record {} does not reproduce the catalog: {:?}",
                d.seq,
                changed
            );
        }
        Some(d)
    }

    /// The journal's path as `status` shows it.
    fn journal_shown(&self) -> String {
        crate::registry::persist::journal_path(&self.config.registry)
            .display()
            .to_string()
    }

    fn roll_back(
        &mut self,
        error: String,
        staged: Vec<Staged>,
        outcomes: &mut [(String, Outcome)],
        replies: &mut [(tokio::sync::oneshot::Sender<ChangeResult>, ChangeResult)],
    ) {
        self.board.error(format!(
            "making the change durable: {error}; nothing of this batch was kept, will retry"
        ));
        self.catalog = (*self.shared.catalog()).clone();
        self.index.forget();
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
                *r = Err(crate::registry::RegistryError::NotSaved {
                    reason: error.clone(),
                });
            }
        }
    }
}

/// The names of a model's links: those [`link_targets`] gives.
fn link_names(m: &Model) -> std::collections::BTreeSet<String> {
    ["latest", "best"]
        .into_iter()
        .map(String::from)
        .chain(m.aliases.keys().cloned())
        .collect()
}

/// Where a model's links point: latest, best (by the configured metric) and its aliases.
pub fn link_targets(
    m: &Model,
    name: &str,
    best: &crate::config::BestPolicy,
) -> Vec<(String, Option<u32>)> {
    let mut out = vec![
        ("latest".to_string(), m.latest().map(|v| v.number)),
        (
            "best".to_string(),
            m.best_by_policy(name, best).map(|v| v.number),
        ),
    ];
    out.extend(m.aliases.iter().map(|(a, n)| (a.clone(), Some(*n))));
    out
}

/// When a copy job that took `copy_secs` began: a registration's duration runs from
/// there to its commit being durable.
pub(super) fn began(copy_secs: f64) -> std::time::Instant {
    let now = std::time::Instant::now();
    now.checked_sub(std::time::Duration::from_secs_f64(copy_secs.max(0.0)))
        .unwrap_or(now)
}
