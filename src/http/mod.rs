//! The HTTP API: the catalog as JSON and the stored files as downloads, over HTTP/1 on
//! the daemon's runtime. Off unless `http.listen` is set; see docs/http.md.
//!
//! It is a second door to what the control socket serves, not a second source of truth:
//! every JSON answer is the socket's own answer to the same request (built by
//! [`server::dispatch`](crate::server::dispatch) from the same published catalog), and
//! every error carries the socket's code with a fitting HTTP status ([`ApiError`]).
//!
//! `listener` binds and accepts (limits on headers, a header read timeout, a connection
//! cap, graceful shutdown), `api` the JSON routes, `files` the downloads (with `range`
//! for `Range`/conditional headers, `paths` for the checks on a requested file path,
//! `body` for streamed bodies), `archive` a version as one streamed tar (`tar` its
//! headers), `dashboard` the web pages ([`crate::dashboard`]), `auth` the token check
//! every request passes, `changes` the alias and deprecate changes a write token makes, `events`
//! the event log as Server-Sent Events,
//! `upload` new versions sent over HTTP (a folder as a tar:
//! `upload_folder`, read by `untar`), `tls` HTTPS (`http.tls`), `metrics` the
//! Prometheus exposition and the request timing, `hub` the Hugging Face Hub's read
//! protocol (`hub_tree` its file listing), `paced` the minimum pace of request bodies,
//! and `error` the one error type.
//!
//! New routes are added to [`router`] from a module of their own, taking [`HttpState`].
//! A route that serves stored files under another scheme finds the version with
//! `files::find` and answers with `files::serve_file` (ETag, Range, 304 and HEAD).

mod api;
mod archive;
mod auth;
mod body;
mod changes;
mod cors;
mod dashboard;
mod error;
mod events;
mod files;
mod hub;
mod hub_tree;
mod listener;
mod metrics;
mod paced;
mod paths;
mod range;
mod search;
mod tar;
mod tls;
mod untar;
mod upload;
mod upload_folder;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::protocol::ErrorCode;
use crate::server::Context;
use crate::shutdown::Shutdown;

pub use error::{ApiError, status_of};
pub use listener::{Bound, MAX_HEAD_BYTES, bind, start};
pub use metrics::HttpMetrics;
pub use tls::Certificate;

/// What every route's handler gets: the socket server's context (the published catalog
/// and settings, the status board, the registrar) and the daemon's shutdown signal.
#[derive(Clone)]
pub struct HttpState {
    /// The same context the control socket's handlers read.
    pub ctx: Arc<Context>,
    /// Triggered when the daemon stops: new requests are answered 503.
    pub stop: Shutdown,
    /// Requests and connections counted for `/metrics`.
    pub metrics: Arc<HttpMetrics>,
}

/// Every route, with the answers for unknown routes and methods. A module that adds
/// routes merges its own `Router<HttpState>` here.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .merge(api::routes())
        .merge(files::routes())
        .merge(dashboard::routes())
        .merge(upload::routes())
        .merge(metrics::routes())
        .merge(hub::routes())
        .merge(changes::routes())
        .merge(events::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        // Innermost: only requests let through reach a body, and a trickled one is cut.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            paced::pace,
        ))
        // Inside `gate`: a request is refused for its head or the shutdown before its
        // token is looked at.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::check,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), gate))
        // Outside `auth::check`: its refusals carry the header too, readable by a page.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            cors::allow_anonymous_reads,
        ))
        // Outermost: every answer is counted, refusals by the layers above included.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state)
}

async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route {}; the API is under /api/v1/ (see docs/http.md)",
        uri.path()
    ))
}

async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::bad_request(format!("{method} is not served on {}", uri.path()))
        .with_status(axum::http::StatusCode::METHOD_NOT_ALLOWED)
}

/// What every request passes first. Once the daemon is stopping, a request that still
/// arrives (on a connection that was open) is answered 503 rather than started. A head
/// larger than [`MAX_HEAD_BYTES`] is answered 431: hyper refuses one that overflows its
/// read buffer, but a head that arrives in one read can end up in a larger buffer.
async fn gate(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    if state.stop.is_triggered() {
        return ApiError::new(ErrorCode::ShuttingDown, "the daemon is shutting down")
            .into_response();
    }
    let head: usize = request.uri().to_string().len()
        + request
            .headers()
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if head > MAX_HEAD_BYTES {
        return ApiError::new(
            ErrorCode::TooLarge,
            format!("request headers of {head} bytes; at most {MAX_HEAD_BYTES} are read"),
        )
        .with_status(axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        .into_response();
    }
    // Query values are decoded leniently (a bad byte becomes U+FFFD): refuse them here,
    // as the path's are refused, rather than look up a name nobody wrote.
    if let Some(q) = request.uri().query()
        && percent_encoding::percent_decode_str(q)
            .decode_utf8()
            .is_err()
    {
        return ApiError::bad_request("the query string is not UTF-8 once percent-decoded")
            .into_response();
    }
    next.run(request).await
}
