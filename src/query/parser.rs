//! The grammar of docs/search.md, by recursive descent: tokens to a [`Node`] tree whose
//! fields are already resolved ([`Field`]), so that evaluating it looks nothing up by
//! text twice.

use super::QueryError;
use super::eval::Field;
use super::lexer::{CmpOp, Tok, Token, tokens};

/// A literal of the expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    /// A number.
    Num(f64),
    /// A string.
    Str(String),
    /// `true` or `false`.
    Bool(bool),
}

/// A compiled expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// Both.
    And(Box<Node>, Box<Node>),
    /// Either.
    Or(Box<Node>, Box<Node>),
    /// The opposite.
    Not(Box<Node>),
    /// `field OP literal`.
    Cmp(Field, CmpOp, Lit),
    /// `field in [literal, ...]`.
    In(Field, Vec<Lit>),
    /// `field contains literal`: a list holding it, or a string holding it as a substring.
    Contains(Field, Lit),
}

/// Parses a whole expression.
pub(super) fn parse(text: &str) -> Result<Node, QueryError> {
    let toks = tokens(text)?;
    let mut p = Parser::new(text, &toks);
    if p.peek().tok == Tok::End {
        return Err(p.unexpected("a comparison such as `accuracy >= 0.7`"));
    }
    let node = p.or()?;
    match p.peek().tok {
        Tok::End => Ok(node),
        Tok::Close => Err(p.unexpected("`and`, `or` or the end (this `)` closes nothing)")),
        _ => Err(p.unexpected("`and`, `or` or the end of the expression")),
    }
}

/// Parses a lone field name (`--sort`'s), as a comparison's left side is parsed.
pub(super) fn parse_field(text: &str) -> Result<Field, QueryError> {
    let toks = tokens(text)?;
    let mut p = Parser::new(text, &toks);
    let f = p.field()?;
    match p.peek().tok {
        Tok::End => Ok(f),
        _ => Err(
            p.unexpected("the end: --sort takes one field name (FIELD, or -FIELD for descending)")
        ),
    }
}

/// The deepest nesting of `(` and `not` an expression may have: the parser, the
/// evaluator and the tree's drop recurse once per level, and 1,500 levels (a 3 KB
/// expression, sent without a token over anonymous HTTP) overflowed the daemon's stack.
pub(super) const MAX_DEPTH: usize = 64;
/// The most comparisons an expression may hold: `and`/`or` chains group from the left,
/// so this bounds the tree's depth along them (`in [...]` takes many values in one).
pub(super) const MAX_TERMS: usize = 1000;

struct Parser<'t> {
    text: &'t str,
    toks: &'t [Token],
    at: usize,
    /// `(` and `not` open around the current token.
    depth: usize,
    /// Comparisons read so far.
    terms: usize,
}

impl<'t> Parser<'t> {
    /// A parser at the first of `toks`, the tokens of `text`.
    fn new(text: &'t str, toks: &'t [Token]) -> Parser<'t> {
        Parser {
            text,
            toks,
            at: 0,
            depth: 0,
            terms: 0,
        }
    }

    fn peek(&self) -> &Token {
        &self.toks[self.at.min(self.toks.len() - 1)]
    }

    fn bump(&mut self) -> Token {
        let t = self.peek().clone();
        if t.tok != Tok::End {
            self.at += 1;
        }
        t
    }

    /// An error at the next token: "expected WANT, found IT".
    fn unexpected(&self, want: &str) -> QueryError {
        let t = self.peek();
        QueryError::new(
            self.text,
            t.start,
            t.end,
            format!("expected {want}, found {}", t.tok.describe()),
        )
    }

    /// or = and { "or" and }
    fn or(&mut self) -> Result<Node, QueryError> {
        self.chain(Tok::Or, Self::and, Node::Or)
    }

    /// and = unary { "and" unary }
    fn and(&mut self) -> Result<Node, QueryError> {
        self.chain(Tok::And, Self::unary, Node::And)
    }

    /// `next { op next }`, grouped from the left.
    fn chain(
        &mut self,
        op: Tok,
        next: fn(&mut Self) -> Result<Node, QueryError>,
        join: fn(Box<Node>, Box<Node>) -> Node,
    ) -> Result<Node, QueryError> {
        let mut left = next(self)?;
        while self.peek().tok == op {
            self.bump();
            left = join(Box::new(left), Box::new(next(self)?));
        }
        Ok(left)
    }

    /// unary = "not" unary | "(" or ")" | comparison
    fn unary(&mut self) -> Result<Node, QueryError> {
        if matches!(self.peek().tok, Tok::Not | Tok::Open) {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                let t = self.peek();
                return Err(QueryError::new(
                    self.text,
                    t.start,
                    t.end,
                    format!("nested deeper than {MAX_DEPTH} levels of `(` and `not`"),
                ));
            }
        }
        let node = match self.peek().tok {
            Tok::Not => {
                self.bump();
                Node::Not(Box::new(self.unary()?))
            }
            Tok::Open => {
                self.bump();
                let inner = self.or()?;
                if self.peek().tok != Tok::Close {
                    return Err(self.unexpected("`)`"));
                }
                self.bump();
                inner
            }
            _ => {
                self.terms += 1;
                if self.terms > MAX_TERMS {
                    let t = self.peek();
                    return Err(QueryError::new(
                        self.text,
                        t.start,
                        t.end,
                        format!(
                            "more than {MAX_TERMS} comparisons (`in [...]` takes many values in one)"
                        ),
                    ));
                }
                return self.comparison();
            }
        };
        self.depth -= 1;
        Ok(node)
    }

    /// comparison = field ( cmp literal | "in" list | "not" "in" list | "contains" literal )
    fn comparison(&mut self) -> Result<Node, QueryError> {
        let field = self.field()?;
        match self.peek().tok.clone() {
            Tok::Cmp(op) => {
                self.bump();
                let lit = self.literal()?;
                Ok(Node::Cmp(field.clone(), op, field.adapt(lit)))
            }
            Tok::In => {
                self.bump();
                Ok(Node::In(field.clone(), self.list(&field)?))
            }
            Tok::Not if matches!(self.toks.get(self.at + 1), Some(t) if t.tok == Tok::In) => {
                self.bump();
                self.bump();
                Ok(Node::Not(Box::new(Node::In(
                    field.clone(),
                    self.list(&field)?,
                ))))
            }
            Tok::Contains => {
                self.bump();
                Ok(Node::Contains(field, self.literal()?))
            }
            _ => Err(self.unexpected(
                "an operator (==, !=, <, <=, >, >=, in, not in, contains) after the field",
            )),
        }
    }

    fn field(&mut self) -> Result<Field, QueryError> {
        match self.peek().tok.clone() {
            Tok::Ident(name) => {
                let t = self.bump();
                Field::resolve(&name)
                    .map_err(|reason| QueryError::new(self.text, t.start, t.end, reason))
            }
            // A value where the field belongs: the field goes first (`0.7 <= accuracy`
            // said only "expected a field name", which read as if `0.7` were misspelt).
            Tok::Num(_) | Tok::Str(_) | Tok::Bool(_) => Err(self.unexpected(
                "a field name: the field comes first and the value after it (`accuracy >= 0.7`)",
            )),
            _ => Err(self.unexpected("a field name such as `accuracy` or `metadata.dataset`")),
        }
    }

    fn literal(&mut self) -> Result<Lit, QueryError> {
        let lit = match self.peek().tok.clone() {
            Tok::Num(n) => Lit::Num(n),
            Tok::Str(s) => Lit::Str(s),
            Tok::Bool(b) => Lit::Bool(b),
            Tok::Ident(_) => {
                return Err(self.unexpected(
                    "a value (a number, true, false, or a \"quoted\" string: names are not values)",
                ));
            }
            _ => return Err(self.unexpected("a value (a number, true, false, or a \"string\")")),
        };
        self.bump();
        Ok(lit)
    }

    /// list = "[" literal { "," literal } "]"
    fn list(&mut self, field: &Field) -> Result<Vec<Lit>, QueryError> {
        if self.peek().tok != Tok::OpenList {
            return Err(self.unexpected("`[` opening a list such as [\"a\", \"b\"]"));
        }
        self.bump();
        let mut out = vec![field.adapt(self.literal()?)];
        loop {
            match self.peek().tok {
                Tok::Comma => {
                    self.bump();
                    out.push(field.adapt(self.literal()?));
                }
                Tok::CloseList => {
                    self.bump();
                    return Ok(out);
                }
                _ => return Err(self.unexpected("`,` or `]`")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(f: &str, op: CmpOp, lit: Lit) -> Node {
        Node::Cmp(Field::resolve(f).unwrap(), op, lit)
    }

    #[test]
    fn not_binds_tighter_than_and_tighter_than_or() {
        let n = parse("not a == 1 or b == 2 and c == 3").unwrap();
        assert_eq!(
            n,
            Node::Or(
                Box::new(Node::Not(Box::new(cmp("a", CmpOp::Eq, Lit::Num(1.0))))),
                Box::new(Node::And(
                    Box::new(cmp("b", CmpOp::Eq, Lit::Num(2.0))),
                    Box::new(cmp("c", CmpOp::Eq, Lit::Num(3.0)))
                ))
            )
        );
        let p = parse("(a == 1 or b == 2) and c == 3").unwrap();
        assert!(matches!(p, Node::And(l, _) if matches!(*l, Node::Or(..))));
    }

    #[test]
    fn lists_and_contains() {
        let n = parse(r#"dataset not in ["a", "b"] and tags contains "x""#).unwrap();
        let Node::And(l, r) = n else { panic!() };
        assert!(
            matches!(*l, Node::Not(ref i) if matches!(**i, Node::In(_, ref v) if v.len() == 2))
        );
        assert!(matches!(*r, Node::Contains(_, Lit::Str(ref s)) if s == "x"));
    }

    #[test]
    fn a_version_compares_with_vn_as_with_n() {
        assert_eq!(
            parse(r#"version >= "v3""#).unwrap(),
            cmp("version", CmpOp::Ge, Lit::Num(3.0))
        );
    }

    #[test]
    fn errors_point_at_the_bad_token() {
        let e = parse("accuracy >= and x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "expected a value (a number, true, false, or a \"string\"), found `and`\n  accuracy >= and x\n              ^^^"
        );
        let e = parse("(a == 1").unwrap_err();
        assert!(e.reason.starts_with("expected `)`"), "{e}");
        assert_eq!(e.column, 7);
        let e = parse("a == 1)").unwrap_err();
        assert!(e.reason.contains("closes nothing"), "{e}");
        let e = parse("a == b").unwrap_err();
        assert!(e.reason.contains("names are not values"), "{e}");
        let e = parse("a 1").unwrap_err();
        assert!(e.reason.contains("an operator"), "{e}");
        let e = parse("").unwrap_err();
        assert!(e.reason.contains("a comparison"), "{e}");
        let e = parse("a in 1").unwrap_err();
        assert!(e.reason.contains("`[`"), "{e}");
        let e = parse("metrics. == 1").unwrap_err();
        assert!(e.reason.contains("after `metrics.`"), "{e}");
    }

    #[test]
    fn deep_nesting_and_long_chains_are_refused_not_recursed_into() {
        let deep = |n: usize| format!("{}a == 1{}", "(".repeat(n), ")".repeat(n));
        assert!(parse(&deep(MAX_DEPTH)).is_ok());
        let e = parse(&deep(32_000)).unwrap_err().to_string();
        assert!(e.contains("nested deeper than 64"), "{e}");
        assert!(parse(&format!("{}a == 1", "not ".repeat(MAX_DEPTH))).is_ok());
        let e = parse(&format!("{}a == 1", "not ".repeat(20_000)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nested deeper"), "{e}");
        let chain = |n: usize| vec!["a == 1"; n].join(" and ");
        assert!(parse(&chain(MAX_TERMS)).is_ok());
        let e = parse(&chain(5_000)).unwrap_err().to_string();
        assert!(e.contains("more than 1000 comparisons"), "{e}");
    }

    #[test]
    fn a_sort_field_is_one_name() {
        assert!(parse_field("-x").is_err());
        assert_eq!(
            parse_field("metrics.acc").unwrap(),
            Field::resolve("metrics.acc").unwrap()
        );
        assert!(
            parse_field("a b")
                .unwrap_err()
                .reason
                .contains("one field name")
        );
        assert!(
            parse_field("accuracy desc")
                .unwrap_err()
                .reason
                .contains("-FIELD for descending")
        );
    }

    #[test]
    fn a_value_on_the_left_says_the_field_comes_first() {
        let e = parse("0.7 <= accuracy").unwrap_err();
        assert!(e.reason.contains("the field comes first"), "{e}");
        assert_eq!((e.column, e.width), (0, 3));
        let e = parse("a == 1 and \"x\" == dataset").unwrap_err();
        assert!(e.reason.contains("the field comes first"), "{e}");
        assert_eq!(
            parse("metrics.`odd name` == 1").unwrap(),
            Node::Cmp(Field::Metric("odd name".into()), CmpOp::Eq, Lit::Num(1.0))
        );
    }
}
