//! The blob collector's side of the catalog: which blobs no `files` row names, decided and deleted under one lock that every recording transaction shares.
//!
//! A blob uploaded but never recorded (a host killed between its upload and its commit,
//! an upload whose record then failed and whose inbox entry went away) is an orphan. The
//! collector (src/team/orphans.rs) deletes those older than a grace period. The race it
//! must not lose: a host that found the blob in the store (uploaded long ago, "already
//! present") and is about to record a version naming it. So:
//! - every transaction that adds `files` rows ([`CatalogDb::record_version`],
//!   [`CatalogDb::import_model`]) first takes [`BLOBS_LOCK_KEY`] *shared*
//!   (`pg_advisory_xact_lock_shared`, released at its commit or rollback);
//! - the collector holds it *exclusively* (`pg_advisory_lock`, on its own connection)
//!   from the query that finds the unnamed blobs until its deletes are done
//!   ([`CatalogDb::with_unnamed_blobs`]).
//!
//! A recording transaction therefore commits either before the collector's query (which
//! then sees its rows and keeps the blobs) or after the deletes (and the recording host
//! checks its blobs again after its commit, uploading any that went: src/ingest/team.rs).
//! Hosts' collectors queue on the same lock, so one collects at a time.

use tokio_postgres::Client;

use super::CatalogDb;
use super::error::{CatalogDbError, sql};

/// The advisory lock of blob collection: "mr-blobs" in ASCII. Shared by the transactions
/// that name blobs, exclusive for the collector.
pub const BLOBS_LOCK_KEY: i64 = 0x6d72_2d62_6c6f_6273;

/// Takes [`BLOBS_LOCK_KEY`] (its one parameter) shared until the transaction ends.
pub(super) const SHARE_BLOBS_LOCK: &str = "SELECT pg_advisory_xact_lock_shared($1)";

/// Takes [`BLOBS_LOCK_KEY`] shared for the rest of transaction `tx` (see the module docs).
pub(super) async fn share_blobs_lock(
    tx: &tokio_postgres::Transaction<'_>,
    server: &str,
) -> Result<(), CatalogDbError> {
    tx.execute(SHARE_BLOBS_LOCK, &[&BLOBS_LOCK_KEY])
        .await
        .map_err(sql(server, "taking the blob lock (shared)"))?;
    Ok(())
}

impl CatalogDb {
    /// Holding [`BLOBS_LOCK_KEY`] exclusively: which of `candidates` (SHA-256s) no `files`
    /// row names, handed to `act` (which deletes them); the lock is released when `act`
    /// returns. Waits for recording transactions in flight, and theirs wait for this.
    /// Bounded like every operation: `act` must finish well within the operation timeout
    /// (a timeout drops the connection, which releases the lock). The lock is the
    /// session's, not a transaction's, so a long `act` is not cut by the server's
    /// idle-in-transaction timeout.
    pub async fn with_unnamed_blobs<T>(
        &mut self,
        candidates: &[String],
        act: impl AsyncFnOnce(Vec<String>) -> T,
    ) -> Result<T, CatalogDbError> {
        self.run(
            "collecting orphan blobs",
            async |client: &mut Client, server: &str| {
                client
                    .execute("SELECT pg_advisory_lock($1)", &[&BLOBS_LOCK_KEY])
                    .await
                    .map_err(sql(server, "taking the blob lock"))?;
                let unnamed = client
                    .query(
                        "SELECT c FROM unnest($1::text[]) AS c
                         WHERE NOT EXISTS (SELECT 1 FROM files f WHERE f.sha256 = c)",
                        &[&candidates],
                    )
                    .await
                    .map_err(sql(server, "finding the blobs no version names"));
                let done = match unnamed {
                    Ok(rows) => Ok(act(rows.iter().map(|r| r.get(0)).collect()).await),
                    Err(e) => Err(e),
                };
                client
                    .execute("SELECT pg_advisory_unlock($1)", &[&BLOBS_LOCK_KEY])
                    .await
                    .map_err(sql(server, "releasing the blob lock"))?;
                done
            },
        )
        .await
    }
}
