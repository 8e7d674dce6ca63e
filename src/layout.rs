//! The root, the inbox, the store and registry.yaml as they were when the daemon started.
//!
//! Each folder is pinned at start by (device, inode). Whoever can write the root can
//! `mv pretrained_models x; ln -s /outside pretrained_models`, or delete `models/` or
//! registry.yaml, while the daemon runs; paths then lead somewhere else. So before the
//! inbox is listed or anything is copied out of it, and whenever `status` is asked, the
//! folders are compared with their pins: a replaced or missing inbox registers nothing
//! (the original coming back resumes), a missing store takes no new versions, a missing
//! registry.yaml is written again from memory. Each finding is a problem in `status` and
//! an ERROR in the log when it appears, and is cleared when it is fixed.
//!
//! At start, an inbox that is a symbolic link leading out of the root is not followed, and
//! an inbox that resolves to the root or the store, inside the store, or around the root,
//! the store or registry.yaml (compared by device and inode along the resolved path) is
//! refused: the daemon serves what it has, registers nothing, and says why.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::config::Config;
use crate::status::StatusBoard;

/// A folder's identity: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
}

impl Pin {
    fn of(m: &fs::Metadata) -> Pin {
        Pin {
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

/// What [`Layout::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// The inbox is the one pinned at start: it may be listed and copied from.
    pub inbox_ok: bool,
    /// The store is the one pinned at start: new versions may go into it.
    pub store_ok: bool,
    /// registry.yaml or its journal is missing: registry.yaml must be written again
    /// from memory (with a fresh journal).
    pub registry_missing: bool,
}

/// The pinned folders; see the module docs.
#[derive(Debug)]
pub struct Layout {
    root: PathBuf,
    root_pin: Option<Pin>,
    inbox: PathBuf,
    /// The inbox's pin, or why it was refused at start.
    inbox_pin: Result<Pin, String>,
    store: PathBuf,
    store_pin: Option<Pin>,
    registry: PathBuf,
    /// Findings shown in `status` now, by path.
    shown: Mutex<BTreeMap<String, String>>,
}

impl Layout {
    /// Pins the folders of `config` as they are now (call after creating them).
    pub fn pin(config: &Config) -> Layout {
        let pin = |p: &Path| fs::metadata(p).ok().map(|m| Pin::of(&m));
        Layout {
            root: config.root.clone(),
            root_pin: pin(&config.root),
            inbox: config.inbox.clone(),
            inbox_pin: pin_inbox(config),
            store: config.store.clone(),
            store_pin: pin(&config.store),
            registry: config.registry.clone(),
            shown: Mutex::new(BTreeMap::new()),
        }
    }

    /// Why the inbox was refused at start, if it was.
    pub fn refused_at_start(&self) -> Option<&str> {
        self.inbox_pin.as_ref().err().map(String::as_str)
    }

    /// Whether the inbox is still the folder pinned at start; the reason when not.
    pub fn inbox(&self) -> Result<(), String> {
        let pin = self.inbox_pin.as_ref().map_err(Clone::clone)?;
        let shown = self.inbox.display();
        match fs::metadata(&self.inbox) {
            Ok(m) if Pin::of(&m) == *pin => Ok(()),
            Ok(_) => Err(format!(
                "the inbox {shown} was replaced while running ({}); nothing is registered \
                 from it. Put the original folder back, or restart to adopt the new one",
                describe(&self.inbox)
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!(
                "the inbox {shown} is gone (deleted or moved while running{}); nothing is \
                 registered until it is back",
                if fs::symlink_metadata(&self.inbox).is_ok() {
                    format!(", now {}", describe(&self.inbox))
                } else {
                    String::new()
                }
            )),
            Err(e) => Err(format!("the inbox {shown} cannot be looked at: {e}")),
        }
    }

    /// Whether the store is still the folder pinned at start; the reason when not.
    pub fn store(&self) -> Result<(), String> {
        let shown = self.store.display();
        match (fs::metadata(&self.store), self.store_pin) {
            (Ok(m), Some(pin)) if Pin::of(&m) == pin => Ok(()),
            (Ok(_), _) => Err(format!(
                "the store {shown} was replaced while running: the files of the versions \
                 registered before are not in it; no new version is stored until the \
                 original is back (or restart, then `modelreg verify` lists what is lost)"
            )),
            (Err(e), _) if e.kind() == io::ErrorKind::NotFound => Err(format!(
                "the store {shown} is gone (deleted while running?): every stored file is \
                 missing, `get` refuses them, and no new version is stored until it is \
                 restored (or restart, then `modelreg verify` lists what is lost)"
            )),
            (Err(e), _) => Err(format!("the store {shown} cannot be looked at: {e}")),
        }
    }

    /// Whether the root is still the folder pinned at start; the reason when not.
    pub fn root(&self) -> Result<(), String> {
        let shown = self.root.display();
        match (fs::metadata(&self.root), self.root_pin) {
            (Ok(m), Some(pin)) if Pin::of(&m) == pin => Ok(()),
            (Ok(_), _) => Err(format!(
                "the root {shown} was replaced or moved while running ({})",
                describe(&self.root)
            )),
            (Err(e), _) => Err(format!("the root {shown} is gone: {e}")),
        }
    }

    /// Whether registry.yaml exists; the reason when not.
    pub fn registry(&self) -> Result<(), String> {
        match fs::symlink_metadata(&self.registry) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!(
                "{} was deleted while running; it is written again from the catalog in memory",
                self.registry.display()
            )),
            Err(e) => Err(format!(
                "{} cannot be looked at: {e}",
                self.registry.display()
            )),
        }
    }

    /// Whether the journal beside registry.yaml exists; the reason when not.
    pub fn journal(&self) -> Result<(), String> {
        let journal = crate::registry::persist::journal_path(&self.registry);
        match fs::symlink_metadata(&journal) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!(
                "{} was deleted while running; registry.yaml is written again from the \
                 catalog in memory and a fresh journal started",
                journal.display()
            )),
            _ => Ok(()),
        }
    }

    /// Opens the inbox folder and checks that the handle is the pinned folder, so that
    /// files opened beneath it come from the inbox the daemon started with.
    pub fn open_inbox(&self) -> Result<fs::File, String> {
        let pin = self.inbox_pin.as_ref().map_err(Clone::clone)?;
        let dir = crate::inbox::open_dir(&self.inbox)
            .map_err(|e| format!("cannot open the inbox {}: {e}", self.inbox.display()))?;
        let m = dir
            .metadata()
            .map_err(|e| format!("cannot stat the inbox {}: {e}", self.inbox.display()))?;
        if Pin::of(&m) != *pin {
            return Err(self.inbox().err().unwrap_or_else(|| {
                format!(
                    "the inbox {} was replaced while running",
                    self.inbox.display()
                )
            }));
        }
        Ok(dir)
    }

    /// Checks every folder: a finding becomes a problem in `status` and an ERROR in the
    /// log when it appears, and is cleared (with an INFO line) when it is gone.
    pub fn check(&self, board: &StatusBoard) -> Health {
        let inbox = self.inbox();
        let store = self.store();
        let registry = self.registry();
        let journal = self.journal();
        let health = Health {
            inbox_ok: inbox.is_ok(),
            store_ok: store.is_ok(),
            registry_missing: registry.is_err() || journal.is_err(),
        };
        let journal_path = crate::registry::persist::journal_path(&self.registry);
        let findings = [
            (&self.root, self.root()),
            (&self.inbox, inbox),
            (&self.store, store),
            (&self.registry, registry),
            (&journal_path, journal),
        ];
        let mut shown = self.shown.lock().unwrap_or_else(|p| p.into_inner());
        for (path, result) in findings {
            let key = path.display().to_string();
            match result {
                Err(message) => {
                    if shown.get(&key) != Some(&message) {
                        board.set_serious_problem(&key, &message);
                        shown.insert(key, message);
                    }
                }
                Ok(()) => {
                    if shown.remove(&key).is_some() {
                        board.clear_problem(&key);
                    }
                }
            }
        }
        health
    }
}

/// Pins the inbox at start; an inbox that is a symbolic link leading out of the root is
/// refused (an uploader who can write the root could have put it there).
fn pin_inbox(config: &Config) -> Result<Pin, String> {
    let (root, inbox) = (config.root.as_path(), config.inbox.as_path());
    let shown = inbox.display();
    let l = fs::symlink_metadata(inbox)
        .map_err(|e| format!("the inbox {shown} cannot be looked at: {e}"))?;
    if l.file_type().is_symlink() {
        let target = fs::canonicalize(inbox)
            .map_err(|e| format!("the inbox {shown} is a broken symbolic link: {e}"))?;
        let root_real = fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        if !target.starts_with(&root_real) {
            return Err(format!(
                "the inbox {shown} is a symbolic link to {}, outside the root {}; it is not \
                 followed and nothing is registered. Make it a real folder (or set `inbox:` \
                 to the real path in the settings) and restart",
                target.display(),
                root.display()
            ));
        }
    }
    let m =
        fs::metadata(inbox).map_err(|e| format!("the inbox {shown} cannot be looked at: {e}"))?;
    if !m.is_dir() {
        return Err(format!("the inbox {shown} is not a folder"));
    }
    let pin = Pin::of(&m);
    overlap(config, pin)?;
    Ok(pin)
}

/// Refuses an inbox that is, holds, or lies inside the root, the store or the folder of
/// registry.yaml, judged by the folders' identities (device, inode) along the resolved
/// paths: a configured path can look separate while a link (`ln -s . pretrained_models`)
/// makes the daemon register its own catalog and store, again and again.
fn overlap(config: &Config, inbox: Pin) -> Result<(), String> {
    // The pins of a folder and of every folder above it, after resolving links.
    let chain = |p: &Path| -> Vec<(Pin, PathBuf)> {
        let Ok(real) = fs::canonicalize(p) else {
            return Vec::new();
        };
        real.ancestors()
            .filter_map(|a| fs::metadata(a).ok().map(|m| (Pin::of(&m), a.to_path_buf())))
            .collect()
    };
    let inbox_chain = chain(&config.inbox);
    let resolved = inbox_chain
        .first()
        .map_or_else(|| config.inbox.clone(), |(_, p)| p.clone());
    let refuse = |what: String| {
        Err(format!(
            "the inbox {} (resolved: {}) {what}: the daemon would register its own files. \
             Nothing is registered from it; make the inbox a folder of its own, outside the \
             store and not holding the root, and restart",
            config.inbox.display(),
            resolved.display()
        ))
    };
    let pin_of = |p: &Path| fs::metadata(p).ok().map(|m| Pin::of(&m));
    if pin_of(&config.root) == Some(inbox) {
        return refuse(format!("is the root {}", config.root.display()));
    }
    if let Some(store) = pin_of(&config.store)
        && inbox_chain.iter().any(|(p, _)| *p == store)
    {
        return refuse(format!(
            "is the store {} or inside it",
            config.store.display()
        ));
    }
    for (what, path) in [
        ("root", &config.root),
        ("store", &config.store),
        ("registry.yaml", &config.registry),
    ] {
        if chain(path).iter().any(|(p, _)| *p == inbox) {
            return refuse(format!("holds the {what} {}", path.display()));
        }
    }
    Ok(())
}

/// What is at `path` now, in words.
fn describe(path: &Path) -> String {
    match fs::symlink_metadata(path) {
        Ok(l) if l.file_type().is_symlink() => match fs::read_link(path) {
            Ok(t) => format!("now a symbolic link to {}", t.display()),
            Err(_) => "now a symbolic link".into(),
        },
        Ok(l) if l.is_dir() => "now another folder".into(),
        Ok(_) => "now not a folder".into(),
        Err(_) => "now missing".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(root: &Path) -> Config {
        Config::load(root, None).unwrap()
    }

    #[test]
    fn replaced_inbox_and_missing_store_are_found() {
        let t = tempfile::tempdir().unwrap();
        let c = config(t.path());
        fs::create_dir_all(&c.inbox).unwrap();
        fs::create_dir_all(&c.store).unwrap();
        fs::write(&c.registry, "").unwrap();
        let journal = crate::registry::persist::journal_path(&c.registry);
        fs::write(&journal, "").unwrap();
        let l = Layout::pin(&c);
        let board = StatusBoard::default();
        let h = l.check(&board);
        assert!(h.inbox_ok && h.store_ok && !h.registry_missing);
        // The journal alone gone: registry.yaml is written again too.
        fs::remove_file(&journal).unwrap();
        assert!(l.check(&board).registry_missing);
        fs::write(&journal, "").unwrap();
        assert!(!l.check(&board).registry_missing);
        let outside = tempfile::tempdir().unwrap();
        fs::rename(&c.inbox, t.path().join("x")).unwrap();
        std::os::unix::fs::symlink(outside.path(), &c.inbox).unwrap();
        fs::remove_dir(&c.store).unwrap();
        fs::remove_file(&c.registry).unwrap();
        let h = l.check(&board);
        assert!(!h.inbox_ok && !h.store_ok && h.registry_missing);
        assert!(l.open_inbox().is_err());
        let (problems, ..) = board.snapshot();
        assert_eq!(problems.len(), 3, "{problems:?}");
        // The original back: resolved.
        fs::remove_file(&c.inbox).unwrap();
        fs::rename(t.path().join("x"), &c.inbox).unwrap();
        assert!(l.check(&board).inbox_ok);
        assert!(l.open_inbox().is_ok());
    }

    #[test]
    fn inbox_linking_out_of_the_root_is_refused_at_start() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let c = config(t.path());
        std::os::unix::fs::symlink(outside.path(), &c.inbox).unwrap();
        let l = Layout::pin(&c);
        let why = l.refused_at_start().expect("refused");
        assert!(why.contains("outside the root"), "{why}");
        // A link that stays inside the root is followed.
        fs::remove_file(&c.inbox).unwrap();
        fs::create_dir(t.path().join("real")).unwrap();
        std::os::unix::fs::symlink(t.path().join("real"), &c.inbox).unwrap();
        assert!(Layout::pin(&c).refused_at_start().is_none());
    }

    #[test]
    fn inbox_resolving_to_the_root_or_the_store_is_refused_at_start() {
        let t = tempfile::tempdir().unwrap();
        let c = config(t.path());
        fs::create_dir_all(c.store.join("m")).unwrap();
        fs::write(&c.registry, "").unwrap();
        for (target, why) in [
            (t.path().to_path_buf(), "is the root"),
            (PathBuf::from("."), "is the root"),
            (c.store.clone(), "is the store"),
            (c.store.join("m"), "is the store"),
            (t.path().parent().unwrap().to_path_buf(), "holds the root"),
        ] {
            let _ = fs::remove_file(&c.inbox);
            std::os::unix::fs::symlink(&target, &c.inbox).unwrap();
            let l = Layout::pin(&c);
            let got = l.refused_at_start().map(str::to_string);
            // A link to the root's parent leads out of the root: refused either way.
            let got = got.unwrap_or_else(|| panic!("{target:?} not refused"));
            assert!(
                got.contains(why) || got.contains("outside the root"),
                "{target:?}: {got}"
            );
        }
    }
}
