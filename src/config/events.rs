//! The `events:` section: how much of the event log is kept (`max_age`, `max_bytes`).

use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Events are kept this long by default: 30 days.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// The event log holds at most this by default: 256 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;

/// The `events:` section as written; unknown keys refused, each key optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub(super) struct RawEvents {
    max_age: Option<String>,
    max_bytes: Option<String>,
}

impl RawEvents {
    /// Fills each key missing here from `base`.
    pub(super) fn or(self, base: Option<RawEvents>) -> RawEvents {
        let base = base.unwrap_or_default();
        RawEvents {
            max_age: self.max_age.or(base.max_age),
            max_bytes: self.max_bytes.or(base.max_bytes),
        }
    }
}

/// How much of the event log (`<root>/events/`) is kept: whole segments, oldest first,
/// are dropped once older than `max_age` or while the log is over `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventsConfig {
    /// How long events are kept.
    pub max_age: Duration,
    /// How many bytes of events are kept.
    pub max_bytes: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            max_age: DEFAULT_MAX_AGE,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// Validates the `events:` section (`shown` names the settings file in errors).
pub(super) fn validate(shown: &str, raw: Option<RawEvents>) -> Result<EventsConfig> {
    let raw = raw.unwrap_or_default();
    let bad = |key: &str, reason: String| Error::Config {
        path: shown.to_string(),
        key: format!("events.{key}"),
        reason,
    };
    let max_age = match raw.max_age {
        None => DEFAULT_MAX_AGE,
        Some(v) => {
            let d = humantime::parse_duration(v.trim()).map_err(|e| {
                bad(
                    "max_age",
                    format!("`{v}` is not a duration ({e}); write e.g. 30d or 12h"),
                )
            })?;
            if d < Duration::from_secs(60) {
                return Err(bad("max_age", format!("{v} is shorter than 1m")));
            }
            d
        }
    };
    let max_bytes = match raw.max_bytes {
        None => DEFAULT_MAX_BYTES,
        Some(v) => {
            let n = super::http::parse_size(v.trim()).ok_or_else(|| {
                bad(
                    "max_bytes",
                    format!("`{v}` is not a size; write a number of bytes or e.g. 256MiB"),
                )
            })?;
            if n < 1024 {
                return Err(bad("max_bytes", format!("{v} is less than 1KiB")));
            }
            n
        }
    };
    Ok(EventsConfig { max_age, max_bytes })
}

#[cfg(test)]
mod tests {
    use super::super::test_config;

    #[test]
    fn events_keys_default_and_parse() {
        let c = test_config("").unwrap();
        assert_eq!(c.events, super::EventsConfig::default());
        let c = test_config("events: {max_age: 2h}\n").unwrap();
        assert_eq!(c.events.max_age.as_secs(), 7200);
        assert_eq!(c.events.max_bytes, super::DEFAULT_MAX_BYTES);
        let c = test_config("events: {max_bytes: 4KiB}\n").unwrap();
        assert_eq!(c.events.max_bytes, 4096);
        let e = test_config("events: {max_bytes: lots}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("events.max_bytes"), "{e}");
    }
}
