//! `RegistryError`: every refusal of a catalog rule, its message written once.
//!
//! The registrar (changes) and the server (queries) both answer with these, so one error
//! reads the same whichever of them found it; `protocol` maps each to its wire code.

use super::{Mark, Model};

/// Why a catalog rule refused: what was asked, what is there, and what to do instead.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegistryError {
    /// A model name that cannot exist (`/`, `..`, control characters, ...).
    #[error("invalid model name {name:?}: it {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it (a phrase that follows "it").
        reason: String,
    },
    /// An alias that cannot be one (unsafe, reserved, or shaped like `vN`).
    #[error("invalid alias {alias:?}: {reason}")]
    InvalidAlias {
        /// The alias as given.
        alias: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A version argument that is not `vN`.
    #[error("{given:?} is not a version such as v3{}", capital_hint(given))]
    NotAVersion {
        /// What was given.
        given: String,
    },
    /// A selector that is neither `vN`, `latest`, `best` nor a possible alias.
    #[error("selector {selector:?} is not vN, latest, best or an alias{hint}")]
    InvalidSelector {
        /// The selector as given.
        selector: String,
        /// `; did you mean ...?`, or empty.
        hint: String,
    },
    /// No model of that name.
    #[error("no model named {name:?}{hint} (`modelreg list` shows the models)")]
    ModelNotFound {
        /// The name asked for.
        name: String,
        /// `; did you mean ...?`, or empty.
        hint: String,
    },
    /// No version of that number was ever given.
    #[error("{name:?} has no version v{number} (it has v1..v{highest})")]
    VersionNotFound {
        /// The model.
        name: String,
        /// The number asked for.
        number: u32,
        /// The highest number the model has given.
        highest: u32,
    },
    /// `latest` or `best` of a model none of whose versions is live.
    #[error("{name:?} has no live version: {states}{}", use_instead(name, *newest))]
    NoLiveVersion {
        /// The model.
        name: String,
        /// Its versions' states, newest first (`v2 removed, v1 deprecated`).
        states: String,
        /// The newest version whose files exist, which `vN` still answers.
        newest: Option<u32>,
        /// Asked by `best` (answered as `no_metric`) rather than `latest`.
        for_best: bool,
    },
    /// `best` found no live version with the metric.
    #[error(
        "no version of {name:?} has metric {metric:?}{hint} ({checked} live version(s) checked; {listed})"
    )]
    NoMetric {
        /// The model.
        name: String,
        /// The metric compared.
        metric: String,
        /// `; did you mean ...?`, or empty.
        hint: String,
        /// How many live versions (neither deprecated nor removed) were compared.
        checked: usize,
        /// `metrics: a, b` of the live versions, or that none has any.
        listed: String,
    },
    /// The version was removed; its tombstone says when and why.
    #[error("{name} v{number} was removed at {}{}", mark.at, reason_suffix(mark))]
    VersionRemoved {
        /// The model.
        name: String,
        /// The version.
        number: u32,
        /// When, why and by whom.
        mark: Mark,
    },
    /// No alias of that name.
    #[error(
        "{name:?} has no alias {alias:?}{hint} (aliases: {known:?}{})",
        if *as_selector { "; or use vN, latest, best" } else { "" }
    )]
    AliasNotFound {
        /// The model.
        name: String,
        /// The alias asked for.
        alias: String,
        /// `; did you mean ...?`, or empty.
        hint: String,
        /// The model's aliases.
        known: Vec<String>,
        /// Asked as a `get` selector (so `vN`, `latest` and `best` are offered too).
        as_selector: bool,
    },
    /// `rollback` of an alias that never moved.
    #[error("alias {alias} of {name} has no earlier position")]
    NothingToRollBack {
        /// The model.
        name: String,
        /// The alias.
        alias: String,
    },
    /// `rm` of a version an alias points to, without force.
    #[error(
        "{name} v{number} is what {} point(s) to; move the alias first, or use --force to drop it",
        aliases.join(", ")
    )]
    Aliased {
        /// The model.
        name: String,
        /// The version.
        number: u32,
        /// The aliases pointing to it.
        aliases: Vec<String>,
    },
    /// A stored file of the version is gone, or leads out of the store.
    #[error("{name} v{number}: {detail}")]
    FileMissing {
        /// The model.
        name: String,
        /// The version.
        number: u32,
        /// Which file and what is wrong with it.
        detail: String,
    },
    /// A change was applied but could not be written; the catalog is as before.
    #[error("not saved: {reason}")]
    NotSaved {
        /// Why the write failed.
        reason: String,
    },
    /// Team mode: the shared catalog failed while committing a change (a timeout, the
    /// connection lost in COMMIT), so it may have made it or not; the host re-read the
    /// model (`now`: what it holds after that, when the re-read worked).
    #[error(
        "outcome unknown: {reason}; the catalog may have made the change{now}: ask again (`modelreg get`, `modelreg alias`) before repeating it"
    )]
    OutcomeUnknown {
        /// Why the commit's answer never came.
        reason: String,
        /// ` (this host now has ...)`, or empty.
        now: String,
    },
}

/// `: why` of a mark, or nothing.
fn reason_suffix(mark: &Mark) -> String {
    mark.reason
        .as_deref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default()
}

/// ` (use get NAME vN)` naming a version that still answers, or nothing.
fn use_instead(name: &str, newest: Option<u32>) -> String {
    newest
        .map(|n| format!(" (use get {name} v{n})"))
        .unwrap_or_default()
}

impl RegistryError {
    /// [`RegistryError::InvalidName`] unless `name` can name a model.
    pub fn check_model_name(name: &str) -> Result<(), RegistryError> {
        crate::names::check_name(name).map_err(|reason| RegistryError::InvalidName {
            name: name.to_string(),
            reason,
        })
    }

    /// [`RegistryError::ModelNotFound`] for `name`, with the closest of `known`.
    pub fn model_not_found<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Self {
        RegistryError::ModelNotFound {
            name: name.to_string(),
            hint: crate::suggest::hint(name, known),
        }
    }

    /// [`RegistryError::AliasNotFound`] for `alias` of `m`. As a selector, `latest` and
    /// `best` are suggested too, and `vN` for a version written in capitals (`V3`): that
    /// is a legal alias name, so it is looked up as one, but a version was meant.
    pub fn alias_not_found(name: &str, alias: &str, m: &Model, as_selector: bool) -> Self {
        let reserved = if as_selector {
            &["latest", "best"][..]
        } else {
            &[]
        };
        let lower = alias.to_lowercase();
        let version = (as_selector && super::parse_version_number(&lower).is_some())
            .then_some(lower.as_str());
        let words = version
            .into_iter()
            .chain(reserved.iter().copied())
            .chain(m.aliases.keys().map(String::as_str));
        RegistryError::AliasNotFound {
            name: name.to_string(),
            alias: alias.to_string(),
            hint: crate::suggest::hint(alias, words),
            known: m.aliases.keys().cloned().collect(),
            as_selector,
        }
    }
}
/// `; did you mean "v2"?` for `V2` (a version written in capitals), else nothing.
fn capital_hint(given: &str) -> String {
    let lower = given.to_ascii_lowercase();
    if lower != given && super::parse_version_number(&lower).is_some() {
        format!("; did you mean {lower:?}?")
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_in_capitals_is_refused_with_a_hint_to_the_version() {
        let e = RegistryError::NotAVersion { given: "V2".into() };
        assert_eq!(
            e.to_string(),
            "\"V2\" is not a version such as v3; did you mean \"v2\"?"
        );
        let e = RegistryError::NotAVersion { given: "v0".into() };
        assert_eq!(e.to_string(), "\"v0\" is not a version such as v3");
    }
}
