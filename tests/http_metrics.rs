//! `/metrics` on the real daemon, read by a real Prometheus text parser
//! (`prometheus_client` from PyPI, pinned: [`PROMETHEUS_CLIENT`]): versions registered by
//! the inbox and by an HTTP upload with their bytes and a consistent registration
//! histogram, waiting entries and problems as `status` tells them, requests by route
//! template (hostile and unknown paths and methods folded into bounded labels) with
//! consistent latency histograms, open connections; who may scrape. And the dashboard:
//! the models page a hundred models a page with links between the pages, and the URL
//! its commands name behind a TLS proxy (`http.public_url`, forwarding headers ignored).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::http::{Answer, address, request, send};
use common::{TestDaemon, bytes, ok, wait_until, write, write_renamed};

/// The release of the Prometheus Python client whose text parser reads the exposition.
const PROMETHEUS_CLIENT: &str = "prometheus_client==0.26.0";

const CLOSED: &str = "settle: 200ms\nhttp:\n  listen: 127.0.0.1:0\n";

/// One sample as the parser read it.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A family as the parser read it: its type and samples.
#[derive(Debug)]
struct Family {
    kind: String,
    samples: Vec<Sample>,
}

/// Parses `text` with `prometheus_client.parser.text_string_to_metric_families` (a parse
/// error fails the test with the parser's message), families by name.
fn parse(text: &str) -> BTreeMap<String, Family> {
    let venv = common::venv::venv(PROMETHEUS_CLIENT);
    let script = r#"
import json, math, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    assert f.name not in out, "family twice: " + f.name
    out[f.name] = {"type": f.type, "samples": [
        {"name": s.name, "labels": s.labels,
         "value": s.value if math.isfinite(s.value) else str(s.value)}
        for s in f.samples]}
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new(venv.join("bin/python"))
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_object()
        .unwrap()
        .iter()
        .map(|(name, f)| {
            let samples = f["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| Sample {
                    name: s["name"].as_str().unwrap().into(),
                    labels: serde_json::from_value(s["labels"].clone()).unwrap(),
                    value: s["value"].as_f64().unwrap_or(f64::NAN),
                })
                .collect();
            let kind = f["type"].as_str().unwrap().into();
            (name.clone(), Family { kind, samples })
        })
        .collect()
}

/// The family `name` (a counter's family is named without `_total` by the parser).
fn family<'a>(m: &'a BTreeMap<String, Family>, name: &str) -> &'a Family {
    (m.get(name))
        .or_else(|| m.get(name.strip_suffix("_total")?))
        .unwrap_or_else(|| panic!("no family {name} in {:?}", m.keys()))
}

/// The value of the sample `name` whose labels include `labels` (0 when none matches).
fn value(m: &BTreeMap<String, Family>, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.values()
        .flat_map(|f| &f.samples)
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// Checks every histogram series of family `name` (grouped by its labels other than
/// `le`): buckets in ascending `le` never decrease, `+Inf` equals `_count`, the sum is
/// not negative. Returns each series' labels and count.
fn check_histograms(
    m: &BTreeMap<String, Family>,
    name: &str,
) -> Vec<(BTreeMap<String, String>, f64)> {
    let f = family(m, name);
    assert_eq!(f.kind, "histogram", "{name}");
    let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
    for s in f
        .samples
        .iter()
        .filter(|s| s.name == format!("{name}_bucket"))
    {
        let mut key = s.labels.clone();
        let le = key.remove("le").expect("a bucket has le");
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap()
        };
        series.entry(key).or_default().push((le, s.value));
    }
    let mut out = Vec::new();
    for (labels, mut buckets) in series {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name}{labels:?}: buckets decrease: {buckets:?}"
        );
        let inf = buckets.last().unwrap();
        assert!(inf.0.is_infinite(), "{name}{labels:?}: no +Inf bucket");
        let lv: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let count = value(m, &format!("{name}_count"), &lv);
        assert_eq!(inf.1, count, "{name}{labels:?}: +Inf bucket vs _count");
        assert!(value(m, &format!("{name}_sum"), &lv) >= 0.0);
        out.push((labels, count));
    }
    out
}

fn auth(token: &str) -> String {
    format!("Bearer {token}")
}

/// `GET path` with the token.
fn get_with(addr: &str, path: &str, token: &str) -> Answer {
    request(addr, "GET", path, &[("Authorization", &auth(token))])
}

/// The exposition, fetched with the token and parsed.
fn scrape(addr: &str, token: &str) -> BTreeMap<String, Family> {
    let a = get_with(addr, "/metrics", token);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(
        a.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    parse(&String::from_utf8(a.body).unwrap())
}

#[test]
fn metrics_count_registrations_and_requests_by_route_as_a_prometheus_parser_reads_them() {
    let d = TestDaemon::start(CLOSED);
    let addr = address(&d);
    let read = ok(&d, &["token", "create", "scraper", "--scope", "read"])
        .trim()
        .to_string();
    let write_token = ok(&d, &["token", "create", "ci", "--scope", "write"])
        .trim()
        .to_string();

    // Two versions dropped into the inbox, one uploaded over HTTP: 1,000 + 2,000 + 3,000 bytes.
    write_renamed(&d.inbox(), "a.pt", &bytes(1, 1000));
    d.wait_versions("a", 1);
    write_renamed(&d.inbox(), "b.pt", &bytes(2, 2000));
    d.wait_versions("b", 1);
    let body = bytes(3, 3000);
    let mut raw = format!(
        "PUT /api/v1/models/c/upload?filename=c.pt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Authorization: Bearer {write_token}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    let up = send(&addr, &raw).unwrap();
    assert_eq!(up.status, 201, "{}", String::from_utf8_lossy(&up.body));
    // An entry held by a bad sidecar: waiting (blocked), and a problem.
    write(
        &d.inbox().join("r.metrics.yaml"),
        b"metrics:\n  loss: high\n",
    );
    write(&d.inbox().join("r.pt"), b"weights");
    d.wait_problem_text("r.metrics.yaml");
    wait_until(Duration::from_secs(20), "r blocked in status", || {
        (d.status().waiting.iter()).any(|w| w.name == "r" && w.state == "blocked")
    });

    // Requests: known routes, a 404 on a known route, no token, then hostile and unknown
    // paths (each different) and an unknown method.
    for _ in 0..5 {
        assert_eq!(get_with(&addr, "/api/v1/models", &read).status, 200);
    }
    for _ in 0..3 {
        assert_eq!(
            get_with(&addr, "/api/v1/models/nope/versions", &read).status,
            404
        );
    }
    for _ in 0..2 {
        assert_eq!(request(&addr, "GET", "/api/v1/models", &[]).status, 401);
    }
    let mut hostile = 0;
    for i in 0..40 {
        for path in [
            format!("/%2e%2e%2f%2e%2e%2fetc/passwd{i}"),
            format!("/api/v1/models/a/versions/v1/files/..%2f..%2fetc%2fshadow{i}"),
            format!("/api/v1/models/a/versions/v1/files/%252e%252e%252f{i}"),
            format!("/api/v1/models/a%00{i}/versions"),
            format!("/wp-admin/{i}/{}", "x".repeat(i * 50)),
        ] {
            let a = get_with(&addr, &path, &read);
            assert!((400..500).contains(&a.status), "{path}: {}", a.status);
            hostile += 1;
        }
    }
    for i in 0..10 {
        let a = request(
            &addr,
            &format!("BREW{i}"),
            "/api/v1/models",
            &[("Authorization", &auth(&read))],
        );
        assert!((400..500).contains(&a.status), "BREW: {}", a.status);
    }
    let status = d.status();
    let m = scrape(&addr, &read);

    // Registrations: three versions, their bytes, one histogram observation each.
    assert_eq!(value(&m, "modelreg_versions_registered_total", &[]), 3.0);
    assert_eq!(value(&m, "modelreg_registered_bytes_total", &[]), 6000.0);
    assert_eq!(value(&m, "modelreg_versions", &[]), 3.0);
    assert_eq!(value(&m, "modelreg_models", &[]), 3.0);
    let reg = check_histograms(&m, "modelreg_registration_duration_seconds");
    assert_eq!(reg.len(), 1);
    assert_eq!(reg[0].1, 3.0, "three registrations observed");
    assert!(value(&m, "modelreg_registration_duration_seconds_sum", &[]) > 0.0);

    // Waiting entries and problems: what `status` says.
    let blocked: usize = (status.waiting.iter())
        .filter(|w| w.state == "blocked")
        .map(|w| w.entries.len().max(1))
        .sum();
    assert!(blocked >= 1, "{:?}", status.waiting);
    assert_eq!(
        value(&m, "modelreg_waiting_entries", &[("state", "blocked")]),
        blocked as f64
    );
    assert_eq!(
        family(&m, "modelreg_waiting_entries").samples.len(),
        5,
        "every state, zero or not"
    );
    assert_eq!(
        value(&m, "modelreg_problems", &[]),
        status.problems.len() as f64
    );
    assert!(!status.problems.is_empty());

    // Requests by route template, method and code.
    let req = "modelreg_http_requests_total";
    assert_eq!(family(&m, req).kind, "counter");
    let count = |route: &str, method: &str, code: &str| {
        value(
            &m,
            req,
            &[("route", route), ("method", method), ("code", code)],
        )
    };
    assert_eq!(count("/api/v1/models", "GET", "200"), 5.0);
    assert_eq!(count("/api/v1/models", "GET", "401"), 2.0);
    assert_eq!(count("/api/v1/models/{name}/versions", "GET", "404"), 3.0);
    assert_eq!(count("/api/v1/models/{name}/upload", "PUT", "201"), 1.0);
    assert_eq!(
        value(&m, req, &[("method", "other")]),
        10.0,
        "unknown methods"
    );
    let total: f64 = value(&m, req, &[]);
    assert_eq!(
        total,
        (5 + 3 + 2 + 1 + hostile + 10) as f64,
        "every request counted once"
    );
    // Labels stay bounded: 210 different paths and methods, a handful of series, each a
    // route template or `unmatched`.
    let templates = [
        "/api/v1/models",
        "/api/v1/models/{name}/versions",
        "/api/v1/models/{name}/upload",
        "/api/v1/models/{name}/versions/{selector}/files/{*path}",
        "unmatched",
    ];
    let series = &family(&m, req).samples;
    assert!(series.len() <= 12, "{} series: {series:?}", series.len());
    let routes: BTreeSet<&str> = series.iter().map(|s| s.labels["route"].as_str()).collect();
    assert!(routes.iter().all(|r| templates.contains(r)), "{routes:?}");
    let methods: BTreeSet<&str> = series.iter().map(|s| s.labels["method"].as_str()).collect();
    assert_eq!(methods, BTreeSet::from(["GET", "PUT", "other"]));
    // Each route's latency histogram is consistent and counts its requests.
    for (labels, n) in check_histograms(&m, "modelreg_http_request_duration_seconds") {
        let lv = [
            ("route", labels["route"].as_str()),
            ("method", labels["method"].as_str()),
        ];
        assert_eq!(n, value(&m, req, &lv), "{labels:?}");
    }

    // Open connections: three held open, and the scrape's own.
    let held: Vec<BufReader<TcpStream>> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /api/v1/ping HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut r = BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.contains(" 200 "), "{line}");
            r
        })
        .collect();
    let mut open = 0.0;
    wait_until(Duration::from_secs(10), "four open connections", || {
        let m = scrape(&addr, &read);
        open = value(&m, "modelreg_http_connections_open", &[]);
        assert!(value(&m, "modelreg_http_connections_total", &[]) >= total + 4.0);
        open == 4.0
    });
    drop(held);
    wait_until(
        Duration::from_secs(10),
        "the held connections counted closed",
        || value(&scrape(&addr, &read), "modelreg_http_connections_open", &[]) == 1.0,
    );
}

#[test]
fn metrics_need_a_read_token_unless_anonymous_metrics_is_on() {
    let d = TestDaemon::start(CLOSED);
    let addr = address(&d);
    assert_eq!(request(&addr, "GET", "/metrics", &[]).status, 401);
    let read = ok(&d, &["token", "create", "prometheus", "--scope", "read"])
        .trim()
        .to_string();
    let m = scrape(&addr, &read);
    assert_eq!(
        value(
            &m,
            "modelreg_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    drop(d);

    let d = TestDaemon::start(&format!("{CLOSED}  anonymous_metrics: true\n"));
    let addr = address(&d);
    let a = request(&addr, "GET", "/metrics", &[]);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    parse(&String::from_utf8(a.body).unwrap());
    // The catalog still needs a token.
    assert_eq!(request(&addr, "GET", "/api/v1/models", &[]).status, 401);
    assert_eq!(request(&addr, "GET", "/", &[]).status, 401);
}

/// The `href`s of the dashboard's links to other pages of the models page, by `rel`.
fn page_link(page: &str, rel: &str) -> Option<String> {
    let at = page.find(&format!("rel=\"{rel}\""))?;
    let start = page[..at].rfind("href=\"")? + "href=\"".len();
    Some(page[start..].split('"').next()?.to_string())
}

#[test]
fn the_models_page_shows_a_hundred_models_a_page_linked_first_to_last() {
    let d = TestDaemon::start(&format!("{CLOSED}  anonymous_read: true\n"));
    let addr = address(&d);
    let n = 205;
    for i in 0..n {
        write_renamed(&d.inbox(), &format!("m{i:03}.pt"), &bytes(i as u64, 16));
    }
    wait_until(Duration::from_secs(120), "205 models", || {
        d.status().versions == n
    });
    // From the first page, the `next` links lead through every model once, in order.
    let mut seen = Vec::new();
    let mut url = Some("/".to_string());
    let mut pages = 0;
    while let Some(u) = url {
        let a = common::http::get(&addr, &u);
        assert_eq!(a.status, 200, "{u}");
        let page = String::from_utf8(a.body).unwrap();
        pages += 1;
        assert!(page.contains(&format!("Page {pages} of 3")), "{u}");
        let rows: Vec<String> = page
            .split("<th scope=\"row\"><a href=\"/models/")
            .skip(1)
            .map(|r| r.split('"').next().unwrap().to_string())
            .collect();
        assert_eq!(rows.len(), if pages < 3 { 100 } else { 5 }, "{u}");
        seen.extend(rows);
        assert_eq!(page_link(&page, "prev").is_some(), pages > 1, "{u}");
        assert_eq!(
            page_link(&page, "last").as_deref().is_some(),
            pages < 3,
            "{u}"
        );
        url = page_link(&page, "next");
    }
    assert_eq!(pages, 3);
    let all: Vec<String> = (0..n).map(|i| format!("m{i:03}")).collect();
    assert_eq!(seen, all);
    // A page past the last, and pages that are not numbers: HTML errors with the status.
    for (q, status) in [
        ("?page=4", 404),
        ("?page=0", 400),
        ("?page=x", 400),
        ("?page=-1", 400),
        ("?pg=2", 400),
    ] {
        let a = common::http::get(&addr, &format!("/{q}"));
        assert_eq!(a.status, status, "{q}");
        assert!(
            a.header("content-type").unwrap().starts_with("text/html"),
            "{q}"
        );
    }
}

/// The `http(s)://host` URLs a page names.
fn urls(page: &str) -> BTreeSet<String> {
    page.split("http")
        .skip(1)
        .filter_map(|r| {
            let (scheme, rest) = r.split_once("://")?;
            let host: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(*c))
                .collect();
            (scheme.is_empty() || scheme == "s").then(|| format!("http{scheme}://{host}"))
        })
        .collect()
}

/// The URLs the version page of `m` v1 names, on a daemon with `extra` settings, asked
/// with `headers` (a `Host` among them replaces the client's own).
fn version_page_urls(extra: &str, headers: &[(&str, &str)]) -> BTreeSet<String> {
    let d = TestDaemon::start(&format!("{CLOSED}  anonymous_read: true\n{extra}"));
    let addr = address(&d);
    write_renamed(&d.inbox(), "m.pt", b"weights");
    d.wait_versions("m", 1);
    let mut raw = String::from("GET /models/m/v1 HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(n, _)| *n == "Host") {
        raw.push_str(&format!("Host: {addr}\r\n"));
    }
    for (n, v) in headers {
        raw.push_str(&format!("{n}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    let a = send(&addr, raw.as_bytes()).unwrap();
    assert_eq!(a.status, 200);
    urls(&String::from_utf8(a.body).unwrap())
}

#[test]
fn behind_a_tls_proxy_the_dashboard_names_public_url_and_ignores_forwarded_headers() {
    // As nginx forwards by default: the upstream's Host, the scheme in a header.
    let forwarded = [
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "evil.example"),
    ];
    assert_eq!(
        version_page_urls("  public_url: https://models.example.org/\n", &forwarded),
        BTreeSet::from(["https://models.example.org".to_string()])
    );
    // Without it: the Host the browser sent, with forged forwarding headers ignored.
    let forged = [
        ("Host", "models.lan:8080"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
    ];
    assert_eq!(
        version_page_urls("", &forged),
        BTreeSet::from(["http://models.lan:8080".to_string()])
    );

    // A public_url that is not a scheme and a host stops the start, the key named.
    let bad = TestDaemon::new(&format!(
        "{CLOSED}  public_url: https://models.example.org/modelreg\n"
    ));
    let out = bad.serve_output();
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(
        err.contains("http.public_url: `https://models.example.org/modelreg`"),
        "{err}"
    );
}

#[test]
fn over_https_the_dashboard_names_https_urls() {
    let mut d = TestDaemon::new("");
    let root = d.root.path().to_path_buf();
    let made = std::process::Command::new("openssl")
        .current_dir(&root)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes", "-days", "2", "-keyout", "key.pem", "-out", "cert.pem",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{}", common::stderr(&made));
    d.write_config(&format!(
        "{CLOSED}  anonymous_read: true\n  tls: {{cert: cert.pem, key: key.pem}}\n"
    ));
    d.spawn();
    write_renamed(&d.inbox(), "m.pt", b"weights");
    d.wait_versions("m", 1);
    let url = d.status().http.unwrap();
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "30", "--cacert"])
        .arg(root.join("cert.pem"))
        .args(["-H", "Host: models.lan:8443", &format!("{url}/models/m/v1")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        urls(&common::stdout(&out)),
        BTreeSet::from(["https://models.lan:8443".to_string()])
    );
}
