//! Typed answers: the `result` of every request, built by the server, read by the client.

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::registry::{AliasMove, BestBy, Changed, Kind, Metadata};

/// A stored file in an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Absolute path.
    pub path: String,
    /// Hex SHA-256.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
}

/// One version in an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The model.
    pub name: String,
    /// `vN`.
    pub version: String,
    /// N.
    pub number: u32,
    /// File or folder.
    pub kind: Kind,
    /// Absolute path to open: the file of a single-file version, the folder otherwise.
    pub path: String,
    /// Absolute path of the version folder.
    pub dir: String,
    /// Every stored file.
    pub files: Vec<FileInfo>,
    /// Total bytes.
    pub size: u64,
    /// The inbox entry it came from, relative to the root.
    pub source: String,
    /// When it was registered.
    pub registered_at: String,
    /// Metrics.
    pub metrics: crate::registry::Metrics,
    /// Free metadata.
    pub metadata: Metadata,
    /// Where each metric came from when not the sidecar (see the catalog's `Version`).
    #[serde(
        default,
        skip_serializing_if = "crate::registry::compact::SortedMap::is_empty"
    )]
    pub metric_sources: crate::registry::compact::SortedMap<String>,
    /// Facts read from the artifact's headers at registration.
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    pub extracted: Metadata,
    /// Where it came from: user, host, source path and mtime, commit, run id.
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    pub provenance: Metadata,
    /// When the metrics were last changed by a sidecar edit, if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_updated_at: Option<String>,
    /// live, deprecated or removed.
    #[serde(default = "live")]
    pub state: String,
    /// Aliases pointing to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Why it was deprecated or removed, when and by whom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark: Option<crate::registry::Mark>,
    /// For `get ... best`: the metric and direction compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_by: Option<BestBy>,
    /// For `get`: the direction the daemon's settings give each of the version's metrics
    /// (`max`: higher is better), so that a client (`modelreg diff`) marks a change
    /// better or worse as `best` would compare it. Absent from older daemons' answers.
    #[serde(
        default,
        skip_serializing_if = "crate::registry::compact::SortedMap::is_empty"
    )]
    pub directions: crate::registry::compact::SortedMap<crate::config::Direction>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn live() -> String {
    "live".into()
}

/// Something waiting in the inbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Waiting {
    /// The model name.
    pub name: String,
    /// Its inbox entries.
    pub entries: Vec<String>,
    /// settling, writing, registering, blocked or retrying.
    pub state: String,
    /// Seconds since it entered its current `state` (not since it was first seen).
    pub since_secs: f64,
    /// Why it waits (every state: the open file, the temporary, the sidecar error, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// While registering: bytes copied so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<u64>,
    /// While registering: bytes to copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    /// While registering: bytes per second so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_bytes_per_sec: Option<f64>,
    /// While registering: seconds left at that rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_secs: Option<f64>,
}

/// A problem that lasts until its cause is fixed (an invalid sidecar, a refused name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The path concerned.
    pub path: String,
    /// What is wrong and what to do.
    pub message: String,
    /// Since when.
    pub since: String,
    /// When it was last recorded (nanoseconds since the epoch; not on the wire): a
    /// `wait` trusts it only when it is newer than the entry it waits for.
    #[serde(skip)]
    pub recorded_ns: i128,
}

/// A past error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentError {
    /// When.
    pub at: String,
    /// What.
    pub message: String,
}

/// The `status` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// The daemon's version.
    pub version: String,
    /// Its process id.
    pub pid: u32,
    /// Seconds since start.
    pub uptime_secs: f64,
    /// The registry root.
    pub root: String,
    /// The config source.
    pub config: String,
    /// The inbox.
    pub inbox: String,
    /// The store (absent from daemons before it was added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// How the inbox is watched (inotify, or poll and why).
    pub watch: String,
    /// Where the HTTP API listens (`http://127.0.0.1:8080`), when `http.listen` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// The settle period in seconds.
    pub settle_secs: f64,
    /// Number of models.
    pub models: usize,
    /// Number of versions, removed ones not counted.
    pub versions: usize,
    /// Versions registered since start.
    pub registered_since_start: u64,
    /// Bytes of new versions' files already stored for their model, hard-linked instead
    /// of stored again (dedup), since start.
    #[serde(default)]
    pub dedup_saved_bytes: u64,
    /// What waits in the inbox.
    pub waiting: Vec<Waiting>,
    /// Current problems.
    pub problems: Vec<Problem>,
    /// The last errors, newest last.
    pub recent_errors: Vec<RecentError>,
    /// The last changes made through the socket (aliases, removals), newest last.
    #[serde(default)]
    pub recent_changes: Vec<RecentError>,
    /// Exec hooks and webhooks (`hooks:`, `webhooks:`): how far each has got.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deliveries: Vec<Delivery>,
    /// While the Hugging Face cache view (`<root>/hf`) is checked model by model after a
    /// start or a reload: the models still to check. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf_cache_checking: Option<usize>,
    /// Team mode (`catalog:` and `blobs:`): how current this host's catalog is, and the
    /// orphan blob collector. Absent in local mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<TeamStatus>,
}

/// The `team` part of `status` (docs/team.md, "When an engine is down").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeamStatus {
    /// This daemon's name in the shared catalog (`<host name>:<root>`).
    pub host: String,
    /// The catalog's server (socket or host:port, database, user).
    pub catalog: String,
    /// The blob store (`s3://bucket/prefix at ENDPOINT` or `folder PATH`).
    pub blobs: String,
    /// The last change of the shared catalog this host applied (absent before the
    /// first read of the catalog).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_seq: Option<u64>,
    /// How old what this host answers is: 0 while it follows the catalog (listening, in
    /// step); while it cannot, the seconds since it last was in step. Absent before the
    /// first read of the catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_age_secs: Option<f64>,
    /// While the follower cannot reach the catalog: for how long, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_unreachable_secs: Option<f64>,
    /// Blobs no version names are collected once older than this (`blobs_grace:`).
    pub blobs_grace_secs: f64,
    /// Orphan blobs and upload leftovers this host collected since start.
    pub orphans_collected: u64,
    /// Their bytes.
    pub orphan_bytes_collected: u64,
    /// Seconds since this host's last sweep for orphans finished (absent before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sweep_secs_ago: Option<f64>,
}

/// How far one exec hook or webhook has got (a row of `status`, docs/events.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Its name in the settings (its id).
    pub name: String,
    /// `hook` or `webhook`.
    pub kind: String,
    /// The command's program, or the URL.
    pub target: String,
    /// Every event up to this seq has been delivered (or skipped, or did not match).
    pub delivered: u64,
    /// Events logged after `delivered` (matching or not).
    #[serde(default)]
    pub pending: u64,
    /// Events skipped since start after their retries ran out.
    #[serde(default)]
    pub skipped: u64,
    /// The last failure, while retrying or after the last skip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When that failure happened (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<String>,
    /// While the current event keeps failing: since when (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrying_since: Option<String>,
    /// Attempts made at the current event (0, and not on the wire, when none is
    /// failing).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// Team mode only: which host delivers it now (`this host`, or the host named in the
    /// catalog's `deliveries` row), or why this one cannot tell (the catalog unreachable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_by: Option<String>,
}

/// The `ping` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// Always true.
    pub pong: bool,
    /// The daemon's version.
    pub version: String,
}

/// The `wait` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Waited {
    /// The version did not exist when the request arrived.
    pub created: bool,
    /// The version the entry is.
    pub version: VersionInfo,
}

/// One HTTP API token as `token_list` shows it: never its secret or hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Its name.
    pub name: String,
    /// `read` or `write`.
    pub scope: String,
    /// When it was created (RFC 3339, UTC).
    pub created: String,
}

/// The `token_create` answer: the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenCreated {
    /// The new token's name, scope and creation time.
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The secret to send as `Authorization: Bearer <token>`.
    pub token: String,
}

/// The `token_list` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenList {
    /// Every token, oldest first.
    pub tokens: Vec<TokenInfo>,
}

/// The `history` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// The model.
    pub name: String,
    /// Where each alias points now (`vN`).
    pub aliases: BTreeMap<String, String>,
    /// Every move, oldest first.
    pub history: Vec<AliasMove>,
}

/// The `alias_set` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasSet {
    /// The model.
    pub name: String,
    /// The alias.
    pub alias: String,
    /// Where it points now (`vN`).
    pub version: String,
    /// Where it pointed before (`null`: it did not exist).
    pub from: Option<String>,
    /// It already pointed there: nothing changed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unchanged: bool,
}

/// The `alias_remove` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasRemoved {
    /// The model.
    pub name: String,
    /// The alias.
    pub alias: String,
    /// Where it pointed (`vN`).
    pub removed: String,
}

/// The `rollback` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolledBack {
    /// The model.
    pub name: String,
    /// The alias.
    pub alias: String,
    /// Where it points now (`vN`).
    pub version: String,
    /// Where it pointed (`vN`).
    pub from: String,
}

/// The `deprecate` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deprecated {
    /// The model.
    pub name: String,
    /// The version (`vN`).
    pub version: String,
    /// Always true.
    pub deprecated: bool,
}

/// The `rm` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    /// The model.
    pub name: String,
    /// The version (`vN`).
    pub version: String,
    /// Always true.
    pub removed: bool,
    /// The aliases that pointed to it and were dropped (`force`).
    pub aliases_dropped: Vec<String>,
    /// The bytes its removal frees: each of its files counted once per inode, and only
    /// when no version that stays shares it (dedup hard-links equal files).
    #[serde(default)]
    pub freed: u64,
}

/// One version in a `gc` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcVersion {
    /// The model.
    pub name: String,
    /// The version (`vN`).
    pub version: String,
    /// Its bytes (files it shares with other versions included; see `bytes`).
    pub size: u64,
}

/// The `gc` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Only listed, nothing removed.
    pub dry_run: bool,
    /// What was (or would be) removed.
    pub versions: Vec<GcVersion>,
    /// The bytes freed (or that would be): each removed file counted once per inode, and
    /// only when no version that stays shares it (dedup hard-links equal files).
    pub bytes: u64,
}

/// The `compact` answer: registry.yaml was written whole and the journal emptied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compacted {
    /// registry.yaml's path.
    pub registry: String,
    /// The last journal record it includes (its `journal_seq`).
    pub journal_seq: u64,
}

/// The answer to a change the registrar made: the answer of its request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ChangeAnswer {
    /// `alias_set`.
    AliasSet(AliasSet),
    /// `alias_remove`.
    AliasRemoved(AliasRemoved),
    /// `rollback`.
    RolledBack(RolledBack),
    /// `deprecate`.
    Deprecated(Deprecated),
    /// `rm`.
    Removed(Removed),
    /// `gc`.
    Gc(GcReport),
    /// `compact`.
    Compacted(Compacted),
    /// `register`: the version the file handed over is (the server answers it whole).
    Registered {
        /// Its number.
        number: u32,
        /// Whether it was made by this request (not identical to the newest version).
        created: bool,
    },
}

impl ChangeAnswer {
    /// The answer for what a change rule did to model `name`.
    pub fn of(name: &str, changed: Changed) -> ChangeAnswer {
        let name = name.to_string();
        let v = |n: u32| format!("v{n}");
        match changed {
            Changed::AliasSet {
                alias,
                to,
                from,
                unchanged,
            } => ChangeAnswer::AliasSet(AliasSet {
                name,
                alias,
                version: v(to),
                from: from.map(v),
                unchanged,
            }),
            Changed::AliasRemoved { alias, was } => ChangeAnswer::AliasRemoved(AliasRemoved {
                name,
                alias,
                removed: v(was),
            }),
            Changed::RolledBack { alias, from, to } => ChangeAnswer::RolledBack(RolledBack {
                name,
                alias,
                version: v(to),
                from: v(from),
            }),
            Changed::Deprecated { version, .. } => ChangeAnswer::Deprecated(Deprecated {
                name,
                version: v(version),
                deprecated: true,
            }),
            Changed::Removed {
                version,
                aliases_dropped,
            } => ChangeAnswer::Removed(Removed {
                name,
                version: v(version),
                removed: true,
                aliases_dropped,
                freed: 0,
            }),
        }
    }
}

// `verify`'s report: built by verify (the daemon's and `verify --offline`), read by the
// client.

/// What kind of problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A file the catalog names is gone.
    Missing,
    /// A stored file's size or SHA-256 differs from the catalog.
    Modified,
    /// A file or folder in the store that the catalog does not name.
    Extra,
    /// A stored file could not be read.
    Unreadable,
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyProblem {
    /// What is wrong.
    pub kind: ProblemKind,
    /// The absolute path concerned.
    pub path: String,
    /// Details: the model and version, the expected and found hashes.
    pub detail: String,
}

/// The outcome of a verification.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Versions checked.
    pub versions: usize,
    /// Files re-hashed.
    pub files: usize,
    /// Bytes re-hashed.
    pub bytes: u64,
    /// Team mode: versions with files not on this host yet (registered on another host,
    /// never asked for here): their blobs the shared catalog names are fetched on
    /// demand, so they are not problems. Always 0 outside team mode.
    #[serde(default)]
    pub not_fetched: usize,
    /// Team mode: the files of those versions not on this host yet.
    #[serde(default)]
    pub not_fetched_files: usize,
    /// Everything that is not as the catalog says.
    pub problems: Vec<VerifyProblem>,
    /// `verify --catalog --blobs --repair`: the blobs that were missing or damaged and
    /// were uploaded again from a good copy on this host (each as the problem it was,
    /// its detail saying from where). Absent (empty) otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repaired: Vec<VerifyProblem>,
}
