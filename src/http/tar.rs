//! A tar archive written as it is sent: POSIX ustar headers (a pax `path` record for a
//! path too long for them, a base-256 size for files of 8 GiB and more, as GNU tar and
//! bsdtar read), so its exact length is known before the first byte.

/// A file or folder in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    /// Its path in the archive (`name-v3/sub/file`), without a trailing slash.
    pub path: String,
    /// Bytes (0 for a folder).
    pub size: u64,
    /// A folder.
    pub dir: bool,
}

/// The end of an archive: two zero blocks.
pub(super) const END: [u8; 1024] = [0; 1024];

const BLOCK: usize = 512;
/// 8^11: the first size an 11-digit octal field cannot hold.
const OCTAL_SIZE_LIMIT: u64 = 1 << 33;

/// The zeros after `size` bytes of content, up to the next block.
pub(super) fn padding(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

/// The header block(s) of `e`, modified at `mtime` (seconds since the epoch).
pub(super) fn header(e: &Entry, mtime: u64) -> Vec<u8> {
    let path = if e.dir {
        format!("{}/", e.path)
    } else {
        e.path.clone()
    };
    let mut out = Vec::with_capacity(BLOCK);
    let (prefix, name) = match split(&path) {
        Some(p) => p,
        None => {
            // Too long for ustar: a pax header names the path; the ustar name is cut.
            let record = pax_record("path", &path);
            let pax = Entry {
                path: "PaxHeader".into(),
                size: record.len() as u64,
                dir: false,
            };
            out.extend(block("", "PaxHeader", &pax, b'x', mtime));
            out.extend(record.as_bytes());
            out.resize(out.len() + padding(record.len() as u64), 0);
            ("", cut(&path, 100))
        }
    };
    out.extend(block(
        prefix,
        name,
        e,
        if e.dir { b'5' } else { b'0' },
        mtime,
    ));
    out
}

/// The length of the archive of `entries`, end blocks included.
pub(super) fn archive_len(entries: &[Entry], mtime: u64) -> u64 {
    entries
        .iter()
        .map(|e| header(e, mtime).len() as u64 + e.size + padding(e.size) as u64)
        .sum::<u64>()
        + END.len() as u64
}

/// `path` as ustar's (prefix, name): name up to 100 bytes, prefix up to 155, split at a
/// slash.
fn split(path: &str) -> Option<(&str, &str)> {
    if path.len() <= 100 {
        return Some(("", path));
    }
    // The name part may end with the folder's own slash; split at an earlier one.
    let body = path.strip_suffix('/').unwrap_or(path);
    body.match_indices('/')
        .map(|(i, _)| i)
        .find(|&i| i <= 155 && path.len() - i - 1 <= 100)
        .map(|i| (&path[..i], &path[i + 1..]))
}

/// The longest prefix of `s` of at most `n` bytes that ends on a character boundary.
fn cut(s: &str, n: usize) -> &str {
    let mut end = n.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A pax record `LEN key=value\n`, LEN counting the whole record, its own digits too.
fn pax_record(key: &str, value: &str) -> String {
    let rest = key.len() + value.len() + 3; // space, '=', newline
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    format!("{len} {key}={value}\n")
}

fn block(prefix: &str, name: &str, e: &Entry, kind: u8, mtime: u64) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    b[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut b[100..108], if e.dir { 0o755 } else { 0o644 });
    octal(&mut b[108..116], 0);
    octal(&mut b[116..124], 0);
    if e.size < OCTAL_SIZE_LIMIT {
        octal(&mut b[124..136], e.size);
    } else {
        // Base-256: the high bit of the first byte set, the number big-endian after it.
        b[124] = 0x80;
        b[128..136].copy_from_slice(&e.size.to_be_bytes());
    }
    octal(&mut b[136..148], mtime.min(OCTAL_SIZE_LIMIT - 1));
    b[156] = kind;
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    b[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    // The checksum is taken with its own field as spaces.
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    b
}

/// `v` in octal, zero-padded, NUL-terminated, filling `field`.
fn octal(field: &mut [u8], v: u64) {
    let s = format!("{v:0w$o}\0", w = field.len() - 1);
    field.copy_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64) -> Entry {
        Entry {
            path: path.into(),
            size,
            dir: false,
        }
    }

    #[test]
    fn a_short_path_is_one_block_with_a_valid_checksum() {
        let h = header(&file("m-v1/m.pt", 1000), 1_700_000_000);
        assert_eq!(h.len(), 512);
        assert_eq!(&h[..9], b"m-v1/m.pt");
        assert_eq!(&h[124..136], b"00000001750\0");
        let mut copy = h.clone();
        copy[148..156].fill(b' ');
        let sum: u32 = copy.iter().map(|&x| u32::from(x)).sum();
        assert_eq!(
            std::str::from_utf8(&h[148..154]).unwrap(),
            format!("{sum:06o}")
        );
        assert_eq!(padding(1000), 24);
        assert_eq!(padding(1024), 0);
    }

    #[test]
    fn long_paths_split_or_get_a_pax_record() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(50));
        let h = header(&file(&long, 1), 0);
        assert_eq!(h.len(), 512);
        assert_eq!(&h[345..465], "d".repeat(120).as_bytes());
        let longer = format!("{}/{}", "d".repeat(300), "f".repeat(150));
        let h = header(&file(&longer, 1), 0);
        assert_eq!(h[156], b'x');
        let record = pax_record("path", &longer);
        assert_eq!(
            record.len(),
            record.split(' ').next().unwrap().parse::<usize>().unwrap()
        );
        assert_eq!(h.len(), 512 + 512 + 512);
    }

    #[test]
    fn sizes_past_8_gib_are_base_256() {
        let h = header(&file("big", 10 << 30), 0);
        assert_eq!(h[124], 0x80);
        assert_eq!(
            u64::from_be_bytes(h[128..136].try_into().unwrap()),
            10 << 30
        );
    }
}
