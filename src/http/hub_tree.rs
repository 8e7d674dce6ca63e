//! The Hub's tree listing of a revision: its files and the folders they lie in.
//!
//! `GET /api/models/{repo}/tree/{rev}[/{path}]`, as `list_repo_tree` reads it.
//! A file's `oid` is its SHA-256 and its `lfs` the Git LFS description of it (`oid`,
//! `size`, the size of the pointer file Git would keep): the Hub gives a Git blob id
//! there, which would mean reading every file; with `lfs` the client checks files by
//! their SHA-256 (`verify_repo_checksums`) instead. No `xetHash`: it would send the
//! client to a Xet store. The whole listing is one page (no `Link` to a next one).

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::files::Found;
use super::hub::HubError;

/// The size of the Git LFS pointer file of a file of `size` bytes:
/// `version https://git-lfs.github.com/spec/v1\noid sha256:<64 hex>\nsize <size>\n`.
pub(super) fn pointer_size(size: u64) -> usize {
    "version https://git-lfs.github.com/spec/v1\n".len()
        + "oid sha256:\n".len()
        + 64
        + format!("size {size}\n").len()
}

/// A folder's `oid`: the Hub gives its Git tree id; here a stable id of the commit and
/// the folder's path (40 hex), which the client only keeps.
fn folder_oid(commit: &str, path: &str) -> String {
    let mut h = Sha256::new();
    h.update(format!("modelreg-tree\0{commit}\0{path}"));
    crate::fsutil::hex(&h.finalize())[..40].to_string()
}

/// The entries of version `v` (at `commit`) under folder `under` (the whole version
/// when `None`): its direct files and folders, or everything beneath it when
/// `recursive`, ordered by path. A folder that is not in the version is `EntryNotFound`.
pub(super) fn listing(
    v: &Found,
    commit: &str,
    under: Option<&str>,
    recursive: bool,
) -> Result<Value, HubError> {
    let prefix = under.map(|u| format!("{u}/")).unwrap_or_default();
    // Path -> entry; a BTreeMap orders them and keeps each folder once.
    let mut entries: BTreeMap<String, Value> = BTreeMap::new();
    for f in &v.files {
        let Some(rest) = f.rel.strip_prefix(&prefix) else {
            continue;
        };
        // Every folder between `under` and the file, or only the first when not
        // recursive (the file itself is then listed only when it lies directly there).
        let mut at = prefix.clone();
        let parts: Vec<&str> = rest.split('/').collect();
        let folders = &parts[..parts.len() - 1];
        for (i, folder) in folders.iter().enumerate() {
            at.push_str(folder);
            let path = at.clone();
            entries.entry(path.clone()).or_insert_with(|| {
                json!({"type": "directory", "oid": folder_oid(commit, &path), "size": 0, "path": path})
            });
            at.push('/');
            if !recursive && i == 0 {
                break;
            }
        }
        if recursive || folders.is_empty() {
            entries.insert(
                f.rel.clone(),
                json!({
                    "type": "file",
                    "oid": f.sha256,
                    "size": f.size,
                    "path": f.rel,
                    "lfs": {"oid": f.sha256, "size": f.size, "pointerSize": pointer_size(f.size)},
                }),
            );
        }
    }
    if let Some(u) = under
        && entries.is_empty()
    {
        return Err(HubError::entry(
            format!("no folder {u:?} in {} {}", v.name, v.version),
            commit,
        ));
    }
    Ok(Value::Array(entries.into_values().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::files::StoredFile;
    use axum::response::IntoResponse;

    fn version(paths: &[&str]) -> Found {
        Found {
            name: "bert".into(),
            version: "v1".into(),
            registered: std::time::SystemTime::UNIX_EPOCH,
            files: paths
                .iter()
                .map(|p| StoredFile {
                    rel: p.to_string(),
                    path: p.into(),
                    sha256: "ab".repeat(32),
                    size: 3,
                })
                .collect(),
        }
    }

    fn paths(v: &Value) -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["type"].as_str().unwrap(),
                    e["path"].as_str().unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn a_listing_has_files_and_folders_at_each_depth() {
        let v = version(&["config.json", "onnx/model.onnx", "tok/sub/vocab.txt"]);
        let c = "c".repeat(40);
        let listing = |under, recursive| listing(&v, &c, under, recursive);
        assert_eq!(
            paths(&listing(None, true).unwrap()),
            [
                "file config.json",
                "directory onnx",
                "file onnx/model.onnx",
                "directory tok",
                "directory tok/sub",
                "file tok/sub/vocab.txt"
            ]
        );
        assert_eq!(
            paths(&listing(None, false).unwrap()),
            ["file config.json", "directory onnx", "directory tok"]
        );
        assert_eq!(
            paths(&listing(Some("tok"), false).unwrap()),
            ["directory tok/sub"]
        );
        assert_eq!(
            paths(&listing(Some("tok"), true).unwrap()),
            ["directory tok/sub", "file tok/sub/vocab.txt"]
        );
        let e = listing(Some("nope"), true).unwrap_err().into_response();
        assert_eq!(e.headers()["x-error-code"], "EntryNotFound");
        // A file's name is no folder.
        assert!(listing(Some("config.json"), true).is_err());
    }

    #[test]
    fn the_pointer_size_is_that_of_a_git_lfs_pointer() {
        let pointer = format!(
            "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize 12345\n",
            "a".repeat(64)
        );
        assert_eq!(pointer_size(12345), pointer.len());
    }
}
