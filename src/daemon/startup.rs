//! Start-up before serving: root locked, catalog loaded, store recovered, socket bound.
//!
//! The store is brought in line with the catalog after a crash; the socket may be
//! inherited from systemd.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::RootLock;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::events;
use crate::registry::{Catalog, persist};
use crate::server;
use crate::status::StatusBoard;
use crate::store;

/// Creates the root and takes its lock, creates the inbox and the store when missing, and
/// locks the store's and the registry's folders too (see [`RootLock::guard_folders`]).
pub(super) fn lock_root(config: &Config) -> Result<RootLock> {
    std::fs::create_dir_all(&config.root).map_err(|e| Error::io("create root", &config.root, e))?;
    let mut lock = RootLock::acquire(&config.root)?;
    for dir in [&config.inbox, &config.store] {
        // An inbox that is a symbolic link is left alone here; the layout check decides.
        if std::fs::symlink_metadata(dir).is_ok() {
            continue;
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create folder", dir, e))?;
        if dir == &config.store {
            // Whatever the umask: nobody but the daemon's user writes the store.
            store::set_folder_mode(dir)?;
        }
    }
    let registry_dir = config.registry.parent().unwrap_or(&config.root);
    lock.guard_folders(&[&config.store, registry_dir])?;
    Ok(lock)
}

/// How long loading the catalog and recovering the store took, for the log.
#[derive(Debug)]
pub(super) struct Timings {
    pub(super) loaded: Duration,
    pub(super) recovered: Duration,
}

/// The catalog as last committed, and the journal to continue it in.
#[derive(Debug)]
pub struct Loaded {
    /// registry.yaml (or its start-up cache) with the journal replayed.
    pub catalog: Catalog,
    /// The journal, open for appending.
    pub journal: persist::Journal,
    /// The last journal record registry.yaml itself includes.
    pub written: u64,
    /// The catalog the journal's records were replayed on, and those records: start-up
    /// derives again the events of any whose events were not made durable.
    pub replayed: (Catalog, Vec<crate::registry::Delta>),
    /// A damaged last record of the journal, dropped at this start: the journal's path
    /// and what was dropped, for `status` (the journal's layer cannot see the board).
    pub dropped: Option<(PathBuf, String)>,
    /// The journal was missing or empty (no header). A crash never leaves it so: the
    /// daemon writes its header before any record, and a clean stop keeps it.
    pub journal_absent: bool,
}

/// Loads the catalog and brings the store in line with it: a publication a crash
/// interrupted is rolled forward and unregistered staging folders are removed. Versions
/// in the store that the catalog does not name refuse the start.
pub(super) fn load_and_recover(config: &Config) -> Result<(Loaded, Timings)> {
    let t0 = Instant::now();
    let loaded = load_catalog(config)?;
    let catalog = &loaded.catalog;
    refuse_lost_records(config, &loaded)?;
    let took = t0.elapsed();
    let recovery = store::recover(&config.store, catalog)?;
    let recovered = t0.elapsed() - took;
    for v in &recovery.rolled_forward {
        tracing::warn!("finished publishing {v}, interrupted by a crash");
    }
    for p in &recovery.removed {
        tracing::info!("removed unregistered staging folder {p}, left by a crash");
    }
    let lost = store::audit(&config.store, catalog);
    if !lost.is_empty() {
        return Err(lost_versions(config, &lost, "exists"));
    }
    // Only now, the start accepted: a refused start must leave registry.yaml's last copy
    // as it was (a registry.yaml cut short in place would otherwise be copied over the
    // good copy before the audit refused it, and `recover` could only rebuild from the
    // store).
    if let Err(e) = persist::journal::keep_base(&config.registry) {
        tracing::warn!("registry.yaml's last copy not made: {e}");
    }
    Ok((
        loaded,
        Timings {
            loaded: took,
            recovered,
        },
    ))
}

/// Where the delivery cursors of hooks and webhooks are kept: beside registry.yaml.
pub(super) fn cursors_path(config: &Config) -> std::path::PathBuf {
    config
        .registry
        .parent()
        .unwrap_or(&config.root)
        .join(crate::deliver::CURSORS_FILE)
}

/// Refuses the start when the event log holds events of more than one journal record
/// that neither registry.yaml nor the journal holds (of any, when the journal is missing
/// or empty). Only the commit a crash interrupted may have its events without its record
/// (both are fsynced in one round, and nothing is answered before both are durable), so
/// more means the journal lost records whose changes were answered: replaced by an older
/// copy, emptied or deleted. Starting would drop those events and the changes with them;
/// `recover` brings them back from the log.
fn refuse_lost_records(config: &Config, loaded: &Loaded) -> Result<()> {
    let dir = config.events_dir();
    let seq = loaded.catalog.journal_seq;
    let read = |e| Error::io("read event log", &dir, e);
    // The newest event's record first (read from the segment's end): past the record in
    // flight at a crash is rare, and only then is the log read whole.
    let absent = loaded.journal_absent;
    // The record in flight at a crash may have its events alone; with no journal at all
    // (missing, or empty: never a crash's doing) not even that.
    if events::newest_commit(&dir)
        .map_err(read)?
        .is_none_or(|c| c <= seq)
    {
        return Ok(());
    }
    let ahead = events::after_record(&dir, seq).map_err(read)?;
    // A removal is carried out (its folder renamed into the trash) only once its record
    // is durable: a version the catalog holds live whose removal event is here and whose
    // folder is gone was not in flight (a journal one record short, a tester's finding).
    let carried_out = ahead.iter().find(|e| {
        matches!(e.kind, events::Kind::Removed | events::Kind::Gc)
            && e.version.is_some_and(|n| {
                (loaded.catalog.models.get(&e.model))
                    .and_then(|m| m.find(n))
                    .is_some_and(|v| v.removed.is_none())
                    && !store::version_dir(&config.store, &e.model, n).exists()
            })
    });
    if !events::journal_lost_records(&ahead, seq, absent) && carried_out.is_none() {
        return Ok(());
    }
    let (first, last) = (&ahead[0], &ahead[ahead.len() - 1]);
    let journal = persist::journal_path(&config.registry);
    let journal_said = if absent {
        format!("the journal {} is missing or empty", journal.display())
    } else if let Some(e) =
        carried_out.filter(|_| !events::journal_lost_records(&ahead, seq, absent))
    {
        format!(
            "neither does the journal {} (up to record {seq}), though the removal of {} v{} \
             was carried out (its folder is gone from the store), so its record was durable",
            journal.display(),
            e.model,
            e.version.unwrap_or(0)
        )
    } else {
        format!(
            "neither does the journal {} (up to record {seq})",
            journal.display()
        )
    };
    let msg = format!(
        "the event log {} holds {} event(s) of journal records {}..{} (the last, event {}: \
         {}) that {} does not hold (up to record {}), and {journal_said}: the journal was \
         replaced by an older copy, emptied or deleted, and changes that were answered \
         would be lost. Not starting. Run `modelreg recover --root {}` (as the daemon's \
         user) to apply them again from the event log (what cannot be applied is listed); \
         if registry.yaml and the journal were restored from a backup on purpose, restore \
         {} from the same backup too, or move it aside to start from the backup as it is.",
        dir.display(),
        ahead.len(),
        first.commit,
        last.commit,
        last.seq,
        last.line().trim_start(),
        config.registry.display(),
        loaded.written,
        config.root.display(),
        dir.display(),
    );
    // Logged once by the daemon's exit, with the `modelreg:` line.
    Err(Error::Other(msg))
}

/// Opens the event log beside registry.yaml (`events/`), dropping events of records the
/// catalog does not hold, and appends the events of replayed journal records that have
/// none (their record was durable, their events not: a crash between the two fsyncs).
pub(super) fn open_events(config: &Config, loaded: &Loaded) -> Result<Arc<events::Log>> {
    let dir = config.events_dir();
    let retention = events::Retention::of(&config.events);
    let log = events::Log::open(&dir, &retention, loaded.catalog.journal_seq)?;
    let (before, records) = &loaded.replayed;
    let (mut forgotten, mut stamped) = (0, None);
    if records.iter().any(|d| d.seq == log.last_commit()) {
        let cut = log.last_commit();
        let (n, time) = log
            .forget_last_commit()
            .map_err(|e| Error::io("cut the event log", &dir, e))?;
        forgotten = n;
        stamped = time.map(|t| (cut, t));
    }
    let mut c = before.clone();
    let (mut derived, mut from) = (0, None);
    for d in records {
        if d.seq > log.last_commit() {
            let mut made = events::derive(&c, d);
            // The commit whose events were cut off: the same events, with their time.
            if let Some((_, t)) = stamped.as_ref().filter(|(cut, _)| *cut == d.seq) {
                for e in &mut made {
                    e.time = t.clone();
                }
            }
            // The record says where its events end: numbers before them that the log
            // lacks are missing, never given again.
            let first = (d.event_seq + 1).saturating_sub(made.len() as u64);
            if d.event_seq != 0 && !made.is_empty() && first > 0 {
                warn_missing(&dir, log.continue_after(first - 1));
            }
            let p = log
                .write(made, &retention)
                .and_then(|p| p.sync(&dir).map(|()| p))
                .map_err(|e| Error::io("append to the event log", &dir, e))?;
            derived += p.events().len();
            from.get_or_insert(d.seq);
            log.commit(p);
        }
        // Applied once already by the replay: it fits.
        if let Err(why) = d.apply(&mut c) {
            tracing::warn!(
                "event log: record {} not replayed for its events: {why}",
                d.seq
            );
            break;
        }
    }
    // The catalog's mark: events up to it were given; a log that ends before lost them.
    warn_missing(&dir, log.continue_after(loaded.catalog.event_seq));
    // The last commit's events are always derived again: only more than were cut off
    // means events a crash had kept from the log.
    if let Some(from) = from
        && derived > forgotten
    {
        tracing::warn!(events = %dir.display(), "derived {derived} event(s) again from journal records {from}..{}, whose events a crash kept from the log", loaded.catalog.journal_seq);
    }
    Ok(Arc::new(log))
}

/// Says at start that events `from..=to` are missing from the log (and why that may be).
fn warn_missing(dir: &std::path::Path, missing: Option<(u64, u64)>) {
    if let Some((from, to)) = missing {
        tracing::warn!(
            events = %dir.display(),
            "events {from}..{to} are missing from the event log (its tail lost after a clean stop, or the folder deleted or restored without them); numbering goes on at {}, readers asking for them are told so",
            to + 1
        );
    }
}

/// The control socket the daemon listens on.
pub(super) struct Listener {
    /// The listening socket.
    pub(super) socket: tokio::net::UnixListener,
    /// Handed over by systemd (socket activation): it stays in place at shutdown.
    pub(super) inherited: bool,
    /// Where it listens: the inherited socket's own path, else the configured one.
    pub(super) path: PathBuf,
}

/// Socket activation: systemd may hand us the listening socket; otherwise bind it.
pub(super) fn listen(config: &Config) -> Result<Listener> {
    let (socket, inherited) = match crate::systemd::inherited_listener()? {
        Some(l) => {
            let l = tokio::net::UnixListener::from_std(l)
                .map_err(|e| Error::Other(format!("inherited socket: {e}")))?;
            (l, true)
        }
        None => (
            server::bind(&config.socket, config.socket_group.as_deref())?,
            false,
        ),
    };
    let path = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf))
        .unwrap_or_else(|| config.socket.clone());
    Ok(Listener {
        socket,
        inherited,
        path,
    })
}

/// The start-up line: root, settings, catalog size and socket.
pub(super) fn log_started(config: &Config, catalog: &Catalog, listener: &Listener) {
    tracing::info!(
        root = %config.root.display(),
        config = %config.source,
        models = catalog.models.len(),
        versions = catalog.version_count(),
        socket = %listener.path.display(),
        inherited = listener.inherited,
        "modelreg started"
    );
}

/// A removal whose tombstone was written but whose files a crash kept: finish it.
pub(super) fn finish_removals(config: &Config, catalog: &Catalog, board: &StatusBoard) {
    for (name, m) in &catalog.models {
        for v in m.versions.iter().filter(|v| v.removed.is_some()) {
            let dir = store::version_dir(&config.store, name, v.number);
            if dir.exists() {
                // One folder that cannot be removed must not stop the daemon.
                match store::retire(&config.store, name, v.number) {
                    Ok(()) => tracing::info!("finished removing {name} v{}", v.number),
                    Err(e) => board.set_problem(
                        &dir.display().to_string(),
                        &format!("{name} v{} was removed but its files remain: {e}", v.number),
                    ),
                }
            }
        }
    }
}

/// A catalog that names files that are gone still starts (everything else is served);
/// each missing file becomes a problem in `status`. Checked in the background: with many
/// versions it takes a while, and `get` checks the files it answers with anyway.
pub(super) fn check_store_in_background(
    config: &Config,
    catalog: &Catalog,
    board: &Arc<StatusBoard>,
) {
    let (board, root, catalog) = (board.clone(), config.root.clone(), catalog.clone());
    let store_dir = config.store.clone();
    // In team mode a version whose files are not here was registered on another host
    // and is fetched on demand (docs/team.md): not a problem.
    let team = config.team.is_some();
    tokio::task::spawn_blocking(move || {
        // A store made by an older version under a loose umask: nobody but the
        // daemon's user may add, remove or rename anything in it.
        let n = store::tighten_modes(&store_dir);
        if n > 0 {
            tracing::warn!(store = %store_dir.display(), "removed write permission for group and others from {n} folder(s) or file(s) of the store");
        }
        // Never followed (see `store::check_no_link`), but shown: nothing stored
        // there can be served, removed or added to.
        for (p, why) in store::linked_folders(&store_dir) {
            board.set_problem(&p.display().to_string(), &why);
        }
        for p in crate::verify::missing_files(&root, &catalog)
            .into_iter()
            .filter(|_| !team)
        {
            board.set_problem(&p.path, &format!("{}; run `modelreg verify`", p.detail));
        }
    });
}

/// Loads the catalog for start-up: registry.yaml (or its start-up cache), then the
/// journal's records after it. Creates an empty registry.yaml when there is neither;
/// refuses a registry.yaml that does not parse (path, line, column; the file is left
/// untouched) and a journal damaged before its end (path, offset). A torn last record,
/// never acknowledged, is dropped with a warning.
pub fn load_catalog(config: &Config) -> Result<Loaded> {
    let removed = persist::remove_stale_temporaries(&config.registry)?;
    if removed > 0 {
        tracing::info!("removed {removed} temporary file(s) left by an interrupted registry write");
    }
    let journal_path = persist::journal_path(&config.registry);
    let stale = persist::remove_stale_temporaries(&journal_path)?;
    if stale > 0 {
        tracing::info!("removed {stale} temporary journal(s) left by an interrupted rotation");
    }
    let mut loaded = persist::load_with_cache(&config.registry)?;
    // The parser's buffers are freed by now; give that memory back to the system rather
    // than keep it resident for the daemon's whole life.
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
    let scan = persist::journal::scan(&journal_path)?;
    let mut existed = loaded.is_some();
    if !existed {
        // Deleted, then the daemon killed before it wrote registry.yaml again: the
        // catalog the journal continues is still in its last copy.
        loaded = persist::journal::base_joining(&config.registry, scan.as_ref());
    } else if let Some(newer) =
        persist::journal::base_newer(&config.registry, loaded.as_ref(), scan.as_ref())
    {
        // Replaced by (or overwritten with) an older copy, then the daemon killed before it noticed: the
        // last copy still holds the catalog the journal continues. The older copy is
        // kept for a person to look at, and registry.yaml written again below.
        let mut older = config.registry.as_os_str().to_owned();
        older.push(".older");
        let older = std::path::PathBuf::from(older);
        std::fs::rename(&config.registry, &older)
            .map_err(|e| Error::io("keep the older registry.yaml as", &older, e))?;
        tracing::warn!(registry = %config.registry.display(), "the older {} is kept as {}", config.registry.display(), older.display());
        loaded = Some(newer);
        existed = false;
    } else if let Some(c) = loaded
        .as_ref()
        .filter(|c| scan.is_none() && c.journal_seq > 0)
    {
        missing_journal(config, &journal_path, c);
    }
    let written = loaded.as_ref().map_or(0, |c| c.journal_seq);
    let replayed_on = loaded.clone().unwrap_or_default();
    let mut replayed: Vec<crate::registry::Delta> = (scan.iter().flat_map(|s| &s.records))
        .filter(|(d, _)| d.seq > replayed_on.journal_seq)
        .map(|(d, _)| d.clone())
        .collect();
    let (catalog, n) = persist::journal::continue_from(loaded, scan.as_ref(), &journal_path)?;
    replayed.truncate(n);
    if n > 0 {
        tracing::info!(journal = %journal_path.display(), "replayed {n} change(s) made after registry.yaml was last written");
    }
    if !existed {
        // No registry.yaml but versions in the store: the catalog was lost, not new.
        let lost = store::audit(&config.store, &catalog);
        if !lost.is_empty() {
            return Err(lost_versions(config, &lost, "does not exist"));
        }
        persist::write_atomic(&config.registry, persist::to_yaml(&catalog)?.as_bytes())?;
        if catalog.journal_seq == 0 {
            tracing::info!(registry = %config.registry.display(), "created an empty registry");
        } else {
            tracing::info!(registry = %config.registry.display(), "wrote registry.yaml from the journal");
        }
    }
    let written = if existed {
        written
    } else {
        catalog.journal_seq
    };
    let dropped = (scan.as_ref().and_then(|s| s.torn.as_ref())).map(|t| {
        (
            journal_path.clone(),
            persist::journal::describe_torn(&journal_path, t),
        )
    });
    let journal_absent = scan.is_none();
    let journal = persist::Journal::open(&journal_path, scan, catalog.journal_seq)?;
    Ok(Loaded {
        catalog,
        journal,
        written,
        replayed: (replayed_on, replayed),
        dropped,
        journal_absent,
    })
}

/// registry.yaml names journal records (`journal_seq` past 0) but the journal is gone: a
/// daemon always leaves one (a clean stop an empty one), so it was deleted while the
/// daemon was stopped (or registry.yaml restored without it). Nothing is missing when
/// the daemon had stopped cleanly; after a crash, the changes acknowledged after
/// registry.yaml's last write are. Which one cannot be told, so a WARN says both (versions
/// the store holds that the catalog does not name refuse the start later, as always).
fn missing_journal(config: &Config, journal: &std::path::Path, c: &crate::registry::Catalog) {
    let shown = journal.display();
    tracing::warn!(
        journal = %shown,
        "{shown} is missing, but {} includes changes up to journal record {}, so a journal existed: \
         if the daemon was stopped cleanly (or registry.yaml restored from a backup), nothing is missing; \
         if it was killed or crashed, the changes acknowledged after record {} (aliases, deprecations, \
         metric edits, registrations) are lost: stop the daemon and put the journal back, if you have it",
        config.registry.display(),
        c.journal_seq,
        c.journal_seq
    );
}

/// The refusal to start over a catalog that lost versions the store still holds.
fn lost_versions(config: &Config, lost: &[String], what: &str) -> Error {
    let shown: Vec<&str> = lost.iter().take(5).map(String::as_str).collect();
    let more = if lost.len() > shown.len() {
        format!(" and {} more", lost.len() - shown.len())
    } else {
        String::new()
    };
    let msg = format!(
        "{} {what}, but the store {} holds {} version(s) it does not name ({}{more}): the \
         catalog lost versions (deleted, or restored from an older copy). Not starting, so \
         that no version number is given twice and nothing stored is overwritten. Run \
         `modelreg recover --root {}` to add them back from the store's manifests (what \
         cannot be rebuilt is listed), or move them out of the store.",
        config.registry.display(),
        config.store.display(),
        lost.len(),
        shown.join(", "),
        config.root.display()
    );
    tracing::error!("{msg}");
    Error::Other(msg)
}
