//! The registrar in team mode: a new version's files uploaded and its number taken from the shared catalog before it is committed here; other hosts' models merged in; alias changes written to the shared catalog first.
//!
//! Order for a new version (docs/team.md, "Running a team"): staged and sealed here as
//! in local mode (its hashes known), then every file put in the blob store (verified,
//! skipped when present), then recorded in PostgreSQL, whose transaction allocates the
//! number; a staging folder staged under another number is renamed (and its manifest
//! rewritten) before the registrar commits and publishes it under that number. Any
//! failure before the PostgreSQL commit leaves nothing recorded anywhere: the staged copy
//! is discarded and the inbox entry retried (a `status` problem names the engine).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Registrar;
use super::copy::{JobResult, NewVersion};
use super::handover::Outcome;
use crate::catalogdb::Removal;
use crate::config::Config;
use crate::messages::{Change, ChangeResult};
use crate::protocol::ChangeAnswer;
use crate::protocol::ErrorBody;
use crate::registry::{Changed, Model, RegistryError, Stamp, Version, keep_last};
use crate::status::{StatusBoard, now_rfc3339};
use crate::store::{self, Staged};
use crate::team::{ChangeFailure, Recorded, Team, TeamError, events_of};

/// Puts `v` into `m` in number order (replacing one of the same number): another host's
/// version may have arrived before this host's lower-numbered one.
pub(super) fn insert_version(m: &mut Model, v: Version) {
    m.highest = m.highest.max(v.number);
    match m.versions.binary_search_by_key(&v.number, |x| x.number) {
        Ok(i) => m.versions[i] = Arc::new(v),
        Err(i) => m.versions.insert(i, Arc::new(v)),
    }
}

/// Whether `held` and `v` (one version, as this host and the shared catalog hold it)
/// differ in what a sidecar edit changes.
fn differs_in_metrics(held: &Version, v: &Version) -> bool {
    held.metrics != v.metrics
        || held.metadata != v.metadata
        || held.metric_sources != v.metric_sources
        || held.extracted != v.extracted
        || held.sidecar != v.sidecar
        || held.metrics_history != v.metrics_history
}

/// Takes from `v` what a sidecar edit changes ([`differs_in_metrics`]).
fn take_metrics(held: &mut Version, v: &Version) {
    held.metrics = v.metrics.clone();
    held.metadata = v.metadata.clone();
    held.metric_sources = v.metric_sources.clone();
    held.extracted = v.extracted.clone();
    held.sidecar = v.sidecar.clone();
    held.metrics_history = v.metrics_history.clone();
}

/// Records a finished job's new versions in the team's engines (see the module docs).
/// Versions recorded before a failure are kept (the shared catalog has them); the rest
/// are discarded, and when none was recorded the job fails and is retried. A version
/// whose files the model's newest version in the shared catalog already holds is not
/// recorded: its entry is registered as that version, as local mode does with bytes
/// identical to the newest version.
pub(super) async fn record_job(
    team: &Team,
    cfg: &Config,
    board: &StatusBoard,
    name: &str,
    result: JobResult,
) -> JobResult {
    let JobResult::Done {
        new,
        mut unchanged,
        mut in_catalog,
        sidecar,
        store_ahead,
        listed,
    } = result
    else {
        return result;
    };
    let mut kept = Vec::new();
    let mut failure: Option<TeamError> = None;
    for mut nv in new {
        if failure.is_some() {
            let _ = store::discard(&nv.staged.dir);
            continue;
        }
        match record_one(team, cfg, name, &mut nv, sidecar.as_deref()).await {
            Ok(None) => kept.push(nv),
            Ok(Some(existing)) => {
                let _ = store::discard(&nv.staged.dir);
                unchanged.push((nv.entry, nv.fingerprint, existing.number));
                in_catalog.push(existing);
            }
            Err(e) => {
                let _ = store::discard(&nv.staged.dir);
                failure = Some(e);
            }
        }
    }
    // A sidecar edited after its artifact was registered gives its metrics to the
    // model's newest version (local mode's rule): in the shared catalog first, so that
    // every host's `best` sees them; the version as the catalog then holds it is taken
    // here with the job, and the local rule applied to it finds nothing more to change.
    if kept.is_empty()
        && failure.is_none()
        && let Some(s) = sidecar.as_deref().filter(|s| s.fresh && s.gives())
    {
        match share_sidecar(team, cfg, name, s).await {
            Ok(Some(v)) => in_catalog.push(v),
            Ok(None) => {}
            Err(e) => failure = Some(e),
        }
    }
    for engine in [team.catalog_engine(), team.blobs_engine()] {
        if failure.as_ref().is_none_or(|f| f.engine != engine) {
            board.clear_problem(&engine);
        }
    }
    if let Some(e) = failure {
        board.set_problem(
            &e.engine,
            &format!(
                "registering {name} failed: {}; the inbox entry waits and is retried",
                e.message
            ),
        );
        if kept.is_empty() {
            // The problem just set lists it among the recent errors: once, not again.
            return JobResult::FailedInStatus(e.to_string());
        }
        board.error(format!(
            "registering {name}: {e}; the versions recorded before it are kept"
        ));
    }
    JobResult::Done {
        new: kept,
        unchanged,
        in_catalog,
        sidecar,
        store_ahead,
        listed,
    }
}

/// Gives sidecar `s`'s metrics and metadata to the newest live version of `name` in the
/// shared catalog, as [`Version::update_metrics`] does locally, with the sidecar noted as
/// applied. Returns the version as the catalog now holds it (`None`: no live version
/// there, or nothing changed).
async fn share_sidecar(
    team: &Team,
    cfg: &Config,
    name: &str,
    s: &super::copy::SidecarRead,
) -> Result<Option<Version>, TeamError> {
    let at = now_rfc3339();
    let applied = Some(Box::new(crate::registry::SidecarRef {
        path: cfg.relative(&cfg.inbox.join(&s.entry)).into_owned(),
        sha256: s.sha256.clone(),
    }));
    let (metrics, metadata) = (s.metrics(), s.metadata());
    let shared = team
        .update_metrics(name, None, &at, |v| {
            let updated = v.update_metrics(metrics, metadata, &at);
            let noted = v.sidecar != applied;
            v.sidecar = applied;
            updated || noted
        })
        .await
        .map_err(ChangeFailure::into_error)?;
    if let Some(v) = &shared {
        tracing::info!(
            model = name,
            version = format!("v{}", v.number),
            "metrics from {} given to v{} in the team's catalog",
            cfg.inbox.join(&s.entry).display(),
            v.number
        );
    }
    Ok(shared)
}

/// Uploads one staged version's files, records it, and renames its staging folder when
/// the shared catalog gave another number than it was staged under. `Some(version)`:
/// nothing was recorded, the model's newest version in the shared catalog holds the same
/// files (the staged copy is the caller's to discard).
async fn record_one(
    team: &Team,
    cfg: &Config,
    name: &str,
    nv: &mut NewVersion,
    sidecar: Option<&super::copy::SidecarRead>,
) -> Result<Option<Version>, TeamError> {
    let files: Vec<(PathBuf, String, u64)> = (nv.staged.files.iter())
        .map(|f| (nv.staged.dir.join(&f.rel), f.sha256.clone(), f.size))
        .collect();
    team.upload(&files).await?;
    let recorded = team
        .record_version(name, |n| {
            let dir = store::version_dir(&cfg.store, name, n);
            super::facts::record_of(cfg, nv, sidecar, &dir)
        })
        .await?;
    let number = match recorded {
        Recorded::New { number, .. } => number,
        Recorded::Existing(v) => {
            tracing::info!(
                model = name,
                entry = nv.entry,
                "content identical to v{} in the team's catalog (its newest version); no new version",
                v.number
            );
            return Ok(Some(*v));
        }
    };
    hold_after_record(name, number).await;
    recheck_blobs(team, name, number, &files).await;
    if number != nv.number {
        let renamed = renumber(&mut nv.staged, &cfg.store, name, nv.number, number);
        if let Err(e) = renamed {
            // Recorded in the shared catalog: it is kept there, and reaches this host
            // through the follower like another host's version.
            team.applied(name, number);
            return Err(TeamError {
                engine: "store".into(),
                message: format!(
                    "v{number} recorded, but its staged copy could not be renamed: {e}"
                ),
            });
        }
        tracing::info!(
            model = name,
            "staged as v{} while another host took that number: this version is v{number}",
            nv.number
        );
        nv.number = number;
    }
    Ok(None)
}

/// Debug builds only (what the end-to-end tests run): while the file named by
/// `MODELREG_DEBUG_HOLD_AFTER_RECORD` exists, a version recorded in the shared catalog
/// waits before this host commits it, so that a test can kill the host in between
/// (the version in PostgreSQL, not in this host's journal) without racing the clock.
async fn hold_after_record(name: &str, number: u32) {
    #[cfg(debug_assertions)]
    if let Some(gate) = std::env::var_os("MODELREG_DEBUG_HOLD_AFTER_RECORD") {
        let gate = std::path::PathBuf::from(gate);
        if gate.exists() {
            tracing::info!(
                model = name,
                "{name} v{number} recorded in the team's catalog; held before the local commit while {} exists",
                gate.display()
            );
        }
        while gate.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    let _ = (name, number);
}

/// After version `number` of `name` was recorded: its blobs are looked up again, and any
/// that is gone uploaded again from the staged copy. A blob found present before the
/// record (uploaded long ago by an attempt that never recorded it) may have been taken
/// by the orphan collector just before the record committed: the collector decides and
/// deletes under a lock the record shares, so once the record committed no collector
/// deletes it any more, and this look finds any it deleted before (docs/team.md, "Orphan
/// blobs"). Failing here (the store unreachable just then) leaves the version recorded
/// with a blob missing: logged as an error naming it; `modelreg verify --catalog` finds
/// it, and registering the same bytes again puts it back.
async fn recheck_blobs(team: &Team, name: &str, number: u32, files: &[(PathBuf, String, u64)]) {
    if let Err(e) = team.upload(files).await {
        tracing::error!(
            model = name,
            "v{number} is recorded, but a blob of it could not be checked or stored again: {e}"
        );
    }
}

/// Renames staging folder `.staging/v<from>.<rest>` to `.staging/v<to>.<rest>`, points
/// it at `v<to>` and rewrites its manifest with the new number.
pub(super) fn renumber(
    staged: &mut Staged,
    store_dir: &Path,
    name: &str,
    from: u32,
    to: u32,
) -> crate::error::Result<()> {
    let file_name = staged
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rest = file_name
        .strip_prefix(&format!("v{from}."))
        .unwrap_or(&file_name);
    let dir = staged.dir.with_file_name(format!("v{to}.{rest}"));
    std::fs::rename(&staged.dir, &dir)
        .map_err(|e| crate::error::Error::io("rename staging folder", &dir, e))?;
    staged.dir = dir;
    staged.final_dir = store::version_dir(store_dir, name, to);
    let path = staged.dir.join(store::MANIFEST);
    if let Some(mut m) = store::read_manifest(&path)? {
        m.version = to;
        std::fs::remove_file(&path).map_err(|e| crate::error::Error::io("replace", &path, e))?;
        store::write_manifest(&staged.dir, &m)?;
    }
    Ok(())
}

/// Team mode: the hand-over's staged version uploaded and recorded in the shared
/// catalog, renamed when it gives another number; a failure discards it and refuses the
/// hand-over naming the engine (nothing recorded anywhere; the client may try again).
pub(super) async fn record_handover(
    team: &crate::team::Team,
    cfg: &crate::config::Config,
    board: &crate::status::StatusBoard,
    name: &str,
    sidecar: Option<&crate::sidecar::Sidecar>,
    mut new: Outcome,
) -> Result<Outcome, ErrorBody> {
    let Outcome::New {
        number,
        kind,
        staged,
        registered_at,
        source,
        facts,
        ..
    } = &mut new
    else {
        return Ok(new);
    };
    let files: Vec<(std::path::PathBuf, String, u64)> = (staged.files.iter())
        .map(|f| (staged.dir.join(&f.rel), f.sha256.clone(), f.size))
        .collect();
    let recorded = match team.upload(&files).await {
        Ok(()) => {
            team.record_version(name, |n| {
                let dir = store::version_dir(&cfg.store, name, n);
                let parts = super::facts::NewRecord {
                    kind: *kind,
                    files: &staged.files,
                    registered_at,
                    source: source.clone(),
                    facts,
                    metadata: sidecar.map(super::handover::metadata).unwrap_or_default(),
                    sidecar: None,
                };
                super::facts::record(cfg, parts, &dir, n)
            })
            .await
        }
        Err(e) => Err(e),
    };
    let n = match recorded {
        Ok(Recorded::New { number, .. }) => number,
        Ok(Recorded::Existing(v)) => {
            // The newest version in the shared catalog holds these bytes: answered as
            // local mode answers identical bytes (no new version).
            let _ = store::discard(&staged.dir);
            board.clear_problem(&team.catalog_engine());
            return Ok(Outcome::InCatalog(v));
        }
        Err(e) => {
            let _ = store::discard(&staged.dir);
            board.set_problem(
                &e.engine,
                &format!("registering {name} (a hand-over) failed: {}", e.message),
            );
            return Err(super::handover::refusal(
                crate::protocol::ErrorCode::Internal,
                format!(
                    "{e}; nothing was kept on this host, try again (had the catalog recorded it before the failure, the retry answers that version)"
                ),
            ));
        }
    };
    hold_after_record(name, n).await;
    board.clear_problem(&team.catalog_engine());
    recheck_blobs(team, name, n, &files).await;
    if n != *number {
        if let Err(e) = renumber(staged, &cfg.store, name, *number, n) {
            team.applied(name, n);
            let _ = store::discard(&staged.dir);
            return Err(super::handover::refusal(
                crate::protocol::ErrorCode::Internal,
                format!(
                    "{name} v{n} recorded in the team's catalog, but its staged copy could not be renamed: {e}"
                ),
            ));
        }
        *number = n;
    }
    Ok(new)
}

/// Team mode: a hand-over identical to a version (`Same`, `InCatalog`) with metrics or
/// metadata `given` applies them to that version in the shared catalog first, by the
/// rule local mode applies ([`Version::update_metrics`]); the version as the catalog
/// then holds it is answered (`InCatalog`), and the registrar's local rule finds nothing
/// more to change. A failure refuses the hand-over naming the engine (nothing changed
/// anywhere; the client may try again).
pub(super) async fn share_handover_metrics(
    team: &Team,
    board: &StatusBoard,
    name: &str,
    (metrics, metadata): (crate::registry::Metrics, crate::registry::Metadata),
    outcome: Outcome,
) -> Result<Outcome, ErrorBody> {
    let number = match &outcome {
        Outcome::Same(n) => *n,
        Outcome::InCatalog(v) => v.number,
        Outcome::New { .. } => return Ok(outcome),
    };
    let at = now_rfc3339();
    let shared = team
        .update_metrics(name, Some(number), &at, |v| {
            v.update_metrics(metrics, metadata, &at)
        })
        .await;
    match shared {
        Ok(Some(v)) => {
            board.clear_problem(&team.catalog_engine());
            Ok(Outcome::InCatalog(Box::new(v)))
        }
        Ok(None) => Ok(outcome),
        Err(e) => {
            let unknown = matches!(e, ChangeFailure::Unknown(_));
            let e = e.into_error();
            board.set_problem(
                &e.engine,
                &format!(
                    "giving {name} v{number} a hand-over's metrics failed: {}",
                    e.message
                ),
            );
            let what = if unknown {
                "the outcome is unknown (the catalog may have made the change); ask again"
            } else {
                "nothing was changed; try again"
            };
            Err(super::handover::refusal(
                crate::protocol::ErrorCode::Internal,
                format!("{e}: the metrics were not given to {name} v{number}: {what}"),
            ))
        }
    }
}

impl Registrar {
    /// Takes version `v` of model `name` as the shared catalog holds it into the local
    /// catalog when it lacks that number (metadata only, like another host's version:
    /// its files are fetched on demand): a registration found identical to it there. A
    /// version this host recorded and then failed to commit comes back so too.
    pub(super) fn take_from_catalog(&mut self, name: &str, v: Version) {
        let m = Arc::make_mut(self.catalog.models.entry(name.to_string()).or_default());
        let number = v.number;
        match m.versions.binary_search_by_key(&number, |x| x.number) {
            // Held: what a sidecar edit gives (the catalog may have just made one).
            Ok(i) => {
                if m.versions[i].removed.is_some() || !differs_in_metrics(&m.versions[i], &v) {
                    return;
                }
                take_metrics(Arc::make_mut(&mut m.versions[i]), &v);
            }
            Err(_) => insert_version(m, v),
        }
        self.batch.changed.version(name, number);
        self.batch.changed.model(name);
        self.batch.touched.insert(name.to_string());
        self.batch.dirty = true;
    }

    /// Merges models as the shared catalog holds them (or only some of their versions:
    /// the follower reads those its changes name): versions this catalog lacks
    /// (metadata only: their files are fetched on demand); on versions it holds, the
    /// deprecation mark as the catalog has it and a removal, whose cached files
    /// (`models/<name>/v<N>/`) go to the trash as a local `rm`'s do; aliases, alias
    /// moves after those it holds. This host's own versions on their way to the
    /// registrar are left to their job.
    pub(super) fn merge_remote(&mut self, models: Vec<(String, Option<Model>)>) {
        let Some(team) = self.team.clone() else {
            return;
        };
        for (name, remote) in models {
            let Some(remote) = remote else { continue };
            let existed = self.catalog.models.contains_key(&name);
            let m = Arc::make_mut(self.catalog.models.entry(name.clone()).or_default());
            let mut touched = false;
            for v in &remote.versions {
                if team.is_pending(&name, v.number) {
                    continue;
                }
                match m.versions.binary_search_by_key(&v.number, |x| x.number) {
                    Err(i) => {
                        m.versions.insert(i, v.clone());
                        m.highest = m.highest.max(v.number);
                    }
                    Ok(i) => {
                        let held = &m.versions[i];
                        // A tombstone is final; a sidecar edit's metrics are the catalog's
                        // (made there first by the host that read the sidecar).
                        let removed = held.removed.is_none() && v.removed.is_some();
                        let metrics = differs_in_metrics(held, v);
                        if held.removed.is_some()
                            || (!removed && held.deprecated == v.deprecated && !metrics)
                        {
                            continue;
                        }
                        let held = Arc::make_mut(&mut m.versions[i]);
                        held.deprecated = v.deprecated.clone();
                        if metrics {
                            take_metrics(held, v);
                        }
                        if removed {
                            held.removed = v.removed.clone();
                            self.batch.deletions.push((name.clone(), v.number));
                        }
                    }
                }
                self.batch.changed.version(&name, v.number);
                touched = true;
            }
            // Local history is only appended to (the journal relies on it); the shared
            // catalog's moves past what it holds are the new ones.
            if remote.alias_history.len() > m.alias_history.len() {
                let from = m.alias_history.len();
                m.alias_history
                    .extend(remote.alias_history[from..].iter().cloned());
                touched = true;
            }
            // Only aliases on versions held here (a pending one arrives with its job).
            let aliases: std::collections::BTreeMap<String, u32> = (remote.aliases.iter())
                .filter(|(_, n)| m.find(**n).is_some_and(|v| v.removed.is_none()))
                .map(|(a, n)| (a.clone(), *n))
                .collect();
            if aliases != m.aliases {
                m.aliases = aliases;
                touched = true;
            }
            if touched {
                self.batch.changed.model(&name);
                self.batch.touched.insert(name.clone());
                self.batch.dirty = true;
            } else if !existed && m.versions.is_empty() {
                self.catalog.models.remove(&name);
            }
        }
    }

    /// A client's change in team mode (`None`: not the shared catalog's, made here:
    /// `compact`). Alias changes, `deprecate` and `rm` are decided by the catalog rules on
    /// a copy of the model, written to the shared catalog (which refuses what another
    /// host changed first), then the model as it holds it is merged and committed here;
    /// the answer waits for that commit. `gc` does the same per model.
    pub(super) async fn team_change(
        &mut self,
        team: Arc<Team>,
        change: Change,
        uid: Option<u32>,
    ) -> Option<ChangeResult> {
        let stamp = Stamp {
            at: now_rfc3339(),
            uid,
        };
        Some(match change {
            Change::Compact => return None,
            Change::Gc { name, dry_run } => {
                self.team_gc(&team, name.as_deref(), dry_run, &stamp).await
            }
            change => self.team_model_change(&team, change, &stamp).await,
        })
    }

    /// One model's change (alias, deprecate, rm) in team mode: see [`Self::team_change`].
    async fn team_model_change(
        &mut self,
        team: &Team,
        change: Change,
        stamp: &Stamp,
    ) -> ChangeResult {
        let (Change::AliasSet { name, .. }
        | Change::AliasRemove { name, .. }
        | Change::Rollback { name, .. }
        | Change::Deprecate { name, .. }
        | Change::Remove { name, .. }) = &change
        else {
            unreachable!("gc and compact are handled by team_change");
        };
        let name = name.clone();
        let model = self.catalog.model(&name)?;
        // What an `rm` frees here, while the version still counts as stored.
        let freed = match &change {
            Change::Remove { version, .. }
                if model.find(*version).is_some_and(|v| v.removed.is_none()) =>
            {
                let going = std::collections::BTreeSet::from([*version]);
                super::changes::freed_bytes(&self.config.root, model, &going)
            }
            _ => 0,
        };
        let force = matches!(change, Change::Remove { force: true, .. });
        let mut trial = model.clone();
        let changed = match change {
            Change::AliasSet { alias, version, .. } => {
                trial.set_alias(&name, &alias, version, stamp)
            }
            Change::AliasRemove { alias, .. } => trial.remove_alias(&name, &alias, stamp),
            Change::Rollback { alias, .. } => trial.roll_back(&name, &alias, stamp),
            Change::Deprecate {
                version, reason, ..
            } => trial.deprecate(&name, version, reason, stamp),
            Change::Remove {
                version,
                reason,
                force,
                ..
            } => trial.remove(&name, version, reason, force, stamp, "rm"),
            Change::Gc { .. } | Change::Compact => unreachable!("not a model's change"),
        }?;
        let Some(event) = changed.event(&name) else {
            return Ok(ChangeAnswer::of(&name, changed));
        };
        let mark = |n: u32, f: fn(&Version) -> Option<&crate::registry::Mark>| {
            trial.find(n).and_then(f).cloned()
        };
        let written = match &changed {
            // Compare-and-set: where this host saw the alias, which the catalog refuses
            // when another host moved it meanwhile (never two hosts' rollbacks of one
            // move, never a no-op row in the history).
            Changed::AliasSet {
                alias, to, from, ..
            } => {
                let events = events_of(&name, (model, &trial), &[], &stamp.at);
                (team.set_alias(&name, alias, *from, *to, stamp, "set", &events)).await
            }
            Changed::RolledBack { alias, to, from } => {
                let events = events_of(&name, (model, &trial), &[], &stamp.at);
                let by = "rollback";
                (team.set_alias(&name, alias, Some(*from), *to, stamp, by, &events)).await
            }
            Changed::AliasRemoved { alias, was } => {
                let events = events_of(&name, (model, &trial), &[], &stamp.at);
                team.remove_alias(&name, alias, *was, stamp, &events).await
            }
            Changed::Deprecated { version, .. } => {
                let events = events_of(&name, (model, &trial), &[*version], &stamp.at);
                let mark = mark(*version, |v| v.deprecated.as_deref());
                team.set_deprecated(&name, *version, mark, &events).await
            }
            Changed::Removed { version, .. } => {
                let events = events_of(&name, (model, &trial), &[*version], &stamp.at);
                let mark = mark(*version, |v| v.removed.as_deref()).expect("removed above");
                let how = Removal { by: "rm", force };
                team.remove_versions(&name, &[*version], &mark, how, &events)
                    .await
            }
        };
        if let Err(e) = written {
            if let ChangeFailure::Unknown(e) = e {
                return Err(self.outcome_unknown(team, &name, &changed, e).await);
            }
            return Err(self.not_written(&name, e));
        }
        self.board.clear_problem(&team.catalog_engine());
        self.merge_written(team, &name, trial).await;
        self.board.event(event);
        let mut answer = ChangeAnswer::of(&name, changed);
        if let ChangeAnswer::Removed(r) = &mut answer {
            r.freed = freed;
        }
        Ok(answer)
    }

    /// Retention in team mode: per model, what `gc` would remove here (the same plan as
    /// local mode's, on this host's copy of the catalog), removed in the shared catalog
    /// in one transaction per model, then merged here; `dry_run` only says what would go.
    /// A model the catalog refuses (another host removed or aliased one of its versions
    /// meanwhile) stops the run, naming what was done before it.
    async fn team_gc(
        &mut self,
        team: &Team,
        only: Option<&str>,
        dry_run: bool,
        stamp: &Stamp,
    ) -> ChangeResult {
        // What to remove, and the report, are local mode's.
        let ChangeAnswer::Gc(report) = self.gc(only, true, stamp)? else {
            unreachable!("gc answers a report");
        };
        if dry_run {
            return Ok(ChangeAnswer::Gc(report));
        }
        let mut by_model: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
        for v in &report.versions {
            let n = crate::registry::parse_version(&v.version).expect("gc names vN");
            by_model.entry(v.name.clone()).or_default().push(n);
        }
        let mut done: Vec<String> = Vec::new();
        for (name, numbers) in by_model {
            let model = self.catalog.model(&name)?.clone();
            let keep = keep_last(&self.config.retention, &name).unwrap_or_default();
            let mut trial = model.clone();
            for &n in &numbers {
                let reason = Some(format!("gc: keep_last {keep}"));
                trial.remove(&name, n, reason, false, stamp, "gc")?;
            }
            let events = events_of(&name, (&model, &trial), &numbers, &stamp.at);
            let mark = (trial
                .find(numbers[0])
                .and_then(|v| v.removed.as_deref())
                .cloned())
            .expect("removed above");
            let how = Removal {
                by: "gc",
                force: false,
            };
            if let Err(e) = team
                .remove_versions(&name, &numbers, &mark, how, &events)
                .await
            {
                let before = if done.is_empty() {
                    String::new()
                } else {
                    format!(" (gc removed versions of {} before it)", done.join(", "))
                };
                let e = self.not_written(&name, e);
                return Err(RegistryError::NotSaved {
                    reason: format!("gc of {name}: {e}{before}"),
                });
            }
            self.board.clear_problem(&team.catalog_engine());
            self.merge_written(team, &name, trial).await;
            self.board
                .event(format!("gc removed {} version(s) of {name}", numbers.len()));
            done.push(name);
        }
        Ok(ChangeAnswer::Gc(crate::protocol::GcReport {
            dry_run: false,
            ..report
        }))
    }

    /// A change whose commit got no answer (the catalog may have made it): the model is
    /// read back from the catalog and merged here (this host converges to whatever the
    /// catalog holds, as the follower would bring it), and the client is told the
    /// outcome is unknown, with what this host now has for the alias or version changed.
    async fn outcome_unknown(
        &mut self,
        team: &Team,
        name: &str,
        changed: &Changed,
        e: crate::team::TeamError,
    ) -> RegistryError {
        self.board.set_problem(
            &e.engine,
            &format!("a change of {name} failed while committing: {}", e.message),
        );
        let now = match team.model(name).await {
            Ok(m) => {
                self.merge_remote(vec![(name.to_string(), m)]);
                let held = self.catalog.models.get(name);
                match changed {
                    Changed::AliasSet { alias, .. }
                    | Changed::RolledBack { alias, .. }
                    | Changed::AliasRemoved { alias, .. } => {
                        match held.and_then(|m| m.aliases.get(alias)) {
                            Some(n) => format!(" (the catalog says {alias} -> v{n} now)"),
                            None => format!(" (the catalog has no alias {alias} now)"),
                        }
                    }
                    _ => " (this host re-read the model from the catalog)".to_string(),
                }
            }
            Err(e) => {
                tracing::warn!(
                    "{e}: reading {name} back after an unknown outcome failed; the follower brings it"
                );
                String::new()
            }
        };
        RegistryError::OutcomeUnknown {
            reason: e.to_string(),
            now,
        }
    }

    /// A change the shared catalog did not make, as the client's error: an engine's
    /// failure is also a `status` problem; a refusal (another host changed the model
    /// first) is not, and the follower brings what that host did.
    /// An unknown outcome (`gc`'s; a model change's goes through
    /// [`Self::outcome_unknown`]) is said so, never "not saved": the follower brings what
    /// the catalog made.
    fn not_written(&self, name: &str, e: ChangeFailure) -> RegistryError {
        let unknown = matches!(e, ChangeFailure::Unknown(_));
        let e = match e {
            ChangeFailure::Refused(e) => e,
            ChangeFailure::Failed(e) | ChangeFailure::Unknown(e) => {
                self.board.set_problem(
                    &e.engine,
                    &format!("a change of {name} failed: {}", e.message),
                );
                e
            }
        };
        if unknown {
            return RegistryError::OutcomeUnknown {
                reason: e.to_string(),
                now: String::new(),
            };
        }
        RegistryError::NotSaved {
            reason: e.to_string(),
        }
    }

    /// After this host wrote a change of `name` to the shared catalog: the model as the
    /// catalog holds it now (this change, and any other host's before it) is merged
    /// here. When it cannot be read back, `trial` (this host's copy with the change
    /// made) is merged instead (the follower brings the same again later: merging is
    /// idempotent).
    async fn merge_written(&mut self, team: &Team, name: &str, trial: Model) {
        match team.model(name).await {
            Ok(m) => self.merge_remote(vec![(name.to_string(), m)]),
            Err(e) => {
                tracing::warn!(
                    "{e}: reading {name} back failed; this host's change is applied as made"
                );
                self.merge_remote(vec![(name.to_string(), Some(trial))]);
            }
        }
    }
}
