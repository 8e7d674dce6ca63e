//! The web dashboard: pages of HTML drawn from one catalog snapshot, no I/O, no script.
//!
//! `http` serves them at `/` ([`models_page`], a page of models at a time), `/models/{name}` ([`model_page`]) and
//! `/models/{name}/{selector}` ([`version_page`]). Each takes a [`Site`]: the snapshot the
//! socket answers from, the settings (best's policy, where the store is) and the address
//! the browser used, which the copy-paste commands name. Queries go through the catalog's
//! own rules (`latest`, `best_by_policy`, `select`), so the pages show what `get` answers.
//! Works without JavaScript (charts are SVG drawn here), on a phone (tables scroll inside
//! their own region), and with a keyboard or a screen reader (landmarks, a skip link,
//! headings in order, labelled regions, charts with a text description).

mod chart;
pub mod html;
mod pages;
mod version;

use crate::config::Config;
use crate::registry::{Catalog, Model, RegistryError, Version};

pub use chart::{Point, chart};
pub use pages::{MODELS_PER_PAGE, model_page, model_pages, models_page};
pub use version::version_page;

/// What a page is drawn from.
#[derive(Debug, Clone, Copy)]
pub struct Site<'a> {
    /// The catalog snapshot (the same one the socket and the JSON API answer from).
    pub catalog: &'a Catalog,
    /// The daemon's settings: best's policy, the root and the store.
    pub config: &'a Config,
    /// This server as the browser reached it, `http://host:port` without a trailing `/`:
    /// the endpoint the Hugging Face and curl commands name.
    pub base_url: &'a str,
}

/// A page for an error (an unknown model, a removed version, ...): its message in the
/// frame of the other pages, with a way back.
pub fn error_page(title: &str, message: &str) -> String {
    let body = format!(
        "<p>{}</p>\n<p><a href=\"/\">All models</a></p>\n",
        html::esc(message)
    );
    html::page(title, &[(Some("/".into()), "Models".into())], &body)
}

/// The state of a version in one word, as `get` and `versions` say it.
fn state(v: &Version) -> &'static str {
    match (&v.removed, &v.deprecated) {
        (Some(_), _) => "removed",
        (None, Some(_)) => "deprecated",
        (None, None) => "live",
    }
}

/// The state as a styled word, with when and why in its tooltip.
fn state_html(v: &Version) -> String {
    let s = state(v);
    match v.removed.as_ref().or(v.deprecated.as_ref()) {
        None => s.to_string(),
        Some(mark) => {
            let why = mark.reason.as_deref().unwrap_or("no reason given");
            format!(
                "<span class=\"{s}\" title=\"{} at {}: {}\">{s}</span>",
                s,
                html::esc(&mark.at),
                html::esc(why)
            )
        }
    }
}

/// Bytes of a version's files.
fn version_size(v: &Version) -> u64 {
    v.files.iter().map(|f| f.size).sum()
}

/// Bytes of every version whose files exist.
fn model_size(m: &Model) -> u64 {
    m.stored().map(version_size).sum()
}

/// A size for people, with the exact count in its tooltip.
fn size_html(bytes: u64) -> String {
    format!(
        "<span title=\"{bytes} bytes\">{}</span>",
        crate::status::human_bytes(bytes)
    )
}

/// The aliases pointing at version `n`, as tags.
fn alias_tags(m: &Model, n: u32) -> String {
    m.aliases
        .iter()
        .filter(|(_, v)| **v == n)
        .map(|(a, _)| format!("<span class=\"tag\">{}</span>", html::esc(a)))
        .collect()
}

/// Looks up `name` by the catalog's rule (a bad or unknown name is the same error as
/// `get` gives).
fn model<'a>(site: &Site<'a>, name: &str) -> Result<&'a Model, RegistryError> {
    site.catalog.model(name)
}

#[cfg(test)]
mod tests;
