//! The catalog's rules seen through the socket: one refusal reads the same whether the
//! registrar (a change) or the server (a query) found it, and every answer decodes into
//! its typed struct.

mod common;

use common::*;
use modelreg::client::ClientError;
use modelreg::protocol::ErrorCode;

/// Registers two versions of `m` (accuracy 0.7, then 0.8) and removes v2 with a reason.
fn two_versions_one_removed() -> TestDaemon {
    let d = TestDaemon::quick();
    for (i, acc) in [0.7, 0.8].into_iter().enumerate() {
        write(
            &d.inbox().join("m.metrics.yaml"),
            sidecar(&[("accuracy", acc)]).as_bytes(),
        );
        write(&d.inbox().join("m.pt"), &bytes(40 + i as u64, 2000));
        d.wait_versions("m", i + 1);
    }
    d.client()
        .rm("m", "v2", Some("leaked test data"), false)
        .unwrap();
    d
}

fn refusal<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (ErrorCode, String) {
    match r.unwrap_err() {
        ClientError::Remote(b) => (b.code, b.message),
        e => panic!("not an error answer: {e}"),
    }
}

#[test]
fn a_refusal_reads_the_same_from_a_change_and_from_a_query() {
    let d = two_versions_one_removed();
    let mut c = d.client();

    let from_get = refusal(c.get("m", Some("v9"), None, None));
    let from_alias = refusal(c.alias_set("m", "production", "v9"));
    assert_eq!(from_get.0, ErrorCode::VersionNotFound);
    assert_eq!(from_get.1, "\"m\" has no version v9 (it has v1..v2)");
    assert_eq!(from_alias, from_get);

    let from_get = refusal(c.get("m", Some("v2"), None, None));
    let from_deprecate = refusal(c.deprecate("m", "v2", None));
    assert_eq!(from_get.0, ErrorCode::VersionRemoved);
    assert!(
        from_get.1.starts_with("m v2 was removed at ")
            && from_get.1.ends_with(": leaked test data"),
        "{}",
        from_get.1
    );
    assert_eq!(from_deprecate, from_get);

    let from_versions = refusal(c.versions("n"));
    let from_rollback = refusal(c.rollback("n", "production"));
    assert_eq!(from_versions.0, ErrorCode::ModelNotFound);
    assert_eq!(
        from_versions.1,
        "no model named \"n\"; did you mean \"m\"? (`modelreg list` shows the models)"
    );
    assert_eq!(from_rollback, from_versions);
}

#[test]
fn typed_answers_decode_from_every_request() {
    let d = two_versions_one_removed();
    let mut c = d.client();
    assert!(c.ping().unwrap().pong);
    assert_eq!(c.list().unwrap().models[0].latest, "v1");
    assert_eq!(c.versions("m").unwrap().versions[1].state, "removed");
    let best = c.get("m", Some("best"), None, None).unwrap();
    assert_eq!(best.best_by.unwrap().metric, "accuracy");
    let set = c.alias_set("m", "production", "v1").unwrap();
    assert_eq!((set.from, set.unchanged), (None, false));
    let again = c.alias_set("m", "production", "v1").unwrap();
    assert_eq!((again.from.as_deref(), again.unchanged), (Some("v1"), true));
    assert_eq!(c.history("m").unwrap().history.len(), 1);
    assert_eq!(
        refusal(c.rollback("m", "production")).0,
        ErrorCode::NothingToRollBack
    );
    assert_eq!(c.alias_remove("m", "production").unwrap().removed, "v1");
    assert!(c.deprecate("m", "v1", Some("eval bug")).unwrap().deprecated);
    let gc = c.gc(None, true).unwrap();
    assert!(gc.dry_run && gc.versions.is_empty());
    assert_eq!(c.verify(Some("m")).unwrap().problems.len(), 0);
    assert_eq!(c.status().unwrap().models, 1);
}

#[test]
fn status_counts_the_versions_list_counts_not_the_removed_ones() {
    let d = two_versions_one_removed();
    // The removed version's tombstone stays in the catalog; its files are gone.
    assert_eq!(d.status().versions, 1);
    let listed: usize = d
        .client()
        .list()
        .unwrap()
        .models
        .iter()
        .map(|m| m.versions)
        .sum();
    assert_eq!(d.status().versions, listed);
}
