//! The `events` request: a long-lived stream of the event log to one client, as NDJSON.
//!
//! Lines, in order: one answer line (`{"ok":true,"result":{"first":F,"last":L,"from":S}}`,
//! or `{"ok":false,...}` for a bad request), then one event per line (docs/events.md),
//! a heartbeat line (`{"heartbeat":true,"last":L,"time":T}`) every [`HEARTBEAT`] while
//! nothing is sent, and, without `follow`, an end line (`{"end":true,"last":L}`). A
//! stream that cannot go on ends with an error line: `compacted` (with `first`, the
//! oldest seq kept) when the client asked for or fell behind to events compacted away,
//! `too_slow` when it read nothing for [`super::WRITE_TIMEOUT`], `shutting_down`.
//!
//! The registrar never waits for a subscriber: it only bumps the log's watch. Each
//! stream reads the log itself (memory for recent events, else the segments on the
//! blocking pool), one batch of at most [`BATCH`] events at a time, so a slow reader
//! costs one batch of memory and falls behind on its own; a reconnect with its last seq
//! plus one continues where it stopped.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::net::unix::OwnedWriteHalf;

use super::Context;
use super::connection::{WriteFailed, write_answer};
use super::connections::{Conn, Phase};
use crate::events::{Filter, Kind, Log, ReadError};
use crate::protocol::{ErrorCode, Request, Response, Since};
use crate::shutdown::Shutdown;

/// How often a heartbeat line is sent on an idle stream, by default.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// The most events read (and held) at once for one stream.
const BATCH: usize = 512;

/// Where a stream starts and what it passes, from the request.
struct Plan {
    from: u64,
    follow: bool,
    filter: Filter,
    heartbeat: Duration,
}

/// The plan of `req` (an `events` request) on `log`, or the error answer.
fn plan(req: Request, log: &Log) -> Result<Plan, Response> {
    let Request::Events {
        since,
        last,
        models,
        kinds,
        follow,
        heartbeat_ms,
    } = req
    else {
        return Err(Response::err(ErrorCode::Internal, "not an events request"));
    };
    let bad = |m: String| Response::err(ErrorCode::BadRequest, m);
    let kinds = kinds
        .iter()
        .map(|k| {
            Kind::parse(k).ok_or_else(|| {
                let all: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                bad(format!("no event kind {k:?}; kinds are {}", all.join(", ")))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(m) = models.iter().find(|m| m.is_empty()) {
        return Err(bad(format!("model filter {m:?} is empty")));
    }
    let next = log.last() + 1;
    let from = match (since, last) {
        (Some(_), Some(_)) => return Err(bad("give since or last, not both".into())),
        (Some(Since::Seq(n)), None) => n,
        (Some(Since::Word(w)), None) if w == "now" => next,
        (Some(Since::Word(w)), None) => {
            return Err(bad(format!("since {w:?} is neither a seq nor \"now\"")));
        }
        (None, Some(n)) => next.saturating_sub(n).max(log.first()),
        (None, None) => next,
    };
    let heartbeat = heartbeat_ms.map_or(HEARTBEAT, |ms| Duration::from_millis(ms.max(100)));
    Ok(Plan {
        from,
        follow,
        filter: Filter { models, kinds },
        heartbeat,
    })
}

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

/// Committed events from `from`, at most [`BATCH`]: from memory, else from disk on the
/// blocking pool.
async fn batch(log: &Arc<Log>, from: u64) -> Result<Vec<crate::events::Event>, ReadError> {
    if let Some(v) = log.read_recent(from, BATCH) {
        return Ok(v);
    }
    let log = log.clone();
    tokio::task::spawn_blocking(move || log.read(from, BATCH))
        .await
        .unwrap_or_else(|e| Err(ReadError::Io(e.to_string())))
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
    let mut watch = log.subscribe();
    let p = match plan(req, &log) {
        Ok(p) => p,
        Err(mut r) => {
            r.id = id;
            let _ = write_answer(w, &r.to_line(), None).await;
            return;
        }
    };
    let (first, last) = (log.first(), log.last());
    let mut head = Response::ok(json!({"first": first, "last": last, "from": p.from}));
    head.id = id;
    if write_answer(w, &head.to_line(), None).await.is_err() {
        return;
    }
    let until = last;
    let mut from = p.from;
    // The client closed its sending side (`echo ... | socat`): it may still read, so
    // the stream goes on; a client that is gone is noticed at the next write.
    let mut half_closed = false;
    loop {
        // Marked seen before reading: a commit from here on wakes the wait below.
        watch.borrow_and_update();
        let events = match batch(&log, from).await {
            Ok(v) => v,
            Err(ReadError::Compacted { first }) => {
                let msg = format!(
                    "events from {from} on were compacted away: the oldest kept is {first}; ask again with since {first} (what was before is gone)"
                );
                let _ = write_answer(w, &error_line(ErrorCode::Compacted, msg, Some(first)), None)
                    .await;
                return;
            }
            Err(ReadError::Io(e)) => {
                let _ = write_answer(w, &error_line(ErrorCode::Internal, e, None), None).await;
                return;
            }
        };
        // Everything before this batch was handed over whole; of the batch, the client
        // may have got part when a write fails, so it resumes from the batch's start.
        let sent_before = from;
        let mut out = Vec::new();
        for e in &events {
            if !p.follow && e.seq > until {
                break;
            }
            from = e.seq + 1;
            if p.filter.matches(e) {
                // The event as logged, fields in the documented order.
                if serde_json::to_writer(&mut out, e).is_ok() {
                    out.push(b'\n');
                }
            }
        }
        let done = !p.follow && (from > until || events.is_empty());
        if !out.is_empty() {
            match write_answer(w, &out, Some(&conn.close)).await {
                Ok(()) => {}
                Err(WriteFailed::Unread) => {
                    let msg = format!(
                        "the stream was not read for {}s; disconnected (ask again with since {sent_before} to continue: events before it were sent whole)",
                        super::WRITE_TIMEOUT.as_secs()
                    );
                    tracing::debug!("{msg}");
                    let _ = write_answer(w, &error_line(ErrorCode::TooSlow, msg, None), None).await;
                    return;
                }
                Err(_) => return,
            }
        }
        if done {
            let _ = write_answer(w, &line(&json!({"end": true, "last": until})), None).await;
            return;
        }
        if !events.is_empty() {
            // More may be waiting: read on without a pause, letting others run between.
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = shutdown.wait() => {
                let msg = "the daemon is stopping; continue with since {from} once it is back".replace("{from}", &from.to_string());
                let _ = tokio::time::timeout(Duration::from_secs(1), write_answer(w, &error_line(ErrorCode::ShuttingDown, msg, None), None)).await;
                return;
            }
            r = watch.changed() => if r.is_err() { return },
            eof = client_input(reader), if !half_closed => half_closed = eof,
            _ = tokio::time::sleep(p.heartbeat) => {
                let beat = json!({
                    "heartbeat": true,
                    "last": log.last(),
                    "time": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
                });
                if write_answer(w, &line(&beat), Some(&conn.close)).await.is_err() {
                    return;
                }
            }
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
