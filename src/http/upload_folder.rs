//! A folder uploaded as a tar (`Content-Type: application/x-tar`): extracted safely
//! ([`untar`](super::untar)) into a private folder of the daemon's (under the store's
//! staging folder, never the inbox), then handed over to the registrar by its files, as
//! `register` hands a file over. Nothing a user put in the inbox is read, replaced or
//! left behind; the private folder is removed once answered (and, after a crash, at the
//! next start with the store's other leftovers).

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::Path;

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode};

use super::untar::{self, Extracted};
use super::{ApiError, HttpState};
use crate::messages::HandedFiles;
use crate::protocol::ErrorCode;

/// The answer's header naming the hidden entries left out of the version.
pub const LEFT_OUT_HEADER: &str = "x-modelreg-left-out";

/// At most this many left-out entries are named in [`LEFT_OUT_HEADER`] (then a count).
const LEFT_OUT_SHOWN: usize = 20;

/// The private folder an upload is extracted into: `<store>/.staging/upload.XXXXXXXX`,
/// mode 0700. The store's start-up recovery deletes what a crash left there.
fn private_dir(store: &Path) -> Result<tempfile::TempDir, ApiError> {
    let staging = store.join(crate::store::STAGING);
    let internal = |e: std::io::Error| {
        ApiError::new(
            ErrorCode::Internal,
            format!(
                "cannot make a folder for the upload in {}: {e}",
                staging.display()
            ),
        )
    };
    match staging.symlink_metadata() {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(internal(std::io::Error::other(
                "it is not a folder (a link?); left alone",
            )));
        }
        Err(_) => std::fs::create_dir_all(&staging).map_err(internal)?,
    }
    tempfile::Builder::new()
        .prefix("upload.")
        .rand_bytes(8)
        .tempdir_in(&staging)
        .map_err(internal)
}

/// Extracts the archive in `file` and answers the version once registered, with the
/// hidden entries left out named in [`LEFT_OUT_HEADER`].
pub(super) async fn upload_folder(
    s: &HttpState,
    name: String,
    metrics: Option<String>,
    metadata: Option<String>,
    mut file: File,
) -> Result<(StatusCode, HeaderMap, Json<serde_json::Value>), ApiError> {
    // Checked by the sidecar's own parser, before the archive is extracted.
    let sidecar = if metrics.is_some() || metadata.is_some() {
        let shown = format!("the metrics of the upload of {name}");
        let parsed = crate::sidecar::from_request(&shown, metrics.as_deref(), metadata.as_deref())
            .map_err(|e| {
                ApiError::new(
                    ErrorCode::Blocked,
                    format!("{shown}: {}; nothing was registered", e.reason),
                )
            })?;
        Some(parsed)
    } else {
        None
    };
    let dir = private_dir(&s.ctx.config().store)?;
    let dest = dir.path().join("folder");
    // The extraction owns the private folder while it runs: a client gone mid-request
    // drops this future, not the blocking task, and the folder is removed only once the
    // extraction has stopped writing into it (dropped here, it was made again, 0755).
    let (dir, extracted) = {
        let dest = dest.clone();
        tokio::task::spawn_blocking(move || {
            let extracted = extract(&mut file, &dest);
            (dir, extracted)
        })
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("the extraction panicked: {e}")))?
    };
    let extracted = extracted?;
    tracing::info!(model = %name, files = extracted.files, bytes = extracted.bytes, "folder upload extracted; handing it over");
    if !extracted.left_out.is_empty() {
        tracing::info!(
            model = %name,
            "folder upload: hidden entries left out of the version, as the inbox leaves them out of a dropped folder: {}",
            extracted.left_out.join(", ")
        );
    }
    let files = HandedFiles::Folder {
        dir: dest,
        files: extracted.list,
    };
    let r = crate::server::hand_over(&s.ctx, name, files, sidecar).await;
    // Removed once answered, on the blocking pool (a large folder takes a while).
    let _ = tokio::task::spawn_blocking(move || drop(dir)).await;
    let mut headers = HeaderMap::new();
    if let Some(v) = left_out_header(&extracted.left_out) {
        headers.insert(LEFT_OUT_HEADER, v);
    }
    match (r.result, r.error) {
        (_, Some(e)) => Err(e.into()),
        (Some(mut v), None) => {
            let status = match v["created"].as_bool() {
                Some(true) => StatusCode::CREATED,
                _ => StatusCode::OK,
            };
            Ok((status, headers, Json(v["version"].take())))
        }
        (None, None) => Err(ApiError::new(
            ErrorCode::Internal,
            "an answer with neither result nor error",
        )),
    }
}

/// `N: a, b, ...` (percent-encoded where not plain ASCII), or `None` when nothing was
/// left out.
fn left_out_header(left_out: &[String]) -> Option<HeaderValue> {
    if left_out.is_empty() {
        return None;
    }
    let mut names: Vec<String> = left_out
        .iter()
        .take(LEFT_OUT_SHOWN)
        .map(|n| percent_encoding::utf8_percent_encode(n, percent_encoding::CONTROLS).to_string())
        .collect();
    if left_out.len() > LEFT_OUT_SHOWN {
        names.push("...".into());
    }
    HeaderValue::from_str(&format!("{}: {}", left_out.len(), names.join(", "))).ok()
}

/// The blocking part: rewind and extract.
fn extract(file: &mut File, dest: &Path) -> Result<Extracted, ApiError> {
    file.seek(SeekFrom::Start(0)).map_err(|e| {
        ApiError::new(
            ErrorCode::Internal,
            format!("cannot rewind the upload: {e}"),
        )
    })?;
    let mut reader = std::io::BufReader::with_capacity(512 * 1024, file);
    // A compressed tar sent as a plain one would be refused for a header that does not
    // parse, which says nothing of the cause: its first bytes say it.
    let head = std::io::BufRead::fill_buf(&mut reader).map_err(|e| {
        ApiError::new(
            ErrorCode::Internal,
            format!("cannot read the upload back: {e}"),
        )
    })?;
    if let Some(what) = untar::not_a_tar(head) {
        return Err(ApiError::bad_request(format!(
            "the body is {what}, not a tar: send the tar itself (tar -cf, without z/J/j; or decompress it first) as application/x-tar; nothing was registered"
        ))
        .with_status(axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE));
    }
    untar::extract(&mut reader, dest).map_err(|e| {
        ApiError::bad_request(format!(
            "the tar archive is refused: {}; nothing was registered",
            e.0
        ))
    })
}
