//! The `hooks:` and `webhooks:` sections: commands run and URLs posted to for each event.
//!
//! Each entry has a `name`, its id: the delivery cursor in `deliveries.yaml` and the row
//! in `status` are kept under it, so renaming an entry starts it afresh. docs/events.md
//! is the reference.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// A hook's command as written: a list (argv) or, with `shell: true`, one string.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(untagged)]
pub(super) enum RawCommand {
    Argv(Vec<String>),
    Shell(String),
}

/// One `hooks:` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub(super) struct RawHook {
    name: String,
    command: RawCommand,
    #[serde(default)]
    shell: bool,
    #[serde(default)]
    kinds: Vec<String>,
    #[serde(default)]
    models: Vec<String>,
    timeout: Option<String>,
    retries: Option<u32>,
    backoff: Option<String>,
    max_backoff: Option<String>,
    from: Option<u64>,
}

/// One `webhooks:` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    name: String,
    url: String,
    secret_file: Option<String>,
    secret: Option<String>,
    ca_file: Option<String>,
    #[serde(default)]
    kinds: Vec<String>,
    #[serde(default)]
    models: Vec<String>,
    timeout: Option<String>,
    retries: Option<u32>,
    backoff: Option<String>,
    max_backoff: Option<String>,
    from: Option<u64>,
}

/// How a failed delivery is tried again: after `backoff`, doubled each time up to
/// `max_backoff`; `retries` times (for webhooks: only a refusal, see docs/events.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Tries after the first, before the event is skipped.
    pub retries: u32,
    /// The first wait.
    pub backoff: Duration,
    /// The longest wait.
    pub max_backoff: Duration,
}

/// Where a new endpoint (no cursor yet) starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// With the events logged from now on (the default).
    Now,
    /// From this seq (`from: 0`: every event retained).
    Seq(u64),
}

/// Which events an endpoint takes: kind names and model names or globs (empty: all).
/// The kind names are checked against the event kinds by `deliver::check` (the event
/// types live above the settings).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Kind names (`registered`, ...).
    pub kinds: Vec<String>,
    /// Model names or globs.
    pub models: Vec<String>,
}

/// What hooks and webhooks share: which events, how long an attempt, how retried, where
/// a new one starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivering {
    /// Which events it takes.
    pub filter: EventFilter,
    /// How long one run (a hook's process group is then killed) or attempt may take.
    pub timeout: Duration,
    /// How failures are tried again (for webhooks `retries` counts refusals only).
    pub retry: Retry,
    /// Where it starts without a cursor.
    pub start: StartAt,
}

/// A validated exec hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookConfig {
    /// Its id (cursor, status row).
    pub name: String,
    /// The program and its arguments (with `shell`: `/bin/sh -c STRING`).
    pub argv: Vec<String>,
    /// Its events, timeout and retries.
    pub on: Delivering,
}

/// A validated webhook endpoint (its Debug form leaves the secret out).
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Its id (cursor, status row).
    pub name: String,
    /// `http://` or `https://` URL posted to.
    pub url: String,
    /// The HMAC key (read from `secret_file` at start and on reload).
    pub secret: Vec<u8>,
    /// For `https://`: the certificate authorities (PEM) to trust instead of the
    /// system's; a certificate in it that the receiver presents is trusted as it is
    /// (a self-signed one).
    pub ca_file: Option<PathBuf>,
    /// Its events, timeout and retries (of a refusal: 4xx other than 408, 429; other
    /// failures are retried until delivered).
    pub on: Delivering,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("ca_file", &self.ca_file)
            .field("on", &self.on)
            .finish_non_exhaustive()
    }
}

/// Validates `hooks:` and `webhooks:` (`shown` names the settings file, `root` resolves
/// `secret_file`).
pub(super) fn validate(
    shown: &str,
    root: &std::path::Path,
    hooks: Vec<RawHook>,
    webhooks: Vec<RawWebhook>,
) -> Result<(Vec<HookConfig>, Vec<WebhookConfig>)> {
    let bad = |key: String, reason: String| Error::Config {
        path: shown.to_string(),
        key,
        reason,
    };
    let mut names = std::collections::BTreeSet::new();
    let mut out_hooks = Vec::new();
    for (i, h) in hooks.into_iter().enumerate() {
        let key = |k: &str| format!("hooks[{i}].{k}");
        check_name(&h.name, &mut names).map_err(|r| bad(key("name"), r))?;
        let argv = match (h.command, h.shell) {
            (RawCommand::Argv(a), false) if !a.is_empty() && !a[0].is_empty() => a,
            (RawCommand::Argv(_), false) => {
                return Err(bad(key("command"), "must name a program".into()));
            }
            (RawCommand::Shell(s), true) if !s.trim().is_empty() => {
                vec!["/bin/sh".into(), "-c".into(), s]
            }
            (RawCommand::Argv(a), true) if a.len() == 1 && !a[0].trim().is_empty() => {
                vec!["/bin/sh".into(), "-c".into(), a[0].clone()]
            }
            (RawCommand::Shell(_), true) => {
                return Err(bad(key("command"), "is empty".into()));
            }
            (RawCommand::Argv(a), true) if a.len() == 1 => {
                return Err(bad(key("command"), "is empty".into()));
            }
            (RawCommand::Argv(_), true) => {
                return Err(bad(
                    key("command"),
                    "with `shell: true`, write the command as one string".into(),
                ));
            }
            (RawCommand::Shell(_), false) => {
                return Err(bad(
                    key("command"),
                    "a string is run by a shell only with `shell: true`; write the program and its arguments as a list".into(),
                ));
            }
        };
        let on = Raw {
            kinds: h.kinds,
            models: h.models,
            timeout: h.timeout,
            retries: h.retries,
            backoff: h.backoff,
            max_backoff: h.max_backoff,
            from: h.from,
        }
        .validate(Duration::from_secs(30))
        .map_err(|(k, r)| bad(key(k), r))?;
        out_hooks.push(HookConfig {
            name: h.name,
            argv,
            on,
        });
    }
    let mut out_webhooks = Vec::new();
    for (i, w) in webhooks.into_iter().enumerate() {
        let key = |k: &str| format!("webhooks[{i}].{k}");
        check_name(&w.name, &mut names).map_err(|r| bad(key("name"), r))?;
        check_url(&w.url).map_err(|r| bad(key("url"), r))?;
        let secret = match (w.secret_file, w.secret) {
            (Some(f), None) => {
                read_secret(&root.join(f)).map_err(|r| bad(key("secret_file"), r))?
            }
            (None, Some(s)) if !s.is_empty() => s.into_bytes(),
            (None, _) => {
                return Err(bad(
                    key("secret_file"),
                    "a webhook needs a secret: secret_file (a file only the daemon's user can read) or secret".into(),
                ));
            }
            (Some(_), Some(_)) => {
                return Err(bad(
                    key("secret"),
                    "give secret_file or secret, not both".into(),
                ));
            }
        };
        let ca_file = match w.ca_file {
            None => None,
            Some(f) => {
                let p = root.join(&f);
                std::fs::metadata(&p)
                    .map_err(|e| bad(key("ca_file"), format!("{}: {e}", p.display())))?;
                Some(p)
            }
        };
        let on = Raw {
            kinds: w.kinds,
            models: w.models,
            timeout: w.timeout,
            retries: w.retries,
            backoff: w.backoff,
            max_backoff: w.max_backoff,
            from: w.from,
        }
        .validate(Duration::from_secs(10))
        .map_err(|(k, r)| bad(key(k), r))?;
        out_webhooks.push(WebhookConfig {
            name: w.name,
            url: w.url,
            secret,
            ca_file,
            on,
        });
    }
    Ok((out_hooks, out_webhooks))
}

fn check_name(
    name: &str,
    seen: &mut std::collections::BTreeSet<String>,
) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok {
        return Err(format!(
            "`{name}`: use 1 to 64 letters, digits, `-`, `_` or `.`"
        ));
    }
    if !seen.insert(name.to_string()) {
        return Err(format!(
            "`{name}` is used twice (hook and webhook names share one space)"
        ));
    }
    Ok(())
}

fn duration(v: Option<String>, default: Duration) -> std::result::Result<Duration, String> {
    let Some(v) = v else { return Ok(default) };
    let d = humantime::parse_duration(v.trim())
        .map_err(|e| format!("`{v}` is not a duration ({e}); write e.g. 10s or 500ms"))?;
    if d < Duration::from_millis(10) || d > Duration::from_secs(24 * 3600) {
        return Err(format!("{v} is out of range (10ms to 1day)"));
    }
    Ok(d)
}

/// The keys hooks and webhooks share, as written.
struct Raw {
    kinds: Vec<String>,
    models: Vec<String>,
    timeout: Option<String>,
    retries: Option<u32>,
    backoff: Option<String>,
    max_backoff: Option<String>,
    from: Option<u64>,
}

impl Raw {
    /// Validates them (`timeout` defaults to `default_timeout`); an error names its key.
    fn validate(
        self,
        default_timeout: Duration,
    ) -> std::result::Result<Delivering, (&'static str, String)> {
        let timeout = duration(self.timeout, default_timeout).map_err(|r| ("timeout", r))?;
        let backoff = duration(self.backoff, Duration::from_secs(1)).map_err(|r| ("backoff", r))?;
        let max_backoff =
            duration(self.max_backoff, Duration::from_secs(300)).map_err(|r| ("max_backoff", r))?;
        if max_backoff < backoff {
            return Err(("max_backoff", "is shorter than backoff".into()));
        }
        if self.models.iter().any(|m| m.is_empty()) {
            // As the socket's `events` refuses it: it would match no model.
            return Err((
                "models",
                "has an empty pattern, which matches no model".into(),
            ));
        }
        Ok(Delivering {
            filter: EventFilter {
                kinds: self.kinds,
                models: self.models,
            },
            timeout,
            retry: Retry {
                retries: self.retries.unwrap_or(5),
                backoff,
                max_backoff,
            },
            start: self.from.map_or(StartAt::Now, StartAt::Seq),
        })
    }
}

/// Reads a webhook secret (trailing newline dropped); a file others may read is refused.
fn read_secret(path: &std::path::Path) -> std::result::Result<Vec<u8>, String> {
    use std::os::unix::fs::MetadataExt;
    let shown: PathBuf = path.to_path_buf();
    let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", shown.display()))?;
    if m.mode() & 0o077 != 0 {
        return Err(format!(
            "{} is readable by others (mode {:o}); chmod 600 it",
            shown.display(),
            m.mode() & 0o777
        ));
    }
    let mut s = std::fs::read(path).map_err(|e| format!("{}: {e}", shown.display()))?;
    while s.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        s.pop();
    }
    if s.is_empty() {
        return Err(format!("{} is empty", shown.display()));
    }
    Ok(s)
}

/// Why `url` cannot be a webhook's: not http(s), no host, a port that is no TCP port
/// (`:99999` was taken as no port and posted to port 80), or a user or password in it
/// (they went out in the Host header, to the receiver and any proxy, and into `status`
/// and the log: the receiver authenticates the daemon by the signature instead).
fn check_url(url: &str) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    let uri = url.parse::<hyper::Uri>().ok();
    let host = uri.as_ref().and_then(|u| u.host()).unwrap_or("");
    if !(lower.starts_with("http://") || lower.starts_with("https://")) || host.is_empty() {
        return Err(format!("`{url}` is not an http:// or https:// URL"));
    }
    let authority = uri
        .as_ref()
        .and_then(|u| u.authority())
        .map_or("", |a| a.as_str());
    if authority.contains('@') {
        return Err(format!(
            "`{url}` has a user or password in it: not sent as such, and it would show in status and the log; the receiver checks the signature (docs/events.md)"
        ));
    }
    // What follows the host (after `]` for an IPv6 one): hyper reads a port it cannot
    // parse as none.
    let after_host = authority
        .rsplit_once(']')
        .map_or(authority, |(_, rest)| rest);
    if let Some((_, port)) = after_host.rsplit_once(':')
        && !matches!(port.parse::<u16>(), Ok(n) if n > 0)
    {
        return Err(format!(
            "`{url}` names port {port}, not a TCP port (1 to 65535)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_config;

    #[test]
    fn hooks_parse_and_refuse_a_string_without_shell() {
        let c = test_config("hooks:\n- {name: a, command: [/bin/echo, hi], kinds: [registered], models: ['res*'], timeout: 2s}\n- {name: b, command: 'echo $MODELREG_EVENT_SEQ', shell: true, from: 0}\n").unwrap();
        assert_eq!(c.hooks.len(), 2);
        assert_eq!(c.hooks[0].argv, ["/bin/echo", "hi"]);
        assert_eq!(c.hooks[1].argv[..2], ["/bin/sh", "-c"]);
        assert_eq!(c.hooks[1].on.start, super::StartAt::Seq(0));
        let e = test_config("hooks:\n- {name: a, command: 'echo hi'}\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hooks[0].command") && e.contains("shell: true"),
            "{e}"
        );
        let e = test_config("hooks:\n- {name: a, command: [x]}\n- {name: a, command: [y]}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("used twice"), "{e}");
    }

    #[test]
    fn webhook_urls_with_a_bad_port_or_credentials_are_refused() {
        for (url, why) in [
            ("http://127.0.0.1:99999/", "port 99999"),
            ("http://127.0.0.1:0/", "port 0"),
            ("http://user:pw@127.0.0.1:9/x", "user or password"),
            ("http://user@127.0.0.1:9/x", "user or password"),
            ("http:///x", "not an http:// or https:// URL"),
            ("https://[::1/", "not an http:// or https:// URL"),
        ] {
            let e = test_config(&format!(
                "webhooks:\n- {{name: w, url: '{url}', secret: s}}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("webhooks[0].url") && e.contains(why),
                "{url}: {e}"
            );
        }
        test_config("webhooks:\n- {name: w, url: 'https://[::1]:8443/a?b=1', secret: s}\n")
            .unwrap();
    }

    #[test]
    fn empty_commands_and_model_patterns_are_refused() {
        for (yaml, why) in [
            ("{name: a, command: '', shell: true}", "command: is empty"),
            (
                "{name: a, command: ['  '], shell: true}",
                "command: is empty",
            ),
            (
                "{name: a, command: [/bin/true], models: ['']}",
                "models: has an empty pattern",
            ),
        ] {
            let e = test_config(&format!("hooks:\n- {yaml}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("hooks[0].{why}")), "{yaml}: {e}");
        }
    }

    #[test]
    fn webhooks_need_a_url_and_a_secret() {
        let c = test_config("webhooks:\n- {name: w, url: 'http://127.0.0.1:9/x', secret: s}\n")
            .unwrap();
        assert_eq!(c.webhooks[0].secret, b"s");
        let e = test_config("webhooks:\n- {name: w, url: 'ftp://x/', secret: s}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("webhooks[0].url"), "{e}");
        let e = test_config("webhooks:\n- {name: w, url: 'http://x/'}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs a secret"), "{e}");
    }
}
