//! Orphan blob collection: blobs no version names, older than the grace period (`blobs_grace:`), deleted by one host at a time.
//!
//! Each daemon sweeps periodically (every half grace, between 1 s and 1 h; the first
//! sweep soon after start, so a host restarted after a crash cleans up after itself):
//! 0. check that the store belongs to this host's catalog (its marker, `claim.rs`): a
//!    store of another catalog is never collected from, and `status` says so;
//! 1. LIST the store for blobs last written at least `grace` ago (an upload in flight,
//!    or uploaded and about to be recorded, is younger);
//! 2. on a connection of its own, under the catalog's blob lock held exclusively (every
//!    recording transaction holds it shared: src/catalogdb/orphans.rs), ask which of them
//!    no `files` row names, and delete those, within a time budget per lock hold;
//! 3. delete what uploads cut short left (a folder's temp files) older than the grace.
//!
//! What was collected is logged and shown in `status` (a recent change, and the team
//! row's counters); a failure is a `status` problem of its own, retried next sweep. Why
//! periodic and not `modelreg gc`: orphans come from crashes and outages nobody watches
//! for, and from `rm` and `gc`, whose removed versions' blobs are left to it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Team;
use crate::catalogdb::{CatalogDb, Options};
use crate::shutdown::Shutdown;
use crate::status::{StatusBoard, human_bytes};

/// Deletes done under one hold of the lock stop after this long (recording
/// transactions on every host wait meanwhile); the rest go at the next sweep.
const BUDGET: Duration = Duration::from_secs(5);
/// Blobs asked about under one hold of the lock.
const BATCH: usize = 1000;

/// What one sweep collected.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Unnamed blobs deleted: SHA-256 and size.
    pub blobs: Vec<(String, u64)>,
    /// Leftovers of uploads cut short deleted: name and size.
    pub abandoned: Vec<(String, u64)>,
    /// The time budget ran out with blobs older than the grace still to ask about.
    pub more: bool,
}

/// The time between two sweeps for a grace period.
pub fn interval(grace: Duration) -> Duration {
    (grace / 2).clamp(Duration::from_secs(1), Duration::from_secs(3600))
}

/// Sweeps every [`interval`] until `stop` (see the module docs).
pub async fn collect_orphans(team: Arc<Team>, board: Arc<StatusBoard>, stop: Shutdown) {
    let engine = format!("{} (collecting orphans)", team.blobs_engine());
    let every = interval(team.grace);
    // The first sweep soon after start: a host restarted after a crash cleans up its
    // own leftovers without waiting an hour.
    let mut next = every.min(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = stop.wait() => return,
            _ = tokio::time::sleep(next) => {}
        }
        next = every;
        if let Err(e) = team.check_claim().await {
            tracing::warn!("not collecting orphan blobs: {e}");
            board.set_problem(
                &engine,
                &format!(
                    "not collecting orphan blobs: {e} (checked again every {})",
                    humantime::format_duration(every)
                ),
            );
            continue;
        }
        match sweep(&team).await {
            Ok(s) => {
                board.clear_problem(&engine);
                team.note_sweep(&s);
                if !s.blobs.is_empty() || !s.abandoned.is_empty() {
                    board.event(describe(&team, &s));
                }
                if s.more {
                    next = Duration::from_secs(1);
                }
            }
            Err(e) => {
                tracing::warn!("collecting orphan blobs: {e}; trying again in {every:?}");
                board.set_problem(
                    &engine,
                    &format!(
                        "collecting orphan blobs failed: {e}; nothing is lost (retried every {})",
                        humantime::format_duration(every)
                    ),
                );
            }
        }
    }
}

/// The `status` line of a sweep that collected something.
fn describe(team: &Team, s: &Swept) -> String {
    let bytes: u64 = s.blobs.iter().chain(&s.abandoned).map(|(_, n)| n).sum();
    let mut what = Vec::new();
    if !s.blobs.is_empty() {
        let shown: Vec<&str> = s.blobs.iter().take(3).map(|(h, _)| &h[..12]).collect();
        let more = if s.blobs.len() > 3 { ", ..." } else { "" };
        what.push(format!(
            "{} orphan blob(s) no version names ({}{more})",
            s.blobs.len(),
            shown.join(", ")
        ));
    }
    if !s.abandoned.is_empty() {
        what.push(format!(
            "{} leftover(s) of uploads cut short",
            s.abandoned.len()
        ));
    }
    format!(
        "collected {} from {}, {} in all, each older than {}",
        what.join(" and "),
        team.blobs_engine(),
        human_bytes(bytes),
        humantime::format_duration(team.grace)
    )
}

/// One sweep (see the module docs).
pub async fn sweep(team: &Team) -> Result<Swept, super::TeamError> {
    let blobs_error = |e: crate::blobs::BlobError| super::TeamError {
        engine: team.blobs_engine(),
        message: e.to_string(),
    };
    // A store of another catalog is never collected from (every blob would look unnamed).
    team.check_claim().await?;
    let old = team.blobs.list(team.grace).await.map_err(blobs_error)?;
    let mut swept = Swept::default();
    if !old.is_empty() {
        let mut db = CatalogDb::connect(team.url(), Options::default())
            .await
            .map_err(|e| team.catalog_error(e))?;
        let started = Instant::now();
        let sizes: std::collections::HashMap<&str, u64> =
            old.iter().map(|b| (b.sha256.as_str(), b.size)).collect();
        for chunk in old.chunks(BATCH) {
            let shas: Vec<String> = chunk.iter().map(|b| b.sha256.clone()).collect();
            let deleted = db
                .with_unnamed_blobs(&shas, async |unnamed| {
                    let mut deleted = Vec::new();
                    for sha in unnamed {
                        if started.elapsed() > BUDGET {
                            break;
                        }
                        team.blobs.delete(&sha).await.map_err(blobs_error)?;
                        tracing::info!(
                            "collected orphan blob {sha} from {}: no version names it",
                            team.blobs_engine()
                        );
                        let size = sizes.get(sha.as_str()).copied().unwrap_or(0);
                        deleted.push((sha, size));
                    }
                    Ok(deleted)
                })
                .await
                .map_err(|e| team.catalog_error(e))?;
            swept.blobs.extend(deleted?);
            if started.elapsed() > BUDGET {
                swept.more = true;
                break;
            }
        }
    }
    swept.abandoned = team
        .blobs
        .collect_abandoned(team.grace)
        .await
        .map_err(blobs_error)?;
    for (name, _) in &swept.abandoned {
        tracing::info!("collected {name}: a leftover of an upload cut short");
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_come_every_half_grace_within_bounds() {
        assert_eq!(interval(Duration::from_secs(4)), Duration::from_secs(2));
        assert_eq!(interval(Duration::from_secs(1)), Duration::from_secs(1));
        assert_eq!(
            interval(Duration::from_secs(24 * 3600)),
            Duration::from_secs(3600)
        );
    }
}
