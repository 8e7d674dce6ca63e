//! registry.yaml's second name, `.registry.yaml.base`: what the journal continues, kept when registry.yaml is deleted.
//!
//! Each time the daemon writes registry.yaml it gives the new file a second, hidden name
//! (a hard link: no bytes are copied), before the journal is cut down to the records
//! after it. Someone deleting registry.yaml removes one name only: when the daemon is
//! then killed before it writes registry.yaml again, the next start (and `recover`)
//! finds the catalog the journal continues under the other name, and nothing
//! acknowledged is lost.

use std::path::{Path, PathBuf};

use super::Scan;
use crate::error::{Error, Result};
use crate::registry::Catalog;

/// Where registry.yaml's second name lives: beside it, hidden.
pub fn base_path(registry: &Path) -> PathBuf {
    let name = registry
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    registry.with_file_name(format!(".{name}.base"))
}

/// Gives the registry.yaml now on disk its second name, replacing the previous one (a
/// link under a temporary name renamed over it, so the second name always leads to a
/// whole file). The temporary is one `remove_stale_temporaries` removes at start.
pub fn keep_base(registry: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let base = base_path(registry);
    let same =
        |a: &std::fs::Metadata, b: &std::fs::Metadata| a.dev() == b.dev() && a.ino() == b.ino();
    // Already its second name (nothing written since): rename(2) between two names of
    // one file does nothing, and would leave the temporary name behind.
    if let (Ok(r), Ok(b)) = (
        std::fs::metadata(registry),
        std::fs::symlink_metadata(&base),
    ) && same(&r, &b)
    {
        return Ok(());
    }
    let mut tmp = base.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    std::fs::hard_link(registry, &tmp).map_err(|e| Error::io("link", registry, e))?;
    std::fs::rename(&tmp, &base).map_err(|e| Error::io("rename to", &base, e))
}

/// The catalog under registry.yaml's second name, when registry.yaml itself is gone and
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

/// The catalog under registry.yaml's second name, when registry.yaml (`loaded`) is older
/// than the journal (`scan` continues from a record it does not include: an older copy
/// put in its place) and the second name is not: the catalog the journal continues.
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
        "{} (up to journal record {seq}) is older than the journal (from record {from}): replaced by an older copy? \
         Using its last copy {} (up to record {}) and the journal's later records instead",
        registry.display(),
        base.display(),
        c.journal_seq,
    );
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::super::tests::journal_with;
    use super::super::{journal_path, load_current, scan};
    use super::*;
    use crate::registry::persist::{tests::catalog_of, to_yaml, write_atomic};

    #[test]
    fn the_second_name_follows_each_write_and_stands_in_for_a_deleted_registry() {
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
