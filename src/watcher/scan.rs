//! Rescans: the whole inbox listed, every group put through a quiet period.
//!
//! A rescan also reports stale hand-over temporaries.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use super::Settler;
use super::group::State;
use crate::inbox;
use crate::messages::RegistrarMsg;

/// How long a hand-over temporary whose writer is gone may stay unwritten before
/// `status` reports it.
const STALE_TMP_AGE: Duration = Duration::from_secs(3600);

/// Whether `entry` is a hand-over temporary: `.NAME.PID-RANDOM.tmp` (`modelreg add`,
/// giving its writer's pid) or `.NAME.RANDOM.tmp` (the Python client, no pid); `None` for
/// any other name.
fn handover_writer(entry: &str) -> Option<Option<i32>> {
    let inner = entry.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (_, tail) = inner.rsplit_once('.')?;
    let hex = |r: &str| !r.is_empty() && r.chars().all(|c| c.is_ascii_hexdigit());
    match tail.split_once('-') {
        Some((pid, random)) if hex(random) && pid.chars().all(|c| c.is_ascii_digit()) => {
            Some(Some(pid.parse().ok()?))
        }
        None if tail.len() == 8 && hex(tail) => Some(None),
        _ => None,
    }
}

impl<J> Settler<J> {
    /// Looks at every entry of the inbox and puts each group through a quiet period; the
    /// registrar then skips whatever its fingerprint shows unchanged. With `lost`
    /// (events were dropped), open-write marks are cleared too: their close may be lost.
    pub fn rescan(&mut self, lost: bool) {
        let was_ok = self.inbox_was_ok;
        // A replaced inbox is not listed: its entries are not ours, and listing them
        // would make the registrar forget every source it knows.
        if !self.inbox_usable() || !was_ok {
            // (When it just came back, `inbox_usable` has rescanned already.)
            return;
        }
        self.rescan_listing(lost);
    }

    pub(super) fn rescan_listing(&mut self, lost: bool) {
        let now = Instant::now();
        let inbox::Listing {
            names: entries,
            not_utf8,
        } = match inbox::list(&self.inbox) {
            Ok(e) => e,
            Err(e) => {
                self.board
                    .error(format!("cannot list inbox {}: {e}", self.inbox.display()));
                return;
            }
        };
        if lost {
            for g in self.groups.values_mut() {
                g.drop_marks(now);
            }
        }
        self.report_stale_temporaries(&entries);
        self.report_not_utf8(&not_utf8);
        let present: BTreeSet<String> = entries.iter().cloned().collect();
        for entry in entries {
            let Some(name) = self.group_name(&entry) else {
                continue;
            };
            let look = inbox::look(&self.inbox, &entry, self.follow_symlinks);
            let g = self.group_mut(&name, &entry, now);
            if g.state != State::InFlight {
                g.reobserve(&entry, look.stats(&entry));
            }
            if !g.queued || g.state != State::Settling {
                self.schedule(&name, now);
            }
        }
        let _ = self.to_registrar.send(RegistrarMsg::Present(present));
    }

    /// Reports the entries whose names are not UTF-8 (`found`, as listed now), and clears
    /// the problems of those gone.
    fn report_not_utf8(&mut self, found: &[std::path::PathBuf]) {
        let now: BTreeSet<String> = found
            .iter()
            .map(|p| crate::display::escape_path(p))
            .collect();
        for gone in self.not_utf8.difference(&now) {
            self.board.clear_problem(gone);
        }
        self.not_utf8.clear();
        for p in found {
            self.not_utf8(p);
        }
    }

    /// Reports the hidden hand-over temporaries of `modelreg add` and the Python client
    /// (`.NAME.PID-RANDOM.tmp`) left by a writer that died: not written for
    /// [`STALE_TMP_AGE`] and their process gone. They are ignored as entries, so without
    /// this a killed copy of hundreds of MB stayed in the inbox unseen.
    fn report_stale_temporaries(&mut self, entries: &[String]) {
        let mut now_stale = BTreeSet::new();
        for e in entries {
            let Some(pid) = handover_writer(e) else {
                continue;
            };
            let path = self.inbox.join(e);
            let age = std::fs::symlink_metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            let Some(age) = age.filter(|a| *a >= STALE_TMP_AGE) else {
                continue;
            };
            // SAFETY: signal 0 only checks that the process exists.
            if pid.is_some_and(|p| p > 0 && unsafe { libc::kill(p, 0) } == 0) {
                continue;
            }
            let gone = pid
                .map(|p| format!("process {p} is gone, "))
                .unwrap_or_default();
            let shown = path.display().to_string();
            self.board.set_problem(
                &shown,
                &format!(
                    "stale hand-over temporary of an interrupted `modelreg add` or Python register ({gone}last written {:.1} h ago): delete it",
                    age.as_secs_f64() / 3600.0
                ),
            );
            now_stale.insert(shown);
        }
        for gone in self.stale_tmps.difference(&now_stale) {
            self.board.clear_problem(gone);
        }
        self.stale_tmps = now_stale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_over_temporaries_are_known_by_name_with_their_writer() {
        assert_eq!(
            handover_writer(".resnet.pt.4242-1a2b.tmp"),
            Some(Some(4242))
        );
        assert_eq!(handover_writer(".resnet.pt.0123abcd.tmp"), Some(None));
        assert_eq!(handover_writer(".resnet.pt.xyz.tmp"), None, "not hex");
        assert_eq!(
            handover_writer("resnet.pt.0123abcd.tmp"),
            None,
            "not hidden"
        );
        assert_eq!(handover_writer(".resnet.pt.0123abcd"), None, "no .tmp");
    }
}
