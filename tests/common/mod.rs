//! Test helpers: a real `modelreg serve` in a temporary root, its socket, and polling
//! with deadlines (never bare sleeps to wait for the daemon).

#![allow(dead_code)]

pub mod extract;
pub mod hf;
pub mod http;
pub mod openapi;
pub mod tools;
pub mod venv;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use modelreg::client::{Client, ClientError};
use modelreg::protocol::{Request, StatusInfo, VersionInfo};
use modelreg::registry::Catalog;

pub mod journal;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_modelreg");

/// A daemon running in a temporary root; killed on drop, its log printed if the test failed.
pub struct TestDaemon {
    pub root: tempfile::TempDir,
    child: Option<Child>,
    config: String,
}

impl TestDaemon {
    /// Starts a daemon with `config` (YAML, written to config/modelreg.yaml).
    pub fn start(config: &str) -> TestDaemon {
        let mut d = TestDaemon::new(config);
        d.spawn();
        d
    }

    /// Prepares a root with `config` without starting the daemon.
    pub fn new(config: &str) -> TestDaemon {
        TestDaemon::new_in(&std::env::temp_dir(), config)
    }

    /// Prepares a root with `config` in a new folder under `parent` (the benchmark's
    /// scratch space is on the filesystem it measures, not /tmp).
    pub fn new_in(parent: &Path, config: &str) -> TestDaemon {
        let root = tempfile::Builder::new()
            .prefix("mr")
            .tempdir_in(parent)
            .expect("tempdir");
        let mut d = TestDaemon {
            root,
            child: None,
            config: config.to_string(),
        };
        d.write_config(config);
        d
    }

    /// Starts with a short settle period, for tests that do not test settling itself.
    pub fn quick() -> TestDaemon {
        TestDaemon::start("settle: 300ms\n")
    }

    pub fn write_config(&mut self, config: &str) {
        let dir = self.root.path().join("config");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("modelreg.yaml"), config).unwrap();
        self.config = config.to_string();
    }

    /// Starts the daemon process (again) in the same root and waits for its socket.
    pub fn spawn(&mut self) {
        self.spawn_with(&[], true);
    }

    /// Starts the daemon with extra environment variables; waits for its socket when
    /// `wait` is true.
    pub fn spawn_with(&mut self, env: &[(&str, String)], wait: bool) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--root")
            .arg(self.root.path())
            .env("RUST_LOG", "modelreg=debug,info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn modelreg");
        self.child = Some(child);
        if wait {
            self.wait_ready();
        }
    }

    /// Adopts a daemon process started by the test itself.
    pub fn adopt(&mut self, child: Child) {
        assert!(self.child.is_none(), "already running");
        self.child = Some(child);
    }

    /// Starts the daemon through `launcher` (e.g. `setpriv ...` or `sh -c 'umask ..'`),
    /// which must end by running `BIN serve --root ROOT` with the arguments it was given;
    /// its log goes to the daemon's log; waits for the socket.
    pub fn spawn_via(&mut self, mut launcher: Command) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = launcher
            .env("RUST_LOG", "modelreg=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.adopt(child);
        self.wait_ready();
    }

    /// Starts the daemon as nobody (uid and gid 65534, no supplementary groups).
    pub fn spawn_as_nobody(&mut self) {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "serve",
            "--root",
        ])
        .arg(self.root.path());
        self.spawn_via(c);
    }

    /// Gives the whole root to nobody (uid and gid 65534).
    pub fn give_to_nobody(&self) {
        let st = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(self.root.path())
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// The problems `status` lists, as text, one per line.
    pub fn problems_text(&self) -> String {
        let v = self.call(&Request::Status {}).unwrap();
        v["problems"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| format!("{} {}\n", p["path"], p["message"]))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits for a problem mentioning `needle`; returns that problem's line.
    pub fn wait_problem_text(&self, needle: &str) -> String {
        let mut last = String::new();
        wait_until(
            Duration::from_secs(30),
            &format!("a problem mentioning {needle:?}"),
            || {
                last = self
                    .problems_text()
                    .lines()
                    .find(|l| l.contains(needle))
                    .unwrap_or_default()
                    .to_string();
                !last.is_empty()
            },
        );
        last
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.path().join("daemon.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn inbox(&self) -> PathBuf {
        self.root.path().join("pretrained_models")
    }

    pub fn socket(&self) -> PathBuf {
        self.root.path().join("modelreg.sock")
    }

    pub fn registry_path(&self) -> PathBuf {
        self.root.path().join("registry.yaml")
    }

    /// Waits until the socket answers a ping, or panics after 15 s.
    pub fn wait_ready(&mut self) {
        self.wait_ready_within(Duration::from_secs(15), Duration::from_millis(20));
    }

    /// Waits until the socket answers a ping, asking every `poll`, or panics after
    /// `timeout` (the benchmark times start-up to the millisecond, on large registries).
    pub fn wait_ready_within(&mut self, timeout: Duration, poll: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(mut c) = Client::connect(&self.socket())
                && c.call(&Request::Ping {}).is_ok()
            {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("daemon exited early with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not answer within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(poll);
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket()).expect("connect")
    }

    pub fn call(&self, req: &Request) -> Result<serde_json::Value, ClientError> {
        self.client().call(req)
    }

    pub fn get(&self, name: &str, selector: &str) -> Result<VersionInfo, ClientError> {
        self.client().call_as(&Request::Get {
            name: name.into(),
            selector: Some(selector.into()),
            metric: None,
            mode: None,
        })
    }

    pub fn versions(&self, name: &str) -> Vec<VersionInfo> {
        match self.call(&Request::versions(name)) {
            Ok(v) => serde_json::from_value(v["versions"].clone()).unwrap(),
            Err(e) if e.code() == Some(modelreg::protocol::ErrorCode::ModelNotFound) => vec![],
            Err(e) => panic!("versions {name}: {e}"),
        }
    }

    pub fn status(&self) -> StatusInfo {
        self.client().call_as(&Request::Status {}).expect("status")
    }

    /// Waits until `name` has at least `n` versions; returns them.
    pub fn wait_versions(&self, name: &str, n: usize) -> Vec<VersionInfo> {
        let mut last = vec![];
        wait_until(
            Duration::from_secs(30),
            &format!("{name} to have {n} version(s)"),
            || {
                last = self.versions(name);
                last.len() >= n
            },
        );
        last
    }

    /// Waits until registry.yaml records `entry` of the inbox with its current
    /// fingerprint: the daemon has looked at it as it is now, whatever it decided.
    pub fn wait_seen(&self, entry: &str) {
        let expected = modelreg::inbox::look(&self.inbox(), entry, false)
            .fingerprint()
            .expect("entry exists");
        wait_until(
            Duration::from_secs(30),
            &format!("{entry} to be looked at"),
            || {
                self.catalog()
                    .sources
                    .get(entry)
                    .is_some_and(|r| r.fingerprint == expected)
            },
        );
    }

    /// The catalog as the daemon last committed it: registry.yaml with the journal beside
    /// it replayed (registry.yaml alone may be a few seconds behind).
    pub fn catalog(&self) -> Catalog {
        // Read while the daemon runs, without its lock: registry.yaml may be read just
        // before the daemon replaces it and starts a fresh journal, and the two then do
        // not join up. That is this reader's race, not the root's state: read again; a
        // real gap stays.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match modelreg::registry::persist::load_current(&self.registry_path()) {
                Ok(catalog) => return catalog.expect("exists"),
                Err(e) if Instant::now() >= deadline => {
                    panic!("registry.yaml and its journal read: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// SIGTERM and wait for the exit status (panics after 30 s).
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.stop_wait()
    }

    /// Waits for the daemon to exit (after a signal sent by the test).
    pub fn stop_wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("daemon did not stop within 30 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, no questions asked.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs `modelreg serve` on this root in the foreground (when it is expected to
    /// refuse to start) and returns its output. A daemon that starts after all is killed
    /// after 30 s (its status then says so: not a success), rather than hang the test.
    pub fn serve_output(&self) -> Output {
        let dir = tempfile::tempdir().unwrap();
        let (out, err) = (dir.path().join("out"), dir.path().join("err"));
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("--root")
            .arg(self.root.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("run modelreg serve");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Output {
            status,
            stdout: std::fs::read(&out).unwrap(),
            stderr: std::fs::read(&err).unwrap(),
        }
    }

    /// Runs the CLI against this daemon's socket.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("run modelreg")
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- daemon log ({}) ----\n{}",
                self.log_path().display(),
                self.log()
            );
        }
    }
}

/// Polls `cond` every 20 ms until it holds, or panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The names in the inbox, hidden ones included, sorted.
pub fn inbox_names(d: &TestDaemon) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d.inbox())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Writes a file the way most tools do: in place, then closed.
pub fn write(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(bytes).unwrap();
}

/// Writes a file into `dir` under a temporary name and renames it into place (what
/// rsync, and modelreg's Python client, do).
pub fn write_renamed(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.Xy12Zq"));
    write(&tmp, bytes);
    std::fs::rename(tmp, dir.join(name)).unwrap();
}

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A sidecar with the given metrics.
pub fn sidecar(metrics: &[(&str, f64)]) -> String {
    let mut s = String::from("metrics:\n");
    for (k, v) in metrics {
        s.push_str(&format!("  {k}: {v}\n"));
    }
    s
}

/// Whether this test can run a daemon as another user; prints why it is skipped if not.
pub fn can_switch_user(test: &str) -> bool {
    let has_setpriv = Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    // SAFETY: geteuid cannot fail.
    let ok = unsafe { libc::geteuid() } == 0 && has_setpriv;
    if !ok {
        eprintln!("SKIPPED {test}: needs root and setpriv to run the daemon as another user");
    }
    ok
}

/// Opens `d`'s socket to everyone and leaves its inbox writable by root alone (0755);
/// returns a folder anyone may read holding `m.pt` (0644), for a hand-over by another
/// user that the daemon refuses and the inbox cannot take either.
pub fn socket_open_inbox_closed(d: &TestDaemon) -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    mode(d.root.path(), 0o755).unwrap();
    mode(&d.socket(), 0o666).unwrap();
    mode(&d.inbox(), 0o755).unwrap();
    let public = tempfile::tempdir().unwrap();
    mode(public.path(), 0o755).unwrap();
    let src = public.path().join("m.pt");
    write(&src, &bytes(9, 1000));
    mode(&src, 0o644).unwrap();
    (public, src)
}

/// A command's stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A command's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs the CLI against `d` and asserts success; returns stdout.
pub fn ok(d: &TestDaemon, args: &[&str]) -> String {
    let o = d.cli(args);
    assert!(
        o.status.success(),
        "modelreg {args:?} failed ({}):\n{}{}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Runs the CLI against `d` and asserts failure; returns stderr.
pub fn fails(d: &TestDaemon, args: &[&str]) -> String {
    let o = d.cli(args);
    assert!(
        !o.status.success(),
        "modelreg {args:?} succeeded:\n{}",
        stdout(&o)
    );
    stderr(&o)
}

/// The sha256 of every file of version `v`, by path relative to its folder, sorted.
pub fn version_content(v: &modelreg::protocol::VersionInfo) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v
        .files
        .iter()
        .map(|f| {
            let rel = std::path::Path::new(&f.path)
                .strip_prefix(&v.dir)
                .map(|r| r.display().to_string())
                .unwrap_or_else(|_| f.path.clone());
            (rel, f.sha256.clone())
        })
        .collect();
    out.sort();
    out
}

/// Every file under `dir` (folders found through links too, as a loader opens them):
/// its path relative to `dir`, and `what` of it, sorted by path.
fn tree_map<T: Ord>(dir: &Path, what: impl Fn(&Path) -> T) -> Vec<(String, T)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if std::fs::metadata(&p).unwrap().is_dir() {
                todo.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.push((rel, what(&p)));
            }
        }
    }
    out.sort();
    out
}

/// Every file under `dir` (links followed, as a loader opens them) by path, as sha256.
pub fn tree_content(dir: &Path) -> Vec<(String, String)> {
    tree_map(dir, |p| {
        modelreg::fsutil::sha256_hex(&std::fs::read(p).unwrap())
    })
}

/// Every link under `dir` by path, with where it points.
pub fn tree_links(dir: &Path) -> Vec<(String, PathBuf)> {
    tree_map(dir, |p| std::fs::read_link(p).unwrap())
}

/// Sends `line` with the descriptors `fds` attached, and reads the answer line.
pub fn send_raw(socket: &Path, line: &str, fds: &[std::os::fd::RawFd]) -> serde_json::Value {
    let s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    let data = format!("{line}\n");
    // SAFETY: the descriptors are open for the duration of the call.
    let fds: Vec<std::os::fd::BorrowedFd> = fds
        .iter()
        .map(|f| unsafe { std::os::fd::BorrowedFd::borrow_raw(*f) })
        .collect();
    let n = modelreg::client::send_with_fds(&s, data.as_bytes(), &fds).unwrap();
    assert_eq!(n, data.len());
    let mut answer = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut answer).unwrap();
    serde_json::from_str(&answer).unwrap()
}

/// The code and message of an error answer (`ok` false).
pub fn error_of(answer: &serde_json::Value) -> (String, String) {
    assert_eq!(answer["ok"], false, "{answer}");
    (
        answer["error"]["code"].as_str().unwrap().to_string(),
        answer["error"]["message"].as_str().unwrap().to_string(),
    )
}

/// Runs a `register` hand-over, asking again (for up to 5 s) while the daemon answers that
/// another process has the file open for writing. In a test binary one thread may spawn a
/// process (a daemon, a CLI) while another writes the file it is about to hand over: the
/// child holds a copy of that write descriptor until it execs (where CLOEXEC closes it),
/// and the daemon's lease probe rightly sees a writer. A test of that refusal itself calls
/// `register` directly.
pub fn handed_over<T>(
    mut register: impl FnMut() -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match register() {
            Err(ClientError::Remote(b))
                if b.code == modelreg::protocol::ErrorCode::SourceChanged
                    && b.message.contains("still open for writing")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            r => return r,
        }
    }
}

/// Registers a version of `name` holding 64 bytes from `seed`, by handing the file over
/// on the socket (`register`): one commit, answered once durable.
pub fn register_seeded(d: &TestDaemon, name: &str, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.pt");
    std::fs::write(&p, bytes(seed, 64)).unwrap();
    let f = std::fs::File::open(&p).unwrap();
    let mut c = d.client();
    handed_over(|| c.register(name, "x.pt", &f, None, None)).expect("register");
}

/// The `status` row of the hook or webhook `name`, waiting (10 s at most) for its worker
/// to show it after a start or a reload.
pub fn delivery_row(d: &TestDaemon, name: &str) -> modelreg::protocol::Delivery {
    let mut row = None;
    wait_until(
        Duration::from_secs(10),
        &format!("a status row for {name}"),
        || {
            row = d.status().deliveries.into_iter().find(|r| r.name == name);
            row.is_some()
        },
    );
    row.expect("found")
}

/// Runs a Python `script` with the repository's client importable and `arg` as its
/// argument; its stdout as JSON.
pub fn python_json(script: &str, arg: &str) -> serde_json::Value {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(arg)
        .env(
            "PYTHONPATH",
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python"),
        )
        .output()
        .expect("python3 is installed");
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Flips one byte of the stored file `path` in place, as a disk fault or a stray writer
/// would, keeping its mode, owner and recorded SHA-256 as they were.
pub fn damage_in_place(path: &Path, at: u64) {
    use std::os::unix::fs::{FileExt, PermissionsExt};
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], at).unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Registers `content` as the next version of `name` (fd hand-over, no settle).
pub fn register_bytes(d: &TestDaemon, name: &str, content: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.bin");
    std::fs::write(&p, content).unwrap();
    let f = std::fs::File::open(&p).unwrap();
    let mut c = d.client();
    handed_over(|| c.register(name, "w.bin", &f, None, None)).expect("register");
}

/// Model dd's v2 holds `good` (the good bytes handed over or dropped again after v1 was
/// damaged in place), and `status` names the damage of v1.
pub fn assert_good_v2_and_damaged_v1_shown(d: &TestDaemon, good: &[u8]) {
    let v2 = d.root.path().join("models/dd/v2/dd.bin");
    assert_eq!(std::fs::read(&v2).unwrap(), good);
    let problems = d.problems_text();
    assert!(
        problems.contains("dd v1"),
        "the damage is not shown: {problems}"
    );
}
