//! Search (`--where`, `--tag`, `--sort`, `--limit`, `--cursor`) on the real binary: over a
//! 10,000-version registry written by the test, each operator and the precedence checked
//! against the same rule computed here; tags, sort, paging (also while versions
//! register), the caret of a syntax error, and the HTTP and Python paths.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::*;
use modelreg::protocol::{ModelList, Request, SearchFields, VersionInfo, VersionList};
use modelreg::registry::{Catalog, Model, Version, persist};

/// How many versions model `big` has.
const N: u32 = 10_000;

/// What the test gave version `n` of `big`, computed again here for the expectations.
struct Facts {
    accuracy: Option<f64>,
    dataset: &'static str,
    frozen: bool,
    epochs: u32,
    tags: Vec<&'static str>,
    deprecated: bool,
}

fn facts(n: u32) -> Facts {
    let mut tags = Vec::new();
    if n.is_multiple_of(5) {
        tags.push("baseline");
    }
    if n.is_multiple_of(7) {
        tags.push("prod");
    }
    Facts {
        // Every 11th version has no accuracy: a missing field makes comparisons false.
        accuracy: (!n.is_multiple_of(11)).then(|| f64::from((n * 37) % 100) / 100.0),
        dataset: ["imagenet", "coco", "cifar"][(n % 3) as usize],
        frozen: n.is_multiple_of(2),
        epochs: n % 50,
        tags,
        deprecated: n.is_multiple_of(13),
    }
}

/// A version as registry.yaml holds it, built from its YAML form so that fields added
/// later take their defaults.
fn version(name: &str, n: u32, f: &Facts) -> Version {
    let mut metrics = serde_json::Map::new();
    if let Some(a) = f.accuracy {
        metrics.insert("accuracy".into(), a.into());
    }
    metrics.insert("loss".into(), (f64::from(n % 17) / 10.0).into());
    let mut v: Version = serde_json::from_value(serde_json::json!({
        "files": [{
            "path": format!("models/{name}/v{n}/{name}.pt"),
            "sha256": modelreg::store::sha256_hex(format!("{name}{n}").as_bytes()),
            "size": format!("{name}{n}").len(),
        }],
        "source": format!("pretrained_models/{name}.pt"),
        "registered_at": format!("2026-11-{:02}T00:00:00Z", 1 + n % 28),
        "metrics": metrics,
        "metadata": {
            "dataset": f.dataset,
            "frozen": f.frozen,
            "epochs": f.epochs,
            "tags": f.tags,
        },
        "deprecated": f.deprecated.then(|| serde_json::json!({"at": "2026-11-27T00:00:00Z"})),
    }))
    .unwrap();
    v.number = n;
    v
}

/// A daemon whose registry holds `big` (N versions, see [`facts`]) and small models
/// `m0`..`m9` (one version each, `m3` and `m6` tagged `baseline`), stored files included.
fn daemon_with_registry() -> TestDaemon {
    daemon_with_registry_and("settle: 300ms\n")
}

/// [`daemon_with_registry`] with the settings `config`.
fn daemon_with_registry_and(config: &str) -> TestDaemon {
    let d = TestDaemon::new(config);
    let root = d.root.path();
    let mut c = Catalog::default();
    let add = |c: &mut Catalog, name: &str, vs: Vec<Version>| {
        for v in &vs {
            let p = root.join(&v.files[0].path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, format!("{name}{}", v.number)).unwrap();
        }
        let m = Model {
            highest: vs.len() as u32,
            versions: vs.into_iter().map(Arc::new).collect(),
            ..Default::default()
        };
        c.models.insert(name.to_string(), Arc::new(m));
    };
    add(
        &mut c,
        "big",
        (1..=N).map(|n| version("big", n, &facts(n))).collect(),
    );
    for i in 0..10u32 {
        let mut f = facts(i + 1);
        f.tags = if i % 3 == 0 && i > 0 {
            vec!["baseline"]
        } else {
            vec![]
        };
        add(
            &mut c,
            &format!("m{i}"),
            vec![version(&format!("m{i}"), 1, &f)],
        );
    }
    persist::write_atomic(
        &root.join("registry.yaml"),
        persist::to_yaml(&c).unwrap().as_bytes(),
    )
    .unwrap();
    let mut d = d;
    d.spawn();
    d
}

fn search(name: &str, filter: Option<&str>, tags: &[&str], sort: Option<&str>) -> Request {
    paged(name, filter, tags, sort, None)
}

/// `versions` of `name` with a search, `limit` items a page.
fn paged(
    name: &str,
    filter: Option<&str>,
    tags: &[&str],
    sort: Option<&str>,
    limit: Option<usize>,
) -> Request {
    let s = SearchFields {
        filter: filter.map(str::to_string),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        sort: sort.map(str::to_string),
        limit,
        cursor: None,
    };
    Request::search(Some(name.into()), s)
}

fn numbers(vs: &[VersionInfo]) -> Vec<u32> {
    vs.iter().map(|v| v.number).collect()
}

fn found(d: &TestDaemon, req: &Request) -> VersionList {
    serde_json::from_value(d.call(req).unwrap()).unwrap()
}

#[test]
fn where_matches_each_operator_and_precedence_over_ten_thousand_versions() {
    let d = daemon_with_registry();
    type Rule = Box<dyn Fn(&Facts, u32) -> bool>;
    let acc = |f: &Facts, p: fn(f64) -> bool| f.accuracy.is_some_and(p);
    let cases: Vec<(&str, Rule)> = vec![
        (
            "accuracy == 0.74",
            Box::new(move |f, _| acc(f, |a| a == 0.74)),
        ),
        (
            "accuracy != 0.74",
            Box::new(move |f, _| acc(f, |a| a != 0.74)),
        ),
        ("accuracy < 0.2", Box::new(move |f, _| acc(f, |a| a < 0.2))),
        (
            "accuracy <= 0.2",
            Box::new(move |f, _| acc(f, |a| a <= 0.2)),
        ),
        ("accuracy > 0.9", Box::new(move |f, _| acc(f, |a| a > 0.9))),
        (
            "accuracy >= 0.9",
            Box::new(move |f, _| acc(f, |a| a >= 0.9)),
        ),
        (r#"dataset == "coco""#, Box::new(|f, _| f.dataset == "coco")),
        (r#"dataset != "coco""#, Box::new(|f, _| f.dataset != "coco")),
        ("frozen == true", Box::new(|f, _| f.frozen)),
        ("epochs < 3", Box::new(|f, _| f.epochs < 3)),
        (
            r#"dataset in ["coco", "cifar"]"#,
            Box::new(|f, _| f.dataset != "imagenet"),
        ),
        (
            r#"dataset not in ["coco"]"#,
            Box::new(|f, _| f.dataset != "coco"),
        ),
        (
            r#"tags contains "prod""#,
            Box::new(|f, _| f.tags.contains(&"prod")),
        ),
        (r#"state == "deprecated""#, Box::new(|f, _| f.deprecated)),
        ("version > 9990", Box::new(|_, n| n > 9990)),
        (r#"version <= "v3""#, Box::new(|_, n| n <= 3)),
        // not > and > or.
        (
            r#"accuracy >= 0.95 or dataset == "coco" and not frozen == true"#,
            Box::new(move |f, _| acc(f, |a| a >= 0.95) || (f.dataset == "coco" && !f.frozen)),
        ),
        (
            r#"(accuracy >= 0.95 or dataset == "coco") and not frozen == true"#,
            Box::new(move |f, _| (acc(f, |a| a >= 0.95) || f.dataset == "coco") && !f.frozen),
        ),
        (
            r#"not accuracy >= 0.5 and dataset == "cifar" or epochs == 7"#,
            Box::new(move |f, _| (!acc(f, |a| a >= 0.5) && f.dataset == "cifar") || f.epochs == 7),
        ),
    ];
    for (expr, rule) in cases {
        let want: Vec<u32> = (1..=N).filter(|&n| rule(&facts(n), n)).collect();
        let got = found(&d, &search("big", Some(expr), &[], None));
        assert_eq!(numbers(&got.versions), want, "{expr}");
        assert_eq!(got.total, Some(want.len()), "{expr}");
        assert!(
            !want.is_empty() && want.len() < N as usize,
            "{expr} tells something"
        );
    }
}

#[test]
fn tags_sort_and_limit_on_the_cli() {
    let d = daemon_with_registry();
    let out = ok(
        &d,
        &[
            "versions",
            "big",
            "--where",
            r#"accuracy >= 0.7 and dataset == "imagenet""#,
            "--tag",
            "baseline",
            "--sort",
            "-accuracy",
            "--limit",
            "5",
            "--json",
        ],
    );
    let got: VersionList = serde_json::from_str(&out).unwrap();
    let mut want: Vec<(f64, u32)> = (1..=N)
        .map(|n| (n, facts(n)))
        .filter(|(_, f)| {
            f.accuracy.is_some_and(|a| a >= 0.7)
                && f.dataset == "imagenet"
                && f.tags.contains(&"baseline")
        })
        .map(|(n, f)| (f.accuracy.unwrap(), n))
        .collect();
    // Largest first; equal values by version number.
    want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    assert_eq!(got.total, Some(want.len()));
    assert_eq!(
        numbers(&got.versions),
        want.iter().take(5).map(|w| w.1).collect::<Vec<_>>()
    );
    assert!(got.next_cursor.is_some());

    // The table, and the next page's cursor on stderr.
    let out = d.cli(&[
        "versions", "big", "--tag", "baseline", "--tag", "prod", "--sort", "version", "--limit",
        "2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<String> = stdout(&out)
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(rows, ["v35", "v70"]);
    assert!(
        stderr(&out).contains("2 of 285 shown; the next page: --cursor "),
        "{}",
        stderr(&out)
    );

    // `list --tag`: the models with a version so tagged.
    let out = ok(&d, &["list", "--tag", "baseline", "--json"]);
    let l: ModelList = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = l.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["big", "m3", "m6", "m9"]);
    assert_eq!(l.models[0].matches, Some(2000));
    assert_eq!(l.models[0].newest_match.as_deref(), Some("v10000"));

    // Missing values last, in either direction.
    let got = found(
        &d,
        &search("big", Some("version <= 22"), &[], Some("accuracy")),
    );
    assert_eq!(&numbers(&got.versions)[20..], [11, 22]);
    let got = found(
        &d,
        &search("big", Some("version <= 22"), &[], Some("-accuracy")),
    );
    assert_eq!(&numbers(&got.versions)[20..], [11, 22]);
}

/// Collects every page of `req` (its limit set), asking `between` after each page.
fn all_pages(d: &TestDaemon, mut req: Request, mut between: impl FnMut()) -> Vec<u32> {
    let mut seen = Vec::new();
    loop {
        let page = found(d, &req);
        seen.extend(numbers(&page.versions));
        between();
        match (page.next_cursor, &mut req) {
            (Some(c), Request::Versions { cursor, .. }) => *cursor = Some(c),
            _ => return seen,
        }
    }
}

#[test]
fn pages_give_every_version_once() {
    let d = daemon_with_registry();
    let (filter, sort) = (Some("accuracy >= 0.5"), Some("-accuracy"));
    let seen = all_pages(&d, paged("big", filter, &[], sort, Some(700)), || {});
    let all = numbers(&found(&d, &search("big", filter, &[], sort)).versions);
    assert_eq!(seen, all, "the pages, in order, are the whole answer");
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), seen.len());

    // Old clients: no limit, no cursor, no total, every version.
    let plain = d.call(&Request::versions("big")).unwrap();
    assert_eq!(plain["versions"].as_array().unwrap().len(), N as usize);
    assert!(plain.get("total").is_none() && plain.get("next_cursor").is_none());
}

#[test]
fn pages_give_every_version_once_while_versions_register() {
    let d = TestDaemon::quick();
    for seed in 0..30 {
        register_seeded(&d, "live", seed);
    }
    let before: BTreeSet<u32> = (1..=30).collect();
    for sort in [None, Some("-registered_at")] {
        let req = paged("live", None, &[], sort, Some(4));
        let mut seed = 1000 + sort.is_some() as u64 * 100;
        let seen = all_pages(&d, req, || {
            // Two new versions between pages: they may or may not fall in a later page,
            // but nothing is given twice and nothing that was there is skipped.
            for _ in 0..2 {
                seed += 1;
                register_seeded(&d, "live", seed);
            }
        });
        let unique: BTreeSet<u32> = seen.iter().copied().collect();
        assert_eq!(unique.len(), seen.len(), "no version twice: {seen:?}");
        assert!(before.is_subset(&unique), "every older version: {seen:?}");
        if sort.is_none() {
            // Ascending numbers: the new ones come after the cursor, all of them seen
            // (but the two registered after the last page).
            let total = d.versions("live").len() as u32;
            assert_eq!(seen, (1..=total - 2).collect::<Vec<_>>());
        }
    }
}

#[test]
fn a_syntax_error_shows_a_caret_under_the_bad_token() {
    let d = daemon_with_registry();
    let out = d.cli(&["versions", "big", "--where", "accuracy >= 0.7 and and"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stdout(&out), "");
    assert_eq!(
        stderr(&out),
        "modelreg: invalid filter: expected a field name such as `accuracy` or `metadata.dataset`, found `and`\n  accuracy >= 0.7 and and\n                      ^^^\n"
    );
    // The socket says the same, in one message.
    let e = d
        .call(&search("big", Some("accuracy => 1"), &[], None))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "invalid filter: `=` is not an operator; use `==`\n  accuracy => 1\n           ^"
    );
    // A sort that is not a field, a cursor from nowhere, a zero limit.
    let out = d.cli(&["list", "--sort", "a b"]);
    assert!(
        stderr(&out).contains("invalid sort: expected the end"),
        "{}",
        stderr(&out)
    );
    let out = d.cli(&["versions", "big", "--cursor", "nope"]);
    assert!(
        stderr(&out).contains("is not one this daemon gave"),
        "{}",
        stderr(&out)
    );
    let out = d.cli(&["versions", "big", "--limit", "0"]);
    assert!(stderr(&out).contains("at least 1"), "{}", stderr(&out));
}

#[test]
fn http_takes_the_same_search_in_its_query() {
    let d = daemon_with_registry_and(
        "settle: 300ms\nhttp:\n  listen: 127.0.0.1:0\n  anonymous_read: true\n",
    );
    let addr = common::http::address(&d);
    let url = format!("http://{addr}");
    let get = |path: &str| {
        let a = common::http::get(&addr, path);
        (a.status, a.json())
    };
    let (status, body) = get(
        "/api/v1/models/big/versions?where=accuracy%20%3E%3D%200.9%20and%20dataset%20%3D%3D%20%22coco%22&tag=baseline&sort=-accuracy&limit=3",
    );
    assert_eq!(status, 200, "{body}");
    let want = found(
        &d,
        &paged(
            "big",
            Some(r#"accuracy >= 0.9 and dataset == "coco""#),
            &["baseline"],
            Some("-accuracy"),
            Some(3),
        ),
    );
    let got: VersionList = serde_json::from_value(body).unwrap();
    assert_eq!(numbers(&got.versions), numbers(&want.versions));
    assert_eq!((got.total, got.next_cursor.is_some()), (want.total, true));

    let (status, body) = get(&format!(
        "/api/v1/models/big/versions?where=accuracy%20%3E%3D%200.9%20and%20dataset%20%3D%3D%20%22coco%22&tag=baseline&sort=-accuracy&limit=3&cursor={}",
        got.next_cursor.unwrap()
    ));
    assert_eq!(status, 200, "{body}");
    let (status, body) = get("/api/v1/models?tag=baseline&tag=prod&sort=name");
    assert_eq!(
        (status, body["models"][0]["name"].as_str()),
        (200, Some("big")),
        "{body}"
    );
    let (status, body) = get("/api/v1/models?where=accuracy%20%3E%3D");
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\n  accuracy >=\n"),
        "{body}"
    );
    let (status, _) = get("/api/v1/models?colour=red");
    assert_eq!(status, 400);

    // The Python client over the API: the same query parameters, `tag` repeated.
    let script = r#"
import json, sys
import modelreg
reg = modelreg.ModelRegistry(url=sys.argv[1])
page = reg.versions("big", where='accuracy >= 0.9 and dataset == "coco"', tag=["baseline"], sort="-accuracy", limit=3)
rest = reg.versions("big", where='accuracy >= 0.9 and dataset == "coco"', tag=["baseline"], sort="-accuracy", limit=3, cursor=page.next_cursor)
models = reg.list(tag=["baseline", "prod"], sort="-version")
print(json.dumps({"page": [v.number for v in page], "total": page.total, "rest": [v.number for v in rest],
                  "models": [m.name for m in models]}))
"#;
    let py = python_json(script, &url);
    assert_eq!(py["page"], serde_json::json!(numbers(&want.versions)));
    assert_eq!(py["total"], serde_json::json!(want.total));
    assert_eq!(py["rest"].as_array().unwrap().len(), 3);
    assert_eq!(py["models"], serde_json::json!(["big"]));

    // The CLI over --url asks the same route.
    let out = d.cli(&[
        "--url",
        &url,
        "versions",
        "big",
        "--where",
        "version > 9998",
        "--sort",
        "-version",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let l: VersionList = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(numbers(&l.versions), [10000, 9999]);
}

#[test]
fn python_client_searches_and_pages() {
    let d = daemon_with_registry();
    let script = r#"
import json, sys
import modelreg
reg = modelreg.ModelRegistry(socket=sys.argv[1])
top = reg.versions("big", where='accuracy >= 0.7 and dataset == "imagenet"', tag="baseline", sort="-accuracy", limit=5)
seen, cursor = [], None
while True:
    page = reg.versions("big", where="version > 9900", sort="-version", limit=30, cursor=cursor)
    seen += [v.number for v in page]
    cursor = page.next_cursor
    if cursor is None:
        break
models = reg.list(tag=["baseline", "prod"])
try:
    reg.versions("big", where="accuracy >")
    err = None
except modelreg.BadRequest as e:
    err = str(e)
print(json.dumps({"top": [v.number for v in top], "total": top.total, "seen": seen,
                  "models": [m.name for m in models], "all": len(reg.versions("big")), "err": err}))
"#;
    let got = python_json(script, &d.socket().display().to_string());
    let want = found(
        &d,
        &paged(
            "big",
            Some(r#"accuracy >= 0.7 and dataset == "imagenet""#),
            &["baseline"],
            Some("-accuracy"),
            Some(5),
        ),
    );
    assert_eq!(got["top"], serde_json::json!(numbers(&want.versions)));
    assert_eq!(got["total"], serde_json::json!(want.total));
    assert_eq!(
        got["seen"],
        serde_json::json!((9901..=N).rev().collect::<Vec<_>>())
    );
    assert_eq!(got["models"], serde_json::json!(["big"]));
    assert_eq!(got["all"], serde_json::json!(N));
    assert!(
        got["err"].as_str().unwrap().contains("\n  accuracy >\n"),
        "{got}"
    );
}

/// An expression nested 1,500 levels deep (3 KB, sent without a token over anonymous
/// HTTP) overflowed the daemon's stack and killed it; now it is refused like any bad
/// expression, over HTTP and the socket, and the daemon goes on answering.
#[test]
fn a_deeply_nested_expression_is_refused_and_the_daemon_goes_on() {
    let d = daemon_with_registry_and(
        "settle: 300ms\nhttp:\n  listen: 127.0.0.1:0\n  anonymous_read: true\n",
    );
    let addr = common::http::address(&d);
    let deep = format!("{}a == 1{}", "(".repeat(1_500), ")".repeat(1_500));
    let encoded = deep
        .replace('(', "%28")
        .replace(')', "%29")
        .replace(' ', "%20");
    let a = common::http::get(&addr, &format!("/api/v1/models?where={encoded}"));
    assert_eq!(a.status, 400, "{}", a.json());
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nested deeper than 64 levels"),
        "{}",
        a.json()
    );
    let nots = format!("{}a == 1", "not ".repeat(15_000));
    let e = d
        .call(&search("big", Some(&nots), &[], None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nested deeper than 64 levels"), "{e}");
    let l = found(&d, &search("big", Some("version > 9998"), &[], None));
    assert_eq!(numbers(&l.versions), [9999, 10000]);
}
