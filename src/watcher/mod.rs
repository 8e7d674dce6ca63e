//! From notify events to "this model's inbox entries are complete" messages.
//!
//! The notify callback only forwards events into a bounded channel with `try_send`; when
//! the channel is full (or the kernel queue overflowed and notify says `need_rescan`) a
//! flag is raised and the whole inbox is rescanned, so a dropped event costs a rescan,
//! never a missed file. Rescans compare with the catalog's fingerprints, so unchanged
//! files make no new version.
//!
//! The [`Settler`] groups entries by model name (`resnet18.pt` and
//! `resnet18.metrics.yaml` together) and hands a group to the registrar once every file in
//! it has been quiet for the settle period: no events, no write left open, and the same
//! size, mtime and inode at the end of the period as at its start.
//!
//! Liveness: every entry ends registered, refused with a reason, or visibly waiting with
//! a reason and since when. No state is held by a mark that only an event can clear. A
//! write mark (a data write seen, its close-after-write not yet) is only ever set on a
//! file, never on a folder path (tar's events on the folder it sets the times of), and
//! once the file has been quiet for a settle period the file system is asked whether a
//! writer still has it open (a read lease is refused while anyone has it open for
//! writing, see fcntl(2) F_SETLEASE). When the kernel cannot tell (the file belongs to
//! another user and the daemon has no CAP_LEASE, or the filesystem has no leases), the
//! mark expires once the file's stat has not changed for [`stale_write_bound`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::config::WatchMode;
use crate::inbox::{self, FileStat, Look};
use crate::messages::{Outcome, RegistrarMsg, Settled, SettlerMsg};
use crate::protocol::Waiting;
use crate::status::StatusBoard;

/// Capacity of the channel from the notify thread. Past it, events are dropped and a
/// rescan is scheduled instead.
pub const EVENT_QUEUE: usize = 16 * 1024;

/// Raised by the notify thread when it had to drop events.
#[derive(Debug, Default)]
pub struct Overflow {
    raised: AtomicBool,
    wake: Notify,
}

impl Overflow {
    fn raise(&self) {
        if !self.raised.swap(true, Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }
}

/// What the notify thread forwards.
pub type FsEvent = Result<notify::Event, String>;

/// A running watcher; dropping it stops watching.
pub struct Watching {
    _watcher: Box<dyn std::any::Any + Send>,
    /// How the inbox is watched, for `status`.
    pub description: String,
    /// Whether close-after-write events are reported (inotify), so that an open write
    /// can hold an entry back. The poll watcher sees only sizes and mtimes.
    pub reports_close: bool,
}

/// Starts watching `inbox` recursively: with inotify, or by polling when the settings
/// say so, when the inbox is on a network filesystem (inotify sees no changes made by
/// other machines) or, in `auto` mode, when inotify cannot be set up (too many watches).
/// Events go to `tx`; when `tx` is full the overflow flag is raised.
pub fn start(
    inbox: &Path,
    mode: WatchMode,
    poll_interval: Duration,
    tx: mpsc::Sender<FsEvent>,
    overflow: Arc<Overflow>,
) -> Result<Watching, String> {
    let handler = Forward {
        tx,
        overflow,
        new_folders: None,
    };
    let poll = |handler: Forward, why: String| -> Result<Watching, String> {
        // Never follow links: a link to /usr would have the poller walk and stat all of
        // it every interval. Links inside the inbox are judged by `inbox::look`.
        let cfg = notify::Config::default()
            .with_poll_interval(poll_interval)
            .with_follow_symlinks(false);
        let mut w = notify::PollWatcher::new(handler, cfg).map_err(|e| e.to_string())?;
        w.watch(inbox, RecursiveMode::Recursive)
            .map_err(|e| format!("cannot poll {}: {e}", inbox.display()))?;
        Ok(Watching {
            _watcher: Box::new(w),
            description: format!(
                "poll every {} ({why})",
                humantime::format_duration(poll_interval)
            ),
            reports_close: false,
        })
    };
    if mode == WatchMode::Poll {
        return poll(handler, "watch: poll".into());
    }
    if mode == WatchMode::Auto
        && let Some(fs) = network_filesystem(inbox)
    {
        tracing::warn!(inbox = %inbox.display(), "the inbox is on {fs}, where inotify misses changes made elsewhere; polling instead");
        return poll(handler, format!("the inbox is on {fs}"));
    }
    match try_inotify(inbox, handler.clone()) {
        Ok(w) => Ok(Watching {
            _watcher: Box::new(w),
            description: "inotify".into(),
            reports_close: true,
        }),
        Err(e) if mode == WatchMode::Auto => {
            let why = if is_limit(&e) {
                format!(
                    "inotify failed: {e}; raise fs.inotify.max_user_watches / max_user_instances to use it"
                )
            } else {
                format!("inotify failed: {e}")
            };
            tracing::warn!(inbox = %inbox.display(), "{why}; polling instead");
            poll(handler, why)
        }
        Err(e) if is_limit(&e) => Err(format!(
            "cannot watch {} with inotify: {e} (raise fs.inotify.max_user_watches, or set watch: auto or poll)",
            inbox.display()
        )),
        Err(e) => Err(format!(
            "cannot watch {} with inotify: {e} (or set watch: poll)",
            inbox.display()
        )),
    }
}

/// Whether an inotify error is a per-user limit (watches, instances, open files), the
/// only case where raising the sysctls helps.
fn is_limit(e: &notify::Error) -> bool {
    match &e.kind {
        notify::ErrorKind::MaxFilesWatch => true,
        notify::ErrorKind::Io(io) => matches!(
            io.raw_os_error(),
            Some(libc::ENOSPC | libc::EMFILE | libc::ENFILE)
        ),
        _ => false,
    }
}

/// The notify callback: forwards events into the bounded channel.
#[derive(Clone)]
struct Forward {
    tx: mpsc::Sender<FsEvent>,
    overflow: Arc<Overflow>,
    /// With inotify: where folders created in or moved into the inbox are sent, to be
    /// watched (see [`try_inotify`]).
    new_folders: Option<std::sync::mpsc::Sender<PathBuf>>,
}

impl notify::EventHandler for Forward {
    fn handle_event(&mut self, res: notify::Result<notify::Event>) {
        if let (Some(folders), Ok(ev)) = (&self.new_folders, &res) {
            // Created, moved in, or (metadata) perhaps made readable after a failed watch.
            let arrived = matches!(
                ev.kind,
                EventKind::Create(notify::event::CreateKind::Folder)
                    | EventKind::Modify(
                        ModifyKind::Name(RenameMode::To | RenameMode::Both)
                            | ModifyKind::Metadata(_)
                    )
            );
            if arrived && let Some(p) = ev.paths.last() {
                let _ = folders.send(p.clone());
            }
        }
        // A folder the daemon may not list: `inbox::look` reports it as a problem of its
        // entry, with its owner and mode; the poll watcher would repeat this every interval.
        if let Err(e) = &res
            && let notify::ErrorKind::Io(io) = &e.kind
            && io.kind() == std::io::ErrorKind::PermissionDenied
        {
            tracing::debug!("watcher: {e}");
            return;
        }
        let msg = res.map_err(|e| e.to_string());
        // Full channel: drop the event and ask for a rescan, which finds whatever this
        // event was about. Blocking here would stall notify's thread and overflow the
        // kernel queue instead.
        if self.tx.try_send(msg).is_err() {
            self.overflow.raise();
        }
    }
}

/// Watches the inbox and every folder under it with inotify, one non-recursive watch per
/// folder, added by us rather than by notify's recursive mode: notify's recursive set-up
/// gives up at the first folder it cannot watch, so one unreadable folder (`mkdir -m 700`
/// by another user) would switch the whole inbox to polling. Here a folder that cannot be
/// watched is skipped (logged; `inbox::look` makes it a `status` problem for its entry),
/// and only the inbox itself or a per-user limit fails the set-up. Links are never
/// followed (`symlink_metadata`, `file_type` of directory entries): a link to /etc must
/// not put watches outside the inbox. Folders that appear later (created, or moved in
/// with everything under them) are reported by the inbox's or their parent's watch and
/// added by a small thread; what was written into them before their watch existed is
/// found when their entry is looked at, as with notify's own recursive mode.
fn try_inotify(inbox: &Path, mut handler: Forward) -> notify::Result<Arc<FolderWatches>> {
    let (folders_tx, folders_rx) = std::sync::mpsc::channel::<PathBuf>();
    handler.new_folders = Some(folders_tx);
    let overflow = handler.overflow.clone();
    let cfg = notify::Config::default().with_follow_symlinks(false);
    let w = Arc::new(FolderWatches {
        watcher: std::sync::Mutex::new(notify::RecommendedWatcher::new(handler, cfg)?),
    });
    w.add(inbox, true)?;
    // The thread holds only a weak reference: dropping `Watching` drops the watcher, whose
    // handler holds the sender, which ends the thread.
    let weak = Arc::downgrade(&w);
    std::thread::Builder::new()
        .name("inbox-folders".into())
        .spawn(move || {
            while let Ok(dir) = folders_rx.recv() {
                let Some(w) = weak.upgrade() else { break };
                if let Err(e) = w.add(&dir, false) {
                    // A limit: new folders go unwatched. A rescan still finds their files.
                    tracing::error!(folder = %dir.display(), "cannot watch a new folder: {e}; raise fs.inotify.max_user_watches");
                    overflow.raise();
                }
            }
        })
        .map_err(notify::Error::io)?;
    Ok(w)
}

/// The inotify watcher with its own per-folder watches; see [`try_inotify`].
struct FolderWatches {
    watcher: std::sync::Mutex<notify::RecommendedWatcher>,
}

impl FolderWatches {
    /// Watches `dir` and every real folder under it. An error on `dir` itself fails when
    /// `strict`; below it, only a per-user limit fails (nothing more can be added).
    fn add(&self, dir: &Path, strict: bool) -> notify::Result<()> {
        let mut stack = vec![(dir.to_path_buf(), 0usize)];
        while let Some((d, depth)) = stack.pop() {
            let top = depth == 0;
            // The inbox itself as configured (its path may hold a link the operator
            // chose); everything under it without following links.
            let meta = if top && strict {
                std::fs::metadata(&d)
            } else {
                std::fs::symlink_metadata(&d)
            };
            match meta {
                Ok(m) if m.is_dir() => {}
                Ok(_) => continue,
                Err(e) if top && strict => return Err(notify::Error::io(e).add_path(d)),
                Err(_) => continue,
            }
            let added = self
                .watcher
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .watch(&d, RecursiveMode::NonRecursive);
            if let Err(e) = added {
                if is_limit(&e) || (top && strict) {
                    return Err(e);
                }
                tracing::warn!(folder = %d.display(), "not watching this folder: {e}");
                continue;
            }
            // Deeper than any entry may be (inbox::look refuses those) is not watched.
            if depth > 40 {
                continue;
            }
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for entry in rd.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((entry.path(), depth + 1));
                }
            }
        }
        Ok(())
    }
}

/// The name of the network filesystem `path` is on, if it is on one (by statfs magic).
pub fn network_filesystem(path: &Path) -> Option<&'static str> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    filesystem_name(st.f_type as i64)
}

/// Network and remote filesystems on which inotify does not see other machines' changes.
fn filesystem_name(magic: i64) -> Option<&'static str> {
    Some(match magic as u32 {
        0x6969 => "NFS",
        0x517B => "SMB",
        0xFF53_4D42 => "CIFS",
        0xFE53_4D42 => "SMB2",
        0x00C3_6400 => "CephFS",
        0x5346_414F => "AFS",
        0x0102_1997 => "9P",
        0x6573_5546 => "a FUSE filesystem",
        0x0BD0_0BD0 => "Lustre",
        0x4750_4653 => "GPFS",
        _ => return None,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Settling,
    InFlight,
    Blocked(String),
    Retry(u32, String),
}

#[derive(Debug)]
struct Group {
    entries: BTreeSet<String>,
    since: Instant,
    deadline: Instant,
    queued: bool,
    /// The state of every file, by path relative to the inbox, as last seen.
    observed: BTreeMap<String, FileStat>,
    /// Files written to and not yet closed (by path relative to the inbox), with the time
    /// of the last data write seen.
    writing: BTreeMap<String, Instant>,
    /// Why the last look found the group incomplete (a folder holding temporaries).
    incomplete: Option<String>,
    state: State,
    /// Events arrived while the group was with the registrar.
    again: bool,
    failures: u32,
}

/// Tracks inbox entries until they are complete; see the module docs. `J` is what the
/// registrar's copy jobs report, carried by the registrar's channel and never looked at here.
pub struct Settler<J> {
    inbox: PathBuf,
    settle: Duration,
    follow_symlinks: bool,
    /// Whether open writes are tracked (only the inotify watcher reports closes).
    track_writes: bool,
    groups: HashMap<String, Group>,
    /// Due times, at most one per group; a popped entry whose group moved its deadline
    /// later is pushed again.
    queue: BTreeSet<(Instant, String)>,
    /// The group of each entry seen, so that a deleted folder is still found.
    entry_group: HashMap<String, String>,
    board: Arc<StatusBoard>,
    to_registrar: mpsc::UnboundedSender<RegistrarMsg<J>>,
    /// The folders pinned at start; `None` checks nothing (unit tests).
    layout: Option<Arc<crate::layout::Layout>>,
    /// Whether the inbox was the pinned one at the last check.
    inbox_was_ok: bool,
    /// When events last checked the layout (they check at most every [`EVENT_CHECK`]).
    last_event_check: Option<Instant>,
    /// Handed-over file entries with more than one hard link, by entry: they can change
    /// through a name outside the inbox, which makes no event here, so their stat is
    /// looked at again on a timer (see [`Linked`]).
    linked: BTreeMap<String, Linked>,
    /// Stale hand-over temporaries reported as problems (cleared once gone).
    stale_tmps: BTreeSet<String>,
}

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

/// A hard-linked file entry looked at again without events. The first look is one
/// settle period (at least a second) after hand-over; each unchanged look doubles the
/// wait, up to [`LINKED_MAX_EVERY`]; after [`LINKED_FOR`] without a change it is left to
/// the periodic reconciliation. So a writer appending through the other name every few
/// seconds, or a minute later, is seen at once, and the cost is bounded: a handful of
/// stats per linked entry per hour.
#[derive(Debug)]
struct Linked {
    stat: FileStat,
    next: Instant,
    every: Duration,
    until: Instant,
}

/// The longest wait between two looks at a hard-linked entry.
const LINKED_MAX_EVERY: Duration = Duration::from_secs(60);
/// How long a hard-linked entry is looked at after its last change.
const LINKED_FOR: Duration = Duration::from_secs(3600);

/// How often a stream of events re-checks that the inbox is still the pinned folder.
const EVENT_CHECK: Duration = Duration::from_millis(50);

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
    fn inbox_usable(&mut self) -> bool {
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
            self.touch_path(path, writing, now);
        }
    }

    fn touch_path(&mut self, path: &Path, writing: Option<bool>, now: Instant) {
        let Ok(rel) = path.strip_prefix(&self.inbox) else {
            return;
        };
        let Some(rel) = rel.to_str() else {
            self.board.set_problem(
                &path.display().to_string(),
                "file name is not valid UTF-8; it is not registered",
            );
            return;
        };
        let Some(entry) = rel.split('/').next().filter(|e| !e.is_empty()) else {
            return;
        };
        let entry = entry.to_string();
        let Some(name) = self.group_name(&entry) else {
            return;
        };
        let track = self.track_writes;
        // Keep the observed state current, so a file whose events stop is settled one
        // period after its last event. A path that is a folder (new or renamed in) is
        // walked: files created in it before its watch existed produce no events.
        let full = self.inbox.join(rel);
        let meta = std::fs::metadata(&full);
        let g = self.group_mut(&name, &entry, now);
        // Only a file can be open for writing: tar reports data writes on the path of a
        // folder whose times it sets, and no close ever follows.
        let is_file = meta.as_ref().is_ok_and(|m| m.is_file());
        match writing.filter(|_| track) {
            Some(true) if is_file => {
                g.writing.insert(rel.to_string(), now);
            }
            Some(_) => {
                g.writing.remove(rel);
            }
            None => {}
        }
        let inbox = self.inbox.clone();
        let follow = self.follow_symlinks;
        let g = self.groups.get_mut(&name).expect("group just made");
        match meta {
            Ok(m) if m.is_file() => {
                g.observed.insert(rel.to_string(), FileStat::of(&m));
            }
            Ok(m) if m.is_dir() => {
                g.writing.remove(rel);
                let look = inbox::look(&inbox, &entry, follow);
                g.observed
                    .retain(|k, _| k != &entry && !k.starts_with(&format!("{entry}/")));
                g.observed.extend(look.stats(&entry));
            }
            Ok(_) => {}
            Err(_) => {
                let prefix = format!("{rel}/");
                g.observed
                    .retain(|k, _| k != rel && !k.starts_with(&prefix));
                g.writing.retain(|k, _| k != rel && !k.starts_with(&prefix));
            }
        }
        self.schedule(&name, now + self.settle);
    }

    /// The group an entry belongs to, remembered so that a deleted entry is still found;
    /// `None` for ignored names. A refused name becomes a problem in `status`.
    fn group_name(&mut self, entry: &str) -> Option<String> {
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

    fn group_mut(&mut self, name: &str, entry: &str, now: Instant) -> &mut Group {
        let settle = self.settle;
        let g = self
            .groups
            .entry(name.to_string())
            .or_insert_with(|| Group {
                entries: BTreeSet::new(),
                since: now,
                deadline: now + settle,
                queued: false,
                observed: BTreeMap::new(),
                writing: BTreeMap::new(),
                incomplete: None,
                state: State::Settling,
                again: false,
                failures: 0,
            });
        g.entries.insert(entry.to_string());
        g
    }

    /// Moves the group's deadline to `at` (or marks it for another round when in flight).
    fn schedule(&mut self, name: &str, at: Instant) {
        let Some(g) = self.groups.get_mut(name) else {
            return;
        };
        match g.state {
            State::InFlight => {
                g.again = true;
                return;
            }
            State::Blocked(_) | State::Retry(..) => g.state = State::Settling,
            State::Settling => {}
        }
        g.deadline = at;
        if !g.queued {
            g.queued = true;
            self.queue.insert((at, name.to_string()));
        }
    }

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
                g.state =
                    State::Blocked("the inbox was replaced or is missing; see problems".into());
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
        let mut current = BTreeMap::new();
        let mut looks = Vec::new();
        let mut gone = Vec::new();
        let mut incomplete = None;
        let mut sidecar: Option<&String> = None;
        let mut blocked = None;
        for entry in &g.entries {
            let look = inbox::look(&inbox, entry, follow);
            let shown = inbox.join(entry).display().to_string();
            match &look {
                Look::Gone => {
                    gone.push(entry.clone());
                    self.board.clear_problem(&shown);
                    continue;
                }
                Look::Ignored => continue,
                // A sidecar that cannot be read (a FIFO, a link out of the inbox, no read
                // permission) holds the artifact back, as an invalid one does: registered
                // now, the version would have no metrics.
                Look::Refused(reason) if crate::names::is_sidecar(entry) => {
                    let why = format!(
                        "sidecar not used: {reason} (its artifact waits until this is fixed)"
                    );
                    self.board.set_problem(&shown, &why);
                    blocked = Some(why);
                    continue;
                }
                Look::Refused(reason) => {
                    self.board
                        .set_problem(&shown, &format!("not registered: {reason}"));
                    continue;
                }
                Look::Incomplete(reason) => incomplete = Some(reason.clone()),
                // `x.metrics.yaml` and `x.metrics.json` both: which holds the metrics is
                // ambiguous, so the artifact waits until one is removed.
                Look::Files { folder: false, .. } if crate::names::is_sidecar(entry) => {
                    if let Some(first) = sidecar {
                        let reason = format!(
                            "both {first} and {entry} are sidecars of {name}; remove one (its artifact waits)"
                        );
                        self.board.set_problem(&shown, &reason);
                        incomplete = Some(reason);
                    } else {
                        sidecar = Some(entry);
                        self.board.clear_problem(&shown);
                    }
                }
                // An empty file is a `touch` or a writer that has not begun: like an
                // empty folder it waits for its bytes and is never an empty version.
                Look::Files {
                    folder: false,
                    files,
                } if files.iter().all(|f| f.stat.size == 0) => {
                    self.board.clear_problem(&shown);
                    incomplete = Some(format!("empty file {entry}: waiting for its bytes"));
                }
                Look::Files { .. } => self.board.clear_problem(&shown),
            }
            current.extend(look.stats(entry));
            looks.push((entry.clone(), look));
        }
        for e in &gone {
            g.entries.remove(e);
            self.entry_group.remove(e);
        }
        if let Some(why) = blocked {
            // Waits, shown as blocked, until an event or a rescan brings it back.
            g.observed = current;
            g.state = State::Blocked(why);
            return;
        }
        let unchanged = current == g.observed;
        if unchanged && !g.writing.is_empty() {
            // Quiet for a whole period with a write still marked: ask the file system
            // whether a writer really still has it open; the close may have been lost.
            let bound = stale_write_bound(settle);
            g.writing.retain(|rel, last| {
                let full = inbox.join(rel);
                let keep = keep_write_mark(&full, now.duration_since(*last), bound);
                if !keep {
                    tracing::debug!(
                        path = %full.display(),
                        "write mark cleared: no writer has it open, or it has not changed for {}",
                        humantime::format_duration(bound)
                    );
                }
                keep
            });
        }
        if unchanged && g.writing.is_empty() && incomplete.is_none() {
            // About to hand over: ask the kernel about every file, not only those whose
            // writes were seen. A file hard-linked in from outside is written through
            // its other name, which makes no event here; a read lease is still refused
            // while anyone has the inode open for writing (where the probe can tell).
            // Only where events cannot tell (a file with another name, or no inotify):
            // the probe's own open and close are inotify events, and probing every
            // file of a rescan of a big inbox would overflow the queue into another
            // rescan, for ever.
            let track = self.track_writes;
            for rel in current.keys() {
                let full = inbox.join(rel);
                let linked = std::fs::metadata(&full).is_ok_and(|m| m.nlink() > 1);
                if (linked || !track) && open_for_writing(&full) == Some(true) {
                    tracing::debug!(path = rel, "held: a writer still has it open");
                    g.writing.insert(rel.clone(), now);
                }
            }
        }
        g.incomplete = incomplete.clone();
        let quiet = unchanged && g.writing.is_empty() && incomplete.is_none();
        if !quiet {
            // Something changed without an event, a write is still open, or a folder
            // holds temporaries: start another quiet period from what is there now.
            g.observed = current;
            g.deadline = now + settle;
            g.queued = true;
            self.queue.insert((g.deadline, name.to_string()));
            return;
        }
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
        for (entry, look) in settled.artifacts.iter().chain(settled.sidecar.iter()) {
            if let Look::Files { folder: false, .. } = look {
                let full = inbox.join(entry);
                match std::fs::metadata(&full) {
                    Ok(m) if m.is_file() && m.nlink() > 1 => {
                        let every = settle.max(Duration::from_secs(1));
                        self.linked.insert(
                            entry.clone(),
                            Linked {
                                stat: FileStat::of(&m),
                                next: now + every,
                                every,
                                until: now + LINKED_FOR,
                            },
                        );
                    }
                    _ => {
                        self.linked.remove(entry);
                    }
                }
            }
        }
        g.state = State::InFlight;
        g.again = false;
        if self
            .to_registrar
            .send(RegistrarMsg::Settled(settled))
            .is_err()
        {
            // The registrar is gone: the daemon is shutting down.
            g.state = State::Settling;
        }
    }

    /// While the inbox is unusable (deleted, replaced): forgets waiting groups none of
    /// whose entries exists any more, so that `status` does not list vanished entries as
    /// blocked. Nothing is lost: an inbox that comes back is rescanned whole.
    fn forget_vanished(&mut self) {
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

    /// Looks again at the hard-linked entries that are due (see [`Linked`]): a changed one
    /// settles again as if an event had come.
    fn check_linked(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .linked
            .iter()
            .filter(|(_, l)| l.next <= now)
            .map(|(e, _)| e.clone())
            .collect();
        for entry in due {
            let full = self.inbox.join(&entry);
            let m = match std::fs::metadata(&full) {
                Ok(m) if m.is_file() && m.nlink() > 1 => m,
                _ => {
                    // Gone, or its last other name was removed: events tell the rest.
                    self.linked.remove(&entry);
                    continue;
                }
            };
            let l = self.linked.get_mut(&entry).expect("due entry");
            if FileStat::of(&m) != l.stat {
                tracing::debug!(path = %full.display(), "a hard-linked entry changed without an event");
                self.linked.remove(&entry);
                self.touch_path(&full, None, now);
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
                g.observed
                    .retain(|k, _| k != &entry && !k.starts_with(&format!("{entry}/")));
                g.writing
                    .retain(|k, _| k != &entry && !k.starts_with(&format!("{entry}/")));
            }
            self.entry_group.insert(entry.clone(), to.clone());
            let look = inbox::look(&self.inbox, &entry, self.follow_symlinks);
            let g = self.group_mut(&to, &entry, now);
            g.observed.extend(look.stats(&entry));
            self.schedule(&to, now + self.settle);
        }
    }

    fn on_done(&mut self, name: String, outcome: Outcome) {
        let now = Instant::now();
        let settle = self.settle;
        let Some(g) = self.groups.get_mut(&name) else {
            return;
        };
        let again = std::mem::take(&mut g.again);
        match outcome {
            Outcome::Done => {
                g.failures = 0;
                if again {
                    g.state = State::Settling;
                    self.schedule(&name, now + settle);
                } else {
                    // Forgotten until its next event; the catalog's fingerprints say
                    // what was registered.
                    let g = self.groups.remove(&name).expect("group present");
                    for e in g.entries {
                        self.entry_group.remove(&e);
                    }
                }
            }
            Outcome::Changed => {
                g.state = State::Settling;
                self.schedule(&name, now + settle);
            }
            Outcome::Blocked(reason) => {
                g.state = State::Blocked(reason);
                if again {
                    self.schedule(&name, now + settle);
                }
            }
            Outcome::Failed(e) => {
                g.failures += 1;
                let backoff =
                    Duration::from_secs(1 << g.failures.min(6)).min(Duration::from_secs(60));
                g.state = State::Retry(g.failures, e);
                g.deadline = now + backoff.max(settle);
                if !g.queued {
                    g.queued = true;
                    self.queue.insert((g.deadline, name));
                }
            }
        }
    }

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

    fn rescan_listing(&mut self, lost: bool) {
        let now = Instant::now();
        let entries = match inbox::list(&self.inbox) {
            Ok(e) => e,
            Err(e) => {
                self.board
                    .error(format!("cannot list inbox {}: {e}", self.inbox.display()));
                return;
            }
        };
        if lost {
            for g in self.groups.values_mut() {
                g.writing.clear();
            }
        }
        self.report_stale_temporaries(&entries);
        let present: BTreeSet<String> = entries.iter().cloned().collect();
        for entry in entries {
            let Some(name) = self.group_name(&entry) else {
                continue;
            };
            let look = inbox::look(&self.inbox, &entry, self.follow_symlinks);
            let g = self.group_mut(&name, &entry, now);
            if g.state != State::InFlight {
                g.observed
                    .retain(|k, _| k != &entry && !k.starts_with(&format!("{entry}/")));
                g.observed.extend(look.stats(&entry));
            }
            if !g.queued || g.state != State::Settling {
                self.schedule(&name, now + self.settle);
            }
        }
        let _ = self.to_registrar.send(RegistrarMsg::Present(present));
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

    /// What is waiting, for `status`.
    pub fn waiting(&self) -> Vec<Waiting> {
        let now = Instant::now();
        let mut out: Vec<Waiting> = self
            .groups
            .iter()
            .map(|(name, g)| {
                let (state, reason) = match &g.state {
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
                    since_secs: now.duration_since(g.since).as_secs_f64(),
                    reason,
                    ..Waiting::default()
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// How long a write mark lasts on a file whose stat does not change when the kernel
/// cannot say whether a writer still has it open: ten settle periods, at least a minute.
pub fn stale_write_bound(settle: Duration) -> Duration {
    (settle * 10).max(Duration::from_secs(60))
}

/// Whether a writer has `path` open, as the kernel tells it: `Some(true)` when a read
/// lease is refused with EAGAIN (someone has it open for writing), `Some(false)` when it
/// is granted (and released at once), `None` when leases cannot be taken here (the
/// file belongs to another user, the filesystem has none, or it is gone).
pub fn open_for_writing(path: &Path) -> Option<bool> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    // A writer opening the file in the instant the lease is held makes the kernel send
    // the holder SIGIO, whose default action ends the process. The daemon uses no SIGIO
    // otherwise (tokio polls with epoll), so it is ignored, once.
    static IGNORE_SIGIO: std::sync::Once = std::sync::Once::new();
    // SAFETY: setting a signal's disposition to SIG_IGN; no handler runs.
    IGNORE_SIGIO.call_once(|| unsafe {
        libc::signal(libc::SIGIO, libc::SIG_IGN);
    });
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    // SAFETY: plain fcntl calls on an fd we own.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) };
    if r == 0 {
        // SAFETY: as above; releasing before the fd closes keeps writers from waiting.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
        return Some(false);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) => Some(true),
        _ => None,
    }
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

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_filesystems_by_magic() {
        assert_eq!(filesystem_name(0x6969), Some("NFS"));
        assert_eq!(filesystem_name(0xFF53_4D42u32 as i64), Some("CIFS"));
        assert_eq!(filesystem_name(0xEF53), None, "ext4 is local");
        assert_eq!(filesystem_name(0x0102_1994), None, "tmpfs is local");
        assert_eq!(network_filesystem(Path::new("/")), None);
    }

    use notify::event::{CreateKind, DataChange, MetadataKind};

    fn settler(inbox: &Path) -> (Settler<()>, mpsc::UnboundedReceiver<RegistrarMsg<()>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let board = Arc::new(StatusBoard::default());
        // A zero settle period: every group is due at once, so the state machine is
        // driven by `check_due` calls alone.
        let s = Settler::new(inbox.to_path_buf(), Duration::ZERO, false, board, tx);
        (s, rx)
    }

    fn ev(s: &mut Settler<()>, kind: EventKind, p: &Path) {
        s.on_fs(Ok(notify::Event::new(kind).add_path(p.to_path_buf())));
    }

    fn handed_over(rx: &mut mpsc::UnboundedReceiver<RegistrarMsg<()>>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            if let RegistrarMsg::Settled(s) = m {
                out.push(s.name);
            }
        }
        out
    }

    fn state_of(s: &Settler<()>, name: &str) -> Option<(String, String)> {
        s.waiting()
            .into_iter()
            .find(|w| w.name == name)
            .map(|w| (w.state, w.reason.unwrap_or_default()))
    }

    const DATA: EventKind = EventKind::Modify(ModifyKind::Data(DataChange::Any));
    const CLOSED: EventKind = EventKind::Access(AccessKind::Close(AccessMode::Write));

    /// tar's pattern: the folder is created, files are written (some before the folder's
    /// watch exists, so without events), then data writes are reported on the folder's
    /// own path as tar sets its times. The folder path never holds a write mark.
    #[test]
    fn data_events_on_a_folder_path_are_no_open_write() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("bert-tiny");
        std::fs::create_dir(&dir).unwrap();
        for f in ["model.safetensors", "config.json", "vocab.txt"] {
            std::fs::write(dir.join(f), f).unwrap();
        }
        let (mut s, mut rx) = settler(tmp.path());
        ev(&mut s, EventKind::Create(CreateKind::Folder), &dir);
        ev(&mut s, DATA, &dir.join("model.safetensors"));
        ev(&mut s, CLOSED, &dir.join("model.safetensors"));
        ev(&mut s, DATA, &dir);
        ev(&mut s, DATA, &dir);
        ev(
            &mut s,
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
            &dir,
        );
        assert_ne!(state_of(&s, "bert-tiny").unwrap().0, "writing");
        s.check_due();
        assert_eq!(handed_over(&mut rx), vec!["bert-tiny".to_string()]);
        assert_eq!(state_of(&s, "bert-tiny").unwrap().0, "registering");
        s.on_done("bert-tiny".into(), Outcome::Done);
        assert!(s.waiting().is_empty(), "forgotten once registered");
    }

    /// A data write whose close-after-write was lost (dropped events): once the file has
    /// been quiet for a period, the kernel says nobody has it open, and the mark goes.
    #[test]
    fn a_write_mark_whose_close_was_lost_is_cleared_from_the_file_system() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("lost.pt");
        std::fs::write(&f, b"all of it").unwrap();
        let (mut s, mut rx) = settler(tmp.path());
        ev(&mut s, DATA, &f);
        assert_eq!(state_of(&s, "lost").unwrap().0, "writing");
        s.check_due();
        assert_eq!(handed_over(&mut rx), vec!["lost".to_string()]);
    }

    /// A writer that still has the file open keeps it "writing", with the path and how
    /// long ago it was last written as the reason; when it closes (no event needed), the
    /// next look hands it over.
    #[test]
    fn an_open_writer_holds_the_entry_and_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("slow.pt");
        let mut f = std::fs::File::create(&path).unwrap();
        std::io::Write::write_all(&mut f, b"half").unwrap();
        let (mut s, mut rx) = settler(tmp.path());
        ev(&mut s, DATA, &path);
        s.check_due();
        if open_for_writing(&path).is_none() {
            eprintln!("no leases here; the time bound applies instead");
            return;
        }
        // A lease broken by a writer's open sends SIGIO: it must not end the daemon.
        // SAFETY: raising a signal whose disposition the probe set to SIG_IGN.
        unsafe { libc::raise(libc::SIGIO) };
        assert!(handed_over(&mut rx).is_empty(), "held while open");
        let (state, reason) = state_of(&s, "slow").unwrap();
        assert_eq!(state, "writing");
        assert!(reason.contains("slow.pt is open for writing"), "{reason}");
        drop(f);
        s.check_due();
        assert_eq!(handed_over(&mut rx), vec!["slow".to_string()]);
    }

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

    /// Blocked and retrying groups say why, and a rescan looks at them again: no state
    /// waits for an event that may never come.
    #[test]
    fn blocked_and_retrying_say_why_and_rescan_looks_again() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("a.pt"), b"a").unwrap();
        std::fs::write(tmp.path().join("b.pt"), b"b").unwrap();
        let (mut s, mut rx) = settler(tmp.path());
        s.rescan(false);
        s.check_due();
        let mut got = handed_over(&mut rx);
        got.sort();
        assert_eq!(got, vec!["a".to_string(), "b".to_string()]);
        s.on_done("a".into(), Outcome::Blocked("a.metrics.yaml: bad".into()));
        s.on_done("b".into(), Outcome::Failed("disk full".into()));
        assert_eq!(
            state_of(&s, "a").unwrap(),
            ("blocked".into(), "a.metrics.yaml: bad".into())
        );
        assert_eq!(
            state_of(&s, "b").unwrap(),
            ("retrying".into(), "attempt 1 failed: disk full".into())
        );
        s.rescan(false);
        assert_eq!(state_of(&s, "a").unwrap().0, "settling");
        s.check_due();
        assert!(handed_over(&mut rx).contains(&"a".to_string()));
    }

    /// A folder holding a temporary waits, saying so; once the temporary is gone it is
    /// handed over without any event.
    #[test]
    fn an_incomplete_folder_says_why_and_is_looked_at_again() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("w.bin"), b"w").unwrap();
        std::fs::write(dir.join("x.bin.part"), b"x").unwrap();
        let (mut s, mut rx) = settler(tmp.path());
        ev(&mut s, EventKind::Create(CreateKind::Folder), &dir);
        s.check_due();
        assert!(handed_over(&mut rx).is_empty());
        let (state, reason) = state_of(&s, "m").unwrap();
        assert_eq!(state, "settling");
        assert!(reason.starts_with("incomplete"), "{reason}");
        std::fs::remove_file(dir.join("x.bin.part")).unwrap();
        s.check_due();
        s.check_due();
        assert_eq!(handed_over(&mut rx), vec!["m".to_string()]);
    }
}
