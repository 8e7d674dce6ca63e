//! What can go wrong talking to the catalog database, each message naming the server and the step.

use std::time::Duration;

/// A failure of the PostgreSQL catalog. `server` is always where (host or socket,
/// database, user; never the password), `step` what the daemon was doing.
#[derive(Debug, thiserror::Error)]
pub enum CatalogDbError {
    /// The connection string does not parse.
    #[error("catalog database {url}: not a valid connection string: {cause}")]
    BadUrl {
        /// The string with any password replaced by `***`.
        url: String,
        /// What the parser said.
        cause: String,
    },
    /// No connection could be made (refused, no such socket, authentication, ...).
    #[error("cannot connect to the catalog database {server}: {cause}")]
    Connect {
        /// Where.
        server: String,
        /// Why, with the server's own message.
        cause: String,
    },
    /// A statement failed, or the connection broke during it.
    #[error("catalog database {server}: {step} failed: {cause}")]
    Sql {
        /// Where.
        server: String,
        /// What the daemon was doing (`allocating a version number of resnet18`, ...).
        step: String,
        /// Why, with the server's own message (severity, SQLSTATE, detail).
        cause: String,
        /// The driver's error, for `is_closed` and the SQLSTATE.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The server did not answer in time (it may be hung, or the network down). The
    /// operation's outcome is unknown: the caller re-reads before retrying.
    #[error(
        "catalog database {server}: {step} got no answer within {after:?}; the connection is dropped and the next operation reconnects"
    )]
    Timeout {
        /// Where.
        server: String,
        /// What the daemon was doing.
        step: String,
        /// The limit.
        after: Duration,
    },
    /// The database was migrated by a newer modelreg: this binary could misread it.
    #[error(
        "catalog database {server} has schema version {found}, newer than this modelreg knows (up to {known}): upgrade modelreg on this host before connecting it"
    )]
    SchemaTooNew {
        /// Where.
        server: String,
        /// The highest version recorded in schema_migrations.
        found: i32,
        /// The highest this binary embeds.
        known: i32,
    },
    /// schema_migrations names a migration differently from this binary's file.
    #[error(
        "catalog database {server}: schema_migrations records migration {version} as {found:?}, this modelreg has {expected:?}: the database was migrated by another build"
    )]
    SchemaMismatch {
        /// Where.
        server: String,
        /// The migration's number.
        version: i32,
        /// Its name in the database.
        found: String,
        /// Its name here.
        expected: String,
    },
    /// A stored version record is not a version this binary can read.
    #[error(
        "catalog database {server}: the record of {model} v{number} is not a valid version: {cause}"
    )]
    BadRecord {
        /// Where.
        server: String,
        /// The model.
        model: String,
        /// The version.
        number: u32,
        /// What serde said.
        cause: String,
    },
    /// A change names a model, version or alias that is not there (another host may have
    /// changed it first).
    #[error("catalog database {server}: {what}")]
    Refused {
        /// Where.
        server: String,
        /// What is missing or in the way, e.g. `resnet18 v3 is removed`.
        what: String,
    },
}

impl CatalogDbError {
    /// Whether the connection is gone (server stopped, network cut, timed out): the
    /// caller may retry later; the next operation on the handle reconnects.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            CatalogDbError::Connect { .. } | CatalogDbError::Timeout { .. } => true,
            CatalogDbError::Sql { source, .. } => {
                // Closed, an I/O error underneath, or SQLSTATE class 08 (connection
                // exception) or 57P (admin or crash shutdown, cannot connect now).
                source.is_closed()
                    || std::error::Error::source(source).is_some_and(|c| c.is::<std::io::Error>())
                    || source
                        .code()
                        .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"))
            }
            _ => false,
        }
    }

    /// Whether a write's outcome is unknown: it timed out (the COMMIT may have reached
    /// the server), or the connection was lost while committing (a synchronous standby
    /// that never answers and a backend terminated in that wait: the transaction is
    /// committed on the primary, the client never hears it). The caller re-reads what it
    /// wrote before saying either way. A connection lost before the COMMIT was sent
    /// rolled the transaction back: that outcome is known.
    pub fn is_outcome_unknown(&self) -> bool {
        match self {
            CatalogDbError::Timeout { .. } => true,
            CatalogDbError::Sql { step, .. } => step == "committing" && self.is_connection_lost(),
            _ => false,
        }
    }
}

/// The driver's error in full: its kind, then the server's message with SQLSTATE, detail
/// and hint, or the I/O cause (tokio-postgres's own Display says only "db error").
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(d) = db.detail() {
            s.push_str(&format!(" (detail: {d})"));
        }
        if let Some(h) = db.hint() {
            s.push_str(&format!(" (hint: {h})"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// A mapper for `map_err`: statement `step` failed on `server`.
pub(crate) fn sql(
    server: &str,
    step: impl Into<String>,
) -> impl FnOnce(tokio_postgres::Error) -> CatalogDbError {
    let server = server.to_string();
    let step = step.into();
    move |source| CatalogDbError::Sql {
        server,
        cause: describe(&source),
        step,
        source,
    }
}
