//! Streamed bodies: stored files read chunk by chunk as the connection can send them, so
//! a download of any size holds a few [`CHUNK`]s, and a slow client holds no thread.
//!
//! A chunk already in the page cache (the usual case for a model fetched again) is read
//! on the connection's own task with `preadv2(RWF_NOWAIT)`, which copies what is cached
//! and never waits for the disk; only a chunk that must come from the disk goes to the
//! blocking pool. Before, every chunk took a trip to the blocking pool and through a
//! channel (two thread hand-overs per chunk) into a freshly zeroed buffer; chunk buffers
//! are now reused once the connection has sent them.
//!
//! [`FileBody`] serves one stored file (or a range of it) and is read as hyper asks for
//! the next frame: hyper holds one chunk while it writes it and the body reads at most
//! one more, so a download holds at most 2 x [`CHUNK`]. [`Streamed`] is a body fed
//! through a channel by a task (the tar of a version), [`send_file`] the same reading
//! into it.

use std::fs::File;
use std::future::poll_fn;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use axum::body::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Bytes read from a file at a time. Large enough that the per-chunk costs (a wake-up, a
/// write(2) into the socket) are small against the copies; small enough that a chunk
/// copied from the page cache on a runtime thread takes tens of microseconds.
pub(super) const CHUNK: usize = 512 * 1024;
/// Chunks [`Streamed`] queues ahead of the connection.
const QUEUE: usize = 1;
/// Spare chunk buffers a reader keeps for reuse (one being sent, one being read).
const SPARE: usize = 2;

/// The sending side: what a producer task writes chunks into.
pub(super) type Sink = mpsc::Sender<io::Result<Bytes>>;

/// A body of exactly `len` bytes (or, `None`, of a length not known: it ends when the
/// producer does) arriving through a channel. An error from the producer ends the
/// connection mid-body, so a client never takes a short file for a whole one.
pub(super) struct Streamed {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    len: Option<u64>,
}

/// A channel for a body of `len` bytes; `None`: of a length not known (a stream).
pub(super) fn channel(len: Option<u64>) -> (Sink, Streamed) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (tx, Streamed { rx, len })
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|r| r.map(Frame::data)))
    }

    fn size_hint(&self) -> SizeHint {
        self.len
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// A body of `count` bytes of a stored file from `offset`, read as the connection asks.
/// A read error or a file shorter than asked ends the connection mid-body (the store's
/// files never shrink; one that did is not sent as if whole).
pub(super) struct FileBody {
    reader: Reader,
}

impl FileBody {
    /// The body of `count` bytes of `file` from `offset`.
    pub(super) fn new(file: Arc<File>, offset: u64, count: u64) -> FileBody {
        FileBody {
            reader: Reader::new(file, offset, count),
        }
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let got = ready!(self.reader.poll_chunk(cx));
        if let Some(Err(e)) = &got {
            tracing::warn!("HTTP download cut short: {e}");
        }
        Poll::Ready(got.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.reader.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.reader.left)
    }
}

/// Sends `count` bytes of `file` from `offset` into `sink`. Ok(false): the client went
/// away. A file shorter than asked is an error.
pub(super) async fn send_file(
    file: &Arc<File>,
    offset: u64,
    count: u64,
    sink: &Sink,
) -> io::Result<bool> {
    let mut reader = Reader::new(file.clone(), offset, count);
    while let Some(chunk) = poll_fn(|cx| reader.poll_chunk(cx)).await {
        if sink.send(Ok(chunk?)).await.is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Sends `bytes` (a tar header, padding) into `sink`. False: the client went away.
pub(super) async fn send_bytes(bytes: Vec<u8>, sink: &Sink) -> bool {
    bytes.is_empty() || sink.send(Ok(Bytes::from(bytes))).await.is_ok()
}

/// Reads a stretch of a file as chunks: from the page cache in place when it is there,
/// otherwise on the blocking pool.
struct Reader {
    file: Arc<File>,
    offset: u64,
    left: u64,
    /// Buffers the connection has sent, back for the next chunks.
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
    /// A read from the disk under way on the blocking pool: the buffer and what it got.
    waiting: Option<JoinHandle<(Vec<u8>, io::Result<usize>)>>,
    /// False once the kernel refused RWF_NOWAIT for this file (then every chunk goes to
    /// the blocking pool, as before).
    nowait: bool,
}

impl Reader {
    fn new(file: Arc<File>, offset: u64, left: u64) -> Reader {
        Reader {
            file,
            offset,
            left,
            spare: Arc::new(Mutex::new(Vec::with_capacity(SPARE))),
            waiting: None,
            nowait: true,
        }
    }

    /// The next chunk, `None` when all was read.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if let Some(waiting) = &mut self.waiting {
            let joined = ready!(Pin::new(waiting).poll(cx));
            self.waiting = None;
            let (buf, got) = joined.unwrap_or_else(|e| (Vec::new(), Err(io::Error::other(e))));
            return Poll::Ready(Some(got.and_then(|n| self.taken(buf, n))));
        }
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let want = self.left.min(CHUNK as u64) as usize;
        let mut buf = self.buffer();
        if self.nowait {
            match read_cached(&self.file, &mut buf[..want], self.offset) {
                // Zero is the end of the file or nothing cached: the disk read tells which.
                Ok(n) if n > 0 => return Poll::Ready(Some(self.taken(buf, n))),
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
                // RWF_NOWAIT not supported here (an old kernel, another file system).
                Err(_) => self.nowait = false,
            }
        }
        let (file, offset) = (self.file.clone(), self.offset);
        self.waiting = Some(tokio::task::spawn_blocking(move || {
            let got = read_full(&file, &mut buf[..want], offset);
            (buf, got)
        }));
        // Polled once so that this task is woken when the read is done.
        self.poll_chunk(cx)
    }

    /// `n` bytes read into `buf` as the next chunk; none is a file shorter than the
    /// catalog says.
    fn taken(&mut self, buf: Vec<u8>, n: usize) -> io::Result<Bytes> {
        if n == 0 {
            self.left = 0;
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stored file is shorter than the catalog says",
            ));
        }
        self.offset += n as u64;
        self.left -= n as u64;
        Ok(Bytes::from_owner(Chunk {
            buf,
            len: n,
            home: self.spare.clone(),
        }))
    }

    /// A spare buffer of [`CHUNK`] bytes, or a new one.
    fn buffer(&self) -> Vec<u8> {
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner()).pop();
        spare.unwrap_or_else(|| vec![0; CHUNK])
    }
}

/// A chunk being sent: its buffer goes back to its reader's spares once the connection
/// has written it (when the last `Bytes` of it is dropped).
struct Chunk {
    buf: Vec<u8>,
    len: usize,
    home: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let mut spare = self.home.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < SPARE {
            spare.push(std::mem::take(&mut self.buf));
        }
    }
}

/// Reads into `buf` from `offset` only what the page cache holds: the bytes copied
/// (fewer than asked when only part is cached, 0 at the end of the file), or EAGAIN when
/// the first byte would have to come from the disk. Never waits for I/O, so it may run
/// on the runtime's threads.
fn read_cached(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
    // SAFETY: `iov` describes `buf`, which is borrowed mutably for the whole call, so the
    // kernel writes at most `buf.len()` bytes into memory no one else uses; the
    // descriptor belongs to `file`, open for the call; one iovec is passed, as counted.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Reads `buf` whole from `offset`, waiting for the disk: the bytes read, fewer only at
/// the end of the file.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn file_of(bytes: &[u8]) -> (tempfile::NamedTempFile, Arc<File>) {
        let mut t = tempfile::NamedTempFile::new().unwrap();
        t.write_all(bytes).unwrap();
        t.flush().unwrap();
        let f = Arc::new(File::open(t.path()).unwrap());
        (t, f)
    }

    async fn read_all(body: &mut FileBody) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            out.extend_from_slice(frame?.data_ref().unwrap());
        }
        Ok(out)
    }

    /// Whether this file system takes RWF_NOWAIT reads (ext4, xfs, btrfs, recent tmpfs).
    fn nowait_supported(f: &File) -> bool {
        let e = read_cached(f, &mut [0; 1], 0).err();
        e.is_none_or(|e| e.raw_os_error() == Some(libc::EAGAIN))
    }

    /// Drops the pages of `f` from the page cache (they are clean once synced), so that
    /// reading it must wait for the disk.
    fn uncache(f: &File) {
        f.sync_all().unwrap();
        // SAFETY: plain advice on a descriptor open for the call; no memory is passed.
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
    }

    #[test]
    fn a_cached_read_copies_the_bytes_at_the_offset() {
        let bytes = pattern(100_000);
        let (_t, f) = file_of(&bytes);
        if !nowait_supported(&f) {
            eprintln!("RWF_NOWAIT not supported on this file system: skipped");
            return;
        }
        // Just written: in the page cache.
        let mut buf = vec![0; 4096];
        let n = read_cached(&f, &mut buf, 1000).unwrap();
        assert_eq!(&buf[..n], &bytes[1000..1000 + n]);
        assert!(n > 0);
        // At the end of the file: nothing, not an error.
        assert_eq!(read_cached(&f, &mut buf, 100_000).unwrap(), 0);
    }

    #[tokio::test]
    async fn a_body_is_the_file_s_bytes_across_chunk_boundaries() {
        let len = 2 * CHUNK + 12_345;
        let bytes = pattern(len);
        let (_t, f) = file_of(&bytes);
        for (start, count) in [
            (0, len),
            (CHUNK - 1, CHUNK + 2),
            (CHUNK, CHUNK),
            (len - 1, 1),
        ] {
            let mut body = FileBody::new(f.clone(), start as u64, count as u64);
            assert_eq!(body.size_hint().exact(), Some(count as u64));
            let got = read_all(&mut body).await.unwrap();
            assert!(got == bytes[start..start + count], "{start} + {count}");
            assert!(body.is_end_stream());
        }
    }

    #[tokio::test]
    async fn a_file_not_in_the_page_cache_is_read_from_the_disk() {
        let len = CHUNK + 4096;
        let bytes = pattern(len);
        let (_t, f) = file_of(&bytes);
        uncache(&f);
        if nowait_supported(&f) {
            // Nothing cached: the in-place read declines rather than waits.
            let e = read_cached(&f, &mut vec![0; 4096], 0).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EAGAIN));
            uncache(&f);
        }
        let mut body = FileBody::new(f, 0, len as u64);
        assert!(read_all(&mut body).await.unwrap() == bytes);
    }

    #[tokio::test]
    async fn a_file_shorter_than_asked_ends_the_body_with_an_error() {
        let (_t, f) = file_of(&pattern(1000));
        let mut body = FileBody::new(f, 0, 2000);
        let e = read_all(&mut body).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn sent_chunks_buffers_are_reused() {
        let len = 4 * CHUNK;
        let (_t, f) = file_of(&pattern(len));
        let mut body = FileBody::new(f, 0, len as u64);
        let first = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        let first = first.unwrap().unwrap().into_data().unwrap();
        let at = first.as_ptr();
        drop(first);
        let second = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        let second = second.unwrap().unwrap().into_data().unwrap();
        assert_eq!(
            second.as_ptr(),
            at,
            "the sent chunk's buffer is read into again"
        );
    }
}
