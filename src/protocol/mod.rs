//! The control socket's protocol, shared by the server and the client: one JSON object
//! per line each way. See docs/protocol.md for every request with an example.

use serde::{Deserialize, Serialize};

use crate::config::Direction;
use crate::registry::{Kind, Metadata};

/// The longest request line accepted, newline included. Longer ones get a `too_large`
/// answer and the connection is closed (the rest of the line cannot be resynchronised).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A request, tagged by `op`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Liveness check.
    Ping {},
    /// Every model with its latest version and version count.
    List {},
    /// Every version of one model.
    Versions {
        /// The model.
        name: String,
    },
    /// One version: `vN`, `latest` (default) or `best`.
    Get {
        /// The model.
        name: String,
        /// `vN`, `latest` or `best`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        selector: Option<String>,
        /// For `best`: the metric (default: the model's configured metric, else the global one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metric: Option<String>,
        /// For `best`: `max` or `min` (default: from the configuration).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<Direction>,
    },
    /// Uptime, counts, what is waiting to settle, problems and recent errors.
    Status {},
    /// Wait until the inbox entry `entry` of model `name`, as it is on disk now, has been
    /// registered (or found identical to a registered version); answers that version.
    Wait {
        /// The model.
        name: String,
        /// The entry's name in the inbox (`resnet18.pt`, or a folder's name).
        entry: String,
        /// How long to wait, in milliseconds (default 60000, at most 3600000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// Point an alias (production, staging, ...) at a version.
    AliasSet {
        /// The model.
        name: String,
        /// The alias.
        alias: String,
        /// `vN`.
        version: String,
    },
    /// Remove an alias.
    AliasRemove {
        /// The model.
        name: String,
        /// The alias.
        alias: String,
    },
    /// Every move of every alias of a model.
    History {
        /// The model.
        name: String,
    },
    /// Move an alias back to where it pointed before its last move.
    Rollback {
        /// The model.
        name: String,
        /// The alias.
        alias: String,
    },
    /// Hide a version from latest and best (it stays stored and reachable by vN).
    Deprecate {
        /// The model.
        name: String,
        /// `vN`.
        version: String,
        /// Why.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Delete a version's files, leaving a tombstone (the number is never reused).
    Rm {
        /// The model.
        name: String,
        /// `vN`.
        version: String,
        /// Why.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// Also drop the aliases pointing to it.
        #[serde(default)]
        force: bool,
    },
    /// Apply the retention policy (one model, or all); `dry_run` only lists.
    Gc {
        /// Only this model.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// List what would be removed, remove nothing.
        #[serde(default)]
        dry_run: bool,
    },
    /// Re-hash every stored file (of one model, or all) and report what differs.
    Verify {
        /// Only this model.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
}

impl Request {
    /// The `op` name, for logs.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Ping {} => "ping",
            Request::List {} => "list",
            Request::Versions { .. } => "versions",
            Request::Get { .. } => "get",
            Request::Status {} => "status",
            Request::Wait { .. } => "wait",
            Request::AliasSet { .. } => "alias_set",
            Request::AliasRemove { .. } => "alias_remove",
            Request::History { .. } => "history",
            Request::Rollback { .. } => "rollback",
            Request::Deprecate { .. } => "deprecate",
            Request::Rm { .. } => "rm",
            Request::Gc { .. } => "gc",
            Request::Verify { .. } => "verify",
        }
    }

    /// The request with its model names and aliases in Unicode NFC,
    /// so that every spelling of one visible name finds the same model (the names are
    /// checked where they are used).
    pub fn normalized(mut self) -> Request {
        use crate::names::to_nfc;
        match &mut self {
            Request::Ping {} | Request::List {} | Request::Status {} => {}
            Request::Get { name, selector, .. } => {
                *name = to_nfc(name);
                if let Some(s) = selector {
                    *s = to_nfc(s);
                }
            }
            Request::Versions { name }
            | Request::History { name }
            | Request::Deprecate { name, .. }
            | Request::Rm { name, .. } => *name = to_nfc(name),
            // The entry is a file name in the inbox, used as it is on disk.
            Request::Wait { name, .. } => *name = to_nfc(name),
            Request::AliasSet { name, alias, .. }
            | Request::AliasRemove { name, alias }
            | Request::Rollback { name, alias } => {
                *name = to_nfc(name);
                *alias = to_nfc(alias);
            }
            Request::Gc { name, .. } | Request::Verify { name } => {
                if let Some(n) = name {
                    *n = to_nfc(n);
                }
            }
        }
        self
    }

    /// Whether the request changes the registry, so that the peer's uid is checked
    /// (SO_PEERCRED).
    pub fn is_mutating(&self) -> bool {
        match self {
            Request::AliasSet { .. }
            | Request::AliasRemove { .. }
            | Request::Rollback { .. }
            | Request::Deprecate { .. }
            | Request::Rm { .. } => true,
            Request::Gc { dry_run, .. } => !dry_run,
            _ => false,
        }
    }
}

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
    /// The peer's uid may not make this change.
    PermissionDenied,
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

/// Parses one request line (without its newline). Returns the request and its `id`, or
/// the error answer to send (with the `id` when one could be read).
pub fn parse_request(line: &[u8]) -> Result<(Request, Option<serde_json::Value>), Response> {
    let value = parse_unique(line).map_err(|e| {
        Response::err(
            ErrorCode::BadRequest,
            format!("request is not valid JSON: {e}"),
        )
    })?;
    let serde_json::Value::Object(mut obj) = value else {
        return Err(Response::err(
            ErrorCode::BadRequest,
            "request must be a JSON object such as {\"op\":\"list\"}",
        ));
    };
    let id = obj.remove("id");
    let with_id = |mut r: Response| {
        r.id = id.clone();
        r
    };
    match obj.get("op") {
        Some(serde_json::Value::String(op)) if !OPS.contains(&op.as_str()) => {
            return Err(with_id(Response::err(
                ErrorCode::UnknownOp,
                format!("unknown op {op:?}; known: {}", OPS.join(", ")),
            )));
        }
        Some(serde_json::Value::String(_)) => {}
        _ => {
            return Err(with_id(Response::err(
                ErrorCode::BadRequest,
                "request needs a string field \"op\"",
            )));
        }
    }
    serde_json::from_value::<Request>(serde_json::Value::Object(obj))
        .map(|r| (r.normalized(), id.clone()))
        .map_err(|e| {
            with_id(Response::err(
                ErrorCode::BadRequest,
                format!("bad request: {e}"),
            ))
        })
}

/// Parses JSON text into a value, refusing a key given twice in one object (which a
/// plain parse would resolve silently by keeping the last).
fn parse_unique(line: &[u8]) -> serde_json::Result<serde_json::Value> {
    use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
    use std::fmt;

    struct Unique;

    impl<'de> DeserializeSeed<'de> for Unique {
        type Value = serde_json::Value;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Unique {
        type Value = serde_json::Value;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E: Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(v.into())
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(v.into())
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(v.into())
        }
        fn visit_f64<E: Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(v.into())
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(v.into())
        }
        fn visit_string<E: Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(v.into())
        }
        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(serde_json::Value::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = a.next_element_seed(Unique)? {
                out.push(v);
            }
            Ok(serde_json::Value::Array(out))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            let mut out = serde_json::Map::new();
            while let Some(k) = a.next_key::<String>()? {
                if out.contains_key(&k) {
                    return Err(A::Error::custom(format!(
                        "duplicate key {k:?}; each field may be given once"
                    )));
                }
                let v = a.next_value_seed(Unique)?;
                out.insert(k, v);
            }
            Ok(serde_json::Value::Object(out))
        }
    }

    let mut de = serde_json::Deserializer::from_slice(line);
    let v = Unique.deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

/// Every `op` the daemon answers.
pub const OPS: &[&str] = &[
    "ping",
    "list",
    "versions",
    "get",
    "status",
    "wait",
    "alias_set",
    "alias_remove",
    "history",
    "rollback",
    "deprecate",
    "rm",
    "gc",
    "verify",
];

/// A stored file in an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Absolute path.
    pub path: String,
    /// Hex SHA-256.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
}

/// One version in an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The model.
    pub name: String,
    /// `vN`.
    pub version: String,
    /// N.
    pub number: u32,
    /// File or folder.
    pub kind: Kind,
    /// Absolute path to open: the file of a single-file version, the folder otherwise.
    pub path: String,
    /// Absolute path of the version folder.
    pub dir: String,
    /// Every stored file.
    pub files: Vec<FileInfo>,
    /// Total bytes.
    pub size: u64,
    /// The inbox entry it came from, relative to the root.
    pub source: String,
    /// When it was registered.
    pub registered_at: String,
    /// Metrics.
    pub metrics: crate::registry::Metrics,
    /// Free metadata.
    pub metadata: Metadata,
    /// When the metrics were last changed by a sidecar edit, if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_updated_at: Option<String>,
    /// live, deprecated or removed.
    #[serde(default = "live")]
    pub state: String,
    /// Aliases pointing to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Why it was deprecated or removed, when and by whom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark: Option<crate::registry::Mark>,
}

fn live() -> String {
    "live".into()
}

/// One model in a `list` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSummary {
    /// The model.
    pub name: String,
    /// `vN` of the latest version.
    pub latest: String,
    /// How many versions it has.
    pub versions: usize,
    /// When the latest version was registered.
    pub registered_at: String,
    /// Absolute path of the latest version.
    pub path: String,
    /// Set when no version is live (`-` as latest): their states, e.g. `no live version:
    /// v1 deprecated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// How `best` was decided, returned with a `get ... best` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BestBasis {
    /// The metric compared.
    pub metric: String,
    /// Its direction.
    pub mode: Direction,
}

/// Something waiting in the inbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Waiting {
    /// The model name.
    pub name: String,
    /// Its inbox entries.
    pub entries: Vec<String>,
    /// settling, writing, registering, blocked or retrying.
    pub state: String,
    /// Seconds since it was first seen changing.
    pub since_secs: f64,
    /// Why it waits (every state: the open file, the temporary, the sidecar error, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// While registering: bytes copied so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<u64>,
    /// While registering: bytes to copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    /// While registering: bytes per second so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_bytes_per_sec: Option<f64>,
    /// While registering: seconds left at that rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_secs: Option<f64>,
}

/// A problem that lasts until its cause is fixed (an invalid sidecar, a refused name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The path concerned.
    pub path: String,
    /// What is wrong and what to do.
    pub message: String,
    /// Since when.
    pub since: String,
}

/// A past error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentError {
    /// When.
    pub at: String,
    /// What.
    pub message: String,
}

/// The `status` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// The daemon's version.
    pub version: String,
    /// Its process id.
    pub pid: u32,
    /// Seconds since start.
    pub uptime_secs: f64,
    /// The registry root.
    pub root: String,
    /// The config source.
    pub config: String,
    /// The inbox.
    pub inbox: String,
    /// How the inbox is watched (inotify, or poll and why).
    pub watch: String,
    /// The settle period in seconds.
    pub settle_secs: f64,
    /// Number of models.
    pub models: usize,
    /// Number of versions.
    pub versions: usize,
    /// Versions registered since start.
    pub registered_since_start: u64,
    /// What waits in the inbox.
    pub waiting: Vec<Waiting>,
    /// Current problems.
    pub problems: Vec<Problem>,
    /// The last errors, newest last.
    pub recent_errors: Vec<RecentError>,
    /// The last changes made through the socket (aliases, removals), newest last.
    #[serde(default)]
    pub recent_changes: Vec<RecentError>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_get_with_id() {
        let (r, id) =
            parse_request(br#"{"op":"get","name":"m","selector":"best","mode":"min","id":7}"#)
                .unwrap();
        assert_eq!(id, Some(serde_json::json!(7)));
        assert_eq!(
            r,
            Request::Get {
                name: "m".into(),
                selector: Some("best".into()),
                metric: None,
                mode: Some(Direction::Min)
            }
        );
    }

    #[test]
    fn errors() {
        let code = |line: &[u8]| parse_request(line).unwrap_err().error.unwrap().code;
        assert_eq!(code(b"nope"), ErrorCode::BadRequest);
        assert_eq!(code(b"[1]"), ErrorCode::BadRequest);
        assert_eq!(code(br#"{"name":"x"}"#), ErrorCode::BadRequest);
        assert_eq!(code(br#"{"op":"fly"}"#), ErrorCode::UnknownOp);
        assert_eq!(code(br#"{"op":"versions"}"#), ErrorCode::BadRequest);
        assert_eq!(code(br#"{"op":"list","extra":1}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(br#"{"op":"get","name":"m","mode":"up"}"#),
            ErrorCode::BadRequest
        );
        let r = parse_request(br#"{"op":"fly","id":"a"}"#).unwrap_err();
        assert_eq!(r.id, Some(serde_json::json!("a")));
    }

    #[test]
    fn ops_list_matches_enum() {
        for op in OPS {
            let forms = [
                format!(r#"{{"op":"{op}"}}"#),
                format!(r#"{{"op":"{op}","name":"m"}}"#),
                format!(r#"{{"op":"{op}","name":"m","entry":"m.pt"}}"#),
                format!(r#"{{"op":"{op}","name":"m","alias":"a"}}"#),
                format!(r#"{{"op":"{op}","name":"m","alias":"a","version":"v1"}}"#),
                format!(r#"{{"op":"{op}","name":"m","version":"v1"}}"#),
            ];
            assert!(
                forms.iter().any(|l| parse_request(l.as_bytes()).is_ok()),
                "{op}"
            );
        }
    }
}
