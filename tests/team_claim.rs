//! A blob store belongs to one catalog (issue 20, a tester's HIGH: data loss). A host
//! given the team's `blobs:` with another `catalog:` (a new empty database, a catalog
//! restored elsewhere) must neither collect the team's blobs as orphans nor upload to
//! the store; a fresh team claims its store (the marker `modelreg-catalog.json`) and
//! collects orphans as before. Real daemons, a real PostgreSQL 15 with two databases,
//! one shared blob folder (tests/common/team_engines.rs).

mod common;
#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/team_engines.rs"]
mod team_engines;

use std::time::Duration;

use common::{TestDaemon, bytes, inbox_names, wait_until, write_renamed};
use team_engines::Engines;

/// The marker's file in the blob folder.
fn marker(team: &Engines) -> std::path::PathBuf {
    team.blobs.path().join("modelreg-catalog.json")
}

/// The id of the catalog in database `db`.
fn catalog_id(team: &Engines, db: &str) -> String {
    (team.pg.psql(db, "SELECT id FROM catalog_identity").trim()).to_string()
}

/// A host of the team's blob folder whose `catalog:` is database `db`, sweeping every second.
fn host_of(team: &Engines, db: &str) -> TestDaemon {
    TestDaemon::start(&config_of(team, db))
}

fn config_of(team: &Engines, db: &str) -> String {
    format!(
        "settle: 300ms\ncatalog: \"{}\"\nblobs: {}\nblobs_grace: 1s\n",
        team.pg.url(db),
        team.blobs.path().display()
    )
}

/// Waits until `d`'s log (from byte `from`) says `n` times that it did not collect, or
/// until one of `blobs` is gone (what the old code did: then the caller's check fails).
fn wait_refused_sweeps(d: &TestDaemon, from: usize, n: usize, blobs: &[std::path::PathBuf]) {
    wait_until(
        Duration::from_secs(60),
        &format!("{n} sweeps refused"),
        || {
            d.log()[from..]
                .matches("not collecting orphan blobs")
                .count()
                >= n
                || blobs.iter().any(|b| !b.exists())
        },
    );
}

/// Registers three versions of `m` on the team's host A (catalog `team`): the store
/// holds their blobs, the catalog names them.
fn team_with_versions(team: &Engines) -> (TestDaemon, Vec<Vec<u8>>) {
    let a = team.host_with("blobs_grace: 1s\n");
    let contents: Vec<Vec<u8>> = (1..=3).map(|i| bytes(i, 5_000)).collect();
    for (i, c) in contents.iter().enumerate() {
        write_renamed(&a.inbox(), "m.pt", c);
        a.wait_versions("m", i + 1);
    }
    (a, contents)
}

#[test]
fn a_host_with_a_new_empty_catalog_neither_collects_the_teams_blobs_nor_uploads() {
    let team = Engines::start();
    let (a, contents) = team_with_versions(&team);
    // A store from before markers (the tester's case): none to go by. (That the team's
    // first upload writes one: the fresh-team test.)
    let _ = std::fs::remove_file(marker(&team));

    team.pg.create_database("staging");
    let x = host_of(&team, "staging");
    let blobs: Vec<_> = contents.iter().map(|c| team.blob(c)).collect();
    wait_refused_sweeps(&x, 0, 3, &blobs);
    for c in &contents {
        assert!(team.blob(c).exists(), "X collected a blob of the team");
    }
    let problem = x.wait_problem_text("not collecting orphan blobs");
    println!("X's status said: {problem}");
    assert!(
        problem.contains("holds blobs")
            && problem.contains("never recorded a version")
            && problem.contains("`catalog:` and `blobs:`"),
        "{problem}"
    );

    let mine = bytes(9, 5_000);
    write_renamed(&x.inbox(), "n.pt", &mine);
    let problem = x.wait_problem_text("registering n failed");
    println!("X's registration: {problem}");
    assert!(problem.contains("modelreg-catalog.json"), "{problem}");
    assert!(!team.blob(&mine).exists(), "nothing uploaded by X");
    assert!(x.versions("n").is_empty());
    assert!(
        inbox_names(&x).contains(&"n.pt".to_string()),
        "the entry waits"
    );
    assert_eq!(
        team.pg
            .psql("staging", "SELECT count(*) FROM versions")
            .trim(),
        "0",
        "nothing recorded in X's catalog"
    );
    assert!(!marker(&team).exists(), "X claimed no store");
    assert_eq!(a.versions("m").len(), 3);
    assert!(
        a.problems_text().is_empty(),
        "A unaffected: {}",
        a.problems_text()
    );
}

#[test]
fn a_catalog_with_versions_finding_a_marker_of_another_catalog_is_refused() {
    let team = Engines::start();
    let (_a, contents) = team_with_versions(&team);

    // Y: a catalog of its own with a version, in a folder of its own; then moved onto
    // the team's folder (a `blobs:` pasted from the team's settings).
    team.pg.create_database("other");
    let own = tempfile::tempdir().unwrap();
    let mut y = TestDaemon::start(&format!(
        "settle: 300ms\ncatalog: \"{}\"\nblobs: {}\nblobs_grace: 1s\n",
        team.pg.url("other"),
        own.path().display()
    ));
    write_renamed(&y.inbox(), "y.pt", &bytes(7, 5_000));
    y.wait_versions("y", 1);
    y.stop();
    let from = y.log().len();
    y.write_config(&config_of(&team, "other"));
    y.spawn();

    let blobs: Vec<_> = contents.iter().map(|c| team.blob(c)).collect();
    wait_refused_sweeps(&y, from, 3, &blobs);
    for c in &contents {
        assert!(team.blob(c).exists(), "Y collected a blob of the team");
    }
    let (team_id, other_id) = (catalog_id(&team, "team"), catalog_id(&team, "other"));
    let problem = y.wait_problem_text("not collecting orphan blobs");
    println!("Y's status said: {problem}");
    assert!(
        problem.contains("belongs to another catalog")
            && problem.contains(&team_id)
            && problem.contains(&other_id)
            && problem.contains("modelreg-catalog.json"),
        "{problem}"
    );
    let mine = bytes(8, 5_000);
    write_renamed(&y.inbox(), "z.pt", &mine);
    let problem = y.wait_problem_text("registering z failed");
    assert!(problem.contains("belongs to another catalog"), "{problem}");
    assert!(!team.blob(&mine).exists(), "nothing uploaded by Y");
    assert!(
        inbox_names(&y).contains(&"z.pt".to_string()),
        "the entry waits"
    );
}

#[test]
fn a_fresh_team_claims_its_store_and_collects_orphans_as_before() {
    let team = Engines::start();
    let a = team.host_with("blobs_grace: 1s\n");
    write_renamed(&a.inbox(), "m.pt", &bytes(1, 5_000));
    a.wait_versions("m", 1);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(marker(&team)).expect("marker written")).unwrap();
    assert_eq!(m["catalog_id"], catalog_id(&team, "team").as_str(), "{m}");
    assert!(m["claimed_by"].as_str().unwrap().contains(':'), "{m}");
    assert!(!m.to_string().contains("password"), "{m}");

    // An orphan: a blob no version names.
    let orphan = bytes(2, 3_000);
    let path = team.blob(&orphan);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &orphan).unwrap();
    wait_until(
        Duration::from_secs(30),
        "the orphan to be collected",
        || !path.exists(),
    );
    assert!(team.blob(&bytes(1, 5_000)).exists());
    assert!(marker(&team).exists(), "the marker is never collected");
}
