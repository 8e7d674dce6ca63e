//! Opening an inbox file for copying so that what is read is the file that was looked at (openat2, identity check).
//!
//! [`open_checked`] resolves the path beneath the opened inbox folder without following
//! links, then checks the handle against the [`FileStat`] taken when the entry was
//! looked at; [`unchanged_through`] checks it again after the copy.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{EntryFile, FileStat};

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
    if !f.stat.still_describes(&meta) {
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
    if !was.still_describes(&meta) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbox::{Look, look};

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
}
