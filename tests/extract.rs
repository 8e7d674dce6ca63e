//! What is inside each version, read at registration from its headers: safetensors,
//! GGUF and ONNX files made by their own libraries (PyPI, in a venv under target/), a
//! torch-format zip written by Python's zipfile (torch itself is too heavy to install
//! for a test; the layout is what `torch.save` writes), hostile and truncated headers
//! (unreadable, the version registered all the same, the daemon serving on), a
//! Trainer-style folder's metrics with their sources (the sidecar wins), and provenance
//! (user, host, source, mtime, the commit from a sidecar or a git checkout), for inbox
//! and hand-over versions alike.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::extract::*;
use common::*;
use serde_json::{Value, json};

#[test]
fn files_made_by_their_libraries_get_their_header_facts() {
    let d = TestDaemon::start("settle: 200ms\n");
    let src = outside(&d);
    if make_real_files(&src).is_none() {
        return;
    }
    for f in ["st.safetensors", "gg.gguf", "ox.onnx", "tz.pt"] {
        drop_in(&d, &src, f);
    }
    let st = extracted(&d, "st");
    assert_eq!(st["format"], "safetensors", "{st}");
    assert_eq!(st["tensors"], 2);
    assert_eq!(st["parameters"], 6 + 4);
    assert_eq!(st["dtypes"], json!({"F32": 1, "F16": 1}));
    assert_eq!(st["metadata"], json!({"format": "np", "note": "hi"}));

    let gg = extracted(&d, "gg");
    assert_eq!(gg["format"], "gguf", "{gg}");
    assert_eq!(gg["architecture"], "llama");
    assert_eq!(gg["context_length"], 2048);
    assert_eq!(gg["layers"], 2);
    assert_eq!(gg["parameters"], 32 + 3);
    assert_eq!(gg["quantization"], "F16");
    assert_eq!(gg["tensor_types"], json!({"F32": 1, "F16": 1}));
    assert_eq!(gg["general"]["general.name"], "tiny");

    let ox = extracted(&d, "ox");
    assert_eq!(ox["format"], "onnx", "{ox}");
    assert_eq!(ox["ir_version"], json!(onnx_ir(&ox)));
    assert_eq!(ox["opsets"]["ai.onnx"], 17);
    assert_eq!(ox["producer_name"], "modelreg-test");
    assert_eq!(ox["parameters"], 12);
    assert_eq!(ox["nodes"], 1);
    assert_eq!(
        ox["inputs"],
        json!([{"name": "X", "type": "float32", "shape": ["N", 4]}])
    );
    assert_eq!(
        ox["outputs"],
        json!([{"name": "Y", "type": "float32", "shape": ["N", 3]}])
    );
    assert_eq!(ox["metadata_props"], json!({"author": "tests"}));

    let tz = extracted(&d, "tz");
    assert_eq!(tz["format"], "pytorch_zip", "{tz}");
    assert_eq!(tz["entries"], 4);
    assert_eq!(tz["archive"], "tz");
}

/// The IR version the installed onnx writes (it moves with onnx releases): any above 3.
fn onnx_ir(ox: &Value) -> u64 {
    let v = ox["ir_version"].as_u64().expect("an ir_version");
    assert!(v > 3, "{ox}");
    v
}

/// `GGUF`, version 3, no tensors, and a key count of 2^40.
fn gguf_with_2_pow_40_keys() -> Vec<u8> {
    let mut v = b"GGUF".to_vec();
    v.extend_from_slice(&3u32.to_le_bytes());
    v.extend_from_slice(&0u64.to_le_bytes());
    v.extend_from_slice(&(1u64 << 40).to_le_bytes());
    v.extend_from_slice(&[0; 64]);
    v
}

#[test]
fn hostile_and_truncated_headers_are_unreadable_and_the_versions_still_register() {
    let d = TestDaemon::start("settle: 200ms\n");
    let src = outside(&d);
    let real = make_real_files(&src).is_some();
    let mut huge = (1u64 << 60).to_le_bytes().to_vec();
    huge.extend_from_slice(b"{\"a\":1}");
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("huge.safetensors", huge, "over the 100000000-byte limit"),
        (
            "keys.gguf",
            gguf_with_2_pow_40_keys(),
            "claims 1099511627776 keys",
        ),
    ];
    if real {
        // The real files cut short: the header intact but the data missing, or the
        // header itself cut.
        let cut = |f: &str, keep: fn(usize) -> usize| {
            let b = std::fs::read(src.join(f)).unwrap();
            b[..keep(b.len())].to_vec()
        };
        cases.push((
            "cutst.safetensors",
            cut("st.safetensors", |n| n - 10),
            "truncated",
        ));
        cases.push(("cutgg.gguf", cut("gg.gguf", |n| n / 2), "truncated"));
        cases.push(("cutox.onnx", cut("ox.onnx", |n| n / 2), "truncated"));
        cases.push(("cuttz.pt", cut("tz.pt", |n| n - 30), "truncated"));
    }
    for (name, bytes, _) in &cases {
        write_renamed(&d.inbox(), name, bytes);
    }
    for (name, _, why) in &cases {
        let model = name.split('.').next().unwrap();
        let e = extracted(&d, model);
        let said = e["unreadable"].as_str().unwrap_or_default();
        assert!(said.contains(why), "{name}: {e}");
    }
    // Still serving, and a good file after them gets its facts.
    if real {
        drop_in(&d, &src, "st.safetensors");
        assert_eq!(extracted(&d, "st")["tensors"], 2);
    }
    assert!(d.status().versions >= cases.len());
}

/// A Trainer output folder: config.json, weights, and the three results files.
fn trainer_folder(dir: &Path, accuracy: f64, weights: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let w = |n: &str, t: String| std::fs::write(dir.join(n), t).unwrap();
    w(
        "config.json",
        r#"{"model_type": "bert", "architectures": ["BertForSequenceClassification"], "torch_dtype": "float32", "hidden_size": 8}"#.into(),
    );
    w(
        "all_results.json",
        format!(r#"{{"epoch": 3.0, "eval_accuracy": {accuracy}, "train_loss": 0.41}}"#),
    );
    w(
        "eval_results.json",
        r#"{"epoch": 3.0, "eval_accuracy": 0.1, "eval_loss": 0.35}"#.into(),
    );
    w(
        "trainer_state.json",
        r#"{"best_metric": 0.35, "best_model_checkpoint": "out/checkpoint-30", "global_step": 30, "log_history": [{"loss": 0.5, "step": 10}, {"eval_loss": 0.35, "step": 30}]}"#.into(),
    );
    std::fs::copy(weights, dir.join("model.safetensors")).unwrap();
}

#[test]
fn a_trainer_folder_gets_its_metrics_with_their_sources_and_a_sidecar_metric_wins() {
    let mut d = TestDaemon::start("settle: 300ms\n");
    let src = outside(&d);
    let weights = src.join("w.safetensors");
    // Weights by the library when it can be had, else a minimal header by hand.
    if make_real_files(&src).is_some() {
        std::fs::rename(src.join("st.safetensors"), &weights).unwrap();
    } else {
        let header = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let b = safetensors_bytes(header, 8);
        std::fs::write(&weights, b).unwrap();
    }
    // First without a sidecar: every metric from the Trainer's files.
    trainer_folder(&src.join("bert"), 0.8, &weights);
    drop_in(&d, &src, "bert");
    let v1 = latest(&d, "bert");
    let m = serde_json::to_value(&v1.metrics).unwrap();
    let s = serde_json::to_value(&v1.metric_sources).unwrap();
    assert_eq!(m["eval_accuracy"], 0.8, "all_results.json first: {m}");
    assert_eq!(s["eval_accuracy"], "all_results.json");
    assert_eq!(m["eval_loss"], 0.35);
    assert_eq!(s["eval_loss"], "eval_results.json");
    // Named after the metric it is the best of (the evaluation at the best step).
    assert_eq!(m["best_eval_loss"], 0.35);
    assert_eq!(s["best_eval_loss"], "trainer_state.json");
    assert_eq!(s["train_loss"], "all_results.json");
    let e = serde_json::to_value(&v1.extracted).unwrap();
    assert_eq!(e["format"], "huggingface", "{e}");
    assert_eq!(e["config"]["model_type"], "bert");
    assert_eq!(
        e["config"]["architectures"],
        json!(["BertForSequenceClassification"])
    );
    assert_eq!(e["config"]["torch_dtype"], "float32");
    assert_eq!(e["files"]["model.safetensors"]["format"], "safetensors");

    // Then with a sidecar naming eval_accuracy: its value wins, the rest stay sourced.
    std::fs::remove_dir_all(d.inbox().join("bert")).unwrap();
    write_renamed(&d.inbox(), "bert.metrics.yaml", b"eval_accuracy: 0.93\n");
    trainer_folder(&src.join("bert"), 0.7, &weights);
    drop_in(&d, &src, "bert");
    let v2 = d.wait_versions("bert", 2).pop().unwrap();
    let m = serde_json::to_value(&v2.metrics).unwrap();
    let s = serde_json::to_value(&v2.metric_sources).unwrap();
    assert_eq!(m["eval_accuracy"], 0.93, "the sidecar wins: {m}");
    assert!(s.get("eval_accuracy").is_none(), "{s}");
    assert_eq!(s["eval_loss"], "eval_results.json");
    // An edited sidecar replaces the metrics it names; those read from the files stay.
    write_renamed(&d.inbox(), "bert.metrics.yaml", b"eval_accuracy: 0.95\n");
    let mut v = v2;
    wait_until(Duration::from_secs(30), "the edited sidecar", || {
        v = d.get("bert", "latest").unwrap();
        v.metrics.get("eval_accuracy") == Some(&0.95)
    });
    assert_eq!(v.metrics.get("eval_loss"), Some(&0.35));
    assert_eq!(
        v.metric_sources.get("eval_loss").map(String::as_str),
        Some("eval_results.json")
    );
    // registry.yaml says the same once written.
    d.stop();
    let yaml = std::fs::read_to_string(d.registry_path()).unwrap();
    assert!(yaml.contains("metric_sources:"), "{yaml}");
    assert!(yaml.contains("eval_loss: eval_results.json"), "{yaml}");
}

/// This process's user name, as the daemon resolves a file's owner.
fn me() -> String {
    // SAFETY: getuid has no preconditions.
    modelreg::users::user_name(unsafe { libc::getuid() })
}

const SHA: &str = "3b18e512dba79e4c8300dd08aeb37f8e728b8dad";

/// A git checkout's metadata at `dir`, on branch `main` at [`SHA`], as files.
fn fake_checkout(dir: &Path) {
    let git = dir.join(".git");
    std::fs::create_dir_all(git.join("refs/heads")).unwrap();
    std::fs::write(git.join("HEAD"), "ref: refs/heads/main\n").unwrap();
    std::fs::write(git.join("refs/heads/main"), format!("{SHA}\n")).unwrap();
}

#[test]
fn provenance_names_user_host_source_mtime_and_the_commit_from_git_or_the_sidecar() {
    let d = TestDaemon::start("settle: 200ms\n");
    let src = outside(&d);
    // A folder that is its own checkout.
    let folder = src.join("gitmodel");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("weights.bin"), bytes(1, 100)).unwrap();
    fake_checkout(&folder);
    drop_in(&d, &src, "gitmodel");
    let p = serde_json::to_value(&latest(&d, "gitmodel").provenance).unwrap();
    assert_eq!(p["commit"], SHA, "{p}");
    assert_eq!(p["commit_from"], "git");
    assert_eq!(p["branch"], "main");
    assert_eq!(p["user"], me());
    assert_eq!(p["via"], "inbox");
    assert!(p["host"].as_str().is_some_and(|h| !h.is_empty()), "{p}");
    assert_eq!(
        p["source"],
        d.inbox().join("gitmodel").display().to_string()
    );
    assert!(p["source_mtime"].as_str().unwrap().ends_with('Z'), "{p}");

    // A sidecar's commit and run id win over git, and are recorded.
    write_renamed(
        &d.inbox(),
        "sided.metrics.yaml",
        b"accuracy: 0.5\nmetadata: {git_commit: abc123, run_id: run-7}\n",
    );
    write_renamed(&d.inbox(), "sided.pt", &bytes(2, 100));
    let p = serde_json::to_value(&latest(&d, "sided").provenance).unwrap();
    assert_eq!(p["commit"], "abc123", "{p}");
    assert_eq!(p["commit_from"], "sidecar");
    assert_eq!(p["run_id"], "run-7");
}

#[test]
fn a_handed_over_file_gets_its_facts_and_the_commit_of_the_checkout_it_lies_in() {
    let d = TestDaemon::start("settle: 1h\n");
    let repo = outside(&d).join("repo");
    let run = repo.join("runs/1");
    std::fs::create_dir_all(&run).unwrap();
    fake_checkout(&repo);
    // A minimal safetensors file (its library is exercised above).
    let header = br#"{"x":{"dtype":"BF16","shape":[3,5],"data_offsets":[0,30]}}"#;
    let b = safetensors_bytes(header, 30);
    let file = run.join("handed.safetensors");
    std::fs::write(&file, b).unwrap();
    ok(&d, &["add", file.to_str().unwrap()]);
    let v = d.get("handed", "latest").unwrap();
    let e = serde_json::to_value(&v.extracted).unwrap();
    assert_eq!(e["parameters"], 15, "{e}");
    assert_eq!(e["dtypes"], json!({"BF16": 1}));
    let p = serde_json::to_value(&v.provenance).unwrap();
    assert_eq!(p["via"], "register", "{p}");
    assert_eq!(p["source"], file.display().to_string());
    assert_eq!(p["commit"], SHA);
    assert_eq!(p["repository"], repo.display().to_string());
    assert_eq!(p["user"], me());
    // `get --json` shows them as the answer carries them.
    let out = ok(&d, &["get", "handed", "latest", "--json"]);
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["extracted"]["parameters"], 15, "{out}");
    assert_eq!(j["provenance"]["commit"], SHA);
}

#[test]
fn extract_false_reads_no_header_but_keeps_provenance() {
    let d = TestDaemon::start("settle: 200ms\nextract: false\n");
    let header = br#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let b = safetensors_bytes(header, 8);
    write_renamed(&d.inbox(), "off.safetensors", &b);
    let v = latest(&d, "off");
    assert!(v.extracted.is_empty(), "{:?}", v.extracted);
    assert_eq!(v.provenance["user"], json!(me()));
}

#[test]
fn an_http_upload_gets_its_facts_and_names_no_user() {
    let (d, addr, token) = common::http::with_write_token(
        "settle: 200ms\nhttp:\n  listen: 127.0.0.1:0\n  max_upload: 1MiB\n",
    );
    let header = br#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    let b = safetensors_bytes(header, 16);
    let file = outside(&d).join("up.safetensors");
    std::fs::write(&file, b).unwrap();
    let out = Command::new("curl")
        .args(["-s", "-f", "-m", "60", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .args(["-H", "Content-Type: application/octet-stream", "-T"])
        .arg(&file)
        .arg(format!(
            "http://{addr}/api/v1/models/up/upload?filename=up.safetensors"
        ))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["extracted"]["parameters"], 4, "{answer}");
    let p = &answer["provenance"];
    assert_eq!(p["via"], "upload", "{p}");
    // The stored file is the daemon's own copy of the bytes sent: its owner says nothing.
    assert!(p.get("user").is_none() && p.get("source").is_none(), "{p}");
}
