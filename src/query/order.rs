//! Sorting and paging: the order of `--sort` (missing values last either way, ties by
//! version number or model name) and the opaque cursor that resumes after the last item
//! of a page. The cursor holds that item's sort value and tie, not an offset, so a
//! version registered between two pages neither repeats nor hides an item.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use super::eval::{Field, Value};

/// `--sort`: a field, ascending, or descending with a leading `-`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sort {
    /// The field compared.
    pub field: Field,
    /// Largest first.
    pub desc: bool,
    /// As given (`-accuracy`): a cursor names the sort it belongs to.
    pub text: String,
}

/// One item to page: its sort value, its tie-breaker (the version number, or the model's
/// name in `list`; unique within one answer), and what is answered.
#[derive(Debug)]
pub struct Hit<'a, T> {
    /// The sort field's value (missing when there is no sort).
    pub key: Value<'a>,
    /// Orders equal keys; unique.
    pub tie: Value<'a>,
    /// The item.
    pub item: T,
}

/// A page of hits.
#[derive(Debug)]
pub struct Page<T> {
    /// The items of this page, in order.
    pub items: Vec<T>,
    /// How many items matched, over every page.
    pub total: usize,
    /// Resumes after the last item, when more follow.
    pub next_cursor: Option<String>,
}

/// What a cursor holds (hex-encoded JSON, so it reads as one opaque word).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct CursorData {
    /// The sort it was given under (`""`: none).
    s: String,
    /// The last item's sort value (null: missing).
    k: serde_json::Value,
    /// The last item's tie-breaker.
    t: serde_json::Value,
    /// The fingerprint of the query it continues (model, filter, tags, sort); empty in
    /// a cursor from before it was bound, which is then refused as another query's.
    #[serde(default)]
    q: String,
}

/// Orders two values as `--sort` does: numbers, then strings, then booleans, each in
/// its own order (reversed when `desc`), and values that are missing (or lists) last.
fn cmp_key(a: &Value, b: &Value, desc: bool) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Num(_) => 0,
            Value::Str(_) => 1,
            Value::Bool(_) => 2,
            Value::List(_) | Value::Missing => 3,
        }
    }
    let o = match (a, b) {
        (Value::Num(x), Value::Num(y)) => x.total_cmp(y),
        (Value::Str(x), Value::Str(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        _ if rank(a) == 3 || rank(b) == 3 => return rank(a).cmp(&rank(b)),
        _ => rank(a).cmp(&rank(b)),
    };
    if desc { o.reverse() } else { o }
}

fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Num(n) => serde_json::json!(n),
        Value::Str(s) => serde_json::json!(s),
        Value::Bool(b) => serde_json::json!(b),
        Value::List(_) | Value::Missing => serde_json::Value::Null,
    }
}

fn from_json(j: &serde_json::Value) -> Value<'_> {
    match j {
        serde_json::Value::Number(n) => n.as_f64().map_or(Value::Missing, Value::Num),
        serde_json::Value::String(s) => Value::Str(s),
        serde_json::Value::Bool(b) => Value::Bool(*b),
        _ => Value::Missing,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

impl CursorData {
    /// Reads a cursor given back by a client, for a query sorted by `sort` (`""`: none)
    /// whose fingerprint is `query`.
    pub(super) fn decode(text: &str, sort: &str, query: &str) -> Result<CursorData, String> {
        let c: CursorData = unhex(text)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| {
                format!("cursor {text:?} is not one this daemon gave (pass back `next_cursor` as it was answered)")
            })?;
        if c.s != sort {
            let shown = |s: &str| {
                if s.is_empty() {
                    "no sort".to_string()
                } else {
                    format!("sort {s:?}")
                }
            };
            return Err(format!(
                "the cursor continues a query with {}, not {}: ask the next page with the same sort",
                shown(&c.s),
                shown(sort)
            ));
        }
        if c.q != query {
            return Err(
                "the cursor continues another query (another model, --where or --tag): ask the next page with the same search it was given for, or leave out the cursor to start from the first page".into(),
            );
        }
        Ok(c)
    }
}

/// Sorts `hits` (by `sort`, else by tie alone), and cuts the page after `cursor` of at
/// most `limit` items.
pub(super) fn page<T>(
    mut hits: Vec<Hit<'_, T>>,
    sort: Option<&Sort>,
    cursor: Option<&CursorData>,
    limit: Option<usize>,
    query: &str,
) -> Page<T> {
    let desc = sort.is_some_and(|s| s.desc);
    let cmp = |a: (&Value, &Value), b: (&Value, &Value)| {
        cmp_key(a.0, b.0, desc).then_with(|| cmp_key(a.1, b.1, false))
    };
    // Already in tie order when unsorted (versions ascend, models are kept by name): the
    // sort then costs one pass.
    hits.sort_by(|a, b| cmp((&a.key, &a.tie), (&b.key, &b.tie)));
    let total = hits.len();
    let start = cursor.map_or(0, |c| {
        let at = (&from_json(&c.k), &from_json(&c.t));
        hits.partition_point(|h| cmp((&h.key, &h.tie), at) != Ordering::Greater)
    });
    let end = limit.map_or(total, |l| start.saturating_add(l).min(total));
    let next_cursor = match (
        limit,
        end < total,
        end.checked_sub(1).and_then(|i| hits.get(i)),
    ) {
        (Some(_), true, Some(last)) => {
            let c = CursorData {
                s: sort.map(|s| s.text.clone()).unwrap_or_default(),
                k: to_json(&last.key),
                t: to_json(&last.tie),
                q: query.to_string(),
            };
            Some(hex(serde_json::to_string(&c)
                .unwrap_or_default()
                .as_bytes()))
        }
        _ => None,
    };
    let items = hits.drain(start.min(end)..end).map(|h| h.item).collect();
    Page {
        items,
        total,
        next_cursor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(keys: &[Option<f64>]) -> Vec<Hit<'static, u32>> {
        keys.iter()
            .enumerate()
            .map(|(i, k)| Hit {
                key: k.map_or(Value::Missing, Value::Num),
                tie: Value::Num(i as f64 + 1.0),
                item: i as u32 + 1,
            })
            .collect()
    }

    fn sort(text: &str) -> Sort {
        Sort {
            field: Field::resolve(text.trim_start_matches('-')).unwrap(),
            desc: text.starts_with('-'),
            text: text.into(),
        }
    }

    #[test]
    fn missing_values_come_last_in_both_directions() {
        let keys = [Some(0.5), None, Some(0.9), Some(0.1), None, Some(0.9)];
        let up = page(hits(&keys), Some(&sort("a")), None, None, "");
        assert_eq!(up.items, vec![4, 1, 3, 6, 2, 5]);
        let down = page(hits(&keys), Some(&sort("-a")), None, None, "");
        assert_eq!(down.items, vec![3, 6, 1, 4, 2, 5]);
    }

    #[test]
    fn pages_cover_every_item_once() {
        let keys: Vec<Option<f64>> = (0..23)
            .map(|i| (i % 4 != 0).then_some((i % 5) as f64))
            .collect();
        let s = sort("-a");
        let all = page(hits(&keys), Some(&s), None, None, "q").items;
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let c = cursor
                .as_deref()
                .map(|c| CursorData::decode(c, "-a", "q").unwrap());
            let p = page(hits(&keys), Some(&s), c.as_ref(), Some(5), "q");
            assert_eq!(p.total, 23);
            seen.extend(p.items);
            match p.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, all);
    }

    #[test]
    fn a_cursor_is_checked() {
        assert!(
            CursorData::decode("zz", "", "")
                .unwrap_err()
                .contains("not one this daemon gave")
        );
        assert!(CursorData::decode("", "", "").is_err());
        let p = page(
            hits(&[Some(1.0), Some(2.0)]),
            Some(&sort("a")),
            None,
            Some(1),
            "q",
        );
        let c = p.next_cursor.unwrap();
        assert!(c.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(
            CursorData::decode(&c, "-a", "q")
                .unwrap_err()
                .contains("same sort")
        );
        assert!(CursorData::decode(&c, "a", "q").is_ok());
        assert!(
            CursorData::decode(&c, "a", "other")
                .unwrap_err()
                .contains("another query")
        );
    }

    #[test]
    fn no_limit_answers_everything_and_no_cursor() {
        let p = page(hits(&[Some(1.0), Some(2.0)]), None, None, None, "");
        assert_eq!((p.items, p.total, p.next_cursor), (vec![1, 2], 2, None));
        let p = page(hits(&[Some(1.0), Some(2.0)]), None, None, Some(2), "");
        assert_eq!(p.next_cursor, None);
    }
}
