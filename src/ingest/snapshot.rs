//! The catalog each commit publishes, made in time proportional to what changed.
//!
//! Readers hold the published catalog as an `Arc` snapshot. Copying the registrar's
//! catalog whole for each commit cost time in proportion to the registry — its map of
//! models and of inbox sources, ~1.5 ms per commit at 15,000 models, most of a
//! 1,000-file burst into 100,000 versions (`perf`: `BTreeMap` clone and drop 16% of the
//! daemon's samples). Instead the snapshot published two commits ago, once no reader
//! holds it any more, is brought up to date in place with the models and sources the
//! last two batches touched (the same keys a journal record is built from, which the
//! test builds check cover every change) and published again; while a reader still
//! holds it (a long `list`, registry.yaml's coalesced write) the commit copies whole,
//! as before.

use std::sync::Arc;

use super::Registrar;
use crate::registry::{Catalog, Touched};

/// The snapshot published before the current one, kept for reuse, and what the batch
/// after it changed.
#[derive(Debug, Default)]
pub(super) struct Spare(Option<(Arc<Catalog>, Touched)>);

impl Registrar {
    /// The catalog to publish for a commit whose batch changed `changed`.
    pub(super) fn next_snapshot(&mut self, changed: &Touched) -> Arc<Catalog> {
        if let Some((mut spare, since)) = self.spare.0.take()
            && let Some(c) = Arc::get_mut(&mut spare)
        {
            for name in since.models.keys().chain(changed.models.keys()) {
                match self.catalog.models.get(name) {
                    Some(m) => c.models.insert(name.clone(), m.clone()),
                    None => c.models.remove(name),
                };
            }
            for entry in since.sources.iter().chain(&changed.sources) {
                match self.catalog.sources.get(entry) {
                    Some(s) => c.sources.insert(entry.clone(), s.clone()),
                    None => c.sources.remove(entry),
                };
            }
            c.journal_seq = self.catalog.journal_seq;
            c.event_seq = self.catalog.event_seq;
            // In test builds, every reused snapshot is checked to equal the catalog.
            #[cfg(debug_assertions)]
            assert!(
                c.models == self.catalog.models && c.sources == self.catalog.sources,
                "a reused snapshot differs from the catalog after {since:?} and {changed:?}"
            );
            return spare;
        }
        Arc::new(self.catalog.clone())
    }

    /// Keeps `previous` (the snapshot a publication replaced) for the next commit, with
    /// `changed`, what the published one changed from it.
    pub(super) fn keep_spare(&mut self, previous: Arc<Catalog>, changed: Touched) {
        self.spare.0 = Some((previous, changed));
    }
}
