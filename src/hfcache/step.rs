//! One commit's change to a model's view, worked out from its last plan: the new plan
//! and only what differs, without hashing or walking every version's files again.
//!
//! A commit usually adds one version or moves an alias; recomputing the model's whole
//! plan (a SHA-256 commit id per version) and comparing two whole plans made every
//! commit cost in proportion to the model's version count: a loop registering 1,000
//! versions of one model ran at a third of its rate with the view on. Here a version
//! already in the last plan keeps its entry (a version's content never changes), and
//! only new versions, removed ones and the named refs (`latest`, `best`, `main`,
//! aliases) are looked at.

use std::collections::BTreeMap;

use super::{DEFAULT_REVISION, Plan, ViewFile, commit_id, repo_name_ok, revision_number};
use crate::config::BestPolicy;
use crate::registry::{Model, Version};

/// What to write to bring a model's folder from its last plan to the next.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Step {
    /// Blobs to link: sha256 -> the stored file's catalog path.
    pub(super) blobs_add: Vec<(String, String)>,
    /// Versions to make snapshots for.
    pub(super) snapshots_add: Vec<u32>,
    /// Refs to write: name -> commit id.
    pub(super) refs_set: Vec<(String, String)>,
    /// Refs to remove.
    pub(super) refs_gone: Vec<String>,
    /// Snapshots (commit ids) to remove.
    pub(super) snapshots_gone: Vec<String>,
    /// Blobs to remove.
    pub(super) blobs_gone: Vec<String>,
}

/// A version's entry in a plan: its commit id and files. `None` when a stored path
/// does not lie in the version's folder.
pub(super) fn entry(store_shown: &str, name: &str, v: &Version) -> Option<(String, Vec<ViewFile>)> {
    let files = super::version_files(store_shown, name, v)?;
    let commit = commit_id(name, v.number, &files);
    let files = files
        .iter()
        .zip(&v.files)
        .map(|((rel, sha, _), f)| ViewFile {
            rel: rel.to_string(),
            sha256: sha.to_string(),
            stored: f.path.clone(),
        })
        .collect();
    Some((commit, files))
}

/// Each blob of `versions` and the stored file it links to: that of the lowest version
/// holding it.
pub(super) fn blobs_of(
    versions: &BTreeMap<u32, (String, Vec<ViewFile>)>,
) -> BTreeMap<String, String> {
    let mut blobs = BTreeMap::new();
    for (_, files) in versions.values() {
        for f in files {
            blobs
                .entry(f.sha256.clone())
                .or_insert_with(|| f.stored.clone());
        }
    }
    blobs
}

/// The named refs of `m` (everything but `v<N>`), each with the version it names, among
/// the versions `plan` holds.
pub(super) fn named_refs(
    m: &Model,
    name: &str,
    best: &BestPolicy,
    plan: &Plan,
) -> BTreeMap<String, u32> {
    ["latest", "best", DEFAULT_REVISION]
        .into_iter()
        .chain(m.aliases.keys().map(String::as_str))
        .filter_map(|r| {
            let n = revision_number(m, name, r, best).filter(|n| plan.versions.contains_key(n))?;
            Some((r.to_string(), n))
        })
        .collect()
}

/// `prev` (the plan the folder matches) brought to `model`, and the step that does it on
/// disk. `None` when this cannot be worked out step by step (the model is gone or has
/// no folder, a stored path lies outside its version's folder): the caller makes the
/// whole plan instead.
pub(super) fn advance(
    mut plan: Plan,
    store_shown: &str,
    name: &str,
    model: Option<&Model>,
    best: &BestPolicy,
) -> Option<(Plan, Step)> {
    let m = model.filter(|_| repo_name_ok(name))?;
    let mut step = Step::default();
    // One walk through both, in ascending numbers (a model's versions are kept in
    // ascending order; out of order, the caller makes the whole plan): the versions
    // gone since (removed) and the new ones.
    let (mut gone, mut new) = (Vec::new(), Vec::new());
    let mut had = plan.versions.keys().copied().peekable();
    let mut last = 0;
    for v in m.stored() {
        if v.number <= last {
            return None;
        }
        last = v.number;
        while let Some(n) = had.next_if(|n| *n < v.number) {
            gone.push(n);
        }
        if had.next_if_eq(&v.number).is_none() {
            new.push(v);
        }
    }
    gone.extend(had);
    // Gone: their refs and snapshots go, and the blobs are worked out again (a shared
    // blob links to the lowest version holding it).
    for n in &gone {
        if let Some((commit, _)) = plan.versions.remove(n) {
            step.snapshots_gone.push(commit);
        }
        plan.refs.remove(&format!("v{n}"));
        step.refs_gone.push(format!("v{n}"));
    }
    // New versions: only these are hashed.
    for v in new {
        let (commit, files) = entry(store_shown, name, v)?;
        step.snapshots_add.push(v.number);
        plan.refs.insert(format!("v{}", v.number), v.number);
        step.refs_set
            .push((format!("v{}", v.number), commit.clone()));
        plan.versions.insert(v.number, (commit, files));
    }
    if plan.versions.is_empty() {
        return None;
    }
    if gone.is_empty() {
        for n in &step.snapshots_add {
            for f in &plan.versions[n].1 {
                if !plan.blobs.contains_key(&f.sha256) {
                    plan.blobs.insert(f.sha256.clone(), f.stored.clone());
                    step.blobs_add.push((f.sha256.clone(), f.stored.clone()));
                }
            }
        }
    } else {
        let blobs = blobs_of(&plan.versions);
        for (sha, stored) in &blobs {
            if plan.blobs.get(sha) != Some(stored) {
                step.blobs_add.push((sha.clone(), stored.clone()));
            }
        }
        step.blobs_gone = plan
            .blobs
            .keys()
            .filter(|s| !blobs.contains_key(*s))
            .cloned()
            .collect();
        plan.blobs = blobs;
    }
    // Named refs: those that moved, appeared or went.
    let named = named_refs(m, name, best, &plan);
    let old_named = std::mem::take(&mut plan.named);
    for r in old_named {
        if !named.contains_key(&r) {
            plan.refs.remove(&r);
            step.refs_gone.push(r);
        }
    }
    plan.named = named.keys().cloned().collect();
    for (r, n) in named {
        if plan.refs.get(&r) != Some(&n) {
            step.refs_set.push((r.clone(), plan.versions[&n].0.clone()));
        }
        plan.refs.insert(r, n);
    }
    Some((plan, step))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hfcache::tests::version;

    fn policy() -> BestPolicy {
        crate::config::Config::from_yaml(
            std::path::Path::new("/r"),
            "",
            crate::config::ConfigSource::Embedded,
        )
        .unwrap()
        .best
    }

    /// Walks `m` through `changes`, checking after each that the step-by-step plan is the
    /// whole plan, and returns the steps.
    fn walk(mut m: Model, changes: &[&dyn Fn(&mut Model)]) -> Vec<Step> {
        let best = policy();
        let mut plan = Plan::of("models", "bert", Some(&m), &best).0;
        let mut steps = Vec::new();
        for change in changes {
            change(&mut m);
            let (next, step) = advance(plan, "models", "bert", Some(&m), &best).unwrap();
            assert_eq!(next, Plan::of("models", "bert", Some(&m), &best).0);
            plan = next;
            steps.push(step);
        }
        steps
    }

    #[test]
    fn a_new_version_writes_its_blobs_snapshot_and_the_refs_that_moved_only() {
        let m = crate::registry::tests::model(vec![version(1, &[("w.bin", "aa")])]);
        let add = |m: &mut Model| {
            m.versions
                .push(version(2, &[("w.bin", "aa"), ("c", "bb")]).into())
        };
        let steps = walk(m, &[&add]);
        let s = &steps[0];
        assert_eq!(s.snapshots_add, [2]);
        // The shared blob stays linked to v1's file; only the new one is linked.
        assert_eq!(
            s.blobs_add,
            [("bb".to_string(), "models/bert/v2/c".to_string())]
        );
        let set: Vec<&str> = s.refs_set.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(set, ["v2", "best", "latest", "main"]);
        assert!(s.refs_gone.is_empty() && s.snapshots_gone.is_empty() && s.blobs_gone.is_empty());
    }

    #[test]
    fn alias_moves_and_removals_give_the_whole_plan() {
        let m = crate::registry::tests::model(vec![
            version(1, &[("w.bin", "aa")]),
            version(2, &[("w.bin", "aa"), ("c", "bb")]),
            version(3, &[("w.bin", "cc")]),
        ]);
        let alias = |m: &mut Model| {
            m.aliases.insert("production".into(), 1);
        };
        let moved = |m: &mut Model| {
            m.aliases.insert("production".into(), 3);
            m.aliases.insert("main".into(), 2);
        };
        let remove_v1 = |m: &mut Model| {
            std::sync::Arc::make_mut(&mut m.versions[0]).removed =
                Some(Box::new(crate::registry::Mark {
                    at: "t".into(),
                    reason: None,
                    uid: None,
                }));
        };
        let unalias = |m: &mut Model| {
            m.aliases.clear();
        };
        let steps = walk(m, &[&alias, &moved, &remove_v1, &unalias]);
        assert_eq!(
            steps[0].refs_set.len(),
            1,
            "only the new alias: {:?}",
            steps[0]
        );
        // v1 removed: its ref and snapshot go; the blob it shared with v2 now links to v2's file.
        let s = &steps[2];
        assert_eq!(s.refs_gone, ["v1"]);
        assert_eq!(s.snapshots_gone.len(), 1);
        assert_eq!(
            s.blobs_add,
            [("aa".to_string(), "models/bert/v2/w.bin".to_string())]
        );
        assert!(s.blobs_gone.is_empty());
        assert_eq!(steps[3].refs_gone, ["production"]);
        let main_moved: Vec<&str> = steps[3].refs_set.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(main_moved, ["main"], "main falls back to latest");
    }
}
