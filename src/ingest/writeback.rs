//! Keeping registry.yaml in step with the journal: rewritten whole from memory, coalesced, then the journal rotated.
//!
//! A commit is durable once its journal record is fsynced (see `commit`); registry.yaml,
//! the complete catalog people read, is rewritten from the published snapshot at most
//! every `registry_write_interval` while records are pending, at once when the journal
//! passes [`JOURNAL_LIMIT`] or registry.yaml (or the journal) went missing, and at
//! shutdown. The write runs beside the registrar, which keeps committing meanwhile; once
//! it is durable the journal is cut down to the records the file lacks. [`durable`]
//! makes one commit durable: its record appended, or registry.yaml written whole when
//! the journal is not usable or registry.yaml or the journal went missing.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Registrar;
use crate::error::Result;
use crate::registry::persist::Journal;
use crate::registry::{Catalog, Delta, persist};

/// A journal larger than this is folded into registry.yaml without waiting for the
/// interval: it bounds the replay at start (a few hundred ms).
pub const JOURNAL_LIMIT: u64 = 32 << 20;

/// A coalesced write is put off while commits keep coming, for at most this many
/// `registry_write_interval`s after the first record it would include (60 s at the
/// default 5 s). Rewriting registry.yaml costs in proportion to the registry — at
/// 100,000 versions ~1 s of CPU and 38 MB written and fsynced — and in the middle of a
/// burst it competed with the burst's own small fsyncs: a 1,000-file burst into
/// 100,000 versions took 2.82x the same burst into an empty registry with the write
/// every 5 s, 0.79x with it out of the way (`cargo bench -- scale`, 2026-11-28).
pub const MAX_LAG_INTERVALS: u32 = 12;

/// The journal and the state of registry.yaml's rewriting.
#[derive(Debug, Default)]
pub(super) struct Writeback {
    /// The journal; `None` while a commit appends to it on the blocking pool, or when
    /// the daemon runs without one (every commit then writes registry.yaml whole).
    pub(super) journal: Option<persist::Journal>,
    /// An append failed: the next commit writes registry.yaml whole and starts a fresh
    /// journal instead of trusting the old file after an I/O error.
    pub(super) failed: bool,
    /// The last journal record registry.yaml includes.
    pub(super) written: u64,
    /// When to write registry.yaml next, if records are pending.
    due: Option<Instant>,
    /// Whether that write is owed at once (the journal past its limit, registry.yaml or
    /// the journal gone): never put off for a burst.
    urgent: bool,
    /// Since when records are pending that registry.yaml lacks: bounds how long a
    /// stream of commits may put the write off ([`MAX_LAG_INTERVALS`]).
    pending_since: Option<Instant>,
    /// When the last commit was made: a write comes in a quiet moment ([`Self::put_off`]).
    last_commit: Option<Instant>,
    /// A write under way: the record it includes and how it ended.
    running: Option<JoinHandle<(u64, Result<()>)>>,
    /// Which registry.yaml is the daemon's own.
    pub(super) ours: Ours,
}

/// The (device, inode) of the registry.yaml this daemon last wrote (or loaded at start),
/// and of the one a write is about to rename into place: a registry.yaml under the name
/// that is neither was put there by someone else (an older copy `mv`ed over it), and the
/// journal no longer continues it. Shared by the commits (which check it before each
/// append) and the coalesced writes beside them; the lock makes "stat the name, compare"
/// and "rename, note" exclusive, so a write of the daemon's own is never taken for a
/// replacement.
///
/// The second lock orders whole writes: held across each one, it keeps the record the
/// registry.yaml renamed into place last includes, and an older catalog is never
/// written over a newer one (see [`write_registry`]).
#[derive(Debug, Clone, Default)]
pub(super) struct Ours(Arc<Mutex<(Option<Id>, Vec<Id>)>>, Arc<Mutex<u64>>);

/// A file's device and inode.
type Id = (u64, u64);

impl Ours {
    /// Knows the registry.yaml now at `path` as the daemon's own (at start).
    pub(super) fn adopt(path: &Path) -> Self {
        let id = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        Ours(Arc::new(Mutex::new((id, Vec::new()))), Arc::default())
    }

    /// Whether registry.yaml at `path` is one the daemon wrote (true when nothing is
    /// known yet, and when it does not exist: that is checked on its own).
    pub(super) fn holds(&self, path: &Path) -> bool {
        let ids = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(current) = ids.0 else { return true };
        match std::fs::symlink_metadata(path) {
            Ok(m) => {
                let id = (m.dev(), m.ino());
                id == current || ids.1.contains(&id)
            }
            Err(_) => true,
        }
    }

    /// registry.yaml written atomically from `text`, its new inode noted as the daemon's
    /// own before the rename and as the current one after.
    fn write(&self, path: &Path, text: &[u8]) -> Result<()> {
        let mut id = None;
        let r = persist::write_atomic_noting(path, text, 0o644, &mut |f| {
            if let Ok(m) = f.metadata() {
                id = Some((m.dev(), m.ino()));
                self.0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .1
                    .push((m.dev(), m.ino()));
            }
        });
        let mut ids = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = id {
            if r.is_ok() {
                ids.0 = Some(id);
            }
            ids.1.retain(|x| *x != id);
        }
        r
    }
}

/// What the rewriting waits for.
pub(super) enum Event {
    /// Time to write registry.yaml.
    Due,
    /// A write ended.
    Written(u64, Result<()>),
}

impl Writeback {
    /// Takes over `journal`, replayed at start into a catalog that registry.yaml includes
    /// up to record `written`.
    pub(super) fn new(journal: persist::Journal, written: u64, registry: &Path) -> Self {
        Writeback {
            journal: Some(journal),
            written,
            ours: Ours::adopt(registry),
            ..Default::default()
        }
    }

    /// Whether there is anything to wait for.
    pub(super) fn waiting(&self) -> bool {
        self.running.is_some() || self.due.is_some()
    }

    /// The next event; pending forever when there is none (guard with [`Self::waiting`]).
    /// Cancel-safe: a write's handle and the deadline stay until they are taken.
    pub(super) async fn next(&mut self) -> Event {
        if let Some(h) = &mut self.running {
            let r = h.await.unwrap_or_else(|e| {
                let e = crate::error::Error::Other(format!("registry.yaml writer panicked: {e}"));
                (0, Err(e))
            });
            self.running = None;
            return Event::Written(r.0, r.1);
        }
        match self.due {
            Some(at) => {
                tokio::time::sleep_until(at).await;
                Event::Due
            }
            None => std::future::pending().await,
        }
    }

    /// After a commit at record `seq`: schedules a write when records are pending and
    /// none is scheduled, at once when `now` or the journal is past its limit.
    pub(super) fn schedule(&mut self, seq: u64, interval: std::time::Duration, now: bool) {
        let big = self
            .journal
            .as_ref()
            .is_some_and(|j| j.len() > JOURNAL_LIMIT);
        if seq > self.written {
            self.last_commit = Some(Instant::now());
            self.pending_since.get_or_insert_with(Instant::now);
        }
        if now || big {
            self.due = Some(Instant::now());
            self.urgent = true;
        } else if seq > self.written && self.due.is_none() && self.running.is_none() {
            self.due = Some(Instant::now() + interval);
        }
    }

    /// When a write that came due should wait for a quiet moment instead: a commit was
    /// made less than `min(interval, 1 s)` ago and the oldest pending record is younger
    /// than [`MAX_LAG_INTERVALS`] intervals. Returns when to look again.
    pub(super) fn put_off(&self, interval: std::time::Duration) -> Option<Instant> {
        let quiet = interval.min(std::time::Duration::from_secs(1));
        let now = Instant::now();
        let busy = self.last_commit.is_some_and(|t| now < t + quiet);
        let young = self
            .pending_since
            .is_some_and(|t| now < t + interval * MAX_LAG_INTERVALS);
        (!self.urgent && busy && young).then(|| self.last_commit.unwrap_or(now) + quiet)
    }

    /// A shorter interval (a reload): a scheduled write comes no later than `interval`
    /// from now.
    pub(super) fn sooner(&mut self, interval: std::time::Duration) {
        if let Some(due) = self.due {
            self.due = Some(due.min(Instant::now() + interval));
        }
    }

    /// Starts writing `snapshot` to `path` on the blocking pool.
    fn start(&mut self, path: PathBuf, snapshot: Arc<Catalog>) {
        self.due = None;
        self.urgent = false;
        // Records committed from now on are pending again (see `schedule`).
        self.pending_since = None;
        let ours = self.ours.clone();
        self.running = Some(tokio::task::spawn_blocking(move || {
            let t0 = std::time::Instant::now();
            let r = write_registry(&path, &snapshot, &ours);
            tracing::debug!(took = ?t0.elapsed(), seq = snapshot.journal_seq, "registry.yaml written");
            (snapshot.journal_seq, r)
        }));
    }
}

/// registry.yaml from `c`, atomically, as it has always been written; then its last
/// copy (see `persist::journal::keep_base`), before the journal is cut down to follow it.
///
/// One write at a time, and never an older catalog over a newer one: a coalesced write
/// of an older snapshot that ended after a commit's whole write (a `compact`, a journal
/// that failed) used to rename its file last, leaving registry.yaml behind a journal
/// already cut down past it — a crash then refused the start, and the records in
/// between were in neither file (fresh-clone tester, 2026-11-28). Such a write is
/// skipped: the file in place already holds all it would.
pub(super) fn write_registry(path: &Path, c: &Catalog, ours: &Ours) -> Result<()> {
    let mut in_place = ours.1.lock().unwrap_or_else(|e| e.into_inner());
    if c.journal_seq < *in_place {
        tracing::debug!(
            seq = c.journal_seq,
            in_place = *in_place,
            "registry.yaml not written: a newer one is in place"
        );
        return Ok(());
    }
    persist::to_yaml(c).and_then(|text| ours.write(path, text.as_bytes()))?;
    *in_place = c.journal_seq;
    if let Err(e) = persist::journal::keep_base(path) {
        // Only a deletion of registry.yaml before the next write would miss it.
        tracing::warn!("registry.yaml's last copy not updated: {e}");
    }
    Ok(())
}

impl Registrar {
    /// Acts on a rewriting event: starts a write of the published snapshot, or takes
    /// the end of one (rotating the journal after success, retrying after failure).
    pub(super) async fn on_writeback(&mut self, event: Event) {
        match event {
            Event::Due => {
                if let Some(later) = self.writeback.put_off(self.config.registry_write_interval) {
                    self.writeback.due = Some(later);
                    return;
                }
                let snapshot = self.shared.catalog();
                self.writeback.start(self.config.registry.clone(), snapshot);
            }
            Event::Written(seq, Ok(())) => {
                self.writeback.written = self.writeback.written.max(seq);
                self.rotate_journal(seq).await;
                self.writeback.schedule(
                    self.catalog.journal_seq,
                    self.config.registry_write_interval,
                    false,
                );
            }
            Event::Written(_, Err(e)) => {
                self.board.error(format!(
                    "writing {}: {e}; every change is safe in the journal; will retry",
                    self.config.registry.display()
                ));
                self.writeback.schedule(
                    self.catalog.journal_seq,
                    self.config.registry_write_interval,
                    false,
                );
            }
        }
    }

    /// Cuts the journal down to the records after `seq`, which registry.yaml now holds.
    async fn rotate_journal(&mut self, seq: u64) {
        let Some(mut j) = self.writeback.journal.take() else {
            return;
        };
        let r = tokio::task::spawn_blocking(move || {
            let r = j.rotate(seq);
            (j, r)
        })
        .await;
        match r {
            Ok((j, r)) => {
                if let Err(e) = r {
                    // The old journal stays whole: replay skips what registry.yaml holds.
                    tracing::warn!("journal not rotated: {e}");
                }
                self.writeback.journal = Some(j);
            }
            Err(e) => {
                tracing::error!("journal rotation panicked: {e}");
                self.writeback.failed = true;
            }
        }
    }

    /// At shutdown, after the last commit: waits for a write under way, then writes
    /// registry.yaml once more if records are pending, and rotates the journal.
    pub(super) async fn write_back_at_shutdown(&mut self) {
        if let Some(h) = self.writeback.running.take()
            && let Ok((seq, r)) = h.await
        {
            match r {
                Ok(()) => self.writeback.written = self.writeback.written.max(seq),
                Err(e) => tracing::warn!("writing registry.yaml: {e}"),
            }
        }
        let snapshot = self.shared.catalog();
        let seq = snapshot.journal_seq;
        // Replaced behind the daemon's back (an older copy): written again, or the next
        // start would find registry.yaml behind its journal.
        let replaced = !self.writeback.ours.holds(&self.config.registry);
        if seq > self.writeback.written || self.writeback.due.is_some() || replaced {
            let path = self.config.registry.clone();
            let ours = self.writeback.ours.clone();
            match tokio::task::spawn_blocking(move || write_registry(&path, &snapshot, &ours)).await
            {
                Ok(Ok(())) => self.writeback.written = seq,
                Ok(Err(e)) => {
                    self.board.error(format!(
                        "writing {} at shutdown: {e}; the journal keeps every change for the next start",
                        self.config.registry.display()
                    ));
                    return;
                }
                Err(e) => {
                    tracing::error!("registry.yaml writer panicked: {e}");
                    return;
                }
            }
        }
        if self
            .writeback
            .journal
            .as_ref()
            .is_some_and(|j| !j.is_empty())
        {
            self.rotate_journal(seq).await;
        }
    }

    /// registry.yaml or the journal deleted or replaced while running: write
    /// registry.yaml again from memory now (which also starts a fresh journal).
    pub(super) fn check_files(&mut self) {
        let shown = self.config.registry.display();
        let registry_gone = std::fs::symlink_metadata(&self.config.registry).is_err();
        if registry_gone {
            // Deleted while running: the catalog in memory is whole; write it.
            tracing::error!(registry = %shown, "registry.yaml is missing; writing it again from memory");
        }
        let replaced = !self.writeback.ours.holds(&self.config.registry);
        if replaced {
            tracing::warn!(registry = %shown, "{shown} was replaced while running (not the file the daemon wrote; an older copy?): writing it again from memory");
        }
        let moved = self.writeback.journal.as_ref().and_then(|j| {
            j.displaced()
                .map(|how| (j.path().display().to_string(), how))
        });
        if let Some((journal, how)) = moved {
            // The next commit (right after this check) writes registry.yaml whole from
            // memory and starts a fresh journal: what the old file held is not lost.
            tracing::warn!(
                %journal,
                "{journal} was {how} while running; writing registry.yaml from memory and starting a fresh journal"
            );
            self.writeback.failed = true;
            self.batch.dirty = true;
        }
        if registry_gone || replaced {
            self.writeback.schedule(
                self.catalog.journal_seq,
                self.config.registry_write_interval,
                true,
            );
        }
    }
}

/// Makes record `d` durable: appended to the journal and fsynced, or, when `whole` (no
/// usable journal), by writing `snap` to registry.yaml at `path` and starting a fresh
/// journal after it (also when registry.yaml or the journal went missing). The second
/// value says whether the journal is usable afterwards, the third whether registry.yaml
/// was written.
pub(super) fn durable(
    d: &Delta,
    path: &Path,
    snap: &Catalog,
    journal: Option<&mut Journal>,
    whole: bool,
    ours: &Ours,
) -> (Result<()>, bool, bool) {
    // Checked before every append (an fstat and two stats, next to an fsync): a journal
    // deleted while running would take this acknowledged change into an unlinked file,
    // one truncated in place would get it behind a gap where no reader finds it, and a
    // registry.yaml deleted (or replaced by an older copy) leaves the journal continuing
    // a file that is gone. Either way the whole catalog goes to registry.yaml now, with
    // a fresh journal.
    let whole = whole
        || journal
            .as_deref()
            .is_some_and(|j| !files_in_place(path, j, ours));
    match journal {
        Some(j) if !whole => {
            let r = j.append(d);
            let ok = r.is_ok();
            (r, ok, false)
        }
        journal => {
            if let Err(e) = write_registry(path, snap, ours) {
                return (Err(e), false, true);
            }
            match journal.map(|j| j.rotate(d.seq)) {
                Some(Err(e)) => {
                    // registry.yaml holds the change; the journal is retried next commit.
                    tracing::error!("starting a fresh journal: {e}");
                    (Ok(()), false, true)
                }
                Some(Ok(())) => (Ok(()), true, true),
                None => (Ok(()), false, true),
            }
        }
    }
}

/// Whether registry.yaml at `path` exists and is the one the daemon wrote, and the
/// journal's path still leads to the file `j` appends to, as long as the daemon left it;
/// warns, naming the path, when not.
fn files_in_place(path: &Path, j: &Journal, ours: &Ours) -> bool {
    if let Some(how) = j.displaced() {
        tracing::warn!(
            journal = %j.path().display(),
            "{} was {how} while running: writing {} from memory and starting a fresh journal, so that no acknowledged change stays only in the old file",
            j.path().display(),
            path.display()
        );
        return false;
    }
    if std::fs::symlink_metadata(path).is_err() {
        tracing::warn!(
            registry = %path.display(),
            "{} was deleted while running: writing it from memory before this change is acknowledged, and starting a fresh journal",
            path.display()
        );
        return false;
    }
    if !ours.holds(path) {
        tracing::warn!(
            registry = %path.display(),
            "{} was replaced while running (not the file the daemon wrote; an older copy?): writing it from memory before this change is acknowledged, and starting a fresh journal",
            path.display()
        );
        return false;
    }
    true
}
