//! Exec hooks on the real binary: a hook gets each event as JSON on stdin and in its
//! environment, a failing one is retried, then skipped and shown in `status`, a hung one
//! is killed with its process group, and none of it holds up a registration.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// A shell script at `path`.
fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
}

#[test]
fn an_exec_hook_gets_the_event_on_stdin_and_in_its_environment() {
    let out = tempfile::tempdir().unwrap();
    let hook = out.path().join("hook.sh");
    // Run without a shell: the argv is /bin/sh SCRIPT DIR (the script is the program).
    script(
        &hook,
        "cat > \"$1/$MODELREG_EVENT_SEQ.json\"\nenv | grep '^MODELREG_' | sort > \"$1/$MODELREG_EVENT_SEQ.env\"",
    );
    let d = TestDaemon::start(&format!(
        "settle: 300ms\nhooks:\n- name: record\n  command: [/bin/sh, {}, {}]\n  kinds: [registered]\n  models: ['res*']\n",
        hook.display(),
        out.path().display()
    ));
    register_seeded(&d, "bert", 1); // filtered out by model
    register_seeded(&d, "resnet18", 2);
    let json = out.path().join("2.json");
    // Its cursor at 2: the run is over (a file that exists may still be being written).
    wait_until(Duration::from_secs(20), "the hook's run for seq 2", || {
        delivery_row(&d, "record").delivered == 2
    });
    let event: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(event["seq"], 2);
    assert_eq!(event["kind"], "registered");
    assert_eq!(event["model"], "resnet18");
    assert_eq!(event["version"], 1);
    let env = std::fs::read_to_string(out.path().join("2.env")).unwrap();
    for line in [
        "MODELREG_HOOK=record",
        "MODELREG_EVENT_SEQ=2",
        "MODELREG_EVENT_KIND=registered",
        "MODELREG_EVENT_MODEL=resnet18",
        "MODELREG_EVENT_VERSION=1",
    ] {
        assert!(
            env.lines().any(|l| l == line),
            "{line} missing from:\n{env}"
        );
    }
    let inline = env
        .lines()
        .find_map(|l| l.strip_prefix("MODELREG_EVENT_JSON="))
        .expect("MODELREG_EVENT_JSON");
    let inline: serde_json::Value = serde_json::from_str(inline).unwrap();
    assert_eq!(inline, event);
    // The bert event (seq 1) did not match: no run, but the cursor passed it.
    assert!(!out.path().join("1.json").exists());
    let r = delivery_row(&d, "record");
    assert_eq!((r.kind.as_str(), r.pending, r.skipped), ("hook", 0, 0));
}

#[test]
fn a_failing_hook_is_retried_then_skipped_and_shown_in_status() {
    let out = tempfile::tempdir().unwrap();
    let hook = out.path().join("hook.sh");
    // Fails for seq 1 always; for seq 2 fails twice, then succeeds.
    script(
        &hook,
        "echo x >> \"$1/tries.$MODELREG_EVENT_SEQ\"\necho 'not today' >&2\n[ \"$MODELREG_EVENT_SEQ\" = 2 ] && [ $(wc -l < \"$1/tries.2\") -ge 3 ] && exit 0\nexit 3",
    );
    let mut d = TestDaemon::start(&format!(
        "settle: 300ms\nhooks:\n- name: flaky\n  command: [/bin/sh, {}, {}]\n  retries: 3\n  backoff: 300ms\n  max_backoff: 300ms\n",
        hook.display(),
        out.path().display()
    ));
    register_seeded(&d, "m", 1);
    // While it retries, status says so with the last error.
    wait_until(Duration::from_secs(20), "a retrying row", || {
        delivery_row(&d, "flaky").retrying_since.is_some()
    });
    let r = delivery_row(&d, "flaky");
    let e = r.last_error.clone().unwrap();
    assert!(
        e.contains("seq 1") && e.contains("exited with status 3"),
        "{e}"
    );
    assert_eq!((r.delivered, r.pending), (0, 1));
    let text = stdout(&d.cli(&["status"]));
    assert!(
        text.contains("hook flaky") && text.contains("retrying since"),
        "{text}"
    );
    register_seeded(&d, "m", 2);
    wait_until(
        Duration::from_secs(30),
        "seq 1 skipped, seq 2 delivered",
        || delivery_row(&d, "flaky").delivered == 2,
    );
    let tries = |seq: u32| {
        std::fs::read_to_string(out.path().join(format!("tries.{seq}")))
            .unwrap()
            .lines()
            .count()
    };
    // 1 + 3 retries for seq 1; seq 2 succeeded at its third attempt, after seq 1.
    assert_eq!((tries(1), tries(2)), (4, 3));
    let r = delivery_row(&d, "flaky");
    assert_eq!((r.skipped, r.attempts, r.retrying_since), (1, 0, None));
    assert!(r.last_error.unwrap().contains("seq 2"));
    let s = d.status();
    assert!(
        s.recent_errors.iter().any(|e| e
            .message
            .contains("flaky: event 1 skipped after 4 attempt(s)")),
        "{:?}",
        s.recent_errors
    );
    let json = stdout(&d.cli(&["status", "--json"]));
    assert!(json.contains("\"deliveries\""), "{json}");
    // The stderr of a run is in the daemon's log.
    assert!(d.log().contains("not today"));
    // The cursor is kept across a restart: nothing runs again.
    assert_eq!(d.stop().code(), Some(0));
    let cursors = std::fs::read_to_string(d.root.path().join("deliveries.yaml")).unwrap();
    assert!(cursors.lines().any(|l| l == "\"flaky\": 2"), "{cursors}");
    d.spawn();
    register_seeded(&d, "m", 3);
    wait_until(Duration::from_secs(30), "seq 3", || {
        out.path().join("tries.3").exists() && delivery_row(&d, "flaky").delivered == 3
    });
    assert_eq!((tries(1), tries(2)), (4, 3));
}

#[test]
fn a_hook_past_its_timeout_is_killed_with_its_process_group_and_registration_goes_on() {
    let out = tempfile::tempdir().unwrap();
    let hook = out.path().join("hook.sh");
    // A child in the background that outlives the script unless its group is killed.
    script(
        &hook,
        "sleep 600 &\necho $! > \"$1/child.$MODELREG_EVENT_SEQ\"\nwait",
    );
    let d = TestDaemon::start(&format!(
        "settle: 300ms\nhooks:\n- name: slow\n  command: [/bin/sh, {}, {}]\n  timeout: 500ms\n  retries: 0\n",
        hook.display(),
        out.path().display()
    ));
    register_seeded(&d, "m", 1);
    let child = out.path().join("child.1");
    wait_until(Duration::from_secs(20), "the hook's child", || {
        child.exists()
    });
    // Registrations are answered while the hook hangs.
    for seed in 2..6 {
        register_seeded(&d, "m", seed);
    }
    assert_eq!(d.versions("m").len(), 5);
    wait_until(Duration::from_secs(20), "seq 1 skipped", || {
        delivery_row(&d, "slow").skipped >= 1
    });
    let e = delivery_row(&d, "slow").last_error.unwrap_or_default();
    assert!(e.contains("timed out"), "{e}");
    let pid: i32 = std::fs::read_to_string(&child)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the background child killed",
        || {
            // Gone, or a zombie waiting for its reaper.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |s| s.contains(") Z "))
        },
    );
}

#[test]
fn hooks_added_changed_and_removed_by_a_reload_apply() {
    let out = tempfile::tempdir().unwrap();
    let (a, b) = (out.path().join("a"), out.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let hook = out.path().join("hook.sh");
    script(&hook, "cat > \"$1/$MODELREG_EVENT_SEQ.json\"");
    let with_hook = |dir: &Path| {
        format!(
            "settle: 300ms\nhooks:\n- name: rec\n  command: [/bin/sh, {}, {}]\n",
            hook.display(),
            dir.display()
        )
    };
    let mut d = TestDaemon::start("settle: 300ms\n");
    register_seeded(&d, "m", 1);
    // Added: it starts with the events to come.
    d.write_config(&with_hook(&a));
    d.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(20), "the new hook's row", || {
        d.status().deliveries.iter().any(|r| r.name == "rec")
    });
    register_seeded(&d, "m", 2);
    wait_until(Duration::from_secs(20), "seq 2 in a", || {
        a.join("2.json").exists()
    });
    assert!(!a.join("1.json").exists(), "a new hook replayed old events");
    // Changed: restarted with the new settings, from its cursor.
    d.write_config(&with_hook(&b));
    d.signal(libc::SIGHUP);
    let shown = b.display().to_string();
    wait_until(Duration::from_secs(20), "the changed hook's row", || {
        delivery_row(&d, "rec").target.contains(&shown)
    });
    register_seeded(&d, "m", 3);
    wait_until(Duration::from_secs(20), "seq 3 in b", || {
        b.join("3.json").exists()
    });
    assert!(!b.join("2.json").exists() && !a.join("3.json").exists());
    // A kind that does not exist: the reload is refused, the hook runs on.
    d.write_config(&format!("{}  kinds: [nope]\n", with_hook(&b)));
    d.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(20), "the refused reload", || {
        d.status().recent_errors.iter().any(|e| {
            e.message.contains("reload failed") && e.message.contains("`nope` is not an event kind")
        })
    });
    // Removed: its row goes, and it runs no more.
    d.write_config("settle: 300ms\n");
    d.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(20), "the row gone", || {
        d.status().deliveries.is_empty()
    });
    register_seeded(&d, "m", 4);
    assert_eq!(d.versions("m").len(), 4);
    assert!(!b.join("4.json").exists());
    // The log tells a change from a removal.
    let log = d.log();
    assert!(
        log.contains("delivery stopped: changed by a reload"),
        "{log}"
    );
    assert!(
        log.contains("delivery stopped: removed by a reload"),
        "{log}"
    );
    assert_eq!(d.stop().code(), Some(0));
}

#[test]
fn sigterm_stops_a_hanging_hook_and_its_event_runs_again_at_the_next_start() {
    let out = tempfile::tempdir().unwrap();
    let hook = out.path().join("hook.sh");
    // Hangs until the file `go` exists; records each run.
    script(
        &hook,
        "echo $$ >> \"$1/runs.$MODELREG_EVENT_SEQ\"\n[ -e \"$1/go\" ] || sleep 600",
    );
    let mut d = TestDaemon::start(&format!(
        "settle: 300ms\nhooks:\n- name: slow\n  command: [/bin/sh, {}, {}]\n  timeout: 1h\n",
        hook.display(),
        out.path().display()
    ));
    register_seeded(&d, "m", 1);
    let runs = out.path().join("runs.1");
    wait_until(Duration::from_secs(20), "the hook running", || {
        runs.exists()
    });
    register_seeded(&d, "m", 2);
    let started = std::time::Instant::now();
    assert_eq!(d.stop().code(), Some(0));
    // The attempt under way had its grace (2 s), then was given up: not the hook's hour.
    assert!(started.elapsed() < Duration::from_secs(20));
    let log = d.log();
    assert!(
        log.contains("the event is delivered again when delivery resumes"),
        "{log}"
    );
    let pid: i32 = std::fs::read_to_string(&runs)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_until(Duration::from_secs(10), "the hook killed", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
    });
    let cursors = std::fs::read_to_string(d.root.path().join("deliveries.yaml")).unwrap();
    assert!(cursors.lines().any(|l| l == "\"slow\": 0"), "{cursors}");
    // At least once: seq 1 runs again, then seq 2.
    std::fs::write(out.path().join("go"), "").unwrap();
    d.spawn();
    wait_until(Duration::from_secs(20), "seq 1 and 2 done", || {
        delivery_row(&d, "slow").delivered == 2
    });
    let count = std::fs::read_to_string(&runs).unwrap().lines().count();
    assert_eq!(count, 2);
    assert!(out.path().join("runs.2").exists());
}

/// An endpoint without a cursor (new, or its line gone from an edited or restored
/// deliveries.yaml) starts at the events to come: the log says so, with how many kept
/// events it will not get, instead of skipping them in silence.
#[test]
fn an_endpoint_without_a_cursor_warns_of_the_events_it_will_not_get() {
    let mut d = TestDaemon::start("settle: 300ms\n");
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        register_seeded(&d, name, i as u64 + 1);
    }
    d.stop();
    d.write_config("settle: 300ms\nhooks:\n- name: late\n  command: [/bin/true]\n");
    d.spawn();
    wait_until(
        Duration::from_secs(20),
        "the warning of a missing cursor",
        || d.log().contains("late: no delivery cursor"),
    );
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("late: no delivery cursor"))
        .unwrap();
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("starting at seq 4"), "{line}");
    assert!(line.contains("the 3 event(s) kept before it"), "{line}");
}

/// A hook's output is one escaped log line: a line it prints that looks like a log
/// record (a timestamp, a level) stays inside the hook's record, and NULs are escaped.
#[test]
fn a_hooks_output_cannot_forge_log_lines() {
    let d = TestDaemon::start(
        "settle: 300ms\nhooks:\n- name: forge\n  command: [printf, 'hello\\n1999-01-01T00:00:00.000000Z ERROR forged\\n\\000end\\n']\n",
    );
    register_seeded(&d, "m", 1);
    wait_until(
        Duration::from_secs(20),
        "the hook's output in the log",
        || d.log().contains("stdout: hello"),
    );
    let log = d.log();
    assert!(
        !log.lines().any(|l| l.starts_with("1999-01-01")),
        "a forged log line:\n{log}"
    );
    let line = (log.lines().find(|l| l.contains("stdout: hello")))
        .unwrap_or_else(|| panic!("no stdout line in:\n{log}"));
    assert!(line.contains("hook=forge"), "{line}");
    assert!(line.contains("hello\\n1999-01-01"), "{line}");
    assert!(!line.contains('\0'), "{line:?}");
}

/// A hook that leaves a background child holding its stdout: what it printed is still
/// logged, with a note that the pipe stayed open (it was dropped, and each run held up
/// by a grace of 1 s per stream).
#[test]
fn a_hook_that_leaves_a_child_holding_its_output_still_has_its_output_logged() {
    let out = tempfile::tempdir().unwrap();
    let hook = out.path().join("fork.sh");
    script(
        &hook,
        "sleep 30 &\necho $! > \"$1/$MODELREG_EVENT_SEQ.child\"\necho \"child of $MODELREG_EVENT_SEQ\"",
    );
    let d = TestDaemon::start(&format!(
        "settle: 300ms\nhooks:\n- name: fork\n  command: [/bin/sh, {}, {}]\n",
        hook.display(),
        out.path().display()
    ));
    register_seeded(&d, "m", 1);
    register_seeded(&d, "m", 2);
    wait_until(Duration::from_secs(20), "both runs' output logged", || {
        let log = d.log();
        log.contains("stdout: child of 1") && log.contains("stdout: child of 2")
    });
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("stdout: child of 1"))
        .unwrap();
    assert!(line.contains("still open"), "{line}");
    for seq in [1, 2] {
        let pid = std::fs::read_to_string(out.path().join(format!("{seq}.child"))).unwrap();
        // SAFETY: kill(2) on the pid the hook wrote: its own `sleep`.
        unsafe { libc::kill(pid.trim().parse().unwrap(), libc::SIGKILL) };
    }
}

/// `from: N` past the log's end starts with the next event, said once: it said "the
/// 99998 event(s) kept before it" of a log of 3, then "delivered up to 99998 but the
/// event log ends at 3" as a recent error.
#[test]
fn a_start_past_the_logs_end_starts_with_the_next_event() {
    let out = tempfile::tempdir().unwrap();
    let mut d = TestDaemon::start("settle: 300ms\n");
    for seed in 1..=3 {
        register_seeded(&d, "m", seed);
    }
    d.write_config(&format!(
        "settle: 300ms\nhooks:\n- name: far\n  command: [/bin/sh, -c, 'cat > {}/$MODELREG_EVENT_SEQ.json']\n  shell: false\n  from: 99999\n",
        out.path().display()
    ));
    d.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(20), "the hook's row", || {
        d.status().deliveries.iter().any(|r| r.name == "far")
    });
    register_seeded(&d, "m", 4);
    wait_until(Duration::from_secs(20), "seq 4 delivered", || {
        out.path().join("4.json").exists()
    });
    let log = d.log();
    assert!(
        log.contains("`from: 99999` is past the event log's end (the next event is 4)"),
        "{log}"
    );
    assert!(!log.contains("99998"), "{log}");
    let st = d.status();
    assert!(
        st.recent_errors
            .iter()
            .all(|e| !e.message.contains("ends at")),
        "{:?}",
        st.recent_errors
    );
}

/// The nice value in a /proc/.../stat line (field 19; the name in parentheses may hold
/// spaces, so counted after its closing parenthesis).
fn nice_of(stat: &str) -> i32 {
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(16).unwrap().parse().unwrap()
}

/// Deliveries run on a thread of lower CPU priority (a burst of registrations is not
/// slowed by them on a busy machine), but a hook's process runs at the daemon's own
/// priority: an unprivileged process could not raise it back.
#[test]
fn deliveries_run_at_a_lower_priority_but_hooks_at_the_daemons() {
    let out = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(&format!(
        "settle: 300ms\nhooks:\n- name: nice\n  command: [/bin/sh, -c, 'cat /proc/self/stat > {}/$MODELREG_EVENT_SEQ.stat']\n",
        out.path().display()
    ));
    register_seeded(&d, "m", 1);
    wait_until(Duration::from_secs(20), "the hook's run", || {
        delivery_row(&d, "nice").delivered == 1
    });
    let daemon = nice_of(&std::fs::read_to_string(format!("/proc/{}/stat", d.pid())).unwrap());
    let hook = nice_of(&std::fs::read_to_string(out.path().join("1.stat")).unwrap());
    assert_eq!(hook, daemon, "the hook's nice");
    let tasks = std::fs::read_dir(format!("/proc/{}/task", d.pid())).unwrap();
    let thread = tasks
        .filter_map(|t| {
            let t = t.unwrap().path();
            let comm = std::fs::read_to_string(t.join("comm")).ok()?;
            (comm.trim() == "deliveries").then(|| std::fs::read_to_string(t.join("stat")).unwrap())
        })
        .next()
        .expect("a thread named deliveries");
    assert_eq!(
        nice_of(&thread),
        (daemon + 10).min(19),
        "the deliveries thread's nice"
    );
}
