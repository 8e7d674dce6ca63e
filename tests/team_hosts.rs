//! Several hosts on one machine, each a real daemon in a network namespace of its own,
//! sharing PostgreSQL and an S3 server (Garage) that run on a `db` host and are reachable
//! only over the bridge (tests/common/teambed.rs). Issue 20's "three hosts register 300
//! versions of one model concurrently: 900 dense versions, none lost, all blobs present".
//! Figures are printed (run with --nocapture), never asserted on time.
//!
//!     sudo cargo test --test team_hosts -- --nocapture
//!
//! Needs root, iproute2, PostgreSQL 15 and Garage (.ci/run installs them).

mod common;
#[path = "common/garage.rs"]
mod garage;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/teambed.rs"]
mod teambed;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{TestDaemon, bytes, ok, wait_until};
use teambed::TeamBed;

/// Versions each host registers.
const EACH: usize = 300;
/// The hosts.
const HOSTS: [&str; 3] = ["h1", "h2", "h3"];

/// The content of host `h`'s `i`th version: small, and different from every other's
/// (sizes differ too, so no two can be equal).
fn content(h: usize, i: usize) -> Vec<u8> {
    bytes((h * 100_000 + i) as u64 + 1, 1000 + h * EACH + i)
}

/// CPU seconds process `pid` has used (user and system, /proc/PID/stat).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name's closing parenthesis: utime and stime are 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<u64> = (rest.split_whitespace())
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / hz
}

/// The versions `d` lists for `name`: number -> sha256 of its (one) file.
fn listed(d: &TestDaemon, name: &str) -> BTreeMap<u32, String> {
    d.versions(name)
        .into_iter()
        .map(|v| (v.number, v.files[0].sha256.clone()))
        .collect()
}

#[test]
fn three_hosts_registering_300_versions_each_of_one_model_get_900_dense_versions_and_every_blob() {
    let started = Instant::now();
    let bed = TeamBed::start(
        &HOSTS,
        &std::env::temp_dir(),
        "settle: 300ms\n",
        "modelreg=info,warn",
    );
    let ready = started.elapsed();
    let files = tempfile::tempdir().unwrap();
    // Every host hands its files over on its daemon's socket (`register`, the
    // descriptor passed with SCM_RIGHTS), one after the other, all three hosts at once:
    // each version's number is allocated in a race with the other two hosts'.
    let t0 = Instant::now();
    let answers: Vec<Vec<(u32, String)>> = std::thread::scope(|s| {
        let threads: Vec<_> =
            (bed.hosts.iter().enumerate())
                .map(|(h, d)| {
                    let dir = files.path().join(HOSTS[h]);
                    std::fs::create_dir_all(&dir).unwrap();
                    s.spawn(move || {
                        let mut c = d.client();
                        (0..EACH)
                            .map(|i| {
                                let path = dir.join(format!("{i}.pt"));
                                let content = content(h, i);
                                std::fs::write(&path, &content).unwrap();
                                let f = std::fs::File::open(&path).unwrap();
                                let w = c.register("gpt", "gpt.pt", &f, None, None).unwrap_or_else(
                                    |e| panic!("host {} version {i}: register: {e}", HOSTS[h]),
                                );
                                assert!(w.created, "host {} version {i}: not created", HOSTS[h]);
                                let sha = modelreg::store::sha256_hex(&content);
                                assert_eq!(w.version.files[0].sha256, sha);
                                (w.version.number, sha)
                            })
                            .collect()
                    })
                })
                .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let registered = t0.elapsed();
    let cpu: Vec<String> = (bed.hosts.iter())
        .map(|d| format!("{:.1}", cpu_secs(d.pid())))
        .collect();
    let total = HOSTS.len() * EACH;

    // The answers: every number 1..=900 given once, each host's in the order it asked.
    let mut sent: BTreeMap<u32, String> = BTreeMap::new();
    for (h, got) in answers.iter().enumerate() {
        assert!(
            got.windows(2).all(|w| w[0].0 < w[1].0),
            "host {}: numbers not increasing: {:?}",
            HOSTS[h],
            got.iter().map(|g| g.0).collect::<Vec<_>>()
        );
        for (n, sha) in got {
            assert!(sent.insert(*n, sha.clone()).is_none(), "v{n} given twice");
        }
    }
    let expected: Vec<u32> = (1..=total as u32).collect();
    assert_eq!(sent.keys().copied().collect::<Vec<_>>(), expected);

    // Every host lists the same 900 versions: dense, each of the bytes sent, once.
    let t1 = Instant::now();
    for (h, d) in bed.hosts.iter().enumerate() {
        wait_until(
            Duration::from_secs(60),
            &format!("host {} to list all {total} versions", HOSTS[h]),
            || listed(d, "gpt").len() >= total,
        );
        assert_eq!(
            listed(d, "gpt"),
            sent,
            "host {} lists the versions as they were answered",
            HOSTS[h]
        );
    }
    let converged = t1.elapsed();
    let shas: BTreeSet<&String> = sent.values().collect();
    assert_eq!(shas.len(), total, "no bytes registered twice");

    // The bucket holds every version's blob under its SHA-256, and nothing else.
    let in_bucket = bed.blob_shas("h1");
    let wanted: BTreeSet<String> = sent.values().cloned().collect();
    assert_eq!(
        in_bucket.len(),
        total,
        "blobs in the bucket: {} missing, {} unexpected",
        wanted.difference(&in_bucket).count(),
        in_bucket.difference(&wanted).count()
    );
    assert_eq!(in_bucket, wanted);

    // One host's `get --path` of a version another host registered: fetched from the
    // bucket over the bridge, checked, and the bytes are the other host's.
    let (h2, i) = (1, EACH / 2);
    let number = answers[h2][i].0;
    let reader = bed.host("h1");
    let local = reader
        .root
        .path()
        .join(format!("models/gpt/v{number}/gpt.pt"));
    assert!(
        !local.exists(),
        "v{number} (h2's) is not on h1 before the get"
    );
    let t2 = Instant::now();
    let path = ok(reader, &["get", "gpt", &format!("v{number}"), "--path"]);
    let fetched = t2.elapsed();
    assert_eq!(std::path::Path::new(path.trim()), local);
    assert_eq!(std::fs::read(&local).unwrap(), content(h2, i));

    println!(
        "{} hosts in namespaces, PostgreSQL and Garage over the bridge: ready in {:.1} s; \
         {total} versions registered in {:.1} s ({:.0}/s; the daemons' CPU meanwhile {} s); \
         every host listed all {:.1} s later; \
         a get --path of another host's version fetched it in {} ms",
        HOSTS.len(),
        ready.as_secs_f64(),
        registered.as_secs_f64(),
        total as f64 / registered.as_secs_f64(),
        cpu.join(" / "),
        converged.as_secs_f64(),
        fetched.as_millis()
    );
}
