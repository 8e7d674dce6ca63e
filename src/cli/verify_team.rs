//! `modelreg verify --catalog URL --blobs STORE`: checks that every file the team catalog names is in the blob store with its size and SHA-256.

use std::collections::BTreeMap;
use std::process::ExitCode;

use modelreg::blobs::{BlobError, BlobOptions, BlobStore};
use modelreg::catalogdb::{CatalogDb, Options};
use modelreg::verify::{ProblemKind, VerifyProblem, VerifyReport};

/// One file of a live version, as the catalog names it.
struct Named {
    what: String,
    size: u64,
}

/// Checks the catalog at `catalog` against the store `blobs` (only model `only` when
/// given): each blob named is looked up (HEAD: present, its size) and, unless
/// `size_only`, read back in full and hashed. Prints the report like `verify`; exits
/// non-zero when anything is missing or damaged.
pub(crate) fn verify_team(
    catalog: &str,
    blobs: &str,
    only: Option<&str>,
    size_only: bool,
    json: bool,
) -> ExitCode {
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
                let found = check(&store, sha, files, size_only, scratch.path()).await?;
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
