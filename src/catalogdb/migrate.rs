//! Schema migrations: the SQL files of `migrations/`, applied in order, once, under an advisory lock.
//!
//! Every daemon runs [`migrate`] on connect. The whole check-and-apply is one transaction
//! that first takes `pg_advisory_xact_lock(`[`LOCK_KEY`]`)`: daemons starting together
//! queue on the lock, the first applies what is missing and records it in
//! `schema_migrations`, the others then find it recorded and apply nothing. A failed
//! migration rolls back whole (PostgreSQL's DDL is transactional), so a database is never
//! left half-migrated. A database recording a version this binary does not embed was
//! migrated by a newer modelreg: refused, since this one could misread its tables.

use tokio_postgres::Client;

use super::error::{CatalogDbError, sql};

/// One migration: `migrations/NNNN_name.sql`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// NNNN: applied in ascending order.
    pub version: i32,
    /// The file's name without the number and `.sql`.
    pub name: &'static str,
    /// Its statements.
    pub sql: &'static str,
}

/// Every migration this binary knows, in order. Add a file and a line; never edit a
/// released one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "catalog",
        sql: include_str!("../../migrations/0001_catalog.sql"),
    },
    Migration {
        version: 2,
        name: "deliveries",
        sql: include_str!("../../migrations/0002_deliveries.sql"),
    },
    Migration {
        version: 3,
        name: "catalog_identity",
        sql: include_str!("../../migrations/0003_catalog_identity.sql"),
    },
];

/// The advisory lock key held while migrating: "modelreg" in ASCII, so that it does not
/// collide with another application's keys on a shared server.
pub const LOCK_KEY: i64 = 0x6d6f_6465_6c72_6567;

/// Brings the schema up to date; returns the versions this call applied (empty when
/// another daemon, or an earlier start, already had).
pub async fn migrate(client: &mut Client, server: &str) -> Result<Vec<i32>, CatalogDbError> {
    let tx = client
        .transaction()
        .await
        .map_err(sql(server, "starting the migration transaction"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(sql(server, "taking the migration lock"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    integer     PRIMARY KEY,
             name       text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(sql(server, "creating schema_migrations"))?;
    let rows = tx
        .query(
            "SELECT version, name FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(sql(server, "reading schema_migrations"))?;
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    let mut done = Vec::new();
    for row in rows {
        let (version, name): (i32, String) = (row.get(0), row.get(1));
        let Some(m) = MIGRATIONS.iter().find(|m| m.version == version) else {
            return Err(if version > known {
                CatalogDbError::SchemaTooNew {
                    server: server.to_string(),
                    found: version,
                    known,
                }
            } else {
                CatalogDbError::SchemaMismatch {
                    server: server.to_string(),
                    version,
                    found: name,
                    expected: "(none: this modelreg has no such migration)".into(),
                }
            });
        };
        if m.name != name {
            return Err(CatalogDbError::SchemaMismatch {
                server: server.to_string(),
                version,
                found: name,
                expected: m.name.to_string(),
            });
        }
        done.push(version);
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        let step = format!("applying migration {:04}_{}.sql", m.version, m.name);
        tx.batch_execute(m.sql).await.map_err(sql(server, &step))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await
        .map_err(sql(server, &step))?;
        applied.push(m.version);
    }
    tx.commit()
        .await
        .map_err(sql(server, "committing the migrations"))?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_ascend_and_match_their_files() {
        let mut last = 0;
        for m in MIGRATIONS {
            assert!(m.version > last, "{} out of order", m.version);
            last = m.version;
            let file = format!("{:04}_{}.sql", m.version, m.name);
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(&file);
            assert_eq!(std::fs::read_to_string(&path).unwrap(), m.sql, "{file}");
        }
        let files =
            std::fs::read_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations"))
                .unwrap()
                .count();
        assert_eq!(
            files,
            MIGRATIONS.len(),
            "every file in migrations/ is listed in MIGRATIONS"
        );
    }
}
