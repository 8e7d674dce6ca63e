//! The write operations: each one transaction that changes the catalog, appends its change (and events) and notifies.
//!
//! Lock order, the same in every operation so that two never wait on each other: the
//! model's row first (which serialises all writes to one model), then `log_head` as the
//! last statement before commit (which serialises the tails of all writes, so change
//! seqs commit in order; it is held for one round trip).

use tokio_postgres::{Client, Row, Statement, Transaction};

use super::error::{CatalogDbError, sql};
use super::{CHANNEL, CatalogDb, pipeline};
use crate::registry::{Mark, Stamp, Version};

/// What [`CatalogDb::record_version`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// A new version was recorded.
    New {
        /// The version number allocated.
        number: u32,
        /// The change seq that announces it.
        seq: u64,
    },
    /// Nothing was recorded: the model's newest live version already holds exactly the
    /// files of the version to record (see [`same_files`]). Its record as the catalog
    /// holds it (its number, who registered it and when).
    Existing(Box<Version>),
}

impl Recorded {
    /// The version's number: the new one's, or the existing one's.
    pub fn number(&self) -> u32 {
        match self {
            Recorded::New { number, .. } => *number,
            Recorded::Existing(v) => v.number,
        }
    }
}

/// `record_version`'s statements, prepared once per connection, in the order its
/// pipelines send them.
const SHARE_BLOBS_LOCK: &str = super::orphans::SHARE_BLOBS_LOCK;
/// Creates the model or raises its highest number, leaving its row locked until commit.
const ALLOCATE: &str = "INSERT INTO models AS m (name, highest) VALUES ($1, 1)
     ON CONFLICT (name) DO UPDATE SET highest = m.highest + 1
     RETURNING highest";
/// The model's newest live version (deprecated ones are live: as local mode's newest).
const NEWEST_LIVE: &str = "SELECT number, record FROM versions
     WHERE model = $1 AND state = 'live' ORDER BY number DESC LIMIT 1";
const INSERT_VERSION: &str =
    "INSERT INTO versions (model, number, host, record) VALUES ($1, $2, $3, $4)";
/// Every file of a version in one statement.
const INSERT_FILES: &str = "INSERT INTO files (model, number, path, sha256, size)
     SELECT $1, $2, f.path, f.sha256, f.size
     FROM unnest($3::text[], $4::text[], $5::bigint[]) AS f(path, sha256, size)";
/// [`log_change`] and its events in one statement, so that it needs nothing from an
/// earlier answer and can be pipelined: the seqs, the change row, the events, the
/// notification.
const LOG_VERSION: &str = "WITH h AS (
         UPDATE log_head SET change_seq = change_seq + 1, event_seq = event_seq + $1
         RETURNING change_seq, event_seq
     ), c AS (
         INSERT INTO changes (seq, host, kind, model, number, alias)
         SELECT change_seq, $2, 'version', $3, $4, NULL FROM h RETURNING seq
     ), e AS (
         INSERT INTO events (seq, change_seq, event)
         SELECT h.event_seq - $1 + u.i, c.seq, u.event
         FROM h, c, unnest($6::jsonb[]) WITH ORDINALITY AS u(event, i)
     )
     SELECT c.seq FROM c, LATERAL (SELECT pg_notify($5, c.seq::text)) n";

/// Whether versions `a` and `b` of `model` hold exactly the same files: the same names
/// within their version folders (`.../<model>/v<N>/<name>`) with the same SHA-256s, as
/// local mode compares a new version with the newest one. A path not laid out so is
/// compared whole (and then never equals another version's).
pub fn same_files(model: &str, a: &Version, b: &Version) -> bool {
    fn content<'v>(model: &str, v: &'v Version) -> Vec<(&'v str, &'v str)> {
        let mut files: Vec<(&str, &str)> = (v.files.iter())
            .map(|f| (in_version(&f.path, model, v.number), f.sha256.as_str()))
            .collect();
        files.sort_unstable();
        files
    }
    a.files.len() == b.files.len() && content(model, a) == content(model, b)
}

/// `path` after the first `<model>/v<number>/` that begins it or follows a `/`, or
/// `path` whole.
fn in_version<'a>(path: &'a str, model: &str, number: u32) -> &'a str {
    let folder = format!("{model}/v{number}/");
    let mut from = 0;
    while let Some(i) = path[from..].find(&folder).map(|i| i + from) {
        if i == 0 || path.as_bytes()[i - 1] == b'/' {
            return &path[i + folder.len()..];
        }
        from = i + 1;
    }
    path
}

impl CatalogDb {
    /// Records a new version of `model` (created on its first version) registered by
    /// `host`. The number is allocated inside this transaction: `build` is given it and
    /// returns the version's record (its stored paths name the number); its `files`
    /// become rows of `files`. `events` (the daemon's event JSON) are logged with it.
    ///
    /// Never the same registration twice: under the model's row lock, when the model's
    /// newest live version holds exactly the files of the record `build` made
    /// ([`same_files`]), nothing is recorded (the number goes back) and that version is
    /// returned ([`Recorded::Existing`]), as local mode answers bytes identical to the
    /// newest version. So a host that recorded a version and then failed to commit it
    /// locally, or whose COMMIT's answer was lost, and tries again gets the version it
    /// recorded; and so does a host registering bytes another host just registered.
    ///
    /// Two round trips while nothing is wrong (statements prepared once per connection,
    /// see `CatalogDb::run_prepared`): `BEGIN`, the blob lock, the allocation (which
    /// takes the row lock) and the read of the newest version are sent together; then
    /// the version, its files, its change (and events) and `COMMIT`. The row lock is
    /// held from the first to the end of the second, whatever the number of files.
    pub async fn record_version(
        &mut self,
        model: &str,
        host: &str,
        events: &[serde_json::Value],
        build: impl FnOnce(u32) -> Version,
    ) -> Result<Recorded, CatalogDbError> {
        self.record_version_with(model, host, build, |_| events.to_vec())
            .await
    }

    /// [`Self::record_version`], its events made by `events` from the version `build`
    /// made (numbered), in the same transaction: a registration's `registered` event
    /// says what the record says (its metrics, metadata). Not called when nothing is
    /// recorded ([`Recorded::Existing`]).
    pub async fn record_version_with(
        &mut self,
        model: &str,
        host: &str,
        build: impl FnOnce(u32) -> Version,
        events: impl FnOnce(&Version) -> Vec<serde_json::Value>,
    ) -> Result<Recorded, CatalogDbError> {
        let sqls = [
            SHARE_BLOBS_LOCK,
            ALLOCATE,
            NEWEST_LIVE,
            INSERT_VERSION,
            INSERT_FILES,
            LOG_VERSION,
        ];
        self.run_prepared(
            "recording a version",
            &sqls,
            async |client: &Client, st: &[Statement], server: &str| {
                let [share, allocate, newest, insert_version, insert_files, log] = st else {
                    unreachable!("six statements prepared")
                };
                // Its files rows are not decided on by a blob collector meanwhile (the
                // blob lock, shared); then one statement creates the model or raises its
                // highest number, and the row stays locked until commit, so a racing host
                // waits there and then takes the next number; a rollback gives the number
                // back with everything else. The newest version is read after the lock is
                // held (a statement of its own: READ COMMITTED gives it what committed
                // before it started, a racing host's version included).
                let first = pipeline(vec![
                    Box::pin(async { client.batch_execute("BEGIN").await.map(|()| Vec::new()) }),
                    Box::pin(client.query(share, &[&super::BLOBS_LOCK_KEY])),
                    Box::pin(client.query(allocate, &[&model])),
                    Box::pin(client.query(newest, &[&model])),
                ])
                .await;
                let steps = [
                    "starting a transaction".to_string(),
                    "taking the blob lock (shared)".to_string(),
                    format!("allocating a version number of {model}"),
                    format!("reading the newest version of {model}"),
                ];
                let rows = match first_failure(first, &steps, server) {
                    Ok(rows) => rows,
                    Err(e) => return Err(rolled_back(client, e).await),
                };
                let n: i32 = rows[2][0].get(0);
                let number = n as u32;
                let newest = match rows[3].first() {
                    Some(r) => {
                        let at: i32 = r.get(0);
                        match super::read::version_of(server, model, at as u32, r.get(1)) {
                            Ok(v) => Some(v),
                            Err(e) => return Err(rolled_back(client, e).await),
                        }
                    }
                    None => None,
                };
                let mut version = build(number);
                version.number = number;
                if let Some(existing) = newest.filter(|v| same_files(model, v, &version)) {
                    client
                        .batch_execute("ROLLBACK")
                        .await
                        .map_err(sql(server, "rolling back"))?;
                    return Ok(Recorded::Existing(Box::new(existing)));
                }
                let events = events(&version);
                let record = serde_json::to_value(&version).expect("a version serialises");
                let paths: Vec<&str> = version.files.iter().map(|f| f.path.as_str()).collect();
                let shas: Vec<&str> = version.files.iter().map(|f| f.sha256.as_str()).collect();
                let sizes: Vec<i64> = (version.files.iter())
                    .map(|f| i64::try_from(f.size).unwrap_or(i64::MAX))
                    .collect();
                let count = events.len() as i64;
                // The log head's lock is taken by the last statement before COMMIT, in
                // the same round trip. A failure makes the server skip the rest of the
                // transaction, and the COMMIT then ends it as a rollback.
                let second = pipeline(vec![
                    Box::pin(client.query(insert_version, &[&model, &n, &host, &record])),
                    Box::pin(client.query(insert_files, &[&model, &n, &paths, &shas, &sizes])),
                    Box::pin(client.query(log, &[&count, &host, &model, &n, &CHANNEL, &events])),
                    Box::pin(async { client.batch_execute("COMMIT").await.map(|()| Vec::new()) }),
                ])
                .await;
                let steps = [
                    format!("inserting {model} v{number}"),
                    format!("inserting the files of {model} v{number}"),
                    format!("logging the change of {model}"),
                    "committing".to_string(),
                ];
                let rows = first_failure(second, &steps, server)?;
                let seq: i64 = rows[2][0].get(0);
                Ok(Recorded::New {
                    number,
                    seq: seq as u64,
                })
            },
        )
        .await
    }

    /// Points `alias` of `model` at live version `number` (set or moved), recording the
    /// move in alias_history with `stamp` and `by` (`set`, `rollback`). Returns where it
    /// pointed before and the change seq. The host's catalog rules refuse no-op and bad
    /// moves first; this refuses what another host changed meanwhile (a removed version)
    /// and a move to where the alias already points (never a no-op row in the history).
    /// [`Self::move_alias`] also refuses a move from somewhere else than the host saw.
    pub async fn set_alias(
        &mut self,
        model: &str,
        alias: &str,
        number: u32,
        host: &str,
        stamp: &Stamp,
        by: &str,
    ) -> Result<(Option<u32>, u64), CatalogDbError> {
        let change = AliasChange {
            expected: None,
            to: Some(number),
            by,
            events: &[],
        };
        self.alias_change(model, alias, host, stamp, change).await
    }

    /// [`Self::set_alias`], compare-and-set: `from` is where this host believes `alias`
    /// points now (`None`: nowhere), and the transaction, under the model's row lock,
    /// refuses the move when the catalog's alias points elsewhere (another host moved it
    /// since this host looked), naming the host and time of that move. Two hosts moving
    /// one alias at once: the first commits, the second is refused (its `from` is no
    /// longer true) and asks again. `events` (the daemon's event JSON of the move, as
    /// the host derived it from `from`: what the catalog does when it accepts) are
    /// logged with it.
    #[allow(clippy::too_many_arguments)]
    pub async fn move_alias(
        &mut self,
        model: &str,
        alias: &str,
        from: Option<u32>,
        number: u32,
        host: &str,
        stamp: &Stamp,
        by: &str,
        events: &[serde_json::Value],
    ) -> Result<(Option<u32>, u64), CatalogDbError> {
        let change = AliasChange {
            expected: Some(from),
            to: Some(number),
            by,
            events,
        };
        self.alias_change(model, alias, host, stamp, change).await
    }

    /// Removes `alias` of `model`, recording the move. Returns where it pointed and the
    /// change seq. `from`: where this host believes it points, compare-and-set as
    /// [`Self::move_alias`] (`None`: wherever it points).
    pub async fn remove_alias(
        &mut self,
        model: &str,
        alias: &str,
        from: Option<u32>,
        host: &str,
        stamp: &Stamp,
    ) -> Result<(u32, u64), CatalogDbError> {
        self.remove_alias_logged(model, alias, from, host, stamp, &[])
            .await
    }

    /// [`Self::remove_alias`] with its `events` (the daemon's event JSON) logged.
    pub async fn remove_alias_logged(
        &mut self,
        model: &str,
        alias: &str,
        from: Option<u32>,
        host: &str,
        stamp: &Stamp,
        events: &[serde_json::Value],
    ) -> Result<(u32, u64), CatalogDbError> {
        let change = AliasChange {
            expected: from.map(Some),
            to: None,
            by: "remove",
            events,
        };
        let (was, seq) = self.alias_change(model, alias, host, stamp, change).await?;
        Ok((was.expect("a removal needs the alias to exist"), seq))
    }

    /// One alias change in one transaction under the model's row lock: `to` a live
    /// version (`None`: removed), refused when `expected` (`Some`: where the host saw
    /// it) is not where the alias points now, when it would change nothing, or when the
    /// target is not live. Returns where it pointed and the change seq.
    async fn alias_change(
        &mut self,
        model: &str,
        alias: &str,
        host: &str,
        stamp: &Stamp,
        change: AliasChange<'_>,
    ) -> Result<(Option<u32>, u64), CatalogDbError> {
        let AliasChange {
            expected,
            to,
            by,
            events,
        } = change;
        let step = if to.is_some() {
            "setting an alias"
        } else {
            "removing an alias"
        };
        self.run(step, async |client: &mut Client, server: &str| {
            let tx = begin(client, server).await?;
            lock_model(&tx, server, model).await?;
            if let Some(number) = to {
                let state: Option<String> = tx
                    .query_opt(
                        "SELECT state FROM versions WHERE model = $1 AND number = $2",
                        &[&model, &(number as i32)],
                    )
                    .await
                    .map_err(sql(server, format!("reading {model} v{number}")))?
                    .map(|r| r.get(0));
                match state.as_deref() {
                    Some("live") => {}
                    Some(_) => {
                        return Err(refused(
                            server,
                            format!(
                                "{model} v{number} is removed: alias {alias} cannot point at it"
                            ),
                        ));
                    }
                    None => {
                        return Err(refused(server, format!("{model} has no version v{number}")));
                    }
                }
            }
            let from: Option<i32> = tx
                .query_opt(
                    "SELECT number FROM aliases WHERE model = $1 AND alias = $2",
                    &[&model, &alias],
                )
                .await
                .map_err(sql(server, format!("reading alias {alias} of {model}")))?
                .map(|r| r.get(0));
            let now = from.map(|f| f as u32);
            if let Some(seen) = expected
                && seen != now
            {
                let last = last_move(&tx, server, model, alias).await?;
                let now = now.map_or("nowhere".to_string(), |n| format!("v{n}"));
                return Err(refused(
                    server,
                    format!(
                        "alias {alias} of {model} was moved meanwhile{last} (it points {now}, this host saw {}); ask again",
                        seen.map_or("none".to_string(), |n| format!("v{n}"))
                    ),
                ));
            }
            match (now, to) {
                (None, None) => {
                    return Err(refused(server, format!("{model} has no alias {alias}")));
                }
                (Some(n), Some(t)) if n == t => {
                    return Err(refused(
                        server,
                        format!("alias {alias} of {model} already points at v{t}: nothing to change"),
                    ));
                }
                _ => {}
            }
            let to_i = to.map(|t| t as i32);
            match to_i {
                Some(n) => tx
                    .execute(
                        "INSERT INTO aliases (model, alias, number) VALUES ($1, $2, $3)
                         ON CONFLICT (model, alias) DO UPDATE SET number = EXCLUDED.number",
                        &[&model, &alias, &n],
                    )
                    .await
                    .map_err(sql(server, format!("setting alias {alias} of {model}")))?,
                None => tx
                    .execute(
                        "DELETE FROM aliases WHERE model = $1 AND alias = $2",
                        &[&model, &alias],
                    )
                    .await
                    .map_err(sql(server, format!("removing alias {alias} of {model}")))?,
            };
            history(&tx, server, model, alias, from, to_i, stamp, by, host).await?;
            let (kind, number) = match to_i {
                Some(n) => ("alias_set", Some(n)),
                None => ("alias_removed", from),
            };
            let seq =
                log_change(&tx, server, host, kind, model, number, Some(alias), events).await?;
            commit(tx, server).await?;
            Ok((now, seq))
        })
        .await
    }

    /// Changes the record of live version `number` of `model` with `change` (a sidecar
    /// edit's metrics through `Version::update_metrics`, a deprecation), read and written
    /// under the model's row lock, so that two hosts' edits apply one after the other,
    /// each to what the other left. A version's files never change: a `change` that
    /// touches them (or removes the version) is refused. Returns the change seq.
    pub async fn update_version(
        &mut self,
        model: &str,
        number: u32,
        host: &str,
        events: &[serde_json::Value],
        change: impl FnOnce(&mut Version),
    ) -> Result<u64, CatalogDbError> {
        let change = |v: &mut Version| {
            change(v);
            true
        };
        let written = self
            .update_live(model, Some(number), host, change, |_, _| events.to_vec())
            .await?;
        Ok(written.map_or(0, |(_, seq)| seq))
    }

    /// Applies `change` to live version `number` of `model`, or to its newest live
    /// version when `number` is `None` (a sidecar edited after its artifact was
    /// registered: local mode's rule gives its metrics to the model's newest version),
    /// under the model's row lock, so that "newest" is the catalog's even when another
    /// host registered it and this host has not merged it yet. `change` returns whether it
    /// changed anything; `events` gets the version before and after and returns the event
    /// JSON logged with the change. `Ok(None)`: the model has no live version (`None`
    /// asked), or nothing changed: nothing written. Else the version as written and the
    /// change seq. A missing or removed `number` is refused, as is a `change` that touches
    /// the files.
    pub async fn update_live(
        &mut self,
        model: &str,
        number: Option<u32>,
        host: &str,
        change: impl FnOnce(&mut Version) -> bool,
        events: impl FnOnce(&Version, &Version) -> Vec<serde_json::Value>,
    ) -> Result<Option<(Version, u64)>, CatalogDbError> {
        self.run(
            "updating a version's metrics",
            async |client: &mut Client, server: &str| {
                let tx = begin(client, server).await?;
                let before = match number {
                    Some(n) => live_version(&tx, server, model, n).await?,
                    None => {
                        let locked = tx
                            .query_opt(
                                "SELECT highest FROM models WHERE name = $1 FOR UPDATE",
                                &[&model],
                            )
                            .await
                            .map_err(sql(server, format!("locking model {model}")))?;
                        let newest = match locked {
                            Some(_) => tx.query_opt(NEWEST_LIVE, &[&model]).await.map_err(sql(
                                server,
                                format!("reading the newest version of {model}"),
                            ))?,
                            None => None,
                        };
                        let Some(row) = newest else {
                            return Ok(None);
                        };
                        let n = row.get::<_, i32>(0) as u32;
                        super::read::version_of(server, model, n, row.get(1))?
                    }
                };
                let number = before.number;
                let mut version = before.clone();
                if !change(&mut version) {
                    return Ok(None);
                }
                if version.files != before.files || version.removed.is_some() {
                    return Err(refused(
                        server,
                        format!(
                            "{model} v{number}: an update may not change its files or remove it"
                        ),
                    ));
                }
                version.number = number;
                let record = serde_json::to_value(&version).expect("a version serialises");
                let n = number as i32;
                tx.execute(
                    "UPDATE versions SET record = $3 WHERE model = $1 AND number = $2",
                    &[&model, &n, &record],
                )
                .await
                .map_err(sql(server, format!("updating {model} v{number}")))?;
                let made = events(&before, &version);
                let seq = log_change(
                    &tx,
                    server,
                    host,
                    "version_changed",
                    model,
                    Some(n),
                    None,
                    &made,
                )
                .await?;
                commit(tx, server).await?;
                Ok(Some((version, seq)))
            },
        )
        .await
    }

    /// Removes version `number` of `model` as `rm --force` does: [`Self::remove_versions`]
    /// of that one version, its aliases dropped, no events.
    pub async fn remove_version(
        &mut self,
        model: &str,
        number: u32,
        host: &str,
        mark: &Mark,
    ) -> Result<u64, CatalogDbError> {
        let how = Removal {
            by: "rm",
            force: true,
        };
        self.remove_versions(model, &[number], host, mark, how, &[])
            .await
    }

    /// Removes versions `numbers` of `model` in one transaction under the model's row
    /// lock (an `rm`, or one model's share of a `gc`): each record gets `mark` as
    /// `removed`, its state turns `removed`, its `files` rows go (a blob no other `files`
    /// row names is then an orphan, collected after `blobs_grace`; one another version
    /// shares stays), a tombstone says who, why and when. Aliases pointing at one of them
    /// are the local rule's: removed with the move recorded (`by: "<by> --force"`) when
    /// `how.force`, else the whole removal is refused naming them (another host set them
    /// since this host decided). A version missing or already removed (by another host
    /// since) refuses it too, naming who removed it and when. One `version_removed`
    /// change per version; `events` (the daemon's event JSON) are logged with the last.
    /// `highest` is left as it is: a removed number is never given again. Returns the
    /// last change seq.
    pub async fn remove_versions(
        &mut self,
        model: &str,
        numbers: &[u32],
        host: &str,
        mark: &Mark,
        how: Removal<'_>,
        events: &[serde_json::Value],
    ) -> Result<u64, CatalogDbError> {
        self.run("removing a version", async |client: &mut Client, server: &str| {
            let tx = begin(client, server).await?;
            let mut seq = 0;
            for (i, &number) in numbers.iter().enumerate() {
                let n = number as i32;
                let mut version = live_version(&tx, server, model, number).await?;
                let aliased: Vec<String> = tx
                    .query(
                        "SELECT alias FROM aliases WHERE model = $1 AND number = $2 ORDER BY alias",
                        &[&model, &n],
                    )
                    .await
                    .map_err(sql(server, format!("reading the aliases of {model} v{number}")))?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                if !aliased.is_empty() && !how.force {
                    let what = if how.by == "gc" {
                        "gc keeps aliased versions: run gc again".to_string()
                    } else {
                        format!("move the alias first, or use `{} --force` to drop it", how.by)
                    };
                    return Err(refused(
                        server,
                        format!(
                            "{model} v{number} is what alias(es) {} point to in the team's catalog (set since this host looked); {what}; nothing was removed",
                            aliased.join(", ")
                        ),
                    ));
                }
                version.removed = Some(Box::new(mark.clone()));
                let record = serde_json::to_value(&version).expect("a version serialises");
                tx.execute(
                    "UPDATE versions SET state = 'removed', record = $3 WHERE model = $1 AND number = $2",
                    &[&model, &n, &record],
                )
                .await
                .map_err(sql(server, format!("marking {model} v{number} removed")))?;
                tx.execute("DELETE FROM files WHERE model = $1 AND number = $2", &[&model, &n])
                    .await
                    .map_err(sql(server, format!("forgetting the files of {model} v{number}")))?;
                insert_tombstone(&tx, server, model, number, mark, host).await?;
                tx.execute(
                    "DELETE FROM aliases WHERE model = $1 AND number = $2",
                    &[&model, &n],
                )
                .await
                .map_err(sql(server, format!("removing the aliases of {model} v{number}")))?;
                let stamp = Stamp { at: mark.at.clone(), uid: mark.uid };
                let by = format!("{} --force", how.by);
                for alias in &aliased {
                    history(&tx, server, model, alias, Some(n), None, &stamp, &by, host).await?;
                }
                let last = i + 1 == numbers.len();
                let events = if last { events } else { &[] };
                seq = log_change(&tx, server, host, "version_removed", model, Some(n), None, events)
                    .await?;
            }
            commit(tx, server).await?;
            Ok(seq)
        })
        .await
    }
}

/// One alias change as [`CatalogDb::alias_change`] makes it: `expected` (`Some`: where
/// the host saw the alias, compare-and-set), `to` (`None`: removed), `by` (the
/// history's operation), `events` logged with it.
struct AliasChange<'a> {
    expected: Option<Option<u32>>,
    to: Option<u32>,
    by: &'a str,
    events: &'a [serde_json::Value],
}

/// How [`CatalogDb::remove_versions`] treats aliases: the operation's name for their
/// history and refusals (`rm`, `gc`), and whether aliases on a removed version are
/// dropped (`rm --force`) or refuse the removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removal<'a> {
    /// `rm` or `gc`.
    pub by: &'a str,
    /// Drop the aliases (else refuse).
    pub force: bool,
}

/// A READ COMMITTED transaction: each statement sees what committed before it, and the
/// row locks make the writes serial where they meet.
pub(super) async fn begin<'a>(
    client: &'a mut Client,
    server: &str,
) -> Result<Transaction<'a>, CatalogDbError> {
    client
        .transaction()
        .await
        .map_err(sql(server, "starting a transaction"))
}

pub(super) async fn commit(tx: Transaction<'_>, server: &str) -> Result<(), CatalogDbError> {
    tx.commit().await.map_err(sql(server, "committing"))
}

/// The `files` rows of live `version` of `model`.
pub(super) async fn insert_files(
    tx: &Transaction<'_>,
    server: &str,
    model: &str,
    version: &Version,
) -> Result<(), CatalogDbError> {
    let (n, number) = (version.number as i32, version.number);
    for f in &version.files {
        let size = i64::try_from(f.size).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO files (model, number, path, sha256, size) VALUES ($1, $2, $3, $4, $5)",
            &[&model, &n, &f.path, &f.sha256, &size],
        )
        .await
        .map_err(sql(
            server,
            format!("inserting file {} of {model} v{number}", f.path),
        ))?;
    }
    Ok(())
}

/// The tombstone of removed version `number` of `model`: who, why, when, from which host.
pub(super) async fn insert_tombstone(
    tx: &Transaction<'_>,
    server: &str,
    model: &str,
    number: u32,
    mark: &Mark,
    host: &str,
) -> Result<(), CatalogDbError> {
    let uid = mark.uid.map(i64::from);
    tx.execute(
        "INSERT INTO tombstones (model, number, at, reason, uid, host) VALUES ($1, $2, $3, $4, $5, $6)",
        &[&model, &(number as i32), &mark.at, &mark.reason, &uid, &host],
    )
    .await
    .map_err(sql(server, format!("writing the tombstone of {model} v{number}")))?;
    Ok(())
}

/// Locks `model`'s row for this transaction, or refuses an unknown model.
async fn lock_model(tx: &Transaction<'_>, server: &str, model: &str) -> Result<(), CatalogDbError> {
    tx.query_opt(
        "SELECT highest FROM models WHERE name = $1 FOR UPDATE",
        &[&model],
    )
    .await
    .map_err(sql(server, format!("locking model {model}")))?
    .map(|_| ())
    .ok_or_else(|| refused(server, format!("no model named {model}")))
}

/// Locks `model`'s row and reads live version `number`, or refuses a missing or
/// removed one.
async fn live_version(
    tx: &Transaction<'_>,
    server: &str,
    model: &str,
    number: u32,
) -> Result<Version, CatalogDbError> {
    lock_model(tx, server, model).await?;
    let row = tx
        .query_opt(
            "SELECT state, record FROM versions WHERE model = $1 AND number = $2",
            &[&model, &(number as i32)],
        )
        .await
        .map_err(sql(server, format!("reading {model} v{number}")))?
        .ok_or_else(|| refused(server, format!("{model} has no version v{number}")))?;
    if row.get::<_, String>(0) != "live" {
        let by = tx
            .query_opt(
                "SELECT at, host FROM tombstones WHERE model = $1 AND number = $2",
                &[&model, &(number as i32)],
            )
            .await
            .map_err(sql(
                server,
                format!("reading the tombstone of {model} v{number}"),
            ))?
            .map(|r| {
                format!(
                    " at {} by host {}",
                    r.get::<_, String>(0),
                    r.get::<_, String>(1)
                )
            })
            .unwrap_or_default();
        return Err(refused(
            server,
            format!("{model} v{number} is removed in the team's catalog{by}; nothing was changed"),
        ));
    }
    super::read::version_of(server, model, number, row.get(1))
}

/// A pipeline's rows, or the error of its first request that failed, named by its step
/// (the requests after a failure fail too, or are skipped: only the first says why). A
/// connection lost meanwhile fails every request still unanswered: the step then names
/// them all, since the server may have run them (a lost answer to a COMMIT leaves the
/// outcome unknown, see docs/team.md).
fn first_failure(
    answers: Vec<Result<Vec<Row>, tokio_postgres::Error>>,
    steps: &[String],
    server: &str,
) -> Result<Vec<Vec<Row>>, CatalogDbError> {
    let mut rows = Vec::with_capacity(answers.len());
    for (i, a) in answers.into_iter().enumerate() {
        match a {
            Ok(r) => rows.push(r),
            Err(e) if e.is_closed() && i + 1 < steps.len() => {
                let step = format!(
                    "{} (unanswered: the connection was lost)",
                    steps[i..].join(", ")
                );
                return Err(sql(server, step)(e));
            }
            Err(e) => return Err(sql(server, steps[i].as_str())(e)),
        }
    }
    Ok(rows)
}

/// Ends the transaction a failed step left open (nothing it did is kept) and gives back
/// that step's error. A rollback that fails too leaves the connection to be dropped.
async fn rolled_back(client: &Client, e: CatalogDbError) -> CatalogDbError {
    if let Err(r) = client.batch_execute("ROLLBACK").await {
        tracing::debug!("rolling back after {e}: {}", super::describe(&r));
    }
    e
}

pub(super) fn refused(server: &str, what: String) -> CatalogDbError {
    CatalogDbError::Refused {
        server: server.to_string(),
        what,
    }
}

/// ` (by host H at T, to vN)`: the last recorded move of `alias` of `model`, for a
/// refusal that says who moved it (empty when there is none).
async fn last_move(
    tx: &Transaction<'_>,
    server: &str,
    model: &str,
    alias: &str,
) -> Result<String, CatalogDbError> {
    let row = tx
        .query_opt(
            "SELECT host, at, to_number FROM alias_history
             WHERE model = $1 AND alias = $2 ORDER BY id DESC LIMIT 1",
            &[&model, &alias],
        )
        .await
        .map_err(sql(
            server,
            format!("reading the last move of alias {alias} of {model}"),
        ))?;
    Ok(row.map_or(String::new(), |r| {
        let (host, at, to): (String, String, Option<i32>) = (r.get(0), r.get(1), r.get(2));
        let to = to.map_or("removed".to_string(), |n| format!("to v{n}"));
        format!(" by host {host} at {at} ({to})")
    }))
}

/// Appends one alias move to alias_history.
#[allow(clippy::too_many_arguments)]
pub(super) async fn history(
    tx: &Transaction<'_>,
    server: &str,
    model: &str,
    alias: &str,
    from: Option<i32>,
    to: Option<i32>,
    stamp: &Stamp,
    by: &str,
    host: &str,
) -> Result<(), CatalogDbError> {
    let uid = stamp.uid.map(i64::from);
    tx.execute(
        "INSERT INTO alias_history (model, alias, from_number, to_number, at, uid, by, host)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[&model, &alias, &from, &to, &stamp.at, &uid, &by, &host],
    )
    .await
    .map_err(sql(
        server,
        format!("recording the move of alias {alias} of {model}"),
    ))?;
    Ok(())
}

/// The last step of every write: takes the next change seq (and event seqs) from
/// `log_head`, whose row lock is then held until commit, so seqs commit in order;
/// inserts the change and events; notifies [`CHANNEL`] (delivered at commit).
#[allow(clippy::too_many_arguments)]
pub(super) async fn log_change(
    tx: &Transaction<'_>,
    server: &str,
    host: &str,
    kind: &str,
    model: &str,
    number: Option<i32>,
    alias: Option<&str>,
    events: &[serde_json::Value],
) -> Result<u64, CatalogDbError> {
    let count = events.len() as i64;
    // One statement (one round trip while the head is locked): the seqs, the change row,
    // the notification.
    let row = tx
        .query_one(
            "WITH h AS (
                 UPDATE log_head SET change_seq = change_seq + 1, event_seq = event_seq + $1
                 RETURNING change_seq, event_seq
             ), c AS (
                 INSERT INTO changes (seq, host, kind, model, number, alias)
                 SELECT change_seq, $2, $3, $4, $5, $6 FROM h RETURNING seq
             )
             SELECT c.seq, h.event_seq FROM c, h, LATERAL (SELECT pg_notify($7, c.seq::text)) n",
            &[&count, &host, &kind, &model, &number, &alias, &CHANNEL],
        )
        .await
        .map_err(sql(server, format!("logging the change of {model}")))?;
    let (seq, last_event): (i64, i64) = (row.get(0), row.get(1));
    for (i, e) in events.iter().enumerate() {
        let event_seq = last_event - count + 1 + i as i64;
        tx.execute(
            "INSERT INTO events (seq, change_seq, event) VALUES ($1, $2, $3)",
            &[&event_seq, &seq, e],
        )
        .await
        .map_err(sql(server, format!("logging event {event_seq}")))?;
    }
    Ok(seq as u64)
}
