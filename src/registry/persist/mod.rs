//! `registry.yaml`: the catalog as people read and diff it, written atomically
//! (temporary file, fsync, rename, fsync of the folder) so it is never half-written.
//!
//! Format 1:
//! ```yaml
//! format: 1
//! models:
//!   resnet18:
//!     highest_version: 2
//!     versions:
//!       v1: {files: [...], source: ..., registered_at: ..., metrics: {...}}
//! sources:
//!   resnet18.pt: {fingerprint: ..., model: resnet18, version: 2}
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{AliasMove, Catalog, Model, SourceRecord, Version};
use crate::error::{Error, ParseError, Result};
use crate::fsutil::{sha256_hex, sync_dir};
use crate::names::{EntryName, ModelName};

/// The registry.yaml format this build writes and reads.
pub const FORMAT: u32 = 1;

const HEADER: &str =
    "# modelreg registry: written by the modelreg daemon; do not edit while it runs.\n";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRepr {
    format: u32,
    #[serde(default)]
    models: BTreeMap<ModelName, ModelRepr>,
    #[serde(default)]
    sources: BTreeMap<EntryName, SourceRecord>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelRepr {
    highest_version: u32,
    #[serde(default)]
    versions: VersionMap,
    #[serde(default)]
    aliases: BTreeMap<AliasName, u32>,
    #[serde(default)]
    alias_history: Vec<AliasMove>,
}

/// An alias as a key in registry.yaml or the cache, checked on reading
/// ([`super::check_alias`]).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct AliasName(String);

impl<'de> Deserialize<'de> for AliasName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        super::de_alias(d).map(AliasName)
    }
}

/// The same shape, borrowed, for writing without copying the catalog.
#[derive(Serialize)]
struct FileReprRef<'a> {
    format: u32,
    models: BTreeMap<&'a str, ModelReprRef<'a>>,
    sources: &'a BTreeMap<String, SourceRecord>,
}

#[derive(Serialize)]
struct ModelReprRef<'a> {
    highest_version: u32,
    #[serde(serialize_with = "versions_as_map")]
    versions: &'a [Version],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    aliases: &'a BTreeMap<String, u32>,
    #[serde(skip_serializing_if = "<[AliasMove]>::is_empty")]
    alias_history: &'a [AliasMove],
}

/// Versions as a map `v1: ..., v2: ...` in numeric order (a plain map would sort v10
/// before v2).
fn versions_as_map<S: Serializer>(vs: &&[Version], s: S) -> std::result::Result<S::Ok, S::Error> {
    let mut m = s.serialize_map(Some(vs.len()))?;
    for v in vs.iter() {
        m.serialize_entry(&format!("v{}", v.number), v)?;
    }
    m.end()
}

/// Versions read from the map form, sorted by number.
#[derive(Default)]
struct VersionMap(Vec<Version>);

impl<'de> Deserialize<'de> for VersionMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = VersionMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of versions v1, v2, ...")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut a: A,
            ) -> std::result::Result<VersionMap, A::Error> {
                let mut out: Vec<Version> = Vec::new();
                while let Some(key) = a.next_key::<String>()? {
                    let n = super::parse_version_number(&key)
                        .filter(|_| key.starts_with('v'))
                        .ok_or_else(|| {
                            de::Error::custom(format!(
                                "version key `{key}` is not of the form v<N>"
                            ))
                        })?;
                    let mut v: Version = a.next_value()?;
                    v.number = n;
                    v.files.shrink_to_fit();
                    out.push(v);
                }
                out.sort_by_key(|v| v.number);
                if let Some(w) = out.windows(2).find(|w| w[0].number == w[1].number) {
                    return Err(de::Error::custom(format!(
                        "version v{} is listed twice",
                        w[0].number
                    )));
                }
                Ok(VersionMap(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Serialises the catalog as registry.yaml text.
pub fn to_yaml(c: &Catalog) -> Result<String> {
    check_writable(c)?;
    let repr = repr_ref(c);
    let body = serde_yaml::to_string(&repr)
        .map_err(|e| Error::Other(format!("cannot serialise the registry: {e}")))?;
    Ok(format!("{HEADER}{body}"))
}

/// The catalog writer's guard: never write what cannot be read back. Metadata nested
/// deeper than a sidecar may nest would push registry.yaml towards the parsers'
/// recursion limits; such a catalog is refused (the change that made it rolls back).
fn check_writable(c: &Catalog) -> Result<()> {
    for (name, m) in &c.models {
        for v in &m.versions {
            let depth = super::metadata_depth(&v.metadata);
            if depth > super::MAX_METADATA_DEPTH {
                return Err(Error::Other(format!(
                    "{name} v{}: metadata nested {depth} levels deep (at most {} are written)",
                    v.number,
                    super::MAX_METADATA_DEPTH
                )));
            }
        }
    }
    Ok(())
}

fn repr_ref(c: &Catalog) -> FileReprRef<'_> {
    FileReprRef {
        format: FORMAT,
        models: c
            .models
            .iter()
            .map(|(name, m)| {
                (
                    name.as_str(),
                    ModelReprRef {
                        highest_version: m.highest,
                        versions: &m.versions,
                        aliases: &m.aliases,
                        alias_history: &m.alias_history,
                    },
                )
            })
            .collect(),
        sources: &c.sources,
    }
}

/// Parses registry.yaml text. `shown` names the file in errors.
pub fn from_yaml(shown: &str, text: &str) -> std::result::Result<Catalog, ParseError> {
    let repr: FileRepr =
        serde_yaml::from_str(text).map_err(|e| ParseError::from_yaml(shown, &e))?;
    into_catalog(shown, Some(text), repr)
}

/// The 1-based line of `text` where `needle` first appears, for errors found after
/// parsing.
fn line_of(text: Option<&str>, needle: &str) -> Option<usize> {
    let at = text?.find(needle)?;
    Some(text?[..at].matches('\n').count() + 1)
}

/// Checks the paths a version names, loaded from disk: each stored file must lie in the
/// version's own folder (`.../<model>/v<N>/<relative path>`, no `..` anywhere), and the
/// source and sidecar paths must not climb out with `..`. Returns the bad path and why.
fn check_version_paths(name: &str, v: &Version) -> std::result::Result<(), (String, String)> {
    let vdir = format!("v{}", v.number);
    for f in &v.files {
        let comps: Vec<&str> = f.path.split('/').collect();
        let at = comps
            .windows(2)
            .rposition(|w| w[0] == name && w[1] == vdir)
            .filter(|i| i + 2 < comps.len());
        let Some(at) = at else {
            return Err((
                f.path.clone(),
                format!(
                    "stored file of {name} v{} is not inside .../{name}/{vdir}/",
                    v.number
                ),
            ));
        };
        if let Err(r) = crate::names::check_relative_path(&comps[at + 2..].join("/")) {
            return Err((f.path.clone(), format!("stored file path {r}")));
        }
        check_plain_path(&f.path).map_err(|r| (f.path.clone(), r))?;
    }
    check_plain_path(&v.source).map_err(|r| (v.source.clone(), r))?;
    if let Some(s) = &v.sidecar {
        check_plain_path(&s.path).map_err(|r| (s.path.clone(), r))?;
    }
    Ok(())
}

/// A path (absolute, or relative to the root) without `.`, `..` or empty components.
fn check_plain_path(p: &str) -> std::result::Result<(), String> {
    let rel = p.strip_prefix('/').unwrap_or(p);
    for c in rel.split('/') {
        if c.is_empty() || c == "." || c == ".." || c.contains('\0') {
            return Err(format!("path {p:?} has a component {c:?}"));
        }
    }
    Ok(())
}

fn into_catalog(
    shown: &str,
    text: Option<&str>,
    repr: FileRepr,
) -> std::result::Result<Catalog, ParseError> {
    if repr.format != FORMAT {
        return Err(ParseError::at(
            shown,
            None,
            format!(
                "format {} is not supported by this modelreg (it reads format {FORMAT})",
                repr.format
            ),
        ));
    }
    let mut models = BTreeMap::new();
    for (ModelName(name), m) in repr.models {
        let versions = m.versions.0;
        for v in &versions {
            if let Err((path, reason)) = check_version_paths(&name, v) {
                return Err(ParseError::at(shown, line_of(text, &path), reason));
            }
        }
        let aliases: BTreeMap<String, u32> = m
            .aliases
            .into_iter()
            .map(|(AliasName(a), n)| (a, n))
            .collect();
        let top = versions.last().map_or(0, |v| v.number);
        if top > m.highest_version {
            return Err(ParseError::at(
                shown,
                None,
                format!(
                    "model {name}: highest_version {} is below v{top}",
                    m.highest_version
                ),
            ));
        }
        if let Some((alias, n)) = aliases.iter().find(|(_, n)| {
            !versions
                .iter()
                .any(|v| v.number == **n && v.removed.is_none())
        }) {
            return Err(ParseError::at(
                shown,
                None,
                format!("model {name}: alias {alias} points to v{n}, which is not stored"),
            ));
        }
        models.insert(
            name,
            Arc::new(Model {
                highest: m.highest_version,
                versions,
                aliases,
                alias_history: m.alias_history,
            }),
        );
    }
    Ok(Catalog {
        models,
        sources: repr
            .sources
            .into_iter()
            .map(|(EntryName(e), r)| (e, r))
            .collect(),
    })
}

/// The start-up cache beside registry.yaml: the same catalog as JSON (much faster to
/// parse than YAML), valid only for the registry.yaml whose SHA-256 it records. Written
/// at clean shutdown; registry.yaml stays the only source of truth.
pub fn cache_path(registry: &Path) -> std::path::PathBuf {
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
    let bytes = std::fs::read(registry).map_err(|e| Error::io("read registry", registry, e))?;
    let sha = sha256_hex(&bytes);
    drop(bytes);
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
    let bytes = match std::fs::read(registry) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read registry", registry, e)),
    };
    let shown = registry.display().to_string();
    let sha = sha256_hex(&bytes);
    if let Ok(cached) = std::fs::read(cache_path(registry)) {
        match serde_json::from_slice::<CacheIn>(&cached) {
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
    let text = String::from_utf8(bytes)
        .map_err(|e| ParseError::at(shown.clone(), None, format!("not valid UTF-8 ({e})")))?;
    Ok(Some(from_yaml(&shown, &text)?))
}

/// Loads registry.yaml; `Ok(None)` when it does not exist. A file that does not parse is
/// an error naming path, line and column; the file is left untouched.
pub fn load(path: &Path) -> Result<Option<Catalog>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read registry", path, e)),
    };
    Ok(Some(from_yaml(&path.display().to_string(), &text)?))
}

/// Writes `text` to `path` atomically and durably: a temporary file beside it (keeping the
/// existing file's permissions), fsync, rename over, fsync of the folder.
pub fn write_atomic(path: &Path, text: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{file_name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| Error::io("create temporary file in", dir, e))?;
    let mode = match std::fs::metadata(path) {
        Ok(m) => m.permissions().mode() & 0o7777,
        Err(_) => 0o644,
    };
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("set permissions of", tmp.path(), e))?;
    tmp.write_all(text)
        .map_err(|e| Error::io("write", tmp.path(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io("fsync", tmp.path(), e))?;
    tmp.persist(path)
        .map_err(|e| Error::io("rename into place", path, e.error))?;
    sync_dir(dir)
}

/// Removes temporaries a crash left beside `path` (`.registry.yaml.*.tmp`).
pub fn remove_stale_temporaries(path: &Path) -> Result<usize> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let prefix = format!(
        ".{}.",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let mut n = 0;
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    for entry in rd.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".tmp") {
            std::fs::remove_file(entry.path()).map_err(|e| Error::io("remove", entry.path(), e))?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Kind, StoredFile};

    fn version(n: u32) -> Version {
        Version {
            number: n,
            kind: Kind::File,
            files: vec![StoredFile {
                path: format!("models/m/v{n}/m.pt"),
                sha256: "ab".repeat(32),
                size: 3,
            }],
            source: "pretrained_models/m.pt".into(),
            registered_at: "2026-11-26T02:27:08Z".into(),
            metrics: [("accuracy".to_string(), 0.71)].into_iter().collect(),
            metadata: Default::default(),
            sidecar: None,
            metrics_history: vec![],
            deprecated: None,
            removed: None,
        }
    }

    #[test]
    fn round_trip_keeps_numeric_order() {
        let mut m = Model::default();
        for n in [1, 2, 10] {
            m.push(version(n));
        }
        let mut c = Catalog::default();
        c.models.insert("m".into(), Arc::new(m));
        let text = to_yaml(&c).unwrap();
        let v2 = text.find("v2:").unwrap();
        let v10 = text.find("v10:").unwrap();
        assert!(v2 < v10, "{text}");
        let back = from_yaml("r", &text).unwrap();
        assert_eq!(back.models["m"].versions.len(), 3);
        assert_eq!(back.models["m"].highest, 10);
        assert_eq!(back.models["m"].versions[2].number, 10);
        assert_eq!(*back.models["m"], *c.models["m"]);
    }

    #[test]
    fn cache_used_only_when_it_matches() {
        let dir = tempfile::tempdir().unwrap();
        let reg = dir.path().join("registry.yaml");
        let mut m = Model::default();
        m.push(version(1));
        let mut c = Catalog::default();
        c.models.insert("m".into(), Arc::new(m));
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
    fn syntax_error_has_line_and_column() {
        let e = from_yaml("registry.yaml", "format: 1\nmodels:\n  m: [\n").unwrap_err();
        assert!(e.line.is_some() && e.column.is_some(), "{e}");
    }

    #[test]
    fn bad_version_key_refused() {
        let e = from_yaml(
            "r",
            "format: 1\nmodels:\n  m:\n    highest_version: 1\n    versions:\n      one: {files: [], source: x, registered_at: y}\n",
        )
        .unwrap_err();
        assert!(e.reason.contains("v<N>"), "{e}");
        assert_eq!(e.line, Some(6), "{e}");
    }

    #[test]
    fn highest_below_listed_refused() {
        let e = from_yaml(
            "r",
            "format: 1\nmodels:\n  m:\n    highest_version: 1\n    versions:\n      v2: {files: [], source: x, registered_at: y}\n",
        )
        .unwrap_err();
        assert!(e.reason.contains("highest_version"), "{e}");
    }

    #[test]
    fn unknown_format_refused() {
        let e = from_yaml("r", "format: 9\n").unwrap_err();
        assert!(e.reason.contains("format 9"), "{e}");
    }

    #[test]
    fn atomic_write_keeps_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("registry.yaml");
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&p, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
    }
}
