//! Making a staged version durable in one round of parallel fsyncs, before the catalog names it.
//!
//! Staging writes without waiting for the disk: the copies, then (here) the manifest. Only
//! [`seal`] waits, once, for everything the version needs after a power cut: the data and
//! inode of each copy and of the manifest, and the entries of every folder of the staging
//! tree and of `.staging` itself. None of these has to reach the disk before another —
//! nothing names the staging folder until the catalog's journal record does, and that is
//! written only after `seal` returns; a crash before then leaves a staging folder the
//! catalog does not name, which start-up deletes. So the fsyncs are issued together, on
//! a few threads, and the filesystem can complete them in one journal commit instead of
//! one after another (six in a row per version before: ~6 commits, each 0.3–30 ms on a
//! busy disk). The threads are started once and kept ([`fsync_all`]): started per seal,
//! their start (and the wait for each to be scheduled and to exit, on a busy machine)
//! cost more than the fsyncs, and a `register()` loop ran at half the rate.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, mpsc};

use super::manifest::{Manifest, create_manifest};
use super::staging::Staged;
use crate::error::{Error, Result};

/// Writes `manifest` into the staged version and makes the version durable: every copy
/// staging wrote, the manifest, and every folder of the staging tree and `.staging`,
/// fsynced together. After it returns, a journal record may name the version.
pub fn seal(staged: &Staged, manifest: &Manifest) -> Result<()> {
    let manifest = create_manifest(&staged.dir, manifest)?;
    let mut paths: Vec<PathBuf> = staged.unsynced.clone();
    paths.push(manifest);
    // Every folder of the tree (its entries: copies, links, the manifest, sub-folders)
    // and `.staging` (the staging folder's own entry).
    let mut dirs: Vec<PathBuf> = staged
        .files
        .iter()
        .flat_map(|f| Path::new(&f.rel).ancestors().skip(1))
        .filter(|a| !a.as_os_str().is_empty())
        .map(|a| staged.dir.join(a))
        .collect();
    dirs.sort();
    dirs.dedup();
    paths.extend(dirs);
    paths.push(staged.dir.clone());
    if let Some(staging) = staged.dir.parent() {
        paths.push(staging.to_path_buf());
    }
    fsync_all(&paths)
}

/// At most this many fsyncs wait at once (the caller and the pool's threads, per seal).
const MAX_PARALLEL: usize = 8;

/// One round of fsyncs, shared by the caller and the pool's threads helping it.
struct Round {
    paths: Vec<PathBuf>,
    /// The next path not yet taken.
    next: AtomicUsize,
    /// How many paths are done (fsynced or failed), and the first error.
    done: Mutex<(usize, Option<Error>)>,
    all_done: Condvar,
}

/// Work the pool's threads take: a round of fsyncs, or one job run beside the caller.
trait Work: Send + Sync {
    /// Does what is left of it (nothing when the caller or another thread took it all).
    fn work(&self);
}

impl Work for Round {
    /// Takes paths and fsyncs them until none is left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(p) = self.paths.get(i) else { return };
            // Any descriptor of the inode will do: fsync is of the file, not of the handle.
            let r = std::fs::File::open(p).and_then(|f| f.sync_all());
            let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = r {
                done.1.get_or_insert(Error::io("fsync", p, e));
            }
            done.0 += 1;
            if done.0 == self.paths.len() {
                self.all_done.notify_all();
            }
        }
    }
}

/// The threads that help with rounds: started once, kept for the daemon's life (a
/// register loop seals hundreds of versions a second, and starting threads for each
/// cost more than the fsyncs' own CPU). Idle, they wait on the channel.
fn pool() -> &'static Mutex<mpsc::Sender<Arc<dyn Work>>> {
    static POOL: OnceLock<Mutex<mpsc::Sender<Arc<dyn Work>>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Arc<dyn Work>>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 1..MAX_PARALLEL {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("fsync-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next round.
                        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match next {
                            Ok(round) => round.work(),
                            Err(_) => return,
                        }
                    }
                });
            // Without helpers the caller does every fsync itself: slower, never wrong.
            if let Err(e) = spawned {
                tracing::warn!("starting an fsync thread: {e}");
            }
        }
        Mutex::new(tx)
    })
}

/// fsyncs every path of `paths` (files or folders), several at a time (the caller and up
/// to `MAX_PARALLEL - 1` of the pool's threads); returns once every one is done, with the
/// first error, if any.
pub(super) fn fsync_all(paths: &[PathBuf]) -> Result<()> {
    let round = Arc::new(Round {
        paths: paths.to_vec(),
        next: AtomicUsize::new(0),
        done: Mutex::new((0, None)),
        all_done: Condvar::new(),
    });
    let helpers = paths.len().min(MAX_PARALLEL).saturating_sub(1);
    if helpers > 0 {
        let tx = pool().lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..helpers {
            // A helper that comes late finds nothing left and goes back to waiting.
            let _ = tx.send(round.clone() as Arc<dyn Work>);
        }
    }
    round.work();
    // Paths other threads took may still be in their fsync: wait for every one.
    let mut done = round.done.lock().unwrap_or_else(|p| p.into_inner());
    while done.0 < paths.len() {
        done = round.all_done.wait(done).unwrap_or_else(|p| p.into_inner());
    }
    match done.1.take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A job handed to the pool by [`beside`]: run by whichever comes first, a pool thread or
/// the caller's [`Beside::wait`].
struct Job<T> {
    /// The job, until someone takes it.
    run: Mutex<Option<Box<dyn FnOnce() -> T + Send>>>,
    /// Its result (or its panic, passed on to the caller), once run.
    result: Mutex<Option<std::thread::Result<T>>>,
    ran: Condvar,
}

impl<T: Send> Work for Job<T> {
    fn work(&self) {
        let Some(run) = self.run.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        // A panic must not end the pool's thread with the caller waiting for a result.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run));
        *self.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        self.ran.notify_all();
    }
}

/// A job running beside the caller (see [`beside`]).
pub struct Beside<T> {
    job: Arc<Job<T>>,
}

impl<T: Send> Beside<T> {
    /// The job's result: run here if no pool thread has taken it yet (so the caller never
    /// waits for a busy machine to schedule a helper that has not started), else waited
    /// for.
    pub fn wait(self) -> T {
        self.job.work();
        let mut result = self.job.result.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match result.take() {
                Some(Ok(r)) => return r,
                Some(Err(panic)) => std::panic::resume_unwind(panic),
                None => {}
            }
            result = self.job.ran.wait(result).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Starts `job` (an fsync) on one of the pool's kept threads, to run while the caller
/// does something else (another fsync); [`Beside::wait`] returns its result. For a commit
/// that waits for two fsyncs at once: a thread started for it at each commit cost more
/// than the fsync on a busy machine (see the module docs).
pub fn beside<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> Beside<T> {
    let job = Arc::new(Job {
        run: Mutex::new(Some(Box::new(job) as Box<dyn FnOnce() -> T + Send>)),
        result: Mutex::new(None),
        ran: Condvar::new(),
    });
    // Without a pool thread the caller's `wait` runs it.
    let _ = pool()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job.clone() as Arc<dyn Work>);
    Beside { job }
}
