//! The poll backend: the inbox stat-walked every interval.
//!
//! For network filesystems, and where inotify cannot be set up.
//!
//! Polling sees only sizes and mtimes, never a close-after-write, so open writes are
//! judged by the lease probe and the stale-write bound (see [`super::lease`]).

use std::path::Path;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use super::{Forward, Watching};

/// Polls `inbox` every `interval`, forwarding to `handler`; `why` says, for `status`,
/// why the inbox is polled rather than watched with inotify.
pub(super) fn watch(
    inbox: &Path,
    interval: Duration,
    handler: Forward,
    why: String,
) -> Result<Watching, String> {
    // Never follow links: a link to /usr would have the poller walk and stat all of
    // it every interval. Links inside the inbox are judged by `inbox::look`.
    let cfg = notify::Config::default()
        .with_poll_interval(interval)
        .with_follow_symlinks(false);
    let mut w = notify::PollWatcher::new(handler, cfg).map_err(|e| e.to_string())?;
    w.watch(inbox, RecursiveMode::Recursive)
        .map_err(|e| format!("cannot poll {}: {e}", inbox.display()))?;
    Ok(Watching {
        _watcher: Box::new(w),
        description: format!(
            "poll every {} ({why})",
            humantime::format_duration(interval)
        ),
        reports_close: false,
    })
}

/// The name of the network filesystem `path` is on, if it is on one (by statfs magic).
pub(super) fn network_filesystem(path: &Path) -> Option<&'static str> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    filesystem_name(st.f_type as i64)
}

/// Network and remote filesystems on which inotify does not see other machines' changes.
fn filesystem_name(magic: i64) -> Option<&'static str> {
    Some(match magic as u32 {
        0x6969 => "NFS",
        0x517B => "SMB",
        0xFF53_4D42 => "CIFS",
        0xFE53_4D42 => "SMB2",
        0x00C3_6400 => "CephFS",
        0x5346_414F => "AFS",
        0x0102_1997 => "9P",
        0x6573_5546 => "a FUSE filesystem",
        0x0BD0_0BD0 => "Lustre",
        0x4750_4653 => "GPFS",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_filesystems_by_magic() {
        assert_eq!(filesystem_name(0x6969), Some("NFS"));
        assert_eq!(filesystem_name(0xFF53_4D42u32 as i64), Some("CIFS"));
        assert_eq!(filesystem_name(0xEF53), None, "ext4 is local");
        assert_eq!(filesystem_name(0x0102_1994), None, "tmpfs is local");
        assert_eq!(network_filesystem(Path::new("/")), None);
    }
}
