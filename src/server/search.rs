//! `list` and `versions`, with or without a search (docs/search.md): the search is
//! compiled once per request, matched against the snapshot's versions by reference, and
//! only the page answered is turned into answer rows.

use super::Context;
use super::answers::{model_summary, version_info_in};
use crate::protocol::{ErrorCode, ModelList, Request, Response, VersionList};
use crate::query::{Hit, Search, SearchArgs, Value};
use crate::registry::{Model, Version};

/// Answers a `list` or `versions` request (anything else is a bug of the caller).
pub(super) fn answer(ctx: &Context, req: &Request) -> Response {
    let Some((name, s)) = req.search_fields() else {
        return Response::err(ErrorCode::Internal, "not a list or versions request");
    };
    let args = SearchArgs {
        filter: s.filter.as_deref(),
        tags: &s.tags,
        sort: s.sort.as_deref(),
        limit: s.limit,
        cursor: s.cursor.as_deref(),
        model: name,
    };
    match name {
        None => list(ctx, args),
        Some(name) => versions(ctx, name, args),
    }
}

/// `list`: every model, or those with a version matching the search, a page of them.
fn list(ctx: &Context, args: SearchArgs<'_>) -> Response {
    let search = match Search::compile(args) {
        Ok(s) => s,
        Err(e) => return Response::err(ErrorCode::BadRequest, e),
    };
    let (catalog, cfg) = (ctx.shared.catalog(), ctx.config());
    let mut hits = Vec::new();
    for (name, m) in &catalog.models {
        // The row's version: without a filter the one the row shows, with one the newest
        // that matches (and the count of those that match).
        let (row, matches) = if search.filters() {
            let mut found = m.versions.iter().rev().filter(|v| search.matches(name, v));
            let Some(newest) = found.next() else { continue };
            (&**newest, Some(1 + found.count()))
        } else {
            match shown(m) {
                Some(v) => (v, None),
                None => continue,
            }
        };
        hits.push(Hit {
            key: search.key(name, row),
            tie: Value::Str(name),
            item: (name, m, row.number, matches),
        });
    }
    let page = search.page(hits);
    let notes = search.notes(
        "of any model",
        catalog
            .models
            .iter()
            .flat_map(|(n, m)| m.versions.iter().map(move |v| (n.as_str(), &**v))),
    );
    let models = page
        .items
        .into_iter()
        .filter_map(|(name, m, newest, matches)| {
            let mut row = model_summary(&cfg, name, m)?;
            if matches.is_some() {
                row.matches = matches;
                row.newest_match = Some(format!("v{newest}"));
            }
            Some(row)
        })
        .collect();
    let plain = search.is_plain();
    Response::answer(&ModelList {
        models,
        total: (!plain).then_some(page.total),
        next_cursor: page.next_cursor,
        notes,
    })
}

/// `versions`: every version of a model, or those matching the search, a page of them.
fn versions(ctx: &Context, name: &str, args: SearchArgs<'_>) -> Response {
    let search = match Search::compile(args) {
        Ok(s) => s,
        Err(e) => return Response::err(ErrorCode::BadRequest, e),
    };
    let (catalog, cfg) = (ctx.shared.catalog(), ctx.config());
    let m = match catalog.model(name) {
        Ok(m) => m,
        Err(e) => return e.into(),
    };
    let hits = m
        .versions
        .iter()
        .filter(|v| search.matches(name, v))
        .map(|v| Hit {
            key: search.key(name, v),
            tie: Value::Num(f64::from(v.number)),
            item: &**v,
        })
        .collect();
    let page = search.page(hits);
    let scope = format!("of {name}");
    let notes = search.notes(&scope, m.versions.iter().map(|v| (name, &**v)));
    Response::answer(&VersionList {
        name: name.to_string(),
        versions: page
            .items
            .into_iter()
            .map(|v| version_info_in(&cfg, name, v, m))
            .collect(),
        total: (!search.is_plain()).then_some(page.total),
        next_cursor: page.next_cursor,
        notes,
    })
}

/// The version a `list` row shows (see `model_summary`).
fn shown(m: &Model) -> Option<&Version> {
    m.latest()
        .or_else(|| m.newest())
        .or(m.versions.last().map(|v| &**v))
}
