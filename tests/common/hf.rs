//! Loading a Hugging Face cache view offline with the real `huggingface_hub` from PyPI
//! (pinned: [`HF_HUB`]), in a venv made once and reused: `HF_HUB_CACHE=<root>/hf
//! HF_HUB_OFFLINE=1` and `snapshot_download` or `hf_hub_download`, with no server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::{TestDaemon, bytes, sidecar, stderr, stdout, write};

/// The huggingface_hub release these tests load the view with.
pub const HF_HUB: &str = "huggingface_hub==2.4.0";

/// A venv with [`HF_HUB`] (tests/common/venv.rs), made once per test process.
pub fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| super::venv::venv(HF_HUB))
}

/// One load: `snapshot_download(name, revision)` (`file` none) or
/// `hf_hub_download(name, filename=file, revision)`; `revision` none: the client's default.
pub struct Load<'a> {
    pub name: &'a str,
    pub revision: Option<&'a str>,
    pub file: Option<&'a str>,
}

/// `snapshot_download(name, revision=revision)`.
pub fn snap<'a>(name: &'a str, revision: &'a str) -> Load<'a> {
    Load {
        name,
        revision: Some(revision),
        file: None,
    }
}

const SCRIPT: &str = r#"
import json, sys
from huggingface_hub import snapshot_download, hf_hub_download
out = []
for name, rev, file in json.loads(sys.argv[1]):
    try:
        if file is None:
            out.append({"ok": snapshot_download(name, revision=rev)})
        else:
            out.append({"ok": hf_hub_download(name, filename=file, revision=rev)})
    except Exception as e:
        out.append({"err": type(e).__name__ + ": " + str(e)})
print(json.dumps(out))
"#;

/// Runs `loads` offline against the view of `d` in one Python process: each gives the
/// path returned, or the client's error.
pub fn hf_load(d: &TestDaemon, loads: &[Load]) -> Vec<Result<PathBuf, String>> {
    let home = tempfile::tempdir().unwrap();
    let args: Vec<serde_json::Value> = loads
        .iter()
        .map(|l| serde_json::json!([l.name, l.revision, l.file]))
        .collect();
    let out = Command::new(venv().join("bin/python"))
        .arg("-c")
        .arg(SCRIPT)
        .arg(serde_json::Value::Array(args).to_string())
        .env("HF_HUB_CACHE", d.root.path().join("hf"))
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", home.path())
        .env_remove("HF_ENDPOINT")
        .env_remove("HF_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "python: {}", stderr(&out));
    let v: Vec<serde_json::Value> = serde_json::from_str(stdout(&out).trim()).unwrap();
    v.into_iter()
        .map(|r| match r.get("ok").and_then(|p| p.as_str()) {
            Some(p) => Ok(PathBuf::from(p)),
            None => Err(r["err"].as_str().unwrap_or_default().to_string()),
        })
        .collect()
}

/// Registers a version of `name` (a file `<name>.pt`) with `accuracy`.
pub fn register(d: &TestDaemon, name: &str, seed: u64, accuracy: f64, n: usize) {
    write(
        &d.inbox().join(format!("{name}.metrics.yaml")),
        sidecar(&[("accuracy", accuracy)]).as_bytes(),
    );
    write(&d.inbox().join(format!("{name}.pt")), &bytes(seed, 3000));
    d.wait_versions(name, n);
}

/// Drops a folder version `name` holding `files` (renamed into the inbox whole).
pub fn register_folder(d: &TestDaemon, name: &str, files: &[(&str, Vec<u8>)], n: usize) {
    let stage = d.root.path().join("stage").join(name);
    for (rel, b) in files {
        let p = stage.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        write(&p, b);
    }
    let _ = std::fs::remove_dir_all(d.inbox().join(name));
    std::fs::rename(&stage, d.inbox().join(name)).unwrap();
    d.wait_versions(name, n);
}
