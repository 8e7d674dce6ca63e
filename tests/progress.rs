//! Progress of a registration: `status` shows the bytes copied so far, the total, a rate
//! and an ETA while a large file is copied, and the log has a start line and a finish
//! line with size, duration and throughput.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use modelreg::protocol::Request;

const MIB: usize = 1 << 20;
const GIB: u64 = 1 << 30;

/// Writes 1 GiB of real (non-sparse, not all-zero) data under a hidden name and renames
/// it into the inbox, as rsync or a download does.
fn drop_one_gib(inbox: &std::path::Path, name: &str) {
    let tmp = inbox.join(format!(".{name}.part"));
    let mut f = std::io::BufWriter::with_capacity(MIB, std::fs::File::create(&tmp).unwrap());
    let blocks: Vec<Vec<u8>> = (0..8).map(|i| bytes(i, MIB)).collect();
    for i in 0..(GIB as usize / MIB) {
        f.write_all(&blocks[i % blocks.len()]).unwrap();
    }
    f.into_inner().unwrap().sync_all().unwrap();
    std::fs::rename(&tmp, inbox.join(name)).unwrap();
}

#[test]
fn status_shows_the_bytes_copied_growing_to_the_total_during_a_large_registration() {
    let d = TestDaemon::quick();
    drop_one_gib(&d.inbox(), "big.bin");
    // Poll status on one connection as fast as it answers, until the version exists.
    let mut client = d.client();
    let mut samples: Vec<(u64, u64, Option<f64>, Option<f64>)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = client.call(&Request::Status {}).expect("status");
        if let Some(w) = s["waiting"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == "big" && w["state"] == "registering")
            && let (Some(done), Some(total)) = (w["bytes_done"].as_u64(), w["bytes_total"].as_u64())
        {
            samples.push((
                done,
                total,
                w["rate_bytes_per_sec"].as_f64(),
                w["eta_secs"].as_f64(),
            ));
        }
        if !d.versions("big").is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "big was never registered");
    }
    let mut distinct: Vec<(u64, usize)> = Vec::new();
    for s in &samples {
        match distinct.last_mut() {
            Some((d, n)) if *d == s.0 => *n += 1,
            _ => distinct.push((s.0, 1)),
        }
    }
    eprintln!("bytes_done seen (value, times): {distinct:?}");
    assert!(
        !samples.is_empty(),
        "status never showed the copy's progress"
    );
    for (done, total, rate, eta) in &samples {
        assert_eq!(*total, GIB, "{samples:?}");
        assert!(*done <= *total, "{samples:?}");
        if *done > 0 {
            assert!(rate.is_some_and(|r| r > 0.0), "{samples:?}");
            assert!(eta.is_some_and(|e| e >= 0.0), "{samples:?}");
        }
    }
    assert!(
        samples.windows(2).all(|w| w[0].0 <= w[1].0),
        "bytes_done went backwards: {samples:?}"
    );
    let first = samples.first().unwrap().0;
    let last = samples.last().unwrap().0;
    assert!(
        first < last && first < GIB,
        "bytes_done did not grow while copying: {samples:?}"
    );
    // Once registered, nothing is left copying.
    let after = d.call(&Request::Status {}).unwrap();
    assert!(
        after["waiting"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w.get("bytes_done").is_none()),
        "{after}"
    );
    // The log: a start line with the size, a finish line with size, duration and rate.
    let log = d.log();
    assert!(
        log.lines()
            .any(|l| l.contains("registering big: 1.0 GiB in 1 file(s)")),
        "{log}"
    );
    let finish = log
        .lines()
        .find(|l| l.contains("registered big v1: 1.0 GiB in "))
        .unwrap_or_else(|| panic!("no finish line in {log}"));
    assert!(
        finish.contains("/s)") && finish.contains("bytes=1073741824"),
        "{finish}"
    );
}
