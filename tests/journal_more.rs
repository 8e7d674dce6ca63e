//! The journal beside registry.yaml, the breaks a fresh-clone tester found, end to end on
//! the real binary: the journal or registry.yaml deleted while running, then a change and
//! SIGKILL, loses nothing acknowledged; a damaged last record is reported for what it is
//! (cut short, or complete with a bad checksum) with what was dropped; a journal append
//! that fails acknowledges nothing and the daemon keeps serving; `compact` writes
//! registry.yaml now and empties the journal.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::journal::{aliases, file_catalog, journal_path, records, two_versions};
use common::{BIN, TestDaemon, bytes, wait_until, write_renamed};
use modelreg::registry::persist;

// Fresh-clone tester: `rm registry.journal` while the daemon ran, then `alias set`
// (acknowledged), then kill -9: the change had gone into the unlinked file, and the
// next start refused (the store held versions registry.yaml did not name).
#[test]
fn a_journal_deleted_while_running_loses_no_acknowledged_change_to_sigkill() {
    let mut d = two_versions();
    d.client().alias_set("m", "production", "v1").unwrap();
    std::fs::remove_file(journal_path(&d)).unwrap();
    d.client().alias_set("m", "staging", "v2").unwrap();
    // Acknowledged means on disk under a name: registry.yaml was written at once, and a
    // fresh journal is there.
    assert_eq!(file_catalog(&d).models["m"].aliases["staging"], 2);
    assert!(journal_path(&d).exists());
    let log = d.log();
    let shown = journal_path(&d).display().to_string();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(&shown) && l.contains("deleted")),
        "{log}"
    );
    d.client().alias_set("m", "canary", "v1").unwrap();
    d.kill();
    d.spawn();
    assert_eq!(
        aliases(&d),
        [
            ("canary".to_string(), 1),
            ("production".to_string(), 1),
            ("staging".to_string(), 2)
        ]
    );
    assert_eq!(d.versions("m").len(), 2);
}

#[test]
fn a_journal_deleted_while_running_is_noticed_without_a_change() {
    let d = two_versions();
    d.client().alias_set("m", "production", "v1").unwrap();
    std::fs::remove_file(journal_path(&d)).unwrap();
    // `status` looks at the layout (as inbox events do): registry.yaml is written from
    // memory and a fresh journal started, before any further change.
    d.status();
    wait_until(Duration::from_secs(30), "registry.yaml rewritten", || {
        file_catalog(&d)
            .models
            .get("m")
            .is_some_and(|m| m.aliases.get("production") == Some(&1))
            && journal_path(&d).exists()
    });
}

// Fresh-clone tester: `rm registry.yaml` while the daemon ran, then a change, then kill -9
// before the coalesced rewrite: the next start refused with a `recover` hint, and
// `recover` dropped the aliases and history the journal held.
#[test]
fn registry_yaml_deleted_while_running_then_a_change_and_sigkill_loses_nothing() {
    let mut d = two_versions();
    d.client().alias_set("m", "production", "v1").unwrap();
    // A clean stop and start: registry.yaml holds everything, the journal continues it.
    assert!(d.stop().success());
    d.spawn();
    std::fs::remove_file(d.registry_path()).unwrap();
    d.client().alias_set("m", "staging", "v2").unwrap();
    assert!(d.registry_path().exists(), "written before the answer");
    d.kill();
    d.spawn();
    assert_eq!(
        aliases(&d),
        [("production".to_string(), 1), ("staging".to_string(), 2)]
    );
    let history = d.client().history("m").unwrap();
    assert_eq!(history.history.len(), 2, "{history:?}");
}

// The window the check before each append leaves: registry.yaml deleted, then SIGKILL
// before the daemon noticed (no change, no event). The journal continues a file whose
// one name is gone; its second name keeps it.
#[test]
fn registry_yaml_deleted_then_sigkill_before_the_daemon_noticed_loses_nothing() {
    let mut d = two_versions();
    d.client().alias_set("m", "production", "v1").unwrap();
    d.client().compact().unwrap();
    d.client().alias_set("m", "staging", "v2").unwrap();
    assert!(!records(&d).is_empty(), "staging is only in the journal");
    std::fs::remove_file(d.registry_path()).unwrap();
    d.kill();
    d.spawn();
    assert_eq!(
        aliases(&d),
        [("production".to_string(), 1), ("staging".to_string(), 2)]
    );
    assert!(
        d.log().contains("starting from its last copy"),
        "{}",
        d.log()
    );
    // Written again at start, whole.
    assert_eq!(file_catalog(&d).models["m"].aliases["staging"], 2);
    // The same, daemon stopped: `recover` rebuilds registry.yaml from the same copy.
    d.client().alias_set("m", "canary", "v1").unwrap();
    d.kill();
    std::fs::remove_file(d.registry_path()).unwrap();
    let out = Command::new(BIN)
        .args(["recover", "--root"])
        .arg(d.root.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("from its last copy") && !text.contains("lost"),
        "{text}"
    );
    assert_eq!(file_catalog(&d).models["m"].aliases["canary"], 1);
    assert_eq!(file_catalog(&d).models["m"].alias_history.len(), 3);
    d.spawn();
    assert_eq!(aliases(&d).len(), 3);
}

/// Kills `d` after `n` alias moves that stay in the journal; returns the records.
fn journal_of_moves(d: &mut TestDaemon, n: usize) -> Vec<(modelreg::registry::Delta, u64)> {
    let mut c = d.client();
    for i in 0..n {
        c.alias_set("m", "production", &format!("v{}", 1 + i % 2))
            .unwrap();
    }
    d.kill();
    records(d)
}

/// The daemon's WARN line about the journal record at `offset`.
fn warning_at(d: &TestDaemon, offset: u64) -> String {
    let log = d.log();
    log.lines()
        .find(|l| l.contains("WARN") && l.contains(&format!("offset {offset}")))
        .unwrap_or_else(|| panic!("no warning at offset {offset}: {log}"))
        .to_string()
}

// Fresh-clone tester: a damaged last record was reported as "never acknowledged", which
// is not known when the record is complete and only its checksum fails.
#[test]
fn a_damaged_last_record_is_reported_as_cut_short_or_as_failing_its_checksum() {
    let mut d = two_versions();
    let recs = journal_of_moves(&mut d, 3);
    let path = journal_path(&d);
    let last_start = recs[recs.len() - 2].1;
    // Complete, one payload byte flipped.
    let mut raw = std::fs::read(&path).unwrap();
    let end = raw.len();
    raw[end - 10] ^= 0x01;
    std::fs::write(&path, &raw).unwrap();
    d.spawn();
    let warn = warning_at(&d, last_start);
    assert!(
        warn.contains("complete in length")
            && warn.contains("checksum")
            && warn.contains("may have been acknowledged")
            && warn.contains("model(s) m")
            && !warn.contains("never acknowledged"),
        "{warn}"
    );
    // Its bytes are set aside, not destroyed.
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".dropped-at-{last_start}"));
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        &raw[last_start as usize..],
        "kept beside the journal"
    );
    assert_eq!(d.catalog().models["m"].alias_history.len(), 2);
    // Cut short: a torn tail, which a crash before the fsync leaves.
    let recs = journal_of_moves(&mut d, 2);
    let last_start = recs[recs.len() - 2].1;
    let full = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(full - 7).unwrap();
    drop(f);
    d.spawn();
    let warn = warning_at(&d, last_start);
    assert!(
        warn.contains("cut short") && warn.contains("torn tail") && warn.contains("model(s) m"),
        "{warn}"
    );
    assert_eq!(d.catalog().models["m"].alias_history.len(), 3);
}

// Fresh-clone tester: what does a failed journal append (a full disk, EIO) answer?
// RLIMIT_FSIZE (SIGXFSZ ignored) makes the daemon's own writes past a size fail with
// EFBIG, as ENOSPC would, on any file system.
#[test]
fn a_failed_journal_append_acknowledges_nothing_and_the_daemon_keeps_serving() {
    const LIMIT: u64 = 6 << 10;
    let mut d = TestDaemon::new("settle: 50ms\nregistry_write_interval: 1h\n");
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--root")
        .arg(d.root.path())
        .env("RUST_LOG", "modelreg=debug,info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // A pipe, which the size limit does not apply to, copied to the log.
        .stderr(Stdio::piped());
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: LIMIT,
                rlim_max: LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let err = child.stderr.take().unwrap();
    let mut log = std::fs::File::create(d.log_path()).unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = writeln!(log, "{line}");
        }
    });
    d.adopt(child);
    d.wait_ready();
    for n in 1..=2u64 {
        write_renamed(&d.inbox(), "m.pt", &bytes(n, 64));
        d.wait_versions("m", n as usize);
    }
    // Alias moves until the journal reaches the limit and an append fails.
    let mut c = d.client();
    let mut acked = Vec::new();
    let failure = loop {
        let to = 1 + acked.len() % 2;
        match c.alias_set("m", "production", &format!("v{to}")) {
            Ok(_) => acked.push(to as u32),
            Err(e) => break e.to_string(),
        }
        assert!(acked.len() < 200, "no append failed");
    };
    assert!(
        std::fs::metadata(journal_path(&d)).unwrap().len() <= LIMIT,
        "the journal stays under the limit"
    );
    assert!(failure.contains("journal"), "{failure}");
    // Not in memory: the alias is where the last acknowledged move put it.
    let last = *acked.last().unwrap();
    assert_eq!(d.get("m", "production").unwrap().number, last);
    let history = c.history("m").unwrap();
    assert_eq!(history.history.len(), acked.len());
    // Reported in status, and the daemon keeps serving.
    let status = d.status();
    assert!(
        status
            .recent_errors
            .iter()
            .any(|e| e.message.contains("journal") && e.message.contains("nothing of this")),
        "{status:?}"
    );
    assert!(
        status
            .problems
            .iter()
            .any(|p| p.path == journal_path(&d).display().to_string()),
        "{status:?}"
    );
    c.ping().unwrap();
    // The next change writes registry.yaml whole (small) and starts a fresh journal.
    let next = if last == 1 { 2 } else { 1 };
    c.alias_set("m", "production", &format!("v{next}")).unwrap();
    acked.push(next);
    assert!(
        d.status().problems.is_empty(),
        "cleared once a commit is durable"
    );
    d.kill();
    d.spawn();
    let moves: Vec<u32> = d.catalog().models["m"]
        .alias_history
        .iter()
        .filter_map(|h| h.to)
        .collect();
    assert_eq!(moves, acked, "exactly what was acknowledged");
}

#[test]
fn compact_writes_registry_yaml_now_and_empties_the_journal() {
    let d = two_versions();
    d.client().alias_set("m", "production", "v2").unwrap();
    assert!(!records(&d).is_empty());
    assert!(
        !file_catalog(&d)
            .models
            .get("m")
            .is_some_and(|m| m.aliases.contains_key("production")),
        "registry.yaml waits for its hour"
    );
    let out = common::ok(&d, &["compact"]);
    assert!(out.contains("registry.yaml"), "{out}");
    // Answered once written: registry.yaml is the whole catalog, byte for byte what a
    // full write gives, and the journal holds nothing.
    assert_eq!(file_catalog(&d).models["m"].aliases["production"], 2);
    assert!(records(&d).is_empty());
    assert_eq!(
        std::fs::read_to_string(d.registry_path()).unwrap(),
        persist::to_yaml(&d.catalog()).unwrap()
    );
    // Nothing pending: it still writes (a no-op change), and answers in JSON on request.
    let json: serde_json::Value =
        serde_json::from_str(&common::ok(&d, &["compact", "--json"])).unwrap();
    assert_eq!(
        json["registry"].as_str(),
        Some(d.registry_path().display().to_string().as_str())
    );
    // A change, as any other: refused to a user who may not change the registry.
    if common::can_switch_user("compact_as_nobody") {
        use std::os::unix::fs::PermissionsExt;
        // Reachable by nobody, so that the daemon is what refuses.
        std::fs::set_permissions(d.root.path(), PermissionsExt::from_mode(0o711)).unwrap();
        std::fs::set_permissions(d.socket(), PermissionsExt::from_mode(0o777)).unwrap();
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
            .arg("--socket")
            .arg(d.socket())
            .arg("compact")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("compact changes the registry"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// registry.yaml is rewritten in a pause between commits: while a stream of changes keeps
/// coming (an alias moved every 30 ms, each a commit) the write waits, but never more than
/// 12 `registry_write_interval`s after the first change it lacks; once the stream stops
/// it follows within about an interval. (Rewritten every interval regardless, it cost a
/// burst into 100,000 versions 2.82x the same burst into an empty registry.)
#[test]
fn registry_yaml_waits_for_a_pause_in_a_stream_of_commits_but_not_beyond_its_bound() {
    let interval = Duration::from_millis(250);
    let d = TestDaemon::start("settle: 50ms\nregistry_write_interval: 250ms\n");
    for n in 1..=2u64 {
        write_renamed(&d.inbox(), "m.pt", &bytes(n, 128));
        d.wait_versions("m", n as usize);
    }
    let seq_on_disk = || file_catalog(&d).journal_seq;
    wait_until(Duration::from_secs(30), "registry.yaml written", || {
        seq_on_disk() == d.catalog().journal_seq
    });
    let mut c = d.client();
    let (mut writes, mut last_seq) = (Vec::new(), seq_on_disk());
    let t0 = std::time::Instant::now();
    let mut i = 0u32;
    while t0.elapsed() < Duration::from_secs(8) {
        // Each set moves the alias (one set where it already points records nothing).
        c.alias_set("m", "a", ["v1", "v2"][i as usize % 2]).unwrap();
        i += 1;
        std::thread::sleep(Duration::from_millis(30));
        let seq = seq_on_disk();
        if seq != last_seq {
            writes.push(t0.elapsed().as_secs_f64());
            last_seq = seq;
        }
    }
    eprintln!("{i} changes in 8 s; registry.yaml rewritten at {writes:.2?} s");
    // Every 250 ms regardless would be ~30 writes; the bound (3 s) allows 2-3.
    assert!(!writes.is_empty(), "never rewritten in 8 s of commits");
    assert!(
        writes.len() <= 6,
        "rewritten in the middle of the stream: {writes:.2?}"
    );
    let gaps = writes.windows(2).map(|w| w[1] - w[0]);
    let bound = (interval * 12).as_secs_f64() + 1.5;
    assert!(writes[0] <= bound, "first rewrite after {:.2} s", writes[0]);
    for gap in gaps {
        assert!(gap <= bound, "{gap:.2} s between rewrites: {writes:.2?}");
    }
    // The stream stopped: the last change reaches registry.yaml.
    let last = d.catalog().journal_seq;
    wait_until(
        Duration::from_secs(30),
        "registry.yaml after the stream",
        || seq_on_disk() == last,
    );
}

/// Fresh-clone tester: `compact` every few ms beside a stream of changes and the coalesced
/// writes, then SIGKILL: the start was refused ("it continues from record 4189, but
/// registry.yaml includes only up to record 4176") and the changes in between were in
/// neither file — an older coalesced write had renamed its registry.yaml over the
/// compact's after the journal was cut down. On disk, at every moment, registry.yaml must
/// include every record the journal no longer holds.
#[test]
fn compact_beside_coalesced_writes_never_leaves_registry_yaml_behind_its_journal() {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    let mut d = TestDaemon::start("settle: 50ms\nregistry_write_interval: 20ms\n");
    // Enough models that a whole write takes a while.
    for i in 0..300 {
        std::fs::write(d.inbox().join(format!("k{i:03}.pt")), format!("bytes {i}")).unwrap();
    }
    for n in 1..=2u64 {
        write_renamed(&d.inbox(), "m.pt", &bytes(n, 128));
        d.wait_versions("m", n as usize);
    }
    wait_until(Duration::from_secs(120), "302 versions", || {
        d.status().versions >= 302
    });
    let stop = AtomicBool::new(false);
    let last_acknowledged = AtomicU32::new(0);
    let mut violations = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut c = d.client();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let to = 1 + i % 2;
                c.alias_set("m", "prod", &format!("v{to}")).unwrap();
                last_acknowledged.store(to, Ordering::Relaxed);
                i += 1;
            }
        });
        s.spawn(|| {
            let mut c = d.client();
            while !stop.load(Ordering::Relaxed) {
                c.compact().unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let t0 = std::time::Instant::now();
        let mut checks = 0;
        while t0.elapsed() < Duration::from_secs(6) {
            // The journal's base first: both only grow while registry.yaml never goes
            // back, so base then registry.yaml is a fair reading.
            let Ok(head) = std::fs::read(journal_path(&d)) else {
                continue;
            };
            let Some(base) = head.get(8..16) else {
                continue;
            };
            let base = u64::from_le_bytes(base.try_into().unwrap());
            let Ok(Some(file)) = persist::load(&d.registry_path()) else {
                continue;
            };
            checks += 1;
            if base > file.journal_seq {
                violations.push((base, file.journal_seq));
            }
        }
        stop.store(true, Ordering::Relaxed);
        eprintln!("{checks} readings, {} behind", violations.len());
    });
    assert!(
        violations.is_empty(),
        "journal base past registry.yaml: {violations:?}"
    );
    // And a crash now loses nothing acknowledged.
    let want = last_acknowledged.load(Ordering::Relaxed);
    d.kill();
    d.spawn();
    assert_eq!(d.catalog().models["m"].aliases["prod"], want);
}
