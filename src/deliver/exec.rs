//! One run of an exec hook: the event as JSON on stdin and in environment variables, a
//! timeout that kills the process group, the output captured (bounded) to the log.

use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::config::HookConfig;
use crate::events::Event;

/// The most of each of stdout and stderr kept for the log; the rest is read and dropped.
const OUTPUT_MAX: usize = 16 << 10;
/// The event JSON goes in `MODELREG_EVENT_JSON` up to this size; larger, it is written
/// to a file named by `MODELREG_EVENT_FILE` instead (environments are limited).
const ENV_JSON_MAX: usize = 32 << 10;
/// How long the output is still read after the hook exited (a background child of it
/// may hold the pipes open), beside the next run: the run is over when the hook exits.
const OUTPUT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The daemon's environment variables from systemd, not passed on to hooks.
const SYSTEMD_VARS: [&str; 6] = [
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// Kills the hook's process group when dropped, unless it exited: on timeout, and when
/// the daemon stops during a run.
struct Group(Option<i32>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            // SAFETY: kill(2) with a negative pid signals the group the child leads.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
}

/// The environment a hook gets for `e` (its JSON is added by [`run`]).
pub(super) fn environment(name: &str, e: &Event) -> Vec<(String, String)> {
    let mut env = vec![
        ("MODELREG_HOOK".to_string(), name.to_string()),
        ("MODELREG_EVENT_SEQ".into(), e.seq.to_string()),
        ("MODELREG_EVENT_KIND".into(), e.kind.name().to_string()),
        ("MODELREG_EVENT_MODEL".into(), e.model.clone()),
        ("MODELREG_EVENT_TIME".into(), e.time.clone()),
        ("MODELREG_EVENT_COMMIT".into(), e.commit.to_string()),
    ];
    let mut opt = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            env.push((format!("MODELREG_EVENT_{k}"), v));
        }
    };
    opt("VERSION", e.version.map(|v| v.to_string()));
    opt("ALIAS", e.alias.clone());
    opt("FROM", e.from.map(|v| v.to_string()));
    opt("TO", e.to.map(|v| v.to_string()));
    opt("BY", e.by.clone());
    opt("REASON", e.reason.clone());
    opt("UID", e.uid.map(|v| v.to_string()));
    env
}

/// Runs hook `h` once for `e` (`json`: the event as one JSON line). Ok when it exits 0
/// within its timeout; else why not.
pub(super) async fn run(h: &HookConfig, e: &Event, json: &[u8]) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(&h.argv[0]);
    // systemd's variables are the daemon's: a hook must not notify or take sockets in
    // its name.
    for var in SYSTEMD_VARS {
        cmd.env_remove(var);
    }
    cmd.args(&h.argv[1..])
        .envs(environment(&h.name, e))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so that a timeout kills what it started too.
        .process_group(0)
        .kill_on_drop(true);
    let _file = if json.len() <= ENV_JSON_MAX {
        cmd.env(
            "MODELREG_EVENT_JSON",
            String::from_utf8_lossy(json).trim_end(),
        );
        None
    } else {
        let mut f = tempfile::Builder::new()
            .prefix("modelreg-event-")
            .suffix(".json")
            .tempfile()
            .map_err(|e| format!("writing the event to a temporary file: {e}"))?;
        std::io::Write::write_all(&mut f, json)
            .map_err(|e| format!("writing the event to a temporary file: {e}"))?;
        cmd.env("MODELREG_EVENT_FILE", f.path());
        Some(f)
    };
    let mut child = cmd
        .spawn()
        .map_err(|err| format!("cannot run {}: {err}", h.argv[0]))?;
    let mut group = Group(child.id().map(|p| p as i32));
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let json = json.to_vec();
    // A hook that does not read its stdin closes the pipe: not an error.
    tokio::spawn(async move {
        if let Some(mut s) = stdin {
            let _ = s.write_all(&json).await;
        }
    });
    let (out, err) = (Captured::start(stdout), Captured::start(stderr));
    let status = match tokio::time::timeout(h.on.timeout, child.wait()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("waiting for {}: {e}", h.argv[0])),
        Err(_) => {
            drop(group);
            let _ = child.wait().await;
            return Err(format!(
                "timed out after {} (its process group was killed)",
                humantime::format_duration(h.on.timeout)
            ));
        }
    };
    // It exited: what it left running is its own business. Its output is logged once
    // both pipes close, or after the grace with what came by then (a child it left
    // running may hold them open): not waited for here, so that the next event's run
    // does not wait on a process that is not the hook.
    group.0 = None;
    let (name, seq) = (h.name.clone(), e.seq);
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + OUTPUT_GRACE;
        for (stream, c) in [("stdout", out), ("stderr", err)] {
            let text = c.finish(deadline).await;
            if !text.trim().is_empty() {
                // One log line, its newlines and control characters escaped: a hook's
                // output cannot forge log lines (a timestamp and a level of its own) or
                // put raw NULs into the journal.
                let shown = crate::display::escape_for_terminal(text.trim_end());
                tracing::info!(hook = %name, seq, "{stream}: {shown}");
            }
        }
    });
    if status.success() {
        Ok(())
    } else if let Some(code) = status.code() {
        Err(format!("{} exited with status {code}", h.argv[0]))
    } else {
        use std::os::unix::process::ExitStatusExt;
        Err(format!(
            "{} was killed by signal {}",
            h.argv[0],
            status.signal().unwrap_or(0)
        ))
    }
}

/// One output stream of a hook, read to its end by a task of its own, the first
/// [`OUTPUT_MAX`] bytes kept where they can be taken before the end.
struct Captured {
    got: std::sync::Arc<std::sync::Mutex<(Vec<u8>, usize)>>,
    task: tokio::task::JoinHandle<()>,
}

impl Captured {
    /// Starts reading `stream` (none: nothing to read).
    fn start(stream: Option<impl AsyncRead + Unpin + Send + 'static>) -> Captured {
        let got = std::sync::Arc::new(std::sync::Mutex::new((Vec::new(), 0)));
        let into = got.clone();
        let task = tokio::spawn(async move {
            let Some(mut s) = stream else { return };
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut g = into.lock().unwrap_or_else(|p| p.into_inner());
                let room = OUTPUT_MAX.saturating_sub(g.0.len()).min(n);
                g.0.extend_from_slice(&buf[..room]);
                g.1 += n - room;
            }
        });
        Captured { got, task }
    }

    /// What was read when the stream ended, or at `deadline` if it was still open
    /// then (reading stops: the rest is not the hook's to log).
    async fn finish(mut self, deadline: tokio::time::Instant) -> String {
        let open = tokio::time::timeout_at(deadline, &mut self.task)
            .await
            .is_err();
        self.task.abort();
        let g = self.got.lock().unwrap_or_else(|p| p.into_inner());
        let mut text = String::from_utf8_lossy(&g.0).into_owned();
        if g.1 > 0 {
            text.push_str(&format!("\n[{} more bytes not kept]", g.1));
        }
        if open {
            text.push_str(&format!(
                "\n[still open {} after the hook exited (a process it started holds it): not read further]",
                humantime::format_duration(OUTPUT_GRACE)
            ));
        }
        text
    }
}
