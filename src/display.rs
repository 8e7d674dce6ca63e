//! Showing text that came from outside (sidecar metadata, file names, messages quoting
//! them) on a terminal: control characters, bidi controls and line separators are
//! written as escapes, so a sidecar cannot colour, move the cursor, break a table row or
//! reorder what the CLI prints. Also what a table needs to line such text up: its width
//! in terminal cells, and numbers written compactly.

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

/// JSON text (as serde_json writes it) with the characters [`escape_for_terminal`]
/// escapes and serde_json leaves raw (C1 controls, DEL, bidi controls, line and paragraph
/// separators) written as JSON `\uXXXX` escapes: the same value to a JSON reader, safe to
/// show on a terminal. They can only occur inside JSON strings, where such an escape is
/// valid.
pub fn escape_json_for_terminal(json: &str) -> Cow<'_, str> {
    // C0 controls are escaped by serde_json inside strings; outside them they are the
    // layout of pretty output (newlines), which must stay.
    let raw = |c: char| c >= ' ' && needs_escape(c);
    if !json.chars().any(raw) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        if raw(c) {
            // All of them are in the Basic Multilingual Plane: one \uXXXX each.
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `argv` as one line a POSIX shell would split back into the same words: a word of
/// only safe characters as it is, any other in single quotes (a `'` in it as `'\''`),
/// an empty one as `''`. How a hook's command is shown: joined with bare spaces,
/// `[echo, "a b"]` and `[echo, a, b]` looked the same.
pub fn shell_words(argv: &[String]) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c);
    argv.iter()
        .map(|w| {
            if !w.is_empty() && w.chars().all(safe) {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `path` as text: its bytes read as UTF-8, with each byte that is not part of valid
/// UTF-8 written as `\xNN` (where `Path::display` shows only U+FFFD, which loses which
/// file it is). Controls are left for [`escape_for_terminal`].
pub fn escape_path(path: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for chunk in path.as_os_str().as_bytes().utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

fn needs_escape(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}' || crate::names::is_bidi_control(c)
}

/// How many terminal cells `s` takes: 2 for East Asian wide and fullwidth characters
/// (CJK, Hangul, fullwidth forms) and emoji, 0 for combining marks, zero-width
/// characters and variation selectors, 1 for the rest. Meant for text already passed
/// through [`escape_for_terminal`] (no controls left). The tables are small enough to be
/// kept here: a crate (unicode-width) would have to be downloaded, and the offline CI
/// build (`cargo build --locked`) has only the crates already in Cargo.lock.
pub fn width(s: &str) -> usize {
    s.chars().map(char_width).sum()
}

fn char_width(c: char) -> usize {
    let u = u32::from(c);
    if u < 0x300 {
        return 1;
    }
    let zero_width = unicode_normalization::char::is_combining_mark(c)
        || matches!(u, 0x200B..=0x200F | 0x2060..=0x2064 | 0xFE00..=0xFE0F | 0xFEFF
            | 0xE0100..=0xE01EF | 0x1160..=0x11FF);
    if zero_width {
        return 0;
    }
    let wide = matches!(
        u,
        0x1100..=0x115F      // Hangul leading consonants
        | 0x231A..=0x231B | 0x23E9..=0x23EC | 0x23F0 | 0x23F3 | 0x25FD..=0x25FE
        | 0x2614..=0x2615 | 0x2648..=0x2653 | 0x267F | 0x2693 | 0x26A1 | 0x26AA..=0x26AB
        | 0x26BD..=0x26BE | 0x26C4..=0x26C5 | 0x26CE | 0x26D4 | 0x26EA | 0x26F2..=0x26F3
        | 0x26F5 | 0x26FA | 0x26FD | 0x2705 | 0x270A..=0x270B | 0x2728 | 0x274C | 0x274E
        | 0x2753..=0x2755 | 0x2757 | 0x2795..=0x2797 | 0x27B0 | 0x27BF | 0x2B1B..=0x2B1C
        | 0x2B50 | 0x2B55     // emoji shown wide by default
        | 0x2E80..=0x303E     // CJK radicals, punctuation
        | 0x3041..=0x33FF     // kana, bopomofo, CJK compatibility
        | 0x3400..=0x4DBF | 0x4E00..=0x9FFF // CJK ideographs
        | 0xA000..=0xA4CF     // Yi
        | 0xA960..=0xA97F | 0xAC00..=0xD7A3 // Hangul
        | 0xF900..=0xFAFF     // CJK compatibility ideographs
        | 0xFE10..=0xFE19 | 0xFE30..=0xFE6F // vertical and small forms
        | 0xFF00..=0xFF60 | 0xFFE0..=0xFFE6 // fullwidth forms
        | 0x16FE0..=0x18CFF | 0x1B000..=0x1B2FF // Tangut, kana supplements
        | 0x1F004 | 0x1F0CF | 0x1F18E | 0x1F191..=0x1F19A | 0x1F200..=0x1F2FF
        | 0x1F300..=0x1F64F   // pictographs, emoticons
        | 0x1F680..=0x1F6FF   // transport
        | 0x1F7E0..=0x1F7EB | 0x1F90C..=0x1F9FF | 0x1FA70..=0x1FAFF // more emoji
        | 0x20000..=0x3FFFD   // CJK extensions
    );
    if wide { 2 } else { 1 }
}

/// `s` followed by spaces up to `cells` terminal cells (nothing added when it is wider).
pub fn pad(s: &str, cells: usize) -> String {
    let mut out = s.to_string();
    out.extend(std::iter::repeat_n(' ', cells.saturating_sub(width(s))));
    out
}

/// A number written for a table: up to six decimals with trailing zeros dropped
/// (`0.712345`, `3`), in scientific notation when that would show nothing or be long
/// (`1e300`, `1.5e-7`); `-0` is `0`. The exact value is in the `--json` answer.
pub fn compact_number(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    if x == 0.0 {
        return "0".into();
    }
    let a = x.abs();
    if (1e-4..1e15).contains(&a) {
        let s = format!("{x:.6}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        // 0.0000004 rounded away is handled above (< 1e-4 is scientific).
        return s.to_string();
    }
    let s = format!("{x:.6e}");
    match s.split_once('e') {
        Some((mantissa, exp)) => {
            let m = mantissa.trim_end_matches('0').trim_end_matches('.');
            format!("{m}e{exp}")
        }
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn shell_words_quote_what_a_shell_would_split_or_expand() {
        let w = |v: &[&str]| shell_words(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(w(&["/bin/echo", "hi"]), "/bin/echo hi");
        assert_eq!(w(&["echo", "a b"]), "echo 'a b'");
        assert_eq!(w(&["sh", "-c", "echo $X"]), "sh -c 'echo $X'");
        assert_eq!(w(&["it's", ""]), r"'it'\''s' ''");
    }

    #[test]
    fn json_keeps_its_value_but_not_the_controls() {
        let value = serde_json::json!({"note": "x\u{1b}[2Jy\u{202e}z\u{9b}\u{2028}é"});
        let text = serde_json::to_string_pretty(&value).unwrap();
        let shown = escape_json_for_terminal(&text);
        assert_eq!(
            shown,
            "{\n  \"note\": \"x\\u001b[2Jy\\u202ez\\u009b\\u2028é\"\n}"
        );
        let back: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn width_counts_terminal_cells() {
        assert_eq!(width("resnet18"), 8);
        assert_eq!(width("模型"), 4);
        assert_eq!(width("한국어"), 6);
        assert_eq!(width("ｆｕｌｌ"), 8);
        assert_eq!(width("🚀x"), 3);
        // e + combining acute is one cell; so is the precomposed é.
        assert_eq!(width("cafe\u{301}"), 4);
        assert_eq!(width("café"), 4);
        assert_eq!(width("a\u{200b}b"), 2);
        assert_eq!(pad("模型", 6), "模型  ");
        assert_eq!(pad("long", 2), "long");
    }

    #[test]
    fn numbers_are_compact_whatever_their_size() {
        assert_eq!(compact_number(0.71), "0.71");
        assert_eq!(compact_number(3.0), "3");
        assert_eq!(compact_number(-2.5), "-2.5");
        assert_eq!(compact_number(-0.0), "0");
        assert_eq!(compact_number(0.123456789012345), "0.123457");
        assert_eq!(compact_number(1e300), "1e300");
        assert_eq!(compact_number(1e-300), "1e-300");
        assert_eq!(compact_number(-1.5e-7), "-1.5e-7");
        assert_eq!(compact_number(123456789.0), "123456789");
        assert_eq!(compact_number(1.23456789e20), "1.234568e20");
        assert_eq!(compact_number(f64::MAX), "1.797693e308");
        assert_eq!(compact_number(5e-324), "4.940656e-324");
    }

    #[test]
    fn controls_are_shown_not_obeyed() {
        assert_eq!(escape_for_terminal("plain café"), "plain café");
        assert_eq!(
            escape_path(std::path::Path::new(std::ffi::OsStr::from_bytes(
                b"/in/bad\xff\xfe caf\xc3\xa9.pt"
            ))),
            "/in/bad\\xff\\xfe café.pt",
            "invalid bytes escaped, valid UTF-8 kept"
        );
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
