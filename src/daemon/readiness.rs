//! What systemd is told: READY=1, STATUS= lines and watchdog pings.
//!
//! READY=1 once our own socket answers, STATUS= when counts or problems change, watchdog
//! pings while the settler's loop answers.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::messages::SettlerMsg;
use crate::protocol::{Request, Response};
use crate::server::Context;
use crate::shutdown;

/// Ready means a query is answered: asks our own socket at `path` before telling systemd
/// so, then starts the STATUS= reports and the watchdog when systemd wants them. The
/// first reconciliation (the inbox scan) is already done by then.
pub(super) async fn announce(
    ctx: &Arc<Context>,
    path: PathBuf,
    stop: &shutdown::Shutdown,
) -> Result<()> {
    let answered = tokio::task::spawn_blocking(move || self_query(&path)).await;
    match answered {
        Ok(Ok(())) => crate::systemd::ready(&status_line(ctx)),
        Ok(Err(e)) => {
            return Err(Error::Other(format!(
                "the control socket does not answer: {e}"
            )));
        }
        Err(e) => return Err(Error::Other(format!("readiness check failed: {e}"))),
    }
    if crate::systemd::under_systemd() {
        tokio::spawn(report_status(ctx.clone(), stop.clone()));
    }
    if let Some(period) = crate::systemd::watchdog_interval() {
        tokio::spawn(feed_watchdog(period, ctx.settler.clone(), stop.clone()));
    }
    Ok(())
}

/// Connects to our own socket and pings, retrying briefly (the accept loop may not have
/// been polled yet).
fn self_query(path: &Path) -> std::result::Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ping(path) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// One ping as any client sends it: a request line, then one answer line that says `ok`.
/// Written on the protocol's types with plain std I/O rather than with `crate::client`:
/// the client is the layer above the server, for the CLI, and the daemon does not
/// depend on it.
fn ping(path: &Path) -> std::result::Result<(), String> {
    let stream = UnixStream::connect(path).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_vec(&Request::Ping {}).map_err(|e| e.to_string())?;
    line.push(b'\n');
    (&stream)
        .write_all(&line)
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    match serde_json::from_str::<Response>(&answer) {
        Ok(r) if r.ok => Ok(()),
        Ok(r) => Err(r
            .error
            .map_or_else(|| "an error without a body".into(), |e| e.message)),
        Err(e) => Err(format!("unreadable answer {answer:?}: {e}")),
    }
}

/// The one-line summary sent to systemd as STATUS=.
pub(super) fn status_line(ctx: &Context) -> String {
    let c = ctx.shared.catalog();
    let (problems, _, registered, watch) = ctx.board.snapshot();
    let mut line = format!(
        "{} models, {} versions, {registered} registered since start; watching with {watch}; ",
        c.models.len(),
        c.version_count()
    );
    match problems.first() {
        None => line.push_str("no problems"),
        Some(p) => line.push_str(&format!(
            "{} problem(s), e.g. {}",
            problems.len(),
            p.message
        )),
    }
    line
}

/// Sends STATUS= when counts or problems change (never on a timer).
async fn report_status(ctx: Arc<Context>, stop: shutdown::Shutdown) {
    let mut last = String::new();
    loop {
        tokio::select! {
            _ = stop.wait() => break,
            _ = ctx.board.changed() => {}
        }
        // Let a burst of changes settle into one line.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let line = status_line(&ctx);
        if line != last {
            crate::systemd::status(&line);
            last = line;
        }
    }
}

/// Pings the watchdog at half its period, but only while the settler's loop answers: a
/// daemon whose event loop is stuck is restarted by systemd.
async fn feed_watchdog(
    period: Duration,
    settler: mpsc::UnboundedSender<SettlerMsg>,
    stop: shutdown::Shutdown,
) {
    let mut tick = tokio::time::interval(period / 2);
    loop {
        tokio::select! {
            _ = stop.wait() => break,
            _ = tick.tick() => {}
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if settler.send(SettlerMsg::Status(tx)).is_err() {
            break;
        }
        match tokio::time::timeout(period / 2, rx).await {
            Ok(Ok(_)) => crate::systemd::watchdog(),
            _ => tracing::warn!(
                "the settler did not answer within {:?}; not feeding the watchdog",
                period / 2
            ),
        }
    }
}
