//! Helpers for the journal's tests: its path, its records on disk, registry.yaml alone,
//! and a seeded random source for kill points.

use std::time::{SystemTime, UNIX_EPOCH};

use modelreg::registry::persist;

use super::{BIN, TestDaemon, bytes, write_renamed};

/// A daemon whose registry.yaml waits an hour between rewrites (so changes stay in the
/// journal), with model m at v1 and v2.
pub fn two_versions() -> TestDaemon {
    let d = TestDaemon::start("settle: 50ms\nregistry_write_interval: 1h\n");
    for n in 1..=2u64 {
        write_renamed(&d.inbox(), "m.pt", &bytes(n, 128));
        d.wait_versions("m", n as usize);
    }
    d
}

/// Model m with production at v1 (in an older registry.yaml, returned) and then staging
/// at v2, both written to registry.yaml (so the journal continues the newer one).
pub fn with_an_older_copy() -> (TestDaemon, String) {
    let d = two_versions();
    d.client().alias_set("m", "production", "v1").unwrap();
    d.client().compact().unwrap();
    let old = std::fs::read_to_string(d.registry_path()).unwrap();
    d.client().alias_set("m", "staging", "v2").unwrap();
    d.client().compact().unwrap();
    (d, old)
}

/// Where each alias of m points, from the catalog the daemon committed.
pub fn aliases(d: &TestDaemon) -> Vec<(String, u32)> {
    d.catalog().models["m"]
        .aliases
        .iter()
        .map(|(a, n)| (a.clone(), *n))
        .collect()
}

/// registry.journal beside `d`'s registry.yaml.
pub fn journal_path(d: &TestDaemon) -> std::path::PathBuf {
    persist::journal_path(&d.registry_path())
}

/// The journal's records as they are on disk now.
pub fn records(d: &TestDaemon) -> Vec<(modelreg::registry::Delta, u64)> {
    persist::journal::scan(&journal_path(d))
        .unwrap()
        .map_or_else(Vec::new, |s| s.records)
}

/// registry.yaml alone, as a person reading it sees it.
pub fn file_catalog(d: &TestDaemon) -> modelreg::registry::Catalog {
    persist::load(&d.registry_path()).unwrap().unwrap()
}

/// A small xorshift, seeded from the clock (or `JOURNAL_SEED`) and printed, so that a
/// failing run can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new() -> Rng {
        let seed = std::env::var("JOURNAL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("JOURNAL_SEED={seed}");
        Rng(seed | 1)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// `modelreg recover --root ROOT` on `d`'s root: whether it succeeded, and its stdout and
/// stderr.
pub fn recover(d: &TestDaemon) -> (bool, String) {
    let out = std::process::Command::new(BIN)
        .args(["recover", "--root"])
        .arg(d.root.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
