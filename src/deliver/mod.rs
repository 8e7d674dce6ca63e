//! Exec hooks and webhooks: each event of the log handed to every configured endpoint, at least once, in order.
//!
//! One worker task per endpoint (`worker`), reading the event log ([`crate::events::Source`]: this host's own, or the team's)
//! at its own pace from its durable cursor (`cursor`, `deliveries.yaml`) and waiting on
//! [`Source::subscribe`] when it has caught up: the registrar never waits for a delivery,
//! and a slow or hanging endpoint delays only itself. An exec hook's run is `exec`, a
//! webhook's POST `webhook`. A reload (SIGHUP) starts, stops and restarts workers for
//! the entries added, removed and changed; the stop gives each attempt under way
//! [`worker::GRACE`] and saves the cursors. docs/events.md is the reference.
//!
//! In team mode an endpoint named N is delivered by one host of the team at a time (the
//! one holding N's lock in the catalog), from N's cursor in the catalog's `deliveries`
//! table instead of `deliveries.yaml` (docs/team.md, "Hooks and webhooks in team mode").

mod cursor;
mod exec;
mod webhook;
mod worker;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::task::JoinHandle;

pub use cursor::{CURSORS_FILE, Cursors};
pub use webhook::{hmac_sha256, signature};

use crate::config::{Config, Delivering, HookConfig, Settings, WebhookConfig};
use crate::error::{Error, Result};
use crate::events::{Kind, Source};
use crate::shutdown;
use crate::status::StatusBoard;

/// One configured endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    /// An exec hook.
    Hook(HookConfig),
    /// A webhook.
    Webhook(WebhookConfig),
}

impl Endpoint {
    fn name(&self) -> &str {
        match self {
            Endpoint::Hook(h) => &h.name,
            Endpoint::Webhook(w) => &w.name,
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            Endpoint::Hook(_) => "hook",
            Endpoint::Webhook(_) => "webhook",
        }
    }
    fn target(&self) -> String {
        match self {
            Endpoint::Hook(h) => crate::display::shell_words(&h.argv),
            Endpoint::Webhook(w) => w.url.clone(),
        }
    }
    fn on(&self) -> &Delivering {
        match self {
            Endpoint::Hook(h) => &h.on,
            Endpoint::Webhook(w) => &w.on,
        }
    }
    /// Webhooks spread their retries; a hook runs on this machine alone.
    fn jitter(&self) -> bool {
        matches!(self, Endpoint::Webhook(_))
    }
}

/// Whether `url` is an https one (the scheme in any case).
fn is_https(url: &str) -> bool {
    url.get(..6)
        .is_some_and(|p| p.eq_ignore_ascii_case("https:"))
}

/// The endpoints the settings ask for, by name.
fn endpoints(c: &Config) -> BTreeMap<String, Endpoint> {
    let hooks = c.hooks.iter().cloned().map(Endpoint::Hook);
    let webhooks = c.webhooks.iter().cloned().map(Endpoint::Webhook);
    hooks
        .chain(webhooks)
        .map(|e| (e.name().to_string(), e))
        .collect()
}

/// Checks what the settings cannot: the kind names of `hooks:` and `webhooks:` (the
/// event kinds live above the settings). Called at start and on reload.
pub fn check(c: &Config) -> Result<()> {
    for (section, name, kinds) in c
        .hooks
        .iter()
        .map(|h| ("hooks", &h.name, &h.on.filter.kinds))
        .chain(
            c.webhooks
                .iter()
                .map(|w| ("webhooks", &w.name, &w.on.filter.kinds)),
        )
    {
        if let Some(k) = kinds.iter().find(|k| Kind::parse(k).is_none()) {
            return Err(Error::Config {
                path: c.source.to_string(),
                key: format!("{section}.{name}.kinds"),
                reason: format!(
                    "`{k}` is not an event kind (one of: {})",
                    Kind::ALL.map(|k| k.name()).join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// The running deliveries.
pub struct Deliveries {
    trigger: shutdown::Trigger,
    task: JoinHandle<()>,
}

/// How much lower the deliveries thread's CPU priority is than the daemon's (a nice
/// value added): see [`start`].
const NICER: i32 = 10;

/// Starts a worker per endpoint of the settings, and follows reloads. `cursors` comes
/// from [`Cursors::load`] at start (a damaged file stops the start there).
///
/// The workers run on a thread of their own whose CPU priority is [`NICER`] lower:
/// delivering is background work that catches up after a burst, and on a busy machine
/// it must not take CPU from registration (the bar: one webhook endpoint slows a burst
/// of 1,000 registrations by at most 10%). On an idle machine it changes nothing. Hook
/// processes are started from the daemon's runtime (`hooks`), so that they do not
/// inherit the lower priority: an unprivileged process cannot raise it back.
pub fn start(
    settings: Arc<Settings>,
    log: Source,
    board: Arc<StatusBoard>,
    cursors: Cursors,
) -> Result<Deliveries> {
    let (trigger, stop) = shutdown::channel();
    let hooks = tokio::runtime::Handle::current();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Other(format!("cannot start the deliveries' runtime: {e}")))?;
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("deliveries".into())
        .spawn(move || {
            lower_priority();
            rt.block_on(supervise(
                settings,
                log,
                board,
                Arc::new(cursors),
                stop,
                hooks,
            ));
            let _ = done.send(());
        })
        .map_err(|e| Error::Other(format!("cannot start the deliveries' thread: {e}")))?;
    let task = tokio::spawn(async move {
        let _ = finished.await;
    });
    Ok(Deliveries { trigger, task })
}

/// Lowers the calling thread's CPU priority by [`NICER`] (on Linux, a thread's nice
/// value is its own, inherited by the threads it starts). Not being able to is only
/// logged: deliveries then run at the daemon's priority.
fn lower_priority() {
    // SAFETY: gettid, getpriority and setpriority take and return plain integers; errno
    // is read right after the call that set it.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        *libc::__errno_location() = 0;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        if (now == -1 && *libc::__errno_location() != 0)
            || libc::setpriority(libc::PRIO_PROCESS, tid, (now + NICER).min(19)) != 0
        {
            tracing::warn!(
                "deliveries run at the daemon's CPU priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

impl Deliveries {
    /// Stops every worker (each attempt under way gets [`worker::GRACE`]) and saves the
    /// cursors.
    pub async fn stop(self) {
        self.trigger.trigger();
        let _ = self.task.await;
    }
}

/// A running worker and what stops it.
struct Running {
    endpoint: Endpoint,
    trigger: shutdown::Trigger,
    task: JoinHandle<()>,
}

async fn supervise(
    settings: Arc<Settings>,
    log: Source,
    board: Arc<StatusBoard>,
    cursors: Arc<Cursors>,
    stop: shutdown::Shutdown,
    hooks: tokio::runtime::Handle,
) {
    let saver = tokio::spawn(cursors.clone().run(stop.clone()));
    let mut published = settings.subscribe();
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    // Read once, when the first https webhook starts: the system's authorities.
    let mut system_cas: Option<Option<Arc<rustls::ClientConfig>>> = None;
    loop {
        let config = published.borrow_and_update().clone();
        let wanted = endpoints(&config);
        // Removed or changed: stopped (their cursors stay in deliveries.yaml).
        let gone: Vec<String> = running
            .iter()
            .filter(|(n, r)| wanted.get(*n) != Some(&r.endpoint))
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            if let Some(r) = running.remove(&name) {
                r.trigger.trigger();
                let _ = r.task.await;
                // A changed one keeps its row until its new worker replaces it: `status`
                // never misses it in between.
                if !wanted.contains_key(&name) {
                    board.remove_delivery(&name);
                }
                let why = if wanted.contains_key(&name) {
                    "changed by a reload: restarted from its cursor"
                } else {
                    "removed by a reload (its cursor stays in deliveries.yaml)"
                };
                tracing::info!(endpoint = %name, "delivery stopped: {why}");
            }
        }
        for (name, endpoint) in wanted {
            if running.contains_key(&name) {
                continue;
            }
            let tls = match &endpoint {
                Endpoint::Webhook(w) if is_https(&w.url) => match &w.ca_file {
                    Some(f) => crate::client::tls_config(Some(f))
                        .map_err(|e| board.set_problem(&format!("deliveries.{name}"), &e))
                        .ok(),
                    None => system_cas
                        .get_or_insert_with(|| {
                            crate::client::tls_config(None)
                                .map_err(|e| tracing::error!("https webhooks: {e}"))
                                .ok()
                        })
                        .clone(),
                },
                _ => None,
            };
            let (trigger, wstop) = shutdown::channel();
            let w = worker::Worker {
                endpoint: endpoint.clone(),
                log: log.clone(),
                board: board.clone(),
                cursors: cursors.clone(),
                tls,
                stop: wstop,
                hooks: hooks.clone(),
                kept: Default::default(),
                team: config.team.as_ref().map(|t| worker::TeamDelivery {
                    url: t.catalog.clone(),
                    host: crate::team::host_name(&config.root),
                }),
            };
            tracing::info!(endpoint = %name, "delivering to {}", endpoint.target());
            let task = tokio::spawn(w.run());
            running.insert(
                name,
                Running {
                    endpoint,
                    trigger,
                    task,
                },
            );
        }
        tokio::select! {
            r = published.changed() => if r.is_err() { break },
            _ = stop.wait() => break,
        }
    }
    for r in running.values() {
        r.trigger.trigger();
    }
    for (_, r) in running {
        let _ = r.task.await;
    }
    let _ = saver.await;
    cursors.save_logged().await;
}
