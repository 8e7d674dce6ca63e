//! `run(config, control)`: starts the workers and owns the start-up and shutdown order.
//!
//! Start: take the root's lock (an flock on an owner-only file in the root), load registry.yaml (refusing one that does not parse),
//! bring the store in line with it after a crash, bind the socket, start watching, then
//! reconcile the inbox. Shutdown (on [`Control::Shutdown`]): stop watching, let the
//! registrar roll back the copies under way and commit what finished, stop serving,
//! remove the socket. The library installs no signal handlers; the binary maps signals
//! to [`Control`] messages and tests send them directly.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{Config, Settings};
use crate::error::{Error, Result};
use crate::ingest::{Registrar, Shared};
use crate::registry::{Catalog, persist};
use crate::server::{self, Context};
use crate::shutdown;
use crate::status::StatusBoard;
use crate::store;
use crate::watcher::{self, Overflow, Settler, SettlerMsg};

/// The lock file, in the root, held for the daemon's whole life.
pub const LOCK_FILE: &str = ".modelreg.lock";

/// What the binary (or a test) tells a running daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop cleanly (SIGTERM, SIGINT).
    Shutdown,
    /// Re-read the settings (SIGHUP).
    Reload,
}

/// Called after a successful reload with the new settings (the binary adjusts logging).
pub type OnReload = Box<dyn Fn(&Config) + Send + Sync>;

/// Holds the root's lock; released when dropped (or when the process dies).
///
/// The lock is an flock on `<root>/.modelreg.lock`, a file only the daemon's user can open
/// (mode 0600, created without following links, set again at every start): an flock needs
/// nothing but an open descriptor, so a file or folder a group member can open (the root
/// folder itself is 0755) is one a member could hold locked to keep the daemon from ever
/// starting. In the documented layout (root 0755, owned by the daemon's user) a member
/// cannot delete or replace the file either. The file names the pid of the daemon.
///
/// If the root's owner deletes the file while a daemon runs, a second daemon would make a
/// new one and lock it; two more checks stop it: the root folder is also flocked, and a
/// lock on it held by a process of the daemon's own user means a daemon runs (a lock held
/// by anyone else is only reported: it cannot be what keeps two daemons apart), and the
/// socket refuses a second bind while a daemon answers on it.
#[derive(Debug)]
pub struct RootLock {
    _file: File,
    _dir: File,
    /// The store's and the registry's folders when they are elsewhere (see
    /// [`RootLock::guard_folders`]).
    extra: Vec<File>,
    path: PathBuf,
}

impl RootLock {
    /// Takes the lock of `root`, or says which process holds it.
    pub fn acquire(root: &Path) -> Result<RootLock> {
        let path = root.join(LOCK_FILE);
        let mut file = open_lock_file(&path)?;
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        let held = |pid: Option<u32>| Error::AlreadyRunning {
            root: root.to_path_buf(),
            pid: pid.map_or_else(
                || "unknown: the pid recorded in the lock file is not running".into(),
                |p| p.to_string(),
            ),
        };
        // A lock on the file held by another user (a file an older version left
        // group-readable, opened before it was made owner-only) is no daemon of ours:
        // the file is replaced by a new one.
        if let Err(std::fs::TryLockError::WouldBlock) = file.try_lock()
            && let Some(pid) = lock_holder(&file)
            && process_uid(pid) != Some(me)
        {
            tracing::warn!(
                "the lock file {} was held by pid {pid}, not of the daemon's user; replaced",
                path.display()
            );
            std::fs::remove_file(&path).map_err(|e| Error::io("remove lock file", &path, e))?;
            file = open_lock_file(&path)?;
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(held(lock_holder(&file).or_else(|| recorded_pid(&file))));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io("lock", &path, e)),
        }
        let dir = File::open(root).map_err(|e| Error::io("open root folder", root, e))?;
        if let Err(std::fs::TryLockError::WouldBlock) = dir.try_lock() {
            match lock_holder(&dir) {
                Some(pid) if process_uid(pid) == Some(me) => {
                    return Err(held(Some(pid)));
                }
                holder => tracing::warn!(
                    "the root folder {} is locked by {}, not a modelreg daemon of this user; \
                     ignored (the daemon's lock is {})",
                    root.display(),
                    holder.map_or("an unknown process".into(), |p| format!("pid {p}")),
                    path.display()
                ),
            }
        }
        // The pid, for the message above.
        let mut f = &file;
        let wrote = f
            .set_len(0)
            .and_then(|_| writeln!(f, "{}", std::process::id()))
            .and_then(|_| f.sync_all());
        if let Err(e) = wrote {
            tracing::warn!("write lock file {}: {e}", path.display());
        }
        Ok(RootLock {
            _file: file,
            _dir: dir,
            extra: Vec::new(),
            path,
        })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Also locks `dirs` (the store, the registry's folder) when they are not the root:
    /// a config with absolute paths can point a daemon of another root at this root's
    /// store or catalog, and the root's lock alone would not see it. Each folder is
    /// flocked; one already locked by a process of the daemon's own user is another
    /// daemon using it, and refuses the start. A lock held by anyone else is only
    /// logged (a group member could hold any folder they can open, as for the root).
    pub fn guard_folders(&mut self, dirs: &[&Path]) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        let id = |f: &File| f.metadata().ok().map(|m| (m.dev(), m.ino()));
        let mut seen: Vec<(u64, u64)> = id(&self._dir).into_iter().collect();
        for dir in dirs {
            let Ok(f) = File::open(dir) else { continue };
            let Some(key) = id(&f) else { continue };
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            match f.try_lock() {
                Ok(()) => self.extra.push(f),
                Err(std::fs::TryLockError::WouldBlock) => match lock_holder(&f) {
                    Some(pid) if process_uid(pid) == Some(me) => {
                        return Err(Error::AlreadyRunning {
                            root: dir.to_path_buf(),
                            pid: format!("{pid}, using this folder"),
                        });
                    }
                    holder => tracing::warn!(
                        "the folder {} is locked by {}, not a modelreg daemon of this user; ignored",
                        dir.display(),
                        holder.map_or("an unknown process".into(), |p| format!("pid {p}"))
                    ),
                },
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(Error::io("lock", dir, e));
                }
            }
        }
        Ok(())
    }
}

/// Opens (creating it when missing) the lock file: never through a symbolic link, only a
/// regular file of the daemon's own user, made owner-only (a file left by an older
/// version may have been group-readable).
fn open_lock_file(path: &Path) -> Result<File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                Error::Other(format!(
                    "the lock file {} is a symbolic link; it is never followed. Remove it \
                     (the daemon makes a new one) and start again",
                    path.display()
                ))
            } else {
                Error::io("open lock file", path, e)
            }
        })?;
    let m = file
        .metadata()
        .map_err(|e| Error::io("stat lock file", path, e))?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if !m.is_file() || m.uid() != me {
        return Err(Error::Other(format!(
            "the lock file {} is not a regular file of the daemon's user (uid {me}): someone \
             else made it. Remove it (the daemon makes a new one) and start again",
            path.display()
        )));
    }
    if m.mode() & 0o7777 != 0o600 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io("make owner-only", path, e))?;
    }
    Ok(file)
}

/// The pid written in the lock file, when that process still runs.
fn recorded_pid(file: &File) -> Option<u32> {
    use std::io::Read;
    let mut text = String::new();
    let mut f = file;
    f.read_to_string(&mut text).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    // SAFETY: signal 0 only checks that the process exists (EPERM: it does, not ours).
    let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    alive.then_some(pid)
}

/// The pid holding an flock on `file`, from /proc/locks (the kernel's own record).
fn lock_holder(file: &File) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let m = file.metadata().ok()?;
    let id = format!(
        "{:02x}:{:02x}:{}",
        libc::major(m.dev()),
        libc::minor(m.dev()),
        m.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // "1: FLOCK ADVISORY WRITE <pid> <maj:min:ino> 0 EOF"; waiters have "->" first.
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&id.as_str()))
            .then(|| f.get(4)?.parse().ok())
            .flatten()
    })
}

/// The user a process runs as, when it can be seen.
fn process_uid(pid: u32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}"))
        .ok()
        .map(|m| m.uid())
}

/// Loads the catalog for start-up: creates an empty registry.yaml when there is none,
/// refuses one that does not parse (path, line, column; the file is left untouched).
pub fn load_catalog(config: &Config) -> Result<Catalog> {
    let removed = persist::remove_stale_temporaries(&config.registry)?;
    if removed > 0 {
        tracing::info!("removed {removed} temporary file(s) left by an interrupted registry write");
    }
    let loaded = persist::load_with_cache(&config.registry)?;
    // The parser's buffers are freed by now; give that memory back to the system rather
    // than keep it resident for the daemon's whole life.
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
    match loaded {
        Some(c) => Ok(c),
        None => {
            let c = Catalog::default();
            // No registry.yaml but versions in the store: the catalog was lost, not new.
            let lost = store::audit(&config.store, &c);
            if !lost.is_empty() {
                return Err(lost_versions(config, &lost, "does not exist"));
            }
            persist::write_atomic(&config.registry, persist::to_yaml(&c)?.as_bytes())?;
            tracing::info!(registry = %config.registry.display(), "created an empty registry");
            Ok(c)
        }
    }
}

/// The refusal to start over a catalog that lost versions the store still holds.
fn lost_versions(config: &Config, lost: &[String], what: &str) -> Error {
    let shown: Vec<&str> = lost.iter().take(5).map(String::as_str).collect();
    let more = if lost.len() > shown.len() {
        format!(" and {} more", lost.len() - shown.len())
    } else {
        String::new()
    };
    let msg = format!(
        "{} {what}, but the store {} holds {} version(s) it does not name ({}{more}): the \
         catalog lost versions (deleted, or restored from an older copy). Not starting, so \
         that no version number is given twice and nothing stored is overwritten. Run \
         `modelreg recover --root {}` to add them back from the store's manifests (what \
         cannot be rebuilt is listed), or move them out of the store.",
        config.registry.display(),
        config.store.display(),
        lost.len(),
        shown.join(", "),
        config.root.display()
    );
    tracing::error!("{msg}");
    Error::Other(msg)
}

/// Runs the daemon until a [`Control::Shutdown`] arrives (or `control` closes).
pub async fn run(
    config: Config,
    mut control: mpsc::UnboundedReceiver<Control>,
    on_reload: Option<OnReload>,
) -> Result<()> {
    let started = Instant::now();
    std::fs::create_dir_all(&config.root).map_err(|e| Error::io("create root", &config.root, e))?;
    let mut lock = RootLock::acquire(&config.root)?;
    for dir in [&config.inbox, &config.store] {
        // An inbox that is a symbolic link is left alone here; the layout check decides.
        if std::fs::symlink_metadata(dir).is_ok() {
            continue;
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create folder", dir, e))?;
        if dir == &config.store {
            // Whatever the umask: nobody but the daemon's user writes the store.
            store::set_folder_mode(dir)?;
        }
    }
    let registry_dir = config.registry.parent().unwrap_or(&config.root);
    lock.guard_folders(&[&config.store, registry_dir])?;
    let t0 = std::time::Instant::now();
    let catalog = load_catalog(&config)?;
    let loaded = t0.elapsed();
    let recovery = store::recover(&config.store, &catalog)?;
    let recovered = t0.elapsed() - loaded;
    for v in &recovery.rolled_forward {
        tracing::warn!("finished publishing {v}, interrupted by a crash");
    }
    for p in &recovery.removed {
        tracing::info!("removed unregistered staging folder {p}, left by a crash");
    }
    let lost = store::audit(&config.store, &catalog);
    if !lost.is_empty() {
        return Err(lost_versions(&config, &lost, "exists"));
    }
    // Socket activation: systemd may hand us the listening socket; otherwise bind it.
    let (listener, inherited) = match crate::systemd::inherited_listener()? {
        Some(l) => {
            let l = tokio::net::UnixListener::from_std(l)
                .map_err(|e| Error::Other(format!("inherited socket: {e}")))?;
            (l, true)
        }
        None => (
            server::bind(&config.socket, config.socket_group.as_deref())?,
            false,
        ),
    };
    let listen_path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf))
        .unwrap_or_else(|| config.socket.clone());
    tracing::info!(
        root = %config.root.display(),
        config = %config.source,
        models = catalog.models.len(),
        versions = catalog.version_count(),
        socket = %listen_path.display(),
        inherited,
        "modelreg started"
    );

    let settings = Arc::new(Settings::new(config));
    let config = settings.current();
    let board = Arc::new(StatusBoard::default());
    // The root, inbox and store as they are now: replaced or deleted ones are noticed
    // from here on (see `layout`).
    let layout = Arc::new(crate::layout::Layout::pin(&config));
    if let Some(why) = layout.refused_at_start() {
        board.set_serious_problem(&config.inbox.display().to_string(), why);
    }
    // A removal whose tombstone was written but whose files a crash kept: finish it.
    for (name, m) in &catalog.models {
        for v in m.versions.iter().filter(|v| v.removed.is_some()) {
            let dir = store::version_dir(&config.store, name, v.number);
            if dir.exists() {
                // One folder that cannot be removed must not stop the daemon.
                match store::retire(&config.store, name, v.number) {
                    Ok(()) => tracing::info!("finished removing {name} v{}", v.number),
                    Err(e) => board.set_problem(
                        &dir.display().to_string(),
                        &format!("{name} v{} was removed but its files remain: {e}", v.number),
                    ),
                }
            }
        }
    }
    tracing::info!(?loaded, ?recovered, "catalog loaded, store recovered");
    // A catalog that names files that are gone still starts (everything else is served);
    // each missing file becomes a problem in `status`. Checked in the background: with
    // many versions it takes a while, and `get` checks the files it answers with anyway.
    {
        let (board, root, catalog) = (board.clone(), config.root.clone(), catalog.clone());
        let store_dir = config.store.clone();
        tokio::task::spawn_blocking(move || {
            // A store made by an older version under a loose umask: nobody but the
            // daemon's user may add, remove or rename anything in it.
            let n = store::tighten_modes(&store_dir);
            if n > 0 {
                tracing::warn!(store = %store_dir.display(), "removed write permission for group and others from {n} folder(s) or file(s) of the store");
            }
            // Never followed (see `store::check_no_link`), but shown: nothing stored
            // there can be served, removed or added to.
            for (p, why) in store::linked_folders(&store_dir) {
                board.set_problem(&p.display().to_string(), &why);
            }
            for p in crate::verify::missing_files(&root, &catalog) {
                board.set_problem(&p.path, &format!("{}; run `modelreg verify`", p.detail));
            }
        });
    }
    let shared = Arc::new(Shared::new(catalog.clone()));
    let (trigger, stop) = shutdown::channel();
    let (reg_tx, reg_rx) = mpsc::unbounded_channel();
    let (settler_tx, settler_rx) = mpsc::unbounded_channel();
    let (fs_tx, fs_rx) = mpsc::channel(watcher::EVENT_QUEUE);
    let overflow = Arc::new(Overflow::default());

    // Watch before the first scan, so nothing written in between is missed. A refused
    // inbox is not watched at all: what it leads to is not ours to look at.
    let fs_watcher = if layout.refused_at_start().is_some() {
        board.set_watch("nothing (the inbox was refused; see problems)".into());
        drop(fs_tx);
        None
    } else {
        let w = watcher::start(
            &config.inbox,
            config.watch,
            config.poll_interval,
            fs_tx,
            overflow.clone(),
        )
        .map_err(Error::Other)?;
        board.set_watch(w.description.clone());
        tracing::info!(inbox = %config.inbox.display(), "watching with {}", w.description);
        Some(w)
    };

    let reg_tx_ctx = reg_tx.clone();
    // Links (latest, best, aliases) are brought in line at start: settings may have changed.
    let _ = reg_tx.send(crate::ingest::RegistrarMsg::RefreshLinks);
    let mut registrar = Registrar::new(
        settings.clone(),
        catalog,
        shared.clone(),
        board.clone(),
        settler_tx.clone(),
        reg_tx.clone(),
    );
    registrar.set_layout(layout.clone());
    let registrar_task = tokio::spawn(registrar.run(reg_rx, stop.clone()));

    let mut settler = Settler::new(
        config.inbox.clone(),
        config.settle,
        config.follow_symlinks,
        board.clone(),
        reg_tx,
    );
    settler.track_writes(fs_watcher.as_ref().is_none_or(|w| w.reports_close));
    settler.set_layout(layout);
    settler.rescan(false);
    let settler_task = on_own_thread(
        "settler",
        settler.run(
            fs_rx,
            settler_rx,
            overflow,
            config.reconcile_interval,
            stop.clone(),
        ),
    )
    .map_err(|e| Error::Other(format!("cannot start the settler's thread: {e}")))?;
    tokio::spawn(follow_settle(
        settings.subscribe(),
        settler_tx.clone(),
        stop.clone(),
    ));

    let ctx = Arc::new(Context {
        shared,
        settings: settings.clone(),
        board: board.clone(),
        settler: settler_tx.clone(),
        registrar: reg_tx_ctx,
        started,
    });
    let server_task = tokio::spawn(server::serve(listener, ctx.clone(), stop.clone()));

    // Ready means a query is answered: ask our own socket before saying so. The first
    // reconciliation (the inbox scan) is already done above.
    let answered = tokio::task::spawn_blocking(move || self_query(&listen_path)).await;
    match answered {
        Ok(Ok(())) => crate::systemd::ready(&status_line(&ctx)),
        Ok(Err(e)) => {
            return Err(Error::Other(format!(
                "the control socket does not answer: {e}"
            )));
        }
        Err(e) => return Err(Error::Other(format!("readiness check failed: {e}"))),
    }
    if crate::systemd::under_systemd() {
        tokio::spawn(report_status(ctx.clone(), stop.clone()));
    }
    if let Some(period) = crate::systemd::watchdog_interval() {
        tokio::spawn(feed_watchdog(period, settler_tx.clone(), stop.clone()));
    }

    while let Some(c) = control.recv().await {
        match c {
            Control::Shutdown => break,
            Control::Reload => {
                crate::systemd::reloading();
                reload(&ctx, on_reload.as_ref()).await;
                crate::systemd::ready(&status_line(&ctx));
            }
        }
    }

    crate::systemd::stopping();
    tracing::info!("shutting down");
    drop(fs_watcher);
    trigger.trigger();
    let _ = settler_task.await;
    let _ = registrar_task.await;
    let _ = server_task.await;
    // Leave a start-up cache of the final catalog for the next start.
    let registry = ctx.config().registry.clone();
    let last = ctx.shared.catalog();
    let t = std::time::Instant::now();
    match tokio::task::spawn_blocking(move || persist::write_cache(&registry, &last)).await {
        Ok(Ok(())) => tracing::debug!(took = ?t.elapsed(), "start-up cache written"),
        Ok(Err(e)) => tracing::warn!("start-up cache not written: {e}"),
        Err(e) => tracing::warn!("start-up cache not written: {e}"),
    }
    // An inherited socket belongs to systemd, which keeps it for the next start.
    let socket = ctx.config().socket.clone();
    if !inherited
        && let Err(e) = std::fs::remove_file(&socket)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("remove {}: {e}", socket.display());
    }
    tracing::info!("stopped");
    Ok(())
}

/// Runs `task` on a thread of its own (a single-threaded runtime). The settler's every
/// step looks at the file system, and a rescan walks whole folders: on the shared runtime
/// that would hold up the threads answering the socket (walking a folder of 100k files
/// there, as `wait` did, took `ping` from 0.1 ms to half a second).
fn on_own_thread<F>(name: &str, task: F) -> std::io::Result<tokio::task::JoinHandle<()>>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            rt.block_on(task);
            let _ = done.send(());
        })?;
    Ok(tokio::spawn(async move {
        let _ = finished.await;
    }))
}

/// Connects to our own socket and pings, retrying briefly (the accept loop may not have
/// been polled yet).
fn self_query(path: &Path) -> std::result::Result<(), String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = crate::client::Client::connect(path)
            .and_then(|mut c| c.call(&crate::protocol::Request::Ping {}));
        match r {
            Ok(_) => return Ok(()),
            Err(e) if std::time::Instant::now() > deadline => return Err(e.to_string()),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
}

/// The one-line summary sent to systemd as STATUS=.
fn status_line(ctx: &Context) -> String {
    let c = ctx.shared.catalog();
    let (problems, _, registered, watch) = ctx.board.snapshot();
    let mut line = format!(
        "{} models, {} versions, {registered} registered since start; watching with {watch}; ",
        c.models.len(),
        c.version_count()
    );
    match problems.first() {
        None => line.push_str("no problems"),
        Some(p) => line.push_str(&format!(
            "{} problem(s), e.g. {}",
            problems.len(),
            p.message
        )),
    }
    line
}

/// Sends STATUS= when counts or problems change (never on a timer).
async fn report_status(ctx: Arc<Context>, stop: shutdown::Shutdown) {
    let mut last = String::new();
    loop {
        tokio::select! {
            _ = stop.wait() => break,
            _ = ctx.board.changed() => {}
        }
        // Let a burst of changes settle into one line.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let line = status_line(&ctx);
        if line != last {
            crate::systemd::status(&line);
            last = line;
        }
    }
}

/// Pings the watchdog at half its period, but only while the settler's loop answers: a
/// daemon whose event loop is stuck is restarted by systemd.
async fn feed_watchdog(
    period: std::time::Duration,
    settler: mpsc::UnboundedSender<SettlerMsg>,
    stop: shutdown::Shutdown,
) {
    let mut tick = tokio::time::interval(period / 2);
    loop {
        tokio::select! {
            _ = stop.wait() => break,
            _ = tick.tick() => {}
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if settler.send(SettlerMsg::Status(tx)).is_err() {
            break;
        }
        match tokio::time::timeout(period / 2, rx).await {
            Ok(Ok(_)) => crate::systemd::watchdog(),
            _ => tracing::warn!(
                "the settler did not answer within {:?}; not feeding the watchdog",
                period / 2
            ),
        }
    }
}

/// Re-reads the settings from where they came from and publishes them: every task reads
/// the new values at its next use. Start-up settings keep their running value
/// ([`Config::reloaded`]), and the log and `status` say which changed and need a restart.
async fn reload(ctx: &Context, on_reload: Option<&OnReload>) {
    let old = ctx.config();
    let explicit = match &old.source {
        crate::config::ConfigSource::File(p) => Some(p.clone()),
        crate::config::ConfigSource::Embedded => None,
    };
    // Reading and parsing a file: off the async threads.
    let root = old.root.clone();
    let loaded =
        tokio::task::spawn_blocking(move || Config::load(&root, explicit.as_deref())).await;
    let new = match loaded.map_err(|e| e.to_string()) {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return reload_failed(ctx, e.to_string()),
        Err(e) => return reload_failed(ctx, e),
    };
    let (running, needs_restart) = old.reloaded(new);
    if let Some(f) = on_reload {
        f(&running);
    }
    let source = running.source.to_string();
    ctx.settings.publish(running);
    if needs_restart.is_empty() {
        ctx.board.clear_problem("reload");
        tracing::info!(config = %source, "settings reloaded");
    } else {
        // A WARN line in the log and a lasting problem in `status` (set_problem does both).
        ctx.board.set_problem(
            "reload",
            &format!(
                "settings reloaded, but {} needs a restart to change (the running value is kept)",
                needs_restart.join(", ")
            ),
        );
    }
}

fn reload_failed(ctx: &Context, why: String) {
    ctx.board.error(format!(
        "reload failed, keeping the current settings: {why}"
    ));
}

/// Hands the published settle period to the settler, which keeps its own copy.
async fn follow_settle(
    mut settings: tokio::sync::watch::Receiver<Arc<Config>>,
    settler: mpsc::UnboundedSender<SettlerMsg>,
    stop: shutdown::Shutdown,
) {
    let mut settle = settings.borrow_and_update().settle;
    loop {
        tokio::select! {
            _ = stop.wait() => break,
            r = settings.changed() => if r.is_err() { break },
        }
        let now = settings.borrow_and_update().settle;
        if now != settle {
            settle = now;
            let _ = settler.send(SettlerMsg::SetSettle(settle));
        }
    }
}
