//! Symbolic links and the store: refusing to go through one, and keeping latest/best/aliases.
//!
//! Nothing in the store is read, written or deleted through a link ([`check_no_link`]);
//! links where a folder belongs are problems for `status` ([`linked_folders`]); the
//! daemon's own links beside the versions are replaced atomically ([`refresh_links`]).

use std::fs;
use std::path::{Path, PathBuf};

use super::{TOMBSTONES, version_number};
use crate::error::{Error, Result};

/// Fails when `path`, beneath `store`, leads through a symbolic link: every component
/// after the store's own path is looked at without following links (a missing one ends
/// the check: absence is the caller's business). Nothing in the store is ever read,
/// written or deleted through a link: a model folder `models/<name>` that is a link to
/// /tmp/victim would otherwise have start-up delete /tmp/victim/v1. The daemon's own
/// links (latest, best, aliases) are never on such a path: they are only ever replaced.
pub fn check_no_link(store: &Path, path: &Path) -> Result<()> {
    let Ok(rel) = path.strip_prefix(store) else {
        return Ok(());
    };
    let mut p = store.to_path_buf();
    for c in rel.components() {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => return Err(Error::Other(linked(&p))),
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// Why a link in the store is refused.
pub(super) fn linked(p: &Path) -> String {
    let to = fs::read_link(p)
        .map(|t| format!(" (to {})", t.display()))
        .unwrap_or_default();
    format!(
        "{} is a symbolic link{to}; the store never follows links: nothing is read, written \
         or deleted through it. Put the real folder there, or remove the link",
        p.display()
    )
}

/// Links in the store where a folder belongs: a model folder, `v<N>`, `.removed` or
/// `.staging` that is a symbolic link (each a problem for `status`), as messages.
pub fn linked_folders(store: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let entries = |d: &Path| -> Vec<(PathBuf, String, fs::FileType)> {
        fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let t = e.file_type().ok()?;
                Some((e.path(), e.file_name().to_string_lossy().into_owned(), t))
            })
            .collect()
    };
    for (path, _, t) in entries(store) {
        if t.is_symlink() {
            out.push((path.clone(), linked(&path)));
        } else if t.is_dir() {
            for (p, name, t) in entries(&path) {
                if t.is_symlink() && (name == TOMBSTONES || version_number(&name).is_some()) {
                    out.push((p.clone(), linked(&p)));
                }
            }
        }
    }
    out.sort();
    out
}

/// Makes `<store>/<name>/<link>` a symlink to `v<N>` for each `(link, Some(N))` (the
/// model's folder made first when it has none: `v<N>` may not be here yet), and
/// removes links given as `(link, None)` and, with `prune`, any other symlink in the
/// model's folder (aliases since removed; this lists the folder, so a caller that knows
/// no link name went away passes `false`). Each link is replaced atomically: a new symlink under a
/// temporary name, renamed over the old one, so a reader never finds it missing. One
/// link that cannot be updated does not stop the others: returns every link path looked
/// at with its error, if any.
pub fn refresh_links(
    store: &Path,
    name: &str,
    links: &[(String, Option<u32>)],
    prune: bool,
) -> Vec<(PathBuf, Option<Error>)> {
    let dir = store.join(name);
    let mut out = Vec::new();
    if let Err(e) = check_no_link(store, &dir) {
        out.push((dir, Some(e)));
        return out;
    }
    // Team mode: a model registered on another host, none of whose versions is fetched
    // here yet, has no folder; its links are made all the same (pointing at `v<N>`
    // folders a `get` fetches), so its stable paths exist on every host.
    if !dir.is_dir() {
        if links.iter().all(|(_, t)| t.is_none()) || !store.is_dir() {
            return out;
        }
        if let Err(e) = fs::create_dir(&dir)
            .map_err(|e| Error::io("create the model folder", &dir, e))
            .and_then(|()| super::set_folder_mode(&dir))
        {
            out.push((dir, Some(e)));
            return out;
        }
    }
    for (link, target) in links {
        let path = dir.join(link);
        let r = (|| -> Result<()> {
            match target {
                Some(n) => {
                    let want = PathBuf::from(format!("v{n}"));
                    if fs::read_link(&path).ok().as_ref() == Some(&want) {
                        return Ok(());
                    }
                    let tmp = dir.join(format!(".{link}.{}.tmp", std::process::id()));
                    let _ = fs::remove_file(&tmp);
                    std::os::unix::fs::symlink(&want, &tmp)
                        .map_err(|e| Error::io("create symlink", &tmp, e))?;
                    fs::rename(&tmp, &path).map_err(|e| {
                        let _ = fs::remove_file(&tmp);
                        Error::io("replace symlink", &path, e)
                    })
                }
                None => {
                    if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
                        fs::remove_file(&path)
                            .map_err(|e| Error::io("remove symlink", &path, e))?;
                    }
                    Ok(())
                }
            }
        })();
        out.push((path, r.err()));
    }
    if !prune {
        return out;
    }
    let keep: std::collections::BTreeSet<&str> = links.iter().map(|(l, _)| l.as_str()).collect();
    match fs::read_dir(&dir) {
        Err(e) => out.push((dir.clone(), Some(Error::io("list", &dir, e)))),
        Ok(rd) => {
            for e in rd.flatten() {
                let fname = e.file_name();
                let fname = fname.to_string_lossy();
                if e.file_type().is_ok_and(|t| t.is_symlink()) && !keep.contains(fname.as_ref()) {
                    let r = fs::remove_file(e.path())
                        .map_err(|err| Error::io("remove symlink", e.path(), err));
                    out.push((e.path(), r.err()));
                }
            }
        }
    }
    out
}
