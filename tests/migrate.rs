//! `modelreg migrate` and `modelreg verify --catalog`: a local registry made by the real
//! daemon moved to a real PostgreSQL 15 (tests/common/postgres.rs) and a real Garage S3
//! server (tests/common/garage.rs) or a shared folder, compared field by field; a second
//! run writes nothing; a catalog holding other data is refused; a blob deleted or
//! damaged behind the catalog's back is found, and `--repair` uploads it again.

mod common;
#[path = "common/garage.rs"]
mod garage;
#[path = "common/postgres.rs"]
mod postgres;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::*;
use garage::{BUCKET, Garage, REGION};
use modelreg::blobs::{BlobOptions, BlobStore};
use modelreg::catalogdb::{CatalogDb, Options, Snapshot};
use modelreg::registry::Catalog;
use postgres::PgCluster;

/// The team backends: a catalog database and an S3 bucket prefix.
struct Team {
    pg: PgCluster,
    garage: Garage,
    url: String,
    blobs: String,
}

impl Team {
    fn start() -> Team {
        let pg = PgCluster::start();
        pg.create_database("team");
        let garage = Garage::start();
        Team {
            url: pg.url("team"),
            blobs: format!("s3://{BUCKET}/team"),
            pg,
            garage,
        }
    }

    /// The AWS_* variables that name the test server, as an operator would set them.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.garage.endpoint.clone()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ACCESS_KEY_ID", self.garage.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.garage.secret.clone()),
        ]
    }

    /// `modelreg ARGS` with the AWS variables set (and no daemon socket involved).
    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .envs(self.env())
            .env_remove("MODELREG_URL")
            .output()
            .expect("run modelreg")
    }

    /// `migrate --root ROOT --to URL --blobs STORE`.
    fn migrate(&self, root: &Path, blobs: &str) -> Output {
        self.migrate_to(root, &self.url, blobs)
    }

    fn migrate_to(&self, root: &Path, url: &str, blobs: &str) -> Output {
        self.run(&[
            "migrate",
            "--root",
            root.to_str().unwrap(),
            "--to",
            url,
            "--blobs",
            blobs,
        ])
    }

    fn store(&self, setting: &str) -> BlobStore {
        let options = BlobOptions {
            endpoint: Some(self.garage.endpoint.clone()),
            region: Some(REGION.into()),
            access_key_id: Some(self.garage.key_id.clone()),
            secret_access_key: Some(self.garage.secret.clone()),
            ..BlobOptions::default()
        };
        BlobStore::open(setting, &options).unwrap()
    }

    fn snapshot(&self) -> Snapshot {
        block_on(async {
            let mut db = CatalogDb::connect(&self.url, Options::default())
                .await
                .unwrap();
            db.snapshot().await.unwrap()
        })
    }

    fn psql(&self, sql: &str) -> String {
        self.pg.psql("team", sql)
    }
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn succeeds(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// A registry as the daemon makes it: resnet with sidecar metrics, three versions, v1
/// removed (a tombstone), v3 deprecated, v4 registered then removed (so `highest` is a
/// removed number), production moved v1 -> v2, staging set then removed, canary on v3;
/// bert a folder model of three files (one in a subfolder); tiny sharing a file's bytes
/// with resnet v2. The daemon is stopped at the end, as for a cut-over.
fn local_registry() -> TestDaemon {
    let mut d = TestDaemon::quick();
    let inbox = d.inbox();
    for (i, acc) in [0.61, 0.72, 0.70, 0.5].into_iter().enumerate() {
        write_renamed(
            &inbox,
            "resnet.metrics.yaml",
            sidecar(&[("accuracy", acc), ("loss", 1.0 - acc)]).as_bytes(),
        );
        write_renamed(&inbox, "resnet.pt", &bytes(i as u64 + 1, 3000 + i));
        d.wait_versions("resnet", i + 1);
    }
    let folder = tempfile::tempdir().unwrap();
    let bert = folder.path().join("bert");
    std::fs::create_dir_all(bert.join("tokenizer")).unwrap();
    write(&bert.join("config.json"), b"{\"hidden_size\": 8}\n");
    write(&bert.join("model.safetensors"), &bytes(20, 5000));
    write(&bert.join("tokenizer/vocab.txt"), b"[PAD]\n[UNK]\nhello\n");
    std::fs::rename(&bert, inbox.join("bert")).unwrap();
    d.wait_versions("bert", 1);
    write_renamed(&inbox, "tiny.pt", &bytes(2, 3001));
    d.wait_versions("tiny", 1);
    for args in [
        &["alias", "set", "resnet", "production", "v1"][..],
        &["alias", "set", "resnet", "production", "v2"],
        &["alias", "set", "resnet", "staging", "v2"],
        &["alias", "rm", "resnet", "staging"],
        &["alias", "set", "resnet", "canary", "v3"],
        &["alias", "set", "bert", "production", "v1"],
        &["rm", "resnet", "v1", "--reason", "trained on leaked data"],
        &["rm", "resnet", "v4", "--reason", "diverged"],
        &["deprecate", "resnet", "v3", "--reason", "eval bug"],
    ] {
        ok(&d, args);
    }
    d.stop();
    d
}

fn local_catalog(root: &Path) -> Catalog {
    modelreg::registry::persist::load_current(&root.join("registry.yaml"))
        .unwrap()
        .unwrap()
}

/// The catalog holds each model exactly as the local registry: `highest`, every version's
/// whole record (files, metrics, metadata, sidecar, deprecation, removal), aliases and
/// every alias move in order.
fn assert_same_catalog(local: &Catalog, team: &Snapshot) {
    let names = |m: &BTreeMap<String, _>| m.keys().cloned().collect::<Vec<String>>();
    assert_eq!(names(&local.models), names(&team.models));
    for (name, want) in &local.models {
        let have = &team.models[name];
        assert_eq!(have.highest, want.highest, "{name}: highest");
        assert_eq!(have.versions.len(), want.versions.len(), "{name}: versions");
        for (h, w) in have.versions.iter().zip(&want.versions) {
            assert_eq!(h, w, "{name} v{}", w.number);
        }
        assert_eq!(have.aliases, want.aliases, "{name}: aliases");
        assert_eq!(
            have.alias_history, want.alias_history,
            "{name}: alias history"
        );
    }
}

#[test]
fn a_local_registry_moves_to_postgres_and_s3_with_numbers_tombstones_and_aliases_kept() {
    let d = local_registry();
    let root = d.root.path();
    let local = local_catalog(root);
    // The registry is what this test means it to be.
    let resnet = &local.models["resnet"];
    assert_eq!(resnet.highest, 4);
    assert!(resnet.versions[0].removed.is_some() && resnet.versions[3].removed.is_some());
    assert!(resnet.versions[2].deprecated.is_some());
    assert_eq!(resnet.alias_history.len(), 5);
    assert_eq!(local.models["bert"].versions[0].files.len(), 3);
    let team = Team::start();

    let out = succeeds(&team.migrate(root, &team.blobs));
    eprintln!("{out}");
    assert!(
        out.contains("resnet: 4 version(s) added (v1 v2 v3 v4; 2 removed, kept as tombstones), highest v4, 5 alias move(s) added, aliases canary=v3 production=v2"),
        "{out}"
    );
    assert!(out.contains("tiny: 1 version(s) added (v1), highest v1; 1 file(s): 0 uploaded (0 B), 1 already there"), "{out}");
    assert!(out.contains("migrated 3 model(s)"), "{out}");
    // resnet v2, v3, bert's 3 files; tiny's bytes are resnet v2's: sent once.
    assert!(out.contains("5 file(s) uploaded"), "{out}");
    assert!(out.contains("1 already there"), "{out}");

    let snap = team.snapshot();
    assert_same_catalog(&local, &snap);
    // The rows beside the records: state, tombstones (who, why), files of live
    // versions only, the host the versions came from.
    assert_eq!(
        team.psql("SELECT number, state FROM versions WHERE model = 'resnet' ORDER BY number"),
        "1|removed\n2|live\n3|live\n4|removed"
    );
    assert_eq!(
        team.psql("SELECT number, reason FROM tombstones ORDER BY number"),
        "1|trained on leaked data\n4|diverged"
    );
    assert_eq!(
        team.psql("SELECT model, number, count(*) FROM files GROUP BY 1, 2 ORDER BY 1, 2"),
        "bert|1|3\nresnet|2|1\nresnet|3|1\ntiny|1|1"
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(team.psql("SELECT DISTINCT host FROM versions"), host.trim());
    // A new registration in team mode continues after the removed v4: never reused.
    assert_eq!(
        team.psql("SELECT highest FROM models WHERE name = 'resnet'"),
        "4"
    );

    // Every live file is in the store, content-addressed, byte for byte.
    let store = team.store(&team.blobs);
    let fetched = tempfile::tempdir().unwrap();
    for m in local.models.values() {
        for v in m.versions.iter().filter(|v| v.removed.is_none()) {
            for f in &v.files {
                let dest = fetched.path().join(&f.sha256);
                let size = block_on(store.fetch(&f.sha256, &dest)).unwrap();
                assert_eq!(size, f.size);
                assert_eq!(
                    std::fs::read(&dest).unwrap(),
                    std::fs::read(root.join(&f.path)).unwrap(),
                    "{}",
                    f.path
                );
            }
        }
    }
    // Removed versions' files were not sent (they are gone), and nothing else was.
    let blobs = block_on(store.list(std::time::Duration::ZERO)).unwrap();
    assert_eq!(blobs.len(), 5, "{blobs:?}");

    let out = succeeds(&team.run(&["verify", "--catalog", &team.url, "--blobs", &team.blobs]));
    assert!(out.contains("verified 4 version(s), 6 file(s)"), "{out}");
    assert!(out.contains("all stored files match the catalog"), "{out}");
}

#[test]
fn running_migrate_again_writes_nothing_and_a_later_run_adds_only_what_is_new() {
    let mut d = local_registry();
    let root = d.root.path().to_path_buf();
    let team = Team::start();
    succeeds(&team.migrate(&root, &team.blobs));
    let head = "SELECT change_seq FROM log_head";
    let seq = team.psql(head);
    let rows = team.psql("SELECT count(*) FROM alias_history");

    let again = succeeds(&team.migrate(&root, &team.blobs));
    assert!(
        again.contains("resnet: already in the catalog (4 version(s))"),
        "{again}"
    );
    assert!(
        again.contains("0 file(s) uploaded (0 B), 6 already there"),
        "{again}"
    );
    assert_eq!(team.psql(head), seq, "a second run wrote changes");
    assert_eq!(team.psql("SELECT count(*) FROM alias_history"), rows);

    // The daemon runs on (a migration made before the cut-over): v5, production moved;
    // migrate takes the catalog as the daemon committed it, and says what it leaves.
    d.spawn();
    write_renamed(&d.inbox(), "resnet.pt", &bytes(9, 4000));
    d.wait_versions("resnet", 5);
    ok(&d, &["alias", "set", "resnet", "production", "v5"]);
    let o = team.migrate(&root, &team.blobs);
    let out = succeeds(&o);
    assert!(
        stderr(&o).contains("a daemon is running on this root")
            && stderr(&o).contains("what it registers from now on is not migrated"),
        "{}",
        stderr(&o)
    );
    assert!(
        out.contains("resnet: 1 version(s) added (v5), 4 already there, highest v5, 1 alias move(s) added, aliases production=v5; 3 file(s): 1 uploaded"),
        "{out}"
    );
    assert!(out.contains("1 file(s) uploaded"), "{out}");
    assert!(out.contains("bert: already in the catalog"), "{out}");
    // The cut-over: stopped, migrated once more: nothing new.
    d.stop();
    let out = succeeds(&team.migrate(&root, &team.blobs));
    assert!(
        out.contains("resnet: already in the catalog (5 version(s))"),
        "{out}"
    );
    assert_same_catalog(&local_catalog(&root), &team.snapshot());
}

#[test]
fn a_catalog_holding_other_data_for_a_model_is_refused_and_nothing_is_written() {
    let d = local_registry();
    let team = Team::start();
    succeeds(&team.migrate(d.root.path(), &team.blobs));
    let seq = team.psql("SELECT change_seq FROM log_head");

    // Another registry with a resnet of its own, and a model the catalog lacks.
    let mut other = TestDaemon::quick();
    write_renamed(&other.inbox(), "resnet.pt", &bytes(77, 3000));
    other.wait_versions("resnet", 1);
    write_renamed(&other.inbox(), "gpt.pt", &bytes(78, 3000));
    other.wait_versions("gpt", 1);
    other.stop();
    let o = team.migrate(other.root.path(), &team.blobs);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let e = stderr(&o);
    assert!(
        e.contains("already holds other data for 1 model(s); nothing was migrated")
            && e.contains("model resnet:")
            && e.contains("has given version numbers up to v4, this registry only up to v1"),
        "{e}"
    );
    assert_eq!(team.psql("SELECT change_seq FROM log_head"), seq);
    assert_eq!(
        team.psql("SELECT count(*) FROM models WHERE name = 'gpt'"),
        "0"
    );
    // Nothing uploaded either: the refusal comes before any blob.
    let blobs = block_on(team.store(&team.blobs).list(std::time::Duration::ZERO)).unwrap();
    assert_eq!(blobs.len(), 5);

    // Same numbers, other content: the version is named, with what differs.
    let mut third = TestDaemon::quick();
    for i in 0..4 {
        write_renamed(&third.inbox(), "resnet.pt", &bytes(100 + i, 3000));
        third.wait_versions("resnet", i as usize + 1);
    }
    third.stop();
    let e = stderr(&team.migrate(third.root.path(), &team.blobs));
    assert!(
        e.contains("model resnet: v1 in the catalog differs from this registry's v1")
            && e.contains("files"),
        "{e}"
    );
}

#[test]
fn verify_finds_a_blob_deleted_or_damaged_behind_the_catalogs_back() {
    let d = local_registry();
    let root = d.root.path();
    let local = local_catalog(root);
    let team = Team::start();
    succeeds(&team.migrate(root, &team.blobs));
    let verify = |blobs: &str, extra: &[&str]| {
        let mut args = vec!["verify", "--catalog", &team.url, "--blobs", blobs];
        args.extend_from_slice(extra);
        team.run(&args)
    };
    succeeds(&verify(&team.blobs, &[]));

    // Deleted from the bucket: both files naming those bytes (resnet v2, tiny v1) reported.
    let v2 = &local.models["resnet"].versions[1].files[0];
    let store = team.store(&team.blobs);
    block_on(store.delete(&v2.sha256)).unwrap();
    for extra in [&[][..], &["--size-only"]] {
        let o = verify(&team.blobs, extra);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        let out = stdout(&o);
        eprintln!("{out}");
        let key = store.key(&v2.sha256).unwrap();
        assert!(
            out.contains(&format!(
                "MISSING     {key}  (resnet v2 {}: the blob is not in the store)",
                v2.path
            )),
            "{out}"
        );
        assert!(out.contains("tiny v1 "), "{out}");
        assert!(out.contains("2 problem(s)"), "{out}");
    }
    let o = verify(&team.blobs, &["--json"]);
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(report["problems"].as_array().unwrap().len(), 2, "{report}");
    assert_eq!(report["problems"][0]["kind"], "missing");

    // A re-run of migrate puts it back (present blobs skipped, the missing one sent).
    let out = succeeds(&team.migrate(root, &team.blobs));
    assert!(out.contains("1 file(s) uploaded"), "{out}");
    succeeds(&verify(&team.blobs, &[]));

    // A shared folder (and a second catalog database): the same bytes damaged in place,
    // size unchanged.
    let shared = tempfile::tempdir().unwrap();
    let folder = shared.path().to_str().unwrap();
    team.pg.create_database("folder");
    let url = team.pg.url("folder");
    succeeds(&team.migrate_to(root, &url, folder));
    let bert = &local.models["bert"].versions[0].files;
    let weights = bert
        .iter()
        .find(|f| f.path.ends_with("model.safetensors"))
        .unwrap();
    let blob = team.store(folder).key(&weights.sha256).unwrap();
    let mut damaged = std::fs::read(&blob).unwrap();
    damaged[100] ^= 0xff;
    std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&blob, &damaged).unwrap();
    let o = team.run(&["verify", "--catalog", &url, "--blobs", folder]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains(&format!("MODIFIED    {blob}  (bert v1 {}: ", weights.path))
            && out.contains(&format!("expected {}", weights.sha256))
            && out.contains("1 problem(s)"),
        "{out}"
    );
    // Size only cannot see it: the size is right.
    succeeds(&team.run(&[
        "verify",
        "--catalog",
        &url,
        "--blobs",
        folder,
        "--size-only",
    ]));
}

#[test]
fn a_migration_that_fails_midway_leaves_whole_models_and_a_rerun_completes_it() {
    let d = local_registry();
    let root = d.root.path();
    let local = local_catalog(root);
    let team = Team::start();
    // resnet v2's stored file damaged (same size): its upload is refused, after bert
    // (models go in name order) is in the catalog whole.
    let v2 = &local.models["resnet"].versions[1].files[0];
    let stored = root.join(&v2.path);
    let good = std::fs::read(&stored).unwrap();
    let mut bad = good.clone();
    bad[10] ^= 0xff;
    std::fs::set_permissions(&stored, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&stored, &bad).unwrap();
    let o = team.migrate(root, &team.blobs);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&format!("resnet v2: {}: ", v2.path))
            && e.contains(&format!("expected {}", v2.sha256))
            && e.contains("nothing of resnet is in the catalog yet"),
        "{e}"
    );
    assert!(
        stdout(&o).contains("bert: 1 version(s) added"),
        "{}",
        stdout(&o)
    );
    assert_eq!(team.psql("SELECT name FROM models ORDER BY name"), "bert");

    // Repaired, run again: bert skipped, the rest added.
    std::fs::write(&stored, &good).unwrap();
    let out = succeeds(&team.migrate(root, &team.blobs));
    assert!(out.contains("bert: already in the catalog"), "{out}");
    assert!(out.contains("resnet: 4 version(s) added"), "{out}");
    assert!(out.contains("3 already there"), "{out}");
    assert_same_catalog(&local, &team.snapshot());
    succeeds(&team.run(&["verify", "--catalog", &team.url, "--blobs", &team.blobs]));
}

#[test]
fn verify_repair_uploads_a_blob_damaged_in_place_in_the_bucket_again_from_a_good_local_copy() {
    use object_store::ObjectStoreExt as _;
    let d = local_registry();
    let root = d.root.path();
    let local = local_catalog(root);
    let team = Team::start();
    succeeds(&team.migrate(root, &team.blobs));
    // resnet v2's bytes (tiny v1 has the same) overwritten in the bucket: same size,
    // one byte other, as a faulty disk or a stray client would leave them.
    let v2 = &local.models["resnet"].versions[1].files[0];
    let key = team.store(&team.blobs).key(&v2.sha256).unwrap();
    let mut damaged = std::fs::read(root.join(&v2.path)).unwrap();
    damaged[10] ^= 0xff;
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&team.garage.endpoint)
        .with_allow_http(true)
        .with_region(REGION)
        .with_bucket_name(BUCKET)
        .with_access_key_id(&team.garage.key_id)
        .with_secret_access_key(&team.garage.secret)
        .build()
        .unwrap();
    let location = object_store::path::Path::from(key.as_str());
    block_on(s3.put(&location, damaged.into())).unwrap();
    let verify = |root: &Path, extra: &[&str]| {
        let root = root.to_str().unwrap();
        let mut args = vec!["--root", root, "verify", "--catalog", &team.url];
        args.extend_from_slice(&["--blobs", &team.blobs]);
        args.extend_from_slice(extra);
        team.run(&args)
    };
    let o = verify(root, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("MODIFIED"), "{}", stdout(&o));

    // A root without the file: nothing to repair from.
    let elsewhere = tempfile::tempdir().unwrap();
    let o = verify(elsewhere.path(), &["--repair"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("not on this host") && out.contains("not repaired"),
        "{out}"
    );

    // The registry it was migrated from: uploaded again (not skipped as present).
    let out = succeeds(&verify(root, &["--repair"]));
    assert!(
        out.contains(&format!("REPAIRED    {key}  (resnet v2 {}: ", v2.path)),
        "{out}"
    );
    assert!(out.contains("tiny v1 "), "{out}");
    succeeds(&verify(root, &[]));
}

#[test]
fn migrate_claims_the_store_before_uploading_and_refuses_one_claimed_by_another_catalog() {
    let d = local_registry();
    let root = d.root.path().to_path_buf();
    let team = Team::start();
    let out = succeeds(&team.migrate(&root, &team.blobs));
    assert!(out.contains("claimed for this catalog"), "{out}");
    let store = team.store(&team.blobs);
    let marker = block_on(store.read_marker())
        .unwrap()
        .expect("the marker written in the bucket");
    let m: serde_json::Value = serde_json::from_slice(&marker).unwrap();
    let id = team.psql("SELECT id FROM catalog_identity");
    assert_eq!(m["catalog_id"], id.trim(), "{m}");
    assert_eq!(store.marker_key(), "team/modelreg-catalog.json");

    // The same store given with another database: refused before anything is sent.
    team.pg.create_database("other");
    let o = team.migrate_to(&root, &team.pg.url("other"), &team.blobs);
    assert!(!o.status.success(), "{}", stdout(&o));
    let e = stderr(&o);
    assert!(
        e.contains("belongs to another catalog")
            && e.contains(id.trim())
            && e.contains("team/modelreg-catalog.json"),
        "{e}"
    );
    assert_eq!(
        team.pg
            .psql("other", "SELECT count(*) FROM versions")
            .trim(),
        "0"
    );
    // And the store keeps naming the first catalog.
    assert_eq!(block_on(store.read_marker()).unwrap().unwrap(), marker);
}
