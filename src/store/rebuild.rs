//! Audit and rebuild from disk: versions the store holds that the catalog lost.
//!
//! [`audit`] lists them (at start-up, before any number is allocated); [`rebuild`]
//! (`modelreg recover`) adds them back to a catalog from their manifests, or by hashing
//! a folder stored before manifests existed. Neither changes the store.

use std::fs;
use std::path::{Path, PathBuf};

use super::copy::hash_file;
use super::manifest::{MANIFEST, Manifest, TOMBSTONES, numbers_in_store, read_manifest};
use super::{StagedFile, version_dir, version_number};
use crate::error::{Error, Result};
use crate::registry::{Catalog, Kind, Mark, StoredFile, Version};

/// Versions the store holds that the catalog does not know: `name/v<N>` folders it does
/// not name, and tombstones above its highest number. Any of these means the catalog
/// lost versions (deleted, restored from an old copy): starting would reuse numbers.
pub fn audit(store: &Path, catalog: &Catalog) -> Vec<String> {
    let mut out = Vec::new();
    let mut models: Vec<String> = fs::read_dir(store)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    models.sort();
    for name in models {
        let m = catalog.models.get(&name);
        for (n, removed) in numbers_in_store(store, &name) {
            let known = m.is_some_and(|m| {
                if removed {
                    n <= m.highest
                } else {
                    m.find(n).is_some()
                }
            });
            if !known {
                out.push(if removed {
                    format!("{name}/v{n} (removed)")
                } else {
                    format!("{name}/v{n}")
                });
            }
        }
    }
    out
}

/// What [`rebuild`] did.
#[derive(Debug, Default)]
pub struct Rebuilt {
    /// Versions added from their manifests.
    pub from_manifest: Vec<String>,
    /// Versions without a manifest (stored before manifests existed): files hashed;
    /// source, time, metrics and metadata unknown.
    pub hashed: Vec<String>,
    /// Tombstones added (removed versions), so their numbers stay taken.
    pub tombstones: Vec<String>,
    /// Folders that could not be read, left out (and untouched).
    pub unreadable: Vec<String>,
    /// Versions the catalog named live that the store holds only a tombstone of (removed
    /// after the catalog's copy was made): marked removed.
    pub removed: Vec<String>,
}

/// Adds to `catalog` every version the store holds that it lacks, from the manifests (or,
/// without one, by hashing the folder). `rel` turns a stored path into the catalog's form.
/// Nothing in the store is changed.
pub fn rebuild(store: &Path, catalog: &mut Catalog, rel: &dyn Fn(&Path) -> String) -> Rebuilt {
    let mut report = Rebuilt::default();
    let lost: Vec<String> = audit(store, catalog);
    for item in lost {
        let removed = item.ends_with(" (removed)");
        let key = item.trim_end_matches(" (removed)");
        let Some((name, v)) = key.rsplit_once('/') else {
            continue;
        };
        let Some(n) = version_number(v) else { continue };
        let dir = version_dir(store, name, n);
        let manifest_path = if removed {
            store.join(name).join(TOMBSTONES).join(format!("v{n}.json"))
        } else {
            dir.join(MANIFEST)
        };
        let manifest = match read_manifest(&manifest_path) {
            Ok(Some(m)) => m,
            Ok(None) if removed => continue,
            Ok(None) => match hash_folder(&dir, name, n) {
                Ok(m) => {
                    report.hashed.push(key.to_string());
                    m
                }
                Err(e) => {
                    report.unreadable.push(format!("{key}: {e}"));
                    continue;
                }
            },
            Err(e) => {
                report.unreadable.push(format!("{key}: {e}"));
                continue;
            }
        };
        let mut version = version_from(manifest, n, &dir, rel);
        if removed {
            version.removed = Some(Box::new(Mark {
                at: "unknown".into(),
                reason: Some("removed before registry.yaml was rebuilt".into()),
                uid: None,
            }));
            report.tombstones.push(key.to_string());
        } else if !report.hashed.iter().any(|h| h == key) {
            report.from_manifest.push(key.to_string());
        }
        let model = std::sync::Arc::make_mut(catalog.models.entry(name.to_string()).or_default());
        if model.find(n).is_none() {
            model.versions.push(std::sync::Arc::new(version));
            model.versions.sort_by_key(|v| v.number);
        }
        model.highest = model.highest.max(n);
    }
    // A version named live whose folder is gone and whose tombstone the store holds was
    // removed after this catalog's copy was made (an older registry.yaml restored): the
    // tombstone wins, as it does for a version the catalog lacks.
    for (name, model) in catalog.models.iter_mut() {
        for (n, removed) in numbers_in_store(store, name) {
            if !removed || version_dir(store, name, n).exists() {
                continue;
            }
            let Some(i) =
                (model.versions.iter()).position(|v| v.number == n && v.removed.is_none())
            else {
                continue;
            };
            let m = std::sync::Arc::make_mut(model);
            std::sync::Arc::make_mut(&mut m.versions[i]).removed = Some(Box::new(Mark {
                at: "unknown".into(),
                reason: Some("removed after the registry.yaml recovered from was written".into()),
                uid: None,
            }));
            report.removed.push(format!("{name}/v{n}"));
        }
    }
    report
}

/// The catalog's record of version `n` from its manifest; the files of the version
/// folder `dir`, their paths in the catalog's form (`rel`).
fn version_from(m: Manifest, n: u32, dir: &Path, rel: &dyn Fn(&Path) -> String) -> Version {
    Version {
        number: n,
        kind: m.kind,
        files: m
            .files
            .iter()
            .map(|f| StoredFile {
                path: rel(&dir.join(&f.rel)),
                sha256: f.sha256.clone(),
                size: f.size,
            })
            .collect(),
        source: m.source,
        registered_at: m.registered_at,
        metrics: m.metrics,
        metadata: m.metadata,
        sidecar: None,
        metrics_history: vec![],
        metric_sources: m.metric_sources,
        extracted: m.extracted,
        provenance: m.provenance,
        deprecated: None,
        removed: None,
    }
}

/// A manifest for a version folder stored without one: every file (hidden ones aside)
/// hashed; a single file at the top makes a file version; the folder's mtime stands for
/// the registration time.
fn hash_folder(dir: &Path, name: &str, n: u32) -> Result<Manifest> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>, dirs: &mut usize) -> Result<()> {
        let mut entries: Vec<_> = fs::read_dir(d)
            .map_err(|e| Error::io("list", d, e))?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let t = e
                .file_type()
                .map_err(|err| Error::io("stat", e.path(), err))?;
            if t.is_dir() {
                *dirs += 1;
                walk(&e.path(), out, dirs)?;
            } else if t.is_file() {
                out.push(e.path());
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    let mut dirs = 0;
    walk(dir, &mut files, &mut dirs)?;
    let mut stored = Vec::new();
    for f in &files {
        let (sha256, size) = hash_file(f)?;
        stored.push(StagedFile {
            rel: f
                .strip_prefix(dir)
                .unwrap_or(f)
                .to_string_lossy()
                .into_owned(),
            sha256,
            size,
        });
    }
    let mtime = fs::metadata(dir)
        .and_then(|m| m.modified())
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default();
    Ok(Manifest {
        kind: if files.len() == 1 && dirs == 0 {
            Kind::File
        } else {
            Kind::Folder
        },
        files: stored,
        source: "unknown (rebuilt from the store)".into(),
        registered_at: mtime,
        ..Manifest::minimal(name, n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::sha256_hex;
    use crate::store::{discard, highest_in_store, publish, retire, stage, write_manifest};
    use std::sync::atomic::AtomicBool;

    #[test]
    fn manifests_tombstones_audit_and_rebuild() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("models");
        let src = tmp.path().join("m.pt");
        let no = AtomicBool::new(false);
        let stage_v = |n: u32, bytes: &[u8]| {
            fs::write(&src, bytes).unwrap();
            let s = stage(&store, "m", n, &[(src.clone(), "m.pt".into())], &no).unwrap();
            let m = Manifest {
                registered_at: "2026-01-01T00:00:00Z".into(),
                source: "pretrained_models/m.pt".into(),
                files: s.files.clone(),
                metrics: [("accuracy".to_string(), 0.5)].into(),
                extracted: [("format".to_string(), serde_json::json!("safetensors"))].into(),
                provenance: [("user".to_string(), serde_json::json!("ann"))].into(),
                ..Manifest::minimal("m", n)
            };
            write_manifest(&s.dir, &m).unwrap();
            s
        };
        publish(&stage_v(1, b"one")).unwrap();
        publish(&stage_v(2, b"two")).unwrap();
        // An existing v2 is never replaced, not even by a rename.
        let again = stage_v(2, b"other");
        let e = publish(&again).unwrap_err().to_string();
        assert!(e.contains("never overwritten"), "{e}");
        assert_eq!(fs::read(store.join("m/v2/m.pt")).unwrap(), b"two");
        discard(&again.dir).unwrap();
        publish(&stage_v(3, b"three")).unwrap();
        retire(&store, "m", 3).unwrap();
        assert!(!store.join("m/v3").exists());
        assert_eq!(highest_in_store(&store, "m"), 3, "the tombstone counts");
        // A catalog that knows none of it: everything is reported, then rebuilt.
        let mut c = Catalog::default();
        assert_eq!(audit(&store, &c), vec!["m/v1", "m/v2", "m/v3 (removed)"]);
        let rel = |p: &Path| p.strip_prefix(tmp.path()).unwrap().display().to_string();
        let r = rebuild(&store, &mut c, &rel);
        assert_eq!(r.from_manifest, vec!["m/v1", "m/v2"]);
        assert_eq!(r.tombstones, vec!["m/v3"]);
        let m = &c.models["m"];
        assert_eq!(m.highest, 3);
        assert_eq!(m.versions.len(), 3);
        assert_eq!(m.versions[1].files[0].path, "models/m/v2/m.pt");
        assert_eq!(m.versions[1].files[0].sha256, sha256_hex(b"two"));
        assert_eq!(m.versions[1].metrics.get("accuracy"), Some(&0.5));
        // Extracted facts and provenance survive a rebuild (the manifest keeps them).
        assert_eq!(m.versions[1].extracted["format"], "safetensors");
        assert_eq!(m.versions[1].provenance["user"], "ann");
        assert!(m.versions[2].removed.is_some());
        assert!(audit(&store, &c).is_empty());
        // A version stored before manifests existed is rebuilt by hashing its files.
        fs::remove_file(store.join("m/v1").join(MANIFEST)).unwrap();
        let mut c = Catalog::default();
        let r = rebuild(&store, &mut c, &rel);
        assert_eq!(r.hashed, vec!["m/v1"]);
        assert_eq!(
            c.models["m"].versions[0].files[0].sha256,
            sha256_hex(b"one")
        );
    }

    #[test]
    fn the_highest_number_is_listed_again_when_a_folder_came_or_went() {
        use crate::store::{Listed, highest_in_store_since};
        let l = |nlink, highest| Some(Listed { nlink, highest });
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path();
        assert_eq!(highest_in_store_since(store, "m", None), (0, None));
        for v in ["v1", "v2"] {
            fs::create_dir_all(store.join("m").join(v)).unwrap();
        }
        let (h, seen) = highest_in_store_since(store, "m", None);
        assert_eq!((h, seen), (2, l(4, 2)));
        // The count unchanged: the listing is not made again (a stale `highest` shows it).
        let stale = l(4, 9);
        assert_eq!(highest_in_store_since(store, "m", stale), (9, stale));
        // A folder put there by hand: listed again.
        fs::create_dir(store.join("m/v7")).unwrap();
        let (h, seen) = highest_in_store_since(store, "m", stale);
        assert_eq!((h, seen), (7, l(5, 7)));
    }
}
