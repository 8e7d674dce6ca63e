//! A subscription to the event log, whatever carries it: the socket's `events` (NDJSON,
//! [`super::events`]) and the HTTP API's Server-Sent Events (src/http/events.rs) both drive
//! one [`Subscription`] and only format what it yields.
//!
//! The registrar never waits for a subscriber: it only bumps the log's watch. Each
//! subscription reads the log itself (memory for recent events, else the segments on the
//! blocking pool), one batch of at most [`BATCH`] events at a time, so a slow reader
//! costs one batch of memory and falls behind on its own; a reconnect with its last seq
//! plus one continues where it stopped.

use std::future::Future;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use crate::events::{Event, Filter, Kind, ReadError, Source};
use crate::protocol::{ErrorCode, Request, Response, Since};
use crate::shutdown::Shutdown;

/// How often a heartbeat is sent on an idle stream, by default.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// The most events read (and held) at once for one stream.
const BATCH: usize = 512;

/// What a subscription has for its carrier next.
#[derive(Debug)]
pub enum Step {
    /// Events that pass the filter, in order. `resume`: the seq a client that got only
    /// part of them (a failed write) continues from; everything before was sent whole.
    Events {
        /// The events.
        events: Vec<Event>,
        /// Where the batch began.
        resume: u64,
    },
    /// Without `follow`: every event logged when it was asked was sent.
    End {
        /// The last seq of the log when it was asked.
        last: u64,
    },
    /// The stream asked for (or fell behind to) events compacted away: it ends.
    Compacted {
        /// The oldest seq kept.
        first: u64,
        /// What this error says to the client.
        message: String,
    },
    /// The stream reached events missing from the log (`missing`, `first`: where to
    /// resume) or asked past its end (`bad_request`): it ends with this error.
    Refused {
        /// The error's code.
        code: ErrorCode,
        /// What this error says to the client.
        message: String,
        /// The seq to resume from, when there is one.
        first: Option<u64>,
    },
    /// The log could not be read: it ends.
    Failed(String),
    /// Nothing was sent for the heartbeat period.
    Heartbeat {
        /// The last committed seq.
        last: u64,
    },
    /// The daemon is stopping: it ends. `message` says where to continue.
    Stopping {
        /// What this error says to the client.
        message: String,
    },
    /// The carrier's input future resolved with this (the socket: its client closed
    /// its sending side, or sent something).
    Input(bool),
    /// The log is gone (the daemon is going away).
    Gone,
}

impl Step {
    /// The error a step that ends the stream stands for: its code, message and the seq
    /// to resume from (for a refusal before the stream starts, from
    /// [`Subscription::start`]).
    pub fn into_error(self) -> (ErrorCode, String, Option<u64>) {
        match self {
            Step::Compacted { first, message } => (ErrorCode::Compacted, message, Some(first)),
            Step::Refused {
                code,
                message,
                first,
            } => (code, message, first),
            Step::Failed(m) => (ErrorCode::Internal, m, None),
            other => (ErrorCode::Internal, format!("{other:?}"), None),
        }
    }
}

/// One subscription: where it is in the log and what it passes.
pub struct Subscription {
    log: Source,
    watch: watch::Receiver<u64>,
    from: u64,
    until: u64,
    follow: bool,
    filter: Filter,
    heartbeat: Duration,
    /// After a step of events: whether the stream is done (without `follow`).
    after_events: Option<bool>,
    /// The first batch, read by [`Subscription::start`] before the stream began.
    first_batch: Option<Vec<Event>>,
    /// The answer head: `{"first":F,"last":L,"from":S}`.
    head: serde_json::Value,
}

impl Subscription {
    /// The subscription `req` (an `events` request) asks for on `log`, or the error
    /// answer for a bad request.
    pub fn open(req: Request, log: Source) -> Result<Subscription, Response> {
        // Subscribed before the log is looked at: no commit from here on is missed.
        let watch = log.subscribe();
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
        let (first, until) = (log.first(), log.last());
        let next = until + 1;
        let from = match (since, last) {
            (Some(_), Some(_)) => return Err(bad("give since or last, not both".into())),
            (Some(Since::Seq(n)), None) => n,
            // A string: the same parser as the CLI's --since and the HTTP query's.
            (Some(Since::Word(w)), None) => match Since::parse(&w).map_err(bad)? {
                Since::Seq(n) => n,
                Since::Word(_) => next,
            },
            (None, Some(n)) => next.saturating_sub(n).max(first),
            (None, None) => next,
        };
        let heartbeat = heartbeat_ms.map_or(HEARTBEAT, |ms| Duration::from_millis(ms.max(100)));
        Ok(Subscription {
            log,
            watch,
            from,
            until,
            follow,
            filter: Filter { models, kinds },
            heartbeat,
            after_events: None,
            first_batch: None,
            head: json!({"first": first, "last": until, "from": from}),
        })
    }

    /// Reads the first batch before anything is sent, so that a request that cannot
    /// start (`since` past the end, compacted away, inside a hole the log lost) is
    /// refused with its error alone (the socket: one error line; HTTP: a status and a
    /// JSON body an `EventSource` does not retry) rather than a stream that ends at once.
    /// The error is a [`Step::Compacted`], [`Step::Refused`] or [`Step::Failed`].
    ///
    /// Team mode: a `since` past what this host has applied may name an event another
    /// host already showed (a subscriber moved to a host a moment behind, or a client
    /// that registered and asks at once): the start waits up to [`READY_WAIT`] for this
    /// host to apply up to it, and only then refuses it as past the end.
    pub async fn start(&mut self) -> Result<(), Step> {
        // Marked seen before reading, as in `next`: a commit from here on wakes it.
        self.watch.borrow_and_update();
        let mut read = batch(&self.log, self.from).await;
        if matches!(read, Err(ReadError::Ahead { .. })) && matches!(self.log, Source::Remote(_)) {
            let behind = self.from.saturating_sub(1);
            let mut applied = self.log.subscribe();
            let caught = tokio::time::timeout(READY_WAIT, applied.wait_for(|l| *l >= behind));
            if matches!(caught.await, Ok(Ok(_))) {
                self.watch.borrow_and_update();
                self.until = self.until.max(self.log.last());
                self.head["last"] = json!(self.until);
                read = batch(&self.log, self.from).await;
            }
        }
        match read {
            Ok(v) => {
                self.first_batch = Some(v);
                Ok(())
            }
            Err(e) => Err(self.refusal(e)),
        }
    }

    /// The step that ends the stream on `e`.
    fn refusal(&self, e: ReadError) -> Step {
        match e {
            ReadError::Compacted { first } => {
                let message = format!(
                    "events from {} on were compacted away: the oldest kept is {first}; ask again with since {first} (what was before is gone)",
                    self.from
                );
                Step::Compacted { first, message }
            }
            e @ ReadError::Missing { to, .. } => Step::Refused {
                code: ErrorCode::Missing,
                message: format!("{e}; ask again with since {}", to + 1),
                first: Some(to + 1),
            },
            e @ ReadError::Ahead { .. } => Step::Refused {
                code: ErrorCode::BadRequest,
                message: e.to_string(),
                first: None,
            },
            ReadError::Io(e) => Step::Failed(e),
        }
    }

    /// The answer head: the oldest seq kept, the last committed, where the stream starts.
    pub fn head(&self) -> &serde_json::Value {
        &self.head
    }

    /// The seq the stream reads next: a client that got every event sent so far
    /// continues from here.
    pub fn next_seq(&self) -> u64 {
        self.from
    }

    /// The next step of the stream. While idle it waits for a commit, the daemon's
    /// stop, `input` (the carrier's own wake-up, e.g. the client's side; give
    /// `std::future::pending()` for none) or the heartbeat period.
    pub async fn next(&mut self, shutdown: &Shutdown, input: impl Future<Output = bool>) -> Step {
        let mut input = std::pin::pin!(input);
        loop {
            match self.after_events.take() {
                Some(true) => return Step::End { last: self.until },
                // More may be waiting: read on without a pause, letting others run.
                Some(false) => tokio::task::yield_now().await,
                None => {}
            }
            let read = match self.first_batch.take() {
                // Read by `start`, after the watch was marked seen.
                Some(v) => Ok(v),
                None => {
                    // Marked seen before reading: a commit from here on wakes the wait below.
                    self.watch.borrow_and_update();
                    batch(&self.log, self.from).await
                }
            };
            let events = match read {
                Ok(v) => v,
                Err(e) => return self.refusal(e),
            };
            let resume = self.from;
            let read = events.len();
            let mut pass = Vec::new();
            for e in events {
                if !self.follow && e.seq > self.until {
                    break;
                }
                self.from = e.seq + 1;
                if self.filter.matches(&e) {
                    pass.push(e);
                }
            }
            let done = !self.follow && (self.from > self.until || read == 0);
            if !pass.is_empty() {
                self.after_events = Some(done);
                return Step::Events {
                    events: pass,
                    resume,
                };
            }
            if done {
                return Step::End { last: self.until };
            }
            if read > 0 {
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                _ = shutdown.wait() => {
                    let message = format!(
                        "the daemon is stopping; continue with since {} once it is back",
                        self.from
                    );
                    return Step::Stopping { message };
                }
                r = self.watch.changed() => if r.is_err() { return Step::Gone },
                v = &mut input => return Step::Input(v),
                _ = tokio::time::sleep(self.heartbeat) => {
                    return Step::Heartbeat { last: self.log.last() };
                }
            }
        }
    }
}

/// The message of a stream closed because its client read nothing for `secs` seconds.
pub fn too_slow_message(secs: u64, resume: u64) -> String {
    format!(
        "the stream was not read for {secs}s; disconnected (ask again with since {resume} to continue: events before it were sent whole)"
    )
}

/// Committed events from `from`, at most [`BATCH`]: from memory, else from disk on the
/// blocking pool.
async fn batch(log: &Source, from: u64) -> Result<Vec<Event>, ReadError> {
    log.read(from, BATCH).await
}

/// How long a subscription waits for the team's event log to be known on a host that
/// just started (its first snapshot of the catalog applied), before it is refused.
pub const READY_WAIT: Duration = Duration::from_secs(10);

/// The source of events of this daemon, once its bounds are known (team mode: waited
/// for up to [`READY_WAIT`] after a start); else the error to answer.
pub async fn source_ready(source: Option<&Source>) -> Result<Source, (ErrorCode, String)> {
    let Some(source) = source.cloned() else {
        return Err((ErrorCode::Internal, "this daemon keeps no event log".into()));
    };
    if tokio::time::timeout(READY_WAIT, source.ready())
        .await
        .is_err()
    {
        return Err((
            ErrorCode::Internal,
            format!(
                "{} is not read yet (this host has not reached the team's catalog since it started); try again",
                source.describe()
            ),
        ));
    }
    Ok(source)
}
