//! The service under a real systemd 252, driven the way an operator drives it, from
//! docs/operations.md's own lines: install, `enable --now`, queries and drops by a member
//! of the group, what the group may not touch, reload, the HTTP API under its drop-in,
//! stop, the watchdog, socket activation, the journal, the sandbox; and the Debian
//! package.
//!
//! systemd boots as PID 1 of new PID, mount, UTS and IPC namespaces. Before it starts,
//! the boot script mounts overlays (upper layer in a tmpfs) on /etc, /usr and /var, and
//! fresh tmpfs on /tmp, /var/tmp and /run: everything the install writes (the binary, the
//! units, /etc/modelreg, the user in /etc/passwd, /var/lib/modelreg, the dpkg database)
//! lives only in the namespace, and systemd's boot-time jobs cannot empty the machine's
//! real /tmp. Units that would touch the machine's shared state (clock, sysctl, udev,
//! modules, timers, PostgreSQL, gettys) are masked. [`Machine`]'s Drop ends the namespace
//! with SIGKILL to its PID 1 on every exit path (a failed assertion included), which
//! takes every process and mount of the namespace with it.
//!
//! Runs as root only (plain `cargo test` in CI); elsewhere it prints why it skips.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const SOCK: &str = "/run/modelreg/modelreg.sock";
const ROOT: &str = "/var/lib/modelreg";
/// A file the unit's user must not be able to create in /dev/shm (the host's).
const SHM_PROBE: &str = "/dev/shm/modelreg-sandbox-probe";

/// Mounts the private layers, masks the units that would touch shared state, then
/// becomes systemd. `set -e`: if any mount fails, systemd is never started.
const BOOT: &str = r#"#!/bin/sh
set -eu
mount -t tmpfs -o mode=0755 modelreg-layers /tmp
for d in etc usr var; do
  mkdir -p /tmp/$d/upper /tmp/$d/work
  mount -t overlay -o lowerdir=/$d,upperdir=/tmp/$d/upper,workdir=/tmp/$d/work modelreg-$d /$d
done
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/systemd/system
for u in systemd-tmpfiles-setup.service systemd-tmpfiles-clean.timer \
  systemd-tmpfiles-clean.service systemd-tmpfiles-setup-dev.service \
  systemd-tmpfiles-setup-dev-early.service postgresql.service postgresql@15-main.service \
  console-getty.service getty@tty1.service serial-getty@ttyS0.service \
  systemd-timesyncd.service systemd-pstore.service systemd-remount-fs.service \
  systemd-sysctl.service systemd-modules-load.service kmod-static-nodes.service \
  systemd-udevd.service systemd-udev-trigger.service systemd-udev-settle.service \
  systemd-udevd-control.socket systemd-udevd-kernel.socket systemd-binfmt.service \
  systemd-hwdb-update.service e2scrub_reap.service e2scrub_all.timer fstrim.timer \
  apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer man-db.timer; do
  ln -s /dev/null /run/systemd/system/$u
done
exec /lib/systemd/systemd --system --unit=multi-user.target
"#;

/// Why this machine cannot run the suite, if it cannot.
fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: booting systemd in a namespace needs root".into());
    }
    if !Path::new("/lib/systemd/systemd").exists() {
        return Some("/lib/systemd/systemd is missing (apt-get install systemd)".into());
    }
    for tool in ["unshare", "nsenter", "setpriv"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("{tool} is missing (apt-get install util-linux)"));
        }
    }
    None
}

macro_rules! skip_unless_possible {
    () => {
        if let Some(why) = skip_reason() {
            println!("SKIPPED: {why}");
            return;
        }
    };
}

/// How long one command in the machine may take (seconds): nothing may hang the suite.
const LIMIT: u32 = 300;
/// How long the docs' `cargo build --release` may take (seconds).
const BUILD_LIMIT: u32 = 1800;

/// Takes out of `cmd`'s environment what `cargo test` sets for a test (CARGO,
/// CARGO_MANIFEST_DIR, CARGO_PKG_*, ...): an operator's shell has none of it, and a nested
/// cargo that inherits it finds build scripts that watch those names (ring's) changed, so
/// the docs' `cargo build --release` and `cargo deb` rebuilt what .ci/run's background
/// run of the same line had just built.
fn as_in_a_shell(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO") && k != "CARGO_HOME" {
            cmd.env_remove(&*k);
        }
    }
}

/// A systemd booted in its own namespaces; killed with everything in it on drop.
struct Machine {
    unshare: Child,
    /// PID 1 of the namespace, as the machine sees it.
    pid: i32,
    name: &'static str,
}

impl Machine {
    fn boot(name: &'static str) -> Machine {
        let script = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("boot-{name}.sh"));
        std::fs::write(&script, BOOT).unwrap();
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--pid",
            "--fork",
            "--kill-child=SIGKILL",
            "--mount",
            "--mount-proc",
            "--propagation",
            "private",
            "--uts",
            "--ipc",
            "sh",
        ])
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(script.with_extension("log")).unwrap());
        // SAFETY: prctl only sets this process's parent-death signal. If the test process
        // dies without running Drop, unshare gets SIGKILL and --kill-child takes PID 1.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let unshare = cmd.spawn().expect("run unshare");
        let mut m = Machine {
            pid: 0,
            unshare,
            name,
        };
        let parent = m.unshare.id();
        let deadline = Instant::now() + Duration::from_secs(20);
        while m.pid == 0 {
            m.pid = child_of(parent).unwrap_or(0);
            assert!(
                Instant::now() < deadline,
                "unshare started no PID 1: {}",
                std::fs::read_to_string(script.with_extension("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Until systemd answers, nsenter may land in a half-built namespace: wait for its
        // state, `degraded` included (a unit of the host may fail in here; listed below).
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let state = m.sh("systemctl is-system-running 2>/dev/null || true");
            let state = String::from_utf8_lossy(&state.stdout).trim().to_string();
            if state == "running" {
                break;
            }
            if state == "degraded" {
                let failed = m.sh("systemctl --failed --no-legend --plain --no-pager");
                println!(
                    "[{name}] systemd degraded; failed units:\n{}",
                    String::from_utf8_lossy(&failed.stdout)
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "[{name}] systemd did not reach running within 90 s (last state {state:?})"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        m
    }

    /// Runs `script` with sh inside the machine, in the repository, as root.
    fn sh(&self, script: &str) -> Output {
        self.run(&["sh", "-c", script])
    }

    fn run(&self, argv: &[&str]) -> Output {
        self.run_within(argv, LIMIT)
    }

    /// Runs `argv` inside the machine, killed after `limit` seconds.
    fn run_within(&self, argv: &[&str], limit: u32) -> Output {
        // Where the cargo that runs this suite lives, for the docs' `cargo build` line.
        let cargo_dir = Path::new(env!("CARGO"))
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let path = format!(
            "{cargo_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new("nsenter");
        as_in_a_shell(&mut cmd);
        cmd.args(["-t", &self.pid.to_string(), "-a", &format!("--wd={REPO}")])
            // Nothing in here may hang the suite.
            .args(["timeout", "-s", "KILL", &limit.to_string()])
            .args(argv)
            .env("PATH", path)
            .env("SYSTEMD_PAGER", "")
            .env("SYSTEMD_COLORS", "0")
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }

    /// Runs `script` and returns its stdout; panics with everything useful if it fails.
    fn ok(&self, script: &str) -> String {
        self.ok_within(script, LIMIT)
    }

    /// [`Machine::ok`] with its own time limit (seconds).
    fn ok_within(&self, script: &str, limit: u32) -> String {
        let out = self.run_within(&["sh", "-c", script], limit);
        if !out.status.success() {
            panic!(
                "[{}] `{script}` failed ({}):\nstdout: {}\nstderr: {}\n{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.diagnostics()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `script`, which must fail; returns its stderr.
    fn fails(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            !out.status.success(),
            "[{}] `{script}` succeeded; it must not:\n{}",
            self.name,
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn diagnostics(&self) -> String {
        let out = self.sh(
            "systemctl status modelreg --no-pager -l 2>&1; journalctl -u modelreg --no-pager -n 60 2>&1",
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs every line of the docs/operations.md block marked `<!-- systemd_boot: NAME -->`,
    /// in order, exactly as written.
    fn run_docs_block(&self, name: &str) {
        for line in docs_block(name) {
            println!("[{}] # {line}", self.name);
            // A release build from scratch takes minutes on 2 busy cores (and may first
            // wait for the other test's `cargo deb`, which builds the same profile).
            let limit = if line.starts_with("cargo ") {
                BUILD_LIMIT
            } else {
                LIMIT
            };
            self.ok_within(&line, limit);
        }
    }

    /// Polls `cond` until it holds; panics after `timeout` with `what` and diagnostics.
    fn wait(&self, timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond() {
            if Instant::now() > deadline {
                panic!(
                    "[{}] no {what} within {timeout:?}\n{}",
                    self.name,
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn show(&self, unit: &str, prop: &str) -> String {
        self.ok(&format!("systemctl show -p {prop} --value {unit}"))
            .trim()
            .to_string()
    }

    fn status(&self) -> String {
        // `status` exits 3 for a stopped unit: take its output whatever it answers.
        let out = self.sh("systemctl status modelreg --no-pager -l");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // SIGKILL to PID 1 of a PID namespace kills every process in it; the mount
        // namespace, its tmpfs and overlays go with the last of them.
        if self.pid > 0 {
            // SAFETY: kill only sends a signal, to the PID we found as unshare's child.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

/// The (single) child of `parent`, from /proc.
fn child_of(parent: u32) -> Option<i32> {
    let children =
        std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

/// The lines of the fenced block after `<!-- systemd_boot: NAME -->` in docs/operations.md.
fn docs_block(name: &str) -> Vec<String> {
    let docs = std::fs::read_to_string(Path::new(REPO).join("docs/operations.md")).unwrap();
    let marker = format!("<!-- systemd_boot: {name} -->");
    let at = docs
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/operations.md has no {marker}"));
    let mut lines = docs[at + marker.len()..]
        .lines()
        .skip_while(|l| l.trim().is_empty());
    assert_eq!(
        lines.next().map(str::trim),
        Some("```sh"),
        "{marker} must be followed by a ```sh block"
    );
    let block: Vec<String> = lines
        .take_while(|l| l.trim() != "```")
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(!block.is_empty(), "{marker}: empty block");
    block
}

/// A command line run as `user` with that user's groups (as after a fresh login).
fn as_user(user: &str, cmd: &str) -> String {
    format!("setpriv --reuid {user} --regid {user} --init-groups sh -c '{cmd}'")
}

/// Keeps the `systemctl status` output for the report (and prints it).
fn keep_status(m: &Machine, label: &str) {
    let status = m.status();
    println!(
        "[{}] systemctl status modelreg ({label}):\n{status}",
        m.name
    );
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("systemd_boot-{}-{label}.status.txt", m.name));
    let _ = std::fs::write(path, &status);
}

/// The documented install, end to end under a real systemd.
#[test]
fn documented_install_serves_the_group_under_real_systemd() {
    skip_unless_possible!();
    let m = Machine::boot("install");

    m.run_docs_block("install");
    assert_eq!(m.show("modelreg", "ActiveState"), "active");
    assert_eq!(m.show("modelreg", "NRestarts"), "0", "{}", m.diagnostics());
    let status = m.status();
    assert!(
        status.contains("Status: \"0 models, 0 versions"),
        "the STATUS line: {status}"
    );
    keep_status(&m, "after-install");

    // The layout: the root is the daemon's alone, the inbox the group's.
    let modes = m.ok(&format!(
        "stat -c '%n %a %U %G' {ROOT} {ROOT}/pretrained_models {ROOT}/models {ROOT}/registry.yaml {SOCK}"
    ));
    let expect = [
        format!("{ROOT} 755 modelreg modelreg"),
        format!("{ROOT}/pretrained_models 2770 modelreg modelreg"),
        format!("{SOCK} 660 modelreg modelreg"),
    ];
    for e in &expect {
        assert!(modes.lines().any(|l| l == e), "want {e:?} in:\n{modes}");
    }
    // What the daemon makes itself: its own, writable by nobody else (the exact mode is
    // the daemon's choice).
    for line in modes
        .lines()
        .filter(|l| l.contains("/models ") || l.contains("/registry.yaml "))
    {
        let f: Vec<&str> = line.split(' ').collect();
        let mode = u32::from_str_radix(f[1], 8).unwrap();
        assert!(mode & 0o022 == 0 && f[2] == "modelreg", "{line}");
    }

    // alice is a member (the docs' usermod line), bob is not.
    m.ok("useradd --no-create-home --shell /bin/sh alice");
    m.ok("useradd --no-create-home --shell /bin/sh bob");
    let usermod = docs_usermod();
    m.ok(&usermod);

    let cli = format!("/usr/local/bin/modelreg --socket {SOCK}");
    m.ok(&as_user("alice", &format!("{cli} list")));

    // Outside the group: the real cause, and an exit code of its own.
    let out = m.sh(&as_user("bob", &format!("{cli} list")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("permission denied") && err.contains("not in group modelreg"),
        "{err}"
    );
    assert!(!err.contains("no modelreg daemon"), "{err}");
    println!("[install] bob (not in the group), exit 4: {err}");

    // A member drops a model; it is registered.
    m.ok(&as_user(
        "alice",
        &format!("umask 022; head -c 100000 /dev/urandom > {ROOT}/pretrained_models/alice_net.pt"),
    ));
    m.wait(Duration::from_secs(60), "registration of alice_net", || {
        m.sh(&as_user("alice", &format!("{cli} versions alice_net")))
            .status
            .success()
    });
    let stored = m.ok(&as_user("alice", &format!("{cli} get alice_net v1 --path")));
    let stored = stored.trim().to_string();
    assert!(stored.starts_with(&format!("{ROOT}/models/")), "{stored}");
    m.ok(&as_user(
        "alice",
        &format!("cmp {stored} {ROOT}/pretrained_models/alice_net.pt"),
    ));

    // ... and cannot remove or rename anything outside the inbox.
    for attack in [
        format!("rm -rf {ROOT}/models/alice_net"),
        format!("rm -f {stored}"),
        format!("mv {ROOT}/models/alice_net {ROOT}/pretrained_models/stolen"),
        format!("mv {ROOT}/registry.yaml {ROOT}/x"),
        format!("rm -f {ROOT}/registry.yaml"),
        format!("mv {ROOT}/models {ROOT}/x"),
        format!("mv {ROOT}/pretrained_models {ROOT}/x"),
        format!("touch {ROOT}/new-file"),
        format!("echo x >> {ROOT}/registry.yaml"),
    ] {
        m.fails(&as_user("alice", &attack));
    }
    m.ok(&format!(
        "test -f {stored} && test -f {ROOT}/registry.yaml && test -d {ROOT}/models/alice_net/v1"
    ));
    m.ok(&as_user("alice", &format!("{cli} verify alice_net")));

    // The sandbox: the unit's user writes its root and nothing else.
    let main = m.show("modelreg", "MainPID");
    let in_unit = |cmd: &str| {
        format!(
            "nsenter -t {main} -m setpriv --reuid modelreg --regid modelreg --clear-groups sh -c '{cmd}'"
        )
    };
    m.ok(&in_unit(&format!(
        "touch {ROOT}/.probe && rm {ROOT}/.probe"
    )));
    // The namespace shares the host's /dev: a sandbox that let the probe through would
    // leave it in the machine's real /dev/shm, so it is removed on every exit path.
    struct RemoveOnDrop(&'static str);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    let _shm_probe = RemoveOnDrop(SHM_PROBE);
    for outside in [
        "/etc/modelreg/probe".to_string(),
        "/usr/local/bin/probe".to_string(),
        "/var/lib/probe".to_string(),
        "/var/log/probe".to_string(),
        format!("{REPO}/target/probe"),
        "/root/probe".to_string(),
        SHM_PROBE.to_string(),
    ] {
        m.fails(&in_unit(&format!("touch {outside}")));
    }

    // Reload: a changed setting shows in `status`.
    let status_json = || m.ok(&as_user("alice", &format!("{cli} status --json")));
    assert!(
        status_json().contains("\"settle_secs\": 2.0"),
        "{}",
        status_json()
    );
    m.ok("sed -i 's/^settle: 2s$/settle: 1500ms/' /etc/modelreg/config.yaml");
    m.ok("systemctl reload modelreg");
    m.wait(Duration::from_secs(30), "the new settle in status", || {
        status_json().contains("\"settle_secs\": 1.5")
    });
    assert_eq!(
        m.show("modelreg", "NRestarts"),
        "0",
        "reload is not a restart"
    );
    keep_status(&m, "after-reload");

    // The journal: the daemon's own lines are there, plain, and clean.
    m.wait(
        Duration::from_secs(30),
        "the daemon's lines in the journal",
        || {
            let j = m.ok("journalctl _SYSTEMD_UNIT=modelreg.service -o cat --no-pager");
            j.contains("modelreg started") && j.contains("alice_net")
        },
    );
    let journal = m.ok("journalctl _SYSTEMD_UNIT=modelreg.service -o cat --no-pager");
    for line in journal.lines() {
        assert!(
            !line.contains("ERROR") && !line.contains("WARN"),
            "a problem in the journal: {line}\n{journal}"
        );
        assert!(
            !line.contains('\u{1b}'),
            "colour codes in the journal: {line:?}"
        );
        assert!(
            !line.starts_with("20"),
            "a timestamp of its own (the journal adds one): {line}"
        );
    }

    // The HTTP API under the shipped drop-in, installed by docs/operations.md's own
    // lines: `http.listen` on loopback, a ping answered from inside the machine, and the
    // unit's exposure with the drop-in still at most 2.0.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    m.ok(&format!(
        "printf 'http:\\n  listen: 127.0.0.1:{port}\\n' >> /etc/modelreg/config.yaml"
    ));
    m.run_docs_block("http");
    let ping = format!("curl -sf -m 5 http://127.0.0.1:{port}/api/v1/ping");
    m.wait(Duration::from_secs(30), "the HTTP API answering", || {
        m.sh(&ping).status.success()
    });
    let pong = m.ok(&ping);
    assert!(pong.contains("\"pong\":true"), "{pong}");
    println!("[install] HTTP under the drop-in: {pong}");
    let security = m.ok("systemd-analyze security modelreg --no-pager");
    let exposure: f64 = security
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for modelreg.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure in:\n{security}"));
    println!("[install] exposure with the HTTP drop-in: {exposure}");
    assert!(exposure <= 2.0, "{security}");
    // Back to the unit as installed, for what follows.
    m.ok(
        "rm /etc/systemd/system/modelreg.service.d/http.conf && sed -i '/^http:/,$d' /etc/modelreg/config.yaml && systemctl daemon-reload && systemctl restart modelreg",
    );

    // Stop: clean and well within TimeoutStopSec.
    let t0 = Instant::now();
    m.ok("systemctl stop modelreg");
    let took = t0.elapsed();
    println!("[install] systemctl stop took {took:?}");
    let timeout = m.show("modelreg", "TimeoutStopUSec");
    assert!(
        took < Duration::from_secs(60),
        "stop took {took:?} (TimeoutStopSec {timeout})"
    );
    assert_eq!(m.show("modelreg", "Result"), "success");
    assert_eq!(m.show("modelreg", "ExecMainStatus"), "0");
    assert_eq!(m.show("modelreg", "ActiveState"), "inactive");

    // The watchdog: a daemon frozen with SIGSTOP is killed and restarted. A short
    // WatchdogSec (and no core file) for the test only, in a runtime drop-in.
    m.ok(
        "mkdir -p /run/systemd/system/modelreg.service.d && printf '[Service]\\nWatchdogSec=5s\\nLimitCORE=0\\n' > /run/systemd/system/modelreg.service.d/watchdog.conf && systemctl daemon-reload && systemctl start modelreg",
    );
    let frozen = m.show("modelreg", "MainPID");
    let restarts: u32 = m.show("modelreg", "NRestarts").parse().unwrap();
    m.ok(&format!("kill -STOP {frozen}"));
    let t0 = Instant::now();
    m.wait(Duration::from_secs(90), "a restart by the watchdog", || {
        let pid = m.show("modelreg", "MainPID");
        m.show("modelreg", "ActiveState") == "active"
            && pid != frozen
            && pid != "0"
            && m.show("modelreg", "NRestarts").parse::<u32>().unwrap() > restarts
    });
    let sys = m.ok("journalctl -u modelreg -o cat --no-pager");
    println!(
        "[install] frozen pid {frozen}: restarted as pid {} after {:?}; systemd said:\n{}",
        m.show("modelreg", "MainPID"),
        t0.elapsed(),
        sys.lines()
            .filter(|l| l.contains("atchdog") || l.contains("SIGABRT") || l.contains("restart"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(sys.contains("Watchdog timeout"), "{sys}");
    m.ok(&as_user("alice", &format!("{cli} get alice_net v1")));
    m.ok("rm -r /run/systemd/system/modelreg.service.d && systemctl daemon-reload");

    // Socket activation: the first connection starts the daemon.
    m.run_docs_block("socket");
    assert_eq!(m.show("modelreg.service", "ActiveState"), "inactive");
    let sock = m.ok("stat -c '%a %U %G' /run/modelreg.sock");
    assert_eq!(sock.trim(), "660 modelreg modelreg");
    m.ok(&as_user(
        "alice",
        "/usr/local/bin/modelreg --socket /run/modelreg.sock get alice_net v1",
    ));
    // The first connection can be answered before the daemon's own readiness ping has
    // reached systemd (READY=1): wait for "active" rather than asserting it at once.
    m.wait(
        Duration::from_secs(30),
        "the socket-activated service active",
        || m.show("modelreg.service", "ActiveState") == "active",
    );
    m.fails(&format!("test -e {SOCK}"));
    keep_status(&m, "socket-activated");
}

/// The `usermod` line of docs/operations.md (adds alice to the group).
fn docs_usermod() -> String {
    let docs = std::fs::read_to_string(Path::new(REPO).join("docs/operations.md")).unwrap();
    docs.lines()
        .map(str::trim)
        .find(|l| l.starts_with("usermod -aG modelreg alice"))
        .expect("docs/operations.md shows `usermod -aG modelreg alice`")
        .to_string()
}

/// The Debian package: `apt-get install ./target/debian/*.deb` under a real systemd
/// creates the user and the layout, enables and starts the service.
#[test]
fn debian_package_installs_and_starts_the_service() {
    skip_unless_possible!();
    let have_cargo_deb = Command::new(env!("CARGO"))
        .args(["deb", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_cargo_deb {
        println!("SKIPPED: cargo-deb is missing (cargo install cargo-deb --locked; .ci/run does)");
        return;
    }
    // The build line of docs/operations.md, run here on the machine itself (it writes
    // only target/).
    let mut deb = Command::new(env!("CARGO"));
    as_in_a_shell(&mut deb);
    let built = deb
        .args(["deb", "--locked", "--quiet"])
        .current_dir(REPO)
        .status()
        .expect("run cargo deb");
    assert!(built.success(), "cargo deb --locked failed");
    let version = env!("CARGO_PKG_VERSION");

    let m = Machine::boot("deb");
    m.ok("test ! -e /usr/bin/modelreg && ! getent passwd modelreg");
    // This machine is a container image whose /usr/sbin/policy-rc.d (exit 101) forbids
    // packages to start services; a real Debian host has none. Removed in the /usr
    // overlay only: the machine's own file stays.
    m.ok("rm -f /usr/sbin/policy-rc.d");
    m.run_docs_block("deb");
    keep_status(&m, "deb");
    assert_eq!(m.show("modelreg", "ActiveState"), "active");
    assert_eq!(m.ok("systemctl is-enabled modelreg").trim(), "enabled");
    let exe = m.ok("readlink /proc/$(systemctl show -p MainPID --value modelreg)/exe");
    assert_eq!(
        exe.trim(),
        "/usr/bin/modelreg",
        "the unit runs the packaged binary"
    );
    m.ok("getent passwd modelreg && getent group modelreg");
    assert_eq!(
        m.ok("dpkg-query -W -f='${Version}' modelreg"),
        format!("{version}-1")
    );
    let conffiles = m.ok("dpkg-query -W -f='${Conffiles}' modelreg");
    assert!(
        conffiles.contains("/etc/modelreg/config.yaml"),
        "{conffiles}"
    );
    let modes = m.ok(&format!(
        "stat -c '%a %U %G' {ROOT} {ROOT}/pretrained_models {SOCK}"
    ));
    assert_eq!(
        modes,
        "755 modelreg modelreg\n2770 modelreg modelreg\n660 modelreg modelreg\n"
    );

    m.ok("useradd --no-create-home --shell /bin/sh alice && usermod -aG modelreg alice");
    m.ok(&as_user(
        "alice",
        &format!("umask 022; echo packaged > {ROOT}/pretrained_models/deb_net.pt"),
    ));
    m.wait(Duration::from_secs(60), "registration of deb_net", || {
        m.sh(&as_user(
            "alice",
            &format!("modelreg --socket {SOCK} versions deb_net"),
        ))
        .status
        .success()
    });

    // Removal stops and disables the service; the registry stays.
    m.ok("apt-get purge -y modelreg");
    assert_eq!(m.show("modelreg", "ActiveState"), "inactive");
    m.ok(&format!(
        "test -f {ROOT}/registry.yaml && test ! -e /usr/bin/modelreg"
    ));
}
