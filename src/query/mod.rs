//! The search of `list` and `versions`: a `where` expression, tags, a sort and a page,
//! compiled once per request and matched against the catalog's versions without
//! allocating (the grammar and every rule: docs/search.md).
//!
//! [`lexer`] splits the text, [`parser`] builds a [`Node`] tree with resolved fields,
//! [`eval`] matches it against a version, [`order`] sorts and cuts pages, [`notes`] says
//! when a field it names is nowhere to be found.

mod eval;
mod lexer;
mod notes;
mod order;
mod parser;

pub use eval::{Field, Value};
pub use lexer::CmpOp;
pub use order::{Hit, Page, Sort};
pub use parser::{Lit, Node};

use crate::registry::Version;

/// A bad expression: why, and where (a caret under the bad token when displayed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    /// Why.
    pub reason: String,
    /// The expression as given.
    pub expression: String,
    /// Where the bad token starts, in characters from 0.
    pub column: usize,
    /// How many characters it covers (at least 1).
    pub width: usize,
}

impl QueryError {
    /// An error at the bytes `start..end` of `text`.
    pub(crate) fn new(text: &str, start: usize, end: usize, reason: String) -> QueryError {
        let chars = |upto: usize| text.get(..upto).map_or(0, |s| s.chars().count());
        let column = chars(start);
        QueryError {
            reason,
            expression: text.to_string(),
            column,
            width: chars(end).saturating_sub(column).max(1),
        }
    }
}

impl std::fmt::Display for QueryError {
    /// Three lines: the reason, the expression, a caret under the bad token. The
    /// expression is shown as a terminal shows it safely (controls escaped, see
    /// [`crate::display`]), and the caret placed by terminal cells: counted in
    /// characters, it sat columns off after wide characters (`"日本語"`) and under
    /// another token after an escaped control (`\u{1b}` is six cells).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Line breaks and tabs would misplace the caret: shown as spaces (they are
        // white space to the lexer too).
        let shown = |chars: &mut dyn Iterator<Item = char>| -> String {
            let flat: String = chars
                .map(|c| if c.is_whitespace() { ' ' } else { c })
                .collect();
            crate::display::escape_for_terminal(&flat).into_owned()
        };
        let mut chars = self.expression.chars();
        let before = shown(&mut chars.by_ref().take(self.column));
        let bad = shown(&mut chars.by_ref().take(self.width));
        let after = shown(&mut chars);
        write!(
            f,
            "{}\n  {before}{bad}{after}\n  {}{}",
            self.reason,
            " ".repeat(crate::display::width(&before)),
            "^".repeat(crate::display::width(&bad).max(1))
        )
    }
}

impl std::error::Error for QueryError {}

/// A search, compiled: what matches, in which order, which page.
#[derive(Debug, Clone, Default)]
pub struct Search {
    filter: Option<Node>,
    sort: Option<Sort>,
    limit: Option<usize>,
    cursor: Option<order::CursorData>,
    plain: bool,
    /// The fields the filter and sort name that a version may lack (see [`notes`]).
    mentions: Vec<notes::Mention>,
    /// What a cursor is bound to: the model, filter, tags and sort it was given for.
    query: String,
}

/// What a request asks for, as text (the socket's fields, HTTP's query, the CLI's flags).
#[derive(Debug, Clone, Copy, Default)]
pub struct SearchArgs<'a> {
    /// The `where` expression.
    pub filter: Option<&'a str>,
    /// Tags every match must carry (in its metadata's `tags` list).
    pub tags: &'a [String],
    /// A field, `-` first for descending.
    pub sort: Option<&'a str>,
    /// At most this many items per answer.
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<&'a str>,
    /// The model of `versions` (none for `list`): a cursor is bound to it.
    pub model: Option<&'a str>,
}

/// A short fingerprint of what a page continues: the model, the filter, the tags (in
/// any order) and the sort. A cursor carries it so that passing one to another query is
/// refused rather than silently starting at the wrong place.
fn fingerprint(a: &SearchArgs<'_>) -> String {
    use sha2::Digest;
    let mut tags: Vec<&str> = a.tags.iter().map(String::as_str).collect();
    tags.sort_unstable();
    tags.dedup();
    let text = serde_json::json!([a.model, a.filter, tags, a.sort]).to_string();
    let d = sha2::Sha256::digest(text.as_bytes());
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl Search {
    /// Compiles a request's search; the error is a message for people (with a caret
    /// under the bad token of an expression).
    pub fn compile(a: SearchArgs<'_>) -> Result<Search, String> {
        let mut filter = match a.filter {
            Some(text) => Some(parser::parse(text).map_err(|e| format!("invalid filter: {e}"))?),
            None => None,
        };
        let user_filter = filter.clone();
        for tag in a.tags {
            let has = Node::Contains(
                Field::resolve("metadata.tags").map_err(|e| e.to_string())?,
                Lit::Str(tag.clone()),
            );
            filter = Some(match filter {
                Some(f) => Node::And(Box::new(f), Box::new(has)),
                None => has,
            });
        }
        let sort = match a.sort {
            Some(text) => {
                let (desc, name) = match text.strip_prefix('-') {
                    Some(rest) => (true, rest),
                    None => (false, text.strip_prefix('+').unwrap_or(text)),
                };
                // `--sort --accuracy` (meaning descending) reaches here as `--accuracy`:
                // read as an expression it was "`-accuracy` is not a number".
                if name.starts_with(['-', '+']) {
                    let field = name.trim_start_matches(['-', '+']);
                    let field = if field.is_empty() { "accuracy" } else { field };
                    // Every door gets this message: it says how each of them writes it.
                    return Err(format!(
                        "invalid sort {text:?}: a sort is FIELD (ascending) or -FIELD (descending), one `-` at most; to sort by {field} descending give -{field} (on the command line --sort=-{field}, in Python sort=\"-{field}\")"
                    ));
                }
                let field = parser::parse_field(name).map_err(|mut e| {
                    // Shown as given, its `-` or `+` too, the caret moved past it.
                    let sign = text.len() - name.len();
                    e.expression = text.to_string();
                    e.column += sign;
                    format!("invalid sort: {e}")
                })?;
                Some(Sort {
                    field,
                    desc,
                    text: text.to_string(),
                })
            }
            None => None,
        };
        if a.limit == Some(0) {
            return Err("limit must be at least 1 (leave it out for every item)".into());
        }
        let query = fingerprint(&a);
        let cursor = match a.cursor {
            Some(c) => Some(order::CursorData::decode(
                c,
                sort.as_ref().map_or("", |s| s.text.as_str()),
                &query,
            )?),
            None => None,
        };
        let mentions = notes::mentions(user_filter.as_ref(), sort.as_ref().map(|s| &s.field));
        Ok(Search {
            mentions,
            plain: a.filter.is_none()
                && a.tags.is_empty()
                && a.sort.is_none()
                && a.limit.is_none()
                && a.cursor.is_none(),
            filter,
            sort,
            limit: a.limit,
            cursor,
            query,
        })
    }

    /// Nothing was asked: the answer is the one from before search existed (no `total`).
    pub fn is_plain(&self) -> bool {
        self.plain
    }

    /// Whether a filter or a tag was given.
    pub fn filters(&self) -> bool {
        self.filter.is_some()
    }

    /// Whether version `v` of model `name` matches (everything does without a filter).
    pub fn matches(&self, name: &str, v: &Version) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|f| eval::matches(f, name, v))
    }

    /// The sort value of version `v` of model `name` (missing without a sort).
    pub fn key<'a>(&self, name: &'a str, v: &'a Version) -> Value<'a> {
        self.sort
            .as_ref()
            .map_or(Value::Missing, |s| s.field.value(name, v))
    }

    /// What the answer should say about fields the filter or sort names that none of
    /// `versions` (the versions in scope, each with its model's name) has, or that are
    /// text where a number is asked: a filter that silently matched nothing, or a sort
    /// that silently kept version order, was a typo more often than not. `scope` names
    /// the versions in a note (`of resnet`).
    pub fn notes<'a, I>(&self, scope: &str, versions: I) -> Vec<String>
    where
        I: Iterator<Item = (&'a str, &'a Version)> + Clone,
    {
        if self.mentions.is_empty() {
            return Vec::new();
        }
        notes::notes(&self.mentions, scope, versions)
    }

    /// Sorts the hits and cuts the page asked for.
    pub fn page<T>(&self, hits: Vec<Hit<'_, T>>) -> Page<T> {
        order::page(
            hits,
            self.sort.as_ref(),
            self.cursor.as_ref(),
            self.limit,
            &self.query,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_shows_the_expression_with_a_caret() {
        let e = Search::compile(SearchArgs {
            filter: Some("accuracy >= 0.7 and and"),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            e,
            "invalid filter: expected a field name such as `accuracy` or `metadata.dataset`, found `and`\n  accuracy >= 0.7 and and\n                      ^^^"
        );
    }

    #[test]
    fn a_caret_counts_characters_not_bytes() {
        let e = parser::parse("é == 1 ; x").unwrap_err();
        assert_eq!(e.column, 7);
        assert!(e.to_string().ends_with("\n         ^"), "{e}");
    }

    #[test]
    fn a_caret_counts_terminal_cells_and_escapes() {
        let e = parser::parse(r#"dataset == "日本語" and x = 1"#).unwrap_err();
        let lines: Vec<String> = e.to_string().lines().map(str::to_string).collect();
        let at = crate::display::width(&lines[1][..lines[1].find(" = ").unwrap() + 1]);
        assert_eq!(lines[2], format!("{}^", " ".repeat(at)), "{e}");
        let e = parser::parse("`a\u{1b}[2Jb` == 1 ==").unwrap_err();
        let lines: Vec<String> = e.to_string().lines().map(str::to_string).collect();
        assert_eq!(lines[1], r"  `a\u{1b}[2Jb` == 1 ==");
        assert_eq!(
            lines[2],
            format!("{}^^", " ".repeat(lines[1].rfind("==").unwrap()))
        );
    }

    #[test]
    fn bad_sort_and_limit_are_refused() {
        let c = |sort: Option<&str>, limit: Option<usize>| {
            Search::compile(SearchArgs {
                sort,
                limit,
                ..Default::default()
            })
        };
        assert!(c(Some("-"), None).unwrap_err().starts_with("invalid sort"));
        let e = c(Some("--accuracy"), None).unwrap_err();
        assert!(e.contains("--sort=-accuracy"), "{e}");
        assert!(e.contains(r#"sort="-accuracy""#), "{e}");
        let e = c(Some("-a,b"), None).unwrap_err();
        assert!(e.ends_with("\n  -a,b\n    ^"), "{e}");
        assert!(!e.contains("not a number"), "{e}");
        assert!(c(Some("+-accuracy"), None).is_err());
        assert!(c(Some("a b"), None).unwrap_err().contains("one field name"));
        assert!(c(None, Some(0)).unwrap_err().contains("at least 1"));
        let f = |model, filter, tags: &[String], sort| {
            fingerprint(&SearchArgs {
                model,
                filter,
                tags,
                sort,
                ..Default::default()
            })
        };
        let ab = ["a".to_string(), "b".to_string()];
        let ba = ["b".to_string(), "a".to_string()];
        assert_eq!(f(Some("m"), None, &ab, None), f(Some("m"), None, &ba, None));
        assert_ne!(f(Some("m"), None, &ab, None), f(Some("n"), None, &ab, None));
        assert_ne!(f(None, None, &[], None), f(None, Some("a == 1"), &[], None));
        assert_ne!(f(None, None, &ab[..1], None), f(None, None, &[], None));
        assert!(c(Some("-accuracy"), Some(3)).is_ok());
        assert!(c(None, None).unwrap().is_plain());
        assert!(!c(None, Some(3)).unwrap().is_plain());
    }
}
