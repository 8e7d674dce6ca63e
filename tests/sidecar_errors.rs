//! Sidecars as training scripts write them, with the numbers YAML and JSON cannot carry:
//! each refusal names the file, the line and what to write instead, and writing that
//! registers the artifact; a quoted number is kept as text, and `status` says so once.

mod common;

use common::*;

/// The text `modelreg status` prints.
fn status_text(d: &TestDaemon) -> String {
    let out = d.cli(&["status"]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Asserts that `text` says every one of `needles`.
fn says(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "{needle:?} in {text}");
    }
}

/// Drops `name.pt` and its sidecar, waits for the problem naming `sidecar:line`, then
/// writes `fixed` in its place and waits for the version. Returns the problem's text.
fn refused_then_fixed(
    d: &TestDaemon,
    name: &str,
    sidecar: &str,
    text: &str,
    fixed: &str,
) -> String {
    write_renamed(&d.inbox(), sidecar, text.as_bytes());
    write_renamed(
        &d.inbox(),
        &format!("{name}.pt"),
        &bytes(name.bytes().map(u64::from).sum(), 64),
    );
    let line = text
        .lines()
        .position(|l| l.contains("<-"))
        .map_or(1, |i| i + 1);
    let problem = d.wait_problem_text(&format!("{sidecar}:{line}"));
    assert!(d.versions(name).is_empty(), "the artifact waits: {problem}");
    write_renamed(&d.inbox(), sidecar, fixed.as_bytes());
    d.wait_versions(name, 1);
    problem
}

#[test]
fn json_nan_and_infinity_say_json_has_none_and_leaving_the_key_out_registers() {
    let d = TestDaemon::quick();
    // What Python's json.dump writes for float("nan"), float("inf") and -float("inf").
    // The `<-` in a trailing key marks the line the refusal must name.
    for (name, bad, word) in [
        (
            "nan",
            "{\"accuracy\": 0.7,\n \"loss\": NaN, \"<-\": 1}",
            "`NaN`",
        ),
        (
            "inf",
            "{\"metrics\": {\n \"loss\": Infinity, \"<-\": 1}}",
            "`Infinity`",
        ),
        (
            "neg",
            "{\"accuracy\": 0.7,\n \"gain\": -Infinity, \"<-\": 1}",
            "`-Infinity`",
        ),
    ] {
        let sidecar = format!("{name}.metrics.json");
        let p = refused_then_fixed(
            &d,
            name,
            &sidecar,
            bad,
            "{\"accuracy\": 0.7, \"loss\": null}",
        );
        says(
            &p,
            &[
                word,
                "not a finite number",
                "JSON has no NaN or Infinity",
                "leave the key out",
                "write null",
            ],
        );
    }
    // What the refusal said to write is accepted: null is metadata, the rest metrics.
    let v = d.get("nan", "best").unwrap();
    assert_eq!(v.metrics["accuracy"], 0.7);
    assert!(v.metadata["loss"].is_null(), "{v:?}");
}

#[test]
fn yaml_nan_and_inf_get_the_same_advice_as_json() {
    let d = TestDaemon::quick();
    for (name, bad, word) in [
        ("ynan", "accuracy: 0.7\nloss: .nan  # <-\n", "`.nan`"),
        (
            "yinf",
            "metrics:\n  accuracy: 0.7\n  loss: -.inf  # <-\n",
            "`-.inf`",
        ),
    ] {
        let sidecar = format!("{name}.metrics.yaml");
        let p = refused_then_fixed(&d, name, &sidecar, bad, "accuracy: 0.7\n");
        says(
            &p,
            &[
                word,
                "not a finite number",
                "leave the key out",
                "write null",
            ],
        );
    }
}

#[test]
fn integers_beyond_64_bits_say_out_of_range_and_the_float_they_suggest_registers() {
    let d = TestDaemon::quick();
    // 2**70, as yaml.safe_dump and json.dump write a Python int.
    for (name, sidecar, bad) in [
        (
            "yint",
            "yint.metrics.yaml",
            "accuracy: 0.7\nflos: 1180591620717411303424  # <-\n",
        ),
        (
            "jint",
            "jint.metrics.json",
            "{\"accuracy\": 0.7,\n \"flos\": 1180591620717411303424, \"<-\": 1}",
        ),
        (
            "neg",
            "neg.metrics.yaml",
            "metrics:\n  accuracy: 0.7\n  flos: -1180591620717411303424  # <-\n",
        ),
    ] {
        let fixed = if sidecar.ends_with(".json") {
            "{\"accuracy\": 0.7, \"flos\": 1.1805916207174113e21}"
        } else {
            "accuracy: 0.7\nflos: 1.1805916207174113e21\n"
        };
        let p = refused_then_fixed(&d, name, sidecar, bad, fixed);
        says(
            &p,
            &[
                "out of range",
                "-9223372036854775808 and 18446744073709551615",
                "write it as a float",
                "1.1805916207174113e21",
            ],
        );
        assert!(!p.contains("u128") && !p.contains("i128"), "{p}");
    }
    let v = d.get("yint", "latest").unwrap();
    assert_eq!(v.metrics["flos"], 1.1805916207174113e21);
    // The largest integers that fit are still taken as they are.
    write_renamed(
        &d.inbox(),
        "edge.metrics.yaml",
        b"steps: 18446744073709551615\nmetadata: {seed: -9223372036854775808}\n",
    );
    write_renamed(&d.inbox(), "edge.pt", &bytes(9, 64));
    let v = d.wait_versions("edge", 1).remove(0);
    assert_eq!(v.metrics["steps"], 18446744073709551615u64 as f64);
    assert_eq!(v.metadata["seed"], i64::MIN);
}

#[test]
fn a_quoted_number_at_the_top_stays_metadata_and_status_says_so_once() {
    let d = TestDaemon::quick();
    // f"{acc:.4f}" in a training script: yaml.safe_dump quotes it, json.dump too.
    write_renamed(
        &d.inbox(),
        "q.metrics.yaml",
        b"loss: 0.3\naccuracy: '0.71'\ntorch: '2.1'\nval_loss: nan\n",
    );
    write_renamed(&d.inbox(), "q.pt", &bytes(1, 64));
    write_renamed(
        &d.inbox(),
        "j.metrics.json",
        b"{\"loss\": 0.3,\n \"accuracy\": \"0.71\"}",
    );
    write_renamed(&d.inbox(), "j.pt", &bytes(2, 64));
    let q = d.wait_versions("q", 1).remove(0);
    let j = d.wait_versions("j", 1).remove(0);
    // By the documented rule (quoted is text), registered, with the text as metadata.
    assert_eq!(q.metrics.len(), 1, "{q:?}");
    assert_eq!(q.metadata["accuracy"], "0.71");
    assert_eq!(j.metadata["accuracy"], "0.71");
    // `status` names the file, line and key, and what to write to make it a metric.
    let mut text = String::new();
    wait_until(
        std::time::Duration::from_secs(30),
        "the notes in status",
        || {
            text = status_text(&d);
            text.contains("j.metrics.json:2")
        },
    );
    let note = |needle: &str| -> String {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} in {text}"))
            .to_string()
    };
    let yq = note("q.metrics.yaml:2");
    says(
        &yq,
        &[
            "q v1",
            "`accuracy`",
            "quoted number",
            "metadata",
            "`best`",
            "write `accuracy: 0.71` without quotes",
        ],
    );
    assert!(note("q.metrics.yaml:3").contains("`torch`"), "{text}");
    // f"val_loss: {loss}" with a NaN loss: text to YAML (whose NaN is `.nan`), noted alike.
    says(
        &note("q.metrics.yaml:4"),
        &["`val_loss` is \"nan\"", "metadata", "leave the key out"],
    );
    assert!(
        note("j.metrics.json:2").contains("write `\"accuracy\": 0.71` without quotes"),
        "{text}"
    );
    // Once: the log has each note a single time.
    assert_eq!(
        d.log().matches("q.metrics.yaml:2").count(),
        1,
        "{}",
        d.log()
    );
    // `best` by accuracy does not see it, as the note says.
    let best = d.cli(&["get", "q", "best", "--metric", "accuracy"]);
    assert!(!best.status.success(), "{best:?}");
}

#[test]
fn a_quoted_number_under_metrics_is_refused_with_the_unquoted_spelling() {
    let d = TestDaemon::quick();
    let p = refused_then_fixed(
        &d,
        "mq",
        "mq.metrics.yaml",
        "metrics:\n  loss: 0.3\n  accuracy: \"0.71\"  # <-\n",
        "metrics:\n  loss: 0.3\n  accuracy: 0.71\n",
    );
    assert!(
        p.contains("quoted number") && p.contains("write `accuracy: 0.71` without quotes"),
        "{p}"
    );
    assert_eq!(d.get("mq", "best").unwrap().metrics["accuracy"], 0.71);
}
