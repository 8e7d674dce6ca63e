//! What `modelreg add` and the Python client's `register()` refuse before anything is
//! sent or copied (a file still being written, metadata over a sidecar limit, an integer
//! beyond 64 bits, an empty folder), how they name a model given through a link, and
//! what they say when the hand-over is cut off or refused.

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;

use common::*;

/// A settle period no test waits out: a version that appears came by the hand-over.
const NO_SETTLE: &str = "settle: 1h\n";

/// Runs `code` in Python with the client importable and `SOCK` set.
fn python(d: &TestDaemon, code: &str) -> std::process::Output {
    Command::new("python3")
        .args(["-c", code])
        .env("SOCK", d.socket())
        .env(
            "PYTHONPATH",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python"),
        )
        .current_dir(d.root.path())
        .output()
        .unwrap()
}

#[test]
fn add_refuses_a_file_a_writer_still_has_open() {
    let d = TestDaemon::start(NO_SETTLE);
    let src = d.root.path().join("growing.pt");
    let mut w = std::fs::File::create(&src).unwrap();
    w.write_all(&bytes(1, 1000)).unwrap();
    let err = fails(&d, &["add", src.to_str().unwrap()]);
    assert!(
        err.contains("still open for writing by another process") && err.contains("growing.pt"),
        "{err}"
    );
    assert!(d.versions("growing").is_empty());
    assert!(
        inbox_names(&d).is_empty(),
        "nothing copied: {:?}",
        inbox_names(&d)
    );
    // Once the writer closes it, it is added whole.
    w.write_all(&bytes(2, 1000)).unwrap();
    drop(w);
    ok(&d, &["add", src.to_str().unwrap()]);
    assert_eq!(d.versions("growing")[0].size, 2000);
}

#[test]
fn a_descriptor_handed_over_while_a_writer_has_the_file_open_is_refused() {
    let d = TestDaemon::start(NO_SETTLE);
    let src = d.root.path().join("w.pt");
    let mut w = std::fs::File::create(&src).unwrap();
    w.write_all(b"partial").unwrap();
    let r = std::fs::File::open(&src).unwrap();
    let line = r#"{"op":"register","name":"w","filename":"w.pt"}"#;
    let answer = send_raw(&d.socket(), line, &[r.as_raw_fd()]);
    assert_eq!(answer["error"]["code"], "source_changed", "{answer}");
    let msg = answer["error"]["message"].as_str().unwrap();
    assert!(msg.contains("still open for writing"), "{msg}");
    assert!(d.versions("w").is_empty());
}

#[test]
fn python_register_refuses_a_file_it_still_has_open_for_writing() {
    let d = TestDaemon::start(NO_SETTLE);
    let o = python(
        &d,
        "import os, modelreg\n\
         r = modelreg.ModelRegistry(socket=os.environ['SOCK'])\n\
         f = open('held.pt', 'wb'); f.write(b'x' * 100); f.flush()\n\
         try:\n    r.register('held', 'held.pt'); print('REGISTERED')\n\
         except Exception as e:\n    print(type(e).__name__, e)\n",
    );
    let out = stdout(&o);
    assert!(
        out.contains("still open for writing"),
        "{out}{}",
        stderr(&o)
    );
    assert!(d.versions("held").is_empty());
}

#[test]
fn add_refuses_metadata_over_a_sidecar_limit_before_copying() {
    let d = TestDaemon::start(NO_SETTLE);
    let src = d.root.path().join("m.pt");
    write(&src, &bytes(3, 100));
    let notes = format!("notes={}", "x".repeat(70_000));
    let err = fails(&d, &["add", src.to_str().unwrap(), "--meta", &notes]);
    assert!(
        err.contains("--meta \"notes\"") && err.contains("at most 65536"),
        "{err}"
    );
    assert!(
        inbox_names(&d).is_empty(),
        "nothing placed: {:?}",
        inbox_names(&d)
    );
    assert!(d.status().waiting.is_empty());
}

#[test]
fn integers_beyond_64_bits_are_refused_as_metrics_by_the_cli_and_python() {
    let d = TestDaemon::start(NO_SETTLE);
    let src = d.root.path().join("big.pt");
    write(&src, &bytes(4, 100));
    let err = fails(
        &d,
        &[
            "add",
            src.to_str().unwrap(),
            "--metric",
            "acc=18446744073709551616",
        ],
    );
    assert!(err.contains("\"acc\"") && err.contains("64 bits"), "{err}");
    // The largest that fits, a negative one and floats are still taken.
    ok(
        &d,
        &[
            "add",
            src.to_str().unwrap(),
            "--metric",
            "acc=18446744073709551615",
            "--metric",
            "loss=-3",
            "--metric",
            "lr=1e-3",
        ],
    );
    let o = python(
        &d,
        "import os, modelreg\n\
         r = modelreg.ModelRegistry(socket=os.environ['SOCK'])\n\
         try:\n    r.register('py', 'big.pt', metrics={'acc': 2**70}); print('REGISTERED')\n\
         except ValueError as e:\n    print('ValueError', e)\n",
    );
    let out = stdout(&o);
    assert!(
        out.starts_with("ValueError") && out.contains("'acc'") && out.contains("64 bits"),
        "{out}{}",
        stderr(&o)
    );
    assert!(d.versions("py").is_empty());
}

#[test]
fn add_refuses_a_folder_with_no_file() {
    let d = TestDaemon::start(NO_SETTLE);
    let dir = d.root.path().join("empty-model");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    write(&dir.join(".hidden"), b"x");
    let err = fails(&d, &["add", dir.to_str().unwrap()]);
    assert!(err.contains("holds no file"), "{err}");
    assert!(
        inbox_names(&d).is_empty(),
        "nothing placed: {:?}",
        inbox_names(&d)
    );
}

#[test]
fn add_names_a_link_by_the_path_given_not_its_target() {
    let d = TestDaemon::start(NO_SETTLE);
    let real = d.root.path().join("real.pt");
    write(&real, &bytes(5, 100));
    let link = d.root.path().join("ln.pt");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let out = ok(&d, &["add", link.to_str().unwrap()]);
    assert!(out.starts_with("ln v1"), "{out}");
    assert!(d.versions("real").is_empty());
}

/// A daemon holding `tok` v1 (`bytes(7)`) and v2 (`bytes(8)`), both added by hand-over
/// (256 KiB, more than dedup's three samples); the source file of v1's bytes.
fn daemon_with_two_versions() -> (TestDaemon, std::path::PathBuf) {
    let d = TestDaemon::start(NO_SETTLE);
    let src = d.root.path().join("tok.bin");
    for seed in [8, 7] {
        write(&src, &bytes(seed, 256 * 1024));
        ok(&d, &["add", src.to_str().unwrap()]);
    }
    (d, src)
}

#[test]
fn a_hand_over_deduplicated_against_a_stored_file_is_logged_like_an_inbox_version() {
    let (d, src) = daemon_with_two_versions();
    write(&src, &bytes(8, 256 * 1024));
    let out = ok(&d, &["add", src.to_str().unwrap()]);
    assert!(out.starts_with("tok v3"), "{out}");
    let log = d.log();
    assert!(
        log.contains("tok v3: 1 of 1 file(s) already stored, hard-linked (256.0 KiB saved)"),
        "{log}"
    );
}

#[test]
fn the_problem_for_a_damaged_stored_file_names_its_model_version_and_file() {
    use std::os::unix::fs::FileExt;
    let (d, src) = daemon_with_two_versions();
    let v1 = d.root.path().join("models/tok/v1/tok.bin");
    // One byte changed in place past the samples, as a disk fault would (as root).
    let f = std::fs::OpenOptions::new().write(true).open(&v1).unwrap();
    f.write_all_at(&[!bytes(8, 256 * 1024)[100_000]], 100_000)
        .unwrap();
    drop(f);
    write(&src, &bytes(8, 256 * 1024));
    ok(&d, &["add", src.to_str().unwrap()]);
    let problems = d.status().problems;
    let p = problems
        .iter()
        .find(|p| p.message.contains("damaged"))
        .unwrap_or_else(|| panic!("{problems:?}"));
    assert!(
        p.message.contains("tok v1 tok.bin") && p.message.contains(&v1.display().to_string()),
        "{}",
        p.message
    );
}

#[test]
fn add_cut_off_by_the_daemon_says_the_version_may_or_may_not_exist() {
    let mut d = TestDaemon::start(NO_SETTLE);
    // Sparse: no time to write, seconds for the daemon to copy and hash.
    let src = d.root.path().join("huge.bin");
    std::fs::File::create(&src)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    let child = Command::new(BIN)
        .arg("--socket")
        .arg(d.socket())
        .args(["add", src.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(
        std::time::Duration::from_secs(60),
        "the copy under way in status",
        || d.status().waiting.iter().any(|w| w.name == "huge"),
    );
    d.kill();
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("huge may or may not have been registered")
            && err.contains("modelreg versions huge"),
        "{err}"
    );
}

#[test]
fn python_register_refused_the_hand_over_and_the_inbox_says_both() {
    let test = "python_register_refused_the_hand_over_and_the_inbox_says_both";
    if !can_switch_user(test) {
        return;
    }
    let d = TestDaemon::start(NO_SETTLE);
    let (_public, src) = socket_open_inbox_closed(&d);
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["/usr/bin/python3", "-c"])
        .arg(
            "import os, modelreg\n\
             try:\n    modelreg.ModelRegistry(socket=os.environ['SOCK']).register('m', os.environ['SRC'], progress=False)\n\
             except PermissionError as e:\n    print(type(e).__name__, e)\n",
        )
        .env("SOCK", d.socket())
        .env("SRC", &src)
        .env(
            "PYTHONPATH",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python"),
        )
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(
        out.starts_with("PermissionDenied")
            && out.contains("refused the hand-over")
            && out.contains(&format!(
                "the inbox {} is not writable by this user",
                d.inbox().display()
            ))
            && !out.contains("/.m."),
        "{out}{}",
        stderr(&o)
    );
    assert!(d.versions("m").is_empty());
}
