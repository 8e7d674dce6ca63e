//! Who may ask: every request shows a token (`Authorization: Bearer <token>`) unless it
//! only reads and `http.anonymous_read` is on. See docs/http.md, Authentication.
//!
//! A token is checked by its SHA-256 against the daemon's kept hashes in constant time
//! ([`Tokens::check`](crate::tokens::Tokens::check)), on every request: a revoked token
//! is refused from the request after the revocation, with no restart. Reading is
//! `GET`/`HEAD`; every other method (uploads, alias and deprecate changes) needs a
//! `write` token.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, HttpState};
use crate::protocol::ErrorCode;
use crate::tokens::Scope;

/// The token a request was let in with (its name), for the handlers' logs; `None` when
/// it came in anonymously.
#[derive(Debug, Clone)]
pub struct Caller(pub Option<String>);

/// Routes anyone may ask, token or not: a liveness probe that tells nothing of the
/// catalog.
const OPEN: &[&str] = &["/api/v1/ping"];

/// The scope a request needs: reading for `GET`/`HEAD`, writing for anything else.
fn needed(method: &Method) -> Scope {
    if method == Method::GET || method == Method::HEAD {
        Scope::Read
    } else {
        Scope::Write
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case);
/// `Ok(None)` for another scheme (`Basic` from a proxy's own login: not ours to read, so
/// the request is as one without a token); `Err` for a header of no known form.
fn bearer(value: &HeaderValue) -> Result<Option<&str>, &'static str> {
    let v = value
        .to_str()
        .map_err(|_| "the Authorization header is not ASCII")?;
    let (scheme, token) = v
        .trim()
        .split_once(' ')
        .ok_or("the Authorization header is not `Bearer <token>`")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    Ok(Some(token.trim()))
}

/// 401 with `WWW-Authenticate: Bearer`, as RFC 6750 asks (`error="invalid_token"` when a
/// token was sent but is not one of ours).
fn unauthorized(message: &str, sent: bool) -> Response {
    let mut r = ApiError::new(ErrorCode::PermissionDenied, message)
        .with_status(StatusCode::UNAUTHORIZED)
        .into_response();
    let challenge = if sent {
        r#"Bearer realm="modelreg", error="invalid_token""#
    } else {
        r#"Bearer realm="modelreg""#
    };
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    r
}

/// The middleware: lets a request through with its [`Caller`], or answers 401/403.
pub(super) async fn check(
    State(state): State<HttpState>,
    mut request: Request,
    next: Next,
) -> Response {
    if OPEN.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let need = needed(request.method());
    let token = match request.headers().get(header::AUTHORIZATION).map(bearer) {
        None | Some(Ok(None)) => None,
        Some(Ok(Some(token))) => Some(token),
        Some(Err(why)) => return unauthorized(why, true),
    };
    let caller = match token {
        None => {
            let anonymous = state.ctx.config().http.as_ref().is_some_and(|h| {
                h.anonymous_read
                    || (h.anonymous_metrics && request.uri().path() == super::metrics::PATH)
            });
            if need == Scope::Read && anonymous {
                None
            } else {
                let what = match need {
                    Scope::Read => "reading needs a token (http.anonymous_read is off)",
                    Scope::Write => "uploads and changes need a write token",
                };
                return unauthorized(
                    &format!(
                        "{what}: send `Authorization: Bearer <token>` (modelreg token create NAME --scope read|write; another scheme, such as a proxy's Basic login, is not read)"
                    ),
                    false,
                );
            }
        }
        Some(token) => {
            let Some((name, scope)) = state.ctx.tokens.check(token) else {
                return unauthorized(
                    "the token is not valid (mistyped, or revoked); modelreg token list shows the valid ones",
                    true,
                );
            };
            if !scope.allows(need) {
                return ApiError::new(
                    ErrorCode::PermissionDenied,
                    format!(
                        "token {name:?} may only read; {} {} needs a write token",
                        request.method(),
                        request.uri().path()
                    ),
                )
                .into_response();
            }
            Some(name)
        }
    };
    request.extensions_mut().insert(Caller(caller));
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_header_is_read_in_any_case_and_other_schemes_are_not_ours() {
        let h = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(bearer(&h("Bearer mr_abc")), Ok(Some("mr_abc")));
        assert_eq!(bearer(&h("bearer  mr_abc ")), Ok(Some("mr_abc")));
        assert_eq!(bearer(&h("Basic dXNlcjpwYXNz")), Ok(None));
        assert!(bearer(&h("mr_abc")).is_err());
    }

    #[test]
    fn only_get_and_head_read() {
        assert_eq!(needed(&Method::GET), Scope::Read);
        assert_eq!(needed(&Method::HEAD), Scope::Read);
        assert_eq!(needed(&Method::PUT), Scope::Write);
        assert_eq!(needed(&Method::POST), Scope::Write);
        assert_eq!(needed(&Method::DELETE), Scope::Write);
    }
}
