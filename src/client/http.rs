//! The HTTP API's side of [`Client`](super::Client), for a machine other than the
//! daemon's: each request on a connection of its own (HTTP/1.1, `Connection: close`; a
//! CLI command makes one to three), the socket's request mapped to its route
//! (docs/http.md), and the answer's JSON, or its error body with the socket's code, read
//! back into the very types the socket gives. `https://` is spoken with rustls, trusting
//! the system's certificate authorities or the one file `--cacert` names.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::utf8_percent_encode;

use super::routes::SEGMENT;
use serde_json::{Map, Value};

use super::ClientError;
use super::wire::{self, Answer, ReadAt, Stream, read_answer};
use crate::protocol::{ErrorBody, Request, VersionInfo, Waited};

/// How long connecting may take before the address is called unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The API's address and the token sent with every request.
pub(super) struct Http {
    /// The URL as given, without a trailing `/`, for messages.
    url: String,
    /// `host:port` (as given: the `Host` header) and where to connect.
    authority: String,
    host: String,
    port: u16,
    /// A path a reverse proxy serves the API under (`/modelreg`), or empty.
    prefix: String,
    token: Option<String>,
    /// For `https://`: whom to trust.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// How long to wait for an answer.
    pub(super) timeout: Duration,
}

impl Http {
    /// Checks `url` (`http[s]://host[:port][/prefix]`) and `token`, and reads the
    /// certificate authorities for `https://` (`cacert`, else the system's); connects to
    /// nothing yet.
    pub(super) fn new(
        url: &str,
        token: Option<String>,
        cacert: Option<&Path>,
    ) -> Result<Http, ClientError> {
        let bad = |reason: &str| ClientError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let (rest, https) = if let Some(r) = url.strip_prefix("http://") {
            (r, false)
        } else if let Some(r) = url.strip_prefix("https://") {
            (r, true)
        } else {
            return Err(bad(
                "expected http://HOST:PORT or https://HOST:PORT, e.g. http://gpu-box:8080",
            ));
        };
        if rest.contains(['?', '#']) {
            return Err(bad("a query or fragment has no place in the API's address"));
        }
        let (authority, prefix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.contains('@') {
            return Err(bad(
                "credentials in the URL are not sent; give a token with --token-file or $MODELREG_TOKEN",
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| bad("the port is not a number"))?;
                (h, port)
            }
            _ => (authority, if https { 443 } else { 80 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if let Some(t) = &token
            && (t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(bad(
                "the token is empty or has characters a header cannot carry (spaces, line breaks, non-ASCII)",
            ));
        }
        let tls = match https {
            true => Some(super::tls::config(cacert).map_err(|e| bad(&e))?),
            false => None,
        };
        Ok(Http {
            tls,
            url: url.trim_end_matches('/').to_string(),
            authority: authority.to_string(),
            host: host.to_string(),
            port,
            prefix: prefix.trim_end_matches('/').to_string(),
            token,
            timeout: Duration::from_secs(60),
        })
    }

    /// The URL as given.
    pub(super) fn url(&self) -> &str {
        &self.url
    }

    /// Sends `req` to its route and returns the answer's JSON, or its error.
    pub(super) fn call(&mut self, req: &Request) -> Result<Value, ClientError> {
        let route = super::routes::route(req).ok_or_else(|| ClientError::NotOverHttp {
            op: req.op().to_string(),
            url: self.url.clone(),
        })?;
        let target = format!("{}{}", self.prefix, route.target);
        let answer = match &route.body {
            Some(b) => {
                let json = [("Content-Type", "application/json".to_string())];
                let len = b.len() as u64;
                self.send(route.method, &target, &json, Some((&mut b.as_bytes(), len)))?
            }
            None => self.send(route.method, &target, &[], None)?,
        };
        self.result(answer)
    }

    /// Uploads a file (`filename`: its name in the store) or, without one, a folder as a
    /// tar of `len` bytes read from `body`, as the next version of `name`. `sha256`, when
    /// given, is checked by the daemon against the bytes it received before anything is
    /// handed over.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn upload(
        &mut self,
        name: &str,
        filename: Option<&str>,
        body: &mut dyn Read,
        len: u64,
        sha256: Option<&str>,
        metrics: Option<&Map<String, Value>>,
        metadata: Option<&Map<String, Value>>,
    ) -> Result<Waited, ClientError> {
        let enc = |s: &str| utf8_percent_encode(s, SEGMENT).to_string();
        let mut target = format!("{}/api/v1/models/{}/upload", self.prefix, enc(name));
        if let Some(f) = filename {
            target.push_str(&format!("?filename={}", enc(f)));
        }
        let kind = if filename.is_some() {
            "application/octet-stream"
        } else {
            "application/x-tar"
        };
        let mut headers = vec![("Content-Type", kind.to_string())];
        if let Some(s) = sha256 {
            headers.push(("X-Content-Sha256", s.to_string()));
        }
        let json = |m: &Map<String, Value>| Value::Object(m.clone()).to_string();
        if let Some(m) = metrics.filter(|m| !m.is_empty()) {
            headers.push(("X-Modelreg-Metrics", json(m)));
        }
        if let Some(m) = metadata.filter(|m| !m.is_empty()) {
            headers.push(("X-Modelreg-Metadata", json(m)));
        }
        // Cut off before the answer, the version may have been made or not.
        let answer = self
            .send("PUT", &target, &headers, Some((body, len)))
            .map_err(|e| match e {
                ClientError::Protocol(m) => ClientError::Protocol(format!(
                    "{m}; {name} may or may not have been registered: check with `modelreg versions {name}`"
                )),
                e => e,
            })?;
        let created = answer.status == 201;
        let version: VersionInfo = serde_json::from_value(self.result(answer)?)
            .map_err(|e| ClientError::Protocol(format!("{}: {e}", self.url)))?;
        Ok(Waited { created, version })
    }

    /// [`upload`](Self::upload) of the open `file`, hashed first.
    pub(super) fn upload_file(
        &mut self,
        name: &str,
        filename: &str,
        file: &std::fs::File,
        metrics: Option<Map<String, Value>>,
        metadata: Option<Map<String, Value>>,
    ) -> Result<Waited, ClientError> {
        let io = |e: std::io::Error| {
            ClientError::Protocol(format!("reading the file to upload as {filename}: {e}"))
        };
        let len = file.metadata().map_err(io)?.len();
        // Hashed from the descriptor, so what is hashed is what is sent.
        let sha = wire::sha256_of(file).map_err(io)?;
        self.upload(
            name,
            Some(filename),
            &mut ReadAt::new(file),
            len,
            Some(&sha),
            metrics.as_ref(),
            metadata.as_ref(),
        )
    }

    /// The JSON of a successful answer, or the error it carries.
    fn result(&self, a: Answer) -> Result<Value, ClientError> {
        let body: Option<Value> = serde_json::from_slice(&a.body).ok();
        if (200..300).contains(&a.status)
            && let Some(v) = body
        {
            return Ok(v);
        }
        let error = body
            .as_ref()
            .and_then(|b| serde_json::from_value::<ErrorBody>(b["error"].clone()).ok());
        match (a.status, error) {
            (401 | 403, e) => Err(ClientError::Unauthorized {
                url: self.url.clone(),
                message: e
                    .map(|e| e.message)
                    .unwrap_or_else(|| format!("HTTP {}", a.status)),
                token_given: self.token.is_some(),
            }),
            (_, Some(e)) => Err(ClientError::Remote(e)),
            (status, None) => {
                let text = String::from_utf8_lossy(&a.body);
                let snippet: String = text.chars().take(200).collect();
                Err(ClientError::Protocol(format!(
                    "{} answered HTTP {status} without a modelreg answer (is it the modelreg API, or a proxy in front of it?): {snippet:?}",
                    self.url
                )))
            }
        }
    }

    /// Sends one request on a new connection and reads its whole answer.
    fn send(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, String)],
        body: Option<(&mut dyn Read, u64)>,
    ) -> Result<Answer, ClientError> {
        let (mut stream, sent) = self.write_request(method, target, headers, body)?;
        // The daemon may refuse an upload before reading it all (too large, refused
        // token) and close: its answer says why, so it is read before the write's error.
        let answer = read_answer(&mut stream).map_err(|e| self.talk(e));
        match (sent, answer) {
            (_, Ok(a)) => Ok(a),
            (Err(e), Err(_)) => Err(self.talk(e)),
            (Ok(()), Err(e)) => Err(e),
        }
    }

    /// A failure mid-way, said with the URL.
    fn talk(&self, e: std::io::Error) -> ClientError {
        let e = if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            format!("no answer within {} s", self.timeout.as_secs())
        } else if e.to_string().contains("certificate") {
            format!(
                "{e} (name the authority that signed the API's certificate with --cacert FILE or $MODELREG_CACERT)"
            )
        } else {
            e.to_string()
        };
        ClientError::Protocol(format!("talking to {}: {e}", self.url))
    }

    /// Connects and writes one request (head and body); the write's own outcome is
    /// returned beside the connection, whose answer may still say more.
    fn write_request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, String)],
        body: Option<(&mut dyn Read, u64)>,
    ) -> Result<(Stream, std::io::Result<()>), ClientError> {
        let mut stream = self.connect()?;
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nUser-Agent: modelreg/{}\r\nConnection: close\r\n",
            self.authority,
            env!("CARGO_PKG_VERSION")
        );
        if let Some(t) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        let len = body.as_ref().map_or(0, |(_, n)| *n);
        if body.is_some() || method != "GET" {
            head.push_str(&format!("Content-Length: {len}\r\n"));
        }
        head.push_str("\r\n");
        let sent = stream.write_all(head.as_bytes()).and_then(|()| match body {
            Some((r, n)) => {
                let copied = std::io::copy(&mut r.take(n), &mut stream)?;
                if copied < n {
                    return Err(std::io::Error::other(format!(
                        "the body ended after {copied} of {n} bytes (changed while sent?)"
                    )));
                }
                Ok(())
            }
            None => Ok(()),
        });
        Ok((stream, sent))
    }

    /// Opens the stream at `target` (`GET`, `Accept: text/event-stream`) and hands its
    /// body to `read` (with whether it is chunked) once the answer is 200; any other
    /// answer is the error it carries (400, 410 with where to start again, 401, ...).
    pub(super) fn stream(
        &self,
        target: &str,
        read: &mut dyn FnMut(&mut dyn std::io::BufRead, bool) -> Result<Value, ClientError>,
    ) -> Result<Value, ClientError> {
        let target = format!("{}{target}", self.prefix);
        let accept = [("Accept", "text/event-stream".to_string())];
        let (mut stream, sent) = self.write_request("GET", &target, &accept, None)?;
        sent.map_err(|e| self.talk(e))?;
        let mut r = std::io::BufReader::new(&mut stream);
        let head = wire::read_head(&mut r).map_err(|e| self.talk(e))?;
        if head.status != 200 {
            let body = wire::read_body(&mut r, &head).map_err(|e| self.talk(e))?;
            let status = head.status;
            return Err(self
                .result(Answer { status, body })
                .err()
                .unwrap_or_else(|| {
                    ClientError::Protocol(format!("{}: HTTP {status} for {target}", self.url))
                }));
        }
        read(&mut r, head.chunked)
    }

    /// Appends the file `rel` of `name` `version` to `part` from its current length
    /// `have` (`Range`, with `If-Range` naming the file's ETag `"sha256"` so that the
    /// bytes kept are only ever extended by the same file's), or replaces `part` when the
    /// daemon sends the whole file. `Ok(Err(reason))` when the connection ended early:
    /// what came is kept, and a next call resumes from there.
    pub(super) fn fetch(
        &self,
        name: &str,
        version: &str,
        rel: &str,
        sha256: &str,
        part: &mut super::partial::Partial,
        have: u64,
    ) -> Result<Result<(), String>, ClientError> {
        let enc = |s: &str| utf8_percent_encode(s, SEGMENT).to_string();
        let path: Vec<String> = rel.split('/').map(enc).collect();
        let target = format!(
            "{}/api/v1/models/{}/versions/{}/files/{}",
            self.prefix,
            enc(name),
            enc(version),
            path.join("/")
        );
        let range = [
            ("Range", format!("bytes={have}-")),
            ("If-Range", format!("\"{sha256}\"")),
        ];
        let headers: &[(&str, String)] = if have > 0 { &range } else { &[] };
        let mut stream = match self.write_request("GET", &target, headers, None) {
            Ok((s, Ok(()))) => s,
            Ok((_, Err(e))) => return Ok(Err(e.to_string())),
            Err(ClientError::Unreachable { reason, .. }) => return Ok(Err(reason)),
            Err(e) => return Err(e),
        };
        let mut r = std::io::BufReader::new(&mut stream);
        let head = match wire::read_head(&mut r) {
            Ok(h) => h,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let io = |e: std::io::Error| {
            ClientError::Protocol(format!("writing {}: {e}", part.path.display()))
        };
        let out = &mut part.file;
        // The open partial (no name looked up again): appended to, or emptied for a
        // whole file.
        let at = match head.status {
            206 => SeekFrom::End(0),
            200 => {
                out.set_len(0).map_err(io)?;
                SeekFrom::Start(0)
            }
            416 => {
                // Kept bytes as long as the file or longer: start again.
                out.set_len(0).map_err(io)?;
                return Ok(Ok(()));
            }
            status => {
                let body = wire::read_body(&mut r, &head).map_err(|e| self.talk(e))?;
                return Err(self
                    .result(Answer { status, body })
                    .err()
                    .unwrap_or_else(|| {
                        ClientError::Protocol(format!("{}: HTTP {status} for {target}", self.url))
                    }));
            }
        };
        out.seek(at).map_err(io)?;
        let want = head.length.ok_or_else(|| {
            ClientError::Protocol(format!("{}: a download without Content-Length", self.url))
        })?;
        let copied = std::io::copy(&mut r.by_ref().take(want), out);
        out.sync_all().map_err(io)?;
        match copied {
            Ok(n) if n == want => Ok(Ok(())),
            Ok(n) => Ok(Err(format!("{} of {want} bytes came", n))),
            Err(e) => Ok(Err(e.to_string())),
        }
    }

    /// A connection to the API (TLS for `https://`), with the answer timeout set.
    fn connect(&self) -> Result<Stream, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            url: self.url.clone(),
            reason,
        };
        let addrs: Vec<_> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| unreachable(format!("cannot resolve {}: {e}", self.host)))?
            .collect();
        let mut last = format!("{} resolves to no address", self.host);
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(s) => {
                    let io = |e: std::io::Error| unreachable(e.to_string());
                    s.set_read_timeout(Some(self.timeout)).map_err(io)?;
                    s.set_write_timeout(Some(self.timeout)).map_err(io)?;
                    let Some(tls) = &self.tls else {
                        return Ok(Stream::Plain(s));
                    };
                    let name = rustls_pki_types::ServerName::try_from(self.host.clone())
                        .map_err(|e| unreachable(format!("{}: {e}", self.host)))?;
                    let conn = rustls::ClientConnection::new(tls.clone(), name)
                        .map_err(|e| unreachable(e.to_string()))?;
                    return Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(conn, s))));
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(unreachable(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_or_refused_with_a_reason() {
        let h = Http::new("http://gpu-box:8080/", None, None).unwrap();
        assert_eq!(
            (h.host.as_str(), h.port, h.prefix.as_str()),
            ("gpu-box", 8080, "")
        );
        let h = Http::new("http://[::1]:9000/modelreg/", None, None).unwrap();
        assert_eq!(
            (h.host.as_str(), h.port, h.prefix.as_str()),
            ("::1", 9000, "/modelreg")
        );
        let h = Http::new("http://example.org", None, None).unwrap();
        assert_eq!(h.port, 80);
        for bad in [
            "ftp://x:1",
            "gpu-box:8080",
            "http://x:port",
            "http://u:p@x:1",
            "http://x:1/?q",
            "http://:1",
        ] {
            assert!(Http::new(bad, None, None).is_err(), "{bad}");
        }
        assert!(Http::new("http://x:1", Some("mr_a b".into()), None).is_err());
    }
}
