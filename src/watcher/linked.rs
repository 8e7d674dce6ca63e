//! The hard-link re-check: handed-over files with another name, stat-checked on a timer.
//!
//! Such a file can be written through its other name, outside the inbox, which makes no
//! event here.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use super::Settler;
use crate::inbox::FileStat;

/// The metadata of `path` when it is a file with more than one hard link.
pub(super) fn hard_linked(path: &Path) -> Option<std::fs::Metadata> {
    std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_file() && m.nlink() > 1)
}

/// A hard-linked file entry looked at again without events. The first look is one
/// settle period (at least a second) after hand-over; each unchanged look doubles the
/// wait, up to [`LINKED_MAX_EVERY`]; after [`LINKED_FOR`] without a change it is left to
/// the periodic reconciliation. So a writer appending through the other name every few
/// seconds, or a minute later, is seen at once, and the cost is bounded: a handful of
/// stats per linked entry per hour.
#[derive(Debug)]
pub(super) struct Linked {
    /// Its stat at hand-over or at the last look.
    pub(super) stat: FileStat,
    /// When it is looked at next.
    pub(super) next: Instant,
    /// The wait before that look.
    every: Duration,
    /// When it is left to the periodic reconciliation.
    until: Instant,
}

/// The longest wait between two looks at a hard-linked entry.
const LINKED_MAX_EVERY: Duration = Duration::from_secs(60);
/// How long a hard-linked entry is looked at after its last change.
const LINKED_FOR: Duration = Duration::from_secs(3600);

impl<J> Settler<J> {
    /// Starts (or stops) looking again at file entry `entry`, just handed over, as it has
    /// (or no longer has) another hard link.
    pub(super) fn follow_linked(&mut self, entry: &str, now: Instant) {
        match hard_linked(&self.inbox.join(entry)) {
            Some(m) => {
                let every = self.settle.max(Duration::from_secs(1));
                self.linked.insert(
                    entry.to_string(),
                    Linked {
                        stat: FileStat::of(&m),
                        next: now + every,
                        every,
                        until: now + LINKED_FOR,
                    },
                );
            }
            None => {
                self.linked.remove(entry);
            }
        }
    }

    /// Looks again at the hard-linked entries that are due (see [`Linked`]): a changed one
    /// settles again as if an event had come.
    pub(super) fn check_linked(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .linked
            .iter()
            .filter(|(_, l)| l.next <= now)
            .map(|(e, _)| e.clone())
            .collect();
        for entry in due {
            let full = self.inbox.join(&entry);
            let Some(m) = hard_linked(&full) else {
                // Gone, or its last other name was removed: events tell the rest.
                self.linked.remove(&entry);
                continue;
            };
            let l = self.linked.get_mut(&entry).expect("due entry");
            if FileStat::of(&m) != l.stat {
                tracing::debug!(path = %full.display(), "a hard-linked entry changed without an event");
                self.linked.remove(&entry);
                self.touch_path(&full, None, false, now);
                continue;
            }
            if now >= l.until {
                self.linked.remove(&entry);
                continue;
            }
            l.every = (l.every * 2).min(LINKED_MAX_EVERY);
            l.next = now + l.every;
        }
    }
}
