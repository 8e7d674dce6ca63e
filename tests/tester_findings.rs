//! What a fresh-clone tester found: `add` refuses what the daemon would block before
//! copying anything, writes its metrics under the sidecar name already in the inbox and
//! says when only the metrics changed, two sidecars of one model block it with a problem,
//! and a store file system that is full is a problem `status` and `wait` report.

mod common;

use common::*;
use modelreg::protocol::{ErrorCode, Request};

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
    assert!(inbox_names(&d).is_empty(), "{:?}", inbox_names(&d));
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

    let add_with_metric = || {
        ok(
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
        )
    };
    let out = add_with_metric();
    assert!(out.contains("metrics updated"), "{out}");
    assert!(
        !d.inbox().join("js.metrics.yaml").exists(),
        "{:?}",
        inbox_names(&d)
    );
    let v = d.versions("js");
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].metrics["accuracy"], 0.9);

    // The same metrics again: nothing changed, and the answer does not claim it.
    let out = add_with_metric();
    assert!(out.contains("no new version"), "{out}");
    assert!(!out.contains("metrics updated"), "{out}");
}

/// A tmpfs of `mb` MiB mounted on a new folder, unmounted when dropped; `None` (with the
/// reason printed) when this process may not mount (not root, no tmpfs).
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(mb: u32, test: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallFs { dir }),
            Ok(o) => {
                eprintln!(
                    "skipping {test}: cannot mount a tmpfs (needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipping {test}: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_store_file_system_is_refused_by_add_and_reported_by_status_and_wait() {
    let Some(fs) = SmallFs::mount(20, "a_full_store_file_system") else {
        return;
    };
    // Declared after the mount: stopped before it is unmounted.
    let mut d = TestDaemon::new_in(fs.dir.path(), "settle: 300ms\n");
    d.spawn();
    d.wait_ready();
    let elsewhere = tempfile::tempdir().unwrap();
    // A folder goes through the inbox (a file is handed over on the socket, straight
    // into the store).
    let big = elsewhere.path().join("big");
    std::fs::create_dir(&big).unwrap();
    std::fs::write(big.join("w.bin"), bytes(9, 12 << 20)).unwrap();

    // The inbox alone has room, but the store on the same file system needs a second copy.
    let err = fails(&d, &["add", big.to_str().unwrap(), "--wait"]);
    assert!(
        err.contains("same file system") && err.contains("nothing was copied"),
        "{err}"
    );
    assert!(inbox_names(&d).is_empty(), "{:?}", inbox_names(&d));

    // Handed over anyway (as a writer that does not check would): the copy into the
    // store fails for want of space, which `status` shows as a problem on the store...
    write_renamed(&d.inbox(), "big.bin", &bytes(9, 12 << 20));
    let store = d.status().store.expect("status names the store");
    let line = d.wait_problem_text("full");
    assert!(line.contains(&store), "{line}");
    assert!(line.contains("free"), "{line}");
    // ... and `wait` answers with rather than waiting out its timeout.
    let e = d
        .call(&Request::Wait {
            name: "big".into(),
            entry: "big.bin".into(),
            timeout_ms: Some(120_000),
        })
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Blocked), "{e}");
    assert!(e.to_string().contains("full"), "{e}");

    // Room again: the next copy succeeds and the problem is gone.
    std::fs::remove_file(d.inbox().join("big.bin")).unwrap();
    write_renamed(&d.inbox(), "small.pt", &bytes(3, 1000));
    d.wait_versions("small", 1);
    wait_until(
        std::time::Duration::from_secs(30),
        "the problem to clear",
        || !d.problems_text().contains("full"),
    );
    d.stop();
}

#[test]
fn a_sidecar_saved_again_unchanged_is_logged_as_read_again_not_as_metrics_updated() {
    let d = TestDaemon::quick();
    let inbox = d.inbox();
    write_renamed(&inbox, "m.metrics.yaml", b"accuracy: 0.5\n");
    write_renamed(&inbox, "m.pt", &bytes(7, 64));
    d.wait_versions("m", 1);
    // The same values again (a training script saving its sidecar once more).
    write_renamed(&inbox, "m.metrics.yaml", b"# saved again\naccuracy: 0.5\n");
    wait_until(
        std::time::Duration::from_secs(20),
        "the sidecar read again",
        || {
            d.log()
                .contains("read again: the same metrics and metadata")
        },
    );
    let log = d.log();
    assert!(!log.contains("metrics updated from"), "{log}");
    let v = d.get("m", "v1").unwrap();
    assert_eq!(v.metrics_updated_at, None, "{v:?}");
    // A real change is still said as one.
    write_renamed(&inbox, "m.metrics.yaml", b"accuracy: 0.6\n");
    wait_until(
        std::time::Duration::from_secs(20),
        "the metrics updated",
        || d.get("m", "v1").unwrap().metrics["accuracy"] == 0.6,
    );
    assert!(d.log().contains("metrics updated from"), "{}", d.log());
}
