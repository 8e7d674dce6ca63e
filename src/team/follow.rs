//! Following the team: LISTEN for changes, read what other hosts changed, hand the models to the registrar.
//!
//! At start (and after the listening connection is lost) it listens first, then reads
//! what it must catch up on: the whole snapshot the first time, the change log after the
//! last seq applied afterwards; then every wake-up reads the change log from there.
//! For each change (this host's own too) the model it names is read again, with the
//! versions the changes name and its aliases and their history whole, and handed over
//! with the events those changes logged (`team::TeamEvents`, shown once merged), so
//! applying is the same whatever the kind of change. A failure is a `status` problem naming the catalog,
//! retried with backoff; queries keep answering from the local catalog meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::Team;
use crate::catalogdb::{CatalogDb, Options, listen};
use crate::registry::Model;
use crate::shutdown::Shutdown;
use crate::status::StatusBoard;

/// Changes read from the log at once.
const BATCH: u32 = 1000;
/// The longest wait between two attempts after a failure.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the follower hands the registrar: models as the shared catalog holds them
/// (`None`: gone from it).
pub type Remote = Vec<(String, Option<Model>)>;

/// What the follower hands the registrar with them: the events of the changes read.
pub use crate::messages::RemoteEvents;

/// Follows the shared catalog until `stop`, handing what other hosts changed to `sink`
/// (which returns false once the registrar is gone).
pub async fn follow(
    team: Arc<Team>,
    board: Arc<StatusBoard>,
    sink: impl Fn(Remote, RemoteEvents) -> bool + Send,
    stop: Shutdown,
) {
    // Its own problem, beside the registrar's on the same engine.
    let engine = format!("{} (following)", team.catalog_engine());
    let mut last: Option<u64> = None;
    let mut backoff = Duration::from_millis(200);
    loop {
        let round = tokio::select! {
            _ = stop.wait() => return,
            r = follow_once(&team, &board, &engine, &sink, &mut last, &stop) => r,
        };
        match round {
            Ok(true) => return,
            Ok(false) => backoff = Duration::from_millis(200),
            Err(e) => {
                team.note_unreachable();
                tracing::warn!("following the team catalog: {e}; trying again in {backoff:?}");
                board.set_problem(
                    &engine,
                    &format!(
                        "following the team's catalog failed: {e}; changes of other hosts are not seen until it is back (retried with backoff)"
                    ),
                );
                tokio::select! {
                    _ = stop.wait() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// One listening connection's life: `Ok(true)` when the registrar is gone, `Ok(false)`
/// when the connection ended (listen again), `Err` on a failure.
async fn follow_once(
    team: &Team,
    board: &StatusBoard,
    engine: &str,
    sink: &(impl Fn(Remote, RemoteEvents) -> bool + Send),
    last: &mut Option<u64>,
    stop: &Shutdown,
) -> Result<bool, String> {
    let options = Options::default();
    // Listen before reading, so that nothing committed in between is missed.
    let mut listener = listen(team.url(), options)
        .await
        .map_err(|e| e.to_string())?;
    let mut db = CatalogDb::connect(team.url(), options)
        .await
        .map_err(|e| e.to_string())?;
    // The store's marker checked (or written) as soon as the catalog answers, so that
    // the first upload need not ask the catalog first (it may hang by then); a refusal
    // is the registrations' and the collector's to report, each time they are tried.
    if let Err(e) = team.check_claim().await {
        tracing::warn!("the team's blob store: {e}");
    }
    if last.is_none() {
        let snap = db.snapshot().await.map_err(|e| e.to_string())?;
        let models: Remote = snap
            .models
            .into_iter()
            .map(|(k, m)| (k, Some(Arc::unwrap_or_clone(m))))
            .collect();
        // The event log's bounds as of the snapshot: shown once it is merged.
        let events = RemoteEvents {
            bounds: Some((snap.first_event, snap.event_seq)),
            events: Vec::new(),
        };
        if !sink(models, events) {
            return Ok(true);
        }
        *last = Some(snap.seq);
    }
    board.clear_problem(engine);
    loop {
        // Catch up first (what was missed while not listening), then wait.
        loop {
            let from = last.unwrap_or(0);
            let changes = db
                .changes_since(from, BATCH)
                .await
                .map_err(|e| e.to_string())?;
            let Some(newest) = changes.last().map(|c| c.seq) else {
                break;
            };
            // Each model these changes touch, with only the versions they name, its
            // aliases and their history whole: read back whole on every change, a model
            // cost its followers time in proportion to its versions (tests/team_hosts.rs).
            // This host's own changes too: one whose commit got no answer (a timeout, a
            // synchronous standby that never acknowledged) is in the catalog while the
            // host was told it failed, and only this brings it. The merge is idempotent:
            // it skips versions held or pending here, marks already as the catalog has
            // them, alias moves already in the history.
            let mut wanted: BTreeMap<String, BTreeSet<u32>> = (changes.iter())
                .map(|c| (c.model.clone(), BTreeSet::new()))
                .collect();
            for c in &changes {
                if let (Some(numbers), Some(n)) = (wanted.get_mut(&c.model), c.number) {
                    numbers.insert(n);
                }
            }
            let mut models = Remote::new();
            for (name, numbers) in wanted {
                let numbers: Vec<u32> = numbers.into_iter().collect();
                let m = (db.model_versions(&name, &numbers).await).map_err(|e| e.to_string())?;
                models.push((name, m));
            }
            // Their events, shown on this host once the registrar published the merge.
            let rows = (db.events_of_changes(from, newest).await).map_err(|e| e.to_string())?;
            // One this modelreg cannot read (a newer kind) must not stop the following:
            // it is left out with a WARN, and a reader that reaches its seq is told so
            // by the read from PostgreSQL (never skipped silently).
            let events = (rows.into_iter())
                .filter_map(|row| {
                    super::event_of(row)
                        .map_err(|e| tracing::warn!("team event log: {e}; not shown here"))
                        .ok()
                })
                .collect();
            let events = RemoteEvents {
                bounds: None,
                events,
            };
            if !models.is_empty() && !sink(models, events) {
                return Ok(true);
            }
            *last = Some(newest);
            if changes.len() < BATCH as usize {
                break;
            }
        }
        if let Some(seq) = *last {
            team.note_in_step(seq);
        }
        tokio::select! {
            _ = stop.wait() => return Ok(true),
            seq = listener.next() => {
                if seq.is_none() {
                    return Ok(false);
                }
            }
        }
    }
}
