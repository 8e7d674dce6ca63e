//! `verify`: re-hash every stored file and compare with the catalog; missing, modified and extra files.
//!
//! Reports files that are missing or modified, and files or folders in the store the
//! catalog does not name. It only reads: a tampered file is reported, never "repaired".

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

pub use crate::protocol::{ProblemKind, VerifyProblem, VerifyReport};
use crate::registry::Catalog;
use crate::store;

/// A stored file (found damaged) and every stored version whose file is that inode: dedup
/// hard-links equal files of a model, so one damaged inode is the damaged file of each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sharers {
    /// The model.
    pub model: String,
    /// The file's (device, inode).
    pub inode: (u64, u64),
    /// Each version whose file it is: number, the file's path in the version, full path.
    pub versions: Vec<(u32, String, String)>,
}

/// The sharers of the stored file at `path` (in `store`, under `root`): `None` when it is
/// not a file of a stored version the catalog names, or cannot be looked at. Only files
/// recorded with the same content are looked at: dedup links nothing else.
pub fn sharers(root: &Path, store_dir: &Path, catalog: &Catalog, path: &Path) -> Option<Sharers> {
    use std::os::unix::fs::MetadataExt;
    let mut parts = path.strip_prefix(store_dir).ok()?.iter();
    let model = parts.next()?.to_str()?.to_string();
    let number = crate::registry::parse_version_number(parts.next()?.to_str()?)?;
    let m = catalog.models.get(&model)?;
    let v = m.stored().find(|v| v.number == number)?;
    let sha = &v.files.iter().find(|f| root.join(&f.path) == path)?.sha256;
    let meta = fs::symlink_metadata(path).ok()?;
    let inode = (meta.dev(), meta.ino());
    let mut versions = Vec::new();
    for v in m.stored() {
        let dir = store::version_dir(store_dir, &model, v.number);
        for f in v.files.iter().filter(|f| &f.sha256 == sha) {
            let p = root.join(&f.path);
            if fs::symlink_metadata(&p).is_ok_and(|m| (m.dev(), m.ino()) == inode) {
                let rel = p.strip_prefix(&dir).unwrap_or(&p).display().to_string();
                versions.push((v.number, rel, p.display().to_string()));
            }
        }
    }
    Some(Sharers {
        model,
        inode,
        versions,
    })
}

/// Only checks that the files exist with the recorded size (cheap; used at start-up).
pub fn missing_files(root: &Path, catalog: &Catalog) -> Vec<VerifyProblem> {
    let mut out = Vec::new();
    for (name, m) in &catalog.models {
        for v in m.stored() {
            for f in &v.files {
                let p = root.join(&f.path);
                if fs::symlink_metadata(&p).is_err() {
                    out.push(VerifyProblem {
                        kind: ProblemKind::Missing,
                        path: p.display().to_string(),
                        detail: format!("{name} v{}: stored file is missing", v.number),
                    });
                }
            }
        }
    }
    out
}

/// Verifies every version of `only` (or of every model): re-hashes each stored file and
/// looks for extra files and folders under the store. With `team` (team mode: this
/// host's store is a read-through cache of the shared catalog's blobs), a file that is
/// not here is not fetched yet, counted in `not_fetched`, not a problem; a file that is
/// here is checked as in local mode.
pub fn verify(
    root: &Path,
    store_dir: &Path,
    catalog: &Catalog,
    only: Option<&str>,
    team: bool,
) -> VerifyReport {
    let mut report = VerifyReport::default();
    let mut expected: BTreeSet<std::path::PathBuf> = BTreeSet::new();
    for (name, m) in &catalog.models {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        for v in m.stored() {
            report.versions += 1;
            let mut fetched_all = true;
            expected.insert(store::version_dir(store_dir, name, v.number));
            // The version's own manifest (absent for versions stored before manifests).
            expected.insert(store::version_dir(store_dir, name, v.number).join(store::MANIFEST));
            for f in &v.files {
                let p = root.join(&f.path);
                expected.insert(p.clone());
                let shown = p.display().to_string();
                let what = format!("{name} v{}", v.number);
                match fs::symlink_metadata(&p) {
                    Err(e) if team && e.kind() == std::io::ErrorKind::NotFound => {
                        report.not_fetched_files += 1;
                        fetched_all = false;
                        continue;
                    }
                    Err(_) => {
                        report.problems.push(VerifyProblem {
                            kind: ProblemKind::Missing,
                            path: shown,
                            detail: format!("{what}: stored file is missing"),
                        });
                        continue;
                    }
                    Ok(meta) if !meta.is_file() => {
                        report.problems.push(VerifyProblem {
                            kind: ProblemKind::Modified,
                            path: shown,
                            detail: format!("{what}: not a regular file any more"),
                        });
                        continue;
                    }
                    Ok(_) => {}
                }
                match store::hash_file(&p) {
                    Ok((sha, size)) => {
                        report.files += 1;
                        report.bytes += size;
                        if sha != f.sha256 || size != f.size {
                            report.problems.push(VerifyProblem {
                                kind: ProblemKind::Modified,
                                path: shown,
                                detail: format!(
                                    "{what}: expected sha256 {} ({} bytes), found {sha} ({size} bytes)",
                                    f.sha256, f.size
                                ),
                            });
                        }
                    }
                    Err(e) => report.problems.push(VerifyProblem {
                        kind: ProblemKind::Unreadable,
                        path: shown,
                        detail: format!("{what}: {e}"),
                    }),
                }
            }
            if !fetched_all {
                report.not_fetched += 1;
            }
        }
    }
    // Extra files: anything under the verified models' folders the catalog does not name.
    let models: Vec<String> = match only {
        Some(n) => vec![n.to_string()],
        None => {
            let mut v: Vec<String> = fs::read_dir(store_dir)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        }
    };
    for name in models {
        if name == store::trash::TRASH {
            // Folders of removed versions being deleted (store::trash): not the catalog's.
            continue;
        }
        if name == store::STAGING {
            // Staging folders of registrations not finished (removed or completed at the
            // daemon's next start; under a running daemon, a copy in progress).
            for e in fs::read_dir(store_dir.join(&name))
                .into_iter()
                .flatten()
                .flatten()
            {
                report.problems.push(VerifyProblem {
                    kind: ProblemKind::Extra,
                    path: e.path().display().to_string(),
                    detail: "staging folder of an unfinished registration".into(),
                });
            }
            continue;
        }
        let dir = store_dir.join(&name);
        if !dir.is_dir() {
            if only.is_none() {
                report.problems.push(VerifyProblem {
                    kind: ProblemKind::Extra,
                    path: dir.display().to_string(),
                    detail: "not a folder of the store".into(),
                });
            }
            continue;
        }
        if !catalog.models.contains_key(&name) {
            report.problems.push(VerifyProblem {
                kind: ProblemKind::Extra,
                path: dir.display().to_string(),
                detail: format!("model folder {name} is not in the catalog"),
            });
            continue;
        }
        // latest, best and aliases are symlinks the daemon keeps beside the versions.
        let m = &catalog.models[&name];
        for link in ["latest", "best"]
            .into_iter()
            .map(String::from)
            .chain(m.aliases.keys().cloned())
        {
            expected.insert(dir.join(link));
        }
        // Manifests of removed versions, kept so their numbers stay taken.
        let graves = dir.join(store::TOMBSTONES);
        expected.insert(graves.clone());
        for e in fs::read_dir(&graves).into_iter().flatten().flatten() {
            expected.insert(e.path());
        }
        extra_under(&dir, &expected, &mut report.problems);
    }
    report
}

fn extra_under(dir: &Path, expected: &BTreeSet<std::path::PathBuf>, out: &mut Vec<VerifyProblem>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir && (expected.contains(&p) || expected.iter().any(|x| x.starts_with(&p))) {
            extra_under(&p, expected, out);
        } else if !expected.contains(&p) {
            out.push(VerifyProblem {
                kind: ProblemKind::Extra,
                path: p.display().to_string(),
                detail: "not named by the catalog".into(),
            });
        }
    }
}
