//! The control socket: an accept loop, one task per connection reading request lines,
//! and one `match` that dispatches each request to its handler. Every failure is an
//! answer (`{"ok":false,...}`); nothing a client sends stops the daemon.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use crate::config::{Config, Direction, Settings};
use crate::ingest::Shared;
use crate::names;
use crate::protocol::{
    BestBasis, ErrorCode, FileInfo, MAX_REQUEST_BYTES, ModelSummary, Request, Response, StatusInfo,
    VersionInfo, parse_request,
};
use crate::registry::{Catalog, Kind, Model, Version, parse_version_number};
use crate::shutdown::Shutdown;
use crate::status::StatusBoard;
use crate::watcher::SettlerMsg;

/// Open connections at most (lowered at start to fit the open-files limit). Past it, the
/// connection that has been idle, half-sent or unread the longest is closed (and told
/// why when it can be) to admit the new one; only when every connection is in the middle
/// of a request is the new one answered `busy`.
pub const MAX_CONNECTIONS: usize = 8192;
/// File descriptors kept for everything but connections (store, inbox, copy jobs, log).
const RESERVED_FDS: u64 = 256;
/// How long a connection may take to finish a request line it has begun.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection may stay idle (no request under way) before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an answer may wait for the client to read anything of it; then the
/// connection is closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The kernel send buffer of each connection: how much of its answers a client may leave
/// unread. The daemon reads a connection's next request only once the previous answer is
/// handed over, so a client that never reads holds at most this plus one answer.
pub const SEND_BUFFER: usize = 64 * 1024;
/// Size of each connection's read buffer (longer requests still work, in steps).
const READ_BUFFER: usize = 1024;

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
}

impl Context {
    /// The current settings.
    pub fn config(&self) -> Arc<Config> {
        self.settings.current()
    }
}

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
enum Phase {
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
}

#[derive(Debug)]
struct Slot {
    phase: Phase,
    since: Instant,
    close: Arc<Notify>,
}

/// The open connections.
#[derive(Debug)]
struct Connections {
    limit: usize,
    open: Mutex<(u64, HashMap<u64, Slot>)>,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<u64, Slot>)> {
        // Plain inserts and removals: a poisoned lock is still consistent.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection, closing the longest-stalled one if at the limit; `None` when
    /// every connection is busy answering.
    fn admit(self: &Arc<Self>) -> Option<Conn> {
        let mut g = self.lock();
        if g.1.len() >= self.limit {
            let victim =
                g.1.iter()
                    .filter(|(_, s)| s.phase != Phase::Working)
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
struct Conn {
    id: u64,
    close: Arc<Notify>,
    table: Arc<Connections>,
}

impl Conn {
    fn set(&self, phase: Phase) {
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

/// Accepts connections until `shutdown`.
pub async fn serve(listener: UnixListener, ctx: Arc<Context>, shutdown: Shutdown) {
    let limit = connection_limit();
    tracing::info!(
        "serving up to {limit} connections; idle ones close after {}s",
        IDLE_TIMEOUT.as_secs()
    );
    let table = Arc::new(Connections {
        limit,
        open: Mutex::new((0, HashMap::new())),
    });
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

/// Caps the kernel's buffer of unread answers of one connection ([`SEND_BUFFER`]).
fn set_send_buffer(stream: &UnixStream) {
    use std::os::fd::AsRawFd;
    let size = SEND_BUFFER as libc::c_int;
    // SAFETY: setsockopt reads `size` for the duration of the call; the fd is open.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Why an answer could not be handed over.
enum WriteFailed {
    /// The client read nothing for [`WRITE_TIMEOUT`].
    Unread,
    /// The connection was closed to admit another.
    Evicted,
    /// The client is gone.
    Gone,
}

/// Writes `bytes`, giving up when the client reads nothing for [`WRITE_TIMEOUT`] (the
/// timeout restarts at every step, so a large answer to a slow reader still arrives).
async fn write_answer(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    bytes: &[u8],
    close: Option<&Notify>,
) -> Result<(), WriteFailed> {
    // Most answers fit the socket's buffer at once: no timer needed then.
    let mut done = match w.try_write(bytes) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(_) => return Err(WriteFailed::Gone),
    };
    while done < bytes.len() {
        let step = tokio::time::timeout(WRITE_TIMEOUT, w.write(&bytes[done..]));
        let r = match close {
            Some(c) => tokio::select! {
                _ = c.notified() => return Err(WriteFailed::Evicted),
                r = step => r,
            },
            None => step.await,
        };
        match r {
            Err(_) => return Err(WriteFailed::Unread),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(WriteFailed::Gone),
            Ok(Ok(n)) => done += n,
        }
    }
    Ok(())
}

/// Tells the client why its connection is being closed (if it reads), then returns.
async fn close_with(w: &mut tokio::net::unix::OwnedWriteHalf, code: ErrorCode, message: String) {
    let r = Response::err(code, message);
    // A short bound: a client that does not read is not owed the reason.
    let _ = tokio::time::timeout(Duration::from_secs(1), w.write_all(&r.to_line())).await;
}

async fn handle_connection(stream: UnixStream, ctx: &Context, shutdown: &Shutdown, conn: &Conn) {
    // Who is asking, from the kernel (SO_PEERCRED): changes are allowed only to the
    // daemon's own user and root.
    let peer_uid = stream.peer_cred().ok().map(|c| c.uid());
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::with_capacity(READ_BUFFER, r);
    let mut line = Vec::new();
    let evicted = || {
        format!(
            "connection closed to admit another: the daemon is at its limit of {} connections and this one was the longest idle",
            conn.table.limit
        )
    };
    loop {
        // Idle until the first byte of the next request (or one already buffered).
        conn.set(Phase::Idle);
        let first = tokio::select! {
            _ = shutdown.wait() => return,
            _ = conn.close.notified() => {
                close_with(&mut w, ErrorCode::Busy, evicted()).await;
                return;
            }
            r = tokio::time::timeout(IDLE_TIMEOUT, async { reader.fill_buf().await.map(|b| b.is_empty()) }) => r,
        };
        match first {
            Err(_) => {
                close_with(
                    &mut w,
                    ErrorCode::Timeout,
                    format!(
                        "connection idle for {}s; closed (connect again to continue)",
                        IDLE_TIMEOUT.as_secs()
                    ),
                )
                .await;
                return;
            }
            Ok(Err(_)) | Ok(Ok(true)) => return,
            Ok(Ok(false)) => {}
        }
        conn.set(Phase::Reading);
        // A long request line once should not keep its buffer for the connection's life.
        if line.capacity() > READ_BUFFER {
            line = Vec::new();
        }
        line.clear();
        let mut limited = (&mut reader).take(MAX_REQUEST_BYTES as u64 + 1);
        let read = tokio::select! {
            _ = shutdown.wait() => return,
            _ = conn.close.notified() => {
                close_with(&mut w, ErrorCode::Busy, evicted()).await;
                return;
            }
            r = tokio::time::timeout(REQUEST_TIMEOUT, limited.read_until(b'\n', &mut line)) => r,
        };
        let n = match read {
            Err(_) => {
                close_with(
                    &mut w,
                    ErrorCode::Timeout,
                    format!(
                        "no complete request line within {}s",
                        REQUEST_TIMEOUT.as_secs()
                    ),
                )
                .await;
                return;
            }
            Ok(Err(_)) | Ok(Ok(0)) => return,
            Ok(Ok(n)) => n,
        };
        let complete = line.last() == Some(&b'\n');
        if !complete && n > MAX_REQUEST_BYTES {
            close_with(
                &mut w,
                ErrorCode::TooLarge,
                format!("request longer than {MAX_REQUEST_BYTES} bytes; connection closed"),
            )
            .await;
            return;
        }
        let body = trim_line(&line);
        if body.is_empty() {
            if complete {
                continue;
            }
            return;
        }
        let response = match parse_request(body) {
            Ok((req, id)) => {
                let mut r = if req.is_mutating() && !may_change(peer_uid) {
                    Response::err(
                        ErrorCode::PermissionDenied,
                        format!(
                            "{} changes the registry; only uid {} (the daemon's user) or root may",
                            req.op(),
                            own_uid()
                        ),
                    )
                } else if matches!(req, Request::Wait { .. }) {
                    // A `wait` may last long and changes nothing: it may be closed to
                    // admit another connection.
                    conn.set(Phase::Waiting);
                    tokio::select! {
                        r = dispatch(req, ctx, peer_uid) => r,
                        _ = conn.close.notified() => Response::err(ErrorCode::Busy, evicted()),
                    }
                } else {
                    conn.set(Phase::Working);
                    dispatch(req, ctx, peer_uid).await
                };
                r.id = id;
                r
            }
            Err(r) => r,
        };
        conn.set(Phase::Writing);
        // The next request is read only once this answer is handed over: a client that
        // does not read its answers stops being read, and is closed after WRITE_TIMEOUT.
        match write_answer(&mut w, &response.to_line(), Some(&conn.close)).await {
            Ok(()) => {}
            Err(WriteFailed::Unread) => {
                tracing::debug!(
                    "closed a connection whose answer was unread for {}s",
                    WRITE_TIMEOUT.as_secs()
                );
                return;
            }
            Err(WriteFailed::Evicted | WriteFailed::Gone) => return,
        }
        if !complete {
            // The client closed its side after a last line without a newline.
            return;
        }
        // One request per turn: a client with more requests already queued lets every
        // other connection be answered in between.
        if !reader.buffer().is_empty() {
            tokio::task::yield_now().await;
        }
    }
}

fn own_uid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Whether a peer may change the registry: the daemon's own user, or root.
pub fn may_change(peer_uid: Option<u32>) -> bool {
    peer_uid.is_some_and(|u| u == 0 || u == own_uid())
}

fn trim_line(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\n' | b'\r' | b' ' | b'\t') {
        end -= 1;
    }
    &line[..end]
}

/// Answers one request; `peer_uid` is recorded with the changes it makes.
pub async fn dispatch(req: Request, ctx: &Context, peer_uid: Option<u32>) -> Response {
    let asked = match &req {
        Request::Versions { name } | Request::Get { name, .. } | Request::History { name } => {
            Some(name.clone())
        }
        _ => None,
    };
    let mut r = dispatch_op(req, ctx, peer_uid).await;
    // A model that is only waiting or blocked in the inbox is not in the catalog yet:
    // say so, or "no model named" sends the user looking for a typo.
    if let (Some(name), Some(e)) = (asked, r.error.as_mut())
        && e.code == ErrorCode::ModelNotFound
        && let Some(w) = waiting_list(ctx).await.into_iter().find(|w| w.name == name)
    {
        let why = w.reason.map(|r| format!(": {r}")).unwrap_or_default();
        e.message = format!(
            "{}; the inbox has {name:?} {}{why} (see `modelreg status`)",
            e.message, w.state
        );
    }
    r
}

/// What the settler has waiting in the inbox (empty when it does not answer within a
/// second: this only adds detail to answers).
async fn waiting_list(ctx: &Context) -> Vec<crate::protocol::Waiting> {
    let (tx, rx) = oneshot::channel();
    if ctx.settler.send(SettlerMsg::Status(tx)).is_err() {
        return Vec::new();
    }
    tokio::time::timeout(Duration::from_secs(1), rx)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
}

/// [`dispatch`] without the inbox detail for a missing model.
async fn dispatch_op(req: Request, ctx: &Context, peer_uid: Option<u32>) -> Response {
    use crate::ingest::Change;
    let change = |c: Change| send_change(ctx, c, peer_uid);
    match req {
        Request::Ping {} => {
            Response::ok(serde_json::json!({"pong": true, "version": env!("CARGO_PKG_VERSION")}))
        }
        Request::List {} => list(ctx),
        Request::Versions { name } => versions(ctx, &name),
        Request::Get {
            name,
            selector,
            metric,
            mode,
        } => {
            let (catalog, cfg) = (ctx.shared.catalog(), ctx.config());
            let args = (name, selector, metric, mode);
            let run = move |blocking: bool| {
                let (name, selector, metric, mode) = &args;
                get(
                    &catalog,
                    &cfg,
                    name,
                    selector.as_deref(),
                    metric.as_deref(),
                    *mode,
                    blocking,
                )
            };
            match run(false) {
                Some(r) => r,
                // A version of many files: checking them is file-system work for the
                // blocking pool.
                None => tokio::task::spawn_blocking(move || run(true))
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| Response::err(ErrorCode::Internal, "get failed")),
            }
        }
        Request::Status {} => status(ctx).await,
        Request::Wait {
            name,
            entry,
            timeout_ms,
        } => wait(ctx, &name, &entry, timeout_ms).await,
        Request::History { name } => history(ctx, &name),
        Request::AliasSet {
            name,
            alias,
            version,
        } => match version_number(&version) {
            Ok(v) => {
                change(Change::AliasSet {
                    name,
                    alias,
                    version: v,
                })
                .await
            }
            Err(r) => r,
        },
        Request::AliasRemove { name, alias } => change(Change::AliasRemove { name, alias }).await,
        Request::Rollback { name, alias } => change(Change::Rollback { name, alias }).await,
        Request::Deprecate {
            name,
            version,
            reason,
        } => match version_number(&version) {
            Ok(v) => {
                change(Change::Deprecate {
                    name,
                    version: v,
                    reason,
                })
                .await
            }
            Err(r) => r,
        },
        Request::Rm {
            name,
            version,
            reason,
            force,
        } => match version_number(&version) {
            Ok(v) => {
                change(Change::Remove {
                    name,
                    version: v,
                    reason,
                    force,
                })
                .await
            }
            Err(r) => r,
        },
        Request::Gc { name, dry_run } => change(Change::Gc { name, dry_run }).await,
        Request::Verify { name } => verify(ctx, name).await,
    }
}

fn version_number(s: &str) -> Result<u32, Response> {
    parse_version_number(s)
        .filter(|_| s.starts_with('v'))
        .ok_or_else(|| {
            Response::err(
                ErrorCode::InvalidSelector,
                format!("{s:?} is not a version such as v3"),
            )
        })
}

/// Hands a change to the registrar and waits until it is durable.
async fn send_change(ctx: &Context, change: crate::ingest::Change, uid: Option<u32>) -> Response {
    use crate::ingest::Change;
    let name = match &change {
        Change::AliasSet { name, .. }
        | Change::AliasRemove { name, .. }
        | Change::Rollback { name, .. }
        | Change::Deprecate { name, .. }
        | Change::Remove { name, .. } => Some(name.as_str()),
        Change::Gc { name, .. } => name.as_deref(),
    };
    if let Some(n) = name
        && let Err(reason) = names::check_name(n)
    {
        return Response::err(
            ErrorCode::InvalidName,
            format!("invalid model name {n:?}: it {reason}"),
        );
    }
    let (tx, rx) = oneshot::channel();
    if ctx
        .registrar
        .send(crate::ingest::RegistrarMsg::Change {
            change,
            uid,
            reply: tx,
        })
        .is_err()
    {
        return Response::err(ErrorCode::Internal, "the daemon is shutting down");
    }
    match tokio::time::timeout(Duration::from_secs(120), rx).await {
        Ok(Ok(Ok(v))) => Response::ok(v),
        Ok(Ok(Err((code, message)))) => Response::err(code, message),
        _ => Response::err(
            ErrorCode::Internal,
            "the change was not confirmed (the daemon is shutting down?)",
        ),
    }
}

fn history(ctx: &Context, name: &str) -> Response {
    let catalog = ctx.shared.catalog();
    match find_model(&catalog, name) {
        Ok(m) => {
            let aliases: std::collections::BTreeMap<&String, String> = m
                .aliases
                .iter()
                .map(|(a, n)| (a, format!("v{n}")))
                .collect();
            to_json(
                &serde_json::json!({ "name": name, "aliases": aliases, "history": m.alias_history }),
            )
        }
        Err(r) => r,
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Response {
    match serde_json::to_value(v) {
        Ok(v) => Response::ok(v),
        Err(e) => Response::err(ErrorCode::Internal, format!("cannot serialise answer: {e}")),
    }
}

fn find_model<'a>(catalog: &'a Catalog, name: &str) -> Result<&'a Model, Response> {
    if let Err(reason) = names::check_name(name) {
        return Err(Response::err(
            ErrorCode::InvalidName,
            format!("invalid model name {name:?}: it {reason}"),
        ));
    }
    catalog.models.get(name).map(|m| m.as_ref()).ok_or_else(|| {
        let hint = crate::suggest::hint(name, catalog.models.keys().map(String::as_str));
        Response::err(
            ErrorCode::ModelNotFound,
            format!("no model named {name:?}{hint} (`modelreg list` shows the models)"),
        )
    })
}

fn list(ctx: &Context) -> Response {
    let catalog = ctx.shared.catalog();
    let cfg = ctx.config();
    // Every model is listed, also one whose versions are all deprecated or removed: a
    // missing row made such a model look unregistered.
    let models: Vec<ModelSummary> = catalog
        .models
        .iter()
        .filter_map(|(name, m)| {
            let shown = m.latest().or_else(|| m.newest()).or(m.versions.last())?;
            let live = m.latest().is_some();
            Some(ModelSummary {
                name: name.clone(),
                latest: if live {
                    format!("v{}", shown.number)
                } else {
                    "-".to_string()
                },
                versions: m.stored().count(),
                registered_at: shown.registered_at.clone(),
                path: if shown.removed.is_none() {
                    primary_path(&cfg, name, shown)
                } else {
                    "-".to_string()
                },
                note: (!live).then(|| format!("no live version: {}", version_states(m))),
            })
        })
        .collect();
    to_json(&serde_json::json!({ "models": models }))
}

fn versions(ctx: &Context, name: &str) -> Response {
    let catalog = ctx.shared.catalog();
    let cfg = ctx.config();
    match find_model(&catalog, name) {
        Ok(m) => {
            let vs: Vec<VersionInfo> = m
                .versions
                .iter()
                .map(|v| version_info_in(&cfg, name, v, m))
                .collect();
            to_json(&serde_json::json!({ "name": name, "versions": vs }))
        }
        Err(r) => r,
    }
}

/// The hint for a mistyped selector: the closest of `latest`, `best` and the aliases.
fn selector_hint(s: &str, model: &Model) -> String {
    let words = ["latest", "best"]
        .into_iter()
        .chain(model.aliases.keys().map(String::as_str));
    crate::suggest::hint(s, words)
}

/// The states of a model without a live version, newest first (`v2 removed, v1
/// deprecated`), at most a few: what `list` and the errors of `get`/`best` show.
fn version_states(m: &Model) -> String {
    let states: Vec<String> = m
        .versions
        .iter()
        .rev()
        .take(4)
        .map(|v| {
            let state = if v.removed.is_some() {
                "removed"
            } else {
                "deprecated"
            };
            format!("v{} {state}", v.number)
        })
        .collect();
    let more = if m.versions.len() > 4 { ", ..." } else { "" };
    format!("{}{more}", states.join(", "))
}

/// The error for `latest`/`best` of a model none of whose versions is live: says which
/// states they are in and how to reach one anyway, instead of "has no versions".
fn no_live_version(name: &str, m: &Model) -> String {
    let hint = match m.newest() {
        Some(v) => format!(" (use get {name} v{})", v.number),
        None => String::new(),
    };
    format!("{name:?} has no live version: {}{hint}", version_states(m))
}

/// The `no_metric` message: which metric was missing, the closest one that exists, and
/// every metric the model's versions have, so the user can pick one.
fn no_metric(name: &str, metric: &str, model: &Model) -> String {
    let known: std::collections::BTreeSet<&str> = model
        .versions
        .iter()
        .filter(|v| v.is_live())
        .flat_map(|v| v.metrics.iter().map(|(k, _)| k.as_str()))
        .collect();
    let hint = crate::suggest::hint(metric, known.iter().copied());
    let listed = if known.is_empty() {
        "no version has any metric".to_string()
    } else {
        let names: Vec<&str> = known.into_iter().collect();
        format!("metrics: {}", names.join(", "))
    };
    format!(
        "no version of {name:?} has metric {metric:?}{hint} ({} version(s) checked; {listed})",
        model.versions.len()
    )
}

/// Versions with at most this many files have them checked on the async thread: a few
/// `lstat`s of the local store cost less than a hand-off to the blocking pool (which
/// doubled `get`'s latency); more are checked on the blocking pool.
const INLINE_FILE_CHECKS: usize = 8;

/// Answers `get`; `None` when the version has more files than [`INLINE_FILE_CHECKS`] and
/// this is not `blocking` (the blocking pool): call again there.
fn get(
    catalog: &Catalog,
    cfg: &Config,
    name: &str,
    selector: Option<&str>,
    metric: Option<&str>,
    mode: Option<Direction>,
    blocking: bool,
) -> Option<Response> {
    let mut deferred = false;
    let r = get_inner(
        catalog,
        cfg,
        (name, selector, metric, mode),
        blocking,
        &mut deferred,
    );
    (!deferred).then_some(r)
}

/// [`get`]'s body; sets `deferred` (and answers nothing useful) when the files must be
/// checked on the blocking pool.
fn get_inner(
    catalog: &Catalog,
    cfg: &Config,
    (name, selector, metric, mode): (&str, Option<&str>, Option<&str>, Option<Direction>),
    blocking: bool,
    deferred: &mut bool,
) -> Response {
    let model = match find_model(catalog, name) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let selector = selector.unwrap_or("latest");
    let mut basis = None;
    let version = match selector {
        "latest" => model.latest(),
        "best" => {
            let metric = metric
                .unwrap_or_else(|| cfg.best.metric_for(name))
                .to_string();
            let mode = mode.unwrap_or_else(|| cfg.best.direction_of(&metric));
            let v = model.best(&metric, mode);
            if model.latest().is_none() {
                return Response::err(ErrorCode::NoMetric, no_live_version(name, model));
            }
            if v.is_none() {
                return Response::err(ErrorCode::NoMetric, no_metric(name, &metric, model));
            }
            basis = Some(BestBasis { metric, mode });
            v
        }
        s => {
            let n = match parse_version_number(s).filter(|_| s.starts_with('v')) {
                Some(n) => n,
                None => match model.aliases.get(s) {
                    Some(n) => *n,
                    None if crate::registry::check_alias(s).is_ok() => {
                        let known: Vec<&String> = model.aliases.keys().collect();
                        let hint = selector_hint(s, model);
                        return Response::err(
                            ErrorCode::AliasNotFound,
                            format!(
                                "{name:?} has no alias {s:?}{hint} (aliases: {known:?}; or use vN, latest, best)"
                            ),
                        );
                    }
                    None => {
                        let hint = selector_hint(s, model);
                        return Response::err(
                            ErrorCode::InvalidSelector,
                            format!("selector {s:?} is not vN, latest, best or an alias{hint}"),
                        );
                    }
                },
            };
            match model.find(n) {
                Some(v) if v.removed.is_some() => {
                    let m = v.removed.as_ref().expect("checked");
                    return Response::err(
                        ErrorCode::VersionRemoved,
                        format!(
                            "{name} v{n} was removed at {}{}",
                            m.at,
                            m.reason
                                .as_deref()
                                .map(|r| format!(": {r}"))
                                .unwrap_or_default()
                        ),
                    );
                }
                Some(v) => Some(v),
                None => {
                    return Response::err(
                        ErrorCode::VersionNotFound,
                        format!(
                            "{name:?} has no version v{n} (it has v1..v{})",
                            model.highest
                        ),
                    );
                }
            }
        }
    };
    let Some(v) = version else {
        return Response::err(ErrorCode::VersionNotFound, no_live_version(name, model));
    };
    if !blocking && v.files.len() > INLINE_FILE_CHECKS {
        *deferred = true;
        return Response::err(ErrorCode::Internal, "checked on the blocking pool");
    }
    // Never hand out a dead path: check the stored files are still there, and never
    // one that leads through a link out of the store.
    for f in &v.files {
        let p = cfg.root.join(&f.path);
        if let Err(e) = crate::store::check_no_link(&cfg.store, &p) {
            return Response::err(
                ErrorCode::FileMissing,
                format!("{name} v{}: not answered: {e}", v.number),
            );
        }
        if std::fs::symlink_metadata(&p).is_err() {
            return Response::err(
                ErrorCode::FileMissing,
                format!(
                    "{name} v{}: stored file {} is missing (run `modelreg status`)",
                    v.number,
                    p.display()
                ),
            );
        }
    }
    let info = version_info_in(cfg, name, v, model);
    let mut value = match serde_json::to_value(&info) {
        Ok(v) => v,
        Err(e) => return Response::err(ErrorCode::Internal, e.to_string()),
    };
    if let (Some(b), Some(obj)) = (basis, value.as_object_mut()) {
        obj.insert(
            "best_by".into(),
            serde_json::to_value(b).unwrap_or_default(),
        );
    }
    Response::ok(value)
}

/// The longest `wait` allowed.
const MAX_WAIT: Duration = Duration::from_secs(3600);

async fn wait(ctx: &Context, name: &str, entry: &str, timeout_ms: Option<u64>) -> Response {
    if let Err(reason) = names::check_name(name) {
        return Response::err(
            ErrorCode::InvalidName,
            format!("invalid model name {name:?}: it {reason}"),
        );
    }
    if let Err(reason) = names::check_component(entry) {
        return Response::err(
            ErrorCode::InvalidName,
            format!("invalid inbox entry {entry:?}: it {reason}"),
        );
    }
    let cfg = ctx.config();
    let path = cfg.inbox.join(entry);
    // Looking at a folder walks it (100k files take a while): off the async threads.
    let looked = {
        let (inbox, entry, follow) = (cfg.inbox.clone(), entry.to_string(), cfg.follow_symlinks);
        tokio::task::spawn_blocking(move || {
            crate::inbox::look(&inbox, &entry, follow).fingerprint()
        })
        .await
    };
    let Ok(Some(fingerprint)) = looked else {
        return Response::err(
            ErrorCode::EntryNotFound,
            format!("{} is not an artifact in the inbox", path.display()),
        );
    };
    let timeout = timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(60))
        .min(MAX_WAIT);
    let deadline = Instant::now() + timeout;
    let highest_before = ctx
        .shared
        .catalog()
        .models
        .get(name)
        .map_or(0, |m| m.highest);
    let sidecar = cfg
        .inbox
        .join(format!("{name}{}", names::SIDECAR_SUFFIX))
        .display()
        .to_string();
    let shown = path.display().to_string();
    loop {
        let published = ctx.shared.published();
        let catalog = ctx.shared.catalog();
        if let Some(rec) = catalog
            .sources
            .get(entry)
            .filter(|r| r.fingerprint == fingerprint && r.model == name)
            && let Some(m) = catalog.models.get(name)
            && let Some(v) = rec.version.and_then(|n| m.find(n))
        {
            let info = version_info_in(&cfg, name, v, m);
            return to_json(
                &serde_json::json!({ "version": info, "created": v.number > highest_before }),
            );
        }
        // Deleted while waiting: it will never be registered, so say so now rather than
        // at the deadline. (Checked after the catalog: an entry registered and then
        // removed has its answer above.)
        if path.symlink_metadata().is_err() {
            return Response::err(
                ErrorCode::EntryNotFound,
                format!("{shown} was removed from the inbox before it was registered"),
            );
        }
        let (problems, ..) = ctx.board.snapshot();
        if let Some(p) = problems
            .iter()
            .find(|p| p.path == sidecar || p.path == shown)
        {
            return Response::err(ErrorCode::Blocked, p.message.clone());
        }
        let now = Instant::now();
        if now >= deadline {
            return Response::err(
                ErrorCode::Timeout,
                format!(
                    "{shown} was not registered within {} ms (see `modelreg status`)",
                    timeout.as_millis()
                ),
            );
        }
        // Woken by each publication; the short tick notices problems (which publish
        // nothing) and the deadline.
        let tick = (deadline - now).min(Duration::from_millis(100));
        tokio::select! {
            _ = published => {}
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

async fn verify(ctx: &Context, name: Option<String>) -> Response {
    let catalog = ctx.shared.catalog();
    if let Some(n) = &name
        && let Err(r) = find_model(&catalog, n)
    {
        return r;
    }
    let cfg = ctx.config();
    let report = tokio::task::spawn_blocking(move || {
        crate::verify::verify(&cfg.root, &cfg.store, &catalog, name.as_deref())
    })
    .await;
    match report {
        Ok(r) => to_json(&r),
        Err(e) => Response::err(ErrorCode::Internal, format!("verify failed: {e}")),
    }
}

fn abs(cfg: &Config, rel: &str) -> String {
    cfg.root.join(rel).display().to_string()
}

fn version_dir(cfg: &Config, name: &str, v: &Version) -> String {
    crate::store::version_dir(&cfg.store, name, v.number)
        .display()
        .to_string()
}

fn primary_path(cfg: &Config, name: &str, v: &Version) -> String {
    match (v.kind, v.files.as_slice()) {
        (Kind::File, [only]) => abs(cfg, &only.path),
        _ => version_dir(cfg, name, v),
    }
}

/// The answer form of a version, with its state and the aliases pointing to it.
pub fn version_info_in(cfg: &Config, name: &str, v: &Version, m: &Model) -> VersionInfo {
    let mut info = version_info(cfg, name, v);
    info.aliases = m
        .aliases
        .iter()
        .filter(|(_, n)| **n == v.number)
        .map(|(a, _)| a.clone())
        .collect();
    info
}

/// The answer form of a version: absolute paths, sizes, metrics.
pub fn version_info(cfg: &Config, name: &str, v: &Version) -> VersionInfo {
    let (state, mark) = match (&v.removed, &v.deprecated) {
        (Some(m), _) => ("removed", Some(m.clone())),
        (None, Some(m)) => ("deprecated", Some(m.clone())),
        (None, None) => ("live", None),
    };
    VersionInfo {
        state: state.to_string(),
        aliases: Vec::new(),
        mark,
        name: name.to_string(),
        version: format!("v{}", v.number),
        number: v.number,
        kind: v.kind,
        path: primary_path(cfg, name, v),
        dir: version_dir(cfg, name, v),
        files: v
            .files
            .iter()
            .map(|f| FileInfo {
                path: abs(cfg, &f.path),
                sha256: f.sha256.clone(),
                size: f.size,
            })
            .collect(),
        size: v.files.iter().map(|f| f.size).sum(),
        source: v.source.clone(),
        registered_at: v.registered_at.clone(),
        metrics: v.metrics.clone(),
        metadata: v.metadata.clone(),
        metrics_updated_at: v.metrics_history.last().map(|c| c.replaced_at.clone()),
    }
}

async fn status(ctx: &Context) -> Response {
    let (tx, rx) = oneshot::channel();
    let waiting = if ctx.settler.send(SettlerMsg::Status(tx)).is_ok() {
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut waiting = waiting;
    for w in &mut waiting {
        if let Some(p) = ctx.board.copy_progress(&w.name) {
            w.bytes_done = Some(p.done);
            w.bytes_total = Some(p.total);
            w.rate_bytes_per_sec = p.rate();
            w.eta_secs = p.eta_secs();
        }
    }
    let catalog = ctx.shared.catalog();
    let cfg = ctx.config();
    let (problems, recent_errors, registered, watch) = ctx.board.snapshot();
    to_json(&StatusInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        uptime_secs: ctx.started.elapsed().as_secs_f64(),
        root: cfg.root.display().to_string(),
        config: cfg.source.to_string(),
        inbox: cfg.inbox.display().to_string(),
        watch,
        settle_secs: cfg.settle.as_secs_f64(),
        models: catalog.models.len(),
        versions: catalog.version_count(),
        registered_since_start: registered,
        waiting,
        problems,
        recent_errors,
        recent_changes: ctx.board.events(),
    })
}

/// Binds the control socket with owner-only permissions (owner and `group` when one is
/// named). A socket file left by a daemon that died is replaced; one that answers means
/// another daemon is serving.
pub fn bind(path: &Path, group: Option<&str>) -> crate::error::Result<UnixListener> {
    use crate::error::Error;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::Other(format!(
                "another daemon is answering on {}",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|e| Error::io("remove stale socket", path, e))?;
        tracing::info!(socket = %path.display(), "removed a stale socket left by an earlier daemon");
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create socket folder", dir, e))?;
    }
    // The socket file takes its mode from the umask at bind time; narrow it for this one
    // call so the socket is never, even briefly, open to others. Nothing else creates
    // files at this point of start-up.
    // SAFETY: umask only swaps the process's file mode mask.
    let old = unsafe { libc::umask(0o177) };
    let r = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let listener = r.map_err(|e| Error::io("bind control socket", path, e))?;
    if let Some(group) = group {
        let gid = group_id(group)
            .ok_or_else(|| Error::Other(format!("socket_group: no group named {group:?}")))?;
        // A new file takes the process's group: under systemd (Group= in the unit) the
        // socket already has it, and a chown there would be refused anyway
        // (SystemCallFilter=~@privileged answers EPERM). Only chown when it changes something.
        use std::os::unix::fs::MetadataExt;
        let have = std::fs::symlink_metadata(path)
            .map_err(|e| Error::io("stat control socket", path, e))?
            .gid();
        if have != gid {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| {
                Error::Other(format!(
                    "socket_group {group}: cannot give the control socket {} to group {group} \
                     (gid {gid}): {e}. Run the daemon with {group} as its group (Group={group} \
                     in the systemd unit), or leave socket_group unset",
                    path.display()
                ))
            })?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| Error::io("chmod control socket", path, e))?;
    }
    Ok(listener)
}

/// The gid of a group name (or a numeric gid).
fn group_id(name: &str) -> Option<u32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    let c = std::ffi::CString::new(name).ok()?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getgrnam_r writes only into grp/buf.
    let rc =
        unsafe { libc::getgrnam_r(c.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut out) };
    (rc == 0 && !out.is_null()).then_some(grp.gr_gid)
}
