//! `modelreg verify --catalog URL --blobs STORE [--repair]`: checks that every file the team catalog names is in the blob store with its size and SHA-256; repairs from this host's copies.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use modelreg::blobs::{BlobError, BlobOptions, BlobStore};
use modelreg::catalogdb::{CatalogDb, Options};
use modelreg::verify::{ProblemKind, VerifyProblem, VerifyReport};

/// One file of a live version, as the catalog names it.
struct Named {
    what: String,
    /// Its path under a host's root (`models/<name>/v<N>/...`).
    path: String,
    size: u64,
}

/// What `verify --catalog --blobs` was asked.
pub(crate) struct TeamVerify<'a> {
    /// The catalog's connection string.
    pub catalog: &'a str,
    /// The blob store's setting.
    pub blobs: &'a str,
    /// Only this model.
    pub only: Option<&'a str>,
    /// Only look each blob up, without reading it.
    pub size_only: bool,
    /// Upload each missing or damaged blob again from a good copy under `root`.
    pub repair: bool,
    /// This host's registry root (where `--repair` looks for copies).
    pub root: &'a Path,
    /// Print the report as JSON.
    pub json: bool,
}

/// Checks the catalog at `catalog` against the store `blobs` (only model `only` when
/// given): each blob named is looked up (HEAD: present, its size) and, unless
/// `size_only`, read back in full and hashed. With `repair`, each blob found missing or
/// damaged is uploaded again from a copy in this host's store whose SHA-256 checks out
/// (verified as every upload is, then read back and checked again); one with no good
/// copy here stays a problem, saying so. Prints the report like `verify`; exits non-zero
/// when anything is (still) missing or damaged.
pub(crate) fn verify_team(args: TeamVerify<'_>) -> ExitCode {
    let TeamVerify {
        catalog,
        blobs,
        only,
        size_only,
        repair,
        root,
        json,
    } = args;
    let run = || -> Result<VerifyReport, String> {
        let store = BlobStore::open(blobs, &BlobOptions::default()).map_err(|e| e.to_string())?;
        super::migrate::runtime()?.block_on(async {
            let mut db = CatalogDb::connect(catalog, Options::default())
                .await
                .map_err(|e| e.to_string())?;
            let snapshot = db.snapshot().await.map_err(|e| e.to_string())?;
            if let Some(name) = only.filter(|n| !snapshot.models.contains_key(*n)) {
                return Err(format!("the catalog {} has no model {name}", db.server()));
            }
            let mut report = VerifyReport::default();
            // Blob by blob (a file several versions share is read once), each file that
            // names it reported on its own.
            let mut by_blob: BTreeMap<String, Vec<Named>> = BTreeMap::new();
            for (name, m) in &snapshot.models {
                if only.is_some_and(|o| o != name) {
                    continue;
                }
                for v in m.versions.iter().filter(|v| v.removed.is_none()) {
                    report.versions += 1;
                    for f in &v.files {
                        by_blob.entry(f.sha256.clone()).or_default().push(Named {
                            what: format!("{name} v{} {}", v.number, f.path),
                            path: f.path.clone(),
                            size: f.size,
                        });
                    }
                }
            }
            let scratch = tempfile::Builder::new()
                .prefix("modelreg-verify-")
                .tempdir()
                .map_err(|e| format!("cannot make a scratch folder to read blobs into: {e}"))?;
            for (sha, files) in &by_blob {
                let key = store.key(sha).map_err(|e| e.to_string())?;
                let mut found = check(&store, sha, files, size_only, scratch.path()).await?;
                let damaged = match &found {
                    Ok(size) => files.iter().any(|f| f.size != *size),
                    Err(_) => true,
                };
                if repair && damaged {
                    let was = match &found {
                        Ok(size) => (
                            ProblemKind::Modified,
                            format!(
                                "the blob is {size} bytes, the catalog says {}",
                                files[0].size
                            ),
                        ),
                        Err(problem) => problem.clone(),
                    };
                    match repair_blob(&store, sha, files, root).await {
                        Ok(from) => {
                            // Read back in full and hashed, whatever size_only says.
                            found = check(&store, sha, files, false, scratch.path()).await?;
                            if matches!(found, Ok(size) if files.iter().all(|f| f.size == size)) {
                                for f in files {
                                    report.repaired.push(VerifyProblem {
                                        kind: was.0,
                                        path: key.clone(),
                                        detail: format!(
                                            "{}: {}; uploaded again from {}, read back and checked",
                                            f.what,
                                            was.1,
                                            from.display()
                                        ),
                                    });
                                }
                            } else if let Err((kind, why)) = &found {
                                found = Err((
                                    *kind,
                                    format!(
                                        "{why} (uploaded again from {}, and still so when read back: \
                                         is another client writing to the store?)",
                                        from.display()
                                    ),
                                ));
                            }
                        }
                        Err(why_not) => {
                            found = Err((was.0, format!("{}; not repaired: {why_not}", was.1)));
                        }
                    }
                }
                for f in files {
                    match &found {
                        Ok(size) if *size == f.size => {
                            report.files += 1;
                            report.bytes += size;
                        }
                        Ok(size) => report.problems.push(VerifyProblem {
                            kind: ProblemKind::Modified,
                            path: key.clone(),
                            detail: format!(
                                "{}: the blob is {size} bytes, the catalog says {}",
                                f.what, f.size
                            ),
                        }),
                        Err((kind, why)) => report.problems.push(VerifyProblem {
                            kind: *kind,
                            path: key.clone(),
                            detail: format!("{}: {why}", f.what),
                        }),
                    }
                }
            }
            Ok(report)
        })
    };
    super::exit_with_report(run(), json)
}

/// Uploads the blob `sha` again (replacing what the store holds) from the first copy
/// under `root` of a file that names it whose bytes hash to `sha`; returns that copy's
/// path, or why none could be used (each place looked at, and what to do).
async fn repair_blob(
    store: &BlobStore,
    sha: &str,
    files: &[Named],
    root: &Path,
) -> Result<PathBuf, String> {
    let mut looked = Vec::new();
    let mut candidates: Vec<PathBuf> = files.iter().map(|f| root.join(&f.path)).collect();
    candidates.dedup();
    for p in candidates {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                looked.push(format!("{}: not a regular file", p.display()));
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                looked.push(format!("{}: not on this host", p.display()));
                continue;
            }
            Err(e) => {
                looked.push(format!("{}: {e}", p.display()));
                continue;
            }
        }
        let (actual, size) = match modelreg::store::hash_file(&p) {
            Ok(hashed) => hashed,
            Err(e) => {
                looked.push(format!("{}: {e}", p.display()));
                continue;
            }
        };
        if actual != sha {
            looked.push(format!(
                "{}: damaged here too (hashes to sha256 {actual})",
                p.display()
            ));
            continue;
        }
        match store.replace_file(&p, sha, size).await {
            Ok(_) => return Ok(p),
            Err(e) => looked.push(format!("{}: uploading it failed: {e}", p.display())),
        }
    }
    Err(format!(
        "no good copy on this host ({}); run `modelreg verify --catalog ... --blobs ... --repair` \
         on a host that holds one (the host that registered it, or one that fetched it before)",
        looked.join("; ")
    ))
}

/// The blob's size, checked as far as asked; or what is wrong with it. An error reaching
/// the store at all ends the command (every blob would be reported otherwise).
async fn check(
    store: &BlobStore,
    sha: &str,
    files: &[Named],
    size_only: bool,
    scratch: &std::path::Path,
) -> Result<Result<u64, (ProblemKind, String)>, String> {
    let size = match store.exists(sha).await {
        Ok(Some(size)) => size,
        Ok(None) => {
            return Ok(Err((
                ProblemKind::Missing,
                "the blob is not in the store".into(),
            )));
        }
        Err(e) => return Err(e.to_string()),
    };
    if size_only || files.iter().any(|f| f.size != size) {
        return Ok(Ok(size));
    }
    // Read back in full: fetch hashes it as it writes, and refuses a mismatch.
    let dest = scratch.join(sha);
    let fetched = store.fetch(sha, &dest).await;
    let _ = std::fs::remove_file(&dest);
    Ok(match fetched {
        Ok(size) => Ok(size),
        Err(e @ (BlobError::Mismatch { .. } | BlobError::Size { .. })) => {
            Err((ProblemKind::Modified, e.to_string()))
        }
        Err(e @ BlobError::NotFound { .. }) => Err((ProblemKind::Missing, e.to_string())),
        Err(e) => Err((ProblemKind::Unreadable, e.to_string())),
    })
}
