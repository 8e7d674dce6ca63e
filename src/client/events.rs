//! The `events` stream on the client side: the request, then one line per event, over
//! the socket (NDJSON) or the HTTP API (Server-Sent Events, [`super::sse`]). A stream
//! that ends without its end or an error line (the daemon killed, a line cut off) is
//! [`ClientError::StreamEnded`], naming the seq to continue from.

use std::time::Duration;

use super::{Client, ClientError, Conn, answer_result};
use crate::events::Event;
use crate::protocol::{ErrorBody, ErrorCode, Request};

/// One line of an `events` stream, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamLine {
    /// An event.
    Event(Box<Event>),
    /// Nothing happened for a heartbeat period; `last` is the log's last seq (over
    /// HTTP: the seq the stream has read up to).
    Heartbeat {
        /// The last committed seq.
        last: u64,
    },
    /// Without `follow`: everything asked for was sent.
    End,
}

/// How long a followed stream waits between lines: heartbeats come every 15 s at most
/// (unless asked less often), and hours of quiet are normal.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Where a stream is, to say where to continue when it ends early.
pub(super) struct Progress {
    /// The seq of the last whole event received.
    after: Option<u64>,
    /// The seq a new stream continues from.
    next: u64,
}

impl Progress {
    /// A stream whose answer head (`first`, `last`, `from`) is `head`.
    pub(super) fn new(head: &serde_json::Value) -> Progress {
        Progress {
            after: None,
            next: head.get("from").and_then(|v| v.as_u64()).unwrap_or(0),
        }
    }

    /// An event was received whole.
    pub(super) fn event(&mut self, seq: u64) {
        self.after = Some(seq);
        self.next = self.next.max(seq + 1);
    }

    /// The stream has read up to `seq` (filtered events included).
    pub(super) fn read_to(&mut self, seq: u64) {
        self.next = self.next.max(seq + 1);
    }

    /// The error of a stream that ended early, for `reason`.
    pub(super) fn ended(&self, reason: &str) -> ClientError {
        ClientError::StreamEnded {
            after: self.after,
            resume: self.next,
            reason: reason.to_string(),
        }
    }
}

/// The reason given for a line cut off at its end.
pub(super) const CUT: &str =
    "cut off inside a line: the daemon closed a reader too slow to take its stream, or stopped";
/// The reason given for a connection closed without an end.
pub(super) const CLOSED: &str =
    "the connection closed without an end: the daemon stopped or was killed";

/// The error an error line or `event: error` carries.
pub(super) fn remote(v: &serde_json::Value, raw: &str) -> ClientError {
    ClientError::Remote(serde_json::from_value(v.clone()).unwrap_or(ErrorBody {
        code: ErrorCode::Internal,
        message: raw.trim_end().to_string(),
    }))
}

impl Client {
    /// Sends `req` (an [`Request::Events`]) and calls `each` with every line of the
    /// stream, raw (an event's JSON as logged) and decoded, until it ends, or `each`
    /// returns false. An error line (events compacted away, a reader too slow, the
    /// daemon stopping) is returned as [`ClientError::Remote`]; its message says how to
    /// go on. A stream that ends otherwise is [`ClientError::StreamEnded`]. Returns the
    /// first answer's `result` (`first`, `last`, `from`).
    pub fn events(
        &mut self,
        req: &Request,
        mut each: impl FnMut(&str, StreamLine) -> bool,
    ) -> Result<serde_json::Value, ClientError> {
        let follow = matches!(req, Request::Events { follow: true, .. });
        let s = match &mut self.conn {
            Conn::Socket(s) => s,
            Conn::Http(h) => {
                let timeout = h.timeout;
                if follow {
                    h.timeout = FOLLOW_TIMEOUT;
                }
                let r = super::sse::events(h, req, &mut each);
                h.timeout = timeout;
                return r;
            }
        };
        let line = serde_json::to_string(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let head = answer_result(&s.exchange(&line, None)?)?;
        let mut at = Progress::new(&head);
        if follow {
            s.set_read_timeout(FOLLOW_TIMEOUT)?;
        }
        loop {
            let line = match s.next_line() {
                Ok(Some(line)) if line.ends_with('\n') => line,
                Ok(Some(_)) => return Err(at.ended(CUT)),
                Ok(None) => return Err(at.ended(CLOSED)),
                // Cut inside a character, or the connection reset.
                Err(ClientError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::InvalidData =>
                {
                    return Err(at.ended(CUT));
                }
                Err(e) => return Err(at.ended(&e.to_string())),
            };
            let v: serde_json::Value = serde_json::from_str(&line)
                .map_err(|e| ClientError::Protocol(format!("{e}: {line}")))?;
            let decoded = if v.get("ok").is_some_and(|ok| ok == false) {
                return Err(remote(&v["error"], &line));
            } else if v.get("heartbeat").is_some() {
                StreamLine::Heartbeat {
                    last: v["last"].as_u64().unwrap_or(0),
                }
            } else if v.get("end").is_some() {
                each(line.trim_end(), StreamLine::End);
                return Ok(head);
            } else {
                let e: Event = serde_json::from_value(v)
                    .map_err(|e| ClientError::Protocol(format!("{e}: {line}")))?;
                at.event(e.seq);
                StreamLine::Event(Box::new(e))
            };
            if !each(line.trim_end(), decoded) {
                return Ok(head);
            }
        }
    }
}
