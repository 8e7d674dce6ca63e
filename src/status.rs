//! The board every worker writes what users should see in `status`: problems that last
//! until fixed (keyed by path), the last errors, and counters. A plain mutex: it is held
//! only to copy or insert a few strings, never across an `.await`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use crate::protocol::{Problem, RecentError};

/// How many past errors `status` shows.
const RECENT: usize = 20;

/// Shared status.
#[derive(Debug, Default)]
pub struct StatusBoard {
    inner: Mutex<Inner>,
    changed: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Inner {
    problems: BTreeMap<String, Problem>,
    recent: VecDeque<RecentError>,
    events: VecDeque<RecentError>,
    registered: u64,
    watch: String,
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
        let mut g = self.lock();
        if g.problems.get(path).is_some_and(|p| p.message == message) {
            return;
        }
        tracing::warn!(path, "{message}");
        g.problems.insert(
            path.to_string(),
            Problem {
                path: path.to_string(),
                message: message.to_string(),
                since: now_rfc3339(),
            },
        );
        push_recent(&mut g.recent, message.to_string());
        drop(g);
        self.changed.notify_one();
    }

    /// Like [`StatusBoard::set_problem`], logged as an ERROR: for what an operator must
    /// act on (a deleted store, a replaced inbox).
    pub fn set_serious_problem(&self, path: &str, message: &str) {
        let mut g = self.lock();
        if g.problems.get(path).is_some_and(|p| p.message == message) {
            return;
        }
        tracing::error!(path, "{message}");
        g.problems.insert(
            path.to_string(),
            Problem {
                path: path.to_string(),
                message: message.to_string(),
                since: now_rfc3339(),
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

    /// Counts a registered version.
    pub fn count_registered(&self, n: u64) {
        self.lock().registered += n;
        self.changed.notify_one();
    }

    /// Sets how the inbox is watched.
    pub fn set_watch(&self, how: String) {
        self.lock().watch = how;
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

fn push_recent(q: &mut VecDeque<RecentError>, message: String) {
    if q.len() == RECENT {
        q.pop_front();
    }
    q.push_back(RecentError {
        at: now_rfc3339(),
        message,
    });
}
