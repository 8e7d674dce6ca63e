//! `modelreg add FILE|FOLDER`: register from anywhere. A file is handed over as an open
//! descriptor on the socket (`register`: no settle wait, and the daemon needs no
//! permission on its path); the answer is its version. A folder, or a file when the
//! daemon is older and does not know `register`, takes the inbox hand-over, the Python
//! client's: the artifact is copied into the inbox under a hidden temporary name; once
//! the copy is whole the metrics sidecar is placed (written hidden, renamed), then the
//! artifact is renamed into place, so the daemon never sees a half-written file and an
//! interrupted copy leaves no sidecar that would update the current version's metrics;
//! a `wait` request answers once that exact entry is registered (with `--wait`, within
//! its timeout), and what was placed is then removed: nothing is left in the inbox.
//!
//! Before copying, the inbox's file system must have room for the artifact; on a
//! terminal the size being copied is shown, and with `--wait` a progress bar of the
//! daemon's copy into the store.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::addcheck;
use super::place::{Placed, copy_tree, hidden, place};
use super::progress;

use modelreg::client::{Client, ClientError};
use modelreg::display::escape_for_terminal as esc;
use modelreg::names;
use modelreg::protocol::{ErrorBody, ErrorCode, VersionInfo, Waited};
use modelreg::status::human_bytes;
use serde::Serialize;
use serde_json::{Map, Value};

/// What `modelreg add` was asked to do.
pub(super) struct AddArgs<'a> {
    /// The file or folder to register.
    pub path: &'a Path,
    /// The model name, when given with --name.
    pub name: Option<&'a str>,
    /// `key=number` strings from --metric.
    pub metrics: &'a [String],
    /// `key=value` strings from --meta.
    pub meta: &'a [String],
    /// Tags from --tag, added to the metadata's `tags` list.
    pub tags: &'a [String],
    /// With --wait: how long to wait for the version.
    pub wait: Option<Duration>,
}

/// A refusal of the command's own input. It is shaped as the daemon's `bad_request` so
/// that it is printed and exits like every other error.
pub(super) fn refuse(message: String) -> ClientError {
    ClientError::Remote(ErrorBody {
        code: ErrorCode::BadRequest,
        message,
    })
}

/// Splits `key=value`, refusing a missing `=`, an empty key, or a key with control
/// characters: the daemon refuses such a name in the sidecar (src/sidecar/interpret.rs),
/// so it is refused here before anything is copied.
fn key_value<'s>(flag: &str, s: &'s str) -> Result<(&'s str, &'s str), ClientError> {
    match s.split_once('=') {
        Some((k, _)) if k.chars().any(char::is_control) => Err(refuse(format!(
            "{flag} {s:?}: the name {:?} has control characters; nothing was copied",
            k.trim()
        ))),
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim(), v)),
        _ => Err(refuse(format!(
            "{flag} {s:?}: expected key=value, e.g. {flag} accuracy=0.71"
        ))),
    }
}

/// The metrics from `--metric k=v`: finite numbers only, as `best` compares them.
fn parse_metrics(args: &[String]) -> Result<Map<String, Value>, ClientError> {
    let mut out = Map::new();
    for s in args {
        let (k, v) = key_value("--metric", s)?;
        let x: f64 = v.trim().parse().map_err(|_| {
            refuse(format!(
                "--metric {s:?}: {v:?} is not a number (metrics are numbers that `best` compares; use --meta {k}={v} for other values)"
            ))
        })?;
        if out.contains_key(k) {
            // The last one silently winning hides a typo or a script's double flag.
            return Err(refuse(format!("--metric {k:?} is given twice")));
        }
        if !x.is_finite() {
            return Err(refuse(format!(
                "--metric {s:?}: {v:?} is not a finite number"
            )));
        }
        out.insert(k.to_string(), Value::from(x));
    }
    Ok(out)
}

/// A `--meta` value: a YAML flow list or map (`[a, b]`, `{lr: 0.1}`) is that list or
/// map, as the same text reads in a sidecar, so that `--meta 'tags=[a, b]'` gives the
/// tags `--tag` searches; anything else (or a bracketed text that is not valid YAML) is
/// the text as given, as before.
fn meta_value(v: &str) -> Value {
    let t = v.trim();
    if (t.starts_with('[') || t.starts_with('{'))
        && let Ok(parsed) = serde_yaml::from_str::<Value>(t)
    {
        return parsed;
    }
    Value::from(v)
}

/// Adds `--tag`s to the metadata's `tags` list (after those of `--meta tags=[...]`,
/// each once).
fn add_tags(metadata: &mut Map<String, Value>, tags: &[String]) -> Result<(), ClientError> {
    if tags.is_empty() {
        return Ok(());
    }
    let list = metadata
        .entry("tags")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(list) = list else {
        return Err(refuse(
            "--meta tags=... is not a list: give the tags as --meta 'tags=[a, b]' or --tag (not both forms mixed with a text)".into(),
        ));
    };
    for t in tags {
        if t.trim().is_empty() {
            return Err(refuse("--tag \"\": a tag is not empty".into()));
        }
        let t = Value::from(t.as_str());
        if !list.contains(&t) {
            list.push(t);
        }
    }
    Ok(())
}

/// The name of the entry in the inbox: a folder is named after the model; a file keeps
/// its extension (the daemon names a file by its name without the final extension, a
/// compound archive extension such as `.tar.gz` counting as one), so that a dotted name
/// such as `Qwen2.5-0.5B` survives whole. Same rule as the Python client.
pub(super) fn entry_name(name: &str, src: &Path, is_dir: bool) -> String {
    if is_dir {
        return name.to_string();
    }
    let file = src
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lower = file.to_ascii_lowercase();
    let ext = names::ARCHIVE_EXTENSIONS
        .iter()
        .find(|e| lower.len() > e.len() && lower.ends_with(*e))
        .map(|e| file[file.len() - e.len()..].to_string())
        .or_else(|| match file.rsplit_once('.') {
            Some((stem, ext)) if !stem.is_empty() => Some(format!(".{ext}")),
            _ => None,
        });
    match ext {
        Some(ext) => format!("{name}{ext}"),
        // Without an extension a dotted name would lose its last part.
        None if name.contains('.') => format!("{name}.bin"),
        None => name.to_string(),
    }
}

/// The sidecar's name in the inbox: under the spelling already there
/// (`<name>.metrics.json` or `.metrics.yaml`), since both at once would block the model;
/// `.metrics.yaml` otherwise. The text written is JSON, valid as either. Same rule as the
/// Python client.
fn sidecar_name(inbox: &Path, name: &str) -> String {
    names::SIDECAR_SUFFIXES
        .iter()
        .map(|x| format!("{name}{x}"))
        .find(|f| inbox.join(f).symlink_metadata().is_ok())
        .unwrap_or_else(|| format!("{name}{}", names::SIDECAR_SUFFIX))
}

/// The bytes `src` holds: a file's length, or the sum over a folder's files (following
/// links, as the copy does).
fn source_size(src: &Path) -> std::io::Result<u64> {
    let meta = std::fs::metadata(src)?;
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    let mut total = 0u64;
    for e in std::fs::read_dir(src)? {
        total = total.saturating_add(source_size(&e?.path())?);
    }
    Ok(total)
}

/// Refuses a copy of `size` bytes into `inbox` when its file system has less free: the
/// copy would fail part-way (ENOSPC) after filling the disk others share. When the
/// daemon's store (`store`, from `status`) is on the same file system, the daemon's copy
/// into it needs as much again: both are counted, or the daemon would retry a copy that
/// cannot fit.
fn check_room(
    src: &Path,
    size: u64,
    inbox: &Path,
    store: Option<&Path>,
) -> Result<(), ClientError> {
    use std::os::unix::fs::MetadataExt;
    let free = modelreg::fsutil::free_bytes(inbox)
        .map_err(|e| refuse(format!("{}: {e}", inbox.display())))?;
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    let shared = store.filter(|s| dev(s).is_some() && dev(s) == dev(inbox));
    let need = if shared.is_some() {
        size.saturating_mul(2)
    } else {
        size
    };
    if need > free {
        let both = match shared {
            Some(s) => format!(
                " (the store, {}, is on the same file system: the daemon's copy into it needs as much again, {} in all)",
                s.display(),
                human_bytes(need)
            ),
            None => String::new(),
        };
        return Err(refuse(format!(
            "{} is {} ({size} bytes) but the inbox's file system ({}) has only {} ({free} bytes) free; nothing was copied{both}",
            src.display(),
            human_bytes(size),
            inbox.display(),
            human_bytes(free)
        )));
    }
    Ok(())
}

/// What `add` did: handed the artifact over, or (with `--wait`) registered it.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(super) enum Added {
    /// The `wait` answer.
    Registered {
        /// The version.
        #[serde(flatten)]
        waited: Box<Waited>,
        /// The bytes were those of an existing version and its metrics or metadata
        /// changed with this hand-over.
        metrics_updated: bool,
    },
}

/// Hands the artifact over and, with `--wait`, waits for its version.
pub(super) fn add(c: &mut Client, a: &AddArgs) -> Result<Added, ClientError> {
    let meta =
        std::fs::metadata(a.path).map_err(|e| refuse(format!("{}: {e}", a.path.display())))?;
    let is_dir = meta.is_dir();
    if !is_dir && !meta.is_file() {
        return Err(refuse(format!(
            "{}: not a regular file or folder",
            a.path.display()
        )));
    }
    let raw_name = match a.name {
        Some(n) => n.to_string(),
        None => {
            // Named by the path as given, as the inbox names an entry (a link `ln.pt`
            // to `real.pt` is model `ln`); resolved only for a path with no last name
            // of its own (`.`, `..`, `/`).
            let file = a
                .path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .or_else(|| {
                    let p = a.path.canonicalize().ok()?;
                    p.file_name().map(|f| f.to_string_lossy().into_owned())
                })
                .unwrap_or_default();
            if is_dir {
                file
            } else {
                names::file_stem(&file).to_string()
            }
        }
    };
    let name = names::model_name(&raw_name).map_err(|reason| {
        let e = modelreg::registry::RegistryError::InvalidName {
            name: raw_name.clone(),
            reason,
        };
        refuse(format!("{e} (give one with --name)"))
    })?;
    let metrics = parse_metrics(a.metrics)?;
    let mut metadata = Map::new();
    for s in a.meta {
        let (k, v) = key_value("--meta", s)?;
        if metadata.contains_key(k) {
            return Err(refuse(format!("--meta {k:?} is given twice")));
        }
        metadata.insert(k.to_string(), meta_value(v));
    }
    add_tags(&mut metadata, a.tags)?;
    let given: Vec<(String, String)> = a
        .metrics
        .iter()
        .filter_map(|s| key_value("--metric", s).ok())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // Before anything is sent or copied, so that nothing is left blocked in the inbox.
    addcheck::check_sidecar(&given, &metrics, &metadata)?;
    if is_dir {
        addcheck::check_folder_has_file(a.path)?;
    } else {
        addcheck::check_not_written(a.path)?;
    }

    if c.url().is_some() {
        return super::upload::upload(c, a, &name, &metrics, &metadata, is_dir);
    }
    // Metadata too large for one request line (a sidecar may hold more) goes through
    // the inbox.
    let fits = serde_json::to_vec(&(&metrics, &metadata))
        .is_ok_and(|v| v.len() + 1024 < modelreg::protocol::MAX_REQUEST_BYTES);
    let mut refused = None;
    if !is_dir && fits {
        match hand_over(c, a, &name, &metrics, &metadata) {
            // An older daemon, or one that lets this user register only by the inbox
            // (which then says, by the file system, whether this user may).
            Err(e) if e.code() == Some(ErrorCode::UnknownOp) => {}
            Err(e) if e.code() == Some(ErrorCode::PermissionDenied) => refused = Some(e),
            r => return r,
        }
    }
    let status = c.status()?;
    let inbox = PathBuf::from(&status.inbox);
    if !inbox.is_dir() {
        return Err(refuse(format!(
            "the daemon's inbox {} is not a folder here (is the daemon on another machine?)",
            inbox.display()
        )));
    }
    // Before anything is copied: the copy would only fail with a bare "Permission denied".
    addcheck::check_inbox_writable(a.path, &inbox, refused.as_ref())?;
    // Before anything is placed: a refused copy leaves no sidecar behind either.
    let size = source_size(a.path).map_err(|e| refuse(format!("{}: {e}", a.path.display())))?;
    let store = status.store.as_deref().map(Path::new);
    check_room(a.path, size, &inbox, store)?;
    let values = !metrics.is_empty() || !metadata.is_empty();
    let sidecar = sidecar_name(&inbox, &name);
    // Where the artifact is now: the daemon records it as the source (not the inbox
    // copy) and reads its checkout's commit from there when it can. Not when that
    // would replace a sidecar already waiting in the inbox with nothing but this: its
    // metrics are the user's.
    let waiting = inbox.join(&sidecar).symlink_metadata().is_ok();
    let original = std::path::absolute(a.path)
        .ok()
        .filter(|_| values || !waiting);
    let sidecar_text = (values || original.is_some()).then(|| {
        let mut doc = Map::new();
        if values {
            doc.insert("metrics".into(), Value::Object(metrics));
        }
        if !metadata.is_empty() {
            doc.insert("metadata".into(), Value::Object(metadata));
        }
        if let Some(p) = original.as_ref().and_then(|p| p.to_str()) {
            doc.insert("provenance".into(), serde_json::json!({ "source": p }));
        }
        // JSON is valid YAML: the Python client writes the same.
        serde_json::to_string_pretty(&Value::Object(doc)).unwrap_or_default() + "\n"
    });
    // The newest version before the hand-over: identical bytes with new metrics update
    // it rather than make a version, which the answer then says.
    let before = newest_if_metrics(c, &name, values);
    let place_sidecar = || match &sidecar_text {
        None => Ok(()),
        Some(text) => place(
            &hidden(&inbox, &sidecar),
            &inbox.join(&sidecar),
            |t| std::fs::write(t, text),
            || Ok(()),
        ),
    };
    let entry = entry_name(&name, a.path, is_dir);
    let dst = inbox.join(&entry);
    let terminal = progress::on_terminal();
    if terminal {
        eprintln!(
            "copying {} ({}) into {}",
            esc(&a.path.display().to_string()),
            human_bytes(size),
            esc(&inbox.display().to_string())
        );
    }
    place(
        &hidden(&inbox, &entry),
        &dst,
        |t| {
            if is_dir {
                copy_tree(a.path, t)
            } else {
                std::fs::copy(a.path, t).map(|_| ())
            }
        },
        place_sidecar,
    )?;
    // The copy is the inbox's until registered, then nobody's: removed once the
    // version is there (or the wait failed), so no full copy is left behind. Awaited
    // with or without --wait, as the descriptor hand-over's answer is.
    let placed = Placed::note(&dst, sidecar_text.as_ref().map(|_| inbox.join(&sidecar)));
    let timeout = a.wait.unwrap_or(Duration::from_secs(24 * 3600));
    // The daemon answers `wait` within its own timeout; leave it a margin to say so.
    c.set_read_timeout(timeout + Duration::from_secs(10))?;
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let socket = c.socket_path().map(Path::to_path_buf);
    let bar = terminal
        .then_some(socket)
        .flatten()
        .map(|s| progress::Bar::start(&s, &name));
    let waited = c.wait(&name, &entry, Some(timeout_ms));
    if let Some(bar) = bar {
        bar.finish();
    }
    let removed = placed.remove();
    if waited.is_err() && !removed.is_empty() {
        super::print_error(&format!(
            "removed what this command placed in the inbox ({}): nothing is left behind; `modelreg versions {name}` shows whether the daemon had registered it first",
            removed.join(", ")
        ));
    }
    waited.map(|w| registered(w, before))
}

/// The newest version of `name` when metrics or metadata are given: identical bytes with
/// new metrics update it rather than make a version, which the answer then says.
pub(super) fn newest_if_metrics(c: &mut Client, name: &str, given: bool) -> Option<VersionInfo> {
    given.then(|| c.get(name, None, None, None).ok()).flatten()
}

/// The answer of a registration; `before` is the newest version before it, when metrics
/// were given.
pub(super) fn registered(w: Waited, before: Option<VersionInfo>) -> Added {
    let metrics_updated = !w.created
        && before.is_some_and(|b| {
            b.number == w.version.number
                && (b.metrics != w.version.metrics
                    || b.metadata != w.version.metadata
                    || b.metrics_updated_at != w.version.metrics_updated_at)
        });
    Added::Registered {
        waited: Box::new(w),
        metrics_updated,
    }
}

/// Registers a file by handing its open descriptor over on the socket: the daemon copies
/// from it with no settle wait and answers the version, so the answer is the version
/// with or without `--wait` (`--wait`'s duration bounds how long it is awaited).
fn hand_over(
    c: &mut Client,
    a: &AddArgs,
    name: &str,
    metrics: &Map<String, Value>,
    metadata: &Map<String, Value>,
) -> Result<Added, ClientError> {
    let file =
        std::fs::File::open(a.path).map_err(|e| refuse(format!("{}: {e}", a.path.display())))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let filename = entry_name(name, a.path, false);
    // A copy of many GiB takes minutes: without --wait, the answer is awaited as long.
    let timeout = a.wait.unwrap_or(Duration::from_secs(24 * 3600));
    c.set_read_timeout(timeout + Duration::from_secs(10))?;
    let terminal = progress::on_terminal();
    if terminal {
        eprintln!(
            "copying {} ({}) into the store (handed over to the daemon)",
            esc(&a.path.display().to_string()),
            human_bytes(size)
        );
    }
    let before = newest_if_metrics(c, name, !metrics.is_empty() || !metadata.is_empty());
    let socket = c.socket_path().map(Path::to_path_buf);
    let bar = terminal
        .then_some(socket)
        .flatten()
        .map(|s| progress::Bar::start(&s, name));
    let given = |m: &Map<String, Value>| (!m.is_empty()).then(|| m.clone());
    let r = c.register(name, &filename, &file, given(metrics), given(metadata));
    if let Some(bar) = bar {
        bar.finish();
    }
    r.map(|w| registered(w, before))
}

/// Prints what `add` did: the version, or where it was handed over.
pub(super) fn print_added(a: &Added) {
    match a {
        Added::Registered {
            waited: w,
            metrics_updated,
        } => {
            let v = &w.version;
            let same = match (w.created, metrics_updated) {
                (true, _) => "",
                (false, true) => {
                    " (identical to the newest version: no new version; metrics updated)"
                }
                (false, false) => " (identical to the newest version: no new version)",
            };
            outln!(
                "{} {}  {}{same}",
                esc(&v.name),
                esc(&v.version),
                esc(&v.path)
            );
            // The newest version it equals is hidden from latest and best: said, or the
            // bytes would seem registered and served.
            if !w.created && v.state == "deprecated" {
                outln!(
                    "note: {} {} is deprecated (hidden from latest and best); identical bytes make no new version and no command undoes a deprecation: to serve these bytes, name the version with `modelreg alias set {} ALIAS {}`",
                    esc(&v.name),
                    esc(&v.version),
                    esc(&v.name),
                    esc(&v.version)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_keeps_the_extension_so_dotted_names_survive() {
        let p = Path::new;
        assert_eq!(
            entry_name("resnet18", p("/x/resnet18.pt"), false),
            "resnet18.pt"
        );
        assert_eq!(
            entry_name("Qwen2.5", p("/x/model.gguf"), false),
            "Qwen2.5.gguf"
        );
        assert_eq!(entry_name("bert", p("/x/b.tar.gz"), false), "bert.tar.gz");
        assert_eq!(entry_name("m", p("/x/model"), false), "m");
        assert_eq!(entry_name("m.v2", p("/x/model"), false), "m.v2.bin");
        assert_eq!(entry_name("Llama-3.1", p("/x/llama"), true), "Llama-3.1");
    }

    #[test]
    fn meta_reads_flow_lists_and_maps_as_yaml() {
        assert_eq!(meta_value("[a, b]"), serde_json::json!(["a", "b"]));
        assert_eq!(meta_value(" {lr: 0.1} "), serde_json::json!({"lr": 0.1}));
        assert_eq!(meta_value("imagenet"), serde_json::json!("imagenet"));
        assert_eq!(meta_value("[draft"), serde_json::json!("[draft"));
        let mut m = Map::new();
        m.insert("tags".into(), meta_value("[a, b]"));
        add_tags(&mut m, &["b".into(), "c".into()]).unwrap();
        assert_eq!(m["tags"], serde_json::json!(["a", "b", "c"]));
        m.insert("tags".into(), meta_value("a"));
        assert!(add_tags(&mut m, &["c".into()]).is_err());
    }

    #[test]
    fn metrics_must_be_finite_numbers() {
        let m = parse_metrics(&["acc=0.7".into(), "loss = 3".into()]).unwrap();
        assert_eq!(m["acc"], 0.7);
        for bad in ["acc=high", "acc", "=1", "acc=inf", "acc=NaN"] {
            let e = parse_metrics(&[bad.into()]).unwrap_err().to_string();
            assert!(e.contains("--metric"), "{bad}: {e}");
        }
    }
}
