//! What `modelreg add` checks before anything is sent or copied, by the daemon's rules.
//!
//! Metrics and metadata go through the sidecar's own parser (the daemon reads both the
//! `register` request and an inbox sidecar with it), so a value over a limit is refused
//! here rather than blocking the model in the inbox. A file a writer still has open, or
//! a folder with no file, would never become the version meant: refused too.

use std::path::Path;

use modelreg::client::ClientError;
use serde_json::{Map, Value};

use super::add::refuse;

/// The metrics' JSON text as given on the command line: an integer keeps its digits
/// (so that one beyond 64 bits is refused as a sidecar refuses it, not rounded to a
/// float); any other number is the float it parsed as.
fn metrics_text(given: &[(String, String)], parsed: &Map<String, Value>) -> String {
    let items: Vec<String> = given
        .iter()
        .map(|(k, v)| {
            let t = v.trim();
            let digits = t.strip_prefix('-').unwrap_or(t);
            // Leading zeros are no JSON: such a number is the float it parsed as.
            let integer = !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && !(digits.len() > 1 && digits.starts_with('0'));
            let value = match integer {
                true => t.to_string(),
                false => parsed.get(k).map(Value::to_string).unwrap_or_default(),
            };
            format!("{}: {value}", Value::from(k.as_str()))
        })
        .collect();
    format!("{{{}}}", items.join(", "))
}

/// Checks the metrics (`given` as `key`, `value text`, and `parsed`) and the metadata
/// with the sidecar's parser and limits; the refusal names the flag and the key.
pub(super) fn check_sidecar(
    given: &[(String, String)],
    parsed: &Map<String, Value>,
    metadata: &Map<String, Value>,
) -> Result<(), ClientError> {
    if given.is_empty() && metadata.is_empty() {
        return Ok(());
    }
    let check = |given: &[(String, String)], metadata: &Map<String, Value>| {
        let metrics = metrics_text(given, parsed);
        let metadata = Value::Object(metadata.clone()).to_string();
        modelreg::sidecar::from_request("--metric/--meta", Some(&metrics), Some(&metadata))
            .map(|_| ())
    };
    let Err(all) = check(given, metadata) else {
        return Ok(());
    };
    // The refusal names the flag and key: the first one refused on its own (a limit on
    // them all together names none).
    let one = given
        .iter()
        .find_map(|g| {
            let e = check(std::slice::from_ref(g), &Map::new()).err()?;
            let why = e
                .reason
                .strip_prefix(&format!("{}: ", g.0))
                .unwrap_or(&e.reason);
            Some(format!("--metric {:?}: {why}", g.0))
        })
        .or_else(|| {
            metadata.iter().find_map(|(k, v)| {
                let m = Map::from_iter([(k.clone(), v.clone())]);
                let e = check(&[], &m).err()?;
                Some(format!("--meta {k:?}: {}", e.reason))
            })
        })
        .unwrap_or_else(|| format!("--metric/--meta: {}", all.reason));
    Err(refuse(format!("{one}; nothing was copied or registered")))
}

/// Refuses a file that a writer still has open (asked of the kernel with a read lease,
/// as the inbox asks): its copy would be as far as it is written. Where the kernel
/// cannot tell (another user's file), the daemon asks it again on the descriptor.
pub(super) fn check_not_written(path: &Path) -> Result<(), ClientError> {
    let Ok(f) = std::fs::File::open(path) else {
        return Ok(()); // the copy reports why it cannot be read
    };
    if modelreg::fsutil::open_for_writing(&f) == Some(true) {
        return Err(refuse(format!(
            "{} is still open for writing by another process; add it once it is closed (nothing was copied)",
            path.display()
        )));
    }
    Ok(())
}

/// Refuses a folder with no file (hidden ones left out, as the daemon walks it): the
/// daemon would wait for its files for ever.
pub(super) fn check_folder_has_file(dir: &Path) -> Result<(), ClientError> {
    fn any_file(dir: &Path) -> bool {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return true; // unreadable: the copy says why
        };
        rd.flatten().any(|e| {
            let hidden = e.file_name().to_string_lossy().starts_with('.');
            let p = e.path();
            !hidden && (if p.is_dir() { any_file(&p) } else { true })
        })
    }
    if any_file(dir) {
        return Ok(());
    }
    Err(refuse(format!(
        "{} holds no file (hidden ones are left out); the daemon would wait for a folder's files for ever, so nothing was copied",
        dir.display()
    )))
}

/// Refuses an inbox hand-over into an `inbox` this user may not write to, before anything
/// is copied: what was tried (and, in `refused`, why the descriptor hand-over was not
/// taken), which path, which user, the inbox's owner, group and mode, and what to do.
pub(super) fn check_inbox_writable(
    src: &Path,
    inbox: &Path,
    refused: Option<&ClientError>,
) -> Result<(), ClientError> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let Ok(c) = std::ffi::CString::new(inbox.as_os_str().as_bytes()) else {
        return Ok(());
    };
    // SAFETY: `c` is a NUL-terminated path; faccessat only reads it. AT_EACCESS: the
    // effective user, the one that would create the copy.
    let r = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::W_OK | libc::X_OK,
            libc::AT_EACCESS,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let why = std::io::Error::last_os_error();
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    let user = modelreg::users::user_name(uid);
    let (owner, group) = std::fs::metadata(inbox).map_or_else(
        |_| (String::new(), "its group".to_string()),
        |m| {
            let g = modelreg::users::group_name(m.gid());
            let shown = format!(
                " (owner {}, group {g}, mode {:o})",
                modelreg::users::user_name(m.uid()),
                m.mode() & 0o7777
            );
            // Membership helps only where the group may write.
            let g = match m.mode() & 0o030 == 0o030 {
                true => g,
                false => format!("{g}, once the inbox is group-writable (chmod g+wx)"),
            };
            (shown, g)
        },
    );
    let tried = match refused {
        Some(e) => format!("the daemon refused the hand-over ({e}) and "),
        None => String::new(),
    };
    Err(ClientError::Remote(modelreg::protocol::ErrorBody {
        code: modelreg::protocol::ErrorCode::PermissionDenied,
        message: format!(
            "{} was not registered: {tried}the inbox {}{owner} is not writable by user {user} \
             (uid {uid}): {why}; nothing was copied. Register as the daemon's user or root, or \
             as a member of the inbox's group {group}",
            src.display(),
            inbox.display()
        ),
    }))
}
