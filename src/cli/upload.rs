//! `modelreg add --url`: a file or folder uploaded to the HTTP API (docs/http.md,
//! Uploads) instead of handed over on the socket. A file goes as it is, with its SHA-256
//! (checked by the daemon before the hand-over); a folder as a tar streamed as it is
//! written (POSIX ustar, a pax record for a path or size ustar cannot hold), its length
//! known beforehand. The answer is the version, as `add --wait` prints it.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use modelreg::client::{Client, ClientError};
use modelreg::display::escape_for_terminal as esc;
use modelreg::status::human_bytes;
use serde_json::{Map, Value};

use super::add::{self, AddArgs, Added, refuse};
use super::progress;

/// Uploads `a.path` as the next version of `name`.
pub(super) fn upload(
    c: &mut Client,
    a: &AddArgs,
    name: &str,
    metrics: &Map<String, Value>,
    metadata: &Map<String, Value>,
    is_dir: bool,
) -> Result<Added, ClientError> {
    let given = |m: &Map<String, Value>| (!m.is_empty()).then(|| m.clone());
    let before = add::newest_if_metrics(c, name, !metrics.is_empty() || !metadata.is_empty());
    // The answer comes once the daemon has stored it: as long as a copy takes.
    let timeout = a.wait.unwrap_or(Duration::from_secs(24 * 3600));
    c.set_read_timeout(timeout + Duration::from_secs(10))?;
    let url = c.url().unwrap_or_default().to_string();
    let waited = if is_dir {
        let mut tar = Tar::of(a.path)?;
        let len = tar.len;
        say_uploading(a.path, len, &url);
        c.upload_tar(
            name,
            &mut tar,
            len,
            given(metrics).as_ref(),
            given(metadata).as_ref(),
        )?
    } else {
        let file = File::open(a.path).map_err(|e| refuse(format!("{}: {e}", a.path.display())))?;
        say_uploading(a.path, file.metadata().map(|m| m.len()).unwrap_or(0), &url);
        let filename = add::entry_name(name, a.path, false);
        c.register(name, &filename, &file, given(metrics), given(metadata))?
    };
    Ok(add::registered(waited, before))
}

/// On a terminal, says what is being sent where (a long upload is otherwise silent).
fn say_uploading(path: &Path, len: u64, url: &str) {
    if progress::on_terminal() {
        eprintln!(
            "uploading {} ({}) to {}",
            esc(&path.display().to_string()),
            human_bytes(len),
            esc(url)
        );
    }
}

/// One piece of the tar stream.
enum Part {
    /// Header blocks (and padding), in memory.
    Bytes(Vec<u8>),
    /// A file's bytes: its path and length when listed.
    File(PathBuf, u64),
}

/// A folder as a tar, read as it is produced: the headers are made when the folder is
/// listed, the files opened one at a time as the reader reaches them.
pub(super) struct Tar {
    parts: std::vec::IntoIter<Part>,
    /// The part being read.
    current: Option<(Box<dyn Read>, u64)>,
    /// The whole stream's length.
    pub(super) len: u64,
}

impl Tar {
    /// Lists `dir` (sorted, folders before their contents) into headers and file parts.
    /// Anything but regular files and folders (a link, a device) is refused by name: the
    /// daemon would refuse it too, after the upload.
    pub(super) fn of(dir: &Path) -> Result<Tar, ClientError> {
        let mut parts = Vec::new();
        walk(dir, "", &mut parts)?;
        parts.push(Part::Bytes(vec![0; 1024]));
        let len = parts
            .iter()
            .map(|p| match p {
                Part::Bytes(b) => b.len() as u64,
                Part::File(_, n) => *n,
            })
            .sum();
        Ok(Tar {
            parts: parts.into_iter(),
            current: None,
            len,
        })
    }
}

/// Appends the entries under `dir` (named `prefix` + their name in the tar).
fn walk(dir: &Path, prefix: &str, parts: &mut Vec<Part>) -> Result<(), ClientError> {
    let io = |p: &Path, e: std::io::Error| refuse(format!("{}: {e}", p.display()));
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|e| io(dir, e))?;
    entries.sort();
    for path in entries {
        let meta = std::fs::symlink_metadata(&path).map_err(|e| io(&path, e))?;
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            return Err(refuse(format!(
                "{}: the name is not UTF-8, which the daemon cannot store",
                path.display()
            )));
        };
        // Left out of the version by the daemon, as the inbox leaves them out of a
        // dropped folder: not sent at all.
        if file_name.starts_with('.') {
            continue;
        }
        let name = format!("{prefix}{file_name}");
        if meta.is_dir() {
            parts.push(Part::Bytes(header(&format!("{name}/"), 0, b'5', 0o755)));
            walk(&path, &format!("{name}/"), parts)?;
        } else if meta.is_file() {
            let size = meta.len();
            parts.push(Part::Bytes(header(&name, size, b'0', 0o644)));
            parts.push(Part::File(path, size));
            let pad = (512 - size % 512) % 512;
            if pad > 0 {
                parts.push(Part::Bytes(vec![0; pad as usize]));
            }
        } else {
            return Err(refuse(format!(
                "{}: not a regular file or folder (links are not uploaded); nothing was sent",
                path.display()
            )));
        }
    }
    Ok(())
}

/// The header block(s) of one entry: a pax record first when the path is longer than
/// ustar's 100 bytes or the size does not fit its 11 octal digits.
fn header(name: &str, size: u64, kind: u8, mode: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let long = name.len() > 100;
    let big = size >= 8 << 30;
    if long || big {
        let mut records = String::new();
        if long {
            records.push_str(&pax_record("path", name));
        }
        if big {
            records.push_str(&pax_record("size", &size.to_string()));
        }
        out.extend(block("pax", records.len() as u64, b'x', 0o644));
        out.extend(records.as_bytes());
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    // With a pax path, ustar's own name field holds its first 100 bytes, which readers
    // of pax ignore.
    out.extend(block(name, if big { 0 } else { size }, kind, mode));
    out
}

/// A pax record: `LEN key=value\n`, LEN counting itself.
fn pax_record(key: &str, value: &str) -> String {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while format!("{len}{body}").len() != len {
        len += 1;
    }
    format!("{len}{body}")
}

/// One ustar header block.
fn block(name: &str, size: u64, kind: u8, mode: u32) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    let put = |h: &mut [u8], at: usize, v: &[u8]| h[at..at + v.len()].copy_from_slice(v);
    put(&mut h, 0, &name.as_bytes()[..name.len().min(100)]);
    put(&mut h, 100, format!("{mode:07o}\0").as_bytes());
    put(&mut h, 108, b"0000000\0");
    put(&mut h, 116, b"0000000\0");
    put(&mut h, 124, format!("{size:011o}\0").as_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    put(&mut h, 136, format!("{now:011o}\0").as_bytes());
    h[156] = kind;
    put(&mut h, 257, b"ustar\x0000");
    put(&mut h, 148, b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    h
}

impl Read for Tar {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some((r, left)) = &mut self.current {
                if *left > 0 {
                    let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let n = r.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(std::io::Error::other(
                            "a file got shorter while it was uploaded; nothing was registered",
                        ));
                    }
                    *left -= n as u64;
                    return Ok(n);
                }
                self.current = None;
            }
            match self.parts.next() {
                None => return Ok(0),
                Some(Part::Bytes(b)) => {
                    let n = b.len() as u64;
                    self.current = Some((Box::new(std::io::Cursor::new(b)), n));
                }
                Some(Part::File(p, n)) => {
                    let f = File::open(&p)
                        .map_err(|e| std::io::Error::other(format!("{}: {e}", p.display())))?;
                    self.current = Some((Box::new(f), n));
                }
            }
        }
    }
}
