//! The `events` request: a long-lived stream of the event log to one client, as NDJSON.
//!
//! Lines, in order: one answer line (`{"ok":true,"result":{"first":F,"last":L,"from":S}}`,
//! or `{"ok":false,...}` for a bad request), then one event per line (docs/events.md),
//! a heartbeat line (`{"heartbeat":true,"last":L,"time":T}`) every [`HEARTBEAT`](super::subscription::HEARTBEAT) while
//! nothing is sent, and, without `follow`, an end line (`{"end":true,"last":L}`). A
//! stream that cannot go on ends with an error line: `compacted` (with `first`, the
//! oldest seq kept) when the client asked for or fell behind to events compacted away,
//! `too_slow` when it read nothing for [`super::WRITE_TIMEOUT`] (sent with the rest of
//! the line the timeout cut, within [`CLOSE_GRACE`]), `shutting_down`. A request that
//! cannot start (`since` past the end, compacted away) is answered with its error line
//! alone.
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

/// How long a subscriber that read nothing for [`super::WRITE_TIMEOUT`] is given to take
/// the rest of the event the timeout cut and the `too_slow` line. Bytes already queued in
/// the kernel cannot be taken back, so the stream can only end on a whole line if the
/// client reads again; a waiting subscriber costs the registrar nothing, so the wait is
/// long (a client paused for a minute still learns where to resume).
pub const CLOSE_GRACE: Duration = Duration::from_secs(60);

/// One line of JSON with its newline.
fn line(v: &serde_json::Value) -> Vec<u8> {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    b
}

/// An error line, keys in the order of every other answer line (`ok` first).
#[derive(serde::Serialize)]
struct ErrorLine<'a> {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a serde_json::Value>,
    error: ErrorFields,
}

/// The error of an [`ErrorLine`]: code, message, and where to resume when there is one.
#[derive(serde::Serialize)]
struct ErrorFields {
    code: ErrorCode,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    first: Option<u64>,
}

/// The error line that ends a stream (or, with the request's `id`, refuses one).
fn error_line(code: ErrorCode, message: String, first: Option<u64>) -> Vec<u8> {
    error_line_for(None, code, message, first)
}

fn error_line_for(
    id: Option<&serde_json::Value>,
    code: ErrorCode,
    message: String,
    first: Option<u64>,
) -> Vec<u8> {
    let fields = ErrorFields {
        code,
        message,
        first,
    };
    let e = ErrorLine {
        ok: false,
        id,
        error: fields,
    };
    let mut b = serde_json::to_vec(&e).unwrap_or_default();
    b.push(b'\n');
    b
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
    let log = match super::subscription::source_ready(ctx.shared.source()).await {
        Ok(log) => log,
        Err((code, message)) => {
            let r = Response::err(code, message);
            let _ = write_answer(w, &r.to_line(), None).await;
            return;
        }
    };
    let mut sub = match Subscription::open(req, log.clone()) {
        Ok(s) => s,
        Err(mut r) => {
            r.id = id;
            let _ = write_answer(w, &r.to_line(), None).await;
            return;
        }
    };
    // Refused before the head (since past the end, compacted away, a hole): the error
    // line alone, as for any other bad request.
    if let Err(step) = sub.start().await {
        let (code, message, first) = step.into_error();
        let _ = write_answer(w, &error_line_for(id.as_ref(), code, message, first), None).await;
        return;
    }
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
                // Where each event's line ends in `out`, and its seq.
                let mut ends = Vec::with_capacity(events.len());
                for e in &events {
                    // The event as logged, fields in the documented order.
                    if serde_json::to_writer(&mut out, e).is_ok() {
                        out.push(b'\n');
                        ends.push((out.len(), e.seq));
                    }
                }
                match write_answer(w, &out, Some(&conn.close)).await {
                    Ok(()) => {}
                    Err(WriteFailed::Unread { done }) => {
                        close_too_slow(w, &out, &ends, done, resume, shutdown).await;
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

/// Ends a stream whose client read nothing for [`super::WRITE_TIMEOUT`] after `done`
/// bytes of `out` (whose lines end at `ends`, with their seqs): the rest of the line the
/// timeout cut, then the `too_slow` line naming the seq after the last whole event the
/// client gets, written within [`CLOSE_GRACE`] (or until the daemon stops). A client
/// that still reads nothing is left with a cut line: the clients say where to resume.
async fn close_too_slow(
    w: &mut OwnedWriteHalf,
    out: &[u8],
    ends: &[(usize, u64)],
    done: usize,
    resume: u64,
    shutdown: &Shutdown,
) {
    let done = done.min(out.len());
    // The first line not wholly handed over is finished; the client gets every event
    // up to it, and resumes after it.
    let (end, resume) = match ends.iter().find(|(end, _)| *end > done) {
        Some(&(end, seq)) if done > 0 && out[done - 1] != b'\n' => (end, seq + 1),
        Some(&(_, seq)) => (done, seq),
        None => (done, ends.last().map_or(resume, |&(_, seq)| seq + 1)),
    };
    let msg = too_slow_message(super::WRITE_TIMEOUT.as_secs(), resume);
    tracing::info!("events subscriber closed: {msg}");
    let mut last = out[done..end].to_vec();
    last.extend(error_line(ErrorCode::TooSlow, msg, None));
    tokio::select! {
        r = tokio::time::timeout(CLOSE_GRACE, write_answer_all(w, &last)) => {
            if !matches!(r, Ok(true)) {
                tracing::info!(
                    "events subscriber still not reading after {} s more: its last line is cut; it resumes from its last seq + 1 ({resume})",
                    CLOSE_GRACE.as_secs()
                );
            }
        }
        _ = shutdown.wait() => {}
    }
}

/// Writes all of `bytes` however slowly they are taken; whether they were.
async fn write_answer_all(w: &mut OwnedWriteHalf, bytes: &[u8]) -> bool {
    use tokio::io::AsyncWriteExt;
    w.write_all(bytes).await.is_ok()
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
