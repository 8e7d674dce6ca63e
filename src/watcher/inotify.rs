//! The inotify backend: one watch per inbox folder, new folders added as they appear.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::{RecursiveMode, Watcher};

use super::Forward;

/// Whether an inotify error is a per-user limit (watches, instances, open files), the
/// only case where raising the sysctls helps.
pub(super) fn is_limit(e: &notify::Error) -> bool {
    match &e.kind {
        notify::ErrorKind::MaxFilesWatch => true,
        notify::ErrorKind::Io(io) => matches!(
            io.raw_os_error(),
            Some(libc::ENOSPC | libc::EMFILE | libc::ENFILE)
        ),
        _ => false,
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
pub(super) fn try_inotify(
    inbox: &Path,
    mut handler: Forward,
) -> notify::Result<Arc<FolderWatches>> {
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
pub(super) struct FolderWatches {
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
