//! The `http:` section: the HTTP API's listener, off unless `http.listen` is set.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The longest a client may take to send a request's head, by default.
const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request body may go without reaching [`DEFAULT_BODY_MIN_RATE`], by
/// default: a window of this much waiting for the client.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// The slowest a request body may arrive, by default, in bytes per second averaged over
/// each `body_timeout` of waiting: 1 KiB/s (8 kbit/s, below any real link; a trickle of a
/// byte every few seconds is far below it).
pub const DEFAULT_BODY_MIN_RATE: u64 = 1024;

/// The largest upload accepted, by default: 10 GiB.
pub const DEFAULT_MAX_UPLOAD: u64 = 10 << 30;

/// The `http:` section as written; unknown keys refused.
#[derive(Debug, Default, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    listen: Option<String>,
    header_timeout: Option<String>,
    anonymous_read: Option<bool>,
    anonymous_metrics: Option<bool>,
    public_url: Option<String>,
    max_upload: Option<String>,
    body_timeout: Option<String>,
    body_min_rate: Option<String>,
    tls: Option<RawTls>,
}

/// `http.tls:` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    cert: Option<String>,
    key: Option<String>,
}

/// `http.tls`: the PEM files HTTPS is served with (read at start and on each SIGHUP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain (PEM, the server's certificate first), relative to the root
    /// unless absolute.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1), relative to the root unless
    /// absolute.
    pub key: PathBuf,
}

/// The validated HTTP settings. Present only when `http.listen` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// The address the HTTP API listens on (`127.0.0.1:8080`; port 0: any free port,
    /// shown in the log and in `status`).
    pub listen: SocketAddr,
    /// How long a client may take to send a request's line and headers; a slower one
    /// is answered 408 and closed, so slow senders cannot hold connections open.
    pub header_timeout: Duration,
    /// Whether reading (the catalog, downloads) needs no token. Off by default: an API
    /// reachable from the network shows nothing to a caller without a token.
    pub anonymous_read: bool,
    /// Whether `/metrics` needs no token (for a Prometheus without one). Off by default;
    /// it tells counts and timings by route template, never a model's name.
    pub anonymous_metrics: bool,
    /// The URL other machines reach the API at (`https://models.example.org`, no trailing
    /// `/`), for the links and commands the dashboard shows: behind a TLS proxy, what
    /// the daemon sees of a request (plain HTTP, the proxy's `Host`) does not say it.
    pub public_url: Option<String>,
    /// The largest upload body accepted, in bytes (a larger one is answered 413 as
    /// soon as it passes the limit, whatever its Content-Length said).
    pub max_upload: u64,
    /// The window a request body is measured over: each `body_timeout` spent waiting for
    /// the client must bring at least `body_min_rate` bytes a second (and at least one
    /// byte), or the request is answered 408 and the connection closed, so a client
    /// trickling a body cannot hold a connection for ever.
    pub body_timeout: Duration,
    /// The slowest a request body may arrive, in bytes per second (see `body_timeout`).
    pub body_min_rate: u64,
    /// HTTPS instead of HTTP, from these files; `None`: plain HTTP.
    pub tls: Option<TlsFiles>,
}

/// Validates the `http:` section (`shown` names the settings file in errors).
pub(super) fn validate(shown: &str, raw: Option<RawHttp>) -> Result<Option<HttpConfig>> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let bad = |key: &str, reason: String| Error::Config {
        path: shown.to_string(),
        key: format!("http.{key}"),
        reason,
    };
    let Some(listen) = raw.listen else {
        return Err(bad(
            "listen",
            "missing: write an address such as 127.0.0.1:8080 (or remove `http:` to keep \
             the HTTP API off)"
                .into(),
        ));
    };
    let listen: SocketAddr = listen.trim().parse().map_err(|_| {
        bad(
            "listen",
            format!(
                "`{listen}` is not an address with a port, such as 127.0.0.1:8080 or [::1]:8080"
            ),
        )
    })?;
    // A duration within bounds, or the default when not set.
    let timeout = |key: &str, v: Option<String>, default: Duration, max: Duration, range: &str| {
        let Some(v) = v else {
            return Ok(default);
        };
        let d = humantime::parse_duration(v.trim()).map_err(|e| {
            bad(
                key,
                format!("`{v}` is not a duration ({e}); write e.g. 10s"),
            )
        })?;
        if d < Duration::from_millis(100) || d > max {
            return Err(bad(key, format!("{v} is out of range ({range})")));
        }
        Ok(d)
    };
    let header_timeout = timeout(
        "header_timeout",
        raw.header_timeout,
        DEFAULT_HEADER_TIMEOUT,
        Duration::from_secs(300),
        "100ms to 5m",
    )?;
    let max_upload = match raw.max_upload {
        None => DEFAULT_MAX_UPLOAD,
        Some(v) => parse_size(v.trim()).filter(|n| *n > 0).ok_or_else(|| {
            bad(
                "max_upload",
                format!("`{v}` is not a size; write a number of bytes or e.g. 500MiB, 10GiB"),
            )
        })?,
    };
    let body_timeout = timeout(
        "body_timeout",
        raw.body_timeout,
        DEFAULT_BODY_TIMEOUT,
        Duration::from_secs(3600),
        "100ms to 1h",
    )?;
    let body_min_rate = match raw.body_min_rate {
        None => DEFAULT_BODY_MIN_RATE,
        Some(v) => {
            let t = v.trim();
            parse_size(t.strip_suffix("/s").unwrap_or(t)).ok_or_else(|| {
                bad(
                    "body_min_rate",
                    format!("`{v}` is not a rate; write bytes a second such as 1KiB/s (0: only an idle body is cut)"),
                )
            })?
        }
    };
    let tls = match raw.tls {
        None => None,
        Some(t) => {
            let path = |v: Option<String>, key: &str| match v.map(|v| v.trim().to_string()) {
                Some(v) if !v.is_empty() => Ok(PathBuf::from(v)),
                _ => Err(bad(
                    &format!("tls.{key}"),
                    format!(
                        "missing: write the path of a PEM {key} file (or remove `tls:` for plain HTTP)"
                    ),
                )),
            };
            Some(TlsFiles {
                cert: path(t.cert, "cert")?,
                key: path(t.key, "key")?,
            })
        }
    };
    let public_url = match raw.public_url {
        None => None,
        Some(v) => {
            Some(public_url(v.trim()).map_err(|why| bad("public_url", format!("`{v}` {why}")))?)
        }
    };
    Ok(Some(HttpConfig {
        listen,
        header_timeout,
        anonymous_read: raw.anonymous_read.unwrap_or(false),
        anonymous_metrics: raw.anonymous_metrics.unwrap_or(false),
        public_url,
        max_upload,
        body_timeout,
        body_min_rate,
        tls,
    }))
}

/// `http(s)://host[:port]` with at most a trailing `/` (dropped): the dashboard's links
/// are absolute paths, so a proxy serving the API under a path prefix would break them.
fn public_url(v: &str) -> std::result::Result<String, &'static str> {
    const NOT_A_URL: &str =
        "is not an http:// or https:// URL; write e.g. https://models.example.org";
    let (scheme, rest) = v.split_once("://").ok_or(NOT_A_URL)?;
    // Schemes are read in any case (RFC 3986); printed in lower case.
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(NOT_A_URL);
    }
    let host = rest.strip_suffix('/').unwrap_or(rest);
    if host.is_empty() {
        return Err("names no host; write e.g. https://models.example.org");
    }
    // What the dashboard prints into shell commands: nothing a shell or HTML would read.
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    {
        return Err(
            "has a path, query or character other than a host and port; the API is served at the root of its address (https://models.example.org)",
        );
    }
    // A host, `[v6]`, then at most one `:port` of 1 to 65535.
    let (name, port) = match host.strip_prefix('[') {
        Some(v6) => {
            let (addr, after) = v6.split_once(']').ok_or("has a `[` without its `]`")?;
            if addr.is_empty() || addr.contains('[') || after.contains(']') {
                return Err("has a malformed [IPv6] host");
            }
            match after {
                "" => ("v6", None),
                p => (
                    "v6",
                    Some(
                        p.strip_prefix(':')
                            .ok_or("has text after its [IPv6] host")?,
                    ),
                ),
            }
        }
        None => match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        },
    };
    if name.is_empty() || name.contains(['[', ']']) {
        return Err("names no plain host; write e.g. https://models.example.org");
    }
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err("has a port that is not a number from 1 to 65535");
    }
    Ok(format!("{scheme}://{host}"))
}

/// A size: bytes, or a number with KiB, MiB, GiB, TiB (or KB, MB, GB, TB: powers of 10).
pub(super) fn parse_size(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::super::test_config;
    use std::time::Duration;

    #[test]
    fn http_is_off_unless_listen_is_set() {
        assert!(test_config("").unwrap().http.is_none());
        let c = test_config("http: {listen: \"127.0.0.1:0\", header_timeout: 2s}\n").unwrap();
        let h = c.http.unwrap();
        assert_eq!(h.listen.to_string(), "127.0.0.1:0");
        assert_eq!(h.header_timeout, Duration::from_secs(2));
        assert!(!h.anonymous_read);
        assert!(!h.anonymous_metrics);
        assert_eq!(h.public_url, None);
        assert_eq!(h.max_upload, super::DEFAULT_MAX_UPLOAD);
        assert_eq!(h.body_timeout, super::DEFAULT_BODY_TIMEOUT);
        assert_eq!(h.body_min_rate, super::DEFAULT_BODY_MIN_RATE);
        let c = test_config(
            "http: {listen: \"127.0.0.1:0\", body_timeout: 2s, body_min_rate: 10KiB/s}\n",
        )
        .unwrap();
        let h = c.http.unwrap();
        assert_eq!(h.body_timeout, Duration::from_secs(2));
        assert_eq!(h.body_min_rate, 10 << 10);
        let e = test_config("http: {listen: \"127.0.0.1:0\", body_min_rate: fast}\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("http.body_min_rate: `fast` is not a rate"),
            "{e}"
        );
        let c = test_config(
            "http: {listen: \"127.0.0.1:0\", anonymous_read: true, max_upload: 5MiB}\n",
        )
        .unwrap();
        let h = c.http.unwrap();
        assert!(h.anonymous_read);
        assert_eq!(h.max_upload, 5 << 20);
        let e = test_config("http: {listen: \"127.0.0.1:0\", max_upload: 5 parsecs}\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("http.max_upload: `5 parsecs` is not a size"),
            "{e}"
        );
    }

    #[test]
    fn tls_takes_a_cert_and_a_key() {
        let c = test_config("http: {listen: \"127.0.0.1:0\", tls: {cert: c.pem, key: /k.pem}}\n")
            .unwrap();
        let t = c.http.unwrap().tls.unwrap();
        assert_eq!(
            (t.cert.to_str(), t.key.to_str()),
            (Some("c.pem"), Some("/k.pem"))
        );
        let e = test_config("http: {listen: \"127.0.0.1:0\", tls: {key: k.pem}}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("http.tls.cert: missing"), "{e}");
    }

    #[test]
    fn a_bad_http_section_names_its_key() {
        let e = test_config("http: {}\n").unwrap_err().to_string();
        assert!(e.contains("http.listen: missing"), "{e}");
        let e = test_config("http: {listen: localhost}\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("http.listen: `localhost` is not an address"),
            "{e}"
        );
        let e = test_config("http: {listen: \"127.0.0.1:1\", header_timeout: 1h}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("http.header_timeout: 1h is out of range"), "{e}");
        let e = test_config("http:\n  listen: 127.0.0.1:1\n  port: 3\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(":3:") && e.contains("unknown field `port`"),
            "{e}"
        );
    }

    #[test]
    fn public_url_is_a_scheme_and_host_only() {
        let url = |v: &str| {
            test_config(&format!(
                "http: {{listen: \"127.0.0.1:1\", public_url: \"{v}\"}}\n"
            ))
            .map(|c| c.http.unwrap().public_url.unwrap())
            .map_err(|e| e.to_string())
        };
        assert_eq!(
            url("https://models.example.org/").unwrap(),
            "https://models.example.org"
        );
        assert_eq!(url("http://[::1]:8080").unwrap(), "http://[::1]:8080");
        assert_eq!(url("HTTPS://H.org:443").unwrap(), "https://H.org:443");
        for bad in [
            "https://h:99999",
            "https://h:0",
            "https://x:1:2",
            "https://h:",
            "https://[::1",
            "https://[::1]x",
            "models.example.org",
            "ftp://x",
            "https://",
            "https://x/modelreg",
            "https://x?a=1",
            "https://x y",
        ] {
            let e = url(bad).unwrap_err();
            assert!(e.contains("http.public_url: `"), "{bad}: {e}");
        }
    }
}
