//! The models page (every model in a table) and a model's page (its charts, versions and
//! alias history).

use std::collections::BTreeSet;
use std::fmt::Write;

use super::chart::{Point, chart};
use super::html::{esc, link, model_href, page, seg, table, version_href};
use super::{Site, alias_tags, model, model_size, size_html, state_html, version_size};
use crate::display::compact_number;
use crate::registry::{Model, RegistryError, Version};

/// The most versions a model's page charts and lists: enough for any chart to read, few
/// enough for a phone (20,000 versions made a 6 MB page).
const MAX_VERSIONS: usize = 500;

/// The most models the models page lists at once (`?page=N` for the others): with all
/// of them on one page, 10,000 models made a 3 MB page.
pub const MODELS_PER_PAGE: usize = 100;

/// How many pages the models page has for `models` models (at least one).
pub fn model_pages(models: usize) -> usize {
    models.div_ceil(MODELS_PER_PAGE).max(1)
}

/// `/` (`?page=N`, from 1): each model with its latest and best version, aliases, version
/// count and size, [`MODELS_PER_PAGE`] at a time by name, with links to the other pages.
/// `None` when `page` is not one of [`model_pages`].
pub fn models_page(site: &Site, page_no: usize) -> Option<String> {
    let catalog = site.catalog;
    let pages = model_pages(catalog.models.len());
    if page_no == 0 || page_no > pages {
        return None;
    }
    let crumbs = [(None, "Models".to_string())];
    if catalog.models.is_empty() {
        let body = "<p>No models yet.</p>\n<p>Drop a model file (and its \
<code>NAME.metrics.yaml</code>) into the inbox, <code>pretrained_models/</code>, or run \
<code>modelreg add FILE</code>: each new file becomes the next version.</p>\n";
        return Some(page("Models", &crumbs, body));
    }
    let stored: usize = catalog.models.values().map(|m| m.stored().count()).sum();
    let bytes: u64 = catalog.models.values().map(|m| model_size(m)).sum();
    let mut body = format!(
        "<p>{} model{}, {stored} stored version{}, {} in the store.</p>\n",
        catalog.models.len(),
        if catalog.models.len() == 1 { "" } else { "s" },
        if stored == 1 { "" } else { "s" },
        size_html(bytes),
    );
    let first = (page_no - 1) * MODELS_PER_PAGE;
    let rows: Vec<String> = (catalog.models.iter())
        .skip(first)
        .take(MODELS_PER_PAGE)
        .map(|(name, m)| model_row(site, name, m))
        .collect();
    let pager = pager(page_no, pages, first, rows.len(), catalog.models.len());
    body.push_str(&pager);
    body.push_str(&table(
        "Models",
        &[
            "Model",
            "Latest",
            "Best",
            "Aliases",
            "Versions",
            "Size",
            "Registered",
        ],
        &rows,
    ));
    body.push_str(&pager);
    let title = if pages == 1 {
        "Models".to_string()
    } else {
        format!("Models, page {page_no} of {pages}")
    };
    Some(page(&title, &crumbs, &body))
}

/// Links to the first, previous, next and last pages of the models page, and which
/// models this one shows (nothing when there is one page).
fn pager(page_no: usize, pages: usize, first: usize, shown: usize, total: usize) -> String {
    if pages == 1 {
        return String::new();
    }
    let href = |n: usize| {
        if n == 1 {
            "/".to_string()
        } else {
            format!("/?page={n}")
        }
    };
    let mut parts = Vec::new();
    if page_no > 1 {
        parts.push("<a href=\"/\" rel=\"first\">First</a>".to_string());
        parts.push(format!(
            "<a href=\"{}\" rel=\"prev\">Previous</a>",
            href(page_no - 1)
        ));
    }
    parts.push(format!(
        "<span aria-current=\"page\">Page {page_no} of {pages}</span> \
<span class=\"muted\">(models {}–{} of {total})</span>",
        first + 1,
        first + shown
    ));
    if page_no < pages {
        parts.push(format!(
            "<a href=\"{}\" rel=\"next\">Next</a>",
            href(page_no + 1)
        ));
        parts.push(format!("<a href=\"{}\" rel=\"last\">Last</a>", href(pages)));
    }
    format!(
        "<nav aria-label=\"Pages\"><p>{}</p></nav>\n",
        parts.join(" · ")
    )
}

fn model_row(site: &Site, name: &str, m: &Model) -> String {
    let latest = match m.latest() {
        Some(v) => link(&version_href(name, v.number), &format!("v{}", v.number)),
        None => format!(
            "<span class=\"muted\" title=\"{}\">none live</span>",
            esc(&m.version_states())
        ),
    };
    let metric = site.config.best.metric_for(name);
    let best = match m.best_by_policy(name, &site.config.best) {
        Some(v) => format!(
            "{} <span class=\"muted\">{} {}</span>",
            link(&version_href(name, v.number), &format!("v{}", v.number)),
            esc(metric),
            compact_number(v.metrics.get(metric).copied().unwrap_or(f64::NAN))
        ),
        None => format!(
            "<span class=\"muted\" title=\"no live version has {}\">—</span>",
            esc(metric)
        ),
    };
    let aliases: String = m
        .aliases
        .iter()
        .map(|(a, n)| format!("<span class=\"tag\">{} → v{n}</span>", esc(a)))
        .collect();
    let registered = m
        .latest()
        .or_else(|| m.newest())
        .map(|v| esc(&v.registered_at))
        .unwrap_or_default();
    format!(
        "<th scope=\"row\">{}</th><td>{latest}</td><td>{best}</td><td>{aliases}</td>\
<td class=\"num\">{}</td><td class=\"num\">{}</td><td>{registered}</td>",
        link(&model_href(name), name),
        m.stored().count(),
        size_html(model_size(m)),
    )
}

/// `/models/{name}`: the model's summary, a chart per metric, every version (tombstones
/// too) with its metrics and state, and the alias history.
pub fn model_page(site: &Site, name: &str) -> Result<String, RegistryError> {
    let m = model(site, name)?;
    let policy = &site.config.best;
    let crumbs = [
        (Some("/".to_string()), "Models".to_string()),
        (None, name.to_string()),
    ];
    let metric = policy.metric_for(name);
    let mut body = String::from("<dl>");
    let latest = m.latest().map_or_else(
        || format!("none live ({})", esc(&m.version_states())),
        |v| link(&version_href(name, v.number), &format!("v{}", v.number)),
    );
    let best = m.best_by_policy(name, policy).map_or_else(
        || format!("none (no live version has {})", esc(metric)),
        |v| {
            format!(
                "{} by {} ({})",
                link(&version_href(name, v.number), &format!("v{}", v.number)),
                esc(metric),
                direction_word(policy.direction_of(metric)),
            )
        },
    );
    let aliases: String = m
        .aliases
        .iter()
        .map(|(a, n)| format!("<span class=\"tag\">{} → v{n}</span>", esc(a)))
        .collect();
    let _ = writeln!(
        body,
        "<dt>Latest</dt><dd>{latest}</dd><dt>Best</dt><dd>{best}</dd>\
<dt>Versions</dt><dd>{} stored, {} ever given</dd><dt>Size</dt><dd>{}</dd>\
<dt>Aliases</dt><dd>{}</dd></dl>",
        m.stored().count(),
        m.highest,
        size_html(model_size(m)),
        if aliases.is_empty() {
            "none".to_string()
        } else {
            aliases
        },
    );
    // A page a phone can load: the newest versions only; the JSON API lists them all.
    let window = &m.versions[m.versions.len().saturating_sub(MAX_VERSIONS)..];
    if window.len() < m.versions.len() {
        let _ = writeln!(
            body,
            "<p>The charts and the table show the newest {} of {} versions; {} lists all.</p>",
            window.len(),
            m.versions.len(),
            link(
                &format!("/api/v1/models/{}/versions", seg(name)),
                "the JSON API"
            ),
        );
    }
    // Metrics of the versions whose files exist (deprecated ones too: they were trained
    // and measured; `best` skips them as `get` does).
    let stored = || window.iter().filter(|v| v.removed.is_none());
    let metrics: BTreeSet<&str> = stored()
        .flat_map(|v| v.metrics.iter().map(|(k, _)| k.as_str()))
        .collect();
    body.push_str("<h2>Metrics</h2>\n");
    if metrics.is_empty() {
        body.push_str(
            "<p>No version has metrics. A sidecar <code>NAME.metrics.yaml</code> next to \
the file in the inbox gives them.</p>\n",
        );
    } else {
        body.push_str("<div class=\"charts\">");
        for (i, metric) in metrics.iter().enumerate() {
            let points: Vec<Point> = stored()
                .filter_map(|v| {
                    let value = *v.metrics.get(metric)?;
                    Some(Point {
                        version: v.number,
                        value,
                        deprecated: v.deprecated.is_some(),
                    })
                })
                .collect();
            let direction = policy.direction_of(metric);
            let best = m.best(metric, direction).map(|v| v.number);
            body.push_str(&chart(
                &format!("chart-{i}"),
                metric,
                &points,
                best,
                direction,
            ));
        }
        body.push_str("</div>\n");
    }
    body.push_str("<h2>Versions</h2>\n");
    body.push_str(&versions_table(name, m, window, &metrics));
    body.push_str("<h2>Alias history</h2>\n");
    body.push_str(&alias_history(m));
    Ok(page(name, &crumbs, &body))
}

fn direction_word(d: crate::config::Direction) -> &'static str {
    match d {
        crate::config::Direction::Max => "higher is better",
        crate::config::Direction::Min => "lower is better",
    }
}

/// The versions of `window` (tombstones too), newest first, with a column per metric.
fn versions_table(
    name: &str,
    m: &Model,
    window: &[std::sync::Arc<Version>],
    metrics: &BTreeSet<&str>,
) -> String {
    let mut head = vec!["Version", "State", "Registered", "Size", "Files"];
    head.extend(metrics.iter().copied());
    head.push("Aliases");
    let rows: Vec<String> = window
        .iter()
        .rev()
        .map(|v| {
            let mut row = format!(
                "<th scope=\"row\">{}</th><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
<td class=\"num\">{}</td>",
                link(&version_href(name, v.number), &format!("v{}", v.number)),
                state_html(v),
                esc(&v.registered_at),
                size_html(version_size(v)),
                v.files.len(),
            );
            for metric in metrics {
                let value = v.metrics.get(metric).map(|x| compact_number(*x));
                let _ = write!(
                    row,
                    "<td class=\"num\">{}</td>",
                    value.unwrap_or_else(|| "<span class=\"muted\">—</span>".into())
                );
            }
            let _ = write!(row, "<td>{}</td>", alias_tags(m, v.number));
            row
        })
        .collect();
    table(&format!("Versions of {name}, newest first"), &head, &rows)
}

/// Every move of every alias, newest first.
fn alias_history(m: &Model) -> String {
    if m.alias_history.is_empty() {
        return "<p>No alias has been set.</p>\n".to_string();
    }
    let version = |n: Option<u32>| n.map_or_else(|| "—".to_string(), |n| format!("v{n}"));
    let rows: Vec<String> = m
        .alias_history
        .iter()
        .rev()
        .map(|mv| {
            format!(
                "<td>{}</td><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{}</td>",
                esc(&mv.at),
                esc(&mv.alias),
                version(mv.from),
                version(mv.to),
                esc(&mv.by),
            )
        })
        .collect();
    table(
        "Alias moves, newest first",
        &["When", "Alias", "From", "To", "By"],
        &rows,
    )
}
