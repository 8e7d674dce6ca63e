//! Team mode end to end: real daemons, each with its own root, sharing one real
//! PostgreSQL 15 (tests/common/postgres.rs, over its Unix socket) and one blob store in a
//! shared folder, on one machine. What a host registers, every host lists and answers;
//! a `get` of a version registered elsewhere fetches its files and checks them; an alias
//! moved on one host is seen on the others; hosts racing on one model get dense numbers.
//! Latencies are printed (run with --nocapture).

mod common;
#[path = "common/garage.rs"]
mod garage;
#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/team_engines.rs"]
mod team_engines;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{TestDaemon, bytes, http, ok, wait_until, write_renamed};
use postgres::PgCluster;
use team_engines::Engines;

/// The versions `d` lists for `name`: number -> sha256 of its (one) file.
fn numbers(d: &TestDaemon, name: &str) -> BTreeMap<u32, String> {
    d.versions(name)
        .into_iter()
        .map(|v| (v.number, v.files[0].sha256.clone()))
        .collect()
}

#[test]
fn a_version_registered_on_one_host_is_listed_and_fetched_on_another() {
    let team = Engines::start();
    let (a, b) = (team.host(), team.host());
    let content = bytes(7, 300_000);
    write_renamed(&a.inbox(), "resnet.pt", &content);
    let on_a = a.wait_versions("resnet", 1);
    assert_eq!(on_a[0].number, 1);

    // B hears of it, and answers list, versions and get as A does.
    wait_until(Duration::from_secs(10), "B to list resnet", || {
        numbers(&b, "resnet").len() == 1
    });
    assert_eq!(numbers(&a, "resnet"), numbers(&b, "resnet"));
    let listed = ok(&b, &["list"]);
    assert!(listed.contains("resnet"), "{listed}");
    // Its files are not on B yet: only the catalog was shared.
    let stored_on_b = b.root.path().join("models/resnet/v1/resnet.pt");
    assert!(!stored_on_b.exists());

    // `get --path` on B fetches the file from the blob store, checks it, then answers.
    let path = ok(&b, &["get", "resnet", "latest", "--path"]);
    let path = Path::new(path.trim());
    assert_eq!(path, stored_on_b);
    assert_eq!(std::fs::read(path).unwrap(), content);
    let info = b.get("resnet", "latest").unwrap();
    assert_eq!(info.number, 1);
    assert_eq!(info.files[0].sha256, on_a[0].files[0].sha256);
    // The blob store holds it under its SHA-256.
    let sha = &on_a[0].files[0].sha256;
    let blob = team.blobs.path().join("sha256").join(&sha[..2]).join(sha);
    assert_eq!(std::fs::read(blob).unwrap(), content);
    wait_until(
        Duration::from_secs(30),
        "B's registry.yaml to name v1",
        || {
            std::fs::read_to_string(b.registry_path())
                .is_ok_and(|t| t.contains("models/resnet/v1/resnet.pt"))
        },
    );
    // A second version on A, never fetched on B; B restarts and still answers both.
    write_renamed(&a.inbox(), "resnet.pt", &bytes(8, 1000));
    a.wait_versions("resnet", 2);
    wait_until(Duration::from_secs(10), "B to list resnet v2", || {
        numbers(&b, "resnet").len() == 2
    });
    let mut b = b;
    b.stop();
    b.spawn();
    assert_eq!(numbers(&a, "resnet"), numbers(&b, "resnet"));
    let path = ok(&b, &["get", "resnet", "v2", "--path"]);
    assert_eq!(std::fs::read(path.trim()).unwrap(), bytes(8, 1000));
    // Not fetched is not missing: the start-up store check (done by now: it ran while
    // the `get` above was asked) did not call v2 a problem.
    let problems = b.problems_text();
    assert!(!problems.contains("missing"), "{problems}");
}

#[test]
fn an_alias_moved_on_one_host_is_seen_on_another_within_a_second() {
    let team = Engines::start();
    let (a, b) = (team.host(), team.host());
    for i in 1..=2u64 {
        write_renamed(&a.inbox(), "bert.pt", &bytes(100 + i, 50_000));
        a.wait_versions("bert", i as usize);
    }
    wait_until(Duration::from_secs(10), "B to list bert v1 and v2", || {
        numbers(&b, "bert").len() == 2
    });
    let mut seen = Vec::new();
    for (i, target) in [1u32, 2, 1, 2, 1].into_iter().enumerate() {
        ok(
            &a,
            &["alias", "set", "bert", "production", &format!("v{target}")],
        );
        let moved = Instant::now();
        wait_until(
            Duration::from_secs(10),
            &format!("move {i}: B to see production at v{target}"),
            || {
                b.get("bert", "production")
                    .is_ok_and(|v| v.number == target)
            },
        );
        seen.push(moved.elapsed());
    }
    seen.sort();
    println!("alias move seen on the other host after: {seen:?}");
    assert!(
        seen[seen.len() / 2] < Duration::from_secs(1),
        "the median alias move took {:?} to reach the other host",
        seen[seen.len() / 2]
    );
    // And the history reads the same on both.
    let history = |d: &TestDaemon| ok(d, &["history", "bert"]);
    wait_until(Duration::from_secs(10), "B's history to match A's", || {
        history(&a) == history(&b)
    });
}

#[test]
fn hosts_registering_one_model_at_once_get_dense_unique_numbers() {
    let team = Engines::start();
    let hosts = [team.host(), team.host(), team.host()];
    const EACH: u64 = 6;
    // Every host registers new bytes of `gpt` one after the other, all hosts at once,
    // so their numbers are allocated in a race.
    std::thread::scope(|s| {
        for (h, d) in hosts.iter().enumerate() {
            s.spawn(move || {
                for i in 0..EACH {
                    let content = bytes(1000 * h as u64 + i, 20_000);
                    let sha = modelreg::store::sha256_hex(&content);
                    write_renamed(&d.inbox(), "gpt.pt", &content);
                    wait_until(
                        Duration::from_secs(30),
                        &format!("host {h} to register its version {i}"),
                        || numbers(d, "gpt").values().any(|s| *s == sha),
                    );
                }
            });
        }
    });
    let total = 3 * EACH as usize;
    for (h, d) in hosts.iter().enumerate() {
        wait_until(
            Duration::from_secs(30),
            &format!("host {h} to list all {total} versions"),
            || numbers(d, "gpt").len() == total,
        );
    }
    let on_first = numbers(&hosts[0], "gpt");
    let expected: Vec<u32> = (1..=total as u32).collect();
    assert_eq!(on_first.keys().copied().collect::<Vec<_>>(), expected);
    // Each number names different bytes: none was given twice.
    let distinct: std::collections::BTreeSet<&String> = on_first.values().collect();
    assert_eq!(distinct.len(), total);
    for d in &hosts[1..] {
        assert_eq!(
            numbers(d, "gpt"),
            on_first,
            "every host lists the same versions"
        );
    }
    // Each host stored what it registered under the number the shared catalog gave.
    for (h, d) in hosts.iter().enumerate() {
        for (n, sha) in &on_first {
            let file = d.root.path().join(format!("models/gpt/v{n}/gpt.pt"));
            if let Ok(bytes) = std::fs::read(&file) {
                assert_eq!(&modelreg::store::sha256_hex(&bytes), sha, "host {h} v{n}");
            }
        }
    }
    // How often a host staged a version under a number another host took first (its
    // staging folder was renamed to the number the shared catalog gave).
    let renumbered: usize = hosts
        .iter()
        .map(|d| {
            d.log()
                .matches("while another host took that number")
                .count()
        })
        .sum();
    println!(
        "{total} versions from 3 hosts: numbers {:?}; {renumbered} staged under a number taken first by another host",
        on_first.keys().collect::<Vec<_>>()
    );
}

#[test]
fn a_registration_waits_while_the_catalog_is_down_and_is_recorded_once_it_is_back() {
    let mut team = Engines::start();
    let (a, b) = (team.host(), team.host());
    write_renamed(&a.inbox(), "vit.pt", &bytes(1, 10_000));
    a.wait_versions("vit", 1);
    wait_until(Duration::from_secs(10), "B to list vit v1", || {
        numbers(&b, "vit").len() == 1
    });

    team.pg.stop();
    let second = bytes(2, 10_000);
    write_renamed(&a.inbox(), "vit.pt", &second);
    // Nothing half-registered: the entry waits, `status` names the engine.
    let problem = a.wait_problem_text("registering vit failed");
    println!("while PostgreSQL was stopped, A's status said: {problem}");
    assert!(
        problem.contains("catalog socket") && problem.contains("retried"),
        "{problem}"
    );
    assert_eq!(numbers(&a, "vit").len(), 1, "nothing registered on A alone");
    let waiting = ok(&a, &["status"]);
    assert!(waiting.contains("vit"), "{waiting}");

    team.pg.resume();
    let sha = modelreg::store::sha256_hex(&second);
    let back = Instant::now();
    for (h, d) in [("A", &a), ("B", &b)] {
        wait_until(
            Duration::from_secs(60),
            &format!("{h} to list vit v2"),
            || numbers(d, "vit").get(&2) == Some(&sha),
        );
    }
    println!(
        "after PostgreSQL was back, both hosts listed v2 within {:?}",
        back.elapsed()
    );
    assert_eq!(numbers(&a, "vit").len(), 2, "recorded once");
    wait_until(Duration::from_secs(10), "A's problem to clear", || {
        !a.problems_text().contains("registering vit failed")
    });
    assert_eq!(
        std::fs::read(a.root.path().join("models/vit/v2/vit.pt")).unwrap(),
        second
    );
}

#[test]
fn hosts_sharing_an_s3_blob_store_fetch_each_others_versions() {
    let pg = PgCluster::start();
    pg.create_database("team");
    let s3 = garage::Garage::start();
    let env = [
        ("AWS_ENDPOINT_URL", s3.endpoint.clone()),
        ("AWS_REGION", garage::REGION.to_string()),
        ("AWS_ACCESS_KEY_ID", s3.key_id.clone()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret.clone()),
    ];
    let host = || {
        let mut d = TestDaemon::new(&format!(
            "settle: 300ms\ncatalog: \"{}\"\nblobs: s3://{}/team\n",
            pg.url("team"),
            garage::BUCKET
        ));
        d.spawn_with(&env, true);
        d
    };
    let (a, b) = (host(), host());
    let content = bytes(42, 3 << 20);
    write_renamed(&a.inbox(), "llama.gguf", &content);
    a.wait_versions("llama", 1);
    wait_until(Duration::from_secs(10), "B to list llama", || {
        numbers(&b, "llama").len() == 1
    });
    let fetched = Instant::now();
    let path = ok(&b, &["get", "llama", "--path"]);
    println!(
        "B fetched 3 MiB from Garage and answered in {:?}",
        fetched.elapsed()
    );
    assert_eq!(std::fs::read(path.trim()).unwrap(), content);
}

#[test]
fn team_settings_that_cannot_work_stop_the_start_naming_the_file_and_key() {
    for (config, key, says) in [
        (
            "catalog: postgres://h/db\n",
            "blobs",
            "`catalog:` is set but `blobs:` is not",
        ),
        (
            "blobs: /mnt/blobs\n",
            "catalog",
            "`blobs:` is set but `catalog:` is not",
        ),
        (
            "catalog: mysql://u:secret@h/db\nblobs: /b\n",
            "catalog",
            "not a PostgreSQL connection string",
        ),
        (
            "catalog: postgres://h/db\nblobs: s3:///p\n",
            "blobs",
            "names no bucket",
        ),
        (
            "catalog: postgres://h/db\nblobs: blobs\n",
            "blobs",
            "absolute folder path",
        ),
        // Refused by the daemon's start, before its socket (the settings' form is fine).
        (
            "catalog: postgres://h/db\nblobs: /nonexistent/modelreg-blobs\n",
            "blobs",
            "is not a folder (is the share mounted?)",
        ),
        (
            "catalog: postgres://h/db\nblobs: /proc\n",
            "blobs",
            "this host cannot write in /proc",
        ),
        (
            "catalog: \"postgres://u:secret@h/db?sslmode=require\"\nblobs: /tmp\n",
            "catalog",
            "sslmode=require: TLS to the catalog database is not supported yet",
        ),
    ] {
        let d = TestDaemon::new(config);
        let out = d.serve_output();
        let err = common::stderr(&out);
        assert!(!out.status.success(), "{config}: started");
        let file = d.root.path().join("config/modelreg.yaml");
        assert!(
            err.contains(&format!("{}: {key}: ", file.display())) && err.contains(says),
            "{config}: {err}"
        );
        assert!(!err.contains("secret"), "{err}");
        assert!(
            !err.contains("modelreg started"),
            "{config}: bound first: {err}"
        );
        assert!(!d.socket().exists(), "{config}");
    }
}

#[test]
fn a_file_handed_over_with_add_is_numbered_by_the_team_and_reaches_the_other_host() {
    let team = Engines::start();
    let (a, b) = (team.host(), team.host());
    write_renamed(&b.inbox(), "t5.pt", &bytes(50, 5_000));
    b.wait_versions("t5", 1);
    wait_until(Duration::from_secs(10), "A to list t5 v1", || {
        numbers(&a, "t5").len() == 1
    });
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("t5.pt");
    let content = bytes(51, 7_000);
    std::fs::write(&file, &content).unwrap();
    ok(&a, &["add", file.to_str().unwrap(), "--name", "t5"]);
    assert!(
        a.log().contains("from a hand-over"),
        "add went through the hand-over"
    );
    let sha = modelreg::store::sha256_hex(&content);
    assert_eq!(numbers(&a, "t5").get(&2), Some(&sha));
    wait_until(Duration::from_secs(10), "B to list t5 v2", || {
        numbers(&b, "t5").get(&2) == Some(&sha)
    });
    let path = ok(&b, &["get", "t5", "v2", "--path"]);
    assert_eq!(std::fs::read(path.trim()).unwrap(), content);
}

/// The HTTP API's download routes read through as `get` does: a host that never fetched
/// a version registered elsewhere serves its file, a HEAD of it and its tar, each file
/// fetched from the blob store and checked first (before, they answered `file_missing`).
/// A blob the store lost is an error naming the file, and nothing is left at its path.
#[test]
fn the_http_file_routes_of_another_hosts_version_fetch_it_first() {
    let team = Engines::start();
    let a = team.host();
    let b = team.host_with("http:\n  listen: 127.0.0.1:0\n  anonymous_read: true\n");
    let content = bytes(21, 200_000);
    write_renamed(&a.inbox(), "bert.pt", &content);
    a.wait_versions("bert", 1);
    wait_until(Duration::from_secs(10), "B to list bert", || {
        numbers(&b, "bert").len() == 1
    });
    let stored_on_b = b.root.path().join("models/bert/v1/bert.pt");
    assert!(!stored_on_b.exists());
    let addr = http::address(&b);

    let head = http::request(
        &addr,
        "HEAD",
        "/api/v1/models/bert/versions/latest/files/bert.pt",
        &[],
    );
    assert_eq!(head.status, 200, "{}", String::from_utf8_lossy(&head.body));
    assert_eq!(head.header("content-length"), Some("200000"));
    let got = http::get(&addr, "/api/v1/models/bert/versions/v1/files/bert.pt");
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert!(
        got.body == content,
        "the bytes served are the registered ones"
    );
    assert_eq!(std::fs::read(&stored_on_b).unwrap(), content);

    // A second version, asked for first as a tar.
    let second = bytes(22, 5000);
    write_renamed(&a.inbox(), "bert.pt", &second);
    a.wait_versions("bert", 2);
    wait_until(Duration::from_secs(10), "B to list bert v2", || {
        numbers(&b, "bert").len() == 2
    });
    let tar = http::get(&addr, "/api/v1/models/bert/versions/v2/tar");
    assert_eq!(tar.status, 200, "{}", String::from_utf8_lossy(&tar.body));
    let needle = &second[..64];
    assert!(
        tar.body.windows(needle.len()).any(|w| w == needle),
        "the tar holds v2's bytes"
    );
    assert_eq!(
        std::fs::read(b.root.path().join("models/bert/v2/bert.pt")).unwrap(),
        second
    );

    // A third whose blob is gone from the store: an error naming the file, no file left.
    let third = bytes(23, 3000);
    write_renamed(&a.inbox(), "bert.pt", &third);
    let on_a = a.wait_versions("bert", 3);
    wait_until(Duration::from_secs(10), "B to list bert v3", || {
        numbers(&b, "bert").len() == 3
    });
    let sha = &on_a[2].files[0].sha256;
    std::fs::remove_file(team.blobs.path().join("sha256").join(&sha[..2]).join(sha)).unwrap();
    let lost = http::get(&addr, "/api/v1/models/bert/versions/v3/files/bert.pt");
    assert_eq!(lost.status, 500, "{}", String::from_utf8_lossy(&lost.body));
    let text = String::from_utf8_lossy(&lost.body);
    assert!(
        text.contains("bert.pt is not on this host and could not be fetched"),
        "{text}"
    );
    assert!(!b.root.path().join("models/bert/v3/bert.pt").exists());
}

#[test]
fn bytes_another_host_registered_make_no_new_version_and_add_answers_as_in_local_mode() {
    let team = Engines::start();
    let (a, b) = (team.host(), team.host());
    let content = bytes(60, 40_000);
    let sha = modelreg::store::sha256_hex(&content);
    write_renamed(&a.inbox(), "vit.pt", &content);
    a.wait_versions("vit", 1);
    wait_until(Duration::from_secs(10), "B to list vit v1", || {
        numbers(&b, "vit").len() == 1
    });
    // B holds v1's record, not its bytes (never fetched): the same bytes dropped on B
    // are found identical to the newest version by the shared catalog.
    write_renamed(&b.inbox(), "vit.pt", &content);
    wait_until(
        Duration::from_secs(30),
        "B to find vit.pt identical to v1 (or record it again)",
        || {
            b.log()
                .contains("content identical to v1 in the team's catalog")
                || numbers(&b, "vit").len() > 1
        },
    );
    assert_eq!(
        numbers(&b, "vit"),
        BTreeMap::from([(1, sha.clone())]),
        "no second version of the same bytes"
    );
    // And handed over with `add`: the answer local mode gives identical bytes.
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("vit.pt");
    std::fs::write(&file, &content).unwrap();
    let out = ok(&b, &["add", file.to_str().unwrap(), "--name", "vit"]);
    assert!(
        out.contains("vit v1") && out.contains("(identical to the newest version: no new version)"),
        "{out}"
    );
    assert!(b.status().waiting.is_empty(), "{:?}", b.status().waiting);
    for d in [&a, &b] {
        assert_eq!(numbers(d, "vit"), BTreeMap::from([(1, sha.clone())]));
    }
    assert_eq!(
        team.pg.psql("team", "SELECT count(*) FROM versions"),
        "1",
        "one version in the shared catalog"
    );
    // Numbers stay dense: the next bytes are v2 on both.
    write_renamed(&b.inbox(), "vit.pt", &bytes(61, 40_000));
    b.wait_versions("vit", 2);
    wait_until(Duration::from_secs(10), "A to list vit v2", || {
        numbers(&a, "vit").len() == 2
    });
}

/// The permission bits of `p`.
fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_fetched_version_has_the_modes_and_the_manifest_of_a_local_one() {
    let team = Engines::start();
    let (a, b) = (team.host(), team.host());
    write_renamed(&a.inbox(), "m.pt", &bytes(31, 20_000));
    let on_a = a.wait_versions("m", 1);
    wait_until(Duration::from_secs(10), "B to list m", || {
        numbers(&b, "m").len() == 1
    });
    ok(&b, &["get", "m", "v1", "--path"]);
    let (dir_a, dir_b) = (
        a.root.path().join("models/m/v1"),
        b.root.path().join("models/m/v1"),
    );
    // The fetched file: read-only and readable by whom a locally stored one is (0444,
    // not the temp file's 0600), in folders of the store's mode.
    assert_eq!(mode_of(&dir_b.join("m.pt")), mode_of(&dir_a.join("m.pt")));
    assert_eq!(mode_of(&dir_b.join("m.pt")), 0o444);
    assert_eq!(mode_of(&dir_b), 0o755);
    // Its manifest, as the registering host wrote its own.
    let manifest = dir_b.join(".modelreg-version.json");
    assert_eq!(mode_of(&manifest), 0o444);
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(m["name"], "m");
    assert_eq!(m["version"], 1);
    assert_eq!(m["files"][0]["rel"], "m.pt");
    assert_eq!(m["files"][0]["sha256"], on_a[0].files[0].sha256.as_str());
    // Nothing else was left in the folder (no temp files).
    let mut names: Vec<String> = std::fs::read_dir(&dir_b)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [".modelreg-version.json", "m.pt"]);
    // A restart leaves them as they are (it took write bits away from a 0600 file).
    let mut b = b;
    b.stop();
    b.spawn();
    assert_eq!(mode_of(&dir_b.join("m.pt")), 0o444);
}

#[test]
fn latest_and_alias_links_of_another_hosts_model_exist_and_resolve_once_fetched() {
    let team = Engines::start();
    let (a, b) = (team.host(), team.host());
    write_renamed(&a.inbox(), "x.pt", &bytes(41, 10_000));
    a.wait_versions("x", 1);
    ok(&a, &["alias", "set", "x", "production", "v1"]);
    let model_b = b.root.path().join("models/x");
    // Made without a fetch: pointing at v1, which is not here yet.
    wait_until(
        Duration::from_secs(10),
        "B's latest and production links",
        || {
            ["latest", "production"]
                .iter()
                .all(|l| std::fs::read_link(model_b.join(l)).is_ok_and(|t| t == Path::new("v1")))
        },
    );
    assert!(!model_b.join("v1").exists());
    ok(&b, &["get", "x", "production", "--path"]);
    // The stable paths README gives resolve once fetched.
    for l in ["latest", "production"] {
        assert_eq!(
            std::fs::read(model_b.join(l).join("x.pt")).unwrap(),
            bytes(41, 10_000)
        );
    }
}

#[test]
fn verify_on_a_team_host_counts_versions_not_fetched_and_fails_on_damaged_ones() {
    let team = Engines::start();
    let (a, b) = (team.host(), team.host());
    write_renamed(&a.inbox(), "y.pt", &bytes(51, 10_000));
    write_renamed(&a.inbox(), "z.pt", &bytes(52, 10_000));
    a.wait_versions("y", 1);
    a.wait_versions("z", 1);
    wait_until(Duration::from_secs(10), "B to list y and z", || {
        numbers(&b, "y").len() == 1 && numbers(&b, "z").len() == 1
    });
    // Nothing fetched: healthy, two versions not fetched.
    let out = ok(&b, &["verify"]);
    assert!(
        out.contains("not fetched: 2 version(s), 2 file(s)"),
        "{out}"
    );
    assert!(!out.contains("MISSING"), "{out}");
    // y fetched: one left not fetched, y's file checked.
    let path = ok(&b, &["get", "y", "latest", "--path"]);
    let out = ok(&b, &["verify"]);
    assert!(
        out.contains("not fetched: 1 version(s), 1 file(s)"),
        "{out}"
    );
    assert!(out.contains("verified 2 version(s), 1 file(s)"), "{out}");
    // A fetched file damaged here still fails.
    let path = Path::new(path.trim());
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::write(path, b"damaged").unwrap();
    let o = b.cli(&["verify"]);
    assert!(!o.status.success());
    assert!(
        common::stdout(&o).contains("MODIFIED"),
        "{}",
        common::stdout(&o)
    );
}

/// `modelreg --root ROOT verify --catalog .. --blobs .. [extra]` against `team`.
fn verify_catalog(team: &Engines, root: &Path, extra: &[&str]) -> std::process::Output {
    let url = team.pg.url("team");
    let blobs = team.blobs.path().display().to_string();
    std::process::Command::new(common::BIN)
        .arg("--root")
        .arg(root)
        .args(["verify", "--catalog", &url, "--blobs", &blobs])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn a_blob_damaged_in_place_or_lost_is_repaired_from_a_host_that_holds_a_good_copy() {
    let team = Engines::start();
    let (a, b) = (team.host(), team.host());
    let (damaged, lost) = (bytes(61, 20_000), bytes(62, 20_000));
    write_renamed(&a.inbox(), "dmg.pt", &damaged);
    write_renamed(&a.inbox(), "lost.pt", &lost);
    a.wait_versions("dmg", 1);
    a.wait_versions("lost", 1);
    wait_until(Duration::from_secs(10), "B to list dmg and lost", || {
        numbers(&b, "dmg").len() == 1 && numbers(&b, "lost").len() == 1
    });
    // Same size, other bytes: the presence check (a stat, a HEAD) cannot tell.
    let blob = team.blob(&damaged);
    common::damage_in_place(&blob, 100);
    std::fs::remove_file(team.blob(&lost)).unwrap();

    // B's fetch refuses it, saying the blob is damaged, its key, and how to repair it.
    let err = common::fails(&b, &["get", "dmg", "latest", "--path"]);
    assert!(err.contains("damaged"), "{err}");
    assert!(err.contains(&blob.display().to_string()), "{err}");
    assert!(err.contains("--repair"), "{err}");

    // B has no good copy: nothing repaired, and it says to run it where there is one.
    let o = verify_catalog(&team, b.root.path(), &["--repair"]);
    let out = common::stdout(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("not repaired: no good copy on this host"),
        "{out}"
    );
    assert!(!out.contains("REPAIRED"), "{out}");
    assert_ne!(std::fs::read(&blob).unwrap(), damaged);

    // A registered both: each is uploaded again from its store, read back and checked.
    let o = verify_catalog(&team, a.root.path(), &["--repair"]);
    let out = common::stdout(&o);
    assert!(o.status.success(), "{out}{}", common::stderr(&o));
    assert_eq!(out.matches("REPAIRED").count(), 2, "{out}");
    assert!(out.contains("all stored files match the catalog"), "{out}");
    assert_eq!(std::fs::read(&blob).unwrap(), damaged);
    assert_eq!(std::fs::read(team.blob(&lost)).unwrap(), lost);
    assert!(verify_catalog(&team, b.root.path(), &[]).status.success());
    // And B now fetches both.
    for (name, content) in [("dmg", &damaged), ("lost", &lost)] {
        let path = ok(&b, &["get", name, "latest", "--path"]);
        assert_eq!(&std::fs::read(path.trim()).unwrap(), content);
    }
}

#[test]
fn a_fetch_that_fails_leaves_no_version_folder_behind() {
    let team = Engines::start();
    let (a, b) = (team.host(), team.host());
    let content = bytes(63, 5_000);
    write_renamed(&a.inbox(), "gone.pt", &content);
    a.wait_versions("gone", 1);
    wait_until(Duration::from_secs(10), "B to list gone", || {
        numbers(&b, "gone").len() == 1
    });
    // The store gives nothing (as a store that is down would): the `get` fails.
    let away = team.blobs.path().join("sha256.away");
    std::fs::rename(team.blobs.path().join("sha256"), &away).unwrap();
    let err = common::fails(&b, &["get", "gone", "latest", "--path"]);
    assert!(err.contains("could not be fetched"), "{err}");
    let dir = b.root.path().join("models/gone/v1");
    assert!(!dir.exists(), "{} left behind", dir.display());
    // Back: the `get` fetches it.
    std::fs::rename(&away, team.blobs.path().join("sha256")).unwrap();
    let path = ok(&b, &["get", "gone", "latest", "--path"]);
    assert_eq!(std::fs::read(path.trim()).unwrap(), content);
}

#[test]
fn a_get_fetching_while_another_hosts_rm_is_merged_answers_that_it_was_removed() {
    let team = Engines::start();
    let a = team.host();
    // B's fetches wait (the debug-build hook) while `gate` exists.
    let scratch = tempfile::tempdir().unwrap();
    let gate = scratch.path().join("hold");
    let mut b = TestDaemon::new(&format!(
        "settle: 300ms\ncatalog: \"{}\"\nblobs: {}\nhttp:\n  listen: 127.0.0.1:0\n  anonymous_read: true\n",
        team.pg.url("team"),
        team.blobs.path().display()
    ));
    b.spawn_with(
        &[("MODELREG_DEBUG_HOLD_FETCH", gate.display().to_string())],
        true,
    );
    write_renamed(&a.inbox(), "raced.pt", &bytes(64, 5_000));
    a.wait_versions("raced", 1);
    wait_until(Duration::from_secs(10), "B to list raced", || {
        numbers(&b, "raced").len() == 1
    });
    std::fs::write(&gate, "").unwrap();
    let get = std::process::Command::new(common::BIN)
        .arg("--socket")
        .arg(b.socket())
        .args(["get", "raced", "v1", "--path"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), "B's fetch to be held", || {
        b.log().contains("held while")
    });
    // A removes it; B merges the removal while its fetch waits.
    ok(&a, &["rm", "raced", "v1", "--reason", "bad data"]);
    wait_until(Duration::from_secs(10), "B to merge the rm", || {
        // Not a `get`, which would fetch, and wait on the gate too.
        !(b.versions("raced").iter()).any(|v| v.number == 1 && v.state == "live")
    });
    std::fs::remove_file(&gate).unwrap();
    let out = get.wait_with_output().unwrap();
    let err = common::stderr(&out);
    assert!(!out.status.success(), "{}", common::stdout(&out));
    assert!(
        err.contains("raced v1 was removed at") && err.contains("bad data"),
        "{err}"
    );
    let dir = b.root.path().join("models/raced/v1");
    assert!(!dir.exists(), "{} left behind", dir.display());

    // The same race on the HTTP API's file route: 410 Gone, saying when and why.
    write_renamed(&a.inbox(), "viaweb.pt", &bytes(68, 5_000));
    a.wait_versions("viaweb", 1);
    wait_until(Duration::from_secs(10), "B to list viaweb", || {
        numbers(&b, "viaweb").len() == 1
    });
    std::fs::write(&gate, "").unwrap();
    let addr = http::address(&b);
    let download = std::thread::spawn(move || {
        http::get(&addr, "/api/v1/models/viaweb/versions/v1/files/viaweb.pt")
    });
    wait_until(Duration::from_secs(10), "B's download to be held", || {
        b.log().contains("viaweb.pt held while")
    });
    ok(&a, &["rm", "viaweb", "v1", "--reason", "leaked"]);
    wait_until(Duration::from_secs(10), "B to merge the second rm", || {
        // Not a `get`, which would fetch, and wait on the gate too.
        !(b.versions("viaweb").iter()).any(|v| v.number == 1 && v.state == "live")
    });
    std::fs::remove_file(&gate).unwrap();
    let got = download.join().unwrap();
    let body = String::from_utf8_lossy(&got.body);
    assert_eq!(got.status, 410, "{body}");
    assert!(
        body.contains("viaweb v1 was removed at") && body.contains("leaked"),
        "{body}"
    );
    let dir = b.root.path().join("models/viaweb/v1");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn with_the_catalog_down_errors_and_status_name_the_engine_and_each_failure_once() {
    let mut team = Engines::start();
    let a = team.host();
    write_renamed(&a.inbox(), "once.pt", &bytes(65, 1_000));
    a.wait_versions("once", 1);
    team.pg.stop();
    // Its server, as `status` names the catalog.
    let server = a.status().team.expect("team status").catalog;
    let named_once = |what: &str, text: &str| {
        for line in text.lines() {
            assert!(line.matches(&server).count() <= 1, "{what}: {line}");
        }
    };
    write_renamed(&a.inbox(), "once.pt", &bytes(66, 1_000));
    a.wait_problem_text("registering once failed");
    // A second attempt (the settler's backoff: 2 s) fails the same way.
    wait_until(Duration::from_secs(20), "a second attempt", || {
        ok(&a, &["status"]).contains("attempt 2 failed")
    });
    let status = ok(&a, &["status"]);
    named_once("status", &status);
    let errors = a.status().recent_errors;
    let registering: Vec<_> = (errors.iter())
        .filter(|e| e.message.starts_with("registering once"))
        .collect();
    assert_eq!(registering.len(), 1, "{registering:#?}");

    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("other.pt");
    std::fs::write(&f, bytes(67, 1_000)).unwrap();
    let add = common::fails(&a, &["add", f.to_str().unwrap()]);
    assert!(add.contains(&server), "{add}");
    named_once("add", &add);
    let alias = common::fails(&a, &["alias", "set", "once", "prod", "v1"]);
    assert!(alias.contains(&server), "{alias}");
    named_once("alias set", &alias);
}
