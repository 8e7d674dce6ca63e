//! The control socket file: bound owner-only (or owner and group), a stale one replaced.

use std::path::Path;

use tokio::net::UnixListener;

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
