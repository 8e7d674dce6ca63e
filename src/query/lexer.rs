//! The tokens of a search expression, each with its place in the text (for the caret of
//! an error).

use super::QueryError;

/// What a token is.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    /// A field name: `accuracy`, `metrics.top1`, or a back-quoted `` `odd key` ``.
    Ident(String),
    /// A string literal, quotes removed and escapes applied.
    Str(String),
    /// A number literal.
    Num(f64),
    /// `true` or `false`.
    Bool(bool),
    /// `and`.
    And,
    /// `or`.
    Or,
    /// `not`.
    Not,
    /// `in`.
    In,
    /// `contains`.
    Contains,
    /// A comparison operator.
    Cmp(CmpOp),
    /// `(`.
    Open,
    /// `)`.
    Close,
    /// `[`.
    OpenList,
    /// `]`.
    CloseList,
    /// `,`.
    Comma,
    /// The end of the text.
    End,
}

/// `==`, `!=`, `<`, `<=`, `>`, `>=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `==`.
    Eq,
    /// `!=`.
    Ne,
    /// `<`.
    Lt,
    /// `<=`.
    Le,
    /// `>`.
    Gt,
    /// `>=`.
    Ge,
}

impl CmpOp {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// A token and the byte range it covers in the expression.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Token {
    pub tok: Tok,
    pub start: usize,
    pub end: usize,
}

impl Tok {
    /// How an error names the token.
    pub fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("field `{s}`"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Num(n) => format!("number {n}"),
            Tok::Bool(b) => format!("`{b}`"),
            Tok::And => "`and`".into(),
            Tok::Or => "`or`".into(),
            Tok::Not => "`not`".into(),
            Tok::In => "`in`".into(),
            Tok::Contains => "`contains`".into(),
            Tok::Cmp(op) => format!("`{}`", op.as_str()),
            Tok::Open => "`(`".into(),
            Tok::Close => "`)`".into(),
            Tok::OpenList => "`[`".into(),
            Tok::CloseList => "`]`".into(),
            Tok::Comma => "`,`".into(),
            Tok::End => "the end of the expression".into(),
        }
    }
}

/// Characters a bare field name may hold after its first (a letter or `_`): metric and
/// metadata keys such as `top-1`, `eval/loss` or `metrics.accuracy`.
fn ident_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '/')
}

/// Splits `text` into tokens, ending with [`Tok::End`].
pub(super) fn tokens(text: &str) -> Result<Vec<Token>, QueryError> {
    let mut out = Vec::new();
    let mut it = text.char_indices().peekable();
    while let Some(&(start, c)) = it.peek() {
        if c.is_whitespace() {
            it.next();
            continue;
        }
        let err = |end: usize, msg: String| QueryError::new(text, start, end, msg);
        let tok = match c {
            '(' | ')' | '[' | ']' | ',' => {
                it.next();
                match c {
                    '(' => Tok::Open,
                    ')' => Tok::Close,
                    '[' => Tok::OpenList,
                    ']' => Tok::CloseList,
                    _ => Tok::Comma,
                }
            }
            '=' | '!' | '<' | '>' => {
                it.next();
                let eq = it.next_if(|&(_, c)| c == '=').is_some();
                match (c, eq) {
                    ('=', true) => Tok::Cmp(CmpOp::Eq),
                    ('!', true) => Tok::Cmp(CmpOp::Ne),
                    ('<', false) => Tok::Cmp(CmpOp::Lt),
                    ('<', true) => Tok::Cmp(CmpOp::Le),
                    ('>', false) => Tok::Cmp(CmpOp::Gt),
                    ('>', true) => Tok::Cmp(CmpOp::Ge),
                    ('=', false) => {
                        return Err(err(start + 1, "`=` is not an operator; use `==`".into()));
                    }
                    _ => {
                        return Err(err(
                            start + 1,
                            "`!` is not an operator; use `!=` or `not`".into(),
                        ));
                    }
                }
            }
            // Operators of other languages: said what to write instead, not "unexpected
            // character".
            '&' | '|' => {
                let word = if c == '&' { "and" } else { "or" };
                let twice = text[start + 1..].starts_with(c);
                let shown = if twice {
                    format!("{c}{c}")
                } else {
                    c.to_string()
                };
                return Err(err(
                    start + shown.len(),
                    format!("`{shown}` is not an operator; use `{word}`"),
                ));
            }
            '"' | '\'' => Tok::Str(string(text, &mut it)?),
            '`' => {
                it.next();
                let body_start = start + 1;
                let end = loop {
                    match it.next() {
                        Some((i, '`')) => break i,
                        Some(_) => {}
                        None => {
                            return Err(err(
                                text.len(),
                                "unterminated `` ` ``-quoted field name".into(),
                            ));
                        }
                    }
                };
                if end == body_start {
                    return Err(err(end + 1, "empty field name".into()));
                }
                Tok::Ident(text[body_start..end].to_string())
            }
            c if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => {
                let mut end = start;
                while let Some((i, c)) = it.next_if(|&(_, c)| {
                    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '_')
                }) {
                    end = i + c.len_utf8();
                }
                let word = &text[start..end];
                match word.parse::<f64>() {
                    Ok(n) if n.is_finite() => Tok::Num(n),
                    _ => return Err(err(end, format!("`{word}` is not a number"))),
                }
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut end = start;
                while let Some((i, c)) = it.next_if(|&(_, c)| ident_char(c)) {
                    end = i + c.len_utf8();
                }
                let mut word = text[start..end].to_string();
                // `metrics.`odd name``: a back-quoted key after a prefix (or any dotted
                // name), read as one field name.
                while word.ends_with('.') && it.peek().is_some_and(|&(_, c)| c == '`') {
                    let (q, _) = it.next().unwrap_or((end, '`'));
                    let close = text[q + 1..].find('`').map(|i| q + 1 + i);
                    let Some(close) = close else {
                        return Err(QueryError::new(
                            text,
                            q,
                            text.len(),
                            "unterminated `` ` ``-quoted field name".into(),
                        ));
                    };
                    if close == q + 1 {
                        return Err(QueryError::new(
                            text,
                            q,
                            close + 1,
                            format!("empty key after `{word}`"),
                        ));
                    }
                    word.push_str(&text[q + 1..close]);
                    while it.next_if(|&(i, _)| i <= close).is_some() {}
                    // Another `.` then a plain or quoted segment continues the name.
                    while let Some((_, c)) = it.next_if(|&(_, c)| ident_char(c)) {
                        word.push(c);
                    }
                }
                match word.to_ascii_lowercase().as_str() {
                    "and" => Tok::And,
                    "or" => Tok::Or,
                    "not" => Tok::Not,
                    "in" => Tok::In,
                    "contains" => Tok::Contains,
                    "true" => Tok::Bool(true),
                    "false" => Tok::Bool(false),
                    _ => Tok::Ident(word),
                }
            }
            other => {
                return Err(err(
                    start + other.len_utf8(),
                    format!("unexpected character {other:?}"),
                ));
            }
        };
        let end = it.peek().map_or(text.len(), |&(i, _)| i);
        out.push(Token { tok, start, end });
    }
    out.push(Token {
        tok: Tok::End,
        start: text.len(),
        end: text.len(),
    });
    Ok(out)
}

/// A quoted string from its opening quote: `\"`, `\'`, `\\`, `\n` and `\t` are escapes.
fn string(
    text: &str,
    it: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
) -> Result<String, QueryError> {
    let (start, quote) = it.next().unwrap_or((0, '"'));
    let mut s = String::new();
    loop {
        match it.next() {
            Some((_, c)) if c == quote => return Ok(s),
            Some((i, '\\')) => match it.next() {
                Some((_, c @ ('"' | '\'' | '\\'))) => s.push(c),
                Some((_, 'n')) => s.push('\n'),
                Some((_, 't')) => s.push('\t'),
                Some((j, c)) => {
                    return Err(QueryError::new(
                        text,
                        i,
                        j + c.len_utf8(),
                        format!("unknown escape `\\{c}` (known: \\\" \\' \\\\ \\n \\t)"),
                    ));
                }
                None => break,
            },
            Some((_, c)) => s.push(c),
            None => break,
        }
    }
    Err(QueryError::new(
        text,
        start,
        text.len(),
        "unterminated string (a closing quote is missing)".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        tokens(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn splits_operators_literals_and_names() {
        assert_eq!(
            toks(r#"accuracy>=0.7 AND dataset == "imagenet" or not x != -1e3"#),
            vec![
                Tok::Ident("accuracy".into()),
                Tok::Cmp(CmpOp::Ge),
                Tok::Num(0.7),
                Tok::And,
                Tok::Ident("dataset".into()),
                Tok::Cmp(CmpOp::Eq),
                Tok::Str("imagenet".into()),
                Tok::Or,
                Tok::Not,
                Tok::Ident("x".into()),
                Tok::Cmp(CmpOp::Ne),
                Tok::Num(-1000.0),
                Tok::End,
            ]
        );
        assert_eq!(
            toks("tags contains 'a\\'b' and `my key` in [1, true]"),
            vec![
                Tok::Ident("tags".into()),
                Tok::Contains,
                Tok::Str("a'b".into()),
                Tok::And,
                Tok::Ident("my key".into()),
                Tok::In,
                Tok::OpenList,
                Tok::Num(1.0),
                Tok::Comma,
                Tok::Bool(true),
                Tok::CloseList,
                Tok::End,
            ]
        );
        assert_eq!(
            toks("metrics.top-1 < 3 and eval/loss<=.5"),
            vec![
                Tok::Ident("metrics.top-1".into()),
                Tok::Cmp(CmpOp::Lt),
                Tok::Num(3.0),
                Tok::And,
                Tok::Ident("eval/loss".into()),
                Tok::Cmp(CmpOp::Le),
                Tok::Num(0.5),
                Tok::End,
            ]
        );
    }

    #[test]
    fn token_places_cover_their_text() {
        let t = tokens("a >= 'xy'").unwrap();
        assert_eq!((t[0].start, t[0].end), (0, 1));
        assert_eq!((t[1].start, t[1].end), (2, 4));
        assert_eq!((t[2].start, t[2].end), (5, 9));
        assert_eq!((t[3].start, t[3].end), (9, 9));
    }

    #[test]
    fn refuses_what_is_not_a_token() {
        let e = |s: &str| tokens(s).unwrap_err();
        assert!(e("a = 1").reason.contains("use `==`"));
        assert!(e("a ! 1").reason.contains("`!=` or `not`"));
        assert!(e("a == 'x").reason.contains("unterminated string"));
        assert!(e("a == 1.2.3").reason.contains("not a number"));
        assert!(e("a == 'x\\q'").reason.contains("unknown escape"));
        assert!(e("a == 1 ; b").reason.contains("unexpected character ';'"));
        assert!(e("a == -inf").reason.contains("not a number"));
        assert_eq!(e("a == 1 ; b").column, 7);
        assert!(
            e("a == 1 && b == 2")
                .reason
                .contains("`&&` is not an operator; use `and`")
        );
        assert!(e("a == 1 || b == 2").reason.contains("use `or`"));
        assert_eq!(e("a == 1 || b == 2").width, 2);
        assert!(e("metrics.`odd").reason.contains("unterminated"));
        assert!(
            e("metrics.`` == 1")
                .reason
                .contains("empty key after `metrics.`")
        );
    }

    #[test]
    fn a_back_quoted_key_follows_a_prefix() {
        assert_eq!(
            toks("metrics.`odd name` >= 1 and metadata.`a b`.c == 'x'"),
            vec![
                Tok::Ident("metrics.odd name".into()),
                Tok::Cmp(CmpOp::Ge),
                Tok::Num(1.0),
                Tok::And,
                Tok::Ident("metadata.a b.c".into()),
                Tok::Cmp(CmpOp::Eq),
                Tok::Str("x".into()),
                Tok::End,
            ]
        );
        let t = tokens("metrics.`odd name` == 1").unwrap();
        assert_eq!((t[0].start, t[0].end), (0, 18));
    }
}
