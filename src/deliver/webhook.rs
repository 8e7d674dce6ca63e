//! One POST of an event to a webhook: signed (HMAC-SHA256 over `"<timestamp>.<body>"`),
//! over http or https (the system's certificate authorities), within a timeout.

use std::sync::Arc;

use axum::body::Body;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};

use crate::config::WebhookConfig;

/// Why an attempt failed, and whether it counts against `retries`.
#[derive(Debug)]
pub(super) struct Failure {
    /// What went wrong, for the log and `status`.
    pub why: String,
    /// The receiver refused the event (4xx other than 401, 403, 408, 429): retried `retries`
    /// times, then skipped. Anything else (no connection, a timeout, 5xx, 401, 403, 408, 429) is
    /// retried until delivered.
    pub refused: bool,
}

fn transient(why: String) -> Failure {
    Failure {
        why,
        refused: false,
    }
}

/// HMAC-SHA256 (RFC 2104) of `msg` under `key`.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    let mut out = [0u8; 32];
    out.copy_from_slice(&outer.finalize());
    out
}

/// The `X-Modelreg-Signature` value for `body` sent at `timestamp` (Unix seconds).
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut msg = format!("{timestamp}.").into_bytes();
    msg.extend_from_slice(body);
    format!("sha256={}", crate::fsutil::hex(&hmac_sha256(secret, &msg)))
}

/// An open connection to an endpoint, kept between its events: a new TCP connection
/// (and, over https, a TLS handshake) per event cost the daemon more CPU than the rest
/// of a delivery together, beside a burst of registrations.
pub(super) struct Kept {
    sender: hyper::client::conn::http1::SendRequest<Body>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Posts `body` (event `seq`) to `w.url`, within `w.on.timeout` for the whole attempt,
/// on the connection in `kept` when there is one that is still open (a receiver may
/// close an idle one: then once more on a new connection), leaving the connection there
/// for the next event unless the receiver asked to close it.
pub(super) async fn post(
    w: &WebhookConfig,
    seq: u64,
    body: &[u8],
    tls: Option<&Arc<rustls::ClientConfig>>,
    kept: &mut Option<Kept>,
) -> Result<(), Failure> {
    match tokio::time::timeout(w.on.timeout, attempt(w, seq, body, tls, kept)).await {
        Ok(r) => r,
        Err(_) => Err(transient(format!(
            "no answer within {}",
            humantime::format_duration(w.on.timeout)
        ))),
    }
}

async fn attempt(
    w: &WebhookConfig,
    seq: u64,
    body: &[u8],
    tls: Option<&Arc<rustls::ClientConfig>>,
    kept: &mut Option<Kept>,
) -> Result<(), Failure> {
    let uri: hyper::Uri = w
        .url
        .parse()
        .map_err(|e| transient(format!("{}: {e}", w.url)))?;
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let req = || request(w, &uri, seq, timestamp, body);
    let mut reused = None;
    if let Some(mut k) = kept.take()
        && k.sender.ready().await.is_ok()
    {
        // An error: closed by the receiver meanwhile; sent again on a new connection
        // (it may have had it: at least once, and the seq is the idempotency key).
        if let Ok(a) = k.sender.send_request(req()?).await {
            reused = Some((a, k));
        }
    }
    let (answer, k) = match reused {
        Some(a) => a,
        None => {
            let mut k = connect(&uri, tls).await?;
            let a = (k.sender.send_request(req()?).await)
                .map_err(|e| transient(format!("HTTP: {e}")))?;
            (a, k)
        }
    };
    let status = answer.status();
    let closing = answer
        .headers()
        .get(hyper::header::CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    // The answer's body is read to its end (up to 64 KiB; more, and the connection is
    // not kept), or the connection cannot carry the next request.
    let read = axum::body::to_bytes(Body::new(answer.into_body()), 64 << 10).await;
    if !closing && read.is_ok() {
        *kept = Some(k);
    }
    match status.as_u16() {
        200..=299 => Ok(()),
        // 401/403: most often a secret or token being rotated on one side first;
        // skipping would lose every event until both sides agree, so they wait too.
        code @ (401 | 403 | 408 | 429) => Err(transient(format!("answered {code}"))),
        code @ 400..=499 => Err(Failure {
            why: format!("refused: answered {code}"),
            refused: true,
        }),
        code => Err(transient(format!("answered {code}"))),
    }
}

/// The signed POST of `body` to `uri`.
fn request(
    w: &WebhookConfig,
    uri: &hyper::Uri,
    seq: u64,
    timestamp: u64,
    body: &[u8],
) -> Result<hyper::Request<Body>, Failure> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or("", |a| a.as_str());
    hyper::Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::CONTENT_LENGTH, body.len())
        .header(
            hyper::header::USER_AGENT,
            concat!("modelreg/", env!("CARGO_PKG_VERSION")),
        )
        .header("X-Modelreg-Event-Seq", seq)
        .header("X-Modelreg-Timestamp", timestamp)
        .header(
            "X-Modelreg-Signature",
            signature(&w.secret, timestamp, body),
        )
        .body(Body::from(body.to_vec()))
        .map_err(|e| transient(format!("building the request: {e}")))
}

/// A new connection to `uri`'s host (TLS over it for https), HTTP/1.1, its driver
/// running beside it.
async fn connect(
    uri: &hyper::Uri,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Kept, Failure> {
    let https = uri
        .scheme_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("https"));
    let host = uri.host().unwrap_or_default().to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
        .await
        .map_err(|e| transient(format!("connecting to {host}:{port}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    if !https {
        return handshake(tcp).await;
    }
    let Some(tls) = tls else {
        return Err(transient(
            "https: the system's certificate authorities could not be read (see the log)".into(),
        ));
    };
    let name = rustls_pki_types::ServerName::try_from(bare)
        .map_err(|e| transient(format!("{host}: {e}")))?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| {
            // rustls names the certificate problem in its own words
            // (`CaUsedAsEndEntity`, `UnknownIssuer`): say what usually fixes it.
            let hint = if e.to_string().contains("certificate") {
                " (a self-signed certificate or a private authority: give the webhook `ca_file:`)"
            } else {
                ""
            };
            transient(format!("TLS with {host}:{port}: {e}{hint}"))
        })?;
    handshake(stream).await
}

/// HTTP/1.1 on `stream`, its connection driven by a task of its own.
async fn handshake<S>(stream: S) -> Result<Kept, Failure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| transient(format!("HTTP: {e}")))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Kept { sender, driver })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231, test case 2.
        assert_eq!(
            crate::fsutil::hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block is hashed first.
        assert_eq!(
            crate::fsutil::hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        assert_eq!(
            signature(b"k", 5, b"{}"),
            format!("sha256={}", crate::fsutil::hex(&hmac_sha256(b"k", b"5.{}")))
        );
    }
}
