//! Team mode's engines as one host uses them: the shared catalog (PostgreSQL) and blob store, its host name, versions fetched on demand.
//!
//! A [`Team`] is opened at start from `catalog:` and `blobs:` (docs/team.md, "Running a
//! team"). The registrar records each new version through it (files uploaded and
//! verified first, then the catalog transaction that allocates the number); the
//! follower ([`follow`]) brings what other hosts record into the local catalog; a `get`
//! of a version whose files are not here yet fetches them ([`Team::fetch_version`]).
//! Connections are made lazily and again after a loss: an engine that is down is an
//! error of the operation that needed it, never a daemon that will not start.

mod claim;
mod events;
mod follow;
mod orphans;

pub use claim::{Claimed, Marker, claim};
pub use events::{TeamEvents, event_of};
pub use follow::follow;
pub use orphans::{Swept, collect_orphans, sweep};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::blobs::{BlobError, BlobOptions, BlobStore};
pub use crate::catalogdb::Recorded;
use crate::catalogdb::{CatalogDb, Options, Removal};
use crate::config::{Config, TeamConfig};
use crate::registry::{Mark, Model, Stamp, Version};
use crate::store;

/// One host's handles on the team's engines (see the module docs).
pub struct Team {
    /// This daemon's name in the shared catalog (`host` of what it records): the
    /// machine's host name and its root, so two daemons on one machine differ.
    pub host: String,
    url: String,
    db: tokio::sync::Mutex<Option<CatalogDb>>,
    server: String,
    blobs: BlobStore,
    /// The `blobs:` setting as given (for the repair command a damaged blob's error shows).
    blobs_setting: String,
    /// Blobs no version names are collected once older than this (`blobs_grace:`).
    pub grace: std::time::Duration,
    /// What the follower and the collector report for `status`.
    state: Mutex<State>,
    /// Versions this host recorded whose copy job has not reached the registrar yet
    /// (model, number): the follower must not take them for another host's.
    pending: Mutex<BTreeSet<(String, u32)>>,
    /// The team's event log as this host shows it (docs/team.md, "Events").
    events: Arc<TeamEvents>,
    /// The blob store's marker was found naming this catalog (or written): checked
    /// before the first upload or sweep, again after a failed check ([`claim`]).
    claimed: tokio::sync::Mutex<bool>,
}

/// What `status` tells of the team beyond problems: how current the follower is, the
/// collector's totals.
#[derive(Debug, Default)]
struct State {
    /// The last change seq the follower applied.
    applied_seq: Option<u64>,
    /// When the follower was last in step with the catalog (caught up, listening).
    in_step_at: Option<Instant>,
    /// Whether it is now (listening, no failure since).
    following: bool,
    /// Since when it has failed to reach the catalog.
    unreachable_since: Option<Instant>,
    /// Orphan blobs (and upload leftovers) collected since start, and their bytes.
    collected: u64,
    collected_bytes: u64,
    /// When the last sweep finished.
    last_sweep: Option<Instant>,
}

/// A team operation's failure, naming the engine (the key `status` shows it under).
#[derive(Debug, Clone)]
pub struct TeamError {
    /// `catalog <server>` or `blobs <store>`: where the problem is.
    pub engine: String,
    /// What failed.
    pub message: String,
}

/// Why the shared catalog did not make a change a client asked for.
#[derive(Debug, Clone)]
pub enum ChangeFailure {
    /// Its rules refused it: another host changed the model since this host looked
    /// (removed the version, set an alias on it). The engine is fine: no `status` problem.
    Refused(TeamError),
    /// The engine failed (unreachable, an error): a `status` problem under its name.
    Failed(TeamError),
    /// The engine failed while committing (a timeout, the connection lost in COMMIT):
    /// the catalog may have made the change. A `status` problem too; the caller re-reads
    /// the model and tells the client the outcome is unknown.
    Unknown(TeamError),
}

impl ChangeFailure {
    /// The error, whichever it is.
    pub fn into_error(self) -> TeamError {
        match self {
            ChangeFailure::Refused(e) | ChangeFailure::Failed(e) | ChangeFailure::Unknown(e) => e,
        }
    }
}

impl std::fmt::Display for TeamError {
    /// `team <engine>: <message>`; just the message when it names the engine already
    /// (the catalog's and the blob store's own errors do: "cannot connect to the catalog
    /// database socket ...", "blob store folder ...: ..."), so it is named once.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let named =
            (self.engine.split_once(' ')).is_some_and(|(_, what)| self.message.contains(what));
        if named {
            write!(f, "team: {}", self.message)
        } else {
            write!(f, "team {}: {}", self.engine, self.message)
        }
    }
}

/// Refuses, before the daemon binds its socket, team settings that cannot work on this
/// host: a `catalog:` PostgreSQL's client cannot use (`sslmode=require`: TLS is not built
/// yet), a `blobs:` folder that is not there or not writable. Each error names the
/// settings file, the key and the reason, as the config layer's own checks do (those
/// contact nothing and look at no folder; client commands load the same settings).
pub fn check_settings(config: &Config, team: &TeamConfig) -> crate::error::Result<()> {
    let bad = |key: &str, reason: String| crate::error::Error::Config {
        path: config.source.to_string(),
        key: key.to_string(),
        reason,
    };
    crate::catalogdb::server_of(&team.catalog, Options::default())
        .map_err(|e| bad("catalog", e.to_string()))?;
    BlobStore::open(&team.blobs, &BlobOptions::default())
        .and_then(|b| b.check_writable())
        .map_err(|e| bad("blobs", e.to_string()))?;
    Ok(())
}

impl Team {
    /// Opens the blob store (nothing contacted yet) and names the catalog's server; the
    /// catalog is connected at its first use.
    pub fn open(config: &Config, team: &TeamConfig) -> Result<Team, String> {
        let blobs = BlobStore::open(&team.blobs, &BlobOptions::default())
            .map_err(|e| format!("blobs: {e}"))?;
        let server = crate::catalogdb::server_of(&team.catalog, Options::default())
            .map_err(|e| format!("catalog: {e}"))?;
        let events = Arc::new(TeamEvents::new(&team.catalog, format!("catalog {server}")));
        Ok(Team {
            events,
            host: host_name(&config.root),
            url: team.catalog.clone(),
            db: tokio::sync::Mutex::new(None),
            server,
            blobs,
            blobs_setting: team.blobs.clone(),
            grace: team.grace,
            state: Mutex::new(State::default()),
            pending: Mutex::new(BTreeSet::new()),
            claimed: tokio::sync::Mutex::new(false),
        })
    }

    /// The team's event log as this host shows it.
    pub fn events(&self) -> &Arc<TeamEvents> {
        &self.events
    }

    /// The catalog as messages and `status` name it.
    pub fn catalog_engine(&self) -> String {
        format!("catalog {}", self.server)
    }

    /// The blob store as messages and `status` name it.
    pub fn blobs_engine(&self) -> String {
        format!("blobs {}", self.blobs.describe())
    }

    /// The connection string of the catalog (for the follower's own connections).
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    fn catalog_error(&self, e: impl std::fmt::Display) -> TeamError {
        TeamError {
            engine: self.catalog_engine(),
            message: e.to_string(),
        }
    }

    /// Runs `op` on the registrar's connection, connecting first when there is none.
    async fn with_db<T>(
        &self,
        op: impl AsyncFnOnce(&mut CatalogDb) -> Result<T, crate::catalogdb::CatalogDbError>,
    ) -> Result<T, TeamError> {
        self.change_db(op).await.map_err(ChangeFailure::into_error)
    }

    /// [`Self::with_db`], telling the catalog's refusals (its rules: another host changed
    /// the model first) from the engine's failures.
    async fn change_db<T>(
        &self,
        op: impl AsyncFnOnce(&mut CatalogDb) -> Result<T, crate::catalogdb::CatalogDbError>,
    ) -> Result<T, ChangeFailure> {
        let mut db = self.db.lock().await;
        if db.is_none() {
            *db = Some(
                CatalogDb::connect(&self.url, Options::default())
                    .await
                    .map_err(|e| ChangeFailure::Failed(self.catalog_error(e)))?,
            );
        }
        op(db.as_mut().expect("connected above"))
            .await
            .map_err(|e| match e {
                crate::catalogdb::CatalogDbError::Refused { .. } => {
                    ChangeFailure::Refused(self.catalog_error(e))
                }
                e if e.is_outcome_unknown() => ChangeFailure::Unknown(self.catalog_error(e)),
                e => ChangeFailure::Failed(self.catalog_error(e)),
            })
    }

    /// Checks that the blob store belongs to this host's catalog, claiming it when it
    /// names none ([`claim`]); once it did, not again. Before any upload or sweep: a
    /// store of another catalog is neither written nor collected.
    pub async fn check_claim(&self) -> Result<(), TeamError> {
        let mut claimed = self.claimed.lock().await;
        if *claimed {
            return Ok(());
        }
        let id = self
            .with_db(async |db: &mut CatalogDb| db.identity().await)
            .await?;
        claim(&self.blobs, &id, &self.server, &self.host)
            .await
            .map_err(|message| TeamError {
                engine: self.blobs_engine(),
                message,
            })?;
        *claimed = true;
        Ok(())
    }

    /// Uploads each of `files` (path, sha256, size) to the blob store, verified; a blob
    /// already there is not sent again. Only after this may a catalog record name them.
    /// Refused when the store belongs to another catalog ([`Self::check_claim`]).
    pub async fn upload(&self, files: &[(PathBuf, String, u64)]) -> Result<(), TeamError> {
        self.check_claim().await?;
        for (path, sha256, size) in files {
            self.blobs
                .put_file(path, sha256, *size)
                .await
                .map_err(|e| TeamError {
                    engine: self.blobs_engine(),
                    message: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// Records a new version of `model` in the shared catalog, which allocates its
    /// number; `build(n)` makes its record. The number is noted as pending (this host's,
    /// on its way to the registrar) before the transaction commits, so the follower
    /// never mistakes it for another host's; [`Team::applied`] ends that. When the
    /// model's newest live version already holds the same files, nothing is recorded and
    /// that version is the answer ([`Recorded::Existing`]; nothing is pending then). Its
    /// `registered` event is logged with it, from the record `build` made.
    pub async fn record_version(
        &self,
        model: &str,
        build: impl FnOnce(u32) -> Version,
    ) -> Result<Recorded, TeamError> {
        let noted: Mutex<Option<u32>> = Mutex::new(None);
        let host = self.host.clone();
        let r = self
            .with_db(async |db: &mut CatalogDb| {
                let build = |n| {
                    self.pending_set().insert((model.to_string(), n));
                    *noted.lock().unwrap_or_else(|p| p.into_inner()) = Some(n);
                    build(n)
                };
                let events = |v: &Version| {
                    let mut after = Model::default();
                    after.versions.push(Arc::new(v.clone()));
                    after.highest = v.number;
                    let at =
                        humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
                    events_of(model, (&Model::default(), &after), &[v.number], &at)
                };
                db.record_version_with(model, &host, build, events).await
            })
            .await;
        let unnote = || {
            if let Some(n) = *noted.lock().unwrap_or_else(|p| p.into_inner()) {
                self.pending_set().remove(&(model.to_string(), n));
            }
        };
        match r {
            Ok(r @ Recorded::New { .. }) => Ok(r),
            Ok(r @ Recorded::Existing(_)) => {
                // The number allocated went back with the rollback.
                unnote();
                Ok(r)
            }
            Err(e) => {
                // Rolled back (or unknown: then the follower brings it, as it brings
                // every change, this host's own included; and a retry of the same files
                // finds it as the newest version).
                unnote();
                Err(e)
            }
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The follower caught up with change `seq` and listens for the next.
    fn note_in_step(&self, seq: u64) {
        let mut st = self.state();
        st.applied_seq = Some(seq);
        st.in_step_at = Some(Instant::now());
        st.following = true;
        st.unreachable_since = None;
    }

    /// The follower failed to reach the catalog (answers age from now on).
    fn note_unreachable(&self) {
        let mut st = self.state();
        if st.following {
            st.in_step_at = Some(Instant::now());
        }
        st.following = false;
        st.unreachable_since.get_or_insert_with(Instant::now);
    }

    /// What `status` shows of the team.
    pub fn status(&self) -> crate::protocol::TeamStatus {
        let st = self.state();
        let secs = |t: Instant| t.elapsed().as_secs_f64();
        crate::protocol::TeamStatus {
            host: self.host.clone(),
            catalog: self.server.clone(),
            blobs: self.blobs.describe().to_string(),
            applied_seq: st.applied_seq,
            catalog_age_secs: st
                .in_step_at
                .map(|t| if st.following { 0.0 } else { secs(t) }),
            catalog_unreachable_secs: st.unreachable_since.map(secs),
            blobs_grace_secs: self.grace.as_secs_f64(),
            orphans_collected: st.collected,
            orphan_bytes_collected: st.collected_bytes,
            last_sweep_secs_ago: st.last_sweep.map(secs),
        }
    }

    /// Counts what a sweep of the orphan collector deleted.
    fn note_sweep(&self, s: &Swept) {
        let mut st = self.state();
        for (_, size) in s.blobs.iter().chain(&s.abandoned) {
            st.collected += 1;
            st.collected_bytes += size;
        }
        st.last_sweep = Some(Instant::now());
    }

    fn pending_set(&self) -> std::sync::MutexGuard<'_, BTreeSet<(String, u32)>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether version `n` of `model` is this host's own, recorded and not yet applied.
    pub fn is_pending(&self, model: &str, n: u32) -> bool {
        self.pending_set().contains(&(model.to_string(), n))
    }

    /// The registrar applied (or gave up) this host's version `n` of `model`.
    pub fn applied(&self, model: &str, n: u32) {
        self.pending_set().remove(&(model.to_string(), n));
    }

    /// Moves `alias` from `from` (where this host saw it; `None`: it did not exist) to
    /// `number` in the shared catalog (`by`: set, rollback); refused when another host
    /// moved it meanwhile ([`CatalogDb::move_alias`]); its `events` logged with it.
    #[allow(clippy::too_many_arguments)]
    pub async fn set_alias(
        &self,
        model: &str,
        alias: &str,
        from: Option<u32>,
        number: u32,
        stamp: &Stamp,
        by: &str,
        events: &[serde_json::Value],
    ) -> Result<(), ChangeFailure> {
        let host = self.host.clone();
        self.change_db(async |db: &mut CatalogDb| {
            db.move_alias(model, alias, from, number, &host, stamp, by, events)
                .await
        })
        .await
        .map(|_| ())
    }

    /// Removes `alias` in the shared catalog, refused unless it still points at `from`
    /// (where this host saw it); its `events` logged with it.
    pub async fn remove_alias(
        &self,
        model: &str,
        alias: &str,
        from: u32,
        stamp: &Stamp,
        events: &[serde_json::Value],
    ) -> Result<(), ChangeFailure> {
        let host = self.host.clone();
        self.change_db(async |db: &mut CatalogDb| {
            db.remove_alias_logged(model, alias, Some(from), &host, stamp, events)
                .await
        })
        .await
        .map(|_| ())
    }

    /// Sets (or clears, `None`) the deprecation mark of live version `number` of
    /// `model` in the shared catalog, under the model's row lock, with its `events`.
    pub async fn set_deprecated(
        &self,
        model: &str,
        number: u32,
        mark: Option<Mark>,
        events: &[serde_json::Value],
    ) -> Result<(), ChangeFailure> {
        let host = self.host.clone();
        self.change_db(async |db: &mut CatalogDb| {
            db.update_version(model, number, &host, events, |v| {
                v.deprecated = mark.map(Box::new)
            })
            .await
        })
        .await
        .map(|_| ())
    }

    /// Applies `change` (a sidecar's metrics and metadata, by [`Version::update_metrics`]'s
    /// rule) to live version `number` of `model` in the shared catalog, or to its newest
    /// live version (`None`: an edited sidecar), under the model's row lock, logging its
    /// `metrics_updated` event stamped `at`. Returns the version as the catalog now holds
    /// it; `None` when the model has no live version there or nothing changed.
    pub async fn update_metrics(
        &self,
        model: &str,
        number: Option<u32>,
        at: &str,
        change: impl FnOnce(&mut Version) -> bool,
    ) -> Result<Option<Version>, ChangeFailure> {
        let host = self.host.clone();
        let events = |before: &Version, after: &Version| {
            let one = |v: &Version| Model {
                highest: v.number,
                versions: vec![Arc::new(v.clone())],
                ..Default::default()
            };
            events_of(model, (&one(before), &one(after)), &[after.number], at)
        };
        self.change_db(async |db: &mut CatalogDb| {
            db.update_live(model, number, &host, change, events).await
        })
        .await
        .map(|r| r.map(|(v, _)| v))
    }

    /// Removes versions `numbers` of `model` in the shared catalog, in one transaction
    /// (tombstones, `files` rows gone, aliases as `how` says), with its `events`.
    pub async fn remove_versions(
        &self,
        model: &str,
        numbers: &[u32],
        mark: &Mark,
        how: Removal<'_>,
        events: &[serde_json::Value],
    ) -> Result<(), ChangeFailure> {
        let host = self.host.clone();
        self.change_db(async |db: &mut CatalogDb| {
            db.remove_versions(model, numbers, &host, mark, how, events)
                .await
        })
        .await
        .map(|_| ())
    }

    /// Model `name` as the shared catalog holds it now.
    pub async fn model(&self, name: &str) -> Result<Option<Model>, TeamError> {
        self.with_db(async |db: &mut CatalogDb| db.model(name).await)
            .await
    }

    /// Fetches every file of version `v` of `name` that is not under `root` yet from the
    /// blob store to the path its record names (`models/<name>/v<N>/...`), each checked
    /// against its SHA-256 before it is renamed into place, read-only (0444, the store's
    /// mode for a stored copy of a readable file). Once every file is here, the version
    /// folder under `store` gets its manifest (`.modelreg-version.json`, as a locally
    /// registered version has; written once, atomically). Returns how many files were
    /// fetched.
    pub async fn fetch_version(
        &self,
        root: &Path,
        store_dir: &Path,
        name: &str,
        v: &Version,
    ) -> Result<usize, TeamError> {
        let mut fetched = 0;
        for f in &v.files {
            if self.fetch_file(&root.join(&f.path), &f.sha256).await? {
                fetched += 1;
            }
        }
        let dir = store::version_dir(store_dir, name, v.number);
        let manifest = manifest_of(root, &dir, name, v);
        let placed = tokio::task::spawn_blocking(move || store::place_manifest(&dir, &manifest))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(e) = placed {
            return Err(TeamError {
                engine: self.blobs_engine(),
                message: format!(
                    "{name} v{}: its files are here, its manifest is not: {e}",
                    v.number
                ),
            });
        }
        Ok(fetched)
    }

    /// Fetches the blob `sha256` to `dest` (a stored file's path, from the catalog) when
    /// nothing is there yet: streamed into a temp file, checked against its SHA-256,
    /// made read-only (0444), renamed into place; the folders it makes get the store's
    /// folder mode (0755). Returns whether it fetched. The HTTP file routes call this per
    /// file, so serving one file of a large version does not fetch them all.
    pub async fn fetch_file(&self, dest: &Path, sha256: &str) -> Result<bool, TeamError> {
        if std::fs::symlink_metadata(dest).is_ok() {
            return Ok(false);
        }
        let blobs_error = |message: String| TeamError {
            engine: self.blobs_engine(),
            message,
        };
        let made = match dest.parent() {
            Some(dir) => make_folders(dir)
                .map_err(|e| blobs_error(format!("creating {} for a fetch: {e}", dir.display())))?,
            None => Vec::new(),
        };
        hold_fetch(dest).await;
        let fetched = self.blobs.fetch(sha256, dest).await;
        if fetched.is_err() {
            // Nothing left behind: the folders this fetch made (`v<N>/` and below), each
            // only if still empty (another fetch of the version may have filled it).
            for d in made.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
        }
        fetched.map_err(|e| match e {
            BlobError::Mismatch { .. } | BlobError::Size { .. } => blobs_error(format!(
                "{e}: the blob is damaged in the store; repair it on a host that holds a good \
                 copy (the one that registered it, or one that fetched it before): \
                 modelreg verify --catalog CATALOG --blobs {} --repair (docs/team.md, \
                 \"Repairing a damaged blob\")",
                self.blobs_setting
            )),
            e => blobs_error(e.to_string()),
        })?;
        Ok(true)
    }
}

/// Deletes the folder of version `number` of `name` under `store_dir`: that of a version
/// removed while a `get` or a download fetched its files into it (the removal's move to
/// the trash may have run before the fetch made the folder again). Never through a link;
/// one already gone (moved to the trash) is fine.
pub async fn discard_fetched(store_dir: &Path, name: &str, number: u32) {
    let store_dir = store_dir.to_path_buf();
    let dir = store::version_dir(&store_dir, name, number);
    let _ = tokio::task::spawn_blocking(move || {
        if store::check_no_link(&store_dir, &dir).is_err() {
            return;
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => tracing::info!(
                "{}: deleted what a fetch put back after its version was removed",
                dir.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                "{}: the version was removed while its files were fetched; its folder could not be deleted: {e}",
                dir.display()
            ),
        }
    })
    .await;
}

/// Debug builds only (what the end-to-end tests run): while the file named by
/// `MODELREG_DEBUG_HOLD_FETCH` exists, a fetch waits after making its folders and before
/// reading the blob, so that a test can merge another host's `rm` of the version in
/// between without racing the clock.
async fn hold_fetch(dest: &Path) {
    #[cfg(debug_assertions)]
    if let Some(gate) = std::env::var_os("MODELREG_DEBUG_HOLD_FETCH") {
        let gate = PathBuf::from(gate);
        if gate.exists() {
            tracing::info!(
                "fetch of {} held while {} exists",
                dest.display(),
                gate.display()
            );
        }
        while gate.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    let _ = dest;
}

/// Creates `dir` and each of its missing parents with the store's folder mode (0755,
/// whatever the umask), as the store makes its own folders. Returns those it made,
/// outermost first.
fn make_folders(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && std::fs::symlink_metadata(a).is_err())
        .collect();
    let mut made = Vec::new();
    for d in missing.into_iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => {
                made.push(d.to_path_buf());
                store::set_folder_mode(d).map_err(std::io::Error::other)?
            }
            // Made meanwhile by another fetch of the same version.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(made)
}

/// The manifest of version `v` of `name`, whose folder is `dir`: what a locally
/// registered version's says, from the catalog's record (its files' paths relative to
/// the folder).
fn manifest_of(root: &Path, dir: &Path, name: &str, v: &Version) -> store::Manifest {
    let files = (v.files.iter())
        .map(|f| store::StagedFile {
            rel: (root.join(&f.path).strip_prefix(dir))
                .map(|r| r.to_string_lossy().into_owned())
                .unwrap_or_else(|_| f.path.clone()),
            sha256: f.sha256.clone(),
            size: f.size,
        })
        .collect();
    store::Manifest {
        format: store::MANIFEST_FORMAT,
        name: name.to_string(),
        version: v.number,
        kind: v.kind,
        registered_at: v.registered_at.clone(),
        source: v.source.clone(),
        files,
        metrics: v.metrics.clone(),
        metadata: v.metadata.clone(),
        metric_sources: v.metric_sources.clone(),
        extracted: v.extracted.clone(),
        provenance: v.provenance.clone(),
    }
}

/// `<host name>:<root>`: what this daemon records as its host (two daemons on one
/// machine have different roots).
pub fn host_name(root: &Path) -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
    // when the name fits (the last byte is kept 0 for when it does not).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    let host = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown-host".to_string()
    };
    format!("{host}:{}", root.display())
}

/// The events a change of model `name` from `before` to `after` makes (versions
/// `numbers` changed), as the daemon's event JSON, stamped `at`: what the shared
/// catalog's event log holds beside the change, numbered there (team-wide) when it
/// commits. Derived as a local commit's are ([`crate::events::derive`]).
pub fn events_of(
    name: &str,
    (before, after): (&Model, &Model),
    numbers: &[u32],
    at: &str,
) -> Vec<serde_json::Value> {
    let catalog = |m: &Model| {
        let mut c = crate::registry::Catalog::default();
        c.models.insert(name.to_string(), Arc::new(m.clone()));
        c
    };
    let (before, after) = (catalog(before), catalog(after));
    let mut touched = crate::registry::Touched::default();
    touched.model(name);
    for &n in numbers {
        touched.version(name, n);
    }
    let d = crate::registry::Delta::between(0, &before, &after, &touched);
    (crate::events::derive(&before, &d).into_iter())
        .filter_map(|mut e| {
            e.time = at.to_string();
            serde_json::to_value(e).ok()
        })
        .collect()
}
