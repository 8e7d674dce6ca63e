//! What the registrar keeps per model between jobs: its stored files by content, and the link names it made.
//!
//! The dedup table used to be rebuilt for every job from every version of the model, so
//! a model's thousandth version cost more than its first. Here it follows what changed:
//! - the dedup table of a model is extended with the versions numbered above those it
//!   holds (numbers only grow, versions are in ascending order, a stored version's files
//!   never change), and dropped when a version of the model is removed (rm, gc), to be
//!   rebuilt from the catalog by its next job;
//! - the store's highest number is NOT kept: each job lists the model's folder, so that
//!   a `v<N>` folder put there by hand while the daemon runs pushes the numbering above
//!   it and shows as a problem (tests/liveness.rs), at the cost of one listing per job;
//! - the link names last made in each model's folder: its other symlinks (aliases
//!   removed) are looked for, by listing the folder, only when a name went away.
//!
//! So a register loop builds the table once. Both are only ever a cache of the catalog
//! and the store: forgetting them is always correct.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use super::plan::Known;
use crate::registry::Model;
use crate::store;

/// Per-model memory of the registrar; see the module docs.
#[derive(Debug, Default)]
pub(super) struct Index {
    dedup: HashMap<String, Dedup>,
    /// The link names last made in each model's folder.
    links: HashMap<String, BTreeSet<String>>,
}

/// One model's dedup table and the highest version number it has looked at.
#[derive(Debug, Default)]
struct Dedup {
    upto: u32,
    stored: store::Stored,
}

impl Index {
    /// The stored files of `model` (named `name`) a new version may share, with
    /// `latest`'s by path; paths are `root`-relative in the catalog. Costs the versions
    /// added since the last call, not the model's size.
    pub(super) fn stored(
        &mut self,
        name: &str,
        model: Option<&Model>,
        root: &Path,
        latest: Option<&Known>,
    ) -> store::Stored {
        let mut out = match model {
            None => {
                self.dedup.remove(name);
                store::Stored::default()
            }
            Some(m) => {
                let d = self.dedup.entry(name.to_string()).or_default();
                let start = m.versions.partition_point(|v| v.number <= d.upto);
                for v in m.versions[start..].iter().filter(|v| v.removed.is_none()) {
                    for f in &v.files {
                        d.stored.add(&f.sha256, root.join(&f.path), f.size);
                    }
                }
                d.upto = m.versions.last().map_or(d.upto, |v| v.number.max(d.upto));
                d.stored.for_job()
            }
        };
        for (rel, sha256) in latest.iter().flat_map(|k| &k.files) {
            out.add_latest(rel, sha256);
        }
        out
    }

    /// A version of `name` was removed: its table is rebuilt by the next job (the table
    /// names one file per content, which may have been the removed one).
    pub(super) fn removed(&mut self, name: &str) {
        self.dedup.remove(name);
    }

    /// The links `names` are about to be made in `name`'s folder: whether the folder
    /// must be listed for other symlinks to remove (the first time, or when a name made
    /// before is not among them: an alias removed).
    pub(super) fn links_made(&mut self, name: &str, names: BTreeSet<String>) -> bool {
        let prune = self
            .links
            .get(name)
            .is_none_or(|before| !before.is_subset(&names));
        self.links.insert(name.to_string(), names);
        prune
    }

    /// A commit rolled back: its staged versions are gone, and the catalog is the
    /// published one again; everything is learned anew.
    pub(super) fn forget(&mut self) {
        *self = Index::default();
    }
}

#[cfg(test)]
mod tests;
