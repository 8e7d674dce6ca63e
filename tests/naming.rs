//! Model names as people write them: dotted file names keep everything but their final
//! extension, one visible name is one model (Unicode NFC), and names that would display
//! as something else (bidi controls, zero-width characters) are refused.

mod common;

use common::*;
use modelreg::protocol::Request;

#[test]
fn a_file_is_named_by_what_precedes_its_final_extension() {
    let d = TestDaemon::quick();
    let cases = [
        (
            "Qwen2.5-0.5B-Instruct.Q4_K_M.gguf",
            "Qwen2.5-0.5B-Instruct.Q4_K_M",
        ),
        ("mistral-7b-v0.1.Q4_K_M.gguf", "mistral-7b-v0.1.Q4_K_M"),
        ("resnet18.best.pth", "resnet18.best"),
        ("bert-base.tar.gz", "bert-base"),
        ("t5.v1.1.tar.zst", "t5.v1.1"),
        ("plain", "plain"),
    ];
    for (i, (file, _)) in cases.iter().enumerate() {
        write_renamed(&d.inbox(), file, &bytes(i as u64, 100));
    }
    for (_, name) in cases {
        let v = d.wait_versions(name, 1);
        assert_eq!(v.len(), 1, "{name}");
    }
    for wrong in ["Qwen2", "mistral-7b-v0", "resnet18", "bert-base.tar", "t5"] {
        assert!(d.versions(wrong).is_empty(), "{wrong}");
    }
    // A folder keeps its whole name.
    let folder = d.inbox().join(".Llama-3.1-8B.tmp");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("config.json"), b"{}").unwrap();
    std::fs::rename(&folder, d.inbox().join("Llama-3.1-8B")).unwrap();
    d.wait_versions("Llama-3.1-8B", 1);
}

#[test]
fn a_sidecar_pairs_with_the_dotted_model_name() {
    let d = TestDaemon::quick();
    write_renamed(
        &d.inbox(),
        "Qwen2.5-0.5B-Instruct.Q4_K_M.metrics.yaml",
        sidecar(&[("accuracy", 0.61)]).as_bytes(),
    );
    write_renamed(
        &d.inbox(),
        "Qwen2.5-0.5B-Instruct.Q4_K_M.gguf",
        &bytes(1, 100),
    );
    let v = d.wait_versions("Qwen2.5-0.5B-Instruct.Q4_K_M", 1);
    assert_eq!(v[0].metrics["accuracy"], 0.61);
}

#[test]
fn nfc_and_nfd_spellings_are_one_model() {
    let d = TestDaemon::quick();
    let nfc = "caf\u{e9}-net";
    let nfd = "cafe\u{301}-net";
    write_renamed(&d.inbox(), &format!("{nfc}.pt"), &bytes(1, 100));
    d.wait_versions(nfc, 1);
    write_renamed(&d.inbox(), &format!("{nfd}.pt"), &bytes(2, 100));
    let v = d.wait_versions(nfc, 2);
    assert_eq!(v.len(), 2);
    let list = d.call(&Request::list()).unwrap();
    assert_eq!(list["models"].as_array().unwrap().len(), 1, "{list}");
    // Asked for in either form, it is the same model.
    assert_eq!(d.get(nfd, "latest").unwrap().number, 2);
    assert_eq!(d.get(nfc, "v1").unwrap().number, 1);
}

#[test]
fn names_with_bidi_controls_or_zero_width_characters_are_refused() {
    let d = TestDaemon::quick();
    for (i, name) in [
        "evil\u{202e}txt.pt",
        "zero\u{200b}width.pt",
        "a\u{2066}b.pt",
    ]
    .iter()
    .enumerate()
    {
        write_renamed(&d.inbox(), name, &bytes(i as u64, 10));
    }
    wait_until(std::time::Duration::from_secs(30), "three refusals", || {
        let s = d.call(&Request::Status {}).unwrap();
        s["problems"].as_array().unwrap().len() >= 3
    });
    let s = d.call(&Request::Status {}).unwrap().to_string();
    assert!(s.contains("bidi") && s.contains("zero-width"), "{s}");
    let list = d.call(&Request::list()).unwrap();
    assert!(list["models"].as_array().unwrap().is_empty(), "{list}");
    // And a request naming one is an invalid name, not a lookup.
    let e = d.get("evil\u{202e}txt", "latest").unwrap_err();
    assert_eq!(
        e.code(),
        Some(modelreg::protocol::ErrorCode::InvalidName),
        "{e}"
    );
}

#[test]
fn flat_yaml_and_json_sidecars_give_metrics_that_best_uses() {
    let d = TestDaemon::quick();
    // What a training script writes: yaml.safe_dump({"accuracy": 0.71, "loss": 0.3}).
    write_renamed(
        &d.inbox(),
        "mobilenet.metrics.yaml",
        b"accuracy: 0.71\nloss: 0.3\ndataset: imagenet\n",
    );
    write_renamed(&d.inbox(), "mobilenet.pt", &bytes(1, 100));
    let v = d.wait_versions("mobilenet", 1);
    assert_eq!(v[0].metrics["accuracy"], 0.71);
    assert_eq!(v[0].metadata["dataset"], "imagenet");
    // json.dump of an eval: <name>.metrics.json, same meaning.
    std::fs::remove_file(d.inbox().join("mobilenet.metrics.yaml")).unwrap();
    write_renamed(
        &d.inbox(),
        "mobilenet.metrics.json",
        br#"{"accuracy": 0.75, "loss": 0.25, "epoch": 3}"#,
    );
    write_renamed(&d.inbox(), "mobilenet.pt", &bytes(2, 100));
    let v = d.wait_versions("mobilenet", 2);
    assert_eq!(v[1].metrics["accuracy"], 0.75);
    assert_eq!(v[1].metrics["epoch"], 3.0);
    let best = d
        .client()
        .call_as::<modelreg::protocol::VersionInfo>(&Request::Get {
            name: "mobilenet".into(),
            selector: Some("best".into()),
            metric: Some("loss".into()),
            mode: Some(modelreg::config::Direction::Min),
        })
        .unwrap();
    assert_eq!(best.number, 2);
    // A structure at the top that is not a known key: the error says where it goes.
    write_renamed(
        &d.inbox(),
        "other.metrics.yaml",
        b"accuracy: 0.5\nhyper: {lr: 0.1}\n",
    );
    write_renamed(&d.inbox(), "other.pt", &bytes(3, 100));
    wait_until(
        std::time::Duration::from_secs(30),
        "the sidecar to be refused",
        || {
            d.call(&Request::Status {})
                .unwrap()
                .to_string()
                .contains("other.metrics.yaml:2")
        },
    );
    let s = d.call(&Request::Status {}).unwrap().to_string();
    assert!(s.contains("under `metadata:`"), "{s}");
}

#[test]
fn a_yaml_and_a_json_sidecar_for_one_model_make_it_wait() {
    let d = TestDaemon::quick();
    write_renamed(&d.inbox(), "twin.metrics.yaml", b"accuracy: 0.5\n");
    write_renamed(&d.inbox(), "twin.metrics.json", br#"{"accuracy": 0.9}"#);
    write_renamed(&d.inbox(), "twin.pt", &bytes(1, 100));
    wait_until(
        std::time::Duration::from_secs(30),
        "the ambiguity to be reported",
        || {
            d.call(&Request::Status {})
                .unwrap()
                .to_string()
                .contains("remove one")
        },
    );
    assert!(d.versions("twin").is_empty(), "the artifact waits");
    std::fs::remove_file(d.inbox().join("twin.metrics.json")).unwrap();
    let v = d.wait_versions("twin", 1);
    assert_eq!(v[0].metrics["accuracy"], 0.5);
    let problems = d.call(&Request::Status {}).unwrap()["problems"].to_string();
    assert!(!problems.contains("remove one"), "{problems}");
}
