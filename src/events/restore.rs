//! Changes the journal lost, brought back from the event log (`modelreg recover`).
//!
//! The event log is written and fsynced in the same round as each journal record, and a
//! commit is answered only once both are durable (`ingest::events`). So when the log
//! holds events of journal records that neither registry.yaml nor the journal holds, and
//! more than one such record (one may be the commit a crash interrupted, never
//! answered), the journal lost acknowledged changes: replaced by an older copy, or
//! emptied. The start refuses (`daemon::startup`), and `recover` applies those events
//! here on the catalog it rebuilt from registry.yaml, the journal and the store.
//!
//! What an event says is enough to redo every change but a registration: alias moves
//! (with their history), deprecations, metric edits, removals. A registration's version
//! comes back from the store's manifest (`store::rebuild`), which `recover` runs first;
//! an event of a version the catalog does not hold is listed as not restored.

use std::path::Path;
use std::sync::Arc;

use super::{Event, Kind, segment};
use crate::registry::{AliasMove, Catalog, Mark, MetricsChange, Model, Version};

/// The events the log in `dir` holds of journal records after `journal_seq`, oldest
/// first, read without changing anything (the start's check runs before [`super::Log::open`]
/// would drop them). None when the folder does not exist.
pub fn after_record(dir: &Path, journal_seq: u64) -> std::io::Result<Vec<Event>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out: Vec<Event> = Vec::new();
    for (_, path) in segment::list(dir)?.iter().rev() {
        let r = segment::read(path)?;
        let older = r.events.iter().any(|e| e.commit <= journal_seq);
        let mut ahead: Vec<Event> = r
            .events
            .into_iter()
            .filter(|e| e.commit > journal_seq)
            .collect();
        ahead.append(&mut out);
        out = ahead;
        if older {
            break;
        }
    }
    Ok(out)
}

/// The journal record of the newest event on disk in `dir` (read from the newest
/// segments' ends, so cheap at any size), if any: the start's first look, before
/// [`after_record`] reads whole segments.
pub fn newest_commit(dir: &Path) -> std::io::Result<Option<u64>> {
    if !dir.exists() {
        return Ok(None);
    }
    for (_, path) in segment::list(dir)?.iter().rev() {
        if let Some(e) = segment::last_event(path)? {
            return Ok(Some(e.commit));
        }
        // A last event longer than the end read (large metadata): the whole segment.
        if std::fs::metadata(path)?.len() > 0
            && let Some(e) = segment::read(path)?.events.pop()
        {
            return Ok(Some(e.commit));
        }
    }
    Ok(None)
}

/// Whether the events of records after `journal_seq` (from [`after_record`]) show that
/// the journal lost records that were durable: events of more than one record after it
/// (only the commit in flight at a crash may have its events without its record), or of
/// any record when the journal is `absent` (missing or empty, which no crash leaves: its
/// header is written before any record).
pub fn journal_lost_records(ahead: &[Event], journal_seq: u64, absent: bool) -> bool {
    let in_flight = if absent { journal_seq } else { journal_seq + 1 };
    ahead.iter().any(|e| e.commit > in_flight)
}

/// What [`restore`] did, one line per event for the person running `recover`.
#[derive(Debug, Default)]
pub struct Restored {
    /// Events whose change is in the catalog now (or already was).
    pub applied: Vec<String>,
    /// Events whose change could not be made, with the reason.
    pub skipped: Vec<String>,
}

/// Applies `events` (oldest first, from [`after_record`]) on `c`, then marks the
/// catalog as holding their records: its `journal_seq` becomes the last event's commit
/// and its `event_seq` at least the last event's seq, so that the start keeps these
/// events in the log and numbers on after them.
pub fn restore(c: &mut Catalog, events: &[Event]) -> Restored {
    let mut out = Restored::default();
    for e in events {
        match apply(c, e) {
            Ok(()) => out.applied.push(e.line().trim_start().to_string()),
            Err(why) => out
                .skipped
                .push(format!("{} — not restored: {why}", e.line().trim_start())),
        }
    }
    if let Some(last) = events.last() {
        c.journal_seq = c.journal_seq.max(last.commit);
        c.event_seq = c.event_seq.max(last.seq);
        drop_aliases_on_removed(c, last);
    }
    out
}

/// An alias left on a removed version (its removal's events not all in the log) is
/// removed, its history saying so (`by: recover`), as the catalog rules never leave one.
fn drop_aliases_on_removed(c: &mut Catalog, last: &Event) {
    for m in c.models.values_mut() {
        let gone: Vec<(String, u32)> = (m.aliases.iter())
            .filter(|(_, n)| m.find(**n).is_none_or(|v| v.removed.is_some()))
            .map(|(a, n)| (a.clone(), *n))
            .collect();
        if gone.is_empty() {
            continue;
        }
        let m = Arc::make_mut(m);
        for (a, n) in gone {
            m.aliases.remove(&a);
            m.alias_history.push(AliasMove {
                alias: a,
                from: Some(n),
                to: None,
                at: last.time.clone(),
                uid: None,
                by: "recover".into(),
            });
        }
    }
}

/// Redoes one event's change on `c`.
fn apply(c: &mut Catalog, e: &Event) -> Result<(), String> {
    let Some(m) = c.models.get_mut(&e.model) else {
        return Err(format!("the catalog holds no model {}", e.model));
    };
    let m = Arc::make_mut(m);
    let stamp = |reason: &Option<String>| Mark {
        at: e.time.clone(),
        reason: reason.clone(),
        uid: e.uid,
    };
    match e.kind {
        Kind::Registered => {
            let n = number(e)?;
            version(m, n)
                .map(|_| ())
                .map_err(|_| format!("the store holds no v{n} (its registration was not finished)"))
        }
        Kind::MetricsUpdated => {
            let v = live(m, number(e)?)?;
            let metrics = e.metrics.clone().unwrap_or_default();
            if v.metrics == metrics && e.metadata.as_ref().is_none_or(|md| *md == v.metadata) {
                return Ok(());
            }
            v.metrics_history.push(MetricsChange {
                replaced_at: e.time.clone(),
                metrics: v.metrics.clone(),
            });
            v.metrics = metrics;
            if let Some(md) = &e.metadata {
                v.metadata = md.clone();
            }
            Ok(())
        }
        Kind::AliasSet | Kind::AliasMoved | Kind::AliasRolledBack | Kind::AliasRemoved => {
            let alias = e.alias.clone().ok_or("the event names no alias")?;
            let to = e.to;
            // Held, not necessarily live: the store's rebuild marks a version removed
            // before its later removal's event comes (which drops the alias again, see
            // `drop_aliases_on_removed`).
            if let Some(n) = to {
                version(m, n)?;
            }
            if m.aliases.get(&alias).copied() == to {
                return Ok(());
            }
            let from = m.aliases.get(&alias).copied();
            match to {
                Some(n) => m.aliases.insert(alias.clone(), n),
                None => m.aliases.remove(&alias),
            };
            let by = e.by.clone().unwrap_or_else(|| {
                match e.kind {
                    Kind::AliasRolledBack => "rollback",
                    Kind::AliasRemoved => "remove",
                    _ => "set",
                }
                .to_string()
            });
            m.alias_history.push(AliasMove {
                alias,
                from,
                to,
                at: e.time.clone(),
                uid: e.uid,
                by,
            });
            Ok(())
        }
        Kind::Deprecated => {
            let v = live(m, number(e)?)?;
            v.deprecated = Some(Box::new(stamp(&e.reason)));
            Ok(())
        }
        Kind::Undeprecated => {
            live(m, number(e)?)?.deprecated = None;
            Ok(())
        }
        Kind::Removed | Kind::Gc => {
            let n = number(e)?;
            let v = version(m, n)?;
            // Named live (its files went to the trash when it was removed), or marked
            // removed by the store's rebuild, which knows neither when nor why: the
            // event does.
            if v.removed.as_ref().is_none_or(|r| r.at == "unknown") {
                v.removed = Some(Box::new(stamp(&e.reason)));
            }
            for a in m
                .aliases
                .iter()
                .filter(|(_, to)| **to == n)
                .map(|(a, _)| a.clone())
                .collect::<Vec<_>>()
            {
                m.aliases.remove(&a);
                m.alias_history.push(AliasMove {
                    alias: a,
                    from: Some(n),
                    to: None,
                    at: e.time.clone(),
                    uid: e.uid,
                    by: format!("{} --force", e.kind.name().replace("removed", "rm")),
                });
            }
            Ok(())
        }
    }
}

/// The version number an event is about.
fn number(e: &Event) -> Result<u32, String> {
    e.version
        .ok_or_else(|| "the event names no version".to_string())
}

/// Version `n` of `m`, for changing.
fn version(m: &mut Model, n: u32) -> Result<&mut Version, String> {
    let i = m
        .versions
        .binary_search_by_key(&n, |v| v.number)
        .map_err(|_| format!("the catalog holds no v{n}"))?;
    Ok(Arc::make_mut(&mut m.versions[i]))
}

/// Version `n` of `m`, not removed, for changing.
fn live(m: &mut Model, n: u32) -> Result<&mut Version, String> {
    let v = version(m, n)?;
    if v.removed.is_some() {
        return Err(format!("v{n} is removed"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tests::{model, v};

    fn event(commit: u64, seq: u64, kind: Kind) -> Event {
        let mut e = Event::new(commit, kind, "m");
        e.seq = seq;
        e.time = format!("2026-11-28T10:00:{seq:02}.000Z");
        e
    }

    fn catalog() -> Catalog {
        let mut c = Catalog::default();
        c.models
            .insert("m".into(), Arc::new(model(vec![v(1, &[]), v(2, &[])])));
        c.journal_seq = 4;
        c.event_seq = 6;
        c
    }

    #[test]
    fn only_more_than_the_record_in_flight_is_a_lost_record() {
        let one = [event(5, 7, Kind::AliasSet), event(5, 8, Kind::Deprecated)];
        assert!(!journal_lost_records(&one, 4, false));
        assert!(
            journal_lost_records(&one, 4, true),
            "no journal: no record in flight"
        );
        let two = [event(5, 7, Kind::AliasSet), event(6, 8, Kind::Deprecated)];
        assert!(journal_lost_records(&two, 4, false));
        assert!(!journal_lost_records(&[], 4, true));
    }

    #[test]
    fn alias_moves_deprecations_and_removals_are_redone_with_their_history() {
        let mut c = catalog();
        let mut set = event(5, 7, Kind::AliasSet);
        (set.alias, set.to, set.by) = (Some("prod".into()), Some(1), Some("set".into()));
        let mut moved = event(6, 8, Kind::AliasMoved);
        (moved.alias, moved.from, moved.to) = (Some("prod".into()), Some(1), Some(2));
        moved.by = Some("set".into());
        let mut dep = event(7, 9, Kind::Deprecated);
        (dep.version, dep.reason) = (Some(1), Some("bad".into()));
        let mut rm = event(8, 10, Kind::Removed);
        rm.version = Some(2);
        let mut gone = event(9, 11, Kind::AliasSet);
        (gone.alias, gone.to) = (Some("x".into()), Some(7));
        let r = restore(&mut c, &[set, moved, dep, rm, gone]);
        assert_eq!(r.applied.len(), 4, "{r:?}");
        assert_eq!(r.skipped.len(), 1, "{r:?}");
        assert!(r.skipped[0].contains("no v7"), "{r:?}");
        let m = &c.models["m"];
        assert!(m.aliases.is_empty(), "v2's removal drops prod");
        let h: Vec<_> = m
            .alias_history
            .iter()
            .map(|h| (h.from, h.to, h.by.as_str()))
            .collect();
        assert_eq!(
            h,
            [
                (None, Some(1), "set"),
                (Some(1), Some(2), "set"),
                (Some(2), None, "rm --force")
            ]
        );
        assert_eq!(
            m.find(1)
                .unwrap()
                .deprecated
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("bad")
        );
        assert!(m.find(2).unwrap().removed.is_some());
        assert_eq!((c.journal_seq, c.event_seq), (9, 11));
    }

    #[test]
    fn an_event_already_reflected_changes_nothing() {
        let mut c = catalog();
        Arc::make_mut(c.models.get_mut("m").unwrap())
            .aliases
            .insert("prod".into(), 2);
        let mut set = event(5, 7, Kind::AliasSet);
        (set.alias, set.to) = (Some("prod".into()), Some(2));
        let r = restore(&mut c, &[set]);
        assert_eq!(r.applied.len(), 1);
        assert!(c.models["m"].alias_history.is_empty());
    }
}
