//! Uploads: `PUT /api/v1/models/{name}/upload?filename=F` streams a file's bytes into a
//! private temporary file, checks the size limit as they arrive and the client's
//! SHA-256 once they are all in, and hands the file over to the registrar exactly as
//! the socket's `register` does (no inbox path, no settle wait). A folder comes as a
//! tar (`application/x-tar`), extracted privately and handed over by its files
//! (`upload_folder`). The answer
//! is the version: 201 when new, 200 when the bytes are those of the model's newest
//! version.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::pin::Pin;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::put;
use http_body::Body as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::auth::Caller;
use super::{ApiError, HttpState};
use crate::protocol::{ErrorCode, Request, parse_request};

/// The client's SHA-256 of the body (64 hex digits), checked before the hand-over.
pub const SHA256_HEADER: &str = "x-content-sha256";
/// Metrics as a JSON object, checked as a sidecar's are.
pub const METRICS_HEADER: &str = "x-modelreg-metrics";
/// Free metadata as a JSON object, checked as a sidecar's is.
pub const METADATA_HEADER: &str = "x-modelreg-metadata";

/// The upload route: `PUT` only (the version is the answer; a second method would be a
/// second name for the same thing, to document and test twice).
pub(super) fn routes() -> Router<HttpState> {
    Router::new().route("/api/v1/models/{name}/upload", put(upload))
}

/// `?filename=`: the stored file's name (`resnet18.pt`), by the inbox's naming rules.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadParams {
    filename: Option<String>,
}

/// A header's value as text, or `bad_request` naming it.
fn text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request(format!("header {name} is not ASCII text")))
        })
        .transpose()
}

/// A header holding a JSON object, as its raw text (the sidecar's parser reads it as
/// sent, so what it refuses is not lost by a parse here).
fn json_object(headers: &HeaderMap, name: &str) -> Result<Option<String>, ApiError> {
    let Some(t) = text(headers, name)? else {
        return Ok(None);
    };
    match serde_json::from_str::<serde_json::Value>(t) {
        Ok(serde_json::Value::Object(_)) => match duplicate_key(t) {
            // Named here: the request line it becomes would put a column of that line
            // in the message, which is nowhere in what the client sent.
            Some(key) => Err(ApiError::bad_request(format!(
                "header {} holds the key {key:?} twice; give each key once",
                shown(name)
            ))),
            None => Ok(Some(t.to_string())),
        },
        Ok(_) => Err(ApiError::bad_request(format!(
            "header {name} must be a JSON object such as {{\"accuracy\": 0.91}}"
        ))),
        Err(e) => Err(ApiError::bad_request(format!(
            "header {name} is not JSON: {e}"
        ))),
    }
}

/// A header's name as HTTP documents write it (`x-modelreg-metrics` ->
/// `X-Modelreg-Metrics`).
fn shown(name: &str) -> String {
    name.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// The first key some object of the JSON `text` holds twice (serde_json keeps the last
/// one silently), at any depth.
fn duplicate_key(text: &str) -> Option<String> {
    use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
    use std::cell::RefCell;
    /// Walks any JSON value; the first key seen twice in one object is kept in the cell.
    #[derive(Clone, Copy)]
    struct Seed<'a>(&'a RefCell<Option<String>>);
    impl<'de> DeserializeSeed<'de> for Seed<'_> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Seed<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(self)?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !seen.insert(key.clone()) {
                    *self.0.borrow_mut() = Some(key);
                    return Err(de::Error::custom("a duplicate key"));
                }
                map.next_value_seed(self)?;
            }
            Ok(())
        }
    }
    let found = RefCell::new(None);
    let _ = Seed(&found).deserialize(&mut serde_json::Deserializer::from_str(text));
    found.into_inner()
}

/// The client's SHA-256, lower-cased; `bad_request` when it is not 64 hex digits.
fn client_sha256(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(t) = text(headers, SHA256_HEADER)? else {
        return Ok(None);
    };
    let t = t.trim().to_ascii_lowercase();
    if t.len() != 64 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(format!(
            "header {SHA256_HEADER} must be 64 hex digits (sha256sum's output), not {t:?}"
        )));
    }
    Ok(Some(t))
}

/// The refusal of bytes whose SHA-256 is not the one the client sent.
fn check_sha256(want: Option<&str>, got: &str) -> Result<(), ApiError> {
    match want {
        Some(want) if want != got => Err(ApiError::bad_request(format!(
            "the bytes received hash to sha256 {got}, not {want} as {SHA256_HEADER} says; nothing was registered"
        ))),
        _ => Ok(()),
    }
}

fn too_large(max: u64) -> ApiError {
    ApiError::new(
        ErrorCode::TooLarge,
        format!("the upload is larger than http.max_upload ({max} bytes); nothing was registered"),
    )
}

async fn upload(
    State(s): State<HttpState>,
    caller: Option<axum::Extension<Caller>>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<UploadParams>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, HeaderMap, Json<serde_json::Value>), ApiError> {
    let Path(name) = p.map_err(super::api::path_error)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    // Before any byte is read: a bad name would waste the whole upload.
    crate::registry::RegistryError::check_model_name(&name)
        .map_err(|e| ApiError::from(crate::protocol::ErrorBody::from(e)))?;
    let folder = match text(&headers, header::CONTENT_TYPE.as_str())? {
        None | Some("application/octet-stream") => false,
        Some("application/x-tar") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Content-Type {other:?} is not served: send a file as application/octet-stream or a folder as application/x-tar"
            ))
            .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        }
    };
    // A compressed body would be stored as sent (the gzip bytes, not the model): refused
    // rather than decoded, so what is stored is always the bytes the client hashed.
    if let Some(enc) = text(&headers, header::CONTENT_ENCODING.as_str())?
        && !enc.trim().eq_ignore_ascii_case("identity")
    {
        return Err(ApiError::bad_request(format!(
            "Content-Encoding {enc:?} is not served: send the bytes as they are (curl: no --compressed; no Content-Encoding header); nothing was registered"
        ))
        .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
    }
    // hyper decodes `chunked` only: another transfer coding (`gzip, chunked`) would be
    // stored as sent, compressed.
    if let Some(te) = text(&headers, header::TRANSFER_ENCODING.as_str())?
        && te
            .split(',')
            .any(|c| !c.trim().eq_ignore_ascii_case("chunked"))
    {
        return Err(ApiError::bad_request(format!(
            "Transfer-Encoding {te:?} is not served: only chunked; nothing was registered"
        ))
        .with_status(StatusCode::NOT_IMPLEMENTED));
    }
    let metrics = json_object(&headers, METRICS_HEADER)?;
    let metadata = json_object(&headers, METADATA_HEADER)?;
    let want = client_sha256(&headers)?;
    let cfg = s.ctx.config();
    let max = cfg
        .http
        .as_ref()
        .map_or(crate::config::DEFAULT_MAX_UPLOAD, |h| h.max_upload);
    let declared = text(&headers, header::CONTENT_LENGTH.as_str())?.and_then(|v| v.parse().ok());
    if declared.is_some_and(|n: u64| n > max) {
        return Err(too_large(max));
    }
    if folder {
        if q.filename.is_some() {
            return Err(ApiError::bad_request(
                "a folder (application/x-tar) keeps the model's name: send no ?filename=",
            ));
        }
        let (file, got) = receive(body, &cfg.root, max).await?;
        check_sha256(want.as_deref(), &got)?;
        return super::upload_folder::upload_folder(&s, name, metrics, metadata, file).await;
    }
    let Some(filename) = q.filename else {
        return Err(ApiError::bad_request(
            "an upload names its file: ?filename=resnet18.pt (the stored file's name)",
        ));
    };
    // Refused before the body is received (a bad name would cost a whole body), and
    // never written raw into the log.
    crate::server::check_filename(&filename).map_err(ApiError::from)?;
    // The request line the socket would read: the same parser and the same checks.
    let mut line =
        serde_json::json!({"op": "register", "name": name, "filename": filename}).to_string();
    line.pop();
    for (key, raw) in [("metrics", &metrics), ("metadata", &metadata)] {
        if let Some(raw) = raw {
            line.push_str(&format!(",\"{key}\":{raw}"));
        }
    }
    line.push('}');
    let (req, _) = parse_request(line.as_bytes()).map_err(|r| {
        ApiError::from(r.error.unwrap_or(crate::protocol::ErrorBody {
            code: ErrorCode::Internal,
            message: "an error answer without a body".into(),
        }))
    })?;
    if !matches!(req, Request::Register { .. }) {
        return Err(ApiError::new(ErrorCode::Internal, "not a register request"));
    }
    let (file, got) = receive(body, &cfg.root, max).await?;
    check_sha256(want.as_deref(), &got)?;
    let who = caller.and_then(|c| c.0.0.clone()).unwrap_or_default();
    tracing::info!(model = %name, token = %who, "upload of {filename:?} received; handing it over");
    let r =
        crate::server::register_handover(req, line.as_bytes(), OwnedFd::from(file), &s.ctx, None)
            .await;
    match (r.result, r.error) {
        (_, Some(e)) => Err(e.into()),
        (Some(mut v), None) => {
            let created = v["created"].as_bool().unwrap_or(false);
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, HeaderMap::new(), Json(v["version"].take())))
        }
        (None, None) => Err(ApiError::new(
            ErrorCode::Internal,
            "an answer with neither result nor error",
        )),
    }
}

/// Reads the body into an unnamed file under `root` (O_TMPFILE where the file system
/// has it, else created and unlinked at once: it vanishes with its descriptor, whatever
/// happens), hashing it as it is written, on the blocking pool. Refused with 413 the
/// moment more than `max` bytes arrive. Answers the file (rewound by the copy) and its
/// SHA-256.
async fn receive(
    mut body: Body,
    root: &std::path::Path,
    max: u64,
) -> Result<(std::fs::File, String), ApiError> {
    let internal = |what: String| ApiError::new(ErrorCode::Internal, what);
    let file = tempfile::tempfile_in(root).map_err(|e| {
        internal(format!(
            "cannot create the upload's file in {}: {e}",
            root.display()
        ))
    })?;
    // A stored file is never more readable than its source: an upload is stored as a
    // file a writer with the usual umask (022) would have dropped in the inbox.
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| internal(format!("cannot set the upload's mode: {e}")))?;
    }
    // A few chunks in flight: a slow disk slows the client, not the daemon's memory.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<axum::body::Bytes>(4);
    let writer = tokio::task::spawn_blocking(move || {
        let mut file = file;
        let mut hasher = Sha256::new();
        while let Some(chunk) = rx.blocking_recv() {
            hasher.update(&chunk);
            file.write_all(&chunk)?;
        }
        Ok::<_, std::io::Error>((file, crate::fsutil::hex(&hasher.finalize())))
    });
    let mut total: u64 = 0;
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        let chunk = match frame {
            None => break,
            Some(Err(e)) => {
                return Err(ApiError::bad_request(format!(
                    "the upload ended early ({e}) after {total} bytes; nothing was registered"
                )));
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue, // trailers
            },
        };
        total += chunk.len() as u64;
        if total > max {
            return Err(too_large(max));
        }
        if tx.send(chunk).await.is_err() {
            break; // the writer failed: its error is answered below
        }
    }
    drop(tx);
    let (file, hash) = writer
        .await
        .map_err(|e| internal(format!("the upload's writer panicked: {e}")))?
        .map_err(|e| {
            let code = if e.raw_os_error() == Some(libc::ENOSPC) {
                ErrorCode::TooLarge
            } else {
                ErrorCode::Internal
            };
            ApiError::new(
                code,
                format!(
                    "cannot write the upload under {}: {e}; nothing was registered",
                    root.display()
                ),
            )
        })?;
    if total == 0 {
        return Err(ApiError::new(
            ErrorCode::UnusableFile,
            "the upload is empty (0 bytes): an empty file never becomes a version; nothing was registered",
        ));
    }
    // The hand-over refuses a file some descriptor still has open for writing (its lease
    // probe), as this one is: reopen the unnamed file read-only through /proc (the one
    // way to name it) and close the writable descriptor.
    use std::os::fd::AsRawFd;
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let read_only = std::fs::File::open(&proc_path).map_err(|e| {
        internal(format!(
            "cannot reopen the upload read-only ({proc_path}): {e}"
        ))
    })?;
    drop(file);
    Ok((read_only, hash))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_key_given_twice_is_found_at_any_depth() {
        use super::duplicate_key as dup;
        assert_eq!(
            dup(r#"{"loss": 0.3, "acc": 1, "loss": 0.2}"#),
            Some("loss".into())
        );
        assert_eq!(
            dup(r#"{"a": {"b": [1, {"c": 1, "c": 2}]}}"#),
            Some("c".into())
        );
        assert_eq!(dup(r#"{"a": {"x": 1}, "b": {"x": 2}}"#), None);
        assert_eq!(super::shown("x-modelreg-metrics"), "X-Modelreg-Metrics");
    }
}
