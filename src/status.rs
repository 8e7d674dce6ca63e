//! The board every worker writes what users should see in `status`: problems that last
//! until fixed (keyed by path), the last errors, and counters. A plain mutex: it is held
//! only to copy or insert a few strings, never across an `.await`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::metrics::{Histogram, REGISTRATION_BUCKETS};
use crate::protocol::{Delivery, Problem, RecentError};

/// How many past errors `status` shows.
const RECENT: usize = 20;

/// Shared status.
#[derive(Debug, Default)]
pub struct StatusBoard {
    inner: Mutex<Inner>,
    changed: tokio::sync::Notify,
    /// The copy jobs under way, by model name. Its own lock, taken only to add, remove or
    /// list entries; the copy itself only adds to each job's counter.
    copying: Mutex<HashMap<String, Arc<JobProgress>>>,
    /// Bytes of new versions' files that were already stored and hard-linked instead of
    /// copied (dedup), since start.
    dedup_saved: AtomicU64,
    /// The HTTP API's address (`http://127.0.0.1:8080`), once it listens.
    http: std::sync::OnceLock<String>,
    /// Bytes and durations of the versions registered since start, for `/metrics`.
    registrations: Registrations,
}

/// What `/metrics` tells of the versions registered since start (their count is
/// `status`'s `registered_since_start`).
#[derive(Debug)]
pub struct Registrations {
    /// Bytes of the files of the versions registered (deduplicated ones included).
    pub bytes: AtomicU64,
    /// How long each took, from its copy job's start to its commit being durable.
    pub durations: Histogram,
}

impl Default for Registrations {
    fn default() -> Self {
        Registrations {
            bytes: AtomicU64::new(0),
            durations: Histogram::new(REGISTRATION_BUCKETS),
        }
    }
}

/// How far one copy job has got: `done` is added to by the copy once per chunk.
#[derive(Debug)]
pub struct JobProgress {
    /// Bytes copied so far.
    pub done: AtomicU64,
    /// Bytes to copy (the sizes of the settled files).
    pub total: u64,
    started: Instant,
    /// For a hand-over (`register`), the file's name: it has no inbox entry to show.
    handed_over: Option<String>,
}

/// A copy job's progress as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProgressNow {
    /// Bytes copied so far.
    pub done: u64,
    /// Bytes to copy.
    pub total: u64,
    /// Seconds since the copy began.
    pub secs: f64,
}

impl ProgressNow {
    /// Bytes per second so far (None before anything was copied).
    pub fn rate(&self) -> Option<f64> {
        (self.done > 0 && self.secs > 0.0).then(|| self.done as f64 / self.secs)
    }

    /// Seconds left at the rate so far.
    pub fn eta_secs(&self) -> Option<f64> {
        self.rate()
            .map(|r| self.total.saturating_sub(self.done) as f64 / r)
    }
}

/// Removes its job from [`StatusBoard`]'s list of copies when dropped, however the job
/// ends (done, failed, panicked).
#[derive(Debug)]
pub struct CopyingGuard {
    board: Arc<StatusBoard>,
    name: String,
    /// The job's counter, to pass to the copy.
    pub progress: Arc<JobProgress>,
}

impl Drop for CopyingGuard {
    fn drop(&mut self) {
        let mut g = self.board.copying.lock().unwrap_or_else(|p| p.into_inner());
        if g.get(&self.name)
            .is_some_and(|p| Arc::ptr_eq(p, &self.progress))
        {
            g.remove(&self.name);
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    problems: BTreeMap<String, Problem>,
    recent: VecDeque<RecentError>,
    events: VecDeque<RecentError>,
    registered: u64,
    watch: String,
    /// The rows of exec hooks and webhooks, by name.
    deliveries: BTreeMap<String, Delivery>,
    /// While the Hugging Face cache view is checked model by model (first start, a
    /// reload, the view deleted): how many models are still to check.
    hf_cache_checking: Option<usize>,
    /// Stored files found changed in place, by (device, inode): each is one problem
    /// naming every version whose file it is, kept until none is left or `verify` finds
    /// the file right again.
    damaged: BTreeMap<(u64, u64), DamagedFile>,
}

/// A damaged stored file (see `Inner::damaged`).
#[derive(Debug, Clone)]
struct DamagedFile {
    model: String,
    /// The versions sharing the inode: number, the file's path in the version, full path.
    sharers: Vec<(u32, String, String)>,
    /// What is wrong and what was done.
    reason: String,
    /// The path its problem is keyed by (the first sharer's, when it was last shown).
    shown: String,
}

impl DamagedFile {
    /// The problem's text: the first sharer by model, version and file (and path), then
    /// every other version whose file is the same inode.
    fn message(&self) -> String {
        let mut names = self
            .sharers
            .iter()
            .map(|(n, rel, _)| format!("{} v{n} {rel}", self.model));
        let first = names.next().unwrap_or_default();
        let path = self.sharers.first().map_or("", |s| s.2.as_str());
        let others: Vec<String> = names.collect();
        let also = if others.is_empty() {
            String::new()
        } else {
            format!(
                ", the same file (one inode, hard-linked by dedup) as {}",
                others.join(", ")
            )
        };
        format!(
            "stored file {first} ({path}){also} damaged: {}; run `modelreg verify`",
            self.reason
        )
    }
}

/// The current time as RFC 3339 UTC, to the second.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl StatusBoard {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave it inconsistent (plain inserts),
        // so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves after the next change of problems, errors or counters.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Records a lasting problem with `path` (replacing an older one for the same path)
    /// and logs it once.
    pub fn set_problem(&self, path: &str, message: &str) {
        self.record_problem(path, message, false);
    }

    /// Like [`StatusBoard::set_problem`], logged as an ERROR: for what an operator must
    /// act on (a deleted store, a replaced inbox).
    pub fn set_serious_problem(&self, path: &str, message: &str) {
        self.record_problem(path, message, true);
    }

    fn record_problem(&self, path: &str, message: &str, serious: bool) {
        let mut g = self.lock();
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        if let Some(p) = g.problems.get_mut(path)
            && p.message == message
        {
            // Recorded again by a later attempt: not logged twice, but now current.
            p.recorded_ns = now_ns;
            return;
        }
        if serious {
            tracing::error!(path, "{message}");
        } else {
            tracing::warn!(path, "{message}");
        }
        g.problems.insert(
            path.to_string(),
            Problem {
                path: path.to_string(),
                message: message.to_string(),
                since: now_rfc3339(),
                recorded_ns: now_ns,
            },
        );
        push_recent(&mut g.recent, message.to_string());
        drop(g);
        self.changed.notify_one();
    }

    /// Clears the problem with `path`, if any.
    pub fn clear_problem(&self, path: &str) {
        let mut g = self.lock();
        if g.problems.remove(path).is_some() {
            tracing::info!(path, "problem resolved");
            drop(g);
            self.changed.notify_one();
        }
    }

    /// Records that the stored file of `model` on inode `inode`, shared by `sharers`
    /// (number, path in the version, full path), is damaged (`reason`): one problem
    /// naming every version whose file it is. With no sharer, nothing is recorded.
    pub fn set_damaged(
        &self,
        inode: (u64, u64),
        model: &str,
        sharers: Vec<(u32, String, String)>,
        reason: &str,
    ) {
        let Some(first) = sharers.first() else { return };
        let file = DamagedFile {
            model: model.to_string(),
            shown: first.2.clone(),
            sharers,
            reason: reason.to_string(),
        };
        let old = self.lock().damaged.insert(inode, file.clone());
        if let Some(old) = old.filter(|o| o.shown != file.shown) {
            self.clear_problem(&old.shown);
        }
        self.set_problem(&file.shown, &file.message());
    }

    /// Keeps in each damaged file's problem only the versions `stays(model, number)`
    /// says are still stored, and clears the problems of those with none left (`rm`, gc).
    pub fn damaged_keep(&self, stays: impl Fn(&str, u32) -> bool) {
        // (the problem's old key, the file as it is now: no sharer left when gone)
        let mut changed: Vec<(String, DamagedFile)> = Vec::new();
        self.lock().damaged.retain(|_, d| {
            let before = d.sharers.len();
            d.sharers.retain(|(n, _, _)| stays(&d.model, *n));
            if d.sharers.len() != before {
                let old = std::mem::take(&mut d.shown);
                d.shown = d.sharers.first().map(|s| s.2.clone()).unwrap_or_default();
                changed.push((old, d.clone()));
            }
            !d.sharers.is_empty()
        });
        for (old, d) in changed {
            if old != d.shown {
                self.clear_problem(&old);
            }
            if !d.sharers.is_empty() {
                self.set_problem(&d.shown, &d.message());
            }
        }
    }

    /// After a `verify` of the models `checked` says: clears the damaged files of those
    /// models none of whose sharers' paths `still_bad` names (the file was put right).
    pub fn damaged_verified(
        &self,
        checked: impl Fn(&str) -> bool,
        still_bad: impl Fn(&str) -> bool,
    ) {
        let mut cleared = Vec::new();
        self.lock().damaged.retain(|_, d| {
            let fine = checked(&d.model) && !d.sharers.iter().any(|(_, _, p)| still_bad(p));
            if fine {
                cleared.push(d.shown.clone());
            }
            !fine
        });
        for shown in cleared {
            self.clear_problem(&shown);
        }
    }

    /// Clears every problem whose path starts with `prefix`.
    pub fn clear_problems_under(&self, prefix: &str) {
        let mut g = self.lock();
        g.problems.retain(|p, _| !p.starts_with(prefix));
    }

    /// Records an error that does not last (a failed copy that will be retried).
    pub fn error(&self, message: String) {
        tracing::error!("{message}");
        push_recent(&mut self.lock().recent, message);
        self.changed.notify_one();
    }

    /// Records a change made through the socket (alias moves, removals, ...).
    pub fn event(&self, message: String) {
        tracing::info!("{message}");
        push_recent(&mut self.lock().events, message);
        self.changed.notify_one();
    }

    /// The last changes, oldest first.
    pub fn events(&self) -> Vec<RecentError> {
        self.lock().events.iter().cloned().collect()
    }

    /// Counts the versions a commit made durable: each one's bytes and how long it took.
    pub fn count_registered(&self, versions: &[(u64, std::time::Duration)]) {
        for (bytes, took) in versions {
            self.registrations
                .bytes
                .fetch_add(*bytes, Ordering::Relaxed);
            self.registrations.durations.observe(*took);
        }
        self.lock().registered += versions.len() as u64;
        self.changed.notify_one();
    }

    /// The bytes and durations of the versions registered since start.
    pub fn registrations(&self) -> &Registrations {
        &self.registrations
    }

    /// Counts bytes stored once instead of twice by dedup.
    pub fn count_dedup(&self, bytes: u64) {
        self.dedup_saved.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes stored once instead of twice by dedup since start.
    pub fn dedup_saved(&self) -> u64 {
        self.dedup_saved.load(Ordering::Relaxed)
    }

    /// Records where the HTTP API listens (set once, at start).
    pub fn set_http(&self, url: String) {
        let _ = self.http.set(url);
    }

    /// Where the HTTP API listens, when it is on.
    pub fn http(&self) -> Option<String> {
        self.http.get().cloned()
    }

    /// Sets how the inbox is watched.
    pub fn set_watch(&self, how: String) {
        self.lock().watch = how;
    }

    /// Records how many models the Hugging Face cache view still has to check; `None`
    /// once its check is over.
    pub fn set_hf_cache_checking(&self, left: Option<usize>) {
        self.lock().hf_cache_checking = left;
    }

    /// How many models the Hugging Face cache view still has to check, while it does.
    pub fn hf_cache_checking(&self) -> Option<usize> {
        self.lock().hf_cache_checking
    }

    /// Registers a copy job for `name` of `total` bytes, until the guard is dropped.
    pub fn start_copy(self: &Arc<Self>, name: &str, total: u64) -> CopyingGuard {
        self.start_job(name, total, None)
    }

    /// Registers the copy of a file handed over as `filename` (`register`), until the
    /// guard is dropped: `status` shows it by that name, as an inbox entry's copy.
    pub fn start_handover(
        self: &Arc<Self>,
        name: &str,
        total: u64,
        filename: &str,
    ) -> CopyingGuard {
        self.start_job(name, total, Some(filename.to_string()))
    }

    fn start_job(
        self: &Arc<Self>,
        name: &str,
        total: u64,
        handed_over: Option<String>,
    ) -> CopyingGuard {
        let progress = Arc::new(JobProgress {
            done: AtomicU64::new(0),
            total,
            started: Instant::now(),
            handed_over,
        });
        self.copying
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), progress.clone());
        CopyingGuard {
            board: self.clone(),
            name: name.to_string(),
            progress,
        }
    }

    /// The models with a copy job under way.
    pub fn copying(&self) -> Vec<String> {
        let g = self.copying.lock().unwrap_or_else(|p| p.into_inner());
        g.keys().cloned().collect()
    }

    /// The file name of the hand-over being copied for `name`, if that is the job.
    pub fn handed_over(&self, name: &str) -> Option<String> {
        let g = self.copying.lock().unwrap_or_else(|p| p.into_inner());
        g.get(name)?.handed_over.clone()
    }

    /// How far the copy job for `name` has got, if one is under way.
    pub fn copy_progress(&self, name: &str) -> Option<ProgressNow> {
        let g = self.copying.lock().unwrap_or_else(|p| p.into_inner());
        let p = g.get(name)?;
        Some(ProgressNow {
            done: p.done.load(Ordering::Relaxed),
            total: p.total,
            secs: p.started.elapsed().as_secs_f64(),
        })
    }

    /// Sets the row of one exec hook or webhook (by its name).
    pub fn set_delivery(&self, row: Delivery) {
        self.lock().deliveries.insert(row.name.clone(), row);
    }

    /// Removes the row of a hook or webhook taken out of the settings.
    pub fn remove_delivery(&self, name: &str) {
        self.lock().deliveries.remove(name);
    }

    /// The rows of the hooks and webhooks, by name.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.lock().deliveries.values().cloned().collect()
    }

    /// A copy of what `status` shows from the board.
    pub fn snapshot(&self) -> (Vec<Problem>, Vec<RecentError>, u64, String) {
        let g = self.lock();
        (
            g.problems.values().cloned().collect(),
            g.recent.iter().cloned().collect(),
            g.registered,
            g.watch.clone(),
        )
    }
}

/// `n` bytes in binary units with one decimal ("1.0 GiB"), for logs and tables.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn push_recent(q: &mut VecDeque<RecentError>, message: String) {
    if q.len() == RECENT {
        q.pop_front();
    }
    q.push_back(RecentError {
        at: now_rfc3339(),
        message,
    });
}
