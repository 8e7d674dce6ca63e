//! The library's error types. Every variant says what failed and where (path, line,
//! operation), so the message can be shown to a user as it is.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Errors of the daemon and its building blocks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a named path failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A YAML file (config, registry) could not be parsed or is not valid.
    #[error("{0}")]
    Parse(#[from] ParseError),
    /// The configuration parsed but a value is not acceptable.
    #[error("{path}: {key}: {reason}")]
    Config {
        path: String,
        key: String,
        reason: String,
    },
    /// Another daemon holds the root.
    #[error("modelreg is already running on {root} (pid {pid})")]
    AlreadyRunning { root: PathBuf, pid: String },
    /// The operation was abandoned because the daemon is shutting down.
    #[error("cancelled: the daemon is shutting down")]
    Cancelled,
    /// A source file is not the one that was checked any more (replaced, written, or its
    /// path now leads elsewhere): nothing was kept, and it is looked at again.
    #[error("{0}")]
    SourceChanged(String),
    /// Anything else that must stop the daemon, with its reason.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Wraps an `io::Error` with the operation and the path it concerned.
    pub fn io(op: &'static str, path: impl AsRef<Path>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// The underlying `io::ErrorKind`, when this is an I/O error.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            Error::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}

/// A result with the library's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A file that failed to parse: the path, the position when known, and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The file, as the user would name it.
    pub path: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong, without the position.
    pub reason: String,
}

impl ParseError {
    /// Builds a parse error from a serde_yaml error, keeping its position.
    pub fn from_yaml(path: impl Into<String>, err: &serde_yaml::Error) -> Self {
        let loc = err.location();
        let mut reason = err.to_string();
        // serde_yaml appends " at line L column C" to its message; the position is kept
        // in its own fields so that it is printed once, in the path:line:column form.
        if let Some(i) = reason.find(" at line ") {
            reason.truncate(i);
        }
        ParseError {
            path: path.into(),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
            reason,
        }
    }

    /// A parse error with a position computed by the caller.
    pub fn at(path: impl Into<String>, line: Option<usize>, reason: impl Into<String>) -> Self {
        ParseError {
            path: path.into(),
            line,
            column: None,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ParseError {}
