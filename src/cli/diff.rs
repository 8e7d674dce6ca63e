//! `modelreg diff NAME A B`: what changed from version A to version B.
//!
//! Computed here from the two `get` answers: metric deltas marked better or worse by the
//! direction the daemon's settings give each metric (the answer's `directions`, as `best`
//! compares), metadata and extracted facts by key (nested maps by dotted key), the
//! parameter count, and the files by SHA-256 under their path inside the version.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use modelreg::config::Direction;
use modelreg::display::{compact_number, escape_for_terminal as esc};
use modelreg::protocol::VersionInfo;
use modelreg::registry::Kind;
use modelreg::status::human_bytes as human_size;
use serde::Serialize;
use serde_json::Value;

use super::render::table_lines;
use super::show::{grouped, relative, short_sha, value_text};

/// When to colour `better` and `worse` (`--color`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ColorChoice {
    /// On a terminal, unless `NO_COLOR` is set.
    Auto,
    /// Always (e.g. into `less -R`).
    Always,
    /// Never.
    Never,
}

impl ColorChoice {
    /// Whether to colour stdout: `auto` only on a terminal and without `NO_COLOR`
    /// (<https://no-color.org>: any non-empty value).
    pub(crate) fn enabled(self) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::io::stdout().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
        }
    }
}

/// The `diff` answer (`--json`).
#[derive(Debug, Serialize)]
pub(super) struct Diff {
    /// The model.
    name: String,
    /// The version compared from (`vN`).
    a: String,
    /// The version compared to (`vN`).
    b: String,
    /// Every metric of either version, by name.
    metrics: Vec<MetricDelta>,
    /// Metadata keys added, removed and changed.
    metadata: MapDiff,
    /// Extracted facts added, removed and changed (nested maps by dotted key).
    extracted: MapDiff,
    /// The parameter count, when either version has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<CountChange>,
    /// Files added, removed and changed, by path inside the version.
    files: FilesDiff,
}

/// How one metric moved.
#[derive(Debug, Serialize)]
struct MetricDelta {
    metric: String,
    a: Option<f64>,
    b: Option<f64>,
    /// b - a, when both have it.
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<f64>,
    /// The direction the daemon gives it (absent from older daemons' answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    direction: Option<Direction>,
    /// better, worse, same, changed (no direction known), added or removed.
    change: &'static str,
}

/// Changes of a map by key.
#[derive(Debug, Default, Serialize)]
struct MapDiff {
    added: BTreeMap<String, Value>,
    removed: BTreeMap<String, Value>,
    changed: BTreeMap<String, ValueChange>,
}

/// A key's value in A and in B.
#[derive(Debug, Serialize)]
struct ValueChange {
    a: Value,
    b: Value,
}

/// The parameter count in A and in B, and B's minus A's when both have one.
#[derive(Debug, Serialize)]
struct CountChange {
    a: Option<u64>,
    b: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<i128>,
}

/// Files by path inside the version, compared by SHA-256.
#[derive(Debug, Default, Serialize)]
struct FilesDiff {
    added: Vec<FileSide>,
    removed: Vec<FileSide>,
    changed: Vec<FileChange>,
    /// Files with the same path and SHA-256 in both.
    unchanged: usize,
}

/// One file of one version: its path inside the version, hash and size.
#[derive(Debug, Clone, Serialize)]
struct FileSide {
    path: String,
    sha256: String,
    size: u64,
}

/// A path whose content differs: `a -> b` in `path` when a single file was renamed.
#[derive(Debug, Serialize)]
struct FileChange {
    path: String,
    a: FileSide,
    b: FileSide,
}

/// Compares `a` with `b`.
pub(super) fn diff(a: &VersionInfo, b: &VersionInfo) -> Diff {
    let parameters = (count(a).is_some() || count(b).is_some()).then(|| CountChange {
        a: count(a),
        b: count(b),
        delta: count(a)
            .zip(count(b))
            .map(|(x, y)| i128::from(y) - i128::from(x)),
    });
    Diff {
        name: b.name.clone(),
        a: a.version.clone(),
        b: b.version.clone(),
        metrics: metric_deltas(a, b),
        metadata: map_diff(a.metadata.iter(), b.metadata.iter()),
        extracted: map_diff(a.extracted.iter(), b.extracted.iter()),
        parameters,
        files: files_diff(a, b),
    }
}

fn metric_deltas(a: &VersionInfo, b: &VersionInfo) -> Vec<MetricDelta> {
    let names: std::collections::BTreeSet<&String> = a
        .metrics
        .iter()
        .chain(b.metrics.iter())
        .map(|(k, _)| k)
        .collect();
    names
        .into_iter()
        .map(|k| {
            let (x, y) = (a.metrics.get(k).copied(), b.metrics.get(k).copied());
            let direction = b.directions.get(k).or(a.directions.get(k)).copied();
            let change = match (x, y) {
                (None, _) => "added",
                (_, None) => "removed",
                (Some(x), Some(y)) if x == y => "same",
                (Some(x), Some(y)) => match direction {
                    Some(Direction::Max) if y > x => "better",
                    Some(Direction::Min) if y < x => "better",
                    Some(_) => "worse",
                    None => "changed",
                },
            };
            MetricDelta {
                metric: k.clone(),
                a: x,
                b: y,
                delta: x.zip(y).map(|(x, y)| y - x),
                direction,
                change,
            }
        })
        .collect()
}

/// The parameter count in a version's extracted facts.
fn count(v: &VersionInfo) -> Option<u64> {
    v.extracted.get("parameters").and_then(Value::as_u64)
}

/// Nested maps flattened to dotted keys (`dtypes.F16`), so that one changed entry deep in
/// a header's metadata is one line, not the whole map twice.
fn flatten<'a>(
    entries: impl Iterator<Item = (&'a String, &'a Value)>,
    prefix: &str,
    out: &mut BTreeMap<String, Value>,
) {
    for (k, x) in entries {
        let key = format!("{prefix}{k}");
        match x {
            Value::Object(m) if !m.is_empty() => flatten(m.iter(), &format!("{key}."), out),
            _ => {
                out.insert(key, x.clone());
            }
        }
    }
}

fn map_diff<'a>(
    a: impl Iterator<Item = (&'a String, &'a Value)>,
    b: impl Iterator<Item = (&'a String, &'a Value)>,
) -> MapDiff {
    let (mut fa, mut fb) = (BTreeMap::new(), BTreeMap::new());
    flatten(a, "", &mut fa);
    flatten(b, "", &mut fb);
    let mut d = MapDiff::default();
    for (k, x) in &fa {
        match fb.get(k) {
            None => {
                d.removed.insert(k.clone(), x.clone());
            }
            Some(y) if y != x => {
                let change = ValueChange {
                    a: x.clone(),
                    b: y.clone(),
                };
                d.changed.insert(k.clone(), change);
            }
            Some(_) => {}
        }
    }
    for (k, y) in fb {
        if !fa.contains_key(&k) {
            d.added.insert(k, y);
        }
    }
    d
}

/// Files by path inside the version. Two single-file versions compare their one file
/// whatever its name (`model.pt` then `model.safetensors` is a change, not a swap).
fn files_diff(a: &VersionInfo, b: &VersionInfo) -> FilesDiff {
    let sides = |v: &VersionInfo| -> BTreeMap<String, FileSide> {
        v.files
            .iter()
            .map(|f| {
                let path = relative(v, f);
                let side = FileSide {
                    path: path.clone(),
                    sha256: f.sha256.clone(),
                    size: f.size,
                };
                (path, side)
            })
            .collect()
    };
    let (fa, mut fb) = (sides(a), sides(b));
    let single = |v: &VersionInfo| v.kind == Kind::File && v.files.len() == 1;
    let mut d = FilesDiff::default();
    if single(a) && single(b) {
        let (x, y) = (fa.into_values().next(), fb.into_values().next());
        if let (Some(x), Some(y)) = (x, y) {
            if x.sha256 == y.sha256 && x.path == y.path {
                d.unchanged = 1;
            } else {
                let path = if x.path == y.path {
                    y.path.clone()
                } else {
                    format!("{} -> {}", x.path, y.path)
                };
                d.changed.push(FileChange { path, a: x, b: y });
            }
        }
        return d;
    }
    for (path, x) in fa {
        match fb.remove(&path) {
            None => d.removed.push(x),
            Some(y) if y.sha256 != x.sha256 => d.changed.push(FileChange { path, a: x, b: y }),
            Some(_) => d.unchanged += 1,
        }
    }
    d.added = fb.into_values().collect();
    d
}

/// Prints `d` as text; `better` green and `worse` red when `color`.
pub(super) fn print_diff(d: &Diff, color: bool) {
    outln!("{} {} -> {}", esc(&d.name), esc(&d.a), esc(&d.b));

    let num = |x: Option<f64>| x.map(compact_number).unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = d
        .metrics
        .iter()
        .map(|m| {
            let delta = match (m.delta, m.a) {
                (Some(0.0), _) => "0".to_string(),
                (Some(dx), Some(a)) if a != 0.0 => {
                    let pct = format!("{:+.2}", dx / a.abs() * 100.0);
                    let pct = pct.trim_end_matches('0').trim_end_matches('.');
                    format!("{} ({pct}%)", signed(dx))
                }
                (Some(dx), _) => signed(dx),
                (None, _) => String::new(),
            };
            vec![
                format!("  {}", m.metric),
                num(m.a),
                "->".into(),
                num(m.b),
                delta,
                m.change.to_string(),
            ]
        })
        .collect();
    heading("metrics", rows.is_empty());
    for (line, m) in table_lines(&rows).into_iter().zip(&d.metrics) {
        outln!("{}", paint(line, m.change, color));
    }

    let mut rows = map_rows(&d.metadata);
    heading("metadata", rows.is_empty());
    print_rows(&rows);

    // The parameter count first, with its change in parameters (`+94,464`).
    rows = map_rows(&d.extracted);
    if let Some(i) = rows.iter().position(|r| r[0] == "  ~ parameters") {
        let mut r = rows.remove(i);
        if let Some(dx) = d.parameters.as_ref().and_then(|p| p.delta) {
            let sign = if dx > 0 { "+" } else { "" };
            r[1] = format!("{} ({sign}{})", r[1], grouped(dx));
        }
        rows.insert(0, r);
    }
    heading("extracted", rows.is_empty());
    print_rows(&rows);

    rows = Vec::new();
    let f = &d.files;
    for (mark, side) in [("+", &f.added), ("-", &f.removed)] {
        for x in side {
            let (size, sha) = (human_size(x.size), short_sha(&x.sha256));
            rows.push(file_row(mark, &x.path, size, sha));
        }
    }
    for x in &f.changed {
        let size = if x.a.size == x.b.size {
            human_size(x.b.size)
        } else {
            format!("{} -> {}", human_size(x.a.size), human_size(x.b.size))
        };
        let sha = format!("{} -> {}", short_sha(&x.a.sha256), short_sha(&x.b.sha256));
        rows.push(file_row("~", &x.path, size, sha));
    }
    heading("files", rows.is_empty());
    print_rows(&rows);
    if f.unchanged > 0 {
        outln!("  {} unchanged", f.unchanged);
    }
}

/// A blank line, the section's title, and `no change` when it has nothing to show.
fn heading(title: &str, empty: bool) {
    outln!();
    outln!("{title}");
    if empty {
        outln!("  no change");
    }
}

fn print_rows(rows: &[Vec<String>]) {
    for line in table_lines(rows) {
        outln!("{line}");
    }
}

fn file_row(mark: &str, path: &str, size: String, sha: String) -> Vec<String> {
    vec![format!("  {mark} {path}"), size, sha]
}

/// `+ key  value`, `- key  value`, `~ key  a -> b`.
fn map_rows(d: &MapDiff) -> Vec<Vec<String>> {
    let leaf = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
    let shown = |k: &String, x: &Value| value_text(&leaf(k), x);
    let mut rows = Vec::new();
    for (k, x) in &d.added {
        rows.push(vec![format!("  + {k}"), shown(k, x)]);
    }
    for (k, x) in &d.removed {
        rows.push(vec![format!("  - {k}"), shown(k, x)]);
    }
    for (k, c) in &d.changed {
        let text = format!("{} -> {}", shown(k, &c.a), shown(k, &c.b));
        rows.push(vec![format!("  ~ {k}"), text]);
    }
    rows
}

/// `+0.11`, `-0.1`.
fn signed(x: f64) -> String {
    let s = compact_number(x);
    if x > 0.0 { format!("+{s}") } else { s }
}

/// `line` with its last word (the verdict) coloured: green for better, red for worse.
/// Applied after padding and escaping, so the escape sequences are this program's own.
fn paint(line: String, change: &str, color: bool) -> String {
    let code = match change {
        "better" => "32",
        "worse" => "31",
        _ => return line,
    };
    match line.strip_suffix(change) {
        Some(head) if color => format!("{head}\x1b[{code}m{change}\x1b[0m"),
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_direction() {
        assert_eq!(
            paint("  acc  better".into(), "better", true),
            "  acc  \x1b[32mbetter\x1b[0m"
        );
        assert_eq!(
            paint("  loss  worse".into(), "worse", true),
            "  loss  \x1b[31mworse\x1b[0m"
        );
        assert_eq!(
            paint("  loss  worse".into(), "worse", false),
            "  loss  worse"
        );
        assert_eq!(paint("  x  same".into(), "same", true), "  x  same");
    }

    #[test]
    fn nested_maps_differ_by_dotted_key() {
        let a: serde_json::Map<String, Value> = serde_json::from_value(
            serde_json::json!({"dtypes": {"F32": 10, "F16": 2}, "format": "safetensors", "old": 1}),
        )
        .unwrap();
        let b: serde_json::Map<String, Value> =
            serde_json::from_value(serde_json::json!({"dtypes": {"F32": 10, "F16": 3}, "format": "safetensors", "new": true}))
                .unwrap();
        let d = map_diff(a.iter(), b.iter());
        assert_eq!(d.added.keys().collect::<Vec<_>>(), ["new"]);
        assert_eq!(d.removed.keys().collect::<Vec<_>>(), ["old"]);
        assert_eq!(d.changed.keys().collect::<Vec<_>>(), ["dtypes.F16"]);
    }
}
