//! The settler: the task that follows inbox entries from their events to the registrar.
//!
//! It owns every [`Group`], the queue of their deadlines and the loop that feeds them
//! events, control messages and timers; the decisions themselves are the group's
//! ([`super::group`]). The end of a quiet period is [`super::settle`], rescans are
//! [`super::scan`], `status` is [`super::waiting`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::group::{After, Group, Seen, State};
use super::linked::Linked;
use super::{FsEvent, Overflow};
use crate::inbox::{self, FileStat};
use crate::messages::{Outcome, RegistrarMsg, SettlerMsg};
use crate::status::StatusBoard;

/// How often a stream of events re-checks that the inbox is still the pinned folder.
const EVENT_CHECK: Duration = Duration::from_millis(50);

/// Tracks inbox entries until they are complete; see the module docs. `J` is what the
/// registrar's copy jobs report, carried by the registrar's channel and never looked at here.
pub struct Settler<J> {
    pub(super) inbox: PathBuf,
    pub(super) settle: Duration,
    pub(super) follow_symlinks: bool,
    /// Whether open writes are tracked (only the inotify watcher reports closes).
    pub(super) track_writes: bool,
    pub(super) groups: HashMap<String, Group>,
    /// Due times, at most one per group; a popped entry whose group moved its deadline
    /// later is pushed again.
    pub(super) queue: BTreeSet<(Instant, String)>,
    /// The group of each entry seen, so that a deleted folder is still found.
    pub(super) entry_group: HashMap<String, String>,
    pub(super) board: Arc<StatusBoard>,
    pub(super) to_registrar: mpsc::UnboundedSender<RegistrarMsg<J>>,
    /// The folders pinned at start; `None` checks nothing (unit tests).
    pub(super) layout: Option<Arc<crate::layout::Layout>>,
    /// Whether the inbox was the pinned one at the last check.
    pub(super) inbox_was_ok: bool,
    /// When events last checked the layout (they check at most every [`EVENT_CHECK`]).
    pub(super) last_event_check: Option<Instant>,
    /// Handed-over file entries with more than one hard link, by entry: they can change
    /// through a name outside the inbox, which makes no event here, so their stat is
    /// looked at again on a timer (see [`Linked`]).
    pub(super) linked: BTreeMap<String, Linked>,
    /// Stale hand-over temporaries reported as problems (cleared once gone).
    pub(super) stale_tmps: BTreeSet<String>,
    /// Entries whose names are not UTF-8, reported as problems (cleared once gone), by
    /// their shown path.
    pub(super) not_utf8: BTreeSet<String>,
}

impl<J> Settler<J> {
    /// A settler for `inbox` that hands complete groups to the registrar.
    pub fn new(
        inbox: PathBuf,
        settle: Duration,
        follow_symlinks: bool,
        board: Arc<StatusBoard>,
        to_registrar: mpsc::UnboundedSender<RegistrarMsg<J>>,
    ) -> Self {
        Settler {
            inbox,
            settle,
            follow_symlinks,
            track_writes: true,
            groups: HashMap::new(),
            queue: BTreeSet::new(),
            entry_group: HashMap::new(),
            board,
            to_registrar,
            layout: None,
            inbox_was_ok: true,
            last_event_check: None,
            linked: BTreeMap::new(),
            stale_tmps: BTreeSet::new(),
            not_utf8: BTreeSet::new(),
        }
    }

    /// Checks the inbox (and the rest of the layout) against `layout`, pinned at start,
    /// before each use: events, rescans, settled groups and `status`.
    pub fn set_layout(&mut self, layout: Arc<crate::layout::Layout>) {
        self.inbox_was_ok = layout.refused_at_start().is_none();
        self.layout = Some(layout);
    }

    /// Checks the layout: returns whether the inbox may be used. A missing registry.yaml
    /// is handed to the registrar (which writes it again); an inbox that comes back is
    /// rescanned.
    pub(super) fn inbox_usable(&mut self) -> bool {
        let Some(layout) = self.layout.clone() else {
            return true;
        };
        let health = layout.check(&self.board);
        if health.registry_missing {
            let _ = self.to_registrar.send(RegistrarMsg::CheckRegistry);
        }
        let back = health.inbox_ok && !self.inbox_was_ok;
        self.inbox_was_ok = health.inbox_ok;
        if back {
            tracing::info!(inbox = %self.inbox.display(), "the inbox is the original folder again; rescanning");
            self.rescan_listing(false);
        }
        health.inbox_ok
    }

    /// Whether the watcher reports close-after-write, so that open writes hold entries
    /// back (true by default; false for the poll watcher).
    pub fn track_writes(&mut self, yes: bool) {
        self.track_writes = yes;
    }

    /// Runs until `shutdown` resolves: file events, control messages, due groups, overflow
    /// rescans and periodic reconciliation.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<FsEvent>,
        mut ctl: mpsc::UnboundedReceiver<SettlerMsg>,
        overflow: Arc<Overflow>,
        reconcile_every: Duration,
        shutdown: crate::shutdown::Shutdown,
    ) {
        let mut reconcile =
            tokio::time::interval_at(Instant::now() + reconcile_every, reconcile_every);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = self.queue.first().map(|(t, _)| *t);
            let next_linked = self.linked.values().map(|l| l.next).min();
            tokio::select! {
                biased;
                _ = shutdown.wait() => break,
                Some(msg) = ctl.recv() => self.on_ctl(msg),
                _ = overflow.wake.notified() => {
                    if overflow.raised.swap(false, Ordering::SeqCst) {
                        self.board.error("event queue overflowed; rescanning the inbox".into());
                        self.rescan(true);
                    }
                }
                Some(ev) = events.recv() => {
                    self.on_fs(ev);
                    // Drain what is already queued before looking at deadlines.
                    for _ in 0..4096 {
                        match events.try_recv() {
                            Ok(ev) => self.on_fs(ev),
                            Err(_) => break,
                        }
                    }
                }
                _ = sleep_until_opt(next) => self.check_due(),
                _ = sleep_until_opt(next_linked) => self.check_linked(),
                _ = reconcile.tick() => self.rescan(false),
            }
        }
    }

    fn on_ctl(&mut self, msg: SettlerMsg) {
        match msg {
            SettlerMsg::Done { name, outcome } => self.on_done(name, outcome),
            SettlerMsg::Status(reply) => {
                // `status` says what is true now: a deleted store or replaced inbox shows
                // up even before an event or a rescan.
                if !self.inbox_usable() {
                    self.forget_vanished();
                }
                let _ = reply.send(self.waiting());
            }
            SettlerMsg::SetSettle(d) => self.set_settle(d),
            SettlerMsg::Rescan(why) => {
                tracing::info!("rescanning the inbox ({why})");
                self.rescan(false);
            }
        }
    }

    /// Takes a new settle period. A shorter one also applies to entries already settling:
    /// their deadlines move earlier by the difference (a longer one applies from their
    /// next change on).
    fn set_settle(&mut self, settle: Duration) {
        let old = std::mem::replace(&mut self.settle, settle);
        let Some(sooner) = old.checked_sub(settle).filter(|d| !d.is_zero()) else {
            return;
        };
        for (at, name) in std::mem::take(&mut self.queue) {
            let at = match self.groups.get_mut(&name) {
                Some(g) if g.state == State::Settling => {
                    g.deadline = g.deadline.checked_sub(sooner).unwrap_or(g.deadline);
                    at.min(g.deadline)
                }
                _ => at,
            };
            self.queue.insert((at, name));
        }
    }

    /// Handles one notify event.
    pub fn on_fs(&mut self, ev: FsEvent) {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                self.board.error(format!(
                    "watching {}: {e}; rescanning",
                    self.inbox.display()
                ));
                self.rescan(true);
                return;
            }
        };
        tracing::trace!(kind = ?ev.kind, paths = ?ev.paths, "event");
        let now = Instant::now();
        if self
            .last_event_check
            .is_none_or(|t| now.duration_since(t) >= EVENT_CHECK)
            || !self.inbox_was_ok
        {
            self.last_event_check = Some(now);
            if !self.inbox_usable() {
                // Events of a moved inbox arrive under the old path, which now leads
                // elsewhere: nothing is looked at until the original is back.
                return;
            }
        }
        if ev.need_rescan() {
            self.board.error(
                "the kernel dropped inotify events (queue overflow); rescanning the inbox".into(),
            );
            self.rescan(true);
            return;
        }
        for (i, path) in ev.paths.iter().enumerate() {
            // Our own reads of a file (open, close-without-write) are not activity.
            let writing = match ev.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(false),
                EventKind::Access(_) => continue,
                EventKind::Modify(ModifyKind::Data(_)) => Some(true),
                EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Some(false),
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)) if i == 1 => Some(false),
                _ => None,
            };
            let created = matches!(
                ev.kind,
                EventKind::Create(CreateKind::File | CreateKind::Any)
            );
            self.touch_path(path, writing, created, now);
        }
    }

    /// Takes an event on `path`: `writing` as for [`Group::observe`], `created` when the
    /// event says the file was just created (a hint for `status`, see [`Group::created`]).
    pub(super) fn touch_path(
        &mut self,
        path: &Path,
        writing: Option<bool>,
        created: bool,
        now: Instant,
    ) {
        let Ok(rel) = path.strip_prefix(&self.inbox) else {
            return;
        };
        let Some(rel) = rel.to_str() else {
            // A name deeper in a folder entry: the entry's look refuses the whole folder,
            // naming it. A top-level name: a problem of its own.
            match rel.iter().next().and_then(|e| e.to_str()) {
                Some(entry) => self.touch_path(&self.inbox.join(entry), None, false, now),
                None => self.not_utf8(path),
            }
            return;
        };
        let Some(entry) = rel.split('/').next().filter(|e| !e.is_empty()) else {
            return;
        };
        let entry = entry.to_string();
        let Some(name) = self.group_name(&entry) else {
            return;
        };
        // Keep the observed state current, so a file whose events stop is settled one
        // period after its last event. A path that is a folder (new or renamed in) is
        // walked: files created in it before its watch existed produce no events.
        let seen = match std::fs::metadata(self.inbox.join(rel)) {
            Ok(m) if m.is_file() => Seen::File(FileStat::of(&m)),
            Ok(m) if m.is_dir() => {
                Seen::Folder(inbox::look(&self.inbox, &entry, self.follow_symlinks).stats(&entry))
            }
            Ok(_) => Seen::Other,
            Err(_) => Seen::Gone,
        };
        let writing = writing.filter(|_| self.track_writes);
        let created = created && matches!(seen, Seen::File(_));
        let g = self.group_mut(&name, &entry, now);
        g.observe(&entry, rel, writing, seen, now);
        if created {
            g.saw_created(rel, now);
        }
        self.schedule(&name, now);
    }

    /// Reports an inbox entry whose name is not UTF-8 (it cannot be a model name) as a
    /// problem naming it with its bytes escaped, or clears that problem once it is gone.
    pub(super) fn not_utf8(&mut self, path: &Path) {
        let shown = crate::display::escape_path(path);
        if path.symlink_metadata().is_ok() {
            self.board.set_problem(
                &shown,
                &format!(
                    "{shown}: not registered: its name is not valid UTF-8 (bytes shown as \\xNN); rename it"
                ),
            );
            self.not_utf8.insert(shown);
        } else {
            self.board.clear_problem(&shown);
            self.not_utf8.remove(&shown);
        }
    }

    /// The group an entry belongs to, remembered so that a deleted entry is still found;
    /// `None` for ignored names. A refused name becomes a problem in `status`.
    pub(super) fn group_name(&mut self, entry: &str) -> Option<String> {
        if let Some(n) = self.entry_group.get(entry) {
            return Some(n.clone());
        }
        match inbox::group_of(&self.inbox, entry) {
            Ok(Some(name)) => {
                self.entry_group.insert(entry.to_string(), name.clone());
                Some(name)
            }
            Ok(None) => None,
            Err(reason) => {
                let p = self.inbox.join(entry);
                if p.symlink_metadata().is_ok() {
                    self.board.set_problem(
                        &p.display().to_string(),
                        &format!("not registered: {reason}"),
                    );
                } else {
                    self.board.clear_problem(&p.display().to_string());
                }
                None
            }
        }
    }

    pub(super) fn group_mut(&mut self, name: &str, entry: &str, now: Instant) -> &mut Group {
        let settle = self.settle;
        let g = self
            .groups
            .entry(name.to_string())
            .or_insert_with(|| Group::new(now, settle));
        g.entries.insert(entry.to_string());
        g
    }

    /// Moves the group's deadline to one settle period after `now` (or marks it for
    /// another round when in flight).
    pub(super) fn schedule(&mut self, name: &str, now: Instant) {
        if let Some(g) = self.groups.get_mut(name)
            && g.poke(now, self.settle)
        {
            self.queue.insert((g.deadline, name.to_string()));
        }
    }

    /// Takes the registrar's outcome for group `name`.
    pub(super) fn on_done(&mut self, name: String, outcome: Outcome) {
        let Some(g) = self.groups.get_mut(&name) else {
            return;
        };
        match g.finished(outcome, Instant::now(), self.settle) {
            After::Forget => {
                let g = self.groups.remove(&name).expect("group present");
                for e in g.entries {
                    self.entry_group.remove(&e);
                }
            }
            After::Queue(at) => {
                self.queue.insert((at, name));
            }
            After::Nothing => {}
        }
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
