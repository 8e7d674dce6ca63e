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
//! mark expires once the file's stat has not changed for `lease::stale_write_bound`.
//!
//! By file: the backends (`inotify`, `poll`) and the notify callback (here); the
//! [`Settler`] task (`settler`) and its parts: the state machine of one group (`group`,
//! pure), the end of a quiet period (`settle`), rescans (`scan`), the lease probe
//! (`lease`), the hard-link re-check (`linked`) and `status` (`waiting`).

mod group;
mod inotify;
mod lease;
mod linked;
mod poll;
mod scan;
mod settle;
mod settler;
mod waiting;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use notify::event::{EventKind, ModifyKind, RenameMode};
use tokio::sync::{Notify, mpsc};

use crate::config::WatchMode;

pub use settler::Settler;

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
    pub(super) _watcher: Box<dyn std::any::Any + Send>,
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
    let poll = |handler: Forward, why: String| poll::watch(inbox, poll_interval, handler, why);
    if mode == WatchMode::Poll {
        return poll(handler, "watch: poll".into());
    }
    if mode == WatchMode::Auto
        && let Some(fs) = poll::network_filesystem(inbox)
    {
        tracing::warn!(inbox = %inbox.display(), "the inbox is on {fs}, where inotify misses changes made elsewhere; polling instead");
        return poll(handler, format!("the inbox is on {fs}"));
    }
    match inotify::try_inotify(inbox, handler.clone()) {
        Ok(w) => Ok(Watching {
            _watcher: Box::new(w),
            description: "inotify".into(),
            reports_close: true,
        }),
        Err(e) if mode == WatchMode::Auto => {
            let why = if inotify::is_limit(&e) {
                format!(
                    "inotify failed: {e}; raise fs.inotify.max_user_watches / max_user_instances to use it"
                )
            } else {
                format!("inotify failed: {e}")
            };
            tracing::warn!(inbox = %inbox.display(), "{why}; polling instead");
            poll(handler, why)
        }
        Err(e) if inotify::is_limit(&e) => Err(format!(
            "cannot watch {} with inotify: {e} (raise fs.inotify.max_user_watches, or set watch: auto or poll)",
            inbox.display()
        )),
        Err(e) => Err(format!(
            "cannot watch {} with inotify: {e} (or set watch: poll)",
            inbox.display()
        )),
    }
}

/// The notify callback: forwards events into the bounded channel.
#[derive(Clone)]
pub(super) struct Forward {
    tx: mpsc::Sender<FsEvent>,
    overflow: Arc<Overflow>,
    /// With inotify: where folders created in or moved into the inbox are sent, to be
    /// watched (see `inotify::try_inotify`).
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
