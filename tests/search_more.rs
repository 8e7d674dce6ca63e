//! Search and CLI findings of a fresh-clone tester, on the real binary: tags given on
//! `add` (and by Python and HTTP) are found by `--tag`; `--sort --accuracy` and a
//! back-quoted key after a prefix say what they mean; a paging cursor is bound to its
//! query on every door; `show` of a removed version shows its tombstone; `add FOLDER`
//! records the folder it came from; a metric read from a Trainer folder's files comes
//! back when an edited sidecar stops naming it.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use modelreg::protocol::{Request, SearchFields, VersionList};

/// Writes `len` bytes from `seed` to `dir/file` and returns the path as text.
fn file(dir: &Path, file: &str, seed: u64) -> String {
    let p = dir.join(file);
    write(&p, &bytes(seed, 256));
    p.display().to_string()
}

/// The version numbers `modelreg versions NAME ARGS... --json` lists.
fn listed(d: &TestDaemon, name: &str, args: &[&str]) -> Vec<u32> {
    let mut all = vec!["versions", name, "--json"];
    all.extend_from_slice(args);
    let l: VersionList = serde_json::from_str(&ok(d, &all)).unwrap();
    l.versions.iter().map(|v| v.number).collect()
}

/// `versions NAME` with the search `s`, as a raw socket request line.
fn versions_line(name: &str, s: SearchFields) -> String {
    serde_json::to_string(&Request::search(Some(name.into()), s)).unwrap()
}

const HTTP: &str = "settle: 300ms\nhttp:\n  listen: 127.0.0.1:0\n  anonymous_read: true\n";

#[test]
fn tags_given_on_add_python_and_http_are_found_by_tag() {
    let (d, addr, token) = common::http::with_write_token(HTTP);
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("writer.token");
    std::fs::write(&tok, &token).unwrap();
    // v1: a YAML flow list in --meta, as a sidecar would hold it.
    let f1 = file(dir.path(), "m1.bin", 1);
    ok(&d, &["add", &f1, "--name", "m", "--meta", "tags=[a, b]"]);
    // v2: --tag, repeated.
    let f2 = file(dir.path(), "m2.bin", 2);
    ok(&d, &["add", &f2, "--name", "m", "--tag", "c", "--tag", "a"]);
    // v3: the Python client's metadata, v4 its tags keyword.
    let f3 = file(dir.path(), "m3.bin", 3);
    let f4 = file(dir.path(), "m4.bin", 4);
    let script = r#"
import json, sys
import modelreg
sock, f3, f4 = sys.argv[1].split("|")
reg = modelreg.ModelRegistry(socket=sock)
a = reg.register("m", f3, metadata={"tags": ["a", "py"]})
b = reg.register("m", f4, tags=["py"])
print(json.dumps([a.number, b.number]))
"#;
    let arg = format!("{}|{f3}|{f4}", d.socket().display());
    assert_eq!(python_json(script, &arg), serde_json::json!([3, 4]));
    // v5: over HTTP (`add --url` uploads).
    let f5 = file(dir.path(), "m5.bin", 5);
    let url = format!("http://{addr}");
    let tok = tok.display().to_string();
    ok(
        &d,
        &[
            "--url",
            &url,
            "--token-file",
            &tok,
            "add",
            &f5,
            "--name",
            "m",
            "--tag",
            "web",
            "--meta",
            "tags=[a]",
        ],
    );

    assert_eq!(listed(&d, "m", &["--tag", "a"]), [1, 2, 3, 5]);
    assert_eq!(listed(&d, "m", &["--tag", "b"]), [1]);
    assert_eq!(listed(&d, "m", &["--tag", "c", "--tag", "a"]), [2]);
    assert_eq!(listed(&d, "m", &["--tag", "py"]), [3, 4]);
    assert_eq!(listed(&d, "m", &["--tag", "web"]), [5]);
    let v2 = d.get("m", "v2").unwrap();
    assert_eq!(v2.metadata["tags"], serde_json::json!(["c", "a"]));
    // A text that is not a YAML flow value stays text; a text `tags` is still refused.
    let f6 = file(dir.path(), "m6.bin", 6);
    let e = fails(&d, &["add", &f6, "--name", "m", "--meta", "tags=a"]);
    assert!(e.contains("must be a list of strings"), "{e}");
    ok(&d, &["add", &f6, "--name", "m", "--meta", "note=[draft"]);
    assert_eq!(d.get("m", "v6").unwrap().metadata["note"], "[draft");
}

#[test]
fn sort_with_two_dashes_says_how_to_sort_descending() {
    let d = TestDaemon::quick();
    register_seeded(&d, "m", 1);
    let e = fails(&d, &["versions", "m", "--sort", "--accuracy"]);
    assert!(e.contains("--sort=-accuracy"), "{e}");
    assert!(!e.contains("not a number"), "{e}");
    // The daemon says the same to a request that reaches it.
    let line = versions_line(
        "m",
        SearchFields {
            sort: Some("--accuracy".into()),
            ..Default::default()
        },
    );
    let (code, msg) = error_of(&send_raw(&d.socket(), &line, &[]));
    assert_eq!(code, "bad_request");
    assert!(msg.contains("--sort=-accuracy"), "{msg}");
    // And the descending sort it meant works.
    ok(&d, &["versions", "m", "--sort=-accuracy"]);
}

#[test]
fn a_back_quoted_key_after_a_prefix_is_searched() {
    let d = TestDaemon::quick();
    let dir = tempfile::tempdir().unwrap();
    let f1 = file(dir.path(), "a.bin", 1);
    let f2 = file(dir.path(), "b.bin", 2);
    ok(&d, &["add", &f1, "--name", "m", "--metric", "odd name=1"]);
    ok(&d, &["add", &f2, "--name", "m", "--metric", "odd name=2"]);
    assert_eq!(
        listed(&d, "m", &["--where", "metrics.`odd name` >= 2"]),
        [2]
    );
    assert_eq!(listed(&d, "m", &["--sort", "-metrics.`odd name`"]), [2, 1]);
    // An unclosed one is refused with the caret under it.
    let e = fails(&d, &["versions", "m", "--where", "metrics.`odd name == 1"]);
    assert!(
        e.contains("unterminated") && e.contains("\n          ^^^^^^^^^^^^^^"),
        "{e}"
    );
}

#[test]
fn a_cursor_from_another_query_is_refused_on_every_door() {
    let d = TestDaemon::start(HTTP);
    for n in 0..3 {
        register_seeded(&d, "m", n);
        register_seeded(&d, "other", 10 + n);
    }
    let first = d.cli(&["versions", "m", "--limit", "1"]);
    let err = stderr(&first);
    let cursor = err.rsplit("--cursor ").next().unwrap().trim().to_string();
    // The same query goes on.
    assert_eq!(listed(&d, "m", &["--limit", "1", "--cursor", &cursor]), [2]);
    // Another model, another --where, another --tag: refused, not a wrong page.
    for args in [
        vec!["versions", "other", "--limit", "1", "--cursor", &cursor],
        vec![
            "versions",
            "m",
            "--where",
            "version > 0",
            "--cursor",
            &cursor,
        ],
        vec!["versions", "m", "--tag", "x", "--cursor", &cursor],
        vec!["list", "--limit", "1", "--cursor", &cursor],
    ] {
        let e = fails(&d, &args);
        assert!(e.contains("another query"), "{args:?}: {e}");
    }
    // On the socket.
    let line = versions_line(
        "other",
        SearchFields {
            limit: Some(1),
            cursor: Some(cursor.clone()),
            ..Default::default()
        },
    );
    let (code, msg) = error_of(&send_raw(&d.socket(), &line, &[]));
    assert_eq!(code, "bad_request");
    assert!(msg.contains("another query"), "{msg}");
    // Over HTTP.
    let addr = common::http::address(&d);
    let a = common::http::get(
        &addr,
        &format!("/api/v1/models/other/versions?limit=1&cursor={cursor}"),
    );
    assert_eq!(a.status, 400);
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another query")
    );
    // In Python.
    let script = r#"
import json, sys
import modelreg
sock, cursor = sys.argv[1].split("|")
reg = modelreg.ModelRegistry(socket=sock)
try:
    reg.versions("other", limit=1, cursor=cursor)
    print(json.dumps(None))
except modelreg.BadRequest as e:
    print(json.dumps(str(e)))
"#;
    let got = python_json(script, &format!("{}|{cursor}", d.socket().display()));
    assert!(got.as_str().unwrap().contains("another query"), "{got}");
}

#[test]
fn show_of_a_removed_version_shows_its_tombstone() {
    let d = TestDaemon::quick();
    let dir = tempfile::tempdir().unwrap();
    let f1 = file(dir.path(), "a.bin", 1);
    let f2 = file(dir.path(), "b.bin", 2);
    ok(&d, &["add", &f1, "--name", "m", "--metric", "accuracy=0.5"]);
    ok(&d, &["add", &f2, "--name", "m"]);
    let v1 = d.get("m", "v1").unwrap();
    ok(&d, &["rm", "m", "v1", "--reason", "leaked test data"]);
    let card = ok(&d, &["show", "m", "v1"]);
    let user = {
        use std::os::unix::fs::MetadataExt;
        modelreg::users::user_name(std::fs::metadata(&f1).unwrap().uid())
    };
    for want in [
        "m v1".to_string(),
        "removed since ".to_string(),
        format!("by {user}"),
        "leaked test data".into(),
        v1.registered_at.clone(),
        "the files are gone".into(),
        v1.files[0].sha256[..12].to_string(),
        "accuracy  0.5".into(),
    ] {
        assert!(card.contains(&want), "{want:?} not in:\n{card}");
    }
    assert!(
        card.lines()
            .any(|l| l.trim_start().starts_with("source ") && l.ends_with(&f1)),
        "{card}"
    );
    // --json gives the whole tombstone; another version number is still an error.
    let j: serde_json::Value =
        serde_json::from_str(&ok(&d, &["show", "m", "v1", "--json"])).unwrap();
    assert_eq!(j["files"][0]["sha256"], v1.files[0].sha256);
    assert_eq!(j["state"], "removed");
    let e = fails(&d, &["show", "m", "v9"]);
    assert!(e.contains("v9"), "{e}");
}

/// A git checkout as files (what the daemon reads; no git process): HEAD on `main` at
/// `commit`.
fn fake_checkout(dir: &Path, commit: &str) {
    std::fs::create_dir_all(dir.join(".git/refs/heads")).unwrap();
    write(&dir.join(".git/HEAD"), b"ref: refs/heads/main\n");
    write(
        &dir.join(".git/refs/heads/main"),
        format!("{commit}\n").as_bytes(),
    );
}

#[test]
fn add_folder_records_the_original_folder_and_its_commit() {
    let d = TestDaemon::quick();
    let work = tempfile::tempdir().unwrap();
    // A folder inside a checkout (its `.git` is above it, so never copied with it).
    let repo = work.path().join("repo");
    let above = "1111111111111111111111111111111111111111";
    fake_checkout(&repo, above);
    let run = repo.join("runs/bert");
    std::fs::create_dir_all(&run).unwrap();
    write(&run.join("model.safetensors"), &bytes(1, 300));
    write(&run.join("config.json"), b"{}");
    ok(&d, &["add", run.to_str().unwrap(), "--wait"]);
    let v = d.get("bert", "v1").unwrap();
    let p = &v.provenance;
    assert_eq!(p["source"], run.display().to_string(), "{p:?}");
    assert_eq!(p["commit"], above, "{p:?}");
    assert_eq!(p["repository"], repo.display().to_string(), "{p:?}");
    assert_eq!(p["via"], "inbox", "{p:?}");

    // A folder with its own checkout, with metrics: the sidecar carries both.
    let own = work.path().join("gpt");
    let commit = "2222222222222222222222222222222222222222";
    fake_checkout(&own, commit);
    write(&own.join("weights.bin"), &bytes(2, 300));
    ok(
        &d,
        &[
            "add",
            own.to_str().unwrap(),
            "--metric",
            "accuracy=0.5",
            "--wait",
        ],
    );
    let v = d.get("gpt", "v1").unwrap();
    assert_eq!(v.provenance["source"], own.display().to_string());
    assert_eq!(v.provenance["commit"], commit);
    assert_eq!(v.metrics["accuracy"], 0.5);
    assert!(v.metadata.is_empty(), "{:?}", v.metadata);

    // The same folder again: identical bytes, no new version, nothing updated.
    ok(&d, &["add", own.to_str().unwrap(), "--wait"]);
    let again = d.get("gpt", "latest").unwrap();
    assert_eq!(again.number, 1);
    assert_eq!(again.metrics["accuracy"], 0.5);
    assert_eq!(again.metrics_updated_at, None);
}

#[test]
fn python_register_of_a_folder_with_metrics_records_the_original_folder_and_its_commit() {
    let d = TestDaemon::quick();
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    let commit = "3333333333333333333333333333333333333333";
    fake_checkout(&repo, commit);
    let run = repo.join("runs/vit");
    std::fs::create_dir_all(&run).unwrap();
    write(&run.join("model.safetensors"), &bytes(3, 300));
    let other = work.path().join("plain");
    std::fs::create_dir_all(&other).unwrap();
    write(&other.join("weights.bin"), &bytes(4, 300));
    // A folder goes by the inbox; with metrics, its sidecar names the folder too.
    let script = r#"
import json, sys
import modelreg
sock, run, other = sys.argv[1].split("|")
reg = modelreg.ModelRegistry(socket=sock)
a = reg.register("vit", run, metrics={"accuracy": 0.7})
b = reg.register("plain", other, metrics={"accuracy": 0.5}, tags=["t"])
print(json.dumps([a.number, b.number]))
"#;
    let arg = format!(
        "{}|{}|{}",
        d.socket().display(),
        run.display(),
        other.display()
    );
    assert_eq!(python_json(script, &arg), serde_json::json!([1, 1]));
    let v = d.get("vit", "v1").unwrap();
    assert_eq!(
        v.provenance["source"],
        run.display().to_string(),
        "{:?}",
        v.provenance
    );
    assert_eq!(v.provenance["commit"], commit, "{:?}", v.provenance);
    let p = d.get("plain", "v1").unwrap();
    assert_eq!(
        p.provenance["source"],
        other.display().to_string(),
        "{:?}",
        p.provenance
    );
    assert_eq!(p.metrics["accuracy"], 0.5);
    assert_eq!(p.metadata["tags"], serde_json::json!(["t"]));
}

/// Waits until `name`'s latest version has metric `k` equal to `x`; returns the version.
fn wait_metric(d: &TestDaemon, name: &str, k: &str, x: f64) -> modelreg::protocol::VersionInfo {
    let mut v = None;
    wait_until(
        Duration::from_secs(30),
        &format!("{name} {k} = {x}"),
        || {
            v = d.get(name, "latest").ok();
            v.as_ref().is_some_and(|v| v.metrics.get(k) == Some(&x))
        },
    );
    v.unwrap()
}

#[test]
fn a_file_metric_comes_back_when_the_edited_sidecar_stops_naming_it() {
    let mut d = TestDaemon::start("settle: 300ms\n");
    let src = common::extract::outside(&d);
    let dir = src.join("tr12");
    std::fs::create_dir_all(&dir).unwrap();
    write(
        &dir.join("all_results.json"),
        br#"{"eval_acc":0.5,"eval_loss":0.2}"#,
    );
    write(&dir.join("model.bin"), &bytes(12, 256));
    write_renamed(&d.inbox(), "tr12.metrics.yaml", b"accuracy: 0.9\n");
    common::extract::drop_in(&d, &src, "tr12");
    let v = common::extract::latest(&d, "tr12");
    let from = |v: &modelreg::protocol::VersionInfo, k: &str| v.metric_sources.get(k).cloned();
    assert_eq!(v.metrics.get("accuracy"), Some(&0.9));
    assert_eq!(v.metrics.get("eval_loss"), Some(&0.2));
    assert_eq!(from(&v, "eval_loss").as_deref(), Some("all_results.json"));
    // The sidecar names eval_loss: its value wins, with no file as its source.
    write_renamed(
        &d.inbox(),
        "tr12.metrics.yaml",
        b"accuracy: 0.92\neval_loss: 0.05\n",
    );
    let v = wait_metric(&d, "tr12", "eval_loss", 0.05);
    assert_eq!(from(&v, "eval_loss"), None);
    assert_eq!(from(&v, "eval_acc").as_deref(), Some("all_results.json"));
    // It stops naming it: the value read from the file is back, with its source.
    write_renamed(&d.inbox(), "tr12.metrics.yaml", b"accuracy: 0.93\n");
    let v = wait_metric(&d, "tr12", "accuracy", 0.93);
    assert_eq!(v.metrics.get("eval_loss"), Some(&0.2), "{:?}", v.metrics);
    assert_eq!(from(&v, "eval_loss").as_deref(), Some("all_results.json"));
    assert_eq!(v.metrics.get("eval_acc"), Some(&0.5));
    // Overridden again, and the daemon restarted in between: what the file said is
    // kept in registry.yaml, not only in memory.
    write_renamed(
        &d.inbox(),
        "tr12.metrics.yaml",
        b"accuracy: 0.94\neval_loss: 0.01\n",
    );
    wait_metric(&d, "tr12", "eval_loss", 0.01);
    d.stop();
    d.spawn();
    write_renamed(&d.inbox(), "tr12.metrics.yaml", b"accuracy: 0.95\n");
    let v = wait_metric(&d, "tr12", "accuracy", 0.95);
    assert_eq!(v.metrics.get("eval_loss"), Some(&0.2), "{:?}", v.metrics);
    assert_eq!(from(&v, "eval_loss").as_deref(), Some("all_results.json"));
    assert_eq!(d.versions("tr12").len(), 1);
    // A sidecar that names a file's metric from the start: the file's value is kept
    // all the same, and is back once the sidecar stops naming it.
    let dir = src.join("tr13");
    std::fs::create_dir_all(&dir).unwrap();
    write(&dir.join("all_results.json"), br#"{"eval_loss":0.3}"#);
    write(&dir.join("model.bin"), &bytes(13, 256));
    write_renamed(&d.inbox(), "tr13.metrics.yaml", b"eval_loss: 0.02\n");
    common::extract::drop_in(&d, &src, "tr13");
    assert_eq!(
        common::extract::latest(&d, "tr13").metrics.get("eval_loss"),
        Some(&0.02)
    );
    write_renamed(&d.inbox(), "tr13.metrics.yaml", b"accuracy: 0.7\n");
    let v = wait_metric(&d, "tr13", "accuracy", 0.7);
    assert_eq!(v.metrics.get("eval_loss"), Some(&0.3), "{:?}", v.metrics);
    assert_eq!(from(&v, "eval_loss").as_deref(), Some("all_results.json"));
}

#[test]
fn a_field_no_version_has_is_noted_with_the_closest_on_every_door() {
    let (d, addr, _token) = common::http::with_write_token(HTTP);
    let dir = tempfile::tempdir().unwrap();
    let f1 = file(dir.path(), "a.bin", 1);
    let f2 = file(dir.path(), "b.bin", 2);
    ok(
        &d,
        &["add", &f1, "--name", "resnet", "--metric", "accuracy=0.7"],
    );
    ok(
        &d,
        &[
            "add",
            &f2,
            "--name",
            "resnet",
            "--metric",
            "accuracy=0.8",
            "--meta",
            "lr=0.01",
        ],
    );
    let cli = |args: &[&str]| {
        let o = d.cli(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        (stdout(&o), stderr(&o))
    };
    // A mistyped metric, a wrong prefix: the answer says so, with the closest field,
    // on stderr; the exit code stays 0 (nothing failed: no version has it).
    let (out, err) = cli(&["versions", "resnet", "--where", "acuracy > 0.5"]);
    assert!(out.contains("no version of resnet matches"), "{out}");
    assert!(
        err.contains(
            "note: no version of resnet has a field \"acuracy\"; did you mean \"accuracy\"?"
        ),
        "{err}"
    );
    let (_, err) = cli(&["versions", "resnet", "--where", "metric.accuracy > 0.5"]);
    assert!(err.contains("did you mean \"metrics.accuracy\"?"), "{err}");
    let (out, err) = cli(&["versions", "resnet", "--sort", "-acuracy"]);
    assert!(out.contains("v1") && out.contains("v2"), "{out}");
    assert!(err.contains("did you mean \"accuracy\"?"), "{err}");
    let (_, err) = cli(&["list", "--where", r#"extracted.fromat == "gguf""#]);
    assert!(
        err.contains("no version of any model has a field \"extracted.fromat\""),
        "{err}"
    );
    // --meta lr=0.01 is text: a number compared with it matches nothing, and says why.
    let (out, err) = cli(&["versions", "resnet", "--where", "lr == 0.01"]);
    assert!(out.contains("no version of resnet matches"), "{out}");
    assert!(
        err.contains(r#"lr is text here, not a number; compare it with text: lr == "0.01""#),
        "{err}"
    );
    assert_eq!(listed(&d, "resnet", &["--where", r#"lr == "0.01""#]), [2]);
    // A field that exists says nothing.
    let (_, err) = cli(&["versions", "resnet", "--where", "accuracy > 0.5"]);
    assert!(!err.contains("note:"), "{err}");
    // On the socket, over HTTP and in Python: the answer's `notes`.
    let line = versions_line(
        "resnet",
        SearchFields {
            filter: Some("acuracy > 0.5".into()),
            ..Default::default()
        },
    );
    let a = send_raw(&d.socket(), &line, &[]);
    assert!(
        a.to_string().contains("did you mean \\\"accuracy\\\""),
        "{a}"
    );
    let a = common::http::get(
        &addr,
        "/api/v1/models/resnet/versions?where=acuracy%20%3E%200.5",
    )
    .json();
    assert!(
        a["notes"][0]
            .as_str()
            .unwrap()
            .contains("did you mean \"accuracy\""),
        "{a}"
    );
    let script = r#"
import json, sys
import modelreg
reg = modelreg.ModelRegistry(socket=sys.argv[1])
p = reg.versions("resnet", where="acuracy > 0.5")
q = reg.list(sort="-acuracy")
print(json.dumps([len(p), p.notes, q.notes, reg.versions("resnet").notes]))
"#;
    let got = python_json(script, &d.socket().display().to_string());
    assert_eq!(got[0], 0);
    assert!(
        got[1][0]
            .as_str()
            .unwrap()
            .contains("did you mean \"accuracy\""),
        "{got}"
    );
    assert!(
        got[2][0].as_str().unwrap().contains("of any model"),
        "{got}"
    );
    assert_eq!(got[3], serde_json::json!([]));
}

#[test]
fn a_bad_sort_is_shown_as_given_and_a_capital_v_is_a_version() {
    let d = TestDaemon::quick();
    for seed in 1..=3 {
        register_seeded(&d, "m", seed);
    }
    // The error shows the sort with its `-`, the caret under the bad token.
    let e = fails(&d, &["versions", "m", "--sort", "-a,b"]);
    assert!(e.contains("\n  -a,b\n    ^"), "{e}");
    let e = fails(&d, &["versions", "m", "--sort", "-"]);
    assert!(e.contains("\n  -\n"), "{e}");
    // Python is told how Python writes a descending sort.
    let script = r#"
import json, sys
import modelreg
reg = modelreg.ModelRegistry(socket=sys.argv[1])
try:
    reg.versions("m", sort="--accuracy")
    print(json.dumps(None))
except modelreg.BadRequest as e:
    print(json.dumps(str(e)))
"#;
    let got = python_json(script, &d.socket().display().to_string());
    assert!(
        got.as_str().unwrap().contains(r#"sort="-accuracy""#),
        "{got}"
    );
    // `V2` is read as `v2`, as people type it.
    assert_eq!(listed(&d, "m", &["--where", r#"version >= "V2""#]), [2, 3]);
}
