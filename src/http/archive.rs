//! A version as one tar, written as it is sent: its files under `NAME-vN/`, each opened
//! and checked as a single download is, with an exact Content-Length known beforehand.

use std::time::SystemTime;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;

use super::api::{BestParams, path_error};
use super::body::{self, Sink};
use super::files::{
    Found, built, common_headers, disposition, fetch_if_missing, find, open_stored,
};
use super::tar::{self, Entry};
use super::{ApiError, HttpState, range};
use crate::protocol::ErrorCode;

/// `GET/HEAD .../versions/{selector}/tar`.
pub(super) async fn archive(
    State(s): State<HttpState>,
    method: Method,
    headers: HeaderMap,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<BestParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path((name, selector)) = p.map_err(path_error)?;
    let v = find(&s, q, name, selector).await?;
    let top = format!("{}-{}", v.name, v.version);
    let entries = entries(&v, &top);
    let mtime = v
        .registered
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // The archive is a function of the version's files: its ETag, of their hashes.
    let listing: String = v
        .files
        .iter()
        .map(|f| format!("{} {}\n", f.sha256, f.rel))
        .collect();
    let etag = format!("\"tar-{}\"", crate::fsutil::sha256_hex(listing.as_bytes()));
    let b = common_headers(&etag, &v);
    if range::not_modified(&headers, &etag, v.registered) {
        return built(b.status(StatusCode::NOT_MODIFIED), Body::empty());
    }
    // Every file checked before the first byte: a version with a lost file is answered
    // `file_missing` as `get` answers it, not cut off halfway through.
    let store = s.ctx.config().store.clone();
    for f in &v.files {
        fetch_if_missing(&s, &v.name, &v.version, f).await?;
        open_stored(&store, f).await?;
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
    let (sink, streamed) = body::channel(Some(len));
    tokio::spawn(async move {
        if let Err(e) = send_archive(&store, &v, &entries, mtime, &sink).await {
            let why = e.body.message;
            tracing::warn!("HTTP archive of {} {} cut short: {why}", v.name, v.version);
            let _ = sink.send(Err(std::io::Error::other(why))).await;
        }
    });
    built(b, Body::new(streamed))
}

/// The archive's entries: the folder `top`, then each file after the folders it is in.
fn entries(v: &Found, top: &str) -> Vec<Entry> {
    let mut out = vec![Entry {
        path: top.to_string(),
        size: 0,
        dir: true,
    }];
    let mut dirs = std::collections::BTreeSet::new();
    for f in &v.files {
        let parts: Vec<&str> = f.rel.split('/').collect();
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
            path: format!("{top}/{}", f.rel),
            size: f.size,
            dir: false,
        });
    }
    out
}

/// Writes the archive into `sink`: each header, then the file's bytes and padding.
async fn send_archive(
    store: &std::path::Path,
    v: &Found,
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
        let opened = open_stored(store, f).await?;
        let sent = body::send_file(&opened, 0, f.size, sink)
            .await
            .map_err(|e| {
                let shown = f.path.display();
                ApiError::new(ErrorCode::FileMissing, format!("{shown}: {e}"))
            })?;
        if !sent || !body::send_bytes(vec![0; tar::padding(f.size)], sink).await {
            return Ok(());
        }
    }
    body::send_bytes(tar::END.to_vec(), sink).await;
    Ok(())
}
