//! The search scenario: `--where` queries over one model of 100,000 versions, asked on
//! the socket, against the same search run in this process on the same catalog (what
//! the socket, the snapshot and the answer add to matching itself).

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use modelreg::protocol::{Request, SearchFields};
use modelreg::query::{Hit, Search, SearchArgs, Value};
use modelreg::registry::{Catalog, Model, Version, persist};

use super::{Daemon, Table, fill};

/// The goal: a `--where` query over 100,000 versions answers within this on the socket.
const GOAL: Duration = Duration::from_millis(50);

/// Version `n` of `big`: accuracy, loss, dataset, tags and a flag that vary with `n`.
fn version(n: u32, buf: &[u8]) -> Version {
    let mut tags = Vec::new();
    if n.is_multiple_of(5) {
        tags.push("baseline");
    }
    if n.is_multiple_of(7) {
        tags.push("prod");
    }
    let dataset = ["imagenet", "coco", "cifar"][(n % 3) as usize];
    let mut v: Version = serde_json::from_value(serde_json::json!({
        "files": [{
            "path": format!("models/big/v{n}/big.pt"),
            "sha256": modelreg::store::sha256_hex(buf),
            "size": buf.len(),
        }],
        "source": "pretrained_models/big.pt",
        "registered_at": format!("2026-11-{:02}T{:02}:00:00Z", 1 + n % 28, n % 24),
        "metrics": {"accuracy": f64::from((n * 37) % 1000) / 1000.0, "loss": f64::from(n % 17) / 10.0},
        "metadata": {
            "dataset": dataset,
            "frozen": n.is_multiple_of(2),
            "tags": tags,
        },
    }))
    .unwrap();
    v.number = n;
    v
}

/// registry.yaml with `big` at `n` versions, and their (8-byte) stored files.
fn registry(root: &Path, n: u32) -> Catalog {
    let mut buf = [0u8; 8];
    let mut m = Model::default();
    for i in 1..=n {
        let dir = root.join("models/big").join(format!("v{i}"));
        fs::create_dir_all(&dir).unwrap();
        fill(u64::from(i), &mut buf);
        fs::write(dir.join("big.pt"), buf).unwrap();
        m.versions.push(Arc::new(version(i, &buf)));
    }
    m.highest = n;
    let mut c = Catalog::default();
    c.models.insert("big".into(), Arc::new(m));
    persist::write_atomic(
        &root.join("registry.yaml"),
        persist::to_yaml(&c).unwrap().as_bytes(),
    )
    .unwrap();
    c
}

/// A query of the scenario: op, where, tags, sort, limit.
type Query = (
    &'static str,
    Option<&'static str>,
    &'static [&'static str],
    Option<&'static str>,
    Option<usize>,
);

/// The median and the largest of `runs` timings of `f`, after two warm-up calls.
fn timed(runs: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    f();
    f();
    let mut t: Vec<Duration> = (0..runs)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed()
        })
        .collect();
    t.sort();
    (t[t.len() / 2], t[t.len() - 1])
}

/// CPU time this thread has used (what the in-process search costs, whatever the
/// machine's other load makes it wait).
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `t` is.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Scenario: `versions big --where ...` (and `list --where ...`) over 100,000 versions.
pub(super) fn search(t: &mut Table, scratch: &Path, quick: bool) {
    let n: u32 = if quick { 10_000 } else { 100_000 };
    let mut d = Daemon::new(scratch, "search", "settle: 200ms\n");
    let t0 = Instant::now();
    let catalog = registry(d.root(), n);
    eprintln!(
        "  (made a {n}-version registry in {:.1} s)",
        t0.elapsed().as_secs_f64()
    );
    d.start();
    // After start the daemon checks every stored file in the background (100,000 stats
    // here): measured during it, queries share the CPU with it. Wait until the daemon
    // is idle (at most 2 ticks of CPU in half a second), 60 s at most.
    super::wait_idle(&d, Duration::from_secs(60));
    let mut c = d.client();
    let queries: [Query; 3] = [
        (
            "versions",
            Some(r#"accuracy >= 0.7 and dataset == "imagenet""#),
            &["baseline"],
            Some("-accuracy"),
            Some(5),
        ),
        (
            "versions",
            Some(r#"(loss < 0.5 or not frozen == true) and dataset != "coco""#),
            &[],
            None,
            Some(100),
        ),
        ("list", Some("accuracy >= 0.999"), &[], None, None),
    ];
    for (op, filter, tags, sort, limit) in queries {
        let tags: Vec<String> = tags.iter().map(|s| s.to_string()).collect();
        let (filter, sort) = (filter.map(str::to_string), sort.map(str::to_string));
        let fields = SearchFields {
            filter: filter.clone(),
            tags: tags.clone(),
            sort: sort.clone(),
            limit,
            cursor: None,
        };
        let req = Request::search((op == "versions").then(|| "big".to_string()), fields);
        let answer = c.call(&req).unwrap();
        let total = answer["total"].as_u64().unwrap_or(0);
        let runs = if quick { 10 } else { 30 };
        let ticks = super::cpu_ticks(d.pid());
        let (median, max) = timed(runs, || {
            c.call(&req).unwrap();
        });
        // The daemon's CPU time per query (10 ms ticks over every call, warm-ups too).
        let daemon_cpu = (super::cpu_ticks(d.pid()) - ticks) as f64 * 10.0 / (runs + 2) as f64;
        // In-process: compile, match every version, sort and cut the page (no socket,
        // no answer rows).
        let cpu0 = thread_cpu();
        let (inproc, _) = timed(runs, || {
            let s = Search::compile(SearchArgs {
                filter: filter.as_deref(),
                tags: &tags,
                sort: sort.as_deref(),
                limit,
                cursor: None,
                model: Some("big"),
            })
            .unwrap();
            let m = &catalog.models["big"];
            let hits: Vec<Hit<'_, u32>> = m
                .versions
                .iter()
                .filter(|v| s.matches("big", v))
                .map(|v| Hit {
                    key: s.key("big", v),
                    tie: Value::Num(f64::from(v.number)),
                    item: v.number,
                })
                .collect();
            std::hint::black_box(s.page(hits));
        });
        let inproc_cpu = (thread_cpu() - cpu0).as_secs_f64() * 1000.0 / (runs + 2) as f64;
        let shown = format!(
            "{op} --where '{}'{}{}{}",
            filter.as_deref().unwrap_or(""),
            tags.iter()
                .map(|t| format!(" --tag {t}"))
                .collect::<String>(),
            sort.map(|s| format!(" --sort {s}")).unwrap_or_default(),
            limit.map(|l| format!(" --limit {l}")).unwrap_or_default(),
        );
        t.add(
            "search",
            &format!("{n} versions: {shown} ({total} match), socket"),
            format!(
                "{} (max {}; daemon CPU {daemon_cpu:.1} ms)",
                ms(median),
                ms(max)
            ),
            format!("in-process {} (CPU {inproc_cpu:.1} ms)", ms(inproc)),
            format!(
                "{:.2}x",
                median.as_secs_f64() / inproc.as_secs_f64().max(1e-9)
            ),
            "<= 50 ms",
            Some(median <= GOAL),
        );
    }
    d.stop();
}
