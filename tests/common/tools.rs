//! Outside programs the tests drive: headless Chromium, and the Python client's unittest
//! modules.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::BIN;

/// Headless Chromium, with a profile of its own in `dir` so that runs in parallel do
/// not share one.
pub struct Browser {
    profile: PathBuf,
}

impl Browser {
    pub fn new(dir: &Path) -> Browser {
        let found = Command::new("sh")
            .args(["-c", "command -v chromium"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "this test needs Debian's `chromium` (apt-get install chromium; .ci/run does)"
        );
        let profile = dir.join("chromium-profile");
        std::fs::create_dir_all(&profile).unwrap();
        Browser { profile }
    }

    /// Runs chromium on `url` with `args`; its stdout. Killed after a minute: a browser
    /// that hangs fails the test rather than holding it forever.
    pub fn run(&self, url: &str, args: &[&str]) -> String {
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--disable-extensions",
            ])
            .arg(format!("--user-data-dir={}", self.profile.display()))
            .args(args)
            .arg(url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium did not finish within 60 s on {url}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "chromium {args:?} {url}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The DOM after the page loaded, as the browser serialises it.
    pub fn dom(&self, url: &str) -> String {
        self.run(url, &["--dump-dom"])
    }

    /// A screenshot of `url` in a window of `w` x `h` into `file`.
    pub fn screenshot(&self, url: &str, file: &Path, (w, h): (u32, u32)) {
        self.run(
            url,
            &[
                &format!("--screenshot={}", file.display()),
                &format!("--window-size={w},{h}"),
            ],
        );
    }
}

/// A page in `dir` (opened as a file: URL, another origin than the daemon's) whose
/// `EventSource` on `url` writes `<id> <kind> <model>|` for each event of `kinds` it
/// hears, and `error|` on an error, into the DOM, closing the stream after `n` events
/// (or the error) so that the page goes idle and the DOM can be dumped. Its URL.
pub fn event_source_page(dir: &Path, url: &str, kinds: &[&str], n: usize) -> String {
    let page = dir.join("page.html");
    let kinds = serde_json::to_string(kinds).unwrap();
    std::fs::write(
        &page,
        format!(
            r#"<html><body><pre id="out"></pre><script>
const out = document.getElementById("out");
const es = new EventSource("{url}");
let n = 0;
for (const k of {kinds}) es.addEventListener(k, (m) => {{
  out.textContent += m.lastEventId + " " + k + " " + JSON.parse(m.data).model + "|";
  if (++n == {n}) es.close();
}});
es.onerror = () => {{ out.textContent += "error|"; es.close(); }};
</script></body></html>"#
        ),
    )
    .unwrap();
    format!("file://{}", page.display())
}

/// Runs `python3 -m unittest ARGS` in clients/python/tests with MODELREG_BIN set to
/// the binary under test; its output (printed too), after asserting it passed.
pub fn python_unittest(args: &[&str]) -> String {
    let out = Command::new("python3")
        .args(["-m", "unittest"])
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python/tests"))
        .env("MODELREG_BIN", BIN)
        .output()
        .expect("python3 is installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "python tests {args:?} failed:\n{text}"
    );
    text
}
