//! The event log: every change to the catalog as a numbered event, kept durably in `<root>/events/`.
//!
//! # What an event is
//! One commit of the registrar (one journal record, [`crate::registry::Delta`]) becomes
//! zero or more [`Event`]s: a version registered, its metrics updated, an alias set,
//! moved, rolled back or removed, a version deprecated, removed or removed by gc. They
//! are derived in one place, [`derive`], from the catalog before the commit and the
//! commit's record, so a change reads the same whether it came from the inbox, a
//! hand-over, the socket or HTTP. docs/events.md is the reference for the schema.
//!
//! # Numbering and durability
//! Each event gets the next `seq` (1, 2, ...; never reused, kept across restarts) and
//! the journal record number it came from (`commit`). The registrar writes a commit's
//! events ([`Log::write`]) in the commit's blocking step and fsyncs them
//! ([`Pending::sync`]) in the same round as the journal record, before the snapshot is
//! published or anything is answered; only then does [`Log::commit`] make them
//! visible. A commit that fails is taken back ([`Log::abandon`]): its events are cut
//! off and never seen. At start ([`Log::open`]) events of a commit the catalog does not
//! hold (their record was not durable) are dropped, a torn tail is cut off with a
//! warning, a damaged line elsewhere is skipped (never cut; the file is kept aside as
//! `<name>.damaged`), and the daemon re-derives the events of journal records that have
//! none ([`derive`] on the replay, see `daemon::startup`). The catalog's `event_seq` (each
//! journal record carries it) is the highest seq ever given: a log that ends before it
//! lost events, and [`Log::continue_after`] numbers on after it, never reusing a seq.
//!
//! # Reading (for subscribers: the socket's `events`, phase 2's hooks, webhooks, SSE)
//! - [`Log::read`]`(from, max)`: committed events with `seq >= from`, oldest first, at
//!   most `max`; [`ReadError::Compacted`] (with the first retained seq) when `from` was
//!   compacted away, [`ReadError::Missing`] at a hole in the log (after the events
//!   before it), [`ReadError::Ahead`] past the end: a reader never skips a gap silently.
//! - [`Log::first`] / [`Log::last`]: the first retained and the last committed seq.
//! - [`Log::subscribe`]: a `tokio::sync::watch::Receiver<u64>` of the last committed
//!   seq; it changes after every commit that made events, so a follower waits on
//!   `changed()` and then reads from its next seq. Recent events are served from memory.
//!
//! # Compaction
//! The log is a folder of NDJSON segments named by their first seq; whole segments are
//! dropped, oldest first and never the one being written, once older than `max_age` or
//! while the folder is over `max_bytes` ([`Retention`], config `events:`).

mod derive;
mod log;
mod restore;
mod segment;
mod source;

pub use derive::derive;
pub use log::{Log, Pending, ReadError, Retention};
pub use restore::{Restored, after_record, journal_lost_records, newest_commit, restore};
pub use source::{ReadFuture, Remote, Source};

use serde::{Deserialize, Serialize};

use crate::registry::Metrics;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A new version (inbox, hand-over, upload).
    Registered,
    /// A stored version's metrics changed (a sidecar written again).
    MetricsUpdated,
    /// An alias that did not exist now points at a version.
    AliasSet,
    /// An alias moved from one version to another.
    AliasMoved,
    /// An alias moved back to where it was before its last move (`rollback`).
    AliasRolledBack,
    /// An alias was removed (`alias rm`, or dropped by `rm --force`).
    AliasRemoved,
    /// A version was hidden from latest and best.
    Deprecated,
    /// A version is no longer deprecated.
    Undeprecated,
    /// A version was removed (`rm`): a tombstone, its files deleted.
    Removed,
    /// A version was removed by retention (`gc`).
    Gc,
}

impl Kind {
    /// Every kind, in the order of docs/events.md.
    pub const ALL: [Kind; 10] = [
        Kind::Registered,
        Kind::MetricsUpdated,
        Kind::AliasSet,
        Kind::AliasMoved,
        Kind::AliasRolledBack,
        Kind::AliasRemoved,
        Kind::Deprecated,
        Kind::Undeprecated,
        Kind::Removed,
        Kind::Gc,
    ];

    /// Its name on the wire (`registered`, `alias_set`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Registered => "registered",
            Kind::MetricsUpdated => "metrics_updated",
            Kind::AliasSet => "alias_set",
            Kind::AliasMoved => "alias_moved",
            Kind::AliasRolledBack => "alias_rolled_back",
            Kind::AliasRemoved => "alias_removed",
            Kind::Deprecated => "deprecated",
            Kind::Undeprecated => "undeprecated",
            Kind::Removed => "removed",
            Kind::Gc => "gc",
        }
    }

    /// The kind named `s`, if any.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// One change to the catalog (see the module docs and docs/events.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Its number in the log: one more than the previous event's, never reused.
    pub seq: u64,
    /// When it was logged (RFC 3339, UTC, milliseconds).
    pub time: String,
    /// The journal record (commit) it came from.
    pub commit: u64,
    /// What happened.
    pub kind: Kind,
    /// The model.
    pub model: String,
    /// The version concerned (for alias kinds: where the alias points now, if anywhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// The alias, for alias kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Where the alias pointed before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u32>,
    /// Where the alias points now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u32>,
    /// The operation that moved an alias (`set`, `rollback`, `remove`, `rm --force`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The reason given (deprecate, rm, gc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The uid of the client that asked, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The version's metrics (registered, metrics_updated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    /// The version's metadata (registered: when it has any; metrics_updated: when the
    /// metadata changed, empty if it was cleared): a sidecar edit of `notes` alone made
    /// a metrics_updated event that did not say what changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<crate::registry::Metadata>,
}

impl Event {
    /// An event of `kind` on `model` from commit `commit`, not yet numbered.
    pub fn new(commit: u64, kind: Kind, model: &str) -> Event {
        Event {
            seq: 0,
            time: String::new(),
            commit,
            kind,
            model: model.to_string(),
            version: None,
            alias: None,
            from: None,
            to: None,
            by: None,
            reason: None,
            uid: None,
            metrics: None,
            metadata: None,
        }
    }

    /// One line of text for a terminal: `seq time kind model vN detail`.
    pub fn line(&self) -> String {
        let mut s = format!(
            "{:>6}  {}  {:<17}  {}",
            self.seq,
            self.time,
            self.kind.name(),
            self.model
        );
        if let Some(v) = self.version {
            s.push_str(&format!(" v{v}"));
        }
        if let Some(a) = &self.alias {
            let at = |n: Option<u32>| n.map_or("-".to_string(), |n| format!("v{n}"));
            s.push_str(&format!(" {a}: {} -> {}", at(self.from), at(self.to)));
        }
        if let Some(r) = &self.reason {
            s.push_str(&format!(" ({r})"));
        }
        s
    }
}

/// Which events a reader wants: by model (exact name, or a glob with `*` and `?`) and
/// by kind (none given: all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Model names or globs; empty: every model.
    pub models: Vec<String>,
    /// Kinds; empty: every kind.
    pub kinds: Vec<Kind>,
}

impl Filter {
    /// Whether `e` passes.
    pub fn matches(&self, e: &Event) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&e.kind))
            && (self.models.is_empty() || self.models.iter().any(|p| glob(p, &e.model)))
    }
}

/// Whether `name` matches `pattern`, where `*` is any run of characters and `?` one.
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // The classic two-pointer match with one backtrack point: linear for one `*`.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_names() {
        assert!(glob("resnet*", "resnet18"));
        assert!(glob("res?et18", "resnet18"));
        assert!(glob("*", ""));
        assert!(glob("bert", "bert"));
        assert!(!glob("bert", "berta"));
        assert!(!glob("*net", "resnet18"));
        assert!(glob("*net*", "resnet18"));
    }

    #[test]
    fn kinds_round_trip_by_name() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.name()), Some(k));
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.name()));
        }
        assert_eq!(Kind::parse("nope"), None);
    }
}
