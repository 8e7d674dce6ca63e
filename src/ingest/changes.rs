//! Changes asked for by clients: aliases, deprecate, remove, and gc's retention policy.
//!
//! The rules are the catalog's ([`crate::registry`]); here they are applied to the
//! registrar's catalog, recorded for the next group commit and told to `status`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Registrar;
use crate::messages::{Change, ChangeResult};
use crate::protocol::{ChangeAnswer, GcReport, GcVersion};
use crate::registry::{Changed, Model, Stamp, keep_last};
use crate::status::now_rfc3339;

impl Registrar {
    /// `compact`: the next commit (this batch's) writes registry.yaml whole and starts
    /// an empty journal, whether or not anything else changed.
    fn compact(&mut self) -> ChangeAnswer {
        self.batch.compact = true;
        self.batch.dirty = true;
        ChangeAnswer::Compacted(crate::protocol::Compacted {
            registry: self.config.registry.display().to_string(),
            // The number this batch's record takes (see `commit::record`).
            journal_seq: self.shared.catalog().journal_seq + 1,
        })
    }

    /// Applies a client's change to the catalog (written with the next commit).
    pub(super) fn change(&mut self, change: Change, uid: Option<u32>) -> ChangeResult {
        let stamp = Stamp {
            at: now_rfc3339(),
            uid,
        };
        let name = match &change {
            Change::AliasSet { name, .. }
            | Change::AliasRemove { name, .. }
            | Change::Rollback { name, .. }
            | Change::Deprecate { name, .. }
            | Change::Remove { name, .. } => name.clone(),
            Change::Gc { name, dry_run } => return self.gc(name.as_deref(), *dry_run, &stamp),
            Change::Compact => return Ok(self.compact()),
        };
        let m = self.catalog.model(&name)?;
        // What an `rm` frees, while the version still counts as stored.
        let freed = match &change {
            Change::Remove { version, .. }
                if m.find(*version).is_some_and(|v| v.removed.is_none()) =>
            {
                freed_bytes(&self.config.root, m, &BTreeSet::from([*version]))
            }
            _ => 0,
        };
        let m = Arc::make_mut(self.catalog.models.get_mut(&name).expect("checked"));
        let changed = match change {
            Change::AliasSet { alias, version, .. } => m.set_alias(&name, &alias, version, &stamp),
            Change::AliasRemove { alias, .. } => m.remove_alias(&name, &alias, &stamp),
            Change::Rollback { alias, .. } => m.roll_back(&name, &alias, &stamp),
            Change::Deprecate {
                version, reason, ..
            } => m.deprecate(&name, version, reason, &stamp),
            Change::Remove {
                version,
                reason,
                force,
                ..
            } => m.remove(&name, version, reason, force, &stamp, "rm"),
            Change::Gc { .. } | Change::Compact => unreachable!("handled above"),
        }?;
        // Setting an alias where it already points changes nothing to write.
        if let Some(event) = changed.event(&name) {
            if let Changed::Removed { version, .. } = &changed {
                self.batch.deletions.push((name.clone(), *version));
            }
            match &changed {
                Changed::Removed { version, .. } | Changed::Deprecated { version, .. } => {
                    self.batch.changed.version(&name, *version)
                }
                _ => self.batch.changed.model(&name),
            }
            self.board.event(event);
            self.batch.touched.insert(name.clone());
            self.batch.dirty = true;
        }
        let mut answer = ChangeAnswer::of(&name, changed);
        if let ChangeAnswer::Removed(r) = &mut answer {
            r.freed = freed;
        }
        Ok(answer)
    }

    /// Retention: per model, keep the newest `keep_last` stored versions, the best one and
    /// every aliased one; remove the rest (or, with `dry_run`, say what would go).
    pub(super) fn gc(&mut self, only: Option<&str>, dry_run: bool, stamp: &Stamp) -> ChangeResult {
        let names: Vec<String> = match only {
            Some(n) => {
                self.catalog.model(n)?;
                vec![n.to_string()]
            }
            None => self.catalog.models.keys().cloned().collect(),
        };
        let mut report = GcReport {
            dry_run,
            versions: Vec::new(),
            bytes: 0,
        };
        for name in names {
            let Some(keep) = keep_last(&self.config.retention, &name) else {
                continue;
            };
            let m = &self.catalog.models[&name];
            let best = m.best_by_policy(&name, &self.config.best).map(|v| v.number);
            let doomed = m.gc_plan(keep, best);
            let going = doomed.iter().map(|d| d.number).collect();
            report.bytes += freed_bytes(&self.config.root, m, &going);
            for d in &doomed {
                report.versions.push(GcVersion {
                    name: name.clone(),
                    version: format!("v{}", d.number),
                    size: d.size,
                });
            }
            if dry_run || doomed.is_empty() {
                continue;
            }
            let m = Arc::make_mut(self.catalog.models.get_mut(&name).expect("present"));
            for d in &doomed {
                let reason = Some(format!("gc: keep_last {keep}"));
                m.remove(&name, d.number, reason, false, stamp, "gc")?;
                self.batch.deletions.push((name.clone(), d.number));
                self.batch.changed.version(&name, d.number);
            }
            self.board
                .event(format!("gc removed {} version(s) of {name}", doomed.len()));
            self.batch.touched.insert(name.clone());
            self.batch.dirty = true;
        }
        Ok(ChangeAnswer::Gc(report))
    }

    /// Deletes the trash `entries` (removed versions' folders, see `store::trash`) on the
    /// blocking pool, so that no change or registration waits for it. Stops at shutdown;
    /// the next start deletes the rest.
    pub(super) fn empty_trash(&self, entries: Vec<PathBuf>) {
        if entries.is_empty() {
            return;
        }
        let (store, stop) = (self.config.store.clone(), self.cancel.clone());
        tokio::task::spawn_blocking(move || {
            let t0 = std::time::Instant::now();
            let (done, errors) = crate::store::trash::empty(&store, &entries, &stop);
            for e in &errors {
                tracing::error!("emptying the store's trash: {e}");
            }
            tracing::info!(
                took = ?t0.elapsed(),
                "deleted {done} removed version folder(s) from the store's trash ({} left)",
                entries.len() - done
            );
        });
    }
}

/// The bytes that removing versions `going` of `m` frees: each of their files counted once
/// per inode (dedup hard-links equal files, so versions share inodes), and only when no
/// version that stays has a file on that inode. A file already gone frees nothing. Only
/// the stayers' files with a content of the going ones are looked at: dedup links equal
/// content alone.
pub(super) fn freed_bytes(root: &Path, m: &Model, going: &BTreeSet<u32>) -> u64 {
    let mut inodes: HashMap<(u64, u64), u64> = HashMap::new();
    let mut contents: HashSet<&str> = HashSet::new();
    for v in m.stored().filter(|v| going.contains(&v.number)) {
        for f in &v.files {
            if let Ok(meta) = std::fs::symlink_metadata(root.join(&f.path))
                && meta.is_file()
            {
                inodes.insert((meta.dev(), meta.ino()), meta.len());
                contents.insert(&f.sha256);
            }
        }
    }
    for v in m.stored().filter(|v| !going.contains(&v.number)) {
        for f in v
            .files
            .iter()
            .filter(|f| contents.contains(f.sha256.as_str()))
        {
            if let Ok(meta) = std::fs::symlink_metadata(root.join(&f.path)) {
                inodes.remove(&(meta.dev(), meta.ino()));
            }
        }
    }
    inodes.values().sum()
}

/// Shows the stored file at `path` as damaged (`reason`): one problem naming every stored
/// version whose file is that inode (`verify::sharers`), kept until none of them is left
/// or `verify` finds the file right again. A path the catalog does not name as a stored
/// file is shown alone.
pub fn report_damaged(
    board: &crate::status::StatusBoard,
    (root, store): (&Path, &Path),
    catalog: &crate::registry::Catalog,
    path: &Path,
    reason: &str,
) {
    match crate::verify::sharers(root, store, catalog, path) {
        Some(s) if !s.versions.is_empty() => {
            board.set_damaged(s.inode, &s.model, s.versions, reason)
        }
        _ => board.set_problem(
            &path.display().to_string(),
            &format!(
                "stored file {} damaged: {reason}; run `modelreg verify`",
                path.display()
            ),
        ),
    }
}
