//! The connection table: how many may be open, and which one to close to admit another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::Instant;

/// Open connections at most (lowered at start to fit the open-files limit). Past it, the
/// connection that has been idle, half-sent or unread the longest is closed (and told
/// why when it can be) to admit the new one; only when every connection is in the middle
/// of a request is the new one answered `busy`.
pub const MAX_CONNECTIONS: usize = 8192;
/// File descriptors kept for everything but connections (store, inbox, copy jobs, log).
const RESERVED_FDS: u64 = 256;

/// Raises the soft open-files limit to the hard one (so that thousands of clients can be
/// connected at once) and returns the connection limit that leaves room for the rest.
pub fn connection_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write `lim`.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            } else {
                tracing::warn!(
                    "cannot raise the open-files limit from {} to {}: {}",
                    lim.rlim_cur,
                    lim.rlim_max,
                    std::io::Error::last_os_error()
                );
            }
        }
        lim.rlim_cur
    };
    let room = soft.saturating_sub(RESERVED_FDS).max(soft / 2).max(16);
    usize::try_from(room)
        .unwrap_or(MAX_CONNECTIONS)
        .min(MAX_CONNECTIONS)
}

/// What a connection is doing, for choosing which one to close when the limit is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Waiting for a request.
    Idle,
    /// A request line begun and not finished.
    Reading,
    /// A `wait` request under way (it may last long).
    Waiting,
    /// Answering a request.
    Working,
    /// Handing an answer to a client that has not read it yet.
    Writing,
    /// Streaming the event log (`events`): long-lived by design, never closed to admit
    /// another connection (a stream whose client stops reading ends on its own, after
    /// `WRITE_TIMEOUT`).
    Subscribed,
}

#[derive(Debug)]
struct Slot {
    phase: Phase,
    since: Instant,
    close: Arc<Notify>,
}

/// The open connections.
#[derive(Debug)]
pub(super) struct Connections {
    pub(super) limit: usize,
    open: Mutex<(u64, HashMap<u64, Slot>)>,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<u64, Slot>)> {
        // Plain inserts and removals: a poisoned lock is still consistent.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection, closing the longest-stalled one if at the limit; `None` when
    /// every connection is busy answering.
    pub(super) fn admit(self: &Arc<Self>) -> Option<Conn> {
        let mut g = self.lock();
        if g.1.len() >= self.limit {
            let victim =
                g.1.iter()
                    .filter(|(_, s)| !matches!(s.phase, Phase::Working | Phase::Subscribed))
                    .min_by_key(|(_, s)| s.since)
                    .map(|(id, _)| *id)?;
            if let Some(s) = g.1.remove(&victim) {
                s.close.notify_one();
            }
        }
        g.0 += 1;
        let id = g.0;
        let close = Arc::new(Notify::new());
        g.1.insert(
            id,
            Slot {
                phase: Phase::Idle,
                since: Instant::now(),
                close: close.clone(),
            },
        );
        Some(Conn {
            id,
            close,
            table: self.clone(),
        })
    }
}

/// A connection's place in [`Connections`]; freed when dropped.
pub(super) struct Conn {
    id: u64,
    pub(super) close: Arc<Notify>,
    pub(super) table: Arc<Connections>,
}

impl Conn {
    pub(super) fn set(&self, phase: Phase) {
        if let Some(s) = self.table.lock().1.get_mut(&self.id) {
            s.phase = phase;
            s.since = Instant::now();
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.table.lock().1.remove(&self.id);
    }
}

impl Connections {
    /// An empty table admitting up to `limit` connections.
    pub(super) fn new(limit: usize) -> Arc<Connections> {
        Arc::new(Connections {
            limit,
            open: Mutex::new((0, HashMap::new())),
        })
    }
}
