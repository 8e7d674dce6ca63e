//! Notes on a search whose fields say nothing: a field the filter or the sort names that no
//! version in scope has (a typo, most often: with a did-you-mean), or a number compared
//! with a field that is text there (`--meta lr=0.01` stores text). Without them such a
//! search answered "no version matches" as if the data said so.

use std::collections::BTreeSet;

use super::eval::{Field, Value};
use super::parser::{Lit, Node};
use crate::registry::Version;

/// A field the search names, and the literals it is compared with.
#[derive(Debug, Clone)]
pub(super) struct Mention {
    field: Field,
    written: String,
    lits: Vec<Lit>,
}

/// The fields a version may lack that `filter` and `sort` name, each once, in order.
pub(super) fn mentions(filter: Option<&Node>, sort: Option<&Field>) -> Vec<Mention> {
    let mut out: Vec<Mention> = Vec::new();
    let mut add = |field: &Field, lits: &[Lit]| {
        let Some(written) = field.written() else {
            return;
        };
        match out.iter_mut().find(|m| m.written == written) {
            Some(m) => m.lits.extend_from_slice(lits),
            None => out.push(Mention {
                field: field.clone(),
                written,
                lits: lits.to_vec(),
            }),
        }
    };
    fn walk(n: &Node, add: &mut dyn FnMut(&Field, &[Lit])) {
        match n {
            Node::And(a, b) | Node::Or(a, b) => {
                walk(a, add);
                walk(b, add);
            }
            Node::Not(a) => walk(a, add),
            Node::Cmp(f, _, l) => add(f, std::slice::from_ref(l)),
            Node::In(f, ls) => add(f, ls),
            // Whatever the value, `contains` says nothing of its type.
            Node::Contains(f, _) => add(f, &[]),
        }
    }
    if let Some(n) = filter {
        walk(n, &mut add);
    }
    if let Some(f) = sort {
        add(f, &[]);
    }
    out
}

/// The notes for `mentions` over `versions` (version `v` of model `name`), the versions in
/// scope; `scope` names them in a note (`of resnet`, `of any model`).
pub(super) fn notes<'a, I>(mentions: &[Mention], scope: &str, versions: I) -> Vec<String>
where
    I: Iterator<Item = (&'a str, &'a Version)> + Clone,
{
    let mut notes = Vec::new();
    for m in mentions {
        let (mut present, mut num, mut text) = (false, false, None);
        for (name, v) in versions.clone() {
            if !m.field.present(v) {
                continue;
            }
            present = true;
            match m.field.value(name, v) {
                Value::Num(_) => num = true,
                Value::Str(s) if text.is_none() => text = Some(s),
                _ => {}
            }
            if num && text.is_some() {
                break;
            }
        }
        let w = &m.written;
        if !present {
            let known = known_fields(versions.clone().map(|(_, v)| v));
            let hint = crate::suggest::hint(w, known.iter().map(String::as_str));
            notes.push(format!("no version {scope} has a field {w:?}{hint}"));
            continue;
        }
        let asked_num = m.lits.iter().find_map(|l| match l {
            Lit::Num(x) => Some(*x),
            _ => None,
        });
        let asked_text = m.lits.iter().find_map(|l| match l {
            Lit::Str(s) => s.parse::<f64>().ok(),
            _ => None,
        });
        if let (Some(x), false, Some(_)) = (asked_num, num, text) {
            notes.push(format!(
                "{w} is text here, not a number; compare it with text: {w} == \"{x}\""
            ));
        } else if let (Some(x), true, None) = (asked_text, num, text) {
            notes.push(format!(
                "{w} is a number here, not text; compare it with a number: {w} == {x}"
            ));
        }
    }
    notes
}

/// Every field name some version of `versions` has, as a filter writes it: a metric or
/// metadata key bare and prefixed, the top keys of `extracted` and `provenance`, and the
/// built-in fields.
fn known_fields<'a>(versions: impl Iterator<Item = &'a Version>) -> Vec<String> {
    let (mut metrics, mut metadata, mut extracted, mut provenance) = (
        BTreeSet::new(),
        BTreeSet::new(),
        BTreeSet::new(),
        BTreeSet::new(),
    );
    for v in versions {
        metrics.extend(v.metrics.iter().map(|(k, _)| k.as_str()));
        metadata.extend(v.metadata.iter().map(|(k, _)| k.as_str()));
        extracted.extend(v.extracted.iter().map(|(k, _)| k.as_str()));
        provenance.extend(v.provenance.iter().map(|(k, _)| k.as_str()));
    }
    // Bare names first: on a tie the first candidate is the hint, and the bare one is
    // what people write.
    let mut out: Vec<String> = metrics
        .iter()
        .chain(&metadata)
        .map(|k| k.to_string())
        .collect();
    let prefixed = [
        ("metrics", &metrics),
        ("metadata", &metadata),
        ("extracted", &extracted),
        ("provenance", &provenance),
    ];
    for (prefix, keys) in prefixed {
        out.extend(keys.iter().map(|k| format!("{prefix}.{k}")));
    }
    out.extend(
        ["version", "registered_at", "state", "size", "name"]
            .iter()
            .map(|s| s.to_string()),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::super::parser::parse;
    use super::*;
    use crate::registry::tests::v;

    fn notes_of(expr: &str, vs: &[Version]) -> Vec<String> {
        let n = parse(expr).unwrap();
        notes(
            &mentions(Some(&n), None),
            "of m",
            vs.iter().map(|v| ("m", v)),
        )
    }

    #[test]
    fn a_field_no_version_has_is_noted_with_the_closest() {
        let vs = [v(1, &[("accuracy", 0.8)]), v(2, &[])];
        assert_eq!(
            notes_of("acuracy > 0.5", &vs),
            ["no version of m has a field \"acuracy\"; did you mean \"accuracy\"?"]
        );
        assert!(notes_of("metric.accuracy > 0.5", &vs)[0].contains("\"metrics.accuracy\""));
        assert!(notes_of("accuracy > 0.5 and version > 1", &vs).is_empty());
    }

    #[test]
    fn a_number_compared_with_text_is_noted() {
        let mut x = v(1, &[("accuracy", 0.8)]);
        x.metadata = [("lr".to_string(), serde_json::json!("0.01"))].into();
        let vs = [x];
        assert_eq!(
            notes_of("lr == 0.01", &vs),
            ["lr is text here, not a number; compare it with text: lr == \"0.01\""]
        );
        assert!(notes_of("lr == \"0.01\"", &vs).is_empty());
        assert!(notes_of("accuracy == \"0.8\"", &vs)[0].contains("accuracy == 0.8"));
    }
}
