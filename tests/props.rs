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

fn version(name: String, n: u32) -> impl Strategy<Value = Version> {
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
                path: format!("models/{name}/v{n}/m.pt"),
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
            metric_sources: Default::default(),
            extracted: Default::default(),
            provenance: Default::default(),
            deprecated: None,
            removed: None,
        })
}

fn model(name: String) -> impl Strategy<Value = Model> {
    (1u32..6).prop_flat_map(move |count| {
        (0..count)
            .map(|i| version(name.clone(), i + 1))
            .collect::<Vec<_>>()
            .prop_map(|vs| {
                let mut m = Model::default();
                for v in vs {
                    m.push(v);
                }
                m
            })
    })
}

fn catalog() -> impl Strategy<Value = Catalog> {
    let names = prop::collection::btree_set("[A-Za-z0-9_가-힣][A-Za-z0-9_\\-\\.가-힣]{0,11}", 0..4);
    let models = names.prop_flat_map(|names| {
        names
            .into_iter()
            .map(|n| model(n.clone()).prop_map(move |m| (n.clone(), Arc::new(m))))
            .collect::<Vec<_>>()
    });
    (
        models,
        prop::collection::btree_map(
            "[A-Za-z0-9_\\- 가-힣][A-Za-z0-9_\\-\\. 가-힣]{0,11}",
            "[0-9:]{1,20}",
            0..4,
        ),
    )
        .prop_map(|(models, sources)| Catalog {
            models: models.into_iter().collect::<BTreeMap<_, _>>(),
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
            journal_seq: 0,
            event_seq: 0,
        })
}

/// Any YAML value, nested up to 40 levels (beyond the sidecar limit), with the numbers
/// YAML can write (NaN and infinities included) and any text.
fn yaml_value() -> impl Strategy<Value = serde_yaml::Value> {
    use serde_yaml::Value as Y;
    let leaf = prop_oneof![
        Just(Y::Null),
        any::<bool>().prop_map(Y::Bool),
        any::<i64>().prop_map(|i| Y::Number(i.into())),
        any::<u64>().prop_map(|i| Y::Number(i.into())),
        any::<f64>().prop_map(|f| Y::Number(f.into())),
        prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(-0.0)]
            .prop_map(|f| Y::Number(f.into())),
        any::<String>().prop_map(Y::String),
        "[ -~]{0,12}".prop_map(Y::String),
    ];
    leaf.prop_recursive(40, 400, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Y::Sequence),
            prop::collection::vec((sidecar_key(), inner), 0..4).prop_map(|kv| {
                Y::Mapping(kv.into_iter().map(|(k, v)| (Y::String(k), v)).collect())
            }),
        ]
    })
}

fn sidecar_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("metrics".to_string()),
        Just("metadata".to_string()),
        Just("params".to_string()),
        Just("tags".to_string()),
        Just("dataset".to_string()),
        Just("accuracy".to_string()),
        "[a-z_]{1,8}",
        any::<String>(),
    ]
}

/// A sidecar as a training script would write it: a map at the top, in YAML or JSON.
fn sidecar_text() -> impl Strategy<Value = (String, String)> {
    (
        prop::collection::vec((sidecar_key(), yaml_value()), 0..5),
        any::<bool>(),
    )
        .prop_filter_map("JSON cannot hold NaN", |(kv, json)| {
            let top = serde_yaml::Value::Mapping(
                kv.into_iter()
                    .map(|(k, v)| (serde_yaml::Value::String(k), v))
                    .collect(),
            );
            if json {
                let v: serde_json::Value = serde_yaml::from_value(top).ok()?;
                Some((
                    "s.metrics.json".to_string(),
                    serde_json::to_string(&v).ok()?,
                ))
            } else {
                Some((
                    "s.metrics.yaml".to_string(),
                    serde_yaml::to_string(&top).ok()?,
                ))
            }
        })
}

/// A name as an uploader might spell it: dotted, Unicode in either form, with bidi
/// controls, zero-width characters or path tricks.
fn raw_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_\\-\\. ]{1,20}",
        "\\PC{1,20}",
        any::<String>(),
        Just("cafe\u{301}".to_string()),
        Just("a\u{202e}b".to_string()),
        Just("../../x".to_string()),
    ]
}

/// What a registered version holding this sidecar would be.
fn version_with(name: &str, s: &modelreg::sidecar::Sidecar) -> Version {
    Version {
        number: 1,
        kind: Kind::File,
        files: vec![StoredFile {
            path: format!("models/{name}/v1/{name}.pt"),
            sha256: "0".repeat(64),
            size: 1,
        }],
        source: format!("pretrained_models/{name}.pt"),
        registered_at: "2026-11-26T00:00:00Z".into(),
        metrics: s.metrics.clone().into_iter().collect(),
        metadata: s.metadata.clone().into_iter().collect(),
        sidecar: None,
        metrics_history: vec![],
        metric_sources: Default::default(),
        extracted: Default::default(),
        provenance: Default::default(),
        deprecated: None,
        removed: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Whatever the daemon accepts (a sidecar, a name) it writes to registry.yaml and
    /// the start-up cache and loads again, unchanged, with and without the cache.
    #[test]
    fn accepted_sidecars_and_names_load_again((shown, text) in sidecar_text(), raw in raw_name()) {
        let Ok(name) = modelreg::names::model_name(&raw) else {
            return Ok(());
        };
        let Ok(parsed) = modelreg::sidecar::parse(&shown, text.as_bytes()) else {
            return Ok(());
        };
        let mut m = Model::default();
        m.push(version_with(&name, &parsed));
        let mut c = Catalog::default();
        c.models.insert(name.clone(), Arc::new(m));
        c.sources.insert(format!("{name}.pt"), SourceRecord {
            fingerprint: "1:2:3".into(),
            model: name.clone(),
            version: Some(1),
            sha256: None,
        });
        let dir = tempfile::tempdir().unwrap();
        let reg = dir.path().join("registry.yaml");
        let yaml = persist::to_yaml(&c).unwrap();
        persist::write_atomic(&reg, yaml.as_bytes()).unwrap();
        persist::write_cache(&reg, &c).unwrap();
        let from_cache = persist::load_with_cache(&reg).unwrap().unwrap();
        std::fs::remove_file(persist::cache_path(&reg)).unwrap();
        let from_yaml = persist::load_with_cache(&reg).unwrap().unwrap();
        for back in [from_cache, from_yaml] {
            prop_assert_eq!(&back.sources, &c.sources);
            prop_assert_eq!(&*back.models[&name], &*c.models[&name]);
        }
    }

    /// Refusals of sidecars name the file (and a line where there is one).
    #[test]
    fn refused_sidecars_say_where((shown, text) in sidecar_text()) {
        if let Err(e) = modelreg::sidecar::parse(&shown, text.as_bytes()) {
            prop_assert!(e.to_string().starts_with(&shown), "{}", e);
        }
    }
}

/// One file or folder name as an uploader might give it inside a folder: plain, any
/// Unicode, or one of the characters registry.yaml refuses (line breaks, tabs, DEL,
/// NEL, bidi controls, zero-width characters, fillers), hidden, or a temporary's.
fn raw_component() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_\\-\\. ]{1,12}",
        "\\PC{1,12}",
        any::<String>(),
        prop::sample::select(vec![
            "a\nb",
            "a\tb",
            "a\u{7f}b",
            "a\u{85}b",
            "a\u{8}b",
            "a\u{202e}b",
            "a\u{200b}b",
            "a\u{3164}",
            "x.p\tt",
            ".hidden",
            "-x",
            "cafe\u{301}",
            "a\rb",
            "a\u{2028}b",
        ])
        .prop_map(str::to_string),
    ]
}

/// What a version registered from `files` (relative paths inside the version) of inbox
/// entry `entry` would be.
fn version_of(name: &str, entry: &str, folder: bool, rels: &[String]) -> Version {
    Version {
        number: 1,
        kind: if folder { Kind::Folder } else { Kind::File },
        files: rels
            .iter()
            .map(|rel| StoredFile {
                path: format!("models/{name}/v1/{rel}"),
                sha256: "0".repeat(64),
                size: 1,
            })
            .collect(),
        source: format!("pretrained_models/{entry}"),
        registered_at: "2026-11-26T00:00:00Z".into(),
        metrics: Default::default(),
        metadata: Default::default(),
        sidecar: None,
        metrics_history: vec![],
        metric_sources: Default::default(),
        extracted: Default::default(),
        provenance: Default::default(),
        deprecated: None,
        removed: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Whatever the inbox walk accepts as an artifact (a file, or a folder with files
    /// and subfolders under any names) is written to registry.yaml and the start-up
    /// cache and loads again after a restart, under the names it was stored with.
    #[test]
    fn accepted_files_and_folders_load_again(
        entry in raw_component(),
        folder in any::<bool>(),
        rels in prop::collection::vec(prop::collection::vec(raw_component(), 1..3), 1..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().join("in");
        std::fs::create_dir(&inbox).unwrap();
        // Names the file system will not hold ('/', NUL) are not a question here.
        let top = inbox.join(&entry);
        if entry.contains(['/', '\0']) || top.parent() != Some(inbox.as_path()) {
            return Ok(());
        }
        if folder {
            if std::fs::create_dir(&top).is_err() {
                return Ok(());
            }
            for comps in &rels {
                if comps.iter().any(|c| c.is_empty() || c.contains(['/', '\0']) || c == "." || c == "..") {
                    return Ok(());
                }
                let p = comps.iter().fold(top.clone(), |p, c| p.join(c));
                if std::fs::create_dir_all(p.parent().unwrap()).is_err()
                    || std::fs::write(&p, b"x").is_err()
                {
                    return Ok(());
                }
            }
        } else if std::fs::write(&top, b"x").is_err() {
            return Ok(());
        }
        let modelreg::inbox::Look::Files { folder: is_folder, files } =
            modelreg::inbox::look(&inbox, &entry, false)
        else {
            return Ok(());
        };
        let modelreg::names::Entry::Artifact { name } =
            modelreg::names::classify(std::ffi::OsStr::new(&entry), is_folder)
        else {
            return Ok(());
        };
        let rels: Vec<String> = files.iter().map(|f| f.rel.clone()).collect();
        let mut m = Model::default();
        m.push(version_of(&name, &entry, is_folder, &rels));
        let mut c = Catalog::default();
        c.models.insert(name.clone(), Arc::new(m));
        c.sources.insert(entry.clone(), SourceRecord {
            fingerprint: "1:2:3".into(),
            model: name.clone(),
            version: Some(1),
            sha256: None,
        });
        let reg = dir.path().join("registry.yaml");
        let yaml = persist::to_yaml(&c).unwrap();
        persist::write_atomic(&reg, yaml.as_bytes()).unwrap();
        persist::write_cache(&reg, &c).unwrap();
        let from_cache = persist::load_with_cache(&reg).unwrap().unwrap();
        std::fs::remove_file(persist::cache_path(&reg)).unwrap();
        let from_yaml = persist::load_with_cache(&reg);
        prop_assert!(from_yaml.is_ok(), "{:?} {:?}: {:?}", entry, rels, from_yaml.err());
        for back in [from_cache, from_yaml.unwrap().unwrap()] {
            prop_assert_eq!(&back.sources, &c.sources);
            prop_assert_eq!(&*back.models[&name], &*c.models[&name]);
        }
    }
}
