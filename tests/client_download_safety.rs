//! Downloads (the CLI's `modelreg download` and Python's `ModelRegistry.download`) on a
//! destination someone else can touch: a `<file>.part` planted as a symbolic link is
//! refused and its target left as it was, a second download writing the same partial is
//! refused while the first holds it, and a partial left by a version that `latest` (or
//! an alias) no longer names starts again instead of joining two versions' bytes; a
//! folder under the destination planted as a link is refused. Also the clients' limits on
//! a hostile server (an endless JSON answer, `--token-file /dev/zero`), Python's
//! `download(name, selector, dest)` order, and an upload refused mid-body.

mod common;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

const CONFIG: &str = "settle: 200ms\nhttp:\n  listen: 127.0.0.1:0\n";
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A daemon with `m` v1 and v2 (5000 bytes each), its API URL and a read token file in
/// a folder away from the root.
struct Remote {
    d: TestDaemon,
    url: String,
    read: PathBuf,
    here: tempfile::TempDir,
}

fn start() -> Remote {
    let d = TestDaemon::start(CONFIG);
    let url = format!("http://{}", common::http::address(&d));
    let here = tempfile::tempdir().unwrap();
    let (read, _) = common::http::token_files(&d, here.path());
    let inbox = d.inbox();
    write_renamed(&inbox, "m.pt", &bytes(1, 5000));
    d.wait_versions("m", 1);
    write_renamed(&inbox, "m.pt", &bytes(2, 5000));
    d.wait_versions("m", 2);
    Remote { d, url, read, here }
}

impl Remote {
    /// `modelreg --url … download args…` run in the folder away from the root.
    fn download(&self, args: &[&str]) -> Output {
        let mut all = vec![
            "--url",
            &self.url,
            "--token-file",
            self.read.to_str().unwrap(),
            "download",
        ];
        all.extend_from_slice(args);
        Command::new(BIN)
            .current_dir(self.here.path())
            .env_remove("MODELREG_ROOT")
            .env_remove("MODELREG_SOCKET")
            .env_remove("MODELREG_URL")
            .env_remove("MODELREG_TOKEN")
            .args(&all)
            .output()
            .unwrap()
    }

    /// Python `code` with `reg`, a ModelRegistry over the URL with the read token, run
    /// in the folder away from the root.
    fn python(&self, code: &str) -> Output {
        let token = std::fs::read_to_string(&self.read).unwrap();
        let script = format!(
            "import modelreg\nreg = modelreg.ModelRegistry(url={:?}, token={:?})\n{code}",
            self.url,
            token.trim()
        );
        Command::new("python3")
            .current_dir(self.here.path())
            .env("PYTHONPATH", Path::new(REPO).join("clients/python"))
            .env_remove("MODELREG_URL")
            .env_remove("MODELREG_TOKEN")
            .args(["-c", &script])
            .output()
            .expect("python3 is installed")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.here.path().join(rel)
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

/// A victim file and `dir/m.pt.part` linking to it, as an attacker would plant them.
fn plant_link(r: &Remote, dir: &str) -> (PathBuf, Vec<u8>) {
    let victim = r.path(&format!("{dir}-victim.txt"));
    let before = bytes(9, 3000);
    std::fs::write(&victim, &before).unwrap();
    std::fs::create_dir_all(r.path(dir)).unwrap();
    std::os::unix::fs::symlink(&victim, r.path(&format!("{dir}/m.pt.part"))).unwrap();
    (victim, before)
}

#[test]
fn a_partial_planted_as_a_symlink_is_refused_and_its_target_left_alone() {
    let r = start();
    let (victim, before) = plant_link(&r, "d");
    let o = r.download(&["m", "v1", "--to", "d/"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("symbolic link") && text(&o).contains("m.pt.part"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        before,
        "the CLI wrote through the link"
    );
    assert!(!r.path("d/m.pt").exists());

    let (victim, before) = plant_link(&r, "p");
    let o = r.python("reg.download('m', 'v1', 'p/')");
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("symbolic link"), "{}", text(&o));
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        before,
        "Python wrote through the link"
    );

    // A link at the destination itself is replaced, never written through.
    let victim = r.path("final-victim.txt");
    std::fs::write(&victim, b"keep").unwrap();
    std::os::unix::fs::symlink(&victim, r.path("linked.pt")).unwrap();
    let o = r.download(&["m", "v1", "--to", "linked.pt"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    assert!(
        !std::fs::symlink_metadata(r.path("linked.pt"))
            .unwrap()
            .is_symlink()
    );
    assert_eq!(std::fs::read(r.path("linked.pt")).unwrap(), bytes(1, 5000));
}

#[test]
fn a_partial_another_download_is_writing_is_refused_until_it_is_done() {
    let r = start();
    std::fs::create_dir_all(r.path("busy")).unwrap();
    let held = std::fs::File::create(r.path("busy/m.pt.part")).unwrap();
    // SAFETY: flock on a descriptor this test owns; it is what a running download holds.
    assert_eq!(
        unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let o = r.download(&["m", "--to", "busy/"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("another download of") && text(&o).contains("m.pt.part"),
        "{}",
        text(&o)
    );
    let o = r.python("reg.download('m', dest='busy/')");
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("another download of"), "{}", text(&o));
    drop(held);
    let o = r.download(&["m", "--to", "busy/"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(r.path("busy/m.pt")).unwrap(), bytes(2, 5000));
    assert!(!r.path("busy/m.pt.part").exists());
}

/// What an interrupted download of v1 leaves: its first 1000 bytes and the SHA-256
/// they belong to.
fn interrupted_v1(r: &Remote, dir: &str) {
    let v1 = r.d.get("m", "v1").unwrap();
    std::fs::create_dir_all(r.path(dir)).unwrap();
    std::fs::write(r.path(&format!("{dir}/m.pt.part")), &bytes(1, 5000)[..1000]).unwrap();
    std::fs::write(
        r.path(&format!("{dir}/m.pt.part.sha256")),
        format!("{}\n", v1.files[0].sha256),
    )
    .unwrap();
}

#[test]
fn a_resume_after_latest_moved_starts_again_with_the_new_version() {
    let r = start();
    interrupted_v1(&r, "cli");
    let o = r.download(&["m", "latest", "--to", "cli/"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(r.path("cli/m.pt")).unwrap(), bytes(2, 5000));
    assert!(!r.path("cli/m.pt.part").exists() && !r.path("cli/m.pt.part.sha256").exists());

    interrupted_v1(&r, "py");
    let o = r.python("reg.download('m', 'latest', 'py/')");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(r.path("py/m.pt")).unwrap(), bytes(2, 5000));
    assert!(!r.path("py/m.pt.part").exists() && !r.path("py/m.pt.part.sha256").exists());

    // The partial of the same version is still resumed: only the rest is fetched.
    interrupted_v1(&r, "same");
    let o = r.download(&["m", "v1", "--to", "same/"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(r.path("same/m.pt")).unwrap(), bytes(1, 5000));
}

#[test]
fn python_download_takes_name_selector_dest_as_the_cli_does() {
    let r = start();
    ok(&r.d, &["alias", "set", "m", "production", "v1"]);
    // The selector second: the alias's version into the current folder, not a file
    // named `production` holding latest.
    let o = r.python("print(reg.download('m', 'production'))");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(stdout(&o).trim(), "m.pt");
    assert!(!r.path("production").exists());
    assert_eq!(std::fs::read(r.path("m.pt")).unwrap(), bytes(1, 5000));
    // dest third, or by keyword; `version=` is still the selector.
    let o = r.python(
        "print(reg.download('m', 'v2', 'w/'))\nprint(reg.download('m', dest='k.pt', version='v1'))",
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(stdout(&o), "w/m.pt\nk.pt\n");
    assert_eq!(std::fs::read(r.path("w/m.pt")).unwrap(), bytes(2, 5000));
    assert_eq!(std::fs::read(r.path("k.pt")).unwrap(), bytes(1, 5000));
    // The old order, a path where the selector goes, says what the call is.
    let o = r.python("reg.download('m', 'out/')");
    assert!(!o.status.success());
    assert!(
        text(&o).contains("download(name, selector, dest)"),
        "{}",
        text(&o)
    );
}

/// A server on a free port that answers every request with an endless JSON body.
fn endless_server() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut buf = [0u8; 65536];
                let _ = c.read(&mut buf);
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n[",
                );
                let chunk = b"0,".repeat(65536);
                while c.write_all(&chunk).is_ok() {}
            });
        }
    });
    format!("http://{addr}")
}

#[test]
fn an_endless_answer_or_token_file_is_refused_at_a_limit() {
    let url = endless_server();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("t");
    std::fs::write(&token, "mr_x\n").unwrap();
    let run = |token: &str| {
        Command::new(BIN)
            .env_remove("MODELREG_URL")
            .env_remove("MODELREG_TOKEN")
            .args(["--url", &url, "--token-file", token, "list"])
            .output()
            .unwrap()
    };
    let o = run(token.to_str().unwrap());
    assert!(!o.status.success());
    assert!(
        text(&o).contains("an answer over 67108864 bytes"),
        "{}",
        text(&o)
    );
    let o = run("/dev/zero");
    assert!(!o.status.success());
    assert!(
        text(&o).contains("--token-file /dev/zero: over 4096 bytes"),
        "{}",
        text(&o)
    );
    let o = Command::new("python3")
        .env("PYTHONPATH", Path::new(REPO).join("clients/python"))
        .args([
            "-c",
            &format!("import modelreg\nmodelreg.ModelRegistry(url={url:?}, token='mr_x').list()"),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o).contains("answered more than 67108864 bytes of JSON"),
        "{}",
        text(&o)
    );
}

#[test]
fn python_upload_refused_mid_body_raises_the_servers_refusal() {
    let r = start();
    // Large enough that the daemon answers 403 and closes before the body is all sent
    // (300 KB did not always reach the broken pipe here).
    std::fs::write(r.path("big.pt"), bytes(7, 30_000_000)).unwrap();
    let o = r.python(
        "try:\n    reg.register('m', 'big.pt')\nexcept modelreg.PermissionDenied as e:\n    print('refused:', e)\n",
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(stdout(&o).starts_with("refused:"), "{}", text(&o));
    assert_eq!(r.d.versions("m").len(), 2);
}

#[test]
fn a_folder_inside_a_folder_version_planted_as_a_link_is_refused() {
    let r = start();
    let folder = r.path("bert");
    std::fs::create_dir_all(folder.join("sub")).unwrap();
    std::fs::write(folder.join("sub/w.bin"), bytes(5, 9000)).unwrap();
    std::fs::write(folder.join("config.json"), b"{}").unwrap();
    ok(&r.d, &["add", folder.to_str().unwrap()]);
    r.d.wait_versions("bert", 1);
    let elsewhere = r.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    for dir in ["cli", "py"] {
        std::fs::create_dir_all(r.path(dir)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, r.path(&format!("{dir}/sub"))).unwrap();
    }
    let o = r.download(&["bert", "--to", "cli"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("symbolic link"), "{}", text(&o));
    let o = r.python("reg.download('bert', 'latest', 'py')");
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("symbolic link"), "{}", text(&o));
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}
