//! Query rules: which version a selector (`vN`, `latest`, `best`, an alias) names.
//!
//! Pure functions of the catalog and the `best` policy; the server only checks the files
//! of the version found and builds the answer.

use serde::{Deserialize, Serialize};

use super::{Catalog, Model, RegistryError, Version, check_alias, parse_version_number};
use crate::config::{BestPolicy, Direction};

/// What a `get` selector asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector<'a> {
    /// The newest live version.
    Latest,
    /// The live version with the best value of a metric.
    Best,
    /// Version N (`vN`).
    Number(u32),
    /// Where an alias points.
    Alias(&'a str),
}

impl<'a> Selector<'a> {
    /// Reads a selector; `None` when it can be none of them (not `vN`, `latest`, `best`,
    /// and not a possible alias name).
    pub fn parse(s: &'a str) -> Option<Selector<'a>> {
        match s {
            "latest" => Some(Selector::Latest),
            "best" => Some(Selector::Best),
            _ => match parse_version(s) {
                Ok(n) => Some(Selector::Number(n)),
                Err(_) => check_alias(s).is_ok().then_some(Selector::Alias(s)),
            },
        }
    }
}

/// Reads a version argument: `vN` with N from 1 (no leading zero).
pub fn parse_version(s: &str) -> Result<u32, RegistryError> {
    parse_version_number(s).ok_or_else(|| RegistryError::NotAVersion {
        given: s.to_string(),
    })
}

/// How `best` was decided: the metric compared and its direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BestBy {
    /// The metric compared.
    pub metric: String,
    /// Its direction.
    pub mode: Direction,
}

impl BestBy {
    /// The metric and direction `best` uses for model `name`: the ones asked for, else
    /// the model's configured metric (or the default one) and its configured direction.
    pub fn for_model(
        policy: &BestPolicy,
        name: &str,
        metric: Option<&str>,
        mode: Option<Direction>,
    ) -> BestBy {
        let metric = metric
            .unwrap_or_else(|| policy.metric_for(name))
            .to_string();
        let mode = mode.unwrap_or_else(|| policy.direction_of(&metric));
        BestBy { metric, mode }
    }
}

impl Catalog {
    /// The model `name`, refusing a name that cannot exist and saying which model was
    /// probably meant when there is none.
    pub fn model(&self, name: &str) -> Result<&Model, RegistryError> {
        RegistryError::check_model_name(name)?;
        self.models.get(name).map(|m| m.as_ref()).ok_or_else(|| {
            RegistryError::model_not_found(name, self.models.keys().map(String::as_str))
        })
    }
}

impl Model {
    /// Version `n` when its files exist: not a number never given, not a tombstone.
    pub fn stored_version(&self, name: &str, n: u32) -> Result<&Version, RegistryError> {
        match self.find(n) {
            None => Err(RegistryError::VersionNotFound {
                name: name.to_string(),
                number: n,
                highest: self.highest,
            }),
            Some(v) => match &v.removed {
                Some(mark) => Err(RegistryError::VersionRemoved {
                    name: name.to_string(),
                    number: n,
                    mark: (**mark).clone(),
                }),
                None => Ok(v),
            },
        }
    }

    /// The best version under `policy` (its configured metric and direction for `name`):
    /// what the `best` link and retention keep.
    pub fn best_by_policy(&self, name: &str, policy: &BestPolicy) -> Option<&Version> {
        let by = BestBy::for_model(policy, name, None, None);
        self.best(&by.metric, by.mode)
    }

    /// The version `selector` (default `latest`) names, and for `best` what it compared.
    pub fn select(
        &self,
        name: &str,
        selector: Option<&str>,
        best: (&BestPolicy, Option<&str>, Option<Direction>),
    ) -> Result<(&Version, Option<BestBy>), RegistryError> {
        let given = selector.unwrap_or("latest");
        let Some(selector) = Selector::parse(given) else {
            let words = ["latest", "best"]
                .into_iter()
                .chain(self.aliases.keys().map(String::as_str));
            return Err(RegistryError::InvalidSelector {
                selector: given.to_string(),
                hint: crate::suggest::hint(given, words),
            });
        };
        let n = match selector {
            Selector::Latest => {
                return self
                    .latest()
                    .map(|v| (v, None))
                    .ok_or_else(|| self.no_live_version(name, false));
            }
            Selector::Best => {
                let (policy, metric, mode) = best;
                let by = BestBy::for_model(policy, name, metric, mode);
                if self.latest().is_none() {
                    return Err(self.no_live_version(name, true));
                }
                return match self.best(&by.metric, by.mode) {
                    Some(v) => Ok((v, Some(by))),
                    None => Err(self.no_metric(name, &by.metric)),
                };
            }
            Selector::Number(n) => n,
            Selector::Alias(a) => *self
                .aliases
                .get(a)
                .ok_or_else(|| RegistryError::alias_not_found(name, a, self, true))?,
        };
        self.stored_version(name, n).map(|v| (v, None))
    }

    /// The states of a model's newest versions (`v2 removed, v1 deprecated`), at most
    /// four: what `list` and the errors of `latest`/`best` show when none is live.
    pub fn version_states(&self) -> String {
        let states: Vec<String> = self
            .versions
            .iter()
            .rev()
            .take(4)
            .map(|v| {
                let state = if v.removed.is_some() {
                    "removed"
                } else if v.deprecated.is_some() {
                    "deprecated"
                } else {
                    "live"
                };
                format!("v{} {state}", v.number)
            })
            .collect();
        let more = if self.versions.len() > 4 { ", ..." } else { "" };
        format!("{}{more}", states.join(", "))
    }

    fn no_live_version(&self, name: &str, for_best: bool) -> RegistryError {
        RegistryError::NoLiveVersion {
            name: name.to_string(),
            states: self.version_states(),
            newest: self.newest().map(|v| v.number),
            for_best,
        }
    }

    /// Which metric was missing, the closest one that exists, and every metric the live
    /// versions have, so that the user can pick one.
    fn no_metric(&self, name: &str, metric: &str) -> RegistryError {
        let known: std::collections::BTreeSet<&str> = self
            .versions
            .iter()
            .filter(|v| v.is_live())
            .flat_map(|v| v.metrics.iter().map(|(k, _)| k.as_str()))
            .collect();
        let hint = crate::suggest::hint(metric, known.iter().copied());
        let listed = if known.is_empty() {
            "no version has any metric".to_string()
        } else {
            let names: Vec<&str> = known.into_iter().collect();
            format!("metrics: {}", names.join(", "))
        };
        RegistryError::NoMetric {
            name: name.to_string(),
            metric: metric.to_string(),
            hint,
            checked: self.versions.iter().filter(|v| v.is_live()).count(),
            listed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Mark;
    use crate::registry::tests::{model, v};

    fn policy() -> BestPolicy {
        BestPolicy {
            default_metric: "accuracy".into(),
            model_metrics: [("x".to_string(), "loss".to_string())].into(),
            minimize: vec!["loss".into()],
            maximize: vec![],
        }
    }

    fn mark(reason: Option<&str>) -> Mark {
        Mark {
            at: "2026-11-26T05:00:00Z".into(),
            reason: reason.map(str::to_string),
            uid: None,
        }
    }

    #[test]
    fn selectors_parse_to_what_they_name() {
        assert_eq!(Selector::parse("latest"), Some(Selector::Latest));
        assert_eq!(Selector::parse("best"), Some(Selector::Best));
        assert_eq!(Selector::parse("v12"), Some(Selector::Number(12)));
        assert_eq!(
            Selector::parse("production"),
            Some(Selector::Alias("production"))
        );
        // A bare number is no version, but it can be an alias.
        assert_eq!(Selector::parse("3"), Some(Selector::Alias("3")));
        assert_eq!(Selector::parse("v03"), None);
        assert_eq!(Selector::parse("../x"), None);
        assert_eq!(parse_version("v3"), Ok(3));
        assert_eq!(
            parse_version("3").unwrap_err().to_string(),
            "\"3\" is not a version such as v3"
        );
    }

    #[test]
    fn best_defaults_come_from_the_policy_and_the_request_overrides_them() {
        let p = policy();
        let by = BestBy::for_model(&p, "m", None, None);
        assert_eq!((by.metric.as_str(), by.mode), ("accuracy", Direction::Max));
        let by = BestBy::for_model(&p, "x", None, None);
        assert_eq!((by.metric.as_str(), by.mode), ("loss", Direction::Min));
        let by = BestBy::for_model(&p, "x", Some("f1"), Some(Direction::Min));
        assert_eq!((by.metric.as_str(), by.mode), ("f1", Direction::Min));
    }

    #[test]
    fn select_finds_latest_best_numbers_and_aliases() {
        let mut m = model(vec![v(1, &[("accuracy", 0.9)]), v(2, &[("accuracy", 0.5)])]);
        m.aliases.insert("production".into(), 1);
        let p = policy();
        let sel = |s: Option<&str>| {
            m.select("m", s, (&p, None, None))
                .map(|(v, b)| (v.number, b))
        };
        assert_eq!(sel(None).unwrap(), (2, None));
        assert_eq!(sel(Some("v1")).unwrap(), (1, None));
        assert_eq!(sel(Some("production")).unwrap(), (1, None));
        let (n, by) = sel(Some("best")).unwrap();
        assert_eq!((n, by.unwrap().metric), (1, "accuracy".to_string()));
    }

    #[test]
    fn select_refusals_say_what_exists() {
        let mut m = model(vec![v(1, &[("accuracy", 0.9)]), v(2, &[])]);
        std::sync::Arc::make_mut(&mut m.versions[1]).removed =
            Some(Box::new(mark(Some("leaked test data"))));
        m.aliases.insert("production".into(), 1);
        let p = policy();
        let err = |s: &str, metric: Option<&str>| {
            m.select("m", Some(s), (&p, metric, None))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(err("v9", None), "\"m\" has no version v9 (it has v1..v2)");
        assert_eq!(
            err("v2", None),
            "m v2 was removed at 2026-11-26T05:00:00Z: leaked test data"
        );
        assert_eq!(
            err("latets", None),
            "\"m\" has no alias \"latets\"; did you mean \"latest\"? (aliases: [\"production\"]; or use vN, latest, best)"
        );
        // `V1` is a legal alias name, looked up as one; the version was meant.
        assert_eq!(
            err("V1", None),
            "\"m\" has no alias \"V1\"; did you mean \"v1\"? (aliases: [\"production\"]; or use vN, latest, best)"
        );
        assert_eq!(Selector::parse("V1"), Some(Selector::Alias("V1")));
        assert_eq!(
            err("lat/est", None),
            "selector \"lat/est\" is not vN, latest, best or an alias; did you mean \"latest\"?"
        );
        assert_eq!(
            err("best", Some("acc")),
            "no version of \"m\" has metric \"acc\"; did you mean \"accuracy\"? (1 live version(s) checked; metrics: accuracy)"
        );
    }

    #[test]
    fn a_model_without_live_versions_names_one_that_answers() {
        let mut m = model(vec![v(1, &[("accuracy", 0.9)]), v(2, &[])]);
        std::sync::Arc::make_mut(&mut m.versions[0]).deprecated = Some(Box::new(mark(None)));
        std::sync::Arc::make_mut(&mut m.versions[1]).removed = Some(Box::new(mark(None)));
        let p = policy();
        for (s, for_best) in [("latest", false), ("best", true)] {
            let e = m.select("m", Some(s), (&p, None, None)).unwrap_err();
            assert_eq!(
                e.to_string(),
                "\"m\" has no live version: v2 removed, v1 deprecated (use get m v1)"
            );
            assert!(matches!(e, RegistryError::NoLiveVersion { for_best: b, .. } if b == for_best));
        }
    }

    #[test]
    fn catalog_model_checks_the_name_and_suggests_a_close_one() {
        let mut c = Catalog::default();
        c.models.insert(
            "resnet18".into(),
            std::sync::Arc::new(model(vec![v(1, &[])])),
        );
        assert!(c.model("resnet18").is_ok());
        assert_eq!(
            c.model("resnet19").unwrap_err().to_string(),
            "no model named \"resnet19\"; did you mean \"resnet18\"? (`modelreg list` shows the models)"
        );
        assert!(matches!(
            c.model("../etc"),
            Err(RegistryError::InvalidName { .. })
        ));
    }
}
