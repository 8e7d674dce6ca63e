//! The registrar: the one task that owns the catalog and every change to it.
//!
//! For each settled group it decides, from the catalog's fingerprints, what changed; the
//! copying and hashing run as a job on the blocking pool (a few at once). Finished jobs
//! are applied in batches: one registry.yaml write covers every version that finished
//! while the previous write was under way (group commit). Only after that write are the
//! staging folders renamed into place and the new snapshot published to readers, so a
//! version is never visible before it is durable.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::{Semaphore, mpsc};

use crate::config::Config;
use crate::messages::{ChangeResult, Outcome, SettlerMsg};
use crate::registry::Catalog;
use crate::shutdown::Shutdown;
use crate::status::StatusBoard;
use crate::store::Staged;

mod changes;
mod commit;
mod copy;
mod events;
mod facts;
mod handover;
mod index;
mod plan;
mod snapshot;
mod team;
mod writeback;

pub use changes::report_damaged;
pub use commit::link_targets;
pub use copy::{JobResult, NewVersion, SidecarRead};
pub use handover::Copied;

/// How many copy jobs run at once.
const JOBS: usize = 16;

/// Messages to the registrar, whose copy jobs report a [`JobResult`].
pub type RegistrarMsg = crate::messages::RegistrarMsg<JobResult>;

/// The snapshot readers query. Replaced whole after each durable catalog write.
#[derive(Debug, Default)]
pub struct Shared {
    catalog: RwLock<Arc<Catalog>>,
    published: tokio::sync::Notify,
    /// The event log the registrar appends each commit's events to (none in unit tests,
    /// and in team mode, whose log is the shared catalog's).
    events: Option<Arc<crate::events::Log>>,
    /// Where readers take events from: `events`, or in team mode the team's log.
    source: Option<crate::events::Source>,
}

impl Shared {
    /// A new holder of `catalog`.
    pub fn new(catalog: Catalog) -> Self {
        Shared {
            catalog: RwLock::new(Arc::new(catalog)),
            published: tokio::sync::Notify::new(),
            events: None,
            source: None,
        }
    }

    /// A new holder of `catalog` whose commits append their events to `log`.
    pub fn with_events(catalog: Catalog, log: Arc<crate::events::Log>) -> Self {
        Shared {
            source: Some(crate::events::Source::Local(log.clone())),
            events: Some(log),
            ..Shared::new(catalog)
        }
    }

    /// A new holder of `catalog` whose readers take events from `source` (team mode: the
    /// team's log; the registrar then logs none of its own).
    pub fn with_source(catalog: Catalog, source: crate::events::Source) -> Self {
        Shared {
            events: match &source {
                crate::events::Source::Local(log) => Some(log.clone()),
                crate::events::Source::Remote(_) => None,
            },
            source: Some(source),
            ..Shared::new(catalog)
        }
    }

    /// Where readers (subscriptions, SSE, hooks, webhooks) take events from. `None` only
    /// in unit tests.
    pub fn source(&self) -> Option<&crate::events::Source> {
        self.source.as_ref()
    }

    /// This host's own event log, which the registrar writes (see [`crate::events`]).
    /// `None` in unit tests and in team mode (readers use [`Self::source`]).
    pub fn events(&self) -> Option<&Arc<crate::events::Log>> {
        self.events.as_ref()
    }

    /// The current catalog; cheap (an `Arc` clone), never blocks on a write.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Publishes `c`; returns the catalog it replaces.
    fn publish(&self, c: Arc<Catalog>) -> Arc<Catalog> {
        let previous = std::mem::replace(
            &mut *self.catalog.write().unwrap_or_else(|p| p.into_inner()),
            c,
        );
        self.published.notify_waiters();
        previous
    }

    /// Resolves at the next publication of the catalog. Create the future before checking
    /// the catalog, so that a publication in between is not missed.
    pub fn published(&self) -> tokio::sync::futures::Notified<'_> {
        self.published.notified()
    }
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
    /// The journal and registry.yaml's coalesced rewriting.
    writeback: writeback::Writeback,
    /// Models with a copy job under way: one at a time per model, so that each number
    /// is given once.
    busy: BTreeSet<String>,
    /// What waits for a busy model's job to end, in arrival order.
    deferred: std::collections::BTreeMap<String, std::collections::VecDeque<RegistrarMsg>>,
    /// The Hugging Face cache view, updated after each commit.
    hf: Arc<crate::hfcache::View>,
    /// Per model, what jobs need and would otherwise rebuild each time (dedup table,
    /// the store's highest number).
    index: index::Index,
    /// The snapshot published before the current one, reused by the next commit.
    spare: snapshot::Spare,
    /// Team mode's engines (docs/team.md); `None`: local mode.
    team: Option<Arc<crate::team::Team>>,
    /// Team mode: events of changes merged here, shown once that merge is published
    /// (and, for a registration of this host's, once its job committed it).
    team_events: std::collections::VecDeque<crate::events::Event>,
    /// Team mode: the event log's bounds from the first snapshot, set with its merge.
    team_bounds: Option<(u64, u64)>,
}

#[derive(Debug, Default)]
struct Batch {
    dirty: bool,
    staged: Vec<Staged>,
    outcomes: Vec<(String, Outcome)>,
    /// The versions added: their bytes and when their copy job began (for `/metrics`'
    /// registration durations, which end when the commit is durable).
    registered: Vec<(u64, std::time::Instant)>,
    /// Models whose latest, best or aliases may have moved.
    touched: BTreeSet<String>,
    /// Versions (name, number) to delete once the catalog no longer needs them.
    deletions: Vec<(String, u32)>,
    /// What the journal record of this batch is built from.
    changed: crate::registry::Touched,
    replies: Vec<(tokio::sync::oneshot::Sender<ChangeResult>, ChangeResult)>,
    refresh_all: bool,
    /// `compact` asked for registry.yaml to be written whole with this batch.
    compact: bool,
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
        let hf = Arc::new(crate::hfcache::View::new(&config, board.clone()));
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
            writeback: writeback::Writeback::default(),
            busy: BTreeSet::new(),
            deferred: Default::default(),
            hf,
            index: index::Index::default(),
            spare: snapshot::Spare::default(),
            team: None,
            team_events: Default::default(),
            team_bounds: None,
        }
    }

    /// Team mode: new versions are recorded in `team`'s engines before they are
    /// committed here, alias changes go to its catalog first, and what other hosts
    /// record is merged in (`RegistrarMsg::Remote`).
    pub fn set_team(&mut self, team: Arc<crate::team::Team>) {
        self.team = Some(team);
    }

    /// Makes commits durable in `journal` (opened at start, after its replay) instead of
    /// writing registry.yaml whole each time; registry.yaml includes records up to
    /// `written`. Without a journal every commit writes registry.yaml.
    pub fn set_journal(&mut self, journal: crate::registry::persist::Journal, written: u64) {
        self.writeback = writeback::Writeback::new(journal, written, &self.config.registry);
        self.writeback.schedule(
            self.catalog.journal_seq,
            self.config.registry_write_interval,
            false,
        );
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
        // What a crash or a shutdown left in the trash goes first (listed now, before any
        // removal of this run adds to it).
        self.empty_trash(crate::store::trash::leftovers(&self.config.store));
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
                ev = self.writeback.next(), if self.writeback.waiting() => {
                    self.on_writeback(ev).await;
                    continue;
                }
                m = rx.recv() => m,
            };
            let Some(msg) = msg else { break };
            self.handle_any(msg, stopping).await;
            // Group commit: take everything already waiting before writing once.
            while let Ok(m) = rx.try_recv() {
                self.handle_any(m, stopping).await;
            }
            self.commit().await;
        }
        self.commit().await;
        self.write_back_at_shutdown().await;
    }

    /// Takes the newly published settings; when what `best` means changed, every model's
    /// links (and the Hugging Face cache view) are brought in line at the next commit.
    fn settings_changed(&mut self) {
        let new = self.settings.borrow_and_update().clone();
        if new.best != self.config.best || new.hf_cache != self.config.hf_cache {
            self.batch.refresh_all = true;
        }
        if new.registry_write_interval < self.config.registry_write_interval {
            self.writeback.sooner(new.registry_write_interval);
        }
        self.config = new;
    }

    /// [`Registrar::handle`], except that in team mode a client's change is written to
    /// the shared catalog first (one round trip, awaited here).
    async fn handle_any(&mut self, msg: RegistrarMsg, stopping: bool) {
        match (msg, self.team.clone()) {
            (RegistrarMsg::Change { change, uid, reply }, Some(team)) => {
                let result = if stopping {
                    // Not made on this host alone, and no time left to share it.
                    Some(Err(crate::registry::RegistryError::NotSaved {
                        reason: "the daemon is shutting down".into(),
                    }))
                } else {
                    self.team_change(team, change, uid).await
                };
                let change = match result {
                    Some(result) => return self.batch.replies.push((reply, result)),
                    // Not a change of the shared catalog (`compact`): made here.
                    None => crate::messages::Change::Compact,
                };
                self.handle(RegistrarMsg::Change { change, uid, reply }, stopping);
            }
            (msg, _) => self.handle(msg, stopping),
        }
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
                let changed = &mut self.batch.changed;
                let before = self.catalog.sources.len();
                self.catalog.sources.retain(|entry, _| {
                    let keep = present.contains(entry);
                    if !keep {
                        changed.source(entry);
                    }
                    keep
                });
                if self.catalog.sources.len() != before {
                    self.batch.dirty = true;
                }
            }
            RegistrarMsg::JobDone {
                result: JobResult::HandedOver(c),
                ..
            } => self.handed_over(*c, stopping),
            RegistrarMsg::JobDone { name, result } => {
                self.in_flight -= 1;
                self.busy.remove(&name);
                if let (Some(team), JobResult::Done { new, .. }) = (&self.team, &result) {
                    for nv in new {
                        team.applied(&name, nv.number);
                    }
                }
                self.apply(name.clone(), result);
                self.run_deferred(&name, stopping);
            }
            RegistrarMsg::Handover(h) if stopping => {
                let _ = h.reply.send(Err(crate::protocol::ErrorBody {
                    code: crate::protocol::ErrorCode::Internal,
                    message: "the daemon is shutting down; nothing kept".into(),
                }));
            }
            RegistrarMsg::Handover(h) => self.hand_over(*h),
            RegistrarMsg::Change { change, uid, reply } => {
                let result = self.change(change, uid);
                // A removed version's files may be what a dedup table links to.
                for (name, _) in &self.batch.deletions {
                    self.index.removed(name);
                }
                self.batch.replies.push((reply, result));
            }
            RegistrarMsg::RefreshLinks => self.batch.refresh_all = true,
            RegistrarMsg::Remote(models, events) => {
                self.merge_remote(models);
                if events.bounds.is_some() {
                    self.team_bounds = events.bounds;
                }
                self.team_events.extend(events.events);
            }
            RegistrarMsg::CheckRegistry => self.check_files(),
        }
    }
}
