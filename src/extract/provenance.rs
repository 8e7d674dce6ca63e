//! Provenance recorded at registration: who dropped it, on which host, from where and when, and the commit and run it came from.
//!
//! The user is the source file's owner (resolved to a name), the host is this
//! machine's name, the mtime the source's. A commit and run id come from the sidecar's
//! metadata when it names them ([`COMMIT_KEYS`], [`RUN_KEYS`]), else the commit from git
//! metadata read as files (`.git/HEAD`, the ref it names, `packed-refs`), every file
//! bounded and no git process run.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

/// Sidecar metadata keys that name the commit, in the order they are trusted.
pub const COMMIT_KEYS: [&str; 5] = [
    "git_commit",
    "commit",
    "git_sha",
    "commit_sha",
    "git_revision",
];
/// Sidecar metadata keys that name the run, in the order they are trusted.
pub const RUN_KEYS: [&str; 4] = ["run_id", "wandb_run_id", "mlflow_run_id", "run"];

/// The largest git file read (`HEAD`, a ref, a `.git` file); `packed-refs` may be larger.
const MAX_GIT_FILE: u64 = 4096;
const MAX_PACKED_REFS: u64 = 4 << 20;
/// Folders walked up looking for `.git`.
const MAX_UP: usize = 32;

/// Where a version came from, as the copy saw it.
#[derive(Debug, Default, Clone)]
pub struct Origin {
    /// `inbox`, `register` (a descriptor handed over) or `upload` (HTTP).
    pub via: &'static str,
    /// The source's path (absolute when known).
    pub source: Option<String>,
    /// The source file's owner.
    pub uid: Option<u32>,
    /// The source's modification time (the newest of a folder's files), ns since 1970.
    pub mtime_ns: Option<i128>,
    /// Where to look for git metadata: this folder's `.git`, or, with `walk_up`, the
    /// nearest one above it as well.
    pub git: Option<PathBuf>,
    /// See `git`.
    pub walk_up: bool,
}

/// The provenance of a version from `origin` and the sidecar's metadata `sidecar`.
pub fn provenance(origin: &Origin, sidecar: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("via".into(), json!(origin.via));
    if let Some(s) = &origin.source {
        out.insert("source".into(), json!(s));
    }
    if let Some(uid) = origin.uid {
        out.insert("user".into(), json!(crate::users::user_name(uid)));
        out.insert("uid".into(), json!(uid));
    }
    if let Some(h) = hostname() {
        out.insert("host".into(), json!(h));
    }
    if let Some(ns) = origin.mtime_ns.filter(|n| *n >= 0) {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns as u64);
        out.insert(
            "source_mtime".into(),
            json!(humantime::format_rfc3339_seconds(t).to_string()),
        );
    }
    let named = |keys: &[&str]| {
        keys.iter().find_map(|k| match sidecar.get(*k) {
            Some(Value::String(s)) if !s.is_empty() => Some(super::reader::clip(s, 256)),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        })
    };
    if let Some(c) = named(&COMMIT_KEYS) {
        out.insert("commit".into(), json!(c));
        out.insert("commit_from".into(), json!("sidecar"));
    } else if let Some(dir) = &origin.git
        && let Some(g) = git_head(dir, origin.walk_up, origin.uid)
    {
        out.insert("commit".into(), json!(g.commit));
        out.insert("commit_from".into(), json!("git"));
        if let Some(b) = g.branch {
            out.insert("branch".into(), json!(b));
        }
        out.insert("repository".into(), json!(g.worktree.display().to_string()));
    }
    if let Some(r) = named(&RUN_KEYS) {
        out.insert("run_id".into(), json!(r));
    }
    out
}

/// This machine's name, once.
fn hostname() -> Option<&'static str> {
    static NAME: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
        // when the name fits (the last byte stays 0 otherwise).
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
        (rc == 0).then(|| {
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            String::from_utf8_lossy(&buf[..end]).into_owned()
        })
    })
    .as_deref()
}

/// A checkout's HEAD.
#[derive(Debug, PartialEq)]
pub struct GitHead {
    /// The commit's hash.
    pub commit: String,
    /// The branch HEAD names, if not detached.
    pub branch: Option<String>,
    /// The folder holding `.git`.
    pub worktree: PathBuf,
}

/// Reads at most `cap` bytes of `path` (no link followed at the last step): `None`
/// when it is missing, larger, or not a file.
fn small_file(path: &Path, cap: u64) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut s = String::new();
    f.take(cap + 1).read_to_string(&mut s).ok()?;
    (s.len() as u64 <= cap).then_some(s)
}

fn is_hash(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The HEAD of the git checkout at `dir` (or, with `walk_up`, the nearest above it),
/// read as files. With `owner`, a `.git` owned by someone else is not read: the daemon
/// never reports another user's repository as the source of a file.
pub fn git_head(dir: &Path, walk_up: bool, owner: Option<u32>) -> Option<GitHead> {
    use std::os::unix::fs::MetadataExt;
    let mut at = Some(dir);
    for _ in 0..MAX_UP {
        let d = at?;
        let dot = d.join(".git");
        if let Ok(m) = std::fs::symlink_metadata(&dot) {
            if owner.is_some_and(|o| o != m.uid() && m.uid() != 0) {
                return None;
            }
            let gitdir = if m.is_dir() {
                dot
            } else {
                // A worktree or submodule: `gitdir: <path>`.
                let text = small_file(&dot, MAX_GIT_FILE)?;
                d.join(text.strip_prefix("gitdir:")?.trim())
            };
            return read_head(&gitdir).map(|(commit, branch)| GitHead {
                commit,
                branch,
                worktree: d.to_path_buf(),
            });
        }
        if !walk_up {
            return None;
        }
        at = d.parent();
    }
    None
}

/// (commit, branch) from a git folder's HEAD.
fn read_head(gitdir: &Path) -> Option<(String, Option<String>)> {
    let head = small_file(&gitdir.join("HEAD"), MAX_GIT_FILE)?;
    let head = head.trim();
    if is_hash(head) {
        return Some((head.to_string(), None));
    }
    let r = head.strip_prefix("ref:")?.trim();
    // Only a plain ref path: nothing that could leave the git folder.
    if !r.starts_with("refs/") || r.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return None;
    }
    let branch = r.strip_prefix("refs/heads/").map(str::to_string);
    // A linked worktree keeps its refs in the common folder.
    let common = small_file(&gitdir.join("commondir"), MAX_GIT_FILE)
        .map(|c| gitdir.join(c.trim()))
        .unwrap_or_else(|| gitdir.to_path_buf());
    for base in [gitdir, common.as_path()] {
        if let Some(s) = small_file(&base.join(r), MAX_GIT_FILE)
            && is_hash(s.trim())
        {
            return Some((s.trim().to_string(), branch));
        }
    }
    let packed = small_file(&common.join("packed-refs"), MAX_PACKED_REFS)?;
    packed.lines().find_map(|l| {
        let (sha, name) = l.split_once(' ')?;
        (name.trim() == r && is_hash(sha)).then(|| (sha.to_string(), branch.clone()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn git_head_follows_a_ref_packed_refs_and_a_detached_head() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("repo");
        let git = repo.join(".git");
        std::fs::create_dir_all(git.join("refs/heads")).unwrap();
        std::fs::write(git.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(git.join("refs/heads/main"), format!("{SHA}\n")).unwrap();
        let deep = repo.join("a/b");
        std::fs::create_dir_all(&deep).unwrap();
        let h = git_head(&deep, true, None).unwrap();
        assert_eq!(
            (h.commit.as_str(), h.branch.as_deref()),
            (SHA, Some("main"))
        );
        assert_eq!(git_head(&deep, false, None), None);
        std::fs::remove_file(git.join("refs/heads/main")).unwrap();
        std::fs::write(
            git.join("packed-refs"),
            format!("# pack\n{SHA} refs/heads/main\n"),
        )
        .unwrap();
        assert_eq!(git_head(&repo, false, None).unwrap().commit, SHA);
        std::fs::write(git.join("HEAD"), "ref: refs/../../../etc/passwd\n").unwrap();
        assert_eq!(git_head(&repo, false, None), None);
        std::fs::write(git.join("HEAD"), format!("{SHA}\n")).unwrap();
        assert_eq!(git_head(&repo, false, None).unwrap().branch, None);
    }

    #[test]
    fn the_sidecar_names_commit_and_run_before_git() {
        let mut side = Map::new();
        side.insert("git_commit".into(), json!("abc"));
        side.insert("run_id".into(), json!("r1"));
        let o = Origin {
            via: "inbox",
            uid: Some(0),
            mtime_ns: Some(0),
            ..Default::default()
        };
        let p = provenance(&o, &side);
        assert_eq!(p["commit"], "abc");
        assert_eq!(p["commit_from"], "sidecar");
        assert_eq!(p["run_id"], "r1");
        assert_eq!(p["user"], "root");
        assert_eq!(p["source_mtime"], "1970-01-01T00:00:00Z");
    }
}
