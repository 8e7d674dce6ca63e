//! Settings: `config/modelreg.yaml` over the embedded default, validated once into a [`Config`].
//!
//! The rest of the crate takes `&Config` and never re-checks. The embedded default *is*
//! `config/modelreg.yaml` from the repository, so the shipped file and the built-in
//! defaults cannot drift apart. The file's format, parsing and validation are in `file`;
//! how `best` reads its settings in `best`; the published settings every task reads, and
//! what a reload may change, in `settings`.
//!
//! The embedded default *is* `config/modelreg.yaml` from the repository, so the shipped
//! file and the built-in defaults cannot drift apart. The file's format, parsing and
//! validation are in `file`; how `best` reads its settings in `best`; the published
//! settings every task reads, and what a reload may change, in `settings`.

mod best;
mod deliver;
mod events;
mod file;
mod http;
mod settings;
mod team;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

pub use best::{BestPolicy, Direction};
pub use deliver::{Delivering, EventFilter, HookConfig, Retry, StartAt, WebhookConfig};
pub use events::EventsConfig;
pub use http::{
    DEFAULT_BODY_MIN_RATE, DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_UPLOAD, HttpConfig, TlsFiles,
};
pub use settings::Settings;
pub use team::TeamConfig;

/// The default settings, identical to the repository's `config/modelreg.yaml`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/modelreg.yaml");

/// Where a config file is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "config/modelreg.yaml";

/// Where the settings came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// No file: the embedded default.
    Embedded,
    /// This file, merged over the embedded default.
    File(PathBuf),
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::Embedded => f.write_str("(embedded default)"),
            ConfigSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// How the inbox is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchMode {
    /// inotify, or polling on network filesystems and when inotify fails.
    Auto,
    /// inotify only; failing to set it up stops the daemon.
    Inotify,
    /// Polling only.
    Poll,
}

/// The validated settings. Paths are absolute.
#[derive(Debug, Clone)]
pub struct Config {
    /// The registry root every relative path is resolved against.
    pub root: PathBuf,
    /// Where these settings came from (re-read on SIGHUP).
    pub source: ConfigSource,
    /// The watched inbox.
    pub inbox: PathBuf,
    /// The immutable store.
    pub store: PathBuf,
    /// The catalog file.
    pub registry: PathBuf,
    /// The control socket.
    pub socket: PathBuf,
    /// A group given read-write access to the socket (mode 0660); none: owner only.
    pub socket_group: Option<String>,
    /// Quiet period before an artifact counts as complete.
    pub settle: Duration,
    /// How often the whole inbox is re-scanned to catch what the kernel never reported.
    pub reconcile_interval: Duration,
    /// How long registry.yaml may lag behind the journal while changes are pending: it
    /// is rewritten at most this often (and at shutdown). Zero: after every commit.
    pub registry_write_interval: Duration,
    /// How the inbox is watched.
    pub watch: WatchMode,
    /// The poll watcher's interval.
    pub poll_interval: Duration,
    /// Whether symbolic links that lead out of the inbox are followed.
    pub follow_symlinks: bool,
    /// How `best` is decided.
    pub best: BestPolicy,
    /// `gc`: newest versions kept per model ("*": any other model).
    pub retention: BTreeMap<String, u32>,
    /// The log filter used when RUST_LOG is not set.
    pub log_level: String,
    /// Log lines as JSON objects instead of text.
    pub log_json: bool,
    /// The HTTP API, when `http.listen` is set (off by default).
    pub http: Option<HttpConfig>,
    /// Keep the Hugging Face cache view `<root>/hf` in step with the catalog
    /// (`hfcache`); off: the view is removed.
    pub hf_cache: bool,
    /// Read each new version's headers for facts and Trainer metrics (`extract:`,
    /// docs/extraction.md).
    pub extract: bool,
    /// How much of the event log is kept (`events:`).
    pub events: EventsConfig,
    /// Exec hooks run for events (`hooks:`, docs/events.md).
    pub hooks: Vec<HookConfig>,
    /// Webhook endpoints posted events (`webhooks:`, docs/events.md).
    pub webhooks: Vec<WebhookConfig>,
    /// Team mode (`catalog:` and `blobs:`, docs/team.md); `None`: local mode.
    pub team: Option<TeamConfig>,
}

impl Config {
    /// Loads the settings for `root`: from `explicit` when given (it must exist), else
    /// from `<root>/config/modelreg.yaml` when present, else the embedded default.
    pub fn load(root: &Path, explicit: Option<&Path>) -> Result<Config> {
        let root = file::absolute(root)?;
        let path = match explicit {
            Some(p) => Some(if p.is_absolute() {
                p.to_path_buf()
            } else {
                std::env::current_dir()
                    .map_err(|e| Error::io("read working directory", ".", e))?
                    .join(p)
            }),
            None => {
                let p = root.join(DEFAULT_CONFIG_PATH);
                p.exists().then_some(p)
            }
        };
        match path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(&p).map_err(|e| Error::io("read config", &p, e))?;
                Config::from_yaml(&root, &text, ConfigSource::File(p))
            }
            None => Config::from_yaml(&root, "", ConfigSource::Embedded),
        }
    }

    /// Parses `text` (may be empty), merges it over the embedded default and validates.
    pub fn from_yaml(root: &Path, text: &str, source: ConfigSource) -> Result<Config> {
        let shown = source.to_string();
        let raw = file::parse_raw(&shown, text)?;
        let base = file::parse_raw("(embedded default)", EMBEDDED_DEFAULT)?;
        file::validate(root, raw.or(base), source)
    }

    /// The event log's folder: `events/` beside registry.yaml.
    pub fn events_dir(&self) -> PathBuf {
        self.registry.parent().unwrap_or(&self.root).join("events")
    }

    /// A path under the root, shown relative to it when possible (for registry.yaml).
    pub fn relative<'a>(&self, p: &'a Path) -> std::borrow::Cow<'a, str> {
        match p.strip_prefix(&self.root) {
            Ok(rel) => rel.to_string_lossy(),
            Err(_) => p.to_string_lossy(),
        }
    }
}

/// Settings for the root `/r` from `text` over the embedded default, as unit tests use them.
#[cfg(test)]
fn test_config(text: &str) -> Result<Config> {
    Config::from_yaml(Path::new("/r"), text, ConfigSource::Embedded)
}
