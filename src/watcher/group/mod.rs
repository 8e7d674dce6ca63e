//! The settling state machine of one model's inbox entries, apart from the file system.
//!
//! What the file system shows comes in as observations (a path's stat after an event,
//! every file's stat at the end of a quiet period, the lease probe's answers through
//! [`Probe`]); what to do comes out as decisions ([`Verdict`], [`After`], whether to queue).
//! The settler does the looking, the queueing and the sending.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::inbox::FileStat;
use crate::messages::Outcome;

/// Where a group is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum State {
    /// Waiting for a quiet period.
    Settling,
    /// Handed to the registrar; events only ask for another round.
    InFlight,
    /// Cannot go on until its inputs change (why).
    Blocked(String),
    /// The registrar failed (attempts so far, last error); tried again after a backoff.
    Retry(u32, String),
}

/// The entries of one model and what was last seen of them.
#[derive(Debug)]
pub(super) struct Group {
    pub(super) entries: BTreeSet<String>,
    /// When the group entered the state `status` shows: its [`State`] last changed kind,
    /// or its write marks appeared or all went (writing and settling are both
    /// [`State::Settling`]).
    pub(super) entered: Instant,
    pub(super) deadline: Instant,
    pub(super) queued: bool,
    /// The state of every file, by path relative to the inbox, as last seen.
    pub(super) observed: BTreeMap<String, FileStat>,
    /// Files written to and not yet closed (by path relative to the inbox), with the time
    /// of the last data write seen.
    pub(super) writing: BTreeMap<String, Instant>,
    /// Files seen created whose close-after-write has not come yet, with when: only for
    /// `status`, which asks the lease probe whether a writer still has them open. `cp`
    /// copies with one copy_file_range, which reports its one data write at the very end,
    /// so during the copy there is no write mark. Never holds a group back.
    pub(super) created: BTreeMap<String, Instant>,
    /// Why the last look found the group incomplete (a folder holding temporaries).
    pub(super) incomplete: Option<String>,
    pub(super) state: State,
    /// Events arrived while the group was with the registrar.
    pub(super) again: bool,
    pub(super) failures: u32,
}

/// What a path named by an event is now.
#[derive(Debug)]
pub(super) enum Seen {
    /// A file, with its stat.
    File(FileStat),
    /// A folder: the stats of every file of its whole entry, keyed from the inbox.
    Folder(BTreeMap<String, FileStat>),
    /// Something else (a FIFO, a socket): nothing to record.
    Other,
    /// It no longer exists.
    Gone,
}

/// What only the file system can answer while a quiet group is looked at.
pub(super) trait Probe {
    /// Whether the write mark on `rel`, last written `age` ago and quiet for a whole
    /// period, stays: a writer still has it open, or the kernel cannot tell and the
    /// stale-write bound has not passed.
    fn keep_mark(&mut self, rel: &str, age: Duration) -> bool;
    /// Whether `rel`, quiet and about to be handed over, is still open for writing where
    /// events cannot tell (a file with another name, or no close events).
    fn held_open(&mut self, rel: &str) -> bool;
}

/// What the end of a quiet period decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Cannot go on (the group is now [`State::Blocked`]); waits for an event or a rescan.
    Blocked,
    /// Not quiet: another period, ending at this time (the group is marked queued).
    Wait(Instant),
    /// Quiet: hand it to the registrar (the group is now [`State::InFlight`]).
    HandOver,
}

/// What the registrar's outcome leaves to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum After {
    /// Registered and nothing new: forget the group until its next event.
    Forget,
    /// Look again at this time (put it in the queue).
    Queue(Instant),
    /// Nothing: it waits (blocked) or is already queued.
    Nothing,
}

/// Whether `path` (relative to the inbox) is inbox entry `entry` or lies under it.
pub(super) fn in_entry(path: &str, entry: &str) -> bool {
    path.strip_prefix(entry)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl Group {
    /// A new group, first seen at `now`, due one settle period later.
    pub(super) fn new(now: Instant, settle: Duration) -> Self {
        Group {
            entries: BTreeSet::new(),
            entered: now,
            deadline: now + settle,
            queued: false,
            observed: BTreeMap::new(),
            writing: BTreeMap::new(),
            created: BTreeMap::new(),
            incomplete: None,
            state: State::Settling,
            again: false,
            failures: 0,
        }
    }

    /// Moves to `state`; a change of kind (not of a reason or a count) is a new state for
    /// `status`, shown as entered `now`.
    pub(super) fn set_state(&mut self, state: State, now: Instant) {
        if std::mem::discriminant(&state) != std::mem::discriminant(&self.state) {
            self.entered = now;
        }
        self.state = state;
    }

    /// After the write marks changed: writing began or ended `now` when the marks
    /// appeared or all went (`had_marks`: whether there were any before).
    fn marks_changed(&mut self, had_marks: bool, now: Instant) {
        if had_marks == self.writing.is_empty() {
            self.entered = now;
        }
    }

    /// Drops every write mark (their closes may have been lost with dropped events).
    pub(super) fn drop_marks(&mut self, now: Instant) {
        let had_marks = !self.writing.is_empty();
        self.writing.clear();
        self.marks_changed(had_marks, now);
    }

    /// Forgets what was seen of `entry` and everything under it (stats and write marks).
    pub(super) fn forget_entry(&mut self, entry: &str, now: Instant) {
        let had_marks = !self.writing.is_empty();
        self.observed.retain(|k, _| !in_entry(k, entry));
        self.writing.retain(|k, _| !in_entry(k, entry));
        self.created.retain(|k, _| !in_entry(k, entry));
        self.marks_changed(had_marks, now);
    }

    /// Replaces what was seen of `entry` with `stats` (write marks are kept).
    pub(super) fn reobserve(&mut self, entry: &str, stats: BTreeMap<String, FileStat>) {
        self.observed.retain(|k, _| !in_entry(k, entry));
        self.observed.extend(stats);
    }

    /// Takes what an event on `rel` (of inbox entry `entry`) showed. `writing` is
    /// `Some(true)` for a data write, `Some(false)` for a close-after-write or a rename
    /// into place, `None` for anything else (and always `None` when closes are not
    /// reported). A write mark is only set on a file: tar reports data writes on the path
    /// of a folder whose times it sets, and no close ever follows.
    pub(super) fn observe(
        &mut self,
        entry: &str,
        rel: &str,
        writing: Option<bool>,
        seen: Seen,
        now: Instant,
    ) {
        let had_marks = !self.writing.is_empty();
        match writing {
            Some(true) if matches!(seen, Seen::File(_)) => {
                self.writing.insert(rel.to_string(), now);
            }
            Some(_) => {
                self.writing.remove(rel);
                self.created.remove(rel);
            }
            None => {}
        }
        match seen {
            Seen::File(stat) => {
                self.observed.insert(rel.to_string(), stat);
            }
            Seen::Folder(stats) => {
                self.writing.remove(rel);
                self.created.remove(rel);
                self.reobserve(entry, stats);
            }
            Seen::Other => {}
            Seen::Gone => {
                self.observed.retain(|k, _| !in_entry(k, rel));
                self.writing.retain(|k, _| !in_entry(k, rel));
                self.created.retain(|k, _| !in_entry(k, rel));
            }
        }
        self.marks_changed(had_marks, now);
    }

    /// Notes that file `rel` was created `now` (see [`Group::created`]).
    pub(super) fn saw_created(&mut self, rel: &str, now: Instant) {
        self.created.insert(rel.to_string(), now);
    }

    /// Starts (or restarts) the quiet period, to end one settle period after `now`;
    /// returns whether the group must be put in the queue. With the registrar, it only
    /// notes that another round is needed; blocked or retrying, it settles again.
    pub(super) fn poke(&mut self, now: Instant, settle: Duration) -> bool {
        match self.state {
            State::InFlight => {
                self.again = true;
                return false;
            }
            State::Blocked(_) | State::Retry(..) => self.set_state(State::Settling, now),
            State::Settling => {}
        }
        self.deadline = now + settle;
        if self.queued {
            false
        } else {
            self.queued = true;
            true
        }
    }

    /// Decides at the end of a period, from what the group's files are now (`current`),
    /// why a look found it unfinished (`incomplete`) or unable to go on (`blocked`). It
    /// is quiet when nothing changed since the last look, no write is open and nothing
    /// is incomplete; marks whose close was lost are asked about through `probe`.
    pub(super) fn decide(
        &mut self,
        current: BTreeMap<String, FileStat>,
        incomplete: Option<String>,
        blocked: Option<String>,
        now: Instant,
        settle: Duration,
        probe: &mut impl Probe,
    ) -> Verdict {
        if let Some(why) = blocked {
            // Waits, shown as blocked, until an event or a rescan brings it back.
            self.observed = current;
            self.set_state(State::Blocked(why), now);
            return Verdict::Blocked;
        }
        let unchanged = current == self.observed;
        let had_marks = !self.writing.is_empty();
        if unchanged && had_marks {
            // Quiet for a whole period with a write still marked: ask the file system
            // whether a writer really still has it open; the close may have been lost.
            self.writing
                .retain(|rel, last| probe.keep_mark(rel, now.duration_since(*last)));
        }
        if unchanged && self.writing.is_empty() && incomplete.is_none() {
            // About to hand over: ask about every file, not only those whose writes were
            // seen (a file hard-linked in from outside is written through its other name,
            // which makes no event here).
            for rel in current.keys() {
                if probe.held_open(rel) {
                    self.writing.insert(rel.clone(), now);
                }
            }
        }
        self.marks_changed(had_marks, now);
        self.incomplete = incomplete;
        let quiet = unchanged && self.writing.is_empty() && self.incomplete.is_none();
        if !quiet {
            // Something changed without an event, a write is still open, or a folder
            // holds temporaries: start another quiet period from what is there now.
            self.observed = current;
            self.deadline = now + settle;
            self.queued = true;
            return Verdict::Wait(self.deadline);
        }
        self.set_state(State::InFlight, now);
        self.again = false;
        Verdict::HandOver
    }

    /// Takes the registrar's `outcome`. Failures back off 2, 4, ... 60 s (never less
    /// than a settle period).
    pub(super) fn finished(&mut self, outcome: Outcome, now: Instant, settle: Duration) -> After {
        let again = std::mem::take(&mut self.again);
        let poke = |g: &mut Group| {
            if g.poke(now, settle) {
                After::Queue(g.deadline)
            } else {
                After::Nothing
            }
        };
        match outcome {
            Outcome::Done if !again => {
                // Forgotten until its next event; the catalog's fingerprints say what was
                // registered.
                self.failures = 0;
                After::Forget
            }
            Outcome::Done | Outcome::Changed => {
                if outcome == Outcome::Done {
                    self.failures = 0;
                }
                self.set_state(State::Settling, now);
                poke(self)
            }
            Outcome::Blocked(reason) => {
                self.set_state(State::Blocked(reason), now);
                if again { poke(self) } else { After::Nothing }
            }
            Outcome::Failed(e) => {
                self.failures += 1;
                let backoff =
                    Duration::from_secs(1 << self.failures.min(6)).min(Duration::from_secs(60));
                self.set_state(State::Retry(self.failures, e), now);
                self.deadline = now + backoff.max(settle);
                if self.queued {
                    After::Nothing
                } else {
                    self.queued = true;
                    After::Queue(self.deadline)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
