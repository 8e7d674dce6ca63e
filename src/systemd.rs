//! systemd integration: readiness and status notifications (`sd_notify`), watchdog
//! pings, and socket activation (`LISTEN_FDS`). Everything here is a no-op outside
//! systemd (no `NOTIFY_SOCKET`, no `WATCHDOG_USEC`, no `LISTEN_FDS`), so the daemon
//! costs nothing extra when run by hand.

use std::os::fd::{AsRawFd, FromRawFd};
use std::time::Duration;

use sd_notify::NotifyState;

use crate::error::{Error, Result};

/// Whether a service manager listens for notifications.
pub fn under_systemd() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("sd_notify: {e}");
    }
}

/// READY=1 with a first status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// RELOADING=1, sent before the settings are re-read.
pub fn reloading() {
    send(&[NotifyState::Reloading]);
}

/// STOPPING=1.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// A STATUS= line.
pub fn status(line: &str) {
    send(&[NotifyState::Status(line)]);
}

/// WATCHDOG=1.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// The watchdog period when `WatchdogSec=` is set for this process.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// The listening socket systemd passed us (socket activation), if any. Only the first
/// one is used; it must be a Unix stream socket.
pub fn inherited_listener() -> Result<Option<std::os::unix::net::UnixListener>> {
    let mut fds = sd_notify::listen_fds().map_err(|e| Error::Other(format!("LISTEN_FDS: {e}")))?;
    let Some(fd) = fds.next() else {
        return Ok(None);
    };
    // SAFETY: systemd (or whoever set LISTEN_PID to our pid) hands this fd to us alone.
    let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
    listener
        .local_addr()
        .map_err(|e| Error::Other(format!("inherited fd {fd} is not a Unix socket: {e}")))?;
    if !is_listening(listener.as_raw_fd()) {
        return Err(Error::Other(format!(
            "inherited fd {fd} (LISTEN_FDS) is not a listening stream socket; check the .socket unit"
        )));
    }
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::Other(format!("inherited fd {fd}: {e}")))?;
    Ok(Some(listener))
}

fn is_listening(fd: i32) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid out-parameters of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && v != 0
}
