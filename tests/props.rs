//! Property tests (issue 4): arbitrary bytes fed to every parser of outside input give an
//! error or a value, never a panic; a catalog survives a trip through registry.yaml.

use std::collections::BTreeMap;
use std::sync::Arc;

use modelreg::protocol::parse_request;
use modelreg::registry::{Catalog, Kind, Model, SourceRecord, StoredFile, Version, persist};
use proptest::prelude::*;

/// Text that looks enough like YAML or JSON to get past the first bytes of a parser.
fn yamlish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("metrics:".to_string()),
            Just("\n  ".to_string()),
            Just(": ".to_string()),
            Just("- ".to_string()),
            Just("{".to_string()),
            Just("}".to_string()),
            Just("[".to_string()),
            Just("\"".to_string()),
            Just("format: 1\n".to_string()),
            Just("models:\n".to_string()),
            Just("versions:\n".to_string()),
            Just("v1:".to_string()),
            Just(".nan".to_string()),
            Just("&a *a".to_string()),
            Just("!!binary".to_string()),
            "[a-z0-9_.]{0,8}",
            any::<f64>().prop_map(|f| f.to_string()),
        ],
        0..40,
    )
    .prop_map(|v| v.concat())
}

fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            Just(b"{\"op\":\"get\"".to_vec()),
            Just(b",\"name\":".to_vec()),
            Just(b",\"selector\":".to_vec()),
            Just(b",\"mode\":\"min\"".to_vec()),
            Just(b"\"v1\"".to_vec()),
            Just(b"}".to_vec()),
            Just(b"null".to_vec()),
            Just(b"[".to_vec()),
            Just(b"\\u0000".to_vec()),
            prop::collection::vec(any::<u8>(), 0..8),
        ],
        0..20,
    )
    .prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn request_parser_never_panics(line in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_request(&line);
    }

    #[test]
    fn request_parser_never_panics_on_jsonish(line in jsonish()) {
        let _ = parse_request(&line);
    }

    #[test]
    fn sidecar_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = modelreg::sidecar::parse("x.metrics.yaml", &bytes);
    }

    #[test]
    fn sidecar_parser_never_panics_on_yamlish(text in yamlish()) {
        if let Err(e) = modelreg::sidecar::parse("x.metrics.yaml", text.as_bytes()) {
            prop_assert!(e.to_string().starts_with("x.metrics.yaml"));
        }
    }

    #[test]
    fn registry_loader_never_panics(text in "\\PC{0,400}") {
        let _ = persist::from_yaml("registry.yaml", &text);
    }

    #[test]
    fn registry_loader_never_panics_on_yamlish(text in yamlish()) {
        let _ = persist::from_yaml("registry.yaml", &text);
    }

    #[test]
    fn catalog_round_trips(c in catalog()) {
        let text = persist::to_yaml(&c).unwrap();
        let back = persist::from_yaml("registry.yaml", &text).unwrap();
        prop_assert_eq!(back.sources, c.sources);
        prop_assert_eq!(back.models.len(), c.models.len());
        for (name, m) in &c.models {
            prop_assert_eq!(&*back.models[name], &**m);
        }
    }
}

fn version(n: u32) -> impl Strategy<Value = Version> {
    (
        prop::collection::btree_map(
            "[a-z_]{1,10}",
            any::<f64>().prop_filter("finite", |f| f.is_finite()),
            0..4,
        ),
        "\\PC{0,20}",
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(move |(metrics, note, size, folder)| Version {
            number: n,
            kind: if folder { Kind::Folder } else { Kind::File },
            files: vec![StoredFile {
                path: format!("models/m/v{n}/m.pt"),
                sha256: "0".repeat(64),
                size,
            }],
            source: "pretrained_models/m.pt".into(),
            registered_at: "2026-11-26T00:00:00Z".into(),
            metrics: metrics.into_iter().collect(),
            metadata: [("notes".to_string(), serde_json::Value::String(note))]
                .into_iter()
                .collect(),
            sidecar: None,
            metrics_history: vec![],
            deprecated: None,
            removed: None,
        })
}

fn catalog() -> impl Strategy<Value = Catalog> {
    let model = (1u32..6).prop_flat_map(|count| {
        (0..count)
            .map(|i| version(i + 1))
            .collect::<Vec<_>>()
            .prop_map(|vs| {
                let mut m = Model::default();
                for v in vs {
                    m.push(v);
                }
                m
            })
    });
    (
        prop::collection::btree_map("[A-Za-z0-9_\\-\\.가-힣]{1,12}", model, 0..4),
        prop::collection::btree_map("\\PC{1,12}", "[0-9:]{1,20}", 0..4),
    )
        .prop_map(|(models, sources)| Catalog {
            models: models
                .into_iter()
                .map(|(k, m)| (k, Arc::new(m)))
                .collect::<BTreeMap<_, _>>(),
            sources: sources
                .into_iter()
                .map(|(k, fp)| {
                    (
                        k,
                        SourceRecord {
                            fingerprint: fp,
                            model: "m".into(),
                            version: Some(1),
                            sha256: None,
                        },
                    )
                })
                .collect(),
        })
}
