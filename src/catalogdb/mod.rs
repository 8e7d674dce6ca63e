//! The shared catalog of team mode in PostgreSQL: versions numbered inside the transaction that records them, a change log every host tails.
//!
//! A [`CatalogDb`] is one connection (one host's registrar holds one; a [`listen`]er
//! holds another). Each operation is one transaction: [`CatalogDb::record_version`]
//! allocates the version number by raising the model row's `highest` (the row stays
//! locked until commit, so hosts racing on a model get dense, unique numbers), and every
//! write appends a row to `changes` with the next change seq and `NOTIFY`s channel
//! [`CHANNEL`] with it. A host rebuilds its catalog from [`CatalogDb::snapshot`] (one
//! REPEATABLE READ transaction, consistent with a change seq) and keeps it current with
//! [`CatalogDb::changes_since`] whenever its listener wakes. The schema is in
//! `migrations/` and docs/team.md; [`migrate`] applies it on connect. `modelreg migrate`
//! brings a local registry in with [`CatalogDb::import_model`]. The blob collector asks
//! which blobs no version names with [`CatalogDb::with_unnamed_blobs`], under a lock every
//! recording transaction shares (`orphans.rs`). A hook or webhook is delivered by the one
//! host holding its [`DeliveryLease`] (`lease.rs`), from its cursor in `deliveries`.
//!
//! Failures: connecting is bounded by [`Options::connect_timeout`], each operation by
//! [`Options::op_timeout`]; a lost connection is an error naming the server
//! ([`CatalogDbError::is_connection_lost`]), and the next operation on the same handle
//! connects again. No TLS yet: a Unix socket or a private network (docs/team.md).

mod error;
mod import;
mod lease;
mod listen;
pub mod migrate;
mod orphans;
mod read;
mod write;

pub use error::{CatalogDbError, describe};
pub use import::{ImportConflict, ImportPlan, Imported, plan_import};
pub use lease::{DELIVERY_LOCK_CLASS, DeliveryLease};
pub use listen::{ChangeListener, listen};
pub use orphans::BLOBS_LOCK_KEY;
pub use read::{Change, ChangeKind, LoggedEvent, Snapshot};
pub use write::{Recorded, Removal};

use error::sql as sql_err;

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls, Statement};

/// The channel every write `NOTIFY`s, its payload the change seq as decimal text.
pub const CHANNEL: &str = "modelreg_changes";

/// How long to wait for the server.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// For a connection to be made (TCP connect, startup, authentication).
    pub connect_timeout: Duration,
    /// For one operation's transaction to finish once connected.
    pub op_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout: Duration::from_secs(5),
            op_timeout: Duration::from_secs(30),
        }
    }
}

/// A connection to the catalog database (see the module docs). Operations take
/// `&mut self`: one transaction at a time per connection, as one registrar writes.
pub struct CatalogDb {
    target: Target,
    client: Option<Client>,
    /// Statements prepared on `client`, by their text: parsed and planned once per
    /// connection, so that a statement sent inside a transaction costs one round trip
    /// (a text query costs two: prepare, then execute), and so that statements can be
    /// pipelined (sent together, answered together). Emptied with the connection.
    prepared: HashMap<&'static str, Statement>,
    /// An operation of [`CatalogDb::run_prepared`] began on `client` and did not end
    /// (its future was dropped, or it panicked): the connection may be inside its
    /// transaction, so the next operation connects afresh.
    unfinished: bool,
    applied: Vec<i32>,
}

/// Where to connect and how, parsed once.
#[derive(Clone)]
pub(crate) struct Target {
    config: Config,
    /// The server as messages name it (host or socket, database, user).
    pub(crate) server: String,
    pub(crate) options: Options,
}

impl Target {
    /// Parses `url`: `postgres://user@host:port/db`, the key=value form (`host=/run/pg
    /// dbname=modelreg`), or a URL whose host is a percent-encoded socket folder
    /// (`postgres://modelreg@%2Frun%2Fpostgresql/modelreg`).
    pub(crate) fn parse(url: &str, options: Options) -> Result<Target, CatalogDbError> {
        let mut config = Config::from_str(url).map_err(|e| CatalogDbError::BadUrl {
            url: redact(url),
            cause: describe(&e),
        })?;
        // Said at once rather than left to the handshake ("no TLS implementation
        // configured"): TLS to the catalog is not built yet (docs/team.md).
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(CatalogDbError::BadUrl {
                url: redact(url),
                cause: "sslmode=require: TLS to the catalog database is not supported yet; \
                        use a Unix socket or a private network (docs/team.md)"
                    .into(),
            });
        }
        config.connect_timeout(options.connect_timeout);
        // A host that vanishes inside a transaction (power cut, network cut) leaves its
        // session idle in it, holding the model's row lock, until the server's TCP
        // notices (hours): every other host's write to that model would wait that long.
        // No transaction here idles between statements for anything like the operation
        // timeout, after which the client has given up on it anyway; so the server ends
        // such a session then and the lock is released (tests/team_netns.rs).
        let idle = format!(
            "-c idle_in_transaction_session_timeout={}",
            options.op_timeout.as_millis().max(1)
        );
        let server_options = match config.get_options() {
            Some(given) => format!("{given} {idle}"),
            None => idle,
        };
        config.options(server_options);
        if config.get_application_name().is_none() {
            config.application_name("modelreg");
        }
        Ok(Target {
            server: server_name(&config),
            config,
            options,
        })
    }

    /// Connects (bounded by the connect timeout) and drives the connection on a task.
    pub(crate) async fn connect(
        &self,
    ) -> Result<
        (
            Client,
            tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
        ),
        CatalogDbError,
    > {
        let connect = self.config.connect(NoTls);
        // The driver's own timeout covers each socket connect; this one covers the whole
        // startup too (a server that accepts and then says nothing).
        match tokio::time::timeout(self.options.connect_timeout * 2, connect).await {
            Ok(Ok(pair)) => Ok(pair),
            Ok(Err(e)) => Err(CatalogDbError::Connect {
                server: self.server.clone(),
                cause: describe(&e),
            }),
            Err(_) => Err(CatalogDbError::Connect {
                server: self.server.clone(),
                cause: format!("no answer within {:?}", self.options.connect_timeout * 2),
            }),
        }
    }
}

impl CatalogDb {
    /// Connects to `url` and brings the schema up to date ([`migrate::migrate`]).
    pub async fn connect(url: &str, options: Options) -> Result<CatalogDb, CatalogDbError> {
        let mut db = CatalogDb {
            target: Target::parse(url, options)?,
            client: None,
            prepared: HashMap::new(),
            unfinished: false,
            applied: Vec::new(),
        };
        db.client().await?;
        Ok(db)
    }

    /// The server as messages name it.
    pub fn server(&self) -> &str {
        &self.target.server
    }

    /// The migrations this handle applied when it connected (empty: the schema was
    /// already current).
    pub fn migrations_applied(&self) -> &[i32] {
        &self.applied
    }

    /// The open connection, made again (and the schema checked again) when the last one
    /// was lost.
    async fn client(&mut self) -> Result<&mut Client, CatalogDbError> {
        if self.unfinished || self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = None;
            self.unfinished = false;
            self.prepared.clear();
            let (mut client, connection) = self.target.connect().await?;
            let server = self.target.server.clone();
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(
                        "catalog database {server}: connection lost: {}",
                        describe(&e)
                    );
                }
            });
            let applied = migrate::migrate(&mut client, &self.target.server).await?;
            self.applied.extend(applied);
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// Runs `op` on the connection within the operation timeout; a timeout drops the
    /// connection (its state is unknown), so the next operation starts afresh.
    async fn run<T>(
        &mut self,
        step: &str,
        op: impl AsyncFnOnce(&mut Client, &str) -> Result<T, CatalogDbError>,
    ) -> Result<T, CatalogDbError> {
        let after = self.target.options.op_timeout;
        let server = self.target.server.clone();
        let client = self.client().await?;
        match tokio::time::timeout(after, op(client, &server)).await {
            Ok(r) => r,
            Err(_) => {
                self.client = None;
                Err(CatalogDbError::Timeout {
                    server,
                    step: step.to_string(),
                    after,
                })
            }
        }
    }
}

/// Which catalog this is (`catalog_identity`, migration 0003): what the team's blob
/// store's marker names (docs/team.md, "A blob store belongs to one catalog").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The random id made with the schema.
    pub id: String,
    /// When, RFC 3339 UTC.
    pub created_at: String,
    /// Whether any version was ever recorded (a `versions` row, removed or not).
    pub has_versions: bool,
}

impl CatalogDb {
    /// The catalog's [`Identity`].
    pub async fn identity(&mut self) -> Result<Identity, CatalogDbError> {
        self.run(
            "reading the catalog's identity",
            async |client: &mut Client, server: &str| {
                let row = client
                    .query_one(
                        "SELECT id::text,
                                to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                                EXISTS (SELECT 1 FROM versions) OR EXISTS (SELECT 1 FROM tombstones)
                         FROM catalog_identity",
                        &[],
                    )
                    .await
                    .map_err(sql_err(server, "reading catalog_identity"))?;
                Ok(Identity {
                    id: row.get(0),
                    created_at: row.get(1),
                    has_versions: row.get(2),
                })
            },
        )
        .await
    }
}

impl CatalogDb {
    /// Like [`CatalogDb::run`], with `sqls` prepared on this connection first (each once
    /// per connection; those missing are prepared together, in one round trip) and given
    /// to `op` in the same order. `op` manages its own transaction (it may pipeline
    /// `BEGIN` and `COMMIT` with its statements, see [`pipeline`]) and must end it on
    /// every path it returns by; an `op` that never returns (dropped, or panicking) leaves
    /// the connection to be dropped by the next operation.
    async fn run_prepared<T>(
        &mut self,
        step: &str,
        sqls: &[&'static str],
        op: impl AsyncFnOnce(&Client, &[Statement], &str) -> Result<T, CatalogDbError>,
    ) -> Result<T, CatalogDbError> {
        let after = self.target.options.op_timeout;
        let server = self.target.server.clone();
        self.client().await?;
        let (client, prepared) = (
            self.client.as_ref().expect("connected above"),
            &mut self.prepared,
        );
        self.unfinished = true;
        let work = async {
            let missing: Vec<&'static str> = (sqls.iter().copied())
                .filter(|s| !prepared.contains_key(s))
                .collect();
            let made =
                futures_util::future::try_join_all(missing.iter().map(|s| client.prepare(s)))
                    .await
                    .map_err(error::sql(
                        &server,
                        format!("preparing the statements of {step}"),
                    ))?;
            prepared.extend(missing.into_iter().zip(made));
            let statements: Vec<Statement> = sqls.iter().map(|s| prepared[s].clone()).collect();
            op(client, &statements, &server).await
        };
        match tokio::time::timeout(after, work).await {
            Ok(r) => {
                self.unfinished = false;
                r
            }
            Err(_) => {
                self.client = None;
                Err(CatalogDbError::Timeout {
                    server,
                    step: step.to_string(),
                    after,
                })
            }
        }
    }
}

/// Sends `requests` to the server in this order without waiting between them (one round
/// trip for all: tokio-postgres sends a request when its future is first polled, and
/// answers arrive in the order sent), then waits for every answer and returns them in
/// that order. The server runs them one after the other, each seeing what the ones
/// before it did (and, in READ COMMITTED, what committed before it started). Each is a prepared statement's query or a simple query
/// (`BEGIN`, `COMMIT`): a text query would be prepared first and lose its place.
pub(crate) async fn pipeline<'a>(
    requests: Vec<Request<'a>>,
) -> Vec<Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>> {
    let mut pending: Vec<Request<'a>> = requests;
    let mut done: Vec<Option<Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>>> =
        (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        // In index order on every poll: the first poll sends them in that order.
        let mut all = true;
        for (i, f) in pending.iter_mut().enumerate() {
            if done[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(r) => done[i] = Some(r),
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    done.into_iter()
        .map(|r| r.expect("every request answered"))
        .collect()
}

/// One request of a [`pipeline`]: a boxed future of its rows.
pub(crate) type Request<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>>
            + Send
            + 'a,
    >,
>;

/// The server a connection string names, as messages name it (host or socket, database,
/// user; never the password), or why the string is refused; nothing is contacted.
pub fn server_of(url: &str, options: Options) -> Result<String, CatalogDbError> {
    Target::parse(url, options).map(|t| t.server)
}

/// `socket /run/postgresql/.s.PGSQL.5432, database modelreg, user modelreg`, or
/// `db1.example:5432, ...`: where the messages say the server is.
fn server_name(config: &Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(dir) => format!("socket {}/.s.PGSQL.{port}", dir.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432 (no host given)".to_string()
    } else {
        hosts.join(" or ")
    };
    let user = config.get_user().unwrap_or("(none)");
    let db = config.get_dbname().unwrap_or(user);
    format!("{hosts}, database {db}, user {user}")
}

/// `url` with a password, in either form, replaced by `***`, for a message.
fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (auth, tail) = rest
            .split_once('@')
            .map_or((None, rest), |(a, t)| (Some(a), t));
        return match auth.and_then(|a| a.split_once(':')) {
            Some((user, _)) => format!("{scheme}://{user}:***@{tail}"),
            None => url.to_string(),
        };
    }
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_named_without_passwords() {
        let t = Target::parse("postgres://reg:secret@db1:6543/cat", Options::default()).unwrap();
        assert_eq!(t.server, "db1:6543, database cat, user reg");
        let t = Target::parse("host=/tmp/pg user=postgres dbname=x", Options::default()).unwrap();
        assert_eq!(
            t.server,
            "socket /tmp/pg/.s.PGSQL.5432, database x, user postgres"
        );
        let t = Target::parse("postgres://postgres@%2Ftmp%2Fpg/x", Options::default()).unwrap();
        assert_eq!(
            t.server,
            "socket /tmp/pg/.s.PGSQL.5432, database x, user postgres"
        );
        assert_eq!(
            redact("postgres://reg:secret@db1/cat"),
            "postgres://reg:***@db1/cat"
        );
        assert_eq!(redact("host=db1 password=secret"), "host=db1 password=***");
        let e = Target::parse("postgres://reg:secret@db1:notaport/cat", Options::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            !e.contains("secret") && e.contains("not a valid connection string"),
            "{e}"
        );
    }
}
