//! The root's lock: one daemon per root, store and registry folder; a refusal names the holder.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The lock file, in the root, held for the daemon's whole life.
pub const LOCK_FILE: &str = ".modelreg.lock";

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
    if m.is_file() && m.uid() != me {
        // Most often the daemon (or `recover`) started as another user than the one that
        // runs it: removing the lock would let this one write root-owned files the real
        // service cannot open (a tester's finding).
        let owner = m.uid();
        return Err(Error::Other(format!(
            "the lock file {} belongs to {} (uid {owner}), not to the user this runs as, {} \
             (uid {me}). If the daemon runs as uid {owner}, run this as that user (sudo -u \
             '#{owner}' ..., or setpriv --reuid={owner} --regid={} --init-groups ...): run as \
             another user it would leave files that user's daemon cannot open. Remove the \
             lock only if the root is meant to change hands (and chown -R the root)",
            path.display(),
            crate::users::user_name(owner),
            crate::users::user_name(me),
            m.gid()
        )));
    }
    if !m.is_file() {
        return Err(Error::Other(format!(
            "the lock file {} is not a regular file: someone else made it. Remove it (the \
             daemon makes a new one) and start again",
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
