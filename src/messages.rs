//! The messages the settler (watcher), the registrar (ingest) and the server exchange.
//!
//! They live below both actors so that neither imports the other: the watcher hands
//! [`Settled`] groups, [`RegistrarMsg::Present`] listings and registry checks to the
//! registrar, the registrar answers each group with an [`Outcome`] in a
//! [`SettlerMsg::Done`], and the server asks both (`status`, client changes).

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::inbox::Look;
use crate::protocol::{ChangeAnswer, Waiting};
use crate::registry::RegistryError;

/// A group whose entries have all been quiet for the settle period.
#[derive(Debug)]
pub struct Settled {
    /// The model name.
    pub name: String,
    /// Artifact entries (files or folders) as they were when found quiet.
    pub artifacts: Vec<(String, Look)>,
    /// The sidecar entry, if present.
    pub sidecar: Option<(String, Look)>,
    /// Entries of the group that no longer exist.
    pub gone: Vec<String>,
}

/// Messages to the registrar.
///
/// `J` is what the registrar's own copy jobs report when they finish: only the registrar
/// reads it, so it is a parameter here and the settler and the server never name it
/// (the registrar's module fixes it with a type alias).
#[derive(Debug)]
pub enum RegistrarMsg<J> {
    /// A group to register.
    Settled(Settled),
    /// Every top-level entry of the inbox after a rescan: sources not among them are
    /// forgotten.
    Present(BTreeSet<String>),
    /// A copy job finished.
    JobDone { name: String, result: J },
    /// A change asked for on the socket; answered once it is durable.
    Change {
        change: Change,
        uid: Option<u32>,
        reply: oneshot::Sender<ChangeResult>,
    },
    /// A complete file handed over on the socket (`register`).
    Handover(Box<Handover>),
    /// Bring every model's latest/best/alias links in line (start-up, reload).
    RefreshLinks,
    /// registry.yaml may have been deleted while running: write it again if so.
    CheckRegistry,
    /// Team mode: models as the shared catalog holds them, changed by other hosts
    /// (`None`: gone from it), to merge into this host's catalog, and the events of the
    /// changes read, to show once the merge is published.
    Remote(Vec<(String, Option<crate::registry::Model>)>, RemoteEvents),
}

/// Team mode: what the follower read of the team's event log with a batch of changes.
#[derive(Debug, Default)]
pub struct RemoteEvents {
    /// From the first snapshot: the oldest event the catalog keeps and the last given
    /// as of the snapshot.
    pub bounds: Option<(u64, u64)>,
    /// The events of the changes read, in seq order.
    pub events: Vec<crate::events::Event>,
}

/// A file handed over on the socket (`register`), or a folder uploaded over HTTP, to
/// become the next version of `name`.
#[derive(Debug)]
pub struct Handover {
    /// The model.
    pub name: String,
    /// What is handed over.
    pub files: HandedFiles,
    /// Metrics and metadata, when the request gave any (checked as a sidecar's).
    pub sidecar: Option<crate::sidecar::Sidecar>,
    /// Answered once the version is durable (or with why nothing was kept).
    pub reply: oneshot::Sender<HandoverResult>,
}

/// The bytes of a hand-over: one open file, or a folder the daemon extracted itself.
#[derive(Debug)]
pub enum HandedFiles {
    /// One file, by descriptor (`register`, a file upload).
    File {
        /// The stored file's name.
        filename: String,
        /// The descriptor received (a readable regular file, checked by the server).
        file: std::fs::File,
        /// Its state when it was received: the file as handed over, which the copy
        /// must find unchanged after it.
        stat: crate::inbox::FileStat,
        /// Its permission bits (the stored copy is never more readable).
        mode: u32,
    },
    /// A folder extracted by the daemon into `dir`, a private folder no user can write
    /// (never the inbox, so nothing a user put there is touched); the sender removes it
    /// once answered.
    Folder {
        /// The private folder.
        dir: std::path::PathBuf,
        /// Its files, sorted by path: (path inside the folder, state, permission bits).
        files: Vec<(String, crate::inbox::FileStat, u32)>,
    },
}

impl HandedFiles {
    /// Bytes in all.
    pub fn size(&self) -> u64 {
        match self {
            HandedFiles::File { stat, .. } => stat.size,
            HandedFiles::Folder { files, .. } => files.iter().map(|f| f.1.size).sum(),
        }
    }
}

/// The answer to a hand-over: the version (a [`ChangeAnswer::Registered`], or a refusal
/// of the commit), or why nothing was kept.
pub type HandoverResult = Result<ChangeResult, crate::protocol::ErrorBody>;

/// A change to the registry asked for by a client.
#[derive(Debug, Clone)]
pub enum Change {
    /// Point `alias` at version `version`.
    AliasSet {
        name: String,
        alias: String,
        version: u32,
    },
    /// Remove `alias`.
    AliasRemove { name: String, alias: String },
    /// Move `alias` back to where it pointed before its last move.
    Rollback { name: String, alias: String },
    /// Hide a version from latest and best.
    Deprecate {
        name: String,
        version: u32,
        reason: Option<String>,
    },
    /// Delete a version's files, keeping a tombstone.
    Remove {
        name: String,
        version: u32,
        reason: Option<String>,
        force: bool,
    },
    /// Apply the retention policy (of one model, or all).
    Gc { name: Option<String>, dry_run: bool },
    /// Write registry.yaml now, whole, and start an empty journal.
    Compact,
}

/// The answer to a change: what it did, or why it was refused.
pub type ChangeResult = std::result::Result<ChangeAnswer, RegistryError>;

/// How a group's registration ended, reported by the registrar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Registered, or nothing to do.
    Done,
    /// A file changed while it was being copied: settle again.
    Changed,
    /// It cannot go on until its inputs change (an invalid sidecar).
    Blocked(String),
    /// An I/O error; retried with backoff.
    Failed(String),
}

/// Messages to the settler other than file events.
#[derive(Debug)]
pub enum SettlerMsg {
    /// The registrar finished a group.
    Done { name: String, outcome: Outcome },
    /// Report what is waiting.
    Status(oneshot::Sender<Vec<Waiting>>),
    /// A new settle period (SIGHUP).
    SetSettle(Duration),
    /// Rescan the whole inbox (periodic reconciliation).
    Rescan(&'static str),
}
