//! One endpoint's worker: reads the event log from its cursor at its own pace, delivers
//! each matching event in seq order with retries, moves the cursor, keeps its status row.
//!
//! In team mode the endpoint is delivered by one host of the team at a time: the worker
//! delivers only while it holds the endpoint's lock in the catalog
//! ([`DeliveryLease`]), from the cursor kept there, and stops when the lock's connection
//! ends; otherwise it waits and tries again every [`TAKE_AGAIN`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::cursor::Cursors;
use super::{Endpoint, exec, webhook};
use crate::catalogdb::DeliveryLease;
use crate::config::{Retry, StartAt};
use crate::events::{Event, Filter, Kind, ReadError, Source};
use crate::protocol::Delivery;
use crate::shutdown::{self, Shutdown};
use crate::status::{StatusBoard, now_rfc3339};

/// How many events are read from the log at a time.
const BATCH: usize = 256;
/// How long an attempt under way is given to finish when the daemon stops (or the
/// endpoint is changed by a reload); then it is abandoned (a hook's group killed) and
/// the event is delivered again at the next start.
pub(super) const GRACE: Duration = Duration::from_secs(2);

/// What became of one event.
enum Outcome {
    Delivered,
    Skipped,
    Stopped,
}

/// One endpoint's worker (see the module docs).
pub(super) struct Worker {
    pub(super) endpoint: Endpoint,
    pub(super) log: Source,
    pub(super) board: Arc<StatusBoard>,
    pub(super) cursors: Arc<Cursors>,
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    pub(super) stop: Shutdown,
    /// The daemon's runtime, where hook processes are started (see [`super::start`]).
    pub(super) hooks: tokio::runtime::Handle,
    /// A webhook's connection, kept between its events.
    pub(super) kept: std::sync::Mutex<Option<webhook::Kept>>,
    /// Team mode: the endpoint is delivered by one host of the team at a time, from
    /// its cursor in the catalog (not `cursors`).
    pub(super) team: Option<TeamDelivery>,
}

/// Team mode: where the endpoint's lock and cursor are, and this host's name in them.
#[derive(Debug, Clone)]
pub(super) struct TeamDelivery {
    /// The catalog's connection string.
    pub(super) url: String,
    /// This host, as the catalog's `deliveries.host` names it.
    pub(super) host: String,
}

/// How long a worker that did not get its endpoint's lock (or could not reach the
/// catalog) waits before it tries again.
const TAKE_AGAIN: Duration = Duration::from_secs(3);
/// How often a team worker saves its moved cursor to the catalog.
const TEAM_FLUSH: Duration = Duration::from_millis(200);

/// How a team session of delivering ended.
enum Ended {
    /// The daemon is stopping (or the endpoint was changed or removed).
    Stopped,
    /// The lock's connection ended, or a save failed: the lock may be another's.
    Lost(String),
}

impl Worker {
    /// Delivers until `stop`.
    pub(super) async fn run(self) {
        // Team mode: the team's log's bounds are known once this host applied the
        // catalog's first snapshot.
        tokio::select! {
            _ = self.log.ready() => {}
            _ = self.stop.wait() => return,
        }
        if let Some(team) = self.team.clone() {
            return self.run_team(&team).await;
        }
        let name = self.endpoint.name().to_string();
        let next = match self.cursors.get(&name) {
            Some(c) => c + 1,
            None => {
                let from = self.start_at("in deliveries.yaml");
                // Saved at once, not batched: a crash before the next save would make
                // "now" move past the events logged meanwhile (they would be lost).
                self.cursors.set(&name, from.saturating_sub(1));
                self.cursors.save_logged().await;
                from
            }
        };
        let mut row = self.row(next);
        self.board.set_delivery(row.clone());
        let cursors = self.cursors.clone();
        self.deliver_from(next, &mut row, &self.stop, &|seq| cursors.set(&name, seq))
            .await;
    }

    /// The status row of an endpoint that delivered up to `next - 1`.
    fn row(&self, next: u64) -> Delivery {
        Delivery {
            name: self.endpoint.name().to_string(),
            kind: self.endpoint.kind().into(),
            target: self.endpoint.target(),
            delivered: next.saturating_sub(1),
            pending: 0,
            skipped: 0,
            last_error: None,
            last_error_at: None,
            retrying_since: None,
            attempts: 0,
            delivered_by: None,
        }
    }

    /// Where an endpoint with no cursor (`where`: in which store) starts: its `from:`.
    fn start_at(&self, store: &str) -> u64 {
        let name = self.endpoint.name();
        let end = self.log.last() + 1;
        let from = match self.endpoint.on().start {
            StartAt::Now => end,
            StartAt::Seq(0) => self.log.first(),
            StartAt::Seq(n) if n > end => {
                tracing::warn!(
                    "{name}: `from: {n}` is past the event log's end (the next event is {end}): starting with it"
                );
                end
            }
            StartAt::Seq(n) => n,
        };
        // Said, since an edited or restored cursor store lands here too: the events
        // before `from` are never delivered to this endpoint.
        let before = from.saturating_sub(self.log.first());
        if before > 0 && self.log.last() >= self.log.first() {
            tracing::warn!(
                "{name}: no delivery cursor {store} (a new endpoint, or the cursor edited or restored): starting at seq {from}; the {before} event(s) kept before it are not delivered to it (`from: 0` replays them)"
            );
        }
        from
    }

    /// Team mode: delivers while this host holds the endpoint's lock in the catalog,
    /// from the cursor kept there; waits and tries again while another host holds it or
    /// the catalog cannot be reached (docs/team.md, "Hooks and webhooks in team mode").
    async fn run_team(&self, team: &TeamDelivery) {
        let name = self.endpoint.name().to_string();
        let mut row = self.row(self.log.last() + 1);
        let mut lease = match DeliveryLease::new(&team.url, &name, &team.host) {
            Ok(l) => l,
            Err(e) => {
                row.delivered_by = Some(format!("no host from here: {e}"));
                self.board.set_delivery(row);
                return;
            }
        };
        let mut waiting = String::new();
        while !self.stop.is_triggered() {
            let why = match self.take(&mut lease, &mut row).await {
                Ok(Some(next)) => match self.session(&mut lease, next, &mut row).await {
                    Ended::Stopped => break,
                    Ended::Lost(why) => why,
                },
                Ok(None) => String::new(),
                Err(e) => format!(
                    "no host from here: {e}; trying again every {}s",
                    TAKE_AGAIN.as_secs()
                ),
            };
            if !why.is_empty() {
                row.delivered_by = Some(why.clone());
                if why != waiting {
                    tracing::warn!(endpoint = %name, "{why}");
                }
            }
            waiting = why;
            self.board.set_delivery(row.clone());
            self.pause(TAKE_AGAIN, &self.stop).await;
        }
        // Stopped between taking the lock and delivering: the cursor was saved on
        // taking it (nothing moved since).
        lease.release().await;
    }

    /// Tries to take the lock: `Some(next)` (the seq to deliver from, read from the
    /// catalog) when taken; `None` when another host holds it (`row` says which).
    async fn take(
        &self,
        lease: &mut DeliveryLease,
        row: &mut Delivery,
    ) -> Result<Option<u64>, crate::catalogdb::CatalogDbError> {
        if !lease.try_take().await? {
            match lease.row().await? {
                Some((seq, host)) => {
                    row.delivered = seq;
                    row.delivered_by = Some(host);
                }
                None => row.delivered_by = Some("another host".into()),
            }
            return Ok(None);
        }
        // Re-read: another host may have moved it since this one last delivered.
        let next = match lease.row().await? {
            Some((seq, _)) => seq + 1,
            None => self.start_at("in the catalog's deliveries"),
        };
        // Saved at once: names this host as the one delivering, and a new endpoint's
        // start is kept (see `run`).
        lease.save(next.saturating_sub(1)).await?;
        tracing::info!(endpoint = %row.name, "delivering from this host, from seq {next}");
        Ok(Some(next))
    }

    /// Delivers from `next` while the lock is held: the cursor saved to the catalog
    /// every [`TEAM_FLUSH`], and once more at the end when the lock is still held.
    async fn session(&self, lease: &mut DeliveryLease, next: u64, row: &mut Delivery) -> Ended {
        row.delivered = next.saturating_sub(1);
        row.delivered_by = Some("this host".into());
        self.board.set_delivery(row.clone());
        let mut lost = lease.lost();
        // The catalog's cursor may be ahead of what this host has applied (another host
        // delivered further): wait for it rather than read past the log's end.
        let mut last = self.log.subscribe();
        tokio::select! {
            r = last.wait_for(|l| *l + 1 >= next) => if r.is_err() { return Ended::Stopped },
            _ = self.stop.wait() => return Ended::Stopped,
            _ = lost.wait_for(|l| *l) => return Ended::Lost("no host from here: the delivery lock's connection was lost".into()),
        }
        let (cut, session) = shutdown::channel();
        let (finished, done) = shutdown::channel();
        let moved = AtomicU64::new(next.saturating_sub(1));
        let delivering = async {
            self.deliver_from(next, row, &session, &|seq| {
                moved.store(seq, Ordering::Relaxed)
            })
            .await;
            finished.trigger();
        };
        let saving = async {
            let mut saved = next.saturating_sub(1);
            let why = loop {
                tokio::select! {
                    _ = tokio::time::sleep(TEAM_FLUSH) => {}
                    _ = self.stop.wait() => break None,
                    _ = done.wait() => break None,
                    _ = lost.wait_for(|l| *l) => break Some("no host from here: the delivery lock's connection was lost".to_string()),
                }
                let seq = moved.load(Ordering::Relaxed);
                if seq != saved {
                    if let Err(e) = lease.save(seq).await {
                        break Some(format!("no host from here: {e}"));
                    }
                    saved = seq;
                }
            };
            cut.trigger();
            why
        };
        let ((), why) = tokio::join!(delivering, saving);
        let seq = moved.load(Ordering::Relaxed);
        match why {
            Some(why) => Ended::Lost(why),
            None => {
                // A clean stop (or reload): the cursor saved before the lock is freed,
                // so that the next host resumes exactly here.
                if let Err(e) = lease.save(seq).await {
                    tracing::warn!(endpoint = %row.name, "{e}; the next host resumes from the cursor saved before");
                }
                lease.release().await;
                Ended::Stopped
            }
        }
    }

    /// Delivers from `next` until `stop`, telling `moved` each seq passed (delivered,
    /// skipped or not matching).
    async fn deliver_from(
        &self,
        mut next: u64,
        row: &mut Delivery,
        stop: &Shutdown,
        moved: &(dyn Fn(u64) + Sync),
    ) {
        let name = self.endpoint.name().to_string();
        let filter = Filter {
            models: self.endpoint.on().filter.models.clone(),
            kinds: (self.endpoint.on().filter.kinds.iter())
                .filter_map(|k| Kind::parse(k))
                .collect(),
        };
        let mut last = self.log.subscribe();
        let problem = format!("deliveries.{name}");
        while !stop.is_triggered() {
            let batch = match self.read(next).await {
                Ok(b) => b,
                Err(ReadError::Compacted { first }) => {
                    self.board.set_problem(
                        &problem,
                        &format!(
                            "{name}: {} event(s) (seq {next} to {}) were compacted away before they were delivered; delivering from {first}",
                            first - next,
                            first - 1
                        ),
                    );
                    next = first;
                    continue;
                }
                Err(ReadError::Missing { from, to }) => {
                    // Lost from the log (a deleted segment, a damaged line): nothing to
                    // deliver, said where `status` shows it, and delivery goes on after.
                    self.board.set_problem(
                        &problem,
                        &format!("{name}: events {from}..{to} are missing from the event log and were not delivered; delivering from {}", to + 1),
                    );
                    next = to + 1;
                    continue;
                }
                Err(ReadError::Ahead { from, last }) => {
                    // Its cursor is past the log's end (a root restored from an older
                    // backup): the events numbered from here on are new, so deliver them.
                    self.board.set_problem(
                        &problem,
                        &format!("{name}: delivered up to {} but the event log ends at {last}; delivering from {}", from - 1, last + 1),
                    );
                    next = last + 1;
                    continue;
                }
                Err(ReadError::Io(e)) => {
                    self.board
                        .error(format!("{name}: {e}; trying again in 5 s"));
                    self.pause(Duration::from_secs(5), stop).await;
                    continue;
                }
            };
            if batch.is_empty() {
                // Woken by the next commit that makes events (or by the stop).
                last.borrow_and_update();
                if self.log.last() >= next {
                    // Committed meanwhile; a short pause keeps a read that keeps coming
                    // back empty from spinning.
                    self.pause(Duration::from_millis(10), stop).await;
                    continue;
                }
                tokio::select! {
                    r = last.changed() => if r.is_err() { break },
                    _ = stop.wait() => break,
                }
                continue;
            }
            for e in batch {
                if filter.matches(&e) {
                    match self.deliver(&e, row, stop).await {
                        Outcome::Delivered => {}
                        Outcome::Skipped => row.skipped += 1,
                        Outcome::Stopped => return,
                    }
                }
                next = e.seq + 1;
                row.delivered = e.seq;
                moved(e.seq);
                self.board.set_delivery(row.clone());
                if stop.is_triggered() {
                    return;
                }
            }
        }
    }

    /// Committed events from `next`: from memory when they are there, else from disk
    /// off the async threads.
    async fn read(&self, next: u64) -> Result<Vec<Event>, ReadError> {
        self.log.read(next, BATCH).await
    }

    /// Sleeps `d`, or less when told to stop.
    async fn pause(&self, d: Duration, stop: &Shutdown) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = stop.wait() => {}
        }
    }

    /// Delivers `e`, retrying per the endpoint's [`Retry`]; keeps `row` up to date.
    async fn deliver(&self, e: &Event, row: &mut Delivery, stop: &Shutdown) -> Outcome {
        let mut json = serde_json::to_vec(e).unwrap_or_default();
        json.push(b'\n');
        let retry = self.endpoint.on().retry;
        let (mut tries, mut counted) = (0u32, 0u32);
        loop {
            tries += 1;
            let attempt = self.attempt(e, &json);
            tokio::pin!(attempt);
            let r = tokio::select! {
                r = &mut attempt => r,
                _ = stop.wait() => match tokio::time::timeout(GRACE, &mut attempt).await {
                    Ok(r) => r,
                    Err(_) => {
                        // Dropping the attempt kills a hook's group: say what follows.
                        tracing::warn!(
                            endpoint = %row.name,
                            seq = e.seq,
                            "stopped with an attempt under way after {}s; the event is delivered again when delivery resumes",
                            GRACE.as_secs()
                        );
                        return Outcome::Stopped;
                    }
                },
            };
            let (why, counts) = match r {
                Ok(()) => {
                    if row.attempts > 0 {
                        tracing::info!(endpoint = %row.name, seq = e.seq, "delivered after {tries} attempts");
                    }
                    row.attempts = 0;
                    row.retrying_since = None;
                    return Outcome::Delivered;
                }
                Err(f) => f,
            };
            row.attempts = tries;
            row.last_error = Some(format!("seq {}: {why}", e.seq));
            row.last_error_at = Some(now_rfc3339());
            row.retrying_since.get_or_insert_with(now_rfc3339);
            if counts {
                counted += 1;
            }
            if counts && counted > retry.retries {
                self.board.error(format!(
                    "{}: event {} skipped after {tries} attempt(s): {why}",
                    row.name, e.seq
                ));
                row.attempts = 0;
                row.retrying_since = None;
                return Outcome::Skipped;
            }
            tracing::warn!(endpoint = %row.name, seq = e.seq, "attempt {tries} failed: {why}");
            self.board.set_delivery(row.clone());
            self.pause(backoff(&retry, tries, self.endpoint.jitter()), stop)
                .await;
            if stop.is_triggered() {
                return Outcome::Stopped;
            }
        }
    }

    /// One attempt: Err carries why and whether it counts against `retries`.
    async fn attempt(&self, e: &Event, json: &[u8]) -> Result<(), (String, bool)> {
        match &self.endpoint {
            Endpoint::Hook(h) => {
                let (h, e, json) = (h.clone(), e.clone(), json.to_vec());
                // Aborted if this attempt is dropped (a stop): the run's process group
                // is then killed, as when it ran here.
                let mut run = AbortOnDrop(
                    self.hooks
                        .spawn(async move { exec::run(&h, &e, &json).await }),
                );
                match (&mut run.0).await {
                    Ok(r) => r.map_err(|w| (w, true)),
                    Err(e) => Err((format!("the hook's run ended: {e}"), true)),
                }
            }
            Endpoint::Webhook(w) => {
                // Taken for the attempt and put back after: an attempt dropped at a stop
                // drops its connection with it.
                let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner()).take();
                let r = webhook::post(w, e.seq, json, self.tls.as_ref(), &mut kept).await;
                *self.kept.lock().unwrap_or_else(|p| p.into_inner()) = kept;
                r.map_err(|f| (f.why, f.refused))
            }
        }
    }
}

/// The wait after failed attempt `n` (1-based): `backoff * 2^(n-1)`, at most
/// `max_backoff`; with `jitter`, a random point in its upper half, so that endpoints
/// failing together do not retry in step.
fn backoff(r: &Retry, n: u32, jitter: bool) -> Duration {
    let d = r
        .backoff
        .saturating_mul(1u32 << (n - 1).min(20))
        .min(r.max_backoff);
    if !jitter {
        return d;
    }
    let mut seed = [0u8; 8];
    // SAFETY: getrandom(2) writes at most `seed.len()` bytes into it.
    unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    let f = (u64::from_ne_bytes(seed) % 1000) as f64 / 2000.0;
    d.mul_f64(0.5 + f)
}

/// A task aborted when this is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_jitters_in_the_upper_half() {
        let r = Retry {
            retries: 3,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
        };
        let waits: Vec<u128> = (1..=5).map(|n| backoff(&r, n, false).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        for _ in 0..100 {
            let d = backoff(&r, 2, true).as_millis();
            assert!((100..=200).contains(&d), "{d}");
        }
    }
}
