//! The command line as people use it: pipes, `--json` on every client command, tables
//! that say a version's state, suggestions for mistyped names, `history`, `add`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;

/// Runs the CLI against `d`'s socket with `args`.
fn run(d: &TestDaemon, args: &[&str]) -> Output {
    d.cli(args)
}

/// Registers `n` versions of `name` by dropping files into the inbox one after another.
fn register(d: &TestDaemon, name: &str, n: usize, sidecar_text: Option<&str>) {
    let inbox = d.inbox();
    for i in 0..n {
        if let Some(s) = sidecar_text {
            write_renamed(&inbox, &format!("{name}.metrics.yaml"), s.as_bytes());
        }
        write_renamed(
            &inbox,
            &format!("{name}.pt"),
            &bytes(i as u64 + 1, 1000 + i),
        );
        d.wait_versions(name, i + 1);
    }
}

/// The leaf subcommands as clap's help lists them (`list`, `alias set`, ...): read from
/// the binary itself, so a new subcommand shows up here without editing this file.
fn subcommands(prefix: &[String]) -> Vec<Vec<String>> {
    let mut args: Vec<&str> = prefix.iter().map(String::as_str).collect();
    args.push("--help");
    let o = Command::new(BIN)
        .args(&args)
        .output()
        .expect("run modelreg");
    let help = stdout(&o);
    let Some(section) = help.split("Commands:\n").nth(1) else {
        return vec![prefix.to_vec()];
    };
    let mut out = vec![];
    for line in section.lines() {
        // The section ends at the first line that is not an indented entry.
        let Some(entry) = line.strip_prefix("  ") else {
            break;
        };
        let name = entry.split_whitespace().next().unwrap_or("");
        if name.is_empty() || name == "help" {
            continue;
        }
        let mut p = prefix.to_vec();
        p.push(name.to_string());
        out.extend(subcommands(&p));
    }
    out
}

#[test]
fn a_closed_stdout_ends_the_cli_quietly_with_status_zero() {
    let d = TestDaemon::quick();
    register(&d, "resnet18", 1, None);
    for args in [
        &["list"][..],
        &["versions", "resnet18"],
        &["get", "resnet18"],
        &["status"],
        &["list", "--json"],
    ] {
        // A pipe whose reader is already gone: every write fails with EPIPE, as when
        // `head` has read what it wanted and exited.
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let o = Command::new(BIN)
            .arg("--socket")
            .arg(d.socket())
            .args(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("run modelreg");
        assert_eq!(
            o.status.code(),
            Some(0),
            "modelreg {args:?} into a closed pipe: {}\n{}",
            o.status,
            stderr(&o)
        );
        assert!(
            stderr(&o).is_empty(),
            "modelreg {args:?} into a closed pipe said: {}",
            stderr(&o)
        );
    }
}

#[test]
fn every_client_command_accepts_json_and_prints_json() {
    let d = TestDaemon::quick();
    register(&d, "m", 3, Some(&sidecar(&[("accuracy", 0.5)])));
    let elsewhere = tempfile::tempdir().unwrap();
    let file = elsewhere.path().join("m.pt");
    std::fs::write(&file, bytes(99, 500)).unwrap();
    let file = file.to_str().unwrap();
    let downloads = format!("{}/downloads/", elsewhere.path().display());

    // One case per client command, in an order that makes each one succeed.
    let cases: Vec<Vec<&str>> = vec![
        vec!["list"],
        vec!["versions", "m"],
        vec!["get", "m", "best"],
        vec!["show", "m", "v1"],
        vec!["diff", "m", "v1", "v2"],
        vec!["status"],
        vec!["verify"],
        vec!["history", "m"],
        vec!["download", "m", "--to", &downloads],
        vec!["alias", "set", "m", "production", "v1"],
        vec!["alias", "set", "m", "production", "v2"],
        vec!["rollback", "m", "production"],
        vec!["alias", "rm", "m", "production"],
        vec!["deprecate", "m", "v3", "--reason", "eval bug"],
        vec!["rm", "m", "v2"],
        vec!["gc", "--dry-run"],
        vec!["compact"],
        // NDJSON, one line per event: the one alias removal above is one JSON object.
        vec!["events", "--since", "0", "--kind", "alias_removed"],
        vec!["add", file, "--wait"],
        // (A token named "m", so the case's command words end where the others' do.)
        vec!["token", "create", "m", "--scope", "read"],
        vec!["token", "list"],
        vec!["token", "revoke", "m"],
    ];
    let covered: BTreeSet<Vec<String>> = cases
        .iter()
        .map(|c| {
            c.iter()
                .take_while(|a| !a.starts_with('-') && !["m", file].contains(a))
                .map(|a| a.to_string())
                .collect()
        })
        .collect();
    // Not clients of the daemon: `serve` is the daemon, `recover` works on a stopped one,
    // `migrate` on the root and the team backends (tests/migrate.rs).
    let not_clients = [vec!["serve"], vec!["recover"], vec!["migrate"]];
    let found: BTreeSet<Vec<String>> = subcommands(&[])
        .into_iter()
        .filter(|c| !not_clients.iter().any(|n| n == c))
        .collect();
    assert!(found.len() >= 10, "too few subcommands found: {found:?}");
    let untested: Vec<_> = found.difference(&covered).collect();
    assert!(
        untested.is_empty(),
        "client command(s) {untested:?} have no --json case here: add one"
    );

    for case in &cases {
        let mut args = case.clone();
        args.push("--json");
        let out = ok(&d, &args);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("modelreg {args:?} printed no JSON ({e}):\n{out}"));
        assert!(v.is_object(), "modelreg {args:?}: {v}");
    }
}

#[test]
fn rm_usage_does_not_make_reason_look_required() {
    let d = TestDaemon::quick();
    // A mistyped option makes clap print the usage line, suggesting --reason.
    let o = run(&d, &["rm", "m", "v1", "--reson", "x"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    let usage = err
        .lines()
        .find(|l| l.starts_with("Usage:"))
        .unwrap_or_else(|| panic!("no usage line:\n{err}"));
    assert!(
        usage.contains("[--reason R]") && !usage.contains("rm --reason"),
        "{usage}"
    );
}

#[test]
fn versions_marks_removed_and_deprecated_versions() {
    let d = TestDaemon::quick();
    register(&d, "r", 3, None);
    let v1_path = d.get("r", "v1").unwrap().path;
    ok(&d, &["rm", "r", "v1", "--reason", "leaked data"]);
    ok(&d, &["deprecate", "r", "v2"]);
    let table = ok(&d, &["versions", "r"]);
    let row = |v: &str| -> String {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{v} ")))
            .unwrap_or_else(|| panic!("no row for {v}:\n{table}"))
            .to_string()
    };
    assert!(table.lines().next().unwrap().contains("STATE"), "{table}");
    assert!(row("v1").contains("removed"), "{table}");
    assert!(
        !row("v1").contains(&v1_path),
        "a removed version's deleted path is shown as if it could be opened:\n{table}"
    );
    assert!(row("v2").contains("deprecated"), "{table}");
    assert!(row("v3").contains("live"), "{table}");
}

#[test]
fn mistyped_names_aliases_selectors_and_metrics_get_a_suggestion() {
    let d = TestDaemon::quick();
    register(
        &d,
        "resnet18",
        1,
        Some(&sidecar(&[("accuracy", 0.7), ("loss", 0.3)])),
    );
    ok(&d, &["alias", "set", "resnet18", "production", "v1"]);
    let cases: [(&[&str], &[&str]); 5] = [
        (&["get", "resnet"], &["did you mean \"resnet18\"?"]),
        (
            &["get", "resnet18", "latets"],
            &["did you mean \"latest\"?"],
        ),
        (
            &["get", "resnet18", "prodution"],
            &["did you mean \"production\"?"],
        ),
        (
            &["get", "resnet18", "best", "--metric", "acc"],
            &["did you mean \"accuracy\"?", "metrics: accuracy, loss"],
        ),
        (
            &["alias", "rm", "resnet18", "prodution"],
            &["did you mean \"production\"?"],
        ),
    ];
    for (args, wanted) in cases {
        let o = run(&d, args);
        assert_eq!(o.status.code(), Some(1), "modelreg {args:?}");
        for w in wanted {
            assert!(stderr(&o).contains(w), "modelreg {args:?}: {}", stderr(&o));
        }
    }
    // The suggestion is the daemon's, so every client of the socket gets it.
    let e = d
        .call(&modelreg::protocol::Request::versions("resnet1"))
        .unwrap_err();
    assert!(e.to_string().contains("did you mean \"resnet18\"?"), "{e}");
    // A stranger gets no suggestion.
    let o = run(&d, &["get", "bert"]);
    assert!(!stderr(&o).contains("did you mean"), "{}", stderr(&o));
}

#[test]
fn history_shows_action_and_user_name_in_their_own_columns() {
    let d = TestDaemon::quick();
    register(&d, "h", 2, None);
    ok(&d, &["alias", "set", "h", "production", "v1"]);
    ok(&d, &["alias", "set", "h", "production", "v2"]);
    ok(&d, &["rollback", "h", "production"]);
    let me = modelreg::client::user_name(unsafe { libc::getuid() });
    let out = ok(&d, &["history", "h"]);
    let lines: Vec<&str> = out.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.starts_with("WHEN"))
        .unwrap_or_else(|| panic!("no table:\n{out}"));
    let cols: Vec<&str> = lines[header].split_whitespace().collect();
    assert_eq!(
        cols,
        ["WHEN", "ALIAS", "ACTION", "FROM", "TO", "USER"],
        "{out}"
    );
    let rows: Vec<Vec<&str>> = lines[header + 1..]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert_eq!(
        rows[0][1..],
        ["production", "set", "-", "v1", me.as_str()],
        "{out}"
    );
    assert_eq!(
        rows[1][1..],
        ["production", "set", "v1", "v2", me.as_str()],
        "{out}"
    );
    assert_eq!(
        rows[2][1..],
        ["production", "rollback", "v2", "v1", me.as_str()],
        "{out}"
    );
}

/// Hidden or temporary names left in the inbox.
fn leftovers(inbox: &Path) -> Vec<String> {
    std::fs::read_dir(inbox)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n != ".gitkeep")
        .collect()
}

#[test]
fn add_registers_a_file_from_anywhere_with_name_metrics_and_metadata() {
    let d = TestDaemon::quick();
    let elsewhere = tempfile::tempdir().unwrap();
    let file = elsewhere.path().join("model.Q4_K_M.gguf");
    std::fs::write(&file, bytes(7, 4000)).unwrap();
    let out = ok(
        &d,
        &[
            "add",
            file.to_str().unwrap(),
            "--name",
            "Qwen2.5-0.5B",
            "--metric",
            "accuracy=0.71",
            "--metric",
            "loss=0.3",
            "--meta",
            "dataset=imagenet-1k",
            "--wait",
        ],
    );
    assert!(out.starts_with("Qwen2.5-0.5B v1 "), "{out}");
    let v = d.get("Qwen2.5-0.5B", "best").unwrap();
    assert_eq!(v.metrics.get("accuracy"), Some(&0.71));
    assert_eq!(v.metadata["dataset"], "imagenet-1k");
    assert_eq!(std::fs::read(&v.path).unwrap(), bytes(7, 4000));
    assert!(
        leftovers(&d.inbox()).is_empty(),
        "{:?}",
        leftovers(&d.inbox())
    );

    // A folder, named after itself; a second add of the same bytes makes no new version.
    let folder = elsewhere.path().join("Llama-3.1-8B");
    std::fs::create_dir_all(folder.join("sub")).unwrap();
    std::fs::write(folder.join("config.json"), b"{}").unwrap();
    std::fs::write(folder.join("sub/weights.bin"), bytes(8, 3000)).unwrap();
    let out = ok(&d, &["add", folder.to_str().unwrap(), "--wait"]);
    assert!(out.starts_with("Llama-3.1-8B v1 "), "{out}");
    let out = ok(&d, &["add", folder.to_str().unwrap(), "--wait"]);
    assert!(out.contains("no new version"), "{out}");
    assert_eq!(d.versions("Llama-3.1-8B").len(), 1);
}

#[test]
fn add_refuses_a_non_numeric_metric_and_a_missing_file_clearly() {
    let d = TestDaemon::quick();
    let elsewhere = tempfile::tempdir().unwrap();
    let file = elsewhere.path().join("m.pt");
    std::fs::write(&file, b"weights").unwrap();
    let o = run(
        &d,
        &["add", file.to_str().unwrap(), "--metric", "accuracy=high"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("\"high\" is not a number"),
        "{}",
        stderr(&o)
    );
    let missing = elsewhere.path().join("nope.pt");
    let o = run(&d, &["add", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(missing.to_str().unwrap()),
        "{}",
        stderr(&o)
    );
    // Nothing was handed over.
    let entries: Vec<_> = std::fs::read_dir(d.inbox())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != ".gitkeep")
        .collect();
    assert!(entries.is_empty(), "{entries:?}");
}
