//! The HTTP client's reading and writing helpers: one answer read off a connection
//! (status, then the body by `Content-Length`, chunked, or to the end), and a file read
//! by offset for an upload.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;

/// The largest answer head read: the daemon's own limit for a request's head.
const MAX_HEAD: usize = 64 * 1024;
/// The largest JSON answer read (a catalog of many thousands of versions fits).
const MAX_BODY: u64 = 256 * 1024 * 1024;

/// One answer: its status and body.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) body: Vec<u8>,
}

/// Reads one answer: the status line, the headers, and the body (by `Content-Length`,
/// chunked, or to the end).
pub(super) fn read_answer(stream: &TcpStream) -> std::io::Result<Answer> {
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    let mut head_bytes = 0;
    let mut next_line = |r: &mut BufReader<&TcpStream>, line: &mut String| {
        line.clear();
        let n = r.by_ref().take(MAX_HEAD as u64).read_line(line)?;
        head_bytes += n;
        if n == 0 || head_bytes > MAX_HEAD {
            return Err(bad("the answer's head ended early or is too large".into()));
        }
        Ok(line.trim_end().to_string())
    };
    let status_line = next_line(&mut r, &mut line)?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| bad(format!("not an HTTP answer: {status_line:?}")))?;
    let (mut length, mut chunked) = (None, false);
    loop {
        let h = next_line(&mut r, &mut line)?;
        if h.is_empty() {
            break;
        }
        let Some((n, v)) = h.split_once(':') else {
            continue;
        };
        match n.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = v.trim().parse::<u64>().ok(),
            "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let size_line = next_line(&mut r, &mut line)?;
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
            next_line(&mut r, &mut line).ok();
        }
    } else if let Some(n) = length {
        if n > MAX_BODY {
            return Err(bad(format!("an answer of {n} bytes, over {MAX_BODY}")));
        }
        body.resize(n as usize, 0);
        r.read_exact(&mut body)?;
    } else {
        r.take(MAX_BODY).read_to_end(&mut body)?;
    }
    Ok(Answer { status, body })
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
