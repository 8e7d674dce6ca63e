//! `modelreg migrate`: moves a local registry to the team backends, its files into the blob store, then its catalog into PostgreSQL; safe to run again.
//!
//! Order, per model: every stored file of its live versions is uploaded content-addressed
//! and verified ([`BlobStore::put_file`]; one already there is not sent again), and only
//! then is the model written to the catalog ([`CatalogDb::import_model`], one
//! transaction), so the catalog never names a blob the store lacks. Before anything is
//! written, every model is compared with what the catalog holds ([`plan_import`]): a
//! catalog holding other data for any model is refused whole, naming the model and the
//! version or alias move that differs. A run cut short leaves whole models behind it;
//! running again skips what is there and completes the rest.

use std::collections::HashSet;
use std::process::ExitCode;

use modelreg::blobs::{BlobOptions, BlobStore, Upload};
use modelreg::catalogdb::{CatalogDb, Options, plan_import};
use modelreg::registry::{Catalog, Model};
use modelreg::status::human_bytes as human_size;
use modelreg::team::Claimed;

use super::print_error;
use crate::{Cli, EXIT_ERROR};

/// `migrate --to URL --blobs STORE`.
pub(crate) fn migrate(cli: &Cli, to: &str, blobs: &str) -> ExitCode {
    super::finish_despite_closed_output();
    match run(cli, to, blobs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            print_error(&e);
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// A current-thread runtime for the commands that talk to the team backends.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn run(cli: &Cli, to: &str, blobs: &str) -> Result<(), String> {
    let config = modelreg::config::Config::load(&cli.root, cli.config.as_deref())
        .map_err(|e| e.to_string())?;
    // Held when no daemon runs, so that none starts meanwhile. With a daemon running,
    // what registry.yaml and its journal hold now is migrated (both are written
    // atomically or appended to); what it registers later is not: stop it and run
    // `migrate` again, which adds only the rest.
    let _lock = match modelreg::daemon::RootLock::acquire(&config.root) {
        Ok(lock) => Some(lock),
        Err(modelreg::error::Error::AlreadyRunning { pid, .. }) => {
            print_error(&format!(
                "note: a daemon is running on this root (pid {pid}): migrating the catalog as it is now; what it registers from now on is not migrated (stop it, then run `modelreg migrate` again to add the rest)"
            ));
            None
        }
        Err(e) => return Err(e.to_string()),
    };
    let catalog = modelreg::registry::persist::load_current(&config.registry)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "{} does not exist: no local registry to migrate",
                config.registry.display()
            )
        })?;
    let store = BlobStore::open(blobs, &BlobOptions::default()).map_err(|e| e.to_string())?;
    let host = hostname();
    runtime()?.block_on(async {
        let mut db = CatalogDb::connect(to, Options::default())
            .await
            .map_err(|e| e.to_string())?;
        refuse_conflicts(&mut db, &catalog).await?;
        // The store is claimed for this catalog before anything is uploaded to it (a
        // store of another catalog refused), so that a run cut short and run again finds
        // its own marker rather than blobs its still empty catalog never recorded.
        let id = db.identity().await.map_err(|e| e.to_string())?;
        let server = db.server().to_string();
        if modelreg::team::claim(&store, &id, &server, &host).await? == Claimed::Now {
            outln!(
                "blob store {}: claimed for this catalog ({})",
                store.describe(),
                store.marker_key()
            );
        }
        // The team's event log numbers on after this registry's: its subscribers (and
        // its hooks' cursors) see the seqs go on, not start again at 1.
        let raised = db
            .continue_events_after(catalog.event_seq)
            .await
            .map_err(|e| e.to_string())?;
        if raised {
            outln!(
                "events: the catalog's event log numbers on after {} (this registry's last event)",
                catalog.event_seq
            );
        }
        let mut totals = Totals::default();
        for (name, model) in &catalog.models {
            let sent = upload(&store, &config.root, name, model, &mut totals).await?;
            let done = db
                .import_model(name, model, &host)
                .await
                .map_err(|e| format!("{e}\n(the blobs sent are kept; running `modelreg migrate` again continues)"))?;
            outln!("{}", describe(name, &done.plan, &sent));
        }
        outln!(
            "migrated {} model(s) to the catalog {}; blob store {}: {} file(s) uploaded ({}), {} already there",
            catalog.models.len(),
            db.server(),
            store.describe(),
            totals.uploaded,
            human_size(totals.bytes),
            totals.present
        );
        Ok(())
    })
}

/// Every model compared with the catalog before anything is written: other data under
/// any model's name refuses the whole migration, each conflict named.
async fn refuse_conflicts(db: &mut CatalogDb, catalog: &Catalog) -> Result<(), String> {
    let snapshot = db.snapshot().await.map_err(|e| e.to_string())?;
    let conflicts: Vec<String> = catalog
        .models
        .iter()
        .filter_map(|(name, m)| {
            plan_import(name, snapshot.models.get(name).map(|h| &**h), m)
                .err()
                .map(|c| c.to_string())
        })
        .collect();
    if conflicts.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the catalog {} already holds other data for {} model(s); nothing was migrated:\n{}",
        db.server(),
        conflicts.len(),
        conflicts.join("\n")
    ))
}

/// Blobs sent and found over the whole run.
#[derive(Default)]
struct Totals {
    /// SHA-256s already handled in this run (a file shared by versions goes once).
    seen: HashSet<String>,
    uploaded: usize,
    present: usize,
    bytes: u64,
}

/// What one model's uploads did.
#[derive(Default)]
struct Sent {
    files: usize,
    uploaded: usize,
    present: usize,
    bytes: u64,
}

/// Uploads (or finds) every stored file of `model`'s live versions. A removed version's
/// files are gone: its tombstone needs none.
async fn upload(
    store: &BlobStore,
    root: &std::path::Path,
    name: &str,
    model: &Model,
    totals: &mut Totals,
) -> Result<Sent, String> {
    let mut sent = Sent::default();
    for v in model.versions.iter().filter(|v| v.removed.is_none()) {
        for f in &v.files {
            sent.files += 1;
            if !totals.seen.insert(f.sha256.clone()) {
                // Sent (or found) for an earlier file of this run.
                totals.present += 1;
                sent.present += 1;
                continue;
            }
            let path = root.join(&f.path);
            let put = store
                .put_file(&path, &f.sha256, f.size)
                .await
                .map_err(|e| {
                    format!(
                        "{name} v{}: {}: {e}\n(nothing of {name} is in the catalog yet; fix the file or the store, then run `modelreg migrate` again)",
                        v.number, f.path
                    )
                })?;
            match put.upload {
                Upload::Uploaded => {
                    sent.uploaded += 1;
                    sent.bytes += put.bytes_sent;
                    totals.uploaded += 1;
                    totals.bytes += put.bytes_sent;
                }
                Upload::AlreadyPresent => {
                    totals.present += 1;
                    sent.present += 1;
                }
            }
        }
    }
    Ok(sent)
}

/// One line per model: what the catalog got, what the store got.
fn describe(name: &str, plan: &modelreg::catalogdb::ImportPlan, sent: &Sent) -> String {
    let files = format!(
        "{} file(s): {} uploaded ({}), {} already there",
        sent.files,
        sent.uploaded,
        human_size(sent.bytes),
        sent.present
    );
    if plan.is_empty() {
        return format!(
            "{name}: already in the catalog ({} version(s)); {files}",
            plan.unchanged
        );
    }
    let mut parts = Vec::new();
    let numbers: Vec<String> = plan.add.iter().map(|v| format!("v{}", v.number)).collect();
    let removed = plan.add.iter().filter(|v| v.removed.is_some()).count();
    parts.push(format!(
        "{} version(s) added ({}{})",
        plan.add.len(),
        if numbers.is_empty() {
            "none".into()
        } else {
            numbers.join(" ")
        },
        if removed > 0 {
            format!("; {removed} removed, kept as tombstones")
        } else {
            String::new()
        }
    ));
    if plan.unchanged > 0 {
        parts.push(format!("{} already there", plan.unchanged));
    }
    parts.push(format!("highest v{}", plan.highest));
    if !plan.moves.is_empty() {
        parts.push(format!("{} alias move(s) added", plan.moves.len()));
    }
    if !plan.set_aliases.is_empty() {
        let set: Vec<String> = plan
            .set_aliases
            .iter()
            .map(|(a, n)| format!("{a}=v{n}"))
            .collect();
        parts.push(format!("aliases {}", set.join(" ")));
    }
    if !plan.remove_aliases.is_empty() {
        parts.push(format!("aliases removed {}", plan.remove_aliases.join(" ")));
    }
    format!("{name}: {}; {files}", parts.join(", "))
}

/// This machine's name, recorded as the host of the versions it brings in.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
