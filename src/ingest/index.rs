//! What the registrar keeps per model between jobs: its stored files by content, and the link names it made.
//!
//! The dedup table used to be rebuilt for every job from every version of the model, so
//! a model's thousandth version cost more than its first. Here it follows what changed:
//! - the dedup table of a model is extended with the versions numbered above those it
//!   holds (numbers only grow, versions are in ascending order, a stored version's files
//!   never change), and dropped when a version of the model is removed (rm, gc), to be
//!   rebuilt from the catalog by its next job;
//! - the store's highest number is not trusted from memory alone: a `v<N>` folder put
//!   there by hand while the daemon runs must push the numbering above it and show as a
//!   problem (tests/liveness.rs). What is kept is the last listing of the model's folder
//!   with the folder's link count, and the versions published into it since; a job
//!   lists the folder again only when the count is not what those explain
//!   ([`store::highest_in_store_since`]);
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
    /// The last listing of each model's store folder, and `published` when it was taken.
    listings: HashMap<String, (store::Listed, u64)>,
    /// Versions published into each model's folder by this daemon (renames that
    /// succeeded): each added one to the folder's link count.
    published: HashMap<String, u64>,
    /// `published` of each model whose job is running, as it was when the job started.
    started: HashMap<String, u64>,
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
        // A version folder goes: the link count no longer adds up, also for a job of
        // the model running now.
        self.listings.remove(name);
        self.started.remove(name);
    }

    /// A job of `name` starts: what its store folder's link count should be if nothing
    /// but this daemon's publishing changed it since the last listing.
    pub(super) fn listing_for_job(&mut self, name: &str) -> Option<store::Listed> {
        let now = self.published.get(name).copied().unwrap_or(0);
        self.started.insert(name.to_string(), now);
        let (l, then) = self.listings.get(name)?;
        Some(store::Listed {
            nlink: l.nlink + (now - then),
            highest: l.highest,
        })
    }

    /// The job of `name` ended having seen `listed`. Kept only when no version of the
    /// model was published while it ran (jobs of a model run one at a time, and the
    /// registrar publishes between them; this only guards the rule): the count taken by
    /// the job must include exactly the publishes counted so far, or a later expected
    /// count could be one too high and match a folder put there by hand.
    pub(super) fn listed(&mut self, name: &str, listed: Option<store::Listed>) {
        let now = self.published.get(name).copied().unwrap_or(0);
        match (self.started.remove(name), listed) {
            (Some(then), Some(l)) if then == now => {
                self.listings.insert(name.to_string(), (l, now));
            }
            _ => {
                self.listings.remove(name);
            }
        }
    }

    /// A version of `name` was published (renamed into its folder).
    pub(super) fn published(&mut self, name: &str) {
        *self.published.entry(name.to_string()).or_default() += 1;
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
