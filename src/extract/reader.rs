//! A bounded, buffered reader over a file or bytes that knows its length and position.
//!
//! Every parser reads through it, so a header that claims more than the file holds is
//! refused by arithmetic (`truncated: ...`) before anything is allocated, and a skip over
//! weights (an ONNX initializer, a GGUF array) is a seek, never a read.

use std::io::{Read, Seek, SeekFrom};

use serde_json::Value;

/// A parser's result: the reason is what `extracted.unreadable` says.
pub type Parsed<T> = Result<T, String>;

/// Anything a parser can read: a file, or bytes in unit tests.
pub trait Source: Read + Seek {}
impl<T: Read + Seek> Source for T {}

/// The reader; see the module docs.
pub struct Reader<'a> {
    src: &'a mut dyn Source,
    buf: Vec<u8>,
    /// Next byte to hand out in `buf`.
    at: usize,
    /// Bytes of `buf` that are filled.
    filled: usize,
    /// The file offset of `buf[0]`.
    base: u64,
    len: u64,
}

/// The buffer: large enough that walking a GGUF vocabulary or an ONNX graph's small
/// messages costs few system calls, small enough to be nothing beside a copy.
const BUFFER: usize = 64 * 1024;

impl<'a> Reader<'a> {
    /// A reader over `src`, `len` bytes long, positioned at its start.
    pub fn new(src: &'a mut dyn Source, len: u64) -> Parsed<Self> {
        src.seek(SeekFrom::Start(0))
            .map_err(|e| format!("seek: {e}"))?;
        Ok(Reader {
            src,
            buf: vec![0; BUFFER],
            at: 0,
            filled: 0,
            base: 0,
            len,
        })
    }

    /// The file's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The offset of the next byte read.
    pub fn pos(&self) -> u64 {
        self.base + self.at as u64
    }

    /// Bytes left after the position.
    pub fn left(&self) -> u64 {
        self.len.saturating_sub(self.pos())
    }

    fn truncated(&self, n: u64) -> String {
        format!(
            "truncated: {n} more bytes needed at offset {} but the file is {} bytes",
            self.pos(),
            self.len
        )
    }

    /// Fills `out` entirely, or says the file is truncated.
    pub fn read_exact(&mut self, out: &mut [u8]) -> Parsed<()> {
        if out.len() as u64 > self.left() {
            return Err(self.truncated(out.len() as u64));
        }
        let mut done = 0;
        while done < out.len() {
            if self.at == self.filled {
                self.base += self.filled as u64;
                self.at = 0;
                self.filled = 0;
                let n = self
                    .src
                    .read(&mut self.buf)
                    .map_err(|e| format!("read at offset {}: {e}", self.base))?;
                if n == 0 {
                    // Shorter than its length said (it shrank): truncated all the same.
                    return Err(self.truncated((out.len() - done) as u64));
                }
                self.filled = n;
            }
            let n = (self.filled - self.at).min(out.len() - done);
            out[done..done + n].copy_from_slice(&self.buf[self.at..self.at + n]);
            self.at += n;
            done += n;
        }
        Ok(())
    }

    /// `n` bytes, refused above `cap` (what is refused is named by `what`).
    pub fn bytes(&mut self, n: u64, cap: u64, what: &str) -> Parsed<Vec<u8>> {
        if n > cap {
            return Err(format!("{what} of {n} bytes is over the {cap}-byte limit"));
        }
        if n > self.left() {
            return Err(self.truncated(n));
        }
        let mut v = vec![0; n as usize];
        self.read_exact(&mut v)?;
        Ok(v)
    }

    /// Moves `n` bytes on without reading them (a seek when past the buffer).
    pub fn skip(&mut self, n: u64) -> Parsed<()> {
        if n > self.left() {
            return Err(self.truncated(n));
        }
        let in_buf = (self.filled - self.at) as u64;
        if n <= in_buf {
            self.at += n as usize;
            return Ok(());
        }
        self.seek_to(self.pos() + n)
    }

    /// Moves to offset `to` (at most the length).
    pub fn seek_to(&mut self, to: u64) -> Parsed<()> {
        if to > self.len {
            return Err(format!(
                "truncated: offset {to} is past the end of the {}-byte file",
                self.len
            ));
        }
        if to >= self.base && to <= self.base + self.filled as u64 {
            self.at = (to - self.base) as usize;
            return Ok(());
        }
        self.src
            .seek(SeekFrom::Start(to))
            .map_err(|e| format!("seek to {to}: {e}"))?;
        self.base = to;
        self.at = 0;
        self.filled = 0;
        Ok(())
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> Parsed<u32> {
        let mut b = [0; 4];
        self.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> Parsed<u64> {
        let mut b = [0; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

/// The longest text kept anywhere in a version's facts (a value, a key, an
/// `unreadable` reason): 1 KiB, as docs/extraction.md says.
pub const MAX_TEXT: usize = 1024;

/// `s` cut on a character boundary and marked with its length (`NNNN… (20000000 bytes)`)
/// when over `max` bytes, so that the result is at most `max` bytes when `max` leaves
/// room for the mark (32 bytes or more): names and text read from files are echoed
/// short in facts and reasons, never whole.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mark = format!("… ({} bytes)", s.len());
    let mut end = max.saturating_sub(mark.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{mark}", &s[..end])
}

/// Every text in `v` (strings, map keys, at any depth) cut to [`MAX_TEXT`] by [`clip`]:
/// the one last pass over a version's facts, whatever an extractor echoed.
pub fn clip_all(v: Value) -> Value {
    match v {
        Value::String(s) if s.len() > MAX_TEXT => Value::String(clip(&s, MAX_TEXT)),
        Value::Array(a) => Value::Array(a.into_iter().map(clip_all).collect()),
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (clip(&k, MAX_TEXT), clip_all(v)))
                .collect(),
        ),
        v => v,
    }
}

/// Runs the parser `read` over `bytes` as if they were a file: the unit tests' way in.
#[cfg(test)]
pub fn parse_bytes<T>(read: fn(&mut Reader) -> Parsed<T>, bytes: Vec<u8>) -> Parsed<T> {
    let len = bytes.len() as u64;
    let mut c = std::io::Cursor::new(bytes);
    read(&mut Reader::new(&mut c, len)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_skips_and_refuses_past_the_end() {
        let data: Vec<u8> = (0..200u8).collect();
        let mut c = std::io::Cursor::new(data);
        let mut r = Reader::new(&mut c, 200).unwrap();
        assert_eq!(r.u32().unwrap(), u32::from_le_bytes([0, 1, 2, 3]));
        r.skip(100).unwrap();
        assert_eq!(r.pos(), 104);
        assert_eq!(r.bytes(2, 10, "x").unwrap(), vec![104, 105]);
        assert!(r.bytes(11, 10, "a name").unwrap_err().contains("limit"));
        assert!(r.skip(1000).unwrap_err().starts_with("truncated"));
        r.seek_to(198).unwrap();
        assert!(r.u32().unwrap_err().starts_with("truncated"));
    }

    #[test]
    fn clip_cuts_on_a_character_boundary() {
        assert_eq!(clip("abc", 5), "abc");
        let long = "é".repeat(100);
        let c = clip(&long, 40);
        assert!(
            c.len() <= 40 && c.starts_with("éé") && c.ends_with("… (200 bytes)"),
            "{c}"
        );
        let huge = clip_all(serde_json::json!({"a": ["x".repeat(5000)], "k".repeat(2000): 1}));
        let text = huge.to_string();
        assert!(
            text.contains("… (5000 bytes)") && text.contains("… (2000 bytes)"),
            "{text}"
        );
        assert!(text.len() < 2 * MAX_TEXT + 20, "{}", text.len());
    }
}
