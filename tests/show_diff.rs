//! `modelreg show` (a version's model card) and `modelreg diff` (what changed between two
//! versions) on versions the real daemon registered from files and sidecars dropped into
//! its inbox: the exact text (not a terminal, so no colour), colour when forced or on a
//! terminal (unless NO_COLOR), the `--json` shapes, the same text over `--url`, and the
//! errors for a model or version that does not exist.

mod common;

use common::*;
use serde_json::{Value, json};

/// A folder the way a training script leaves it: built aside, then moved in whole.
fn build_folder(d: &TestDaemon, files: &[(&str, &[u8])]) -> std::path::PathBuf {
    let dir = d.root.path().join("build").join("bert");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, content) in files {
        write(&dir.join(name), content);
    }
    dir
}

/// Drops version `n` of the folder model `bert`: its sidecar, then the folder renamed in
/// place of the previous one (moved out first, so the inbox never holds a half folder).
fn drop_bert(d: &TestDaemon, n: usize, sidecar: &str, files: &[(&str, &[u8])]) {
    let dir = build_folder(d, files);
    let inbox = d.inbox();
    if inbox.join("bert").exists() {
        let old = d.root.path().join(format!("old-bert-{n}"));
        std::fs::rename(inbox.join("bert"), old).unwrap();
    }
    write_renamed(&inbox, "bert.metrics.yaml", sidecar.as_bytes());
    std::fs::rename(dir, inbox.join("bert")).unwrap();
    d.wait_versions("bert", n);
}

/// Registers bert v1 and v2. v2 rewrites model.safetensors, keeps config.json, adds
/// tokenizer.json and drops vocab.txt; accuracy rises, eval_loss rises (worse), bleu is
/// gone and rouge new; one metadata key is added, one removed and one changed.
fn two_bert_versions(d: &TestDaemon) {
    let config: &[u8] = b"{\"model_type\": \"bert\"}";
    let (w1, w2) = (bytes(1, 3000), bytes(2, 3500));
    let v1: &[(&str, &[u8])] = &[
        ("config.json", config),
        ("model.safetensors", &w1),
        ("vocab.txt", b"a\nb\n"),
    ];
    let v2: &[(&str, &[u8])] = &[
        ("config.json", config),
        ("model.safetensors", &w2),
        ("tokenizer.json", b"{}"),
    ];
    let sidecars = [
        "metrics:\n  accuracy: 0.85\n  eval_loss: 0.6\n  bleu: 30\n\
         dataset: imagenet\nmetadata:\n  lr: 0.01\n  epochs: 10\n",
        "metrics:\n  accuracy: 0.9\n  eval_loss: 0.7\n  rouge: 41.5\n\
         dataset: imagenet\nmetadata:\n  lr: 0.001\n  warmup: 100\n",
    ];
    for (n, (sidecar, files)) in sidecars.iter().zip([v1, v2]).enumerate() {
        drop_bert(d, n + 1, sidecar, files);
    }
}

/// Sets a version's extracted facts, provenance and metric sources in registry.yaml
/// while the daemon is stopped, then starts it again. The extractors fill these at
/// registration (tests/extract.rs proves what they read); their values here are fixed
/// so that the card's exact text does not depend on this machine's user, host or clock.
fn set_facts(d: &mut TestDaemon, facts: &[(&str, Value, Value, Value)]) {
    assert!(d.stop().success(), "the daemon stops cleanly");
    let path = d.registry_path();
    let mut reg: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (version, extracted, provenance, sources) in facts {
        let v = &mut reg["models"]["bert"]["versions"][*version];
        assert!(v.is_mapping(), "bert {version} in registry.yaml");
        for (key, x) in [
            ("extracted", extracted),
            ("provenance", provenance),
            ("metric_sources", sources),
        ] {
            v[key] = serde_yaml::to_value(x).unwrap();
        }
    }
    std::fs::write(&path, serde_yaml::to_string(&reg).unwrap()).unwrap();
    d.spawn();
}

/// bert v1 and v2 registered, with fixed facts: v2's tensors grew by 65,433 parameters
/// and gained an F16 tensor; eval_loss of v2 came from the Trainer's eval_results.json.
fn bert_with_facts() -> TestDaemon {
    let mut d = TestDaemon::quick();
    two_bert_versions(&d);
    let v1 = json!({
        "format": "safetensors", "tensors": 12, "parameters": 1_234_567,
        "dtypes": {"F32": 10, "F16": 2}, "metadata": {"format": "pt"}
    });
    let v2 = json!({
        "format": "safetensors", "tensors": 13, "parameters": 1_300_000,
        "dtypes": {"F32": 10, "F16": 3}, "metadata": {"format": "pt"}
    });
    let who = |commit: &str| {
        json!({"user": "alice", "host": "gpu1", "source": "/data/runs/bert",
               "mtime": "2026-11-27T21:00:00Z", "commit": commit, "run_id": "run-7"})
    };
    set_facts(
        &mut d,
        &[
            ("v1", v1, who("1a2b3c4"), json!({})),
            (
                "v2",
                v2,
                who("5d6e7f8"),
                json!({"eval_loss": "eval_results.json"}),
            ),
        ],
    );
    d
}

fn sha(d: &TestDaemon, version: &str, file: &str) -> String {
    let v = d.get("bert", version).unwrap();
    let f = v.files.iter().find(|f| f.path.ends_with(file)).unwrap();
    f.sha256[..12].to_string()
}

#[test]
fn show_prints_the_model_card_of_a_folder_version() {
    let d = bert_with_facts();
    ok(&d, &["alias", "set", "bert", "production", "v2"]);
    ok(&d, &["alias", "set", "bert", "staging", "v2"]);
    let v2 = d.get("bert", "v2").unwrap();
    let root = d.root.path().display().to_string();
    let expected = format!(
        "bert v2
  state       live
  aliases     production, staging
  registered  {at}
  source      pretrained_models/bert
  path        {root}/models/bert/v2
  size        3.4 KiB in 3 file(s)

metrics
  accuracy   0.9
  eval_loss  0.7   (from eval_results.json)
  rouge      41.5

metadata
  dataset  imagenet
  lr       0.001
  warmup   100

extracted
  dtypes      F16: 3, F32: 10
  format      safetensors
  metadata    format: pt
  parameters  1.3M (1,300,000)
  tensors     13

files
  config.json        22 B     {config}
  model.safetensors  3.4 KiB  {model}
  tokenizer.json     2 B      {tok}

provenance
  commit  5d6e7f8
  host    gpu1
  mtime   2026-11-27T21:00:00Z
  run_id  run-7
  source  /data/runs/bert
  user    alice
",
        at = v2.registered_at,
        config = sha(&d, "v2", "config.json"),
        model = sha(&d, "v2", "model.safetensors"),
        tok = sha(&d, "v2", "tokenizer.json"),
    );
    // By alias and by number: the same card.
    assert_eq!(ok(&d, &["show", "bert", "production"]), expected);
    assert_eq!(ok(&d, &["show", "bert", "v2"]), expected);
}

#[test]
fn show_says_a_deprecated_versions_state_and_leaves_out_empty_sections() {
    let d = TestDaemon::quick();
    write_renamed(&d.inbox(), "plain.bin", &bytes(5, 100));
    d.wait_versions("plain", 1);
    ok(&d, &["deprecate", "plain", "v1", "--reason", "eval bug"]);
    let v = d.get("plain", "v1").unwrap();
    let at = v.mark.as_ref().unwrap().at.clone();
    // Who deprecated it, by the uid the mark keeps.
    let uid = v.mark.as_ref().unwrap().uid.unwrap();
    let by = modelreg::users::user_name(uid);
    let text = ok(&d, &["show", "plain", "v1"]);
    let head = format!(
        "plain v1
  state       deprecated since {at} by {by} (uid {uid}): eval bug
  registered  {}
  source      pretrained_models/plain.bin
  path        {}
  size        100 B in 1 file(s)
",
        v.registered_at, v.path
    );
    assert!(
        text.starts_with(&head),
        "{text}\nexpected to start with\n{head}"
    );
    // No sidecar: no metrics or metadata section at all, rather than empty headings.
    assert!(
        !text.contains("metrics") && !text.contains("metadata"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "files\n  plain.bin  100 B  {}\n",
            &v.files[0].sha256[..12]
        )),
        "{text}"
    );
}

#[test]
fn show_json_is_the_get_answer_with_each_metrics_direction() {
    let d = bert_with_facts();
    let v: Value = serde_json::from_str(&ok(&d, &["show", "bert", "v2", "--json"])).unwrap();
    let get: Value = serde_json::from_str(&ok(&d, &["get", "bert", "v2", "--json"])).unwrap();
    assert_eq!(v, get, "show --json prints the daemon's answer");
    assert_eq!(v["version"], "v2");
    assert_eq!(
        v["directions"],
        json!({"accuracy": "max", "eval_loss": "min", "rouge": "max"})
    );
    assert_eq!(v["extracted"]["parameters"], 1_300_000);
    assert_eq!(v["provenance"]["commit"], "5d6e7f8");
    assert_eq!(
        v["metric_sources"],
        json!({"eval_loss": "eval_results.json"})
    );
    assert!(v.get("aliases").is_none(), "no alias points to v2: {v}");
    assert_eq!(v["files"].as_array().unwrap().len(), 3);
}

#[test]
fn diff_prints_metric_deltas_metadata_facts_and_files() {
    let d = bert_with_facts();
    let expected = format!(
        "bert v1 -> v2

metrics
  accuracy   0.85  ->  0.9   +0.05 (+5.88%)  better
  bleu       30    ->  -                     removed
  eval_loss  0.6   ->  0.7   +0.1 (+16.67%)  worse
  rouge      -     ->  41.5                  added

metadata
  + warmup  100
  - epochs  10
  ~ lr      0.01 -> 0.001

extracted
  ~ parameters  1.23M (1,234,567) -> 1.3M (1,300,000) (+65,433)
  ~ dtypes.F16  2 -> 3
  ~ tensors     12 -> 13

files
  + tokenizer.json     2 B                 {tok}
  - vocab.txt          4 B                 {vocab}
  ~ model.safetensors  2.9 KiB -> 3.4 KiB  {m1} -> {m2}
  1 unchanged
",
        tok = sha(&d, "v2", "tokenizer.json"),
        vocab = sha(&d, "v1", "vocab.txt"),
        m1 = sha(&d, "v1", "model.safetensors"),
        m2 = sha(&d, "v2", "model.safetensors"),
    );
    let text = ok(&d, &["diff", "bert", "v1", "v2"]);
    assert_eq!(text, expected);
    assert!(
        !text.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );
    // Selectors as `get` takes them: latest is v2.
    assert_eq!(ok(&d, &["diff", "bert", "v1", "latest"]), expected);
}

#[test]
fn diff_of_a_version_with_itself_says_no_change() {
    let d = bert_with_facts();
    let text = ok(&d, &["diff", "bert", "v2", "v2"]);
    assert_eq!(
        text,
        "bert v2 -> v2

metrics
  accuracy   0.9   ->  0.9   0  same
  eval_loss  0.7   ->  0.7   0  same
  rouge      41.5  ->  41.5  0  same

metadata
  no change

extracted
  no change

files
  no change
  3 unchanged
"
    );
}

#[test]
fn diff_colours_better_green_and_worse_red_only_when_asked() {
    let d = bert_with_facts();
    let always = ok(&d, &["diff", "bert", "v1", "v2", "--color", "always"]);
    assert!(always.contains("\x1b[32mbetter\x1b[0m"), "{always:?}");
    assert!(always.contains("\x1b[31mworse\x1b[0m"), "{always:?}");
    // Only the verdicts are coloured: the rest is the plain text.
    let plain = ok(&d, &["diff", "bert", "v1", "v2"]);
    let stripped = always
        .replace("\x1b[32m", "")
        .replace("\x1b[31m", "")
        .replace("\x1b[0m", "");
    assert_eq!(stripped, plain);
    for args in [["--color", "never"], ["--color", "auto"]] {
        let mut a = vec!["diff", "bert", "v1", "v2"];
        a.extend(args);
        assert_eq!(ok(&d, &a), plain, "{args:?}");
    }
    let bad = fails(&d, &["diff", "bert", "v1", "v2", "--color", "sometimes"]);
    assert!(
        bad.contains("possible values: auto, always, never"),
        "{bad}"
    );
}

#[test]
fn diff_json_lists_every_change_with_its_direction() {
    let d = bert_with_facts();
    let v: Value = serde_json::from_str(&ok(&d, &["diff", "bert", "v1", "v2", "--json"])).unwrap();
    assert_eq!(
        (&v["name"], &v["a"], &v["b"]),
        (&json!("bert"), &json!("v1"), &json!("v2"))
    );
    let m = &v["metrics"];
    assert_eq!(m.as_array().unwrap().len(), 4);
    assert_eq!(m[0]["metric"], "accuracy");
    assert_eq!(m[0]["direction"], "max");
    assert_eq!(m[0]["change"], "better");
    assert!((m[0]["delta"].as_f64().unwrap() - 0.05).abs() < 1e-9);
    assert_eq!(
        m[1],
        json!({"metric": "bleu", "a": 30.0, "b": null, "direction": "max", "change": "removed"})
    );
    assert_eq!(m[2]["direction"], "min");
    assert_eq!(m[2]["change"], "worse");
    assert_eq!(m[3]["change"], "added");
    assert_eq!(
        v["metadata"],
        json!({"added": {"warmup": 100}, "removed": {"epochs": 10},
               "changed": {"lr": {"a": 0.01, "b": 0.001}}})
    );
    assert_eq!(
        v["extracted"]["changed"],
        json!({"dtypes.F16": {"a": 2, "b": 3}, "parameters": {"a": 1_234_567, "b": 1_300_000},
               "tensors": {"a": 12, "b": 13}})
    );
    assert_eq!(
        v["parameters"],
        json!({"a": 1_234_567, "b": 1_300_000, "delta": 65_433})
    );
    let f = &v["files"];
    assert_eq!(f["unchanged"], 1);
    assert_eq!(f["added"][0]["path"], "tokenizer.json");
    assert_eq!(f["removed"][0]["path"], "vocab.txt");
    assert_eq!(f["changed"][0]["path"], "model.safetensors");
    assert_eq!(f["changed"][0]["a"]["size"], 3000);
    assert_eq!(f["changed"][0]["b"]["size"], 3500);
}

/// Registers `m.bin` with `metrics` as its sidecar, as version `n`.
fn drop_file(d: &TestDaemon, n: usize, seed: u64, metrics: &[(&str, f64)]) {
    write_renamed(&d.inbox(), "m.metrics.yaml", sidecar(metrics).as_bytes());
    write_renamed(&d.inbox(), "m.bin", &bytes(seed, 200 + n));
    d.wait_versions("m", n);
}

#[test]
fn diff_marks_better_and_worse_by_the_directions_in_the_settings() {
    // wer is minimised (named in `minimize`), neg_loss maximised although it ends in loss.
    let d = TestDaemon::start("settle: 300ms\nminimize: [loss, wer]\nmaximize: [neg_loss]\n");
    drop_file(
        &d,
        1,
        1,
        &[("wer", 0.2), ("neg_loss", -0.5), ("val_loss", 0.4)],
    );
    drop_file(
        &d,
        2,
        2,
        &[("wer", 0.1), ("neg_loss", -0.4), ("val_loss", 0.3)],
    );
    let text = ok(&d, &["diff", "m", "v1", "v2"]);
    let metrics: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "metrics")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(
        metrics,
        [
            "  neg_loss  -0.5  ->  -0.4  +0.1 (+20%)  better",
            "  val_loss  0.4   ->  0.3   -0.1 (-25%)  better",
            "  wer       0.2   ->  0.1   -0.1 (-50%)  better",
        ],
        "{text}"
    );
    // One file each: compared as the version's file.
    let v1 = d.get("m", "v1").unwrap();
    let v2 = d.get("m", "v2").unwrap();
    assert!(
        text.ends_with(&format!(
            "files\n  ~ m.bin  201 B -> 202 B  {} -> {}\n",
            &v1.files[0].sha256[..12],
            &v2.files[0].sha256[..12]
        )),
        "{text}"
    );
}

#[test]
fn show_and_diff_refuse_a_model_or_version_that_does_not_exist() {
    let d = TestDaemon::quick();
    drop_file(&d, 1, 1, &[("accuracy", 0.5)]);
    for (args, says) in [
        (&["show", "nope", "v1"][..], "nope"),
        (&["show", "m", "v9"], "v9"),
        (&["show", "m", "production"], "production"),
        (&["diff", "nope", "v1", "v2"], "nope"),
        (&["diff", "m", "v1", "v9"], "v9"),
        (&["diff", "m", "v9", "v1"], "v9"),
    ] {
        let o = d.cli(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(stdout(&o).is_empty(), "{args:?} printed {}", stdout(&o));
        let err = stderr(&o);
        assert!(
            err.starts_with("modelreg: ") && err.contains(says),
            "{args:?}: {err}"
        );
    }
    // A removed version is refused the same way, saying it was removed.
    drop_file(&d, 2, 2, &[("accuracy", 0.6)]);
    ok(&d, &["rm", "m", "v1"]);
    let err = fails(&d, &["diff", "m", "v1", "v2"]);
    assert!(err.contains("removed"), "{err}");
    // No daemon: exit 3 as every client command.
    let o = std::process::Command::new(BIN)
        .args(["--socket", "/nonexistent/modelreg.sock", "show", "m", "v1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
}

#[test]
fn show_and_diff_over_the_http_api_print_what_they_print_over_the_socket() {
    let d = TestDaemon::start("settle: 300ms\nhttp:\n  listen: 127.0.0.1:0\n");
    drop_file(&d, 1, 1, &[("accuracy", 0.5), ("loss", 0.4)]);
    drop_file(&d, 2, 2, &[("accuracy", 0.6), ("loss", 0.5)]);
    let url = format!("http://{}", common::http::address(&d));
    let elsewhere = tempfile::tempdir().unwrap();
    let (read, _) = common::http::token_files(&d, elsewhere.path());
    for args in [&["show", "m", "v2"][..], &["diff", "m", "v1", "v2"]] {
        let o = std::process::Command::new(BIN)
            .current_dir(elsewhere.path())
            .env_remove("MODELREG_SOCKET")
            .env_remove("MODELREG_ROOT")
            .args(["--url", &url, "--token-file", read.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?} over --url: {}", stderr(&o));
        assert_eq!(stdout(&o), ok(&d, args), "{args:?}");
    }
    // The directions come with the HTTP answer too: loss rose, which is worse.
    let text = ok(&d, &["diff", "m", "v1", "v2"]);
    assert!(text.contains("+0.1 (+25%)  worse"), "{text}");
}

/// `modelreg diff` run on a pseudo-terminal by `script` (bsdutils), with `NO_COLOR`
/// set to `no_color` (None: unset); what it printed there.
fn diff_on_a_terminal(d: &TestDaemon, no_color: Option<&str>) -> String {
    let cmd = format!("{BIN} --socket '{}' diff bert v1 v2", d.socket().display());
    let mut c = std::process::Command::new("script");
    c.args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .env_remove("NO_COLOR");
    if let Some(v) = no_color {
        c.env("NO_COLOR", v);
    }
    let o = c.output().expect("run script (util-linux / bsdutils)");
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    stdout(&o)
}

#[test]
fn diff_colours_by_itself_on_a_terminal_unless_no_color_is_set() {
    let d = bert_with_facts();
    let shown = diff_on_a_terminal(&d, None);
    assert!(shown.contains("\x1b[32mbetter\x1b[0m"), "{shown:?}");
    assert!(shown.contains("\x1b[31mworse\x1b[0m"), "{shown:?}");
    let plain = diff_on_a_terminal(&d, Some("1"));
    assert!(!plain.contains('\x1b'), "NO_COLOR=1: {plain:?}");
    assert!(
        plain.contains("better") && plain.contains("worse"),
        "{plain:?}"
    );
    // An empty NO_COLOR does not count (no-color.org).
    assert!(diff_on_a_terminal(&d, Some("")).contains("\x1b[32mbetter"));
}
