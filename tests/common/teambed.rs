//! A team on one machine: hosts that each run a real daemon in a network namespace of their own, and a `db` host running PostgreSQL and Garage, reachable only over the bridge.
//!
//! Built from tests/common/netns.rs ([`Net`]), postgres.rs ([`PgCluster::start_in`]) and
//! garage.rs ([`Garage::start_in`]): the `db` host's PostgreSQL listens on its address
//! (and on a Unix socket the daemons are not told of), Garage's S3 API on the same
//! address, and each daemon is configured with those addresses (`catalog:`, `blobs:`,
//! `AWS_*`), so every query and every byte of a blob crosses a veth pair and the bridge.
//! A daemon's own socket is a path, which the test reaches from its own namespace like
//! any client on that host would. Used by tests/team_hosts.rs and the `team` bench
//! scenario, which include this file next to those three (`#[path]` modules at their
//! crate root, as `netns`, `postgres` and `garage`).
//!
//! Drop order is the fields' order: the daemons first, then Garage and PostgreSQL, the
//! namespaces last. Needs root (namespaces), iproute2, PostgreSQL 15 and a Garage
//! binary: [`missing`] says which is absent, for a caller that skips.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::TestDaemon;
use crate::garage::{self, Garage};
use crate::netns::Net;
use crate::postgres::{self, PgCluster};

/// The prefix of the blob keys in the bucket (`blobs: s3://BUCKET/team`).
pub const PREFIX: &str = "team";

/// The test bed (see the module docs).
pub struct TeamBed {
    /// One daemon per host, in the order the hosts were named.
    pub hosts: Vec<TestDaemon>,
    /// The S3 server on the `db` host.
    pub s3: Garage,
    /// The catalog's server on the `db` host, database `team`.
    pub pg: PgCluster,
    /// The namespaces and the bridge.
    pub net: Net,
    /// The hosts' names, as in `net`.
    names: Vec<String>,
}

/// What this machine lacks for a [`TeamBed`], or `None` when it has everything.
pub fn missing() -> Option<String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespaces need root".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("`ip` not found (apt-get install iproute2)".into());
    }
    if !Path::new(postgres::BIN).join("initdb").exists() {
        return Some(format!(
            "PostgreSQL 15 not found in {} (apt-get install postgresql-15)",
            postgres::BIN
        ));
    }
    if garage::find_binary().is_none() {
        return Some(format!(
            "Garage not found (MODELREG_GARAGE, {}, or PATH; .ci/run installs it)",
            garage::CACHED
        ));
    }
    None
}

impl TeamBed {
    /// Starts the `db` host (PostgreSQL with database `team`, Garage) and one daemon per
    /// name in `hosts`, each in a root made under `parent`, with `config` (settings
    /// beyond the team's two, e.g. `settle:` or `http:`) and logging at `log` (RUST_LOG).
    pub fn start(hosts: &[&str], parent: &Path, config: &str, log: &str) -> TeamBed {
        let mut names = vec!["db"];
        names.extend_from_slice(hosts);
        let net = Net::new(&names);
        let db = net.host("db").clone();
        let pg = PgCluster::start_in(&db.ns, db.addr, &net.subnet());
        pg.create_database("team");
        let s3 = Garage::start_in(&db.ns, db.addr);
        let mut bed = TeamBed {
            hosts: Vec::new(),
            s3,
            pg,
            net,
            names: hosts.iter().map(|h| h.to_string()).collect(),
        };
        let team_config = format!(
            "{config}catalog: \"{}\"\nblobs: s3://{}/{PREFIX}\n",
            bed.pg.tcp_url("team"),
            garage::BUCKET
        );
        for host in hosts {
            let d = TestDaemon::new_in(parent, &team_config);
            bed.hosts.push(d);
            let i = bed.hosts.len() - 1;
            bed.spawn(i, host, log);
        }
        bed
    }

    /// The S3 settings the daemons get, as `AWS_*` variables.
    pub fn aws_env(&self) -> [(&'static str, String); 4] {
        [
            ("AWS_ENDPOINT_URL", self.s3.endpoint.clone()),
            ("AWS_REGION", garage::REGION.to_string()),
            ("AWS_ACCESS_KEY_ID", self.s3.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.s3.secret.clone()),
        ]
    }

    /// Starts host `i`'s daemon inside namespace `host` and waits for its socket.
    fn spawn(&mut self, i: usize, host: &str, log: &str) {
        let env = self.aws_env();
        let d = &self.hosts[i];
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.log_path())
            .unwrap();
        // `ip netns exec` execs the daemon: the child is the daemon itself, so the
        // harness's signals and kill reach it.
        let child = self
            .net
            .command(host, crate::common::BIN)
            .arg("serve")
            .arg("--root")
            .arg(d.root.path())
            .env("RUST_LOG", log)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn modelreg in its namespace");
        let d = &mut self.hosts[i];
        d.adopt(child);
        d.wait_ready_within(Duration::from_secs(60), Duration::from_millis(20));
    }

    /// The daemon of host `name`.
    pub fn host(&self, name: &str) -> &TestDaemon {
        let i = (self.names.iter().position(|n| n == name))
            .unwrap_or_else(|| panic!("no host {name} in this bed"));
        &self.hosts[i]
    }

    /// The SHA-256 of every blob in the bucket under [`PREFIX`], listed from host `from`
    /// over the bridge with modelreg's own S3 layer.
    pub fn blob_shas(&self, from: &str) -> BTreeSet<String> {
        let env = self.aws_env();
        let options = modelreg::blobs::BlobOptions {
            endpoint: Some(env[0].1.clone()),
            region: Some(env[1].1.clone()),
            access_key_id: Some(env[2].1.clone()),
            secret_access_key: Some(env[3].1.clone()),
            ..Default::default()
        };
        let setting = format!("s3://{}/{PREFIX}", garage::BUCKET);
        self.net
            .spawn_async_in(from, move || async move {
                let store = modelreg::blobs::BlobStore::open(&setting, &options)
                    .unwrap_or_else(|e| panic!("{setting}: {e}"));
                let listed = store
                    .list(Duration::ZERO)
                    .await
                    .unwrap_or_else(|e| panic!("listing {setting}: {e}"));
                listed.into_iter().map(|b| b.sha256).collect()
            })
            .join()
            .unwrap()
    }
}
