//! The Hugging Face Hub routes over HTTP, asked by the real `huggingface_hub` from PyPI
//! (pinned in tests/common/hf.rs, the venv tests/hf_cache.rs uses too), unmodified:
//! `snapshot_download(NAME, revision=SELECTOR, endpoint=URL)` and `hf_hub_download`, with
//! the token in `HF_TOKEN`, into a cache of the test's own. The cache they fill has the
//! layout of the daemon's offline view: the same commit ids, blobs named by SHA-256,
//! the same relative links.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::hf::{register, register_folder};
use common::http::{Answer, address, request};
use common::*;

/// HTTP on any free port, no anonymous reading.
const CONFIG: &str = "settle: 200ms\nhttp:\n  listen: 127.0.0.1:0\n";

/// A daemon with HTTP, its URL, and a read token.
struct Hub {
    d: TestDaemon,
    url: String,
    token: String,
}

fn hub(config: &str) -> Hub {
    let d = TestDaemon::start(config);
    let url = format!("http://{}", address(&d));
    let token = ok(&d, &["token", "create", "laptop", "--scope", "read"])
        .trim()
        .to_string();
    Hub { d, url, token }
}

/// One download: `snapshot_download(name, revision)` (no `file`) or
/// `hf_hub_download(name, filename=file, revision)`; no revision: the client's default.
type Load<'a> = (&'a str, Option<&'a str>, Option<&'a str>);

fn snap<'a>(name: &'a str, revision: &'a str) -> Load<'a> {
    (name, Some(revision), None)
}

fn file<'a>(name: &'a str, revision: &'a str, file: &'a str) -> Load<'a> {
    (name, Some(revision), Some(file))
}

const SCRIPT: &str = r#"
import json, sys
from huggingface_hub import snapshot_download, hf_hub_download
endpoint = sys.argv[1]
out = []
for name, rev, file in json.loads(sys.argv[2]):
    try:
        if file is None:
            out.append({"ok": snapshot_download(name, revision=rev, endpoint=endpoint)})
        else:
            out.append({"ok": hf_hub_download(name, filename=file, revision=rev, endpoint=endpoint)})
    except Exception as e:
        out.append({"err": type(e).__name__ + ": " + str(e)})
print(json.dumps(out))
"#;

/// Runs `loads` in one Python process against the daemon, `token` in `HF_TOKEN` (none:
/// no token at all, the client's home is empty), the downloads cached in `cache`: each
/// gives the path the client returned, or its exception as `Type: message`.
fn hf(
    hub: &Hub,
    cache: &Path,
    token: Option<&str>,
    loads: &[Load],
) -> Vec<Result<PathBuf, String>> {
    let home = tempfile::tempdir().unwrap();
    let args: Vec<serde_json::Value> = loads.iter().map(|l| serde_json::json!(l)).collect();
    let mut cmd = Command::new(common::hf::venv().join("bin/python"));
    cmd.arg("-c")
        .arg(SCRIPT)
        .arg(&hub.url)
        .arg(serde_json::Value::Array(args).to_string())
        .env("HF_HUB_CACHE", cache)
        .env("HF_HOME", home.path())
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .env_remove("HF_ENDPOINT")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN");
    if let Some(t) = token {
        cmd.env("HF_TOKEN", t);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "python: {}", stderr(&out));
    let v: Vec<serde_json::Value> = serde_json::from_str(stdout(&out).trim())
        .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)));
    v.into_iter()
        .map(|r| match r.get("ok").and_then(|p| p.as_str()) {
            Some(p) => Ok(PathBuf::from(p)),
            None => Err(r["err"].as_str().unwrap_or_default().to_string()),
        })
        .collect()
}

/// The commit id of `name` `sel` as the daemon's offline view names it (`refs/<sel>`
/// when the view has that ref, else computed from the catalog as the view does).
fn commit_of(d: &TestDaemon, name: &str, sel: &str) -> String {
    let v = d.get(name, sel).unwrap();
    let stored = d.catalog().models[name].find(v.number).unwrap().clone();
    let commit = modelreg::hfcache::version_commit("models", name, &stored).unwrap();
    let r = d.root.path().join(format!("hf/models--{name}/refs/{sel}"));
    if r.exists() {
        assert_eq!(std::fs::read_to_string(&r).unwrap(), commit, "view's {r:?}");
    }
    commit
}

/// Asserts that `loaded` is the snapshot of `name` `sel` in `cache`: the folder of its
/// commit id (the view's), holding exactly that version's files, byte for byte.
fn assert_is_version(
    hub: &Hub,
    cache: &Path,
    loaded: &Result<PathBuf, String>,
    name: &str,
    sel: &str,
) {
    let path = loaded
        .as_ref()
        .unwrap_or_else(|e| panic!("{name} {sel}: {e}"));
    let commit = commit_of(&hub.d, name, sel);
    assert_eq!(
        path,
        &cache.join(format!("models--{name}/snapshots/{commit}")),
        "{name} {sel}"
    );
    let v = hub.d.get(name, sel).unwrap();
    assert_eq!(tree_content(path), version_content(&v), "{name} {sel}");
}

#[test]
fn downloads_by_alias_best_number_and_latest_give_the_stored_bytes() {
    let hub = hub(CONFIG);
    let d = &hub.d;
    register(d, "resnet18", 1, 0.91, 1);
    register(d, "resnet18", 2, 0.85, 2);
    ok(d, &["alias", "set", "resnet18", "production", "v1"]);
    let cache = tempfile::tempdir().unwrap();
    let got = hf(
        &hub,
        cache.path(),
        Some(&hub.token),
        &[
            snap("resnet18", "production"),
            snap("resnet18", "best"),
            snap("resnet18", "v2"),
            snap("resnet18", "latest"),
            ("resnet18", None, None),
            file("resnet18", "production", "resnet18.pt"),
            file("resnet18", "v2", "resnet18.pt"),
        ],
    );
    let c = cache.path();
    assert_is_version(&hub, c, &got[0], "resnet18", "production");
    // best: by the configured default metric (accuracy, maximised): v1.
    assert_eq!(d.get("resnet18", "best").unwrap().number, 1);
    assert_is_version(&hub, c, &got[1], "resnet18", "best");
    assert_is_version(&hub, c, &got[2], "resnet18", "v2");
    assert_is_version(&hub, c, &got[3], "resnet18", "latest");
    // No revision: the client asks for `main`, which is latest.
    assert_is_version(&hub, c, &got[4], "resnet18", "latest");
    for (i, sel) in [(5, "v1"), (6, "v2")] {
        let commit = commit_of(d, "resnet18", sel);
        let path = got[i].as_ref().unwrap();
        assert_eq!(
            path,
            &c.join(format!("models--resnet18/snapshots/{commit}/resnet18.pt"))
        );
        let seed = if sel == "v1" { 1 } else { 2 };
        assert_eq!(std::fs::read(path).unwrap(), bytes(seed, 3000));
    }
    // The client's refs name the view's commits; its blobs are named by SHA-256.
    let model = c.join("models--resnet18");
    for sel in ["production", "best", "v2", "latest", "main"] {
        let r = std::fs::read_to_string(model.join("refs").join(sel)).unwrap();
        let expected = if sel == "main" { "latest" } else { sel };
        assert_eq!(r, commit_of(d, "resnet18", expected), "refs/{sel}");
    }
    let mut blobs: Vec<String> = std::fs::read_dir(model.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    blobs.sort();
    let mut shas: Vec<String> = d
        .versions("resnet18")
        .iter()
        .map(|v| v.files[0].sha256.clone())
        .collect();
    shas.sort();
    assert_eq!(blobs, shas);
}

#[test]
fn a_nested_folder_version_fills_the_cache_as_the_offline_view_lays_it_out() {
    let hub = hub(CONFIG);
    let files = [
        ("config.json", b"{\"hidden\": 8}".to_vec()),
        ("onnx/model.onnx", bytes(21, 70_000)),
        ("tokenizer/sub/vocab.txt", b"a\nb\n".to_vec()),
    ];
    register_folder(&hub.d, "bert-tiny", &files, 1);
    let cache = tempfile::tempdir().unwrap();
    let got = hf(
        &hub,
        cache.path(),
        Some(&hub.token),
        &[
            snap("bert-tiny", "v1"),
            file("bert-tiny", "latest", "tokenizer/sub/vocab.txt"),
        ],
    );
    assert_is_version(&hub, cache.path(), &got[0], "bert-tiny", "v1");
    assert_eq!(std::fs::read(got[1].as_ref().unwrap()).unwrap(), files[2].1);
    // Link for link what the daemon's view holds: a cache filled over HTTP and the view
    // on the registry's machine are interchangeable.
    let commit = commit_of(&hub.d, "bert-tiny", "v1");
    let view = hub
        .d
        .root
        .path()
        .join("hf/models--bert-tiny/snapshots")
        .join(&commit);
    let snapshot = got[0].as_ref().unwrap();
    assert_eq!(tree_links(snapshot), tree_links(&view));
    assert_eq!(tree_links(snapshot).len(), 3);
}

#[test]
fn unknown_repository_revision_and_file_raise_the_client_s_exceptions() {
    let hub = hub(CONFIG);
    register(&hub.d, "enc", 3, 0.5, 1);
    let cache = tempfile::tempdir().unwrap();
    let got = hf(
        &hub,
        cache.path(),
        Some(&hub.token),
        &[
            snap("nope", "v1"),
            file("nope", "v1", "x.pt"),
            snap("org/enc", "v1"),
            file("org/enc", "v1", "enc.pt"),
            snap("enc", "v9"),
            snap("enc", "production"),
            file("enc", "production", "enc.pt"),
            snap("enc", &"a".repeat(40)),
            file("enc", "v1", "other.pt"),
            file("enc", "latest", "sub/enc.pt"),
        ],
    );
    let expect = [
        ("RepositoryNotFoundError", "no model named \"nope\""),
        ("RepositoryNotFoundError", "nope"),
        ("RepositoryNotFoundError", "no namespace"),
        ("RepositoryNotFoundError", "no namespace"),
        ("RevisionNotFoundError", "has no version v9"),
        ("RevisionNotFoundError", "has no alias \"production\""),
        ("RevisionNotFoundError", "production"),
        ("RevisionNotFoundError", "aaaaaaaa"),
        ("RemoteEntryNotFoundError", "no file \"other.pt\" in enc v1"),
        ("RemoteEntryNotFoundError", "sub/enc.pt"),
    ];
    for (g, (kind, text)) in got.iter().zip(expect) {
        let e = g.as_ref().expect_err(kind);
        assert!(e.starts_with(&format!("{kind}:")), "{kind}: {e}");
        assert!(e.contains(text), "{text:?} in {e}");
    }
    // A removed version is gone for the client too.
    register(&hub.d, "enc", 7, 0.6, 2);
    ok(&hub.d, &["rm", "--force", "enc", "v2"]);
    let got = hf(&hub, cache.path(), Some(&hub.token), &[snap("enc", "v2")]);
    let e = got[0].as_ref().unwrap_err();
    assert!(
        e.starts_with("RevisionNotFoundError") && e.contains("removed"),
        "{e}"
    );
    // The daemon still serves, and the one right request after them works.
    let got = hf(&hub, cache.path(), Some(&hub.token), &[snap("enc", "v1")]);
    assert_is_version(&hub, cache.path(), &got[0], "enc", "v1");
}

/// A HEAD of a file, as the client sends it first.
fn head(hub: &Hub, path: &str, token: Option<&str>) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    request(&hub.url["http://".len()..], "HEAD", path, &headers)
}

#[test]
fn without_a_valid_token_the_client_is_refused_unless_anonymous_reading_is_on() {
    let mut hub = hub(CONFIG);
    register(&hub.d, "enc", 4, 0.5, 1);
    let cache = tempfile::tempdir().unwrap();
    let loads = [snap("enc", "v1"), file("enc", "v1", "enc.pt")];
    let wrong = format!("mr_{}", "0".repeat(64));
    for token in [None, Some(wrong.as_str())] {
        for g in hf(&hub, cache.path(), token, &loads) {
            let e = g.expect_err("refused");
            assert!(
                e.starts_with("HfHubHTTPError: ") && e.contains("401"),
                "{e}"
            );
            // The daemon's reason reaches the user, for HEAD too (no body there).
            assert!(e.contains("token"), "{e}");
        }
    }
    assert!(!cache.path().join("models--enc/snapshots").exists());
    let a = head(&hub, "/enc/resolve/v1/enc.pt", None);
    assert_eq!(a.status, 401);
    assert!(
        a.header("x-error-message")
            .unwrap()
            .contains("needs a token")
    );

    // anonymous_read: no token works; a wrong one (a Hugging Face login) is still refused.
    hub.d
        .write_config(&format!("{CONFIG}  anonymous_read: true\n"));
    hub.d.signal(libc::SIGHUP);
    wait_until(
        std::time::Duration::from_secs(10),
        "anonymous_read applied",
        || head(&hub, "/enc/resolve/v1/enc.pt", None).status != 401,
    );
    let got = hf(&hub, cache.path(), None, &loads);
    assert_is_version(&hub, cache.path(), &got[0], "enc", "v1");
    assert!(got[1].is_ok(), "{:?}", got[1]);
    let a = head(&hub, "/enc/resolve/v1/enc.pt", Some(&wrong));
    assert_eq!(a.status, 401);
    // What the client already holds it returns when refused (docs/http.md says so).
    let got = hf(&hub, cache.path(), Some(&wrong), &loads);
    assert_is_version(&hub, cache.path(), &got[0], "enc", "v1");
    assert!(got[1].is_ok(), "{:?}", got[1]);
}

#[test]
fn an_alias_moved_is_what_the_next_download_gets() {
    let hub = hub(CONFIG);
    let d = &hub.d;
    register(d, "enc", 11, 0.5, 1);
    register(d, "enc", 12, 0.6, 2);
    ok(d, &["alias", "set", "enc", "production", "v1"]);
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path();
    let loads = [
        snap("enc", "production"),
        file("enc", "production", "enc.pt"),
    ];
    let got = hf(&hub, c, Some(&hub.token), &loads);
    assert_is_version(&hub, c, &got[0], "enc", "v1");
    assert_eq!(
        std::fs::read(got[1].as_ref().unwrap()).unwrap(),
        bytes(11, 3000)
    );
    // Answered once published: the very next download, in the same cache, gets v2.
    ok(d, &["alias", "set", "enc", "production", "v2"]);
    let got = hf(&hub, c, Some(&hub.token), &loads);
    assert_is_version(&hub, c, &got[0], "enc", "v2");
    assert_eq!(
        std::fs::read(got[1].as_ref().unwrap()).unwrap(),
        bytes(12, 3000)
    );
    let r = std::fs::read_to_string(c.join("models--enc/refs/production")).unwrap();
    assert_eq!(r, commit_of(d, "enc", "v2"));
    // Removed: the revision is gone for the client too.
    ok(d, &["alias", "rm", "enc", "production"]);
    let got = hf(&hub, c, Some(&hub.token), &loads[..1]);
    let e = got[0].as_ref().unwrap_err();
    assert!(e.starts_with("RevisionNotFoundError"), "{e}");
}

#[test]
fn the_hub_answers_carry_the_headers_the_client_needs() {
    let hub = hub(CONFIG);
    register(&hub.d, "enc", 5, 0.5, 1);
    let v = hub.d.get("enc", "v1").unwrap();
    let commit = commit_of(&hub.d, "enc", "v1");
    // A revision that can move is sent on to its commit, where the file is answered.
    let a = head(&hub, "/enc/resolve/latest/enc.pt", Some(&hub.token));
    assert_eq!(a.status, 307);
    let at_commit = format!("/enc/resolve/{commit}/enc.pt");
    assert_eq!(a.header("location"), Some(at_commit.as_str()));
    let a = head(&hub, &at_commit, Some(&hub.token));
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-repo-commit"), Some(commit.as_str()));
    let etag = format!("\"{}\"", v.files[0].sha256);
    assert_eq!(a.header("etag"), Some(etag.as_str()));
    assert_eq!(a.header("content-length"), Some("3000"));
    assert!(a.body.is_empty());
    // The revision names the commit; the tree lists the file with its SHA-256.
    let auth = format!("Bearer {}", hub.token);
    let addr = &hub.url["http://".len()..];
    let info = request(
        addr,
        "GET",
        "/api/models/enc/revision/v1",
        &[("Authorization", &auth)],
    );
    assert_eq!(info.json()["sha"], commit.as_str());
    assert_eq!(info.json()["siblings"][0]["rfilename"], "enc.pt");
    let tree = request(
        addr,
        "GET",
        &format!("/api/models/enc/tree/{commit}?recursive=true&expand=false"),
        &[("Authorization", &auth)],
    );
    let entry = &tree.json()[0];
    assert_eq!(entry["type"], "file");
    assert_eq!(entry["path"], "enc.pt");
    assert_eq!(entry["size"], 3000);
    assert_eq!(entry["lfs"]["oid"], v.files[0].sha256.as_str());
    assert!(entry.get("xetHash").is_none());
    // A model named like a route's first part is still served, and so is the page.
    write(&hub.d.inbox().join("models.bin"), b"named models");
    hub.d.wait_versions("models", 1);
    let a = request(
        addr,
        "GET",
        &format!(
            "/models/resolve/{}/models.bin",
            commit_of(&hub.d, "models", "v1")
        ),
        &[("Authorization", &auth)],
    );
    assert_eq!((a.status, a.body.as_slice()), (200, &b"named models"[..]));
    let a = request(
        addr,
        "GET",
        "/models/models/v1",
        &[("Authorization", &auth)],
    );
    assert_eq!(a.status, 200);
    assert!(String::from_utf8_lossy(&a.body).contains("<!DOCTYPE html>"));
    // Hostile names are refused, whichever part they are in, and nothing else is served.
    for (path, status, code) in [
        ("/enc/resolve/v1/%2e%2e%2f%2e%2e%2fregistry.yaml", 400, None),
        ("/enc/resolve/v1/..%5Cenc.pt", 400, None),
        ("/enc/resolve/v1/%252e%252e/enc.pt", 400, None),
        (
            "/%2e%2e/resolve/v1/registry.yaml",
            404,
            Some("RepoNotFound"),
        ),
        ("/enc/resolve/v1%00/enc.pt", 404, Some("RevisionNotFound")),
        ("/api/models/enc/tree/v1/%2e%2e", 400, None),
    ] {
        let a = request(addr, "GET", path, &[("Authorization", &auth)]);
        assert_eq!(
            a.status,
            status,
            "{path}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert_eq!(a.header("x-error-code"), code, "{path}");
    }
    // A missing file's 404 names the commit, so the client remembers it is missing.
    let a = head(&hub, "/enc/resolve/v1/nope.bin", Some(&hub.token));
    assert_eq!(a.status, 404);
    assert_eq!(a.header("x-error-code"), Some("EntryNotFound"));
    assert_eq!(a.header("x-repo-commit"), Some(commit.as_str()));
}

/// The command a version's dashboard page shows under `label`, as a user copies it
/// (the page's HTML unescaped).
fn shown_command(page: &str, label: &str) -> String {
    let at = page
        .find(&format!(">{label}</h3>"))
        .unwrap_or_else(|| panic!("no {label:?} on the page:\n{page}"));
    let code = &page[at..];
    let start = code.find("<code>").unwrap() + "<code>".len();
    let end = code.find("</code>").unwrap();
    code[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

#[test]
fn the_dashboard_s_hugging_face_and_curl_commands_work_as_printed() {
    let hub = hub(CONFIG);
    register(&hub.d, "enc", 6, 0.5, 1);
    let addr = &hub.url["http://".len()..];
    let auth = format!("Bearer {}", hub.token);
    let page = request(addr, "GET", "/models/enc/v1", &[("Authorization", &auth)]);
    assert_eq!(page.status, 200);
    let page = String::from_utf8(page.body).unwrap();

    // Run as printed, the token in $MODELREG_TOKEN as the page says, from an empty home.
    let python = shown_command(&page, "Hugging Face (from any machine)");
    let cache = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(common::hf::venv().join("bin/python"))
        .arg("-c")
        .arg(&python)
        .env("MODELREG_TOKEN", &hub.token)
        .env("HF_HUB_CACHE", cache.path())
        .env("HF_HOME", home.path())
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .env_remove("HF_TOKEN")
        .env_remove("HF_ENDPOINT")
        .output()
        .unwrap();
    assert!(out.status.success(), "{python}\n{}", stderr(&out));
    let path = PathBuf::from(stdout(&out).trim());
    assert_is_version(&hub, cache.path(), &Ok(path), "enc", "v1");

    let curl = shown_command(&page, "curl (from any machine)");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("sh")
        .args(["-c", &curl])
        .current_dir(dir.path())
        .env("MODELREG_TOKEN", &hub.token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{curl}\n{}", stderr(&out));
    assert_eq!(
        std::fs::read(dir.path().join("enc.pt")).unwrap(),
        bytes(6, 3000)
    );
}

#[test]
fn a_download_by_alias_reads_one_version_even_if_the_alias_moves_between_its_requests() {
    let hub = hub(CONFIG);
    register(&hub.d, "mv", 7, 0.5, 1);
    register(&hub.d, "mv", 8, 0.6, 2);
    ok(&hub.d, &["alias", "set", "mv", "production", "v1"]);
    // hf_hub_download's HEAD, then the alias moves, then its GET: the GET goes where the
    // HEAD was sent (the client follows the redirect), so it gets v1's bytes, which the
    // HEAD's ETag names (before, the GET of the alias got v2 under v1's ETag).
    let a = head(&hub, "/mv/resolve/production/mv.pt", Some(&hub.token));
    assert_eq!(a.status, 307);
    let location = a.header("location").unwrap().to_string();
    ok(&hub.d, &["alias", "set", "mv", "production", "v2"]);
    let auth = format!("Bearer {}", hub.token);
    let addr = &hub.url["http://".len()..];
    let got = request(addr, "GET", &location, &[("Authorization", &auth)]);
    assert_eq!(got.status, 200);
    let v1 = hub.d.get("mv", "v1").unwrap();
    assert_eq!(
        got.header("etag"),
        Some(format!("\"{}\"", v1.files[0].sha256).as_str())
    );
    assert_eq!(got.body, std::fs::read(&v1.files[0].path).unwrap());
    // An alias that would read as a commit id is refused (the Hub routes could never
    // serve it).
    let out = hub.d.cli(&["alias", "set", "mv", &"ab12".repeat(10), "v1"]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("commit id"),
        "{}",
        common::stderr(&out)
    );
    // And the real client, by the moved alias, gets v2 whole.
    let cache = tempfile::tempdir().unwrap();
    let got = hf(
        &hub,
        cache.path(),
        Some(&hub.token),
        &[file("mv", "production", "mv.pt")],
    );
    let v2 = hub.d.get("mv", "v2").unwrap();
    assert_eq!(
        std::fs::read(got[0].as_ref().unwrap()).unwrap(),
        std::fs::read(&v2.files[0].path).unwrap()
    );
}
