//! Reading the log back: committed events from a seq, from memory or the segments, with
//! every hole (compacted, missing, not yet written) an error, never skipped silently.

use std::path::PathBuf;

use super::{Inner, Log, ReadError, segment};
use crate::events::Event;

impl Log {
    /// Committed events with `seq >= from`, oldest first, at most `max`. `from` 0 means
    /// from the oldest kept. Events before `from` that were compacted away are an error
    /// ([`ReadError::Compacted`]), and so are events missing from the log
    /// ([`ReadError::Missing`]: the events before the hole are returned first, the
    /// error when `from` is in it) and a `from` past the next event to come
    /// ([`ReadError::Ahead`]): never a silent gap. Blocking (it may read segments):
    /// async callers run it in `spawn_blocking`, or use [`Log::read_recent`] first.
    pub fn read(&self, from: u64, max: usize) -> Result<Vec<Event>, ReadError> {
        let (segments, committed) = {
            let g = self.lock();
            if let Some(out) = recent(&g, from, max) {
                return Ok(out);
            }
            let first = g.segments.first().map_or(g.next, |s| s.first);
            if from != 0 && from < first {
                return Err(ReadError::Compacted { first });
            }
            if from > g.committed + 1 {
                return Err(ReadError::Ahead {
                    from,
                    last: g.committed,
                });
            }
            let segs: Vec<(u64, PathBuf)> = g
                .segments
                .iter()
                .map(|s| (s.first, s.path.clone()))
                .collect();
            (segs, g.committed)
        };
        let start = segments.iter().rposition(|(f, _)| *f <= from).unwrap_or(0);
        let mut out: Vec<Event> = Vec::new();
        // The last seq seen before `from`: a hole starts right after it.
        let mut prev = None;
        for (i, (_, path)) in segments.iter().enumerate().skip(start) {
            let r = match segment::read(path) {
                Ok(r) => r,
                // Compacted while we read: say so, with what is kept now.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && i == start => {
                    return Err(ReadError::Compacted {
                        first: self.first(),
                    });
                }
                Err(e) => return Err(ReadError::Io(format!("{}: {e}", path.display()))),
            };
            for e in r.events {
                if e.seq > committed || out.len() >= max {
                    return Ok(out);
                }
                if e.seq < from {
                    prev = Some(e.seq);
                    continue;
                }
                let expect = match out.last() {
                    Some(l) => l.seq + 1,
                    None if from == 0 => e.seq,
                    None => from,
                };
                if e.seq > expect {
                    if !out.is_empty() {
                        return Ok(out);
                    }
                    return Err(ReadError::Missing {
                        from: prev.map_or(expect, |p: u64| p + 1),
                        to: e.seq - 1,
                    });
                }
                out.push(e);
            }
        }
        // Committed events the segments do not hold (a tail lost): missing too.
        let next = out.last().map_or(from, |l| l.seq + 1);
        if out.is_empty() && from != 0 && next <= committed {
            return Err(ReadError::Missing {
                from: prev.map_or(next, |p| p + 1),
                to: committed,
            });
        }
        Ok(out)
    }

    /// Like [`Log::read`], but only from memory: `None` when `from` is older than the
    /// events held there (then call `read` off the async threads).
    pub fn read_recent(&self, from: u64, max: usize) -> Option<Vec<Event>> {
        recent(&self.lock(), from, max)
    }
}

/// The committed events from `from` on held in memory, if they reach back that far
/// without a hole (a hole, or a `from` past the next event, is for [`Log::read`] to
/// answer).
fn recent(g: &Inner, from: u64, max: usize) -> Option<Vec<Event>> {
    // What compaction dropped from disk is not served from memory either: the answer
    // must not depend on what this process happens to remember.
    let first = g.segments.first().map_or(g.next, |s| s.first);
    let from = if from == 0 { first } else { from };
    if from == g.committed + 1 {
        return Some(Vec::new());
    }
    let front = g.recent.front()?.seq;
    if from < front || from < first || from > g.committed {
        return None;
    }
    let at = g.recent.partition_point(|e| e.seq < from);
    let mut out: Vec<Event> = Vec::new();
    for e in g.recent.iter().skip(at).take(max) {
        let expect = out.last().map_or(from, |l| l.seq + 1);
        if e.seq != expect {
            break;
        }
        out.push(e.clone());
    }
    // `from` itself is in a hole: the disk read says which.
    (!out.is_empty()).then_some(out)
}
