//! The `events` request: a long-lived stream of the event log to one client, as NDJSON.
//!
//! Lines, in order: one answer line (`{"ok":true,"result":{"first":F,"last":L,"from":S}}`,
//! or `{"ok":false,...}` for a bad request), then one event per line (docs/events.md),
//! a heartbeat line (`{"heartbeat":true,"last":L,"time":T}`) every [`HEARTBEAT`](super::subscription::HEARTBEAT) while
//! nothing is sent, and, without `follow`, an end line (`{"end":true,"last":L}`). A
//! stream that cannot go on ends with an error line: `compacted` (with `first`, the
//! oldest seq kept) when the client asked for or fell behind to events compacted away,
//! `too_slow` when it read nothing for [`super::WRITE_TIMEOUT`], `shutting_down`.
//!
//! Where the stream is and what it passes is a [`Subscription`] (shared with the HTTP
//! API's Server-Sent Events); this module writes its steps as lines.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::net::unix::OwnedWriteHalf;

use super::Context;
use super::connection::{WriteFailed, write_answer};
use super::connections::{Conn, Phase};
use super::subscription::{Step, Subscription, too_slow_message};
use crate::protocol::{ErrorCode, Request, Response};
use crate::shutdown::Shutdown;

/// One line of JSON with its newline.
fn line(v: &serde_json::Value) -> Vec<u8> {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    b
}

/// The error line that ends a stream.
fn error_line(code: ErrorCode, message: String, first: Option<u64>) -> Vec<u8> {
    let mut e = json!({"code": code, "message": message});
    if let Some(f) = first {
        e["first"] = json!(f);
    }
    line(&json!({"ok": false, "error": e}))
}

/// Streams the event log to the client of `w` for `req` until the client goes, the
/// daemon stops, or (without `follow`) the events logged when it asked were sent.
pub(super) async fn stream<R: AsyncBufRead + Unpin>(
    req: Request,
    id: Option<serde_json::Value>,
    reader: &mut R,
    w: &mut OwnedWriteHalf,
    ctx: &Context,
    shutdown: &Shutdown,
    conn: &Conn,
) {
    // A subscription is long-lived by design: never the one closed to admit another.
    conn.set(Phase::Subscribed);
    let Some(log) = ctx.shared.events().cloned() else {
        let r = Response::err(ErrorCode::Internal, "this daemon keeps no event log");
        let _ = write_answer(w, &r.to_line(), None).await;
        return;
    };
    let mut sub = match Subscription::open(req, log.clone()) {
        Ok(s) => s,
        Err(mut r) => {
            r.id = id;
            let _ = write_answer(w, &r.to_line(), None).await;
            return;
        }
    };
    let mut head = Response::ok(sub.head().clone());
    head.id = id;
    if write_answer(w, &head.to_line(), None).await.is_err() {
        return;
    }
    // The client closed its sending side (`echo ... | socat`): it may still read, so
    // the stream goes on; a client that is gone is noticed at the next write.
    let mut half_closed = false;
    loop {
        let input = async {
            if half_closed {
                std::future::pending().await
            } else {
                client_input(reader).await
            }
        };
        let step = sub.next(shutdown, input).await;
        match step {
            Step::Events { events, resume } => {
                let mut out = Vec::new();
                for e in &events {
                    // The event as logged, fields in the documented order.
                    if serde_json::to_writer(&mut out, e).is_ok() {
                        out.push(b'\n');
                    }
                }
                match write_answer(w, &out, Some(&conn.close)).await {
                    Ok(()) => {}
                    Err(WriteFailed::Unread { done }) => {
                        let msg = too_slow_message(super::WRITE_TIMEOUT.as_secs(), resume);
                        tracing::debug!("{msg}");
                        // The rest of the event the timeout cut (if any) goes first, so
                        // that every line stays JSON and the error is a line of its own.
                        let done = done.min(out.len());
                        let rest = &out[done..];
                        let mid_line = done > 0 && out[done - 1] != b'\n';
                        let cut = match rest.iter().position(|&b| b == b'\n') {
                            Some(i) if mid_line => i + 1,
                            _ => 0,
                        };
                        let mut last = rest[..cut].to_vec();
                        last.extend(error_line(ErrorCode::TooSlow, msg, None));
                        let _ = write_answer(w, &last, None).await;
                        return;
                    }
                    Err(_) => return,
                }
            }
            Step::End { last } => {
                let _ = write_answer(w, &line(&json!({"end": true, "last": last})), None).await;
                return;
            }
            Step::Compacted { first, message } => {
                let e = error_line(ErrorCode::Compacted, message, Some(first));
                let _ = write_answer(w, &e, None).await;
                return;
            }
            Step::Refused {
                code,
                message,
                first,
            } => {
                let _ = write_answer(w, &error_line(code, message, first), None).await;
                return;
            }
            Step::Failed(e) => {
                let _ = write_answer(w, &error_line(ErrorCode::Internal, e, None), None).await;
                return;
            }
            Step::Stopping { message } => {
                let e = error_line(ErrorCode::ShuttingDown, message, None);
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), write_answer(w, &e, None)).await;
                return;
            }
            Step::Heartbeat { last } => {
                let beat = json!({
                    "heartbeat": true,
                    "last": last,
                    "time": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
                });
                if write_answer(w, &line(&beat), Some(&conn.close))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Step::Input(eof) => half_closed = eof,
            Step::Gone => return,
        }
    }
}

/// Resolves when the client closed its sending side (`true`), or sent something, which
/// is read and ignored (`false`): a stream takes no further requests.
async fn client_input<R: AsyncBufRead + Unpin>(reader: &mut R) -> bool {
    match reader.fill_buf().await {
        Ok([]) => true,
        Ok(b) => {
            let n = b.len();
            reader.consume(n);
            false
        }
        Err(_) => true,
    }
}
