//! Looking at the inbox: what each top-level entry is, the (size, mtime, ctime, inode) of
//! its files, folders walked, symbolic links checked against the policy. Used by the
//! settler to decide when an entry is quiet and by ingest to re-check it after copying.
//! [`open_checked`] opens a file for copying so that what is read is the file that was
//! looked at, not whatever a path leads to a moment later.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::names::{self, Entry};
use crate::fsutil::sha256_hex;

/// Folders nested deeper than this inside an artifact folder are refused.
const MAX_DEPTH: usize = 32;

/// What identifies a file's state without reading it. The ctime is in it because no
/// user can set it: a rewrite in place that restores the mtime (`touch -d`, utimensat)
/// still moves the ctime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    /// Bytes.
    pub size: u64,
    /// Modification time in nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Inode number.
    pub ino: u64,
    /// Device of the filesystem holding it (with `ino`, the file's identity).
    pub dev: u64,
    /// Status change time in nanoseconds since the epoch.
    pub ctime_ns: i128,
}

impl FileStat {
    /// From metadata (of the file itself, or of a symlink's target).
    pub fn of(m: &fs::Metadata) -> Self {
        FileStat {
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ino: m.ino(),
            dev: m.dev(),
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        }
    }
}

/// One file of an entry: where it is, where it goes in the version folder, its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFile {
    /// Absolute source path.
    pub src: PathBuf,
    /// Path relative to the version folder (for a single file: its file name).
    pub rel: String,
    /// Its state when looked at.
    pub stat: FileStat,
}

/// A top-level inbox entry as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Look {
    /// It no longer exists.
    Gone,
    /// It is not an artifact (hidden, temporary): nothing to do.
    Ignored,
    /// It cannot be registered; the reason says why. Shown in `status`.
    Refused(String),
    /// A folder that still holds temporaries (an rsync or download in progress).
    Incomplete(String),
    /// Its files, sorted by `rel`. A single file has exactly one.
    Files { folder: bool, files: Vec<EntryFile> },
}

impl Look {
    /// The fingerprint recorded in the catalog's `sources`: `size:mtime:inode:cctime` of
    /// a file, or `dir2:` and a digest of the relative paths and states of every file of a
    /// folder.
    pub fn fingerprint(&self) -> Option<String> {
        self.fingerprint_with("dir2", file_fingerprint)
    }

    /// The fingerprint as versions before ctime was added wrote it (`size:mtime:inode`,
    /// `dir:`), so that sources registered by them are still recognised after an upgrade
    /// instead of all being copied and hashed again.
    pub fn legacy_fingerprint(&self) -> Option<String> {
        self.fingerprint_with("dir", legacy_file_fingerprint)
    }

    fn fingerprint_with(&self, dir_tag: &str, file: fn(&FileStat) -> String) -> Option<String> {
        match self {
            Look::Files {
                folder: false,
                files,
            } => files.first().map(|f| file(&f.stat)),
            Look::Files {
                folder: true,
                files,
            } => {
                let mut listing = String::new();
                for f in files {
                    listing.push_str(&format!("{}\0{}\n", f.rel, file(&f.stat)));
                }
                Some(format!(
                    "{dir_tag}:{}:{}",
                    files.len(),
                    &sha256_hex(listing.as_bytes())[..32]
                ))
            }
            _ => None,
        }
    }

    /// Whether `recorded` (a catalog fingerprint) describes this look: equal to its
    /// fingerprint, or written in the legacy format (no ctime) and equal to its legacy
    /// fingerprint.
    pub fn matches(&self, recorded: &str) -> bool {
        if self.fingerprint().as_deref() == Some(recorded) {
            return true;
        }
        is_legacy_fingerprint(recorded) && self.legacy_fingerprint().as_deref() == Some(recorded)
    }

    /// The states of the files, keyed by path relative to the inbox, for quiet checks.
    pub fn stats(&self, entry: &str) -> BTreeMap<String, FileStat> {
        match self {
            Look::Files {
                folder: false,
                files,
            } => files.iter().map(|f| (entry.to_string(), f.stat)).collect(),
            Look::Files {
                folder: true,
                files,
            } => files
                .iter()
                .map(|f| (format!("{entry}/{}", f.rel), f.stat))
                .collect(),
            _ => BTreeMap::new(),
        }
    }
}

fn file_fingerprint(s: &FileStat) -> String {
    format!("{}:{}:{}:c{}", s.size, s.mtime_ns, s.ino, s.ctime_ns)
}

fn legacy_file_fingerprint(s: &FileStat) -> String {
    format!("{}:{}:{}", s.size, s.mtime_ns, s.ino)
}

/// Whether a recorded fingerprint predates ctime: `dir:...`, or a file's three fields.
pub fn is_legacy_fingerprint(recorded: &str) -> bool {
    recorded.starts_with("dir:") || (!recorded.starts_with("dir2:") && !recorded.contains(":c"))
}

/// Classifies and inspects the top-level entry `name` of `inbox`.
pub fn look(inbox: &Path, name: &str, follow_symlinks: bool) -> Look {
    let path = inbox.join(name);
    let lmeta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Look::Gone,
        Err(e) => return Look::Refused(format!("cannot stat {}: {e}", path.display())),
    };
    let meta = if lmeta.file_type().is_symlink() {
        match resolve_link(inbox, &path, follow_symlinks) {
            Ok(m) => m,
            Err(reason) => {
                // A link to a temporary name is as ignorable as the name itself.
                if names::is_temporary(name) {
                    return Look::Ignored;
                }
                return Look::Refused(reason);
            }
        }
    } else {
        lmeta
    };
    let is_dir = meta.is_dir();
    match names::classify(std::ffi::OsStr::new(name), is_dir) {
        Entry::Ignored => return Look::Ignored,
        Entry::Refused { reason } => return Look::Refused(reason),
        Entry::Artifact { .. } | Entry::Sidecar { .. } => {}
    }
    if is_dir {
        let mut files = Vec::new();
        if let Err(r) = walk(inbox, &path, "", 0, follow_symlinks, &mut files) {
            return r;
        }
        // `mkdir x` comes before the files are copied in, possibly later than the settle
        // period: a folder without a file is a writer not started yet, never a version.
        if files.is_empty() {
            return Look::Incomplete(format!(
                "{}: empty folder: waiting for files",
                path.display()
            ));
        }
        files.sort_by(|a, b| a.rel.cmp(&b.rel));
        Look::Files {
            folder: true,
            files,
        }
    } else if meta.is_file() {
        if let Err(reason) = readable(&path, &meta) {
            return Look::Refused(reason);
        }
        Look::Files {
            folder: false,
            files: vec![EntryFile {
                src: path,
                rel: name.to_string(),
                stat: FileStat::of(&meta),
            }],
        }
    } else {
        Look::Refused(format!(
            "{} is not a regular file or folder",
            path.display()
        ))
    }
}

/// Follows a symlink when the policy allows it: always when it stays inside the inbox,
/// otherwise only with `follow_symlinks`.
fn resolve_link(inbox: &Path, path: &Path, follow: bool) -> Result<fs::Metadata, String> {
    let target = fs::canonicalize(path)
        .map_err(|e| format!("symbolic link {} is broken: {e}", path.display()))?;
    let inbox_real = fs::canonicalize(inbox).unwrap_or_else(|_| inbox.to_path_buf());
    if !follow && !target.starts_with(&inbox_real) {
        return Err(format!(
            "symbolic link {} leads outside the inbox (to {}); set follow_symlinks: true to allow it",
            path.display(),
            target.display()
        ));
    }
    fs::metadata(&target).map_err(|e| format!("cannot stat {}: {e}", target.display()))
}

fn walk(
    inbox: &Path,
    dir: &Path,
    prefix: &str,
    depth: usize,
    follow: bool,
    out: &mut Vec<EntryFile>,
) -> Result<(), Look> {
    if depth > MAX_DEPTH {
        return Err(Look::Refused(format!(
            "{} is nested more than {MAX_DEPTH} folders deep",
            dir.display()
        )));
    }
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Look::Gone),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            let why = fs::metadata(dir)
                .map(|m| not_allowed(dir, &m, "list"))
                .unwrap_or_else(|_| format!("cannot list {}: {e}", dir.display()));
            return Err(Look::Refused(why));
        }
        Err(e) => return Err(Look::Refused(format!("cannot list {}: {e}", dir.display()))),
    };
    for entry in rd {
        let entry =
            entry.map_err(|e| Look::Refused(format!("cannot list {}: {e}", dir.display())))?;
        let os_name = entry.file_name();
        let Some(name) = os_name.to_str() else {
            return Err(Look::Refused(format!(
                "{} holds a file name that is not UTF-8: {os_name:?}",
                dir.display()
            )));
        };
        let path = entry.path();
        let rel = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        // Inside a folder, hidden entries (.gitattributes, .cache/) are not part of the
        // model, but a temporary (rsync's .name.XXXXXX, *.part) means a writer is not done.
        if looks_in_progress(name) {
            return Err(Look::Incomplete(format!(
                "{} is still being written",
                path.display()
            )));
        }
        if name.starts_with('.') {
            continue;
        }
        // The name rule registry.yaml is read with: a file stored under a name it would
        // refuse (a line break, a bidi control) would stop the next start.
        if let Err(reason) = names::check_component(name) {
            return Err(Look::Refused(format!(
                "{} holds a file or folder named {name:?}, which {reason}; rename it",
                dir.display()
            )));
        }
        let lmeta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Look::Refused(format!(
                    "cannot stat {}: {e}",
                    path.display()
                )));
            }
        };
        let meta = if lmeta.file_type().is_symlink() {
            resolve_link(inbox, &path, follow).map_err(Look::Refused)?
        } else {
            lmeta
        };
        if meta.is_dir() {
            walk(inbox, &path, &rel, depth + 1, follow, out)?;
        } else if meta.is_file() {
            readable(&path, &meta).map_err(Look::Refused)?;
            out.push(EntryFile {
                src: path,
                rel,
                stat: FileStat::of(&meta),
            });
        } else {
            // A pipe, socket or device cannot be copied as bytes; skipping it silently
            // would register a version that lacks what the uploader meant to send.
            return Err(Look::Refused(format!(
                "{} is a {}, not a regular file or folder; remove it from the folder",
                path.display(),
                special_kind(&meta)
            )));
        }
    }
    Ok(())
}

/// What a file that is neither regular nor a folder is, in words.
fn special_kind(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_fifo() {
        "named pipe (FIFO)"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

/// Whether the daemon's own user may read `path` (access(2) with the effective ids, so
/// without opening it: an open would itself be an inotify event). A file it cannot read
/// would otherwise fail every copy, retried for ever; it is a problem to fix instead.
fn readable(path: &Path, meta: &fs::Metadata) -> Result<(), String> {
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
fn not_allowed(path: &Path, meta: &fs::Metadata, verb: &str) -> String {
    use crate::users::{group_name, user_name};
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

/// Temporary names inside an artifact folder that mean a writer is still at work:
/// rsync's `.name.XXXXXX` and the temporary endings of downloaders and editors.
fn looks_in_progress(name: &str) -> bool {
    let rsync_temp = name.starts_with('.')
        && name.rsplit_once('.').is_some_and(|(head, tail)| {
            !head.is_empty() && tail.len() == 6 && tail.bytes().all(|b| b.is_ascii_alphanumeric())
        });
    rsync_temp
        || names::TEMPORARY_SUFFIXES
            .iter()
            .any(|s| name.len() > s.len() && name.ends_with(s))
}

/// Why [`open_checked`] did not hand out a file.
#[derive(Debug)]
pub enum OpenError {
    /// The file is not the one that was looked at any more, or its path now leads
    /// somewhere else (a swapped symlink, a replaced folder): look again.
    Changed(String),
    /// It could not be opened or inspected.
    Io(io::Error),
}

/// A source file opened by [`open_checked`].
#[derive(Debug)]
pub struct Opened {
    /// The one handle every byte is read through.
    pub file: fs::File,
    /// Its permission bits, read through that handle.
    pub mode: u32,
}

/// Opens the inbox folder itself, to resolve files beneath it (see [`open_checked`]).
pub fn open_dir(path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
}

/// Opens `f` (found by [`look`] in the inbox `inbox`, open as `inbox_dir`) for copying,
/// and checks that the open handle is the file that was looked at: same device, inode,
/// size, mtime and ctime. Every byte copied is then read through this handle, so what
/// is stored is what was checked; a stat of a path is never taken as evidence about bytes
/// read through another lookup.
///
/// How the path is resolved: `openat2(inbox_dir, rel, RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS)`, so a plain file is reached without following any symbolic link
/// and without leaving the inbox folder that was opened (a folder of the path swapped for
/// a link fails with ELOOP). When the path holds a symbolic link (the allowed case of a
/// link inside the inbox), it is resolved once with `canonicalize`, the target must lie
/// inside the inbox folder (or `follow` allows it outside), and the target is opened the
/// same way, again following nothing. A link flipped between the resolution and the
/// open either fails to open or opens another inode, which the identity check refuses.
/// Kernels without openat2 (before 5.6, or a seccomp filter) get `O_NOFOLLOW` opens of
/// the same paths; the identity check is what guarantees the bytes in both cases. The
/// open is non-blocking, so a FIFO put in a file's place cannot hang the copy.
pub fn open_checked(
    inbox_dir: &fs::File,
    inbox: &Path,
    f: &EntryFile,
    follow: bool,
) -> Result<Opened, OpenError> {
    let changed = |why: String| OpenError::Changed(why);
    let rel = f
        .src
        .strip_prefix(inbox)
        .map_err(|_| changed(format!("{} is not in the inbox", f.src.display())))?;
    let file = match open_beneath(inbox_dir, rel) {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            return Err(changed(format!("{} is gone", f.src.display())));
        }
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ELOOP | libc::EXDEV | libc::ENOSYS | libc::EPERM)
            ) =>
        {
            // A symbolic link on the way (or no openat2): resolve it once, then open the
            // target without following anything.
            let no_openat2 = matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM));
            let target = fs::canonicalize(&f.src)
                .map_err(|e| changed(format!("{} cannot be resolved: {e}", f.src.display())))?;
            let inbox_real = dir_path(inbox_dir).unwrap_or_else(|| inbox.to_path_buf());
            match target.strip_prefix(&inbox_real) {
                Ok(inside) if !no_openat2 => open_beneath(inbox_dir, inside),
                Ok(_) => open_nofollow(&target),
                Err(_) if follow => open_nofollow(&target),
                Err(_) => {
                    return Err(changed(format!(
                        "symbolic link {} leads outside the inbox now (to {})",
                        f.src.display(),
                        target.display()
                    )));
                }
            }
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT | libc::ELOOP | libc::EXDEV) => changed(format!(
                    "{} changed while being opened: {e}",
                    f.src.display()
                )),
                _ => OpenError::Io(e),
            })?
        }
        Err(e) => return Err(OpenError::Io(e)),
    };
    let meta = file.metadata().map_err(OpenError::Io)?;
    if !meta.is_file() {
        return Err(changed(format!(
            "{} is not a regular file any more",
            f.src.display()
        )));
    }
    let now = FileStat::of(&meta);
    if now != f.stat {
        return Err(changed(format!(
            "{} is not the file that was checked (it was replaced or written since)",
            f.src.display()
        )));
    }
    Ok(Opened {
        file,
        mode: meta.mode() & 0o7777,
    })
}

/// Checks, through the open handle, that a file was not written while it was read:
/// size, mtime and ctime as when it was checked.
pub fn unchanged_through(file: &fs::File, shown: &Path, was: &FileStat) -> Result<(), String> {
    let meta = file
        .metadata()
        .map_err(|e| format!("stat {}: {e}", shown.display()))?;
    if FileStat::of(&meta) != *was {
        return Err(format!(
            "{} was written while it was copied",
            shown.display()
        ));
    }
    Ok(())
}

/// openat2 beneath `dir`, following no symbolic link.
fn open_beneath(dir: &fs::File, rel: &Path) -> io::Result<fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(rel.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is plain data; zero is its documented default for unused fields.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags =
        (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_NOFOLLOW)
            as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `dir` is an open fd, `c` a NUL-terminated path, `how` sized as passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { fs::File::from_raw_fd(fd as i32) })
}

/// Opens a path without following a symbolic link in its last component.
fn open_nofollow(path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
}

/// Where an open folder is now (it may have been moved since it was opened).
fn dir_path(dir: &fs::File) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())).ok()
}

/// Lists the inbox's top-level entry names (not classified).
pub fn list(inbox: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(inbox)? {
        let entry = entry?;
        match entry.file_name().into_string() {
            Ok(s) => out.push(s),
            Err(os) => out.push(os.to_string_lossy().into_owned()),
        }
    }
    out.sort();
    Ok(out)
}

/// The model name a top-level entry belongs to: `Ok(None)` when it is ignored (hidden,
/// temporary), `Err(reason)` when its name cannot be a model name.
pub fn group_of(inbox: &Path, entry: &str) -> Result<Option<String>, String> {
    if names::is_temporary(entry) {
        return Ok(None);
    }
    let is_dir = fs::metadata(inbox.join(entry))
        .map(|m| m.is_dir())
        .unwrap_or(false);
    match names::classify(std::ffi::OsStr::new(entry), is_dir) {
        Entry::Artifact { name } | Entry::Sidecar { name } => Ok(Some(name)),
        Entry::Ignored => Ok(None),
        Entry::Refused { reason } => Err(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_folder_gone_ignored() {
        let t = tempfile::tempdir().unwrap();
        let inbox = t.path();
        fs::write(inbox.join("a.pt"), b"xy").unwrap();
        fs::create_dir_all(inbox.join("bert/sub")).unwrap();
        fs::write(inbox.join("bert/config.json"), b"{}").unwrap();
        fs::write(inbox.join("bert/sub/w.bin"), b"123").unwrap();
        fs::write(inbox.join("bert/.gitattributes"), b"").unwrap();
        match look(inbox, "a.pt", false) {
            Look::Files {
                folder: false,
                files,
            } => assert_eq!(files[0].stat.size, 2),
            other => panic!("{other:?}"),
        }
        match look(inbox, "bert", false) {
            Look::Files {
                folder: true,
                files,
            } => {
                let rels: Vec<_> = files.iter().map(|f| f.rel.as_str()).collect();
                assert_eq!(rels, ["config.json", "sub/w.bin"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(look(inbox, "nope.pt", false), Look::Gone);
        fs::write(inbox.join("x.part"), b"").unwrap();
        assert_eq!(look(inbox, "x.part", false), Look::Ignored);
    }

    #[test]
    fn folder_with_rsync_temp_is_incomplete() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("bert")).unwrap();
        fs::write(t.path().join("bert/.model.safetensors.Ab12Cd"), b"").unwrap();
        assert!(matches!(look(t.path(), "bert", false), Look::Incomplete(_)));
    }

    #[test]
    fn symlink_policy() {
        let t = tempfile::tempdir().unwrap();
        let inbox = t.path().join("inbox");
        fs::create_dir(&inbox).unwrap();
        fs::write(t.path().join("outside.pt"), b"o").unwrap();
        fs::write(inbox.join("inside.pt"), b"i").unwrap();
        std::os::unix::fs::symlink(t.path().join("outside.pt"), inbox.join("out.pt")).unwrap();
        std::os::unix::fs::symlink(inbox.join("inside.pt"), inbox.join("in.pt")).unwrap();
        match look(&inbox, "out.pt", false) {
            Look::Refused(r) => assert!(r.contains("outside the inbox"), "{r}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(look(&inbox, "out.pt", true), Look::Files { .. }));
        assert!(matches!(look(&inbox, "in.pt", false), Look::Files { .. }));
    }

    fn first_file(inbox: &Path, entry: &str) -> EntryFile {
        match look(inbox, entry, false) {
            Look::Files { files, .. } => files.into_iter().next_back().unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn open_checked_reads_only_what_was_looked_at() {
        let t = tempfile::tempdir().unwrap();
        let inbox = t.path().join("inbox");
        fs::create_dir_all(inbox.join("f")).unwrap();
        let outside = t.path().join("secret");
        fs::write(&outside, b"secret").unwrap();
        fs::write(inbox.join("a.pt"), b"a").unwrap();
        fs::write(inbox.join("in.bin"), b"inside").unwrap();
        std::os::unix::fs::symlink("../in.bin", inbox.join("f/z.bin")).unwrap();
        let dir = open_dir(&inbox).unwrap();
        let open = |f: &EntryFile| open_checked(&dir, &inbox, f, false);

        // A plain file, and a link that stays inside: opened, its target's bytes.
        let a = first_file(&inbox, "a.pt");
        assert!(open(&a).is_ok());
        let z = first_file(&inbox, "f");
        let mut got = String::new();
        std::io::Read::read_to_string(&mut open(&z).unwrap().file, &mut got).unwrap();
        assert_eq!(got, "inside");

        // The link flipped out of the inbox after the look: refused.
        fs::remove_file(inbox.join("f/z.bin")).unwrap();
        std::os::unix::fs::symlink(&outside, inbox.join("f/z.bin")).unwrap();
        assert!(matches!(open(&z), Err(OpenError::Changed(r)) if r.contains("outside")));
        // Flipped to another file inside: a different inode, refused.
        fs::write(inbox.join("other.bin"), b"other").unwrap();
        fs::remove_file(inbox.join("f/z.bin")).unwrap();
        std::os::unix::fs::symlink("../other.bin", inbox.join("f/z.bin")).unwrap();
        assert!(matches!(open(&z), Err(OpenError::Changed(_))));

        // The folder swapped for a link to outside: nothing beneath it is opened.
        let mut w = first_file(&inbox, "a.pt");
        fs::create_dir(inbox.join("g")).unwrap();
        fs::write(inbox.join("g/w.bin"), b"w").unwrap();
        w.src = inbox.join("g/w.bin");
        w.stat = FileStat::of(&fs::metadata(&w.src).unwrap());
        fs::rename(inbox.join("g"), t.path().join("g-moved")).unwrap();
        std::os::unix::fs::symlink(t.path().join("g-moved"), inbox.join("g")).unwrap();
        assert!(matches!(open(&w), Err(OpenError::Changed(_))));

        // Rewritten in place with the mtime put back: the ctime gives it away.
        let before = fs::metadata(inbox.join("a.pt")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(inbox.join("a.pt"), b"b").unwrap();
        fs::File::options()
            .write(true)
            .open(inbox.join("a.pt"))
            .unwrap()
            .set_modified(before.modified().unwrap())
            .unwrap();
        assert!(matches!(open(&a), Err(OpenError::Changed(_))));
    }

    #[test]
    fn fingerprint_changes_with_content() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("a.pt"), b"1").unwrap();
        let f1 = look(t.path(), "a.pt", false).fingerprint().unwrap();
        fs::write(t.path().join("a.pt"), b"22").unwrap();
        let f2 = look(t.path(), "a.pt", false).fingerprint().unwrap();
        assert_ne!(f1, f2);
    }
}
