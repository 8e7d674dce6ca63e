//! Streamed bodies: a task reads stored files chunk by chunk into a small channel and the
//! connection sends each chunk as it comes, so a download of any size holds at most
//! [`CHUNK`] x ([`QUEUE`] + 1) bytes, and a slow client holds no thread.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

/// Bytes read from a file at a time (each read is one trip to the blocking pool).
pub(super) const CHUNK: usize = 512 * 1024;
/// Chunks read ahead of the connection.
const QUEUE: usize = 1;

/// The sending side: what a producer task writes chunks into.
pub(super) type Sink = mpsc::Sender<io::Result<Bytes>>;

/// A body of exactly `len` bytes arriving through a channel. An error from the producer
/// ends the connection mid-body, so a client never takes a short file for a whole one.
pub(super) struct Streamed {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    len: u64,
}

/// A channel for a body of `len` bytes.
pub(super) fn channel(len: u64) -> (Sink, Streamed) {
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
        SizeHint::with_exact(self.len)
    }
}

/// Sends `count` bytes of `file` from `offset` into `sink`. Ok(false): the client went
/// away. A file shorter than asked is an error (the store's files never shrink; one
/// that did is not sent as if whole).
pub(super) async fn send_file(
    file: &Arc<File>,
    mut offset: u64,
    mut count: u64,
    sink: &Sink,
) -> io::Result<bool> {
    while count > 0 {
        let want = count.min(CHUNK as u64) as usize;
        let f = file.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; want];
            let mut got = 0;
            while got < want {
                match f.read_at(&mut buf[got..], offset + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(got);
            Ok(buf)
        })
        .await
        .map_err(io::Error::other)??;
        if read.len() < want {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stored file is shorter than the catalog says",
            ));
        }
        offset += want as u64;
        count -= want as u64;
        if sink.send(Ok(Bytes::from(read))).await.is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Sends `bytes` (a tar header, padding) into `sink`. False: the client went away.
pub(super) async fn send_bytes(bytes: Vec<u8>, sink: &Sink) -> bool {
    bytes.is_empty() || sink.send(Ok(Bytes::from(bytes))).await.is_ok()
}
