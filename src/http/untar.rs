//! A tar archive read into a new folder, refusing anything that could write outside it
//! or be more than files and folders: absolute paths, `..`, links (hard and symbolic),
//! devices, FIFOs, and more than [`MAX_ENTRIES`] entries.
//!
//! Folders an archive does not list (`tar -cf x.tar sub/f` holds only the file) are
//! made as the files need them. Hidden entries (`.gitattributes`, `.cache/`) are left
//! out by the inbox's rule for a dropped folder, and named in [`Extracted::left_out`];
//! a temporary name (`x.part`, `x~`, a folder `sub.tmp/`) is refused, as the inbox would
//! wait for it forever.
//!
//! Reads POSIX ustar and the pax and GNU extensions that GNU tar, bsdtar and Python's
//! tarfile write (pax `path` and `size` records, GNU long names, base-256 sizes). Files
//! are created with `create_new` under folders this reader made itself, and no link is
//! ever created, so no path can lead out of the folder.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The most entries (files and folders) one upload may hold.
pub const MAX_ENTRIES: usize = 100_000;
/// The longest path (or pax header) read.
const MAX_META: u64 = 64 * 1024;
const BLOCK: usize = 512;

/// What the archive held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Extracted {
    /// Regular files written.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Each file written: its path inside the folder, its state once written and its
    /// permission bits, sorted by path.
    pub list: Vec<(String, crate::inbox::FileStat, u32)>,
    /// Hidden entries not extracted, as the archive named them.
    pub left_out: Vec<String>,
}

/// Why an archive was refused: what, at which entry.
#[derive(Debug)]
pub struct Refused(pub String);

fn refused<T>(m: impl Into<String>) -> Result<T, Refused> {
    Err(Refused(m.into()))
}

fn io_err(what: &str, e: io::Error) -> Refused {
    Refused(format!("{what}: {e}"))
}

/// The compression (or other archive format) the first bytes of a body show, when they
/// are not a tar's: `gzip` for a `.tar.gz`, and so on. A tar starts with a file name.
pub fn not_a_tar(head: &[u8]) -> Option<&'static str> {
    const MAGIC: &[(&[u8], &str)] = &[
        (b"\x1f\x8b", "gzip-compressed (a .tar.gz or .tgz)"),
        (b"\xfd7zXZ\x00", "xz-compressed (a .tar.xz)"),
        (b"BZh", "bzip2-compressed (a .tar.bz2)"),
        (b"\x28\xb5\x2f\xfd", "zstd-compressed (a .tar.zst)"),
        (b"PK\x03\x04", "a zip archive"),
    ];
    MAGIC
        .iter()
        .find(|(m, _)| head.starts_with(m))
        .map(|(_, what)| *what)
}

/// Extracts `tar` into `dest` (which must not exist yet; it is created mode 0755).
/// On an error, what was written stays for the caller to remove.
pub fn extract(tar: &mut impl Read, dest: &Path) -> Result<Extracted, Refused> {
    DirBuilder::new()
        .mode(0o755)
        .create(dest)
        .map_err(|e| io_err(&format!("cannot create {}", dest.display()), e))?;
    let mut out = Extracted::default();
    let (mut long_name, mut pax_path, mut pax_size): (Option<String>, Option<String>, Option<u64>) =
        (None, None, None);
    let mut entries = 0usize;
    loop {
        let mut h = [0u8; BLOCK];
        if !read_block(tar, &mut h)? {
            break; // end of input without the zero blocks: tolerated, as GNU tar does
        }
        if h.iter().all(|b| *b == 0) {
            break;
        }
        check_sum(&h)?;
        let size = match pax_size.take() {
            Some(s) => s,
            None => number(&h[124..136])
                .ok_or_else(|| Refused("a header's size does not parse".into()))?,
        };
        let kind = h[156];
        match kind {
            b'x' | b'L' | b'g' => {
                if size > MAX_META {
                    return refused(format!(
                        "an extended header of {size} bytes (at most {MAX_META})"
                    ));
                }
                let mut meta = vec![0u8; size as usize];
                read_exact(tar, &mut meta)?;
                skip(tar, padding(size))?;
                match kind {
                    b'x' => {
                        for (k, v) in pax_records(&meta)? {
                            match k.as_str() {
                                "path" => pax_path = Some(v),
                                "size" => {
                                    pax_size = Some(v.parse().map_err(|_| {
                                        Refused(format!("pax size {v:?} is not a number"))
                                    })?)
                                }
                                "linkpath" => return refused("a pax header names a link"),
                                _ => {}
                            }
                        }
                    }
                    b'L' => {
                        let end = meta.iter().position(|b| *b == 0).unwrap_or(meta.len());
                        long_name = Some(
                            String::from_utf8(meta[..end].to_vec())
                                .map_err(|_| Refused("a long name is not UTF-8".into()))?,
                        );
                    }
                    _ => {} // global pax headers: nothing this reader uses
                }
                continue;
            }
            _ => {}
        }
        entries += 1;
        if entries > MAX_ENTRIES {
            return refused(format!("more than {MAX_ENTRIES} entries"));
        }
        let raw = match (pax_path.take(), long_name.take()) {
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => ustar_path(&h)?,
        };
        if let Some(top) = hidden(&raw)? {
            // Named once: `.cache`, not each file below it.
            if !out.left_out.contains(&top) {
                out.left_out.push(top);
            }
            skip(tar, size + padding(size))?;
            continue;
        }
        let Some(rel) = checked_path(&raw)? else {
            // `./` itself: the folder, already made.
            if kind == b'5' {
                continue;
            }
            return refused(format!("entry {raw:?} names the folder itself as a file"));
        };
        let target = dest.join(&rel);
        match kind {
            b'0' | 0 | b'7' => {
                // Folders the archive does not list are made as its files need them
                // (only folders this reader made are below `dest`: no link is followed).
                if let Some(parent) = target.parent()
                    && !parent.is_dir()
                {
                    DirBuilder::new()
                        .mode(0o755)
                        .recursive(true)
                        .create(parent)
                        .map_err(|e| clash(dest, &rel, &raw, false, e))?;
                }
                let exec = number(&h[100..108]).is_some_and(|m| m & 0o111 != 0);
                let mode = if exec { 0o755 } else { 0o644 };
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .map_err(|e| clash(dest, &rel, &raw, false, e))?;
                copy_n(tar, &mut f, size)
                    .map_err(|e| Refused(format!("entry {raw:?}: {}", e.0)))?;
                skip(tar, padding(size))?;
                let meta = f
                    .metadata()
                    .map_err(|e| io_err(&format!("entry {raw:?}"), e))?;
                out.files += 1;
                out.bytes += size;
                let rel = rel.to_str().unwrap_or_default().to_string();
                out.list
                    .push((rel, crate::inbox::FileStat::of(&meta), mode));
            }
            b'5' => {
                match DirBuilder::new()
                    .mode(0o755)
                    .recursive(true)
                    .create(&target)
                {
                    Ok(()) => {}
                    Err(e)
                        if e.kind() == io::ErrorKind::AlreadyExists
                            && target.symlink_metadata().is_ok_and(|m| m.is_dir()) => {}
                    Err(e) => return Err(clash(dest, &rel, &raw, true, e)),
                }
                skip(tar, size + padding(size))?;
            }
            other => {
                let what = match other {
                    b'1' => "a hard link",
                    b'2' => "a symbolic link",
                    b'3' | b'4' => "a device",
                    b'6' => "a FIFO",
                    b'K' => "a link (GNU long link name)",
                    _ => "of a type other than file or folder",
                };
                return refused(format!(
                    "entry {raw:?} is {what}: only files and folders are taken"
                ));
            }
        }
    }
    if out.files == 0 {
        return refused(if out.left_out.is_empty() {
            "the archive holds no file".to_string()
        } else {
            format!(
                "the archive holds no file but hidden ones ({}), which are never part of a version",
                out.left_out.join(", ")
            )
        });
    }
    out.list.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The refusal of an entry that could not be created at `rel`: when an earlier entry
/// took its place (the same path twice, as `tar -r` appends it, or a file where a folder
/// is needed), a message naming the path; else the I/O error. `folder`: the entry is a
/// folder.
fn clash(dest: &Path, rel: &Path, raw: &str, folder: bool, e: io::Error) -> Refused {
    let taken = matches!(
        e.raw_os_error(),
        Some(libc::EEXIST | libc::ENOTDIR | libc::EISDIR)
    );
    if !taken {
        return io_err(&format!("entry {raw:?}"), e);
    }
    // The shallowest path already there as a file: a folder was needed there.
    let mut at = PathBuf::new();
    for c in rel.components() {
        at.push(c);
        let m = dest.join(&at).symlink_metadata();
        if at != rel && m.as_ref().is_ok_and(|m| !m.is_dir()) {
            return Refused(format!(
                "the tar holds {:?} as a file and {:?} below it, as if it were a folder",
                at.display().to_string(),
                rel.display().to_string()
            ));
        }
    }
    let shown = rel.display().to_string();
    match dest.join(rel).symlink_metadata() {
        Ok(m) if m.is_dir() != folder => Refused(format!(
            "the tar holds {shown:?} both as a folder and as a file"
        )),
        _ => Refused(format!(
            "the tar holds {shown:?} twice (an archive appended to, tar -r? make it from the folder once)"
        )),
    }
}

/// The path up to an entry's first hidden component (`.git/x` -> `.git`, `./sub/.cache/y`
/// -> `sub/.cache`), `.` and `..` aside; `None` when it has none. The inbox leaves such
/// entries of a dropped folder out of its version. A component before it (or the hidden
/// one itself) with a temporary ending (`sub.tmp/x`, `w.bin.part`, `notes~`) is refused,
/// naming the entry: the inbox, walking a dropped folder the same way, would take it for
/// a writer not done and wait for ever.
fn hidden(raw: &str) -> Result<Option<String>, Refused> {
    let parts: Vec<&str> = raw
        .split('/')
        .filter(|c| *c != "." && !c.is_empty())
        .collect();
    for (i, c) in parts.iter().enumerate() {
        if crate::names::TEMPORARY_SUFFIXES
            .iter()
            .any(|s| c.len() > s.len() && c.ends_with(s))
        {
            return refused(format!(
                "entry {raw:?} has a temporary name ({c:?}: a download or copy not finished): a dropped folder holding it would never be registered; rename it or leave it out"
            ));
        }
        if c.starts_with('.') && *c != ".." {
            return Ok(Some(parts[..=i].join("/")));
        }
    }
    Ok(None)
}

/// The relative path of an entry (`./` and a trailing `/` dropped), or the refusal of
/// an absolute one, one with `..`, an empty or unsafe component (names::check_component).
/// `None`: the archive's root (`.` or `./`).
fn checked_path(raw: &str) -> Result<Option<PathBuf>, Refused> {
    if raw.starts_with('/') {
        return refused(format!("entry {raw:?} is an absolute path"));
    }
    let mut out = PathBuf::new();
    for c in raw.trim_end_matches('/').split('/') {
        match c {
            "." => continue,
            ".." => return refused(format!("entry {raw:?} goes up a folder (..)")),
            c => crate::names::check_component(c)
                .map_err(|r| Refused(format!("entry {raw:?} has a component {c:?} that {r}")))?,
        }
        out.push(c);
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// The ustar name, with its prefix.
fn ustar_path(h: &[u8; BLOCK]) -> Result<String, Refused> {
    let field = |b: &[u8]| {
        let end = b.iter().position(|x| *x == 0).unwrap_or(b.len());
        String::from_utf8(b[..end].to_vec())
            .map_err(|_| Refused("an entry's name is not UTF-8".into()))
    };
    let name = field(&h[0..100])?;
    if &h[257..262] == b"ustar" {
        let prefix = field(&h[345..500])?;
        if !prefix.is_empty() {
            return Ok(format!("{prefix}/{name}"));
        }
    }
    Ok(name)
}

/// An octal field, or a base-256 one (first byte with its top bit set).
fn number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut n: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            n = n.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(n);
    }
    let text: String = field
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| *b as char)
        .collect();
    let t = text.trim();
    if t.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(t, 8).ok()
}

/// The header's checksum: the sum of its bytes with the checksum field as spaces.
fn check_sum(h: &[u8; BLOCK]) -> Result<(), Refused> {
    let want =
        number(&h[148..156]).ok_or_else(|| Refused("a header's checksum does not parse".into()))?;
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(*b)
            }
        })
        .sum();
    if sum != want {
        return refused("a header's checksum is wrong: not a tar archive, or a damaged one");
    }
    Ok(())
}

/// The `LEN key=value\n` records of a pax header.
fn pax_records(mut meta: &[u8]) -> Result<Vec<(String, String)>, Refused> {
    let bad = || Refused("a pax header does not parse".into());
    let mut out = Vec::new();
    while !meta.is_empty() && meta[0] != 0 {
        let sp = meta.iter().position(|b| *b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&meta[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= sp + 1 || len > meta.len() {
            return Err(bad());
        }
        let rec = std::str::from_utf8(&meta[sp + 1..len - 1]).map_err(|_| bad())?;
        let (k, v) = rec.split_once('=').ok_or_else(bad)?;
        out.push((k.to_string(), v.to_string()));
        meta = &meta[len..];
    }
    Ok(out)
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// Reads one block; `false` at a clean end of input.
fn read_block(r: &mut impl Read, buf: &mut [u8; BLOCK]) -> Result<bool, Refused> {
    let mut got = 0;
    while got < BLOCK {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return refused("the archive ends inside a header"),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("reading the archive", e)),
        }
    }
    Ok(true)
}

fn read_exact(r: &mut impl Read, buf: &mut [u8]) -> Result<(), Refused> {
    r.read_exact(buf)
        .map_err(|_| Refused("the archive ends inside an entry".into()))
}

fn skip(r: &mut impl Read, n: u64) -> Result<(), Refused> {
    let got =
        io::copy(&mut r.take(n), &mut io::sink()).map_err(|e| io_err("reading the archive", e))?;
    if got < n {
        return refused("the archive ends inside an entry");
    }
    Ok(())
}

fn copy_n(r: &mut impl Read, f: &mut File, n: u64) -> Result<(), Refused> {
    let got = io::copy(&mut r.take(n), f).map_err(|e| io_err("writing", e))?;
    if got < n {
        return refused("the archive ends inside a file");
    }
    f.flush().map_err(|e| io_err("writing", e))
}

#[cfg(test)]
#[path = "untar_tests.rs"]
mod tests;
