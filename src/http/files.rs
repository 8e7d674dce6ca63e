//! Downloads of stored files: the version found as the socket's `get` finds it, a file
//! looked up among its files, served with ETag, Range, 304 and HEAD.
//!
//! A file is looked up among the version's files by its path, so only what the catalog
//! lists is ever opened, by the path the catalog holds, through no link. Stored files
//! never change, so the ETag is the file's SHA-256 and Last-Modified the version's
//! registration time.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::response::Builder;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use axum::routing::get;

use super::api::{BestParams, ask, path_error};
use super::body;
use super::range::{self, Part};
use super::{ApiError, HttpState, paths};
use crate::protocol::{ErrorCode, Request};

/// The download routes.
pub(super) fn routes() -> Router<HttpState> {
    Router::new()
        .route(
            "/api/v1/models/{name}/versions/{selector}/files/{*path}",
            get(file),
        )
        .route(
            "/api/v1/models/{name}/versions/{selector}/tar",
            get(super::archive::archive),
        )
}

/// A version found for a download, from the published catalog: what its answers need.
pub(super) struct Found {
    /// The model.
    pub name: String,
    /// `vN`.
    pub version: String,
    /// When it was registered: Last-Modified of everything in it.
    pub registered: SystemTime,
    /// Its files, in the catalog's order.
    pub files: Vec<StoredFile>,
}

/// One stored file of a [`Found`] version.
pub(super) struct StoredFile {
    /// Its path inside the version folder (`sub/config.json`).
    pub rel: String,
    /// Where it is stored (from the catalog, never from the request).
    pub path: PathBuf,
    /// Hex SHA-256.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
}

/// The version `name`/`selector` names, as the socket's `get` resolves it. Only the
/// files a download opens are checked (the socket's `get` checks every one, which for a
/// version of many files would make each file's download cost them all); a refusal is
/// the socket's own answer, word for word.
pub(super) async fn find(
    s: &HttpState,
    q: Result<Query<BestParams>, QueryRejection>,
    name: String,
    selector: String,
) -> Result<Found, ApiError> {
    let req = BestParams::request(q, name.clone(), selector.clone())?;
    let Request::Get { metric, mode, .. } = &req else {
        unreachable!("BestParams::request makes a get");
    };
    let (catalog, cfg) = (s.ctx.shared.catalog(), s.ctx.config());
    let found = catalog.model(&name).and_then(|m| {
        m.select(
            &name,
            Some(&selector),
            (&cfg.best, metric.as_deref(), *mode),
        )
        .map(|(v, _)| v)
    });
    let Ok(v) = found else {
        return Err(match ask(s, req).await {
            Err(e) => e,
            // Published in between: the client may ask again.
            Ok(_) => ApiError::new(ErrorCode::Busy, "the catalog changed meanwhile; ask again"),
        });
    };
    Ok(Found::of(&cfg, name, v))
}

impl Found {
    /// Version `v` of model `name` as a download serves it: its files with their paths
    /// inside the version folder, from the catalog (never from a request).
    pub(super) fn of(
        cfg: &crate::config::Config,
        name: String,
        v: &crate::registry::Version,
    ) -> Found {
        Found::of_files(cfg, name, v, &v.files)
    }

    /// [`Found::of`] with only `files` of the version (those a request asks for: a route
    /// that serves one file of a version of thousands need not map them all).
    pub(super) fn of_files(
        cfg: &crate::config::Config,
        name: String,
        v: &crate::registry::Version,
        files: &[crate::registry::StoredFile],
    ) -> Found {
        let dir = crate::store::version_dir(&cfg.store, &name, v.number);
        let files = files
            .iter()
            .map(|f| {
                let path = cfg.root.join(&f.path);
                let rel = path
                    .strip_prefix(&dir)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| f.path.clone());
                StoredFile {
                    rel,
                    path,
                    sha256: f.sha256.clone(),
                    size: f.size,
                }
            })
            .collect();
        Found {
            registered: humantime::parse_rfc3339_weak(&v.registered_at)
                .unwrap_or(SystemTime::UNIX_EPOCH),
            version: format!("v{}", v.number),
            name,
            files,
        }
    }
}

/// Team mode: a stored file that is not on this host yet (a version registered on
/// another host, never asked for here) is fetched from the blob store first and checked
/// against its SHA-256 (docs/team.md, Read-through), so the file routes, the tar route
/// and the Hub routes answer on every host as `get` does. Outside team mode, or when the
/// file is here, nothing is done.
pub(super) async fn fetch_if_missing(
    s: &HttpState,
    name: &str,
    version: &str,
    f: &StoredFile,
) -> Result<(), ApiError> {
    let Some(team) = &s.ctx.team else {
        return Ok(());
    };
    match team.fetch_file(&f.path, &f.sha256).await {
        // Another host's `rm` merged while fetching (the fetch failed, or put the file
        // back after the removal's move to the trash): answered as a download of a
        // removed version is (when, why), and what the fetch put back is deleted.
        _ if removed_now(s, name, version) => {
            if let Some(n) = crate::registry::parse_version_number(version) {
                crate::team::discard_fetched(&s.ctx.config().store, name, n).await;
            }
            let get = Request::Get {
                name: name.to_string(),
                selector: Some(version.to_string()),
                metric: None,
                mode: None,
            };
            Err(match super::api::ask(s, get).await {
                Err(e) => e,
                Ok(_) => ApiError::new(ErrorCode::Busy, "the catalog changed meanwhile; ask again"),
            })
        }
        Ok(_) => Ok(()),
        Err(e) => {
            s.ctx
                .board
                .error(format!("http: fetching {name} {}: {e}", f.rel));
            Err(ApiError::new(
                ErrorCode::Internal,
                format!(
                    "{name}: {} is not on this host and could not be fetched: {e}",
                    f.rel
                ),
            ))
        }
    }
}

/// Whether version `version` (`vN`) of `name` is removed (or gone) in the catalog as
/// this host holds it now.
fn removed_now(s: &HttpState, name: &str, version: &str) -> bool {
    let Some(n) = crate::registry::parse_version_number(version) else {
        return false;
    };
    let catalog = s.ctx.shared.catalog();
    catalog
        .model(name)
        .and_then(|m| m.stored_version(name, n))
        .is_err()
}

/// Opens a stored file through no link (neither in the store's folders nor the file
/// itself) and checks it is the regular file of the catalog's size: `file_missing`
/// otherwise, as the socket answers for a file that is gone.
pub(super) async fn open_stored(store: &FsPath, f: &StoredFile) -> Result<Arc<File>, ApiError> {
    let (store, path, size) = (store.to_path_buf(), f.path.clone(), f.size);
    let opened = tokio::task::spawn_blocking(move || -> Result<File, String> {
        crate::store::check_no_link(&store, &path).map_err(|e| format!("not served: {e}"))?;
        let shown = path.display();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| format!("stored file {shown}: {e} (run `modelreg status`)"))?;
        let m = file.metadata().map_err(|e| format!("stat {shown}: {e}"))?;
        if !m.is_file() || m.len() != size {
            return Err(format!(
                "{shown} is not the stored file of {size} bytes the catalog names (run `modelreg verify`)"
            ));
        }
        Ok(file)
    })
    .await
    .map_err(|e| e.to_string());
    match opened {
        Ok(Ok(f)) => Ok(Arc::new(f)),
        Ok(Err(why)) | Err(why) => Err(ApiError::new(ErrorCode::FileMissing, why)),
    }
}

/// The headers every answer about a download carries (200, 206, 304 and HEAD alike).
pub(super) fn common_headers(etag: &str, v: &Found) -> Builder {
    Response::builder()
        .header(header::ETAG, etag)
        .header(header::LAST_MODIFIED, httpdate::fmt_http_date(v.registered))
        .header("x-modelreg-version", &v.version)
}

/// The answer `b` with `body`.
pub(super) fn built(b: Builder, body: Body) -> Result<Response, ApiError> {
    b.body(body)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))
}

/// `Content-Disposition` naming the file as saved: its last component, UTF-8 encoded.
pub(super) fn disposition(name: &str) -> HeaderValue {
    let base = name.rsplit('/').next().unwrap_or(name);
    const KEPT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'.')
        .remove(b'-')
        .remove(b'_');
    let enc = percent_encoding::utf8_percent_encode(base, KEPT);
    HeaderValue::from_str(&format!("attachment; filename*=UTF-8''{enc}"))
        .unwrap_or(HeaderValue::from_static("attachment"))
}

async fn file(
    State(s): State<HttpState>,
    method: Method,
    headers: HeaderMap,
    p: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<BestParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path((name, selector, path)) = p.map_err(path_error)?;
    let wanted = paths::check(&path)?;
    let v = find(&s, q, name, selector).await?;
    let Some(f) = v.files.iter().find(|f| f.rel == wanted) else {
        let names: Vec<&str> = v.files.iter().take(10).map(|f| f.rel.as_str()).collect();
        let more = if v.files.len() > names.len() {
            ", ..."
        } else {
            ""
        };
        return Err(ApiError::not_found(format!(
            "no file {wanted:?} in {} {} (it has: {}{more})",
            v.name,
            v.version,
            names.join(", "),
        )));
    };
    serve_file(&s, &method, &headers, &v, f).await
}

/// Answers a request for stored file `f` of version `v`: 200, or 206 for one range, 304
/// when the client has it, 416 for a range it cannot be given; HEAD with the same
/// headers and no body. Routes that serve stored files under other paths call this.
pub(super) async fn serve_file(
    s: &HttpState,
    method: &Method,
    headers: &HeaderMap,
    v: &Found,
    f: &StoredFile,
) -> Result<Response, ApiError> {
    let etag = format!("\"{}\"", f.sha256);
    let modified = httpdate::fmt_http_date(v.registered);
    let b = common_headers(&etag, v).header(header::ACCEPT_RANGES, "bytes");
    if range::not_modified(headers, &etag, v.registered) {
        return built(b.status(StatusCode::NOT_MODIFIED), Body::empty());
    }
    let len = f.size;
    let (status, start, count, b) = match range::part(headers, len, &etag, &modified) {
        Part::Whole => (StatusCode::OK, 0, len, b),
        Part::Bytes { start, end } => (
            StatusCode::PARTIAL_CONTENT,
            start,
            end - start + 1,
            b.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}")),
        ),
        refused => {
            let why = if refused == Part::Many {
                "only one range per request is served".to_string()
            } else {
                format!("the range asked for is beyond the file's {len} bytes")
            };
            let mut e = ApiError::new(ErrorCode::RangeNotSatisfiable, why);
            e.range_of = Some(len);
            return Err(e);
        }
    };
    // Opened (and checked) for HEAD too: HEAD must not promise what GET cannot give.
    fetch_if_missing(s, &v.name, &v.version, f).await?;
    let opened = open_stored(&s.ctx.config().store, f).await?;
    let b = b
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_DISPOSITION, disposition(&f.rel))
        .header(header::CONTENT_LENGTH, count);
    if method == Method::HEAD {
        return built(b, Body::empty());
    }
    built(b, Body::new(body::FileBody::new(opened, start, count)))
}
