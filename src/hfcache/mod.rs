//! The local Hugging Face cache view: `<root>/hf/` kept in step with the catalog, no copies.
//!
//! `HF_HUB_CACHE=<root>/hf HF_HUB_OFFLINE=1` lets a stock `huggingface_hub` load any
//! stored version by a selector a user can ask the socket for, with no server at all:
//! ```text
//! <root>/hf/models--<name>/
//!   blobs/<sha256>                 symlink to the stored file models/<name>/v<N>/<path>
//!   snapshots/<commit>/<path>      relative symlink ../../blobs/<sha256> (as huggingface_hub
//!                                  makes them; one more ../ per folder level of <path>)
//!   refs/<ref>                     the commit id, no newline: v1, v2, ..., latest, best,
//!                                  main, and each alias
//! ```
//! - The commit id of a version is [`commit_id`]: the same for the same name, number and
//!   content, whatever the root's path or the daemon's restarts. The HTTP endpoints that
//!   speak the Hub's protocol must give the same id (`X-Repo-Commit`, `sha`).
//! - `best` is what `get NAME best` answers without a metric: the model's configured
//!   metric (`model_metrics`), else `default_metric`, in its configured direction. No
//!   version with that metric: no `refs/best`.
//! - `main` (the revision huggingface_hub asks for when given none) is the alias `main`
//!   when there is one, else `latest`.
//! - Blobs are symbolic links, not hard links: a hard link would add a name to the stored
//!   file's inode (the store's dedup shows shared inodes by their link count, and a view
//!   that failed to follow a removal would keep a removed version's bytes on disk
//!   unseen), and it cannot cross file systems when the store lies elsewhere. A symlink
//!   is read with the stored file's own owner and mode, so the view lets read exactly
//!   who may read the store. Within the root a blob's link is relative
//!   (`../../../models/...`), so moving the whole root keeps it valid.
//! - Deprecated versions keep `refs/v<N>` (as `get NAME vN` answers them); removed ones
//!   lose their refs, snapshot and blobs. A model whose name `huggingface_hub` refuses as
//!   a repo id ([`repo_name_ok`]) has no folder in the view.
//!
//! The view is derived data, written only by the registrar after each commit ([`View`]):
//! `<root>/hf` deleted is made again at the next start; anything stale is removed.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::config::{BestPolicy, Config};
use crate::registry::{Model, Version};

mod folder;
mod step;
mod sync;

pub use sync::{View, remove_view};

/// The view's folder beneath the root.
pub const HF_DIR: &str = "hf";

/// The folder of model `name` in the view, as huggingface_hub names a model repo's cache.
pub fn repo_folder(name: &str) -> String {
    format!("models--{name}")
}

/// Whether huggingface_hub (2.4) accepts `name` as a repo id, so that the view is worth
/// making: 1 to 96 characters of `[A-Za-z0-9_.-]`, first and last a letter, digit or
/// `_`, no `--` or `..`, not ending in `.git`.
pub fn repo_name_ok(name: &str) -> bool {
    let b = name.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    !b.is_empty()
        && b.len() <= 96
        && b.iter().all(|&c| word(c) || c == b'-' || c == b'.')
        && word(b[0])
        && word(b[b.len() - 1])
        && !name.contains("--")
        && !name.contains("..")
        && !name.ends_with(".git")
}

/// The commit id of version `number` of model `name` holding `files` (path inside the
/// version, lower-case hex SHA-256, size; any order): the first 40 hex digits of the
/// SHA-256 of
/// `modelreg\0<name>\0v<number>\0` followed, for each file in ascending path order, by
/// `<path>\0<sha256>\0<size in decimal>\n`. A version's content never changes and its
/// number is never reused, so this is stable; it depends on the content too, so that a
/// client's own cache never takes one version for another after a registry is started
/// over with the same names. 40 lower-case hex, as huggingface_hub expects a commit.
pub fn commit_id(name: &str, number: u32, files: &[(&str, &str, u64)]) -> String {
    let mut sorted: Vec<&(&str, &str, u64)> = files.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = Sha256::new();
    h.update(format!("modelreg\0{name}\0v{number}\0"));
    for (path, sha, size) in sorted {
        h.update(format!("{path}\0{sha}\0{size}\n"));
    }
    let hex = crate::fsutil::hex(&h.finalize());
    hex[..40].to_string()
}

/// The files of version `v` of `name` as (path inside the version, sha256, size), the
/// paths cut from the catalog's stored paths; `store_shown` is the store as the catalog
/// writes it (`Config::relative(&config.store)`, `models` by default). `None` when a
/// stored path does not lie in the version's folder (a catalog edited by hand).
pub fn version_files<'a>(
    store_shown: &str,
    name: &str,
    v: &'a Version,
) -> Option<Vec<(&'a str, &'a str, u64)>> {
    let prefix = format!("{store_shown}/{name}/v{}/", v.number);
    v.files
        .iter()
        .map(|f| {
            let rel = f.path.strip_prefix(&prefix)?;
            crate::names::check_relative_path(rel).ok()?;
            Some((rel, f.sha256.as_str(), f.size))
        })
        .collect()
}

/// The commit id of version `v` of `name` ([`commit_id`] of [`version_files`]).
pub fn version_commit(store_shown: &str, name: &str, v: &Version) -> Option<String> {
    version_files(store_shown, name, v).map(|files| commit_id(name, v.number, &files))
}

/// [`version_commit`] with the store as `config` names it: what a server speaking the
/// Hub's protocol sends as `sha` and `X-Repo-Commit` for this version.
pub fn commit_of(config: &Config, name: &str, v: &Version) -> Option<String> {
    version_commit(&config.relative(&config.store), name, v)
}

/// The revision huggingface_hub asks for when given none.
pub const DEFAULT_REVISION: &str = "main";

/// The version a Hub revision names in model `m`, as the view's refs have it: `vN` (a
/// stored version), `latest`, `best` (by the configured metric, as `get NAME best`
/// without one), an alias, or `main` ([`DEFAULT_REVISION`]: the alias `main` when there
/// is one, else latest). `None`: no such version (a 40-hex commit id is not looked up
/// here).
pub fn revision_number(m: &Model, name: &str, revision: &str, best: &BestPolicy) -> Option<u32> {
    let n = match revision {
        "latest" => m.latest()?.number,
        "best" => m.best_by_policy(name, best)?.number,
        DEFAULT_REVISION if !m.aliases.contains_key(DEFAULT_REVISION) => m.latest()?.number,
        r => match crate::registry::parse_version_number(r) {
            Some(n) => n,
            None => *m.aliases.get(r)?,
        },
    };
    m.find(n).filter(|v| v.removed.is_none()).map(|v| v.number)
}

/// One stored file as the view shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ViewFile {
    /// Its path inside the version (and the snapshot).
    pub(crate) rel: String,
    /// Its SHA-256: the blob's name.
    pub(crate) sha256: String,
    /// Its path as the catalog gives it: relative to the root, or absolute.
    pub(crate) stored: String,
}

/// What a model's folder in the view should hold; computed without touching disk.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Plan {
    /// Each stored version: its commit id and files.
    pub(crate) versions: BTreeMap<u32, (String, Vec<ViewFile>)>,
    /// Each ref and the version it names.
    pub(crate) refs: BTreeMap<String, u32>,
    /// Each blob and the stored file it links to (that of the lowest version holding it).
    pub(crate) blobs: BTreeMap<String, String>,
    /// The refs other than `v<N>` (latest, best, main, aliases): the few a commit looks
    /// at again, without going through every version's ref.
    pub(crate) named: std::collections::BTreeSet<String>,
}

impl Plan {
    /// The plan for model `name` (`None`: none, the model has no folder in the view).
    /// Versions whose stored paths are not in their folder are left out; they are
    /// returned as the second value, for a warning.
    pub(crate) fn of(
        store_shown: &str,
        name: &str,
        model: Option<&Model>,
        best: &BestPolicy,
    ) -> (Plan, Vec<u32>) {
        let mut plan = Plan::default();
        let mut skipped = Vec::new();
        let Some(m) = model.filter(|_| repo_name_ok(name)) else {
            return (plan, skipped);
        };
        for v in m.stored() {
            let Some((commit, files)) = step::entry(store_shown, name, v) else {
                skipped.push(v.number);
                continue;
            };
            plan.refs.insert(format!("v{}", v.number), v.number);
            plan.versions.insert(v.number, (commit, files));
        }
        plan.blobs = step::blobs_of(&plan.versions);
        let named = step::named_refs(m, name, best, &plan);
        plan.named = named.keys().cloned().collect();
        plan.refs.extend(named);
        (plan, skipped)
    }

    /// The commit id `r` names.
    pub(crate) fn commit_of_ref(&self, r: &str) -> Option<&str> {
        let n = self.refs.get(r)?;
        self.versions.get(n).map(|(c, _)| c.as_str())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::registry::{Kind, StoredFile};

    pub(super) fn version(n: u32, files: &[(&str, &str)]) -> Version {
        let mut v = crate::registry::tests::v(n, &[("accuracy", n as f64 / 10.0)]);
        v.kind = Kind::Folder;
        v.files = files
            .iter()
            .map(|(p, sha)| StoredFile {
                path: format!("models/bert/v{n}/{p}"),
                sha256: sha.to_string(),
                size: 3,
            })
            .collect();
        v
    }

    #[test]
    fn commit_id_is_40_hex_fixed_and_follows_name_number_and_content() {
        let files = [("config.json", "aa", 3), ("onnx/model.onnx", "bb", 5)];
        let id = commit_id("bert", 2, &files);
        assert_eq!(id.len(), 40);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        // Written down once: a change here changes every commit id clients have cached.
        assert_eq!(id, commit_id("bert", 2, &[files[1], files[0]]), "any order");
        let mut h = Sha256::new();
        h.update(b"modelreg\0bert\0v2\0config.json\0aa\x003\nonnx/model.onnx\0bb\x005\n");
        assert_eq!(id, crate::fsutil::hex(&h.finalize())[..40]);
        assert_ne!(id, commit_id("bert", 3, &files));
        assert_ne!(id, commit_id("bart", 2, &files));
        assert_ne!(id, commit_id("bert", 2, &[("config.json", "ab", 3)]));
    }

    #[test]
    fn repo_names_huggingface_hub_accepts() {
        for ok in ["resnet18", "Qwen2.5-0.5B.Q4_K_M", "_x", "a", "bert-tiny_v2"] {
            assert!(repo_name_ok(ok), "{ok}");
        }
        let long = "a".repeat(97);
        for bad in [
            "", "-a", "a-", ".a", "a.", "a--b", "a..b", "x.git", "a b", "café", &long,
        ] {
            assert!(!repo_name_ok(bad), "{bad}");
        }
    }

    #[test]
    fn plan_has_a_ref_per_selector_and_skips_removed_versions() {
        let mut m = crate::registry::tests::model(vec![
            version(1, &[("config.json", "aa"), ("w.bin", "cc")]),
            version(2, &[("config.json", "aa"), ("w.bin", "dd")]),
            version(3, &[("config.json", "ee")]),
        ]);
        m.aliases.insert("production".into(), 1);
        m.aliases.insert("main".into(), 1);
        std::sync::Arc::make_mut(&mut m.versions[2]).removed =
            Some(Box::new(crate::registry::Mark {
                at: "t".into(),
                reason: None,
                uid: None,
            }));
        let policy = crate::config::Config::from_yaml(
            std::path::Path::new("/r"),
            "",
            crate::config::ConfigSource::Embedded,
        )
        .unwrap()
        .best;
        let (p, skipped) = Plan::of("models", "bert", Some(&m), &policy);
        assert!(skipped.is_empty());
        let refs: Vec<(&str, u32)> = p.refs.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            refs,
            [
                ("best", 2),
                ("latest", 2),
                ("main", 1),
                ("production", 1),
                ("v1", 1),
                ("v2", 2)
            ]
        );
        // The shared config.json is one blob, linked to the lowest version's file.
        assert_eq!(p.blobs.len(), 3);
        assert_eq!(p.blobs["aa"], "models/bert/v1/config.json");
        assert_eq!(
            p.commit_of_ref("production"),
            Some(p.versions[&1].0.as_str())
        );
        assert_eq!(
            version_commit("models", "bert", &m.versions[0]).as_deref(),
            p.commit_of_ref("v1")
        );
        // The one rule for a revision, which a server speaking the Hub's protocol uses too.
        let rev = |r: &str| revision_number(&m, "bert", r, &policy);
        assert_eq!(
            (rev("main"), rev("v2"), rev("best")),
            (Some(1), Some(2), Some(2))
        );
        assert_eq!((rev("v3"), rev("v4"), rev("nope")), (None, None, None));
        m.aliases.remove("main");
        let latest = revision_number(&m, "bert", "main", &policy);
        assert_eq!(latest, Some(2), "no alias main: latest");
        // A name the client refuses has no folder; a path outside its version is skipped.
        assert_eq!(
            Plan::of("models", "a--b", Some(&m), &policy).0,
            Plan::default()
        );
        let (p, skipped) = Plan::of("store", "bert", Some(&m), &policy);
        assert_eq!((p.versions.len(), skipped), (0, vec![1, 2]));
    }
}
