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

/// A GGUF v3 file of no tensors whose one key is `key`, of value type `t`, with nothing
/// after it (the value cannot be read).
fn gguf_one_key(key: &[u8], t: u32) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(&t.to_le_bytes());
    b
}

#[test]
fn reasons_echo_names_clipped_and_no_extracted_text_is_over_1_kib() {
    let d = TestDaemon::start("settle: 200ms\n");
    let src = outside(&d);
    // A GGUF whose only key is a megabyte of `A`, of an unknown value type.
    write_renamed(
        &d.inbox(),
        "bigkey.gguf",
        &gguf_one_key(&vec![b'A'; 1_000_000], 999),
    );
    // A folder whose config.json is a megabyte string: serde_json's error quotes it.
    let f = src.join("bigcfg");
    std::fs::create_dir_all(&f).unwrap();
    std::fs::write(
        f.join("config.json"),
        format!("\"{}\"", "B".repeat(1 << 20)),
    )
    .unwrap();
    std::fs::write(f.join("notes.txt"), "x").unwrap();
    drop_in(&d, &src, "bigcfg");
    let e = extracted(&d, "bigkey");
    let said = e["unreadable"].as_str().unwrap_or_default();
    assert!(
        said.starts_with("unknown value type 999 (reading the value of \"AAAA")
            && said.contains("… (1000000 bytes)"),
        "{said:.300}"
    );
    assert!(said.len() <= 1024, "{} bytes: {said:.300}", said.len());
    let e = extracted(&d, "bigcfg");
    let all = e.to_string();
    assert!(all.contains("bytes)"), "{all:.300}");
    fn longest(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::String(s) => s.len(),
            serde_json::Value::Array(a) => a.iter().map(longest).max().unwrap_or(0),
            serde_json::Value::Object(m) => m
                .iter()
                .map(|(k, v)| k.len().max(longest(v)))
                .max()
                .unwrap_or(0),
            _ => 0,
        }
    }
    assert!(longest(&e) <= 1024, "{} bytes: {all:.300}", longest(&e));
    // The catalog does not grow by the megabytes.
    let catalog: u64 = std::fs::read_dir(d.registry_path().parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    assert!(
        catalog < 200_000,
        "registry.yaml, journal and log: {catalog} bytes"
    );
}

/// Asserts, with the safetensors library, that it refuses every file named in argv[2:]
/// of the folder argv[1] (a test's files are checked against the library they mimic).
const LIBRARY_REFUSES: &str = r#"
import sys, os
from safetensors import safe_open
for name in sys.argv[2:]:
    try:
        with safe_open(os.path.join(sys.argv[1], name), "np") as f:
            list(f.keys())
    except Exception:
        continue
    raise SystemExit(f"the library read {name}")
"#;

#[test]
fn safetensors_offsets_and_dtypes_are_checked_like_the_library_does() {
    let d = TestDaemon::start("settle: 200ms\n");
    let src = outside(&d);
    let overlapping: Vec<String> = (0..100)
        .map(|i| {
            format!("\"t{i:03}\":{{\"dtype\":\"F32\",\"shape\":[1000],\"data_offsets\":[0,4000]}}")
        })
        .collect();
    let cases: [(&str, Vec<u8>, &str); 5] = [
        (
            "huge",
            safetensors_bytes(
                br#"{"t":{"dtype":"F32","shape":[1000000000000],"data_offsets":[0,4]}}"#,
                4,
            ),
            "tensor \"t\": its data_offsets [0, 4] hold 4 bytes, its shape and dtype need 4000000000000",
        ),
        (
            "overlap",
            safetensors_bytes(format!("{{{}}}", overlapping.join(",")).as_bytes(), 4000),
            "tensor \"t001\": its data starts at 0, not at 4000 where the one before ends: it overlaps the one before",
        ),
        (
            "weird",
            safetensors_bytes(
                br#"{"t":{"dtype":"WEIRD","shape":[1],"data_offsets":[0,4]}}"#,
                4,
            ),
            "tensor \"t\": unknown dtype \"WEIRD\"",
        ),
        (
            "gap",
            safetensors_bytes(
                br#"{"t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                8,
            ),
            "tensor \"t\": its data starts at 4, not at 0 where the one before ends: it leaves a gap before it",
        ),
        (
            "tail",
            safetensors_bytes(
                br#"{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                12,
            ),
            "the tensors' data ends at 4 but 12 bytes follow the header (8 not covered by any tensor)",
        ),
    ];
    for (name, bytes, _) in &cases {
        std::fs::write(src.join(format!("{name}.safetensors")), bytes).unwrap();
    }
    let names: Vec<String> = cases
        .iter()
        .map(|(n, ..)| format!("{n}.safetensors"))
        .collect();
    let script = format!("import sys\nsys.argv += {:?}\n{LIBRARY_REFUSES}", names);
    let have_library = run_python(&script, &src).is_some();
    for (name, ..) in &cases {
        drop_in(&d, &src, &format!("{name}.safetensors"));
    }
    for (name, _, why) in &cases {
        let e = extracted(&d, name);
        let said = e["unreadable"].as_str().unwrap_or_default();
        assert!(said.starts_with(why), "{name}: {e}");
        assert!(e.get("parameters").is_none(), "{name}: {e}");
    }
    // The library's own files still read, sub-byte dtypes' sizes included.
    if have_library && make_real_files(&src).is_some() {
        drop_in(&d, &src, "st.safetensors");
        assert_eq!(extracted(&d, "st")["parameters"], 6 + 4);
    }
}

#[test]
fn trainer_keys_left_out_are_all_recorded_and_out_of_range_costs_only_its_key() {
    let d = TestDaemon::start("settle: 300ms\n");
    let src = outside(&d);
    let dir = src.join("many");
    std::fs::create_dir_all(&dir).unwrap();
    let mut all: Vec<String> = (0..300).map(|i| format!("\"m{i:03}\": {i}")).collect();
    all.push(format!("\"{}\": 1", "k".repeat(200)));
    all.push("\"\": 2".into());
    all.push("\"a\\u0001b\": 3".into());
    all.push("\"eval_loss\": 0.3".into());
    all.push("\"ok\": 0.25".into());
    all.push("\"perplexity\": 1e999".into());
    std::fs::write(
        dir.join("all_results.json"),
        format!("{{{}}}", all.join(", ")),
    )
    .unwrap();
    // Python's json writes a diverged loss as NaN: all_results.json gave it already.
    std::fs::write(dir.join("eval_results.json"), r#"{"eval_loss": NaN}"#).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
    drop_in(&d, &src, "many");
    let v = latest(&d, "many");
    let m = serde_json::to_value(&v.metrics).unwrap();
    assert_eq!(m.as_object().unwrap().len(), 256, "{m}");
    assert_eq!(m["eval_loss"], 0.3, "{m}");
    assert!(m.get("perplexity").is_none(), "{m}");
    let e = serde_json::to_value(&v.extracted).unwrap();
    assert!(e.get("unreadable").is_none(), "{e}");
    let left = &e["metrics_left_out"];
    let want = json!({
        "all_results.json: … over the limit": "46 more metrics over the 256-metric limit of one file",
        "all_results.json: \"\"": "not a metric name: an empty name",
        "all_results.json: \"a\\u{1}b\"": "not a metric name: a name with control characters",
        "all_results.json: perplexity": "1e999 is out of the range of a 64-bit number",
        "eval_results.json: eval_loss": "NaN is not a finite number; the metric was taken from all_results.json",
    });
    for (k, why) in want.as_object().unwrap() {
        assert_eq!(&left[k], why, "{k}: {left}");
    }
    let long = left
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.starts_with("all_results.json: \"kkk"))
        .unwrap_or_else(|| panic!("{left}"));
    assert_eq!(
        long.1,
        "not a metric name: a name of 200 bytes (at most 128)"
    );
    assert!(long.0.len() < 100, "{}", long.0);
    let log = d.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("perplexity")),
        "{log}"
    );
    // With `ok` kept, the file was read: one out-of-range number did not cost it.
    let small = src.join("small");
    std::fs::create_dir_all(&small).unwrap();
    std::fs::write(
        small.join("all_results.json"),
        r#"{"ok": 0.25, "perplexity": 1e999}"#,
    )
    .unwrap();
    std::fs::write(small.join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
    drop_in(&d, &src, "small");
    let v = latest(&d, "small");
    assert_eq!(
        serde_json::to_value(&v.metrics).unwrap(),
        json!({"ok": 0.25})
    );
}
