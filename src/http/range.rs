//! `Range`, `If-Range` and the conditional headers of a download: pure decisions over the
//! request's headers and the file's length, ETag and time.

use std::time::SystemTime;

use axum::http::HeaderMap;
use axum::http::header::{IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, RANGE};

/// What part of a file to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Part {
    /// All of it (no `Range`, one that is ignored, or one that covers it whole).
    Whole,
    /// Bytes `start..=end` (206).
    Bytes {
        /// The first byte.
        start: u64,
        /// The last byte, included.
        end: u64,
    },
    /// A range that starts beyond the end, or an empty file (416).
    Unsatisfiable,
    /// More than one range (416): a single one is served, and thousands of tiny ranges
    /// would make a small request cost a large, slow answer.
    Many,
}

/// The part a `Range` header asks of a file of `len` bytes. A header that is not of
/// bytes, or does not parse, is ignored (the whole file), as RFC 9110 allows.
pub(super) fn part(headers: &HeaderMap, len: u64, etag: &str, modified: &str) -> Part {
    let Some(range) = headers.get(RANGE).and_then(|v| v.to_str().ok()) else {
        return Part::Whole;
    };
    // If-Range: the range only if the file is still the one the client has part of.
    if let Some(cond) = headers.get(IF_RANGE).and_then(|v| v.to_str().ok())
        && cond.trim() != etag
        && cond.trim() != modified
    {
        return Part::Whole;
    }
    parse(range, len)
}

/// [`part`] on the header's value.
fn parse(range: &str, len: u64) -> Part {
    let Some(specs) = range.trim().strip_prefix("bytes=") else {
        return Part::Whole;
    };
    if specs.contains(',') {
        return Part::Many;
    }
    let Some((first, last)) = specs.trim().split_once('-') else {
        return Part::Whole;
    };
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (start, end) = match (first.trim().is_empty(), number(first), number(last)) {
        // `-N`: the last N bytes.
        (true, _, Some(n)) => {
            if n == 0 || len == 0 {
                return Part::Unsatisfiable;
            }
            (len.saturating_sub(n), len - 1)
        }
        (false, Some(a), None) if last.trim().is_empty() => (a, len.saturating_sub(1)),
        (false, Some(a), Some(b)) if a <= b => (a, b.min(len.saturating_sub(1))),
        _ => return Part::Whole,
    };
    if start >= len {
        return Part::Unsatisfiable;
    }
    if start == 0 && end + 1 == len {
        return Part::Whole;
    }
    Part::Bytes { start, end }
}

/// Whether the client already has this file (`If-None-Match`, else `If-Modified-Since`):
/// answered 304 without a body.
pub(super) fn not_modified(headers: &HeaderMap, etag: &str, modified: SystemTime) -> bool {
    if let Some(inm) = headers.get(IF_NONE_MATCH) {
        let Ok(inm) = inm.to_str() else {
            return false;
        };
        return inm
            .split(',')
            .map(str::trim)
            .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag);
    }
    headers
        .get(IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .is_some_and(|since| {
            // HTTP dates have whole seconds.
            let secs = |t: SystemTime| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            };
            secs(modified) <= secs(since)
        })
}

#[cfg(test)]
mod tests {
    use super::{Part, not_modified, parse};
    use axum::http::{HeaderMap, HeaderValue};
    use std::time::{Duration, SystemTime};

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(*n, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn if_none_match_wins_over_if_modified_since() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let date = httpdate::fmt_http_date(t);
        let later = httpdate::fmt_http_date(t + Duration::from_secs(60));
        let earlier = httpdate::fmt_http_date(t - Duration::from_secs(60));
        assert!(not_modified(
            &headers(&[("if-modified-since", &date)]),
            "\"e\"",
            t
        ));
        assert!(not_modified(
            &headers(&[("if-modified-since", &later)]),
            "\"e\"",
            t
        ));
        assert!(!not_modified(
            &headers(&[("if-modified-since", &earlier)]),
            "\"e\"",
            t
        ));
        assert!(!not_modified(
            &headers(&[("if-modified-since", "soon")]),
            "\"e\"",
            t
        ));
        // An ETag that does not match: modified, whatever the date says.
        let both = headers(&[("if-none-match", "\"x\""), ("if-modified-since", &later)]);
        assert!(!not_modified(&both, "\"e\"", t));
    }

    #[test]
    fn one_range_of_bytes_is_served() {
        assert_eq!(parse("bytes=0-9", 100), Part::Bytes { start: 0, end: 9 });
        assert_eq!(parse("bytes=90-", 100), Part::Bytes { start: 90, end: 99 });
        assert_eq!(parse("bytes=-10", 100), Part::Bytes { start: 90, end: 99 });
        assert_eq!(
            parse("bytes=50-500", 100),
            Part::Bytes { start: 50, end: 99 }
        );
        assert_eq!(parse("bytes=0-", 100), Part::Whole);
        assert_eq!(parse("bytes=-500", 100), Part::Whole);
    }

    #[test]
    fn ranges_that_cannot_be_served_are_told_apart() {
        assert_eq!(parse("bytes=100-", 100), Part::Unsatisfiable);
        assert_eq!(parse("bytes=-0", 100), Part::Unsatisfiable);
        assert_eq!(parse("bytes=0-0", 0), Part::Unsatisfiable);
        assert_eq!(parse("bytes=0-1,2-3", 100), Part::Many);
        let thousands = format!("bytes={}", vec!["0-0"; 5000].join(","));
        assert_eq!(parse(&thousands, 100), Part::Many);
        // Not bytes, or not a range: ignored.
        for ignored in ["items=0-1", "bytes=9-1", "bytes=a-b", "bytes=", "bytes=1"] {
            assert_eq!(parse(ignored, 100), Part::Whole, "{ignored}");
        }
    }
}
