//! The extract scenario: what reading a version's headers adds to registering a 1 GiB
//! safetensors file, against a daemon with `extract: false`, in the same run.

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use super::{Daemon, Table, fill, median};

/// The tensors' size: 4 MiB each (2048 x 1024 F16), as a large model's layers are.
const TENSOR_BYTES: u64 = 4 << 20;

/// Scenario: `modelreg add` (the descriptor hand-over: copy, hash, fsync, commit) of one
/// safetensors file of 1 GiB (100 MiB quick), to a daemon that extracts and one that does
/// not, alternating which goes first, a few bytes of the data changed before each round
/// so that every call makes a new version. Also the extraction alone on that file, in
/// this process.
pub(super) fn extract(t: &mut Table, scratch: &Path, quick: bool) {
    let size: u64 = if quick { 100 << 20 } else { 1 << 30 };
    let rounds = if quick { 3 } else { 5 };
    let dir = scratch.join("extract-src");
    // A run that failed half-way left its source: 1 GiB not to keep twice.
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("big.safetensors");
    write_safetensors(&file, size);
    let mut on = Daemon::new(scratch, "extract", "settle: 1h\n");
    let mut off = Daemon::new(scratch, "extract", "settle: 1h\nextract: false\n");
    on.start();
    off.start();
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let len = fs::metadata(&file).unwrap().len();
    for round in 0..rounds {
        // Closed again before `add`, which refuses a file still open for writing.
        let handle = fs::OpenOptions::new().write(true).open(&file).unwrap();
        handle
            .write_all_at(&(round as u64 + 1).to_le_bytes(), len - 8)
            .unwrap();
        handle.sync_all().unwrap();
        drop(handle);
        let mut order = [(&on, &mut with), (&off, &mut without)];
        if round % 2 == 1 {
            order.reverse();
        }
        for (d, times) in order {
            let t0 = Instant::now();
            let out = d.cli(&["add", file.to_str().unwrap(), "--name", "big", "--wait"]);
            assert!(
                out.status.success(),
                "add: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            times.push(t0.elapsed().as_secs_f64());
        }
        // The facts really were read (and not by the other daemon).
        let facts = |d: &Daemon| d.get("big", "latest").unwrap().extracted;
        assert_eq!(facts(&on)["format"], "safetensors");
        assert!(facts(&off).is_empty());
        // Each version removed once timed: the disk holds one copy per daemon at most.
        for d in [&on, &off] {
            let out = d.cli(&["rm", "big", &format!("v{}", round + 1)]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // Each round's pair, for the noise a loaded machine adds (the row shows medians).
    let secs = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    eprintln!(
        "  extract: with {} s; without {} s",
        secs(&with),
        secs(&without)
    );
    let (w, wo) = (median(&mut with), median(&mut without));
    // The header read alone, on the same file (in the page cache, as the staged copy
    // the daemon reads is, having just written it), in this process.
    let mut alone: Vec<f64> = (0..20)
        .map(|_| {
            let t0 = Instant::now();
            let f = modelreg::extract::inspect(&dir, &["big.safetensors".into()], false);
            assert_eq!(f.extracted["format"], "safetensors");
            t0.elapsed().as_secs_f64()
        })
        .collect();
    let a = median(&mut alone);
    // The bar: what extraction adds to a registration. Judged on the header read's own
    // time, because the end-to-end times below swing by seconds on a loaded machine
    // (each round's pair is on stderr) and cannot resolve a difference of milliseconds.
    let added = (wo + a) / wo;
    t.add(
        "extract (1 GiB safetensors)",
        "registration + header read, over registration alone",
        format!("{:.3} ms header read", a * 1e3),
        format!("{:.0} ms registering without", wo * 1e3),
        format!("{added:.5}x"),
        "<= 1.05x",
        Some(added <= 1.05),
    );
    t.add(
        "extract (1 GiB safetensors)",
        &format!(
            "`modelreg add` of {}, median of {rounds}, end to end (s)",
            human(size)
        ),
        format!("{w:.2} s with extraction"),
        format!("{wo:.2} s with `extract: false`"),
        format!("{:.3}x", w / wo),
        "- (noise)",
        None,
    );
    on.stop();
    off.stop();
    let _ = fs::remove_dir_all(&dir);
}

/// A safetensors file of about `size` bytes: F16 tensors of [`TENSOR_BYTES`] each, of
/// pseudo-random data.
fn write_safetensors(path: &Path, size: u64) {
    let n = (size / TENSOR_BYTES).max(1);
    let mut header = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    for i in 0..n {
        let (a, b) = (i * TENSOR_BYTES, (i + 1) * TENSOR_BYTES);
        header.push_str(&format!(
            ",\"model.layers.{i}.weight\":{{\"dtype\":\"F16\",\"shape\":[2048,1024],\"data_offsets\":[{a},{b}]}}"
        ));
    }
    header.push('}');
    let mut f = fs::File::create(path).unwrap();
    f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    f.write_all(header.as_bytes()).unwrap();
    let mut buf = vec![0u8; TENSOR_BYTES as usize];
    for i in 0..n {
        fill(i + 1, &mut buf);
        f.write_all(&buf).unwrap();
    }
    f.sync_all().unwrap();
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}
