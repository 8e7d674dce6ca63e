//! Binding the HTTP listener and accepting connections: each served by hyper's HTTP/1
//! with bounded headers and a header read timeout, at most a fixed number at once, and
//! stopped gracefully (requests under way finish, within [`GRACE`]) at shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
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
}

/// Binds `http.listen` when it is set. Failing to bind is fatal at start, like the socket.
pub async fn bind(config: &Config) -> Result<Option<Bound>> {
    let Some(HttpConfig { listen, .. }) = &config.http else {
        return Ok(None);
    };
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
    Ok(Some(Bound { listener, addr }))
}

/// Starts serving `bound`: its address is in `status` before this returns (so a client
/// that sees the daemon ready finds it there), then [`serve`] runs as a task.
pub fn start(bound: Bound, state: HttpState) -> tokio::task::JoinHandle<()> {
    let limit = MAX_CONNECTIONS
        .min(crate::server::connection_limit() / 2)
        .max(16);
    tracing::info!(
        "HTTP API on http://{} (up to {limit} connections)",
        bound.addr
    );
    state.ctx.board.set_http(format!("http://{}", bound.addr));
    tokio::spawn(serve(bound, state, limit))
}

/// Accepts connections (at most `limit` at once) until the daemon stops, then lets the
/// requests under way finish (at most [`GRACE`]) and closes the rest.
async fn serve(bound: Bound, state: HttpState, limit: usize) {
    let app = router(state.clone());
    let slots = Arc::new(Semaphore::new(limit));
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            _ = state.stop.wait() => break,
            r = bound.listener.accept() => match r {
                Ok((s, _)) => s,
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            connections.spawn(answer_busy(stream, limit));
            continue;
        };
        let (app, stop) = (app.clone(), state.stop.clone());
        connections.spawn(async move {
            let conn = builder(header_timeout)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!("HTTP connection: {e}");
                },
                _ = stop.wait() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(slot);
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

/// HTTP/1 as served: keep-alive, bounded heads, a header read timeout.
fn builder(header_timeout: Duration) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    b
}

/// Answers every request of a connection beyond the limit 503 `busy`, then closes it.
async fn answer_busy(stream: TcpStream, limit: usize) {
    let service = hyper::service::service_fn(move |_req| async move {
        let e = super::ApiError::new(
            crate::protocol::ErrorCode::Busy,
            format!("all {limit} HTTP connections are in use; try again"),
        );
        Ok::<_, std::convert::Infallible>(axum::response::IntoResponse::into_response(e))
    });
    let mut b = builder(Duration::from_secs(2));
    b.keep_alive(false);
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        b.serve_connection(TokioIo::new(stream), service),
    )
    .await;
}
