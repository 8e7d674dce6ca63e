//! The reads a host rebuilds and refreshes its catalog with: a consistent snapshot, one model, the change log from a seq.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio_postgres::{Client, GenericClient, IsolationLevel};

use super::CatalogDb;
use super::error::{CatalogDbError, sql};
use crate::registry::{AliasMove, Model, Version};

/// What one change-log row says changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A new version (`number`).
    Version,
    /// Version `number`'s record changed (metrics, deprecation).
    VersionChanged,
    /// An alias (`alias`) set or moved to `number`.
    AliasSet,
    /// An alias removed (it pointed at `number`).
    AliasRemoved,
    /// Version `number` removed.
    VersionRemoved,
}

/// One row of the change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Its seq: gapless, committed in order.
    pub seq: u64,
    /// The host that wrote it.
    pub host: String,
    /// What changed.
    pub kind: ChangeKind,
    /// The model.
    pub model: String,
    /// The version concerned.
    pub number: Option<u32>,
    /// The alias concerned.
    pub alias: Option<String>,
}

/// The whole catalog as of change `seq`: a host's starting point.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every change up to this seq is in it, none after: continue with
    /// `changes_since(seq)`.
    pub seq: u64,
    /// Every model, as the in-memory catalog holds it (removed versions as tombstones).
    pub models: BTreeMap<String, Arc<Model>>,
    /// The last event seq given as of change `seq` (`log_head.event_seq`).
    pub event_seq: u64,
    /// The oldest event seq the `events` table holds (`event_seq + 1` when it holds none:
    /// a catalog `migrate` filled starts numbering after the local registry's events).
    pub first_event: u64,
}

/// One row of the event log: the event's seq, the change that wrote it, the daemon's
/// event JSON as the writing host made it (its `seq` and `commit` are the columns').
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedEvent {
    /// Its seq: gapless, team-wide, committed in order.
    pub seq: u64,
    /// The change seq of the transaction that wrote it.
    pub change_seq: u64,
    /// The event JSON.
    pub event: serde_json::Value,
}

/// Rows of `SELECT seq, change_seq, event` as [`LoggedEvent`]s.
fn logged(rows: &[tokio_postgres::Row]) -> Vec<LoggedEvent> {
    (rows.iter())
        .map(|r| LoggedEvent {
            seq: r.get::<_, i64>(0) as u64,
            change_seq: r.get::<_, i64>(1) as u64,
            event: r.get(2),
        })
        .collect()
}

impl CatalogDb {
    /// The events written by changes `after + 1 ..= upto`, in seq order: what a follower
    /// that applied those changes may now show.
    pub async fn events_of_changes(
        &mut self,
        after: u64,
        upto: u64,
    ) -> Result<Vec<LoggedEvent>, CatalogDbError> {
        self.run(
            "reading the event log",
            async |client: &mut Client, server: &str| {
                let rows = client
                    .query(
                        "SELECT seq, change_seq, event FROM events
                     WHERE change_seq > $1 AND change_seq <= $2 ORDER BY seq",
                        &[&(after as i64), &(upto as i64)],
                    )
                    .await
                    .map_err(sql(
                        server,
                        format!("reading the events of changes {}..={upto}", after + 1),
                    ))?;
                Ok(logged(&rows))
            },
        )
        .await
    }

    /// The events from seq `from` up to `upto`, at most `limit`, in seq order.
    pub async fn events_from(
        &mut self,
        from: u64,
        upto: u64,
        limit: u32,
    ) -> Result<Vec<LoggedEvent>, CatalogDbError> {
        self.run(
            "reading the event log",
            async |client: &mut Client, server: &str| {
                let rows = client
                    .query(
                        "SELECT seq, change_seq, event FROM events
                     WHERE seq >= $1 AND seq <= $2 ORDER BY seq LIMIT $3",
                        &[&(from as i64), &(upto as i64), &i64::from(limit)],
                    )
                    .await
                    .map_err(sql(server, format!("reading the events from {from}")))?;
                Ok(logged(&rows))
            },
        )
        .await
    }

    /// The changes after `seq`, at most `limit`, in seq order.
    pub async fn changes_since(
        &mut self,
        seq: u64,
        limit: u32,
    ) -> Result<Vec<Change>, CatalogDbError> {
        self.run("reading the change log", async |client: &mut Client, server: &str| {
            let rows = client
                .query(
                    "SELECT seq, host, kind, model, number, alias FROM changes
                     WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&(seq as i64), &i64::from(limit)],
                )
                .await
                .map_err(sql(server, format!("reading the changes after {seq}")))?;
            rows.iter()
                .map(|r| {
                    let kind: &str = r.get(2);
                    Ok(Change {
                        seq: r.get::<_, i64>(0) as u64,
                        host: r.get(1),
                        kind: match kind {
                            "version" => ChangeKind::Version,
                            "alias_set" => ChangeKind::AliasSet,
                            "alias_removed" => ChangeKind::AliasRemoved,
                            "version_changed" => ChangeKind::VersionChanged,
                            "version_removed" => ChangeKind::VersionRemoved,
                            other => {
                                return Err(CatalogDbError::Refused {
                                    server: server.to_string(),
                                    what: format!("change {} has kind {other:?}, unknown to this modelreg", r.get::<_, i64>(0)),
                                });
                            }
                        },
                        model: r.get(3),
                        number: r.get::<_, Option<i32>>(4).map(|n| n as u32),
                        alias: r.get(5),
                    })
                })
                .collect()
        })
        .await
    }

    /// Every model, consistent with one change seq (one REPEATABLE READ, read-only
    /// transaction: all its reads see the same committed state).
    pub async fn snapshot(&mut self) -> Result<Snapshot, CatalogDbError> {
        self.run(
            "reading a snapshot",
            async |client: &mut Client, server: &str| {
                let tx = read_only(client, server, "the snapshot").await?;
                let seq: i64 = tx
                    .query_one("SELECT change_seq FROM log_head", &[])
                    .await
                    .map_err(sql(server, "reading the change log's head"))?
                    .get(0);
                let models = read_models(&tx, server, None, None).await?;
                // The event log's bounds as of the same change seq.
                let row = tx
                    .query_one(
                        "SELECT h.event_seq, coalesce((SELECT min(seq) FROM events), h.event_seq + 1)
                         FROM log_head h",
                        &[],
                    )
                    .await
                    .map_err(sql(server, "reading the event log's bounds"))?;
                let (event_seq, first_event): (i64, i64) = (row.get(0), row.get(1));
                tx.commit()
                    .await
                    .map_err(sql(server, "ending the snapshot transaction"))?;
                Ok(Snapshot {
                    seq: seq as u64,
                    models,
                    event_seq: event_seq as u64,
                    first_event: first_event as u64,
                })
            },
        )
        .await
    }

    /// Model `name` as it is now (`None`: no such model): what a host re-reads when a
    /// change names it.
    pub async fn model(&mut self, name: &str) -> Result<Option<Model>, CatalogDbError> {
        self.run(
            "reading a model",
            async |client: &mut Client, server: &str| {
                let tx = read_only(client, server, &format!("the read of model {name}")).await?;
                let mut models = read_models(&tx, server, Some(name), None).await?;
                tx.commit()
                    .await
                    .map_err(sql(server, format!("ending the read of model {name}")))?;
                Ok(models.remove(name).map(Arc::unwrap_or_clone))
            },
        )
        .await
    }

    /// Model `name` with only its versions numbered in `numbers` (its highest, aliases
    /// and alias history whole), or `None` when the catalog has no such model: what a
    /// host following the team needs for the changes it just read. Read whole on every
    /// change instead, a model costs its followers time in proportion to its versions
    /// per change: three hosts registering 900 versions of one model each spent 14–16 s
    /// of CPU (debug build) reading it back (tests/team_hosts.rs).
    pub async fn model_versions(
        &mut self,
        name: &str,
        numbers: &[u32],
    ) -> Result<Option<Model>, CatalogDbError> {
        let numbers: Vec<i32> = numbers.iter().map(|&n| n as i32).collect();
        self.run(
            "reading a model",
            async |client: &mut Client, server: &str| {
                let tx = read_only(client, server, &format!("the read of model {name}")).await?;
                let mut models = read_models(&tx, server, Some(name), Some(&numbers)).await?;
                tx.commit()
                    .await
                    .map_err(sql(server, format!("ending the read of model {name}")))?;
                Ok(models.remove(name).map(Arc::unwrap_or_clone))
            },
        )
        .await
    }
}

/// A REPEATABLE READ, read-only transaction: every read in it sees the same committed
/// state, so what it returns is consistent with one change seq.
async fn read_only<'a>(
    client: &'a mut Client,
    server: &str,
    what: &str,
) -> Result<tokio_postgres::Transaction<'a>, CatalogDbError> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(sql(server, format!("starting {what}")))
}

/// Every model (or only `only`) with its versions (or only those numbered in `numbers`),
/// aliases and alias history.
pub(super) async fn read_models(
    c: &impl GenericClient,
    server: &str,
    only: Option<&str>,
    numbers: Option<&[i32]>,
) -> Result<BTreeMap<String, Arc<Model>>, CatalogDbError> {
    // `$1 IS NULL OR ...`: one statement text for both, NULL meaning every model.
    let filter = "($1::text IS NULL OR model = $1)";
    let mut models: BTreeMap<String, Model> = BTreeMap::new();
    for r in c
        .query(
            "SELECT name, highest FROM models WHERE ($1::text IS NULL OR name = $1)",
            &[&only],
        )
        .await
        .map_err(sql(server, "reading models"))?
    {
        let m = Model {
            highest: r.get::<_, i32>(1) as u32,
            ..Model::default()
        };
        models.insert(r.get(0), m);
    }
    // `$2 IS NULL`: every version; else only those numbered in $2.
    let q = format!(
        "SELECT model, number, record FROM versions
         WHERE {filter} AND ($2::int4[] IS NULL OR number = ANY($2)) ORDER BY model, number"
    );
    for r in c
        .query(&q, &[&only, &numbers])
        .await
        .map_err(sql(server, "reading versions"))?
    {
        let (model, number): (String, i32) = (r.get(0), r.get(1));
        let v = version_of(server, &model, number as u32, r.get(2))?;
        if let Some(m) = models.get_mut(&model) {
            m.versions.push(Arc::new(v));
        }
    }
    let q = format!("SELECT model, alias, number FROM aliases WHERE {filter}");
    for r in c
        .query(&q, &[&only])
        .await
        .map_err(sql(server, "reading aliases"))?
    {
        if let Some(m) = models.get_mut(r.get::<_, &str>(0)) {
            m.aliases.insert(r.get(1), r.get::<_, i32>(2) as u32);
        }
    }
    let q = format!(
        "SELECT model, alias, from_number, to_number, at, uid, by FROM alias_history
         WHERE {filter} ORDER BY id"
    );
    for r in c
        .query(&q, &[&only])
        .await
        .map_err(sql(server, "reading alias history"))?
    {
        if let Some(m) = models.get_mut(r.get::<_, &str>(0)) {
            m.alias_history.push(AliasMove {
                alias: r.get(1),
                from: r.get::<_, Option<i32>>(2).map(|n| n as u32),
                to: r.get::<_, Option<i32>>(3).map(|n| n as u32),
                at: r.get(4),
                uid: r.get::<_, Option<i64>>(5).map(|u| u as u32),
                by: r.get(6),
            });
        }
    }
    Ok(models.into_iter().map(|(k, m)| (k, Arc::new(m))).collect())
}

/// A version from its stored record and number.
pub(crate) fn version_of(
    server: &str,
    model: &str,
    number: u32,
    record: serde_json::Value,
) -> Result<Version, CatalogDbError> {
    let mut v: Version = serde_json::from_value(record).map_err(|e| CatalogDbError::BadRecord {
        server: server.to_string(),
        model: model.to_string(),
        number,
        cause: e.to_string(),
    })?;
    v.number = number;
    Ok(v)
}
