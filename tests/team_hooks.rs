//! Hooks and webhooks in team mode, end to end (real daemons, a real PostgreSQL 15,
//! tests/common/postgres.rs): a hook configured on every host of a team runs once per
//! event, by the one host holding its lock; when that host is SIGKILLed mid-stream,
//! another takes over from the cursor in the catalog: every event at least once, none
//! skipped, in seq order from the takeover on; with the catalog down none delivers, and
//! delivery resumes from the catalog's cursor; a reload that removes the hook from its
//! host hands it over exactly where it stopped. Every wait polls with a deadline; nothing
//! asserts a duration.

mod common;
#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/team_engines.rs"]
mod team_engines;

use std::path::Path;
use std::time::Duration;

use common::*;
use team_engines::Engines;

/// How long deliveries may take to get through before the test fails.
const REACH: Duration = Duration::from_secs(60);

/// Settings of a host whose hook `record` appends `<seq> <tag>` to `file` for every
/// event of the team's log from the first (`from: 0`), taking `pause` seconds each.
fn hook(file: &Path, tag: &str, pause: &str) -> String {
    format!(
        "hooks:\n  - name: record\n    shell: true\n    from: 0\n    command: 'sleep {pause}; echo \"$MODELREG_EVENT_SEQ {tag}\" >> {}'\n",
        file.display()
    )
}

/// The `(seq, tag)` lines the hooks wrote, in the order written.
fn lines(file: &Path) -> Vec<(u64, String)> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (seq, tag) = l.split_once(' ')?;
            Some((seq.parse().ok()?, tag.to_string()))
        })
        .collect()
}

/// The last seq of the team's event log, as the catalog has it.
fn last_seq(team: &Engines) -> u64 {
    team.pg
        .psql("team", "SELECT coalesce(max(seq), 0) FROM events")
        .trim()
        .parse()
        .unwrap()
}

/// Waits until every seq from 1 to the catalog's last was written at least once.
fn wait_all_delivered(team: &Engines, file: &Path) -> u64 {
    let mut last = 0;
    wait_until(REACH, "every event delivered", || {
        last = last_seq(team);
        let got: std::collections::BTreeSet<u64> = lines(file).into_iter().map(|l| l.0).collect();
        last > 0 && (1..=last).all(|s| got.contains(&s))
    });
    last
}

#[test]
fn a_hook_configured_on_two_hosts_runs_once_per_event() {
    let team = Engines::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seqs");
    let a = team.host_with(&hook(&file, "a", "0"));
    let b = team.host_with(&hook(&file, "b", "0"));
    for i in 0..4u64 {
        register_bytes(&a, "resnet", &bytes(10 + i, 5_000));
        register_bytes(&b, "bert", &bytes(20 + i, 5_000));
    }
    let last = wait_all_delivered(&team, &file);
    assert!(last >= 8, "{last}");
    // Both hosts' rows have reached the end: a host that delivered on its own would
    // have run every event by now.
    for (d, who) in [(&a, "A"), (&b, "B")] {
        wait_until(REACH, &format!("{who}'s row to reach {last}"), || {
            delivery_row(d, "record").delivered >= last
        });
    }
    let got = lines(&file);
    let seqs: Vec<u64> = got.iter().map(|l| l.0).collect();
    assert_eq!(
        seqs,
        (1..=last).collect::<Vec<_>>(),
        "once each, in order: {got:?}"
    );
    // `status` says who delivers it: this host on one, the other host's name there.
    let rows = [delivery_row(&a, "record"), delivery_row(&b, "record")];
    let here: Vec<bool> = rows
        .iter()
        .map(|r| r.delivered_by.as_deref() == Some("this host"))
        .collect();
    assert_eq!(here.iter().filter(|h| **h).count(), 1, "{rows:#?}");
    let other = rows
        .iter()
        .find(|r| r.delivered_by.as_deref() != Some("this host"));
    let by = other
        .and_then(|r| r.delivered_by.clone())
        .unwrap_or_default();
    assert!(by.contains(':'), "names the delivering host: {rows:#?}");
    // The cursor is the catalog's.
    wait_until(REACH, "the catalog's cursor to reach the end", || {
        team.pg
            .psql("team", "SELECT seq FROM deliveries WHERE name = 'record'")
            .trim()
            == last.to_string()
    });
}

#[test]
fn when_the_delivering_host_is_killed_another_takes_over_without_skipping() {
    let team = Engines::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seqs");
    let mut a = team.host_with(&hook(&file, "a", "0.1"));
    let mut b = team.host_with(&hook(&file, "b", "0.1"));
    for i in 0..12u64 {
        register_bytes(&a, "resnet", &bytes(30 + i, 5_000));
    }
    // Mid-stream: a few delivered, more to come.
    wait_until(REACH, "a few events delivered", || lines(&file).len() >= 3);
    let before = lines(&file);
    let tags: std::collections::BTreeSet<&str> = before.iter().map(|l| l.1.as_str()).collect();
    assert_eq!(tags.len(), 1, "one host delivers: {before:?}");
    let killed = before[0].1.clone();
    let (victim, survivor) = if killed == "a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    victim.kill();
    for i in 0..4u64 {
        register_bytes(survivor, "bert", &bytes(50 + i, 5_000));
    }
    let last = wait_all_delivered(&team, &file);
    let got = lines(&file);
    let theirs: Vec<u64> = (got.iter())
        .filter(|l| l.1 != killed)
        .map(|l| l.0)
        .collect();
    let mine: Vec<u64> = (got.iter())
        .filter(|l| l.1 == killed)
        .map(|l| l.0)
        .collect();
    assert!(!theirs.is_empty(), "the survivor took over: {got:?}");
    // From the takeover on: every seq once, in order, up to the end...
    let from = theirs[0];
    assert_eq!(theirs, (from..=last).collect::<Vec<_>>(), "{got:?}");
    // ... starting no later than one past the last the killed host delivered (a seq
    // may be delivered twice around the takeover, none skipped).
    let killed_last = mine.iter().copied().max().unwrap_or(0);
    assert!(
        from <= killed_last + 1,
        "{from} > {killed_last} + 1: {got:?}"
    );
    assert_eq!(
        mine,
        (1..=killed_last).collect::<Vec<_>>(),
        "the killed host delivered in order: {got:?}"
    );
    assert_eq!(
        delivery_row(survivor, "record").delivered_by.as_deref(),
        Some("this host")
    );
}

#[test]
fn with_the_catalog_down_no_host_delivers_and_delivery_resumes_from_the_catalogs_cursor() {
    let mut team = Engines::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seqs");
    let a = team.host_with(&hook(&file, "a", "0"));
    let b = team.host_with(&hook(&file, "b", "0"));
    for i in 0..3u64 {
        register_bytes(&a, "resnet", &bytes(60 + i, 5_000));
    }
    let before = wait_all_delivered(&team, &file);
    wait_until(REACH, "the catalog's cursor to reach the end", || {
        team.pg
            .psql("team", "SELECT seq FROM deliveries WHERE name = 'record'")
            .trim()
            == before.to_string()
    });
    team.pg.stop();
    // Both hosts say that no host delivers it from there, and why.
    for (d, who) in [(&a, "A"), (&b, "B")] {
        wait_until(REACH, &format!("{who} to say the catalog is down"), || {
            let by = delivery_row(d, "record").delivered_by.unwrap_or_default();
            by.starts_with("no host from here") && by.contains("catalog")
        });
    }
    team.pg.resume();
    for i in 0..3u64 {
        register_bytes(&b, "bert", &bytes(70 + i, 5_000));
    }
    let last = wait_all_delivered(&team, &file);
    assert!(last > before, "{last} {before}");
    for (d, who) in [(&a, "A"), (&b, "B")] {
        wait_until(REACH, &format!("{who}'s row to reach {last}"), || {
            delivery_row(d, "record").delivered >= last
        });
    }
    let seqs: Vec<u64> = lines(&file).iter().map(|l| l.0).collect();
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "once each, in order");
}

#[test]
fn a_reload_that_removes_the_hook_from_its_host_hands_it_over_exactly_where_it_stopped() {
    let team = Engines::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seqs");
    let mut a = team.host_with(&hook(&file, "a", "0.05"));
    let mut b = team.host_with(&hook(&file, "b", "0.05"));
    for i in 0..8u64 {
        register_bytes(&a, "resnet", &bytes(80 + i, 5_000));
    }
    wait_until(REACH, "a few events delivered", || lines(&file).len() >= 2);
    let holder = lines(&file)[0].1.clone();
    let (from, to) = if holder == "a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    // The holder's settings without the hook: its worker stops cleanly, saving the
    // cursor before it frees the lock.
    from.write_config(&format!(
        "settle: 300ms\ncatalog: \"{}\"\nblobs: {}\n",
        team.pg.url("team"),
        team.blobs.path().display()
    ));
    from.signal(libc::SIGHUP);
    wait_until(REACH, "the holder's row to go", || {
        !from.status().deliveries.iter().any(|r| r.name == "record")
    });
    for i in 0..3u64 {
        register_bytes(to, "bert", &bytes(90 + i, 5_000));
    }
    let last = wait_all_delivered(&team, &file);
    wait_until(REACH, "the other host's row to reach the end", || {
        delivery_row(to, "record").delivered >= last
    });
    let got = lines(&file);
    let seqs: Vec<u64> = got.iter().map(|l| l.0).collect();
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "once each: {got:?}");
    assert!(got.iter().any(|l| l.1 != holder), "handed over: {got:?}");
}
