//! The control socket's protocol, shared by the server and the client: one JSON object
//! per line each way. See docs/protocol.md for every request with an example.
//!
//! [`request`] reads requests, [`answers`] holds the typed answer of each one, and this
//! module the answer line and the error codes (each [`RegistryError`] maps to its code
//! here, once).

mod answers;
mod lists;
mod request;
mod search;
mod unique;

pub use answers::*;
pub use lists::{ModelList, ModelSummary, VersionList};
pub use request::{OPS, Request, Since, parse_request};
pub use search::SearchFields;

use serde::{Deserialize, Serialize};

use crate::registry::RegistryError;

/// The longest request line accepted, newline included. Longer ones get a `too_large`
/// answer and the connection is closed (the rest of the line cannot be resynchronised).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// How long the daemon waits for the registrar to make a change durable before it
/// answers that the change was not confirmed. A client waits a little longer than this
/// for a change's answer, so that it reports what the daemon says, never its own timeout.
pub const CHANGE_CONFIRM: std::time::Duration = std::time::Duration::from_secs(120);

/// Machine-readable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not an object, a missing or wrong field.
    BadRequest,
    /// `op` names no request.
    UnknownOp,
    /// The line is longer than [`MAX_REQUEST_BYTES`].
    TooLarge,
    /// A model name that cannot exist (`/`, `..`, control characters, ...).
    InvalidName,
    /// A selector that is neither `vN`, `latest` nor `best`.
    InvalidSelector,
    /// No such model.
    ModelNotFound,
    /// No such version.
    VersionNotFound,
    /// `best` found no version with the metric.
    NoMetric,
    /// The catalog names a stored file that is gone.
    FileMissing,
    /// The daemon is at its connection limit.
    Busy,
    /// The request line did not arrive in time.
    Timeout,
    /// `wait`: no such entry in the inbox.
    EntryNotFound,
    /// `wait`: the entry cannot be registered until something is fixed (an invalid sidecar,
    /// a refused name); the message says what.
    Blocked,
    /// The version was removed (its tombstone says when and why).
    VersionRemoved,
    /// No such alias.
    AliasNotFound,
    /// `rollback`: the alias has no earlier position.
    NothingToRollBack,
    /// `rm`: an alias points to the version (use force).
    Aliased,
    /// `register`: the descriptor handed over is not a readable regular file (a FIFO, a
    /// socket, a device, a folder, opened write-only), or reading it failed.
    UnusableFile,
    /// `register`: the file changed while it was copied; nothing was kept.
    SourceChanged,
    /// The peer's uid may not make this change.
    PermissionDenied,
    /// The daemon is stopping (SIGTERM): the request was cancelled and nothing of it was
    /// kept; send it again once the daemon is back.
    ShuttingDown,
    /// HTTP: no such route, or no such file in the version.
    NotFound,
    /// HTTP: a `Range` that the file cannot satisfy, or more than one range.
    RangeNotSatisfiable,
    /// `events`: the events asked for were compacted away (the error's `first` is the
    /// oldest kept).
    Compacted,
    /// `events`: the events asked for are missing from the log (lost or damaged; the
    /// error's `first` is the next kept seq to resume from).
    Missing,
    /// `events`: the subscriber did not read its stream in time and was disconnected;
    /// it resumes from its last seq.
    TooSlow,
    /// A bug or an I/O failure in the daemon.
    Internal,
}

/// An error answer's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What kind of error.
    pub code: ErrorCode,
    /// A sentence for people, naming what was asked.
    pub message: String,
}

/// One answer line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The request's `id`, echoed when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<serde_json::Value>,
    /// The answer, when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The error, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Response {
    /// A success answer.
    pub fn ok(result: serde_json::Value) -> Self {
        Response {
            ok: true,
            id: None,
            result: Some(result),
            error: None,
        }
    }

    /// A success answer carrying a typed answer.
    pub fn answer<T: Serialize>(result: &T) -> Self {
        match serde_json::to_value(result) {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(ErrorCode::Internal, format!("cannot serialise answer: {e}")),
        }
    }

    /// An error answer.
    pub fn err(code: ErrorCode, message: impl Into<String>) -> Self {
        Response {
            ok: false,
            id: None,
            result: None,
            error: Some(ErrorBody {
                code,
                message: message.into(),
            }),
        }
    }

    /// Serialises the answer as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).unwrap_or_else(|_| {
            br#"{"ok":false,"error":{"code":"internal","message":"unserialisable answer"}}"#
                .to_vec()
        });
        v.push(b'\n');
        v
    }
}

impl From<&RegistryError> for ErrorCode {
    /// The wire code of each refusal of a catalog rule: the one place they are paired.
    fn from(e: &RegistryError) -> ErrorCode {
        match e {
            RegistryError::InvalidName { .. } | RegistryError::InvalidAlias { .. } => {
                ErrorCode::InvalidName
            }
            RegistryError::NotAVersion { .. } | RegistryError::InvalidSelector { .. } => {
                ErrorCode::InvalidSelector
            }
            RegistryError::ModelNotFound { .. } => ErrorCode::ModelNotFound,
            RegistryError::VersionNotFound { .. } => ErrorCode::VersionNotFound,
            RegistryError::NoLiveVersion { for_best, .. } => {
                if *for_best {
                    ErrorCode::NoMetric
                } else {
                    ErrorCode::VersionNotFound
                }
            }
            RegistryError::NoMetric { .. } => ErrorCode::NoMetric,
            RegistryError::VersionRemoved { .. } => ErrorCode::VersionRemoved,
            RegistryError::AliasNotFound { .. } => ErrorCode::AliasNotFound,
            RegistryError::NothingToRollBack { .. } => ErrorCode::NothingToRollBack,
            RegistryError::Aliased { .. } => ErrorCode::Aliased,
            RegistryError::FileMissing { .. } => ErrorCode::FileMissing,
            RegistryError::NotSaved { .. } | RegistryError::OutcomeUnknown { .. } => {
                ErrorCode::Internal
            }
        }
    }
}

impl From<RegistryError> for ErrorBody {
    fn from(e: RegistryError) -> ErrorBody {
        ErrorBody {
            code: ErrorCode::from(&e),
            message: e.to_string(),
        }
    }
}

impl From<RegistryError> for Response {
    fn from(e: RegistryError) -> Response {
        let body = ErrorBody::from(e);
        Response::err(body.code, body.message)
    }
}
