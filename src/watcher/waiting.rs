//! What `status` says of every group still waiting: its state, why, and since when.

use std::os::unix::fs::MetadataExt;

use tokio::time::Instant;

use super::Settler;
use super::group::State;
use super::lease::{open_for_writing, stale_write_bound};
use crate::protocol::Waiting;

/// At most this many files seen created are asked about per group by one `status`...
const PROBES_PER_GROUP: usize = 8;
/// ... and this many in all.
const PROBES_PER_STATUS: usize = 64;

impl<J> Settler<J> {
    /// What is waiting, for `status`.
    pub fn waiting(&self) -> Vec<Waiting> {
        let now = Instant::now();
        let mut budget = PROBES_PER_STATUS;
        let mut out: Vec<Waiting> = self
            .groups
            .iter()
            // Settling only because its entries were deleted (`add FOLDER` removes its
            // copy once registered): nothing of it is waiting; it goes at its deadline.
            .filter(|(_, g)| {
                !(matches!(g.state, State::Settling)
                    && !g.entries.is_empty()
                    && g.entries.iter().all(|e| {
                        std::fs::symlink_metadata(self.inbox.join(e.as_str()))
                            .is_err_and(|err| err.kind() == std::io::ErrorKind::NotFound)
                    }))
            })
            .map(|(name, g)| {
                let mut since = g.entered;
                // Quiet, but a file seen created has not been closed: `cp` reports its
                // one data write only when the copy is done; ask whether it is being
                // written now.
                // Newest first and within a budget: each probe is an open and a close,
                // i.e. two inotify events, and a `cp -al` of a big tree leaves thousands
                // of hints (links are created, never written), which must not overflow
                // the event queue into a rescan.
                let copying = if matches!(g.state, State::Settling) && g.writing.is_empty() {
                    let mut hints: Vec<_> = g.created.iter().collect();
                    hints.sort_by_key(|(_, at)| std::cmp::Reverse(**at));
                    hints.into_iter().take(PROBES_PER_GROUP).find(|(rel, _)| {
                        budget > 0 && {
                            budget -= 1;
                            open_for_writing(&self.inbox.join(rel.as_str())) == Some(true)
                        }
                    })
                } else {
                    None
                };
                let (state, reason) = match &g.state {
                    State::Settling if let Some((path, at)) = copying => {
                        since = since.max(*at);
                        let size = std::fs::metadata(self.inbox.join(path))
                            .map(|m| crate::status::human_bytes(m.len()))
                            .unwrap_or_else(|_| "?".into());
                        (
                            "writing",
                            format!("{path} is open for writing ({size} so far)"),
                        )
                    }
                    State::Settling if !g.writing.is_empty() => {
                        let (path, last) = g
                            .writing
                            .iter()
                            .max_by_key(|(_, t)| **t)
                            .expect("not empty");
                        let age = now.duration_since(*last);
                        let full = self.inbox.join(path);
                        // Say only what the kernel told: where the lease probe cannot
                        // ask (another user's file, no CAP_LEASE), an open writer is a
                        // guess, held only until the stale-write bound.
                        let reason = match open_for_writing(&full) {
                            Some(true) => format!(
                                "{path} is open for writing (last written {:.0} s ago)",
                                age.as_secs_f64()
                            ),
                            Some(false) => format!(
                                "{path} was written {:.0} s ago; no writer has it open now",
                                age.as_secs_f64()
                            ),
                            None => {
                                let owner = std::fs::metadata(&full)
                                    .map(|m| m.uid().to_string())
                                    .unwrap_or_else(|_| "unknown".into());
                                let left = stale_write_bound(self.settle).saturating_sub(age)
                                    + self.settle;
                                format!(
                                    "cannot tell whether a writer still has {path} open (owner uid {owner}, last written {:.0} s ago); registered in about {:.0} s unless it changes",
                                    age.as_secs_f64(),
                                    left.as_secs_f64()
                                )
                            }
                        };
                        ("writing", reason)
                    }
                    State::Settling => (
                        "settling",
                        match &g.incomplete {
                            Some(r) if r.starts_with("empty file") => r.clone(),
                            Some(r) => format!("incomplete: {r}"),
                            None => format!(
                                "registered after {} without changes",
                                humantime::format_duration(self.settle)
                            ),
                        },
                    ),
                    State::InFlight => ("registering", "copying and hashing".to_string()),
                    State::Blocked(r) => ("blocked", r.clone()),
                    State::Retry(n, e) => ("retrying", format!("attempt {n} failed: {e}")),
                };
                let reason = Some(reason);
                Waiting {
                    name: name.clone(),
                    entries: g.entries.iter().cloned().collect(),
                    state: state.to_string(),
                    since_secs: now.duration_since(since).as_secs_f64(),
                    reason,
                    ..Waiting::default()
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}
