//! The settings file: its keys as written, their parsing, and validation into a [`Config`].
//!
//! Every key is optional and unknown keys are refused; validation makes paths absolute.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{BestPolicy, Config, ConfigSource, WatchMode};
use crate::error::{Error, ParseError, Result};

/// The longest path a Unix socket address can hold (sun_path is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// `retention:` keys that are a rule's wording, not a model's name (`{keep_last: 2}`,
/// the form other tools use): refused with the map form shown, rather than kept as the
/// rule of a model of that name that gc never meets.
const RETENTION_RULE_WORDS: &[&str] = &[
    "keep_last",
    "keep_latest",
    "keep_newest",
    "keep",
    "keep_versions",
    "max_versions",
    "versions",
    "default",
];

/// The settings file as written: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
// Serialized only by a test, which looks for keys the embedded default leaves unset.
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    inbox: Option<String>,
    store: Option<String>,
    registry: Option<String>,
    socket: Option<String>,
    socket_group: Option<String>,
    settle: Option<String>,
    reconcile_interval: Option<String>,
    registry_write_interval: Option<String>,
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
    http: Option<super::http::RawHttp>,
    hf_cache: Option<bool>,
    extract: Option<bool>,
    events: Option<super::events::RawEvents>,
    hooks: Option<Vec<super::deliver::RawHook>>,
    webhooks: Option<Vec<super::deliver::RawWebhook>>,
    catalog: Option<String>,
    blobs: Option<String>,
    blobs_grace: Option<String>,
}

impl RawConfig {
    /// Fills every key missing here from `base`.
    pub(super) fn or(self, base: RawConfig) -> RawConfig {
        RawConfig {
            inbox: self.inbox.or(base.inbox),
            store: self.store.or(base.store),
            registry: self.registry.or(base.registry),
            socket: self.socket.or(base.socket),
            socket_group: self.socket_group.or(base.socket_group),
            settle: self.settle.or(base.settle),
            reconcile_interval: self.reconcile_interval.or(base.reconcile_interval),
            registry_write_interval: self
                .registry_write_interval
                .or(base.registry_write_interval),
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
            http: self.http.or(base.http),
            hf_cache: self.hf_cache.or(base.hf_cache),
            extract: self.extract.or(base.extract),
            events: match self.events {
                Some(e) => Some(e.or(base.events)),
                None => base.events,
            },
            hooks: self.hooks.or(base.hooks),
            webhooks: self.webhooks.or(base.webhooks),
            catalog: self.catalog.or(base.catalog),
            blobs: self.blobs.or(base.blobs),
            blobs_grace: self.blobs_grace.or(base.blobs_grace),
        }
    }
}

/// Parses the settings file `text` (`path` names it in errors); empty or comments only:
/// no keys set.
pub(super) fn parse_raw(path: &str, text: &str) -> Result<RawConfig> {
    if text.trim().is_empty() {
        return Ok(RawConfig::default());
    }
    // An empty document or one holding only comments parses as null: take it as empty.
    let value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| yaml_error(path, text, &e))?;
    if value.is_null() {
        return Ok(RawConfig::default());
    }
    serde_yaml::from_str(text).map_err(|e| yaml_error(path, text, &e).into())
}

/// A YAML error with its position; a duplicate key, which serde_yaml places at the start
/// of its map (1:1 for a top-level key), is placed at the key's second line instead.
fn yaml_error(path: &str, text: &str, err: &serde_yaml::Error) -> ParseError {
    let mut e = ParseError::from_yaml(path, err);
    const DUPLICATE: &str = "duplicate entry with key ";
    // Nested maps say where first: `http: duplicate entry with key "listen"`.
    if let Some(i) = e.reason.find(DUPLICATE) {
        let key = e.reason[i + DUPLICATE.len()..]
            .trim_matches('"')
            .to_string();
        let key = key.as_str();
        let from = e.line.unwrap_or(1);
        if let Some(line) = second_line_of_key(text, key, from) {
            e.line = Some(line);
            e.column = None;
        }
    }
    e
}

/// The 1-based line where `key:` appears the second time at the same indentation as its
/// first appearance at or after line `from`.
fn second_line_of_key(text: &str, key: &str, from: usize) -> Option<usize> {
    let mut first_indent = None;
    for (i, line) in text.lines().enumerate().skip(from.saturating_sub(1)) {
        let body = line.trim_start();
        let indent = line.len() - body.len();
        let body = body.trim_start_matches(['"', '\'']);
        let Some(rest) = body.strip_prefix(key) else {
            continue;
        };
        if !rest
            .trim_start_matches(['"', '\''])
            .trim_start()
            .starts_with(':')
        {
            continue;
        }
        match first_indent {
            None => first_indent = Some(indent),
            Some(f) if f == indent => return Some(i + 1),
            Some(_) => {}
        }
    }
    None
}

/// `p` made absolute against the working directory, `.` and `..` resolved lexically.
pub(super) fn absolute(p: &Path) -> Result<PathBuf> {
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

/// Checks every merged key and resolves the paths against `root`: the one place where a
/// setting is refused, naming the file, the key and why.
pub(super) fn validate(root: &Path, raw: RawConfig, source: ConfigSource) -> Result<Config> {
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
    let registry_write_interval = duration(
        "registry_write_interval",
        raw.registry_write_interval,
        Duration::ZERO,
        Duration::from_secs(3600),
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
    if !is_log_level(&log_level) {
        return Err(bad(
            "log_level",
            format!(
                "`{log_level}` is not a log level (error, warn, info, debug, trace, off, or directives such as `info,modelreg=debug`)"
            ),
        ));
    }
    let (hooks, webhooks) = super::deliver::validate(
        &shown,
        root,
        raw.hooks.unwrap_or_default(),
        raw.webhooks.unwrap_or_default(),
    )?;
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
        registry_write_interval,
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
            if let Some((rule, n)) = r
                .iter()
                .find(|(k, _)| RETENTION_RULE_WORDS.contains(&k.as_str()))
            {
                return Err(bad(
                    "retention",
                    format!(
                        "`{rule}: {n}` would be a rule for a model named {rule}: retention maps model \
                         names to how many of their newest versions to keep, \"*\" for every model \
                         not named; write retention: {{\"*\": {n}}} (or {{resnet18: {n}}} for one \
                         model)"
                    ),
                ));
            }
            r
        },
        log_level,
        log_json: match need("log_format", raw.log_format)?.as_str() {
            "text" => false,
            "json" => true,
            other => return Err(bad("log_format", format!("`{other}` is not text or json"))),
        },
        http: super::http::validate(&shown, raw.http)?,
        hf_cache: raw
            .hf_cache
            .ok_or_else(|| Error::Other("embedded default lacks `hf_cache`".into()))?,
        extract: raw
            .extract
            .ok_or_else(|| Error::Other("embedded default lacks `extract`".into()))?,
        events: super::events::validate(&shown, raw.events)?,
        hooks,
        webhooks,
        team: super::team::validate(&shown, raw.catalog, raw.blobs, raw.blobs_grace)?,
    })
}

/// Whether `s` is a level, or comma-separated directives each ending in a level
/// (`info`, `modelreg=debug`). A bare word that is no level would be read by tracing as a
/// target with no level, which turns every log line off, errors included.
fn is_log_level(s: &str) -> bool {
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    let level = |w: &str| LEVELS.contains(&w.trim().to_ascii_lowercase().as_str());
    !s.trim().is_empty()
        && s.split(',').all(|d| match d.rsplit_once('=') {
            Some((target, l)) => !target.trim().is_empty() && level(l),
            None => level(d),
        })
        && tracing_subscriber::EnvFilter::try_new(s).is_ok()
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_log_level_is_a_level_or_directives_ending_in_one() {
        for ok in [
            "info",
            "WARN",
            "off",
            "info,modelreg=debug",
            "modelreg::watcher=trace",
        ] {
            assert!(super::is_log_level(ok), "{ok}");
        }
        for bad in [
            "bogus!!",
            "nosuchlevel",
            "",
            "info,bogus",
            "=debug",
            "modelreg=loud",
        ] {
            assert!(!super::is_log_level(bad), "{bad}");
        }
    }
    use super::super::{EMBEDDED_DEFAULT, test_config};
    use super::*;

    /// Settings for the root `/r` read from the file `/r/c.yaml` holding `text`.
    fn file_config(text: &str) -> Result<Config> {
        Config::from_yaml(
            Path::new("/r"),
            text,
            ConfigSource::File("/r/c.yaml".into()),
        )
    }

    #[test]
    fn embedded_default_sets_every_key() {
        let raw = parse_raw("embedded", EMBEDDED_DEFAULT).unwrap();
        let keys = serde_json::to_value(&raw).unwrap();
        let unset: Vec<&String> = keys
            .as_object()
            .unwrap()
            .iter()
            // `http`, `hooks`, `webhooks` and team mode are off by default: the embedded file only
            // shows them commented out.
            .filter(|(k, v)| {
                v.is_null()
                    && ![
                        "http",
                        "hooks",
                        "webhooks",
                        "catalog",
                        "blobs",
                        "blobs_grace",
                    ]
                    .contains(&k.as_str())
            })
            .map(|(k, _)| k)
            .collect();
        assert!(unset.is_empty(), "the embedded default lacks {unset:?}");
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
        let c = file_config("settle: 300ms\nsocket: /run/modelreg/modelreg.sock\n").unwrap();
        assert_eq!(c.settle, Duration::from_millis(300));
        assert_eq!(c.socket, Path::new("/run/modelreg/modelreg.sock"));
        assert_eq!(c.inbox, Path::new("/r/pretrained_models"));
    }

    #[test]
    fn comments_only_file_is_empty() {
        let c = test_config("# nothing\n");
        assert!(c.is_ok());
    }

    #[test]
    fn a_duplicate_key_names_its_second_line() {
        let e = parse_raw(
            "c.yaml",
            "# settings\nsettle: 50ms\nlog_level: info\nsettle: 60ms\n",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "c.yaml:4: duplicate entry with key \"settle\""
        );
        let e = parse_raw("c.yaml", "http:\n  listen: a\n  listen: b\n").unwrap_err();
        assert!(e.to_string().starts_with("c.yaml:3"), "{e}");
    }

    #[test]
    fn unknown_key_names_line() {
        let e = file_config("settle: 1s\nsetle: 2s\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("/r/c.yaml:2:"), "{msg}");
        assert!(msg.contains("unknown field `setle`"), "{msg}");
    }

    #[test]
    fn bad_duration_names_key() {
        let e = file_config("settle: soon\n").unwrap_err();
        assert!(
            e.to_string().contains("settle: `soon` is not a duration"),
            "{e}"
        );
        let e = test_config("settle: 1ms\n").unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
    }

    #[test]
    fn store_inside_inbox_refused() {
        let e = test_config("store: pretrained_models/models\n").unwrap_err();
        assert!(e.to_string().contains("must not contain each other"), "{e}");
    }
}
