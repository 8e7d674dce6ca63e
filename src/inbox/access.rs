//! Ownership and permission diagnostics: whether the daemon may read an inbox file, and if not, the command that fixes it.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::users::{group_name, user_name};

/// Whether the daemon's own user may read `path` (access(2) with the effective ids, so
/// without opening it: an open would itself be an inotify event). A file it cannot read
/// would otherwise fail every copy, retried for ever; it is a problem to fix instead.
pub(super) fn readable(path: &Path, meta: &fs::Metadata) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return Ok(());
    };
    // SAFETY: `c` is a valid NUL-terminated path.
    let rc = unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::R_OK, libc::AT_EACCESS) };
    if rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EACCES) {
        // Any other failure (it vanished) is found by the next look or the copy.
        return Ok(());
    }
    Err(not_allowed(path, meta, "read"))
}

/// Why the daemon may not `verb` (read, list) `path`, and what the uploader can do.
pub(super) fn not_allowed(path: &Path, meta: &fs::Metadata, verb: &str) -> String {
    // SAFETY: geteuid/getegid cannot fail.
    let (me, my_group) = unsafe { (user_name(libc::geteuid()), group_name(libc::getegid())) };
    let what = if meta.is_dir() { "folder" } else { "file" };
    let p = path.display();
    let fix = if meta.is_dir() {
        format!("chgrp -R {my_group} {p} && chmod -R g+rX {p}")
    } else {
        format!("chgrp {my_group} {p} && chmod g+r {p}")
    };
    format!(
        "cannot {verb} {what} {p} (owner {}, group {}, mode {:04o}): the daemon runs as user \
         {me}, group {my_group}, and may not {verb} it; make it readable by group {my_group}: \
         {fix}; or copy it in with cp (which gives it the inbox's group) instead of mv",
        user_name(meta.uid()),
        group_name(meta.gid()),
        meta.mode() & 0o7777
    )
}
