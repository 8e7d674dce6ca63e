//! Which HTTP route answers each socket request (docs/http.md): its method, its path
//! and query with every name percent-encoded, and its JSON body for the changes.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::protocol::{Request, SearchFields};

/// What a path segment or query value keeps unescaped (RFC 3986's unreserved).
pub(super) const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One request as the HTTP API takes it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Route {
    /// `GET`, or for a change `PUT`, `DELETE` or `POST`.
    pub method: &'static str,
    /// The path under the API's prefix, with its query.
    pub target: String,
    /// The JSON body, for a change that takes one.
    pub body: Option<String>,
}

/// The query string of a search (`?where=...&tag=a&tag=b&sort=...&limit=...&cursor=...`,
/// docs/http.md), empty without one.
fn search_query(s: &SearchFields) -> String {
    let enc = |s: &str| utf8_percent_encode(s, SEGMENT).to_string();
    let mut q: Vec<String> = Vec::new();
    if let Some(f) = &s.filter {
        q.push(format!("where={}", enc(f)));
    }
    q.extend(s.tags.iter().map(|t| format!("tag={}", enc(t))));
    if let Some(sort) = &s.sort {
        q.push(format!("sort={}", enc(sort)));
    }
    if let Some(l) = s.limit {
        q.push(format!("limit={l}"));
    }
    if let Some(c) = &s.cursor {
        q.push(format!("cursor={}", enc(c)));
    }
    match q.is_empty() {
        true => String::new(),
        false => format!("?{}", q.join("&")),
    }
}

/// The route that answers `req`; `None` for a request that stays on the daemon's
/// machine (rm, gc, compact, verify, wait, tokens) or has a route of its own (uploads).
pub(super) fn route(req: &Request) -> Option<Route> {
    let enc = |s: &str| utf8_percent_encode(s, SEGMENT).to_string();
    let get = |target: String| Route {
        method: "GET",
        target,
        body: None,
    };
    let alias =
        |name: &str, alias: &str| format!("/api/v1/models/{}/aliases/{}", enc(name), enc(alias));
    Some(match req {
        Request::Ping {} => get("/api/v1/ping".into()),
        Request::Status {} => get("/api/v1/status".into()),
        Request::List { .. } | Request::Versions { .. } => {
            let (name, s) = req.search_fields()?;
            let path = match name {
                None => "/api/v1/models".to_string(),
                Some(n) => format!("/api/v1/models/{}/versions", enc(n)),
            };
            get(format!("{path}{}", search_query(&s)))
        }
        Request::History { name } => get(format!("/api/v1/models/{}/history", enc(name))),
        Request::Get {
            name,
            selector,
            metric,
            mode,
        } => {
            let mut q = Vec::new();
            if let Some(m) = metric {
                q.push(format!("metric={}", enc(m)));
            }
            if let Some(m) = mode {
                q.push(format!("mode={}", m.as_str()));
            }
            let query = if q.is_empty() {
                String::new()
            } else {
                format!("?{}", q.join("&"))
            };
            get(format!(
                "/api/v1/models/{}/versions/{}{query}",
                enc(name),
                enc(selector.as_deref().unwrap_or("latest"))
            ))
        }
        Request::AliasSet {
            name,
            alias: a,
            version,
        } => Route {
            method: "PUT",
            target: alias(name, a),
            body: Some(serde_json::json!({ "version": version }).to_string()),
        },
        Request::AliasRemove { name, alias: a } => Route {
            method: "DELETE",
            target: alias(name, a),
            body: None,
        },
        Request::Rollback { name, alias: a } => Route {
            method: "POST",
            target: format!("{}/rollback", alias(name, a)),
            body: None,
        },
        Request::Deprecate {
            name,
            version,
            reason,
        } => Route {
            method: "POST",
            target: format!(
                "/api/v1/models/{}/versions/{}/deprecate",
                enc(name),
                enc(version)
            ),
            body: reason
                .as_ref()
                .map(|r| serde_json::json!({ "reason": r }).to_string()),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_map_to_their_routes_with_encoded_segments() {
        let get = Request::Get {
            name: "m".into(),
            selector: Some("release/v2".into()),
            metric: Some("top 1".into()),
            mode: Some(crate::config::Direction::Min),
        };
        assert_eq!(
            route(&get).unwrap().target,
            "/api/v1/models/m/versions/release%2Fv2?metric=top%201&mode=min"
        );
        let set = Request::AliasSet {
            name: "m".into(),
            alias: "release/v2".into(),
            version: "v3".into(),
        };
        assert_eq!(
            route(&set),
            Some(Route {
                method: "PUT",
                target: "/api/v1/models/m/aliases/release%2Fv2".into(),
                body: Some(r#"{"version":"v3"}"#.into()),
            })
        );
        assert_eq!(route(&Request::Compact {}), None);
    }
}
