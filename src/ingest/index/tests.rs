//! The registrar's per-model index against a rebuild from the catalog.

use std::collections::BTreeSet;
use std::path::Path;

use proptest::prelude::*;

use super::Index;
use crate::ingest::plan::Known;
use crate::registry::tests::v;
use crate::registry::{Mark, Model, StoredFile};
use crate::store::Stored;

/// What the table held before it was kept: every stored file of the model, oldest first.
fn rebuilt(m: &Model, root: &Path, latest: Option<&Known>) -> Stored {
    let mut s = Stored::default();
    for f in m.stored().flat_map(|v| &v.files) {
        s.add(&f.sha256, root.join(&f.path), f.size);
    }
    for (rel, sha) in latest.iter().flat_map(|k| &k.files) {
        s.add_latest(rel, sha);
    }
    s
}

/// One change to the model, as the registrar makes them.
#[derive(Debug, Clone)]
enum Op {
    /// A new version with files of these contents (from a small pool, so they repeat).
    Push(Vec<u8>),
    /// Removal (rm or gc) of the stored version at this position, if any.
    Remove(usize),
    /// A job: the table is taken and compared.
    Job,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop::collection::vec(0u8..6, 0..4).prop_map(Op::Push),
        1 => (0usize..16).prop_map(Op::Remove),
        2 => Just(Op::Job),
    ]
}

proptest! {
    /// After any mix of new versions and removals, each job's table equals one rebuilt
    /// from every stored file of the model.
    #[test]
    fn dedup_table_equals_a_rebuild(ops in prop::collection::vec(op(), 1..40)) {
        let root = Path::new("/r");
        let mut index = Index::default();
        let mut m = Model::default();
        let mut next = 1;
        for op in ops {
            match op {
                Op::Push(contents) => {
                    let mut version = v(next, &[]);
                    version.files = contents
                        .iter()
                        .enumerate()
                        .map(|(i, c)| StoredFile {
                            path: format!("models/m/v{next}/f{i}"),
                            sha256: format!("sha{c}"),
                            size: u64::from(*c % 3),
                        })
                        .collect();
                    m.push(version);
                    next += 1;
                }
                Op::Remove(i) => {
                    let live: Vec<usize> = (0..m.versions.len())
                        .filter(|&j| m.versions[j].removed.is_none())
                        .collect();
                    if let Some(&j) = live.get(i % live.len().max(1)) {
                        std::sync::Arc::make_mut(&mut m.versions[j]).removed = Some(Box::new(Mark { at: "t".into(), reason: None, uid: None }));
                        index.removed("m");
                    }
                }
                Op::Job => {
                    let latest = m.newest().map(|x| super::super::plan::known("models/m", x));
                    let got = index.stored("m", Some(&m), root, latest.as_ref());
                    prop_assert!(got.same_files(&rebuilt(&m, root, latest.as_ref())));
                }
            }
        }
        let got = index.stored("m", Some(&m), root, None);
        prop_assert!(got.same_files(&rebuilt(&m, root, None)));
    }
}

#[test]
fn a_model_gone_leaves_no_table() {
    let mut index = Index::default();
    let mut m = Model::default();
    let mut x = v(1, &[]);
    x.files = vec![StoredFile {
        path: "models/m/v1/a".into(),
        sha256: "s".into(),
        size: 1,
    }];
    m.push(x);
    let root = Path::new("/r");
    assert!(
        !index
            .stored("m", Some(&m), root, None)
            .same_files(&Stored::default())
    );
    assert!(
        index
            .stored("m", None, root, None)
            .same_files(&Stored::default())
    );
}

#[test]
fn the_folder_is_listed_only_when_a_link_name_went_away() {
    let names = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let mut index = Index::default();
    assert!(
        index.links_made("m", names(&["latest", "best"])),
        "first time"
    );
    assert!(!index.links_made("m", names(&["latest", "best"])));
    assert!(
        !index.links_made("m", names(&["latest", "best", "prod"])),
        "an alias added"
    );
    assert!(
        index.links_made("m", names(&["latest", "best"])),
        "an alias removed"
    );
    index.forget();
    assert!(
        index.links_made("m", names(&["latest", "best"])),
        "after a roll-back"
    );
}

#[test]
fn a_listing_is_trusted_only_as_far_as_the_daemon_own_publishing_explains_it() {
    use crate::store::Listed;
    let l = |nlink, highest| Some(Listed { nlink, highest });
    let mut ix = Index::default();
    assert_eq!(ix.listing_for_job("m"), None, "never listed");
    ix.listed("m", l(5, 3));
    // Two versions published since: the folder should have two more subfolders.
    ix.published("m");
    ix.published("m");
    assert_eq!(ix.listing_for_job("m"), l(7, 3));
    ix.listed("m", l(7, 3));
    // A version published while a job ran: that job's count may or may not include
    // it, so it is not kept.
    assert_eq!(ix.listing_for_job("m"), l(7, 3));
    ix.published("m");
    ix.listed("m", l(8, 3));
    assert_eq!(ix.listing_for_job("m"), None);
    ix.listed("m", l(8, 3));
    assert_eq!(ix.listing_for_job("m"), l(8, 3));
    // A version removed (its folder goes) while a job runs: neither kept.
    ix.removed("m");
    ix.listed("m", l(8, 3));
    assert_eq!(ix.listing_for_job("m"), None);
    // Another model is its own.
    assert_eq!(ix.listing_for_job("n"), None);
}
