//! Requests: the `Request` enum tagged by `op`, and the parsing of one request line.

use serde::{Deserialize, Serialize};

use super::unique::parse_unique;
use super::{ErrorCode, Response};
use crate::config::Direction;

/// A request, tagged by `op`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Liveness check.
    Ping {},
    /// Every model with its latest version and version count; with a search, the
    /// models with a matching version.
    List {
        /// Only versions matching this expression (docs/search.md).
        #[serde(rename = "where", default, skip_serializing_if = "Option::is_none")]
        filter: Option<String>,
        /// Only versions whose metadata `tags` hold every one of these.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tags: Vec<String>,
        /// Order by this field (`-` first: descending); missing values last.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sort: Option<String>,
        /// At most this many items; the answer's `next_cursor` asks for the next page.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
        /// The previous page's `next_cursor`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
    /// Every version of one model, or those a search finds.
    Versions {
        /// The model.
        name: String,
        /// Only versions matching this expression (docs/search.md).
        #[serde(rename = "where", default, skip_serializing_if = "Option::is_none")]
        filter: Option<String>,
        /// Only versions whose metadata `tags` hold every one of these.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tags: Vec<String>,
        /// Order by this field (`-` first: descending); missing values last.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sort: Option<String>,
        /// At most this many items; the answer's `next_cursor` asks for the next page.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
        /// The previous page's `next_cursor`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
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
    /// A stream of the event log (docs/events.md): a first answer line with the
    /// retained range, then one event per line, a heartbeat line while idle; with
    /// `follow` it lasts until the client closes, without it it ends after the events
    /// logged when it was asked. Socket only.
    Events {
        /// The first seq wanted (0: the oldest kept), or `"now"`: only events to come.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<Since>,
        /// Start with the last this many events of the log (when `since` is not given).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last: Option<u64>,
        /// Only these models: names, or globs with `*` and `?` (none: every model).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        models: Vec<String>,
        /// Only these kinds (`registered`, `alias_set`, ...; none: every kind).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        kinds: Vec<String>,
        /// Keep the stream open for events to come.
        #[serde(default)]
        follow: bool,
        /// How often a heartbeat line is sent while idle, in milliseconds (default
        /// 15000, at least 100).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        heartbeat_ms: Option<u64>,
    },
    /// Register an already complete file handed over as an open descriptor (SCM_RIGHTS,
    /// exactly one, sent with this line): the daemon copies from the descriptor, so no
    /// path permission and no settle wait is involved. Answers like `wait`.
    Register {
        /// The model.
        name: String,
        /// The stored file's name (`resnet18.pt`).
        filename: String,
        /// Numeric metrics, checked as a sidecar's are.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metrics: Option<serde_json::Map<String, serde_json::Value>>,
        /// Free metadata, checked as a sidecar's is.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metadata: Option<serde_json::Map<String, serde_json::Value>>,
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
    /// Write registry.yaml now from the catalog in memory and empty the journal
    /// (otherwise it is rewritten at most every `registry_write_interval`).
    Compact {},
    /// Re-hash every stored file (of one model, or all) and report what differs.
    Verify {
        /// Only this model.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// Create an HTTP API token: answered once with its secret; only its hash is kept.
    TokenCreate {
        /// The token's name (for list and revoke).
        name: String,
        /// `read` or `write`.
        scope: String,
    },
    /// Every HTTP API token's name, scope and creation time (never a secret or hash).
    TokenList {},
    /// Revoke an HTTP API token: refused by the HTTP API from the next request on.
    TokenRevoke {
        /// The token's name.
        name: String,
    },
}

impl Request {
    /// The `op` name, for logs.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Ping {} => "ping",
            Request::List { .. } => "list",
            Request::Versions { .. } => "versions",
            Request::Get { .. } => "get",
            Request::Status {} => "status",
            Request::Wait { .. } => "wait",
            Request::Register { .. } => "register",
            Request::AliasSet { .. } => "alias_set",
            Request::AliasRemove { .. } => "alias_remove",
            Request::History { .. } => "history",
            Request::Rollback { .. } => "rollback",
            Request::Deprecate { .. } => "deprecate",
            Request::Rm { .. } => "rm",
            Request::Gc { .. } => "gc",
            Request::Verify { .. } => "verify",
            Request::Compact {} => "compact",
            Request::TokenCreate { .. } => "token_create",
            Request::TokenList {} => "token_list",
            Request::TokenRevoke { .. } => "token_revoke",
            Request::Events { .. } => "events",
        }
    }

    /// The request with its model names and aliases in Unicode NFC,
    /// so that every spelling of one visible name finds the same model (the names are
    /// checked where they are used).
    pub fn normalized(mut self) -> Request {
        use crate::names::to_nfc;
        match &mut self {
            // Token names are ASCII by their own rule (checked where they are used).
            Request::Ping {}
            | Request::List { .. }
            | Request::Status {}
            | Request::Compact {}
            | Request::TokenCreate { .. }
            | Request::TokenList {}
            | Request::TokenRevoke { .. } => {}
            Request::Events { models, .. } => {
                for m in models {
                    *m = to_nfc(m);
                }
            }
            Request::Get { name, selector, .. } => {
                *name = to_nfc(name);
                if let Some(s) = selector {
                    *s = to_nfc(s);
                }
            }
            Request::Versions { name, .. }
            | Request::History { name }
            | Request::Deprecate { name, .. }
            | Request::Rm { name, .. } => *name = to_nfc(name),
            // The entry is a file name in the inbox, used as it is on disk.
            Request::Wait { name, .. } => *name = to_nfc(name),
            // The file name is stored as given, like an inbox entry's.
            Request::Register { name, .. } => *name = to_nfc(name),
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
            | Request::Rm { .. }
            | Request::Compact {} => true,
            // Tokens open the HTTP API: only those who may change the registry make them.
            Request::TokenCreate { .. } | Request::TokenRevoke { .. } => true,
            Request::Gc { dry_run, .. } => !dry_run,
            _ => false,
        }
    }
}

/// Where an `events` stream starts: a seq, or `"now"` (any other word is refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Since {
    /// The first seq wanted (0: the oldest kept).
    Seq(u64),
    /// `"now"`.
    Word(String),
}

impl Since {
    /// `since` given as text (the CLI's `--since`, the HTTP query's `since=`, a string
    /// on the socket): `now`, or a whole number >= 0 in plain digits (no sign, no
    /// spaces). The one parser of all three paths, so each refuses alike, with
    /// [`Since::refusal`].
    pub fn parse(text: &str) -> Result<Since, String> {
        if text == "now" {
            return Ok(Since::Word(text.to_string()));
        }
        Since::seq(text)
            .map(Since::Seq)
            .ok_or_else(|| Since::refusal(&format!("{text:?}")))
    }

    /// The message refusing `given` (as the client wrote it) as a `since`.
    pub fn refusal(given: &str) -> String {
        format!("since must be a whole number >= 0 or \"now\", not {given}")
    }

    /// A seq written in plain ASCII digits (`u64::from_str` alone would take `+5`).
    pub fn seq(text: &str) -> Option<u64> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok()
    }
}

impl<'de> Deserialize<'de> for Since {
    /// A whole number >= 0 or a string; anything else (`-1`, `1.5`, `true`) is refused
    /// with a message that says what `since` takes.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Number(n) if n.as_u64().is_some() => {
                Ok(Since::Seq(n.as_u64().unwrap_or_default()))
            }
            serde_json::Value::String(s) => Ok(Since::Word(s)),
            other => Err(serde::de::Error::custom(Since::refusal(&other.to_string()))),
        }
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

/// Every `op` the daemon answers.
pub const OPS: &[&str] = &[
    "ping",
    "list",
    "versions",
    "get",
    "status",
    "wait",
    "register",
    "alias_set",
    "alias_remove",
    "history",
    "rollback",
    "deprecate",
    "rm",
    "gc",
    "verify",
    "compact",
    "token_create",
    "token_list",
    "token_revoke",
    "events",
];
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
                format!(r#"{{"op":"{op}","name":"m","filename":"m.pt"}}"#),
                format!(r#"{{"op":"{op}","name":"m","alias":"a"}}"#),
                format!(r#"{{"op":"{op}","name":"m","alias":"a","version":"v1"}}"#),
                format!(r#"{{"op":"{op}","name":"m","version":"v1"}}"#),
                format!(r#"{{"op":"{op}","name":"m","scope":"read"}}"#),
            ];
            assert!(
                forms.iter().any(|l| parse_request(l.as_bytes()).is_ok()),
                "{op}"
            );
        }
    }
}
