//! Scenario `team`: issue 20's bars, on three hosts that each run the release daemon in a
//! network namespace of their own, PostgreSQL and Garage on a `db` host reachable only
//! over the bridge (tests/common/teambed.rs, the same bed as tests/team_hosts.rs).
//! Registrations per second with three hosts registering at once against one host alone
//! (same number of files); `get latest` over the HTTP API on a host that did not
//! register the model, and a cache-hit `get --path`, each against a local-mode daemon
//! with the same model, in the same run. Skipped, with the reason in the table, without
//! root, `ip`, PostgreSQL 15 or a Garage binary.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use super::common::{BIN, TestDaemon, wait_until};
use super::http_scenario::KeepAlive;
use super::teambed::{self, TeamBed};
use super::{Daemon, Table, fill, median};

const ROW: &str = "team (3 hosts, netns)";

pub(super) fn team(t: &mut Table, scratch: &Path, quick: bool) {
    if let Some(why) = teambed::missing() {
        eprintln!("  team: skipped: {why}");
        t.add(
            ROW,
            "skipped",
            "-".into(),
            format!("skipped: {why}"),
            "-".into(),
            "-",
            None,
        );
        return;
    }
    // Files per arm (a multiple of 3); the latencies' sample sizes.
    let (n, gets, cli_runs) = if quick {
        (90, 500, 40)
    } else {
        (900, 5000, 200)
    };
    let dir = super::register::roots_folder(scratch, "team");
    let config = "settle: 50ms\nhttp:\n  listen: 127.0.0.1:0\n  anonymous_read: true\n";
    let log = std::env::var("MODELREG_BENCH_LOG").unwrap_or_else(|_| "warn".into());
    let t0 = Instant::now();
    let bed = TeamBed::start(&["a", "b", "c"], &dir, config, &log);
    eprintln!(
        "  team: db host and 3 daemons ready in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let src = dir.join(format!("src-{}", std::process::id()));
    fs::create_dir_all(&src).unwrap();
    // Four arms of `n` files, each file its own bytes (equal bytes would be no version).
    let files: Vec<PathBuf> = (0..4 * n)
        .map(|i| {
            let p = src.join(format!("f{i}.bin"));
            let mut buf = vec![0u8; 4096];
            fill(2 * i as u64 + 1, &mut buf);
            fs::write(&p, &buf).unwrap();
            p
        })
        .collect();
    let hosts: Vec<&TestDaemon> = bed.hosts.iter().collect();

    // (a) One host alone, the two others following; then the three at once, on one
    // model (their numbers allocated in a race) and on a model each.
    let one = register_at_once(&hosts[..1], &["solo"], &files[..n]);
    converge(&hosts, "solo", n);
    let three = register_at_once(&hosts, &["shared"; 3], &files[n..2 * n]);
    converge(&hosts, "shared", n);
    let spread = register_at_once(&hosts, &["ma", "mb", "mc"], &files[2 * n..3 * n]);
    t.add(
        ROW,
        &format!("register {n} x 4 KiB (socket hand-over), one model: 3 hosts at once vs 1 host alone (versions/s)"),
        format!("{three:.0}/s"),
        format!("1 host {one:.0}/s"),
        format!("{:.2}x", three / one),
        "-",
        None,
    );
    t.add(
        ROW,
        &format!(
            "register {n} x 4 KiB, 3 hosts at once, a model each, vs 1 host alone (versions/s)"
        ),
        format!("{spread:.0}/s"),
        format!("1 host {one:.0}/s"),
        format!("{:.2}x", spread / one),
        "-",
        None,
    );

    // The local-mode daemon the reads are compared with: the same model, registered the
    // same way.
    let mut local = Daemon::new(&dir, "team", config);
    local.start();
    register_at_once(&[&*local], &["solo"], &files[..n]);

    // (b) `get latest` over HTTP on b, for the model only a registered. The first get
    // fetches the file from the bucket; the rest are answered from b's own copy.
    let b = bed.host("b");
    let b_url = b.status().http.expect("HTTP is on");
    let b_addr = b_url.trim_start_matches("http://").to_string();
    let local_addr = (local.status().http.expect("HTTP is on"))
        .trim_start_matches("http://")
        .to_string();
    let latest = "/api/v1/models/solo/versions/latest";
    let first = bed
        .net
        .spawn_in("b", {
            let addr = b_addr.clone();
            move || {
                let mut c = KeepAlive::connect(&addr);
                let t0 = Instant::now();
                assert_eq!(c.get(latest).0, 200);
                t0.elapsed().as_secs_f64() * 1e3
            }
        })
        .join()
        .unwrap();
    // Rounds alternate between the two daemons, so that a busy spell weighs on both.
    let rounds = 5;
    let (mut on_b, mut on_local) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let addr = b_addr.clone();
        on_b.extend(
            bed.net
                .spawn_in("b", move || time_gets(&addr, latest, gets / rounds))
                .join()
                .unwrap(),
        );
        on_local.extend(time_gets(&local_addr, latest, gets / rounds));
    }
    let (b50, l50) = (median(&mut on_b), median(&mut on_local));
    t.add(
        ROW,
        &format!("get latest over HTTP on host b, model registered by host a, p50 of {gets}"),
        format!("{b50:.0} µs (first, fetching: {first:.1} ms)"),
        format!("local mode {l50:.0} µs"),
        format!("{:.2}x", b50 / l50),
        "-",
        None,
    );

    // (c) `get --path` as a whole CLI process, the version already fetched on b.
    let (mut cli_b, mut cli_local) = (Vec::new(), Vec::new());
    for _ in 0..cli_runs {
        cli_b.push(time_cli(&b.socket()));
        cli_local.push(time_cli(&local.socket()));
    }
    let (c50, cl50) = (median(&mut cli_b), median(&mut cli_local));
    t.add(
        ROW,
        &format!("`modelreg get solo latest --path` on host b, already fetched, p50 of {cli_runs}"),
        format!("{c50:.2} ms"),
        format!("local mode {cl50:.2} ms"),
        format!("{:.2}x", c50 / cl50),
        "<= 1.1x",
        Some(c50 / cl50 <= 1.1),
    );
    local.stop();
    drop(bed);
    let _ = fs::remove_dir_all(&src);
}

/// Versions per second of `hosts` registering `files` at once (host `k` takes every
/// `hosts.len()`th file, as model `models[k]`), each host's hand-overs one after the
/// other on its socket, from the first start to the last answer.
fn register_at_once(hosts: &[&TestDaemon], models: &[&str], files: &[PathBuf]) -> f64 {
    let start = Arc::new(Barrier::new(hosts.len()));
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for (k, d) in hosts.iter().enumerate() {
            let (start, model) = (start.clone(), models[k]);
            let mine: Vec<&PathBuf> = files.iter().skip(k).step_by(hosts.len()).collect();
            s.spawn(move || {
                let mut c = d.client();
                start.wait();
                for p in mine {
                    let f = fs::File::open(p).unwrap();
                    let w = (c.register(model, "m.bin", &f, None, None))
                        .unwrap_or_else(|e| panic!("register {}: {e}", p.display()));
                    assert!(w.created, "{}: not a new version", p.display());
                }
            });
        }
    });
    files.len() as f64 / t0.elapsed().as_secs_f64()
}

/// Waits until every host lists `n` versions of `model` (the followers are done).
fn converge(hosts: &[&TestDaemon], model: &str, n: usize) {
    for d in hosts {
        wait_until(
            Duration::from_secs(120),
            &format!("every host to list {n} versions of {model}"),
            || d.versions(model).len() >= n,
        );
    }
}

/// Microseconds of each of `count` GETs of `path` on one keep-alive connection to
/// `addr`, after 20 unmeasured ones.
fn time_gets(addr: &str, path: &str, count: usize) -> Vec<f64> {
    let mut c = KeepAlive::connect(addr);
    for _ in 0..20 {
        assert_eq!(c.get(path).0, 200);
    }
    (0..count)
        .map(|_| {
            let t0 = Instant::now();
            assert_eq!(c.get(path).0, 200);
            t0.elapsed().as_secs_f64() * 1e6
        })
        .collect()
}

/// Milliseconds of one `modelreg get solo latest --path` process on `socket`.
fn time_cli(socket: &Path) -> f64 {
    let t0 = Instant::now();
    let out = Command::new(BIN)
        .arg("--socket")
        .arg(socket)
        .args(["get", "solo", "latest", "--path"])
        .output()
        .unwrap();
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ms
}
