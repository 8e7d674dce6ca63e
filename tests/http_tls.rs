//! HTTPS (`http.tls`) on the real daemon: a self-signed certificate made at test time by
//! the openssl CLI, the API asked with `curl --cacert` over https (a ping, and an
//! authenticated read); plain HTTP sent to the HTTPS port is answered with a clear 400
//! and the daemon keeps serving; a missing or bad certificate or key stops the start
//! with the file's path and the reason, leaving nothing in the root.

mod common;

use std::process::Command;

use common::http::make_cert;
use common::{TestDaemon, ok};

/// `curl URL` with `args`: (exit code, stdout).
fn curl(args: &[&str]) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "30"])
        .args(args)
        .output()
        .expect("curl");
    (out.status.code().unwrap_or(-1), common::stdout(&out))
}

fn tls_config(cert: &str, key: &str) -> String {
    format!("http:\n  listen: 127.0.0.1:0\n  tls:\n    cert: {cert}\n    key: {key}\n")
}

#[test]
fn the_api_is_served_over_https_and_plain_http_is_told_to_use_it() {
    let mut d = TestDaemon::new("");
    let tls = d.root.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    make_cert(&tls);
    // Paths relative to the root; a key others may read is served, with a warning.
    use std::os::unix::fs::PermissionsExt;
    let key = tls.join("key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    d.write_config(&tls_config("tls/cert.pem", "tls/key.pem"));
    d.spawn();
    let url = d.status().http.expect("status names the API's address");
    assert!(
        d.log().contains("may be read by other users (mode 644)"),
        "{}",
        d.log()
    );
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let cacert = tls.join("cert.pem").display().to_string();
    let (rc, body) = curl(&["--cacert", &cacert, &format!("{url}/api/v1/ping")]);
    assert_eq!(rc, 0, "{body}");
    assert!(body.contains("\"pong\":true"), "{body}");
    // Without the certificate trusted, curl refuses the server (it is self-signed).
    let (rc, _) = curl(&[&format!("{url}/api/v1/ping")]);
    assert_eq!(rc, 60, "curl verifies the certificate");
    // A token's read over https.
    let token = ok(&d, &["token", "create", "reader", "--scope", "read"])
        .trim()
        .to_string();
    let auth = format!("Authorization: Bearer {token}");
    let (rc, body) = curl(&[
        "--cacert",
        &cacert,
        "-H",
        &auth,
        &format!("{url}/api/v1/models"),
    ]);
    assert_eq!(rc, 0, "{body}");
    assert_eq!(body, "{\"models\":[]}");
    // Plain HTTP to the HTTPS port: a 400 saying to use https://, then closed.
    let plain = url.replacen("https://", "http://", 1);
    let (rc, body) = curl(&["-w", "\n%{http_code}", &format!("{plain}/api/v1/ping")]);
    assert_eq!(rc, 0, "{body}");
    assert!(body.ends_with("\n400"), "{body}");
    assert!(body.contains("use https://"), "{body}");
    // Garbage that is neither: the connection is closed; the daemon keeps serving.
    let addr = url.trim_start_matches("https://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    s.write_all(&[0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5]).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let (rc, body) = curl(&["--cacert", &cacert, &format!("{url}/api/v1/ping")]);
    assert_eq!(rc, 0, "{body}");
    assert!(d.is_running());
}

#[test]
fn a_missing_or_bad_certificate_stops_the_start_naming_the_file() {
    let d = TestDaemon::new("");
    let tls = d.root.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    make_cert(&tls);
    std::fs::write(tls.join("garbage.pem"), b"not a certificate\n").unwrap();
    // A key of another certificate.
    let other = d.root.path().join("other");
    std::fs::create_dir(&other).unwrap();
    make_cert(&other);
    let cases = [
        (
            "tls/missing.pem",
            "tls/key.pem",
            "missing.pem",
            "cannot read it",
        ),
        (
            "tls/garbage.pem",
            "tls/key.pem",
            "garbage.pem",
            "holds no certificate",
        ),
        (
            "tls/cert.pem",
            "tls/garbage.pem",
            "garbage.pem",
            "not a PEM private key",
        ),
        (
            "tls/cert.pem",
            "other/key.pem",
            "other/key.pem",
            "does not go with",
        ),
    ];
    for (cert, key, file, why) in cases {
        let mut d2 = TestDaemon::new("");
        let root = d2.root.path().to_path_buf();
        std::fs::create_dir(root.join("tls")).unwrap();
        std::fs::create_dir(root.join("other")).unwrap();
        for f in ["cert.pem", "key.pem", "garbage.pem"] {
            std::fs::copy(tls.join(f), root.join("tls").join(f)).unwrap();
        }
        std::fs::copy(other.join("key.pem"), root.join("other/key.pem")).unwrap();
        d2.write_config(&tls_config(cert, key));
        let out = d2.serve_output();
        assert!(!out.status.success(), "{cert} {key}");
        let err = common::stderr(&out);
        assert!(
            err.contains(file) && err.contains(why) && err.contains("http.tls"),
            "{cert} {key}: {err}"
        );
        // Nothing made in the root.
        let mut names: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["config", "other", "tls"], "{cert} {key}");
    }
    // A `tls:` without a key is a settings error naming the key.
    let d3 = TestDaemon::new("http:\n  listen: 127.0.0.1:0\n  tls:\n    cert: c.pem\n");
    let err = common::stderr(&d3.serve_output());
    assert!(
        err.contains("http.tls.key") && err.contains("missing"),
        "{err}"
    );
}
