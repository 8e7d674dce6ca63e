//! The start-up cache `.registry.yaml.cache.json`: the catalog as JSON, used only while registry.yaml is unchanged.
//!
//! JSON parses much faster than YAML; the cache records the SHA-256 of the registry.yaml
//! it was written from and is ignored (never trusted, never an error) when that does not
//! match. Written at clean shutdown; registry.yaml stays the only source of truth.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::repr::{FileRepr, FileReprRef, repr_ref};
use super::{into_catalog, load, sha256_of_file, write_atomic};
use crate::error::{Error, Result};
use crate::registry::Catalog;

/// Where the start-up cache of `registry` lives: beside it, hidden.
pub fn cache_path(registry: &Path) -> PathBuf {
    let name = registry
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    registry.with_file_name(format!(".{name}.cache.json"))
}

// The catalog is nested, not flattened: serde buffers a flattened struct whole before
// deserialising it, which at 100,000 versions costs more than it saves.
#[derive(Serialize)]
struct CacheOut<'a> {
    registry_sha256: &'a str,
    catalog: FileReprRef<'a>,
}

#[derive(Deserialize)]
struct CacheIn {
    registry_sha256: String,
    catalog: FileRepr,
}

/// Writes the start-up cache for the registry.yaml now on disk, which must hold `c`.
pub fn write_cache(registry: &Path, c: &Catalog) -> Result<()> {
    let sha = sha256_of_file(registry)?
        .ok_or_else(|| Error::Other(format!("{} does not exist to cache", registry.display())))?;
    let out = CacheOut {
        registry_sha256: &sha,
        catalog: repr_ref(c),
    };
    let json = serde_json::to_vec(&out)
        .map_err(|e| Error::Other(format!("cannot serialise the cache: {e}")))?;
    write_atomic(&cache_path(registry), &json)
}

/// Loads the catalog: from the start-up cache when it matches registry.yaml byte for
/// byte, else by parsing registry.yaml. `Ok(None)` when registry.yaml does not exist.
pub fn load_with_cache(registry: &Path) -> Result<Option<Catalog>> {
    // Hashed in pieces and the cache read through a reader: neither file is ever whole
    // in memory beside the catalog built from it.
    let Some(sha) = sha256_of_file(registry)? else {
        return Ok(None);
    };
    let shown = registry.display().to_string();
    if let Ok(f) = std::fs::File::open(cache_path(registry)) {
        match serde_json::from_reader::<_, CacheIn>(std::io::BufReader::new(f)) {
            Ok(c) if c.registry_sha256 == sha => match into_catalog(&shown, None, c.catalog) {
                Ok(catalog) => return Ok(Some(catalog)),
                Err(e) => tracing::warn!("ignoring the start-up cache: {e}"),
            },
            Ok(_) => tracing::info!(
                "the start-up cache is older than registry.yaml; reading registry.yaml"
            ),
            Err(e) => tracing::warn!("ignoring an unreadable start-up cache: {e}"),
        }
    }
    load(registry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::persist::{tests::catalog_of, to_yaml};

    #[test]
    fn cache_used_only_when_it_matches() {
        let dir = tempfile::tempdir().unwrap();
        let reg = dir.path().join("registry.yaml");
        let c = catalog_of("m", &[1]);
        write_atomic(&reg, to_yaml(&c).unwrap().as_bytes()).unwrap();
        write_cache(&reg, &c).unwrap();
        assert_eq!(
            *load_with_cache(&reg).unwrap().unwrap().models["m"],
            *c.models["m"]
        );
        // registry.yaml edited by hand: the cache no longer matches and is ignored.
        let edited = std::fs::read_to_string(&reg)
            .unwrap()
            .replace("accuracy: 0.71", "accuracy: 0.5");
        std::fs::write(&reg, edited).unwrap();
        let loaded = load_with_cache(&reg).unwrap().unwrap();
        assert_eq!(loaded.models["m"].versions[0].metrics["accuracy"], 0.5);
        // A corrupt cache is ignored too.
        std::fs::write(cache_path(&reg), b"{not json").unwrap();
        assert!(load_with_cache(&reg).unwrap().is_some());
    }

    #[test]
    fn loaded_versions_hold_no_spare_slots_and_stay_small() {
        // A catalog is held for the daemon's life: 100,000 versions of it must not keep
        // the parser's growth (a vector grown by doubling, once of whole versions).
        let dir = tempfile::tempdir().unwrap();
        let reg = dir.path().join("registry.yaml");
        let c = catalog_of("m", &(1..=9).collect::<Vec<u32>>());
        write_atomic(&reg, to_yaml(&c).unwrap().as_bytes()).unwrap();
        let from_yaml = load_with_cache(&reg).unwrap().unwrap();
        write_cache(&reg, &c).unwrap();
        let from_cache = load_with_cache(&reg).unwrap().unwrap();
        for loaded in [from_yaml, from_cache] {
            let versions = &loaded.models["m"].versions;
            assert_eq!((versions.len(), versions.capacity()), (9, 9));
        }
        // What a version costs inline (rare parts boxed, small maps as boxed slices):
        // 384 bytes before, at 100,000 versions the difference is ~17 MB.
        assert!(std::mem::size_of::<crate::registry::Version>() <= 208);
    }
}
