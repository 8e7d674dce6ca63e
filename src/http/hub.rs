//! The Hugging Face Hub's read protocol, answered from the catalog.
//!
//! What a stock `huggingface_hub` asks of an `endpoint=` for `snapshot_download` and
//! `hf_hub_download`. A model is a repository named by the model's name alone (no namespace); a revision is
//! a selector (`vN`, `latest`, `best`, an alias, `main`: [`hfcache::revision_number`],
//! the rule the offline cache view's refs follow) or the 40-hex commit id of a version
//! ([`hfcache::commit_of`]), so a client's `snapshots/<commit>/` is the view's. Served:
//!
//! - `GET /api/models/{repo}[/revision/{rev}]`: the repository at a revision (`sha`,
//!   `siblings`): where `snapshot_download` learns the commit.
//! - `GET /api/models/{repo}/tree/{rev}[/{path}]`: the files (`?recursive=true`), which
//!   `snapshot_download` 1.x/2.x downloads one by one (`hub_tree`).
//! - `GET`/`HEAD /{repo}/resolve/{rev}/{path}`: a file, as the downloads serve it (ETag
//!   the SHA-256, Range, HEAD), with `X-Repo-Commit`, the header the client needs.
//!
//! Errors carry `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`),
//! which the client turns into its typed exceptions; the token rules are the API's
//! (`auth`), applied before any of this. See docs/http.md, Hugging Face Hub.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::api::path_error;
use super::files::{self, Found};
use super::{ApiError, HttpState, paths};
use crate::config::Config;
use crate::hfcache;
use crate::protocol::ErrorCode;
use crate::registry::Version;

/// The Hub routes, with those of a namespaced repository id (`org/name`), which name no
/// model (a model name has no `/`) and are answered `RepoNotFound` saying so.
pub(super) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/api/models/{repo}", get(info_main))
        .route("/api/models/{repo}/revision/{rev}", get(info))
        .route("/api/models/{repo}/tree/{rev}", get(tree_root))
        .route("/api/models/{repo}/tree/{rev}/{*path}", get(tree_under))
        .route("/{repo}/resolve/{rev}/{*path}", get(resolve))
        .route("/api/models/{repo}/{name}", get(namespaced))
        .route("/api/models/{repo}/{name}/revision/{rev}", get(namespaced))
        .route("/api/models/{repo}/{name}/tree/{rev}", get(namespaced))
        .route(
            "/api/models/{repo}/{name}/tree/{rev}/{*path}",
            get(namespaced),
        )
        .route("/{repo}/{name}/resolve/{rev}/{*path}", get(namespaced))
}

/// An error as the Hub answers it: the API's error (status, JSON body, and its message
/// in `X-Error-Message`), plus the `X-Error-Code` the client maps to an exception, and
/// the commit when the revision was found (the client then remembers a missing file).
#[derive(Debug)]
pub(super) struct HubError {
    api: ApiError,
    code: Option<&'static str>,
    commit: Option<String>,
}

impl HubError {
    fn with(code: &'static str, api: ApiError) -> HubError {
        HubError {
            api,
            code: Some(code),
            commit: None,
        }
    }

    /// `RepoNotFound` (404): no such model.
    fn repo(message: String) -> HubError {
        HubError::with(
            "RepoNotFound",
            ApiError::new(ErrorCode::ModelNotFound, message),
        )
    }

    /// `RevisionNotFound` (404): the model has no version by that name.
    fn revision(code: ErrorCode, message: String) -> HubError {
        HubError::with(
            "RevisionNotFound",
            ApiError::new(code, message).with_status(axum::http::StatusCode::NOT_FOUND),
        )
    }

    /// `EntryNotFound` (404): the version has no such file or folder.
    pub(super) fn entry(message: String, commit: &str) -> HubError {
        HubError {
            commit: Some(commit.to_string()),
            ..HubError::with("EntryNotFound", ApiError::not_found(message))
        }
    }
}

impl From<ApiError> for HubError {
    fn from(api: ApiError) -> HubError {
        HubError {
            api,
            code: None,
            commit: None,
        }
    }
}

impl IntoResponse for HubError {
    /// The API's answer with the Hub's body, `{"error": MESSAGE, "code": CODE}` (the
    /// socket's code): the client shows `error` and `X-Error-Message`, once when equal.
    fn into_response(self) -> Response {
        let body = json!({"error": self.api.body.message, "code": self.api.body.code});
        let (mut parts, _) = self.api.into_response().into_parts();
        parts.headers.remove(axum::http::header::CONTENT_LENGTH);
        if let Some(code) = self.code {
            parts
                .headers
                .insert("x-error-code", HeaderValue::from_static(code));
        }
        if let Some(v) = self.commit.and_then(|c| HeaderValue::from_str(&c).ok()) {
            parts.headers.insert("x-repo-commit", v);
        }
        Response::from_parts(parts, axum::body::Body::from(body.to_string()))
    }
}

/// A revision of a repository, found in the published catalog.
pub(super) struct Revision {
    /// The settings it was found with (where the store is).
    cfg: Arc<Config>,
    /// The model.
    pub name: String,
    /// The version.
    version: Arc<Version>,
    /// Its commit id: the view's `snapshots/<commit>`.
    pub commit: String,
    /// When the model's first version was registered.
    pub created: String,
}

impl Revision {
    /// Every file of the version, as the downloads serve them.
    pub(super) fn found(&self) -> Found {
        Found::of(&self.cfg, self.name.clone(), &self.version)
    }

    /// The version with only its file `rel` (none when it has no such file), found by
    /// comparing stored paths, without mapping every file: `snapshot_download` asks for
    /// each file of a version twice (HEAD, GET).
    fn found_one(&self, rel: &str) -> Found {
        let v = &self.version;
        let stored = format!(
            "{}/{}/v{}/{rel}",
            self.cfg.relative(&self.cfg.store),
            self.name,
            v.number
        );
        let at = v.files.iter().position(|f| f.path == stored);
        let files = at.map_or(&v.files[..0], |i| &v.files[i..=i]);
        Found::of_files(&self.cfg, self.name.clone(), v, files)
    }
}

/// Commit ids computed so far, by model, version number and registration time. A
/// version's files never change and its number is never given again (the time is in the
/// key all the same, should a hand-edited catalog give one anew), and the store's path
/// (which the id's input names) changes only with a restart, so an id holds for the
/// daemon's life. Without it every request of a `snapshot_download` (a HEAD and a GET
/// per file, each naming the commit) hashed the version's whole file list again: 19 s
/// of the daemon's CPU for the 4,000 requests of a 2,000-file version (debug build).
/// One entry per version asked for, about 150 bytes.
static COMMITS: LazyLock<Mutex<HashMap<VersionKey, String>>> = LazyLock::new(Default::default);

/// A version as [`COMMITS`] knows it: model, number, registration time.
type VersionKey = (String, u32, String);

/// [`hfcache::commit_of`], remembered in [`COMMITS`].
fn commit_of(cfg: &Config, name: &str, v: &Version) -> Option<String> {
    let key = (name.to_string(), v.number, v.registered_at.clone());
    let known = COMMITS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .cloned();
    if known.is_some() {
        return known;
    }
    let commit = hfcache::commit_of(cfg, name, v)?;
    COMMITS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, commit.clone());
    Some(commit)
}

/// Whether `rev` is written as a commit id (40 lower-case hex), as the client tells them.
fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Finds revision `rev` of repository `repo`: a selector by the view's rule, or a commit
/// id among the model's stored versions (newest first: a client mostly asks for a
/// commit it was just given).
fn find(s: &HttpState, repo: &str, rev: &str) -> Result<Revision, HubError> {
    let (catalog, cfg) = (s.ctx.shared.catalog(), s.ctx.config());
    if !hfcache::repo_name_ok(repo) {
        return Err(HubError::repo(format!(
            "{repo:?} is not a repository id huggingface_hub takes, so no model is served by it"
        )));
    }
    let m = catalog
        .model(repo)
        .map_err(|e| HubError::repo(e.to_string()))?;
    let number = if is_commit(rev) {
        m.versions
            .iter()
            .rev()
            .filter(|v| v.removed.is_none())
            .find(|v| commit_of(&cfg, repo, v).as_deref() == Some(rev))
            .map(|v| v.number)
    } else {
        hfcache::revision_number(m, repo, rev, &cfg.best)
    };
    let Some(v) = number.and_then(|n| m.versions.iter().find(|v| v.number == n)) else {
        // The socket's own words for why (no such number, removed, no metric, ...).
        let why = match m.select(repo, Some(rev), (&cfg.best, None, None)) {
            Err(e) if !is_commit(rev) => (ErrorCode::from(&e), e.to_string()),
            _ => (
                ErrorCode::VersionNotFound,
                format!("{repo:?} has no version named {rev:?} (a selector or a commit id)"),
            ),
        };
        return Err(HubError::revision(why.0, why.1));
    };
    let commit = commit_of(&cfg, repo, v).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Internal,
            format!(
                "{repo} v{} lists a file outside its folder in the store (registry.yaml edited by hand?); run `modelreg verify`",
                v.number
            ),
        )
    })?;
    Ok(Revision {
        name: repo.to_string(),
        version: v.clone(),
        commit,
        created: m
            .versions
            .first()
            .map(|f| f.registered_at.clone())
            .unwrap_or_default(),
        cfg,
    })
}

/// The repository's information at `rev`, as `model_info`/`repo_info` read it: `sha` is
/// the commit every later request of the download names, `siblings` the files (with
/// their size and SHA-256 as Git LFS describes a file, so `verify_repo_checksums` works).
fn info_json(repo: &str, r: &Revision) -> Value {
    let siblings: Vec<Value> = r
        .found()
        .files
        .iter()
        .map(|f| {
            json!({
                "rfilename": f.rel,
                "size": f.size,
                "lfs": {"sha256": f.sha256, "size": f.size, "pointerSize": super::hub_tree::pointer_size(f.size)},
            })
        })
        .collect();
    json!({
        "_id": r.commit,
        "id": repo,
        "modelId": repo,
        "sha": r.commit,
        "lastModified": r.version.registered_at,
        "createdAt": r.created,
        "private": false,
        "gated": false,
        "disabled": false,
        "tags": ["modelreg"],
        "siblings": siblings,
    })
}

async fn info_main(
    State(s): State<HttpState>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, HubError> {
    let Path(repo) = p.map_err(path_error)?;
    let r = find(&s, &repo, hfcache::DEFAULT_REVISION)?;
    Ok(Json(info_json(&repo, &r)))
}

async fn info(
    State(s): State<HttpState>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, HubError> {
    let Path((repo, rev)) = p.map_err(path_error)?;
    let r = find(&s, &repo, &rev)?;
    Ok(Json(info_json(&repo, &r)))
}

/// `?recursive=true`: the client sends `true` (2.x) or `True` (0.36). Other parameters
/// (`expand`, `cursor`, `limit`) are accepted and change nothing: the whole listing is
/// one page with the fields `expand=false` gives.
fn recursive(q: &HashMap<String, String>) -> bool {
    q.get("recursive")
        .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

async fn tree_root(
    State(s): State<HttpState>,
    p: Result<Path<(String, String)>, PathRejection>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, HubError> {
    let Path((repo, rev)) = p.map_err(path_error)?;
    let r = find(&s, &repo, &rev)?;
    super::hub_tree::listing(&r.found(), &r.commit, None, recursive(&q)).map(Json)
}

async fn tree_under(
    State(s): State<HttpState>,
    p: Result<Path<(String, String, String)>, PathRejection>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, HubError> {
    let Path((repo, rev, path)) = p.map_err(path_error)?;
    let under = paths::check(&path)?;
    let r = find(&s, &repo, &rev)?;
    super::hub_tree::listing(&r.found(), &r.commit, Some(under), recursive(&q)).map(Json)
}

/// A file of a revision: the download's own answer (ETag, Content-Length, Range, 304,
/// HEAD) plus `X-Repo-Commit`, which `hf_hub_download` requires to place the file in
/// `snapshots/<commit>/`.
async fn resolve(
    State(s): State<HttpState>,
    method: Method,
    headers: HeaderMap,
    uri: axum::http::Uri,
    p: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Response, HubError> {
    let Path((repo, rev, path)) = p.map_err(path_error)?;
    let r = find(&s, &repo, &rev)?;
    let wanted = paths::check(&path)?;
    let found = r.found_one(wanted);
    let Some(f) = found.files.first() else {
        let count = r.version.files.len();
        return Err(HubError::entry(
            format!(
                "no file {wanted:?} in {repo} {} (it has {count} file{}; GET /api/models/{repo}/tree/{} lists them)",
                found.version,
                if count == 1 { "" } else { "s" },
                r.commit
            ),
            &r.commit,
        ));
    };
    let commit = HeaderValue::from_str(&r.commit)
        .map_err(|e| HubError::from(ApiError::new(ErrorCode::Internal, e.to_string())))?;
    // A revision that can move (an alias, `latest`, `best`, `vN`) is sent on to the
    // commit it names now: `hf_hub_download` follows a HEAD's redirect and sends its GET
    // (and a resumed Range GET) to where it ended, so one download reads one version
    // even if an alias moves between its requests (it mixed two versions' bytes).
    if rev != r.commit {
        let location = at_commit(uri.path(), &r.commit)
            .and_then(|l| HeaderValue::from_str(&l).ok())
            .ok_or_else(|| {
                HubError::from(ApiError::new(
                    ErrorCode::Internal,
                    format!("cannot name {} at its commit", uri.path()),
                ))
            })?;
        let mut answer = StatusCode::TEMPORARY_REDIRECT.into_response();
        answer.headers_mut().insert(header::LOCATION, location);
        answer.headers_mut().insert("x-repo-commit", commit);
        return Ok(answer);
    }
    let mut answer = files::serve_file(&s, &method, &headers, &found, f)
        .await
        .map_err(|e| HubError {
            commit: Some(r.commit.clone()),
            ..HubError::from(e)
        })?;
    answer.headers_mut().insert("x-repo-commit", commit);
    Ok(answer)
}

/// `/{repo}/resolve/{rev}/{path}` as sent, with the revision segment replaced by `commit`
/// (the rest kept byte for byte, encodings included).
fn at_commit(path: &str, commit: &str) -> Option<String> {
    const RESOLVE: &str = "/resolve/";
    let i = path.find(RESOLVE)? + RESOLVE.len();
    let end = i + path[i..].find('/')?;
    Some(format!("{}{commit}{}", &path[..i], &path[end..]))
}

/// A namespaced repository id (`org/name`): no model has one.
async fn namespaced(p: Result<Path<HashMap<String, String>>, PathRejection>) -> HubError {
    let id = match p {
        Ok(Path(p)) => format!(
            "{}/{}",
            p.get("repo").map_or("", String::as_str),
            p.get("name").map_or("", String::as_str)
        ),
        Err(e) => return path_error(e).into(),
    };
    HubError::repo(format!(
        "no repository {id:?}: a model's repository id is its name alone, with no namespace (repo_id=\"NAME\")"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moving_revision_is_named_at_its_commit() {
        let c = "c".repeat(40);
        assert_eq!(
            at_commit("/r%2Eb/resolve/production/sub/a%20b.bin", &c).unwrap(),
            format!("/r%2Eb/resolve/{c}/sub/a%20b.bin")
        );
        assert_eq!(at_commit("/r/resolve/v1", &c), None);
    }

    #[test]
    fn commit_ids_are_40_lower_case_hex() {
        assert!(is_commit(&"a".repeat(40)));
        assert!(is_commit("0123456789abcdef0123456789abcdef01234567"));
        for not in [
            "v1",
            "latest",
            &"A".repeat(40),
            &"a".repeat(39),
            &"a".repeat(64),
        ] {
            assert!(!is_commit(not), "{not}");
        }
    }

    #[test]
    fn errors_carry_the_code_the_client_maps() {
        let r = HubError::entry("no file".into(), &"c".repeat(40)).into_response();
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()["x-error-code"], "EntryNotFound");
        assert_eq!(r.headers()["x-repo-commit"], "c".repeat(40).as_str());
        let r = HubError::revision(ErrorCode::VersionRemoved, "gone".into()).into_response();
        assert_eq!(r.status(), 404, "a removed version too, as the Hub answers");
        assert_eq!(r.headers()["x-error-code"], "RevisionNotFound");
        let r = HubError::repo("none".into()).into_response();
        assert_eq!(r.headers()["x-error-code"], "RepoNotFound");
    }
}
