//! Importing a local registry's models into the catalog (`modelreg migrate`): numbers, tombstones, aliases and their history kept; re-running adds only what is missing.
//!
//! [`plan_import`] compares what the catalog holds of a model with the local one and says
//! what to add, or why the two cannot be joined ([`ImportConflict`]): the catalog may hold
//! an earlier state of the same registry (a migration cut short, or run before the last
//! registrations), never anything else. [`CatalogDb::import_model`] plans again under the
//! model's row lock and writes the difference in one transaction, so a model is either
//! imported whole or not at all, and a second run over the same registry writes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio_postgres::Client;

use super::CatalogDb;
use super::error::{CatalogDbError, sql};
use super::read::read_models;
use super::write::{begin, commit, history, insert_files, insert_tombstone, log_change, refused};
use crate::registry::{AliasMove, Model, Stamp, Version};

/// What importing one model changes in the catalog ([`plan_import`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportPlan {
    /// Versions the catalog lacks, live and removed, in ascending number.
    pub add: Vec<Arc<Version>>,
    /// Versions the catalog already holds exactly as here.
    pub unchanged: usize,
    /// The model's `highest` after the import (covers removed numbers: never reused).
    pub highest: u32,
    /// Alias moves the catalog lacks (the tail of the local history), oldest first.
    pub moves: Vec<AliasMove>,
    /// Aliases to set or move: name, version number.
    pub set_aliases: Vec<(String, u32)>,
    /// Aliases the catalog has and this registry no longer has.
    pub remove_aliases: Vec<String>,
    /// The model is not in the catalog yet.
    pub new_model: bool,
}

impl ImportPlan {
    /// True when the catalog already holds the model exactly as here.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty()
            && self.moves.is_empty()
            && self.set_aliases.is_empty()
            && self.remove_aliases.is_empty()
            && !self.new_model
    }
}

/// Why a model cannot be imported: the catalog holds other data for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("model {model}: {what}")]
pub struct ImportConflict {
    /// The model.
    pub model: String,
    /// What differs, naming the version or the alias move.
    pub what: String,
}

/// What [`CatalogDb::import_model`] wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Imported {
    /// What was planned (and written) under the model's row lock.
    pub plan: ImportPlan,
    /// The last change seq written (`None`: nothing to write).
    pub seq: Option<u64>,
}

/// What importing local model `want` into a catalog that holds `have` of it (`None`: not
/// at all) would write. The catalog must hold an earlier state of the same model: each of
/// its versions identical to the local one of that number, its alias history a prefix of
/// the local one, its `highest` not above the local one; anything else is a conflict
/// naming the version or move that differs (another registry's model of the same name,
/// versions registered in team mode since, or a local version changed after it was
/// migrated).
pub fn plan_import(
    name: &str,
    have: Option<&Model>,
    want: &Model,
) -> Result<ImportPlan, ImportConflict> {
    let conflict = |what: String| ImportConflict {
        model: name.to_string(),
        what,
    };
    let empty = Model::default();
    let have_model = have.unwrap_or(&empty);
    if have_model.highest > want.highest {
        return Err(conflict(format!(
            "the catalog has given version numbers up to v{}, this registry only up to v{}: it holds other versions of this model",
            have_model.highest, want.highest
        )));
    }
    let local: BTreeMap<u32, &Arc<Version>> = want.versions.iter().map(|v| (v.number, v)).collect();
    let mut unchanged = 0;
    for v in &have_model.versions {
        match local.get(&v.number) {
            None => {
                return Err(conflict(format!(
                    "the catalog has v{}, which this registry does not have: it holds other versions of this model",
                    v.number
                )));
            }
            Some(mine) if ***mine != **v => {
                return Err(conflict(format!(
                    "v{} in the catalog differs from this registry's v{} ({}): it holds another version under that number",
                    v.number,
                    v.number,
                    differing_fields(v, mine)
                )));
            }
            Some(_) => unchanged += 1,
        }
    }
    let present: std::collections::BTreeSet<u32> =
        have_model.versions.iter().map(|v| v.number).collect();
    let add: Vec<Arc<Version>> = want
        .versions
        .iter()
        .filter(|v| !present.contains(&v.number))
        .cloned()
        .collect();
    let done = have_model.alias_history.len();
    if let Some(i) = (0..done.min(want.alias_history.len()))
        .find(|&i| have_model.alias_history[i] != want.alias_history[i])
        .or((done > want.alias_history.len()).then_some(want.alias_history.len()))
    {
        return Err(conflict(format!(
            "alias move {} in the catalog ({}) is not this registry's ({}): the alias histories differ",
            i + 1,
            describe_move(have_model.alias_history.get(i)),
            describe_move(want.alias_history.get(i)),
        )));
    }
    let moves = want.alias_history[done..].to_vec();
    if moves.is_empty() && have_model.aliases != want.aliases {
        return Err(conflict(format!(
            "its aliases in the catalog ({:?}) are not this registry's ({:?}) though their histories are the same",
            have_model.aliases, want.aliases
        )));
    }
    let set_aliases = want
        .aliases
        .iter()
        .filter(|(a, n)| have_model.aliases.get(*a) != Some(n))
        .map(|(a, n)| (a.clone(), *n))
        .collect();
    let remove_aliases = have_model
        .aliases
        .keys()
        .filter(|a| !want.aliases.contains_key(*a))
        .cloned()
        .collect();
    Ok(ImportPlan {
        add,
        unchanged,
        highest: want.highest,
        moves,
        set_aliases,
        remove_aliases,
        new_model: have.is_none(),
    })
}

/// The top-level fields of two versions' records that differ (`files, registered_at`).
fn differing_fields(a: &Version, b: &Version) -> String {
    let (a, b) = (
        serde_json::to_value(a).unwrap_or_default(),
        serde_json::to_value(b).unwrap_or_default(),
    );
    let empty = serde_json::Map::new();
    let (a, b) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let differ: Vec<&str> = keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| k.as_str())
        .collect();
    if differ.is_empty() {
        "their records differ".into()
    } else {
        format!("differing: {}", differ.join(", "))
    }
}

/// `production: v2 -> v3 (set, at ...)`, or `none` past the end of a history.
fn describe_move(m: Option<&AliasMove>) -> String {
    let n = |n: Option<u32>| n.map_or("none".to_string(), |n| format!("v{n}"));
    m.map_or("none".into(), |m| {
        format!(
            "{}: {} -> {} ({}, at {})",
            m.alias,
            n(m.from),
            n(m.to),
            m.by,
            m.at
        )
    })
}

impl CatalogDb {
    /// Numbers the catalog's events on after `seq` (a local registry's highest event
    /// seq, `migrate` moving it): raises `log_head.event_seq` to `seq` while the
    /// catalog's event log holds no event yet, so that the migrating host's subscribers
    /// see the numbers go on rather than start again at 1 (the events up to `seq` are,
    /// for the team's log, compacted away). Returns whether it raised it; a catalog
    /// that already logged events (hosts work on it) is left alone, since raising it then
    /// would leave a hole in its log.
    pub async fn continue_events_after(&mut self, seq: u64) -> Result<bool, CatalogDbError> {
        self.run(
            "numbering events on",
            async |client: &mut Client, server: &str| {
                let n = client
                    .execute(
                        "UPDATE log_head SET event_seq = $1
                         WHERE event_seq < $1 AND NOT EXISTS (SELECT 1 FROM events)",
                        &[&(seq as i64)],
                    )
                    .await
                    .map_err(sql(server, format!("numbering events on after {seq}")))?;
                Ok(n == 1)
            },
        )
        .await
    }

    /// Imports local model `want` as `name`, recorded as coming from `host`: under the
    /// model's row lock, [`plan_import`] against what the catalog holds, then the missing
    /// versions (a removed one with its tombstone and no files rows), `highest`, the
    /// missing alias moves and the aliases, and a change row for each, in one
    /// transaction. A conflict is [`CatalogDbError::Refused`] naming the model and what
    /// differs; nothing is written then.
    pub async fn import_model(
        &mut self,
        name: &str,
        want: &Model,
        host: &str,
    ) -> Result<Imported, CatalogDbError> {
        self.run(
            "importing a model",
            async |client: &mut Client, server: &str| {
                let tx = begin(client, server).await?;
                // Its files rows are not decided on by a blob collector meanwhile.
                super::orphans::share_blobs_lock(&tx, server).await?;
                let locked = tx
                    .query_opt(
                        "SELECT highest FROM models WHERE name = $1 FOR UPDATE",
                        &[&name],
                    )
                    .await
                    .map_err(sql(server, format!("locking model {name}")))?;
                let have = match locked {
                    Some(_) => read_models(&tx, server, Some(name), None)
                        .await?
                        .remove(name),
                    None => None,
                };
                let plan = plan_import(name, have.as_deref(), want)
                    .map_err(|c| refused(server, c.to_string()))?;
                if plan.is_empty() {
                    return Ok(Imported { plan, seq: None });
                }
                let highest = plan.highest as i32;
                tx.execute(
                    "INSERT INTO models (name, highest) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET highest = EXCLUDED.highest",
                    &[&name, &highest],
                )
                .await
                .map_err(sql(server, format!("writing model {name}")))?;
                // Change rows come last (the log head's lock is taken by the first of them).
                let mut changes: Vec<(&str, Option<i32>, Option<&str>)> = Vec::new();
                for v in &plan.add {
                    insert_version(&tx, server, name, v, host).await?;
                    let kind = if v.removed.is_some() {
                        "version_removed"
                    } else {
                        "version"
                    };
                    changes.push((kind, Some(v.number as i32), None));
                }
                for m in &plan.moves {
                    let (from, to) = (m.from.map(|n| n as i32), m.to.map(|n| n as i32));
                    let stamp = Stamp {
                        at: m.at.clone(),
                        uid: m.uid,
                    };
                    history(&tx, server, name, &m.alias, from, to, &stamp, &m.by, host).await?;
                }
                for a in &plan.remove_aliases {
                    tx.execute(
                        "DELETE FROM aliases WHERE model = $1 AND alias = $2",
                        &[&name, a],
                    )
                    .await
                    .map_err(sql(server, format!("removing alias {a} of {name}")))?;
                    changes.push(("alias_removed", None, Some(a)));
                }
                for (a, n) in &plan.set_aliases {
                    let n = *n as i32;
                    tx.execute(
                        "INSERT INTO aliases (model, alias, number) VALUES ($1, $2, $3)
                     ON CONFLICT (model, alias) DO UPDATE SET number = EXCLUDED.number",
                        &[&name, a, &n],
                    )
                    .await
                    .map_err(sql(server, format!("setting alias {a} of {name}")))?;
                    changes.push(("alias_set", Some(n), Some(a)));
                }
                let mut seq = None;
                for (kind, number, alias) in changes {
                    seq =
                        Some(log_change(&tx, server, host, kind, name, number, alias, &[]).await?);
                }
                commit(tx, server).await?;
                Ok(Imported { plan, seq })
            },
        )
        .await
    }
}

/// One version's rows: the version (state from its `removed` mark), its files when live,
/// its tombstone when removed.
async fn insert_version(
    tx: &tokio_postgres::Transaction<'_>,
    server: &str,
    model: &str,
    v: &Version,
    host: &str,
) -> Result<(), CatalogDbError> {
    let n = v.number as i32;
    let number = v.number;
    let record = serde_json::to_value(v).expect("a version serialises");
    let state = if v.removed.is_some() {
        "removed"
    } else {
        "live"
    };
    tx.execute(
        "INSERT INTO versions (model, number, host, state, record) VALUES ($1, $2, $3, $4, $5)",
        &[&model, &n, &host, &state, &record],
    )
    .await
    .map_err(sql(server, format!("inserting {model} v{number}")))?;
    match &v.removed {
        None => insert_files(tx, server, model, v).await,
        Some(mark) => insert_tombstone(tx, server, model, number, mark, host).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Mark, StoredFile};

    fn version(n: u32, sha: char) -> Arc<Version> {
        Arc::new(Version {
            number: n,
            kind: Default::default(),
            files: vec![StoredFile {
                path: format!("models/m/v{n}/m.pt"),
                sha256: sha.to_string().repeat(64),
                size: 3,
            }],
            source: "pretrained_models/m.pt".into(),
            registered_at: "2026-11-28T00:00:00Z".into(),
            metrics: Default::default(),
            metadata: Default::default(),
            metric_sources: Default::default(),
            extracted: Default::default(),
            provenance: Default::default(),
            sidecar: None,
            metrics_history: Vec::new(),
            deprecated: None,
            removed: None,
        })
    }

    fn moved(alias: &str, from: Option<u32>, to: Option<u32>) -> AliasMove {
        AliasMove {
            alias: alias.into(),
            from,
            to,
            at: "2026-11-28T00:00:01Z".into(),
            uid: Some(1000),
            by: "set".into(),
        }
    }

    fn model(versions: Vec<Arc<Version>>, moves: Vec<AliasMove>) -> Model {
        let mut aliases = BTreeMap::new();
        for m in &moves {
            match m.to {
                Some(n) => aliases.insert(m.alias.clone(), n),
                None => aliases.remove(&m.alias),
            };
        }
        Model {
            highest: versions.iter().map(|v| v.number).max().unwrap_or(0),
            versions,
            aliases,
            alias_history: moves,
        }
    }

    #[test]
    fn an_earlier_state_of_the_same_model_is_completed() {
        let mut removed = (*version(2, 'b')).clone();
        removed.removed = Some(Box::new(Mark {
            at: "t".into(),
            reason: Some("bad".into()),
            uid: None,
        }));
        let want = model(
            vec![version(1, 'a'), Arc::new(removed), version(3, 'c')],
            vec![
                moved("prod", None, Some(1)),
                moved("prod", Some(1), Some(3)),
            ],
        );
        let fresh = plan_import("m", None, &want).unwrap();
        assert!(fresh.new_model);
        assert_eq!(fresh.add.len(), 3);
        assert_eq!(fresh.highest, 3);
        assert_eq!(fresh.moves.len(), 2);
        assert_eq!(fresh.set_aliases, vec![("prod".to_string(), 3)]);
        let have = model(vec![version(1, 'a')], vec![moved("prod", None, Some(1))]);
        let rest = plan_import("m", Some(&have), &want).unwrap();
        assert_eq!(
            rest.add.iter().map(|v| v.number).collect::<Vec<_>>(),
            [2, 3]
        );
        assert_eq!((rest.unchanged, rest.moves.len()), (1, 1));
        assert!(plan_import("m", Some(&want), &want).unwrap().is_empty());
    }

    #[test]
    fn other_data_under_the_same_name_is_a_conflict_naming_it() {
        let want = model(vec![version(1, 'a'), version(2, 'b')], vec![]);
        let other = model(vec![version(1, 'a'), version(2, 'f')], vec![]);
        let e = plan_import("m", Some(&other), &want)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model m: v2 in the catalog differs") && e.contains("files"),
            "{e}"
        );
        let more = model(
            vec![version(1, 'a'), version(2, 'b'), version(3, 'c')],
            vec![],
        );
        let e = plan_import("m", Some(&more), &want)
            .unwrap_err()
            .to_string();
        assert!(e.contains("up to v3"), "{e}");
        let moved_elsewhere = model(vec![version(1, 'a')], vec![moved("prod", None, Some(1))]);
        let e = plan_import("m", Some(&moved_elsewhere), &want)
            .unwrap_err()
            .to_string();
        assert!(e.contains("alias move 1"), "{e}");
    }
}
