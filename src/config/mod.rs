//! Settings: `config/modelreg.yaml` parsed with serde, merged over the embedded default,
//! then validated once into a [`Config`] that the rest of the crate takes as `&Config`.
//!
//! The embedded default *is* `config/modelreg.yaml` from the repository, so the shipped
//! file and the built-in defaults cannot drift apart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, ParseError, Result};

/// The default settings, identical to the repository's `config/modelreg.yaml`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/modelreg.yaml");

/// Where a config file is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "config/modelreg.yaml";

/// The longest path a Unix socket address can hold (sun_path is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The settings file as written: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    inbox: Option<String>,
    store: Option<String>,
    registry: Option<String>,
    socket: Option<String>,
    socket_group: Option<String>,
    settle: Option<String>,
    reconcile_interval: Option<String>,
    watch: Option<String>,
    poll_interval: Option<String>,
    follow_symlinks: Option<bool>,
    default_metric: Option<String>,
    model_metrics: Option<BTreeMap<String, String>>,
    minimize: Option<Vec<String>>,
    maximize: Option<Vec<String>>,
    retention: Option<BTreeMap<String, u32>>,
    log_level: Option<String>,
    log_format: Option<String>,
}

impl RawConfig {
    /// Fills every key missing here from `base`.
    fn or(self, base: RawConfig) -> RawConfig {
        RawConfig {
            inbox: self.inbox.or(base.inbox),
            store: self.store.or(base.store),
            registry: self.registry.or(base.registry),
            socket: self.socket.or(base.socket),
            socket_group: self.socket_group.or(base.socket_group),
            settle: self.settle.or(base.settle),
            reconcile_interval: self.reconcile_interval.or(base.reconcile_interval),
            watch: self.watch.or(base.watch),
            poll_interval: self.poll_interval.or(base.poll_interval),
            follow_symlinks: self.follow_symlinks.or(base.follow_symlinks),
            default_metric: self.default_metric.or(base.default_metric),
            model_metrics: self.model_metrics.or(base.model_metrics),
            minimize: self.minimize.or(base.minimize),
            maximize: self.maximize.or(base.maximize),
            retention: self.retention.or(base.retention),
            log_level: self.log_level.or(base.log_level),
            log_format: self.log_format.or(base.log_format),
        }
    }
}

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

/// Whether higher or lower values of a metric are better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Higher is better (accuracy, f1, auroc, ...).
    Max,
    /// Lower is better (loss, error, rmse, ...).
    Min,
}

impl Direction {
    /// Parses `min` or `max`.
    pub fn parse(s: &str) -> Option<Direction> {
        match s {
            "max" => Some(Direction::Max),
            "min" => Some(Direction::Min),
            _ => None,
        }
    }

    /// `min` or `max`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Max => "max",
            Direction::Min => "min",
        }
    }
}

/// How `best` picks its metric and direction.
#[derive(Debug, Clone, PartialEq)]
pub struct BestPolicy {
    /// The metric used when neither the request nor the model's default names one.
    pub default_metric: String,
    /// Per-model default metric.
    pub model_metrics: BTreeMap<String, String>,
    /// Names (and name endings) of metrics where lower is better.
    pub minimize: Vec<String>,
    /// Exceptions that are maximised although they match `minimize`.
    pub maximize: Vec<String>,
}

impl BestPolicy {
    /// The metric `best` uses for `model` when the request names none.
    pub fn metric_for(&self, model: &str) -> &str {
        self.model_metrics
            .get(model)
            .map(String::as_str)
            .unwrap_or(&self.default_metric)
    }

    /// The configured direction of `metric`: minimised when its name is, or ends with
    /// (after `_`, `-` or `.`), one of the `minimize` words, unless listed in `maximize`.
    pub fn direction_of(&self, metric: &str) -> Direction {
        if self.maximize.iter().any(|m| m == metric) {
            return Direction::Max;
        }
        let minimised = self.minimize.iter().any(|word| {
            metric == word
                || metric.strip_suffix(word.as_str()).is_some_and(|head| {
                    head.ends_with('_') || head.ends_with('-') || head.ends_with('.')
                })
        });
        if minimised {
            Direction::Min
        } else {
            Direction::Max
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
}

impl Config {
    /// Loads the settings for `root`: from `explicit` when given (it must exist), else
    /// from `<root>/config/modelreg.yaml` when present, else the embedded default.
    pub fn load(root: &Path, explicit: Option<&Path>) -> Result<Config> {
        let root = absolute(root)?;
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
        let raw = parse_raw(&shown, text)?;
        let base = parse_raw("(embedded default)", EMBEDDED_DEFAULT)?;
        validate(root, raw.or(base), source)
    }
}

fn parse_raw(path: &str, text: &str) -> Result<RawConfig> {
    if text.trim().is_empty() {
        return Ok(RawConfig::default());
    }
    // An empty document or one holding only comments parses as null: take it as empty.
    let value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| ParseError::from_yaml(path, &e))?;
    if value.is_null() {
        return Ok(RawConfig::default());
    }
    serde_yaml::from_str(text).map_err(|e| ParseError::from_yaml(path, &e).into())
}

fn absolute(p: &Path) -> Result<PathBuf> {
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io("read working directory", ".", e))?
            .join(p)
    };
    // Normalise `.` and `..` lexically so that paths shown to users read cleanly.
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}

fn validate(root: &Path, raw: RawConfig, source: ConfigSource) -> Result<Config> {
    let shown = source.to_string();
    let bad = |key: &str, reason: String| Error::Config {
        path: shown.clone(),
        key: key.to_string(),
        reason,
    };
    // Every key is present after merging with the embedded default, which a unit test
    // checks; a missing one here is a bug in the embedded file.
    let need = |key: &str, v: Option<String>| {
        v.ok_or_else(|| Error::Other(format!("embedded default lacks `{key}`")))
    };
    let path_of = |key: &str, v: Option<String>| -> Result<PathBuf> {
        let v = need(key, v)?;
        if v.trim().is_empty() {
            return Err(bad(key, "must not be empty".into()));
        }
        absolute(&root.join(v))
    };
    let duration = |key: &str, v: Option<String>, min: Duration, max: Duration| {
        let v = need(key, v)?;
        let d = humantime::parse_duration(v.trim()).map_err(|e| {
            bad(
                key,
                format!("`{v}` is not a duration ({e}); write e.g. 2s or 500ms"),
            )
        })?;
        if d < min || d > max {
            return Err(bad(
                key,
                format!(
                    "{v} is out of range ({} to {})",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            ));
        }
        Ok(d)
    };

    let inbox = path_of("inbox", raw.inbox)?;
    let store = path_of("store", raw.store)?;
    let registry = path_of("registry", raw.registry)?;
    let socket = path_of("socket", raw.socket)?;
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(bad(
            "socket",
            format!(
                "{} is longer than the {MAX_SOCKET_PATH} bytes a Unix socket path can hold",
                socket.display()
            ),
        ));
    }
    if store.starts_with(&inbox) || inbox.starts_with(&store) {
        return Err(bad(
            "store",
            "the store and the inbox must not contain each other".into(),
        ));
    }
    let settle = duration(
        "settle",
        raw.settle,
        Duration::from_millis(50),
        Duration::from_secs(3600),
    )?;
    let reconcile_interval = duration(
        "reconcile_interval",
        raw.reconcile_interval,
        Duration::from_secs(1),
        Duration::from_secs(7 * 24 * 3600),
    )?;
    let watch = match need("watch", raw.watch)?.as_str() {
        "auto" => WatchMode::Auto,
        "inotify" => WatchMode::Inotify,
        "poll" => WatchMode::Poll,
        other => {
            return Err(bad(
                "watch",
                format!("`{other}` is not auto, inotify or poll"),
            ));
        }
    };
    let poll_interval = duration(
        "poll_interval",
        raw.poll_interval,
        Duration::from_millis(50),
        Duration::from_secs(3600),
    )?;
    let default_metric = need("default_metric", raw.default_metric)?;
    if default_metric.trim().is_empty() {
        return Err(bad("default_metric", "must not be empty".into()));
    }
    let log_level = need("log_level", raw.log_level)?;
    if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
        return Err(bad(
            "log_level",
            format!("`{log_level}` is not a log level (error, warn, info, debug, trace)"),
        ));
    }
    Ok(Config {
        root: root.to_path_buf(),
        source,
        inbox,
        store,
        registry,
        socket,
        socket_group: Some(need("socket_group", raw.socket_group)?.trim().to_string())
            .filter(|g| !g.is_empty()),
        settle,
        reconcile_interval,
        watch,
        poll_interval,
        follow_symlinks: raw
            .follow_symlinks
            .ok_or_else(|| Error::Other("embedded default lacks `follow_symlinks`".into()))?,
        best: BestPolicy {
            default_metric,
            model_metrics: raw.model_metrics.unwrap_or_default(),
            minimize: raw.minimize.unwrap_or_default(),
            maximize: raw.maximize.unwrap_or_default(),
        },
        retention: {
            let r = raw.retention.unwrap_or_default();
            if let Some((m, _)) = r.iter().find(|(_, n)| **n == 0) {
                return Err(bad("retention", format!("{m}: keep at least 1 version")));
            }
            r
        },
        log_level,
        log_json: match need("log_format", raw.log_format)?.as_str() {
            "text" => false,
            "json" => true,
            other => return Err(bad("log_format", format!("`{other}` is not text or json"))),
        },
    })
}

/// The settings every task reads, published whole: a reload replaces the value, and each
/// task reads the current one at the moment it uses a setting (a request, a batch, a
/// `gc`), so no task keeps settings from start-up and no list of "reloadable keys" exists.
/// What cannot change while running is decided in one place, [`Config::reloaded`].
#[derive(Debug)]
pub struct Settings {
    tx: tokio::sync::watch::Sender<Arc<Config>>,
}

impl Settings {
    /// Publishes `config` as the first settings.
    pub fn new(config: Config) -> Settings {
        Settings {
            tx: tokio::sync::watch::Sender::new(Arc::new(config)),
        }
    }

    /// The settings now (an `Arc` clone; never blocks on a reload for long).
    pub fn current(&self) -> Arc<Config> {
        self.tx.borrow().clone()
    }

    /// Replaces the settings every task reads from now on.
    pub fn publish(&self, config: Config) {
        self.tx.send_replace(Arc::new(config));
    }

    /// A receiver woken at each publication, for a task that must act on a change (the
    /// registrar moves `best` links, the settler takes the new settle period).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<Config>> {
        self.tx.subscribe()
    }
}

impl Config {
    /// The settings to run with after a reload that read `new`: `new`, except the
    /// start-up settings, which keep their running value (`self`); the names of those that
    /// `new` changes are returned, to be reported as needing a restart.
    ///
    /// Start-up settings are those set up once: the paths and the socket (bound, watched,
    /// locked), how the inbox is watched (`watch`, `poll_interval`), the rescan timer
    /// (`reconcile_interval`), `follow_symlinks` (the settler's and the copier's view of
    /// the inbox) and `log_format` (the log writer). Every other setting is live. The
    /// destructuring below names every field, so a new setting does not compile until it
    /// is placed on one side.
    pub fn reloaded(&self, new: Config) -> (Config, Vec<&'static str>) {
        let Config {
            root: _,
            source,
            inbox,
            store,
            registry,
            socket,
            socket_group,
            settle,
            reconcile_interval,
            watch,
            poll_interval,
            follow_symlinks,
            best,
            retention,
            log_level,
            log_json,
        } = new;
        let mut restart = Vec::new();
        let mut keep = |key: &'static str, changed: bool| {
            if changed {
                restart.push(key);
            }
        };
        keep("inbox", inbox != self.inbox);
        keep("store", store != self.store);
        keep("registry", registry != self.registry);
        keep("socket", socket != self.socket);
        keep("socket_group", socket_group != self.socket_group);
        keep("watch", watch != self.watch);
        keep("poll_interval", poll_interval != self.poll_interval);
        keep(
            "reconcile_interval",
            reconcile_interval != self.reconcile_interval,
        );
        keep("follow_symlinks", follow_symlinks != self.follow_symlinks);
        keep("log_format", log_json != self.log_json);
        let running = Config {
            root: self.root.clone(),
            source,
            inbox: self.inbox.clone(),
            store: self.store.clone(),
            registry: self.registry.clone(),
            socket: self.socket.clone(),
            socket_group: self.socket_group.clone(),
            settle,
            reconcile_interval: self.reconcile_interval,
            watch: self.watch,
            poll_interval: self.poll_interval,
            follow_symlinks: self.follow_symlinks,
            best,
            retention,
            log_level,
            log_json: self.log_json,
        };
        (running, restart)
    }
}

impl Config {
    /// A path under the root, shown relative to it when possible (for registry.yaml).
    pub fn relative<'a>(&self, p: &'a Path) -> std::borrow::Cow<'a, str> {
        match p.strip_prefix(&self.root) {
            Ok(rel) => rel.to_string_lossy(),
            Err(_) => p.to_string_lossy(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_sets_every_key() {
        let raw = parse_raw("embedded", EMBEDDED_DEFAULT).unwrap();
        let RawConfig {
            inbox,
            store,
            registry,
            socket,
            socket_group,
            settle,
            reconcile_interval,
            watch,
            poll_interval,
            follow_symlinks,
            default_metric,
            model_metrics,
            minimize,
            maximize,
            retention,
            log_level,
            log_format,
        } = raw;
        assert!(inbox.is_some() && store.is_some() && registry.is_some() && socket.is_some());
        assert!(socket_group.is_some());
        assert!(settle.is_some() && reconcile_interval.is_some() && follow_symlinks.is_some());
        assert!(watch.is_some() && poll_interval.is_some());
        assert!(default_metric.is_some() && model_metrics.is_some());
        assert!(minimize.is_some() && maximize.is_some() && log_level.is_some());
        assert!(log_format.is_some() && retention.is_some());
    }

    #[test]
    fn defaults_resolve_against_root() {
        let c = Config::from_yaml(Path::new("/srv/reg"), "", ConfigSource::Embedded).unwrap();
        assert_eq!(c.inbox, Path::new("/srv/reg/pretrained_models"));
        assert_eq!(c.store, Path::new("/srv/reg/models"));
        assert_eq!(c.registry, Path::new("/srv/reg/registry.yaml"));
        assert_eq!(c.socket, Path::new("/srv/reg/modelreg.sock"));
        assert_eq!(c.settle, Duration::from_secs(2));
        assert_eq!(c.best.default_metric, "accuracy");
    }

    #[test]
    fn file_overrides_some_keys() {
        let c = Config::from_yaml(
            Path::new("/r"),
            "settle: 300ms\nsocket: /run/modelreg/modelreg.sock\n",
            ConfigSource::File("/r/c.yaml".into()),
        )
        .unwrap();
        assert_eq!(c.settle, Duration::from_millis(300));
        assert_eq!(c.socket, Path::new("/run/modelreg/modelreg.sock"));
        assert_eq!(c.inbox, Path::new("/r/pretrained_models"));
    }

    #[test]
    fn comments_only_file_is_empty() {
        let c = Config::from_yaml(Path::new("/r"), "# nothing\n", ConfigSource::Embedded);
        assert!(c.is_ok());
    }

    #[test]
    fn unknown_key_names_line() {
        let e = Config::from_yaml(
            Path::new("/r"),
            "settle: 1s\nsetle: 2s\n",
            ConfigSource::File("/r/c.yaml".into()),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("/r/c.yaml:2:"), "{msg}");
        assert!(msg.contains("unknown field `setle`"), "{msg}");
    }

    #[test]
    fn bad_duration_names_key() {
        let e = Config::from_yaml(
            Path::new("/r"),
            "settle: soon\n",
            ConfigSource::File("/r/c.yaml".into()),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("settle: `soon` is not a duration"),
            "{e}"
        );
        let e = Config::from_yaml(Path::new("/r"), "settle: 1ms\n", ConfigSource::Embedded)
            .unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
    }

    #[test]
    fn store_inside_inbox_refused() {
        let e = Config::from_yaml(
            Path::new("/r"),
            "store: pretrained_models/models\n",
            ConfigSource::Embedded,
        )
        .unwrap_err();
        assert!(e.to_string().contains("must not contain each other"), "{e}");
    }

    #[test]
    fn direction_rules() {
        let c = Config::from_yaml(
            Path::new("/r"),
            "maximize: [neg_loss]\n",
            ConfigSource::Embedded,
        )
        .unwrap();
        let b = &c.best;
        assert_eq!(b.direction_of("accuracy"), Direction::Max);
        assert_eq!(b.direction_of("loss"), Direction::Min);
        assert_eq!(b.direction_of("val_loss"), Direction::Min);
        assert_eq!(b.direction_of("top1-error"), Direction::Min);
        assert_eq!(b.direction_of("glossary"), Direction::Max);
        assert_eq!(b.direction_of("neg_loss"), Direction::Max);
    }

    #[test]
    fn reload_keeps_start_up_settings_and_names_them() {
        let old = Config::from_yaml(Path::new("/r"), "", ConfigSource::Embedded).unwrap();
        let new = Config::from_yaml(
            Path::new("/r"),
            "watch: poll\nsocket: /run/m.sock\nsettle: 5s\nretention: {\"*\": 2}\ndefault_metric: loss\n",
            ConfigSource::Embedded,
        )
        .unwrap();
        let (running, restart) = old.reloaded(new);
        assert_eq!(restart, ["socket", "watch"]);
        assert_eq!(running.watch, old.watch);
        assert_eq!(running.socket, old.socket);
        assert_eq!(running.settle, Duration::from_secs(5));
        assert_eq!(running.retention.get("*"), Some(&2));
        assert_eq!(running.best.default_metric, "loss");
        let (_, restart) = old.reloaded(old.clone());
        assert!(restart.is_empty());
    }

    #[test]
    fn model_default_metric() {
        let c = Config::from_yaml(
            Path::new("/r"),
            "model_metrics: {xray: auroc}\n",
            ConfigSource::Embedded,
        )
        .unwrap();
        assert_eq!(c.best.metric_for("xray"), "auroc");
        assert_eq!(c.best.metric_for("other"), "accuracy");
    }
}
