//! registry.yaml's last copy, `.registry.yaml.base`: what the journal continues, kept when registry.yaml is deleted or overwritten.
//!
//! Each time the daemon writes registry.yaml it copies the new file to a hidden file
//! beside it (its own inode, fsynced, renamed into place), before the journal is cut
//! down to the records after it. Someone deleting registry.yaml, or writing an older copy
//! into it (`cp old.yaml registry.yaml` writes through the file's inode, so a second
//! *name* of it would change too), leaves this copy as it was: when the daemon is then
//! killed before it writes registry.yaml again, the next start (and `recover`) finds the
//! catalog the journal continues here, and nothing acknowledged is lost.

use std::path::{Path, PathBuf};

use super::Scan;
use crate::error::{Error, Result};
use crate::registry::Catalog;

/// Where registry.yaml's last copy lives: beside it, hidden.
pub fn base_path(registry: &Path) -> PathBuf {
    let name = registry
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    registry.with_file_name(format!(".{name}.base"))
}

/// Copies the registry.yaml now on disk to its last copy (see the module's comment),
/// replacing the previous one atomically: copied to a temporary (in the kernel,
/// `copy_file_range`), given registry.yaml's modification time, fsynced, renamed over it,
/// the folder fsynced. The temporary is one `remove_stale_temporaries` removes at start.
///
/// Nothing is copied when the copy already matches (same size and modification time, a
/// different inode): a start with nothing written since. A copy that is the same inode
/// (the hard link older versions made) is always replaced by a file of its own.
pub fn keep_base(registry: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let base = base_path(registry);
    let r = std::fs::metadata(registry).map_err(|e| Error::io("stat", registry, e))?;
    if let Ok(b) = std::fs::symlink_metadata(&base)
        && b.is_file()
        && (b.dev(), b.ino()) != (r.dev(), r.ino())
        && b.len() == r.len()
        && b.modified().ok() == r.modified().ok()
    {
        return Ok(());
    }
    let mut tmp = base.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let copied = std::fs::copy(registry, &tmp)
        .and_then(|_| std::fs::OpenOptions::new().write(true).open(&tmp))
        .and_then(|f| {
            if let Ok(t) = r.modified() {
                f.set_modified(t)?;
            }
            f.sync_all()
        });
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io("copy registry.yaml to", &tmp, e));
    }
    std::fs::rename(&tmp, &base).map_err(|e| Error::io("rename to", &base, e))?;
    crate::fsutil::sync_dir(base.parent().unwrap_or(Path::new(".")))
}

/// The catalog under registry.yaml's last copy, when registry.yaml itself is gone and
/// the journal (`scan`) continues it; `None` (with a warning saying why) otherwise.
pub fn base_joining(registry: &Path, scan: Option<&Scan>) -> Option<Catalog> {
    let base = base_path(registry);
    let c = match super::super::load(&base) {
        Ok(Some(c)) => c,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(
                "{} is missing, and its last copy cannot be read: {e}",
                registry.display()
            );
            return None;
        }
    };
    if let Some(s) = scan.filter(|s| s.base > c.journal_seq) {
        tracing::warn!(
            "{} is missing, and its last copy {} (up to record {}) is older than the journal (from record {})",
            registry.display(),
            base.display(),
            c.journal_seq,
            s.base
        );
        return None;
    }
    tracing::warn!(
        registry = %registry.display(),
        "{} is missing (deleted?): starting from its last copy {} (up to record {}) and the journal's later records",
        registry.display(),
        base.display(),
        c.journal_seq
    );
    Some(c)
}

/// The catalog under registry.yaml's last copy, when registry.yaml (`loaded`) is older
/// than the journal (`scan` continues from a record it does not include: an older copy
/// put in its place, or written into it) and the last copy is not: the catalog the journal continues.
/// Warns, saying which file is used. Reads only.
pub fn base_newer(
    registry: &Path,
    loaded: Option<&Catalog>,
    scan: Option<&Scan>,
) -> Option<Catalog> {
    let (seq, from) = (loaded?.journal_seq, scan?.base);
    if from <= seq {
        return None;
    }
    let base = base_path(registry);
    let c = super::super::load(&base)
        .ok()
        .flatten()
        .filter(|c| c.journal_seq >= from)?;
    tracing::warn!(
        registry = %registry.display(),
        "{} (up to journal record {seq}) is older than the journal (from record {from}): replaced by, or overwritten with, an older copy? \
         Using its last copy {} (up to record {}) and the journal's later records instead",
        registry.display(),
        base.display(),
        c.journal_seq,
    );
    Some(c)
}

/// registry.yaml's last copy with the journal's records after it applied, when the copy
/// holds at least up to record `seq` (registry.yaml's) and every such record fits it:
/// (the copy's last record, the catalog). For a registry.yaml the journal does not fit.
pub fn base_continued(registry: &Path, scan: &Scan, seq: u64) -> Option<(u64, Catalog)> {
    match super::super::load(&base_path(registry)) {
        Ok(Some(mut c)) if c.journal_seq >= seq && scan.base <= c.journal_seq => {
            let from = c.journal_seq;
            let all = scan
                .records
                .iter()
                .filter(|(d, _)| d.seq > from)
                .all(|(d, _)| d.apply(&mut c).is_ok());
            all.then_some((from, c))
        }
        _ => None,
    }
}

/// What to do when a journal record does not fit registry.yaml (which holds up to
/// record `seq`): registry.yaml cut short (a full disk, an editor) or edited by hand.
/// When its last copy is what the journal continues (every record after it applies to
/// it), that copy is named with the commands that put it in place; otherwise a backup.
/// Reads the last copy and replays the journal on it: only on this failure's path.
pub fn fix_for_misfit(registry: &Path, scan: &Scan, seq: u64) -> String {
    let base = base_path(registry);
    let (reg, b) = (registry.display(), base.display());
    let fits = base_continued(registry, scan, seq).map(|(from, _)| from);
    match fits {
        Some(from) => format!(
            "{reg} is not the catalog the journal continues (cut short, or edited?); its last copy {b} (up to record {from}) is, and every later journal record fits it. Not starting. To start from it (nothing acknowledged is lost): with the daemon stopped, mv {reg} {reg}.damaged && cp -p {b} {reg}; then start the daemon again (or run `modelreg recover`, which starts from that copy and says so)"
        ),
        None => format!(
            "{reg} (up to record {seq}) is not the catalog the journal continues (cut short, or edited?), and its last copy {b} is not either. Not starting. Restore a registry.yaml that includes record {seq} (a backup's, with its journal), or move the journal aside and run `modelreg recover`, which rebuilds from registry.yaml and the store and lists what is lost"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::journal_with;
    use super::super::{journal_path, load_current, scan};
    use super::*;
    use crate::registry::persist::{load, tests::catalog_of, to_yaml, write_atomic};

    #[test]
    fn the_last_copy_follows_each_write_and_stands_in_for_a_deleted_or_overwritten_registry() {
        let dir = tempfile::tempdir().unwrap();
        let reg = dir.path().join("registry.yaml");
        let c = catalog_of("m", &[1]);
        write_atomic(&reg, to_yaml(&c).unwrap().as_bytes()).unwrap();
        keep_base(&reg).unwrap();
        // Twice on the same file: nothing left under the temporary name.
        keep_base(&reg).unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
        // Its own file: writing registry.yaml in place leaves it as it was.
        std::fs::write(&reg, "format: 1\n").unwrap();
        assert_eq!(load(&base_path(&reg)).unwrap().unwrap().models.len(), 1);
        keep_base(&reg).unwrap();
        write_atomic(&reg, to_yaml(&c).unwrap().as_bytes()).unwrap();
        keep_base(&reg).unwrap();
        journal_with(dir.path(), 2);
        std::fs::remove_file(&reg).unwrap();
        let now = load_current(&reg).unwrap().unwrap();
        assert_eq!((now.models.len(), now.journal_seq), (1, 2));
        // A copy older than the journal's start is not used.
        let s = scan(&journal_path(&reg)).unwrap().unwrap();
        let mut j = super::super::Journal::open(&journal_path(&reg), Some(s), 2).unwrap();
        j.rotate(2).unwrap();
        let s = scan(&journal_path(&reg)).unwrap().unwrap();
        assert!(base_joining(&reg, Some(&s)).is_none());
    }
}
