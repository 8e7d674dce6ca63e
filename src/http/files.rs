//! Downloads: every stored file of a version, and a version as one streamed tar.
//!
//! The version is resolved by the socket's own `get` (selectors, `best`, aliases, the
//! check that its files exist and lead through no link); a file is then looked up among
//! that version's files by its path, so only what the catalog lists is ever opened, by
//! the path the catalog holds, without following a link. Stored files never change, so
//! the ETag is the file's SHA-256 and Last-Modified the version's registration time.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use axum::routing::get;

use super::api::{BestParams, ask, path_error};
use super::body::{self, Sink};
use super::range::{self, Part};
use super::tar::{self, Entry};
use super::{ApiError, HttpState, paths};
use crate::protocol::{ErrorCode, FileInfo, VersionInfo};

/// The download routes.
pub(super) fn routes() -> Router<HttpState> {
    Router::new()
        .route(
            "/api/v1/models/{name}/versions/{selector}/files/{*path}",
            get(file),
        )
        .route(
            "/api/v1/models/{name}/versions/{selector}/tar",
            get(archive),
        )
}

/// The version `name`/`selector` names, as the socket's `get` answers it.
async fn version(
    s: &HttpState,
    q: Result<Query<BestParams>, QueryRejection>,
    name: String,
    selector: String,
) -> Result<VersionInfo, ApiError> {
    let v = ask(s, BestParams::request(q, name, selector)?).await?.0;
    serde_json::from_value(v).map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))
}

/// A stored file's path inside its version folder.
fn inside<'a>(v: &VersionInfo, f: &'a FileInfo) -> &'a str {
    f.path
        .strip_prefix(&v.dir)
        .and_then(|p| p.strip_prefix('/'))
        .unwrap_or(&f.path)
}

/// The version's registration time: Last-Modified of everything in it.
fn registered(v: &VersionInfo) -> SystemTime {
    humantime::parse_rfc3339_weak(&v.registered_at).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Opens a stored file without following a link, and checks it is the regular file of
/// `size` bytes the catalog names.
async fn open_stored(f: &FileInfo) -> Result<Arc<File>, ApiError> {
    let (path, size) = (f.path.clone(), f.size);
    let opened = tokio::task::spawn_blocking(move || -> Result<File, String> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| format!("open {path}: {e}"))?;
        let m = file.metadata().map_err(|e| format!("stat {path}: {e}"))?;
        if !m.is_file() || m.len() != size {
            return Err(format!(
                "{path} is not the stored file of {size} bytes the catalog names (run `modelreg verify`)"
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
fn common_headers(
    b: axum::http::response::Builder,
    etag: &str,
    v: &VersionInfo,
) -> axum::http::response::Builder {
    b.header(header::ETAG, etag)
        .header(
            header::LAST_MODIFIED,
            httpdate::fmt_http_date(registered(v)),
        )
        .header("x-modelreg-version", &v.version)
}

fn built(b: axum::http::response::Builder, body: Body) -> Result<Response, ApiError> {
    b.body(body)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))
}

/// `Content-Disposition` naming the file as saved: its last component, UTF-8 encoded.
fn disposition(name: &str) -> HeaderValue {
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
    let v = version(&s, q, name, selector).await?;
    let Some(f) = v.files.iter().find(|f| inside(&v, f) == wanted) else {
        let names: Vec<&str> = v.files.iter().take(10).map(|f| inside(&v, f)).collect();
        return Err(ApiError::not_found(format!(
            "no file {wanted:?} in {} {} (it has: {}{})",
            v.name,
            v.version,
            names.join(", "),
            if v.files.len() > names.len() {
                ", ..."
            } else {
                ""
            }
        )));
    };
    let etag = format!("\"{}\"", f.sha256);
    let modified = httpdate::fmt_http_date(registered(&v));
    let b = common_headers(Response::builder(), &etag, &v).header(header::ACCEPT_RANGES, "bytes");
    if range::not_modified(&headers, &etag, registered(&v)) {
        return built(b.status(StatusCode::NOT_MODIFIED), Body::empty());
    }
    let len = f.size;
    let (status, start, count, b) = match range::part(&headers, len, &etag, &modified) {
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
    let b = b
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_DISPOSITION, disposition(wanted))
        .header(header::CONTENT_LENGTH, count);
    // HEAD: the same headers, and the file is not even opened.
    if method == Method::HEAD {
        return built(b, Body::empty());
    }
    let opened = open_stored(f).await?;
    let (sink, streamed) = body::channel(count);
    tokio::spawn(async move {
        if let Err(e) = body::send_file(&opened, start, count, &sink).await {
            tracing::warn!("HTTP download cut short: {e}");
            let _ = sink.send(Err(e)).await;
        }
    });
    built(b, Body::new(streamed))
}

async fn archive(
    State(s): State<HttpState>,
    method: Method,
    headers: HeaderMap,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<BestParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path((name, selector)) = p.map_err(path_error)?;
    let v = version(&s, q, name, selector).await?;
    let top = format!("{}-{}", v.name, v.version);
    let entries = entries(&v, &top);
    let mtime = registered(&v)
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // The archive is a function of the version's files: its ETag, of their hashes.
    let listing: String = v
        .files
        .iter()
        .map(|f| format!("{} {}\n", f.sha256, inside(&v, f)))
        .collect();
    let etag = format!("\"tar-{}\"", crate::fsutil::sha256_hex(listing.as_bytes()));
    let b = common_headers(Response::builder(), &etag, &v);
    if range::not_modified(&headers, &etag, registered(&v)) {
        return built(b.status(StatusCode::NOT_MODIFIED), Body::empty());
    }
    let len = tar::archive_len(&entries, mtime);
    let b = b
        .header(header::ACCEPT_RANGES, "none")
        .header(header::CONTENT_TYPE, "application/x-tar")
        .header(
            header::CONTENT_DISPOSITION,
            disposition(&format!("{top}.tar")),
        )
        .header(header::CONTENT_LENGTH, len);
    if method == Method::HEAD {
        return built(b, Body::empty());
    }
    let (sink, streamed) = body::channel(len);
    tokio::spawn(async move {
        if let Err(e) = send_archive(&v, &entries, mtime, &sink).await {
            tracing::warn!(
                "HTTP archive of {} {} cut short: {}",
                v.name,
                v.version,
                e.body.message
            );
            let _ = sink.send(Err(std::io::Error::other(e.body.message))).await;
        }
    });
    built(b, Body::new(streamed))
}

/// The archive's entries: the folder `top`, then each file after the folders it is in.
fn entries(v: &VersionInfo, top: &str) -> Vec<Entry> {
    let mut out = vec![Entry {
        path: top.to_string(),
        size: 0,
        dir: true,
    }];
    let mut dirs = std::collections::BTreeSet::new();
    for f in &v.files {
        let rel = inside(v, f);
        let parts: Vec<&str> = rel.split('/').collect();
        for depth in 1..parts.len() {
            let d = parts[..depth].join("/");
            if dirs.insert(d.clone()) {
                out.push(Entry {
                    path: format!("{top}/{d}"),
                    size: 0,
                    dir: true,
                });
            }
        }
        out.push(Entry {
            path: format!("{top}/{rel}"),
            size: f.size,
            dir: false,
        });
    }
    out
}

/// Writes the archive into `sink`: each header, then the file's bytes and padding.
async fn send_archive(
    v: &VersionInfo,
    entries: &[Entry],
    mtime: u64,
    sink: &Sink,
) -> Result<(), ApiError> {
    let mut files = v.files.iter();
    for e in entries {
        if !body::send_bytes(tar::header(e, mtime), sink).await {
            return Ok(());
        }
        if e.dir {
            continue;
        }
        let Some(f) = files.next() else { break };
        let opened = open_stored(f).await?;
        let sent = body::send_file(&opened, 0, f.size, sink)
            .await
            .map_err(|e| ApiError::new(ErrorCode::FileMissing, format!("{}: {e}", f.path)))?;
        if !sent || !body::send_bytes(vec![0; tar::padding(f.size)], sink).await {
            return Ok(());
        }
    }
    body::send_bytes(tar::END.to_vec(), sink).await;
    Ok(())
}
