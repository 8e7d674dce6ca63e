//! The checks on a requested file path, after percent-decoding: a relative path of plain
//! names, nothing that could climb out or hide a second encoding.
//!
//! A file is then looked up among the version's files by this exact string; the path a
//! client sends is never joined onto a folder. These checks make the refusal clear (400
//! instead of a 404 for a name that cannot exist) and keep odd bytes out of messages.

use super::ApiError;

/// Sequences that, still present after the one decoding, are a second encoding of a
/// dot, a slash, a backslash or NUL (`%252e` decodes to `%2e`): refused, never decoded.
const ENCODED: [&str; 4] = ["%2e", "%2f", "%5c", "%00"];

/// `path` (already percent-decoded once) when it is a relative path of plain names.
pub(super) fn check(path: &str) -> Result<&str, ApiError> {
    let refuse = |why: &str| {
        Err(ApiError::bad_request(format!(
            "file path {path:?} {why}; ask for a path as the version's `files` list it"
        )))
    };
    if path.is_empty() {
        return refuse("is empty");
    }
    if path.starts_with('/') {
        return refuse("is absolute");
    }
    if path.contains('\\') {
        return refuse("has a backslash");
    }
    if path.chars().any(char::is_control) {
        return refuse("has a control character (NUL, newline, ...)");
    }
    let lower = path.to_ascii_lowercase();
    if ENCODED.iter().any(|e| lower.contains(e)) {
        return refuse("is percent-encoded twice");
    }
    for part in path.split('/') {
        match part {
            "" => return refuse("has an empty component (`//` or a trailing `/`)"),
            "." | ".." => return refuse("has a `.` or `..` component"),
            _ => {}
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn plain_relative_paths_pass() {
        for ok in ["m.pt", "sub/dir/config.json", "a..b", ".hidden", "100%.txt"] {
            assert_eq!(check(ok).unwrap(), ok);
        }
    }

    #[test]
    fn traversal_and_odd_bytes_are_refused() {
        for (bad, why) in [
            ("", "is empty"),
            ("/etc/passwd", "is absolute"),
            ("../etc/passwd", "`.` or `..` component"),
            ("a/./b", "`.` or `..` component"),
            ("a//b", "empty component"),
            ("a/", "empty component"),
            ("..\\..\\x", "backslash"),
            ("a\0b", "control character"),
            ("%2e%2e/x", "percent-encoded twice"),
            ("a%2Fb", "percent-encoded twice"),
            ("%5C", "percent-encoded twice"),
        ] {
            let e = check(bad).unwrap_err();
            assert!(e.body.message.contains(why), "{bad:?}: {}", e.body.message);
            assert_eq!(e.status, 400);
        }
    }
}
