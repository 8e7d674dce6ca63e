//! The Hugging Face Trainer's results files as metrics: all_results.json, eval_results.json, trainer_state.json's best metric.
//!
//! Python's `json` writes `NaN`, `Infinity` and `-Infinity` (a diverged loss, a
//! `grad_norm` in the log history), which JSON and serde_json do not accept: those tokens
//! are read as markers ([`lenient`]), so one of them costs only its own key, which is
//! left out with a reason, and never the file's other metrics.
//!
//! `trainer_state.json` says `best_metric` but not which metric it is nor whether higher
//! is better (that is in TrainingArguments, which the Trainer pickles). The name is taken
//! from `metric_for_best_model` when the file has it (as the Trainer names it: `eval_`
//! prefixed), else from the log history's evaluation at the best checkpoint's step whose
//! one `eval_*` value equals it; the metric is then `best_<name>` (`best_eval_loss`),
//! whose direction follows its name like any metric's. When the name cannot be told, no
//! metric is made (a bare `best_metric` would be maximised by `best` even when it is a
//! loss): the value stays in the facts (`trainer_state`).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// Metrics taken from one file; those over it are counted in one `metrics_left_out`
/// entry.
pub const MAX_METRICS: usize = 256;

/// Keys left out of one file recorded one by one; the rest are counted in one more entry.
const MAX_LEFT_OUT: usize = 32;

/// The `metrics_left_out` keys of the entries counting metrics over [`MAX_METRICS`]
/// and left-out keys over [`MAX_LEFT_OUT`].
pub const OVER: &str = "… over the limit";
const MORE: &str = "… more left out";

/// The results files, in the order they are trusted.
pub const FILES: [&str; 3] = [
    "all_results.json",
    "eval_results.json",
    "trainer_state.json",
];

/// What one results file gives.
#[derive(Debug, Default, PartialEq)]
pub struct Results {
    /// Finite metrics by name.
    pub metrics: BTreeMap<String, f64>,
    /// Keys left out, each with why (`eval_loss: NaN is not a finite number`).
    pub left_out: Vec<(String, String)>,
    /// trainer_state.json's best-model facts, for `extracted.trainer_state`.
    pub facts: Option<Map<String, Value>>,
}

/// The marker a non-finite token is read as: a string no writer produces for a value
/// (it starts with a NUL character).
const MARK: char = '\u{0}';

/// Parses `text` as a JSON map, reading Python's `NaN`, `Infinity` and `-Infinity` (outside
/// strings) as marker strings that [`non_finite`] recognises.
pub fn lenient(text: &[u8]) -> Result<Map<String, Value>, String> {
    let mut out = Vec::with_capacity(text.len());
    let (mut in_string, mut escaped, mut i) = (false, false, 0);
    while i < text.len() {
        let b = text[i];
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if let Some(tok) = ["NaN", "Infinity", "-Infinity"]
            .into_iter()
            .find(|t| text[i..].starts_with(t.as_bytes()))
        {
            out.extend_from_slice(format!("\"\\u0000{tok}\"").as_bytes());
            i += tok.len();
            continue;
        } else if b == b'-' || b.is_ascii_digit() {
            // A number too large for a 64-bit float (`1e999`), which serde_json refuses
            // for the whole file, is marked like `Infinity`: it costs only its own key.
            let n = text[i..]
                .iter()
                .take_while(|c| c.is_ascii_digit() || b"+-.eE".contains(c))
                .count();
            let tok = std::str::from_utf8(&text[i..i + n]).unwrap_or_default();
            if tok.parse::<f64>().is_ok_and(f64::is_infinite) {
                let shown = super::reader::clip(tok, 40);
                out.extend_from_slice(format!("\"\\u0000{shown}\"").as_bytes());
            } else {
                out.extend_from_slice(&text[i..i + n]);
            }
            i += n;
            continue;
        }
        out.push(b);
        i += 1;
    }
    serde_json::from_slice(&out).map_err(|e| format!("not a JSON map: {e}"))
}

/// The token a marker stands for (`NaN`, `1e999`), when `v` is one.
fn non_finite(v: &Value) -> Option<&str> {
    v.as_str()?.strip_prefix(MARK)
}

/// Why the value written `tok` (a marker's token) is not a metric.
fn why_not_finite(tok: &str) -> String {
    if ["NaN", "Infinity", "-Infinity"].contains(&tok) {
        format!("{tok} is not a finite number")
    } else {
        format!("{tok} is out of the range of a 64-bit number")
    }
}

/// The sidecar's rule for metric names, and short.
fn good_name(k: &str) -> bool {
    !k.is_empty() && k.len() <= 128 && !k.chars().any(char::is_control)
}

/// What the results file `file` (one of [`FILES`]) gives; see the module docs.
pub fn results(file: &str, text: &[u8]) -> Result<Results, String> {
    let v = lenient(text)?;
    if file == "trainer_state.json" {
        return Ok(best(&v));
    }
    let mut r = Results::default();
    let (mut over, mut more_left_out) = (0usize, 0usize);
    let mut leave_out = |r: &mut Results, key: String, why: String| {
        if r.left_out.len() < MAX_LEFT_OUT {
            r.left_out.push((key, why));
        } else {
            more_left_out += 1;
        }
    };
    for (k, x) in &v {
        let value = match non_finite(x) {
            Some(tok) => Err(why_not_finite(tok)),
            None => Ok(x.as_f64().filter(|n| n.is_finite())),
        };
        if !good_name(k) {
            // Named as it is, escaped and short: an empty or control-character key
            // cannot be a metric name.
            let why = if k.is_empty() {
                "an empty name".to_string()
            } else if k.len() > 128 {
                format!("a name of {} bytes (at most 128)", k.len())
            } else {
                "a name with control characters".to_string()
            };
            if !matches!(value, Ok(None)) {
                let shown = format!("{:?}", super::reader::clip(k, 64));
                leave_out(&mut r, shown, format!("not a metric name: {why}"));
            }
            continue;
        }
        match value {
            Err(why) => leave_out(&mut r, k.clone(), why),
            Ok(Some(_)) if r.metrics.len() >= MAX_METRICS => over += 1,
            Ok(Some(n)) => {
                r.metrics.insert(k.clone(), n);
            }
            Ok(None) => {}
        }
    }
    if over > 0 {
        r.left_out.push((
            OVER.into(),
            format!("{over} more metrics over the {MAX_METRICS}-metric limit of one file"),
        ));
    }
    if more_left_out > 0 {
        r.left_out.push((
            MORE.into(),
            format!("{more_left_out} more keys left out, over the {MAX_LEFT_OUT} recorded"),
        ));
    }
    Ok(r)
}

/// trainer_state.json's best metric: named when it can be told (see the module docs).
fn best(v: &Map<String, Value>) -> Results {
    let mut r = Results::default();
    let Some(x) = v.get("best_metric") else {
        return r;
    };
    let mut facts = Map::new();
    for k in [
        "best_model_checkpoint",
        "best_global_step",
        "greater_is_better",
    ] {
        if let Some(x) = v.get(k).filter(|x| !x.is_object() && !x.is_array()) {
            let x = match x {
                Value::String(s) => json!(super::reader::clip(s, 256)),
                x => x.clone(),
            };
            facts.insert(k.into(), x);
        }
    }
    let value = match (non_finite(x), x.as_f64()) {
        (Some(tok), _) => {
            r.left_out.push(("best_metric".into(), why_not_finite(tok)));
            facts.insert("best_metric".into(), json!(tok));
            None
        }
        (None, Some(n)) if n.is_finite() => {
            facts.insert("best_metric".into(), json!(n));
            Some(n)
        }
        _ => None,
    };
    let name = named(v).or_else(|| value.and_then(|n| from_history(v, n)));
    match (&name, value) {
        (Some(name), Some(n)) if good_name(&format!("best_{name}")) => {
            facts.insert("metric_for_best_model".into(), json!(name));
            r.metrics.insert(format!("best_{name}"), n);
        }
        (Some(name), _) => {
            facts.insert("metric_for_best_model".into(), json!(name));
        }
        (None, Some(_)) => {
            r.left_out.push((
                "best_metric".into(),
                "which metric it is cannot be told (no metric_for_best_model, no evaluation at the best step with that value), so its direction is unknown".into(),
            ));
        }
        (None, None) => {}
    }
    r.facts = Some(facts);
    r
}

/// `metric_for_best_model` as the Trainer compares it (`eval_` prefixed).
fn named(v: &Map<String, Value>) -> Option<String> {
    let m = v.get("metric_for_best_model")?.as_str()?;
    let m = super::reader::clip(m, 100);
    Some(if m.starts_with("eval_") {
        m
    } else {
        format!("eval_{m}")
    })
}

/// The one `eval_*` key of the log history's entries at the best step whose value is
/// `best`; `None` when none or several are.
fn from_history(v: &Map<String, Value>, best: f64) -> Option<String> {
    let step = v
        .get("best_global_step")
        .and_then(Value::as_u64)
        .or_else(|| {
            let c = v.get("best_model_checkpoint")?.as_str()?;
            c.rsplit_once("checkpoint-")?.1.parse().ok()
        })?;
    let mut names: Vec<&String> = v
        .get("log_history")?
        .as_array()?
        .iter()
        .filter_map(Value::as_object)
        .filter(|e| e.get("step").and_then(Value::as_u64) == Some(step))
        .flat_map(|e| e.iter())
        .filter(|(k, x)| k.starts_with("eval_") && x.as_f64() == Some(best))
        .map(|(k, _)| k)
        .collect();
    names.sort();
    names.dedup();
    match names.as_slice() {
        [one] => Some((*one).clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_cost_only_their_own_key() {
        let r = results(
            "all_results.json",
            br#"{"eval_accuracy": 0.9, "eval_loss": NaN, "train_loss": -Infinity, "x": Infinity, "note": "NaN, Infinity", "epoch": 3}"#,
        )
        .unwrap();
        assert_eq!(
            r.metrics,
            [
                ("epoch".to_string(), 3.0),
                ("eval_accuracy".to_string(), 0.9)
            ]
            .into()
        );
        let left: Vec<String> = r
            .left_out
            .iter()
            .map(|(k, w)| format!("{k}: {w}"))
            .collect();
        assert_eq!(
            left,
            [
                "eval_loss: NaN is not a finite number",
                "train_loss: -Infinity is not a finite number",
                "x: Infinity is not a finite number"
            ]
        );
        // A number out of a float's range costs its key only; its neighbours stay.
        let r = results(
            "all_results.json",
            br#"{"ok": 0.25, "p": 1e999, "q": -2E+400, "n": -1.5e3}"#,
        )
        .unwrap();
        assert_eq!(
            r.metrics,
            [("n".to_string(), -1500.0), ("ok".to_string(), 0.25)].into()
        );
        assert_eq!(
            r.left_out[0].1,
            "1e999 is out of the range of a 64-bit number"
        );
        assert_eq!(
            r.left_out[1].1,
            "-2E+400 is out of the range of a 64-bit number"
        );
        // Escaped quotes inside strings do not confuse the scan.
        let m = lenient(br#"{"a": "say \"NaN\"", "b": NaN}"#).unwrap();
        assert_eq!(m["a"], "say \"NaN\"");
        assert!(lenient(b"{\"a\": Nan}").is_err());
    }

    #[test]
    fn best_metric_is_named_from_the_file_or_its_history_or_not_made_a_metric() {
        let r = results(
            "trainer_state.json",
            br#"{"best_metric": 0.35, "best_model_checkpoint": "out/checkpoint-30", "log_history": [{"loss": 0.5, "grad_norm": NaN, "step": 10}, {"eval_loss": 0.35, "eval_accuracy": 0.8, "step": 30}]}"#,
        )
        .unwrap();
        assert_eq!(r.metrics, [("best_eval_loss".to_string(), 0.35)].into());
        let f = r.facts.unwrap();
        assert_eq!(f["metric_for_best_model"], "eval_loss");
        assert_eq!(f["best_metric"], 0.35);

        let r = results(
            "trainer_state.json",
            br#"{"best_metric": 0.8, "metric_for_best_model": "accuracy", "greater_is_better": true}"#,
        )
        .unwrap();
        assert_eq!(r.metrics, [("best_eval_accuracy".to_string(), 0.8)].into());
        assert_eq!(r.facts.unwrap()["greater_is_better"], true);

        // Two eval metrics with the best value at that step: which one is not known.
        let r = results(
            "trainer_state.json",
            br#"{"best_metric": 0.5, "best_global_step": 3, "log_history": [{"eval_a": 0.5, "eval_b": 0.5, "step": 3}]}"#,
        )
        .unwrap();
        assert!(r.metrics.is_empty());
        assert!(r.left_out[0].1.contains("direction is unknown"));
        assert_eq!(r.facts.unwrap()["best_metric"], 0.5);
    }
}
