//! Keeping the view in step: after each commit, and a catch-up of every model at start.
//!
//! After a commit only what changed between the previous catalog's [`Plan`] and the new
//! one is written, at once, before the commit is answered: an `alias set` is seen by the
//! next offline load. A model whose folder cannot be trusted to match its last plan (at
//! start, after a reload that changes `best` or turns the view on, after a failed
//! update) is "unsure": its folder is read back and compared instead, which also repairs
//! what someone changed by hand. Checking every model at start takes a while on a large
//! registry (a fresh view of 20,000 versions took 47 s here, a check of it 3.5 s), so it
//! runs on a thread of its own, a few models per turn of the lock, and never holds up
//! registrations: a commit that touches an unsure model checks that model itself. The
//! catch-up checks against the catalog of the last commit the view followed, never an
//! older published one, so a change committed meanwhile is not undone.
//!
//! Removed versions are the exception to "before the commit is answered": taking a
//! version out of the view costs ~5 ms (its snapshot folder, its blobs, its ref), so a
//! `gc` of 2,000 versions held every other change for seconds. A commit that removes
//! versions leaves their models' folders as they were and hands the removal to the
//! view's worker thread ([`View::remove_then_trash`]), which brings those folders up to
//! date and only then moves the removed versions' store folders into the store's trash
//! and empties it: the view never points at a file already gone (a shared blob links to
//! the lowest version holding it, often a removed one). A commit touching such a model
//! meanwhile leaves it to the worker too. A crash in between leaves the removed
//! versions' folders in place, which start-up finishes, and every model unsure, which
//! the catch-up checks.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::folder::{There, apply, apply_step, make_dir, read_back, remove_any};
use super::{HF_DIR, Plan, repo_folder, step};
use crate::config::{BestPolicy, Config};
use crate::registry::{Catalog, Model};
use crate::status::StatusBoard;

/// The view of one registry root; see the module docs. Written only under its lock, by
/// the registrar's commits ([`View::after_commit`]) and the catch-up thread.
pub struct View {
    /// `<root>/hf`.
    dir: PathBuf,
    /// The store as the catalog's paths write it (`models`).
    store_shown: String,
    board: Arc<StatusBoard>,
    state: Mutex<State>,
    /// The worker thread's queue of removals (started with the first one).
    removals: Mutex<Option<std::sync::mpsc::Sender<Removal>>>,
}

/// One commit's removed versions, for the worker: their models' folders are brought up
/// to date, then the versions' store folders are moved into the trash and deleted.
struct Removal {
    /// (model, number) of each removed version.
    versions: Vec<(String, u32)>,
    /// The store (`models`).
    store: PathBuf,
    /// Set at shutdown: what is left is finished by the next start.
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View").field("dir", &self.dir).finish()
    }
}

/// What the lock guards: the view on disk, and what is known of it.
struct State {
    /// Models whose folder may differ from their last plan.
    unsure: BTreeSet<String>,
    /// `best` as the plans are made now.
    best: BestPolicy,
    /// A catch-up thread is running.
    catching_up: bool,
    /// Counts the times every model was made unsure: a catch-up under way starts over.
    generation: u64,
    /// The catalog of the last commit the view followed: what the catch-up checks
    /// against (not the published one, which may still be the one before it).
    latest: Arc<Catalog>,
    /// The plan each recently changed model's folder matches: its next commit is worked
    /// out from it step by step ([`step::advance`]) instead of from two whole plans.
    /// At most [`PLANS_KEPT`] models (a plan holds every file of every version).
    plans: HashMap<String, Plan>,
    /// Models whose removed versions are left to the worker, each with what its folder
    /// shows (the model before the removal; `None`: no folder) and that model's plan
    /// when it was kept.
    behind: HashMap<String, (Option<Arc<Model>>, Option<Plan>)>,
    /// Models the worker is updating now, outside the lock: commits leave them alone.
    working: BTreeSet<String>,
    /// Models of `working` that a commit changed meanwhile: updated again, read back.
    redo: BTreeSet<String>,
    /// Whether the view is kept (`hf_cache`), as of the last commit.
    enabled: bool,
}

/// How many models' last plans are kept.
const PLANS_KEPT: usize = 64;

impl View {
    /// The view of the root of `config`; problems go to `board`.
    pub fn new(config: &Config, board: Arc<StatusBoard>) -> View {
        View {
            dir: config.root.join(HF_DIR),
            store_shown: config.relative(&config.store).into_owned(),
            board,
            state: Mutex::new(State {
                unsure: BTreeSet::new(),
                best: config.best.clone(),
                catching_up: false,
                generation: 0,
                latest: Arc::new(Catalog::default()),
                plans: HashMap::new(),
                behind: HashMap::new(),
                working: BTreeSet::new(),
                redo: BTreeSet::new(),
                enabled: config.hf_cache,
            }),
            removals: Mutex::new(None),
        }
    }

    /// `<root>/hf`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the view in line after a commit from `before` to `after` that touched the
    /// models in `names`. With `all` (start, a reload), every model becomes unsure and a
    /// catch-up thread checks them. Disabled
    /// (`enabled` false) with `all`: the view is removed. Never fails: a model that
    /// cannot be updated is a problem in `status` (and a WARN) until an update succeeds.
    /// The models of `removed` (versions this commit removed) are left as they are: the
    /// caller hands the removal to [`View::remove_then_trash`].
    #[allow(clippy::too_many_arguments)]
    pub fn after_commit(
        self: &Arc<Self>,
        enabled: bool,
        before: &Catalog,
        after: &Arc<Catalog>,
        names: &[String],
        all: bool,
        best: &BestPolicy,
        removed: &[(String, u32)],
    ) {
        let shown = self.dir.display().to_string();
        let mut state = self.lock();
        state.best = best.clone();
        state.latest = after.clone();
        state.enabled = enabled;
        if !enabled || all {
            state.plans.clear();
            state.behind.clear();
            let working = state.working.clone();
            state.redo.extend(working);
        }
        if !enabled {
            if all {
                state.unsure.clear();
                self.board.clear_problems_under(&shown);
                if let Err(e) = super::remove_view(&self.dir) {
                    self.board
                        .set_problem(&shown, &format!("hf_cache is off, but {e}"));
                }
            }
            return;
        }
        // Deleted while running: made again whole, as at start.
        let all = all || std::fs::symlink_metadata(&self.dir).is_err();
        if all {
            state.unsure = after.models.keys().cloned().collect();
            state.generation += 1;
            self.board.set_hf_cache_checking(Some(state.unsure.len()));
            if !state.catching_up {
                state.catching_up = true;
                let view = self.clone();
                let spawned = std::thread::Builder::new()
                    .name("hfcache".into())
                    .spawn(move || view.catch_up());
                if let Err(e) = spawned {
                    state.catching_up = false;
                    self.board.set_hf_cache_checking(None);
                    self.board.error(format!(
                        "cannot start the Hugging Face cache view's thread: {e}; models are checked as they change"
                    ));
                }
            }
            return;
        }
        let removing: BTreeSet<&str> = removed.iter().map(|(n, _)| n.as_str()).collect();
        let all_names = names;
        let mut names: Vec<&String> = Vec::with_capacity(all_names.len());
        for name in all_names {
            if state.working.contains(name) {
                // The worker is at it: it goes over it again, read back.
                state.redo.insert(name.clone());
            } else if removing.contains(name.as_str()) || state.behind.contains_key(name) {
                // Left to the worker (a later change too: the worker brings the folder
                // to the last commit), which starts from what the folder shows now.
                if !state.unsure.contains(name) && !state.behind.contains_key(name) {
                    let prev = state.plans.remove(name);
                    let old = before.models.get(name).cloned();
                    state.behind.insert(name.clone(), (old, prev));
                }
                state.plans.remove(name);
            } else {
                names.push(name);
            }
        }
        if !self.make_root() {
            state.unsure.extend(names.iter().map(|n| (*n).clone()));
            return;
        }
        for name in names {
            let full = state.unsure.remove(name);
            let old = (!full).then(|| before.models.get(name).map(|m| &**m));
            let prev = state.plans.remove(name).filter(|_| !full);
            match self.sync_model(name, after, old, prev, &state.best) {
                Some(plan) => {
                    if state.plans.len() >= PLANS_KEPT {
                        state.plans.clear();
                    }
                    state.plans.insert(name.clone(), plan);
                }
                None => {
                    state.unsure.insert(name.clone());
                }
            }
        }
    }

    /// Hands the removal of `versions` (what the last commit removed; see the module
    /// docs) to the worker thread, started with the first: their models' folders are
    /// brought up to date, then the versions' store folders moved into `store`'s trash
    /// and deleted. With the view off (or the thread not started), the versions are
    /// moved into the trash and deleted at once. `stop` (shutdown) leaves the rest to
    /// the next start.
    pub fn remove_then_trash(
        self: &Arc<Self>,
        versions: Vec<(String, u32)>,
        store: PathBuf,
        stop: Arc<AtomicBool>,
    ) {
        if versions.is_empty() {
            return;
        }
        let job = Removal {
            versions,
            store,
            stop,
        };
        let mut queue = self.removals.lock().unwrap_or_else(|p| p.into_inner());
        if queue.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<Removal>();
            let view = self.clone();
            let spawned = std::thread::Builder::new()
                .name("hfcache-removals".into())
                .spawn(move || {
                    for job in rx {
                        view.remove(job);
                    }
                });
            match spawned {
                Ok(_) => *queue = Some(tx),
                Err(e) => tracing::error!(
                    "cannot start the Hugging Face cache view's removal thread: {e}; removals are done on the registrar's path"
                ),
            }
        }
        let job = match queue.as_ref() {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(e) => e.0,
            },
            None => job,
        };
        drop(queue);
        self.remove(job);
    }

    /// The worker's part of a removal: the models' folders, then the trash.
    fn remove(&self, job: Removal) {
        hold_for_tests(&job.stop);
        let t0 = std::time::Instant::now();
        let models: BTreeSet<&str> = job.versions.iter().map(|(n, _)| n.as_str()).collect();
        for name in &models {
            if job.stop.load(Ordering::Relaxed) {
                // Left in place: start-up finishes the removal, and checks the view.
                return;
            }
            self.bring_up_to_date(name);
        }
        let (moved, errors) = crate::store::trash::move_to_trash(&job.store, &job.versions);
        for e in errors {
            tracing::error!("{e}");
        }
        tracing::debug!(took = ?t0.elapsed(), models = models.len(), "removed versions out of the Hugging Face cache view");
        let (done, errors) = crate::store::trash::empty(&job.store, &moved, &job.stop);
        for e in &errors {
            tracing::error!("emptying the store's trash: {e}");
        }
        tracing::info!(
            took = ?t0.elapsed(),
            "deleted {done} removed version folder(s) from the store's trash ({} left)",
            moved.len() - done
        );
    }

    /// Brings `name`'s folder up to the last commit followed, outside the lock (a large
    /// removal takes seconds; commits go on meanwhile and leave the model to this).
    /// Nothing to do when a commit or the catch-up did it already.
    fn bring_up_to_date(&self, name: &str) {
        loop {
            let (basis, catalog, best) = {
                let mut state = self.lock();
                if !state.enabled {
                    return;
                }
                let basis = match state.behind.remove(name) {
                    _ if state.unsure.contains(name) => None,
                    Some(b) => Some(b),
                    None => return,
                };
                state.working.insert(name.to_string());
                (basis, state.latest.clone(), state.best.clone())
            };
            let (old, prev) = match basis {
                Some((m, p)) => (Some(m), p),
                None => (None, None),
            };
            let old = old.as_ref().map(|m| m.as_deref());
            let plan = match self.make_root() {
                true => self.sync_model(name, &catalog, old, prev, &best),
                false => None,
            };
            let mut state = self.lock();
            state.working.remove(name);
            if state.redo.remove(name) {
                // Changed meanwhile: over again, from what the folder shows.
                state.unsure.insert(name.to_string());
                continue;
            }
            match plan {
                Some(plan) => {
                    state.unsure.remove(name);
                    if state.plans.len() >= PLANS_KEPT {
                        state.plans.clear();
                    }
                    state.plans.insert(name.to_string(), plan);
                }
                None => {
                    state.unsure.insert(name.to_string());
                }
            }
            return;
        }
    }

    /// The catch-up thread: removes folders of models no longer in the catalog, then
    /// checks each unsure model against the catalog of the last commit followed.
    fn catch_up(&self) {
        let t0 = std::time::Instant::now();
        let mut checked = 0usize;
        // What this pass tried (a model that failed stays unsure, and is retried at its
        // next change or the next start, not in a loop here), and for which generation.
        let mut tried = BTreeSet::new();
        let mut generation = None;
        loop {
            let mut state = self.lock();
            let catalog = state.latest.clone();
            if generation != Some(state.generation) {
                generation = Some(state.generation);
                tried.clear();
                if self.make_root() {
                    self.remove_stale_models(&catalog);
                }
            }
            // A few models per turn of the lock: a commit waits for at most these.
            let batch: Vec<String> = state
                .unsure
                .iter()
                .filter(|n| !tried.contains(*n) && !state.working.contains(*n))
                .take(8)
                .cloned()
                .collect();
            if batch.is_empty() {
                state.catching_up = false;
                self.board.set_hf_cache_checking(None);
                break;
            }
            self.board.set_hf_cache_checking(Some(state.unsure.len()));
            for name in batch {
                tried.insert(name.clone());
                if self.make_root()
                    && self
                        .sync_model(&name, &catalog, None, None, &state.best)
                        .is_some()
                {
                    state.unsure.remove(&name);
                    checked += 1;
                }
            }
        }
        tracing::info!(
            models = checked,
            secs = format!("{:.1}", t0.elapsed().as_secs_f64()),
            "Hugging Face cache view {} checked",
            self.dir.display()
        );
    }

    /// Brings the folder of `name` to its plan in `catalog`: step by step from `prev`
    /// (the plan its folder matched) when given, else from `old`'s plan when its folder
    /// is known to match it (`Some`), else read back. Returns the plan the folder now
    /// matches, `None` when something failed.
    fn sync_model(
        &self,
        name: &str,
        catalog: &Catalog,
        old: Option<Option<&crate::registry::Model>>,
        prev: Option<Plan>,
        best: &BestPolicy,
    ) -> Option<Plan> {
        let model = catalog.models.get(name).map(|m| &**m);
        let dir = self.dir.join(repo_folder(name));
        let key = dir.display().to_string();
        // A folder deleted by hand is made whole again, not only what changed.
        let old = old.filter(|_| dir.is_dir());
        if let (Some(_), Some(prev)) = (old, prev)
            && let Some((want, step)) = step::advance(prev, &self.store_shown, name, model, best)
        {
            let errors = apply_step(&dir, &want, &step);
            return self.report(name, &key, errors).then_some(want);
        }
        let (want, skipped) = Plan::of(&self.store_shown, name, model, best);
        let mut errors = match old {
            Some(old) => {
                let there = There::of(&Plan::of(&self.store_shown, name, old, best).0);
                apply(&dir, there, &want, true)
            }
            None => apply(&dir, read_back(&dir, &want), &want, false),
        };
        if !skipped.is_empty() {
            let listed: Vec<String> = skipped.iter().map(|n| format!("v{n}")).collect();
            errors.push(format!(
                "{} not in the view: their stored paths are not under {}/{name}/v<N>/",
                listed.join(", "),
                self.store_shown
            ));
        }
        self.report(name, &key, errors).then_some(want)
    }

    /// Shows the first of `errors` met updating `name`'s folder (`key`) as a problem in
    /// `status`, or clears it. Returns whether there were none.
    fn report(&self, name: &str, key: &str, errors: Vec<String>) -> bool {
        match errors.first() {
            None => {
                self.board.clear_problem(key);
                true
            }
            Some(first) => {
                let more = match errors.len() {
                    1 => String::new(),
                    n => format!(" (and {} more)", n - 1),
                };
                self.board.set_problem(
                    key,
                    &format!(
                        "the Hugging Face cache view of {name} is not up to date: {first}{more}; retried at its next change and at start"
                    ),
                );
                false
            }
        }
    }

    /// Creates `<root>/hf` when missing; refuses one that is a symbolic link. A problem
    /// in `status` when it cannot be used.
    fn make_root(&self) -> bool {
        let shown = self.dir.display().to_string();
        let r = match std::fs::symlink_metadata(&self.dir) {
            Ok(m) if m.file_type().is_symlink() => Err(format!(
                "{shown} is a symbolic link; the view is never written through a link. Remove it: the daemon makes the folder again"
            )),
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(format!("{shown} is not a folder; remove it")),
            Err(_) => make_dir(&self.dir),
        };
        match r {
            Ok(()) => {
                self.board.clear_problem(&shown);
                true
            }
            Err(e) => {
                self.board.set_problem(
                    &shown,
                    &format!("the Hugging Face cache view is not updated: {e}"),
                );
                false
            }
        }
    }

    /// Removes the folders of models the catalog does not show in the view.
    fn remove_stale_models(&self, catalog: &Catalog) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let file_name = e.file_name();
            let Some(name) = file_name.to_str().and_then(|f| f.strip_prefix("models--")) else {
                continue;
            };
            if !catalog.models.contains_key(name) || !super::repo_name_ok(name) {
                let path = e.path();
                if let Err(err) = remove_any(&path) {
                    self.board.set_problem(
                        &path.display().to_string(),
                        &format!(
                            "a stale folder of the Hugging Face cache view is not removed: {err}"
                        ),
                    );
                }
            }
        }
    }
}

/// Debug builds only (what the end-to-end tests run): while the file named by
/// `MODELREG_DEBUG_HOLD_HF_REMOVALS` exists, the worker does not start on a removal, so
/// that a test can see changes answered while the view still shows removed versions,
/// without racing the clock.
fn hold_for_tests(stop: &AtomicBool) {
    #[cfg(debug_assertions)]
    if let Some(gate) = std::env::var_os("MODELREG_DEBUG_HOLD_HF_REMOVALS") {
        while Path::new(&gate).exists() && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    let _ = stop;
}

/// Removes the view under `dir` (`<root>/hf`): every `models--*` folder, then `dir`
/// itself when nothing else is left in it. Used when `hf_cache` is off, so that a view
/// no longer kept in step cannot hand out a version an alias has left.
pub fn remove_view(dir: &Path) -> Result<(), String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{} cannot be listed: {e}", dir.display())),
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with("models--") {
            remove_any(&e.path())?;
        }
    }
    // Not empty: something the daemon did not make; it stays.
    let _ = std::fs::remove_dir(dir);
    Ok(())
}
