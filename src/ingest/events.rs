//! A commit's events: derived, written and fsynced in the same round as its journal record.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::events::{Log, Pending, Retention, derive};
use crate::registry::{Catalog, Delta};

/// Makes record `d` durable with `durable` (the journal append, or registry.yaml whole
/// when `whole`) and its events (derived from `before`) with it. The events are written
/// first; their fsync runs beside the journal's (one round of waiting for the disk), or
/// before registry.yaml's whole write, which leaves no record to derive them from again.
/// Either way both have returned before this does, so nothing is published or answered
/// before its events are durable. A failed event write fails the commit (nothing of it
/// is durable yet); a failed event fsync after the record is durable is logged and the
/// events kept, since the change they describe was made.
pub(super) fn durable_with<F>(
    log: Option<&Log>,
    config: &Config,
    before: &Catalog,
    d: &Delta,
    whole: bool,
    durable: F,
) -> ((Result<()>, bool, bool), Option<Pending>)
where
    F: FnOnce() -> (Result<()>, bool, bool),
{
    let Some(log) = log else {
        return (durable(), None);
    };
    let pending = match log.write(derive(before, d), &Retention::of(&config.events)) {
        Ok(p) => p,
        Err(e) => {
            let e = Error::io("append to the event log", log.dir(), e);
            return ((Err(e), false, whole), None);
        }
    };
    // The record carries the mark its events end at (`Registrar::record`).
    debug_assert!(
        pending.events().last().is_none_or(|e| e.seq == d.event_seq),
        "record {} marks event {} but its events end elsewhere",
        d.seq,
        d.event_seq
    );
    if pending.events().is_empty() {
        return (durable(), Some(pending));
    }
    let dir = log.dir().to_path_buf();
    let seq = d.seq;
    let synced = move |p: &Pending| {
        p.sync(&dir).map_err(|e| {
            tracing::error!(events = %dir.display(), "fsync of the event log (record {seq}): {e}");
        })
    };
    if whole {
        if synced(&pending).is_err() {
            log.abandon(pending);
            let e = Error::Other(format!(
                "fsync of the event log {} failed",
                log.dir().display()
            ));
            return ((Err(e), false, whole), None);
        }
        return (durable(), Some(pending));
    }
    // On one of the store's kept fsync threads, beside the journal's: a thread started
    // per commit cost more than the fsync itself on a busy machine (docs/benchmarks.md).
    let sync = crate::store::beside(move || {
        let _ = synced(&pending);
        pending
    });
    let r = durable();
    (r, Some(sync.wait()))
}
