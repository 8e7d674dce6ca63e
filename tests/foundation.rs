//! Issue 2, end to end: the real binary in a temporary root, files dropped the way
//! users drop them, answers read from the real socket, registry.yaml and models/.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::*;
use modelreg::protocol::{ErrorCode, Request};

/// The README's story: resnet18 0.71 -> v1, retrained 0.69 -> v2, densenet -> v1;
/// latest is v2, best is v1.
#[test]
fn readme_story_registers_versions_latest_and_best() {
    let d = TestDaemon::quick();
    let inbox = d.inbox();
    let v1 = bytes(1, 200_000);
    let v2 = bytes(2, 200_000);
    write(
        &inbox.join("resnet18.metrics.yaml"),
        b"metrics:\n  accuracy: 0.71\ndataset: imagenet-1k\n",
    );
    write(&inbox.join("resnet18.pt"), &v1);
    d.wait_versions("resnet18", 1);

    write(
        &inbox.join("resnet18.metrics.yaml"),
        b"metrics:\n  accuracy: 0.69\ndataset: imagenet-1k\n",
    );
    write(&inbox.join("resnet18.pt"), &v2);
    write(&inbox.join("chest_xray_densenet.pth"), &bytes(3, 50_000));
    let vs = d.wait_versions("resnet18", 2);
    d.wait_versions("chest_xray_densenet", 1);
    assert_eq!(vs.len(), 2);
    assert_eq!(vs[0].metrics["accuracy"], 0.71);
    assert_eq!(vs[1].metrics["accuracy"], 0.69);
    assert_eq!(vs[0].metadata["dataset"], "imagenet-1k");

    let latest = d.get("resnet18", "latest").unwrap();
    assert_eq!(latest.version, "v2");
    let best = d.get("resnet18", "best").unwrap();
    assert_eq!(best.version, "v1");
    let root = d.root.path();
    assert_eq!(
        Path::new(&best.path),
        root.join("models/resnet18/v1/resnet18.pt")
    );
    assert_eq!(
        std::fs::read(&best.path).unwrap(),
        v1,
        "v1 is intact after v2"
    );
    assert_eq!(std::fs::read(&latest.path).unwrap(), v2);
    let mode = std::fs::metadata(&best.path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o444, "stored files are read-only");
    assert_eq!(
        d.get("chest_xray_densenet", "latest").unwrap().version,
        "v1"
    );

    // The CLI, the way scripts use it.
    let out = d.cli(&["get", "resnet18", "best", "--path"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), best.path);
    let out = d.cli(&["list"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("resnet18") && text.contains("v2") && text.contains("chest_xray_densenet"),
        "{text}"
    );
    let out = d.cli(&["get", "resnet18", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], "v2");

    // registry.yaml agrees, and the source files were never touched.
    let c = d.catalog();
    let m = &c.models["resnet18"];
    assert_eq!(m.versions.len(), 2);
    assert_eq!(
        m.versions[0].files[0].path,
        "models/resnet18/v1/resnet18.pt"
    );
    assert_eq!(
        m.versions[0].files[0].sha256,
        modelreg::store::sha256_hex(&v1)
    );
    assert_eq!(std::fs::read(inbox.join("resnet18.pt")).unwrap(), v2);
}

/// A file written in place in 5 chunks over 2 s becomes exactly one version, of the
/// final bytes.
#[test]
fn slow_writer_makes_one_version() {
    let d = TestDaemon::start("settle: 1s\n");
    let data = bytes(7, 5 * 64 * 1024);
    let path = d.inbox().join("slow.pt");
    let mut f = std::fs::File::create(&path).unwrap();
    for chunk in data.chunks(64 * 1024) {
        f.write_all(chunk).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(f);
    let vs = d.wait_versions("slow", 1);
    assert_eq!(std::fs::read(&vs[0].path).unwrap(), data);
    d.wait_seen("slow.pt");
    assert_eq!(d.versions("slow").len(), 1, "exactly one version");
}

/// Identical bytes written again make no new version; changed bytes make the next one.
#[test]
fn identical_bytes_make_no_new_version() {
    let d = TestDaemon::quick();
    let p = d.inbox().join("m.pt");
    write(&p, b"same bytes");
    d.wait_versions("m", 1);
    // Rewrite the same content: new mtime, same bytes.
    std::thread::sleep(Duration::from_millis(20));
    write(&p, b"same bytes");
    d.wait_seen("m.pt");
    assert_eq!(d.versions("m").len(), 1);
    write(&p, b"new bytes");
    let vs = d.wait_versions("m", 2);
    assert_eq!(vs[1].version, "v2");
    assert_eq!(std::fs::read(&vs[1].path).unwrap(), b"new bytes");
}

/// A file renamed into the inbox is registered; rsync's `.name.XXXXXX` never is.
#[test]
fn renamed_into_place_registers_and_rsync_temporaries_never() {
    let d = TestDaemon::quick();
    let outside = d.root.path().join("outside.pt");
    write(&outside, b"from elsewhere");
    std::fs::rename(&outside, d.inbox().join("moved.pt")).unwrap();
    d.wait_versions("moved", 1);

    // A temporary that stays: ignored for good.
    write(&d.inbox().join(".stuck.pt.Ab12Cd"), b"partial");
    // A temporary renamed into place: registered once, under its final name.
    write_renamed(&d.inbox(), "synced.pt", &bytes(5, 10_000));
    d.wait_versions("synced", 1);
    d.wait_seen("synced.pt");
    let c = d.catalog();
    let names: Vec<&String> = c.models.keys().collect();
    assert_eq!(
        names,
        ["moved", "synced"],
        "temporaries never become models"
    );
    assert!(!c.sources.keys().any(|k| k.starts_with('.')));
}

/// Stopped daemon, two files added, started again: both registered, nothing renumbered.
#[test]
fn restart_registers_what_arrived_meanwhile() {
    let mut d = TestDaemon::quick();
    write(&d.inbox().join("a.pt"), b"a1");
    d.wait_versions("a", 1);
    assert!(d.stop().success());
    write(&d.inbox().join("b.pt"), b"b1");
    write(&d.inbox().join("c.onnx"), b"c1");
    d.spawn();
    d.wait_versions("b", 1);
    d.wait_versions("c", 1);
    d.wait_seen("a.pt");
    let a = d.versions("a");
    assert_eq!(a.len(), 1, "a was not registered again");
    assert_eq!(a[0].version, "v1");
    assert_eq!(d.versions("b")[0].version, "v1");
}

/// SIGTERM: exit 0, socket removed, registry.yaml parses and lists everything.
#[test]
fn sigterm_exits_zero_removes_socket_and_keeps_registry() {
    let mut d = TestDaemon::quick();
    for i in 0..3 {
        write(&d.inbox().join(format!("m{i}.pt")), &bytes(i, 1000));
    }
    for i in 0..3 {
        d.wait_versions(&format!("m{i}"), 1);
    }
    let status = d.stop();
    assert!(status.success(), "exit status {status}");
    assert!(!d.socket().exists(), "socket removed");
    let c = d.catalog();
    assert_eq!(c.models.len(), 3);
    assert!(d.log().contains("stopped"));
}

/// Malformed and oversized requests get error answers while another client is served.
#[test]
fn malformed_and_oversized_requests_get_error_answers() {
    let d = TestDaemon::quick();
    let mut good = d.client();
    let mut bad = UnixStream::connect(d.socket()).unwrap();
    let mut bad_reader = BufReader::new(bad.try_clone().unwrap());
    let mut answer = String::new();

    bad.write_all(b"this is not json\n").unwrap();
    bad_reader.read_line(&mut answer).unwrap();
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["code"], "bad_request");

    answer.clear();
    bad.write_all(b"{\"op\":\"fly\",\"id\":9}\n").unwrap();
    bad_reader.read_line(&mut answer).unwrap();
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["error"]["code"], "unknown_op");
    assert_eq!(v["id"], 9);

    // The good client is served in between.
    assert!(good.call(&Request::list()).is_ok());

    // 1 MiB on one line: refused, connection closed.
    let big = vec![b'x'; 1 << 20];
    let _ = bad.write_all(&big);
    answer.clear();
    bad_reader.read_line(&mut answer).unwrap();
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["error"]["code"], "too_large");

    assert!(good.call(&Request::Ping {}).is_ok());
    let e = good
        .call(&Request::Get {
            name: "../etc".into(),
            selector: None,
            metric: None,
            mode: None,
        })
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidName));
    assert!(
        d.client().call(&Request::Status {}).is_ok(),
        "daemon still serving"
    );
}

/// An invalid sidecar is reported by status (file, line, reason); its artifact waits
/// and is registered, with the metrics, once the sidecar is fixed.
#[test]
fn invalid_sidecar_holds_its_artifact_until_fixed() {
    let d = TestDaemon::quick();
    let side = d.inbox().join("r.metrics.yaml");
    write(&side, b"metrics:\n  accuracy: 0.9\n  loss: high\n");
    write(&d.inbox().join("r.pt"), b"weights");
    let mut problem = String::new();
    wait_until(
        Duration::from_secs(20),
        "the sidecar problem in status",
        || {
            let s = d.status();
            match s
                .problems
                .iter()
                .find(|p| p.path.ends_with("r.metrics.yaml"))
            {
                Some(p) => {
                    problem = p.message.clone();
                    true
                }
                None => false,
            }
        },
    );
    assert!(
        problem.contains("r.metrics.yaml:3"),
        "names file and line: {problem}"
    );
    assert!(
        problem.contains("finite number"),
        "gives the reason: {problem}"
    );
    let s = d.status();
    assert!(
        s.waiting
            .iter()
            .any(|w| w.name == "r" && w.state == "blocked"),
        "{:?}",
        s.waiting
    );
    assert!(d.versions("r").is_empty(), "artifact waits for its sidecar");
    let out = d.cli(&["status"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("r.metrics.yaml:3"));

    write(&side, b"metrics:\n  accuracy: 0.9\n  loss: 0.2\n");
    let vs = d.wait_versions("r", 1);
    assert_eq!(vs[0].metrics["loss"], 0.2);
    wait_until(Duration::from_secs(10), "the problem to clear", || {
        d.status().problems.is_empty()
    });
}

/// A later edit of the sidecar alone updates the latest version's metrics (with the
/// time recorded) and makes no new version; a stale sidecar lends nothing to a new one.
#[test]
fn sidecar_edit_updates_metrics_and_stale_sidecar_is_not_reused() {
    let d = TestDaemon::quick();
    let side = d.inbox().join("s.metrics.yaml");
    write(&side, sidecar(&[("accuracy", 0.5)]).as_bytes());
    write(&d.inbox().join("s.pt"), b"one");
    d.wait_versions("s", 1);
    write(&side, sidecar(&[("accuracy", 0.6)]).as_bytes());
    wait_until(Duration::from_secs(20), "the metrics update", || {
        d.get("s", "v1").unwrap().metrics.get("accuracy") == Some(&0.6)
    });
    let v1 = d.get("s", "v1").unwrap();
    assert!(v1.metrics_updated_at.is_some());
    assert_eq!(d.versions("s").len(), 1);
    assert_eq!(
        d.catalog().models["s"].versions[0].metrics_history[0].metrics["accuracy"],
        0.5
    );

    // New weights, sidecar untouched: v2 gets no metrics from the stale sidecar.
    write(&d.inbox().join("s.pt"), b"two");
    let vs = d.wait_versions("s", 2);
    assert!(
        vs[1].metrics.is_empty(),
        "stale sidecar not applied: {:?}",
        vs[1].metrics
    );
    assert_eq!(d.get("s", "best").unwrap().version, "v1");
}

/// `best` follows the rules: direction by metric name or request, ties to the newer,
/// versions without the metric skipped, a clear error when none has it.
#[test]
fn best_follows_direction_ties_and_missing_metric_rules() {
    let d = TestDaemon::quick();
    let inbox = d.inbox();
    for (i, (acc, loss)) in [(0.8, 0.3), (0.9, 0.5), (0.9, 0.2)].iter().enumerate() {
        write(
            &inbox.join("b.metrics.yaml"),
            sidecar(&[("accuracy", *acc), ("val_loss", *loss)]).as_bytes(),
        );
        write(&inbox.join("b.pt"), &bytes(i as u64 + 10, 100));
        d.wait_versions("b", i + 1);
    }
    let get = |metric: Option<&str>, mode| {
        d.client()
            .call_as::<modelreg::protocol::VersionInfo>(&Request::Get {
                name: "b".into(),
                selector: Some("best".into()),
                metric: metric.map(str::to_string),
                mode,
            })
    };
    assert_eq!(
        get(None, None).unwrap().version,
        "v3",
        "tie on accuracy goes to the newer"
    );
    assert_eq!(
        get(Some("val_loss"), None).unwrap().version,
        "v3",
        "val_loss is minimised"
    );
    assert_eq!(
        get(Some("val_loss"), Some(modelreg::config::Direction::Max))
            .unwrap()
            .version,
        "v2"
    );
    let e = get(Some("f1"), None).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NoMetric));
    assert!(
        e.to_string().contains("\"f1\"") && e.to_string().contains("\"b\""),
        "{e}"
    );
    let out = d.cli(&[
        "get", "b", "best", "--metric", "val_loss", "--max", "--path",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .ends_with("v2/b.pt")
    );

    for (sel, code) in [
        ("v9", ErrorCode::VersionNotFound),
        ("v0", ErrorCode::InvalidSelector),
        // A name that could be an alias, but is not one of this model's.
        ("newest", ErrorCode::AliasNotFound),
        ("../v1", ErrorCode::InvalidSelector),
    ] {
        assert_eq!(d.get("b", sel).unwrap_err().code(), Some(code), "{sel}");
    }
    assert_eq!(
        d.get("nope", "latest").unwrap_err().code(),
        Some(ErrorCode::ModelNotFound)
    );
}

/// `get` never hands out a path to a stored file that is gone.
#[test]
fn get_refuses_a_stored_file_that_is_gone() {
    let d = TestDaemon::quick();
    write(&d.inbox().join("g.pt"), b"x");
    let v = d.wait_versions("g", 1);
    std::fs::remove_file(&v[0].path).unwrap();
    let e = d.get("g", "v1").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::FileMissing));
    assert!(e.to_string().contains(&v[0].path), "{e}");
}

/// With no daemon listening, the CLI says so, says how to start one, and exits non-zero.
#[test]
fn cli_without_daemon_says_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .arg("--root")
        .arg(dir.path())
        .arg("list")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no modelreg daemon is listening"), "{err}");
    assert!(err.contains("modelreg serve"), "{err}");
}

/// A registry.yaml that does not parse: the daemon refuses to start, names line and
/// column, and leaves the file byte-identical.
#[test]
fn unparsable_registry_refuses_start_and_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let reg = dir.path().join("registry.yaml");
    let text = b"format: 1\nmodels:\n  m: [oops\n";
    std::fs::write(&reg, text).unwrap();
    let out = std::process::Command::new(BIN)
        .arg("serve")
        .arg("--root")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:", reg.display())), "{err}");
    assert!(
        err.contains(":4:") || err.contains(":3:"),
        "names the line: {err}"
    );
    assert_eq!(std::fs::read(&reg).unwrap(), text);
}

/// Hidden, temporary and unsafe names never become versions; unsafe ones are reported.
#[test]
fn hidden_temporary_and_unsafe_names_never_become_versions() {
    let d = TestDaemon::quick();
    for n in [
        "x.pt.part",
        "x.pt.tmp",
        "x.pt~",
        ".x.pt.swp",
        ".hidden.pt",
        "y.crdownload",
    ] {
        write(&d.inbox().join(n), b"temp");
    }
    write(&d.inbox().join("-rf.pt"), b"dash");
    wait_until(
        Duration::from_secs(10),
        "the refused name in status",
        || {
            d.status()
                .problems
                .iter()
                .any(|p| p.path.ends_with("-rf.pt"))
        },
    );
    write(&d.inbox().join("ok.pt"), b"fine");
    d.wait_versions("ok", 1);
    std::thread::sleep(Duration::from_millis(600));
    let c = d.catalog();
    assert_eq!(c.models.keys().collect::<Vec<_>>(), ["ok"]);
}

/// The README's walkthrough, pasted verbatim into a shell at the root of a running
/// daemon (on the default settings), tells the story it promises.
#[test]
fn readme_walkthrough_runs_verbatim() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme
        .split("<!-- walkthrough -->")
        .nth(1)
        .and_then(|s| s.split("<!-- /walkthrough -->").next())
        .expect("README has a walkthrough block");
    let script = block
        .trim()
        .trim_start_matches("```sh")
        .trim_end_matches("```");
    let d = TestDaemon::start("");
    std::fs::remove_file(d.root.path().join("config/modelreg.yaml")).unwrap();
    let bin_dir = Path::new(BIN).parent().unwrap();
    let out = std::process::Command::new("bash")
        .arg("-euc")
        .arg(script)
        .current_dir(d.root.path())
        .env(
            "PATH",
            format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "walkthrough failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("resnet18 v2\n"), "latest is v2: {stdout}");
    assert!(stdout.contains("resnet18 v1\n"), "best is v1: {stdout}");
    assert!(stdout.contains("best by:     accuracy (max)"), "{stdout}");
    let v1 = d.root.path().join("models/resnet18/v1/resnet18.pt");
    assert!(
        stdout.lines().any(|l| l == v1.display().to_string()),
        "--path prints v1: {stdout}"
    );
    assert!(stdout.contains("chest_xray_densenet"), "{stdout}");
    assert_eq!(d.versions("resnet18").len(), 2);
    // Promotion and rollback.
    assert!(
        stdout.contains("resnet18: production rolled back v2 -> v1"),
        "{stdout}"
    );
    assert_eq!(d.get("resnet18", "production").unwrap().version, "v1");
    assert!(
        stdout.contains("production -> v1") && stdout.contains("rollback"),
        "history: {stdout}"
    );
    assert!(
        stdout.contains("production -> v1") && stdout.contains("latest -> v2"),
        "ls -l shows the links: {stdout}"
    );
}
