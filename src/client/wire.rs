//! The HTTP client's reading and writing helpers: a connection plain or TLS, one answer
//! read off it (status, then the body by `Content-Length`, chunked, or to the end), a file
//! read by offset for an upload, and a file's SHA-256.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

/// The largest answer head read: the daemon's own limit for a request's head.
const MAX_HEAD: usize = 64 * 1024;
/// The largest JSON answer read: a catalog of 100,000 versions fits (each is well under
/// 1 KiB of JSON); an endless answer from a hostile server stops here, before parsing.
const MAX_BODY: u64 = 64 * 1024 * 1024;

/// A connection to the API: plain, or TLS (`https://`).
pub(super) enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// One answer: its status and body.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) body: Vec<u8>,
}

/// An answer's status line and the headers that say how its body is framed.
pub(super) struct Head {
    pub(super) status: u16,
    /// `Content-Length`.
    pub(super) length: Option<u64>,
    /// `Transfer-Encoding: chunked`.
    pub(super) chunked: bool,
}

/// One line of a head (or a chunk size), without its line break; an error past
/// [`MAX_HEAD`] bytes in all (`*read` counts them).
fn head_line(r: &mut BufReader<&mut Stream>, read: &mut usize) -> std::io::Result<String> {
    let mut line = String::new();
    let n = r.by_ref().take(MAX_HEAD as u64).read_line(&mut line)?;
    *read += n;
    if n == 0 || *read > MAX_HEAD {
        return Err(bad("the answer's head ended early or is too large".into()));
    }
    Ok(line.trim_end().to_string())
}

fn bad(m: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, m)
}

/// Reads an answer's status line and headers.
pub(super) fn read_head(r: &mut BufReader<&mut Stream>) -> std::io::Result<Head> {
    let mut read = 0;
    let status_line = head_line(r, &mut read)?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| bad(format!("not an HTTP answer: {status_line:?}")))?;
    let mut head = Head {
        status,
        length: None,
        chunked: false,
    };
    loop {
        let h = head_line(r, &mut read)?;
        if h.is_empty() {
            return Ok(head);
        }
        let Some((n, v)) = h.split_once(':') else {
            continue;
        };
        match n.trim().to_ascii_lowercase().as_str() {
            "content-length" => head.length = v.trim().parse::<u64>().ok(),
            "transfer-encoding" => head.chunked = v.to_ascii_lowercase().contains("chunked"),
            _ => {}
        }
    }
}

/// Reads the body `head` announces (by `Content-Length`, chunked, or to the end), at
/// most [`MAX_BODY`] bytes.
pub(super) fn read_body(r: &mut BufReader<&mut Stream>, head: &Head) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if head.chunked {
        let mut read = 0;
        loop {
            let size_line = head_line(r, &mut read)?;
            let hex = size_line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(hex, 16)
                .map_err(|_| bad(format!("bad chunk size {size_line:?}")))?;
            if size == 0 {
                break;
            }
            if body.len() as u64 + size > MAX_BODY {
                return Err(bad(format!("an answer over {MAX_BODY} bytes")));
            }
            let start = body.len();
            body.resize(start + size as usize, 0);
            r.read_exact(&mut body[start..])?;
            head_line(r, &mut read).ok();
        }
    } else if let Some(n) = head.length {
        if n > MAX_BODY {
            return Err(bad(format!("an answer of {n} bytes, over {MAX_BODY}")));
        }
        body.resize(n as usize, 0);
        r.read_exact(&mut body)?;
    } else {
        // One byte past the limit tells an answer over it from one that ends there.
        r.take(MAX_BODY + 1).read_to_end(&mut body)?;
        if body.len() as u64 > MAX_BODY {
            return Err(bad(format!("an answer over {MAX_BODY} bytes")));
        }
    }
    Ok(body)
}

/// Reads one whole answer.
pub(super) fn read_answer(stream: &mut Stream) -> std::io::Result<Answer> {
    let mut r = BufReader::new(stream);
    let head = read_head(&mut r)?;
    let body = read_body(&mut r, &head)?;
    Ok(Answer {
        status: head.status,
        body,
    })
}

/// Reads a file from its start by offset (pread), whatever its descriptor's position.
pub(super) struct ReadAt<'a> {
    file: &'a std::fs::File,
    at: u64,
}

impl<'a> ReadAt<'a> {
    pub(super) fn new(file: &'a std::fs::File) -> ReadAt<'a> {
        ReadAt { file, at: 0 }
    }
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// The SHA-256 of everything `file` holds, as lower-case hex.
pub(super) fn sha256_of(file: &std::fs::File) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let (mut hasher, mut from) = (Sha256::new(), ReadAt::new(file));
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(crate::fsutil::hex(&hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}
