//! Numbers a sidecar cannot hold, quoted numbers, and what to write instead, worded once.
//!
//! YAML and JSON get the same advice: a metric is a finite number (`.nan`, `.inf`, JSON's
//! `NaN` and `Infinity` that Python's `json.dump` writes, and `1e999` are not); an integer
//! fits in 64 bits (a larger one is written as a float); a quoted number is text.

/// What to write instead of a number that is not finite.
const NON_FINITE_FIX: &str = "a metric must be a finite number: leave the key out, or write \
                              null (which keeps the key as metadata, not a metric)";

/// The refusal of a non-finite float in YAML (`.nan`, `.inf`, `-.inf`), spelled as YAML
/// spells it.
pub(super) fn non_finite_yaml(v: f64) -> String {
    let spelled = if v.is_nan() {
        ".nan"
    } else if v > 0.0 {
        ".inf"
    } else {
        "-.inf"
    };
    format!("`{spelled}` is not a finite number; {NON_FINITE_FIX}")
}

/// The refusal of a plain YAML number beyond the largest float (`1e999`).
pub(super) fn beyond_float(v: &str) -> String {
    format!(
        "`{v}` is not a finite number (it is beyond the largest float); {NON_FINITE_FIX}; \
         quote it if it is text"
    )
}

/// The refusal of JSON's `NaN`, `Infinity` or `-Infinity`, which are not JSON at all.
fn non_finite_json(word: &str) -> String {
    format!(
        "`{word}` is not a finite number, and JSON has no NaN or Infinity (Python's json.dump \
         writes them unless allow_nan=False); {NON_FINITE_FIX}"
    )
}

/// The refusal of an integer beyond 64 bits, with the float to write instead.
pub(super) fn out_of_range(digits: &str) -> String {
    let as_float = digits.parse::<f64>().map(|x| format!("{x:e}"));
    let instead = match as_float {
        Ok(f) => format!("write it as a float, {f}, or quote it if it is text"),
        Err(_) => "write it as a float, or quote it if it is text".to_string(),
    };
    format!(
        "`{digits}` is out of range: an integer must lie between {} and {} (64 bits); {instead}",
        i64::MIN,
        u64::MAX
    )
}

/// When serde_json stopped at (`line`, `column`) on `NaN`, `Infinity` or `-Infinity`, the
/// reason to give instead of its "expected value" or "invalid number".
pub(super) fn json_non_finite_at(text: &str, line: usize, column: usize) -> Option<String> {
    let l = text.lines().nth(line.checked_sub(1)?)?;
    let at = column.checked_sub(1)?;
    let rest = l.get(at..)?;
    let word = ["NaN", "Infinity"]
        .into_iter()
        .find(|w| rest.starts_with(w))?;
    let before = l.get(..at)?;
    let negative = before.ends_with('-');
    let why = non_finite_json(&if negative {
        format!("-{word}")
    } else {
        word.to_string()
    });
    Some(with_key(before.strip_suffix('-').unwrap_or(before), why))
}

/// `why` prefixed with the JSON key whose value starts right after `before` (the text of
/// the line up to the value), as serde_yaml prefixes its errors with the key's path.
fn with_key(before: &str, why: String) -> String {
    let key = before
        .trim_end()
        .strip_suffix(':')
        .map(str::trim_end)
        .and_then(|b| b.strip_suffix('"'))
        .and_then(|b| {
            // An escaped quote is inside the key, not its start: no key shown then.
            let i = b.rfind('"')?;
            (!b[..i].ends_with('\\')).then(|| &b[i + 1..])
        });
    match key {
        Some(k) if !k.is_empty() && !k.contains('\\') => format!("{k}: {why}"),
        _ => why,
    }
}

/// The first integer literal in (already parsed) JSON text that does not fit in 64 bits:
/// its 1-based line and column and the refusal. serde_json reads such a literal as a float
/// without saying so; YAML refuses it, and so does this, alike. Strings are skipped;
/// outside them, every digit belongs to a number.
pub(super) fn json_big_integer(text: &str) -> Option<(usize, usize, String)> {
    let b = text.as_bytes();
    let (mut line, mut line_begins) = (1, 0);
    let mut in_string = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
        } else if c == b'"' {
            in_string = true;
        } else if c == b'\n' {
            line += 1;
            line_begins = i + 1;
        } else if c == b'-' || c.is_ascii_digit() {
            let end = b[i..]
                .iter()
                .position(|c| !matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                .map_or(b.len(), |n| i + n);
            let token = &text[i..end];
            let integer = token.strip_prefix('-').unwrap_or(token);
            if integer.bytes().all(|c| c.is_ascii_digit())
                && token.parse::<i64>().is_err()
                && token.parse::<u64>().is_err()
            {
                let before = &text[line_begins..i];
                let column = before.chars().count() + 1;
                return Some((line, column, with_key(before, out_of_range(token))));
            }
            i = end;
            continue;
        }
        i += 1;
    }
    None
}

/// A decimal number as YAML 1.2's core schema writes one
/// (`[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`), read as a float; None for
/// anything else (`NaN`, `inf`, `1_000`, `0x1f` are not numbers here).
pub(super) fn decimal(v: &str) -> Option<f64> {
    let body = v.strip_prefix(['-', '+']).unwrap_or(v);
    let (mantissa, exponent) = match body.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (body, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            (digits(int) && (frac.is_empty() || digits(frac))) || (int.is_empty() && digits(frac))
        }
        None => digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e)));
    if !(mantissa_ok && exponent_ok) {
        return None;
    }
    v.strip_prefix('+').unwrap_or(v).parse::<f64>().ok()
}

/// The note for a quoted number given as a top-level value: by the rule, it is text and
/// so metadata, which `best` does not compare. Says what to write to make it a metric.
pub(super) fn quoted_number_note(key: &str, text: &str, json: bool) -> String {
    let unquoted = if json {
        format!("\"{key}\": {text}")
    } else {
        format!("{key}: {text}")
    };
    format!(
        "`{key}` is \"{text}\", a quoted number, so it is text: kept as metadata, which `best` \
         does not compare; write `{unquoted}` without quotes to make it a metric"
    )
}

/// Whether text spells a number that is not finite (`nan`, `NaN`, `inf`, `-Infinity`):
/// what `f"loss: {loss}"` writes for a NaN loss, text to YAML (whose NaN is `.nan`).
pub(super) fn non_finite_word(text: &str) -> bool {
    let word = text.strip_prefix(['-', '+']).unwrap_or(text);
    ["nan", "inf", "infinity"]
        .iter()
        .any(|w| word.eq_ignore_ascii_case(w))
}

/// The note for such text at the top: kept as metadata, and no metric could hold it.
pub(super) fn non_finite_text_note(key: &str, text: &str) -> String {
    format!(
        "`{key}` is \"{text}\", text that spells a number that is not finite: kept as \
         metadata, which `best` does not compare; {NON_FINITE_FIX}"
    )
}

/// The refusal of a quoted number under `metrics:`, where only numbers go.
pub(super) fn quoted_metric(key: &str, text: &str) -> String {
    format!(
        "metric {key:?} is \"{text}\", a quoted number, which is text; a metric is a number: \
         write `{key}: {text}` without quotes"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_reads_yaml_core_numbers_only() {
        assert_eq!(decimal("0.71"), Some(0.71));
        assert_eq!(decimal("+3"), Some(3.0));
        assert_eq!(decimal(".5e-1"), Some(0.05));
        assert_eq!(decimal("1e999"), Some(f64::INFINITY));
        for not in ["NaN", "inf", "1_000", "0x1f", "1.2.3", "", "-", "e5", "1e"] {
            assert_eq!(decimal(not), None, "{not}");
        }
    }

    #[test]
    fn big_json_integers_are_found_outside_strings_with_their_position() {
        let text = "{\"id\": \"1180591620717411303424\",\n \"n\": 18446744073709551615,\n  \
                    \"steps\": -1180591620717411303424}";
        let (line, column, why) = json_big_integer(text).unwrap();
        assert_eq!((line, column), (3, 12), "{why}");
        assert!(
            why.starts_with("steps: `-1180591620717411303424` is out of range"),
            "{why}"
        );
        assert!(why.contains("-1.1805916207174113e21"), "{why}");
        assert_eq!(
            json_big_integer("{\"a\": [1e400, 2.5, -3, \"\\\"9\"]}"),
            None
        );
    }

    #[test]
    fn json_non_finite_words_are_recognised_where_the_parser_stopped() {
        let text = "{\"a\": 1,\n \"b\": -Infinity}";
        let why = json_non_finite_at(text, 2, 8).unwrap();
        assert!(
            why.starts_with("b: `-Infinity` is not a finite number"),
            "{why}"
        );
        assert!(json_non_finite_at(text, 2, 2).is_none());
        assert!(json_non_finite_at(text, 9, 1).is_none());
    }

    #[test]
    fn out_of_range_names_the_range_and_the_float() {
        let why = out_of_range("1180591620717411303424");
        assert!(why.contains("18446744073709551615"), "{why}");
        assert!(why.contains("1.1805916207174113e21"), "{why}");
    }
}
