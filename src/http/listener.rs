//! Binding the HTTP listener and accepting connections: each served by hyper's HTTP/1
//! (over TLS when `http.tls` is set) with bounded headers and a header read timeout, at
//! most a fixed number at once and a fixed share of them per client address, and
//! stopped gracefully (requests under way finish, within [`GRACE`]) at shutdown.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{HttpState, router};
use crate::config::{Config, HttpConfig};
use crate::error::{Error, Result};

/// The most bytes a request's line and headers may take: a longer head is answered 431
/// and the connection closed (hyper's read buffer limit; it holds the head whole).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most header fields a request may have (431 beyond).
pub const MAX_HEADERS: usize = 100;
/// The most HTTP connections open at once; beyond it a new one is answered 503 `busy`.
pub const MAX_CONNECTIONS: usize = 4096;
/// The share of the connection limit one client address (an IPv6 /64) may hold: a host
/// opening connections it never uses (no token needed for that) cannot take every slot.
/// Loopback is not limited: a reverse proxy on the same machine brings every client.
pub const PER_CLIENT_SHARE: usize = 8;
/// Connections the kernel completes before they are accepted (capped by
/// net.core.somaxconn): a burst of a thousand clients connecting at once is queued, not
/// dropped (a dropped SYN costs the client a second).
const BACKLOG: u32 = 4096;
/// How long requests under way may take to finish once the daemon stops; connections
/// still open then are closed.
pub const GRACE: Duration = Duration::from_secs(5);

/// A bound HTTP listener and the address it got (port 0 in the settings: any free port).
pub struct Bound {
    listener: TcpListener,
    /// The address bound.
    pub addr: SocketAddr,
    /// HTTPS: the certificate every connection's handshake is made with (`http.tls`).
    tls: Option<super::tls::Certificate>,
}

impl Bound {
    /// The URL it serves, `http://` or `https://` with the address bound.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// HTTPS: the certificate served, for SIGHUP to replace ([`super::tls::Certificate::reload`]).
    pub fn certificate(&self) -> Option<super::tls::Certificate> {
        self.tls.clone()
    }
}

/// Binds `http.listen` when it is set, and reads `http.tls`'s certificate and key.
/// Failing either is fatal at start, like the socket; it is done before anything is
/// made in the root, so a refused start leaves nothing behind.
pub async fn bind(config: &Config) -> Result<Option<Bound>> {
    let Some(HttpConfig { listen, tls, .. }) = &config.http else {
        return Ok(None);
    };
    let tls = tls
        .as_ref()
        .map(|t| super::tls::Certificate::load(config, t))
        .transpose()?;
    let refused = |e: std::io::Error| {
        Error::Other(format!(
            "cannot listen for HTTP on {listen} (http.listen in {}): {e}",
            config.source
        ))
    };
    let socket = if listen.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(refused)?;
    // A restart may bind while the last run's connections linger in TIME_WAIT.
    socket.set_reuseaddr(true).map_err(refused)?;
    socket.bind(*listen).map_err(refused)?;
    let listener = socket.listen(BACKLOG).map_err(refused)?;
    let addr = listener.local_addr().map_err(refused)?;
    Ok(Some(Bound {
        listener,
        addr,
        tls,
    }))
}

/// Starts serving `bound`: its address is in `status` before this returns (so a client
/// that sees the daemon ready finds it there), then [`serve`] runs as a task.
pub fn start(bound: Bound, state: HttpState) -> tokio::task::JoinHandle<()> {
    let limit = MAX_CONNECTIONS
        .min(crate::server::connection_limit() / 2)
        .max(16);
    tracing::info!(
        "HTTP API on {} (up to {limit} connections, {} per client address)",
        bound.url(),
        per_client(limit)
    );
    state.ctx.board.set_http(bound.url());
    tokio::spawn(serve(bound, state, limit))
}

/// Accepts connections (at most `limit` at once) until the daemon stops, then lets the
/// requests under way finish (at most [`GRACE`]) and closes the rest.
async fn serve(bound: Bound, state: HttpState, limit: usize) {
    let app = router(state.clone());
    let slots = Arc::new(Semaphore::new(limit));
    let clients = Clients::default();
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = state.stop.wait() => break,
            r = bound.listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and the like: wait a little rather than spin.
                    tracing::warn!("accept on the HTTP listener: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        // Small answers (JSON) go out at once instead of waiting for more to send.
        let _ = stream.set_nodelay(true);
        let header_timeout = state
            .ctx
            .config()
            .http
            .as_ref()
            .map_or(Duration::from_secs(10), |h| h.header_timeout);
        let Some(client) = clients.enter(peer.ip(), per_client(limit)) else {
            let why = format!(
                "{} already holds {} HTTP connections, the most one client address may; close some and try again",
                peer.ip(),
                per_client(limit)
            );
            state.metrics.refused();
            refuse(&mut connections, stream, why, bound.tls.is_some());
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let why = format!("all {limit} HTTP connections are in use; try again");
            state.metrics.refused();
            refuse(&mut connections, stream, why, bound.tls.is_some());
            continue;
        };
        let (app, stop, tls) = (app.clone(), state.stop.clone(), bound.tls.clone());
        let open = state.metrics.connection();
        connections.spawn(async move {
            match tls {
                None => serve_one(stream, app, header_timeout, stop).await,
                Some(cert) => {
                    let acceptor = cert.current();
                    if let Some(s) = super::tls::handshake(&acceptor, stream, header_timeout).await
                    {
                        serve_one(s, app, header_timeout, stop).await;
                    }
                }
            }
            drop((slot, client, open));
        });
    }
    drop(bound.listener);
    let open = connections.len();
    let finished = tokio::time::timeout(GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            "HTTP: {} of {open} connections still busy after {}s; closed",
            connections.len(),
            GRACE.as_secs()
        );
        connections.shutdown().await;
    }
}

/// Serves one connection's requests until it closes, or until the daemon stops (then
/// the request under way finishes).
async fn serve_one<IO>(
    io: IO,
    app: axum::Router,
    header_timeout: Duration,
    stop: crate::shutdown::Shutdown,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn =
        builder(header_timeout).serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    let mut conn = std::pin::pin!(conn);
    let cut = Cut::default();
    // The connection's requests are served within its future: they see `cut` there.
    CONNECTION
        .scope(cut.clone(), async {
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!("HTTP connection: {e}");
                },
                _ = stop.wait() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
                // A stream whose client reads nothing (events): closed, not kept forever.
                _ = cut.0.notified() => tracing::debug!("HTTP connection closed: its client read nothing"),
            }
        })
        .await;
}

tokio::task_local! {
    /// The connection whose requests are being served (set around each connection).
    static CONNECTION: Cut;
}

/// A handle that closes the connection a request came on, for a handler whose answer
/// streams on after it returned (events) and finds the client reads nothing: hyper
/// stops asking a body for more while the client's window is full, so the body alone
/// could not end it.
#[derive(Clone, Default)]
pub(super) struct Cut(Arc<tokio::sync::Notify>);

impl Cut {
    /// The connection of the request being handled (`None` outside one).
    pub(super) fn current() -> Option<Cut> {
        CONNECTION.try_with(Cut::clone).ok()
    }

    /// Closes the connection (at once: its answer under way is cut short).
    pub(super) fn cut(&self) {
        self.0.notify_one();
    }
}

/// The most connections one client address may hold when `limit` are allowed in all.
fn per_client(limit: usize) -> usize {
    (limit / PER_CLIENT_SHARE).max(4)
}

/// Open connections per client address (an IPv6 address counts by its /64, which one
/// host usually holds whole).
#[derive(Clone, Default)]
struct Clients(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One connection counted for its client address; uncounted when dropped.
struct Counted(Option<(Clients, IpAddr)>);

impl Clients {
    /// Counts a connection from `ip`, or `None` when that address holds `max` already.
    /// Loopback is not counted.
    fn enter(&self, ip: IpAddr, max: usize) -> Option<Counted> {
        let ip = ip.to_canonical();
        // Before the /64 is taken: ::1 masked would be ::.
        if ip.is_loopback() {
            return Some(Counted(None));
        }
        let ip = match ip {
            IpAddr::V6(v6) => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
            v4 => v4,
        };
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Counted(Some((self.clone(), ip))))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some((clients, ip)) = self.0.take() {
            let mut map = clients.0.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

/// HTTP/1 as served: keep-alive, bounded heads, a header read timeout, and half-closed
/// connections answered (a client that shuts its sending side once the body is sent, as
/// `nc -N` does, got no answer and its upload was dropped).
fn builder(header_timeout: Duration) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .keep_alive(true)
        .half_close(true)
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    b
}

/// A connection beyond a limit: answered 503 (plain HTTP), or closed at once on the
/// HTTPS port (no handshake is spent on a connection refused anyway).
fn refuse(connections: &mut JoinSet<()>, stream: TcpStream, why: String, tls: bool) {
    if tls {
        tracing::debug!("HTTPS connection closed: {why}");
        drop(stream);
    } else {
        connections.spawn(answer_busy(stream, why));
    }
}

/// Answers every request of a connection beyond a limit 503 `busy` saying `why`, then
/// closes it.
async fn answer_busy(stream: TcpStream, why: String) {
    let service = hyper::service::service_fn(move |_req| {
        let why = why.clone();
        async move {
            let e = super::ApiError::new(crate::protocol::ErrorCode::Busy, why);
            Ok::<_, std::convert::Infallible>(axum::response::IntoResponse::into_response(e))
        }
    });
    let mut b = builder(Duration::from_secs(2));
    b.keep_alive(false);
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        b.serve_connection(TokioIo::new(stream), service),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_holds_at_most_its_share_and_loopback_is_not_counted() {
        let clients = Clients::default();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // IPv6 loopback stays loopback (masking it to its /64 would make it `::`).
        let local: Vec<_> = (0..10).map(|_| clients.enter(ip("::1"), 2)).collect();
        assert!(local.iter().all(Option::is_some));
        // One /64 is one client; another address is another.
        let a = clients.enter(ip("2001:db8::1"), 2).unwrap();
        let _b = clients.enter(ip("2001:db8::2"), 2).unwrap();
        assert!(clients.enter(ip("2001:db8::3"), 2).is_none());
        assert!(clients.enter(ip("2001:db8:0:1::1"), 2).is_some());
        // An IPv4 client seen through a dual-stack socket is the same client.
        let _v4 = clients.enter(ip("::ffff:192.0.2.9"), 1).unwrap();
        assert!(clients.enter(ip("192.0.2.9"), 1).is_none());
        // A closed connection frees its slot.
        drop(a);
        assert!(clients.enter(ip("2001:db8::3"), 2).is_some());
    }
}
