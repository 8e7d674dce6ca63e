//! The PostgreSQL catalog (src/catalogdb/) across "hosts" on one machine: a real server
//! in a network namespace of its own, three host namespaces writing and listening over
//! TCP from setns threads (tests/common/netns.rs), the database host's link cut mid-burst.
//! Figures are printed (run with --nocapture), never asserted on time.

#[path = "common/netns.rs"]
mod netns;
#[path = "common/postgres.rs"]
mod postgres;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use modelreg::catalogdb::{self, CatalogDb, CatalogDbError, ChangeKind, Options};
use modelreg::registry::{Stamp, Version};
use netns::Net;
use postgres::PgCluster;

/// Short timeouts, so that a cut link shows within seconds.
const OPTIONS: Options = Options {
    connect_timeout: Duration::from_secs(2),
    op_timeout: Duration::from_secs(3),
};

/// The longest one failing operation may take: a timed-out operation, then a connect
/// (the layer bounds it by twice the connect timeout), with slack for a busy machine.
const NO_HANG: Duration = Duration::from_secs(15);

/// A database host and three writer hosts; the cluster drops (stops) before the Net.
struct Bed {
    pg: PgCluster,
    net: Net,
    /// The catalog over TCP, for the writer hosts.
    url: String,
}

fn bed() -> Bed {
    let net = Net::new(&["db", "h1", "h2", "h3"]);
    let db = net.host("db");
    let pg = PgCluster::start_in(&db.ns, db.addr, &net.subnet());
    pg.create_database("team");
    let url = pg.tcp_url("team");
    Bed { pg, net, url }
}

/// A plain version as `host` records it; `attempt` names the attempt, so that one whose
/// outcome was unknown can be looked for afterwards. From its stored form (the record
/// the catalog keeps as jsonb), everything else left at its default.
fn version(model: &str, n: u32, host: &str, attempt: &str) -> Version {
    let mut v: Version = serde_json::from_value(serde_json::json!({
        "files": [{
            "path": format!("models/{model}/v{n}/{model}.pt"),
            "sha256": format!("{:064x}", u64::from(n) * 7919),
            "size": 1000 + u64::from(n),
        }],
        "source": format!("pretrained_models/{model}.pt"),
        "registered_at": "2026-11-28T04:30:00Z",
        "metadata": {"host": host, "attempt": attempt},
    }))
    .expect("a valid version record");
    v.number = n;
    v
}

async fn record(
    db: &mut CatalogDb,
    model: &str,
    host: &str,
    attempt: &str,
) -> Result<u32, CatalogDbError> {
    db.record_version(model, host, &[], |n| version(model, n, host, attempt))
        .await
        .map(|r| r.number())
}

/// `count` versions of `model` from `host`, started together with the others at
/// `start`; the numbers and when it started and finished.
async fn burst(
    url: String,
    model: &'static str,
    host: &'static str,
    count: u32,
    start: Arc<Barrier>,
) -> (Vec<u32>, Instant, Instant) {
    let mut db = CatalogDb::connect(&url, OPTIONS).await.unwrap();
    start.wait();
    let t0 = Instant::now();
    let mut got = Vec::new();
    for i in 0..count {
        got.push(
            record(&mut db, model, host, &format!("{host}-{i}"))
                .await
                .unwrap(),
        );
    }
    (got, t0, Instant::now())
}

#[test]
fn three_hosts_over_tcp_get_dense_numbers_and_a_gapless_log() {
    let bed = bed();
    // One host alone first (it also migrates), then three together.
    let solo = Arc::new(Barrier::new(1));
    let url = bed.url.clone();
    let (_, t0, t1) = bed
        .net
        .spawn_async_in("h1", move || burst(url, "solo", "h1", 300, solo))
        .join()
        .unwrap();
    let one = 300.0 / (t1 - t0).as_secs_f64();

    let start = Arc::new(Barrier::new(3));
    let writers: Vec<_> = ["h1", "h2", "h3"]
        .into_iter()
        .map(|h| {
            let (url, start) = (bed.url.clone(), start.clone());
            bed.net
                .spawn_async_in(h, move || burst(url, "shared", h, 300, start))
        })
        .collect();
    let mut all = Vec::new();
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    for w in writers {
        let (got, t0, t1) = w.join().unwrap();
        assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
        all.extend(got);
        first = Some(first.map_or(t0, |f| f.min(t0)));
        last = Some(last.map_or(t1, |l| l.max(t1)));
    }
    let three = 900.0 / (last.unwrap() - first.unwrap()).as_secs_f64();
    println!(
        "record_version over TCP across namespaces: 1 host {one:.0}/s; 3 hosts on one model {three:.0}/s ({:.2}x)",
        three / one
    );
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=900).collect::<Vec<_>>(),
        "exactly 1..=900, none twice"
    );

    let url = bed.url.clone();
    let (highest, log) = bed
        .net
        .spawn_async_in("h2", move || async move {
            let mut db = CatalogDb::connect(&url, OPTIONS).await.unwrap();
            let snap = db.snapshot().await.unwrap();
            (
                snap.models["shared"].highest,
                db.changes_since(0, 10_000).await.unwrap(),
            )
        })
        .join()
        .unwrap();
    assert_eq!(highest, 900);
    let seqs: Vec<u64> = log.iter().map(|c| c.seq).collect();
    assert_eq!(
        seqs,
        (1..=1200).collect::<Vec<_>>(),
        "the change log is gapless"
    );
    let shared: Vec<u32> = log
        .iter()
        .filter(|c| c.model == "shared" && c.kind == ChangeKind::Version)
        .map(|c| c.number.unwrap())
        .collect();
    assert_eq!(shared, (1..=900).collect::<Vec<_>>());
    assert_eq!(bed.pg.psql("team", "SELECT count(*) FROM versions"), "1200");
}

/// p50 and max of `d`, for printing.
fn p50_max(d: &mut [Duration]) -> (Duration, Duration) {
    d.sort();
    (d[d.len() / 2], d[d.len() - 1])
}

#[test]
fn an_alias_moved_on_one_host_is_heard_on_the_others() {
    let bed = bed();
    let (heard_tx, heard) = mpsc::channel::<(&'static str, u64, Instant)>();
    let (ready_tx, ready) = mpsc::channel::<()>();
    const MOVES: usize = 20;
    let listener = |url: String, who: &'static str| {
        let (heard_tx, ready_tx) = (heard_tx.clone(), ready_tx.clone());
        move || async move {
            let mut l = catalogdb::listen(&url, OPTIONS).await.unwrap();
            ready_tx.send(()).unwrap();
            for _ in 0..MOVES {
                let seq = tokio::time::timeout(Duration::from_secs(10), l.next())
                    .await
                    .unwrap_or_else(|_| panic!("{who}: nothing heard within 10 s"))
                    .expect("the listening connection is open");
                heard_tx.send((who, seq, Instant::now())).unwrap();
            }
        }
    };
    // Host 1 moves the alias when told, and says when it started and the change seq.
    let (go, mut go_rx) = tokio::sync::mpsc::channel::<u32>(1);
    let (moved_tx, moved) = mpsc::channel::<(Instant, u64)>();
    let (recorded_tx, recorded) = mpsc::channel::<()>();
    let url = bed.url.clone();
    let mover = bed.net.spawn_async_in("h1", move || async move {
        let mut db = CatalogDb::connect(&url, OPTIONS).await.unwrap();
        for i in 0..2 {
            record(&mut db, "bert", "h1", &format!("h1-{i}"))
                .await
                .unwrap();
        }
        recorded_tx.send(()).unwrap();
        let stamp = Stamp {
            at: "2026-11-28T04:40:00Z".into(),
            uid: Some(1000),
        };
        while let Some(to) = go_rx.recv().await {
            let t0 = Instant::now();
            let (_, seq) = db
                .set_alias("bert", "production", to, "h1", &stamp, "set")
                .await
                .unwrap();
            moved_tx.send((t0, seq)).unwrap();
        }
    });

    // The listeners start after the versions, so the first thing they hear is a move.
    recorded
        .recv_timeout(Duration::from_secs(30))
        .expect("versions recorded");
    let mut threads = vec![
        bed.net
            .spawn_async_in("h2", listener(bed.url.clone(), "h2")),
        bed.net
            .spawn_async_in("h3", listener(bed.url.clone(), "h3")),
    ];
    // For comparison, a listener in the machine's own namespace on the Unix socket.
    let unix = listener(bed.pg.url("team"), "unix");
    threads.push(std::thread::spawn(move || netns::block_on(unix())));
    for _ in 0..3 {
        ready
            .recv_timeout(Duration::from_secs(30))
            .expect("listeners up");
    }

    // Every client of the server is on the test's subnet (the psql asking is on the
    // socket, without an address).
    let clients = bed.pg.psql(
        "team",
        "SELECT string_agg(DISTINCT host(client_addr), ' ') FROM pg_stat_activity WHERE client_addr IS NOT NULL",
    );
    println!("clients of the server by address: {clients}");
    let prefix = bed.net.subnet().trim_end_matches("0/24").to_string();
    assert!(
        !clients.is_empty() && clients.split(' ').all(|a| a.starts_with(&prefix)),
        "{clients}"
    );

    let mut tcp = Vec::new();
    let mut over_unix = Vec::new();
    let mut late = 0;
    for i in 0..MOVES {
        go.blocking_send(1 + (i % 2) as u32).unwrap();
        let (t0, seq) = moved.recv_timeout(Duration::from_secs(30)).expect("moved");
        for _ in 0..3 {
            let (who, heard_seq, at) = heard
                .recv_timeout(Duration::from_secs(10))
                .expect("heard within 10 s");
            assert_eq!(heard_seq, seq, "{who}");
            let latency = at - t0;
            if who == "unix" {
                over_unix.push(latency);
            } else {
                late += usize::from(latency > Duration::from_secs(1));
                tcp.push(latency);
            }
        }
    }
    drop(go);
    mover.join().unwrap();
    for t in threads {
        t.join().unwrap();
    }
    let (p50, max) = p50_max(&mut tcp);
    let (up50, umax) = p50_max(&mut over_unix);
    println!(
        "alias move on h1 -> NOTIFY heard on h2/h3 over TCP: p50 {p50:?}, max {max:?}, over 1 s: {late} of {}; \
         heard over the Unix socket in the root namespace: p50 {up50:?}, max {umax:?} (from the call to set_alias)",
        tcp.len()
    );
}

/// What one writer saw during the cut.
#[derive(Default)]
struct Seen {
    /// Attempt -> number, for every version known committed (acknowledged, or found
    /// after an unknown outcome).
    committed: BTreeMap<String, u32>,
    /// Failed calls: how long each took and its message.
    errors: Vec<(Duration, String)>,
    /// Attempts whose call failed: whether the database held them afterwards.
    unknown: Vec<(String, bool)>,
}

/// Records until `want` versions of `model` from `host` are committed, through errors:
/// after a failed call it re-reads the model (as a registrar would before retrying) to
/// learn whether that attempt committed after all.
async fn writer(url: String, host: &'static str, want: usize, done: Arc<AtomicU32>) -> Seen {
    let mut db = CatalogDb::connect(&url, OPTIONS).await.unwrap();
    let mut seen = Seen::default();
    let mut i = 0;
    while seen.committed.len() < want {
        let attempt = format!("{host}-{i}");
        i += 1;
        let t = Instant::now();
        match record(&mut db, "shared", host, &attempt).await {
            Ok(n) => {
                seen.committed.insert(attempt, n);
                done.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            Err(e) => {
                assert!(e.is_connection_lost(), "{host}: {e}");
                seen.errors.push((t.elapsed(), e.to_string()));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let found = loop {
            match db.model("shared").await {
                Ok(m) => {
                    break m.unwrap().versions.iter().find_map(|v| {
                        (v.metadata.get("attempt") == Some(&serde_json::json!(attempt)))
                            .then_some(v.number)
                    });
                }
                Err(e) => {
                    seen.errors.push((Instant::now() - t, e.to_string()));
                    assert!(Instant::now() < deadline, "{host}: still failing: {e}");
                }
            }
        };
        seen.unknown.push((attempt.clone(), found.is_some()));
        if let Some(n) = found {
            seen.committed.insert(attempt, n);
            done.fetch_add(1, Ordering::SeqCst);
        }
    }
    seen
}

#[test]
fn the_database_host_cut_off_mid_burst_fails_in_time_and_loses_nothing() {
    let bed = bed();
    const EACH: usize = 300;
    let done = Arc::new(AtomicU32::new(0));
    // Migrated first, so the cut lands among registrations.
    let url = bed.url.clone();
    bed.net
        .spawn_async_in("h1", move || async move {
            CatalogDb::connect(&url, OPTIONS).await.unwrap();
        })
        .join()
        .unwrap();
    let writers: Vec<_> = ["h1", "h2", "h3"]
        .into_iter()
        .map(|h| {
            let (url, done) = (bed.url.clone(), done.clone());
            bed.net
                .spawn_async_in(h, move || writer(url, h, EACH, done))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.load(Ordering::SeqCst) < 150 {
        assert!(Instant::now() < deadline, "no progress before the cut");
        std::thread::sleep(Duration::from_millis(5));
    }
    let t_cut = Instant::now();
    bed.net.cut("db");
    let at_cut = done.load(Ordering::SeqCst);
    // The outage itself: a duration, not a wait for something.
    std::thread::sleep(Duration::from_secs(5));
    bed.net.restore("db");
    let at_restore = done.load(Ordering::SeqCst);

    let mut seen = Vec::new();
    for w in writers {
        seen.push(w.join().unwrap());
    }
    println!(
        "cut after {at_cut} versions, {} more acknowledged while cut; all {} done {:?} after the cut",
        at_restore - at_cut,
        3 * EACH,
        t_cut.elapsed()
    );
    let db_addr = bed.net.host("db").addr.to_string();
    let mut errors = 0;
    for (h, s) in ["h1", "h2", "h3"].iter().zip(&seen) {
        for (took, msg) in &s.errors {
            println!("  {h}: after {took:?}: {msg}");
            assert!(msg.contains(&db_addr), "names the server: {msg}");
            assert!(*took < NO_HANG, "{h} hung {took:?}: {msg}");
        }
        errors += s.errors.len();
        let committed = s.unknown.iter().filter(|(_, c)| *c).count();
        println!(
            "  {h}: {} calls failed; of those attempts {committed} had committed all the same (outcome unknown to the caller), {} had not",
            s.unknown.len(),
            s.unknown.len() - committed
        );
    }
    assert!(errors > 0, "the cut was felt");

    // What the database holds: every attempt at most once, every committed one there
    // with the number its host learnt, numbers dense.
    let rows = bed.pg.psql(
        "team",
        "SELECT number || ' ' || (record->'metadata'->>'attempt') FROM versions WHERE model = 'shared' ORDER BY number",
    );
    let mut held = BTreeMap::new();
    let mut numbers = Vec::new();
    for line in rows.lines() {
        let (n, attempt) = line.split_once(' ').unwrap();
        let n: u32 = n.parse().unwrap();
        numbers.push(n);
        assert!(
            held.insert(attempt.to_string(), n).is_none(),
            "{attempt} twice"
        );
    }
    assert_eq!(
        numbers,
        (1..=numbers.len() as u32).collect::<Vec<_>>(),
        "dense"
    );
    let mut known = BTreeMap::new();
    for s in &seen {
        known.extend(s.committed.clone());
    }
    assert_eq!(
        known, held,
        "exactly the committed attempts, with their numbers"
    );
    assert_eq!(held.len(), 3 * EACH);
    let seqs = bed
        .pg
        .psql("team", "SELECT count(*), max(seq) FROM changes");
    assert_eq!(
        seqs,
        format!("{0}|{0}", 3 * EACH),
        "the change log is gapless"
    );
}

#[test]
fn a_host_reaches_the_test_hosts_and_not_the_machines_own_services() {
    let net = Net::new(&["h1", "h2"]);
    // A service of the machine itself, on loopback and on all its addresses.
    let own = TcpListener::bind("127.0.0.1:0").unwrap();
    let own_any = TcpListener::bind("0.0.0.0:0").unwrap();
    let loopback = own.local_addr().unwrap();
    TcpStream::connect_timeout(&loopback, Duration::from_secs(2)).expect("reachable here");
    let outside: Vec<SocketAddr> = std::process::Command::new("ip")
        .args(["-4", "-o", "addr"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3)?.split('/').next()?.parse().ok())
        .map(|ip| SocketAddr::new(ip, own_any.local_addr().unwrap().port()))
        .collect();

    let h2 = net.host("h2").addr;
    let (port_tx, port) = mpsc::channel();
    let server = net.spawn_in("h2", move || {
        let l = TcpListener::bind((h2, 0)).unwrap();
        port_tx.send(l.local_addr().unwrap()).unwrap();
        // Two connections: before the cut and after it.
        for _ in 0..2 {
            l.accept().unwrap();
        }
    });
    let peer = port.recv_timeout(Duration::from_secs(10)).unwrap();
    let probe = move |to: SocketAddr| TcpStream::connect_timeout(&to, Duration::from_secs(2));
    let results = net
        .spawn_in("h1", move || {
            let mut r = vec![(peer, probe(peer).map(|_| ()))];
            for to in std::iter::once(loopback).chain(outside) {
                r.push((to, probe(to).map(|_| ())));
            }
            r
        })
        .join()
        .unwrap();
    for (to, r) in &results {
        println!("from h1 to {to}: {r:?}");
    }
    assert!(results[0].1.is_ok(), "h1 reaches h2");
    assert!(
        results.len() > 2,
        "the machine has an address besides loopback"
    );
    assert!(
        results[1..].iter().all(|(_, r)| r.is_err()),
        "the machine's own services are out of reach"
    );

    // Cut off, h2 is unreachable; restored, reachable again.
    net.cut("h2");
    let cut = net.spawn_in("h1", move || probe(peer)).join().unwrap();
    println!("from h1 to h2 while cut: {cut:?}");
    assert!(cut.is_err());
    net.restore("h2");
    let back = net.spawn_in("h1", move || probe(peer)).join().unwrap();
    back.expect("reachable once restored");
    server.join().unwrap();
}

#[test]
fn a_host_cut_off_inside_its_transaction_does_not_block_the_others() {
    let bed = bed();
    // h1 is cut off (a power cut, a pulled cable) between allocating a number and
    // committing: its session on the server holds the model's row lock and waits for a
    // message that never comes.
    let (holding_tx, holding) = mpsc::channel::<()>();
    let (cut_tx, cut) = mpsc::channel::<()>();
    let url = bed.url.clone();
    let h1 = bed.net.spawn_async_in("h1", move || async move {
        let mut db = CatalogDb::connect(&url, OPTIONS).await.unwrap();
        record(&mut db, "shared", "h1", "h1-0").await.unwrap();
        db.record_version("shared", "h1", &[], |n| {
            holding_tx.send(()).unwrap();
            // Blocks this host's runtime on purpose: nothing more is sent until the cut.
            cut.recv().unwrap();
            version("shared", n, "h1", "h1-1")
        })
        .await
    });
    holding
        .recv_timeout(Duration::from_secs(30))
        .expect("h1 holds the row");
    bed.net.cut("h1");
    cut_tx.send(()).unwrap();

    let url = bed.url.clone();
    let t = Instant::now();
    let (number, failures) = bed
        .net
        .spawn_async_in("h2", move || async move {
            let mut db = CatalogDb::connect(&url, OPTIONS).await.unwrap();
            let mut failures = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match record(&mut db, "shared", "h2", "h2-0").await {
                    Ok(n) => return (n, failures),
                    Err(e) => {
                        assert!(Instant::now() < deadline, "h2 blocked for 60 s: {e}");
                        failures.push(e.to_string());
                    }
                }
            }
        })
        .join()
        .unwrap();
    println!(
        "h2 recorded v{number} {:?} after h1 was cut off holding the row lock ({} failed attempts first)",
        t.elapsed(),
        failures.len()
    );
    for f in &failures {
        println!("  {f}");
    }
    // h1's timed-out attempt was rolled back by the server: its number went to h2 — to
    // h2's first attempt even when that attempt's answer came too late for h2 (it had
    // waited out its own 3 s for the lock h1 held): an unknown outcome that committed,
    // after which h2's retry recorded v3 (docs/team.md: re-read before retrying). A CI
    // run of 2026-11-28 saw exactly that.
    assert!(
        number == 2 || (number == 3 && !failures.is_empty()),
        "h2 recorded v{number} after {} failed attempt(s)",
        failures.len()
    );
    let err = h1.join().unwrap().unwrap_err();
    println!("h1, cut off: {err}");
    assert!(err.is_connection_lost(), "{err}");
    bed.net.restore("h1");
}
