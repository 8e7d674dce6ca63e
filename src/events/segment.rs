//! One segment file of the event log: its name, reading it back, cutting off a damaged tail.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::Event;

/// A segment's file name: its first seq, zero-padded so names sort by number.
pub(super) fn file_name(first: u64) -> String {
    format!("{first:020}.ndjson")
}

/// The segments in `dir`, oldest first: (first seq, path). Other files are ignored.
pub(super) fn list(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(first) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".ndjson"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((first, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// A segment as read: its intact events, where they end, and what follows them.
pub(super) struct Read {
    /// The events, in order.
    pub(super) events: Vec<Event>,
    /// The end offset of each event's line.
    pub(super) ends: Vec<u64>,
    /// Bytes after the last intact line (a torn write), with the reason; none: clean.
    pub(super) damage: Option<(u64, String)>,
}

/// Reads `path`. A line that does not parse, or a last line without its newline, ends
/// what is read: everything from there on is reported as damage (the caller cuts it).
pub(super) fn read(path: &Path) -> std::io::Result<Read> {
    let bytes = std::fs::read(path)?;
    let mut out = Read {
        events: Vec::new(),
        ends: Vec::new(),
        damage: None,
    };
    let mut pos = 0usize;
    while pos < bytes.len() {
        let Some(nl) = bytes[pos..].iter().position(|b| *b == b'\n') else {
            out.damage = Some((pos as u64, "a last line without its newline".into()));
            break;
        };
        match serde_json::from_slice::<Event>(&bytes[pos..pos + nl]) {
            Ok(e) if out.events.last().is_none_or(|l| l.seq < e.seq) => {
                pos += nl + 1;
                out.events.push(e);
                out.ends.push(pos as u64);
            }
            Ok(e) => {
                out.damage = Some((pos as u64, format!("event {} out of order", e.seq)));
                break;
            }
            Err(err) => {
                out.damage = Some((pos as u64, format!("a line that is not an event: {err}")));
                break;
            }
        }
    }
    Ok(out)
}

/// Cuts `path` to `len` bytes and makes that durable.
pub(super) fn cut(path: &Path, len: u64) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.set_len(len)?;
    f.sync_all()
}

/// Opens (creating, 0600) `path` for appending.
pub(super) fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// The events as NDJSON, one line each.
pub(super) fn lines(events: &[Event]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(events.len() * 200);
    for e in events {
        // An event is plain data: serialising it cannot fail.
        serde_json::to_writer(&mut buf, e).expect("an event serialises");
        let _ = buf.write_all(b"\n");
    }
    buf
}
