//! One connection: read a request line within its timeouts, answer it, hand the answer
//! over to a client that may read slowly or not at all.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::Notify;

use super::Context;
use super::connections::{Conn, Phase};
use super::fds::FdReader;
use super::handlers::dispatch;
use crate::protocol::{ErrorCode, MAX_REQUEST_BYTES, Request, Response, parse_request};
use crate::shutdown::Shutdown;

/// How long a connection may take to finish a request line it has begun.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection may stay idle (no request under way) before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an answer may wait for the client to read anything of it; then the
/// connection is closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The kernel send buffer of each connection: how much of its answers a client may leave
/// unread. The daemon reads a connection's next request only once the previous answer is
/// handed over, so a client that never reads holds at most this plus one answer.
pub const SEND_BUFFER: usize = 64 * 1024;
/// Size of each connection's read buffer (longer requests still work, in steps).
const READ_BUFFER: usize = 1024;

/// Caps the kernel's buffer of unread answers of one connection ([`SEND_BUFFER`]).
pub(super) fn set_send_buffer(stream: &UnixStream) {
    use std::os::fd::AsRawFd;
    let size = SEND_BUFFER as libc::c_int;
    // SAFETY: setsockopt reads `size` for the duration of the call; the fd is open.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Why an answer could not be handed over.
pub(super) enum WriteFailed {
    /// The client read nothing for [`WRITE_TIMEOUT`]; `done` bytes of the answer were
    /// handed over (a stream finishes the line they cut before it says why it ends).
    Unread { done: usize },
    /// The connection was closed to admit another.
    Evicted,
    /// The client is gone.
    Gone,
}

/// Writes `bytes`, giving up when the client reads nothing for [`WRITE_TIMEOUT`] (the
/// timeout restarts at every step, so a large answer to a slow reader still arrives).
pub(super) async fn write_answer(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    bytes: &[u8],
    close: Option<&Notify>,
) -> Result<(), WriteFailed> {
    // Most answers fit the socket's buffer at once: no timer needed then.
    let mut done = match w.try_write(bytes) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(_) => return Err(WriteFailed::Gone),
    };
    while done < bytes.len() {
        let step = tokio::time::timeout(WRITE_TIMEOUT, w.write(&bytes[done..]));
        let r = match close {
            Some(c) => tokio::select! {
                _ = c.notified() => return Err(WriteFailed::Evicted),
                r = step => r,
            },
            None => step.await,
        };
        match r {
            Err(_) => return Err(WriteFailed::Unread { done }),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(WriteFailed::Gone),
            Ok(Ok(n)) => done += n,
        }
    }
    Ok(())
}

/// Tells the client why its connection is being closed (if it reads), then returns.
async fn close_with(w: &mut tokio::net::unix::OwnedWriteHalf, code: ErrorCode, message: String) {
    let r = Response::err(code, message);
    // A short bound: a client that does not read is not owed the reason.
    let _ = tokio::time::timeout(Duration::from_secs(1), w.write_all(&r.to_line())).await;
}

/// Answers the requests of one connection until it closes, times out or is evicted.
pub(super) async fn handle_connection(
    stream: UnixStream,
    ctx: &Context,
    shutdown: &Shutdown,
    conn: &Conn,
) {
    // Who is asking, from the kernel (SO_PEERCRED): changes are allowed only to the
    // daemon's own user and root (`register` also to a user who may write the inbox).
    let peer = super::register::Peer::of(&stream);
    let peer_uid = peer.uid;
    let (r, mut w) = stream.into_split();
    // Read with recvmsg: a `register` request comes with a file descriptor.
    let mut reader = BufReader::with_capacity(READ_BUFFER, FdReader::new(r));
    let mut line = Vec::new();
    let evicted = || {
        format!(
            "connection closed to admit another: the daemon is at its limit of {} connections and this one was the longest idle",
            conn.table.limit
        )
    };
    loop {
        // Idle until the first byte of the next request (or one already buffered).
        conn.set(Phase::Idle);
        let first = tokio::select! {
            _ = shutdown.wait() => return,
            _ = conn.close.notified() => {
                close_with(&mut w, ErrorCode::Busy, evicted()).await;
                return;
            }
            r = tokio::time::timeout(IDLE_TIMEOUT, async { reader.fill_buf().await.map(|b| b.is_empty()) }) => r,
        };
        match first {
            Err(_) => {
                close_with(
                    &mut w,
                    ErrorCode::Timeout,
                    format!(
                        "connection idle for {}s; closed (connect again to continue)",
                        IDLE_TIMEOUT.as_secs()
                    ),
                )
                .await;
                return;
            }
            Ok(Err(_)) | Ok(Ok(true)) => return,
            Ok(Ok(false)) => {}
        }
        conn.set(Phase::Reading);
        // A long request line once should not keep its buffer for the connection's life.
        if line.capacity() > READ_BUFFER {
            line = Vec::new();
        }
        line.clear();
        let mut limited = (&mut reader).take(MAX_REQUEST_BYTES as u64 + 1);
        let read = tokio::select! {
            _ = shutdown.wait() => return,
            _ = conn.close.notified() => {
                close_with(&mut w, ErrorCode::Busy, evicted()).await;
                return;
            }
            r = tokio::time::timeout(REQUEST_TIMEOUT, limited.read_until(b'\n', &mut line)) => r,
        };
        let n = match read {
            Err(_) => {
                close_with(
                    &mut w,
                    ErrorCode::Timeout,
                    format!(
                        "no complete request line within {}s",
                        REQUEST_TIMEOUT.as_secs()
                    ),
                )
                .await;
                return;
            }
            Ok(Err(_)) | Ok(Ok(0)) => return,
            Ok(Ok(n)) => n,
        };
        let complete = line.last() == Some(&b'\n');
        // The descriptors sent with this line (those of an earlier line are closed).
        let line_end = reader.get_ref().offset() - reader.buffer().len() as u64;
        let mut fds = reader
            .get_mut()
            .take_line(line_end.saturating_sub(n as u64), line_end);
        if !complete && n > MAX_REQUEST_BYTES {
            close_with(
                &mut w,
                ErrorCode::TooLarge,
                format!("request longer than {MAX_REQUEST_BYTES} bytes; connection closed"),
            )
            .await;
            return;
        }
        let body = trim_line(&line);
        if body.is_empty() {
            if complete {
                continue;
            }
            return;
        }
        let response = match parse_request(body) {
            Ok((req @ Request::Events { .. }, id)) => {
                drop(fds);
                // A stream, not one answer: the connection is the stream's until it ends.
                super::events::stream(req, id, &mut reader, &mut w, ctx, shutdown, conn).await;
                return;
            }
            Ok((req, id)) => {
                let mut r = if req.is_mutating() && !may_change(peer_uid) {
                    Response::err(
                        ErrorCode::PermissionDenied,
                        format!(
                            "{} changes the registry; only uid {} (the daemon's user) or root may",
                            req.op(),
                            own_uid()
                        ),
                    )
                } else if let Some(refused) = super::register::refuse_peer(&req, &peer, ctx) {
                    refused
                } else if let Some(refused) = super::register::refuse_fds(&req, &fds) {
                    refused
                } else if let Request::Register { .. } = req {
                    conn.set(Phase::Working);
                    let fd = fds.fds.pop().expect("checked: one descriptor");
                    super::register::register(req, body, fd, ctx, peer_uid).await
                } else if matches!(req, Request::Wait { .. }) {
                    // A `wait` may last long and changes nothing: it may be closed to
                    // admit another connection.
                    conn.set(Phase::Waiting);
                    tokio::select! {
                        r = dispatch(req, ctx, peer_uid) => r,
                        _ = conn.close.notified() => Response::err(ErrorCode::Busy, evicted()),
                    }
                } else {
                    conn.set(Phase::Working);
                    dispatch(req, ctx, peer_uid).await
                };
                r.id = id;
                r
            }
            Err(r) => r,
        };
        // Any descriptor not used is closed here, before the answer.
        drop(fds);
        conn.set(Phase::Writing);
        // The next request is read only once this answer is handed over: a client that
        // does not read its answers stops being read, and is closed after WRITE_TIMEOUT.
        match write_answer(&mut w, &response.to_line(), Some(&conn.close)).await {
            Ok(()) => {}
            Err(WriteFailed::Unread { .. }) => {
                tracing::debug!(
                    "closed a connection whose answer was unread for {}s",
                    WRITE_TIMEOUT.as_secs()
                );
                return;
            }
            Err(WriteFailed::Evicted | WriteFailed::Gone) => return,
        }
        if !complete {
            // The client closed its side after a last line without a newline.
            return;
        }
        // One request per turn: a client with more requests already queued lets every
        // other connection be answered in between.
        if !reader.buffer().is_empty() {
            tokio::task::yield_now().await;
        }
    }
}

/// The daemon's own (effective) uid: recorded with the changes made over HTTP.
pub fn own_uid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Whether a peer may change the registry: the daemon's own user, or root.
pub fn may_change(peer_uid: Option<u32>) -> bool {
    peer_uid.is_some_and(|u| u == 0 || u == own_uid())
}

fn trim_line(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\n' | b'\r' | b' ' | b'\t') {
        end -= 1;
    }
    &line[..end]
}
