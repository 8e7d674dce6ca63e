//! The rules a file handed over by descriptor (`register`) follows, the same as for a file
//! dropped into the inbox: who may, what identical bytes do to metrics, an empty file,
//! the sidecar's checks on metrics and metadata, a stop during the copy, and how `status`
//! shows the copy.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// A settle period no test waits out: a version that appears came by the hand-over.
const NO_SETTLE: &str = "settle: 1h\n";

/// Sends the `register` line `line` with `file`'s descriptor attached; the answer.
fn register_raw(d: &TestDaemon, line: &str, file: &std::fs::File) -> serde_json::Value {
    send_raw(&d.socket(), line, &[file.as_raw_fd()])
}

/// Python as uid/gid 65534 with the supplementary groups `groups` ("" for none): runs
/// `code` with `SOCK` and `SRC` set.
fn python_as_nobody(d: &TestDaemon, groups: &str, src: &Path, code: &str) -> std::process::Output {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534"]);
    if groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        c.arg(format!("--groups={groups}"));
    }
    // The system's Python: another user may not reach root's own (pyenv under /root).
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| !p.starts_with('/') || Path::new(p).exists())
        .unwrap();
    c.args([python, "-c", code])
        .env("SOCK", d.socket())
        .env("SRC", src)
        .env(
            "PYTHONPATH",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python"),
        )
        .output()
        .unwrap()
}

/// Hands a sparse file of 4 GiB over as `filename` of model `name` on a thread (no time
/// to write it, seconds for the daemon to copy and hash), and waits until `status` shows
/// its copy under way: that entry, and the thread answering the `register`.
fn register_big_in_background(
    d: &TestDaemon,
    name: &str,
    filename: &str,
) -> (
    modelreg::protocol::Waiting,
    std::thread::JoinHandle<Result<modelreg::protocol::Waited, modelreg::client::ClientError>>,
) {
    let src = d.root.path().join(filename);
    std::fs::File::create(&src)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    let (socket, model, stored) = (d.socket(), name.to_string(), filename.to_string());
    let client = std::thread::spawn(move || {
        let f = std::fs::File::open(&src).unwrap();
        modelreg::client::Client::connect(&socket)
            .unwrap()
            .register(&model, &stored, &f, None, None)
    });
    let mut seen = None;
    wait_until(
        Duration::from_secs(60),
        "the copy under way in status",
        || {
            seen = d
                .status()
                .waiting
                .into_iter()
                .find(|w| w.name == name && w.bytes_done.unwrap_or(0) > 0);
            seen.is_some()
        },
    );
    (seen.unwrap(), client)
}

/// The CLI as uid/gid 65534 with the supplementary groups `groups` (none when empty).
fn cli_as_nobody(d: &TestDaemon, groups: &str, args: &[&str]) -> std::process::Output {
    let groups = match groups {
        "" => "--clear-groups".to_string(),
        g => format!("--groups={g}"),
    };
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", &groups, BIN, "--socket"])
        .arg(d.socket())
        .args(args)
        .output()
        .unwrap()
}

/// A raw `register` of SRC as model `m`, with a metric: prints the answer line.
const RAW_REGISTER: &str = r#"
import json, os, socket
s = socket.socket(socket.AF_UNIX)
s.connect(os.environ["SOCK"])
fd = os.open(os.environ["SRC"], os.O_RDONLY)
line = json.dumps({"op": "register", "name": "m", "filename": "m.pt", "metrics": {"acc": 0.1}}) + "\n"
socket.send_fds(s, [line.encode()], [fd])
print(s.makefile().readline(), end="")
"#;

#[test]
fn register_is_refused_to_a_user_who_may_neither_change_the_registry_nor_write_the_inbox() {
    if !can_switch_user(
        "register_is_refused_to_a_user_who_may_neither_change_the_registry_nor_write_the_inbox",
    ) {
        return;
    }
    let d = TestDaemon::start(NO_SETTLE);
    let v1 = d.root.path().join("v1.pt");
    write(&v1, &bytes(1, 3000));
    ok(
        &d,
        &[
            "add",
            "--name",
            "m",
            v1.to_str().unwrap(),
            "--metric",
            "acc=0.9",
        ],
    );
    // Everyone reaches the socket; the inbox is writable by group 4242 only.
    let open = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
    open(d.root.path(), 0o755).unwrap();
    open(&d.socket(), 0o666).unwrap();
    let st = Command::new("chown")
        .arg("0:4242")
        .arg(d.inbox())
        .status()
        .unwrap();
    assert!(st.success());
    open(&d.inbox(), 0o2770).unwrap();
    // A file nobody can read, in a folder nobody can reach.
    let public = tempfile::tempdir().unwrap();
    open(public.path(), 0o755).unwrap();
    let src = public.path().join("new.pt");
    write(&src, &bytes(2, 4000));
    open(&src, 0o644).unwrap();

    // Not in the inbox's group: refused, by name, and nothing changed.
    let out = python_as_nobody(&d, "", &src, RAW_REGISTER);
    assert!(out.status.success(), "{}", stderr(&out));
    let answer: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let (code, message) = error_of(&answer);
    assert_eq!(code, "permission_denied", "{message}");
    assert!(
        message.starts_with("register adds versions: only uid 0")
            && message.contains("may write the inbox")
            && message.contains("uid 65534"),
        "{message}"
    );
    let versions = d.versions("m");
    assert_eq!(versions.len(), 1);
    assert_eq!(
        versions[0].metrics["acc"], 0.9,
        "latest's metrics untouched"
    );

    // The clients then try the inbox, where the file system refuses them too.
    let out = cli_as_nobody(&d, "", &["add", "--name", "m", src.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(d.inbox().to_str().unwrap()), "{err}");
    let out = python_as_nobody(
        &d,
        "",
        &src,
        "import os\nfrom modelreg import ModelRegistry\ntry:\n    ModelRegistry(socket=os.environ['SOCK']).register('m', os.environ['SRC'], progress=False)\nexcept PermissionError as e:\n    print(type(e).__name__, e)\n",
    );
    let text = stdout(&out);
    // A PermissionError (PermissionDenied) saying what was tried, not the temporary's path.
    assert!(
        text.starts_with("PermissionDenied") && text.contains("refused the hand-over"),
        "{text}{}",
        stderr(&out)
    );
    assert_eq!(d.versions("m").len(), 1);

    // A member of the inbox's group may drop the file there: it may hand it over too.
    let out = python_as_nobody(&d, "4242", &src, RAW_REGISTER);
    let answer: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["result"]["version"]["version"], "v2", "{answer}");
    // ... but still may not change what is registered.
    let out = cli_as_nobody(&d, "4242", &["alias", "set", "m", "production", "v1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("only uid 0"), "{}", stderr(&out));
}

#[test]
fn identical_bytes_with_metadata_only_keep_the_metrics_as_an_edited_sidecar_does() {
    let d = TestDaemon::start("settle: 200ms\n");
    let src = d.root.path().join("r.pt");
    write(&src, &bytes(3, 2000));
    let path = src.to_str().unwrap();
    ok(
        &d,
        &["add", path, "--metric", "acc=0.9", "--meta", "dataset=a"],
    );

    // By hand-over: the same bytes with metadata only.
    let out = ok(&d, &["add", path, "--meta", "notes=again"]);
    assert!(out.contains("no new version; metrics updated"), "{out}");
    let v = d.get("r", "latest").unwrap();
    assert_eq!(v.version, "v1");
    assert_eq!(
        v.metrics["acc"], 0.9,
        "metadata alone must not erase metrics"
    );
    assert_eq!(v.metadata["notes"], "again");
    assert!(
        !v.metadata.contains_key("dataset"),
        "metadata given replaces metadata"
    );
    // New metrics replace the metrics, the old ones kept with the time.
    ok(&d, &["add", path, "--metric", "acc=0.95"]);
    let v = d.get("r", "latest").unwrap();
    assert_eq!(v.metrics["acc"], 0.95);
    assert_eq!(v.metadata["notes"], "again", "metadata not given is kept");
    let history = &d.catalog().models["r"].versions[0].metrics_history;
    assert_eq!(history.last().unwrap().metrics["acc"], 0.9);

    // By the inbox: the same bytes with an edited sidecar holding metadata only get the
    // very same treatment.
    std::fs::write(d.inbox().join("r.metrics.yaml"), "notes: by the inbox\n").unwrap();
    write_renamed(&d.inbox(), "r.pt", &bytes(3, 2000));
    wait_until(Duration::from_secs(30), "the sidecar applied to v1", || {
        d.get("r", "latest")
            .is_ok_and(|v| v.metadata.get("notes") == Some(&"by the inbox".into()))
    });
    let v = d.get("r", "latest").unwrap();
    assert_eq!(v.version, "v1");
    assert_eq!(d.versions("r").len(), 1, "never a duplicate");
    assert_eq!(v.metrics["acc"], 0.95, "the sidecar path keeps metrics too");
}

#[test]
fn an_empty_file_handed_over_is_refused_and_never_becomes_a_version() {
    let d = TestDaemon::start(NO_SETTLE);
    let src = d.root.path().join("empty.pt");
    write(&src, b"");
    let err = fails(&d, &["add", src.to_str().unwrap()]);
    assert!(
        err.contains("empty.pt is empty (0 bytes): an empty file never becomes a version"),
        "{err}"
    );
    let file = std::fs::File::open(&src).unwrap();
    let answer = register_raw(
        &d,
        r#"{"op":"register","name":"empty","filename":"empty.pt"}"#,
        &file,
    );
    let (code, message) = error_of(&answer);
    assert_eq!(code, "unusable_file", "{message}");
    assert!(!d.catalog().models.contains_key("empty"));
    assert!(!d.root.path().join("models/empty").exists());
}

#[test]
fn register_metrics_and_metadata_get_the_sidecar_checks_on_the_text_as_sent() {
    let d = TestDaemon::start("settle: 200ms\n");
    let src = d.root.path().join("x.pt");
    write(&src, &bytes(4, 1000));
    let file = std::fs::File::open(&src).unwrap();
    let refused = |maps: &str| {
        let line = format!(r#"{{"op":"register","name":"x","filename":"x.pt",{maps}}}"#);
        let (code, message) = error_of(&register_raw(&d, &line, &file));
        assert_eq!(code, "blocked", "{maps}: {message}");
        message
    };
    // 2**64: a parsed request holds it as a float; the text says what it was.
    let m = refused(r#""metrics":{"loss":18446744073709551616}"#);
    assert!(m.contains("`18446744073709551616` is out of range"), "{m}");
    let m = refused(r#""metadata":{"seed":-9223372036854775809}"#);
    assert!(m.contains("out of range"), "{m}");
    let m = refused(r#""metadata":{"dataset":5}"#);
    assert!(m.contains("`dataset` must be a string"), "{m}");
    let m = refused(r#""metadata":{"tags":"baseline"}"#);
    assert!(m.contains("`tags` must be a list of strings"), "{m}");
    let m = refused(r#""metadata":{"tags":["a",1]}"#);
    assert!(m.contains("`tags` must be a list of strings"), "{m}");
    assert!(!d.catalog().models.contains_key("x"), "nothing registered");
    // What is accepted is what a sidecar may hold.
    let answer = register_raw(
        &d,
        r#"{"op":"register","name":"x","filename":"x.pt","metrics":{"n":18446744073709551615},"metadata":{"dataset":"d","tags":["a"],"notes":null}}"#,
        &file,
    );
    assert_eq!(answer["ok"], true, "{answer}");

    // The sidecar in the inbox is refused for the same type, in the same words.
    std::fs::write(d.inbox().join("y.metrics.yaml"), "dataset: 5\n").unwrap();
    write_renamed(&d.inbox(), "y.pt", &bytes(5, 100));
    let p = d.wait_problem_text("`dataset` must be a string");
    assert!(p.contains("y.metrics.yaml:1"), "{p}");
}

#[test]
fn a_stop_during_the_copy_answers_shutting_down_and_leaves_nothing_after_restart() {
    let mut d = TestDaemon::start(NO_SETTLE);
    let (_, client) = register_big_in_background(&d, "big", "big.pt");
    assert!(d.stop().success());
    let e = client.join().unwrap().expect_err("registered at shutdown");
    let code = e.code().map(|c| serde_json::to_value(c).unwrap());
    assert_eq!(code, Some("shutting_down".into()), "{e}");
    assert!(
        e.to_string()
            .starts_with("the daemon is stopping: the copy of")
            && e.to_string().contains("nothing of it was kept"),
        "the client is told why: {e}"
    );
    d.spawn();
    assert!(!d.catalog().models.contains_key("big"));
    assert!(!d.root.path().join("models/big").exists());
    let staging: Vec<_> = std::fs::read_dir(d.root.path().join("models/.staging"))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(staging.is_empty(), "staging holds {staging:?}");
    let out = d.cli(&["verify"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_handover_being_copied_shows_in_status_by_its_file_name_and_age() {
    let d = TestDaemon::start(NO_SETTLE);
    let (w, _client) = register_big_in_background(&d, "huge", "huge.bin");
    assert_eq!(w.entries, vec!["huge.bin".to_string()], "{w:?}");
    assert_eq!(w.state, "registering");
    assert!(w.since_secs > 0.0, "since when it was accepted: {w:?}");
    assert_eq!(w.bytes_total, Some(4 << 30));
    let out = d.cli(&["status"]);
    assert!(stdout(&out).contains("huge [huge.bin]"), "{}", stdout(&out));
}
