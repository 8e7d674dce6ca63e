//! What a fresh-clone tester found: `add` refuses what the daemon would block before
//! copying anything, writes its metrics under the sidecar name already in the inbox and
//! says when only the metrics changed, two sidecars of one model block it with a problem,
//! and a store file system that is full is a problem `status` and `wait` report.

mod common;

use common::*;

/// Files in the inbox, hidden ones included, sorted.
fn inbox_files(d: &TestDaemon) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d.inbox())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn add_refuses_a_metric_or_meta_name_with_control_characters_before_copying() {
    let d = TestDaemon::quick();
    let elsewhere = tempfile::tempdir().unwrap();
    let file = elsewhere.path().join("m.pt");
    std::fs::write(&file, bytes(4, 100)).unwrap();
    let f = file.to_str().unwrap();
    let err = fails(&d, &["add", f, "--metric", "a\x1bb=1"]);
    assert!(err.contains("control characters"), "{err}");
    let err = fails(&d, &["add", f, "--meta", "a\nb=x"]);
    assert!(err.contains("control characters"), "{err}");
    assert!(inbox_files(&d).is_empty(), "{:?}", inbox_files(&d));
}

#[test]
fn a_yaml_and_a_json_sidecar_show_the_model_blocked_with_the_reason_until_one_goes() {
    let d = TestDaemon::quick();
    write_renamed(&d.inbox(), "twin.metrics.yaml", b"accuracy: 0.5\n");
    write_renamed(&d.inbox(), "twin.metrics.json", br#"{"accuracy": 0.9}"#);
    write_renamed(&d.inbox(), "twin.pt", &bytes(1, 100));
    let state = || {
        d.status()
            .waiting
            .iter()
            .find(|w| w.name == "twin")
            .map(|w| (w.state.clone(), w.reason.clone().unwrap_or_default()))
    };
    wait_until(std::time::Duration::from_secs(30), "twin blocked", || {
        state().is_some_and(|(s, _)| s == "blocked")
    });
    let (_, reason) = state().unwrap();
    assert!(reason.contains("remove one"), "{reason}");
    assert!(d.problems_text().contains("remove one"));
    std::fs::remove_file(d.inbox().join("twin.metrics.yaml")).unwrap();
    let v = d.wait_versions("twin", 1);
    assert_eq!(v[0].metrics["accuracy"], 0.9);
    assert!(!d.problems_text().contains("remove one"));
    assert!(state().is_none());
}

#[test]
fn add_writes_metrics_under_the_json_sidecar_already_there_and_says_they_were_updated() {
    let d = TestDaemon::quick();
    write_renamed(&d.inbox(), "js.metrics.json", br#"{"accuracy": 0.5}"#);
    let elsewhere = tempfile::tempdir().unwrap();
    // A folder: it goes through the inbox (a file is handed over on the socket).
    let file = elsewhere.path().join("js");
    std::fs::create_dir(&file).unwrap();
    std::fs::write(file.join("w.pt"), bytes(7, 300)).unwrap();
    let f = file.to_str().unwrap();
    ok(&d, &["add", f, "--wait", "--timeout", "30"]);
    assert_eq!(d.versions("js")[0].metrics["accuracy"], 0.5);

    let out = ok(
        &d,
        &[
            "add",
            f,
            "--metric",
            "accuracy=0.9",
            "--wait",
            "--timeout",
            "30",
        ],
    );
    assert!(out.contains("metrics updated"), "{out}");
    assert!(
        !d.inbox().join("js.metrics.yaml").exists(),
        "{:?}",
        inbox_files(&d)
    );
    let v = d.versions("js");
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].metrics["accuracy"], 0.9);

    // The same metrics again: nothing changed, and the answer does not claim it.
    let out = ok(
        &d,
        &[
            "add",
            f,
            "--metric",
            "accuracy=0.9",
            "--wait",
            "--timeout",
            "30",
        ],
    );
    assert!(out.contains("no new version"), "{out}");
    assert!(!out.contains("metrics updated"), "{out}");
}
