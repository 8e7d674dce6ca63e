//! The log itself: segments on disk, the append of a commit's events, reads, compaction.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::{Event, segment};

/// How many of the newest committed events are kept in memory, so that followers read
/// them without touching the disk.
const IN_MEMORY: usize = 4096;
/// The largest segment: a new one is begun past this (or past a quarter of `max_bytes`),
/// so that compaction can drop whole segments.
const MAX_SEGMENT: u64 = 64 << 20;

/// How much of the log is kept (config `events.max_age`, `events.max_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Segments whose newest event is older than this are dropped.
    pub max_age: Duration,
    /// While the segments hold more bytes than this, the oldest are dropped.
    pub max_bytes: u64,
}

impl Default for Retention {
    /// 30 days, 256 MiB (as config/modelreg.yaml says).
    fn default() -> Self {
        Retention {
            max_age: Duration::from_secs(30 * 24 * 3600),
            max_bytes: 256 << 20,
        }
    }
}

impl Retention {
    /// The retention the settings (`events:`) ask for.
    pub fn of(c: &crate::config::EventsConfig) -> Retention {
        Retention {
            max_age: c.max_age,
            max_bytes: c.max_bytes,
        }
    }

    fn segment_bytes(&self) -> u64 {
        (self.max_bytes / 4).clamp(1, MAX_SEGMENT)
    }
}

/// Why events could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The events asked for were compacted away; `first` is the oldest still kept.
    #[error("events before {first} were compacted away (the oldest kept is {first})")]
    Compacted {
        /// The first retained seq.
        first: u64,
    },
    /// A segment could not be read.
    #[error("reading the event log: {0}")]
    Io(String),
}

#[derive(Debug)]
struct Segment {
    first: u64,
    path: PathBuf,
    bytes: u64,
    modified: SystemTime,
}

#[derive(Debug)]
struct Inner {
    segments: Vec<Segment>,
    /// The segment being written, open for appending.
    file: Option<std::fs::File>,
    /// The seq the next event gets.
    next: u64,
    /// The last committed (durable, visible) seq.
    committed: u64,
    /// The journal record of the last committed event.
    last_commit: u64,
    /// The newest committed events.
    recent: VecDeque<Event>,
}

/// The event log; see the module docs.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    inner: Mutex<Inner>,
    last: watch::Sender<u64>,
}

/// One commit's events, written and not yet committed (see [`Log::write`]).
#[derive(Debug)]
pub struct Pending {
    events: Vec<Event>,
    /// The segment written to, its length before, and whether it was begun for these.
    file: Option<(std::fs::File, PathBuf, u64, bool)>,
}

impl Pending {
    /// Makes the written events durable (fdatasync; the folder too when a segment was
    /// begun). Nothing to do when the commit made no event.
    pub fn sync(&self, dir: &Path) -> std::io::Result<()> {
        let Some((f, _, _, fresh)) = &self.file else {
            return Ok(());
        };
        f.sync_data()?;
        if *fresh {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The events, numbered.
    pub fn events(&self) -> &[Event] {
        &self.events
    }
}

impl Log {
    /// Opens (creating) the log in `dir` for a catalog whose last journal record is
    /// `journal_seq`: events of later records are dropped (their record was not made
    /// durable), a damaged tail is cut off with a warning. Old segments are compacted.
    pub fn open(dir: &Path, retention: &Retention, journal_seq: u64) -> crate::error::Result<Log> {
        let io = |what: &'static str, p: &Path, e| crate::error::Error::io(what, p, e);
        let fresh = !dir.exists();
        if fresh {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io("create event log folder", dir, e))?;
        }
        let mut listed = segment::list(dir).map_err(|e| io("list event log", dir, e))?;
        let mut next = listed.last().map_or(1, |(first, _)| *first);
        let (mut recent, mut committed, mut last_commit) = (VecDeque::new(), 0, 0);
        // From the newest segment back, until one holds a committed event.
        while let Some((first, path)) = listed.last().cloned() {
            let r = segment::read(&path).map_err(|e| io("read event log", &path, e))?;
            let keep = r
                .events
                .iter()
                .take_while(|e| e.commit <= journal_seq)
                .count();
            if let Some((at, why)) = &r.damage {
                tracing::warn!(
                    events = %path.display(),
                    "{}: offset {at}: {why} (a write cut short by a crash); cut off",
                    path.display()
                );
            }
            if keep < r.events.len() {
                tracing::warn!(
                    events = %path.display(),
                    "dropped {} event(s) of journal record(s) after {journal_seq}, which were not made durable",
                    r.events.len() - keep
                );
            }
            let good = if keep == 0 { 0 } else { r.ends[keep - 1] };
            if keep < r.events.len() || r.damage.is_some() {
                segment::cut(&path, good).map_err(|e| io("cut event log", &path, e))?;
            }
            if keep == 0 && listed.len() > 1 {
                // Nothing committed in it: begun for a commit that did not become durable.
                let _ = std::fs::remove_file(&path);
                listed.pop();
                next = first;
                continue;
            }
            let events = &r.events[..keep];
            if let Some(e) = events.last() {
                next = e.seq + 1;
                committed = e.seq;
                last_commit = e.commit;
            } else {
                next = first;
                committed = first.saturating_sub(1);
                // An empty segment begun after older ones: the last commit is theirs.
                if let Some((_, prev)) = listed.len().checked_sub(2).map(|i| &listed[i])
                    && let Ok(p) = segment::read(prev)
                    && let Some(e) = p.events.last()
                {
                    last_commit = e.commit;
                }
            }
            let skip = events.len().saturating_sub(IN_MEMORY);
            recent.extend(events[skip..].iter().cloned());
            break;
        }
        if fresh || listed.is_empty() {
            // A new log starts at the catalog as it is: older commits are not announced.
            last_commit = journal_seq;
        }
        let mut segments = Vec::new();
        for (first, path) in listed {
            let m = std::fs::metadata(&path).map_err(|e| io("stat event log", &path, e))?;
            segments.push(Segment {
                first,
                path,
                bytes: m.len(),
                modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
        let file = match segments.last() {
            Some(s) => {
                Some(segment::open_append(&s.path).map_err(|e| io("open event log", &s.path, e))?)
            }
            None => None,
        };
        let mut inner = Inner {
            segments,
            file,
            next,
            committed,
            last_commit,
            recent,
        };
        compact(&mut inner, retention);
        Ok(Log {
            dir: dir.to_path_buf(),
            inner: Mutex::new(inner),
            last: watch::channel(committed).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change under the lock is a few assignments: a poisoned one is consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The log's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Numbers `events` (one commit's, from [`super::derive`]), stamps them with the
    /// time and writes them to the current segment (beginning one when it is full,
    /// dropping old ones per `retention`). Not durable until [`Pending::sync`], not
    /// visible until [`Log::commit`]. Called by the registrar only, one commit at a time.
    pub fn write(&self, mut events: Vec<Event>, retention: &Retention) -> std::io::Result<Pending> {
        if events.is_empty() {
            return Ok(Pending { events, file: None });
        }
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let mut g = self.lock();
        let mut seq = g.next;
        for e in &mut events {
            e.seq = seq;
            e.time = time.clone();
            seq += 1;
        }
        let full = g
            .segments
            .last()
            .is_none_or(|s| s.bytes >= retention.segment_bytes());
        let fresh = full || g.file.is_none();
        if fresh {
            let first = g.next;
            let path = self.dir.join(segment::file_name(first));
            let f = segment::open_append(&path)?;
            g.file = Some(f);
            g.segments.push(Segment {
                first,
                path,
                bytes: 0,
                modified: SystemTime::now(),
            });
            compact(&mut g, retention);
        }
        let bytes = segment::lines(&events);
        let s = g.segments.last_mut().expect("a segment was begun");
        let (path, before) = (s.path.clone(), s.bytes);
        let f = g.file.as_mut().expect("open with its segment");
        if let Err(e) = f.write_all(&bytes) {
            // Partly written: cut back, so that the next commit starts on a clean line.
            let _ = f.set_len(before);
            return Err(e);
        }
        let f = f.try_clone()?;
        let s = g.segments.last_mut().expect("a segment was begun");
        s.bytes += bytes.len() as u64;
        s.modified = SystemTime::now();
        g.next = seq;
        Ok(Pending {
            events,
            file: Some((f, path, before, fresh)),
        })
    }

    /// Makes `p`'s events visible: readers and [`Log::subscribe`]rs see them from now
    /// on. Call once they are durable and the commit is.
    pub fn commit(&self, p: Pending) {
        let Some(last) = p.events.last() else {
            return;
        };
        let (seq, commit) = (last.seq, last.commit);
        {
            let mut g = self.lock();
            g.committed = seq;
            g.last_commit = commit;
            g.recent.extend(p.events);
            while g.recent.len() > IN_MEMORY {
                g.recent.pop_front();
            }
        }
        self.last.send_replace(seq);
    }

    /// Takes back `p`'s events: the commit they describe was not made durable. They are
    /// cut off the segment and their numbers given again (nobody saw them).
    pub fn abandon(&self, p: Pending) {
        let Some((f, path, before, _)) = p.file else {
            return;
        };
        let mut g = self.lock();
        if let Err(e) = f.set_len(before) {
            tracing::error!(events = %path.display(), "cutting off the events of a change that was not kept: {e}; they are dropped at the next start");
        }
        if let Some(s) = g.segments.iter_mut().find(|s| s.path == path) {
            s.bytes = before;
        }
        if let Some(e) = p.events.first() {
            g.next = e.seq;
        }
    }

    /// Cuts off the events of the last commit in the log, to be derived again from its
    /// journal record: a crash during their fsync may have kept only some of them (a
    /// commit's events became visible only once all were durable, so none of those cut
    /// was seen unless all were, and deriving again gives them the same numbers).
    pub fn forget_last_commit(&self) -> std::io::Result<()> {
        let mut g = self.lock();
        let Some(s) = g.segments.last() else {
            return Ok(());
        };
        let path = s.path.clone();
        let r = segment::read(&path)?;
        let last = g.last_commit;
        let Some(i) = r.events.iter().position(|e| e.commit == last) else {
            return Ok(());
        };
        let len = if i == 0 { 0 } else { r.ends[i - 1] };
        segment::cut(&path, len)?;
        let first = r.events[i].seq;
        g.next = first;
        g.committed = first - 1;
        // Every earlier record has its events logged (or made none).
        g.last_commit = last - 1;
        g.recent.retain(|e| e.seq < first);
        if let Some(s) = g.segments.last_mut() {
            s.bytes = len;
        }
        self.last.send_replace(first - 1);
        Ok(())
    }

    /// The seq of the oldest event kept (one past the last when none is kept).
    pub fn first(&self) -> u64 {
        let g = self.lock();
        g.segments.first().map_or(g.next, |s| s.first)
    }

    /// The seq of the last committed event (0: none yet).
    pub fn last(&self) -> u64 {
        self.lock().committed
    }

    /// The journal record of the last committed event: the records after it have no
    /// events yet (start-up re-derives theirs).
    pub fn last_commit(&self) -> u64 {
        self.lock().last_commit
    }

    /// The last committed seq, changing after each commit that made events.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.last.subscribe()
    }

    /// Committed events with `seq >= from`, oldest first, at most `max`. `from` 0 means
    /// from the oldest kept. Events before `from` that were compacted away are an error
    /// ([`ReadError::Compacted`]), never a silent gap. Blocking (it may read segments):
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
            let segs: Vec<(u64, PathBuf)> = g
                .segments
                .iter()
                .map(|s| (s.first, s.path.clone()))
                .collect();
            (segs, g.committed)
        };
        let start = segments.iter().rposition(|(f, _)| *f <= from).unwrap_or(0);
        let mut out = Vec::new();
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
                if e.seq >= from {
                    out.push(e);
                }
            }
        }
        Ok(out)
    }

    /// Like [`Log::read`], but only from memory: `None` when `from` is older than the
    /// events held there (then call `read` off the async threads).
    pub fn read_recent(&self, from: u64, max: usize) -> Option<Vec<Event>> {
        recent(&self.lock(), from, max)
    }
}

/// The committed events from `from` on held in memory, if they reach back that far.
fn recent(g: &Inner, from: u64, max: usize) -> Option<Vec<Event>> {
    // What compaction dropped from disk is not served from memory either: the answer
    // must not depend on what this process happens to remember.
    let first = g.segments.first().map_or(g.next, |s| s.first);
    let from = if from == 0 { first } else { from };
    if from > g.committed {
        return Some(Vec::new());
    }
    let front = g.recent.front()?.seq;
    if from < front || from < first {
        return None;
    }
    let skip = (from - front) as usize;
    Some(g.recent.iter().skip(skip).take(max).cloned().collect())
}

/// Drops whole segments, oldest first and never the current one, while they are older
/// than `max_age` or the log is over `max_bytes`.
fn compact(g: &mut Inner, r: &Retention) {
    let now = SystemTime::now();
    while g.segments.len() > 1 {
        let total: u64 = g.segments.iter().map(|s| s.bytes).sum();
        let old = &g.segments[0];
        let aged = now
            .duration_since(old.modified)
            .is_ok_and(|a| a > r.max_age);
        if !aged && total <= r.max_bytes {
            break;
        }
        match std::fs::remove_file(&old.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(events = %old.path.display(), "compacting the event log: {e}");
                break;
            }
        }
        tracing::debug!(events = %old.path.display(), "event log segment dropped ({})", if aged { "age" } else { "size" });
        g.segments.remove(0);
    }
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
