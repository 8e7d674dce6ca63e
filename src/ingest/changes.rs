//! Changes asked for by clients: aliases, deprecate, remove, and gc's retention policy.
//!
//! The rules are the catalog's ([`crate::registry`]); here they are applied to the
//! registrar's catalog, recorded for the next group commit and told to `status`.

use std::sync::Arc;

use super::Registrar;
use crate::messages::{Change, ChangeResult};
use crate::protocol::{ChangeAnswer, GcReport, GcVersion};
use crate::registry::{Changed, Stamp, keep_last};
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
        self.catalog.model(&name)?;
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
        Ok(ChangeAnswer::of(&name, changed))
    }

    /// Retention: per model, keep the newest `keep_last` stored versions, the best one and
    /// every aliased one; remove the rest (or, with `dry_run`, say what would go).
    fn gc(&mut self, only: Option<&str>, dry_run: bool, stamp: &Stamp) -> ChangeResult {
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
            for d in &doomed {
                report.bytes += d.size;
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
}
