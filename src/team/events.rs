//! The team's event log as this host shows it: one log for every host, kept in the
//! shared catalog (`events`, numbered team-wide in the transaction of the change that
//! made them), visible here once this host applied that change.
//!
//! The follower reads each batch of changes' events with their models; the registrar
//! publishes them here ([`TeamEvents::publish`]) once the local commit that merged those
//! models is published, so a client that sees `registered` and then asks this host for
//! the version finds it. The newest events are kept in memory (a ring, like the local
//! log's); older ones are read from PostgreSQL on a connection of this reader's own.
//! Until the first snapshot was applied the bounds are unknown: readers wait
//! ([`crate::events::Source::ready`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::catalogdb::{CatalogDb, LoggedEvent, Options};
use crate::events::{Event, ReadError, ReadFuture, Remote};

/// How many of the newest visible events are kept in memory.
const IN_MEMORY: usize = 4096;

#[derive(Debug, Default)]
struct Inner {
    /// The oldest event the catalog keeps.
    first: u64,
    /// The last event visible on this host.
    last: u64,
    /// The newest visible events, in seq order (without holes).
    ring: VecDeque<Event>,
}

/// See the module docs.
pub struct TeamEvents {
    url: String,
    engine: String,
    inner: Mutex<Inner>,
    last: watch::Sender<u64>,
    ready: watch::Sender<bool>,
    /// The connection older events are read on (made at the first such read).
    db: tokio::sync::Mutex<Option<CatalogDb>>,
}

/// The event a row of the catalog's log holds: its JSON as the writing host made it,
/// with `seq` and `commit` (the change seq) from the row's columns.
pub fn event_of(row: LoggedEvent) -> Result<Event, String> {
    let mut e: Event = serde_json::from_value(row.event)
        .map_err(|e| format!("event {} in the catalog does not parse: {e}", row.seq))?;
    e.seq = row.seq;
    e.commit = row.change_seq;
    Ok(e)
}

impl TeamEvents {
    /// The log of the catalog at `url` (`engine`: how messages name it), bounds unknown.
    pub fn new(url: &str, engine: String) -> TeamEvents {
        TeamEvents {
            url: url.to_string(),
            engine,
            inner: Mutex::new(Inner::default()),
            last: watch::channel(0).0,
            ready: watch::channel(false).0,
            db: tokio::sync::Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bounds as of the first snapshot this host applied: the oldest event kept and
    /// the last given. Readers wait for this.
    pub fn start(&self, first: u64, last: u64) {
        {
            let mut g = self.lock();
            g.first = first;
            g.last = g.last.max(last);
        }
        self.last.send_replace(last);
        self.ready.send_replace(true);
    }

    /// Makes `events` (the next ones, in seq order, of changes this host applied and
    /// published) visible.
    pub fn publish(&self, events: Vec<Event>) {
        let Some(last) = events.last().map(|e| e.seq) else {
            return;
        };
        {
            let mut g = self.lock();
            for e in events {
                if e.seq <= g.last {
                    continue;
                }
                // A hole (numbers the catalog skipped): the ring starts again after it.
                if g.ring.back().is_some_and(|b| b.seq + 1 != e.seq) {
                    g.ring.clear();
                }
                g.last = e.seq;
                g.ring.push_back(e);
            }
            while g.ring.len() > IN_MEMORY {
                g.ring.pop_front();
            }
        }
        self.last.send_replace(last);
    }

    fn error(&self, from: u64, e: impl std::fmt::Display) -> ReadError {
        ReadError::Io(format!(
            "the team's event log ({}): {e}; continue with since {from}",
            self.engine
        ))
    }

    /// Older events, from PostgreSQL (see [`Remote::read`]).
    async fn read_catalog(&self, from: u64, max: usize) -> Result<Vec<Event>, ReadError> {
        let (first, last) = {
            let g = self.lock();
            (g.first, g.last)
        };
        let from = if from == 0 { first } else { from };
        if from < first {
            return Err(ReadError::Compacted { first });
        }
        if from > last + 1 {
            return Err(ReadError::Ahead { from, last });
        }
        if from == last + 1 || max == 0 {
            return Ok(Vec::new());
        }
        let rows = {
            let mut db = self.db.lock().await;
            if db.is_none() {
                let c = (CatalogDb::connect(&self.url, Options::default()).await)
                    .map_err(|e| self.error(from, e))?;
                *db = Some(c);
            }
            let limit = u32::try_from(max).unwrap_or(u32::MAX);
            let c = db.as_mut().expect("connected above");
            c.events_from(from, last, limit)
                .await
                .map_err(|e| self.error(from, e))?
        };
        let mut out: Vec<Event> = Vec::with_capacity(rows.len());
        for row in rows {
            let expect = out.last().map_or(from, |l| l.seq + 1);
            if row.seq != expect {
                if out.is_empty() {
                    return Err(ReadError::Missing {
                        from,
                        to: row.seq - 1,
                    });
                }
                break;
            }
            out.push(event_of(row).map_err(|e| self.error(expect, e))?);
        }
        if out.is_empty() {
            return Err(ReadError::Missing { from, to: last });
        }
        Ok(out)
    }
}

impl Remote for TeamEvents {
    fn subscribe(&self) -> watch::Receiver<u64> {
        self.last.subscribe()
    }

    fn first(&self) -> u64 {
        self.lock().first
    }

    fn last(&self) -> u64 {
        self.lock().last
    }

    fn read_recent(&self, from: u64, max: usize) -> Option<Vec<Event>> {
        let g = self.lock();
        let from = if from == 0 { g.first } else { from };
        if from == g.last + 1 && from >= g.first {
            return Some(Vec::new());
        }
        let front = g.ring.front()?.seq;
        if from < front || from < g.first || from > g.last {
            return None;
        }
        let at = g.ring.partition_point(|e| e.seq < from);
        Some(g.ring.iter().skip(at).take(max).cloned().collect())
    }

    fn read(self: Arc<Self>, from: u64, max: usize) -> ReadFuture {
        Box::pin(async move {
            if let Some(v) = self.read_recent(from, max) {
                return Ok(v);
            }
            self.read_catalog(from, max).await
        })
    }

    fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    fn describe(&self) -> String {
        format!("the team's event log in {}", self.engine)
    }
}
