//! How `best` chooses: the default metric, per-model metrics and each metric's direction.
//!
//! From the `default_metric`, `model_metrics`, `minimize` and `maximize` settings.

use std::collections::BTreeMap;

/// Whether higher or lower values of a metric are better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Higher is better (accuracy, f1, auroc, ...).
    Max,
    /// Lower is better (loss, error, rmse, ...).
    Min,
}

impl Direction {
    /// Parses `min` or `max`.
    pub fn parse(s: &str) -> Option<Direction> {
        match s {
            "max" => Some(Direction::Max),
            "min" => Some(Direction::Min),
            _ => None,
        }
    }

    /// `min` or `max`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Max => "max",
            Direction::Min => "min",
        }
    }
}

/// How `best` picks its metric and direction.
#[derive(Debug, Clone, PartialEq)]
pub struct BestPolicy {
    /// The metric used when neither the request nor the model's default names one.
    pub default_metric: String,
    /// Per-model default metric.
    pub model_metrics: BTreeMap<String, String>,
    /// Names (and name endings) of metrics where lower is better.
    pub minimize: Vec<String>,
    /// Exceptions that are maximised although they match `minimize`.
    pub maximize: Vec<String>,
}

impl BestPolicy {
    /// The metric `best` uses for `model` when the request names none.
    pub fn metric_for(&self, model: &str) -> &str {
        self.model_metrics
            .get(model)
            .map(String::as_str)
            .unwrap_or(&self.default_metric)
    }

    /// The configured direction of `metric`: minimised when its name is, or ends with
    /// (after `_`, `-` or `.`), one of the `minimize` words, unless listed in `maximize`.
    pub fn direction_of(&self, metric: &str) -> Direction {
        if self.maximize.iter().any(|m| m == metric) {
            return Direction::Max;
        }
        let minimised = self.minimize.iter().any(|word| {
            metric == word
                || metric.strip_suffix(word.as_str()).is_some_and(|head| {
                    head.ends_with('_') || head.ends_with('-') || head.ends_with('.')
                })
        });
        if minimised {
            Direction::Min
        } else {
            Direction::Max
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_config;
    use super::*;

    #[test]
    fn direction_rules() {
        let c = test_config("maximize: [neg_loss]\n").unwrap();
        let b = &c.best;
        assert_eq!(b.direction_of("accuracy"), Direction::Max);
        assert_eq!(b.direction_of("loss"), Direction::Min);
        assert_eq!(b.direction_of("val_loss"), Direction::Min);
        assert_eq!(b.direction_of("top1-error"), Direction::Min);
        assert_eq!(b.direction_of("glossary"), Direction::Max);
        assert_eq!(b.direction_of("neg_loss"), Direction::Max);
    }

    #[test]
    fn model_default_metric() {
        let c = test_config("model_metrics: {xray: auroc}\n").unwrap();
        assert_eq!(c.best.metric_for("xray"), "auroc");
        assert_eq!(c.best.metric_for("other"), "accuracy");
    }
}
