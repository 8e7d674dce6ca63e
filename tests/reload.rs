//! SIGHUP re-reads the settings: each one takes effect at once or is reported as needing
//! a restart, as docs/operations.md ("Reload") says — checked through the socket, the
//! `best` symlinks and the log.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use modelreg::protocol::Request;

/// Registers versions of `name` with the given (accuracy, loss) metrics.
fn register(d: &TestDaemon, name: &str, metrics: &[(f64, f64)]) {
    let have = d.versions(name).len();
    for (i, (acc, loss)) in metrics.iter().enumerate() {
        write(
            &d.inbox().join(format!("{name}.metrics.yaml")),
            sidecar(&[("accuracy", *acc), ("loss", *loss)]).as_bytes(),
        );
        write(
            &d.inbox().join(format!("{name}.pt")),
            &bytes(7000 + (have + i) as u64, 1500),
        );
        d.wait_versions(name, have + i + 1);
    }
}

/// Writes new settings and sends SIGHUP.
fn reload(d: &mut TestDaemon, config: &str) {
    d.write_config(config);
    d.signal(libc::SIGHUP);
}

fn best_link(d: &TestDaemon, name: &str) -> Option<PathBuf> {
    std::fs::read_link(d.root.path().join("models").join(name).join("best")).ok()
}

/// The versions `gc --dry-run` would remove.
fn gc_would_remove(d: &TestDaemon) -> Vec<String> {
    let v = d
        .call(&Request::Gc {
            name: None,
            dry_run: true,
        })
        .expect("gc --dry-run");
    v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            format!(
                "{} {}",
                x["name"].as_str().unwrap(),
                x["version"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn retention_changed_by_sighup_applies_to_gc_at_once() {
    let mut d = TestDaemon::quick();
    register(&d, "m", &[(0.7, 0.5), (0.8, 0.4), (0.9, 0.3)]);
    assert!(gc_would_remove(&d).is_empty());

    // Keep the newest 2: v1 goes.
    reload(&mut d, "settle: 300ms\nretention: {\"*\": 2}\n");
    wait_until(Duration::from_secs(10), "gc to follow retention 2", || {
        gc_would_remove(&d) == ["m v1"]
    });

    // Retention removed again: gc removes nothing.
    reload(&mut d, "settle: 300ms\n");
    wait_until(Duration::from_secs(10), "gc to follow no retention", || {
        gc_would_remove(&d).is_empty()
    });
    assert_eq!(d.versions("m").len(), 3);
}

#[test]
fn default_metric_and_model_metrics_changed_by_sighup_move_best_and_its_symlink() {
    let mut d = TestDaemon::quick();
    // v1 has the best accuracy, v2 the lowest loss.
    register(&d, "m", &[(0.9, 0.5), (0.8, 0.1)]);
    assert_eq!(d.get("m", "best").unwrap().version, "v1");
    assert_eq!(best_link(&d, "m"), Some(PathBuf::from("v1")));

    reload(&mut d, "settle: 300ms\ndefault_metric: loss\n");
    wait_until(Duration::from_secs(10), "best to follow loss", || {
        d.get("m", "best").unwrap().version == "v2"
    });
    wait_until(
        Duration::from_secs(10),
        "the best symlink to follow loss",
        || best_link(&d, "m") == Some(PathBuf::from("v2")),
    );

    // A per-model metric wins over the default one.
    reload(
        &mut d,
        "settle: 300ms\ndefault_metric: loss\nmodel_metrics: {m: accuracy}\n",
    );
    wait_until(Duration::from_secs(10), "best to follow m's metric", || {
        d.get("m", "best").unwrap().version == "v1"
    });
    wait_until(
        Duration::from_secs(10),
        "the best symlink to follow m's metric",
        || best_link(&d, "m") == Some(PathBuf::from("v1")),
    );
    assert!(d.status().problems.is_empty(), "{:?}", d.status().problems);
}

#[test]
fn settle_changed_by_sighup_applies_to_entries_already_waiting() {
    let mut d = TestDaemon::start("settle: 1h\n");
    assert_eq!(d.status().settle_secs, 3600.0);
    write(&d.inbox().join("slow.pt"), b"would wait an hour");
    wait_until(Duration::from_secs(10), "slow.pt to be settling", || {
        d.status().waiting.iter().any(|w| w.name == "slow")
    });
    reload(&mut d, "settle: 300ms\n");
    wait_until(Duration::from_secs(10), "settle 300ms in status", || {
        d.status().settle_secs == 0.3
    });
    // The entry already waiting follows the new period, and so does the next one.
    d.wait_versions("slow", 1);
    write(&d.inbox().join("quick.pt"), b"settles in 300 ms");
    d.wait_versions("quick", 1);
}

#[test]
fn log_level_changed_by_sighup_applies_at_once() {
    let mut d = TestDaemon::new("settle: 300ms\nlog_level: warn\n");
    // RUST_LOG would override the settings' log level: the daemon runs without it.
    d.spawn_with(&[("RUST_LOG", String::new())], true);
    write(&d.inbox().join("quiet.pt"), b"registered while at warn");
    d.wait_versions("quiet", 1);
    assert!(!d.log().contains("registered"), "{}", d.log());

    reload(&mut d, "settle: 300ms\nlog_level: info\n");
    wait_until(Duration::from_secs(10), "the reload to be logged", || {
        d.log().contains("settings reloaded")
    });
    write(&d.inbox().join("loud.pt"), b"registered while at info");
    d.wait_versions("loud", 1);
    wait_until(Duration::from_secs(10), "an INFO line for loud", || {
        d.log()
            .lines()
            .any(|l| l.contains("registered") && l.contains("loud"))
    });
}

#[test]
fn watch_changed_by_sighup_is_reported_as_needing_a_restart() {
    let mut d = TestDaemon::start("settle: 300ms\nwatch: inotify\n");
    assert_eq!(d.status().watch, "inotify");

    reload(&mut d, "settle: 300ms\nwatch: poll\n");
    let restart = |d: &TestDaemon| {
        d.status()
            .problems
            .into_iter()
            .find(|p| p.message.contains("needs a restart"))
    };
    wait_until(Duration::from_secs(10), "a needs-a-restart problem", || {
        restart(&d).is_some()
    });
    let p = restart(&d).unwrap();
    assert!(p.message.contains("watch"), "{}", p.message);
    // The running watcher is unchanged, and the log says so too.
    assert_eq!(d.status().watch, "inotify");
    assert!(
        d.log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("watch") && l.contains("needs a restart")),
        "{}",
        d.log()
    );
    // Still watching with inotify: a new file registers.
    write(&d.inbox().join("w.pt"), b"still registered");
    d.wait_versions("w", 1);

    // Back to the running value: the problem is gone.
    reload(&mut d, "settle: 300ms\nwatch: inotify\n");
    wait_until(Duration::from_secs(10), "the problem to clear", || {
        restart(&d).is_none()
    });
}

#[test]
fn a_log_level_that_is_no_level_is_refused_at_start_and_on_reload() {
    // tracing would read a bare word as a target with no level: every line, errors
    // included, would be off. Refused instead, naming the value.
    let d = TestDaemon::new("log_level: \"bogus!!\"\n");
    // Bounded: a daemon that accepts the value runs on (silently), and must not hang
    // the suite.
    let out = std::process::Command::new("timeout")
        .args(["-s", "KILL", "20", BIN])
        .args(["--root", d.root.path().to_str().unwrap(), "serve"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "refused at start, not run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("log_level") && err.contains("bogus!!"),
        "{err}"
    );

    let mut d = TestDaemon::start("settle: 300ms\n");
    reload(&mut d, "settle: 300ms\nlog_level: nosuchlevel\n");
    wait_until(Duration::from_secs(10), "the refused reload", || {
        d.log().contains("reload failed")
    });
    // Still logging at the old level.
    write(
        &d.inbox().join("after.pt"),
        b"registered after the refused reload",
    );
    d.wait_versions("after", 1);
    wait_until(Duration::from_secs(10), "an INFO line for after", || {
        d.log()
            .lines()
            .any(|l| l.contains("registered") && l.contains("after"))
    });
}

#[test]
fn a_settings_file_broken_after_start_does_not_shut_the_cli_out() {
    // The reload fails (the daemon keeps its last good settings) and `status` is where
    // that shows: the CLI, which reads the settings to find the socket, still gets there.
    let mut d = TestDaemon::start("settle: 300ms\n");
    reload(&mut d, "settle: 300ms\nretention: [oops\n");
    wait_until(Duration::from_secs(10), "the refused reload", || {
        d.log().contains("reload failed")
    });
    let out = std::process::Command::new(BIN)
        .args(["--root", d.root.path().to_str().unwrap(), "status"])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains("modelreg.yaml"),
        "{stderr}"
    );
    assert!(stdout.contains("reload failed"), "{stdout}");
}
