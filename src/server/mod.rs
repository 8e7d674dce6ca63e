//! The control socket: an accept loop, one task per connection reading request lines,
//! and one `match` that dispatches each request to its handler. Every failure is an
//! answer (`{"ok":false,...}`); nothing a client sends stops the daemon.
//!
//! `socket` binds the socket file, `connections` is the table of open connections,
//! `connection` one connection's read/answer loop with its timeouts, `handlers` one
//! handler per request (thin: the rules are the catalog's), `wait` the requests that ask
//! the inbox side, `fds` the reading of descriptors passed with a request and `register`
//! the hand-over of a file by descriptor, `events` the stream of the event log (`events`), `subscription` its reading (shared with the HTTP API's Server-Sent Events), `tokens` the HTTP API's tokens, `answers` the answer forms of catalog items.

mod answers;
mod connection;
mod connections;
mod events;
mod fds;
mod handlers;
mod register;
mod search;
mod socket;
pub mod subscription;
mod tokens;
mod wait;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

use connection::{handle_connection, set_send_buffer, write_answer};
use connections::Connections;

use crate::config::{Config, Settings};
use crate::ingest::Shared;
use crate::messages::SettlerMsg;
use crate::protocol::{ErrorCode, Response};
use crate::shutdown::Shutdown;
use crate::status::StatusBoard;

pub use connection::{
    IDLE_TIMEOUT, REQUEST_TIMEOUT, SEND_BUFFER, WRITE_TIMEOUT, may_change, own_uid,
};
pub use connections::{MAX_CONNECTIONS, connection_limit};
pub use handlers::dispatch;
/// The hand-over of a complete file by descriptor, as the socket's `register` does it (the HTTP API's uploads use it too).
pub use register::{check_filename, hand_over, register as register_handover};
pub use socket::bind;

/// What handlers need.
pub struct Context {
    /// The published catalog.
    pub shared: Arc<Shared>,
    /// The published settings (replaced on SIGHUP).
    pub settings: Arc<Settings>,
    /// Problems and errors.
    pub board: Arc<StatusBoard>,
    /// The settler, asked what is waiting.
    pub settler: mpsc::UnboundedSender<SettlerMsg>,
    /// The registrar, which makes every change.
    pub registrar: mpsc::UnboundedSender<crate::ingest::RegistrarMsg>,
    /// When the daemon started.
    pub started: Instant,
    /// The HTTP API's tokens (`<root>/tokens.yaml`).
    pub tokens: Arc<crate::tokens::Tokens>,
    /// Team mode's engines, for `get` of a version whose files are not here yet;
    /// `None`: local mode.
    pub team: Option<Arc<crate::team::Team>>,
}

impl Context {
    /// The current settings.
    pub fn config(&self) -> Arc<Config> {
        self.settings.current()
    }
}

/// Accepts connections until `shutdown`.
pub async fn serve(listener: UnixListener, ctx: Arc<Context>, shutdown: Shutdown) {
    let limit = connection_limit();
    tracing::info!(
        "serving up to {limit} connections; idle ones close after {}s",
        IDLE_TIMEOUT.as_secs()
    );
    let table = Connections::new(limit);
    loop {
        let stream = tokio::select! {
            _ = shutdown.wait() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and the like: wait a little rather than spin.
                    tracing::warn!("accept on the control socket: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        set_send_buffer(&stream);
        let Some(conn) = table.admit() else {
            tokio::spawn(async move {
                let (_, mut w) = stream.into_split();
                let r = Response::err(
                    ErrorCode::Busy,
                    format!("all {limit} connections are answering requests; try again"),
                );
                let _ = write_answer(&mut w, &r.to_line(), None).await;
            });
            continue;
        };
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        tokio::spawn(async move {
            handle_connection(stream, &ctx, &shutdown, &conn).await;
        });
    }
}
