//! More hostile input: names inside folders that registry.yaml would refuse, sidecars
//! that cannot be read, names that display as nothing, numbers that overflow, keys that
//! YAML says are one, harmless brackets. Whatever is accepted loads again after a
//! restart; whatever is refused is a status problem saying why, and nothing is
//! registered half (an artifact without the metrics its sidecar was meant to give).

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// Builds a folder under a hidden name beside the inbox and moves it in whole, as an
/// uploader's `mv` would: `files` are (relative path, bytes).
fn drop_folder(inbox: &Path, name: &str, files: &[(&str, &[u8])]) {
    let tmp = inbox.join(format!(".{name}.build"));
    for (rel, bytes) in files {
        let p = tmp.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        write(&p, bytes);
    }
    std::fs::rename(&tmp, inbox.join(name)).unwrap();
}

/// Stops and starts the daemon again: it must start on what it wrote, and `verify
/// --offline` must find nothing wrong.
fn restart_and_verify(d: &mut TestDaemon) {
    d.stop();
    let out = std::process::Command::new(BIN)
        .args(["verify", "--offline", "--root"])
        .arg(d.root.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify --offline: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    d.spawn();
}

#[test]
fn a_folder_holding_a_file_name_the_catalog_would_refuse_is_not_registered() {
    let mut d = TestDaemon::quick();
    let bad: &[(&str, &str)] = &[
        ("nl", "a\nb"),
        ("tab", "a\tb"),
        ("del", "a\u{7f}b"),
        ("nel", "a\u{85}b"),
        ("bs", "a\u{8}b"),
        ("rlo", "a\u{202e}b"),
        ("sub", "d/e\u{202e}f"),
        ("zw", "a\u{200b}b"),
        ("filler", "a\u{3164}"),
    ];
    for (name, file) in bad {
        drop_folder(
            &d.inbox(),
            name,
            &[("config.json", b"{}"), (file, b"weights")],
        );
    }
    // A single file whose extension holds a tab: stored under its whole name, it is
    // held to the same rule.
    write_renamed(&d.inbox(), "ext.p\tt", b"x");
    // One good folder beside them: registered, so the others had their chance.
    drop_folder(
        &d.inbox(),
        "good",
        &[("config.json", b"{}"), ("w.bin", b"w")],
    );
    d.wait_versions("good", 1);
    for (name, _) in bad {
        let p = d.wait_problem_text(&format!("pretrained_models/{name}\""));
        assert!(
            p.contains("holds a file or folder named") && p.contains("rename it"),
            "{name}: {p}"
        );
    }
    let p = d.wait_problem_text("ext.p\\\\tt");
    assert!(p.contains("contains"), "{p}");
    for (name, _) in bad {
        assert!(d.versions(name).is_empty(), "{name} was registered");
    }
    assert!(d.versions("ext").is_empty());
    // The daemon can still read everything it wrote.
    restart_and_verify(&mut d);
    assert_eq!(d.versions("good").len(), 1);
    // Renamed, the folder is registered.
    std::fs::rename(d.inbox().join("nl/a\nb"), d.inbox().join("nl/a_b")).unwrap();
    d.wait_versions("nl", 1);
    restart_and_verify(&mut d);
}

#[test]
fn an_artifact_waits_while_its_sidecar_cannot_be_read() {
    let d = TestDaemon::quick();
    // A FIFO where the sidecar should be.
    let fifo = d.inbox().join("ff.metrics.yaml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    // A sidecar that is a link out of the inbox.
    let outside = d.root.path().join("outside.metrics.yaml");
    std::fs::write(&outside, "metrics: {accuracy: 0.9}\n").unwrap();
    std::os::unix::fs::symlink(&outside, d.inbox().join("w.metrics.yaml")).unwrap();
    write_renamed(&d.inbox(), "ff.pt", &bytes(1, 10));
    write_renamed(&d.inbox(), "w.pt", &bytes(2, 10));
    // A plain model beside them shows the settler has been through.
    write_renamed(&d.inbox(), "plain.pt", &bytes(3, 10));
    d.wait_versions("plain", 1);
    let p = d.wait_problem_text("ff.metrics.yaml");
    assert!(p.contains("its artifact waits"), "{p}");
    let p = d.wait_problem_text("w.metrics.yaml");
    assert!(
        p.contains("outside the inbox") && p.contains("its artifact waits"),
        "{p}"
    );
    // Waiting, and saying so; not registered without its metrics.
    wait_until(Duration::from_secs(30), "both groups blocked", || {
        let s = d.status();
        ["ff", "w"].iter().all(|n| {
            s.waiting
                .iter()
                .any(|w| w.name == *n && w.state == "blocked")
        })
    });
    assert!(d.versions("ff").is_empty() && d.versions("w").is_empty());
    // Fixed, the artifact is registered with the metrics.
    std::fs::remove_file(&fifo).unwrap();
    write_renamed(&d.inbox(), "ff.metrics.yaml", b"metrics: {accuracy: 0.7}\n");
    let v = d.wait_versions("ff", 1);
    assert_eq!(v[0].metrics.get("accuracy"), Some(&0.7), "{v:?}");
    std::fs::remove_file(d.inbox().join("w.metrics.yaml")).unwrap();
    std::fs::copy(&outside, d.inbox().join(".w.metrics.yaml.Xy12Zq")).unwrap();
    std::fs::rename(
        d.inbox().join(".w.metrics.yaml.Xy12Zq"),
        d.inbox().join("w.metrics.yaml"),
    )
    .unwrap();
    let v = d.wait_versions("w", 1);
    assert_eq!(v[0].metrics.get("accuracy"), Some(&0.9), "{v:?}");
}

#[test]
fn names_that_display_as_nothing_are_refused() {
    let d = TestDaemon::quick();
    let names = [
        "\u{3164}.pt",
        "a\u{115f}.pt",
        "b\u{1160}.pt",
        "\u{ffa0}c.pt",
        "d\u{2800}.pt",
    ];
    for (i, name) in names.iter().enumerate() {
        write_renamed(&d.inbox(), name, &bytes(i as u64, 10));
    }
    write_renamed(&d.inbox(), "seen.pt", &bytes(9, 10));
    d.wait_versions("seen", 1);
    for name in names {
        let p = d.wait_problem_text(&format!("pretrained_models/{name}"));
        assert!(p.contains("invisible"), "{name:?}: {p}");
    }
    let list = d.call(&modelreg::protocol::Request::list()).unwrap();
    assert_eq!(list["models"].as_array().unwrap().len(), 1, "{list}");
    let e = d.get("\u{3164}", "latest").unwrap_err();
    assert_eq!(
        e.code(),
        Some(modelreg::protocol::ErrorCode::InvalidName),
        "{e}"
    );
}

#[test]
fn a_number_too_large_for_a_float_is_an_error_not_text() {
    let d = TestDaemon::quick();
    for (i, (name, text)) in [
        ("big", "accuracy: 1e999\n"),
        ("bigmeta", "metrics: {a: 1}\nmetadata:\n  x: [1, -1e400]\n"),
    ]
    .iter()
    .enumerate()
    {
        write_renamed(&d.inbox(), &format!("{name}.metrics.yaml"), text.as_bytes());
        write_renamed(&d.inbox(), &format!("{name}.pt"), &bytes(i as u64, 10));
    }
    let p = d.wait_problem_text("big.metrics.yaml:1");
    assert!(p.contains("1e999") && p.contains("finite"), "{p}");
    let p = d.wait_problem_text("bigmeta.metrics.yaml:3");
    assert!(p.contains("finite"), "{p}");
    // Quoted, it is text, as YAML says.
    write_renamed(
        &d.inbox(),
        "quoted.metrics.yaml",
        b"metrics: {a: 1}\nnotes: \"1e999\"\n",
    );
    write_renamed(&d.inbox(), "quoted.pt", &bytes(7, 10));
    let v = d.wait_versions("quoted", 1);
    assert_eq!(v[0].metadata["notes"], "1e999", "{v:?}");
    assert!(d.versions("big").is_empty() && d.versions("bigmeta").is_empty());
}

#[test]
fn keys_that_yaml_reads_as_the_same_value_are_duplicates() {
    let d = TestDaemon::quick();
    for (i, (name, text)) in [
        ("nulls", "metrics: {a: 1}\nmetadata: {~: 1, null: 2}\n"),
        (
            "bools",
            "metrics: {a: 1}\nmetadata:\n  true: 1\n  True: 2\n",
        ),
    ]
    .iter()
    .enumerate()
    {
        write_renamed(&d.inbox(), &format!("{name}.metrics.yaml"), text.as_bytes());
        write_renamed(&d.inbox(), &format!("{name}.pt"), &bytes(i as u64, 10));
    }
    let p = d.wait_problem_text("nulls.metrics.yaml:2");
    assert!(p.contains("duplicate"), "{p}");
    let p = d.wait_problem_text("bools.metrics.yaml:4");
    assert!(p.contains("duplicate"), "{p}");
    assert!(d.versions("nulls").is_empty() && d.versions("bools").is_empty());
}

#[test]
fn brackets_in_strings_comments_and_block_scalars_are_harmless_text() {
    let mut d = TestDaemon::quick();
    let b50 = "[".repeat(50);
    let texts = [
        ("quoted", format!("metrics: {{a: 1}}\nnotes: \"{b50}\"\n")),
        (
            "comment",
            format!("# {b50}\nmetrics: {{a: 1}}  # {b50}\nnotes: ok\n"),
        ),
        (
            "block",
            format!(
                "metrics: {{a: 1}}\nnotes: |\n  {}\n  {}\n",
                "[".repeat(40),
                "{".repeat(40)
            ),
        ),
        ("plain", format!("metrics: {{a: 1}}\nnotes: x#{b50}\n")),
    ];
    for (i, (name, text)) in texts.iter().enumerate() {
        write_renamed(&d.inbox(), &format!("{name}.metrics.yaml"), text.as_bytes());
        write_renamed(&d.inbox(), &format!("{name}.pt"), &bytes(i as u64, 10));
    }
    for (name, _) in &texts {
        let v = d.wait_versions(name, 1);
        assert_eq!(v[0].metrics.get("a"), Some(&1.0), "{name}: {v:?}");
    }
    // Real nesting beyond the limit is still refused, with line and column.
    write_renamed(
        &d.inbox(),
        "deep.metrics.yaml",
        format!(
            "metrics: {{a: 1}}\nmetadata: {{x: {}1{}}}\n",
            "[".repeat(40),
            "]".repeat(40)
        )
        .as_bytes(),
    );
    write_renamed(&d.inbox(), "deep.pt", &bytes(9, 10));
    let p = d.wait_problem_text("deep.metrics.yaml:2:");
    assert!(p.contains("deeper than"), "{p}");
    restart_and_verify(&mut d);
    for (name, _) in &texts {
        assert_eq!(d.versions(name).len(), 1, "{name}");
    }
}

#[test]
fn the_cli_shows_escape_sequences_and_line_breaks_from_a_sidecar_instead_of_obeying_them() {
    let d = TestDaemon::quick();
    write_renamed(
        &d.inbox(),
        "spoof.metrics.yaml",
        b"metrics: {accuracy: 0.5}\ndataset: \"\\e[31mred\\e[0m\"\nmetadata:\n  \"a\\nb\": \"x\\u202ey\"\n",
    );
    write_renamed(&d.inbox(), "spoof.pt", &bytes(1, 10));
    let v = d.wait_versions("spoof", 1);
    // Stored as written: only the display escapes.
    assert_eq!(v[0].metadata["dataset"], "\u{1b}[31mred\u{1b}[0m");
    for args in [&["get", "spoof"][..], &["versions", "spoof"], &["list"]] {
        let out = d.cli(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{202e}'),
            "{args:?}: {text:?}"
        );
        if args[0] == "get" {
            assert!(text.contains("dataset=\\u{1b}[31mred"), "{text}");
            // The metadata line is one line: `a\nb` does not break it.
            let line = text.lines().find(|l| l.contains("metadata:")).unwrap();
            assert!(line.contains("a\\nb=x\\u{202e}y"), "{text}");
        }
    }
}
