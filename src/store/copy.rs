//! Copying one file into the store: read once, SHA-256 in the same pass, fsynced, read-only.
//!
//! Three ways, fastest first: copy_file_range in the kernel with the copy hashed right
//! behind it from the page cache; for filesystems where that cannot work, a reader, a
//! hasher and a writer thread overlapping; and for small files, one plain loop.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;

use sha2::{Digest, Sha256};

use super::stored_mode;
use crate::error::{Error, Result};
use crate::fsutil::hex;

/// The chunk size of the copy pipeline.
pub(super) const CHUNK: usize = 1 << 20;
/// Files at least this big are copied by a reader/hasher thread feeding a writer thread.
pub(super) const PIPELINE_THRESHOLD: u64 = 4 * CHUNK as u64;
/// How much is written before writeback of it is started.
const WRITEBACK_STEP: u64 = 8 << 20;

/// Copies from the open handle `input` (`src` only names it in messages) to the new file
/// `dst`, returning its SHA-256 and size. The copy gets [`stored_mode`] of `mode` and is
/// hashed so that the hash is that of the stored bytes. It is not fsynced here: the
/// staged version's files are fsynced together by [`super::seal`] (large copies have
/// had their writeback started as they went). `done` grows by
/// each chunk written (a relaxed add, no system call), so `status` can show the progress
/// of a long copy; `cancel` aborts between chunks.
pub(super) fn copy_and_hash_from(
    input: &mut File,
    src: &Path,
    dst: &Path,
    mode: u32,
    cancel: &AtomicBool,
    done: &AtomicU64,
) -> Result<(String, u64)> {
    let len = input
        .metadata()
        .map_err(|e| Error::io("stat", src, e))?
        .len();
    // Read as well as write: large files are hashed by reading the copy back.
    let mut out = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)
        .map_err(|e| Error::io("create", dst, e))?;
    let t0 = std::time::Instant::now();
    let mut copy = Copy {
        input,
        src,
        out: &mut out,
        dst,
        cancel,
        done,
    };
    let (digest, size) = if len >= PIPELINE_THRESHOLD {
        match copy.in_kernel() {
            Ok(r) => r,
            Err(KernelCopy::Unsupported) => copy.pipelined()?,
            Err(KernelCopy::Failed(e)) => return Err(e),
        }
    } else {
        copy.inline()?
    };
    // Through the handle, and never wider than the source: a hard link to a private
    // file stays private in the store. Before the fsync (in `seal`), so the mode is
    // durable too.
    out.set_permissions(fs::Permissions::from_mode(stored_mode(mode)))
        .map_err(|e| Error::io("make read-only", dst, e))?;
    tracing::debug!(bytes = size, copied = ?t0.elapsed(), "copied {}", dst.display());
    Ok((digest, size))
}

/// SHA-256 and size of a file, for verification.
pub fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut f = File::open(path).map_err(|e| Error::io("open", path, e))?;
    hash_stream(&mut f, path, &AtomicBool::new(false), |_| Ok(()))
}

/// Reads `input` to its end in chunks, hashing each and handing it to `sink`; returns
/// the SHA-256 and the size read. `cancel` is looked at before each chunk.
pub(super) fn hash_stream(
    input: &mut File,
    src: &Path,
    cancel: &AtomicBool,
    mut sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<(String, u64)> {
    let mut hasher = Sha256::new();
    // No bigger than the file (plus one byte, to see its end in one read): a 1 MiB
    // buffer zeroed and freed per small file is a large part of registering one.
    let len = input.metadata().map_or(CHUNK as u64, |m| m.len());
    let mut buf = vec![0u8; (len + 1).clamp(4096, CHUNK as u64) as usize];
    let mut size = 0u64;
    loop {
        cancelled(cancel)?;
        let n = read_full(input, &mut buf).map_err(|e| Error::io("read", src, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        sink(&buf[..n])?;
        size += n as u64;
    }
    Ok((hex(&hasher.finalize()), size))
}

fn cancelled(cancel: &AtomicBool) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        Err(Error::Cancelled)
    } else {
        Ok(())
    }
}

/// One copy in progress: the source handle and the new file, with the names that show
/// them in messages, the cancel flag and the progress counter.
struct Copy<'a> {
    input: &'a mut File,
    src: &'a Path,
    out: &'a mut File,
    dst: &'a Path,
    cancel: &'a AtomicBool,
    done: &'a AtomicU64,
}

/// Why [`Copy::in_kernel`] did not copy.
enum KernelCopy {
    /// copy_file_range cannot copy between these files; nothing was written.
    Unsupported,
    Failed(Error),
}

impl Copy<'_> {
    /// One thread: read a chunk, hash it, write it.
    fn inline(&mut self) -> Result<(String, u64)> {
        let (out, dst, done) = (&mut *self.out, self.dst, self.done);
        hash_stream(self.input, self.src, self.cancel, |chunk| {
            out.write_all(chunk)
                .map_err(|e| Error::io("write", dst, e))?;
            done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            Ok(())
        })
    }

    /// The fallback when copy_file_range cannot copy between two filesystems.
    fn pipelined(&mut self) -> Result<(String, u64)> {
        use std::sync::Arc;
        let Copy {
            input,
            src,
            out,
            dst,
            cancel,
            done,
        } = self;
        let (src, dst, cancel, done) = (*src, *dst, *cancel, *done);
        // Three stages on three threads: a reader fills 1 MiB buffers and hands each to
        // the hasher and to the writer (this thread); whichever of the two finishes with a
        // buffer last returns it to the reader. So the source is read once, reading,
        // hashing and writing overlap, and at most DEPTH + 1 buffers exist.
        const DEPTH: usize = 6;
        let (free_tx, free_rx) = mpsc::sync_channel::<Vec<u8>>(DEPTH + 1);
        let (hash_tx, hash_rx) = mpsc::sync_channel::<(Arc<Vec<u8>>, usize)>(DEPTH);
        let (write_tx, write_rx) = mpsc::sync_channel::<(Arc<Vec<u8>>, usize)>(DEPTH);
        for _ in 0..=DEPTH {
            let _ = free_tx.send(vec![0u8; CHUNK]);
        }
        let recycle = |buf: Arc<Vec<u8>>, free: &mpsc::SyncSender<Vec<u8>>| {
            if let Ok(v) = Arc::try_unwrap(buf) {
                let _ = free.try_send(v);
            }
        };
        std::thread::scope(|s| {
            let reader = s.spawn(move || -> Result<u64> {
                let mut size = 0u64;
                while let Ok(mut buf) = free_rx.recv() {
                    cancelled(cancel)?;
                    let n = read_full(input, &mut buf).map_err(|e| Error::io("read", src, e))?;
                    if n == 0 {
                        break;
                    }
                    size += n as u64;
                    let buf = Arc::new(buf);
                    if hash_tx.send((buf.clone(), n)).is_err() || write_tx.send((buf, n)).is_err() {
                        // The writer failed; its error is the one reported.
                        break;
                    }
                }
                Ok(size)
            });
            let free_for_hasher = free_tx.clone();
            let hasher = s.spawn(move || {
                let mut h = Sha256::new();
                for (buf, n) in hash_rx.iter() {
                    h.update(&buf[..n]);
                    recycle(buf, &free_for_hasher);
                }
                hex(&h.finalize())
            });
            let mut write_err = None;
            let mut written = 0u64;
            let mut flushed = 0u64;
            for (buf, n) in write_rx.iter() {
                if let Err(e) = out.write_all(&buf[..n]) {
                    write_err = Some(Error::io("write", dst, e));
                    break;
                }
                written += n as u64;
                done.fetch_add(n as u64, Ordering::Relaxed);
                recycle(buf, &free_tx);
                // Start writeback of what is written so far, without waiting for it, so the
                // fsync at the end has little left to do.
                if written - flushed >= WRITEBACK_STEP {
                    start_writeback(out, flushed, written - flushed);
                    flushed = written;
                }
            }
            drop(write_rx);
            drop(free_tx);
            let read = reader
                .join()
                .unwrap_or_else(|_| Err(Error::Other("copy reader thread panicked".into())));
            let digest = hasher
                .join()
                .map_err(|_| Error::Other("copy hasher thread panicked".into()));
            if let Some(e) = write_err {
                return Err(e);
            }
            let size = read?;
            Ok((digest?, size))
        })
    }

    /// Copies with copy_file_range (in the kernel, as `cp` does), starting writeback of
    /// each chunk as it lands, while a second thread hashes the destination right behind
    /// the copier, from the page cache. The source is read once, and the hash is by
    /// construction that of the stored bytes.
    fn in_kernel(&mut self) -> std::result::Result<(String, u64), KernelCopy> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::FileExt;
        const STEP: usize = 8 << 20;
        let (input, out, dst, cancel, done) =
            (&*self.input, &*self.out, self.dst, self.cancel, self.done);
        let (done_tx, done_rx) = mpsc::channel::<u64>();
        std::thread::scope(|s| {
            let hasher = s.spawn(move || -> std::io::Result<String> {
                let mut h = Sha256::new();
                let mut buf = vec![0u8; CHUNK];
                let mut hashed = 0u64;
                // Each message says how far the copy has got; hash up to there.
                for end in done_rx.iter() {
                    while hashed < end {
                        let n = ((end - hashed) as usize).min(CHUNK);
                        out.read_exact_at(&mut buf[..n], hashed)?;
                        h.update(&buf[..n]);
                        hashed += n as u64;
                    }
                }
                Ok(hex(&h.finalize()))
            });
            let mut copied = 0u64;
            let mut flushed = 0u64;
            let result = loop {
                if cancel.load(Ordering::Relaxed) {
                    break Err(KernelCopy::Failed(Error::Cancelled));
                }
                // SAFETY: both fds are open; null offsets use and advance the file offsets.
                let n = unsafe {
                    libc::copy_file_range(
                        input.as_raw_fd(),
                        std::ptr::null_mut(),
                        out.as_raw_fd(),
                        std::ptr::null_mut(),
                        STEP,
                        0,
                    )
                };
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    let unsupported = copied == 0
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                        );
                    break Err(if unsupported {
                        KernelCopy::Unsupported
                    } else {
                        KernelCopy::Failed(Error::io("copy", dst, e))
                    });
                }
                if n == 0 {
                    break Ok(());
                }
                copied += n as u64;
                done.fetch_add(n as u64, Ordering::Relaxed);
                let _ = done_tx.send(copied);
                if copied - flushed >= WRITEBACK_STEP {
                    start_writeback(out, flushed, copied - flushed);
                    flushed = copied;
                }
            };
            drop(done_tx);
            let digest = hasher
                .join()
                .map_err(|_| KernelCopy::Failed(Error::Other("hasher thread panicked".into())))?;
            result?;
            let digest = digest.map_err(|e| KernelCopy::Failed(Error::io("read back", dst, e)))?;
            Ok((digest, copied))
        })
    }
}

/// Asks the kernel to start writing `len` bytes at `offset` to disk, without waiting.
fn start_writeback(f: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open fd; failure only loses the head start.
    unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            offset as i64,
            len as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Reads until `buf` is full or the end of the file.
fn read_full(r: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::sha256_hex;

    #[test]
    fn user_space_pipeline_matches() {
        // The fallback when copy_file_range cannot copy between two filesystems.
        let tmp = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(3 * CHUNK + 777))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let src = tmp.path().join("s");
        fs::write(&src, &data).unwrap();
        let dst = tmp.path().join("d");
        let mut input = File::open(&src).unwrap();
        let mut out = File::create(&dst).unwrap();
        let (sha, size) = Copy {
            input: &mut input,
            src: &src,
            out: &mut out,
            dst: &dst,
            cancel: &AtomicBool::new(false),
            done: &AtomicU64::new(0),
        }
        .pipelined()
        .unwrap();
        assert_eq!((sha, size), (sha256_hex(&data), data.len() as u64));
        assert_eq!(fs::read(&dst).unwrap(), data);
        assert_eq!(
            hash_file(&dst).unwrap(),
            (sha256_hex(&data), data.len() as u64)
        );
    }
}
