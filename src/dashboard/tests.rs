//! The pages drawn from a stub catalog: what they show, and that user text never becomes
//! markup.

use std::sync::Arc;

use super::*;
use crate::registry::tests::{model, v};
use crate::registry::{AliasMove, Kind, Mark, StoredFile};

/// A hostile but valid model name: `&`, `<`, quotes and a space.
const NAME: &str = "r&d <b>\"x'";

fn config() -> (tempfile::TempDir, Config) {
    let root = tempfile::tempdir().unwrap();
    let cfg = Config::load(root.path(), None).unwrap();
    (root, cfg)
}

fn file(name: &str, n: u32, rel: &str, size: u64) -> StoredFile {
    StoredFile {
        path: format!("models/{name}/v{n}/{rel}"),
        sha256: format!("{n:064x}"),
        size,
    }
}

/// `NAME`: v1 (accuracy 0.7), v2 deprecated, v3 (0.9, metadata with a script, alias
/// production), v4 removed, v5 a folder (0.8, loss NaN). Plus `plain` with no metrics.
fn catalog() -> Catalog {
    let mut v1 = v(1, &[("accuracy", 0.7), ("loss", 0.5)]);
    v1.files.push(file(NAME, 1, "m.pt", 1000));
    let mut v2 = v(2, &[("accuracy", 0.95)]);
    v2.files.push(file(NAME, 2, "m.pt", 1000));
    v2.deprecated = Some(Box::new(Mark {
        at: "2026-11-27T10:00:00Z".into(),
        reason: Some("leaked <test> set".into()),
        uid: None,
    }));
    let mut v3 = v(3, &[("accuracy", 0.9), ("loss", 0.3)]);
    v3.files.push(file(NAME, 3, "m.pt", 2048));
    v3.metadata = [
        ("notes".to_string(), "<script>alert(1)</script>".into()),
        (
            "params".to_string(),
            serde_json::json!({"lr": 0.1, "tag": "<i>"}),
        ),
    ]
    .into();
    v3.registered_at = "2026-11-27T11:00:00Z".into();
    let mut v4 = v(4, &[("accuracy", 0.99)]);
    v4.removed = Some(Box::new(Mark {
        at: "2026-11-27T12:00:00Z".into(),
        reason: None,
        uid: Some(0),
    }));
    let mut v5 = v(5, &[("accuracy", 0.8), ("loss", f64::NAN)]);
    v5.kind = Kind::Folder;
    v5.files.push(file(NAME, 5, "config.json", 10));
    v5.files.push(file(NAME, 5, "onnx/model a.onnx", 1 << 20));
    let mut m = model(vec![v1, v2, v3, v4, v5]);
    m.aliases.insert("production".into(), 3);
    m.alias_history.push(AliasMove {
        alias: "production".into(),
        from: None,
        to: Some(1),
        at: "2026-11-27T09:00:00Z".into(),
        uid: None,
        by: "set".into(),
    });
    m.alias_history.push(AliasMove {
        alias: "production".into(),
        from: Some(1),
        to: Some(3),
        at: "2026-11-27T11:30:00Z".into(),
        uid: None,
        by: "set".into(),
    });
    let mut plain = v(1, &[]);
    plain.files.push(file("plain", 1, "plain.bin", 5));
    let mut c = Catalog::default();
    c.models.insert(NAME.into(), Arc::new(m));
    c.models
        .insert("plain".into(), Arc::new(model(vec![plain])));
    c
}

fn site<'a>(catalog: &'a Catalog, cfg: &'a Config) -> Site<'a> {
    Site {
        catalog,
        config: cfg,
        base_url: "http://reg.example:8080",
    }
}

/// No user text reached the page as markup: the only tags are the dashboard's own.
fn no_injected_markup(page: &str) {
    for bad in ["<script", "<b>", "<i>", "<test>", "x'\"", "\"x'"] {
        assert!(!page.contains(bad), "{bad:?} in the page:\n{page}");
    }
}

#[test]
fn an_empty_registry_says_how_to_add_a_model() {
    let (_root, cfg) = config();
    let c = Catalog::default();
    let p = models_page(&site(&c, &cfg), 1).unwrap();
    assert!(p.contains("No models yet."));
    assert!(p.contains("pretrained_models/"));
    assert!(!p.contains("<table"));
}

#[test]
fn ten_thousand_models_are_shown_a_hundred_a_page_with_links_between_pages() {
    let (_root, cfg) = config();
    let mut c = Catalog::default();
    for i in 0..10_000 {
        let name = format!("model-{i:05}");
        let mut one = v(1, &[("accuracy", 0.5)]);
        one.files.push(file(&name, 1, "m.pt", 100));
        c.models.insert(name, Arc::new(model(vec![one])));
    }
    let s = site(&c, &cfg);
    assert_eq!(model_pages(c.models.len()), 100);
    let first = models_page(&s, 1).unwrap();
    assert_eq!(first.matches("<th scope=\"row\">").count(), MODELS_PER_PAGE);
    assert!(
        first.contains("10000 models"),
        "the summary counts them all"
    );
    assert!(first.contains("Page 1 of 100"));
    assert!(first.contains("<a href=\"/?page=2\" rel=\"next\">Next</a>"));
    assert!(first.contains("<a href=\"/?page=100\" rel=\"last\">Last</a>"));
    assert!(!first.contains("rel=\"prev\""));
    // All 10,000 rows made a 3 MB page; a hundred make a light one.
    assert!(first.len() < 100_000, "{} bytes", first.len());
    let middle = models_page(&s, 2).unwrap();
    assert!(middle.contains("<a href=\"/\" rel=\"prev\">Previous</a>"));
    assert!(middle.contains("model-00100") && !middle.contains("model-00099<"));
    let last = models_page(&s, 100).unwrap();
    assert!(last.contains("model-09999") && !last.contains("rel=\"next\""));
    assert!(models_page(&s, 101).is_none());
    assert!(models_page(&s, 0).is_none());
}

#[test]
fn the_models_page_shows_latest_best_aliases_count_and_size() {
    let (_root, cfg) = config();
    let c = catalog();
    let p = models_page(&site(&c, &cfg), 1).unwrap();
    no_injected_markup(&p);
    assert!(p.contains("2 models, 5 stored versions"));
    // Latest is v5; best by accuracy skips deprecated v2 and removed v4.
    assert!(p.contains("<a href=\"/models/r%26d%20%3Cb%3E%22x%27/v5\">v5</a>"));
    assert!(p.contains("/v3\">v3</a> <span class=\"muted\">accuracy 0.9</span>"));
    assert!(p.contains("production → v3"));
    assert!(p.contains("r&amp;d &lt;b&gt;&quot;x&#39;</a>"));
    // 1000 + 1000 + 2048 + 10 + 1 MiB.
    assert!(p.contains(&format!("title=\"{} bytes\"", 4058 + (1 << 20))));
    // The model without metrics has no best, and says why.
    assert!(p.contains("no live version has accuracy"));
}

#[test]
fn a_model_page_has_a_chart_per_metric_every_version_and_the_alias_history() {
    let (_root, cfg) = config();
    let c = catalog();
    let p = model_page(&site(&c, &cfg), NAME).unwrap();
    no_injected_markup(&p);
    assert_eq!(p.matches("<svg").count(), 2, "accuracy and loss");
    assert!(p.contains("accuracy <span class=\"muted\">(higher is better; best v3 = 0.9)"));
    assert!(p.contains("loss <span class=\"muted\">(lower is better; best v3 = 0.3)"));
    assert!(p.contains("1 value is not plotted"), "v5's NaN loss");
    // Every version, the tombstone too, newest first, with its state.
    let rows: Vec<usize> = (1..=5)
        .map(|n| p.find(&format!("/v{n}\">v{n}</a></th>")).unwrap())
        .collect();
    assert!(rows.windows(2).all(|w| w[0] > w[1]), "{rows:?}");
    assert!(p.contains("<span class=\"deprecated\" title=\"deprecated at 2026-11-27T10:00:00Z: leaked &lt;test&gt; set\">"));
    assert!(p.contains(">removed</span>"));
    assert!(p.contains(
        "<td>2026-11-27T11:30:00Z</td><th scope=\"row\">production</th><td>v1</td><td>v3</td>"
    ));
    // Headings in order: one h1, then h2s.
    assert_eq!(p.matches("<h1>").count(), 1);
    assert!(!p.contains("<h3") || p.find("<h2").unwrap() < p.find("<h3").unwrap());
}

#[test]
fn a_model_without_metrics_or_aliases_says_so() {
    let (_root, cfg) = config();
    let c = catalog();
    let p = model_page(&site(&c, &cfg), "plain").unwrap();
    assert!(p.contains("No version has metrics."));
    assert!(p.contains("No alias has been set."));
    assert!(!p.contains("<svg"));
}

#[test]
fn an_unknown_model_is_the_error_get_gives() {
    let (_root, cfg) = config();
    let c = catalog();
    let e = model_page(&site(&c, &cfg), "plian").unwrap_err();
    assert!(matches!(e, RegistryError::ModelNotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("did you mean \"plain\""));
    let page = error_page("Not found", &e.to_string());
    assert!(page.contains("did you mean &quot;plain&quot;"));
}

#[test]
fn a_version_page_shows_files_metadata_and_commands_escaped() {
    let (_root, cfg) = config();
    let c = catalog();
    let p = version_page(&site(&c, &cfg), NAME, "v3").unwrap();
    no_injected_markup(&p);
    assert!(p.contains("<h1>r&amp;d &lt;b&gt;&quot;x&#39; v3</h1>"));
    assert!(p.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(p.contains("{&quot;lr&quot;:0.1,&quot;tag&quot;:&quot;&lt;i&gt;&quot;}"));
    let href = "/api/v1/models/r%26d%20%3Cb%3E%22x%27/versions/v3/files/m.pt";
    assert!(p.contains(&format!("<a href=\"{href}\">m.pt</a>")));
    assert!(p.contains(&format!("{:064x}", 3)));
    // Commands quote the name for their language, then the page escapes them.
    assert!(p.contains("modelreg get &#39;r&amp;d &lt;b&gt;&quot;x&#39;\\&#39;&#39;&#39; v3"));
    assert!(p.contains(
        "ModelRegistry().get(&quot;r&amp;d &lt;b&gt;\\&quot;x&#39;&quot;, &quot;v3&quot;)"
    ));
    // Not a name the Hugging Face client takes: said instead of a command that fails.
    assert!(p.contains("The Hugging Face client refuses this model name"));
    assert!(!p.contains("snapshot_download"));
    let plain = version_page(&site(&c, &cfg), "plain", "v1").unwrap();
    // No anonymous reading (the default): the token comes from $MODELREG_TOKEN.
    assert!(plain.contains(
        "import os\nfrom huggingface_hub import snapshot_download\n\
path = snapshot_download(&quot;plain&quot;, revision=&quot;v1&quot;,\n    \
endpoint=&quot;http://reg.example:8080&quot;, token=os.environ[&quot;MODELREG_TOKEN&quot;])\n\
print(path)"
    ));
    assert!(p.contains(&format!(
        "curl -fLO -H &quot;Authorization: Bearer $MODELREG_TOKEN&quot; http://reg.example:8080{href}"
    )));
    assert!(p.contains("put a read token in <code>MODELREG_TOKEN</code>"));
    assert!(p.contains("<span class=\"tag\">production</span>"));
}

#[test]
fn a_folder_version_links_each_file_by_its_path_inside_the_version() {
    let (_root, cfg) = config();
    let c = catalog();
    let p = version_page(&site(&c, &cfg), NAME, "latest").unwrap();
    assert!(p.contains("<h1>r&amp;d &lt;b&gt;&quot;x&#39; v5</h1>"));
    assert!(p.contains("<code>latest</code> is v5 now"));
    assert!(p.contains("/versions/v5/files/onnx/model%20a.onnx\">onnx/model a.onnx</a>"));
    assert!(p.contains("<a href=\"/api/v1/models/r%26d%20%3Cb%3E%22x%27/versions/v5/tar\">"));
    assert!(p.contains("a folder, 2 files"));
    // Several files: no single-file curl command.
    assert!(!p.contains("curl -fLO"));
    // The exact value of a metric, NaN included, as the catalog holds it.
    assert!(p.contains("<td class=\"num\">NaN</td>"));
}

#[test]
fn selectors_resolve_as_get_does_and_a_tombstone_says_it_was_removed() {
    let (_root, cfg) = config();
    let c = catalog();
    let s = site(&c, &cfg);
    assert!(
        version_page(&s, NAME, "best")
            .unwrap()
            .contains("<h1>r&amp;d &lt;b&gt;&quot;x&#39; v3</h1>")
    );
    assert!(
        version_page(&s, NAME, "production")
            .unwrap()
            .contains(" v3</h1>")
    );
    let removed = version_page(&s, NAME, "v4").unwrap();
    assert!(removed.contains("This version was removed"));
    assert!(!removed.contains("/files/"));
    assert!(matches!(
        version_page(&s, NAME, "v9"),
        Err(RegistryError::VersionNotFound { .. })
    ));
    assert!(matches!(
        version_page(&s, NAME, "staging"),
        Err(RegistryError::AliasNotFound { .. })
    ));
    assert!(matches!(
        version_page(&s, NAME, "../x"),
        Err(RegistryError::InvalidSelector { .. })
    ));
}

#[test]
fn a_model_with_many_versions_shows_the_newest_and_points_to_the_api_for_all() {
    let (_root, cfg) = config();
    let mut c = Catalog::default();
    let vs = (1..=600)
        .map(|n| v(n, &[("accuracy", f64::from(n))]))
        .collect();
    c.models.insert("many".into(), Arc::new(model(vs)));
    let p = model_page(&site(&c, &cfg), "many").unwrap();
    assert!(p.contains("the newest 500 of 600 versions"));
    assert!(p.contains("<a href=\"/api/v1/models/many/versions\">the JSON API</a>"));
    assert_eq!(p.matches("class=\"pt\"").count(), 500);
    assert!(p.contains("/many/v600\">v600</a></th>") && p.contains("/many/v101\">v101</a></th>"));
    assert!(!p.contains("/many/v100\">"));
}

#[test]
fn with_anonymous_reading_the_commands_send_no_token() {
    let root = tempfile::tempdir().unwrap();
    let yaml = "http:\n  listen: 127.0.0.1:0\n  anonymous_read: true\n";
    let cfg = Config::from_yaml(root.path(), yaml, crate::config::ConfigSource::Embedded).unwrap();
    let c = catalog();
    let p = version_page(&site(&c, &cfg), NAME, "v3").unwrap();
    assert!(p.contains("curl -fLO http://reg.example:8080/api/v1/models/"));
    assert!(!p.contains("MODELREG_TOKEN"));
    let plain = version_page(&site(&c, &cfg), "plain", "v1").unwrap();
    // token=False: a Hugging Face login the client finds would be refused here.
    assert!(plain.contains("endpoint=&quot;http://reg.example:8080&quot;, token=False)"));
    assert!(!plain.contains("import os"));
}
