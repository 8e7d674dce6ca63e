//! Team mode's changes to versions, end to end: `rm`, `deprecate` and `gc` asked on one
//! host are written to the shared catalog (real PostgreSQL 15, tests/common/postgres.rs)
//! and reach the other host (real daemons, a shared blob folder): a removed version is a
//! tombstone on both, its cached files leave the other host's store, its number is never
//! given again; a deprecated version is skipped by `latest` everywhere; `gc`'s removals
//! let the orphan collector take blobs no live version names, never one another version
//! shares; a change the catalog refuses (another host got there first) says so.
//! Every wait polls with a deadline; nothing asserts a duration.

mod common;
#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/team_engines.rs"]
mod team_engines;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{TestDaemon, bytes, fails, ok, register_bytes, wait_until};
use postgres::PgCluster;
use team_engines::Engines;

/// How long a change may take to reach the other host before the test fails.
const REACH: Duration = Duration::from_secs(20);

/// The state (`live`, `deprecated`, `removed`) of each version `d` lists for `name`.
fn states(d: &TestDaemon, name: &str) -> Vec<(u32, String)> {
    d.versions(name)
        .into_iter()
        .map(|v| (v.number, v.state))
        .collect()
}

/// Waits until `d` lists `name`'s versions in exactly these states.
fn wait_states(d: &TestDaemon, who: &str, name: &str, want: &[(u32, &str)]) {
    let want: Vec<(u32, String)> = want.iter().map(|(n, s)| (*n, s.to_string())).collect();
    wait_until(REACH, &format!("{who} to list {name} as {want:?}"), || {
        states(d, name) == want
    });
}

/// The shared catalog's logged events of `kind`: `model version` a line, in order.
fn catalog_events(team: &Engines, kind: &str) -> String {
    team.pg.psql(
        "team",
        &format!(
            "SELECT (event->>'model') || ' ' || (event->>'version') FROM events
             WHERE event->>'kind' = '{kind}' ORDER BY seq"
        ),
    )
}

/// Model `name` as `d`'s registry.yaml (with its journal) holds it.
fn exported(d: &TestDaemon, name: &str) -> modelreg::registry::Model {
    let catalog = d.catalog();
    (*catalog.models[name]).clone()
}

#[test]
fn rm_on_one_host_is_a_tombstone_on_every_host_and_its_number_is_never_given_again() {
    let team = Engines::start();
    let (a, b) = (team.host(), team.host());
    let (first, second) = (bytes(1, 40_000), bytes(2, 40_000));
    register_bytes(&a, "resnet", &first);
    register_bytes(&a, "resnet", &second);
    wait_states(&b, "B", "resnet", &[(1, "live"), (2, "live")]);
    // B reads v2 through: its files are now cached in B's store.
    let cached = PathBuf::from(ok(&b, &["get", "resnet", "v2", "--path"]).trim());
    assert_eq!(std::fs::read(&cached).unwrap(), second);

    let out = ok(&a, &["rm", "resnet", "v2", "--reason", "leaked eval data"]);
    assert!(out.contains("v2"), "{out}");
    wait_states(&a, "A", "resnet", &[(1, "live"), (2, "removed")]);
    wait_states(&b, "B", "resnet", &[(1, "live"), (2, "removed")]);

    // B's cached copy went to its trash (and its tombstone file beside the model), as a
    // local rm's does: the read-through cache never serves it again.
    let b_models = b.root.path().join("models/resnet");
    wait_until(REACH, "B's cached v2 to leave its store", || {
        !b_models.join("v2").exists() && b_models.join(".removed/v2.json").exists()
    });
    for (who, d) in [("A", &a), ("B", &b)] {
        let err = fails(d, &["get", "resnet", "v2", "--path"]);
        assert!(err.contains("removed"), "{who}: {err}");
        assert_eq!(d.get("resnet", "latest").unwrap().number, 1, "{who}");
    }

    // registry.yaml, each host's export, says the same on both: the tombstone (who, why,
    // when), the highest number.
    wait_until(REACH, "B's registry.yaml to match A's", || {
        exported(&a, "resnet") == exported(&b, "resnet")
    });
    let on_b = exported(&b, "resnet");
    let mark = on_b.find(2).unwrap().removed.as_deref().unwrap().clone();
    assert_eq!(mark.reason.as_deref(), Some("leaked eval data"));
    assert_eq!(on_b.highest, 2);
    assert_eq!(catalog_events(&team, "removed"), "resnet 2");

    // The newest was removed: the next registration, on the other host, gets v3.
    let third = bytes(3, 40_000);
    register_bytes(&b, "resnet", &third);
    wait_states(
        &b,
        "B",
        "resnet",
        &[(1, "live"), (2, "removed"), (3, "live")],
    );
    wait_states(
        &a,
        "A",
        "resnet",
        &[(1, "live"), (2, "removed"), (3, "live")],
    );
    let v3 = b.get("resnet", "latest").unwrap();
    assert_eq!(v3.number, 3);
    assert_eq!(v3.files[0].sha256, modelreg::store::sha256_hex(&third));
}

#[test]
fn deprecate_on_one_host_makes_latest_skip_the_version_on_the_other() {
    let team = Engines::start();
    let (a, b) = (team.host(), team.host());
    register_bytes(&a, "bert", &bytes(10, 20_000));
    register_bytes(&a, "bert", &bytes(11, 20_000));
    wait_states(&b, "B", "bert", &[(1, "live"), (2, "live")]);
    assert_eq!(a.get("bert", "latest").unwrap().number, 2);

    ok(&b, &["deprecate", "bert", "v2", "--reason", "eval bug"]);
    assert_eq!(b.get("bert", "latest").unwrap().number, 1);
    wait_states(&a, "A", "bert", &[(1, "live"), (2, "deprecated")]);
    assert_eq!(a.get("bert", "latest").unwrap().number, 1);
    // Still reachable by number, on both; the mark reads the same.
    assert_eq!(a.get("bert", "v2").unwrap().number, 2);
    wait_until(REACH, "A's registry.yaml to match B's", || {
        exported(&a, "bert") == exported(&b, "bert")
    });
    let mark = exported(&a, "bert").find(2).unwrap().deprecated.clone();
    assert_eq!(mark.unwrap().reason.as_deref(), Some("eval bug"));
    let history = ok(&a, &["events", "--model", "bert", "--kind", "deprecated"]);
    assert!(history.contains("deprecated"), "{history}");
    // The shared catalog logged the change's event with it.
    assert_eq!(catalog_events(&team, "deprecated"), "bert 2");
}

#[test]
fn gc_on_one_host_removes_on_both_and_only_blobs_no_live_version_names_are_collected() {
    let team = Engines::start();
    // gpt keeps its newest version. B collects blobs nothing names after 1 s; it starts
    // once A's uploads are done (a grace that short could take an upload's temp file
    // stalled that long on a busy machine: docs/team.md, "Orphan blobs").
    let retention = "retention: {\"gpt\": 1}\n";
    let a = team.host_with(retention);
    let (alone, shared, newest) = (bytes(20, 30_000), bytes(21, 30_000), bytes(22, 30_000));
    register_bytes(&a, "gpt", &alone);
    register_bytes(&a, "gpt", &shared);
    register_bytes(&a, "gpt", &newest);
    // Another model's live version has the same bytes as gpt v2: one blob for both.
    register_bytes(&a, "tiny", &shared);
    let b = team.host_with(&format!("{retention}blobs_grace: 1s\n"));
    wait_states(&b, "B", "gpt", &[(1, "live"), (2, "live"), (3, "live")]);
    wait_states(&b, "B", "tiny", &[(1, "live")]);

    let dry = ok(&b, &["gc", "--dry-run", "--json"]);
    let dry: serde_json::Value = serde_json::from_str(&dry).unwrap();
    let listed: Vec<&str> = dry["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["v1", "v2"], "{dry}");
    assert_eq!(
        states(&a, "gpt"),
        [(1, "live".into()), (2, "live".into()), (3, "live".into())],
        "a dry run removes nothing"
    );

    let out = ok(&b, &["gc"]);
    assert!(out.contains("2 version(s)"), "{out}");
    for (who, d) in [("A", &a), ("B", &b)] {
        wait_states(
            d,
            who,
            "gpt",
            &[(1, "removed"), (2, "removed"), (3, "live")],
        );
        wait_states(d, who, "tiny", &[(1, "live")]);
    }
    let mark = exported(&a, "gpt")
        .find(1)
        .unwrap()
        .removed
        .clone()
        .unwrap();
    assert_eq!(mark.reason.as_deref(), Some("gc: keep_last 1"));
    assert_eq!(catalog_events(&team, "gc"), "gpt 1\ngpt 2");
    // A's own copies of v1 and v2 (it registered them) left its store.
    let a_models = a.root.path().join("models/gpt");
    wait_until(REACH, "A's v1 and v2 to leave its store", || {
        !a_models.join("v1").exists() && !a_models.join("v2").exists()
    });

    // v1's blob, named by no version any more, is collected; v2's, which tiny v1 names
    // too, stays, and so does v3's.
    wait_until(REACH, "the orphaned blob of gpt v1 to be collected", || {
        !team.blob(&alone).exists()
    });
    assert!(team.blob(&shared).exists(), "a blob a live version names");
    assert!(team.blob(&newest).exists());
    let path = ok(&b, &["get", "tiny", "v1", "--path"]);
    assert_eq!(std::fs::read(path.trim()).unwrap(), shared);
}

/// A psql session holding `LOCK TABLE alias_history IN ACCESS EXCLUSIVE MODE` until
/// dropped: every read of a model (the follower's, a host re-reading a model it
/// changed) waits on it, while writes that move no alias go through. So a host does not
/// hear of another host's change while the lock is held.
struct HeldLock {
    child: std::process::Child,
}

impl HeldLock {
    fn take(pg: &PgCluster) -> HeldLock {
        let mut child = Command::new(Path::new(postgres::BIN).join("psql"))
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(pg.socket_dir())
            .args(["-U", "postgres", "-d", "team"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.as_mut().unwrap();
        stdin
            .write_all(
                b"BEGIN;\nLOCK TABLE alias_history IN ACCESS EXCLUSIVE MODE;\nSELECT 'locked';\n",
            )
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        HeldLock { child }
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.write_all(b"COMMIT;\n");
        }
        let _ = self.child.wait();
    }
}

#[test]
fn rm_of_a_version_another_host_removed_first_is_refused_by_the_catalog_naming_it() {
    let team = Engines::start();
    let (a, b) = (team.host(), team.host());
    register_bytes(&a, "vit", &bytes(30, 10_000));
    register_bytes(&a, "vit", &bytes(31, 10_000));
    wait_states(&b, "B", "vit", &[(1, "live"), (2, "live")]);

    // While B cannot hear of it, A removes v1 (its answer waits for the lock too: A
    // reads the model back before answering).
    let lock = HeldLock::take(&team.pg);
    let a_rm = std::thread::scope(|s| {
        let a_rm = s.spawn(|| ok(&a, &["rm", "vit", "v1", "--reason", "first"]));
        wait_until(REACH, "the catalog to hold A's removal of v1", || {
            team.pg.psql(
                "team",
                "SELECT state FROM versions WHERE model = 'vit' AND number = 1",
            ) == "removed"
        });
        // B still holds v1 as live, so its own rules let the rm through: the catalog
        // refuses it, naming who removed it first.
        assert_eq!(states(&b, "vit")[0], (1, "live".to_string()));
        let err = fails(&b, &["rm", "vit", "v1", "--reason", "second"]);
        assert!(
            err.contains("vit v1 is removed in the team's catalog")
                && err.contains(&format!("by host {}", a_host(&a))),
            "{err}"
        );
        drop(lock);
        a_rm.join().unwrap()
    });
    assert!(a_rm.contains("v1"), "{a_rm}");
    // A refusal is not the engine's problem; B then hears of A's removal (its reason).
    assert!(
        !b.problems_text().contains("catalog"),
        "{}",
        b.problems_text()
    );
    wait_states(&b, "B", "vit", &[(1, "removed"), (2, "live")]);
    let mark = exported(&b, "vit")
        .find(1)
        .unwrap()
        .removed
        .clone()
        .unwrap();
    assert_eq!(mark.reason.as_deref(), Some("first"));
    // A deprecation of it is refused on B by its own rules now.
    let err = fails(&b, &["deprecate", "vit", "v1"]);
    assert!(err.contains("removed"), "{err}");
}

/// The name host `d` records in the shared catalog (`<host name>:<root>`).
fn a_host(d: &TestDaemon) -> String {
    d.status().team.expect("team mode").host
}

/// `name`'s alias `alias` as `d` answers it (`get name alias`): the version number.
fn alias_on(d: &TestDaemon, name: &str, alias: &str) -> Option<u32> {
    d.get(name, alias).ok().map(|v| v.number)
}

/// The shared catalog's history of alias `alias` of `name`: `from to by` a row, in order
/// (`-` for none).
fn catalog_history(team: &Engines, name: &str, alias: &str) -> Vec<String> {
    let rows = team.pg.psql(
        "team",
        &format!(
            "SELECT coalesce(from_number::text, '-') || ' ' || coalesce(to_number::text, '-')
                    || ' ' || by
             FROM alias_history WHERE model = '{name}' AND alias = '{alias}' ORDER BY id"
        ),
    );
    rows.lines().map(str::to_string).collect()
}

#[test]
fn an_alias_move_whose_commit_got_no_answer_is_told_unknown_and_the_host_converges() {
    let team = Engines::start();
    let (a, b) = (team.host(), team.host());
    register_bytes(&a, "syncD", &bytes(40, 10_000));
    register_bytes(&a, "syncD", &bytes(41, 10_000));
    ok(&a, &["alias", "set", "syncD", "prod", "v1"]);
    wait_until(REACH, "B to see prod -> v1 and v2", || {
        alias_on(&b, "syncD", "prod") == Some(1) && b.versions("syncD").len() == 2
    });

    // A synchronous standby that never answers: every COMMIT waits for it (committed
    // locally, not yet acknowledged). B's move waits so; its backend is then terminated
    // in that wait, which makes the commit visible while B never hears of it.
    team.pg.psql(
        "postgres",
        "ALTER SYSTEM SET synchronous_standby_names = 'ghost'",
    );
    team.pg.psql("postgres", "SELECT pg_reload_conf()");
    let out = std::thread::scope(|s| {
        let set = s.spawn(|| b.cli(&["alias", "set", "syncD", "prod", "v2"]));
        wait_until(REACH, "B's commit to wait for the standby", || {
            !team
                .pg
                .psql(
                    "team",
                    "SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
                )
                .is_empty()
        });
        team.pg.psql(
            "team",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
        );
        set.join().unwrap()
    });
    team.pg
        .psql("postgres", "ALTER SYSTEM RESET synchronous_standby_names");
    team.pg.psql("postgres", "SELECT pg_reload_conf()");

    // The catalog made it; B says it may have, never "not saved".
    assert_eq!(
        team.pg.psql(
            "team",
            "SELECT number FROM aliases WHERE model = 'syncD' AND alias = 'prod'"
        ),
        "2"
    );
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("outcome unknown")
            && err.contains("may have made")
            && !err.contains("not saved"),
        "{err}"
    );
    // Both hosts answer the catalog's prod, and B's history holds the move once.
    for (who, d) in [("A", &a), ("B", &b)] {
        wait_until(REACH, &format!("{who} to answer prod -> v2"), || {
            alias_on(d, "syncD", "prod") == Some(2)
        });
    }
    assert_eq!(
        catalog_history(&team, "syncD", "prod"),
        ["- 1 set", "1 2 set"]
    );
    wait_until(REACH, "B's registry to hold prod's two moves", || {
        exported(&b, "syncD").alias_history.len() == 2
    });
    // Another change of this model on B (what used to bring the catalog back) leaves
    // its history whole: the move is not recorded twice.
    ok(&b, &["alias", "set", "syncD", "staging", "v1"]);
    wait_until(REACH, "B to answer staging -> v1", || {
        alias_on(&b, "syncD", "staging") == Some(1)
    });
    let m = exported(&b, "syncD");
    let moves: Vec<(Option<u32>, Option<u32>)> =
        m.alias_history.iter().map(|h| (h.from, h.to)).collect();
    assert_eq!(
        moves,
        [(None, Some(1)), (Some(1), Some(2)), (None, Some(1))]
    );
}

#[test]
fn three_hosts_rolling_back_one_alias_at_once_move_it_once() {
    let team = Engines::start();
    let hosts = [team.host(), team.host(), team.host()];
    for i in 0..3 {
        register_bytes(&hosts[0], "race2", &bytes(50 + i, 10_000));
    }
    for v in ["v1", "v2", "v3"] {
        ok(&hosts[0], &["alias", "set", "race2", "rb", v]);
    }
    for (i, d) in hosts.iter().enumerate() {
        wait_until(REACH, &format!("h{} to see rb -> v3", i + 1), || {
            alias_on(d, "race2", "rb") == Some(3) && exported(d, "race2").alias_history.len() == 3
        });
    }

    let outs: Vec<std::process::Output> = std::thread::scope(|s| {
        let runs: Vec<_> = (hosts.iter())
            .map(|d| s.spawn(|| d.cli(&["rollback", "race2", "rb"])))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let told: Vec<String> = (outs.iter())
        .map(|o| {
            let (out, err) = (
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
            );
            format!("{} {}{}", o.status.success(), out.trim(), err.trim())
        })
        .collect();
    let succeeded: Vec<&String> = told.iter().filter(|t| t.starts_with("true")).collect();
    // Each host saw rb at v3: the first rollback to commit moves it to v2, and the
    // catalog refuses the others whose `from` is no longer true, naming the move. A host
    // whose rollback started only after the first move reached it (a loaded machine) rolls
    // back from there: a real move of its own, chained to the one before.
    assert!(!succeeded.is_empty(), "{told:#?}");
    for t in told.iter().filter(|t| t.starts_with("false")) {
        assert!(
            t.contains("moved meanwhile") && t.contains("ask again"),
            "{t}"
        );
    }
    let history = catalog_history(&team, "race2", "rb");
    assert_eq!(
        history[..4],
        ["- 1 set", "1 2 set", "2 3 set", "3 2 rollback"],
        "{told:#?}"
    );
    assert_eq!(history.len(), 3 + succeeded.len(), "{history:?} {told:#?}");
    let mut to = "2".to_string();
    for h in &history[4..] {
        let w: Vec<&str> = h.split(' ').collect();
        assert_eq!(
            (w[0], w[2]),
            (to.as_str(), "rollback"),
            "chained: {history:?}"
        );
        assert_ne!(w[0], w[1], "no no-op row: {history:?}");
        to = w[1].to_string();
    }
    let last: u32 = to.parse().unwrap();
    let rows = history.len();
    for (i, d) in hosts.iter().enumerate() {
        wait_until(
            REACH,
            &format!("h{} to answer rb -> v{last}", i + 1),
            || {
                alias_on(d, "race2", "rb") == Some(last)
                    && exported(d, "race2").alias_history.len() == rows
            },
        );
    }

    // Two hosts setting one alias at once: the same holds (one move from v2, the other
    // refused), and a move to where it already points is never a row.
    let outs: Vec<std::process::Output> = std::thread::scope(|s| {
        let runs: Vec<_> = (hosts[..2].iter())
            .map(|d| s.spawn(|| d.cli(&["alias", "set", "race2", "rb", "v1"])))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let ok_count = outs.iter().filter(|o| o.status.success()).count();
    assert!(ok_count >= 1, "{outs:#?}");
    let history = catalog_history(&team, "race2", "rb");
    assert!(history.len() > rows, "{history:?}");
    assert!(
        history.iter().all(|h| {
            let mut w = h.split(' ');
            w.next() != w.next()
        }),
        "{history:?}"
    );
}

/// Metric `key` of version `number` of `name` as `d` lists it.
fn metric(d: &TestDaemon, name: &str, number: u32, key: &str) -> Option<f64> {
    let v = d.versions(name).into_iter().find(|v| v.number == number)?;
    serde_json::to_value(&v.metrics).unwrap()[key].as_f64()
}

/// The version `best` by `accuracy` names on `d`.
fn best(d: &TestDaemon, name: &str) -> String {
    let out = ok(d, &["get", name, "best", "--metric", "accuracy", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    format!("v{}", v["number"])
}

/// A sidecar written on one host after its artifact was registered gives its metrics to
/// the version on every host, not only its own (it stayed on that host, so `best`
/// answered differently from host to host); so does `add` of the newest version's bytes
/// with `--metric` on the other host. Each is one change of the shared catalog, with one
/// `metrics_updated` event there.
#[test]
fn metrics_given_after_registration_on_one_host_reach_every_host() {
    let team = Engines::start();
    let (a, b) = (team.host(), team.host());
    let first = bytes(11, 30_000);
    common::write_renamed(&a.inbox(), "resnet.pt", &first);
    wait_states(&b, "B", "resnet", &[(1, "live")]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("resnet.bin");
    std::fs::write(&file, bytes(12, 30_000)).unwrap();
    let file = file.display().to_string();
    ok(&b, &["add", &file, "--name", "resnet"]);
    wait_states(&a, "A", "resnet", &[(1, "live"), (2, "live")]);
    // v2 is the newest on both: A's edited sidecar goes to it (local mode's rule), though
    // B registered it.
    common::write_renamed(
        &a.inbox(),
        "resnet.metrics.yaml",
        common::sidecar(&[("accuracy", 0.91)]).as_bytes(),
    );
    wait_until(REACH, "B to hold v2's accuracy from A's sidecar", || {
        metric(&b, "resnet", 2, "accuracy") == Some(0.91)
    });
    wait_until(REACH, "A to hold v2's accuracy", || {
        metric(&a, "resnet", 2, "accuracy") == Some(0.91)
    });
    assert_eq!(metric(&b, "resnet", 1, "accuracy"), None);
    assert_eq!(
        (best(&a, "resnet"), best(&b, "resnet")),
        ("v2".into(), "v2".into())
    );

    // `add` on A of v2's bytes (B's registration) with a metric: identical to the newest
    // version, so no new version, and v2 gets it on B too.
    ok(
        &a,
        &[
            "add",
            &file,
            "--name",
            "resnet",
            "--metric",
            "accuracy=0.97",
        ],
    );
    wait_until(REACH, "B to hold v2's accuracy from A's add", || {
        metric(&b, "resnet", 2, "accuracy") == Some(0.97)
    });
    assert_eq!(metric(&a, "resnet", 2, "accuracy"), Some(0.97));
    assert_eq!(states(&a, "resnet").len(), 2, "no new version");
    assert_eq!(exported(&a, "resnet"), exported(&b, "resnet"));
    assert_eq!(
        catalog_events(&team, "metrics_updated").trim(),
        "resnet 2\nresnet 2"
    );
}
