//! The changes a `write` token may make over HTTP: alias set, remove and rollback, and
//! deprecate, each the socket's request of the same name answered by the socket's own
//! handler (the registrar applies it; the answer comes once it is durable).
//!
//! The daemon's own uid is recorded with the change, where the socket records its peer's:
//! a token stands for no local user. The token's name goes to the daemon's log (the
//! alias history has no field for it). `rm`, `gc`, `compact` and the rest stay on the
//! daemon's machine (docs/http.md, Changes).

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::routing::{post, put};
use serde::Deserialize;

use super::api::{Answer, ask_as, path_error};
use super::auth::Caller;
use super::{ApiError, HttpState};
use crate::protocol::Request;

/// The change routes (every method but GET/HEAD needs a write token: `auth`).
pub(super) fn routes() -> Router<HttpState> {
    Router::new()
        .route(
            "/api/v1/models/{name}/aliases/{alias}",
            put(alias_set).delete(alias_remove),
        )
        .route(
            "/api/v1/models/{name}/aliases/{alias}/rollback",
            post(rollback),
        )
        .route(
            "/api/v1/models/{name}/versions/{version}/deprecate",
            post(deprecate),
        )
}

/// `alias set`'s body: `{"version": "v3"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasBody {
    version: String,
}

/// `deprecate`'s body, optional: `{"reason": "..."}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeprecateBody {
    reason: Option<String>,
}

/// The JSON body as `T`; an empty body is `T`'s default when `empty` is given.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8], empty: Option<T>) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace)
        && let Some(t) = empty
    {
        return Ok(t);
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(format!("the body is not the JSON this route takes: {e}"))
    })
}

/// Asks the socket's handler with the daemon's own uid, logging the token's name.
async fn change(s: &HttpState, caller: Option<axum::Extension<Caller>>, req: Request) -> Answer {
    let req = req.normalized();
    let who = caller.and_then(|c| c.0.0.clone()).unwrap_or_default();
    tracing::info!(token = %who, "{} asked over HTTP", req.op());
    ask_as(s, req, Some(crate::server::own_uid())).await
}

type Pair = Result<Path<(String, String)>, PathRejection>;

async fn alias_set(
    State(s): State<HttpState>,
    caller: Option<axum::Extension<Caller>>,
    p: Pair,
    bytes: Bytes,
) -> Answer {
    let Path((name, alias)) = p.map_err(path_error)?;
    let b: AliasBody = body(&bytes, None)?;
    let req = Request::AliasSet {
        name,
        alias,
        version: b.version,
    };
    change(&s, caller, req).await
}

async fn alias_remove(
    State(s): State<HttpState>,
    caller: Option<axum::Extension<Caller>>,
    p: Pair,
) -> Answer {
    let Path((name, alias)) = p.map_err(path_error)?;
    change(&s, caller, Request::AliasRemove { name, alias }).await
}

async fn rollback(
    State(s): State<HttpState>,
    caller: Option<axum::Extension<Caller>>,
    p: Pair,
) -> Answer {
    let Path((name, alias)) = p.map_err(path_error)?;
    change(&s, caller, Request::Rollback { name, alias }).await
}

async fn deprecate(
    State(s): State<HttpState>,
    caller: Option<axum::Extension<Caller>>,
    p: Pair,
    bytes: Bytes,
) -> Answer {
    let Path((name, version)) = p.map_err(path_error)?;
    let b: DeprecateBody = body(&bytes, Some(DeprecateBody::default()))?;
    let req = Request::Deprecate {
        name,
        version,
        reason: b.reason,
    };
    change(&s, caller, req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_read_or_refused_with_a_reason() {
        let b: AliasBody = body(br#"{"version":"v3"}"#, None).unwrap();
        assert_eq!(b.version, "v3");
        assert!(body::<AliasBody>(b"", None).is_err());
        assert!(body::<AliasBody>(br#"{"version":"v3","x":1}"#, None).is_err());
        let d: DeprecateBody = body(b" ", Some(DeprecateBody::default())).unwrap();
        assert_eq!(d.reason, None);
    }
}
