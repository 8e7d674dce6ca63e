//! The blob store's errors: each names the store (endpoint and bucket, or folder), the key and the step.

use std::path::PathBuf;

/// What went wrong with a blob, said so that the message alone tells where to look.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The blobs setting cannot be used (scheme, bucket, option).
    #[error("blobs setting {given:?}: {reason}")]
    Config {
        /// The setting as given.
        given: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A SHA-256 argument that is not 64 lower-case hex digits (it would name no key).
    #[error("{given:?} is not a SHA-256: 64 lower-case hex digits expected")]
    BadDigest {
        /// The text given.
        given: String,
    },
    /// A request to the store failed: unreachable, refused, timed out, denied.
    #[error("blob store {store}: {step} {key}: {source}")]
    Store {
        /// The store ([`super::BlobStore::describe`]).
        store: String,
        /// What was being done: "HEAD", "upload part", "GET", ...
        step: &'static str,
        /// The object key or file.
        key: String,
        /// The cause, as the client library gives it.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The bytes are not those the key names: refused, nothing kept.
    #[error(
        "blob store {store}: {step} {key}: the bytes hash to sha256 {actual}, expected {expected}"
    )]
    Mismatch {
        /// The store.
        store: String,
        /// Where the mismatch was seen: "upload", "fetch", "read back".
        step: &'static str,
        /// The object key or file.
        key: String,
        /// The SHA-256 the blob must have.
        expected: String,
        /// The SHA-256 of the bytes seen.
        actual: String,
    },
    /// A blob or a file whose size is not the one expected.
    #[error("blob store {store}: {step} {key}: {actual} bytes, expected {expected}")]
    Size {
        /// The store.
        store: String,
        /// Where it was seen: "read file", "HEAD after upload", "fetch".
        step: &'static str,
        /// The object key or file.
        key: String,
        /// The size expected.
        expected: u64,
        /// The size seen.
        actual: u64,
    },
    /// The blob is not in the store.
    #[error("blob store {store}: {key}: not found")]
    NotFound {
        /// The store.
        store: String,
        /// The object key or file.
        key: String,
    },
    /// A local file (the source of an upload, the destination of a fetch) failed.
    #[error("{op} {path}: {source}")]
    Local {
        /// What was being done.
        op: &'static str,
        /// The local path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl BlobError {
    /// A local I/O error on `path`.
    pub(super) fn local(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        BlobError::Local {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Result of the blob store's operations.
pub type BlobResult<T> = std::result::Result<T, BlobError>;
