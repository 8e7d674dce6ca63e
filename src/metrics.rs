//! Counters and fixed-bucket histograms on atomics, and their Prometheus text exposition
//! (format 0.0.4), for `/metrics`. No I/O and no locks: recording is a few relaxed atomic
//! adds, so the hot paths (every HTTP request, every commit) pay next to nothing.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket bounds (seconds) for HTTP request latencies: 100 µs to 10 s.
pub const REQUEST_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Bucket bounds (seconds) for registrations (copy, hash and commit of a version): 10 ms
/// to an hour, since a version can be a few bytes or hundreds of gigabytes.
pub const REGISTRATION_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
    3600.0,
];

/// A histogram of durations over fixed bucket bounds (seconds, ascending). Each
/// observation lands in one slot (the first bound it does not exceed, or the overflow
/// slot); the exposition sums them into Prometheus's cumulative `le` buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One slot per bound, plus the overflow slot (above the last bound).
    slots: Box<[AtomicU64]>,
    /// The sum of all observations, in nanoseconds (overflows after 584 years).
    sum_ns: AtomicU64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending seconds).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "ascending bounds");
        Histogram {
            bounds,
            slots: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = self.bounds.partition_point(|b| *b < secs);
        self.slots[slot].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// How many observations were recorded.
    pub fn count(&self) -> u64 {
        self.slots.iter().map(|s| s.load(Ordering::Relaxed)).sum()
    }

    /// Writes the `_bucket`, `_sum` and `_count` samples of `name` with `labels`. The
    /// count is the sum of the slots read once, so `+Inf` and `_count` always agree and
    /// the buckets never decrease, even while observations are being recorded.
    fn write(&self, out: &mut Exposition, name: &str, labels: &[(&str, &str)]) {
        let mut cumulative = 0;
        for (i, slot) in self.slots.iter().enumerate() {
            cumulative += slot.load(Ordering::Relaxed);
            let le = self.bounds.get(i).map_or("+Inf".to_string(), |b| float(*b));
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            out.sample(&format!("{name}_bucket"), &with_le, cumulative as f64);
        }
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        out.sample(&format!("{name}_sum"), labels, sum);
        out.sample(&format!("{name}_count"), labels, cumulative as f64);
    }
}

/// The kind of a metric family, as its `# TYPE` line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (reset at restart); its name ends in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, sum and count.
    Histogram,
}

/// A Prometheus text exposition being written: `# HELP` and `# TYPE` once per family,
/// then its samples, with label values escaped.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Exposition {
    /// Starts the family `name`: its help text and type.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        // In HELP only backslash and newline are escaped.
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample of the family begun last.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", float(value));
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A histogram's samples under `name` (its family begun with [`Exposition::family`]).
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        h.write(self, name, labels);
    }

    /// The text.
    pub fn finish(self) -> String {
        self.text
    }
}

/// A label value escaped as the text format asks: backslash, double quote, newline.
fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
}

/// A value as the text format writes it (`+Inf`, `-Inf`, `NaN`, else Rust's shortest
/// round-tripping decimal).
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_they_do_not_exceed() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(100)); // le 0.1: bounds are inclusive
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(5)); // only +Inf
        let mut e = Exposition::default();
        e.family("d_seconds", Kind::Histogram, "help");
        e.histogram("d_seconds", &[("route", "/a")], &h);
        let text = e.finish();
        assert!(
            text.contains("d_seconds_bucket{route=\"/a\",le=\"0.1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("d_seconds_bucket{route=\"/a\",le=\"1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("d_seconds_bucket{route=\"/a\",le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("d_seconds_sum{route=\"/a\"} 5.6\n"), "{text}");
        assert!(text.contains("d_seconds_count{route=\"/a\"} 3\n"), "{text}");
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut e = Exposition::default();
        e.family("x", Kind::Gauge, "a \\ b\nc");
        e.sample("x", &[("v", "q\"b\\n\nl")], f64::INFINITY);
        assert_eq!(
            e.finish(),
            "# HELP x a \\\\ b\\nc\n# TYPE x gauge\nx{v=\"q\\\"b\\\\n\\nl\"} +Inf\n"
        );
    }
}
