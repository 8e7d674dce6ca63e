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
    let synced = |p: &Pending| {
        p.sync(log.dir()).map_err(|e| {
            tracing::error!(events = %log.dir().display(), "fsync of the event log (record {}): {e}", d.seq);
        })
    };
    let r = if pending.events().is_empty() {
        durable()
    } else if whole {
        if synced(&pending).is_err() {
            log.abandon(pending);
            let e = Error::Other(format!(
                "fsync of the event log {} failed",
                log.dir().display()
            ));
            return ((Err(e), false, whole), None);
        }
        durable()
    } else {
        std::thread::scope(|s| {
            let t = s.spawn(|| synced(&pending));
            let r = durable();
            let _ = t.join();
            r
        })
    };
    (r, Some(pending))
}
