//! One segment file of the event log: its name, reading it back (skipping damaged lines), cutting off a torn tail.

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

/// A segment as read: its intact events, where they end, and what could not be read.
pub(super) struct Read {
    /// The events, in order.
    pub(super) events: Vec<Event>,
    /// The end offset of each event's line.
    pub(super) ends: Vec<u64>,
    /// Bytes after the last intact line (a torn write), with the reason; none: clean.
    pub(super) damage: Option<(u64, String)>,
    /// Damaged lines with intact events after them: (line number from 1, offset,
    /// reason). Not a torn write: they are skipped, never cut off.
    pub(super) skipped: Vec<(usize, u64, String)>,
}

/// Reads `path`. A line that does not parse (or is out of order) is skipped and noted;
/// those after the last intact event, and a last line without its newline, are the
/// damaged tail (`damage`: a write cut short, which the caller may cut off).
pub(super) fn read(path: &Path) -> std::io::Result<Read> {
    let bytes = std::fs::read(path)?;
    let mut out = Read {
        events: Vec::new(),
        ends: Vec::new(),
        damage: None,
        skipped: Vec::new(),
    };
    // Bad lines since the last intact event: skipped if an intact one follows.
    let mut bad: Vec<(usize, u64, String)> = Vec::new();
    let (mut pos, mut line) = (0usize, 0usize);
    while pos < bytes.len() {
        line += 1;
        let Some(nl) = bytes[pos..].iter().position(|b| *b == b'\n') else {
            bad.push((line, pos as u64, "a last line without its newline".into()));
            break;
        };
        let at = pos as u64;
        let text = &bytes[pos..pos + nl];
        pos += nl + 1;
        match serde_json::from_slice::<Event>(text) {
            Ok(e) if out.events.last().is_none_or(|l| l.seq < e.seq) => {
                out.skipped.append(&mut bad);
                out.events.push(e);
                out.ends.push(pos as u64);
            }
            Ok(e) => bad.push((line, at, format!("event {} out of order", e.seq))),
            Err(err) => bad.push((line, at, format!("a line that is not an event: {err}"))),
        }
    }
    if let Some((_, at, why)) = bad.into_iter().next() {
        out.damage = Some((at, why));
    }
    Ok(out)
}

/// The seq of the last intact event of `path`, read from its end (its last 64 KiB):
/// `None` when none is found there.
pub(super) fn last_seq(path: &Path) -> std::io::Result<Option<u64>> {
    Ok(last_event(path)?.map(|e| e.seq))
}

/// The last intact event of `path`, read from its end (its last 64 KiB): `None` when
/// none is found there.
pub(super) fn last_event(path: &Path) -> std::io::Result<Option<Event>> {
    use std::io::{Read as _, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let from = len.saturating_sub(64 << 10);
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(buf
        .split(|b| *b == b'\n')
        .rev()
        .find_map(|l| serde_json::from_slice::<Event>(l).ok()))
}

/// Where a damaged segment's copy is kept: `<name>.damaged` beside it (not a segment).
pub(super) fn damaged_name(path: &Path) -> PathBuf {
    let mut n = path.as_os_str().to_owned();
    n.push(".damaged");
    PathBuf::from(n)
}

/// Keeps a copy of the damaged segment `path` before anything of it is cut off, so that
/// nothing is destroyed that was not a torn write (once: an existing copy is the first).
pub(super) fn keep_aside(path: &Path) {
    let aside = damaged_name(path);
    if aside.exists() {
        return;
    }
    if let Err(e) = std::fs::copy(path, &aside) {
        tracing::warn!(events = %path.display(), "keeping a copy of the damaged segment as {}: {e}", aside.display());
    }
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
