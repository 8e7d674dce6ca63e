//! A blob store belongs to one catalog: its marker (`modelreg-catalog.json`) names the catalog's identity, checked before a host uploads or collects.
//!
//! A host given the team's `blobs:` with another `catalog:` (a new empty database, a
//! catalog restored into another one, a typo) would collect every blob of the team as an
//! orphan its catalog does not name, and its own uploads would be orphans for the real
//! team. So before the first upload or sweep (and again after a failed check) a host
//! reads the marker ([`claim`]):
//! - it names this catalog: fine;
//! - it names another: refused, nothing uploaded or collected;
//! - there is none: written (the store claimed), unless this catalog never recorded a
//!   version while the store already holds blobs (another team's store, or a catalog
//!   restored elsewhere): refused, and nothing written.
//!
//! docs/team.md, "A blob store belongs to one catalog".

use serde::{Deserialize, Serialize};

use crate::blobs::BlobStore;
use crate::catalogdb::Identity;

/// The marker's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Marker {
    /// The id of the catalog the store belongs to (`catalog_identity`).
    pub catalog_id: String,
    /// That catalog's server and database as messages name them (never a password).
    pub catalog: String,
    /// When that catalog was made.
    pub catalog_created_at: String,
    /// The host that claimed the store.
    pub claimed_by: String,
    /// When.
    pub claimed_at: String,
}

/// What [`claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// The marker names this catalog.
    Already,
    /// There was none: this host wrote it.
    Now,
}

/// Checks (or writes) the marker of `store` for catalog `id` (on `server`), as host `host`
/// (see the module docs). `Err` is the whole message: both catalogs, the marker's key,
/// what to check.
pub async fn claim(
    store: &BlobStore,
    id: &Identity,
    server: &str,
    host: &str,
) -> Result<Claimed, String> {
    let key = store.marker_key();
    let check = "check that `catalog:` and `blobs:` are the team's pair (docs/team.md, \
                 \"A blob store belongs to one catalog\")";
    for _ in 0..2 {
        let found = store.read_marker().await.map_err(|e| e.to_string())?;
        if let Some(bytes) = found {
            let m: Marker = serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "the blob store's marker {key} cannot be read: {e}; nothing is uploaded to \
                     or collected from {} until it names a catalog; {check}",
                    store.describe()
                )
            })?;
            if m.catalog_id == id.id {
                return Ok(Claimed::Already);
            }
            return Err(format!(
                "blob store {} belongs to another catalog: its marker {key} names catalog {} \
                 ({}, claimed by {} at {}), and this host's catalog is {} ({server}); nothing \
                 is uploaded to it or collected from it; {check}",
                store.describe(),
                m.catalog_id,
                m.catalog,
                m.claimed_by,
                m.claimed_at,
                id.id
            ));
        }
        if !id.has_versions && store.has_blobs().await.map_err(|e| e.to_string())? {
            return Err(format!(
                "blob store {} holds blobs and this host's catalog {} ({server}) has never \
                 recorded a version: it is another team's store or a catalog restored \
                 elsewhere; nothing is uploaded to it or collected from it, and it is not \
                 claimed (no marker {key} written); {check}",
                store.describe(),
                id.id
            ));
        }
        let marker = Marker {
            catalog_id: id.id.clone(),
            catalog: server.to_string(),
            catalog_created_at: id.created_at.clone(),
            claimed_by: host.to_string(),
            claimed_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        };
        let bytes = serde_json::to_vec_pretty(&marker).map_err(|e| e.to_string())?;
        if store
            .write_marker(&bytes)
            .await
            .map_err(|e| e.to_string())?
        {
            tracing::info!(
                "claimed blob store {} for catalog {} ({server}): wrote {key}",
                store.describe(),
                id.id
            );
            return Ok(Claimed::Now);
        }
        // Another host wrote one meanwhile: read it.
    }
    Err(format!(
        "the blob store's marker {key} changed while this host read it; retried later"
    ))
}
