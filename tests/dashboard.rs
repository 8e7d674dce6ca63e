//! The web dashboard in a real browser: the real daemon with its HTTP listener, a model
//! with metrics, an alias and hostile text, each page loaded by headless Chromium
//! (Debian's `chromium`; .ci/run installs it). The test reads the DOM the browser built,
//! follows every download link with curl, and saves a phone and a desktop screenshot of
//! each page (set MODELREG_SCREENS_DIR to keep copies).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::http::{address, get};
use common::tools::Browser;
use common::{TestDaemon, sidecar, write_renamed};
use modelreg::protocol::Request;

const CONFIG: &str = "settle: 200ms\nhttp:\n  listen: 127.0.0.1:0\n  anonymous_read: true\n";

/// A model name with `&` in it, as a file name can have.
const NAME: &str = "r&d";
/// A folder model, its name with a space (encoded in every link).
const FOLDER: &str = "tiny bert";
/// Metadata that would run if the page did not escape it.
const HOSTILE: &str = "<script>document.title='pwned'</script><img src=x onerror=alert(1)>";

/// The daemon with `r&d` at v1..v3 (accuracy 0.5, 0.8, 0.7; loss 0.9, 0.4, 0.5), v3
/// with hostile notes, and the alias `production` on v2; `plain` at v1 without metrics;
/// `tiny bert` at v1, a folder of `config.json` and `onnx/model a.onnx`.
fn daemon() -> TestDaemon {
    let d = TestDaemon::start(CONFIG);
    let inbox = d.inbox();
    for (i, (acc, loss)) in [(0.5, 0.9), (0.8, 0.4), (0.7, 0.5)].into_iter().enumerate() {
        let mut s = sidecar(&[("accuracy", acc), ("loss", loss)]);
        if i == 2 {
            s.push_str(&format!(
                "notes: {}\n",
                serde_json::to_string(HOSTILE).unwrap()
            ));
        }
        std::fs::write(inbox.join(format!("{NAME}.metrics.yaml")), s).unwrap();
        write_renamed(
            &inbox,
            &format!("{NAME}.pt"),
            format!("weights {i}").as_bytes(),
        );
        d.wait_versions(NAME, i + 1);
    }
    write_renamed(&inbox, "plain.bin", b"plain bytes");
    d.wait_versions("plain", 1);
    // A folder, moved into the inbox in one step as a download tool does.
    let staged = d.root.path().join("folder-staged");
    std::fs::create_dir_all(staged.join("onnx")).unwrap();
    std::fs::write(staged.join("config.json"), b"{\"layers\": 2}\n").unwrap();
    std::fs::write(staged.join("onnx/model a.onnx"), b"onnx bytes").unwrap();
    std::fs::rename(&staged, inbox.join(FOLDER)).unwrap();
    d.wait_versions(FOLDER, 1);
    d.call(&Request::AliasSet {
        name: NAME.into(),
        alias: "production".into(),
        version: "v2".into(),
    })
    .unwrap();
    d
}

/// Width and height from a PNG's header; panics when `bytes` is no PNG.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let n = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (n(16), n(20))
}

/// The `href`s of a DOM that start with `prefix`, `&amp;` decoded.
fn hrefs(dom: &str, prefix: &str) -> Vec<String> {
    dom.split("href=\"")
        .skip(1)
        .map(|s| s[..s.find('"').unwrap()].replace("&amp;", "&"))
        .filter(|h| h.starts_with(prefix))
        .collect()
}

/// The HTTP status curl gets for `url`.
fn curl_status(url: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "30",
            url,
        ])
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_page_loads_in_chromium_with_escaped_text_charts_and_working_links() {
    let d = daemon();
    let addr = address(&d);
    let base = format!("http://{addr}");
    let dir = d.root.path().join("browser");
    let browser = Browser::new(&dir);

    // The models page: both models, latest, best by accuracy, the alias.
    let dom = browser.dom(&format!("{base}/"));
    assert!(dom.contains("<title>Models · modelreg</title>"), "{dom}");
    assert!(dom.contains(">r&amp;d</a>"), "{dom}");
    assert!(dom.contains(">plain</a>"));
    assert!(
        dom.contains("href=\"/models/r%26d/v3\">v3</a>"),
        "latest: {dom}"
    );
    assert!(
        dom.contains("href=\"/models/r%26d/v2\">v2</a> <span class=\"muted\">accuracy 0.8</span>")
    );
    assert!(dom.contains("production → v2"));
    assert!(dom.contains("<main id=\"main\""));

    // The model page: a chart per metric, best ringed, every version, the alias history.
    let dom = browser.dom(&format!("{base}/models/r%26d"));
    assert_eq!(dom.matches("<svg").count(), 2, "{dom}");
    assert!(dom.contains("accuracy <span class=\"muted\">(higher is better; best v2 = 0.8)"));
    assert!(dom.contains("loss <span class=\"muted\">(lower is better; best v2 = 0.4)"));
    assert_eq!(dom.matches(">best v2</text>").count(), 2);
    assert!(dom.contains("<title id=\"chart-0-t\">accuracy across versions</title>"));
    for n in 1..=3 {
        assert!(
            dom.contains(&format!("href=\"/models/r%26d/v{n}\">v{n}</a></th>")),
            "v{n}"
        );
    }
    assert!(
        dom.contains("<th scope=\"row\">production</th><td>—</td><td>v2</td>"),
        "{dom}"
    );

    // The version page: hostile metadata stays text, files with hashes and links.
    let v3 = d.get(NAME, "v3").unwrap();
    let url = format!("{base}/models/r%26d/v3");
    let dom = browser.dom(&url);
    assert!(
        dom.contains("<title>r&amp;d v3 · modelreg</title>"),
        "the script ran: {dom}"
    );
    assert!(!dom.contains("<script") && !dom.contains("<img"), "{dom}");
    assert!(dom.contains("&lt;script&gt;document.title="));
    assert!(dom.contains(&v3.files[0].sha256));
    assert!(dom.contains("modelreg get 'r&amp;d' v3"));
    // `r&d` is no Hugging Face repository id: the page says so; `plain` gets the command
    // (sending no token: reading is anonymous here; tests/http_hub.rs runs it).
    assert!(dom.contains("The Hugging Face client refuses this model name"));
    let plain = browser.dom(&format!("{base}/models/plain/v1"));
    assert!(
        plain.contains(&format!(
            "snapshot_download(\"plain\", revision=\"v1\",\n    endpoint=\"{base}\", token=False)"
        )),
        "{plain}"
    );
    let links = hrefs(&dom, "/api/v1/models/");
    assert_eq!(links.len(), 1, "{links:?}");
    for link in &links {
        assert_eq!(curl_status(&format!("{base}{link}")), "200", "{link}");
        let a = get(&addr, link);
        assert_eq!(a.body, b"weights 2", "{link}");
    }
    // Every page link leads to a page.
    for link in hrefs(&dom, "/") {
        assert_eq!(curl_status(&format!("{base}{link}")), "200", "{link}");
    }

    // A folder version: each file by its path inside the version, and the whole as a tar.
    let dom = browser.dom(&format!("{base}/models/tiny%20bert/latest"));
    assert!(dom.contains("<code>latest</code> is v1 now"), "{dom}");
    let links = hrefs(&dom, "/api/v1/models/");
    assert_eq!(
        links,
        [
            "/api/v1/models/tiny%20bert/versions/v1/files/config.json",
            "/api/v1/models/tiny%20bert/versions/v1/files/onnx/model%20a.onnx",
            "/api/v1/models/tiny%20bert/versions/v1/tar",
        ]
    );
    for link in &links {
        assert_eq!(curl_status(&format!("{base}{link}")), "200", "{link}");
    }
    assert_eq!(get(&addr, &links[1]).body, b"onnx bytes");

    // What a keyboard, a screen reader and a phone need is in the DOM as the browser
    // built it.
    for page in ["/", "/models/r%26d", "/models/r%26d/v3"] {
        let dom = browser.dom(&format!("{base}{page}"));
        for needed in [
            "<html lang=\"en\">",
            "name=\"viewport\" content=\"width=device-width, initial-scale=1\"",
            "<a class=\"skip\" href=\"#main\">Skip to content</a>",
            "<nav aria-label=\"Breadcrumb\">",
            "<main id=\"main\" tabindex=\"-1\">",
            "role=\"region\" aria-label=",
        ] {
            assert!(dom.contains(needed), "{page} lacks {needed}");
        }
        assert_eq!(dom.matches("<h1>").count(), 1, "{page}");
    }

    // Screenshots: a phone and a desktop window of each page; each PNG has the window's
    // size and far more detail than a blank page of that size.
    let keep = std::env::var_os("MODELREG_SCREENS_DIR").map(PathBuf::from);
    for (w, h) in [(390, 844), (1280, 900)] {
        let blank = dir.join(format!("blank-{w}.png"));
        browser.screenshot("data:text/html,<title>blank</title>", &blank, (w, h));
        let blank = std::fs::metadata(&blank).unwrap().len();
        for (page, path) in [
            ("models", "/"),
            ("model", "/models/r%26d"),
            ("version", "/models/r%26d/v3"),
        ] {
            let file = dir.join(format!("dashboard-{page}-{w}x{h}.png"));
            browser.screenshot(&format!("{base}{path}"), &file, (w, h));
            let bytes = std::fs::read(&file).unwrap();
            assert_eq!(png_size(&bytes), (w, h), "{}", file.display());
            assert!(
                bytes.len() as u64 > 3 * blank,
                "{} is {} bytes, a blank page {blank}: nothing drawn?",
                file.display(),
                bytes.len()
            );
            println!("screenshot: {} ({} bytes)", file.display(), bytes.len());
            if let Some(keep) = &keep {
                std::fs::create_dir_all(keep).unwrap();
                std::fs::copy(&file, keep.join(file.file_name().unwrap())).unwrap();
            }
        }
    }
}

#[test]
fn unknown_models_and_versions_get_an_html_page_with_the_status_of_the_api() {
    let d = daemon();
    let addr = address(&d);
    let a = get(&addr, "/models/r%26e");
    assert_eq!(a.status, 404);
    assert_eq!(a.header("content-type"), Some("text/html; charset=utf-8"));
    let body = String::from_utf8(a.body).unwrap();
    assert!(body.contains("did you mean &quot;r&amp;d&quot;"), "{body}");
    assert_eq!(get(&addr, "/models/r%26d/v9").status, 404);
    assert_eq!(get(&addr, "/models/r%26d/..%2fx").status, 400);
    // A page is HTML that may run no script, whatever it holds.
    let a = get(&addr, "/models/r%26d/production");
    assert_eq!(a.status, 200);
    let csp = a.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(
        String::from_utf8(a.body)
            .unwrap()
            .contains("<h1>r&amp;d v2</h1>")
    );
}
