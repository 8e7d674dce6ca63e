//! `events` over the HTTP API: `GET /api/v1/events` read as Server-Sent Events (a
//! chunked body of `id:`/`event:`/`data:` blocks and `:` comments), turned into the
//! same [`StreamLine`]s as the socket's NDJSON, each event's `data` being the very JSON
//! the socket sends.

use std::io::{BufRead, BufReader, Read};

use percent_encoding::utf8_percent_encode;

use super::events::{CLOSED, CUT, Progress, remote};
use super::http::Http;
use super::routes::SEGMENT;
use super::{ClientError, StreamLine};
use crate::events::Event;
use crate::protocol::{Request, Since};

/// The route and query of `req` (an `events` request).
fn target(req: &Request) -> Result<String, ClientError> {
    let Request::Events {
        since,
        last,
        models,
        kinds,
        follow,
        heartbeat_ms,
    } = req
    else {
        return Err(ClientError::Protocol("not an events request".into()));
    };
    let enc = |s: &str| utf8_percent_encode(s, SEGMENT).to_string();
    let mut q = Vec::new();
    match since {
        Some(Since::Seq(n)) => q.push(format!("since={n}")),
        Some(Since::Word(w)) => q.push(format!("since={}", enc(w))),
        None => {}
    }
    if let Some(n) = last {
        q.push(format!("last={n}"));
    }
    q.extend(models.iter().map(|m| format!("model={}", enc(m))));
    q.extend(kinds.iter().map(|k| format!("kind={}", enc(k))));
    if *follow {
        q.push("follow=true".into());
    }
    if let Some(ms) = heartbeat_ms {
        q.push(format!("heartbeat_ms={ms}"));
    }
    Ok(format!("/api/v1/events?{}", q.join("&")))
}

/// Streams `req` from the API `h`: as [`Client::events`](super::Client::events).
pub(super) fn events(
    h: &Http,
    req: &Request,
    each: &mut dyn FnMut(&str, StreamLine) -> bool,
) -> Result<serde_json::Value, ClientError> {
    let target = target(req)?;
    h.stream(&target, &mut |body, chunked| {
        if chunked {
            read(&mut BufReader::new(Chunked::new(body)), each)
        } else {
            read(body, each)
        }
    })
}

/// Reads SSE blocks off `body` until the stream ends.
fn read(
    body: &mut dyn BufRead,
    each: &mut dyn FnMut(&str, StreamLine) -> bool,
) -> Result<serde_json::Value, ClientError> {
    let mut head = serde_json::Value::Null;
    let mut at = Progress::new(&head);
    let (mut event, mut data, mut id) = (String::new(), None::<String>, None::<u64>);
    loop {
        let mut raw = String::new();
        match body.read_line(&mut raw) {
            Ok(0) => return Err(at.ended(CLOSED)),
            Ok(_) if !raw.ends_with('\n') => return Err(at.ended(CUT)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return Err(at.ended(CUT)),
            // The body ended before its last chunk.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(at.ended(CLOSED));
            }
            Err(e) => return Err(at.ended(&e.to_string())),
        }
        let line = raw.trim_end_matches(['\n', '\r']);
        if let Some(comment) = line.strip_prefix(':') {
            if let Some(h) = comment.trim_start().strip_prefix("events ") {
                // The answer head, as the socket's first line has it.
                head = serde_json::from_str(h).unwrap_or_default();
                at = Progress::new(&head);
            }
            continue;
        }
        if !line.is_empty() {
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match name {
                "event" => event = value.to_string(),
                "data" => match &mut data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => data = Some(value.to_string()),
                },
                "id" => id = Since::seq(value),
                _ => {}
            }
            continue;
        }
        // A blank line: the block is complete.
        let (kind, body_data, block_id) = (std::mem::take(&mut event), data.take(), id.take());
        let Some(d) = body_data else {
            // A heartbeat: its id is how far the stream has read.
            if let Some(i) = block_id {
                at.read_to(i);
                if !each("", StreamLine::Heartbeat { last: i }) {
                    return Ok(head);
                }
            }
            continue;
        };
        let v: serde_json::Value =
            serde_json::from_str(&d).map_err(|e| ClientError::Protocol(format!("{e}: {d}")))?;
        match kind.as_str() {
            "error" => return Err(remote(&v, &d)),
            "end" => {
                each(&d, StreamLine::End);
                return Ok(head);
            }
            _ => {
                let e: Event = serde_json::from_value(v)
                    .map_err(|e| ClientError::Protocol(format!("{e}: {d}")))?;
                at.event(e.seq);
                if !each(&d, StreamLine::Event(Box::new(e))) {
                    return Ok(head);
                }
            }
        }
    }
}

/// A chunked body (`Transfer-Encoding: chunked`) read as its bytes; a body cut before
/// its last chunk ends with an `UnexpectedEof` error.
struct Chunked<'a> {
    inner: &'a mut dyn BufRead,
    /// Bytes left in the current chunk.
    left: u64,
    /// Whether a chunk was read (its line break follows it).
    after_chunk: bool,
    done: bool,
}

impl<'a> Chunked<'a> {
    fn new(inner: &'a mut dyn BufRead) -> Chunked<'a> {
        Chunked {
            inner,
            left: 0,
            after_chunk: false,
            done: false,
        }
    }
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let eof = || std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        while !self.done && self.left == 0 {
            let mut line = String::new();
            if self.after_chunk {
                // The line break after a chunk's data.
                self.inner.read_line(&mut line)?;
                line.clear();
                self.after_chunk = false;
            }
            if self.inner.read_line(&mut line)? == 0 {
                return Err(eof());
            }
            let hex = line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(hex, 16).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("bad chunk size {line:?}"),
                )
            })?;
            self.done = size == 0;
            self.left = size;
            self.after_chunk = size > 0;
        }
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        let max = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(eof());
        }
        self.left -= n as u64;
        Ok(n)
    }
}
