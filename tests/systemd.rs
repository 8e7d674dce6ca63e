//! Issue 5: behaviour under systemd, without systemd: a datagram socket stands in for
//! NOTIFY_SOCKET, an inherited listener for socket activation.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use modelreg::client::Client;
use modelreg::protocol::Request;

struct Notify {
    sock: UnixDatagram,
    _dir: tempfile::TempDir,
    path: String,
}

impl Notify {
    fn new() -> Notify {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Notify {
            sock,
            path: path.display().to_string(),
            _dir: dir,
        }
    }

    /// Collects messages until one contains `needle`, or panics after `timeout`.
    fn wait_for(&self, needle: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = msg.lines().any(|l| l == needle);
                seen.push(msg);
                if done {
                    return seen;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no {needle} within {timeout:?}; got {seen:?}"
            );
        }
    }
}

/// READY=1 only once a query is answered; STATUS= lines; WATCHDOG=1 pings when
/// WATCHDOG_USEC is set; STOPPING=1 on SIGTERM, then exit 0.
#[test]
fn notify_ready_status_watchdog_and_stopping() {
    let notify = Notify::new();
    let mut d = TestDaemon::new("settle: 300ms\n");
    d.spawn_with(
        &[
            ("NOTIFY_SOCKET", notify.path.clone()),
            ("WATCHDOG_USEC", "400000".into()),
        ],
        false,
    );
    let msgs = notify.wait_for("READY=1", Duration::from_secs(15));
    // The moment READY arrives, the socket answers: no retry, no wait.
    let mut c = Client::connect(&d.socket()).expect("socket answers at READY");
    c.call(&Request::Ping {})
        .expect("a query succeeds at READY");
    let ready = msgs.last().unwrap();
    assert!(ready.contains("STATUS=0 models, 0 versions"), "{ready}");

    write(&d.inbox().join("s.pt"), b"x");
    d.wait_versions("s", 1);
    notify.wait_for(
        "STATUS=1 models, 1 versions, 1 registered since start; watching with inotify; no problems",
        Duration::from_secs(10),
    );
    notify.wait_for("WATCHDOG=1", Duration::from_secs(5));
    notify.wait_for("WATCHDOG=1", Duration::from_secs(5));

    d.signal(libc::SIGHUP);
    notify.wait_for("RELOADING=1", Duration::from_secs(5));
    notify.wait_for("READY=1", Duration::from_secs(5));

    d.signal(libc::SIGTERM);
    notify.wait_for("STOPPING=1", Duration::from_secs(10));
    assert!(d.stop_wait().success());
}

/// SIGHUP re-reads the settings: a new settle period is in effect (seen in status); a
/// path change is reported as needing a restart.
#[test]
fn sighup_reloads_settings_and_reports_restart_needed() {
    let mut d = TestDaemon::start("settle: 300ms\n");
    assert_eq!(d.status().settle_secs, 0.3);
    d.write_config("settle: 1500ms\n");
    d.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(10), "the new settle period", || {
        d.status().settle_secs == 1.5
    });
    d.write_config("settle: 1500ms\ninbox: elsewhere\n");
    d.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(10), "the restart notice", || {
        d.status()
            .problems
            .iter()
            .any(|p| p.message.contains("inbox needs a restart"))
    });
    assert_eq!(
        d.status().inbox,
        d.inbox().display().to_string(),
        "the inbox stays until a restart"
    );
    // A broken file keeps the current settings.
    d.write_config("settle: [\n");
    d.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(10), "the reload error", || {
        d.status()
            .recent_errors
            .iter()
            .any(|e| e.message.contains("reload failed"))
    });
    assert_eq!(d.status().settle_secs, 1.5);
    assert!(d.stop().success());
}

/// Socket activation: started with an inherited listener (LISTEN_FDS/LISTEN_PID), the
/// daemon serves on it, binds nothing else, and leaves it in place when it stops.
#[test]
fn inherited_listener_is_served_and_left_in_place() {
    let mut d = TestDaemon::new("settle: 300ms\n");
    let path = d.root.path().join("activated.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let fd = listener.as_raw_fd();
    let log = std::fs::File::create(d.log_path()).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" serve --root \"$1\"")
        .arg(BIN)
        .arg(d.root.path())
        .stdin(Stdio::null())
        .stderr(log);
    // SAFETY: dup2 is async-signal-safe; fd 3 is where LISTEN_FDS says the socket is.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep FD_CLOEXEC and lose the socket at exec.
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    d.adopt(cmd.spawn().unwrap());
    drop(listener);
    wait_until(
        Duration::from_secs(15),
        "answers on the inherited socket",
        || {
            Client::connect(&path)
                .and_then(|mut c| c.call(&Request::Ping {}))
                .is_ok()
        },
    );
    assert!(!d.socket().exists(), "no socket of its own");
    write(&d.inbox().join("act.pt"), b"activated");
    wait_until(
        Duration::from_secs(20),
        "the version on the inherited socket",
        || {
            Client::connect(&path)
                .and_then(|mut c| c.call(&Request::versions("act")))
                .is_ok()
        },
    );
    assert!(d.stop().success());
    assert!(
        path.exists(),
        "the inherited socket belongs to systemd and stays"
    );
}

/// `log_format: json` writes one JSON object per line.
#[test]
fn json_log_format_writes_one_object_per_line() {
    let mut d = TestDaemon::start("settle: 300ms\nlog_format: json\n");
    write(&d.inbox().join("j.pt"), b"j");
    d.wait_versions("j", 1);
    assert!(d.stop().success());
    let log = d.log();
    let mut lines = 0;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        lines += 1;
    }
    assert!(lines >= 3 && log.contains("registered"), "{log}");
}

/// Text logs written to a file (not a terminal) carry no ANSI escapes.
#[test]
fn text_logs_to_a_file_have_no_ansi_escapes() {
    let mut d = TestDaemon::quick();
    assert!(d.stop().success());
    let log = d.log();
    assert!(!log.contains('\u{1b}'), "no ANSI escapes: {log:?}");
    assert!(log.contains("INFO") && log.contains("modelreg started"));
}
