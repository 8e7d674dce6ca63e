//! The query string of `GET /api/v1/models` and `GET /api/v1/models/{name}/versions`:
//! `where`, `tag` (repeatable), `sort`, `limit` and `cursor`, the socket's fields of the
//! same names (docs/http.md, docs/search.md).

use percent_encoding::percent_decode_str;

use super::ApiError;
use crate::protocol::SearchFields;

/// Reads a raw query string. `tag` may repeat (each one required); every other
/// parameter may be given once, and an unknown one is refused, as elsewhere in the API.
pub(super) fn search_query(raw: Option<&str>) -> Result<SearchFields, ApiError> {
    let mut q = SearchFields::default();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            // `+` is a space in a form-encoded query (what browsers and most clients send).
            percent_decode_str(&s.replace('+', " "))
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| ApiError::bad_request(format!("query parameter {k:?} is not UTF-8")))
        };
        let (k, v) = (decode(k)?, decode(v)?);
        let once = |slot: &mut Option<String>| match slot {
            Some(_) => Err(ApiError::bad_request(format!(
                "query parameter {k:?} is given twice; give it once"
            ))),
            None => {
                *slot = Some(v.clone());
                Ok(())
            }
        };
        match k.as_str() {
            "where" => once(&mut q.filter)?,
            "sort" => once(&mut q.sort)?,
            "cursor" => once(&mut q.cursor)?,
            "tag" => q.tags.push(v),
            "limit" => {
                if q.limit.is_some() {
                    return Err(ApiError::bad_request(
                        "query parameter \"limit\" is given twice; give it once",
                    ));
                }
                q.limit = Some(v.parse().map_err(|_| {
                    ApiError::bad_request(format!("limit {v:?} is not a whole number >= 1"))
                })?);
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}; known: where, tag, sort, limit, cursor"
                )));
            }
        }
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_parameter_and_repeated_tags() {
        let q = search_query(Some(
            "where=accuracy%20%3E%3D%200.7+and+x%3D%3D1&tag=a&tag=b%2Cc&sort=-accuracy&limit=5&cursor=7b",
        ))
        .unwrap();
        assert_eq!(
            q,
            SearchFields {
                filter: Some("accuracy >= 0.7 and x==1".into()),
                tags: vec!["a".into(), "b,c".into()],
                sort: Some("-accuracy".into()),
                limit: Some(5),
                cursor: Some("7b".into()),
            }
        );
        assert_eq!(search_query(None).unwrap(), SearchFields::default());
    }

    #[test]
    fn refuses_unknown_twice_and_bad_limits() {
        let e = |s: &str| search_query(Some(s)).unwrap_err().body.message;
        assert!(e("colour=red").contains("unknown query parameter"));
        assert!(e("sort=a&sort=b").contains("given twice"));
        assert!(e("limit=1&limit=2").contains("given twice"));
        assert!(e("limit=-1").contains("whole number"));
        assert!(e("where=%ff").contains("not UTF-8"));
    }
}
