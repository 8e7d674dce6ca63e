//! Tokens for the HTTP API on the real daemon: `modelreg token create|list|revoke`, a
//! request without a token, with a wrong one, with a read token trying to upload, with a
//! revoked one (refused at once, no restart), anonymous reading on and off, and a root
//! that holds no token's secret.

mod common;

use common::http::{Answer, address, request};
use common::{TestDaemon, ok};

const CLOSED: &str = "settle: 200ms\nhttp:\n  listen: 127.0.0.1:0\n";
const ANONYMOUS: &str = "settle: 200ms\nhttp:\n  listen: 127.0.0.1:0\n  anonymous_read: true\n";

/// Creates a token and returns what `token create` printed on stdout (the token alone).
fn create(d: &TestDaemon, name: &str, scope: &str) -> String {
    let t = ok(d, &["token", "create", name, "--scope", scope])
        .trim()
        .to_string();
    assert!(t.starts_with("mr_") && t.len() == 67, "{t:?}");
    t
}

fn with_token(addr: &str, method: &str, path: &str, token: &str) -> Answer {
    let auth = format!("Bearer {token}");
    request(
        addr,
        method,
        path,
        &[("Authorization", &auth), ("Content-Length", "0")],
    )
}

fn assert_401(a: &Answer, what: &str) {
    assert_eq!(
        a.status,
        401,
        "{what}: {}",
        String::from_utf8_lossy(&a.body)
    );
    let challenge = a.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Bearer"), "{what}: {challenge:?}");
    assert_eq!(a.code(), "permission_denied", "{what}");
}

#[test]
fn reading_needs_a_valid_token_unless_anonymous_read_is_on() {
    let d = TestDaemon::start(CLOSED);
    let addr = address(&d);
    let read = create(&d, "laptop", "read");
    // No token: refused, and the route or model behind it is not told.
    for path in [
        "/api/v1/models",
        "/api/v1/models/m/versions/latest",
        "/no/such/route",
        "/",
        "/models/m",
    ] {
        assert_401(&request(&addr, "GET", path, &[]), path);
    }
    // A wrong token, and one of another scheme.
    let wrong = format!("mr_{}", "0".repeat(64));
    assert_401(
        &with_token(&addr, "GET", "/api/v1/models", &wrong),
        "wrong token",
    );
    let a = request(
        &addr,
        "GET",
        "/api/v1/models",
        &[("Authorization", "Basic dXNlcjpwYXNz")],
    );
    assert_401(&a, "basic auth");
    // The right one, in any case of the scheme.
    let a = with_token(&addr, "GET", "/api/v1/models", &read);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let auth = format!("bearer {read}");
    let a = request(&addr, "GET", "/api/v1/models", &[("Authorization", &auth)]);
    assert_eq!(a.status, 200);
    // The liveness probe is open.
    assert_eq!(request(&addr, "GET", "/api/v1/ping", &[]).status, 200);

    // anonymous_read on: reading without a token works, a wrong token is still refused,
    // and uploading still needs a write token. A reload applies it, no restart.
    let mut d = d;
    d.write_config(ANONYMOUS);
    d.signal(libc::SIGHUP);
    common::wait_until(
        std::time::Duration::from_secs(10),
        "anonymous_read applied",
        || request(&addr, "GET", "/api/v1/models", &[]).status == 200,
    );
    assert_401(
        &with_token(&addr, "GET", "/api/v1/models", &wrong),
        "wrong token, anonymous on",
    );
    // A proxy's own Basic login (nginx auth_basic forwards it) is not a token of ours:
    // with anonymous reading on, the request reads as one without a token.
    let a = request(
        &addr,
        "GET",
        "/api/v1/models",
        &[("Authorization", "Basic dXNlcjpwYXNz")],
    );
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let a = request(
        &addr,
        "PUT",
        "/api/v1/models/m/upload?filename=m.pt",
        &[("Content-Length", "1")],
    );
    assert_401(&a, "anonymous upload");
}

#[test]
fn a_read_token_is_refused_a_write_and_a_revoked_token_at_once() {
    let d = TestDaemon::start(ANONYMOUS);
    let addr = address(&d);
    let read = create(&d, "reader", "read");
    let write = create(&d, "ci", "write");
    let up = "/api/v1/models/m/upload?filename=m.pt";
    let a = with_token(&addr, "PUT", up, &read);
    assert_eq!(a.status, 403, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.code(), "permission_denied");
    assert!(String::from_utf8_lossy(&a.body).contains("reader"));
    // The write token gets past the check (the empty body is then refused on its own).
    let a = with_token(&addr, "PUT", up, &write);
    assert_eq!(
        a.code(),
        "unusable_file",
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(
        with_token(&addr, "GET", "/api/v1/models", &write).status,
        200
    );

    let list = ok(&d, &["token", "list"]);
    assert!(list.contains("reader") && list.contains("read"), "{list}");
    assert!(list.contains("ci") && list.contains("write"), "{list}");
    assert!(
        !list.contains(&write[3..]) && !list.contains(&read[3..]),
        "{list}"
    );

    ok(&d, &["token", "revoke", "ci"]);
    assert_401(
        &with_token(&addr, "GET", "/api/v1/models", &write),
        "revoked",
    );
    assert_401(&with_token(&addr, "PUT", up, &write), "revoked upload");
    assert!(!ok(&d, &["token", "list"]).contains("ci "));
    // The other token still works.
    assert_eq!(
        with_token(&addr, "GET", "/api/v1/models", &read).status,
        200
    );
    let e = common::fails(&d, &["token", "revoke", "ci"]);
    assert!(e.contains("no token named \"ci\""), "{e}");
}

#[test]
fn tokens_survive_a_restart_and_the_root_holds_no_secret() {
    let mut d = TestDaemon::start(CLOSED);
    let token = create(&d, "ci", "write");
    let e = common::fails(&d, &["token", "create", "ci", "--scope", "read"]);
    assert!(e.contains("a token named \"ci\" exists"), "{e}");
    let e = common::fails(&d, &["token", "create", "a/b", "--scope", "read"]);
    assert!(e.contains("invalid token name"), "{e}");
    let file = d.root.path().join("tokens.yaml");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "tokens.yaml is the daemon's alone");
    // No file under the root holds the token or its random part.
    let out = std::process::Command::new("grep")
        .args(["-rlF", &token[3..]])
        .arg(d.root.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "found in {}",
        String::from_utf8_lossy(&out.stdout)
    );

    d.stop();
    d.spawn();
    d.wait_ready();
    let addr = address(&d);
    assert_eq!(
        with_token(&addr, "GET", "/api/v1/models", &token).status,
        200
    );
}

#[test]
fn tokens_are_made_only_by_the_daemons_user() {
    if !common::can_switch_user("tokens_are_made_only_by_the_daemons_user") {
        return;
    }
    let d = TestDaemon::start(CLOSED);
    // Another user, let onto the socket for the test: a token would open the HTTP API.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(d.socket(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_modelreg"))
        .arg("--socket")
        .arg(d.socket())
        .args(["token", "create", "x", "--scope", "write"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "nobody made a token: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains("token_create changes the registry"), "{err}");
    assert!(ok(&d, &["token", "list"]).contains("no tokens"));
}
