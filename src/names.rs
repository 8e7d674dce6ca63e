//! What an inbox entry is (artifact, sidecar, ignored) and which model name it maps to,
//! plus the rules that make a model name safe to use as a folder name.

use std::ffi::OsStr;

/// The ending that marks a metrics sidecar: `<name>.metrics.yaml`.
pub const SIDECAR_SUFFIX: &str = ".metrics.yaml";

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

/// The longest model name, in bytes (a file name on ext4 holds 255).
pub const MAX_NAME_BYTES: usize = 255;

/// What an entry at the top of the inbox is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A file or folder that becomes a version of `name`.
    Artifact { name: String },
    /// `<name>.metrics.yaml`.
    Sidecar { name: String },
    /// Hidden or temporary: never looked at.
    Ignored,
    /// It would be an artifact, but its name is not safe; the reason says why.
    Refused { reason: String },
}

/// True for names that are hidden or that writers use while a file is incomplete.
pub fn is_temporary(file_name: &str) -> bool {
    file_name.starts_with('.')
        || TEMPORARY_SUFFIXES
            .iter()
            .any(|s| file_name.len() > s.len() && file_name.ends_with(s))
}

/// Classifies a top-level inbox entry by its file name. A file's model name is its file
/// name up to the first dot (`resnet18.pt` -> `resnet18`); a folder keeps its whole name
/// (`Llama-3.1-8B/` -> `Llama-3.1-8B`).
pub fn classify(file_name: &OsStr, is_dir: bool) -> Entry {
    let Some(s) = file_name.to_str() else {
        return Entry::Refused {
            reason: format!("{file_name:?} is not valid UTF-8"),
        };
    };
    if is_temporary(s) {
        return Entry::Ignored;
    }
    if !is_dir && let Some(name) = s.strip_suffix(SIDECAR_SUFFIX) {
        return match check_name(name) {
            Ok(()) => Entry::Sidecar {
                name: name.to_string(),
            },
            Err(reason) => Entry::Refused { reason },
        };
    }
    let name = if is_dir {
        s
    } else {
        s.split('.').next().unwrap_or(s)
    };
    match check_name(name) {
        Ok(()) => Entry::Artifact {
            name: name.to_string(),
        },
        Err(reason) => Entry::Refused {
            reason: format!("{s:?} gives model name {name:?}, which {reason}"),
        },
    }
}

/// Checks that `name` can safely be a folder under the store and an argument on a
/// command line: not empty, at most 255 bytes, no `/`, `\`, control characters, no
/// leading `.` or `-`, no leading or trailing whitespace. Returns the reason when not.
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
    if let Some(c) = name
        .chars()
        .find(|c| c.is_control() || *c == '/' || *c == '\\')
    {
        return Err(format!("contains {c:?}"));
    }
    Ok(())
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
    fn name_is_up_to_first_dot() {
        assert_eq!(c("resnet18.pt"), art("resnet18"));
        assert_eq!(c("resnet18.best.pth"), art("resnet18"));
        assert_eq!(c("model"), art("model"));
        assert_eq!(c("chest_xray_densenet.pth"), art("chest_xray_densenet"));
        assert_eq!(c("모델.pt"), art("모델"));
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
        assert!(check_name(&"x".repeat(256)).is_err());
        assert!(check_name(&"x".repeat(255)).is_ok());
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
