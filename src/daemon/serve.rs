//! `modelreg serve` as a process: settings, logging, signals and the runtime around `run`.
//!
//! [`run`](super::run) itself installs no signal handlers and no logger, so tests can run
//! several daemons in one process and send them [`Control`] messages directly; this is
//! what the binary wraps around it.

use std::io::IsTerminal;
use std::path::Path;

use tokio::sync::mpsc;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

use super::{Control, OnReload};
use crate::config::Config;
use crate::error::{Error, Result};

/// Loads the settings from `root` (or `config_path`), sets up logging and signals, and
/// runs the daemon until SIGTERM or SIGINT. A failure after logging is set up is also
/// logged; the caller prints the returned error for the terminal.
pub fn serve(root: &Path, config_path: Option<&Path>) -> Result<()> {
    let config = Config::load(root, config_path)?;
    let reload_filter = init_logging(&config);
    let (tx, rx) = mpsc::unbounded_channel();
    forward_signals(tx)
        .map_err(|e| Error::Other(format!("cannot install signal handlers: {e}")))?;
    // Idle blocking threads park instead of exiting after tokio's default 10 s, so an
    // idle daemon does not wake up at all.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(std::time::Duration::from_secs(24 * 3600))
        .build()
        .map_err(|e| Error::Other(format!("cannot start the async runtime: {e}")))?;
    let on_reload: OnReload = Box::new(move |c: &Config| reload_filter(c));
    runtime
        .block_on(super::run(config, rx, Some(on_reload)))
        .inspect_err(|e| tracing::error!("{e}"))
}

/// Logs to stderr: colours only on a terminal; without timestamps under systemd, whose
/// journal adds its own. RUST_LOG, when set, wins over the settings' `log_level`. Returns
/// what applies a reloaded `log_level`.
fn init_logging(config: &Config) -> impl Fn(&Config) + Send + Sync + 'static {
    let from_env = std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty());
    let filter = move |level: &str| {
        from_env
            .as_deref()
            .and_then(|s| EnvFilter::try_new(s).ok())
            .unwrap_or_else(|| EnvFilter::new(level))
    };
    let (filter_layer, handle) = tracing_subscriber::reload::Layer::new(filter(&config.log_level));
    let ansi = std::io::stderr().is_terminal();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    let registry = tracing_subscriber::registry().with(filter_layer);
    if config.log_json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_target(false),
            )
            .init();
    } else if std::env::var_os("JOURNAL_STREAM").is_some() {
        registry.with(fmt.without_time()).init();
    } else {
        registry.with(fmt).init();
    }
    move |c: &Config| {
        let _ = handle.reload(filter(&c.log_level));
    }
}

/// SIGTERM and SIGINT stop the daemon, SIGHUP reloads; a plain thread turns them into
/// [`Control`] messages.
fn forward_signals(tx: mpsc::UnboundedSender<Control>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let c = if sig == SIGHUP {
                    Control::Reload
                } else {
                    Control::Shutdown
                };
                if sig != SIGHUP {
                    tracing::info!(
                        "received {}",
                        if sig == SIGTERM { "SIGTERM" } else { "SIGINT" }
                    );
                }
                if tx.send(c).is_err() {
                    break;
                }
            }
        })?;
    Ok(())
}
