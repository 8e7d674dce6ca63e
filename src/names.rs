//! What an inbox entry is (artifact, sidecar, ignored) and which model name it maps to,
//! plus the rules that make a model name safe to use as a folder name.

use std::ffi::OsStr;

/// The ending that marks a metrics sidecar: `<name>.metrics.yaml`.
pub const SIDECAR_SUFFIX: &str = ".metrics.yaml";

/// Both sidecar endings: `<name>.metrics.yaml` and `<name>.metrics.json`, same meaning.
pub const SIDECAR_SUFFIXES: &[&str] = &[SIDECAR_SUFFIX, ".metrics.json"];

/// Compound archive extensions that count as one extension when a file is named
/// (`bert.tar.gz` is model `bert`, not `bert.tar`). Compared in lower case.
pub const ARCHIVE_EXTENSIONS: &[&str] = &[
    ".tar.gz",
    ".tar.xz",
    ".tar.bz2",
    ".tar.zst",
    ".tar.lz4",
    ".tar.lzma",
];

/// Name endings written by downloaders, editors and copy tools while a file is incomplete.
pub const TEMPORARY_SUFFIXES: &[&str] = &[
    "~",
    ".tmp",
    ".temp",
    ".part",
    ".partial",
    ".incomplete",
    ".crdownload",
    ".download",
    ".swp",
    ".swx",
    ".lock",
];

/// The longest model or alias name, in bytes. A file name holds at most 255 bytes
/// (NAME_MAX), and every name derived from a model or alias name must fit too: the
/// staging folder `v<N>.<8 random>.<name>` adds up to 21 bytes, a symlink's temporary
/// `.<alias>.<pid>.tmp` up to 13, a sidecar `<name>.metrics.yaml` 13. 200 leaves room
/// for all of them.
pub const MAX_NAME_BYTES: usize = 200;

/// What an entry at the top of the inbox is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A file or folder that becomes a version of `name`.
    Artifact { name: String },
    /// `<name>.metrics.yaml` or `<name>.metrics.json`.
    Sidecar { name: String },
    /// Hidden or temporary: never looked at.
    Ignored,
    /// It would be an artifact, but its name is not safe; the reason says why.
    Refused { reason: String },
}

/// True for a sidecar's file name (`<name>.metrics.yaml` or `<name>.metrics.json`).
pub fn is_sidecar(file_name: &str) -> bool {
    SIDECAR_SUFFIXES
        .iter()
        .any(|x| file_name.len() > x.len() && file_name.ends_with(x))
}

/// True for names that are hidden or that writers use while a file is incomplete.
pub fn is_temporary(file_name: &str) -> bool {
    file_name.starts_with('.')
        || TEMPORARY_SUFFIXES
            .iter()
            .any(|s| file_name.len() > s.len() && file_name.ends_with(s))
}

/// The model name a file's name gives: the name without its final extension, where a
/// compound archive extension (`.tar.gz`, ...) counts as one (`Qwen2.5-0.5B.Q4_K_M.gguf`
/// -> `Qwen2.5-0.5B.Q4_K_M`, `bert.tar.gz` -> `bert`, `model` -> `model`). Not yet
/// checked or normalised: see [`model_name`].
pub fn file_stem(file_name: &str) -> &str {
    let lower = file_name.to_ascii_lowercase();
    if let Some(ext) = ARCHIVE_EXTENSIONS
        .iter()
        .find(|e| lower.len() > e.len() && lower.ends_with(*e))
    {
        return &file_name[..file_name.len() - ext.len()];
    }
    match file_name.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => file_name,
    }
}

/// Classifies a top-level inbox entry by its file name. A file's model name is its name
/// without the final extension ([`file_stem`]); a folder keeps its whole name
/// (`Llama-3.1-8B/` -> `Llama-3.1-8B`); a sidecar `<model name>.metrics.yaml` (or
/// `.metrics.json`) pairs with the model of that name. Names are normalised to Unicode
/// NFC, so that an NFD spelling (as macOS writes) is the same model.
pub fn classify(file_name: &OsStr, is_dir: bool) -> Entry {
    let Some(s) = file_name.to_str() else {
        return Entry::Refused {
            reason: format!("{file_name:?} is not valid UTF-8"),
        };
    };
    if is_temporary(s) {
        return Entry::Ignored;
    }
    // `.metrics.yml` looks like a sidecar to its writer but would register as a model
    // named `<name>.metrics`: refuse it and say the one spelling that pairs.
    if !is_dir && let Some(name) = s.strip_suffix(".metrics.yml") {
        return Entry::Refused {
            reason: format!(
                "{s:?} is not a sidecar: rename it to {name}.metrics.yaml (or write {name}.metrics.json)"
            ),
        };
    }
    if !is_dir && let Some(name) = SIDECAR_SUFFIXES.iter().find_map(|x| s.strip_suffix(x)) {
        return match model_name(name) {
            Ok(name) => Entry::Sidecar { name },
            Err(reason) => Entry::Refused {
                reason: format!("sidecar {s:?} names model {name:?}, which {reason}"),
            },
        };
    }
    // A file keeps its whole name in the version folder and in `sources:`: the part
    // after the model name must pass the same rule the catalog is read with.
    if !is_dir && let Err(reason) = check_component(s) {
        return Entry::Refused {
            reason: format!("{s:?} {reason}; rename it"),
        };
    }
    let name = if is_dir { s } else { file_stem(s) };
    match model_name(name) {
        Ok(name) => Entry::Artifact { name },
        Err(reason) => Entry::Refused {
            reason: format!("{s:?} gives model name {name:?}, which {reason}"),
        },
    }
}

/// A name as it enters from outside (a file name, a request): normalised to Unicode NFC
/// and checked with [`check_name`]. Returns the name to use, or the reason it is refused.
pub fn model_name(raw: &str) -> Result<String, String> {
    let nfc = to_nfc(raw);
    check_name(&nfc)?;
    Ok(nfc)
}

/// `s` in Unicode Normalization Form C.
pub fn to_nfc(s: &str) -> String {
    use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};
    match is_nfc_quick(s.chars()) {
        IsNormalized::Yes => s.to_string(),
        _ => s.nfc().collect(),
    }
}

/// The one rule for a model or alias name, wherever it comes from (inbox, request,
/// registry.yaml, the start-up cache). It must be safe as a folder under the store and
/// as an argument on a command line, and show as what it is: not empty, at most
/// [`MAX_NAME_BYTES`] bytes, no leading `.` or `-`, no leading or trailing whitespace,
/// and the characters [`check_component`] allows. Names are compared in NFC: one not in
/// NFC is refused here (those from outside go through [`model_name`] first). Returns the
/// reason when not.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!("is longer than {MAX_NAME_BYTES} bytes"));
    }
    if name == "." || name == ".." || name.starts_with('.') {
        return Err("starts with a dot".into());
    }
    if name.starts_with('-') {
        return Err("starts with '-'".into());
    }
    if name.trim() != name {
        return Err("starts or ends with whitespace".into());
    }
    check_chars(name)?;
    if !unicode_normalization::is_nfc(name) {
        return Err("is not in Unicode NFC form".into());
    }
    Ok(())
}

/// The rule for one component of a file's path inside a version (`config.json`,
/// `.gitattributes`, `onnx`): not empty, not `.` or `..`, at most 255 bytes, and no
/// `/`, `\`, control, bidi or zero-width characters.
pub fn check_component(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("is {name:?}"));
    }
    if name.len() > 255 {
        return Err("is longer than 255 bytes".into());
    }
    check_chars(name)
}

/// A relative path inside a version (`onnx/model.onnx`): each component passes
/// [`check_component`]; never absolute, never `..`.
pub fn check_relative_path(path: &str) -> Result<(), String> {
    if path.starts_with('/') {
        return Err("is absolute".into());
    }
    for c in path.split('/') {
        check_component(c).map_err(|r| format!("has a component {c:?} that {r}"))?;
    }
    Ok(())
}

/// Characters no name may hold: `/`, `\`, control characters (line breaks included),
/// bidi controls (which make a name display in another order, `evil\u{202e}txt.pt`), and
/// zero-width or invisible characters (two names that look the same).
fn check_chars(name: &str) -> Result<(), String> {
    for c in name.chars() {
        if c.is_control() || c == '/' || c == '\\' || c == '\u{2028}' || c == '\u{2029}' {
            return Err(format!("contains {c:?}"));
        }
        if is_bidi_control(c) {
            return Err(format!(
                "contains the bidi control U+{:04X}, which makes a name display as something else",
                c as u32
            ));
        }
        if is_invisible(c) {
            return Err(format!(
                "contains the zero-width, invisible or blank character U+{:04X}, so two different names would look the same",
                c as u32
            ));
        }
    }
    Ok(())
}

/// Unicode bidirectional formatting characters (UAX #9): embeddings, overrides,
/// isolates and marks.
pub(crate) fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Zero-width and otherwise invisible characters: zero-width space, non-joiner and
/// joiner, word joiner and invisible operators, the byte-order mark, soft hyphen,
/// Mongolian vowel separator and variation selectors, combining grapheme joiner,
/// variation selectors, tag characters, musical formatting controls, the Hangul fillers
/// (U+115F, U+1160, U+3164, U+FFA0) and Khmer inherent vowels, which display as nothing
/// or as a blank, and the blank Braille pattern U+2800 (Unicode's Default_Ignorable
/// characters, plus the blanks that are not whitespace).
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200D}'
            | '\u{2060}'..='\u{2064}'
            | '\u{206A}'..='\u{206F}'
            | '\u{2800}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// Serde helper: a model name read from registry.yaml or the start-up cache, checked
/// with [`check_name`]; a bad one is an error at its position, never a path.
pub fn de_model_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = <String as serde::Deserialize>::deserialize(d)?;
    check_name(&s).map_err(|r| serde::de::Error::custom(format!("model name {s:?} {r}")))?;
    Ok(s)
}

/// A model name as a map key in registry.yaml or the start-up cache, checked on reading.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ModelName(pub String);

impl<'de> serde::Deserialize<'de> for ModelName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_model_name(d).map(ModelName)
    }
}

/// An inbox entry's name as a key of `sources:` in registry.yaml, checked on reading
/// ([`check_component`]: the daemon joins it to the inbox's path).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EntryName(pub String);

impl<'de> serde::Deserialize<'de> for EntryName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        check_component(&s)
            .map_err(|r| serde::de::Error::custom(format!("inbox entry name {s:?} {r}")))?;
        Ok(EntryName(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Entry {
        classify(OsStr::new(s), false)
    }
    fn art(s: &str) -> Entry {
        Entry::Artifact { name: s.into() }
    }

    #[test]
    fn name_is_all_but_the_final_extension() {
        assert_eq!(c("resnet18.pt"), art("resnet18"));
        assert_eq!(c("resnet18.best.pth"), art("resnet18.best"));
        assert_eq!(
            c("Qwen2.5-0.5B-Instruct.Q4_K_M.gguf"),
            art("Qwen2.5-0.5B-Instruct.Q4_K_M")
        );
        assert_eq!(
            c("mistral-7b-v0.1.Q4_K_M.gguf"),
            art("mistral-7b-v0.1.Q4_K_M")
        );
        assert_eq!(c("bert.tar.gz"), art("bert"));
        assert_eq!(c("bert.v2.TAR.ZST"), art("bert.v2"));
        assert_eq!(c("x.tar"), art("x"));
        assert_eq!(c("model"), art("model"));
        assert_eq!(c("model."), art("model"));
        assert_eq!(c("chest_xray_densenet.pth"), art("chest_xray_densenet"));
        assert_eq!(c("모델.pt"), art("모델"));
    }

    #[test]
    fn nfc_bidi_and_zero_width() {
        // NFD (as macOS writes) and NFC are one name.
        assert_eq!(c("cafe\u{301}.pt"), art("caf\u{e9}"));
        assert!(check_name("cafe\u{301}").unwrap_err().contains("NFC"));
        assert_eq!(model_name("cafe\u{301}").unwrap(), "caf\u{e9}");
        for bad in ["evil\u{202e}txt", "a\u{2066}b", "x\u{200f}"] {
            assert!(model_name(bad).unwrap_err().contains("bidi"), "{bad:?}");
        }
        for bad in ["zero\u{200b}width", "a\u{feff}", "a\u{2060}b", "a\u{ad}b"] {
            assert!(
                model_name(bad).unwrap_err().contains("zero-width"),
                "{bad:?}"
            );
        }
        assert!(matches!(c("evil\u{202e}txt.pt"), Entry::Refused { .. }));
        // Hangul fillers and the blank Braille pattern display as nothing or a blank.
        for bad in [
            "\u{3164}",
            "a\u{115f}",
            "a\u{1160}b",
            "\u{ffa0}x",
            "a\u{2800}",
        ] {
            assert!(
                model_name(bad).unwrap_err().contains("invisible"),
                "{bad:?}"
            );
        }
        // A file's extension is held to the rule too: it is stored under its whole name.
        assert!(matches!(c("ext.p\tt"), Entry::Refused { .. }));
        assert!(matches!(c("ext.p\u{202e}t"), Entry::Refused { .. }));
    }

    #[test]
    fn components_and_relative_paths() {
        assert!(check_component(".gitattributes").is_ok());
        assert!(check_component("-x").is_ok());
        assert!(check_component("..").is_err());
        assert!(check_component("").is_err());
        assert!(check_relative_path("onnx/model.onnx").is_ok());
        assert!(check_relative_path("../x").is_err());
        assert!(check_relative_path("a//b").is_err());
        assert!(check_relative_path("/etc/passwd").is_err());
    }

    #[test]
    fn folders_keep_their_whole_name() {
        assert_eq!(
            classify(OsStr::new("Llama-3.1-8B"), true),
            art("Llama-3.1-8B")
        );
    }

    #[test]
    fn sidecars() {
        assert_eq!(
            c("resnet18.metrics.yaml"),
            Entry::Sidecar {
                name: "resnet18".into()
            }
        );
        assert_eq!(
            c("bert.v2.metrics.yaml"),
            Entry::Sidecar {
                name: "bert.v2".into()
            }
        );
        assert_eq!(
            c("bert.v2.metrics.json"),
            Entry::Sidecar {
                name: "bert.v2".into()
            }
        );
    }

    #[test]
    fn temporaries_and_hidden_are_ignored() {
        for s in [
            ".resnet18.pt.a1B2c3",
            ".hidden",
            "model.pt~",
            "model.pt.tmp",
            "model.pt.part",
            "model.pt.partial",
            "model.pt.incomplete",
            "model.pt.crdownload",
            ".model.pt.swp",
            "model.swp",
        ] {
            assert_eq!(c(s), Entry::Ignored, "{s}");
        }
    }

    #[test]
    fn unsafe_names_refused() {
        assert!(matches!(c("-rf.pt"), Entry::Refused { .. }));
        assert!(matches!(c(".pt"), Entry::Ignored));
        assert!(matches!(c("a\u{7}b.pt"), Entry::Refused { .. }));
        assert!(matches!(c(" a.pt"), Entry::Refused { .. }));
        assert!(check_name(&"x".repeat(MAX_NAME_BYTES + 1)).is_err());
        assert!(check_name(&"x".repeat(MAX_NAME_BYTES)).is_ok());
        // Every derived name fits NAME_MAX: staging, symlink temporary, sidecar.
        let longest_staging = format!("v{}.{}.", u32::MAX, "r".repeat(8)).len();
        let longest_link_tmp = format!(".{}.tmp", 4_194_304).len() + 1;
        for extra in [longest_staging, longest_link_tmp, SIDECAR_SUFFIX.len()] {
            assert!(MAX_NAME_BYTES + extra <= 255, "{extra}");
        }
        assert!(check_name("..").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("a\\b").is_err());
        assert!(check_name("my model").is_ok());
    }

    #[test]
    fn non_utf8_refused() {
        use std::os::unix::ffi::OsStrExt;
        let e = classify(OsStr::from_bytes(b"bad\xff.pt"), false);
        assert!(matches!(e, Entry::Refused { .. }));
    }
}
