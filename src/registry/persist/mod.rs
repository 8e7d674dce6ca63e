//! registry.yaml: the catalog as people read and diff it, checked on loading, written atomically.
//!
//! Written through a temporary file, fsync, rename and fsync of the folder, so it is
//! never half-written. By file: `repr` (the serde shapes), `cache` (the start-up cache),
//! `journal` (registry.journal, the changes since registry.yaml was written); here,
//! loading with its checks (paths, highest numbers, aliases) and writing.
//!
//! Format 1:
//! ```yaml
//! format: 1
//! journal_seq: 17        # the last registry.journal record included
//! event_seq: 412         # the highest event seq given (events/); absent: none
//! models:
//!   resnet18:
//!     highest_version: 2
//!     versions:
//!       v1: {files: [...], source: ..., registered_at: ..., metrics: {...}}
//! sources:
//!   resnet18.pt: {fingerprint: ..., model: resnet18, version: 2}
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use super::{Catalog, Model, Version};
use crate::error::{Error, ParseError, Result};
use crate::fsutil::sync_dir;
use crate::names::{EntryName, ModelName};

mod cache;
pub mod journal;
mod repr;
mod stream;

pub use cache::{cache_path, load_with_cache, write_cache};
pub use journal::{Journal, journal_path, load_current};
use repr::{AliasName, FileRepr, repr_ref};

/// The registry.yaml format this build writes and reads.
pub const FORMAT: u32 = 1;

const HEADER: &str =
    "# modelreg registry: written by the modelreg daemon; do not edit while it runs.\n";

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
        journal_seq: repr.journal_seq,
        event_seq: repr.event_seq,
    })
}
/// Loads registry.yaml; `Ok(None)` when it does not exist. A file that does not parse is
/// an error naming path, line and column; the file is left untouched.
///
/// Read model by model first ([`stream`]), which keeps the peak memory near the
/// catalog's own size; a file that reader does not take (another shape, or any error)
/// is parsed whole, which also gives the error its line and column.
pub fn load(path: &Path) -> Result<Option<Catalog>> {
    let shown = path.display().to_string();
    match std::fs::File::open(path) {
        Ok(f) => {
            if let Some(c) = stream::read(&shown, std::io::BufReader::new(f)) {
                return Ok(Some(c));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read registry", path, e)),
    }
    match read_registry(path)? {
        Some(bytes) => parse_bytes(&shown, bytes).map(Some),
        None => Ok(None),
    }
}

/// The SHA-256 of the file at `path`, read in pieces (never whole in memory); `Ok(None)`
/// when it does not exist.
fn sha256_of_file(path: &Path) -> Result<Option<String>> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read registry", path, e)),
    };
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read registry", path, e)),
        }
    }
    Ok(Some(crate::fsutil::hex(&h.finalize())))
}

/// The bytes of registry.yaml; `Ok(None)` when it does not exist.
fn read_registry(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read registry", path, e)),
    }
}

/// Parses the bytes of registry.yaml (`shown` names it in errors).
fn parse_bytes(shown: &str, bytes: Vec<u8>) -> Result<Catalog> {
    let text = String::from_utf8(bytes)
        .map_err(|e| ParseError::at(shown, None, format!("not valid UTF-8 ({e})")))?;
    Ok(from_yaml(shown, &text)?)
}

/// Writes `text` to `path` atomically and durably: a temporary file beside it (keeping the
/// existing file's permissions, 0644 for a new one), fsync, rename over, fsync of the
/// folder.
pub fn write_atomic(path: &Path, text: &[u8]) -> Result<()> {
    write_atomic_as(path, text, 0o644)
}

/// [`write_atomic`], with `new_mode` for a file that does not exist yet.
pub fn write_atomic_as(path: &Path, text: &[u8], new_mode: u32) -> Result<()> {
    write_atomic_noting(path, text, new_mode, &mut |_| {})
}

/// [`write_atomic_as`], showing `note` the new file (durable, about to be renamed into
/// place), so that the writer knows which inode is its own (see the registrar's check
/// that registry.yaml was not replaced behind its back).
pub fn write_atomic_noting(
    path: &Path,
    text: &[u8],
    new_mode: u32,
    note: &mut dyn FnMut(&std::fs::File),
) -> Result<()> {
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
        Err(_) => new_mode,
    };
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("set permissions of", tmp.path(), e))?;
    tmp.write_all(text)
        .map_err(|e| Error::io("write", tmp.path(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io("fsync", tmp.path(), e))?;
    note(tmp.as_file());
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
pub(crate) mod tests {
    use super::*;
    use crate::registry::StoredFile;
    use crate::registry::tests::{model, v};

    /// A catalog of one model `name` with versions `numbers`, each one file.
    pub(crate) fn catalog_of(name: &str, numbers: &[u32]) -> Catalog {
        let versions = numbers
            .iter()
            .map(|&n| Version {
                files: vec![StoredFile {
                    path: format!("models/{name}/v{n}/m.pt"),
                    sha256: "ab".repeat(32),
                    size: 3,
                }],
                source: "pretrained_models/m.pt".into(),
                registered_at: "2026-11-26T02:27:08Z".into(),
                ..v(n, &[("accuracy", 0.71)])
            })
            .collect();
        let mut c = Catalog::default();
        c.models.insert(name.into(), Arc::new(model(versions)));
        c
    }

    #[test]
    fn round_trip_keeps_numeric_order() {
        let c = catalog_of("m", &[1, 2, 10]);
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
