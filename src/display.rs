//! Showing text that came from outside (sidecar metadata, file names, messages quoting
//! them) on a terminal: control characters, bidi controls and line separators are
//! written as escapes, so a sidecar cannot colour, move the cursor, break a table row or
//! reorder what the CLI prints.

use std::borrow::Cow;

/// `s` with every character a terminal would act on instead of show written as its Rust
/// escape (`\n`, `\t`, `\u{1b}`, `\u{202e}`): C0 and C1 controls, DEL, bidi controls and
/// the Unicode line and paragraph separators. Anything else, backslashes included, is
/// unchanged; text without such characters is returned as it is.
pub fn escape_for_terminal(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}' || crate::names::is_bidi_control(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_shown_not_obeyed() {
        assert_eq!(escape_for_terminal("plain café"), "plain café");
        assert!(matches!(escape_for_terminal("x"), Cow::Borrowed(_)));
        assert_eq!(escape_for_terminal("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(escape_for_terminal("a\nb\tc\r"), "a\\nb\\tc\\r");
        assert_eq!(
            escape_for_terminal("x\u{202e}y\u{85}"),
            "x\\u{202e}y\\u{85}"
        );
        assert_eq!(escape_for_terminal("a\u{7f}\u{2028}"), "a\\u{7f}\\u{2028}");
    }
}
