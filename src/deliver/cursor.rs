//! The delivery cursors: `deliveries.yaml` beside registry.yaml, the last seq each hook
//! and webhook got, written atomically and batched.
//!
//! A cursor is moved in memory after every event (delivered, skipped, or not matching);
//! a writer task saves the map at most every [`FLUSH`], so a burst of events costs one
//! fsync, not one per event. A crash loses at most the moves of the last [`FLUSH`]:
//! those events are delivered again (at least once), never lost.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::error::{Error, Result};

/// The file's name, beside registry.yaml.
pub const CURSORS_FILE: &str = "deliveries.yaml";
/// How long moves are gathered before they are written.
const FLUSH: Duration = Duration::from_millis(200);

/// The cursors, in memory and on disk.
#[derive(Debug)]
pub struct Cursors {
    path: PathBuf,
    state: Mutex<(BTreeMap<String, u64>, bool)>,
    dirty: tokio::sync::Notify,
}

impl Cursors {
    /// Reads `path` (none yet: no cursor). A file that does not parse stops the start:
    /// it is never overwritten, and no endpoint restarts from a guess.
    pub fn load(path: &Path) -> Result<Cursors> {
        let map = match std::fs::read_to_string(path) {
            Ok(text) if text.trim().is_empty() => BTreeMap::new(),
            Ok(text) => {
                let v: Option<BTreeMap<String, u64>> =
                    serde_yaml::from_str(&text).map_err(|e| {
                        crate::error::ParseError::from_yaml(path.display().to_string(), &e)
                    })?;
                v.unwrap_or_default()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(Error::io("read delivery cursors", path, e)),
        };
        Ok(Cursors {
            path: path.to_path_buf(),
            state: Mutex::new((map, false)),
            dirty: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (BTreeMap<String, u64>, bool)> {
        // Held for a map insert or a clone: a poisoned lock is consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last seq `name` got, if it has a cursor.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.lock().0.get(name).copied()
    }

    /// Moves `name`'s cursor to `seq` (saved within [`FLUSH`]).
    pub fn set(&self, name: &str, seq: u64) {
        let mut g = self.lock();
        if g.0.get(name) != Some(&seq) {
            g.0.insert(name.to_string(), seq);
            g.1 = true;
            drop(g);
            self.dirty.notify_one();
        }
    }

    /// Saves the cursors now if they moved since the last save.
    pub fn save(&self) -> std::io::Result<()> {
        let map = {
            let mut g = self.lock();
            if !g.1 {
                return Ok(());
            }
            g.1 = false;
            g.0.clone()
        };
        let r = write_atomically(&self.path, &map);
        if r.is_err() {
            // Tried again at the next move or at shutdown.
            self.lock().1 = true;
        }
        r
    }

    /// Saves the moves, gathered over [`FLUSH`], until `stop`; then once more.
    pub async fn run(self: std::sync::Arc<Self>, stop: crate::shutdown::Shutdown) {
        loop {
            tokio::select! {
                _ = self.dirty.notified() => {}
                _ = stop.wait() => break,
            }
            tokio::select! {
                _ = tokio::time::sleep(FLUSH) => {}
                _ = stop.wait() => break,
            }
            self.save_logged().await;
        }
    }

    /// Saves off the async threads; a failure is logged (the moves stay pending).
    pub async fn save_logged(self: &std::sync::Arc<Self>) {
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.save()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(path = %self.path.display(), "saving the delivery cursors: {e}")
            }
            Err(e) => tracing::error!("saving the delivery cursors: {e}"),
        }
    }
}

/// Writes `map` to a temporary file beside `path` (0600), fsyncs it, renames it over
/// `path` and fsyncs the folder: a crash leaves the old file or the new, never half.
fn write_atomically(path: &Path, map: &BTreeMap<String, u64>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut text = String::from(
        "# The last event seq each hook and webhook got (docs/events.md). Written by modelreg.\n",
    );
    for (name, seq) in map {
        // Quoted: a name such as `123` or `true` would not read back as a string.
        text.push_str(&format!("\"{name}\": {seq}\n"));
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(".deliveries.yaml.")
        .tempfile_in(dir)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_data()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_survive_a_save_and_a_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(CURSORS_FILE);
        let c = Cursors::load(&p).unwrap();
        assert_eq!(c.get("a"), None);
        c.set("a", 7);
        c.set("b.c", 9);
        c.set("123", 1);
        c.set("true", 2);
        c.save().unwrap();
        let c = Cursors::load(&p).unwrap();
        assert_eq!((c.get("a"), c.get("b.c")), (Some(7), Some(9)));
        assert_eq!((c.get("123"), c.get("true")), (Some(1), Some(2)));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&p, "a: [\n").unwrap();
        assert!(Cursors::load(&p).is_err());
    }
}
