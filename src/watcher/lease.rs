//! The lease probe: whether a writer still has a file open (fcntl F_SETLEASE).
//!
//! And how long a write mark lasts when the kernel cannot tell.

use std::path::Path;
use std::time::Duration;

use super::group::Probe;
use super::linked::hard_linked;

/// The settler's [`Probe`]: asks the kernel about files of the inbox.
pub(super) struct FsProbe<'a> {
    /// The inbox the probed paths are relative to.
    pub(super) inbox: &'a Path,
    /// The settle period (the stale-write bound derives from it).
    pub(super) settle: Duration,
    /// Whether close-after-write events are reported (inotify).
    pub(super) track_writes: bool,
}

impl Probe for FsProbe<'_> {
    fn keep_mark(&mut self, rel: &str, age: Duration) -> bool {
        let full = self.inbox.join(rel);
        let bound = stale_write_bound(self.settle);
        let keep = keep_write_mark(&full, age, bound);
        if !keep {
            tracing::debug!(
                path = %full.display(),
                "write mark cleared: no writer has it open, or it has not changed for {}",
                humantime::format_duration(bound)
            );
        }
        keep
    }

    /// Only where events cannot tell (a file with another name, or no inotify): the
    /// probe's own open and close are inotify events, and probing every file of a
    /// rescan of a big inbox would overflow the queue into another rescan, for ever.
    fn held_open(&mut self, rel: &str) -> bool {
        let full = self.inbox.join(rel);
        let held = (!self.track_writes || hard_linked(&full).is_some())
            && open_for_writing(&full) == Some(true);
        if held {
            tracing::debug!(path = rel, "held: a writer still has it open");
        }
        held
    }
}

/// How long a write mark lasts on a file whose stat does not change when the kernel
/// cannot say whether a writer still has it open: ten settle periods, at least a minute.
pub(super) fn stale_write_bound(settle: Duration) -> Duration {
    (settle * 10).max(Duration::from_secs(60))
}

/// Whether a writer has `path` open, as the kernel tells it: `Some(true)` when a read
/// lease is refused with EAGAIN (someone has it open for writing), `Some(false)` when it
/// is granted (and released at once), `None` when leases cannot be taken here (the
/// file belongs to another user, the filesystem has none, or it is gone).
pub(super) fn open_for_writing(path: &Path) -> Option<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .ok()?;
    crate::fsutil::open_for_writing(&f)
}

/// Whether a write mark on `path`, last written `age` ago and quiet for a settle period,
/// stays: yes while a writer has it open; when the kernel cannot tell, until `bound`.
fn keep_write_mark(path: &Path, age: Duration, bound: Duration) -> bool {
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return false;
    }
    decide_write_mark(open_for_writing(path), age, bound)
}

/// The rule of [`keep_write_mark`], apart from the file system.
fn decide_write_mark(open: Option<bool>, age: Duration, bound: Duration) -> bool {
    match open {
        Some(open) => open,
        None => age < bound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_mark_rule() {
        let bound = stale_write_bound(Duration::from_secs(1));
        assert_eq!(bound, Duration::from_secs(60), "at least a minute");
        assert_eq!(
            stale_write_bound(Duration::from_secs(30)),
            Duration::from_secs(300)
        );
        let young = Duration::from_secs(5);
        let old = Duration::from_secs(61);
        // The kernel's answer wins whatever the age.
        assert!(decide_write_mark(Some(true), old, bound));
        assert!(!decide_write_mark(Some(false), young, bound));
        // Without it, the mark expires once the file has not changed for the bound.
        assert!(decide_write_mark(None, young, bound));
        assert!(!decide_write_mark(None, old, bound));
    }
}
