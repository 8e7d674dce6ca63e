//! A real Garage S3 server for tests: one node in a temp folder, on free loopback ports, stopped in Drop.
//!
//! [`Garage::start_in`] runs it inside a network namespace of tests/common/netns.rs
//! instead, its S3 API on that host's address (the other hosts reach it over the bridge),
//! its RPC port on the namespace's loopback (for its own CLI, run there too).
//!
//! The binary: `$MODELREG_GARAGE`, else a release build an earlier `.ci/run` installed
//! ([`CACHED_RELEASE`], faster), else the one `.ci/run` installs ([`CACHED`]), else
//! `garage` on PATH. A missing binary is a test failure that says how
//! to install it, never a skip.

#![allow(dead_code)]

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where `.ci/run` installs Garage (outside the clone, kept between runs): a debug build
/// with its hashing and compression crates optimised, cheaper to build.
pub const CACHED: &str = "/root/.cache/modelreg-tools/garage-2.5.0-quick/bin/garage";
/// Where earlier `.ci/run`s installed a release build of the same Garage (as good, faster).
pub const CACHED_RELEASE: &str = "/root/.cache/modelreg-tools/garage-2.5.0/bin/garage";
/// The region the server is configured with (SigV4 signs it).
pub const REGION: &str = "garage";
/// The bucket every test server has.
pub const BUCKET: &str = "modelreg-test";

/// One Garage node: its temp folder (config, metadata, data, log), ports, credentials.
pub struct Garage {
    dir: tempfile::TempDir,
    bin: PathBuf,
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`, the S3 API (`http://ADDR:3900` in a namespace).
    pub endpoint: String,
    /// The network namespace it runs in, when started with [`Garage::start_in`].
    netns: Option<String>,
    /// The access key id allowed on [`BUCKET`].
    pub key_id: String,
    /// Its secret.
    pub secret: String,
}

/// The Garage binary, when there is one (see the module docs for where it is looked for).
pub fn find_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MODELREG_GARAGE") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = [CACHED_RELEASE, CACHED]
        .into_iter()
        .find(|p| Path::new(p).is_file())
    {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("garage"))
            .find(|p| p.is_file())
    })
}

/// The Garage binary, or a panic that says how to install it.
pub fn binary() -> PathBuf {
    if let Some(p) = find_binary() {
        return p;
    }
    panic!(
        "Garage (an S3 server) is needed by this test and was not found: set MODELREG_GARAGE, \
         or run .ci/run, which installs it into {CACHED} with \
         `cargo install garage@2.5.0 --locked --no-default-features --features sqlite,bundled-libs` \
         (its options and --root are in .ci/run; about 6 minutes of CPU)"
    );
}

/// A port free on 127.0.0.1 now (the kernel's pick; the listener is closed at once).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl Garage {
    /// Starts a node, lays it out (one zone, 1 GB), creates [`BUCKET`] and a key that may
    /// read and write it. Panics with the server's log when any step fails.
    pub fn start() -> Garage {
        Garage::start_on(None)
    }

    /// [`Garage::start`] inside network namespace `ns` (`ip netns exec`), the S3 API on
    /// `addr:3900` only (the other hosts of the test bed reach it over the bridge; the
    /// test process itself cannot), RPC on the namespace's own loopback, port 3901 (the
    /// namespace has its ports to itself). Its CLI runs in the namespace too.
    pub fn start_in(ns: &str, addr: Ipv4Addr) -> Garage {
        Garage::start_on(Some((ns.to_string(), addr)))
    }

    fn start_on(netns: Option<(String, Ipv4Addr)>) -> Garage {
        let bin = binary();
        let dir = tempfile::Builder::new()
            .prefix("modelreg-garage-")
            .tempdir()
            .unwrap();
        let (rpc, s3, api) = match &netns {
            Some((_, addr)) => (3901, 3900, addr.to_string()),
            None => (free_port(), free_port(), "127.0.0.1".to_string()),
        };
        let secret = random_hex(32);
        let root = dir.path().display().to_string();
        let config = format!(
            r#"metadata_dir = "{root}/meta"
data_dir = "{root}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "{api}:{s3}"
root_domain = ".s3.garage.localhost"
"#
        );
        std::fs::write(dir.path().join("garage.toml"), config).unwrap();
        let mut g = Garage {
            dir,
            bin,
            child: None,
            endpoint: format!("http://{api}:{s3}"),
            netns: netns.map(|(ns, _)| ns),
            key_id: String::new(),
            secret: String::new(),
        };
        g.spawn();
        let id = g.ok(&["node", "id", "-q"]);
        let id = id.trim().split('@').next().unwrap().to_string();
        g.ok(&["layout", "assign", "-z", "dc1", "-c", "1G", &id]);
        g.ok(&["layout", "apply", "--version", "1"]);
        // The new layout takes a moment to be in force: bucket creation is retried.
        g.retry(&["bucket", "create", BUCKET]);
        let key = g.ok(&["key", "create", "modelreg-test-key"]);
        let field = |name: &str| {
            key.lines()
                .find(|l| l.trim_start().starts_with(name))
                .and_then(|l| l.split_whitespace().last())
                .unwrap_or_else(|| panic!("no {name} in `garage key create`'s output:\n{key}"))
                .to_string()
        };
        g.key_id = field("Key ID:");
        g.secret = field("Secret key:");
        g.ok(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            BUCKET,
            "--key",
            &g.key_id.clone(),
        ]);
        g.wait_for_s3();
        g
    }

    /// Starts `garage server` in its own process group and waits (polling `status`, with
    /// a deadline) until it answers.
    fn spawn(&mut self) {
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        // `ip netns exec` execs garage: the child is still the server, so its process
        // group and the signals below are the same.
        let child = self
            .command()
            .arg("-c")
            .arg(self.config())
            .arg("server")
            .env("RUST_LOG", "garage=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.cli(&["status"]).status.success() {
                return;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("garage server exited ({st}) at start:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "garage did not answer `status` within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The garage binary, run inside the namespace when there is one.
    fn command(&self) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        }
    }

    /// Waits until the S3 port accepts connections (tried from inside the namespace,
    /// when there is one: its address is not reachable from the test's own).
    fn wait_for_s3(&self) {
        let addr = self.endpoint.trim_start_matches("http://").to_string();
        let ns = self.netns.clone();
        let listening = std::thread::spawn(move || {
            if let Some(ns) = ns {
                enter_netns(&ns);
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::net::TcpStream::connect(&addr).is_err() {
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            true
        })
        .join()
        .unwrap();
        assert!(
            listening,
            "garage's S3 API ({}) not listening within 30 s:\n{}",
            self.endpoint,
            self.log()
        );
    }

    /// Kills the server (its whole process group) and waits for it: S3 is unreachable
    /// until [`Garage::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling the process group this harness created.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server: while frozen its ports still
    /// accept connections (the kernel's backlog) but nothing is answered — a hung server.
    pub fn freeze(&self, frozen: bool) {
        let sig = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        let Some(child) = &self.child else { return };
        // SAFETY: signalling the process group this harness created.
        unsafe { libc::kill(-(child.id() as i32), sig) };
        // kill() only queues the signal: wait until every thread is stopped (state T in
        // /proc), or the next request may still be answered.
        let tasks = format!("/proc/{}/task", child.id());
        let all_stopped = || {
            std::fs::read_dir(&tasks).unwrap().all(|t| {
                let stat =
                    std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap_or_default();
                // The state follows the command name's closing parenthesis.
                let state = stat.rsplit(") ").next().and_then(|r| r.chars().next());
                (state == Some('T')) == frozen
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !all_stopped() {
            assert!(
                Instant::now() < deadline,
                "garage not {} within 10 s",
                if frozen { "stopped" } else { "continued" }
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the server again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
        self.wait_for_s3();
    }

    /// Bytes in the server's data folder: the blocks of objects and parts stored so far
    /// (tests/team_failures.rs watches it grow to catch an upload under way).
    pub fn data_bytes(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => std::fs::read_dir(p)
                    .into_iter()
                    .flatten()
                    .map(|e| e.map_or(0, |e| walk(&e.path())))
                    .sum(),
                Ok(m) => m.len(),
                Err(_) => 0,
            }
        }
        walk(&self.dir.path().join("data"))
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("garage.toml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("garage.log")
    }

    /// The server's log so far (its last 4 KB).
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let start = text.len().saturating_sub(4096);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text[start..].to_string()
    }

    /// `garage -c CFG ARGS`, its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command()
            .arg("-c")
            .arg(self.config())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `garage ARGS`, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "garage {args:?} failed: {}{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `garage ARGS` retried for up to 30 s.
    fn retry(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.cli(args);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "garage {args:?} kept failing for 30 s: {}\nserver log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("garage server log:\n{}", self.log());
        }
        self.stop();
    }
}

/// Enters network namespace `ns` (a file in /run/netns) on the calling thread.
fn enter_netns(ns: &str) {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{ns}");
    let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // SAFETY: setns on a descriptor that stays open for the call; it affects this thread only.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns({path}): {}", std::io::Error::last_os_error());
}

/// `n` random bytes from the kernel as hex (no rand crate in the tests).
fn random_hex(n: usize) -> String {
    use std::io::Read;
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}
