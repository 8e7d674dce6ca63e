//! Issue 7: the Python client's own tests (unittest, against a real daemon they start),
//! and the README's Python snippet, verbatim, from a fresh venv after
//! `pip install ./clients/python`, in the root the README's walkthrough leaves. Part of
//! `cargo test` so that one command runs all.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn python_client_unittests_pass() {
    let tests = Path::new(REPO).join("clients/python/tests");
    let text = common::tools::python_unittest(&["discover", "-v", "-s", tests.to_str().unwrap()]);
    assert!(text.contains("OK"), "{text}");
}

#[test]
fn readme_python_snippet_runs_in_a_fresh_venv() {
    let readme = std::fs::read_to_string(Path::new(REPO).join("README.md")).unwrap();
    let block = readme
        .split("<!-- python -->")
        .nth(1)
        .and_then(|s| s.split("<!-- /python -->").next())
        .expect("README has a python block");
    let snippet = block
        .trim()
        .trim_start_matches("```python")
        .trim_end_matches("```");

    let venv = tempfile::tempdir().unwrap();
    let ok = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(venv.path())
        .status()
        .unwrap();
    assert!(ok.success(), "python3 -m venv");
    let pip = venv.path().join("bin/pip");
    // As the README says; without access to PyPI, the venv's own setuptools builds it.
    let installed = Command::new(&pip)
        .args(["install", "-q"])
        .arg(Path::new(REPO).join("clients/python"))
        .status()
        .unwrap();
    if !installed.success() {
        let st = Command::new(&pip)
            .args(["install", "-q", "--no-build-isolation", "--no-index"])
            .arg(Path::new(REPO).join("clients/python"))
            .status()
            .unwrap();
        assert!(st.success(), "pip install ./clients/python");
    }

    // Where the README says to run it: the root of the daemon, after the walkthrough
    // (pasted verbatim, on the default settings, as tests/foundation.rs does).
    let d = TestDaemon::start("");
    std::fs::remove_file(d.root.path().join("config/modelreg.yaml")).unwrap();
    let walkthrough = readme
        .split("<!-- walkthrough -->")
        .nth(1)
        .and_then(|s| s.split("<!-- /walkthrough -->").next())
        .expect("README has a walkthrough block")
        .trim()
        .trim_start_matches("```sh")
        .trim_end_matches("```");
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let walked = Command::new("bash")
        .arg("-euc")
        .arg(walkthrough)
        .current_dir(d.root.path())
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(
        walked.status.success(),
        "walkthrough: {}",
        String::from_utf8_lossy(&walked.stderr)
    );
    assert_eq!(d.versions("resnet18").len(), 2);

    let out = Command::new(venv.path().join("bin/python"))
        .arg("-c")
        .arg(snippet)
        .current_dir(d.root.path())
        .env_remove("MODELREG_SOCKET")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // v3, with accuracy 0.73: also the best now.
    let stored = d.root.path().join("models/resnet18/v3/resnet18.pt");
    assert!(
        stdout.contains(&format!("v3 {}\n{}\n", stored.display(), stored.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains("['chest_xray_densenet', 'resnet18']"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(&stored).unwrap(),
        std::fs::read(d.root.path().join("out/resnet18.pt")).unwrap()
    );
    assert_eq!(d.get("resnet18", "v3").unwrap().metrics["accuracy"], 0.73);
    assert_eq!(d.get("resnet18", "best").unwrap().version, "v3");
}
