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
    /// Events `from..=to` are not in the log (a segment deleted, a damaged line
    /// skipped, a tail lost after a clean stop): the stream resumes at `to + 1`.
    #[error("events {from}..{to} are missing from the event log (lost or damaged); the next kept is {}", to + 1)]
    Missing {
        /// The first missing seq.
        from: u64,
        /// The last missing seq.
        to: u64,
    },
    /// The seq asked for is past the next event to come: `last` is the last committed.
    #[error("there is no event {from} yet: the last is {last}; ask from {} at most (or \"now\")", last + 1)]
    Ahead {
        /// The seq asked for.
        from: u64,
        /// The last committed seq.
        last: u64,
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
            if r.damage.is_some() || !r.skipped.is_empty() {
                segment::keep_aside(&path);
            }
            for (line, at, why) in &r.skipped {
                tracing::warn!(
                    events = %path.display(),
                    "{}: line {line} (offset {at}): {why}; skipped (the events after it are kept; a copy of the file is kept as {})",
                    path.display(),
                    segment::damaged_name(&path).display()
                );
            }
            if let Some((at, why)) = &r.damage {
                tracing::warn!(
                    events = %path.display(),
                    "{}: offset {at}: {why} after the last intact event (a write cut short by a crash); cut off (a copy of the file is kept as {})",
                    path.display(),
                    segment::damaged_name(&path).display()
                );
            }
            if keep < r.events.len() {
                tracing::warn!(
                    events = %path.display(),
                    "dropped {} event(s) of journal record {}, the commit a crash interrupted (its record was not made durable, nothing of it was answered)",
                    r.events.len() - keep,
                    journal_seq + 1
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
        // A segment deleted by hand leaves a hole no reader may cross silently: say so now
        // (readers are told by [`ReadError::Missing`]).
        for w in segments.windows(2) {
            let last = segment::last_seq(&w[0].path).ok().flatten();
            if let Some(last) = last
                && last + 1 < w[1].first
            {
                tracing::warn!(
                    events = %dir.display(),
                    "events {}..{} are missing from the event log: no segment holds them (deleted?); readers are told so",
                    last + 1,
                    w[1].first - 1
                );
            }
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
    /// time (unless they have one: derived again after a crash, see
    /// [`Log::forget_last_commit`]) and writes them to the current segment (beginning one when it is full,
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
            if e.time.is_empty() {
                e.time = time.clone();
            }
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
    /// Returns how many were cut off, and the time they were stamped with: events
    /// derived again get it back, or a receiver that saw them before the crash would
    /// get a second body for the same seq.
    pub fn forget_last_commit(&self) -> std::io::Result<(usize, Option<String>)> {
        let mut g = self.lock();
        let Some(s) = g.segments.last() else {
            return Ok((0, None));
        };
        let path = s.path.clone();
        let r = segment::read(&path)?;
        let last = g.last_commit;
        let Some(i) = r.events.iter().position(|e| e.commit == last) else {
            return Ok((0, None));
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
        Ok((r.events.len() - i, Some(r.events[i].time.clone())))
    }

    /// Drops the segments `retention` no longer keeps (see [`Retention`]): run at start,
    /// when a segment is begun, on a reload and periodically, so that a quiet registry
    /// also lets old events go.
    pub fn compact(&self, retention: &Retention) {
        compact(&mut self.lock(), retention);
    }

    /// The seq the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.lock().next
    }

    /// Numbers the next event after `mark`, the highest seq the catalog says was ever
    /// given (its durable high-water mark), when the log ends before it: the events
    /// between are lost (a torn tail after a clean stop, `events/` deleted) and their
    /// numbers are never given again; readers asking for them get
    /// [`ReadError::Missing`] (or [`ReadError::Compacted`] before the oldest kept).
    /// Returns the missing range, if any. Start-up only (before the log is shared).
    pub fn continue_after(&self, mark: u64) -> Option<(u64, u64)> {
        let missing = {
            let mut g = self.lock();
            if mark < g.next {
                return None;
            }
            let missing = (g.next, mark);
            g.next = mark + 1;
            g.committed = mark;
            missing
        };
        self.last.send_replace(mark);
        Some(missing)
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
}

/// Drops whole segments, oldest first and never the current one, while they are older
/// than `max_age` or the log is over `max_bytes`.
fn compact(g: &mut Inner, r: &Retention) {
    let now = SystemTime::now();
    while g.segments.len() > 1 {
        let total: u64 = g.segments.iter().map(|s| s.bytes).sum();
        let old = &g.segments[0];
        // The file's own time, if it can be read: it is what an operator sees and sets.
        let modified = std::fs::metadata(&old.path)
            .and_then(|m| m.modified())
            .unwrap_or(old.modified);
        let aged = now.duration_since(modified).is_ok_and(|a| a > r.max_age);
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
        tracing::info!(events = %old.path.display(), "event log segment {} dropped (compaction by {})", old.path.display(), if aged { "max_age" } else { "max_bytes" });
        g.segments.remove(0);
    }
}

#[path = "read.rs"]
mod read;

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
