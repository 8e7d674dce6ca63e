//! Registering a complete file by handing its open descriptor over on the socket
//! (`register`, SCM_RIGHTS): no settle wait, no permission on the path needed by the
//! daemon, and every refusal (not a regular file, written during the copy, bad metrics,
//! no descriptor) clear, with nothing kept.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;
use modelreg::protocol::ErrorCode;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A settle period no test waits out: a version that appears came by the hand-over.
const NO_SETTLE: &str = "settle: 1h\n";

/// Nothing half-registered: no version folder and no staging folder left.
fn assert_nothing_kept(d: &TestDaemon, name: &str) {
    assert!(!d.catalog().models.contains_key(name), "{name} registered");
    let staging = d.root.path().join("models/.staging");
    let left: Vec<_> = std::fs::read_dir(&staging)
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "staging holds {left:?}");
    assert!(!d.root.path().join("models").join(name).join("v1").exists());
}

fn python(d: &TestDaemon, code: &str) -> std::process::Output {
    Command::new("python3")
        .arg("-c")
        .arg(code)
        .env("PYTHONPATH", Path::new(REPO).join("clients/python"))
        .env("MODELREG_SOCKET", d.socket())
        .output()
        .expect("python3 is installed")
}

#[test]
fn add_registers_a_file_at_once_and_identical_bytes_make_no_new_version() {
    let d = TestDaemon::start(NO_SETTLE);
    let src = d.root.path().join("out/resnet.pt");
    std::fs::create_dir_all(src.parent().unwrap()).unwrap();
    write(&src, &bytes(1, 100_000));
    let out = ok(
        &d,
        &[
            "add",
            src.to_str().unwrap(),
            "--metric",
            "accuracy=0.7",
            "--meta",
            "dataset=imagenet",
        ],
    );
    let stored = d.root.path().join("models/resnet/v1/resnet.pt");
    assert!(
        out.contains(&format!("resnet v1  {}", stored.display())),
        "{out}"
    );
    assert_eq!(std::fs::read(&stored).unwrap(), bytes(1, 100_000));
    let v = d.get("resnet", "v1").unwrap();
    assert_eq!(v.metrics["accuracy"], 0.7);
    assert_eq!(v.metadata["dataset"], "imagenet");
    // Nothing went through the inbox.
    assert_eq!(std::fs::read_dir(d.inbox()).unwrap().count(), 0);

    // The same bytes again: the same version, said so; new bytes: v2, and --json is
    // the `wait` answer.
    let out = ok(&d, &["add", src.to_str().unwrap()]);
    assert!(out.contains("identical to the newest version"), "{out}");
    assert_eq!(d.versions("resnet").len(), 1);
    write(&src, &bytes(2, 5000));
    let out = ok(
        &d,
        &[
            "add",
            "--json",
            "--wait",
            "--timeout",
            "10",
            src.to_str().unwrap(),
        ],
    );
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["created"], true, "{out}");
    assert_eq!(j["version"]["version"], "v2", "{out}");
    assert_eq!(
        d.catalog().models["resnet"].versions[1].source,
        "handover:resnet.pt"
    );
}

#[test]
fn python_register_hands_a_file_over() {
    let d = TestDaemon::start(NO_SETTLE);
    let src = d.root.path().join("bert.bin");
    write(&src, &bytes(3, 4096));
    let out = python(
        &d,
        &format!(
            r#"
from modelreg import ModelRegistry
r = ModelRegistry()
v = r.register("bert", {src:?}, metrics={{"f1": 0.5}}, dataset="squad", lr=0.1, progress=False)
print(v.version, v.created, v.metrics["f1"], v.metadata["dataset"], v.metadata["lr"])
v = r.register("bert", {src:?}, progress=False)
print(v.version, v.created)
"#,
            src = src.to_str().unwrap()
        ),
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert_eq!(text, "v1 True 0.5 squad 0.1\nv1 False\n");
    assert_eq!(
        std::fs::read(d.root.path().join("models/bert/v1/bert.bin")).unwrap(),
        bytes(3, 4096)
    );
}

#[test]
fn a_file_the_daemon_cannot_open_by_path_is_registered_from_its_descriptor() {
    if !can_switch_user("a_file_the_daemon_cannot_open_by_path_is_registered_from_its_descriptor") {
        return;
    }
    let mut d = TestDaemon::new(NO_SETTLE);
    d.give_to_nobody();
    d.spawn_as_nobody();
    // Root's own file, 0600, in a 0700 folder: nobody cannot open it by its path.
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let src = private.path().join("secret.pt");
    write(&src, &bytes(4, 70_000));
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o600)).unwrap();
    let by_path = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(&src)
        .output()
        .unwrap();
    assert!(!by_path.status.success(), "nobody could read it by path");

    ok(&d, &["add", src.to_str().unwrap()]);
    let stored = d.root.path().join("models/secret/v1/secret.pt");
    assert_eq!(std::fs::read(&stored).unwrap(), bytes(4, 70_000));
    // The stored copy is no more readable than the source was.
    let mode = std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o400);

    let src2 = private.path().join("secret2.pt");
    write(&src2, &bytes(5, 1000));
    std::fs::set_permissions(&src2, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = python(
        &d,
        &format!(
            "from modelreg import ModelRegistry\nv = ModelRegistry().register('secret', {:?}, progress=False)\nprint(v.version, v.created)",
            src2.to_str().unwrap()
        ),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "v2 True\n");
}

#[test]
fn a_fifo_a_folder_or_a_write_only_descriptor_is_refused() {
    let d = TestDaemon::start(NO_SETTLE);
    let req = r#"{"op":"register","name":"m","filename":"m.pt"}"#;
    let fifo = d.root.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_nonblock()
        .open(&fifo)
        .unwrap();
    let (code, message) = error_of(&send_raw(&d.socket(), req, &[f.as_raw_fd()]));
    assert_eq!(code, "unusable_file");
    assert_eq!(
        message,
        "the descriptor handed over for m.pt: is a FIFO (pipe), not a regular file; only a complete regular file can be handed over"
    );
    let dir = std::fs::File::open(d.root.path()).unwrap();
    let (code, message) = error_of(&send_raw(&d.socket(), req, &[dir.as_raw_fd()]));
    assert_eq!(code, "unusable_file");
    assert!(
        message.contains("is a folder, not a regular file"),
        "{message}"
    );
    let file = d.root.path().join("w.pt");
    write(&file, b"abc");
    let w = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    let (code, message) = error_of(&send_raw(&d.socket(), req, &[w.as_raw_fd()]));
    assert_eq!(code, "unusable_file");
    assert!(message.contains("not open for reading"), "{message}");
    assert_nothing_kept(&d, "m");
    // The daemon keeps serving.
    d.client().ping().unwrap();
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    /// Opening a FIFO for reading would wait for a writer.
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK)
    }
}

#[test]
fn a_file_written_during_the_copy_is_refused_and_nothing_is_kept() {
    let d = TestDaemon::start(NO_SETTLE);
    let src = d.root.path().join("busy.pt");
    // Sparse, 1 GiB: seconds for the daemon to copy. The writer opens it only once the
    // copy is under way: a writer holding it open when it is handed over is refused
    // before the copy (the lease probe), which is not what this test is about.
    std::fs::File::create(&src)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let file = std::fs::File::open(&src).unwrap();
    let socket = d.socket();
    let client = std::thread::spawn(move || {
        modelreg::client::Client::connect(&socket)
            .unwrap()
            .register("busy", "busy.pt", &file, None, None)
    });
    wait_until(
        std::time::Duration::from_secs(60),
        "the copy under way in status",
        || d.status().waiting.iter().any(|w| w.name == "busy"),
    );
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
        f.write_at(&[1], 0).unwrap();
    }
    let r = client.join().unwrap();
    let e = r.expect_err("registered a file written during its copy");
    assert_eq!(e.code(), Some(ErrorCode::SourceChanged));
    assert_eq!(
        e.to_string(),
        "the file handed over as busy.pt changed while copying; nothing kept"
    );
    assert_nothing_kept(&d, "busy");
}

#[test]
fn invalid_metrics_are_refused_with_the_sidecar_wording() {
    let d = TestDaemon::start(NO_SETTLE);
    let src = d.root.path().join("m.pt");
    write(&src, b"weights");
    let file = std::fs::File::open(&src).unwrap();
    let metrics = serde_json::json!({"accuracy": "high"});
    let e = d
        .client()
        .register("m", "m.pt", &file, metrics.as_object().cloned(), None)
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Blocked));
    // The same sentence a sidecar with that metric gets.
    assert_eq!(
        e.to_string(),
        "the metrics of register m: metric \"accuracy\" is \"high\", not a finite number; text and lists go under `metadata:`; nothing was registered"
    );
    // The sidecar's limits hold too: metadata nested deeper than a sidecar may be.
    let mut deep = serde_json::json!(1);
    for _ in 0..40 {
        deep = serde_json::json!({ "a": deep });
    }
    let e = d
        .client()
        .register("m", "m.pt", &file, None, deep.as_object().cloned())
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Blocked), "{e}");
    assert!(e.to_string().contains("deeper than"), "{e}");
    assert_nothing_kept(&d, "m");
    // A refused file name.
    let e = d
        .client()
        .register("m", ".hidden", &file, None, None)
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidName));
}

#[test]
fn register_needs_exactly_one_descriptor_and_other_requests_none() {
    let d = TestDaemon::start(NO_SETTLE);
    let req = r#"{"op":"register","name":"m","filename":"m.pt"}"#;
    let (code, message) = error_of(&send_raw(&d.socket(), req, &[]));
    assert_eq!(code, "bad_request");
    assert!(
        message.starts_with("register needs the file's open descriptor sent with the request line"),
        "{message}"
    );
    let src = d.root.path().join("m.pt");
    write(&src, b"abc");
    let f = std::fs::File::open(&src).unwrap();
    let (code, message) = error_of(&send_raw(&d.socket(), req, &[f.as_raw_fd(), f.as_raw_fd()]));
    assert_eq!(code, "bad_request");
    assert_eq!(
        message,
        "register carries exactly one file descriptor; 2 were sent (all closed)"
    );
    let (code, message) = error_of(&send_raw(&d.socket(), r#"{"op":"list"}"#, &[f.as_raw_fd()]));
    assert_eq!(code, "bad_request");
    assert_eq!(
        message,
        "list carries no file descriptor; the one(s) sent with it were closed"
    );
    assert_nothing_kept(&d, "m");
    // One descriptor: registered.
    let answer = send_raw(&d.socket(), req, &[f.as_raw_fd()]);
    assert_eq!(answer["result"]["version"]["version"], "v1", "{answer}");
    // A received descriptor is close-on-exec and none is left open in the daemon.
    let fds: Vec<_> = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|p| p == &src)
        .collect();
    assert!(fds.is_empty(), "the daemon still holds {fds:?}");
}

#[test]
fn bytes_stored_under_an_older_version_are_hard_linked_not_copied_again() {
    use std::os::unix::fs::MetadataExt;
    let d = TestDaemon::start(NO_SETTLE);
    let (a, b) = (d.root.path().join("a.pt"), d.root.path().join("b.pt"));
    write(&a, &bytes(7, 50_000));
    write(&b, &bytes(8, 50_000));
    for (src, version) in [(&a, "v1"), (&b, "v2"), (&a, "v3")] {
        let out = ok(&d, &["add", "--name", "dd", src.to_str().unwrap()]);
        assert!(out.starts_with(&format!("dd {version}  ")), "{out}");
    }
    let ino = |v: &str| {
        std::fs::metadata(d.root.path().join(format!("models/dd/{v}/dd.pt")))
            .unwrap()
            .ino()
    };
    assert_eq!(ino("v3"), ino("v1"));
    assert_ne!(ino("v2"), ino("v1"));
    assert_eq!(d.status().dedup_saved_bytes, 50_000);
}

#[test]
fn metadata_too_large_for_a_request_line_goes_through_the_inbox() {
    let d = TestDaemon::quick();
    let src = d.root.path().join("big_meta.pt");
    write(&src, &bytes(9, 1000));
    // Two values of 40,000 bytes: within a sidecar's limits, beyond one request line.
    let (a, b) = (
        format!("a={}", "n".repeat(40_000)),
        format!("b={}", "m".repeat(40_000)),
    );
    let path = src.to_str().unwrap();
    let out = ok(
        &d,
        &[
            "add",
            path,
            "--meta",
            &a,
            "--meta",
            &b,
            "--wait",
            "--timeout",
            "60",
        ],
    );
    assert!(
        out.starts_with("big_meta v1  "),
        "{}",
        &out[..out.len().min(200)]
    );
    let v = &d.catalog().models["big_meta"].versions[0];
    assert_eq!(v.source, "pretrained_models/big_meta.pt");
    assert_eq!(v.metadata["b"].as_str().unwrap().len(), 40_000);
}
