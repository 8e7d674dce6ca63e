//! Reading a connection with `recvmsg`, so that descriptors passed with a request
//! (SCM_RIGHTS) are received (close-on-exec) and tied to the request line they came with.
//!
//! The kernel hands descriptors to the `recvmsg` that reads the first byte of the
//! message they were sent with, and ends that read with the message's first buffer: so
//! the last byte of that read lies in the line they were sent with. Each batch is kept
//! with that byte's offset in the stream; [`FdReader::take_line`] gives a request line
//! the descriptors that arrived inside it and closes any that arrived before it (sent
//! with a blank line, or with a line already answered).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, Interest, ReadBuf};
use tokio::net::unix::OwnedReadHalf;

/// The most descriptors read with one message; more are closed by the kernel, and the
/// request is refused (a request carries at most one).
const MAX_FDS: usize = 4;

/// Descriptors received with one `recvmsg`.
#[derive(Debug)]
struct Batch {
    /// Stream offset of the last byte read with them.
    at: u64,
    fds: Vec<OwnedFd>,
    /// The kernel dropped some (more than [`MAX_FDS`] were sent).
    truncated: bool,
}

/// The descriptors sent with one request line.
#[derive(Debug, Default)]
pub(super) struct LineFds {
    /// In the order received.
    pub fds: Vec<OwnedFd>,
    /// More were sent than could be received (they are closed).
    pub truncated: bool,
}

/// The read side of a connection, receiving descriptors; see the module docs.
#[derive(Debug)]
pub(super) struct FdReader {
    inner: OwnedReadHalf,
    /// Bytes read so far.
    read: u64,
    pending: Vec<Batch>,
}

impl FdReader {
    pub(super) fn new(inner: OwnedReadHalf) -> Self {
        FdReader {
            inner,
            read: 0,
            pending: Vec::new(),
        }
    }

    /// Bytes read from the socket so far.
    pub(super) fn offset(&self) -> u64 {
        self.read
    }

    /// The descriptors that came with the line at stream offsets `start..end`; those
    /// received before `start` are closed (their line is gone).
    pub(super) fn take_line(&mut self, start: u64, end: u64) -> LineFds {
        let mut out = LineFds::default();
        let mut keep = Vec::new();
        for b in self.pending.drain(..) {
            if b.at >= end {
                keep.push(b);
            } else if b.at >= start {
                out.fds.extend(b.fds);
                out.truncated |= b.truncated;
            }
        }
        self.pending = keep;
        out
    }
}

/// One `recvmsg` into `buf`; descriptors received are added to `pending` with the offset
/// of the last byte read.
fn recv(
    fd: i32,
    buf: &mut ReadBuf<'_>,
    read: &mut u64,
    pending: &mut Vec<Batch>,
) -> std::io::Result<usize> {
    let dst = buf.initialize_unfilled();
    let mut iov = libc::iovec {
        iov_base: dst.as_mut_ptr().cast(),
        iov_len: dst.len(),
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<i32>()) as u32) };
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = vec![0u64; (space as usize).div_ceil(8)];
    // SAFETY: msghdr is plain data; the fields set below are all recvmsg reads.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = (control.len() * 8) as _;
    // SAFETY: the iovec and control buffer are valid for the call. MSG_CMSG_CLOEXEC:
    // a received descriptor is never inherited by a child.
    let n = unsafe {
        libc::recvmsg(
            fd,
            &mut msg,
            libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let n = n as usize;
    let mut fds = Vec::new();
    // SAFETY: the CMSG_* walk stays within msg_controllen as the kernel set it; each
    // SCM_RIGHTS payload is a packed array of descriptors now owned by this process.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<i32>();
                let len = (*c).cmsg_len as usize - (data as usize - c as usize);
                for i in 0..len / std::mem::size_of::<i32>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let truncated = msg.msg_flags & libc::MSG_CTRUNC != 0;
    *read += n as u64;
    if !fds.is_empty() || truncated {
        pending.push(Batch {
            at: (*read).saturating_sub(1),
            fds,
            truncated,
        });
    }
    buf.advance(n);
    Ok(n)
}

impl AsyncRead for FdReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let FdReader {
            inner,
            read,
            pending,
        } = self.get_mut();
        let stream = inner.as_ref();
        let fd = stream.as_raw_fd();
        loop {
            ready!(stream.poll_read_ready(cx))?;
            // try_io clears the readiness when the read would block, so the next poll
            // waits for new data.
            match stream.try_io(Interest::READABLE, || recv(fd, buf, read, pending)) {
                Ok(_) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use tokio::io::{AsyncBufReadExt, BufReader};

    use super::*;

    /// Reads one line; returns it with the descriptors that came with it.
    async fn line(r: &mut BufReader<FdReader>) -> (String, LineFds) {
        let mut buf = Vec::new();
        let n = r.read_until(b'\n', &mut buf).await.unwrap();
        let end = r.get_ref().offset() - r.buffer().len() as u64;
        let fds = r.get_mut().take_line(end - n as u64, end);
        (String::from_utf8(buf).unwrap(), fds)
    }

    #[tokio::test]
    async fn a_descriptor_belongs_to_the_line_it_was_sent_with() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let file = tempfile::tempfile().unwrap();
        let send = crate::client::send_with_fds;
        // Sent before anything is read, so one read may take several lines.
        assert_eq!(send(&a, b"one\n", &[]).unwrap(), 4);
        assert_eq!(send(&a, b"two\n", &[file.as_fd()]).unwrap(), 4);
        assert_eq!(send(&a, b"\n", &[file.as_fd()]).unwrap(), 1);
        assert_eq!(send(&a, b"three\n", &[]).unwrap(), 6);
        let two = [file.as_fd(), file.as_fd()];
        assert_eq!(send(&a, b"four\n", &two).unwrap(), 5);
        drop(a);
        let stream = tokio::net::UnixStream::from_std(b).unwrap();
        let (r, _w) = stream.into_split();
        let mut r = BufReader::with_capacity(1024, FdReader::new(r));
        let (l, fds) = line(&mut r).await;
        assert_eq!((l.as_str(), fds.fds.len()), ("one\n", 0));
        let (l, fds) = line(&mut r).await;
        assert_eq!((l.as_str(), fds.fds.len()), ("two\n", 1));
        // The blank line's descriptor is its own: not given to the next line.
        let (l, fds) = line(&mut r).await;
        assert_eq!((l.as_str(), fds.fds.len()), ("\n", 1));
        let (l, fds) = line(&mut r).await;
        assert_eq!((l.as_str(), fds.fds.len()), ("three\n", 0));
        let (l, fds) = line(&mut r).await;
        assert_eq!((l.as_str(), fds.fds.len()), ("four\n", 2));
        // Received close-on-exec.
        let flags = unsafe { libc::fcntl(fds.fds[0].as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }
}
