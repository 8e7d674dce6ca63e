//! One commit's change to the catalog as a journal record: built from what it touched, applied in one pure place.
//!
//! A [`Delta`] holds the new state of everything a commit touched, and nothing else: for
//! each touched model its highest number, its aliases, the alias moves appended since the
//! previous commit and the versions that are new or changed (a model of 100,000 versions
//! whose alias moved costs one alias map and one history entry); for each touched inbox
//! source its new record, or its removal. Applying a delta sets those states, so applying
//! one twice changes nothing more than applying it once. [`Delta::apply`] is the only code
//! that turns a record into catalog state: the journal's replay and the tests use it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{AliasMove, Catalog, Model, SourceRecord, Version};

/// What one commit changed (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delta {
    /// Its place in the journal: one more than the previous commit's.
    pub seq: u64,
    /// The touched models.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelDelta>,
    /// The touched inbox sources: the new record, or `None` for one forgotten.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sources: BTreeMap<String, Option<SourceRecord>>,
    /// The highest event seq given once this commit's events are numbered (the
    /// catalog's [`Catalog::event_seq`]); 0 (left out): unchanged.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub event_seq: u64,
}

/// Whether `n` is 0 (a field left out of the record).
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One touched model: its new state, or `None` when it is no longer in the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDelta {
    /// The model's name.
    pub name: String,
    /// What it is now.
    pub state: Option<ModelState>,
}

/// The part of a model's state one commit sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelState {
    /// The highest version number ever given.
    pub highest: u32,
    /// The aliases, all of them (a handful per model).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aliases: BTreeMap<String, u32>,
    /// How many alias moves the history held before this commit.
    pub history_from: usize,
    /// The moves this commit appended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<AliasMove>,
    /// New or changed versions, whole, with their numbers (a version's number is not
    /// among its serialised fields).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "numbered"
    )]
    pub versions: Vec<(u32, Version)>,
}

/// Versions as read back: each takes the number written beside it.
fn numbered<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(u32, Version)>, D::Error> {
    let mut vs: Vec<(u32, Version)> = Vec::deserialize(d)?;
    for (n, v) in &mut vs {
        v.number = *n;
    }
    Ok(vs)
}

/// What the registrar changed since its last commit: the keys a [`Delta`] is built from.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Touched {
    /// Models, each with the numbers of its versions that are new or changed.
    pub models: BTreeMap<String, BTreeSet<u32>>,
    /// Inbox sources added, changed or forgotten.
    pub sources: BTreeSet<String>,
}

impl Touched {
    /// Model `name` changed (aliases, history, highest, or its removal).
    pub fn model(&mut self, name: &str) {
        if !self.models.contains_key(name) {
            self.models.insert(name.to_string(), BTreeSet::new());
        }
    }

    /// Version `n` of `name` is new or changed.
    pub fn version(&mut self, name: &str, n: u32) {
        self.model(name);
        if let Some(vs) = self.models.get_mut(name) {
            vs.insert(n);
        }
    }

    /// Inbox source `entry` was recorded, changed or forgotten.
    pub fn source(&mut self, entry: &str) {
        self.sources.insert(entry.to_string());
    }

    /// Nothing was touched.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty() && self.sources.is_empty()
    }
}

impl Delta {
    /// The record taking `before` (the last committed catalog) to `after` for what
    /// `touched` names, numbered `seq`. Its size follows what was touched, not the size
    /// of a model or of the catalog.
    pub fn between(seq: u64, before: &Catalog, after: &Catalog, touched: &Touched) -> Delta {
        let mut models = Vec::new();
        for (name, numbers) in &touched.models {
            let old = before.models.get(name);
            let Some(m) = after.models.get(name) else {
                if old.is_some() {
                    models.push(ModelDelta {
                        name: name.clone(),
                        state: None,
                    });
                }
                continue;
            };
            if old.is_some_and(|o| Arc::ptr_eq(o, m)) {
                continue;
            }
            // History is only ever appended to; what the previous commit held stays.
            let history_from = old
                .map_or(0, |o| o.alias_history.len())
                .min(m.alias_history.len());
            models.push(ModelDelta {
                name: name.clone(),
                state: Some(ModelState {
                    highest: m.highest,
                    aliases: m.aliases.clone(),
                    history_from,
                    history: m.alias_history[history_from..].to_vec(),
                    versions: numbers
                        .iter()
                        .filter_map(|&n| m.find(n).map(|v| (n, v.clone())))
                        .collect(),
                }),
            });
        }
        let sources = touched
            .sources
            .iter()
            .filter(|e| before.sources.get(*e) != after.sources.get(*e))
            .map(|e| (e.clone(), after.sources.get(e).cloned()))
            .collect();
        Delta {
            seq,
            models,
            sources,
            // Set by the registrar once it knows how many events the commit makes.
            event_seq: 0,
        }
    }

    /// Whether it changes nothing (an alias set where it already pointed, a rescan that
    /// found what was known): such a commit needs no record.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty() && self.sources.is_empty()
    }

    /// Applies the record to `c`: the one place a journal record becomes catalog state.
    /// A record that does not fit `c` (an alias on a version it does not hold, history
    /// that does not line up) is refused with the reason, and `c` may be partly changed.
    pub fn apply(&self, c: &mut Catalog) -> Result<(), String> {
        for md in &self.models {
            let Some(s) = &md.state else {
                c.models.remove(&md.name);
                continue;
            };
            let m = Arc::make_mut(
                c.models
                    .entry(md.name.clone())
                    .or_insert_with(|| Arc::new(Model::default())),
            );
            if s.history_from > m.alias_history.len() {
                return Err(format!(
                    "model {}: alias history continues at move {} but holds {}",
                    md.name,
                    s.history_from,
                    m.alias_history.len()
                ));
            }
            m.alias_history.truncate(s.history_from);
            m.alias_history.extend(s.history.iter().cloned());
            for (n, v) in &s.versions {
                let v = Version {
                    number: *n,
                    ..v.clone()
                };
                match m.versions.binary_search_by_key(n, |x| x.number) {
                    Ok(i) => m.versions[i] = Arc::new(v),
                    Err(i) => m.versions.insert(i, Arc::new(v)),
                }
            }
            let top = m.versions.last().map_or(0, |v| v.number);
            if s.highest < top || s.highest < m.highest {
                return Err(format!(
                    "model {}: highest version {} is below v{}",
                    md.name,
                    s.highest,
                    top.max(m.highest)
                ));
            }
            m.highest = s.highest;
            if let Some((alias, n)) = s
                .aliases
                .iter()
                .find(|(_, n)| m.find(**n).is_none_or(|v| v.removed.is_some()))
            {
                return Err(format!(
                    "model {}: alias {alias} points to v{n}, which is not stored",
                    md.name
                ));
            }
            m.aliases = s.aliases.clone();
        }
        for (entry, record) in &self.sources {
            match record {
                Some(r) => {
                    c.sources.insert(entry.clone(), r.clone());
                }
                None => {
                    c.sources.remove(entry);
                }
            }
        }
        c.journal_seq = self.seq;
        c.event_seq = c.event_seq.max(self.event_seq);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Stamp;
    use crate::registry::tests::{model, v};

    fn stamp() -> Stamp {
        Stamp {
            at: "2026-11-27T10:00:00Z".into(),
            uid: Some(7),
        }
    }

    fn source(model: &str, n: u32) -> SourceRecord {
        SourceRecord {
            fingerprint: format!("f{n}"),
            model: model.into(),
            version: Some(n),
            sha256: None,
        }
    }

    /// A catalog with model `big` of `n` versions and one source.
    fn catalog(n: u32) -> Catalog {
        let mut c = Catalog::default();
        c.models.insert(
            "big".into(),
            Arc::new(model((1..=n).map(|i| v(i, &[("accuracy", 0.5)])).collect())),
        );
        c.sources.insert("big.pt".into(), source("big", n));
        c
    }

    fn same(a: &Catalog, b: &Catalog) -> bool {
        a.models.len() == b.models.len()
            && a.models.iter().all(|(k, m)| b.models.get(k) == Some(m))
            && a.sources == b.sources
            && a.journal_seq == b.journal_seq
    }

    /// What a commit of `change` on `before` records, checked to reproduce the result.
    fn round_trip(before: &Catalog, change: impl FnOnce(&mut Catalog, &mut Touched)) -> Delta {
        let mut after = before.clone();
        let mut touched = Touched::default();
        change(&mut after, &mut touched);
        after.journal_seq = before.journal_seq + 1;
        let d = Delta::between(before.journal_seq + 1, before, &after, &touched);
        let json = serde_json::to_string(&d).unwrap();
        let back: Delta = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
        let mut replayed = before.clone();
        back.apply(&mut replayed).unwrap();
        assert!(same(&replayed, &after), "{replayed:?}\n{after:?}");
        // Applying it again changes nothing more.
        back.apply(&mut replayed).unwrap();
        assert!(same(&replayed, &after));
        d
    }

    #[test]
    fn an_alias_move_in_a_big_model_records_only_the_move() {
        let before = catalog(10_000);
        let d = round_trip(&before, |c, t| {
            let m = Arc::make_mut(c.models.get_mut("big").unwrap());
            m.set_alias("big", "production", 9_999, &stamp()).unwrap();
            t.model("big");
        });
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.len() < 400, "{} bytes: {json}", json.len());
        let s = d.models[0].state.as_ref().unwrap();
        assert!(s.versions.is_empty());
        assert_eq!((s.history_from, s.history.len()), (0, 1));
    }

    #[test]
    fn new_versions_changed_versions_and_sources_round_trip() {
        let mut before = catalog(3);
        before.journal_seq = 41;
        let d = round_trip(&before, |c, t| {
            let m = Arc::make_mut(c.models.get_mut("big").unwrap());
            m.push(v(4, &[("accuracy", 0.9)]));
            t.version("big", 4);
            m.deprecate("big", 2, Some("leak".into()), &stamp())
                .unwrap();
            t.version("big", 2);
            c.sources.insert("big.pt".into(), source("big", 4));
            c.sources.insert("new.pt".into(), source("new", 1));
            c.sources.remove("gone.pt");
            for e in ["big.pt", "new.pt", "gone.pt"] {
                t.source(e);
            }
            let fresh = Arc::make_mut(c.models.entry("new".into()).or_default());
            fresh.push(v(1, &[]));
            t.version("new", 1);
        });
        assert_eq!(d.seq, 42);
        // An untouched-in-effect source ("gone.pt" never existed) is not recorded.
        assert_eq!(d.sources.len(), 2);
        let big = d.models.iter().find(|m| m.name == "big").unwrap();
        let numbers: Vec<u32> = big
            .state
            .as_ref()
            .unwrap()
            .versions
            .iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(numbers, [2, 4]);
    }

    #[test]
    fn removals_rollbacks_and_a_model_dropped_round_trip() {
        let mut before = catalog(5);
        let m = Arc::make_mut(before.models.get_mut("big").unwrap());
        m.set_alias("big", "p", 1, &stamp()).unwrap();
        m.set_alias("big", "p", 2, &stamp()).unwrap();
        before
            .models
            .insert("side".into(), Arc::new(model(vec![v(1, &[])])));
        round_trip(&before, |c, t| {
            let m = Arc::make_mut(c.models.get_mut("big").unwrap());
            m.roll_back("big", "p", &stamp()).unwrap();
            m.remove("big", 2, None, false, &stamp(), "rm").unwrap();
            m.remove("big", 1, None, true, &stamp(), "rm").unwrap();
            t.version("big", 2);
            t.version("big", 1);
            c.models.remove("side");
            t.model("side");
        });
    }

    #[test]
    fn a_record_that_does_not_fit_is_refused() {
        let before = catalog(2);
        let d = round_trip(&before, |c, t| {
            let m = Arc::make_mut(c.models.get_mut("big").unwrap());
            m.set_alias("big", "p", 2, &stamp()).unwrap();
            m.set_alias("big", "p", 1, &stamp()).unwrap();
            t.model("big");
        });
        // History that starts beyond what the catalog holds.
        let mut bad = d.clone();
        bad.models[0].state.as_mut().unwrap().history_from = 5;
        let e = bad.apply(&mut before.clone()).unwrap_err();
        assert!(e.contains("alias history"), "{e}");
        // An alias on a version the catalog does not hold.
        let mut bad = d.clone();
        bad.models[0]
            .state
            .as_mut()
            .unwrap()
            .aliases
            .insert("q".into(), 9);
        let e = bad.apply(&mut before.clone()).unwrap_err();
        assert!(e.contains("alias q points to v9"), "{e}");
        // A highest number below a version it holds.
        let mut bad = d;
        bad.models[0].state.as_mut().unwrap().highest = 1;
        let e = bad.apply(&mut before.clone()).unwrap_err();
        assert!(e.contains("highest"), "{e}");
    }

    #[test]
    fn an_unchanged_commit_is_empty() {
        let before = catalog(2);
        let mut t = Touched::default();
        t.model("big");
        t.source("big.pt");
        assert!(Delta::between(1, &before, &before.clone(), &t).is_empty());
    }
}
