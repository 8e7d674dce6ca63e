//! `Access-Control-Allow-Origin: *` on the API's reads when `http.anonymous_read` is on, so
//! that a page from another origin (a dashboard, an `EventSource` on `/api/v1/events`)
//! can read what anyone may read without a token.
//!
//! Only `GET`/`HEAD` under `/api/v1/`, and never with `Access-Control-Allow-Credentials`:
//! no preflight (`OPTIONS`) is answered, so a page elsewhere cannot send an
//! `Authorization` header, and a browser's cookies are not sent with such requests.
//! Tokens stay with same-origin pages and non-browser clients.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::Response;

use super::HttpState;

/// The middleware: adds the header to answers (errors included, so a page can read
/// why it was refused) of the reads anyone may make.
pub(super) async fn allow_anonymous_reads(
    State(state): State<HttpState>,
    request: Request,
    next: Next,
) -> Response {
    let read = matches!(*request.method(), Method::GET | Method::HEAD)
        && request.uri().path().starts_with("/api/v1/");
    let open = read
        && state
            .ctx
            .config()
            .http
            .as_ref()
            .is_some_and(|h| h.anonymous_read);
    let mut r = next.run(request).await;
    if open {
        r.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    }
    r
}
