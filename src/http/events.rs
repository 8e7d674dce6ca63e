//! `GET /api/v1/events`: the event log as Server-Sent Events (`text/event-stream`), the
//! same subscription as the socket's `events` ([`Subscription`]) in another format.
//!
//! Each event goes as `id: <seq>`, `event: <kind>`, `data: <the event's JSON>`; a
//! heartbeat (`: heartbeat`, with an `id:` line saying how far the stream has read, so
//! a filtered stream's `Last-Event-ID` moves on too) every period while idle; without
//! `follow`, `event: end` once the events logged when it was asked were sent. A stream
//! that cannot go on sends `event: error` with `{"code","message"}` (`compacted` with
//! `first`, the oldest seq kept; `shutting_down` with `resume`) and ends. A client
//! that reads nothing for [`WRITE_TIMEOUT`] has its connection closed (the reason and
//! the seq to resume from go to the daemon's log; the client's own `Last-Event-ID` is
//! that seq minus one).
//!
//! A task runs the subscription into a one-chunk channel (`body::channel`) that the
//! connection drains, so a slow client holds one chunk and no thread, and the registrar
//! never waits.

use axum::Router;
use axum::body::{Body as AxumBody, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::body::Sink;
use super::listener::Cut;
use super::{ApiError, HttpState};
use crate::protocol::{ErrorCode, Request, Since};
use crate::server::WRITE_TIMEOUT;
use crate::server::subscription::{Step, Subscription, too_slow_message};
use crate::shutdown::Shutdown;

/// The route (a read: any token, or none with `http.anonymous_read`).
pub(super) fn routes() -> Router<HttpState> {
    Router::new().route("/api/v1/events", get(events))
}

/// The `events` request of the query string (`since`, `last`, `model`, `kind` — each of
/// these two repeated or comma-separated —, `follow`, `heartbeat_ms`) and the
/// `Last-Event-ID` header, which wins over `since`: a reconnecting EventSource sends
/// the same URL with it.
fn request(q: &[(String, String)], headers: &HeaderMap) -> Result<Request, ApiError> {
    let (mut since, mut last, mut models, mut kinds) = (None, None, Vec::new(), Vec::new());
    let (mut follow, mut heartbeat_ms) = (false, None);
    let number = |k: &str, v: &str| {
        Since::seq(v).ok_or_else(|| {
            ApiError::bad_request(format!("{k} must be a whole number >= 0, not {v:?}"))
        })
    };
    for (k, v) in q {
        match k.as_str() {
            // The socket's and the CLI's parser: the same answer to the same text.
            "since" => since = Some(Since::parse(v).map_err(ApiError::bad_request)?),
            "last" => last = Some(number(k, v)?),
            "model" | "models" => models.extend(v.split(',').map(str::to_owned)),
            "kind" | "kinds" => kinds.extend(v.split(',').map(str::to_owned)),
            "follow" => {
                follow = match v.as_str() {
                    "true" | "1" | "" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "follow={v:?}: say true or false"
                        )));
                    }
                }
            }
            "heartbeat_ms" => heartbeat_ms = Some(number(k, v)?),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {k:?}; this route takes since, last, model, kind, follow, heartbeat_ms"
                )));
            }
        }
    }
    if let Some(h) = headers.get("last-event-id") {
        // Plain digits, as `since` (HTTP itself drops the spaces around a header value).
        let id = h.to_str().ok().and_then(Since::seq).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Last-Event-ID must be a whole number >= 0 (the seq of the last event received), not {:?}",
                String::from_utf8_lossy(h.as_bytes())
            ))
        })?;
        since = Some(Since::Seq(id.saturating_add(1)));
        last = None;
    }
    Ok(Request::Events {
        since,
        last,
        models,
        kinds,
        follow,
        heartbeat_ms,
    })
}

async fn events(
    State(s): State<HttpState>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let req = request(&q, &headers)?.normalized();
    let log = crate::server::subscription::source_ready(s.ctx.shared.source())
        .await
        .map_err(|(code, message)| ApiError::new(code, message))?;
    let mut sub = Subscription::open(req, log).map_err(|r| {
        r.error.map_or_else(
            || ApiError::new(ErrorCode::Internal, "no subscription"),
            ApiError::from,
        )
    })?;
    // Refused before the stream begins: a status and a JSON body, which an
    // `EventSource` does not retry (a 200 that ends, it would, for ever).
    if let Err(step) = sub.start().await {
        return Ok(refusal(step));
    }
    // One chunk queued ahead of the connection: a slow client holds no more.
    let (tx, rx) = super::body::channel(None);
    tokio::spawn(produce(sub, tx, s.stop.clone(), Cut::current()));
    let mut r = AxumBody::new(rx).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx and the like: pass each event on at once rather than buffer the answer.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(r)
}

/// The answer to a subscription that cannot start: `400` (`bad_request`: `since` past
/// the end), `410 Gone` (`compacted` or `missing`, with `first`: where to start again),
/// `500` (the log could not be read); the body `{"error":{"code","message","first"}}`.
fn refusal(step: Step) -> Response {
    let (code, message, first) = step.into_error();
    let status = super::error::status_of(code);
    let mut error = json!({"code": code, "message": message});
    if let Some(f) = first {
        error["first"] = json!(f);
    }
    let mut r = (status, axum::Json(json!({ "error": error }))).into_response();
    if let Ok(v) = HeaderValue::from_str(&message.replace(|c: char| !(' '..='~').contains(&c), " "))
    {
        r.headers_mut().insert("x-error-message", v);
    }
    r
}

/// One event block: `event:` and `data:` (one line of JSON), `id:` when given.
fn block(id: Option<u64>, event: &str, data: &impl std::fmt::Display) -> String {
    let id = id.map(|i| format!("id: {i}\n")).unwrap_or_default();
    format!("{id}event: {event}\ndata: {data}\n\n")
}

/// Runs `sub` into `tx` until the stream ends, the client goes, or it reads nothing for
/// [`WRITE_TIMEOUT`] (then `cut` closes its connection).
async fn produce(mut sub: Subscription, tx: Sink, stop: Shutdown, cut: Option<Cut>) {
    let send = |text: String, resume: u64| {
        let (tx, cut) = (&tx, &cut);
        async move {
            match tokio::time::timeout(WRITE_TIMEOUT, tx.send(Ok(Bytes::from(text)))).await {
                Ok(r) => r.is_ok(),
                Err(_) => {
                    let msg = too_slow_message(WRITE_TIMEOUT.as_secs(), resume);
                    tracing::info!("HTTP events subscriber closed: {msg}");
                    if let Some(c) = cut {
                        c.cut();
                    }
                    false
                }
            }
        }
    };
    // A comment first: the answer's head and a first byte through any proxy.
    if !send(format!(": events {}\n\n", sub.head()), sub.next_seq()).await {
        return;
    }
    loop {
        let gone = async {
            tx.closed().await;
            true
        };
        let text = match sub.next(&stop, gone).await {
            Step::Events { events, resume } => {
                let mut text = String::new();
                for e in &events {
                    // The event as logged, fields in the documented order.
                    if let Ok(data) = serde_json::to_string(e) {
                        text.push_str(&block(Some(e.seq), e.kind.name(), &data));
                    }
                }
                if !send(text, resume).await {
                    return;
                }
                continue;
            }
            Step::Heartbeat { .. } => {
                // Everything before `next_seq` was sent (or filtered out).
                let id = sub.next_seq().checked_sub(1);
                let id = id.map(|i| format!("id: {i}\n")).unwrap_or_default();
                if !send(format!(": heartbeat\n{id}\n"), sub.next_seq()).await {
                    return;
                }
                continue;
            }
            Step::End { last } => block(None, "end", &json!({"last": last})),
            Step::Compacted { first, message } => {
                let e = json!({"code": ErrorCode::Compacted, "message": message, "first": first});
                block(None, "error", &e)
            }
            Step::Refused {
                code,
                message,
                first,
            } => {
                let mut e = json!({"code": code, "message": message});
                if let Some(f) = first {
                    e["first"] = json!(f);
                }
                block(None, "error", &e)
            }
            Step::Failed(message) => block(
                None,
                "error",
                &json!({"code": ErrorCode::Internal, "message": message}),
            ),
            Step::Stopping { message } => {
                let e = json!({"code": ErrorCode::ShuttingDown, "message": message, "resume": sub.next_seq()});
                block(None, "error", &e)
            }
            Step::Input(_) | Step::Gone => return,
        };
        // The last words; the stream ends (the connection stays, as after any answer).
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            tx.send(Ok(Bytes::from(text))),
        )
        .await;
        return;
    }
}
