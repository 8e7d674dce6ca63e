//! The requests that ask the inbox side: `wait` for an entry, and `status`.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Context;
use super::answers::version_info_in;
use crate::messages::SettlerMsg;
use crate::names;
use crate::protocol::{ErrorCode, Response, StatusInfo, Waited, Waiting};
use crate::registry::RegistryError;

/// What the settler has waiting in the inbox (empty when it does not answer within
/// `within`: this only adds detail to answers).
pub(super) async fn waiting_list(ctx: &Context, within: Duration) -> Vec<Waiting> {
    let (tx, rx) = oneshot::channel();
    if ctx.settler.send(SettlerMsg::Status(tx)).is_err() {
        return Vec::new();
    }
    tokio::time::timeout(within, rx)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
}

/// The longest `wait` allowed.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// Answers `wait`: once `entry`, as it is on disk now, is a version of `name`.
pub(super) async fn wait(
    ctx: &Context,
    name: &str,
    entry: &str,
    timeout_ms: Option<u64>,
) -> Response {
    if let Err(e) = RegistryError::check_model_name(name) {
        return e.into();
    }
    if let Err(reason) = names::check_component(entry) {
        return Response::err(
            ErrorCode::InvalidName,
            format!("invalid inbox entry {entry:?}: it {reason}"),
        );
    }
    let cfg = ctx.config();
    let path = cfg.inbox.join(entry);
    // The entry's identity now: replaced by another writer's rename, what this wait is
    // about will never be registered.
    let identity = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        p.symlink_metadata().ok().map(|m| (m.dev(), m.ino()))
    };
    // Taken before the look: a replacement between the two is then seen as one.
    let placed = identity(&path);
    // Looking at a folder walks it (100k files take a while): off the async threads.
    let looked = {
        let (inbox, entry, follow) = (cfg.inbox.clone(), entry.to_string(), cfg.follow_symlinks);
        tokio::task::spawn_blocking(move || crate::inbox::look(&inbox, &entry, follow)).await
    };
    // What the entry is matters for the answer: one the daemon may not read (a file of
    // mode 000 in a folder `add` copied) is named with why, not "not an artifact".
    let looked = match looked {
        Ok(crate::inbox::Look::Refused(reason)) => {
            return Response::err(
                ErrorCode::Blocked,
                format!(
                    "{} cannot be registered: {reason}; nothing was registered",
                    path.display()
                ),
            );
        }
        Ok(look) => look.fingerprint(),
        Err(_) => None,
    };
    let Some(fingerprint) = looked else {
        return Response::err(
            ErrorCode::EntryNotFound,
            format!("{} is not an artifact in the inbox", path.display()),
        );
    };
    let timeout = timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(60))
        .min(MAX_WAIT);
    let deadline = Instant::now() + timeout;
    let highest_before = ctx
        .shared
        .catalog()
        .models
        .get(name)
        .map_or(0, |m| m.highest);
    // Either spelling of the sidecar (`add` writes under the one already there).
    let sidecars: Vec<String> = names::SIDECAR_SUFFIXES
        .iter()
        .map(|x| cfg.inbox.join(format!("{name}{x}")).display().to_string())
        .collect();
    let shown = path.display().to_string();
    // A full store (see ingest/commit.rs) is a problem on the store itself: a copy that
    // fails for it after this entry was placed answers the wait too.
    let store = cfg.store.display().to_string();
    // A problem recorded before the entry or its sidecar last changed belongs to an
    // earlier attempt (a fixed sidecar, a retried `register`): the group settles again
    // first, and only a problem recorded after that answers this wait.
    let changed_ns = std::iter::once(path.as_path())
        .chain(sidecars.iter().map(std::path::Path::new))
        .filter_map(|p| p.symlink_metadata().ok())
        .map(|m| {
            use std::os::unix::fs::MetadataExt;
            i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec())
        })
        .max()
        .unwrap_or(0);
    loop {
        let published = ctx.shared.published();
        let catalog = ctx.shared.catalog();
        if let Some(rec) = catalog
            .sources
            .get(entry)
            .filter(|r| r.fingerprint == fingerprint && r.model == name)
            && let Some(m) = catalog.models.get(name)
            && let Some(v) = rec.version.and_then(|n| m.find(n))
        {
            return Response::answer(&Waited {
                version: version_info_in(&cfg, name, v, m),
                created: v.number > highest_before,
            });
        }
        // Deleted while waiting: it will never be registered, so say so now rather than
        // at the deadline. (Checked after the catalog: an entry registered and then
        // removed has its answer above.)
        match identity(&path) {
            None => {
                return Response::err(
                    ErrorCode::EntryNotFound,
                    format!("{shown} was removed from the inbox before it was registered"),
                );
            }
            Some(now) if Some(now) != placed => {
                return Response::err(
                    ErrorCode::EntryNotFound,
                    format!(
                        "{shown} was replaced by another writer before it was registered; what this wait was for will not be stored"
                    ),
                );
            }
            Some(_) => {}
        }
        let (problems, ..) = ctx.board.snapshot();
        if let Some(p) = problems.iter().find(|p| {
            (sidecars.contains(&p.path) || p.path == shown || p.path == store)
                && p.recorded_ns > changed_ns
        }) {
            return Response::err(ErrorCode::Blocked, p.message.clone());
        }
        let now = Instant::now();
        if now >= deadline {
            return Response::err(
                ErrorCode::Timeout,
                format!(
                    "{shown} was not registered within {} ms (see `modelreg status`)",
                    timeout.as_millis()
                ),
            );
        }
        // Woken by each publication; the short tick notices problems (which publish
        // nothing) and the deadline.
        let tick = (deadline - now).min(Duration::from_millis(100));
        tokio::select! {
            _ = published => {}
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

/// Answers `status`.
pub(super) async fn status(ctx: &Context) -> Response {
    let mut waiting = waiting_list(ctx, Duration::from_secs(5)).await;
    // A file handed over by descriptor (`register`) is copied without ever waiting in
    // the inbox: its copy is shown as a registering entry too.
    for name in ctx.board.copying() {
        if !waiting.iter().any(|w| w.name == name) {
            // Named by the file handed over, since when its copy was accepted.
            let entries = ctx.board.handed_over(&name).into_iter().collect();
            let since_secs = ctx.board.copy_progress(&name).map_or(0.0, |p| p.secs);
            waiting.push(Waiting {
                name,
                entries,
                state: "registering".into(),
                since_secs,
                reason: Some("handed over by descriptor".into()),
                bytes_done: None,
                bytes_total: None,
                rate_bytes_per_sec: None,
                eta_secs: None,
            });
        }
    }
    for w in &mut waiting {
        if let Some(p) = ctx.board.copy_progress(&w.name) {
            w.bytes_done = Some(p.done);
            w.bytes_total = Some(p.total);
            w.rate_bytes_per_sec = p.rate();
            w.eta_secs = p.eta_secs();
        }
    }
    let catalog = ctx.shared.catalog();
    let cfg = ctx.config();
    let (problems, recent_errors, registered, watch) = ctx.board.snapshot();
    let last = ctx.shared.source().map_or(0, |l| l.last());
    let mut deliveries = ctx.board.deliveries();
    for d in &mut deliveries {
        d.pending = last.saturating_sub(d.delivered);
    }
    Response::answer(&StatusInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        uptime_secs: ctx.started.elapsed().as_secs_f64(),
        root: cfg.root.display().to_string(),
        config: cfg.source.to_string(),
        inbox: cfg.inbox.display().to_string(),
        store: Some(cfg.store.display().to_string()),
        watch,
        http: ctx.board.http(),
        settle_secs: cfg.settle.as_secs_f64(),
        models: catalog.models.len(),
        versions: catalog.version_count(),
        registered_since_start: registered,
        dedup_saved_bytes: ctx.board.dedup_saved(),
        waiting,
        problems,
        recent_errors,
        recent_changes: ctx.board.events(),
        deliveries,
        hf_cache_checking: ctx.board.hf_cache_checking(),
        team: ctx.team.as_ref().map(|t| t.status()),
    })
}
