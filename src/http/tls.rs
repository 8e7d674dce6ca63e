//! HTTPS for the HTTP API (`http.tls`): the certificate chain and key read at start
//! (rustls, ring provider) and again on SIGHUP ([`Certificate::reload`]: a renewed
//! certificate serves new connections, a bad one leaves the one in use), each accepted
//! connection's handshake, and a plain-HTTP request sent to the HTTPS port answered with
//! a clear 400 instead of a broken handshake.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::{Config, TlsFiles};
use crate::error::{Error, Result};

/// The first byte of a TLS handshake record: anything else on the HTTPS port is not TLS.
const HANDSHAKE: u8 = 0x16;

/// The certificate the listener serves, shared with the daemon's SIGHUP handler, which
/// replaces it: each connection takes the one current when it is accepted, so a
/// connection under way keeps the certificate it was made with.
#[derive(Clone)]
pub struct Certificate(Arc<RwLock<TlsAcceptor>>);

impl Certificate {
    /// The certificate read from `tls` at start (fatal when it cannot be).
    pub(super) fn load(config: &Config, tls: &TlsFiles) -> Result<Certificate> {
        Ok(Certificate(Arc::new(RwLock::new(acceptor(config, tls)?))))
    }

    /// The acceptor for a connection accepted now.
    pub(super) fn current(&self) -> TlsAcceptor {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads `http.tls` of `config` again and serves it to connections accepted from now
    /// on; on an error (a missing file, a key of another certificate) the certificate in
    /// use stays, and the error (the file, the setting, the reason) is returned.
    pub fn reload(&self, config: &Config) -> Result<()> {
        let Some(tls) = config.http.as_ref().and_then(|h| h.tls.as_ref()) else {
            return Ok(());
        };
        let fresh = acceptor(config, tls)?;
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

/// The acceptor for `tls` (paths relative to the root), or why it cannot be made: the
/// file, and what is wrong with it.
fn acceptor(config: &Config, tls: &TlsFiles) -> Result<TlsAcceptor> {
    let (cert_path, key_path) = (config.root.join(&tls.cert), config.root.join(&tls.key));
    let bad = |path: &Path, key: &str, why: String| {
        Error::Other(format!(
            "cannot serve HTTPS: {} (http.tls.{key} in {}): {why}",
            path.display(),
            config.source
        ))
    };
    let read = |path: &PathBuf, key: &str| {
        std::fs::read(path).map_err(|e| bad(path, key, format!("cannot read it: {e}")))
    };
    let cert_pem = read(&cert_path, "cert")?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(&cert_path, "cert", format!("not a PEM certificate ({e})")))?;
    if certs.is_empty() {
        return Err(bad(
            &cert_path,
            "cert",
            "holds no certificate (no -----BEGIN CERTIFICATE----- block)".into(),
        ));
    }
    let key_pem = read(&key_path, "key")?;
    // Served anyway (the operator may have reasons), but said: a key others can read is
    // a certificate others can use.
    if let Ok(meta) = std::fs::metadata(&key_path) {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "the TLS key {} (http.tls.key) may be read by other users (mode {mode:o}); chmod 600 it",
                key_path.display()
            );
        }
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        bad(
            &key_path,
            "key",
            format!("not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Other(format!("cannot serve HTTPS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            bad(
                &key_path,
                "key",
                format!(
                    "does not go with the certificate {} ({e})",
                    cert_path.display()
                ),
            )
        })?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// The TLS side of an accepted connection, once its handshake is done within `timeout`;
/// `None` when it was not TLS (answered with a 400 saying to use https://), failed or
/// took too long (closed).
pub async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    timeout: Duration,
) -> Option<TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == HANDSHAKE => {}
        Ok(Ok(1)) => {
            plain_http(stream).await;
            return None;
        }
        _ => return None,
    }
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            if e.kind() != ErrorKind::UnexpectedEof {
                tracing::debug!("HTTPS handshake: {e}");
            }
            None
        }
        Err(_) => None,
    }
}

/// Answers a plain-HTTP request on the HTTPS port: a 400 whose JSON says to use https://,
/// then closes the connection.
async fn plain_http(mut stream: TcpStream) {
    let body = r#"{"error":{"code":"bad_request","message":"this port serves HTTPS (http.tls is set): use https:// in the URL"}}"#;
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        // The request is read first (what has come of it): a socket closed with unread
        // bytes is reset, and the client would see the reset instead of the answer.
        let mut buf = vec![0u8; 16 * 1024];
        let _ = stream.read(&mut buf).await;
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
