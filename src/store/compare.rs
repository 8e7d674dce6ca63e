//! Byte-for-byte comparison of a new file with a stored one before they may share an inode.
//!
//! Dedup links a new version's file to a stored file only when the stored file's actual
//! bytes equal the new file's: its recorded SHA-256 says what it held when it was stored,
//! not what it holds now (a file damaged in place keeps its recorded hash). So the bytes
//! are compared, and a stored file whose bytes differ although the new file's SHA-256 is
//! the one recorded for it is damaged: it is reported ([`Damaged`]) and the new version
//! gets a copy of its own.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::copy::CHUNK;

/// What a comparison found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The same bytes, the same length.
    Same,
    /// The first offset where they differ (or where one of them ends).
    DiffersAt(u64),
    /// The stored file could not be read: why.
    Unreadable(String),
}

/// Compares a stream of chunks (the new file, read in order from its start) with the
/// stored file's bytes at the same offsets. Once a difference is found nothing more is
/// read from the stored file.
pub(super) struct Compare<'a> {
    stored: &'a File,
    at: u64,
    buf: Vec<u8>,
    verdict: Option<Verdict>,
}

impl<'a> Compare<'a> {
    pub(super) fn new(stored: &'a File) -> Self {
        Compare {
            stored,
            at: 0,
            buf: Vec::new(),
            verdict: None,
        }
    }

    /// The next `chunk` of the new file.
    pub(super) fn feed(&mut self, chunk: &[u8]) {
        if self.verdict.is_some() {
            return;
        }
        self.buf.resize(chunk.len(), 0);
        match self.stored.read_exact_at(&mut self.buf, self.at) {
            Ok(()) => match self.buf.iter().zip(chunk).position(|(a, b)| a != b) {
                None => self.at += chunk.len() as u64,
                Some(i) => self.verdict = Some(Verdict::DiffersAt(self.at + i as u64)),
            },
            // The stored file is shorter: it differs where it ends.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                self.verdict = Some(Verdict::DiffersAt(self.at));
            }
            Err(e) => self.verdict = Some(Verdict::Unreadable(e.to_string())),
        }
    }

    /// The verdict once the new file has been fed to its end: the stored file must end
    /// there too.
    pub(super) fn finish(self) -> Verdict {
        if let Some(v) = self.verdict {
            return v;
        }
        match self.stored.metadata() {
            Ok(m) if m.len() == self.at => Verdict::Same,
            Ok(_) => Verdict::DiffersAt(self.at),
            Err(e) => Verdict::Unreadable(e.to_string()),
        }
    }
}

/// Compares the whole of `new` with `stored`, reading both from their starts.
pub(super) fn same_bytes(new: &File, stored: &File) -> Verdict {
    let mut cmp = Compare::new(stored);
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    loop {
        let n = match new.read_at(&mut buf, at) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Verdict::Unreadable(format!("reading the new copy: {e}")),
        };
        cmp.feed(&buf[..n]);
        at += n as u64;
        if cmp.verdict.is_some() {
            break;
        }
    }
    cmp.finish()
}

/// Whether every file `rels` of the staged folder `staged` holds the same bytes as the
/// same file of version `number` of `name` in `store`: what a version's recorded hashes
/// say it held is not what it holds once damaged in place, and an entry "identical to
/// the newest version" must not be dropped for a damaged one. Each differing stored file
/// is reported to `damaged` (recorded with `sha256`).
pub fn staged_equals_version(
    store: &Path,
    name: &str,
    number: u32,
    staged: &Path,
    rels: &[(String, String)],
    damaged: &Damaged,
) -> bool {
    let dir = super::version_dir(store, name, number);
    rels.iter().all(|(rel, sha256)| {
        let (Ok(new), Ok(old)) = (File::open(staged.join(rel)), File::open(dir.join(rel))) else {
            return false;
        };
        let verdict = same_bytes(&new, &old);
        damaged.report(&dir.join(rel), sha256, &verdict);
        verdict == Verdict::Same
    })
}

/// The (device, inode) of an open file.
pub(super) fn identity(f: &File) -> Option<(u64, u64)> {
    f.metadata().ok().map(|m| (m.dev(), m.ino()))
}

/// Stored files found damaged while a job compared bytes: (path, what is wrong). Shared
/// by the clones of one [`super::Stored`], so the job's owner can take them after the
/// job has run (and show them as problems) whatever became of the job.
#[derive(Debug, Default, Clone)]
pub struct Damaged(Arc<Mutex<Vec<(PathBuf, String)>>>);

impl Damaged {
    /// Records that the stored file `path`, recorded with content `sha256`, no longer
    /// holds it (`verdict` says how it was found out). What is recorded is the reason; the
    /// job's owner names the file and every version sharing it (`verify::sharers`).
    pub(super) fn report(&self, path: &Path, sha256: &str, verdict: &Verdict) {
        let how = match verdict {
            Verdict::Same => return,
            Verdict::DiffersAt(at) => format!("its bytes differ from that content at byte {at}"),
            Verdict::Unreadable(why) => format!("it cannot be read ({why})"),
        };
        let reason = format!(
            "recorded with sha256 {sha256}, but {how}; a new version with that content was \
             given a copy of its own instead of a link to it"
        );
        tracing::debug!(file = %path.display(), "stored file damaged: {reason}");
        let mut list = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !list.iter().any(|(p, _)| p == path) {
            list.push((path.to_path_buf(), reason));
        }
    }

    /// Takes what was reported so far: (path, reason).
    pub fn take(&self) -> Vec<(PathBuf, String)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, bytes: &[u8]) -> File {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        File::open(p).unwrap()
    }

    #[test]
    fn equal_longer_shorter_and_different_files_are_told_apart() {
        let tmp = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..(2 * CHUNK + 10)).map(|i| (i % 253) as u8).collect();
        let mut other = big.clone();
        other[CHUNK + 5] ^= 1;
        let a = file(tmp.path(), "a", &big);
        let same = file(tmp.path(), "same", &big);
        let changed = file(tmp.path(), "changed", &other);
        let longer = file(tmp.path(), "longer", &[&big[..], b"x"].concat());
        let shorter = file(tmp.path(), "shorter", &big[..big.len() - 1]);
        assert_eq!(same_bytes(&a, &same), Verdict::Same);
        assert_eq!(
            same_bytes(&a, &changed),
            Verdict::DiffersAt(CHUNK as u64 + 5)
        );
        assert_eq!(
            same_bytes(&a, &longer),
            Verdict::DiffersAt(big.len() as u64)
        );
        assert_eq!(
            same_bytes(&a, &shorter),
            Verdict::DiffersAt(2 * CHUNK as u64)
        );
    }
}
