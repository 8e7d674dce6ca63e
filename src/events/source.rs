//! Where readers (the socket's `events`, SSE, hooks and webhooks) take events from: this
//! host's own log ([`Log`], local mode), or in team mode the team's one log, kept in the
//! shared catalog and shown on each host as far as that host has applied it (an
//! implementation of [`Remote`], the team module's).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;

use super::{Event, Log, ReadError};

/// A read of the team's log, under way.
pub type ReadFuture = Pin<Box<dyn Future<Output = Result<Vec<Event>, ReadError>> + Send>>;

/// An event log kept elsewhere (team mode: PostgreSQL), with the same reading rules as
/// [`Log`]: committed events only, in seq order, every hole an error.
pub trait Remote: Send + Sync {
    /// The last visible seq, changing as events become visible.
    fn subscribe(&self) -> watch::Receiver<u64>;
    /// The seq of the oldest event kept.
    fn first(&self) -> u64;
    /// The last visible seq (0: none yet).
    fn last(&self) -> u64;
    /// Like [`Log::read_recent`]: from memory only, `None` when `from` is older than
    /// what is held there.
    fn read_recent(&self, from: u64, max: usize) -> Option<Vec<Event>>;
    /// Like [`Log::read`], from wherever the events are kept.
    fn read(self: Arc<Self>, from: u64, max: usize) -> ReadFuture;
    /// True once the log's bounds are known (team mode: once the first snapshot of
    /// the catalog was applied on this host).
    fn ready(&self) -> watch::Receiver<bool>;
    /// What the log is, for messages (`the team's event log in catalog ...`).
    fn describe(&self) -> String;
}

/// One host's source of events; see the module docs.
#[derive(Clone)]
pub enum Source {
    /// This host's own log (local mode).
    Local(Arc<Log>),
    /// The team's log (team mode).
    Remote(Arc<dyn Remote>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Local(log) => write!(f, "Local({})", log.dir().display()),
            Source::Remote(r) => write!(f, "Remote({})", r.describe()),
        }
    }
}

impl Source {
    /// The last visible seq, changing as events become visible.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        match self {
            Source::Local(l) => l.subscribe(),
            Source::Remote(r) => r.subscribe(),
        }
    }

    /// The seq of the oldest event kept (one past the last when none is kept).
    pub fn first(&self) -> u64 {
        match self {
            Source::Local(l) => l.first(),
            Source::Remote(r) => r.first(),
        }
    }

    /// The last visible seq (0: none yet).
    pub fn last(&self) -> u64 {
        match self {
            Source::Local(l) => l.last(),
            Source::Remote(r) => r.last(),
        }
    }

    /// Visible events from `from`, at most `max`, from memory only (`None`: not there).
    pub fn read_recent(&self, from: u64, max: usize) -> Option<Vec<Event>> {
        match self {
            Source::Local(l) => l.read_recent(from, max),
            Source::Remote(r) => r.read_recent(from, max),
        }
    }

    /// Visible events from `from`, at most `max` (see [`Log::read`]): memory first, then
    /// the segments on the blocking pool, or the team's log.
    pub async fn read(&self, from: u64, max: usize) -> Result<Vec<Event>, ReadError> {
        if let Some(v) = self.read_recent(from, max) {
            return Ok(v);
        }
        match self {
            Source::Local(l) => {
                let log = l.clone();
                tokio::task::spawn_blocking(move || log.read(from, max))
                    .await
                    .unwrap_or_else(|e| Err(ReadError::Io(e.to_string())))
            }
            Source::Remote(r) => r.clone().read(from, max).await,
        }
    }

    /// Resolves once the log's bounds are known (at once for a local log).
    pub async fn ready(&self) {
        if let Source::Remote(r) = self {
            let mut w = r.ready();
            // An error: the sender is gone (the daemon is stopping); nothing to wait for.
            let _ = w.wait_for(|r| *r).await;
        }
    }

    /// Whether [`Self::ready`] would resolve at once.
    pub fn is_ready(&self) -> bool {
        match self {
            Source::Local(_) => true,
            Source::Remote(r) => *r.ready().borrow(),
        }
    }

    /// What the log is, for messages.
    pub fn describe(&self) -> String {
        match self {
            Source::Local(l) => format!("the event log {}", l.dir().display()),
            Source::Remote(r) => r.describe(),
        }
    }
}
