//! The answers of `list` and `versions`: their items, and with a search, the count of
//! matches and the cursor of the next page (docs/search.md).

use serde::{Deserialize, Serialize};

use super::VersionInfo;

/// One model in a `list` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSummary {
    /// The model.
    pub name: String,
    /// `vN` of the latest version.
    pub latest: String,
    /// How many versions it has.
    pub versions: usize,
    /// When the latest version was registered.
    pub registered_at: String,
    /// Absolute path of the latest version.
    pub path: String,
    /// Set when no version is live (`-` as latest): their states, e.g. `no live version:
    /// v1 deprecated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// With a filter: how many of its versions match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<usize>,
    /// With a filter: `vN` of its newest matching version (what `--sort` compares).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_match: Option<String>,
}

/// The `list` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    /// Every model, by name (with a search: those matching, in its order, one page).
    pub models: Vec<ModelSummary>,
    /// With a search: how many models matched, over every page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<usize>,
    /// When more models follow this page: pass it back as `cursor` for the next one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// What the search should know: a field it names that no version has (with the
    /// closest that exists), or a number compared with text (docs/search.md "Notes").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The `versions` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionList {
    /// The model.
    pub name: String,
    /// Every version, tombstones included, oldest first (with a search: those
    /// matching, in its order, one page).
    pub versions: Vec<VersionInfo>,
    /// With a search: how many versions matched, over every page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<usize>,
    /// When more versions follow this page: pass it back as `cursor` for the next one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// What the search should know (as in [`ModelList::notes`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}
