//! The end of a quiet period: a due group looked at, decided on, handed to the registrar.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use tokio::time::Instant;

use super::Settler;
use super::group::{State, Verdict};
use super::lease::FsProbe;
use crate::inbox::{self, FileStat, Look};
use crate::messages::{RegistrarMsg, Settled};
use crate::status::StatusBoard;

impl<J> Settler<J> {
    /// Looks at every group whose deadline has passed.
    pub fn check_due(&mut self) {
        let now = Instant::now();
        // Take what is due first: a group looked at and rescheduled is not looked at again
        // in the same round, even when its new deadline is already past (settle 0).
        let mut due = Vec::new();
        while let Some((t, _)) = self.queue.first() {
            if *t > now {
                break;
            }
            due.push(self.queue.pop_first().expect("not empty"));
        }
        for (_, name) in due {
            let Some(g) = self.groups.get_mut(&name) else {
                continue;
            };
            g.queued = false;
            if g.state == State::InFlight {
                continue;
            }
            if g.deadline > now {
                g.queued = true;
                self.queue.insert((g.deadline, name));
                continue;
            }
            self.check_group(&name, now);
        }
    }

    fn check_group(&mut self, name: &str, now: Instant) {
        if !self.inbox_usable() {
            if let Some(g) = self.groups.get_mut(name) {
                // Waits, visibly, until the inbox is back (which rescans everything).
                g.set_state(
                    State::Blocked("the inbox was replaced or is missing; see problems".into()),
                    now,
                );
            }
            self.forget_vanished();
            return;
        }
        self.regroup(name, now);
        let settle = self.settle;
        let inbox = self.inbox.clone();
        let follow = self.follow_symlinks;
        let Some(g) = self.groups.get_mut(name) else {
            return;
        };
        let Looked {
            current,
            looks,
            gone,
            incomplete,
            blocked,
        } = look_entries(&inbox, follow, name, &g.entries, &self.board);
        for e in &gone {
            g.entries.remove(e);
            self.entry_group.remove(e);
        }
        let mut probe = FsProbe {
            inbox: &inbox,
            settle,
            track_writes: self.track_writes,
        };
        match g.decide(current, incomplete, blocked, now, settle, &mut probe) {
            Verdict::Blocked => return,
            Verdict::Wait(at) => {
                self.queue.insert((at, name.to_string()));
                return;
            }
            Verdict::HandOver => {}
        }
        let settled = settled(name, looks, gone);
        let files: Vec<String> = settled
            .artifacts
            .iter()
            .chain(settled.sidecar.iter())
            .filter(|(_, look)| matches!(look, Look::Files { folder: false, .. }))
            .map(|(entry, _)| entry.clone())
            .collect();
        for entry in files {
            self.follow_linked(&entry, now);
        }
        if self
            .to_registrar
            .send(RegistrarMsg::Settled(settled))
            .is_err()
            && let Some(g) = self.groups.get_mut(name)
        {
            // The registrar is gone: the daemon is shutting down.
            g.set_state(State::Settling, now);
        }
    }

    /// While the inbox is unusable (deleted, replaced): forgets waiting groups none of
    /// whose entries exists any more, so that `status` does not list vanished entries as
    /// blocked. Nothing is lost: an inbox that comes back is rescanned whole.
    pub(super) fn forget_vanished(&mut self) {
        let inbox = self.inbox.clone();
        let gone: Vec<String> = self
            .groups
            .iter()
            .filter(|(_, g)| {
                g.state != State::InFlight
                    && g.entries
                        .iter()
                        .all(|e| inbox.join(e).symlink_metadata().is_err())
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            if let Some(g) = self.groups.remove(&name) {
                tracing::info!(model = name, "forgotten: its inbox entries are gone");
                for e in g.entries {
                    self.entry_group.remove(&e);
                    self.linked.remove(&e);
                }
            }
        }
    }

    /// Moves entries of group `name` whose kind changed (a file replaced by a folder of
    /// the same name, or the reverse) to the group their kind gives now: the model name
    /// of a file is not that of a folder, and what decides is what the entry is now.
    fn regroup(&mut self, name: &str, now: Instant) {
        let Some(g) = self.groups.get(name) else {
            return;
        };
        let mut moves = Vec::new();
        for entry in &g.entries {
            let Ok(m) = std::fs::metadata(self.inbox.join(entry)) else {
                continue;
            };
            if let crate::names::Entry::Artifact { name: now_name }
            | crate::names::Entry::Sidecar { name: now_name } =
                crate::names::classify(std::ffi::OsStr::new(entry), m.is_dir())
                && now_name != name
            {
                moves.push((entry.clone(), now_name));
            }
        }
        for (entry, to) in moves {
            tracing::info!(
                entry,
                from = name,
                to,
                "the entry changed kind; it now belongs to model {to}"
            );
            if let Some(g) = self.groups.get_mut(name) {
                g.entries.remove(&entry);
                g.forget_entry(&entry, now);
            }
            self.entry_group.insert(entry.clone(), to.clone());
            let look = inbox::look(&self.inbox, &entry, self.follow_symlinks);
            self.group_mut(&to, &entry, now)
                .observed
                .extend(look.stats(&entry));
            self.schedule(&to, now);
        }
    }
}

/// What a look at a group's entries found.
struct Looked {
    /// The stats of every file, keyed from the inbox.
    current: BTreeMap<String, FileStat>,
    /// The entries that are there to register, with what they hold.
    looks: Vec<(String, Look)>,
    /// Entries that no longer exist.
    gone: Vec<String>,
    /// Why the group is not finished (a temporary, an empty file, two sidecars).
    incomplete: Option<String>,
    /// Why the group cannot go on (an unreadable sidecar).
    blocked: Option<String>,
}

/// Looks at every entry of group `name` as it is now; problems of single entries go to
/// `board` (and are cleared once fixed).
fn look_entries(
    inbox: &Path,
    follow: bool,
    name: &str,
    entries: &BTreeSet<String>,
    board: &StatusBoard,
) -> Looked {
    let mut current = BTreeMap::new();
    let mut looks = Vec::new();
    let mut gone = Vec::new();
    let mut incomplete = None;
    let mut sidecar: Option<&String> = None;
    let mut blocked = None;
    for entry in entries {
        let look = inbox::look(inbox, entry, follow);
        let shown = inbox.join(entry).display().to_string();
        match &look {
            Look::Gone => {
                gone.push(entry.clone());
                board.clear_problem(&shown);
                continue;
            }
            Look::Ignored => continue,
            // A sidecar that cannot be read (a FIFO, a link out of the inbox, no read
            // permission) holds the artifact back, as an invalid one does: registered
            // now, the version would have no metrics.
            Look::Refused(reason) if crate::names::is_sidecar(entry) => {
                let why =
                    format!("sidecar not used: {reason} (its artifact waits until this is fixed)");
                board.set_problem(&shown, &why);
                blocked = Some(why);
                continue;
            }
            Look::Refused(reason) => {
                board.set_problem(&shown, &format!("not registered: {reason}"));
                continue;
            }
            Look::Incomplete(reason) => incomplete = Some(reason.clone()),
            // `x.metrics.yaml` and `x.metrics.json` both: which holds the metrics is
            // ambiguous, so the artifact waits, blocked (not settling: nothing will
            // change by itself), until one is removed; the removal's event looks again.
            Look::Files { folder: false, .. } if crate::names::is_sidecar(entry) => {
                if let Some(first) = sidecar {
                    let reason = format!(
                        "both {first} and {entry} are sidecars of {name}; remove one (its artifact waits)"
                    );
                    board.set_problem(&shown, &reason);
                    blocked = Some(reason);
                } else {
                    sidecar = Some(entry);
                    board.clear_problem(&shown);
                }
            }
            // An empty file is a `touch` or a writer that has not begun: like an
            // empty folder it waits for its bytes and is never an empty version.
            Look::Files {
                folder: false,
                files,
            } if files.iter().all(|f| f.stat.size == 0) => {
                board.clear_problem(&shown);
                incomplete = Some(format!("empty file {entry}: waiting for its bytes"));
            }
            Look::Files { .. } => board.clear_problem(&shown),
        }
        current.extend(look.stats(entry));
        looks.push((entry.clone(), look));
    }
    Looked {
        current,
        looks,
        gone,
        incomplete,
        blocked,
    }
}

/// The hand-over of group `name`: its artifacts and its sidecar as looked at.
fn settled(name: &str, looks: Vec<(String, Look)>, gone: Vec<String>) -> Settled {
    let mut settled = Settled {
        name: name.to_string(),
        artifacts: Vec::new(),
        sidecar: None,
        gone,
    };
    for (entry, look) in looks {
        if let Look::Files { folder, files } = look {
            // `<name>.metrics.yaml` or `.metrics.json`, in whatever Unicode form.
            if !folder && crate::names::is_sidecar(&entry) {
                settled.sidecar = Some((entry, Look::Files { folder, files }));
            } else {
                settled
                    .artifacts
                    .push((entry, Look::Files { folder, files }));
            }
        }
    }
    settled
}
