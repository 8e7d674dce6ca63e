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
use crate::config::Config;
use crate::messages::{Change, ChangeResult};
use crate::protocol::ChangeAnswer;
use crate::protocol::ErrorBody;
use crate::registry::{Changed, Model, RegistryError, Stamp, Version};
use crate::status::{StatusBoard, now_rfc3339};
use crate::store::{self, Staged};
use crate::team::{Team, TeamError};

/// Puts `v` into `m` in number order (replacing one of the same number): another host's
/// version may have arrived before this host's lower-numbered one.
pub(super) fn insert_version(m: &mut Model, v: Version) {
    m.highest = m.highest.max(v.number);
    match m.versions.binary_search_by_key(&v.number, |x| x.number) {
        Ok(i) => m.versions[i] = Arc::new(v),
        Err(i) => m.versions.insert(i, Arc::new(v)),
    }
}

/// Records a finished job's new versions in the team's engines (see the module docs).
/// Versions recorded before a failure are kept (the shared catalog has them); the rest
/// are discarded, and when none was recorded the job fails and is retried.
pub(super) async fn record_job(
    team: &Team,
    cfg: &Config,
    board: &StatusBoard,
    name: &str,
    result: JobResult,
) -> JobResult {
    let JobResult::Done {
        new,
        unchanged,
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
            Ok(()) => kept.push(nv),
            Err(e) => {
                let _ = store::discard(&nv.staged.dir);
                failure = Some(e);
            }
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
            return JobResult::Failed(e.to_string());
        }
        board.error(format!(
            "registering {name}: {e}; the versions recorded before it are kept"
        ));
    }
    JobResult::Done {
        new: kept,
        unchanged,
        sidecar,
        store_ahead,
        listed,
    }
}

/// Uploads one staged version's files, records it, and renames its staging folder when
/// the shared catalog gave another number than it was staged under.
async fn record_one(
    team: &Team,
    cfg: &Config,
    name: &str,
    nv: &mut NewVersion,
    sidecar: Option<&super::copy::SidecarRead>,
) -> Result<(), TeamError> {
    let files: Vec<(PathBuf, String, u64)> = (nv.staged.files.iter())
        .map(|f| (nv.staged.dir.join(&f.rel), f.sha256.clone(), f.size))
        .collect();
    team.upload(&files).await?;
    let number = team
        .record_version(name, |n| {
            let dir = store::version_dir(&cfg.store, name, n);
            super::facts::record_of(cfg, nv, sidecar, &dir)
        })
        .await?;
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
    Ok(())
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
        Ok(n) => n,
        Err(e) => {
            let _ = store::discard(&staged.dir);
            board.set_problem(
                &e.engine,
                &format!("registering {name} (a hand-over) failed: {}", e.message),
            );
            return Err(super::handover::refusal(
                crate::protocol::ErrorCode::Internal,
                format!("{e}; nothing was kept, try again"),
            ));
        }
    };
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

impl Registrar {
    /// Merges models as the shared catalog holds them: versions this catalog lacks
    /// (metadata only: their files are fetched on demand), aliases, alias moves after
    /// those it holds, the highest number. This host's own versions on their way to
    /// the registrar are left to their job.
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
                if let Err(i) = m.versions.binary_search_by_key(&v.number, |x| x.number) {
                    m.versions.insert(i, v.clone());
                    m.highest = m.highest.max(v.number);
                    self.batch.changed.version(&name, v.number);
                    touched = true;
                }
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

    /// A client's change in team mode: alias changes are decided by the catalog rules on
    /// a copy of the model, written to the shared catalog, then what it holds is merged
    /// and committed here; the answer waits for that commit. Other changes to versions
    /// (deprecate, rm, gc) are not shared yet and are refused rather than made on one
    /// host alone.
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
        if matches!(change, Change::Compact) {
            return None;
        }
        let (Change::AliasSet { name, .. }
        | Change::AliasRemove { name, .. }
        | Change::Rollback { name, .. }) = &change
        else {
            return Some(Err(RegistryError::NotSaved {
                reason: "deprecate, rm and gc are not shared between a team's hosts yet (docs/team.md): refused rather than done on this host alone".into(),
            }));
        };
        let name = name.clone();
        let model = match self.catalog.model(&name) {
            Ok(m) => m,
            Err(e) => return Some(Err(e)),
        };
        let mut trial = model.clone();
        let changed = match change {
            Change::AliasSet { alias, version, .. } => {
                trial.set_alias(&name, &alias, version, &stamp)
            }
            Change::AliasRemove { alias, .. } => trial.remove_alias(&name, &alias, &stamp),
            Change::Rollback { alias, .. } => trial.roll_back(&name, &alias, &stamp),
            _ => unreachable!("refused above"),
        };
        let changed = match changed {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        let Some(event) = changed.event(&name) else {
            return Some(Ok(ChangeAnswer::of(&name, changed)));
        };
        let written = match &changed {
            Changed::AliasSet { alias, to, .. } => {
                team.set_alias(&name, alias, *to, &stamp, "set").await
            }
            Changed::RolledBack { alias, to, .. } => {
                team.set_alias(&name, alias, *to, &stamp, "rollback").await
            }
            Changed::AliasRemoved { alias, .. } => team.remove_alias(&name, alias, &stamp).await,
            _ => unreachable!("alias changes only"),
        };
        if let Err(e) = written {
            self.board.set_problem(
                &e.engine,
                &format!("an alias change of {name} failed: {}", e.message),
            );
            return Some(Err(RegistryError::NotSaved {
                reason: e.to_string(),
            }));
        }
        self.board.clear_problem(&team.catalog_engine());
        // What the shared catalog holds now: this move, and any other host's before it.
        match team.model(&name).await {
            Ok(m) => self.merge_remote(vec![(name.clone(), m)]),
            Err(e) => tracing::warn!("{e}: the follower brings the change instead"),
        }
        self.board.event(event);
        Some(Ok(ChangeAnswer::of(&name, changed)))
    }
}
