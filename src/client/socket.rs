//! The control socket's side of [`Client`](super::Client): one Unix stream, a JSON line
//! each way, descriptors passed with SCM_RIGHTS.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ClientError;
use crate::users::{group_name, user_name};

/// A connection to the daemon's socket.
pub(super) struct Socket {
    pub(super) path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Socket {
    /// Connects to the socket at `path`, answers awaited 60 s.
    pub(super) fn connect(path: &Path) -> Result<Socket, ClientError> {
        let stream = UnixStream::connect(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                return permission_denied(path);
            }
            ClientError::NotRunning {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        let io = |e| ClientError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        Ok(Socket {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// How long to wait for an answer.
    pub(super) fn set_read_timeout(&mut self, timeout: Duration) -> Result<(), ClientError> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .map_err(|e| ClientError::Io {
                path: self.path.clone(),
                source: e,
            })
    }

    /// Sends `line` (a newline is added), with the descriptor `fd` if given, and returns
    /// the answer line.
    pub(super) fn exchange(
        &mut self,
        line: &str,
        fd: Option<BorrowedFd>,
    ) -> Result<String, ClientError> {
        let path = self.path.clone();
        let io = |e| ClientError::Io {
            path: path.clone(),
            source: e,
        };
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        let sent = match fd {
            Some(fd) => send_with_fds(&self.writer, &buf, &[fd]).map_err(io)?,
            None => 0,
        };
        self.writer.write_all(&buf[sent..]).map_err(io)?;
        let mut answer = String::new();
        let n = match self.reader.read_line(&mut answer) {
            Ok(n) => n,
            // The read timeout ran out: said as such, not as "Resource temporarily
            // unavailable", and without claiming the request failed.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                let secs = (self.reader.get_ref().read_timeout().ok().flatten())
                    .map_or(0, |t| t.as_secs());
                return Err(ClientError::Protocol(format!(
                    "no answer from {} within {secs} s; the daemon may still carry the \
                     request out (see `modelreg status` and the daemon's log)",
                    self.path.display()
                )));
            }
            Err(e) => return Err(io(e)),
        };
        if n == 0 {
            return Err(ClientError::Protocol(
                "the daemon closed the connection".into(),
            ));
        }
        Ok(answer)
    }

    /// Reads the next line of a stream (`events`); `None` when the daemon closed it.
    pub(super) fn next_line(&mut self) -> Result<Option<String>, ClientError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| ClientError::Io {
                path: self.path.clone(),
                source: e,
            })?;
        Ok((n > 0).then_some(line))
    }
}

/// Sends (a first part of) `buf` with the descriptors `fds` attached (SCM_RIGHTS, in
/// one `sendmsg`); returns the bytes sent (the caller writes the rest).
pub fn send_with_fds(sock: &UnixStream, buf: &[u8], fds: &[BorrowedFd]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let payload = std::mem::size_of_val(raw.as_slice()) as u32;
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data; every pointer set below stays valid for the call, and
    // the one control message written fits the buffer sized by CMSG_SPACE.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !raw.is_empty() {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(payload) as _;
            std::ptr::copy_nonoverlapping(raw.as_ptr(), libc::CMSG_DATA(c).cast(), raw.len());
        }
        libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Names who may connect to `path`: the socket's group and owner, or those of the first
/// folder above it that can be looked at (a folder without search permission is what
/// refused us then).
fn permission_denied(path: &Path) -> ClientError {
    use std::os::unix::fs::MetadataExt;
    let meta = path
        .ancestors()
        .find_map(|p| std::fs::symlink_metadata(p).ok());
    let (uid, gid, mode) = meta
        .map(|m| (m.uid(), m.gid(), m.mode()))
        .unwrap_or((0, 0, 0));
    // The socket itself was looked at (not a folder above it) and nobody but its owner
    // may connect: say so, rather than "you are not in group X".
    let owner_only = std::fs::symlink_metadata(path).is_ok() && mode & 0o077 == 0;
    ClientError::PermissionDenied {
        path: path.to_path_buf(),
        group: group_name(gid),
        owner: user_name(uid),
        owner_only,
    }
}
