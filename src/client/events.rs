//! The `events` stream on the client side: the request, then one line per event.

use std::time::Duration;

use super::{Client, ClientError, Conn, answer_result};
use crate::events::Event;
use crate::protocol::{ErrorBody, ErrorCode, Request};

/// One line of an `events` stream, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamLine {
    /// An event.
    Event(Box<Event>),
    /// Nothing happened for a heartbeat period; `last` is the log's last seq.
    Heartbeat {
        /// The last committed seq.
        last: u64,
    },
    /// Without `follow`: everything asked for was sent.
    End,
}

impl Client {
    /// Sends `req` (an [`Request::Events`]) and calls `each` with every line of the
    /// stream, raw and decoded, until it ends, the daemon closes it, or `each` returns
    /// false. An error line (events compacted away, a reader too slow, the daemon
    /// stopping) is returned as [`ClientError::Remote`]; its message says how to go on.
    /// Socket only. Returns the first answer's `result` (`first`, `last`, `from`).
    pub fn events(
        &mut self,
        req: &Request,
        mut each: impl FnMut(&str, StreamLine) -> bool,
    ) -> Result<serde_json::Value, ClientError> {
        let Conn::Socket(s) = &mut self.conn else {
            return Err(ClientError::Protocol(
                "events is streamed on the control socket only; run it on the daemon's machine"
                    .into(),
            ));
        };
        let follow = matches!(req, Request::Events { follow: true, .. });
        let line = serde_json::to_string(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let head = answer_result(&s.exchange(&line, None)?)?;
        if follow {
            // Heartbeats come every 15 s at most (unless asked less often): hours of
            // quiet are normal on a followed stream.
            s.set_read_timeout(Duration::from_secs(24 * 3600))?;
        }
        while let Some(line) = s.next_line()? {
            let v: serde_json::Value = serde_json::from_str(&line)
                .map_err(|e| ClientError::Protocol(format!("{e}: {line}")))?;
            let decoded = if v.get("ok").is_some_and(|ok| ok == false) {
                return Err(ClientError::Remote(
                    serde_json::from_value(v["error"].clone()).unwrap_or(ErrorBody {
                        code: ErrorCode::Internal,
                        message: line.trim_end().to_string(),
                    }),
                ));
            } else if v.get("heartbeat").is_some() {
                StreamLine::Heartbeat {
                    last: v["last"].as_u64().unwrap_or(0),
                }
            } else if v.get("end").is_some() {
                each(line.trim_end(), StreamLine::End);
                break;
            } else {
                let e: Event = serde_json::from_value(v)
                    .map_err(|e| ClientError::Protocol(format!("{e}: {line}")))?;
                StreamLine::Event(Box::new(e))
            };
            if !each(line.trim_end(), decoded) {
                break;
            }
        }
        Ok(head)
    }
}
