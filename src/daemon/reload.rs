//! SIGHUP: the settings re-read and published, and what needs a restart reported; the
//! HTTPS certificate read again (certbot renews it in place, then sends SIGHUP).
//!
//! Start-up settings keep their running value; the settle period is handed to the
//! settler, which keeps its own copy.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::OnReload;
use crate::config::{Config, ConfigSource};
use crate::messages::SettlerMsg;
use crate::server::Context;
use crate::shutdown;

/// Re-reads the settings from where they came from and publishes them: every task reads
/// the new values at its next use. Start-up settings keep their running value
/// ([`Config::reloaded`]), and the log and `status` say which changed and need a restart.
pub(super) async fn reload(ctx: &Context, on_reload: Option<&OnReload>) {
    let old = ctx.config();
    let explicit = match &old.source {
        ConfigSource::File(p) => Some(p.clone()),
        ConfigSource::Embedded => None,
    };
    // Reading and parsing a file: off the async threads.
    let root = old.root.clone();
    let loaded =
        tokio::task::spawn_blocking(move || Config::load(&root, explicit.as_deref())).await;
    let new = match loaded.map_err(|e| e.to_string()) {
        Ok(Ok(c)) => match crate::deliver::check(&c) {
            Ok(()) => c,
            Err(e) => return reload_failed(ctx, e.to_string()),
        },
        Ok(Err(e)) => return reload_failed(ctx, e.to_string()),
        Err(e) => return reload_failed(ctx, e),
    };
    let (running, needs_restart) = old.reloaded(new);
    if let Some(f) = on_reload {
        f(&running);
    }
    let source = running.source.to_string();
    ctx.settings.publish(running);
    if needs_restart.is_empty() {
        ctx.board.clear_problem("reload");
        tracing::info!(config = %source, "settings reloaded");
    } else {
        // A WARN line in the log and a lasting problem in `status` (set_problem does both).
        ctx.board.set_problem(
            "reload",
            &format!(
                "settings reloaded, but {} needs a restart to change (the running value is kept)",
                needs_restart.join(", ")
            ),
        );
    }
}

/// Keeps the running settings, and says why in the log and in `status`.
fn reload_failed(ctx: &Context, why: String) {
    ctx.board.error(format!(
        "reload failed, keeping the current settings: {why}"
    ));
}

/// The status problem a certificate that could not be reloaded is shown under.
const TLS_PROBLEM: &str = "http.tls";

/// Reads the HTTPS certificate and key of the running settings again (also when the
/// settings file itself could not be read: a renewed certificate does not wait for a
/// fixed file) and serves them to new connections; connections open keep theirs. A
/// certificate that cannot be used leaves the one in use, and is a problem in the log
/// and in `status` (the file, the setting and the reason) until a reload succeeds.
pub(super) async fn reload_certificate(ctx: &Context, certificate: &crate::http::Certificate) {
    let config = ctx.config();
    let Some(tls) = config.http.as_ref().and_then(|h| h.tls.clone()) else {
        return;
    };
    let c = certificate.clone();
    let read = config.clone();
    // Reading files and parsing keys: off the async threads.
    let r = tokio::task::spawn_blocking(move || c.reload(&read))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    // The start's wording ("cannot serve HTTPS: ...") is wrong here: HTTPS goes on.
    let r = r.map_err(|why| match why.strip_prefix("cannot serve HTTPS: ") {
        Some(rest) => rest.to_string(),
        None => why,
    });
    match r {
        Ok(()) => {
            ctx.board.clear_problem(TLS_PROBLEM);
            tracing::info!(
                cert = %config.root.join(&tls.cert).display(),
                "HTTPS certificate reloaded: new connections get it"
            );
        }
        Err(why) => ctx.board.set_problem(
            TLS_PROBLEM,
            &format!(
                "the HTTPS certificate was not reloaded; the one in use is still served: {why}"
            ),
        ),
    }
}

/// Hands the published settle period to the settler, which keeps its own copy.
pub(super) async fn follow_settle(
    mut settings: tokio::sync::watch::Receiver<Arc<Config>>,
    settler: mpsc::UnboundedSender<SettlerMsg>,
    stop: shutdown::Shutdown,
) {
    let mut settle = settings.borrow_and_update().settle;
    loop {
        tokio::select! {
            _ = stop.wait() => break,
            r = settings.changed() => if r.is_err() { break },
        }
        let now = settings.borrow_and_update().settle;
        if now != settle {
            settle = now;
            let _ = settler.send(SettlerMsg::SetSettle(settle));
        }
    }
}

/// How often the event log's retention is applied besides start, reloads and new
/// segments (cheap: a look at a few file times and sizes).
pub(super) const COMPACT_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Drops the event log's segments its retention (`events:`) no longer keeps; each one
/// dropped is logged (INFO).
pub(super) async fn compact_events(ctx: &Context) {
    let Some(log) = ctx.shared.events().cloned() else {
        return;
    };
    let retention = crate::events::Retention::of(&ctx.config().events);
    // Deleting files: off the async threads.
    let _ = tokio::task::spawn_blocking(move || log.compact(&retention)).await;
}
