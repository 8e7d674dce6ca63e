//! A linear pre-scan that refuses deeply nested sidecar text before the YAML parser sees it.
//!
//! The parser's time grows faster than linearly with flow nesting.

use super::MAX_DEPTH;

/// The pre-scan's error: it cannot tell text from nesting, and says so.
fn too_deep_prescan() -> String {
    format!(
        "nested deeper than {MAX_DEPTH} levels: more than {MAX_PRESCAN_DEPTH} `[`, `{{` or `- ` \
         are open at once here (those in strings and comments count too)"
    )
}

/// How deep the pre-scan lets nesting go, as it counts it. Above [`MAX_DEPTH`] because
/// it counts brackets inside strings, comments and block scalars too (`notes: "[[["` is
/// text); the exact limit is [`MAX_DEPTH`], checked while parsing with line and column.
/// The parser's time at this depth was measured no worse than at [`MAX_DEPTH`] for a
/// whole [`MAX_SIDECAR_BYTES`](super::MAX_SIDECAR_BYTES) sidecar; it is the depth in the
/// thousands that it is slow at.
pub const MAX_PRESCAN_DEPTH: usize = 4 * MAX_DEPTH;

/// A linear pass over the text that refuses deep nesting before any parser sees it: YAML
/// flow collections (`[`, `{`) and block indicators (`- - -`) on one line, beyond
/// [`MAX_PRESCAN_DEPTH`]. It errs only towards counting too deep: every `[` and `{` is
/// counted, even inside strings and comments (which a scan this simple may misjudge, and
/// an attacker could make it misjudge), while a `]` or `}` inside what looks like a
/// string or a comment closes only what that string opened. So harmless brackets in text
/// are allowed up to that bound, and the real depth is checked exactly while parsing.
/// Returns the 1-based line and column (in characters) and the reason.
pub(super) fn prescan(text: &str) -> Result<(), (usize, usize, String)> {
    #[derive(PartialEq)]
    enum In {
        Plain,
        Single,
        Double,
        Comment,
    }
    let b = text.as_bytes();
    let mut state = In::Plain;
    let mut depth = 0usize;
    // Depth when the current string or comment began: closers inside it stop there.
    let mut floor = 0usize;
    let mut line = 1usize;
    let mut line_begins = 0usize;
    let too_deep_at = |line: usize, line_begins: usize, i: usize| {
        let column = text[line_begins..i].chars().count() + 1;
        (line, column, too_deep_prescan())
    };
    // Where a node (and so a quoted scalar or a comment) may begin: a superset of YAML's
    // rule, so that no real string is missed.
    let mut node_start = true;
    let mut line_start = true;
    let mut indicators = 0usize;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == b'\n' {
            line += 1;
            line_begins = i + 1;
            line_start = true;
            indicators = 0;
            node_start = true;
            if state == In::Comment {
                state = In::Plain;
            }
            i += 1;
            continue;
        }
        match c {
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_PRESCAN_DEPTH {
                    return Err(too_deep_at(line, line_begins, i));
                }
            }
            b']' | b'}' => {
                let low = if state == In::Plain { 0 } else { floor };
                if depth > low {
                    depth -= 1;
                }
            }
            _ => {}
        }
        match state {
            In::Comment => {}
            In::Single => {
                if c == b'\'' {
                    if next == Some(b'\'') {
                        i += 1;
                    } else {
                        state = In::Plain;
                    }
                }
            }
            In::Double => {
                if c == b'\\' {
                    i += 1;
                } else if c == b'"' {
                    state = In::Plain;
                }
            }
            In::Plain => {
                let blank_next = matches!(next, None | Some(b' ' | b'\t' | b'\r' | b'\n'));
                if line_start && matches!(c, b'-' | b'?' | b':') && blank_next {
                    // `- - - x`: each indicator opens one more level on the same line.
                    indicators += 1;
                    if indicators > MAX_PRESCAN_DEPTH {
                        return Err(too_deep_at(line, line_begins, i));
                    }
                } else if !matches!(c, b' ' | b'\t' | b'\r') {
                    line_start = false;
                }
                if c == b'#' && (node_start || i == 0 || matches!(b[i - 1], b' ' | b'\t')) {
                    state = In::Comment;
                    floor = depth;
                } else if c == b'\'' && node_start {
                    state = In::Single;
                    floor = depth;
                } else if c == b'"' && node_start {
                    state = In::Double;
                    floor = depth;
                }
                node_start = matches!(
                    c,
                    b' ' | b'\t'
                        | b'\r'
                        | b'['
                        | b'{'
                        | b']'
                        | b'}'
                        | b','
                        | b':'
                        | b'-'
                        | b'?'
                        | b'\''
                        | b'"'
                );
            }
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    #[test]
    fn prescan_allows_brackets_in_text_and_says_where() {
        let b = "[".repeat(MAX_DEPTH + 20);
        for text in [
            format!("notes: \"{b}\"\n"),
            format!("# {b}\nnotes: x\n"),
            format!("notes: |\n  {b}\n"),
            format!("notes: x#{b}\n"),
        ] {
            assert!(parse("x", text.as_bytes()).is_ok(), "{text}");
        }
        let e = parse(
            "x",
            format!("a: 1\nnotes: \"{}\"\n", "[".repeat(200)).as_bytes(),
        )
        .unwrap_err();
        assert_eq!(
            (e.line, e.column),
            (Some(2), Some(9 + MAX_PRESCAN_DEPTH)),
            "{e}"
        );
    }

    #[test]
    fn prescan_refuses_deep_nesting_quickly_and_is_not_fooled() {
        let n = 100_000;
        for text in [
            format!("metadata: {{x: {}}}", "[".repeat(n)),
            format!("metadata: {}1", "{a: ".repeat(n)),
            format!("metadata:\n  x:\n    {}1\n", "- ".repeat(n)),
            // Closers hidden in strings and comments do not hide the real depth.
            format!("metadata: {}", "[\"]\", ".repeat(n)),
            format!("metadata: {}", "[ # ]\n".repeat(n)),
            format!("metadata: {}", "['a'']', ".repeat(n)),
        ] {
            let t0 = std::time::Instant::now();
            let e = parse("x", text.as_bytes()).unwrap_err();
            assert!(e.reason.contains("deeper than"), "{e}");
            assert!(e.line.is_some(), "{e}");
            // Not a timing assertion on the parser: the pre-scan answers, not serde_yaml.
            assert!(prescan(&text).is_err());
            let _ = t0;
        }
        // Brackets inside strings and comments do not count against a shallow file.
        let mut ok = String::from("notes: \"");
        ok.push_str(&"[1] ".repeat(100));
        ok.push_str("\"\n# ]]]] [[[[ ]]]]\nmetrics: {a: 1}\n");
        assert!(parse("x", ok.as_bytes()).is_ok());
    }
}
