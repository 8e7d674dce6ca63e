//! Extraction against damaged and awkward real files, on the real binary: a GGUF cut
//! inside its last tensor's data or claiming more parameters than it holds, cut headers
//! that must say they are cut (and where), Trainer results holding Python's NaN and
//! Infinity, trainer_state.json's best metric named (or not made a metric), the
//! safetensors `__metadata__` limit, and `show`'s rendering of ONNX inputs and outputs.
//! The files are made by their own libraries (tests/common/extract.rs).

mod common;

use std::path::Path;

use common::extract::*;
use common::*;
use serde_json::json;

/// The offset of the u64 after `name`'s tensor description's n_dims in a GGUF file
/// written by the gguf library (`name` as a u64 length and its bytes, then a u32 n_dims
/// of 1): that tensor's first dimension.
fn gguf_first_dim(b: &[u8], name: &str) -> usize {
    let mut pat = (name.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(name.as_bytes());
    pat.extend_from_slice(&1u32.to_le_bytes());
    b.windows(pat.len())
        .position(|w| w == pat)
        .expect("the tensor's description")
        + pat.len()
}

#[test]
fn a_gguf_cut_inside_its_last_tensor_or_claiming_more_than_it_holds_is_unreadable() {
    let d = TestDaemon::start("settle: 200ms\n");
    let src = outside(&d);
    if make_real_files(&src).is_none() {
        return;
    }
    let full = std::fs::read(src.join("gg.gguf")).unwrap();
    // The library writes w (4x8 F32, 128 bytes) then v (3 F16, 6 bytes), each padded to
    // 32 bytes: cutting 30 bytes leaves v's start within the file but not its end.
    let cut = &full[..full.len() - 30];
    // v's dimension fuzzed to 2^40: 1.1T parameters claimed by a file of 448 bytes.
    let mut fuzzed = full.clone();
    let at = gguf_first_dim(&full, "v");
    fuzzed[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    write_renamed(&d.inbox(), "cutdata.gguf", cut);
    write_renamed(&d.inbox(), "fuzzed.gguf", &fuzzed);
    let e = extracted(&d, "cutdata");
    let said = e["unreadable"].as_str().unwrap_or_default();
    assert!(
        said.starts_with("truncated: tensor \"v\" ends at byte ")
            && said.ends_with(&format!("file has {} bytes", cut.len())),
        "{e}"
    );
    assert!(e.get("parameters").is_none(), "{e}");
    let e = extracted(&d, "fuzzed");
    let said = e["unreadable"].as_str().unwrap_or_default();
    assert!(said.starts_with("truncated: tensor \"v\""), "{e}");
    // The whole file is still read as it is.
    drop_in(&d, &src, "gg.gguf");
    assert_eq!(extracted(&d, "gg")["parameters"], 32 + 3);
}

#[test]
fn cut_headers_say_they_are_cut_where_and_reading_what() {
    let d = TestDaemon::start("settle: 200ms\n");
    let src = outside(&d);
    if make_real_files(&src).is_none() {
        return;
    }
    let head = |f: &str, n: usize| std::fs::read(src.join(f)).unwrap()[..n].to_vec();
    let cases = [
        // 24 bytes of counts, then the first key cut: not "claims 5 keys".
        (
            "cutkeys.gguf",
            head("gg.gguf", 40),
            "truncated: 20 more bytes needed at offset 32 but the file is 40 bytes (reading key 1 of 5)",
        ),
        (
            "cutlen.safetensors",
            head("st.safetensors", 5),
            "truncated: 8 more bytes needed at offset 0 but the file is 5 bytes (reading the header length)",
        ),
    ];
    for (name, bytes, _) in &cases {
        write_renamed(&d.inbox(), name, bytes);
    }
    for (name, _, why) in &cases {
        let e = extracted(&d, name.split('.').next().unwrap());
        assert_eq!(e["unreadable"], *why, "{name}: {e}");
    }
    // ONNX cut inside its graph: where the graph would end, and the file's length.
    let ox = std::fs::read(src.join("ox.onnx")).unwrap();
    let n = ox.len() - 40;
    write_renamed(&d.inbox(), "cutox.onnx", &ox[..n]);
    let e = extracted(&d, "cutox");
    let said = e["unreadable"].as_str().unwrap_or_default();
    assert!(
        said.starts_with("truncated: a field of ")
            && said.ends_with(&format!("file has {n} bytes")),
        "{e}"
    );
}

/// A Trainer output folder whose results hold Python's NaN and Infinity, and whose
/// trainer_state.json names its best checkpoint but not the metric.
fn trainer_folder_with_non_finite_values(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let w = |n: &str, t: &str| std::fs::write(dir.join(n), t).unwrap();
    w("config.json", r#"{"model_type": "bert"}"#);
    // As Python's json.dump writes a diverged loss.
    w(
        "all_results.json",
        r#"{"epoch": 3.0, "eval_accuracy": 0.8, "eval_loss": NaN, "train_loss": Infinity}"#,
    );
    w(
        "eval_results.json",
        r#"{"eval_f1": 0.75, "eval_perplexity": -Infinity}"#,
    );
    w(
        "trainer_state.json",
        r#"{"best_metric": 0.35, "best_model_checkpoint": "out/checkpoint-30", "global_step": 30,
            "log_history": [{"loss": 0.5, "grad_norm": NaN, "step": 10},
                            {"eval_loss": 0.35, "eval_accuracy": 0.8, "step": 30}]}"#,
    );
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors_bytes(
            br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            8,
        ),
    )
    .unwrap();
}

#[test]
fn trainer_results_with_nan_keep_their_finite_metrics_and_name_the_best_one() {
    let d = TestDaemon::start("settle: 300ms\n");
    let src = outside(&d);
    trainer_folder_with_non_finite_values(&src.join("bert"));
    drop_in(&d, &src, "bert");
    let v = latest(&d, "bert");
    let m = serde_json::to_value(&v.metrics).unwrap();
    let s = serde_json::to_value(&v.metric_sources).unwrap();
    assert_eq!(m["eval_accuracy"], 0.8, "{m}");
    assert_eq!(m["epoch"], 3.0);
    assert_eq!(s["eval_accuracy"], "all_results.json");
    assert_eq!(m["eval_f1"], 0.75);
    assert_eq!(s["eval_f1"], "eval_results.json");
    for gone in ["eval_loss", "train_loss", "eval_perplexity", "best_metric"] {
        assert!(m.get(gone).is_none(), "{gone}: {m}");
    }
    // The best metric under the name of what it is best of: eval_loss, so `best` and
    // `diff` treat it as a loss.
    assert_eq!(m["best_eval_loss"], 0.35);
    assert_eq!(s["best_eval_loss"], "trainer_state.json");
    let e = serde_json::to_value(&v.extracted).unwrap();
    assert_eq!(
        e["metrics_left_out"],
        json!({
            "all_results.json: eval_loss": "NaN is not a finite number",
            "all_results.json: train_loss": "Infinity is not a finite number",
            "eval_results.json: eval_perplexity": "-Infinity is not a finite number",
        }),
        "{e}"
    );
    assert_eq!(e["trainer_state"]["metric_for_best_model"], "eval_loss");
    assert_eq!(
        e["trainer_state"]["best_model_checkpoint"],
        "out/checkpoint-30"
    );
    assert!(e.get("unreadable").is_none(), "{e}");
    // The log says which file and key at warn.
    let log = d.log();
    assert!(
        log.contains("WARN") && log.contains("all_results.json") && log.contains("eval_loss"),
        "{log}"
    );
}

/// 70 `__metadata__` keys, written by the safetensors library.
const MANY_KEYS: &str = r#"
import sys, os
import numpy as np
from safetensors.numpy import save_file
save_file({"a": np.zeros(2, np.float32)}, os.path.join(sys.argv[1], "meta.safetensors"),
          metadata={f"k{i:02d}": str(i) for i in range(70)})
"#;

#[test]
fn safetensors_metadata_keeps_at_most_64_entries_and_show_reads_onnx_io_as_shapes() {
    let d = TestDaemon::start("settle: 200ms\n");
    let src = outside(&d);
    if make_real_files(&src).is_none() || run_python(MANY_KEYS, &src).is_none() {
        return;
    }
    drop_in(&d, &src, "meta.safetensors");
    let e = extracted(&d, "meta");
    let meta = e["metadata"].as_object().expect("metadata");
    assert_eq!(meta.len(), 64, "{e}");
    assert_eq!(meta["…"], "7 more keys not kept");
    assert_eq!(meta["k62"], "62");

    drop_in(&d, &src, "ox.onnx");
    latest(&d, "ox");
    let out = ok(&d, &["show", "ox", "latest"]);
    let line = |key: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(key))
            .unwrap_or_else(|| panic!("no {key} line: {out}"))
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(line("inputs"), "X [N, 4] float32", "{out}");
    assert_eq!(line("outputs"), "Y [N, 3] float32", "{out}");
    assert!(!out.contains("{\"name\""), "{out}");
}
