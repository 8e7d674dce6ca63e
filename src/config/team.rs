//! Team mode's settings: `catalog:` (PostgreSQL) and `blobs:` (S3 or a shared folder), both or neither, and `blobs_grace:`.
//!
//! Only their form is checked here (the config layer contacts nothing): a connection
//! string PostgreSQL's client would parse, and a blob store setting `src/blobs/` would
//! open. Reaching the servers is the daemon's start-up (docs/team.md, "Running a team").

use std::time::Duration;

use crate::error::{Error, Result};

/// How long an unrecorded blob is kept before it is collected, unless `blobs_grace:` says.
pub const DEFAULT_BLOBS_GRACE: Duration = Duration::from_secs(24 * 3600);
/// The shortest `blobs_grace:` (tests use a few seconds; a real team keeps hours).
const MIN_BLOBS_GRACE: Duration = Duration::from_secs(1);

/// Where a team's hosts share their catalog and their files (`catalog:`, `blobs:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamConfig {
    /// The PostgreSQL connection string (`postgres://...` or `host=... dbname=...`).
    pub catalog: String,
    /// The blob store: `s3://bucket/prefix`, `file:///folder` or an absolute folder.
    pub blobs: String,
    /// A blob no catalog row names is deleted once it is older than this
    /// (`blobs_grace:`, 24h by default): an upload in flight, or uploaded and about to be
    /// recorded, is younger (docs/team.md, "Orphan blobs").
    pub grace: Duration,
}

/// Checks the settings' form: `catalog:` and `blobs:` both or neither (local mode), each
/// of a known kind; `blobs_grace:` a duration, only with them.
pub(super) fn validate(
    shown: &str,
    catalog: Option<String>,
    blobs: Option<String>,
    grace: Option<String>,
) -> Result<Option<TeamConfig>> {
    let bad = |key: &str, reason: String| Error::Config {
        path: shown.to_string(),
        key: key.to_string(),
        reason,
    };
    let grace_given = grace.is_some();
    let grace = match grace {
        None => DEFAULT_BLOBS_GRACE,
        Some(g) => match humantime::parse_duration(g.trim()) {
            Ok(d) if d >= MIN_BLOBS_GRACE => d,
            Ok(_) => {
                return Err(bad(
                    "blobs_grace",
                    format!(
                        "{g} is too short: at least 1s (and longer than an upload and its record take; 24h by default)"
                    ),
                ));
            }
            Err(e) => {
                return Err(bad(
                    "blobs_grace",
                    format!("`{g}` is not a duration ({e}); write e.g. 24h or 30m"),
                ));
            }
        },
    };
    let (catalog, blobs) = match (catalog, blobs) {
        (None, None) if grace_given => {
            return Err(bad(
                "blobs_grace",
                "is set but `catalog:` and `blobs:` are not: it applies to a team's blob store only".into(),
            ));
        }
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(bad(
                "blobs",
                "`catalog:` is set but `blobs:` is not: a team shares both its catalog and its files (s3://bucket/prefix or a shared folder)".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(bad(
                "catalog",
                "`blobs:` is set but `catalog:` is not: a team shares both its catalog (postgres://...) and its files".into(),
            ));
        }
        (Some(c), Some(b)) => (c.trim().to_string(), b.trim().to_string()),
    };
    let keyword_form = catalog.contains('=') && !catalog.contains("://");
    if !(catalog.starts_with("postgres://") || catalog.starts_with("postgresql://") || keyword_form)
    {
        return Err(bad(
            "catalog",
            format!(
                "`{}` is not a PostgreSQL connection string: write postgres://user@host/db or host=/run/postgresql dbname=modelreg",
                redact(&catalog)
            ),
        ));
    }
    let folder = blobs.strip_prefix("file://").unwrap_or(&blobs);
    if let Some(rest) = blobs.strip_prefix("s3://") {
        if rest.split('/').next().is_none_or(str::is_empty) {
            return Err(bad(
                "blobs",
                format!("`{blobs}` names no bucket: write s3://bucket/prefix"),
            ));
        }
    } else if !folder.starts_with('/') {
        return Err(bad(
            "blobs",
            format!(
                "`{blobs}` is neither s3://bucket/prefix nor an absolute folder path (file:///folder or /folder)"
            ),
        ));
    }
    Ok(Some(TeamConfig {
        catalog,
        blobs,
        grace,
    }))
}

/// `s` without a password, for a message.
fn redact(s: &str) -> String {
    match (s.split_once("://"), s.find('@')) {
        (Some((scheme, rest)), Some(_)) => match rest.split_once('@') {
            Some((auth, tail)) => {
                let user = auth.split(':').next().unwrap_or("");
                format!("{scheme}://{user}:***@{tail}")
            }
            None => s.to_string(),
        },
        _ => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(c: Option<&str>, b: Option<&str>) -> Result<Option<TeamConfig>> {
        validate("/r/c.yaml", c.map(String::from), b.map(String::from), None)
    }

    #[test]
    fn the_grace_is_a_duration_of_a_team_only() {
        let g = |c: Option<&str>, g: &str| {
            validate(
                "/r/c.yaml",
                c.map(String::from),
                c.map(|_| "/b".to_string()),
                Some(g.to_string()),
            )
        };
        let t = g(Some("postgres://h/db"), "90s").unwrap().unwrap();
        assert_eq!(t.grace, Duration::from_secs(90));
        assert_eq!(
            v(Some("postgres://h/db"), Some("/b"))
                .unwrap()
                .unwrap()
                .grace,
            DEFAULT_BLOBS_GRACE
        );
        for (c, bad, says) in [
            (Some("postgres://h/db"), "soon", "not a duration"),
            (Some("postgres://h/db"), "10ms", "too short"),
            (None, "1h", "applies to a team"),
        ] {
            let e = g(c, bad).unwrap_err().to_string();
            assert!(e.contains("blobs_grace") && e.contains(says), "{e}");
        }
    }

    #[test]
    fn both_or_neither() {
        assert_eq!(v(None, None).unwrap(), None);
        let e = v(Some("postgres://a@h/db"), None).unwrap_err().to_string();
        assert!(e.contains("/r/c.yaml") && e.contains("blobs"), "{e}");
        let e = v(None, Some("/mnt/blobs")).unwrap_err().to_string();
        assert!(e.contains("catalog"), "{e}");
        let t = v(Some("host=/tmp dbname=x"), Some("s3://b/p"))
            .unwrap()
            .unwrap();
        assert_eq!(t.blobs, "s3://b/p");
    }

    #[test]
    fn bad_values_say_why_without_the_password() {
        let e = v(Some("mysql://u:secret@h/db"), Some("/b"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not a PostgreSQL") && !e.contains("secret"),
            "{e}"
        );
        let e = v(Some("postgres://h/db"), Some("s3:///p"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no bucket"), "{e}");
        let e = v(Some("postgres://h/db"), Some("blobs"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("absolute folder"), "{e}");
    }
}
