//! The HTTP API's JSON routes on the real daemon: the same answers and error codes as the
//! control socket, from the same catalog; off unless configured; settings checked.

mod common;

use common::http::{address, get};
use common::{TestDaemon, sidecar, write_renamed};
use modelreg::protocol::Request;

const CONFIG: &str = "settle: 200ms\nhttp:\n  listen: 127.0.0.1:0\n";

/// A daemon with the HTTP API on and model `m` at v1 (accuracy 0.5) and v2 (0.9).
fn daemon_with_two_versions() -> TestDaemon {
    let d = TestDaemon::start(CONFIG);
    for (i, acc) in [0.5, 0.9].into_iter().enumerate() {
        std::fs::write(
            d.inbox().join("m.metrics.yaml"),
            sidecar(&[("accuracy", acc)]),
        )
        .unwrap();
        write_renamed(&d.inbox(), "m.pt", format!("weights {i}").as_bytes());
        d.wait_versions("m", i + 1);
    }
    d
}

#[test]
fn json_routes_answer_what_the_socket_answers() {
    let d = daemon_with_two_versions();
    let addr = address(&d);
    let same = |path: &str, req: Request| {
        let a = get(&addr, path);
        assert_eq!(
            a.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert_eq!(a.header("content-type"), Some("application/json"));
        assert_eq!(a.json(), d.call(&req).unwrap(), "{path}");
    };
    same("/api/v1/models", Request::List {});
    same(
        "/api/v1/models/m/versions",
        Request::Versions { name: "m".into() },
    );
    same(
        "/api/v1/models/m/history",
        Request::History { name: "m".into() },
    );
    for (sel, metric) in [("v1", None), ("latest", None), ("best", Some("accuracy"))] {
        let path = match metric {
            Some(m) => format!("/api/v1/models/m/versions/{sel}?metric={m}&mode=min"),
            None => format!("/api/v1/models/m/versions/{sel}"),
        };
        same(
            &path,
            Request::Get {
                name: "m".into(),
                selector: Some(sel.into()),
                metric: metric.map(String::from),
                mode: metric.map(|_| modelreg::config::Direction::Min),
            },
        );
    }
    // best with min accuracy is v1.
    let a = get(
        &addr,
        "/api/v1/models/m/versions/best?metric=accuracy&mode=min",
    );
    assert_eq!(a.json()["version"], "v1");
    let s = get(&addr, "/api/v1/status").json();
    assert_eq!(s["versions"], 2);
    assert_eq!(s["http"], format!("http://{addr}"));
    assert_eq!(get(&addr, "/api/v1/ping").json()["pong"], true);
}

#[test]
fn errors_carry_the_socket_codes_with_http_statuses() {
    let d = daemon_with_two_versions();
    let addr = address(&d);
    for (path, status, code) in [
        ("/api/v1/models/nope/versions", 404, "model_not_found"),
        ("/api/v1/models/m/versions/v9", 404, "version_not_found"),
        ("/api/v1/models/m/versions/prod", 404, "alias_not_found"),
        ("/api/v1/models/m/versions/best?metric=f1", 404, "no_metric"),
        ("/api/v1/models/m/versions/best?mode=up", 400, "bad_request"),
        (
            "/api/v1/models/m/versions/latest?colour=red",
            400,
            "bad_request",
        ),
        ("/api/v1/models/%2e%2e/versions", 400, "invalid_name"),
        ("/api/v1/models/m/versions/v0", 400, "invalid_selector"),
        ("/api/v1/models/%ff/versions", 400, "bad_request"),
        ("/api/v2/models", 404, "not_found"),
    ] {
        let a = get(&addr, path);
        assert_eq!(
            (a.status, a.code().as_str()),
            (status, code),
            "{path}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert!(
            !a.json()["error"]["message"].as_str().unwrap().is_empty(),
            "{path}"
        );
    }
    // The socket's message, word for word.
    let socket = d
        .call(&Request::Versions {
            name: "nope".into(),
        })
        .unwrap_err()
        .to_string();
    let http = get(&addr, "/api/v1/models/nope/versions").json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(socket.contains(&http), "{socket} vs {http}");
    let a = common::http::request(&addr, "DELETE", "/api/v1/models", &[]);
    assert_eq!((a.status, a.code().as_str()), (405, "bad_request"));
}

#[test]
fn http_is_off_by_default() {
    let d = TestDaemon::start("settle: 200ms\n");
    assert_eq!(d.status().http, None);
    assert!(!d.log().contains("HTTP API on"), "{}", d.log());
}

#[test]
fn a_bad_listen_address_stops_the_start_with_the_key_named() {
    let mut d = TestDaemon::new("http:\n  listen: 127.0.0.1\n");
    let out = d.serve_output();
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(
        err.contains("http.listen: `127.0.0.1` is not an address with a port"),
        "{err}"
    );
    // An address that cannot be bound is as fatal as a socket that cannot be.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    d.write_config(&format!("http:\n  listen: 127.0.0.1:{port}\n"));
    let out = d.serve_output();
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(
        err.contains("cannot listen for HTTP on 127.0.0.1:"),
        "{err}"
    );
}
