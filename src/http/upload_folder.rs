//! A folder uploaded as a tar (`Content-Type: application/x-tar`): extracted safely
//! ([`untar`](super::untar)) under a hidden name in the inbox, its metrics placed as a
//! sidecar, then renamed into place (swapped with a folder of that name already there)
//! and waited for, exactly as `modelreg add FOLDER --wait` does.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use axum::Json;
use axum::http::StatusCode;

use super::untar::{self, Extracted};
use super::{ApiError, HttpState};
use crate::protocol::{ErrorCode, Request};

/// One folder upload at a time, from placing its folder in the inbox until it is a
/// version. A folder goes through the inbox under the model's name; two placed at once
/// replaced each other there, so one client was answered 201 with another's bytes and
/// another never answered (found by a fresh-clone attack). Folder uploads are rare and
/// each is answered once registered, so they simply queue here.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long the upload waits for its folder to become a version (settle and copy).
const WAIT_MS: u64 = 3_600_000;

/// A hidden name in the inbox for `entry` while it is written: the daemon ignores names
/// that start with a dot, and the name is unique (the process, the time, a counter).
fn hidden(inbox: &Path, entry: &str) -> PathBuf {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    inbox.join(format!(
        ".{entry}.upload-{}-{nanos:08x}-{n}.tmp",
        std::process::id()
    ))
}

/// The sidecar's name: the spelling already in the inbox (both at once would block the
/// model), else `<name>.metrics.yaml`. (The rule of `modelreg add` and the Python client.)
fn sidecar_name(inbox: &Path, name: &str) -> String {
    crate::names::SIDECAR_SUFFIXES
        .iter()
        .map(|x| format!("{name}{x}"))
        .find(|f| inbox.join(f).symlink_metadata().is_ok())
        .unwrap_or_else(|| format!("{name}{}", crate::names::SIDECAR_SUFFIX))
}

/// Extracts the archive in `file` into the inbox as the folder `name`, places the
/// sidecar `sidecar` (JSON text) if any, and answers the version once registered.
pub(super) async fn upload_folder(
    s: &HttpState,
    name: String,
    metrics: Option<String>,
    metadata: Option<String>,
    mut file: File,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    // Checked now by the sidecar's own parser, so bad metrics are refused before the
    // folder is placed rather than block the model in the inbox.
    let sidecar = if metrics.is_some() || metadata.is_some() {
        let shown = format!("the metrics of the upload of {name}");
        crate::sidecar::from_request(&shown, metrics.as_deref(), metadata.as_deref()).map_err(
            |e| {
                ApiError::new(
                    ErrorCode::Blocked,
                    format!("{shown}: {}; nothing was registered", e.reason),
                )
            },
        )?;
        // The same text as from_request reads; JSON is valid YAML.
        let mut text = format!("{{\"metrics\": {}", metrics.as_deref().unwrap_or("{}"));
        if let Some(m) = &metadata {
            text.push_str(&format!(", \"metadata\": {m}"));
        }
        text.push('}');
        Some(text)
    } else {
        None
    };
    let _turn = ONE_AT_A_TIME.lock().await;
    let inbox = s.ctx.config().inbox.clone();
    let (tmp, dst) = (hidden(&inbox, &name), inbox.join(&name));
    let placed = {
        let (tmp, dst, inbox, name) = (tmp.clone(), dst.clone(), inbox.clone(), name.clone());
        tokio::task::spawn_blocking(move || place(&mut file, &tmp, &dst, &inbox, &name, sidecar))
            .await
            .unwrap_or_else(|e| {
                Err(ApiError::new(
                    ErrorCode::Internal,
                    format!("the extraction panicked: {e}"),
                ))
            })
    };
    let extracted = match placed {
        Ok(x) => x,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    tracing::info!(model = %name, files = extracted.files, bytes = extracted.bytes, "folder upload placed in the inbox");
    let req = Request::Wait {
        name: name.clone(),
        entry: name,
        timeout_ms: Some(WAIT_MS),
    };
    let r = crate::server::dispatch(req, &s.ctx, None).await;
    match (r.result, r.error) {
        (_, Some(e)) => Err(e.into()),
        (Some(mut v), None) => {
            let status = match v["created"].as_bool() {
                Some(true) => StatusCode::CREATED,
                _ => StatusCode::OK,
            };
            Ok((status, Json(v["version"].take())))
        }
        (None, None) => Err(ApiError::new(
            ErrorCode::Internal,
            "an answer with neither result nor error",
        )),
    }
}

/// The blocking part: extract, place the sidecar, rename into place.
fn place(
    file: &mut File,
    tmp: &Path,
    dst: &Path,
    inbox: &Path,
    name: &str,
    sidecar: Option<String>,
) -> Result<Extracted, ApiError> {
    let internal = |what: String| ApiError::new(ErrorCode::Internal, what);
    file.seek(SeekFrom::Start(0))
        .map_err(|e| internal(format!("cannot rewind the upload: {e}")))?;
    let mut reader = std::io::BufReader::with_capacity(512 * 1024, file);
    let extracted = untar::extract(&mut reader, tmp).map_err(|e| {
        ApiError::bad_request(format!(
            "the tar archive is refused: {}; nothing was registered",
            e.0
        ))
    })?;
    if let Some(text) = sidecar {
        let side = sidecar_name(inbox, name);
        let hidden_side = hidden(inbox, &side);
        std::fs::write(&hidden_side, text + "\n")
            .and_then(|()| std::fs::rename(&hidden_side, inbox.join(&side)))
            .map_err(|e| {
                let _ = std::fs::remove_file(&hidden_side);
                internal(format!(
                    "cannot place the sidecar {side} in {}: {e}",
                    inbox.display()
                ))
            })?;
    }
    crate::fsutil::rename_or_exchange(tmp, dst)
        .map_err(|e| internal(format!("cannot place {} in the inbox: {e}", dst.display())))?;
    Ok(extracted)
}
