//! The PostgreSQL catalog of team mode (src/catalogdb/) against a real PostgreSQL 15: a
//! throwaway cluster per test (tests/common/postgres.rs), connections as separate hosts
//! would hold them. Figures are printed (run with --nocapture), never asserted on time.

#[path = "common/postgres.rs"]
mod postgres;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use modelreg::catalogdb::{self, CatalogDb, ChangeKind, Options};
use modelreg::registry::{Kind, Mark, MetricsChange, SidecarRef, Stamp, StoredFile, Version};
use postgres::PgCluster;

/// A plain version as `host` would record it: one file whose path names the number.
fn version(model: &str, n: u32, host: &str) -> Version {
    Version {
        number: n,
        kind: Kind::File,
        files: vec![StoredFile {
            path: format!("models/{model}/v{n}/{model}.pt"),
            sha256: format!("{:064x}", u64::from(n) * 7919),
            size: 1000 + u64::from(n),
        }],
        source: format!("pretrained_models/{model}.pt"),
        registered_at: "2026-11-28T04:00:00Z".into(),
        metrics: [("accuracy".to_string(), 0.5 + f64::from(n) / 10_000.0)].into(),
        metadata: [("host".to_string(), serde_json::json!(host))].into(),
        metric_sources: Default::default(),
        extracted: Default::default(),
        provenance: Default::default(),
        sidecar: None,
        metrics_history: vec![],
        deprecated: None,
        removed: None,
    }
}

fn stamp(at: &str) -> Stamp {
    Stamp {
        at: at.into(),
        uid: Some(1000),
    }
}

/// Records a plain version of `model` from `host` on `db`.
async fn record(
    db: &mut CatalogDb,
    model: &str,
    host: &str,
) -> Result<catalogdb::Recorded, catalogdb::CatalogDbError> {
    db.record_version(model, host, &[], |n| version(model, n, host))
        .await
}

/// A fresh database `name` on `pg`, migrated; its URL.
fn database(pg: &PgCluster, name: &str) -> String {
    pg.create_database(name);
    pg.url(name)
}

/// Records `count` versions of `model` on its own connection; the numbers it got.
async fn register_many(
    url: String,
    model: &'static str,
    host: &'static str,
    count: u32,
) -> Vec<u32> {
    let mut db = CatalogDb::connect(&url, Options::default()).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..count {
        got.push(record(&mut db, model, host).await.unwrap().number());
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_racing_on_one_model_get_dense_unique_numbers() {
    let pg = PgCluster::start();
    let url = database(&pg, "race");
    // Migrated once before timing, so that both runs measure registrations only.
    CatalogDb::connect(&url, Options::default()).await.unwrap();

    let t = Instant::now();
    register_many(url.clone(), "solo", "host-a", 300).await;
    let one = 300.0 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    let tasks: Vec<_> = ["host-a", "host-b", "host-c"]
        .into_iter()
        .map(|h| tokio::spawn(register_many(url.clone(), "shared", h, 300)))
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        let got = task.await.unwrap();
        // Each host's own numbers ascend: it waited its turn on the model's row.
        assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
        all.extend(got);
    }
    let three = 900.0 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    let tasks: Vec<_> = [("m-a", "host-a"), ("m-b", "host-b"), ("m-c", "host-c")]
        .into_iter()
        .map(|(m, h)| tokio::spawn(register_many(url.clone(), m, h, 300)))
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let three_models = 900.0 / t.elapsed().as_secs_f64();
    println!(
        "record_version: 1 connection {one:.0}/s; 3 connections on one model {three:.0}/s ({:.2}x); \
         3 connections on 3 models {three_models:.0}/s ({:.2}x)",
        three / one,
        three_models / one
    );

    all.sort_unstable();
    let unique: BTreeSet<u32> = all.iter().copied().collect();
    assert_eq!(unique.len(), 900, "a number was given twice");
    assert_eq!(
        all,
        (1..=900).collect::<Vec<_>>(),
        "numbers are exactly 1..=900"
    );

    let mut db = CatalogDb::connect(&url, Options::default()).await.unwrap();
    let snap = db.snapshot().await.unwrap();
    let shared = &snap.models["shared"];
    assert_eq!(shared.highest, 900);
    let numbers: Vec<u32> = shared.versions.iter().map(|v| v.number).collect();
    assert_eq!(numbers, (1..=900).collect::<Vec<_>>());
    for v in &shared.versions {
        // Each record names its own number in its path: built after the number was given.
        assert_eq!(
            v.files[0].path,
            format!("models/shared/v{}/shared.pt", v.number)
        );
    }

    let log = db.changes_since(0, 10_000).await.unwrap();
    assert_eq!(
        log.len() as u64,
        snap.seq,
        "the snapshot is consistent with the whole log"
    );
    let seqs: Vec<u64> = log.iter().map(|c| c.seq).collect();
    assert_eq!(
        seqs,
        (1..=log.len() as u64).collect::<Vec<_>>(),
        "gapless, in order"
    );
    let shared_log: Vec<_> = log.iter().filter(|c| c.model == "shared").collect();
    assert_eq!(shared_log.len(), 900);
    // Numbers were given and committed in the order of the log.
    let logged: Vec<u32> = shared_log.iter().map(|c| c.number.unwrap()).collect();
    assert_eq!(logged, (1..=900).collect::<Vec<_>>());
    assert!(shared_log.iter().all(|c| c.kind == ChangeKind::Version));
    let hosts: BTreeSet<&str> = shared_log.iter().map(|c| c.host.as_str()).collect();
    assert_eq!(hosts.len(), 3);
    assert_eq!(
        pg.psql("race", "SELECT count(*) FROM files WHERE model = 'shared'"),
        "900"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_when_three_daemons_start_together() {
    let pg = PgCluster::start();
    let url = database(&pg, "fresh");
    let (a, b, c) = tokio::join!(
        CatalogDb::connect(&url, Options::default()),
        CatalogDb::connect(&url, Options::default()),
        CatalogDb::connect(&url, Options::default()),
    );
    let applied: Vec<i32> = [a.unwrap(), b.unwrap(), c.unwrap()]
        .iter()
        .flat_map(|db| db.migrations_applied().to_vec())
        .collect();
    let known: Vec<i32> = catalogdb::migrate::MIGRATIONS
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(
        applied, known,
        "each migration applied by exactly one of the three"
    );
    let recorded = pg.psql("fresh", "SELECT count(*) FROM schema_migrations");
    assert_eq!(recorded, known.len().to_string());
    // A later start applies nothing.
    let again = CatalogDb::connect(&url, Options::default()).await.unwrap();
    assert!(again.migrations_applied().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_with_a_newer_schema_is_refused_with_a_clear_message() {
    let pg = PgCluster::start();
    let url = database(&pg, "future");
    CatalogDb::connect(&url, Options::default()).await.unwrap();
    pg.psql(
        "future",
        "INSERT INTO schema_migrations (version, name) VALUES (9999, 'from_the_future')",
    );
    let err = CatalogDb::connect(&pg.url_encoded("future"), Options::default())
        .await
        .err()
        .expect("a newer schema is refused")
        .to_string();
    println!("{err}");
    assert!(
        err.contains("schema version 9999, newer than this modelreg knows"),
        "{err}"
    );
    assert!(
        err.contains(&pg.socket_dir().display().to_string()),
        "names the server: {err}"
    );
    assert!(err.contains("database future"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_move_is_heard_by_a_listener_on_another_connection() {
    let pg = PgCluster::start();
    let url = database(&pg, "listen");
    let mut writer = CatalogDb::connect(&url, Options::default()).await.unwrap();
    for _ in 0..2 {
        record(&mut writer, "bert", "host-a").await.unwrap();
    }
    // Another host: listens first, then reads its snapshot.
    let mut listener = catalogdb::listen(&url, Options::default()).await.unwrap();
    let mut reader = CatalogDb::connect(&url, Options::default()).await.unwrap();
    let snap = reader.snapshot().await.unwrap();
    assert_eq!(snap.seq, 2);

    let mut latencies = Vec::new();
    let mut last = snap.seq;
    for i in 0..20u32 {
        let to = 1 + i % 2;
        let t = Instant::now();
        let (_, seq) = writer
            .set_alias(
                "bert",
                "production",
                to,
                "host-a",
                &stamp("2026-11-28T04:10:00Z"),
                "set",
            )
            .await
            .unwrap();
        // A generous deadline so a busy machine cannot fail it; the figure is printed.
        let heard = tokio::time::timeout(Duration::from_secs(10), listener.next())
            .await
            .expect("notified within 10 s")
            .expect("the listening connection is open");
        latencies.push(t.elapsed());
        assert_eq!(heard, seq);
        let changes = reader.changes_since(last, 100).await.unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].kind, ChangeKind::AliasSet);
        assert_eq!(changes[0].alias.as_deref(), Some("production"));
        assert_eq!(changes[0].number, Some(to));
        last = changes[0].seq;
    }
    latencies.sort();
    println!(
        "alias move -> NOTIFY heard: first {:?}, median {:?}, max {:?} (20 moves; from the call to set_alias to the listener's wake-up)",
        latencies[0],
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    let model = reader.model("bert").await.unwrap().unwrap();
    assert_eq!(model.aliases["production"], 2);
    assert_eq!(model.alias_history.len(), 20);
    assert_eq!(model.alias_history[0].from, None);
    assert_eq!(model.alias_history[1].from, Some(1));

    let (from, _) = writer
        .remove_alias(
            "bert",
            "production",
            None,
            "host-b",
            &stamp("2026-11-28T04:11:00Z"),
        )
        .await
        .unwrap();
    assert_eq!(from, 2);
    let heard = tokio::time::timeout(Duration::from_secs(10), listener.next())
        .await
        .unwrap()
        .unwrap();
    let changes = reader.changes_since(last, 100).await.unwrap();
    assert_eq!(
        (changes[0].seq, changes[0].kind),
        (heard, ChangeKind::AliasRemoved)
    );
    let err = writer
        .remove_alias("bert", "production", None, "host-b", &stamp("t"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("bert has no alias production"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_record_and_its_removal_round_trip() {
    let pg = PgCluster::start();
    let url = database(&pg, "records");
    let mut db = CatalogDb::connect(&url, Options::default()).await.unwrap();
    let mut full = version("llama", 1, "host-a");
    full.kind = Kind::Folder;
    full.files.push(StoredFile {
        path: "models/llama/v1/config.json".into(),
        sha256: "9f2c".repeat(16),
        size: 0,
    });
    full.metrics = [
        ("accuracy".to_string(), 0.1 + 0.2),
        ("loss".to_string(), 1e-300),
        ("steps".to_string(), 12345678901.0),
    ]
    .into();
    full.metadata = [
        ("dataset".to_string(), serde_json::json!("imagenet-1k")),
        (
            "params".to_string(),
            serde_json::json!({"lr": 3e-4, "layers": [1, 2, {"ü": null}]}),
        ),
    ]
    .into();
    full.metric_sources = [("loss".to_string(), "eval_results.json".to_string())].into();
    full.extracted = [("format".to_string(), serde_json::json!("safetensors"))].into();
    full.provenance = [("user".to_string(), serde_json::json!("ana"))].into();
    full.sidecar = Some(Box::new(SidecarRef {
        path: "pretrained_models/llama.metrics.yaml".into(),
        sha256: "ab".repeat(32),
    }));
    full.metrics_history = vec![MetricsChange {
        replaced_at: "2026-11-28T04:01:00Z".into(),
        metrics: [("accuracy".to_string(), 0.25)].into(),
    }];
    full.deprecated = Some(Box::new(Mark {
        at: "2026-11-28T04:02:00Z".into(),
        reason: Some("superseded".into()),
        uid: Some(0),
    }));
    let recorded = db
        .record_version(
            "llama",
            "host-a",
            &[serde_json::json!({"kind": "registered", "model": "llama"})],
            |n| {
                let mut v = full.clone();
                v.number = n;
                v
            },
        )
        .await
        .unwrap();
    assert_eq!(recorded.number(), 1);
    let snap = db.snapshot().await.unwrap();
    assert_eq!(
        *snap.models["llama"].versions[0], full,
        "written and read back equal"
    );
    assert_eq!(
        pg.psql(
            "records",
            "SELECT count(*) FROM events WHERE change_seq = 1"
        ),
        "1"
    );

    // A sidecar edit on another host: applied to the stored record under the row lock.
    let seq = db
        .update_version("llama", 1, "host-b", &[], |v| {
            v.update_metrics(
                [("accuracy".to_string(), 0.75)].into(),
                Default::default(),
                "2026-11-28T04:02:30Z",
            );
        })
        .await
        .unwrap();
    let changed = db.model("llama").await.unwrap().unwrap();
    let v1 = changed.find(1).unwrap();
    assert_eq!(v1.metrics["accuracy"], 0.75);
    assert_eq!(v1.metrics_history.len(), 2, "the earlier metrics kept");
    assert_eq!(v1.files, full.files);
    let log = db.changes_since(seq - 1, 10).await.unwrap();
    assert_eq!(log[0].kind, ChangeKind::VersionChanged);
    let err = db
        .update_version("llama", 1, "host-b", &[], |v| v.files.clear())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("may not change its files"), "{err}");

    record(&mut db, "llama", "host-b").await.unwrap();
    db.set_alias(
        "llama",
        "staging",
        2,
        "host-b",
        &stamp("2026-11-28T04:03:00Z"),
        "set",
    )
    .await
    .unwrap();
    let mark = Mark {
        at: "2026-11-28T04:04:00Z".into(),
        reason: Some("leaked test data".into()),
        uid: Some(1000),
    };
    db.remove_version("llama", 2, "host-c", &mark)
        .await
        .unwrap();
    let model = db.model("llama").await.unwrap().unwrap();
    let v2 = model.find(2).unwrap();
    assert_eq!(v2.removed.as_deref(), Some(&mark));
    assert!(
        model.aliases.is_empty(),
        "the alias on the removed version went with it"
    );
    assert_eq!(model.alias_history.last().unwrap().by, "rm --force");
    assert_eq!(model.highest, 2);
    assert_eq!(
        pg.psql("records", "SELECT count(*) FROM files WHERE number = 2"),
        "0"
    );
    assert_eq!(
        pg.psql(
            "records",
            "SELECT host || ' ' || reason FROM tombstones WHERE number = 2"
        ),
        "host-c leaked test data"
    );
    // The number stays taken: the next version is v3.
    let next = record(&mut db, "llama", "host-a").await.unwrap();
    assert_eq!(next.number(), 3);
    let err = db
        .set_alias("llama", "staging", 2, "host-b", &stamp("t"), "set")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("llama v2 is removed"), "{err}");
    let err = db
        .remove_version("llama", 2, "host-c", &mark)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("llama v2 is removed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_several_versions_is_one_transaction_refused_whole_by_an_alias_without_force() {
    let pg = PgCluster::start();
    let url = database(&pg, "removals");
    let mut db = CatalogDb::connect(&url, Options::default()).await.unwrap();
    for _ in 0..3 {
        record(&mut db, "gpt", "host-a").await.unwrap();
    }
    // v2 shares v1's blob (content-addressed): its files row names the same sha256.
    pg.psql(
        "removals",
        "UPDATE files SET sha256 = (SELECT sha256 FROM files WHERE number = 1) WHERE number = 2",
    );
    db.set_alias("gpt", "prod", 2, "host-b", &stamp("t"), "set")
        .await
        .unwrap();
    let mark = Mark {
        at: "2026-11-28T05:00:00Z".into(),
        reason: Some("gc: keep_last 1".into()),
        uid: None,
    };
    let gc = catalogdb::Removal {
        by: "gc",
        force: false,
    };
    let err = db
        .remove_versions("gpt", &[1, 2], "host-a", &mark, gc, &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gpt v2 is what alias(es) prod point to") && err.contains("run gc again"),
        "{err}"
    );
    let live =
        "SELECT string_agg(number::text, ',' ORDER BY number) FROM versions WHERE state = 'live'";
    assert_eq!(
        pg.psql("removals", live),
        "1,2,3",
        "refused whole: v1 stays too"
    );

    let event = serde_json::json!({"kind": "gc", "model": "gpt"});
    db.remove_versions("gpt", &[1], "host-a", &mark, gc, &[event])
        .await
        .unwrap();
    assert_eq!(pg.psql("removals", live), "2,3");
    // v1's files rows went, v2's (the same blob) stay: the collector keeps that blob.
    assert_eq!(
        pg.psql(
            "removals",
            "SELECT string_agg(number::text, ',' ORDER BY number) FROM files"
        ),
        "2,3"
    );
    assert_eq!(pg.psql("removals", "SELECT count(*) FROM events"), "1");
    // Forced, as `rm --force`: the alias goes, its move recorded as the local rule does.
    let rm = catalogdb::Removal {
        by: "rm",
        force: true,
    };
    db.remove_versions("gpt", &[2], "host-b", &mark, rm, &[])
        .await
        .unwrap();
    let model = db.model("gpt").await.unwrap().unwrap();
    assert!(model.aliases.is_empty());
    assert_eq!(model.alias_history.last().unwrap().by, "rm --force");
    assert_eq!(model.highest, 3);
    // Already removed: refused naming when and by which host.
    let err = db
        .remove_versions("gpt", &[2], "host-c", &mark, rm, &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "gpt v2 is removed in the team's catalog at 2026-11-28T05:00:00Z by host host-b"
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_is_an_error_naming_it_and_a_restart_reconnects() {
    let mut pg = PgCluster::start();
    let url = database(&pg, "outage");
    let options = Options {
        connect_timeout: Duration::from_secs(2),
        op_timeout: Duration::from_secs(3),
    };
    let mut db = CatalogDb::connect(&url, options).await.unwrap();
    record(&mut db, "gpt", "host-a").await.unwrap();

    // A hung server (frozen): the operation gives up after op_timeout, naming the server.
    pg.freeze();
    let t = Instant::now();
    let err = record(&mut db, "gpt", "host-a").await.unwrap_err();
    println!("with the server frozen, after {:?}: {err}", t.elapsed());
    pg.thaw();
    assert!(
        matches!(err, catalogdb::CatalogDbError::Timeout { .. }),
        "{err:?}"
    );
    assert!(err.is_connection_lost());
    assert!(
        err.to_string()
            .contains(&pg.socket_dir().display().to_string()),
        "{err}"
    );
    // The timed-out transaction never committed: its number is given to the next.
    let next = record(&mut db, "gpt", "host-a").await.unwrap();
    assert_eq!(next.number(), 2);

    let mut listener = catalogdb::listen(&url, options).await.unwrap();
    pg.stop();
    let socket = pg.socket_dir().display().to_string();
    let t = Instant::now();
    let err = record(&mut db, "gpt", "host-a").await.unwrap_err();
    println!("with the server stopped, after {:?}: {err}", t.elapsed());
    assert!(err.is_connection_lost(), "{err:?}");
    assert!(err.to_string().contains(&socket), "names the server: {err}");
    let t = Instant::now();
    let err = CatalogDb::connect(&url, options).await.err().unwrap();
    println!("a new connect, after {:?}: {err}", t.elapsed());
    assert!(
        err.to_string()
            .contains("cannot connect to the catalog database"),
        "{err}"
    );
    assert!(err.to_string().contains(&socket), "{err}");
    // The listener says its connection is gone: the caller listens again and re-reads
    // the log from its last seq.
    let gone = tokio::time::timeout(Duration::from_secs(10), listener.next()).await;
    assert_eq!(gone.expect("the listener ends within 10 s"), None);

    pg.resume();
    // The same handle connects again on its next operation; nothing was half-written.
    let again = record(&mut db, "gpt", "host-a").await.unwrap();
    assert_eq!(again.number(), 3, "the failed attempt left no number taken");
    let mut fresh = CatalogDb::connect(&url, options).await.unwrap();
    assert_eq!(fresh.changes_since(0, 100).await.unwrap().len(), 3);
}

/// A version of `model` holding `files` (name in its folder, SHA-256 digit) as `host`
/// records it at `at`.
fn holding(model: &str, n: u32, host: &str, at: &str, files: &[(&str, u8)]) -> Version {
    let mut v = version(model, n, host);
    v.registered_at = at.into();
    v.files = (files.iter())
        .map(|(name, d)| StoredFile {
            path: format!("models/{model}/v{n}/{name}"),
            sha256: format!("{d:x}").repeat(64),
            size: 10,
        })
        .collect();
    v
}

/// Records a version of `model` holding `files`; what `record_version` answered.
async fn record_files(
    db: &mut CatalogDb,
    model: &str,
    host: &str,
    at: &str,
    files: &[(&str, u8)],
) -> catalogdb::Recorded {
    db.record_version(model, host, &[], |n| holding(model, n, host, at, files))
        .await
        .unwrap()
}

/// Every version number of `model` in the catalog, removed ones too.
fn numbers(pg: &PgCluster, db: &str, model: &str) -> String {
    pg.psql(
        db,
        &format!("SELECT string_agg(number::text, ',' ORDER BY number) FROM versions WHERE model = '{model}'"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_files_as_the_newest_version_record_nothing_and_answer_that_version() {
    let pg = PgCluster::start();
    let url = database(&pg, "same");
    let mut a = CatalogDb::connect(&url, Options::default()).await.unwrap();
    let mut b = CatalogDb::connect(&url, Options::default()).await.unwrap();
    let weights = [("model.safetensors", 1u8), ("config.json", 2)];
    let first = record_files(&mut a, "bert", "host-a", "2026-11-28T05:00:00Z", &weights).await;
    assert_eq!(first.number(), 1);
    // The same files again, from this host (a retry) or another, listed in another
    // order: nothing recorded, the answer is v1 as the catalog holds it.
    let reversed = [("config.json", 2u8), ("model.safetensors", 1)];
    for (db, host) in [(&mut a, "host-a"), (&mut b, "host-b")] {
        let again = record_files(db, "bert", host, "2026-11-28T05:01:00Z", &reversed).await;
        let catalogdb::Recorded::Existing(v) = &again else {
            panic!("{host} recorded a second version: {again:?}");
        };
        assert_eq!(
            (v.number, v.registered_at.as_str()),
            (1, "2026-11-28T05:00:00Z")
        );
        assert_eq!(v.metadata["host"], serde_json::json!("host-a"));
    }
    assert_eq!(numbers(&pg, "same", "bert"), "1");
    assert_eq!(
        pg.psql("same", "SELECT highest FROM models"),
        "1",
        "the number went back"
    );
    assert_eq!(pg.psql("same", "SELECT count(*) FROM changes"), "1");
    assert_eq!(pg.psql("same", "SELECT count(*) FROM files"), "2");
    // One file differing (content or name): a new version.
    let other = record_files(
        &mut a,
        "bert",
        "host-a",
        "t",
        &[("model.safetensors", 1), ("config.json", 3)],
    )
    .await;
    assert_eq!(other.number(), 2);
    let renamed = record_files(
        &mut a,
        "bert",
        "host-a",
        "t",
        &[("weights.safetensors", 1), ("config.json", 3)],
    )
    .await;
    assert_eq!(renamed.number(), 3);
    // Only the newest counts (as local mode): v1's files again are v4.
    assert_eq!(
        record_files(&mut b, "bert", "host-b", "t", &weights)
            .await
            .number(),
        4
    );
    // A deprecated newest version is still the newest (local mode's too).
    a.update_version("bert", 4, "host-a", &[], |v| {
        v.deprecated = Some(Box::new(Mark {
            at: "t".into(),
            reason: None,
            uid: None,
        }));
    })
    .await
    .unwrap();
    assert!(matches!(
        record_files(&mut a, "bert", "host-a", "t", &weights).await,
        catalogdb::Recorded::Existing(v) if v.number == 4
    ));
    // A removed one is not: the newest live one below it is compared.
    let mark = Mark {
        at: "t".into(),
        reason: Some("bad".into()),
        uid: None,
    };
    a.remove_version("bert", 4, "host-a", &mark).await.unwrap();
    assert_eq!(
        record_files(&mut a, "bert", "host-a", "t", &weights)
            .await
            .number(),
        5
    );
    a.remove_version("bert", 5, "host-a", &mark).await.unwrap();
    let back = record_files(
        &mut a,
        "bert",
        "host-a",
        "t",
        &[("weights.safetensors", 1), ("config.json", 3)],
    )
    .await;
    assert!(matches!(back, catalogdb::Recorded::Existing(v) if v.number == 3));
    assert_eq!(numbers(&pg, "same", "bert"), "1,2,3,4,5");

    // Two hosts recording the same new files at once: one version, both answered it.
    let (x, y) = tokio::join!(
        record_files(&mut a, "race", "host-a", "t", &[("x.pt", 9)]),
        record_files(&mut b, "race", "host-b", "t", &[("x.pt", 9)]),
    );
    assert_eq!((x.number(), y.number()), (1, 1), "{x:?} {y:?}");
    assert_eq!(numbers(&pg, "same", "race"), "1");
}

/// What a [`Proxy`] saw, in order: (sent by the client, the bytes).
type Transcript = std::sync::Arc<std::sync::Mutex<Vec<(bool, Vec<u8>)>>>;

/// A Unix-socket proxy in front of the test cluster: it forwards everything, keeps a
/// transcript (which side sent each chunk), and can lose a connection's answer to a
/// COMMIT after the server committed (the client then has an unknown outcome).
struct Proxy {
    dir: tempfile::TempDir,
    transcript: Transcript,
    lose_commit_answer: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    fn start(pg: &PgCluster) -> Proxy {
        use std::io::{Read, Write};
        use std::os::unix::net::{UnixListener, UnixStream};
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join(".s.PGSQL.5432")).unwrap();
        let server = pg.socket_dir().join(".s.PGSQL.5432");
        let transcript: Transcript = Default::default();
        let lose = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (log, lose_flag) = (transcript.clone(), lose.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let client = client.unwrap();
                let upstream = UnixStream::connect(&server).unwrap();
                // Set once the COMMIT to lose the answer of has been sent.
                let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let (mut c_in, mut c_out) = (client.try_clone().unwrap(), client);
                let (mut s_in, mut s_out) = (upstream.try_clone().unwrap(), upstream);
                let (log1, log2, lose1, cut1, cut2) = (
                    log.clone(),
                    log.clone(),
                    lose_flag.clone(),
                    cut.clone(),
                    cut,
                );
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let chunk = &buf[..n];
                        if contains(chunk, b"COMMIT\0") && lose1.swap(false, Ordering::SeqCst) {
                            cut1.store(true, Ordering::SeqCst);
                        }
                        log1.lock().unwrap().push((true, chunk.to_vec()));
                        if s_out.write_all(chunk).is_err() {
                            break;
                        }
                    }
                    let _ = s_out.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    let mut held = Vec::new();
                    while let Ok(n) = s_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let chunk = &buf[..n];
                        if cut2.load(Ordering::SeqCst) {
                            // Kept from the client until the server says it committed;
                            // then the connection is gone for the client.
                            held.extend_from_slice(chunk);
                            if contains(&held, b"COMMIT\0") {
                                let _ = c_out.shutdown(std::net::Shutdown::Both);
                                let _ = s_in.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                            continue;
                        }
                        log2.lock().unwrap().push((false, chunk.to_vec()));
                        if c_out.write_all(chunk).is_err() {
                            break;
                        }
                    }
                    let _ = c_out.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Proxy {
            dir,
            transcript,
            lose_commit_answer: lose,
        }
    }

    fn url(&self, db: &str) -> String {
        format!(
            "host={} user=postgres dbname={db}",
            self.dir.path().display()
        )
    }

    /// How many chunks the transcript holds (a mark to count from).
    fn mark(&self) -> usize {
        self.transcript.lock().unwrap().len()
    }

    /// The round trips since `mark`: each run of the client's chunks that follows an
    /// answer (or the start) is one request the client sent before waiting; and those
    /// from the one carrying `BEGIN` to the one carrying `COMMIT`, the transaction's.
    fn round_trips_since(&self, mark: usize) -> (usize, usize) {
        let t = self.transcript.lock().unwrap();
        let mut bursts: Vec<Vec<u8>> = Vec::new();
        let mut last_client = false;
        for (from_client, chunk) in &t[mark..] {
            if *from_client {
                if last_client {
                    bursts.last_mut().unwrap().extend_from_slice(chunk);
                } else {
                    bursts.push(chunk.clone());
                }
            }
            last_client = *from_client;
        }
        let begin = bursts.iter().position(|b| contains(b, b"BEGIN\0"));
        let commit = bursts.iter().rposition(|b| contains(b, b"COMMIT\0"));
        let in_tx = match (begin, commit) {
            (Some(b), Some(c)) => c + 1 - b,
            _ => 0,
        };
        (bursts.len(), in_tx)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// A current-thread runtime: the driver task cannot send a pipeline's first request
// before the others are queued, so the transcript's runs are the client's waits.
#[tokio::test]
async fn a_registration_takes_two_round_trips_and_a_retry_after_a_lost_commit_answer_records_nothing()
 {
    let pg = PgCluster::start();
    database(&pg, "trips");
    let proxy = Proxy::start(&pg);
    let mut db = CatalogDb::connect(&proxy.url("trips"), Options::default())
        .await
        .unwrap();
    // The first registration on a connection prepares its statements.
    let mark = proxy.mark();
    record(&mut db, "resnet", "host-a").await.unwrap();
    let (first, _) = proxy.round_trips_since(mark);
    let mut per = Vec::new();
    for _ in 0..5 {
        let mark = proxy.mark();
        record(&mut db, "resnet", "host-a").await.unwrap();
        per.push(proxy.round_trips_since(mark));
    }
    println!(
        "round trips per registration: the first on a connection {first}; then (all, from BEGIN to COMMIT) {per:?}"
    );
    assert!(per.iter().all(|&(all, tx)| all == 2 && tx == 2), "{per:?}");

    // The server commits v7, and the answer to the COMMIT is lost with the connection.
    proxy
        .lose_commit_answer
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let files = [("model.pt", 7u8)];
    let err = db
        .record_version("resnet", "host-a", &[], |n| {
            holding("resnet", n, "host-a", "2026-11-28T05:10:00Z", &files)
        })
        .await
        .unwrap_err();
    println!("the lost answer: {err}");
    assert!(err.is_connection_lost(), "{err:?}");
    assert_eq!(
        numbers(&pg, "trips", "resnet"),
        "1,2,3,4,5,6,7",
        "committed"
    );
    // The registrar's retry (the same handle connects again): v7, not a v8.
    let again = db
        .record_version("resnet", "host-a", &[], |n| {
            holding("resnet", n, "host-a", "2026-11-28T05:10:05Z", &files)
        })
        .await
        .unwrap();
    assert!(
        matches!(&again, catalogdb::Recorded::Existing(v) if v.number == 7 && v.registered_at == "2026-11-28T05:10:00Z"),
        "{again:?}"
    );
    assert_eq!(numbers(&pg, "trips", "resnet"), "1,2,3,4,5,6,7");
    // Dense afterwards.
    assert_eq!(
        record(&mut db, "resnet", "host-a").await.unwrap().number(),
        8
    );
}
