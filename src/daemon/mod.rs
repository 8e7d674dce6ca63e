//! The daemon: `run` owns start-up and shutdown order; `serve` wraps it in a process.
//!
//! Start: take the root's lock (an flock on an owner-only file in the root), load
//! registry.yaml (refusing one that does not parse), bring the store in line with it
//! after a crash, bind the socket (and the HTTP listener, when on), start watching, then reconcile the inbox. Shutdown (on
//! [`Control::Shutdown`]): stop watching, let the registrar roll back the copies under
//! way and commit what finished, stop serving, remove the socket. `run` installs no
//! signal handlers: [`serve`] (the binary's `modelreg serve`) maps signals to [`Control`]
//! messages, and tests send them directly.

mod lock;
mod readiness;
mod reload;
mod serve;
mod startup;
mod workers;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{Config, Settings};
use crate::error::Result;
use crate::layout::Layout;
use crate::server::Context;
use crate::status::StatusBoard;

pub use lock::{LOCK_FILE, RootLock};
pub use serve::serve;
pub use startup::{Loaded, load_catalog};

/// What the binary (or a test) tells a running daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop cleanly (SIGTERM, SIGINT).
    Shutdown,
    /// Re-read the settings (SIGHUP).
    Reload,
}

/// Called after a successful reload with the new settings (the binary adjusts logging).
pub type OnReload = Box<dyn Fn(&Config) + Send + Sync>;

/// Runs the daemon until a [`Control::Shutdown`] arrives (or `control` closes).
pub async fn run(
    config: Config,
    control: mpsc::UnboundedReceiver<Control>,
    on_reload: Option<OnReload>,
) -> Result<()> {
    let started = Instant::now();
    // Team settings this host cannot use (a blob folder not there or not writable, a
    // catalog asking for TLS) stop the start before anything is bound or made.
    if let Some(team) = &config.team {
        crate::team::check_settings(&config, team)?;
    }
    // Bound (and its certificate read) before anything is made in the root: a port in
    // use or a bad certificate stops the start with nothing left behind.
    let http = crate::http::bind(&config).await?;
    let _lock = startup::lock_root(&config)?;
    let (loaded, took) = startup::load_and_recover(&config)?;
    // Team mode: the team's log is the shared catalog's; this host's own `events/` is
    // left as it is (local mode's, should the host leave the team).
    let events = match config.team {
        Some(_) => None,
        None => Some(startup::open_events(&config, &loaded)?),
    };
    crate::deliver::check(&config)?;
    // A damaged cursor file stops the start, as registry.yaml does: no endpoint restarts
    // from a guess.
    let cursors = crate::deliver::Cursors::load(&startup::cursors_path(&config))?;
    // The replayed records were kept for that alone: not for the daemon's life.
    drop(loaded.replayed);
    let catalog = loaded.catalog;
    let listener = startup::listen(&config)?;
    startup::log_started(&config, &catalog, &listener);

    let settings = Arc::new(Settings::new(config));
    let config = settings.current();
    let board = Arc::new(StatusBoard::default());
    // Known before the socket answers: a client that finds the daemon up (a ping) finds
    // the HTTP address in `status` too, not only once the listener's task has started.
    if let Some(bound) = &http {
        board.set_http(bound.url());
    }
    // The root, inbox and store as they are now: replaced or deleted ones are noticed
    // from here on (see `layout`).
    let layout = Arc::new(Layout::pin(&config));
    if let Some(why) = layout.refused_at_start() {
        board.set_serious_problem(&config.inbox.display().to_string(), why);
    }
    // Only a log line otherwise: shown in `status` for this run of the daemon.
    if let Some((path, what)) = &loaded.dropped {
        let what = format!("{what} (shown until the daemon is restarted)");
        board.set_problem(&path.display().to_string(), &what);
    }
    startup::finish_removals(&config, &catalog, &board);
    tracing::info!(loaded = ?took.loaded, recovered = ?took.recovered, "catalog loaded, store recovered");
    startup::check_store_in_background(&config, &catalog, &board);

    let journal = (loaded.journal, loaded.written);
    let workers = workers::Workers::start(
        settings,
        (catalog, journal),
        events,
        board,
        layout,
        listener.socket,
        started,
    )?;
    let source =
        (workers.ctx.shared.source().cloned()).expect("the daemon's readers have a source");
    let deliveries = crate::deliver::start(
        workers.ctx.settings.clone(),
        source,
        workers.ctx.board.clone(),
        cursors,
    )?;
    // Kept for SIGHUP, which reads a renewed certificate into it.
    let certificate = http.as_ref().and_then(|b| b.certificate());
    let http = http.map(|bound| {
        let state = crate::http::HttpState {
            ctx: workers.ctx.clone(),
            stop: workers.stop.clone(),
            metrics: Default::default(),
        };
        crate::http::start(bound, state)
    });
    readiness::announce(&workers.ctx, listener.path, &workers.stop).await?;
    serve_until_shutdown(
        control,
        &workers.ctx,
        on_reload.as_ref(),
        certificate.as_ref(),
    )
    .await;

    crate::systemd::stopping();
    tracing::info!("shutting down");
    workers.stop(listener.inherited).await;
    // Told with the workers; its requests under way had until now, and at most
    // `http::GRACE`, to finish.
    if let Some(h) = http {
        let _ = h.await;
    }
    // After the registrar's last commit: its events are delivered too, when quick.
    deliveries.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// Answers [`Control`] messages until told to stop: a reload tells systemd it is
/// reloading, re-reads the settings and the HTTPS certificate, then tells systemd it is
/// ready again with a fresh status line.
async fn serve_until_shutdown(
    mut control: mpsc::UnboundedReceiver<Control>,
    ctx: &Context,
    on_reload: Option<&OnReload>,
    certificate: Option<&crate::http::Certificate>,
) {
    // A quiet registry begins no segment: its old events go by this clock too.
    let mut compaction = tokio::time::interval(reload::COMPACT_EVERY);
    compaction.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let c = tokio::select! {
            c = control.recv() => c,
            _ = compaction.tick() => {
                reload::compact_events(ctx).await;
                continue;
            }
        };
        let Some(c) = c else { break };
        match c {
            Control::Shutdown => break,
            Control::Reload => {
                crate::systemd::reloading();
                reload::reload(ctx, on_reload).await;
                // New retention values apply now, not at the next segment.
                reload::compact_events(ctx).await;
                if let Some(c) = certificate {
                    reload::reload_certificate(ctx, c).await;
                }
                crate::systemd::ready(&readiness::status_line(ctx));
            }
        }
    }
}
