//! The clients over the HTTP API, from "another machine" (no socket, no root): the CLI's
//! `--url`/`$MODELREG_URL` with a token from `--token-file` or `$MODELREG_TOKEN` printing
//! exactly what it prints over the socket, `add` as an upload, clear refusals for a
//! missing or wrong token, an unreachable address and the commands that stay on the
//! daemon's machine; and the Python client's HTTP tests (clients/python/tests/over_http.py:
//! downloads resumed after a cut connection, a corrupted partial refused).

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::http::make_cert;
use common::*;

const CONFIG: &str = "settle: 200ms\nhttp:\n  listen: 127.0.0.1:0\n";
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A daemon with the HTTP API on a free port, its URL, and a token file of each scope.
struct Remote {
    d: TestDaemon,
    url: String,
    read: std::path::PathBuf,
    write: std::path::PathBuf,
    /// Where the remote commands run: not the root, with no socket in reach.
    elsewhere: tempfile::TempDir,
}

impl Remote {
    fn start() -> Remote {
        let d = TestDaemon::start(CONFIG);
        let url = api_url(&d);
        let elsewhere = tempfile::tempdir().unwrap();
        let (read, write) = common::http::token_files(&d, elsewhere.path());
        Remote {
            d,
            url,
            read,
            write,
            elsewhere,
        }
    }

    /// `modelreg` run away from the root, with no socket in reach and no MODELREG_*
    /// variables but `env`.
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(BIN);
        c.current_dir(self.elsewhere.path())
            .env_remove("MODELREG_ROOT")
            .env_remove("MODELREG_SOCKET")
            .env_remove("MODELREG_CONFIG")
            .env_remove("MODELREG_URL")
            .env_remove("MODELREG_TOKEN")
            .args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("run modelreg")
    }

    /// `args` over `--url` with the token file `token`; asserts success, returns stdout.
    fn ok(&self, token: &Path, args: &[&str]) -> String {
        let mut all = vec!["--url", &self.url, "--token-file", token.to_str().unwrap()];
        all.extend_from_slice(args);
        let o = self.run(&all, &[]);
        assert!(
            o.status.success(),
            "modelreg {all:?}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        stdout(&o)
    }

    /// `args` over `--url` (token file `token`, if any); asserts the exit code, returns
    /// stderr.
    fn fails(&self, token: Option<&Path>, args: &[&str], code: i32) -> String {
        let mut all = vec!["--url", &self.url];
        if let Some(t) = token {
            all.extend(["--token-file", t.to_str().unwrap()]);
        }
        all.extend_from_slice(args);
        let o = self.run(&all, &[]);
        assert_eq!(
            o.status.code(),
            Some(code),
            "modelreg {all:?}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        stderr(&o)
    }
}

/// The API's URL from `status`, waited for (a daemon before main's 01ae4af answered on
/// its socket a moment before the address was on the status board).
fn api_url(d: &TestDaemon) -> String {
    let mut url = None;
    wait_until(
        Duration::from_secs(10),
        "the HTTP address in status",
        || {
            url = d.status().http;
            url.is_some()
        },
    );
    url.unwrap()
}

/// Two versions of `m` (metrics acc), an alias, and a folder model.
fn populate(r: &Remote) {
    let inbox = r.d.inbox();
    std::fs::write(inbox.join("m.metrics.yaml"), sidecar(&[("acc", 0.5)])).unwrap();
    write_renamed(&inbox, "m.pt", &bytes(1, 5000));
    r.d.wait_versions("m", 1);
    std::fs::write(inbox.join("m.metrics.yaml"), sidecar(&[("acc", 0.7)])).unwrap();
    write_renamed(&inbox, "m.pt", &bytes(2, 5000));
    r.d.wait_versions("m", 2);
    ok(&r.d, &["alias", "set", "m", "production", "v1"]);
}

#[test]
fn cli_over_url_prints_what_it_prints_over_the_socket() {
    let r = Remote::start();
    populate(&r);
    for args in [
        &["list"][..],
        &["list", "--json"],
        &["versions", "m"],
        &["versions", "m", "--json"],
        &["get", "m"],
        &["get", "m", "v1", "--json"],
        &["get", "m", "production"],
        &["get", "m", "best", "--metric", "acc", "--max"],
        &["get", "m", "latest", "--path"],
        &["history", "m"],
        &["history", "m", "--json"],
    ] {
        assert_eq!(r.ok(&r.read, args), ok(&r.d, args), "modelreg {args:?}");
    }
    // Errors too: the daemon's own message, the same exit code.
    for args in [&["get", "m", "v9"][..], &["versions", "nope"]] {
        let local = r.d.cli(args);
        let o = r.run(
            &[&["--url", &r.url][..], args].concat(),
            &[(
                "MODELREG_TOKEN",
                std::fs::read_to_string(&r.read).unwrap().trim(),
            )],
        );
        assert_eq!(
            (o.status.code(), stderr(&o)),
            (local.status.code(), stderr(&local))
        );
    }
    // status: the same daemon (its inbox, its API's address).
    let status: serde_json::Value =
        serde_json::from_str(&r.ok(&r.read, &["status", "--json"])).unwrap();
    assert_eq!(status["inbox"], r.d.status().inbox);
    assert_eq!(status["http"], r.url.as_str());
    // $MODELREG_URL and $MODELREG_TOKEN instead of the options.
    let token = std::fs::read_to_string(&r.read).unwrap();
    let o = r.run(
        &["list"],
        &[("MODELREG_URL", &r.url), ("MODELREG_TOKEN", token.trim())],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), ok(&r.d, &["list"]));
}

#[test]
fn cli_add_over_url_uploads_a_file_and_a_folder() {
    let r = Remote::start();
    let src = r.elsewhere.path().join("resnet.pt");
    std::fs::write(&src, bytes(3, 70_000)).unwrap();
    let out = r.ok(
        &r.write,
        &[
            "add",
            src.to_str().unwrap(),
            "--metric",
            "acc=0.9",
            "--meta",
            "dataset=imnet",
        ],
    );
    let v = r.d.get("resnet", "latest").unwrap();
    assert_eq!(out, format!("resnet v1  {}\n", v.path));
    assert_eq!(std::fs::read(&v.path).unwrap(), bytes(3, 70_000));
    assert_eq!(v.metrics["acc"], 0.9);
    assert_eq!(v.metadata["dataset"], "imnet");
    // The same bytes again: no new version, as over the socket.
    let out = r.ok(&r.write, &["add", src.to_str().unwrap()]);
    assert!(out.contains("identical to the newest version"), "{out}");
    // A folder goes as a tar, with a path longer than ustar's 100 bytes.
    let folder = r.elsewhere.path().join("bert");
    let deep = folder.join("sub").join("x".repeat(60)).join("y".repeat(60));
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(folder.join("config.json"), b"{}").unwrap();
    std::fs::write(deep.join("vocab.txt"), bytes(4, 3000)).unwrap();
    // Hidden entries are not sent (a link among them would otherwise refuse the tar).
    std::os::unix::fs::symlink("/etc/passwd", folder.join(".cache-link")).unwrap();
    let out = r.ok(&r.write, &["add", folder.to_str().unwrap(), "--json"]);
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["created"], true, "{out}");
    let v = r.d.get("bert", "latest").unwrap();
    let rel = deep.strip_prefix(&folder).unwrap().join("vocab.txt");
    assert_eq!(
        std::fs::read(Path::new(&v.dir).join(rel)).unwrap(),
        bytes(4, 3000)
    );
    // A read token may not upload: said, with what to do.
    let e = r.fails(Some(&r.read), &["add", src.to_str().unwrap()], 4);
    assert!(e.contains("scope write"), "{e}");
}

#[test]
fn cli_over_url_without_or_with_a_wrong_token_is_refused_clearly() {
    let r = Remote::start();
    let e = r.fails(None, &["list"], 4);
    assert!(e.contains(&format!("{} refused the request", r.url)), "{e}");
    assert!(e.contains("--token-file FILE or $MODELREG_TOKEN"), "{e}");
    let wrong = r.elsewhere.path().join("wrong.token");
    std::fs::write(&wrong, format!("mr_{}\n", "0".repeat(64))).unwrap();
    let e = r.fails(Some(&wrong), &["list"], 4);
    assert!(e.contains("not one the daemon keeps"), "{e}");
    let missing = r.elsewhere.path().join("no-such.token");
    let e = r.fails(Some(&missing), &["list"], 1);
    assert!(
        e.contains("--token-file") && e.contains("no-such.token"),
        "{e}"
    );
    // A revoked token is refused from the next command on.
    ok(&r.d, &["token", "revoke", "reader"]);
    let e = r.fails(Some(&r.read), &["list"], 4);
    assert!(e.contains("revoked"), "{e}");
}

#[test]
fn cli_over_an_unreachable_or_bad_url_says_so() {
    let r = Remote::start();
    // A port nobody listens on (bound, then released).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let o = r.run(&["--url", &closed, "list"], &[]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&format!("no modelreg HTTP API answers at {closed}"))
            && e.contains("http.listen"),
        "{e}"
    );
    for (url, why) in [
        ("ftp://gpu-box:8080", "expected http://HOST:PORT"),
        ("gpu-box:8080", "expected http://HOST:PORT"),
        ("http://gpu-box:port", "the port is not a number"),
    ] {
        let o = r.run(&["--url", url, "list"], &[]);
        assert_eq!(o.status.code(), Some(2), "{url}: bad usage");
        assert!(stderr(&o).contains(why), "{url}: {}", stderr(&o));
    }
}

#[test]
fn cli_over_https_trusts_the_authority_given_with_cacert() {
    let mut d = TestDaemon::new("");
    let tls = d.root.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    // A self-signed certificate for 127.0.0.1, as tests/http_tls.rs makes one.
    make_cert(&tls);
    d.write_config(
        "settle: 200ms\nhttp:\n  listen: 127.0.0.1:0\n  tls:\n    cert: tls/cert.pem\n    key: tls/key.pem\n",
    );
    d.spawn();
    let url = api_url(&d);
    assert!(url.starts_with("https://"), "{url}");
    write_renamed(&d.inbox(), "m.pt", &bytes(1, 5000));
    d.wait_versions("m", 1);
    let token = ok(&d, &["token", "create", "t", "--scope", "read"]);
    let cert = tls.join("cert.pem");
    let run = |extra: &[&str]| {
        Command::new(BIN)
            .args(["--url", &url])
            .args(extra)
            .args(["versions", "m"])
            .env("MODELREG_TOKEN", token.trim())
            .env_remove("MODELREG_CACERT")
            .output()
            .unwrap()
    };
    let o = run(&["--cacert", cert.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), ok(&d, &["versions", "m"]));
    // Without it, the self-signed certificate is refused, saying what to give.
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("certificate") && e.contains("--cacert"), "{e}");
    // The Python client, trusting it through $MODELREG_CACERT.
    let py = |cacert: Option<&Path>| {
        let mut c = Command::new("python3");
        c.current_dir(Path::new(REPO).join("clients/python"))
            .args([
                "-c",
                "import modelreg; print([m.name for m in modelreg.ModelRegistry().list()])",
            ])
            .env("MODELREG_URL", &url)
            .env("MODELREG_TOKEN", token.trim())
            .env_remove("MODELREG_CACERT");
        if let Some(f) = cacert {
            c.env("MODELREG_CACERT", f);
        }
        c.output().unwrap()
    };
    let o = py(Some(&cert));
    assert_eq!(stdout(&o), "['m']\n", "{}", stderr(&o));
    let o = py(None);
    assert!(stderr(&o).contains("set MODELREG_CACERT"), "{}", stderr(&o));
}

#[test]
fn commands_that_stay_on_the_daemons_machine_are_refused_over_url() {
    let r = Remote::start();
    populate(&r);
    for (args, op) in [
        // Alias changes and deprecate are served (tests/http_changes.rs); these are not.
        (&["rm", "m", "v2"][..], "rm"),
        (&["gc"], "gc"),
        (&["compact"], "compact"),
        (&["verify"], "verify"),
        (&["token", "list"], "token_list"),
    ] {
        let e = r.fails(Some(&r.write), args, 1);
        assert!(
            e.contains(&format!("`{op}` is not served over HTTP"))
                && e.contains("Run this command on the daemon's machine"),
            "{args:?}: {e}"
        );
    }
    // Those that read the root on this machine say they cannot go over a URL.
    for (args, what) in [
        (
            &["recover"][..],
            "`recover` works on the root on the daemon's machine",
        ),
        (
            &["verify", "--offline"],
            "`verify --offline` works on the root",
        ),
    ] {
        let e = r.fails(Some(&r.write), args, 1);
        assert!(
            e.contains(what) && e.contains("not over --url"),
            "{args:?}: {e}"
        );
    }
    // Nothing changed.
    assert_eq!(r.d.versions("m").len(), 2);
    assert_eq!(r.d.get("m", "production").unwrap().version, "v1");
}

#[test]
fn cli_download_over_url_resumes_a_partial_and_refuses_wrong_bytes() {
    let r = Remote::start();
    populate(&r);
    let want = r.d.get("m", "latest").unwrap();
    let original = std::fs::read(&want.path).unwrap();
    let out = r.ok(&r.read, &["download", "m"]);
    assert_eq!(out, "m v2 -> ./m.pt (1 file(s), 4.9 KiB, sha256 checked)\n");
    let here = r.elsewhere.path();
    assert_eq!(std::fs::read(here.join("m.pt")).unwrap(), original);
    // A path ending with `/` is a folder, made if missing.
    r.ok(&r.read, &["download", "m", "--to", "weights/"]);
    assert_eq!(std::fs::read(here.join("weights/m.pt")).unwrap(), original);
    // A partial left by a cut download: only the rest is fetched (Range), so bytes kept
    // that are not the file's make the whole fail its check; the partial is removed.
    // (`.part.sha256` names the file the partial belongs to; without it the partial
    // would be started again from 0.)
    std::fs::write(here.join("again.pt.part"), vec![0u8; 1000]).unwrap();
    std::fs::write(
        here.join("again.pt.part.sha256"),
        format!("{}\n", want.files[0].sha256),
    )
    .unwrap();
    let e = r.fails(Some(&r.read), &["download", "m", "--to", "again.pt"], 1);
    assert!(
        e.contains("the bytes received have sha256") && e.contains("was removed"),
        "{e}"
    );
    assert!(!here.join("again.pt.part").exists() && !here.join("again.pt").exists());
    // The same partial with the file's own first bytes is completed.
    std::fs::write(here.join("again.pt.part"), &original[..1000]).unwrap();
    std::fs::write(
        here.join("again.pt.part.sha256"),
        format!("{}\n", want.files[0].sha256),
    )
    .unwrap();
    r.ok(&r.read, &["download", "m", "v2", "--to", "again.pt"]);
    assert_eq!(std::fs::read(here.join("again.pt")).unwrap(), original);
    assert!(!here.join("again.pt.part").exists());
    // A folder version, by alias, into NAME-vN/; and over the socket, from the store.
    let folder = r.elsewhere.path().join("bert");
    std::fs::create_dir_all(folder.join("sub")).unwrap();
    std::fs::write(folder.join("sub/w.bin"), bytes(5, 9000)).unwrap();
    std::fs::write(folder.join("config.json"), b"{}").unwrap();
    r.ok(&r.write, &["add", folder.to_str().unwrap()]);
    ok(&r.d, &["alias", "set", "bert", "production", "v1"]);
    r.ok(&r.read, &["download", "bert", "production"]);
    assert_eq!(
        std::fs::read(here.join("bert-v1/sub/w.bin")).unwrap(),
        bytes(5, 9000)
    );
    let local = here.join("local");
    ok(&r.d, &["download", "bert", "--to", local.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(local.join("sub/w.bin")).unwrap(),
        bytes(5, 9000)
    );
}

#[test]
fn python_client_over_http_resumes_downloads_and_checks_them() {
    let out = Command::new("python3")
        .args(["-m", "unittest", "-v", "over_http"])
        .current_dir(Path::new(REPO).join("clients/python/tests"))
        .env("MODELREG_BIN", BIN)
        .env_remove("MODELREG_URL")
        .env_remove("MODELREG_TOKEN")
        .output()
        .expect("python3 is installed");
    let text = format!("{}{}", stdout(&out), stderr(&out));
    eprintln!("{text}");
    assert!(out.status.success(), "python HTTP tests failed:\n{text}");
    assert!(text.contains("\nOK"), "{text}");
}
