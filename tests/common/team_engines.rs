//! The shared engines of a team-mode test on one machine: a throwaway PostgreSQL 15
//! cluster with database `team` (tests/common/postgres.rs) and a blob folder, and hosts
//! (real daemons, each in its own root) configured for them. Included with `#[path]`
//! next to `common` and `postgres` by tests/team.rs and tests/team_changes.rs.
#![allow(dead_code)]

use std::path::PathBuf;

use super::common::TestDaemon;
use super::postgres::PgCluster;

/// A PostgreSQL cluster with database `team`, and a blob folder.
pub struct Engines {
    pub pg: PgCluster,
    pub blobs: tempfile::TempDir,
}

impl Engines {
    /// Starts the cluster and makes the folder.
    pub fn start() -> Engines {
        let pg = PgCluster::start();
        pg.create_database("team");
        Engines {
            pg,
            blobs: tempfile::Builder::new()
                .prefix("modelreg-blobs.")
                .tempdir()
                .unwrap(),
        }
    }

    /// A host: a daemon in its own root, configured for the team.
    pub fn host(&self) -> TestDaemon {
        self.host_with("")
    }

    /// [`Engines::host`] with more settings (`extra`, whole YAML lines).
    pub fn host_with(&self, extra: &str) -> TestDaemon {
        let config = format!(
            "settle: 300ms\ncatalog: \"{}\"\nblobs: {}\n{extra}",
            self.pg.url("team"),
            self.blobs.path().display()
        );
        TestDaemon::start(&config)
    }

    /// Where the blob folder keeps the blob of `content`.
    pub fn blob(&self, content: &[u8]) -> PathBuf {
        let sha = modelreg::store::sha256_hex(content);
        self.blobs.path().join("sha256").join(&sha[..2]).join(sha)
    }
}
