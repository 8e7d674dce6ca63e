//! One handler per request: read the snapshot or hand the change to the registrar, call
//! the catalog rule, answer its typed result.

use std::time::Duration;

use tokio::sync::oneshot;

use super::Context;
use super::answers::version_info_in;
use super::wait::{status, wait, waiting_list};
use crate::config::{Config, Direction};
use crate::messages::Change;
use crate::protocol::{ErrorCode, History, Pong, Request, Response};
use crate::registry::{Catalog, RegistryError, Version, parse_version};

/// Answers one request; `peer_uid` is recorded with the changes it makes.
pub async fn dispatch(req: Request, ctx: &Context, peer_uid: Option<u32>) -> Response {
    let asked = match &req {
        Request::Versions { name, .. } | Request::Get { name, .. } | Request::History { name } => {
            Some(name.clone())
        }
        _ => None,
    };
    let mut r = dispatch_op(req, ctx, peer_uid).await;
    // A model that is only waiting or blocked in the inbox is not in the catalog yet:
    // say so, or "no model named" sends the user looking for a typo.
    if let (Some(name), Some(e)) = (asked, r.error.as_mut())
        && e.code == ErrorCode::ModelNotFound
        && let Some(w) = waiting_list(ctx, Duration::from_secs(1))
            .await
            .into_iter()
            .find(|w| w.name == name)
    {
        let why = w.reason.map(|r| format!(": {r}")).unwrap_or_default();
        e.message = format!(
            "{}; the inbox has {name:?} {}{why} (see `modelreg status`)",
            e.message, w.state
        );
    }
    r
}

/// [`dispatch`] without the inbox detail for a missing model.
async fn dispatch_op(req: Request, ctx: &Context, peer_uid: Option<u32>) -> Response {
    let change = |c: Result<Change, RegistryError>| async move {
        match c {
            Ok(c) => send_change(ctx, c, peer_uid).await,
            Err(e) => e.into(),
        }
    };
    match req {
        Request::Ping {} => Response::answer(&Pong {
            pong: true,
            version: env!("CARGO_PKG_VERSION").to_string(),
        }),
        search @ (Request::List { .. } | Request::Versions { .. }) => {
            super::search::answer(ctx, &search)
        }
        Request::Get {
            name,
            selector,
            metric,
            mode,
        } => get(ctx, name, selector, metric, mode).await,
        Request::Status {} => status(ctx).await,
        Request::Wait {
            name,
            entry,
            timeout_ms,
        } => wait(ctx, &name, &entry, timeout_ms).await,
        Request::History { name } => history(ctx, &name),
        // With its descriptor it is answered by the connection (server::register).
        Request::Register { .. } => {
            Response::err(ErrorCode::BadRequest, super::register::NO_DESCRIPTOR)
        }
        Request::AliasSet {
            name,
            alias,
            version,
        } => {
            // A new alias of 40 hex characters would read as a Hugging Face commit id
            // (the Hub routes and the cache view take such a revision as one), so it
            // could never be asked for there. Refused here, for new aliases only: one
            // already in registry.yaml still loads.
            let c = match looks_like_commit(&alias) {
                true => Err(RegistryError::InvalidAlias {
                    alias,
                    reason: "40 hexadecimal characters read as a commit id (Hugging Face revisions); choose another name".into(),
                }),
                false => parse_version(&version).map(|version| Change::AliasSet {
                    name,
                    alias,
                    version,
                }),
            };
            change(c).await
        }
        Request::AliasRemove { name, alias } => {
            change(Ok(Change::AliasRemove { name, alias })).await
        }
        Request::Rollback { name, alias } => change(Ok(Change::Rollback { name, alias })).await,
        Request::Deprecate {
            name,
            version,
            reason,
        } => {
            let c = parse_version(&version).map(|version| Change::Deprecate {
                name,
                version,
                reason,
            });
            change(c).await
        }
        Request::Rm {
            name,
            version,
            reason,
            force,
        } => {
            let c = parse_version(&version).map(|version| Change::Remove {
                name,
                version,
                reason,
                force,
            });
            change(c).await
        }
        Request::Gc { name, dry_run } => change(Ok(Change::Gc { name, dry_run })).await,
        Request::Verify { name } => verify(ctx, name).await,
        Request::Compact {} => change(Ok(Change::Compact)).await,
        Request::TokenCreate { name, scope } => super::tokens::create(ctx, name, &scope).await,
        Request::TokenList {} => super::tokens::list(ctx),
        Request::TokenRevoke { name } => super::tokens::revoke(ctx, name).await,
        // A stream: the connection hands it to `events::stream` before dispatch.
        Request::Events { .. } => Response::err(
            ErrorCode::BadRequest,
            "events is a stream: ask for it on the control socket (`modelreg events`)",
        ),
    }
}

/// 40 hexadecimal characters: what Hugging Face clients take for a commit id.
fn looks_like_commit(alias: &str) -> bool {
    alias.len() == 40 && alias.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Hands a change to the registrar and waits until it is durable.
async fn send_change(ctx: &Context, change: Change, uid: Option<u32>) -> Response {
    let name = match &change {
        Change::AliasSet { name, .. }
        | Change::AliasRemove { name, .. }
        | Change::Rollback { name, .. }
        | Change::Deprecate { name, .. }
        | Change::Remove { name, .. } => Some(name.as_str()),
        Change::Gc { name, .. } => name.as_deref(),
        Change::Compact => None,
    };
    if let Some(Err(e)) = name.map(RegistryError::check_model_name) {
        return e.into();
    }
    let (tx, rx) = oneshot::channel();
    let msg = crate::ingest::RegistrarMsg::Change {
        change,
        uid,
        reply: tx,
    };
    // The registrar ends only at shutdown: a closed channel means the change was not
    // made, which the client may retry after the restart (`shutting_down`, not `internal`).
    if ctx.registrar.send(msg).is_err() {
        return Response::err(ErrorCode::ShuttingDown, "the daemon is shutting down");
    }
    match tokio::time::timeout(crate::protocol::CHANGE_CONFIRM, rx).await {
        Ok(Ok(Ok(answer))) => Response::answer(&answer),
        Ok(Ok(Err(e))) => e.into(),
        Ok(Err(_)) => Response::err(
            ErrorCode::ShuttingDown,
            "the daemon is shutting down; the change was not made",
        ),
        Err(_) => Response::err(
            ErrorCode::Internal,
            format!(
                "the change was not confirmed within {} s (see the daemon's log)",
                crate::protocol::CHANGE_CONFIRM.as_secs()
            ),
        ),
    }
}

fn history(ctx: &Context, name: &str) -> Response {
    let catalog = ctx.shared.catalog();
    match catalog.model(name) {
        Ok(m) => Response::answer(&History {
            name: name.to_string(),
            aliases: m
                .aliases
                .iter()
                .map(|(a, n)| (a.clone(), format!("v{n}")))
                .collect(),
            history: m.alias_history.clone(),
        }),
        Err(e) => e.into(),
    }
}

/// Versions with at most this many files have them checked on the async thread: a few
/// `lstat`s of the local store cost less than a hand-off to the blocking pool (which
/// doubled `get`'s latency); more are checked on the blocking pool.
const INLINE_FILE_CHECKS: usize = 8;

async fn get(
    ctx: &Context,
    name: String,
    selector: Option<String>,
    metric: Option<String>,
    mode: Option<Direction>,
) -> Response {
    let (catalog, cfg) = (ctx.shared.catalog(), ctx.config());
    let found = catalog.model(&name).and_then(|m| {
        let best = (&cfg.best, metric.as_deref(), mode);
        m.select(&name, selector.as_deref(), best)
            .map(|(v, by)| (v.number, v.files.len(), by))
    });
    let (number, files, best_by) = match found {
        Ok(f) => f,
        Err(e) => return e.into(),
    };
    // Team mode: a version registered on another host has its files fetched here first
    // (each checked against its SHA-256), so the paths handed out are real.
    let mut catalog = catalog;
    if let Some(team) = &ctx.team
        && let Ok(v) = catalog
            .model(&name)
            .and_then(|m| m.stored_version(&name, number))
    {
        let fetched = team.fetch_version(&cfg.root, &cfg.store, &name, v).await;
        // Another host's `rm` merged while fetching: answered as a `get` of a removed
        // version is (when, why), and what the fetch put back is deleted.
        catalog = ctx.shared.catalog();
        if let Err(removed) = catalog
            .model(&name)
            .and_then(|m| m.stored_version(&name, number))
        {
            crate::team::discard_fetched(&cfg.store, &name, number).await;
            return removed.into();
        }
        if let Err(e) = fetched {
            ctx.board.error(format!("get {name} v{number}: {e}"));
            return Response::err(
                ErrorCode::Internal,
                format!(
                    "{name} v{number}: its files are not on this host and could not be fetched: {e}"
                ),
            );
        }
    }
    let answer = move || -> Result<_, RegistryError> {
        let m = catalog.model(&name)?;
        let v = m.stored_version(&name, number)?;
        check_files(&cfg, &name, v)?;
        let mut info = version_info_in(&cfg, &name, v, m);
        info.best_by = best_by;
        // Only `get` carries them: a `versions` answer of thousands would repeat them.
        info.directions = (v.metrics.iter())
            .map(|(k, _)| (k.clone(), cfg.best.direction_of(k)))
            .collect();
        Ok(info)
    };
    let r = if files > INLINE_FILE_CHECKS {
        // A version of many files: checking them is file-system work for the blocking pool.
        match tokio::task::spawn_blocking(answer).await {
            Ok(r) => r,
            Err(e) => return Response::err(ErrorCode::Internal, format!("get failed: {e}")),
        }
    } else {
        answer()
    };
    match r {
        Ok(info) => Response::answer(&info),
        Err(e) => e.into(),
    }
}

/// Never hand out a dead path: every stored file of `v` must still be there, and none may
/// lead through a link out of the store.
fn check_files(cfg: &Config, name: &str, v: &Version) -> Result<(), RegistryError> {
    let missing = |detail: String| RegistryError::FileMissing {
        name: name.to_string(),
        number: v.number,
        detail,
    };
    for f in &v.files {
        let p = cfg.root.join(&f.path);
        if let Err(e) = crate::store::check_no_link(&cfg.store, &p) {
            return Err(missing(format!("not answered: {e}")));
        }
        if std::fs::symlink_metadata(&p).is_err() {
            return Err(missing(format!(
                "stored file {} is missing (run `modelreg status`)",
                p.display()
            )));
        }
    }
    Ok(())
}

async fn verify(ctx: &Context, name: Option<String>) -> Response {
    let catalog: std::sync::Arc<Catalog> = ctx.shared.catalog();
    if let Some(Err(e)) = name.as_deref().map(|n| catalog.model(n).map(|_| ())) {
        return e.into();
    }
    let cfg = ctx.config();
    let only = name.clone();
    let team = ctx.team.is_some();
    let report = tokio::task::spawn_blocking(move || {
        crate::verify::verify(&cfg.root, &cfg.store, &catalog, only.as_deref(), team)
    })
    .await;
    match report {
        Ok(r) => {
            damaged_in_status(ctx, &r, name.as_deref());
            Response::answer(&r)
        }
        Err(e) => Response::err(ErrorCode::Internal, format!("verify failed: {e}")),
    }
}

/// What `verify` found of changed stored files lasts in `status`: each as one problem
/// naming every version sharing its inode; one it finds right again (every version
/// sharing it verified) is cleared.
fn damaged_in_status(ctx: &Context, r: &crate::verify::VerifyReport, only: Option<&str>) {
    use crate::verify::ProblemKind;
    let cfg = ctx.config();
    let catalog = ctx.shared.catalog();
    let bad: std::collections::BTreeSet<&str> = (r.problems.iter())
        .filter(|p| matches!(p.kind, ProblemKind::Modified | ProblemKind::Unreadable))
        .map(|p| p.path.as_str())
        .collect();
    for p in r.problems.iter().filter(|p| bad.contains(p.path.as_str())) {
        // "m v1: expected ..." -> "expected ...": the problem names the versions itself.
        let found = p
            .detail
            .split_once(": ")
            .map_or(p.detail.as_str(), |(_, d)| d);
        let reason = format!("`modelreg verify` found: {found}");
        let at = (cfg.root.as_path(), cfg.store.as_path());
        crate::ingest::report_damaged(&ctx.board, at, &catalog, p.path.as_ref(), &reason);
    }
    ctx.board
        .damaged_verified(|m| only.is_none_or(|o| o == m), |path| bad.contains(path));
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Settings;
    use crate::ingest::Shared;
    use crate::registry::StoredFile;
    use crate::registry::tests::{model, v};

    /// A context over `catalog` in a fresh root; the settler and registrar are gone, so
    /// only what the handlers decide themselves is answered.
    fn context(catalog: Catalog) -> (tempfile::TempDir, Context) {
        let root = tempfile::tempdir().unwrap();
        let cfg = Config::load(root.path(), None).unwrap();
        let ctx = Context {
            shared: Arc::new(Shared::new(catalog)),
            settings: Arc::new(Settings::new(cfg)),
            board: Arc::default(),
            settler: tokio::sync::mpsc::unbounded_channel().0,
            registrar: tokio::sync::mpsc::unbounded_channel().0,
            started: tokio::time::Instant::now(),
            tokens: Arc::new(
                crate::tokens::Tokens::load(&root.path().join(crate::tokens::TOKENS_FILE)).unwrap(),
            ),
            team: None,
        };
        (root, ctx)
    }

    /// Model `m` with v1, one file `models/m/v1/m.pt` of accuracy 0.7.
    fn catalog() -> Catalog {
        let mut v1 = v(1, &[("accuracy", 0.7)]);
        v1.files.push(StoredFile {
            path: "models/m/v1/m.pt".into(),
            sha256: "00".into(),
            size: 3,
        });
        let mut c = Catalog::default();
        c.models.insert("m".into(), Arc::new(model(vec![v1])));
        c
    }

    fn get(name: &str, selector: &str) -> Request {
        Request::Get {
            name: name.into(),
            selector: Some(selector.into()),
            metric: None,
            mode: None,
        }
    }

    fn error(r: Response) -> (ErrorCode, String) {
        let e = r.error.expect("an error answer");
        (e.code, e.message)
    }

    #[tokio::test]
    async fn get_answers_the_version_with_how_best_was_decided() {
        let (root, ctx) = context(catalog());
        let dir = root.path().join("models/m/v1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("m.pt"), b"abc").unwrap();
        let r = dispatch(get("m", "best"), &ctx, None).await;
        let v = r.result.expect("an answer");
        assert_eq!(v["version"], "v1");
        assert_eq!(v["best_by"]["metric"], "accuracy");
        assert_eq!(v["path"], dir.join("m.pt").display().to_string());
    }

    #[tokio::test]
    async fn get_never_hands_out_a_dead_path() {
        let (root, ctx) = context(catalog());
        std::fs::create_dir_all(root.path().join("models/m/v1")).unwrap();
        let (code, message) = error(dispatch(get("m", "v1"), &ctx, None).await);
        assert_eq!(code, ErrorCode::FileMissing);
        assert!(message.starts_with("m v1: stored file "), "{message}");
        assert!(message.ends_with("is missing (run `modelreg status`)"));
    }

    #[tokio::test]
    async fn a_mistyped_model_gets_the_close_one() {
        let (_root, ctx) = context(catalog());
        let (code, message) = error(dispatch(get("n", "latest"), &ctx, None).await);
        assert_eq!(code, ErrorCode::ModelNotFound);
        assert_eq!(
            message,
            "no model named \"n\"; did you mean \"m\"? (`modelreg list` shows the models)"
        );
    }

    #[tokio::test]
    async fn a_change_with_a_bad_version_or_name_is_refused_before_the_registrar() {
        let (_root, ctx) = context(catalog());
        let rm = |name: &str, version: &str| Request::Rm {
            name: name.into(),
            version: version.into(),
            reason: None,
            force: false,
        };
        let (code, message) = error(dispatch(rm("m", "3"), &ctx, None).await);
        assert_eq!(code, ErrorCode::InvalidSelector);
        assert_eq!(message, "\"3\" is not a version such as v3");
        // The registrar is gone: an answer other than `shutting_down` was decided here.
        let (code, _) = error(dispatch(rm("../m", "v1"), &ctx, None).await);
        assert_eq!(code, ErrorCode::InvalidName);
        let (code, _) = error(dispatch(rm("m", "v1"), &ctx, None).await);
        assert_eq!(code, ErrorCode::ShuttingDown);
    }
}
