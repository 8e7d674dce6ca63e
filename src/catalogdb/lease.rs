//! Who delivers a hook or webhook in team mode: a session-level advisory lock per
//! endpoint name, and the endpoint's cursor in `deliveries` (migrations/0002).
//!
//! A [`DeliveryLease`] is one connection of its own. [`DeliveryLease::try_take`] asks for
//! `pg_try_advisory_lock(`[`DELIVERY_LOCK_CLASS`]`, hashtext(name))`: one session of the
//! whole team holds it at a time, and it is freed when that session ends (the host
//! stopped, was killed, or lost its connection), so another host's worker can take it.
//! The holder reads the cursor ([`DeliveryLease::row`]) after taking the lock and saves
//! it ([`DeliveryLease::save`]) as it moves. [`DeliveryLease::lost`] tells when the
//! connection ended: the lock may be someone else's from then on.

use tokio::sync::watch;
use tokio_postgres::Client;

use super::error::{CatalogDbError, describe, sql};
use super::{Options, Target};

/// The first key of the two-key advisory locks held by delivery workers ("mrdh" in
/// ASCII). The two-key form is a key space of its own: it never meets the one-key locks
/// of migrations and blob collection.
pub const DELIVERY_LOCK_CLASS: i32 = 0x6d72_6468;

/// One endpoint's lock and cursor in the catalog (see the module docs).
pub struct DeliveryLease {
    target: Target,
    name: String,
    host: String,
    client: Option<Client>,
    /// True once the current connection ended.
    lost: watch::Receiver<bool>,
    held: bool,
}

impl DeliveryLease {
    /// The lease of endpoint `name` for `host`, at catalog `url`; nothing contacted yet.
    pub fn new(url: &str, name: &str, host: &str) -> Result<DeliveryLease, CatalogDbError> {
        Ok(DeliveryLease {
            target: Target::parse(url, Options::default())?,
            name: name.to_string(),
            host: host.to_string(),
            client: None,
            lost: watch::channel(true).1,
            held: false,
        })
    }

    /// The server as messages name it.
    pub fn server(&self) -> &str {
        &self.target.server
    }

    /// Whether this lease holds the lock (as far as it knows: see [`Self::lost`]).
    pub fn is_held(&self) -> bool {
        self.held && !*self.lost.borrow()
    }

    /// Becomes true when the connection that holds (or asks for) the lock ends.
    pub fn lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// The connection, made again when the last one ended (the lock is then not held).
    async fn client(&mut self) -> Result<&Client, CatalogDbError> {
        if *self.lost.borrow() || self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = None;
            self.held = false;
            let (mut client, connection) = self.target.connect().await?;
            let (tx, rx) = watch::channel(false);
            let server = self.target.server.clone();
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(
                        "catalog database {server}: a delivery lock's connection was lost: {}",
                        describe(&e)
                    );
                }
                let _ = tx.send(true);
            });
            self.lost = rx;
            // `deliveries` may be newer than the schema the host's registrar found.
            super::migrate::migrate(&mut client, &self.target.server).await?;
            self.client = Some(client);
        }
        Ok(self.client.as_ref().expect("connected above"))
    }

    /// Runs `op` within the operation timeout; a timeout drops the connection (and with
    /// it the lock, once the server notices).
    async fn run<T>(
        &mut self,
        step: &str,
        op: impl AsyncFnOnce(&Client, &str, &str) -> Result<T, CatalogDbError>,
    ) -> Result<T, CatalogDbError> {
        let after = self.target.options.op_timeout;
        let (server, name) = (self.target.server.clone(), self.name.clone());
        let client = self.client().await?;
        match tokio::time::timeout(after, op(client, &server, &name)).await {
            Ok(r) => r,
            Err(_) => {
                self.client = None;
                self.held = false;
                Err(CatalogDbError::Timeout {
                    server,
                    step: step.to_string(),
                    after,
                })
            }
        }
    }

    /// Takes the lock if no session of the team holds it: true when this one holds it.
    pub async fn try_take(&mut self) -> Result<bool, CatalogDbError> {
        if self.is_held() {
            return Ok(true);
        }
        let step = format!("taking the delivery lock of {}", self.name);
        let got = self
            .run(&step, async |c, server, name| {
                let row = c
                    .query_one(
                        "SELECT pg_try_advisory_lock($1, hashtext($2))",
                        &[&DELIVERY_LOCK_CLASS, &name],
                    )
                    .await
                    .map_err(sql(server, &step))?;
                Ok(row.get::<_, bool>(0))
            })
            .await?;
        self.held = got;
        Ok(got)
    }

    /// The endpoint's row: the last seq delivered and the host that saved it (none: no
    /// host delivered this name yet).
    pub async fn row(&mut self) -> Result<Option<(u64, String)>, CatalogDbError> {
        let step = format!("reading the delivery cursor of {}", self.name);
        self.run(&step, async |c, server, name| {
            let row = c
                .query_opt("SELECT seq, host FROM deliveries WHERE name = $1", &[&name])
                .await
                .map_err(sql(server, &step))?;
            Ok(row.map(|r| (r.get::<_, i64>(0).max(0) as u64, r.get::<_, String>(1))))
        })
        .await
    }

    /// Saves the cursor at `seq`, naming this host; refused (an error) when the lock is
    /// not held, since another host may be moving it.
    pub async fn save(&mut self, seq: u64) -> Result<(), CatalogDbError> {
        let step = format!("saving the delivery cursor of {}", self.name);
        if !self.is_held() {
            return Err(CatalogDbError::Connect {
                server: self.target.server.clone(),
                cause: format!("{step}: the delivery lock's connection was lost"),
            });
        }
        let host = self.host.clone();
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        self.run(&step, async |c, server, name| {
            c.execute(
                "INSERT INTO deliveries (name, seq, host) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, host = excluded.host, at = now()",
                &[&name, &seq, &host],
            )
            .await
            .map_err(sql(server, &step))?;
            Ok(())
        })
        .await
    }

    /// Frees the lock (a clean stop or reload); the connection is closed with it.
    pub async fn release(&mut self) {
        if self.is_held() {
            let step = format!("freeing the delivery lock of {}", self.name);
            let r = self
                .run(&step, async |c, server, name| {
                    c.execute(
                        "SELECT pg_advisory_unlock($1, hashtext($2))",
                        &[&DELIVERY_LOCK_CLASS, &name],
                    )
                    .await
                    .map_err(sql(server, &step))
                })
                .await;
            if let Err(e) = r {
                // Freed anyway when the session ends, just below.
                tracing::warn!("{e}");
            }
        }
        self.held = false;
        self.client = None;
    }
}
