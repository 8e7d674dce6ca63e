//! The crate's modules depend on lower layers only: no import circles, and the catalog's
//! rules never reach up into the actors or the transport. docs/architecture.md draws the
//! same table; this test is what keeps the drawing true.

use std::collections::BTreeMap;
use std::path::Path;

/// Each top-level module of src/ and its layer: a module may name only modules of a
/// lower layer (`crate::x`). The binary's own modules (main.rs, cli/) sit above them all.
const LAYERS: &[(&str, u32)] = &[
    ("error", 0),
    ("names", 0),
    ("users", 0),
    ("shutdown", 0),
    ("systemd", 1),
    ("suggest", 0),
    ("metrics", 0),
    ("fsutil", 1),
    ("display", 1),
    ("config", 1),
    ("sidecar", 1),
    ("registry", 2),
    ("protocol", 3),
    ("query", 3),
    ("store", 3),
    ("inbox", 3),
    ("tokens", 3),
    ("events", 3),
    ("blobs", 3),
    ("extract", 3),
    ("catalogdb", 3),
    ("status", 4),
    ("verify", 4),
    ("messages", 4),
    ("client", 4),
    ("layout", 5),
    ("hfcache", 5),
    ("dashboard", 5),
    ("team", 5),
    ("watcher", 6),
    ("ingest", 6),
    ("server", 7),
    ("deliver", 7),
    // A second door to the server's handlers: it asks them (server::dispatch).
    ("http", 8),
    ("daemon", 9),
];

/// The text of a source file without its unit tests (they may use anything).
fn without_tests(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |i| &text[..i])
}

/// Every `crate::name` a text refers to, including names inside `use crate::{a, b::c}`.
fn crate_refs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                out.push(name);
            }
        } else {
            out.push(
                rest.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    out
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_module_uses_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layer: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut wrong = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for path in all {
        let rel = path.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "main" || top == "lib" || top == "cli" {
            continue;
        }
        let Some(&own) = layer.get(top.as_str()) else {
            wrong.push(format!(
                "src/{}: module {top:?} has no layer in tests/layers.rs",
                rel.display()
            ));
            continue;
        };
        seen.insert(top.clone());
        let text = std::fs::read_to_string(&path).unwrap();
        for used in crate_refs(without_tests(&text)) {
            if used == top || used.is_empty() {
                continue;
            }
            match layer.get(used.as_str()) {
                Some(&l) if l < own => {}
                Some(&l) => wrong.push(format!(
                    "src/{}: {top} (layer {own}) uses {used} (layer {l})",
                    rel.display()
                )),
                None => {}
            }
        }
    }
    for (m, _) in LAYERS {
        assert!(
            seen.contains(*m),
            "tests/layers.rs names {m}, which src/ no longer has"
        );
    }
    assert!(
        wrong.is_empty(),
        "dependencies must point down:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_reference_scanner_sees_grouped_and_plain_uses() {
    let refs = crate_refs("use crate::{a::X, b};\nlet x = crate::c::f();");
    assert_eq!(refs, ["a", "b", "c"]);
    assert_eq!(without_tests("x\n#[cfg(test)]\nmod tests {}"), "x\n");
}
