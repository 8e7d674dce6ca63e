//! The search fields that `list` and `versions` share (docs/search.md): one struct to
//! build either request from, and to read them back, so that each door (CLI, HTTP, the
//! client's routes, the server) handles both requests in one place.

use super::Request;

/// A search as `list` and `versions` carry it: every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchFields {
    /// The `where` expression.
    pub filter: Option<String>,
    /// Tags every match must carry.
    pub tags: Vec<String>,
    /// A field, `-` first for descending.
    pub sort: Option<String>,
    /// At most this many items.
    pub limit: Option<usize>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
}

impl Request {
    /// `list` (no `name`) or `versions` of `name`, with the search `s`.
    pub fn search(name: Option<String>, s: SearchFields) -> Request {
        let SearchFields {
            filter,
            tags,
            sort,
            limit,
            cursor,
        } = s;
        match name {
            None => Request::List {
                filter,
                tags,
                sort,
                limit,
                cursor,
            },
            Some(name) => Request::Versions {
                name,
                filter,
                tags,
                sort,
                limit,
                cursor,
            },
        }
    }

    /// `list` without a search: every model.
    pub fn list() -> Request {
        Request::search(None, SearchFields::default())
    }

    /// `versions` of `name` without a search: every version.
    pub fn versions(name: impl Into<String>) -> Request {
        Request::search(Some(name.into()), SearchFields::default())
    }

    /// For `list` and `versions`: the model (none for `list`) and the search.
    pub fn search_fields(&self) -> Option<(Option<&str>, SearchFields)> {
        let (name, filter, tags, sort, limit, cursor) = match self {
            Request::List {
                filter,
                tags,
                sort,
                limit,
                cursor,
            } => (None, filter, tags, sort, limit, cursor),
            Request::Versions {
                name,
                filter,
                tags,
                sort,
                limit,
                cursor,
            } => (Some(name.as_str()), filter, tags, sort, limit, cursor),
            _ => return None,
        };
        let s = SearchFields {
            filter: filter.clone(),
            tags: tags.clone(),
            sort: sort.clone(),
            limit: *limit,
            cursor: cursor.clone(),
        };
        Some((name, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_goes_in_and_comes_back_out() {
        let s = SearchFields {
            filter: Some("a == 1".into()),
            tags: vec!["t".into()],
            sort: Some("-a".into()),
            limit: Some(3),
            cursor: Some("c".into()),
        };
        let v = Request::search(Some("m".into()), s.clone());
        assert_eq!(v.search_fields(), Some((Some("m"), s.clone())));
        let l = Request::search(None, s.clone());
        assert_eq!(l.search_fields(), Some((None, s)));
        assert_eq!(Request::Ping {}.search_fields(), None);
        assert_eq!(
            Request::list().search_fields(),
            Some((None, SearchFields::default()))
        );
    }
}
