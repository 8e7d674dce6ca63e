//! Alias set, rm and rollback, and deprecate over the HTTP API with a write token: the CLI
//! over `--url` prints what it prints over the socket (errors included), the change is
//! the socket's (seen there, kept over a restart, recorded with the daemon's uid), a read
//! token or none is refused, and the Python client does the same over HTTP.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

const CONFIG: &str = "settle: 200ms\nhttp:\n  listen: 127.0.0.1:0\n";
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A daemon with the HTTP API, two versions of `m`, and a token file of each scope.
struct Remote {
    d: TestDaemon,
    read: PathBuf,
    write: PathBuf,
    /// Where the remote commands run: not the root, with no socket in reach.
    elsewhere: tempfile::TempDir,
}

impl Remote {
    fn start() -> Remote {
        let d = TestDaemon::start(CONFIG);
        two_versions(&d);
        let elsewhere = tempfile::tempdir().unwrap();
        let (read, write) = common::http::token_files(&d, elsewhere.path());
        Remote {
            d,
            read,
            write,
            elsewhere,
        }
    }

    /// The API's URL (it changes over a restart: port 0).
    fn url(&self) -> String {
        self.d.status().http.expect("the HTTP API listens")
    }

    /// `modelreg --url URL [--token-file token] args`, away from the root and with no
    /// MODELREG_* variables.
    fn run(&self, token: Option<&Path>, args: &[&str]) -> Output {
        let mut c = Command::new(BIN);
        c.current_dir(self.elsewhere.path())
            .env_remove("MODELREG_ROOT")
            .env_remove("MODELREG_SOCKET")
            .env_remove("MODELREG_URL")
            .env_remove("MODELREG_TOKEN")
            .args(["--url", &self.url()]);
        if let Some(t) = token {
            c.arg("--token-file").arg(t);
        }
        c.args(args).output().expect("run modelreg")
    }
}

/// v1 and v2 of `m`, dropped into the inbox as a writer does.
fn two_versions(d: &TestDaemon) {
    for (n, seed) in [(1, 1), (2, 2)] {
        write_renamed(&d.inbox(), "m.pt", &bytes(seed, 5000));
        d.wait_versions("m", n);
    }
}

/// What a command printed and how it ended.
fn outcome(o: &Output) -> (Option<i32>, String, String) {
    (o.status.code(), stdout(o), stderr(o))
}

/// Every change and every refusal the API takes, in order.
const SEQUENCE: &[&[&str]] = &[
    &["alias", "set", "m", "production", "v1"],
    &["alias", "set", "m", "production", "v2"],
    &["alias", "set", "m", "production", "v2"],
    &["rollback", "m", "production"],
    &["alias", "set", "m", "release/v2", "v2", "--json"],
    &["rollback", "m", "release/v2"],
    &["alias", "rm", "m", "release/v2"],
    &["deprecate", "m", "v1", "--reason", "superseded by v2"],
    &["deprecate", "m", "v2", "--json"],
    // The socket's errors: unknown alias, version, model; a bad selector; no rollback.
    &["alias", "rm", "m", "nope"],
    &["rollback", "m", "nope"],
    &["alias", "set", "m", "production", "v9"],
    &["alias", "set", "m", "production", "latest"],
    &["deprecate", "m", "v7"],
    &["alias", "set", "nosuch", "production", "v1"],
    &["alias", "set", "m", "staging", "v1"],
    &["rollback", "m", "staging"],
];

#[test]
fn changes_over_url_print_what_the_socket_prints_and_are_the_sockets() {
    let local = TestDaemon::start(CONFIG);
    two_versions(&local);
    let mut r = Remote::start();
    for args in SEQUENCE {
        let over_socket = outcome(&local.cli(args));
        let over_url = outcome(&r.run(Some(&r.write), args));
        assert_eq!(over_url, over_socket, "modelreg {args:?}");
    }
    // The change is the catalog's: the socket sees it, with the daemon's uid in history.
    let history: serde_json::Value =
        serde_json::from_str(&ok(&r.d, &["history", "m", "--json"])).unwrap();
    assert_eq!(history["aliases"]["production"], "v1");
    assert_eq!(history["aliases"]["staging"], "v1");
    let own = unsafe { libc::geteuid() };
    let moves = history["history"].as_array().unwrap();
    assert!(moves.iter().all(|m| m["uid"] == own), "{history}");
    let versions = r.d.versions("m");
    assert!(versions.iter().all(|v| v.state == "deprecated"));
    // The token's name is in the daemon's log.
    let log = r.d.log();
    assert!(
        log.contains("token=writer") && log.contains("alias_set asked over HTTP"),
        "{log}"
    );
    // Durable: a restart finds every change.
    let before = ok(&r.d, &["history", "m", "--json"]);
    let deprecated = ok(&r.d, &["versions", "m", "--json"]);
    assert_eq!(r.d.stop().code(), Some(0));
    r.d.spawn();
    assert_eq!(ok(&r.d, &["history", "m", "--json"]), before);
    assert_eq!(ok(&r.d, &["versions", "m", "--json"]), deprecated);
}

/// `METHOD path` with the token `t` and a JSON body.
fn send_json(addr: &str, t: &str, method: &str, path: &str, body: &str) -> common::http::Answer {
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {t}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    common::http::send(addr, raw.as_bytes()).unwrap()
}

#[test]
fn errors_carry_the_sockets_codes_and_statuses() {
    let r = Remote::start();
    let addr = common::http::address(&r.d);
    let t = std::fs::read_to_string(&r.write).unwrap();
    let t = t.trim();
    let base = "/api/v1/models";
    let spec = common::openapi::Spec::load();
    let ops = spec.operations();
    let mut wrong = Vec::new();
    // Each answer's status is one docs/openapi.yaml lists for its route, and its JSON
    // matches the schema given there.
    let mut documented = |method: &str, template: &str, a: &common::http::Answer| {
        let op = ops
            .iter()
            .find(|o| o.method == method.to_ascii_lowercase() && o.path == template)
            .unwrap_or_else(|| panic!("{method} {template} is not in docs/openapi.yaml"));
        match op.responses.get(&a.status.to_string()) {
            Some(r) => spec.check(
                &r["content"]["application/json"]["schema"],
                &a.json(),
                template,
                &mut wrong,
            ),
            None => wrong.push(format!("{method} {template}: {} not documented", a.status)),
        }
    };
    let template = |path: &str| {
        let t = if path.ends_with("/deprecate") {
            "{name}/versions/{version}/deprecate"
        } else if path.ends_with("/rollback") {
            "{name}/aliases/{alias}/rollback"
        } else {
            "{name}/aliases/{alias}"
        };
        format!("{base}/{t}")
    };
    for (method, path, body, status, code) in [
        ("DELETE", "m/aliases/nope", "", 404, "alias_not_found"),
        (
            "POST",
            "m/aliases/nope/rollback",
            "",
            404,
            "alias_not_found",
        ),
        (
            "PUT",
            "m/aliases/prod",
            r#"{"version":"v9"}"#,
            404,
            "version_not_found",
        ),
        (
            "PUT",
            "m/aliases/prod",
            r#"{"version":"3"}"#,
            400,
            "invalid_selector",
        ),
        (
            "PUT",
            "m/aliases/prod",
            r#"{"to":"v1"}"#,
            400,
            "bad_request",
        ),
        ("PUT", "m/aliases/prod", "", 400, "bad_request"),
        (
            "PUT",
            "nosuch/aliases/prod",
            r#"{"version":"v1"}"#,
            404,
            "model_not_found",
        ),
        (
            "PUT",
            "..%2Fm/aliases/prod",
            r#"{"version":"v1"}"#,
            400,
            "invalid_name",
        ),
        (
            "POST",
            "m/versions/v7/deprecate",
            "",
            404,
            "version_not_found",
        ),
        ("POST", "m/versions/v1/deprecate", "[1]", 400, "bad_request"),
    ] {
        let a = send_json(&addr, t, method, &format!("{base}/{path}"), body);
        assert_eq!(
            (a.status, a.code().as_str()),
            (status, code),
            "{method} {path} {body}"
        );
        documented(method, &template(path), &a);
    }
    // And the success answers are the socket's `result`s.
    let mut ask = |method: &str, path: &str, body: &str| {
        let a = send_json(&addr, t, method, &format!("{base}/{path}"), body);
        assert_eq!(a.status, 200, "{method} {path}: {}", a.json());
        documented(method, &template(path), &a);
        a.json()
    };
    assert_eq!(
        ask("PUT", "m/aliases/prod", r#"{"version":"v1"}"#),
        serde_json::json!({"name": "m", "alias": "prod", "version": "v1", "from": null})
    );
    assert_eq!(
        ask("PUT", "m/aliases/prod", r#"{"version":"v2"}"#)["from"],
        "v1"
    );
    assert_eq!(ask("POST", "m/aliases/prod/rollback", "")["version"], "v1");
    assert_eq!(ask("DELETE", "m/aliases/prod", "")["removed"], "v1");
    assert_eq!(
        ask("POST", "m/versions/v1/deprecate", ""),
        serde_json::json!({"name": "m", "version": "v1", "deprecated": true})
    );
    assert!(
        wrong.is_empty(),
        "docs/openapi.yaml vs the server:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn a_read_token_or_none_may_not_change_anything() {
    let r = Remote::start();
    ok(&r.d, &["alias", "set", "m", "production", "v1"]);
    let before = ok(&r.d, &["history", "m", "--json"]);
    for args in [
        &["alias", "set", "m", "production", "v2"][..],
        &["alias", "rm", "m", "production"],
        &["rollback", "m", "production"],
        &["deprecate", "m", "v1"],
    ] {
        let (code, out, err) = outcome(&r.run(Some(&r.read), args));
        assert_eq!((code, out.as_str()), (Some(4), ""), "{args:?}: {err}");
        assert!(
            err.contains("token \"reader\" may only read")
                && err.contains("need a token of scope write"),
            "{args:?}: {err}"
        );
        let (code, _, err) = outcome(&r.run(None, args));
        assert_eq!(code, Some(4), "{args:?}: {err}");
        assert!(
            err.contains("uploads and changes need a write token") && err.contains("--token-file"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(ok(&r.d, &["history", "m", "--json"]), before);
    assert!(r.d.versions("m").iter().all(|v| v.state == "live"));
}

#[test]
fn removal_and_maintenance_stay_on_the_daemons_machine() {
    let r = Remote::start();
    for (args, op) in [
        (&["rm", "m", "v1"][..], "rm"),
        (&["gc"], "gc"),
        (&["compact"], "compact"),
    ] {
        let (code, _, err) = outcome(&r.run(Some(&r.write), args));
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!("`{op}` is not served over HTTP"))
                && err.contains("Run this command on the daemon's machine"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(r.d.versions("m").len(), 2);
}

#[test]
fn python_client_changes_aliases_and_deprecates_over_http() {
    let r = Remote::start();
    let token = std::fs::read_to_string(&r.write).unwrap();
    let script = r#"
import modelreg
r = modelreg.ModelRegistry()
print(r.alias_set("m", "production", 1).version)
print(r.alias_set("m", "production", "v2").version)
print(r.rollback("m", "production").version)
print(r.alias_remove("m", "production").removed)
print(r.deprecate("m", 1, reason="old").deprecated)
try:
    r.alias_remove("m", "production")
except modelreg.AliasNotFound as e:
    print(e.code)
try:
    r.rm("m", 2)
except modelreg.NotServedOverHttp as e:
    print(e.code)
"#;
    let o = Command::new("python3")
        .current_dir(Path::new(REPO).join("clients/python"))
        .args(["-c", script])
        .env("MODELREG_URL", r.url())
        .env("MODELREG_TOKEN", token.trim())
        .output()
        .expect("python3 is installed");
    assert_eq!(
        stdout(&o),
        "v1\nv2\nv1\nv1\nTrue\nalias_not_found\nunknown_op\n",
        "{}",
        stderr(&o)
    );
    assert_eq!(r.d.versions("m")[0].state, "deprecated");
    let history = r.d.client().history("m").unwrap();
    assert_eq!(history.history.len(), 4);
}
