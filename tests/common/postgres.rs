//! A throwaway PostgreSQL 15 cluster for a test: initdb in a temp folder, listening only on a Unix socket there, stopped on drop.
//!
//! [`PgCluster::start_in`] runs it inside a network namespace of tests/common/netns.rs
//! instead, listening on TCP at that host's address too, for the other hosts.
//!
//! We run as root and PostgreSQL refuses to, so as root the server runs as user
//! `postgres` (`setpriv`), owning the temp folder. Waits poll with deadlines; Drop stops
//! the server (fast shutdown, then SIGKILL), a panicking test too; its backends leave when
//! the postmaster is gone.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's postgresql-15 puts its programs.
pub const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running (or stopped, restartable) cluster.
pub struct PgCluster {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Where it runs and listens on TCP, when started with [`PgCluster::start_in`].
    netns: Option<(String, Ipv4Addr)>,
}

impl PgCluster {
    /// initdb, then start; panics with what to install when PostgreSQL 15 is missing.
    pub fn start() -> PgCluster {
        let mut c = PgCluster::init();
        c.resume();
        c
    }

    /// initdb, then start inside network namespace `ns`, listening on TCP at `addr`
    /// (port 5432; the namespace has its own ports) and on its Unix socket, accepting the
    /// hosts of `subnet` (`10.a.b.0/24`) without a password: trust is fine here, since
    /// only the test's own namespaces are on that subnet. The socket stays reachable from
    /// the test itself (a path, not an address) for psql.
    pub fn start_in(ns: &str, addr: Ipv4Addr, subnet: &str) -> PgCluster {
        let mut c = PgCluster::init();
        let hba = c.dir.path().join("data/pg_hba.conf");
        let mut text = std::fs::read_to_string(&hba).unwrap();
        text.push_str(&format!(
            "# The test's private subnet (tests/common/netns.rs)\nhost all all {subnet} trust\n"
        ));
        std::fs::write(&hba, text).unwrap();
        c.netns = Some((ns.to_string(), addr));
        c.resume();
        c
    }

    /// A key=value connection string over TCP for database `db` (from another host of
    /// the namespace test bed).
    pub fn tcp_url(&self, db: &str) -> String {
        let (_, addr) = self.netns.as_ref().expect("started with start_in");
        format!("host={addr} port=5432 user=postgres dbname={db}")
    }

    /// A fresh cluster's data folder, not started.
    fn init() -> PgCluster {
        let initdb = Path::new(BIN).join("initdb");
        assert!(
            initdb.exists(),
            "{} not found: these tests need PostgreSQL 15 (apt-get install postgresql-15; .ci/run installs it)",
            initdb.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("modelreg-pg.")
            .tempdir()
            .unwrap();
        if as_root() {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let out = pg_command(&initdb)
            .arg("-D")
            .arg(dir.path().join("data"))
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PgCluster {
            dir,
            child: None,
            netns: None,
        }
    }

    /// The folder holding the socket (`.s.PGSQL.5432`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A key=value connection string for database `db`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "host={} user=postgres dbname={db}",
            self.dir.path().display()
        )
    }

    /// The URL form with the socket folder percent-encoded as the host.
    pub fn url_encoded(&self, db: &str) -> String {
        let host = self.dir.path().display().to_string().replace('/', "%2F");
        format!("postgres://postgres@{host}/{db}")
    }

    /// Creates database `name` (through psql, as a person would).
    pub fn create_database(&self, name: &str) {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
    }

    /// Runs `sql` in database `db` with psql; panics with its stderr on failure.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(Path::new(BIN).join("psql"))
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.dir.path())
            .args(["-U", "postgres", "-d", db, "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Starts the server on the existing data folder and waits until it accepts.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let postgres = Path::new(BIN).join("postgres");
        let (mut cmd, listen) = match &self.netns {
            // `ip netns exec` execs setpriv, which execs postgres: the child is still the
            // postmaster, so stop() and the process-group kill work the same.
            Some((ns, addr)) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]);
                let argv = pg_command(&postgres);
                c.arg(argv.get_program()).args(argv.get_args());
                (c, addr.to_string())
            }
            None => (pg_command(&postgres), String::new()),
        };
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", &format!("listen_addresses={listen}")])
            .args(["-c", "max_connections=50"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group, so that Drop can kill the backends too.
            .process_group(0);
        self.child = Some(cmd.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("postgres exited ({status}) while starting:\n{}", self.log());
            }
            let ready = Command::new(Path::new(BIN).join("pg_isready"))
                .args(["-q", "-U", "postgres", "-h"])
                .arg(self.dir.path())
                .status()
                .unwrap();
            if ready.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres not ready within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (fast shutdown: clients are disconnected), waits for it to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as i32;
        // A frozen server would not act on the SIGINT.
        for p in children(pid).into_iter().chain([pid]) {
            unsafe { libc::kill(p, libc::SIGCONT) };
        }
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Backends lead groups of their own (setsid) and leave when the postmaster is
        // gone. No signal to `-pid` once the postmaster is reaped: its number may name
        // another process group by then (a pid reused), which SIGKILL would end.
    }

    /// Freezes the server and its backends (SIGSTOP to the group): a hung server, as a
    /// client sees one. [`PgCluster::thaw`] resumes them.
    pub fn freeze(&self) {
        self.signal_group(libc::SIGSTOP);
    }

    /// Resumes a frozen server.
    pub fn thaw(&self) {
        self.signal_group(libc::SIGCONT);
    }

    /// Signals the postmaster and every process it started. Not by process group:
    /// each backend calls setsid() and leads a group of its own.
    fn signal_group(&self, signal: i32) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        for child in children(pid) {
            unsafe { libc::kill(child, signal) };
        }
        unsafe { libc::kill(pid, signal) };
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- postgres log ---\n{}", self.log());
        }
        self.stop();
    }
}

/// The processes whose parent is `pid` (from /proc/*/stat).
fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split after its ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(pid)
            && let Ok(child) = e.file_name().to_string_lossy().parse()
        {
            out.push(child);
        }
    }
    out
}

fn as_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// `program`, run as user postgres when we are root (initdb and postgres refuse root).
fn pg_command(program: &Path) -> Command {
    if as_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid",
            "postgres",
            "--regid",
            "postgres",
            "--init-groups",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// The uid and gid of user postgres.
fn postgres_ids() -> (u32, u32) {
    let name = std::ffi::CString::new("postgres").unwrap();
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "no user postgres: install postgresql-15 (it creates the user; .ci/run installs it)"
    );
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}
