//! Events from one commit: the catalog before it and its journal record, compared (pure).

use crate::registry::{Catalog, Delta, Version};

use super::{Event, Kind};

/// The reason `gc` gives the versions it removes starts so (see `ingest::changes`).
const GC_REASON: &str = "gc:";

/// The events of commit `d` applied to `before` (the catalog as the previous commit
/// left it), unnumbered (`seq` 0, no time), in a fixed order: per model (by name) its
/// alias moves in the order they were made, then per version (by number) what changed
/// on it. The record holds each touched model's new state, so nothing else is needed:
/// the same function serves the commit and the replay of the journal at start.
pub fn derive(before: &Catalog, d: &Delta) -> Vec<Event> {
    let mut out = Vec::new();
    for md in &d.models {
        let old = before.models.get(&md.name);
        let Some(state) = &md.state else {
            // A model leaves the catalog only when it holds no version (a sidecar with
            // no artifact): nothing a reader was told about goes with it.
            continue;
        };
        // Alias moves: the history is only appended to, and the record holds what this
        // commit appended. `rm --force` and `gc` drop aliases before the removal below.
        for h in &state.history {
            let kind = match (h.by.as_str(), h.from, h.to) {
                ("rollback", _, _) => Kind::AliasRolledBack,
                (_, _, None) => Kind::AliasRemoved,
                (_, None, Some(_)) => Kind::AliasSet,
                (_, Some(_), Some(_)) => Kind::AliasMoved,
            };
            let mut e = Event::new(d.seq, kind, &md.name);
            e.alias = Some(h.alias.clone());
            e.from = h.from;
            e.to = h.to;
            e.version = h.to;
            e.by = Some(h.by.clone());
            e.uid = h.uid;
            out.push(e);
        }
        for (n, v) in &state.versions {
            let was = old.and_then(|m| m.find(*n));
            version_events(&mut out, d.seq, &md.name, *n, was, v);
        }
    }
    out
}

/// What changed on version `n`: `was` (none: new) against `now`.
fn version_events(
    out: &mut Vec<Event>,
    commit: u64,
    model: &str,
    n: u32,
    was: Option<&Version>,
    now: &Version,
) {
    let mut push = |kind: Kind, f: &dyn Fn(&mut Event)| {
        let mut e = Event::new(commit, kind, model);
        e.version = Some(n);
        f(&mut e);
        out.push(e);
    };
    let metrics = |e: &mut Event| e.metrics = Some(now.metrics.clone());
    match was {
        None if now.removed.is_none() => push(Kind::Registered, &|e| {
            metrics(e);
            e.metadata = (!now.metadata.is_empty()).then(|| now.metadata.clone());
        }),
        None => {}
        Some(was) => {
            if (was.metrics != now.metrics || was.metadata != now.metadata) && now.removed.is_none()
            {
                push(Kind::MetricsUpdated, &|e| {
                    metrics(e);
                    e.metadata = (was.metadata != now.metadata).then(|| now.metadata.clone());
                });
            }
            match (&was.deprecated, &now.deprecated) {
                (None, Some(m)) => push(Kind::Deprecated, &|e| {
                    e.reason = m.reason.clone();
                    e.uid = m.uid;
                }),
                (Some(_), None) => push(Kind::Undeprecated, &|_| {}),
                _ => {}
            }
            if let (None, Some(m)) = (&was.removed, &now.removed) {
                let gc = m
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with(GC_REASON));
                let kind = if gc { Kind::Gc } else { Kind::Removed };
                push(kind, &|e| {
                    e.reason = m.reason.clone();
                    e.uid = m.uid;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::registry::Touched;
    use crate::registry::tests::{model, stamp, v};

    /// The events of `change` made on `before`, as the registrar would commit it.
    fn events(before: &Catalog, change: impl FnOnce(&mut Catalog, &mut Touched)) -> Vec<Event> {
        let mut after = before.clone();
        let mut t = Touched::default();
        change(&mut after, &mut t);
        let d = Delta::between(before.journal_seq + 1, before, &after, &t);
        derive(before, &d)
    }

    fn kinds(es: &[Event]) -> Vec<(Kind, Option<u32>)> {
        es.iter().map(|e| (e.kind, e.version)).collect()
    }

    fn catalog() -> Catalog {
        let mut c = Catalog::default();
        c.models.insert(
            "m".into(),
            Arc::new(model(vec![v(1, &[("acc", 0.5)]), v(2, &[("acc", 0.6)])])),
        );
        c.journal_seq = 9;
        c
    }

    fn m(c: &mut Catalog) -> &mut crate::registry::Model {
        Arc::make_mut(c.models.get_mut("m").unwrap())
    }

    #[test]
    fn a_new_version_is_registered_with_its_metrics() {
        let es = events(&catalog(), |c, t| {
            m(c).push(v(3, &[("acc", 0.9)]));
            t.version("m", 3);
            let fresh = Arc::make_mut(c.models.entry("n".into()).or_default());
            fresh.push(v(1, &[]));
            t.version("n", 1);
        });
        assert_eq!(
            kinds(&es),
            [(Kind::Registered, Some(3)), (Kind::Registered, Some(1))]
        );
        assert_eq!(es[0].commit, 10);
        assert_eq!(es[0].metrics.as_ref().unwrap().get("acc"), Some(&0.9));
        assert_eq!(es[1].model, "n");
    }

    #[test]
    fn metrics_deprecation_and_removals_are_told_apart() {
        let mut before = catalog();
        m(&mut before).push(v(3, &[]));
        let es = events(&before, |c, t| {
            let v3 = Arc::make_mut(m(c).versions.last_mut().unwrap());
            v3.update_metrics(v(0, &[("acc", 0.7)]).metrics, Default::default(), "now");
            t.version("m", 3);
            m(c).deprecate("m", 1, Some("leak".into()), &stamp())
                .unwrap();
            t.version("m", 1);
            m(c).remove(
                "m",
                2,
                Some("gc: keep_last 1".into()),
                false,
                &stamp(),
                "gc",
            )
            .unwrap();
            t.version("m", 2);
        });
        assert_eq!(
            kinds(&es),
            [
                (Kind::Deprecated, Some(1)),
                (Kind::Gc, Some(2)),
                (Kind::MetricsUpdated, Some(3))
            ]
        );
        assert_eq!(es[0].reason.as_deref(), Some("leak"));
        assert_eq!(es[0].uid, Some(7));
        assert_eq!(es[2].metadata, None, "metrics alone changed");
    }

    #[test]
    fn a_metadata_edit_says_the_metadata() {
        let mut before = catalog();
        m(&mut before).push(v(3, &[("acc", 0.5)]));
        let notes: crate::registry::Metadata = [("notes".to_string(), serde_json::json!("x"))]
            .into_iter()
            .collect();
        let es = events(&before, |c, t| {
            let v3 = Arc::make_mut(m(c).versions.last_mut().unwrap());
            v3.update_metrics(Default::default(), notes.clone(), "now");
            t.version("m", 3);
        });
        assert_eq!(kinds(&es), [(Kind::MetricsUpdated, Some(3))]);
        assert_eq!(es[0].metadata.as_ref(), Some(&notes));
        assert_eq!(es[0].metrics.as_ref().unwrap().get("acc"), Some(&0.5));
    }

    #[test]
    fn alias_moves_come_in_the_order_they_were_made() {
        let mut before = catalog();
        m(&mut before).set_alias("m", "prod", 1, &stamp()).unwrap();
        let es = events(&before, |c, t| {
            let m = m(c);
            m.set_alias("m", "prod", 2, &stamp()).unwrap();
            m.roll_back("m", "prod", &stamp()).unwrap();
            m.set_alias("m", "staging", 2, &stamp()).unwrap();
            m.remove_alias("m", "staging", &stamp()).unwrap();
            m.remove("m", 1, None, true, &stamp(), "rm").unwrap();
            t.version("m", 1);
        });
        let got: Vec<_> = es
            .iter()
            .map(|e| (e.kind, e.alias.clone(), e.from, e.to))
            .collect();
        let a = |s: &str| Some(s.to_string());
        assert_eq!(
            got,
            [
                (Kind::AliasMoved, a("prod"), Some(1), Some(2)),
                (Kind::AliasRolledBack, a("prod"), Some(2), Some(1)),
                (Kind::AliasSet, a("staging"), None, Some(2)),
                (Kind::AliasRemoved, a("staging"), Some(2), None),
                (Kind::AliasRemoved, a("prod"), Some(1), None),
                (Kind::Removed, None, None, None),
            ]
        );
        assert_eq!(es[4].by.as_deref(), Some("rm --force"));
    }

    #[test]
    fn a_commit_of_sources_only_makes_no_event() {
        let es = events(&catalog(), |c, t| {
            c.sources.insert(
                "x.pt".into(),
                crate::registry::SourceRecord {
                    fingerprint: "f".into(),
                    model: "m".into(),
                    version: Some(2),
                    sha256: None,
                },
            );
            t.source("x.pt");
        });
        assert!(es.is_empty());
    }
}
