//! Reading registry.yaml model by model, so start-up never holds the whole parsed document.
//!
//! serde_yaml loads a document's every event before deserialising it: at 100,000 versions
//! those events cost several times the catalog they become (a cold start peaked at 4.4x
//! the daemon's steady memory). registry.yaml as the daemon writes it is a block mapping
//! with one block per model under `models:`, so it is read line by line and each model's
//! block parsed on its own, then dropped; the other top-level keys are parsed from the
//! rest of the file, models blanked out (line numbers kept). Anything this splitter does
//! not recognise, or any error at all, returns `None` and the caller parses the whole
//! file as before, so errors (path, line, column) and checks are exactly those of the
//! whole-document parser.

use std::collections::BTreeMap;
use std::io::BufRead;

use super::into_catalog;
use super::repr::{FileRepr, ModelRepr};
use crate::names::ModelName;
use crate::registry::Catalog;

/// The model blocks gathered so far and the rest of the document.
#[derive(Default)]
struct Split {
    /// The document without the models' blocks: each of their lines is left empty.
    rest: String,
    models: BTreeMap<ModelName, ModelRepr>,
    /// The model block being gathered.
    block: String,
    /// The indentation of the model names under `models:`, once seen.
    indent: Option<usize>,
    in_models: bool,
    seen_models: bool,
}

impl Split {
    /// Parses the gathered model block; `None` when it is not exactly one new model.
    fn flush(&mut self) -> Option<()> {
        if self.block.is_empty() {
            return Some(());
        }
        let one: BTreeMap<ModelName, ModelRepr> = serde_yaml::from_str(&self.block).ok()?;
        self.block.clear();
        let mut it = one.into_iter();
        let (name, model) = it.next()?;
        if it.next().is_some() || self.models.contains_key(&name) {
            return None;
        }
        // A block parsed alone sits one level shallower than in the whole file, so near
        // serde_yaml's recursion limit the two could disagree: metadata deeper than a
        // sidecar may nest is left to the whole-file parser.
        if model.versions.0.iter().any(|v| {
            crate::registry::metadata_depth(&v.metadata) > crate::registry::MAX_METADATA_DEPTH
        }) {
            return None;
        }
        self.models.insert(name, model);
        Some(())
    }

    /// Takes one line (with its newline).
    fn line(&mut self, line: &str) -> Option<()> {
        let first = line.bytes().next().unwrap_or(b'\n');
        let top = !matches!(first, b' ' | b'#' | b'\n' | b'\r');
        if top {
            // Directives, document markers and tabs are left to the whole-file parser.
            if matches!(first, b'%' | b'-' | b'.' | b'\t') {
                return None;
            }
            self.flush()?;
            self.in_models = false;
            if line.trim_end() == "models:" {
                if self.seen_models {
                    return None;
                }
                self.seen_models = true;
                self.in_models = true;
                self.rest.push_str("models: {}\n");
                return Some(());
            }
            self.rest.push_str(line);
            return Some(());
        }
        if !self.in_models {
            self.rest.push_str(line);
            return Some(());
        }
        let body = line.trim_start_matches(' ');
        let starts_key = !(body.is_empty() || body.starts_with(['#', '\n', '\r']));
        if body.starts_with('\t') {
            return None;
        }
        if starts_key {
            let n = line.len() - body.len();
            let indent = *self.indent.get_or_insert(n);
            if n < indent {
                return None;
            }
            if n == indent {
                self.flush()?;
            }
        }
        if starts_key || !self.block.is_empty() {
            self.block.push_str(line);
        }
        self.rest.push('\n');
        Some(())
    }
}

/// Reads registry.yaml from `reader` model by model. `None` when the file is not in the
/// shape this reader splits, or has any error: the caller then parses it whole.
pub(super) fn read(shown: &str, mut reader: impl BufRead) -> Option<Catalog> {
    let mut s = Split::default();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).ok()? == 0 {
            break;
        }
        s.line(std::str::from_utf8(&buf).ok()?)?;
    }
    s.flush()?;
    if s.models.is_empty() {
        return None;
    }
    let mut repr: FileRepr = serde_yaml::from_str(&s.rest).ok()?;
    drop(s.rest);
    repr.models = s.models;
    into_catalog(shown, None, repr).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::persist::{from_yaml, tests::catalog_of, to_yaml};

    fn read_str(text: &str) -> Option<Catalog> {
        read("r", text.as_bytes())
    }

    #[test]
    fn written_registry_is_read_model_by_model_to_the_same_catalog() {
        let mut c = catalog_of("a", &[1, 2, 10]);
        let b = catalog_of("b", &[3]);
        c.models.extend(b.models);
        c.journal_seq = 7;
        let text = to_yaml(&c).unwrap();
        let read = read_str(&text).expect("split");
        assert_eq!(read.models, c.models);
        assert_eq!(read.journal_seq, 7);
        assert_eq!(read.models, from_yaml("r", &text).unwrap().models);
    }

    #[test]
    fn shapes_it_does_not_split_are_left_to_the_whole_file_parser() {
        let text = to_yaml(&catalog_of("a", &[1])).unwrap();
        // A model listed twice, a document marker, a flow mapping, an anchor used across
        // models, and a syntax error inside a model: all give None.
        let twice = text.replace(
            "sources:",
            &format!(
                "{}sources:",
                &text[text.find("  a:").unwrap()..text.find("sources:").unwrap()]
            ),
        );
        assert!(read_str(&twice).is_none());
        assert!(read_str(&format!("---\n{text}")).is_none());
        assert!(read_str("format: 1\nmodels: {}\n").is_none());
        assert!(read_str(&text.replace("size: 3", "size: [")).is_none());
        assert!(read_str(&text.replace("format: 1", "format: 9")).is_none());
    }
}
