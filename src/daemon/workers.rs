//! The daemon's workers (watcher, registrar, settler, server), started together, stopped in order.
//!
//! The settler runs on a thread of its own.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::reload::follow_settle;
use crate::config::{Config, Settings};
use crate::error::{Error, Result};
use crate::ingest::{Registrar, Shared};
use crate::layout::Layout;
use crate::registry::{Catalog, persist};
use crate::server::{self, Context};
use crate::shutdown;
use crate::status::StatusBoard;
use crate::watcher::{self, FsEvent, Overflow, Settler, Watching};

/// The running workers, and what stops them.
pub(super) struct Workers {
    /// What request handlers, reloads and systemd reports read.
    pub(super) ctx: Arc<Context>,
    /// Told to every task at shutdown; a clone lets a side task stop with them.
    pub(super) stop: shutdown::Shutdown,
    trigger: shutdown::Trigger,
    watching: Option<Watching>,
    settler: JoinHandle<()>,
    registrar: JoinHandle<()>,
    server: JoinHandle<()>,
}

impl Workers {
    /// Starts watching the inbox, then the registrar, the settler (which scans the inbox
    /// once before its loop) and the server on `listener`.
    pub(super) fn start(
        settings: Arc<Settings>,
        (catalog, (journal, written)): (Catalog, (persist::Journal, u64)),
        events: Option<Arc<crate::events::Log>>,
        board: Arc<StatusBoard>,
        layout: Arc<Layout>,
        listener: tokio::net::UnixListener,
        started: Instant,
    ) -> Result<Workers> {
        let config = settings.current();
        let team = match &config.team {
            Some(t) => Some(Arc::new(crate::team::Team::open(&config, t).map_err(
                |e| Error::Config {
                    path: config.source.to_string(),
                    key: "catalog/blobs".into(),
                    reason: e,
                },
            )?)),
            None => None,
        };
        // Team mode: readers take the team's log (the registrar logs nothing of its own).
        let source = match (&team, events) {
            (Some(team), _) => crate::events::Source::Remote(team.events().clone()),
            (None, Some(log)) => crate::events::Source::Local(log),
            (None, None) => {
                return Err(Error::Other("no event log was opened (local mode)".into()));
            }
        };
        let shared = Arc::new(Shared::with_source(catalog.clone(), source));
        let (trigger, stop) = shutdown::channel();
        let (reg_tx, reg_rx) = mpsc::unbounded_channel();
        let (settler_tx, settler_rx) = mpsc::unbounded_channel();
        let (fs_tx, fs_rx) = mpsc::channel(watcher::EVENT_QUEUE);
        let overflow = Arc::new(Overflow::default());

        // Watch before the first scan, so nothing written in between is missed.
        let watching = watch_inbox(&config, &layout, &board, fs_tx, overflow.clone())?;

        // Links (latest, best, aliases) are brought in line at start: settings may have
        // changed.
        let _ = reg_tx.send(crate::ingest::RegistrarMsg::RefreshLinks);
        // That first commit checks the Hugging Face view of every model in the background:
        // `status` says so from the first answer, not only once the registrar got to it.
        if config.hf_cache {
            board.set_hf_cache_checking(Some(catalog.models.len()));
        }
        let mut registrar = Registrar::new(
            settings.clone(),
            catalog,
            shared.clone(),
            board.clone(),
            settler_tx.clone(),
            reg_tx.clone(),
        );
        registrar.set_layout(layout.clone());
        registrar.set_journal(journal, written);
        if let Some(team) = &team {
            registrar.set_team(team.clone());
            let reg = reg_tx.clone();
            tokio::spawn(crate::team::follow(
                team.clone(),
                board.clone(),
                move |models, events| {
                    reg.send(crate::ingest::RegistrarMsg::Remote(models, events))
                        .is_ok()
                },
                stop.clone(),
            ));
            tokio::spawn(crate::team::collect_orphans(
                team.clone(),
                board.clone(),
                stop.clone(),
            ));
            tracing::info!(host = %team.host, "team mode: {}, {}", team.catalog_engine(), team.blobs_engine());
        }
        let registrar = tokio::spawn(registrar.run(reg_rx, stop.clone()));

        let mut settler = Settler::new(
            config.inbox.clone(),
            config.settle,
            config.follow_symlinks,
            board.clone(),
            reg_tx.clone(),
        );
        settler.track_writes(watching.as_ref().is_none_or(|w| w.reports_close));
        settler.set_layout(layout);
        settler.rescan(false);
        let settler = on_own_thread(
            "settler",
            settler.run(
                fs_rx,
                settler_rx,
                overflow,
                config.reconcile_interval,
                stop.clone(),
            ),
        )
        .map_err(|e| Error::Other(format!("cannot start the settler's thread: {e}")))?;
        tokio::spawn(follow_settle(
            settings.subscribe(),
            settler_tx.clone(),
            stop.clone(),
        ));

        // A tokens file that does not parse stops the start, as registry.yaml does: it
        // is never overwritten, and no token it holds is silently dropped.
        let tokens = crate::tokens::Tokens::load(&config.root.join(crate::tokens::TOKENS_FILE))?;
        let ctx = Arc::new(Context {
            tokens: Arc::new(tokens),
            shared,
            settings,
            board,
            settler: settler_tx,
            registrar: reg_tx,
            started,
            team,
        });
        let server = tokio::spawn(server::serve(listener, ctx.clone(), stop.clone()));
        Ok(Workers {
            ctx,
            stop,
            trigger,
            watching,
            settler,
            registrar,
            server,
        })
    }

    /// Stops watching, tells every task to stop (the registrar rolls back the copies under
    /// way and commits what finished) and waits for them; then leaves a start-up cache of
    /// the final catalog and removes the socket unless systemd handed it over.
    pub(super) async fn stop(self, inherited: bool) {
        drop(self.watching);
        self.trigger.trigger();
        let _ = self.settler.await;
        let _ = self.registrar.await;
        let _ = self.server.await;
        let ctx = self.ctx;
        // Leave a start-up cache of the final catalog for the next start.
        let registry = ctx.config().registry.clone();
        let last = ctx.shared.catalog();
        let t = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || persist::write_cache(&registry, &last)).await {
            Ok(Ok(())) => tracing::debug!(took = ?t.elapsed(), "start-up cache written"),
            Ok(Err(e)) => tracing::warn!("start-up cache not written: {e}"),
            Err(e) => tracing::warn!("start-up cache not written: {e}"),
        }
        // An inherited socket belongs to systemd, which keeps it for the next start.
        let socket = ctx.config().socket.clone();
        if !inherited
            && let Err(e) = std::fs::remove_file(&socket)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("remove {}: {e}", socket.display());
        }
    }
}

/// Starts watching the inbox. A refused inbox is not watched at all: what it leads to is
/// not ours to look at.
fn watch_inbox(
    config: &Config,
    layout: &Layout,
    board: &StatusBoard,
    events: mpsc::Sender<FsEvent>,
    overflow: Arc<Overflow>,
) -> Result<Option<Watching>> {
    if layout.refused_at_start().is_some() {
        board.set_watch("nothing (the inbox was refused; see problems)".into());
        return Ok(None);
    }
    let w = watcher::start(
        &config.inbox,
        config.watch,
        config.poll_interval,
        events,
        overflow,
    )
    .map_err(Error::Other)?;
    board.set_watch(w.description.clone());
    tracing::info!(inbox = %config.inbox.display(), "watching with {}", w.description);
    Ok(Some(w))
}

/// Runs `task` on a thread of its own (a single-threaded runtime). The settler's every
/// step looks at the file system, and a rescan walks whole folders: on the shared runtime
/// that would hold up the threads answering the socket (walking a folder of 100k files
/// there, as `wait` did, took `ping` from 0.1 ms to half a second).
fn on_own_thread<F>(name: &str, task: F) -> std::io::Result<tokio::task::JoinHandle<()>>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            rt.block_on(task);
            let _ = done.send(());
        })?;
    Ok(tokio::spawn(async move {
        let _ = finished.await;
    }))
}
