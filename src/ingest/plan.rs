//! Planning: what a settled group needs, from the catalog's fingerprints; starts its copy job.

use super::copy::{Job, JobResult, run_job};
use super::{Registrar, RegistrarMsg};
use crate::inbox::{self, Look};
use crate::messages::{Outcome, Settled};
use crate::registry::{Model, Version};
use crate::store;

/// The content of a known version, for "identical bytes make no new version".
#[derive(Debug, Clone)]
pub(super) struct Known {
    pub(super) number: u32,
    pub(super) files: Vec<(String, String)>,
}

pub(super) fn known(store_dir: &str, v: &Version) -> Known {
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

impl Registrar {
    /// The stored files of `model` a new version may share, `latest`'s by path.
    /// Kept up to date per model by [`index::Index`](super::index::Index).
    pub(super) fn stored_files(
        &mut self,
        name: &str,
        model: Option<&Model>,
        latest: Option<Known>,
    ) -> store::Stored {
        self.index
            .stored(name, model, &self.config.root, latest.as_ref())
    }

    /// Decides what a settled group needs; starts a copy job when anything changed.
    pub(super) fn plan(&mut self, s: Settled) {
        // A hand-over of this model is being copied: this waits for it (numbers).
        if self.busy.contains(&s.name) {
            return self.defer(s.name.clone(), RegistrarMsg::Settled(s));
        }
        for entry in &s.gone {
            if self.catalog.sources.remove(entry).is_some() {
                self.batch.changed.source(entry);
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
                self.batch.changed.source(entry);
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
            stored: self.stored_files(
                &s.name,
                model.as_deref(),
                latest.map(|v| known(&store_dir, v)),
            ),
            listed: self.index.listing_for_job(&s.name),
            layout: self.layout.clone(),
            extract: self.config.extract,
        };
        self.in_flight += 1;
        self.busy.insert(s.name.clone());
        let (sem, cancel, tx) = (self.jobs.clone(), self.cancel.clone(), self.self_tx.clone());
        let board = self.board.clone();
        let (config, shared) = (self.config.clone(), self.shared.clone());
        let team = self.team.clone().map(|t| (t, self.config.clone()));
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
            let damaged = job.stored.damaged();
            let result = tokio::task::spawn_blocking(move || run_job(job, &cancel, &done.done))
                .await
                .unwrap_or_else(|e| JobResult::Failed(format!("copy job panicked: {e}")));
            drop(copying);
            // Team mode: uploaded and numbered by the shared catalog before the
            // registrar commits it (team.rs).
            let result = match &team {
                Some((team, cfg)) => {
                    super::team::record_job(team, cfg, &board, &name, result).await
                }
                None => result,
            };
            // Stored files whose bytes were found changed in place: shown until restart
            // (a WARN in the log too), as `verify` would report them.
            for (path, why) in damaged.take() {
                let at = (config.root.as_path(), config.store.as_path());
                super::report_damaged(&board, at, &shared.catalog(), &path, &why);
            }
            if let JobResult::Done { new, .. } = &result {
                board.count_dedup(new.iter().map(|v| v.dedup_saved).sum());
            }
            let _ = tx.send(RegistrarMsg::JobDone { name, result });
        });
    }
}
