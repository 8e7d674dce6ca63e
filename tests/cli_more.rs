//! The command line as a new user meets it: aliases in `versions` and in the answer of a
//! waited registration, models whose versions are all deprecated or removed, same-target
//! alias moves.

mod common;

use common::*;

#[test]
fn versions_and_a_waited_registration_show_the_aliases_of_a_version() {
    let d = TestDaemon::quick();
    write_renamed(&d.inbox(), "resnet.pt", &bytes(1, 1000));
    d.wait_versions("resnet", 1);
    ok(&d, &["alias", "set", "resnet", "prod", "v1"]);

    let table = ok(&d, &["versions", "resnet"]);
    assert!(table.contains("prod"), "{table}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&d, &["versions", "resnet", "--json"])).unwrap();
    assert_eq!(json["versions"][0]["aliases"], serde_json::json!(["prod"]));

    // The same bytes handed over again answer with the existing v1 and its alias.
    let elsewhere = tempfile::tempdir().unwrap();
    let file = elsewhere.path().join("resnet.pt");
    std::fs::write(&file, bytes(1, 1000)).unwrap();
    let out = ok(&d, &["add", file.to_str().unwrap(), "--wait", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        json["version"]["aliases"],
        serde_json::json!(["prod"]),
        "{out}"
    );
}

#[test]
fn a_model_whose_versions_are_all_deprecated_is_listed_and_its_errors_say_why() {
    let d = TestDaemon::quick();
    write_renamed(
        &d.inbox(),
        "mobilenet.metrics.yaml",
        sidecar(&[("loss", 0.3)]).as_bytes(),
    );
    write_renamed(&d.inbox(), "mobilenet.pt", &bytes(2, 1000));
    d.wait_versions("mobilenet", 1);
    ok(&d, &["deprecate", "mobilenet", "v1"]);

    let list = ok(&d, &["list"]);
    assert!(list.contains("mobilenet"), "{list}");
    assert!(list.contains("v1 deprecated"), "{list}");
    let json: serde_json::Value = serde_json::from_str(&ok(&d, &["list", "--json"])).unwrap();
    assert_eq!(json["models"][0]["name"], "mobilenet");

    let err = fails(&d, &["get", "mobilenet"]);
    assert!(err.contains("v1 deprecated"), "{err}");
    assert!(err.contains("use get mobilenet v1"), "{err}");
    assert!(!err.contains("has no versions"), "{err}");
    let err = fails(&d, &["get", "mobilenet", "best", "--metric", "loss"]);
    assert!(err.contains("v1 deprecated"), "{err}");
    assert!(!err.contains("no version has any metric"), "{err}");
    // Still reachable by number.
    ok(&d, &["get", "mobilenet", "v1"]);
}

#[test]
fn a_model_blocked_in_the_inbox_is_named_as_blocked_not_missing() {
    let d = TestDaemon::quick();
    write_renamed(&d.inbox(), "arr.metrics.json", b"[1, 2]\n");
    write_renamed(&d.inbox(), "arr.pt", &bytes(3, 1000));
    wait_until(std::time::Duration::from_secs(30), "arr blocked", || {
        d.status()
            .waiting
            .iter()
            .any(|w| w.name == "arr" && w.state == "blocked")
    });
    let err = fails(&d, &["versions", "arr"]);
    assert!(err.contains("no model named \"arr\""), "{err}");
    assert!(err.contains("blocked"), "{err}");
    assert!(err.contains("arr.metrics.json"), "{err}");
    let err = fails(&d, &["get", "arr"]);
    assert!(err.contains("blocked"), "{err}");
}

/// The hidden hand-over copies `add` leaves in the inbox (`.NAME.PID-RANDOM.tmp`).
fn hidden_tmps(inbox: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(inbox)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with('.') && n.ends_with(".tmp"))
        .collect()
}

#[test]
fn an_interrupted_add_leaves_neither_its_hidden_copy_nor_its_sidecar_in_the_inbox() {
    use std::process::{Command, Stdio};
    let d = TestDaemon::quick();
    // A folder holding a FIFO: the copy blocks on it (no writer), as a long copy would
    // be in progress, with the hidden copy already in the inbox.
    let elsewhere = tempfile::tempdir().unwrap();
    let folder = elsewhere.path().join("slow");
    std::fs::create_dir(&folder).unwrap();
    let fifo = std::ffi::CString::new(folder.join("pipe").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let mut child = Command::new(BIN)
            .args(["--socket", d.socket().to_str().unwrap()])
            .args(["add", folder.to_str().unwrap(), "--metric", "accuracy=0.9"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until(std::time::Duration::from_secs(30), "hidden copy", || {
            !hidden_tmps(&d.inbox()).is_empty()
        });
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = child.wait().unwrap();
        assert!(!status.success());
        assert!(
            hidden_tmps(&d.inbox()).is_empty(),
            "{:?}",
            hidden_tmps(&d.inbox())
        );
        // The sidecar is placed only once the copy is whole: left behind, it would give
        // the model's current version the new metrics.
        assert!(
            !d.inbox().join("slow.metrics.yaml").exists(),
            "an interrupted add left its sidecar"
        );
    }
}

#[test]
fn add_refuses_a_repeated_metric_or_meta_key() {
    let d = TestDaemon::quick();
    let elsewhere = tempfile::tempdir().unwrap();
    let file = elsewhere.path().join("m.pt");
    std::fs::write(&file, bytes(4, 100)).unwrap();
    let f = file.to_str().unwrap();
    let err = fails(
        &d,
        &["add", f, "--metric", "acc=0.1", "--metric", "acc=0.9"],
    );
    assert!(err.contains("\"acc\" is given twice"), "{err}");
    let err = fails(&d, &["add", f, "--meta", "ds=a", "--meta", "ds=b"]);
    assert!(err.contains("\"ds\" is given twice"), "{err}");
    assert!(hidden_tmps(&d.inbox()).is_empty());
}

#[test]
fn a_metrics_yml_file_is_refused_with_the_spelling_that_pairs() {
    let d = TestDaemon::quick();
    write_renamed(
        &d.inbox(),
        "yml.metrics.yml",
        sidecar(&[("accuracy", 0.5)]).as_bytes(),
    );
    wait_until(std::time::Duration::from_secs(30), "the refusal", || {
        d.status()
            .problems
            .iter()
            .any(|p| p.message.contains("yml.metrics.yaml"))
    });
    let list = ok(&d, &["list"]);
    assert!(!list.contains("yml.metrics"), "{list}");
}

#[test]
fn setting_an_alias_to_where_it_points_is_a_no_op_that_rollback_skips() {
    let d = TestDaemon::quick();
    for i in 0..2 {
        write_renamed(&d.inbox(), "vit.pt", &bytes(10 + i, 1000));
        d.wait_versions("vit", i as usize + 1);
    }
    ok(&d, &["alias", "set", "vit", "prod", "v1"]);
    ok(&d, &["alias", "set", "vit", "prod", "v2"]);
    let out = ok(&d, &["alias", "set", "vit", "prod", "v2"]);
    assert!(out.contains("unchanged"), "{out}");
    let history: serde_json::Value =
        serde_json::from_str(&ok(&d, &["history", "vit", "--json"])).unwrap();
    assert_eq!(history["history"].as_array().unwrap().len(), 2, "{history}");
    let out = ok(&d, &["rollback", "vit", "prod"]);
    assert!(out.contains("v1"), "{out}");
    assert_eq!(d.get("vit", "prod").unwrap().number, 1);
}

#[test]
fn the_readme_python_snippets_output_folder_is_ignored_by_git() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(std::path::Path::new(repo).join("README.md")).unwrap();
    // The snippet writes its stand-in weights to out/ in the daemon's root, which is the
    // repository's root when following the README from a clone.
    assert!(readme.contains("\"out/resnet18.pt\""), "README changed");
    let o = std::process::Command::new("git")
        .args(["-C", repo, "check-ignore", "-q", "out/resnet18.pt"])
        .status()
        .expect("git");
    assert!(o.success(), "out/ is not ignored by .gitignore");
}

#[test]
fn status_reports_a_stale_hidden_handover_copy_of_a_dead_writer() {
    let mut d = TestDaemon::new("settle: 300ms\n");
    let inbox = d.inbox();
    std::fs::create_dir_all(&inbox).unwrap();
    // A pid that no longer runs: a child that has exited and been reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale_add = format!(".m.pt.{dead}-0a1b2c3d.tmp");
    let stale_py = ".p.pt.0123abcd.tmp";
    let fresh = format!(".n.pt.{dead}-00ff00ff.tmp");
    for n in [stale_add.as_str(), stale_py, fresh.as_str()] {
        std::fs::write(inbox.join(n), b"partial").unwrap();
    }
    for n in [stale_add.as_str(), stale_py] {
        let ok = std::process::Command::new("touch")
            .args(["-d", "2 hours ago"])
            .arg(inbox.join(n))
            .status()
            .unwrap();
        assert!(ok.success());
    }
    d.spawn();
    let status = ok(&d, &["status", "--json"]);
    let s: serde_json::Value = serde_json::from_str(&status).unwrap();
    let problems = s["problems"].as_array().unwrap();
    let about = |n: &str| {
        problems.iter().any(|p| {
            p["path"].as_str().unwrap().ends_with(n)
                && p["message"]
                    .as_str()
                    .unwrap()
                    .contains("stale hand-over temporary")
        })
    };
    assert!(about(&stale_add), "{status}");
    assert!(about(stale_py), "{status}");
    assert!(!about(&fresh), "{status}");
}
