//! Changes asked for by clients: aliases, deprecate, remove, and gc's retention policy.

use std::sync::Arc;

use super::{Change, ChangeResult, Registrar};
use crate::registry::{AliasMove, Catalog, Mark, Model, Version};
use crate::status::now_rfc3339;

type ChangeError = (crate::protocol::ErrorCode, String);

fn model_not_found(name: &str, catalog: &Catalog) -> ChangeError {
    let hint = crate::suggest::hint(name, catalog.models.keys().map(String::as_str));
    (
        crate::protocol::ErrorCode::ModelNotFound,
        format!("no model named {name:?}{hint} (`modelreg list` shows the models)"),
    )
}

fn alias_not_found(name: &str, alias: &str, m: &Model) -> ChangeError {
    let hint = crate::suggest::hint(alias, m.aliases.keys().map(String::as_str));
    let known: Vec<&String> = m.aliases.keys().collect();
    (
        crate::protocol::ErrorCode::AliasNotFound,
        format!("{name:?} has no alias {alias:?}{hint} (aliases: {known:?})"),
    )
}

fn stored_version(m: &Model, name: &str, n: u32) -> std::result::Result<(), ChangeError> {
    use crate::protocol::ErrorCode;
    match m.find(n) {
        None => Err((
            ErrorCode::VersionNotFound,
            format!("{name:?} has no version v{n}"),
        )),
        Some(v) if v.removed.is_some() => Err((
            ErrorCode::VersionRemoved,
            format!("{name} v{n} was removed"),
        )),
        Some(_) => Ok(()),
    }
}

impl Registrar {
    /// Applies a client's change to the catalog (written with the next commit).
    pub(super) fn change(&mut self, change: Change, uid: Option<u32>) -> ChangeResult {
        use crate::protocol::ErrorCode;
        let now = now_rfc3339();
        let name = match &change {
            Change::AliasSet { name, .. }
            | Change::AliasRemove { name, .. }
            | Change::Rollback { name, .. }
            | Change::Deprecate { name, .. }
            | Change::Remove { name, .. } => name.clone(),
            Change::Gc { name, dry_run } => return self.gc(name.as_deref(), *dry_run, uid),
        };
        if !self.catalog.models.contains_key(&name) {
            return Err(model_not_found(&name, &self.catalog));
        }
        let model = self.catalog.models.get_mut(&name).expect("checked");
        let m = Arc::make_mut(model);
        let result = match change {
            Change::AliasSet { alias, version, .. } => {
                crate::registry::check_alias(&alias).map_err(|r| {
                    (
                        ErrorCode::InvalidName,
                        format!("invalid alias {alias:?}: {r}"),
                    )
                })?;
                stored_version(m, &name, version)?;
                if m.aliases.get(&alias) == Some(&version) {
                    // Already there: no `v1 -> v1` history entry, which `rollback` would
                    // then "undo" by doing nothing.
                    return Ok(
                        serde_json::json!({"name": name, "alias": alias, "version": format!("v{version}"), "from": format!("v{version}"), "unchanged": true}),
                    );
                }
                let from = m.aliases.insert(alias.clone(), version);
                m.alias_history.push(AliasMove {
                    alias: alias.clone(),
                    from,
                    to: Some(version),
                    at: now,
                    uid,
                    by: "set".into(),
                });
                let was = from.map(|f| format!(" (was v{f})")).unwrap_or_default();
                self.board
                    .event(format!("{name}: alias {alias} -> v{version}{was}"));
                serde_json::json!({"name": name, "alias": alias, "version": format!("v{version}"), "from": from.map(|f| format!("v{f}"))})
            }
            Change::AliasRemove { alias, .. } => {
                if !m.aliases.contains_key(&alias) {
                    return Err(alias_not_found(&name, &alias, m));
                }
                let from = m.aliases.remove(&alias).expect("checked");
                m.alias_history.push(AliasMove {
                    alias: alias.clone(),
                    from: Some(from),
                    to: None,
                    at: now,
                    uid,
                    by: "remove".into(),
                });
                self.board
                    .event(format!("{name}: alias {alias} removed (was v{from})"));
                serde_json::json!({"name": name, "alias": alias, "removed": format!("v{from}")})
            }
            Change::Rollback { alias, .. } => {
                let current = *m
                    .aliases
                    .get(&alias)
                    .ok_or_else(|| alias_not_found(&name, &alias, m))?;
                // The move that brought it here says where it was before.
                let previous = m
                    .alias_history
                    .iter()
                    .rev()
                    .find(|h| h.alias == alias && h.to == Some(current) && h.from != h.to)
                    .and_then(|h| h.from)
                    .ok_or_else(|| {
                        (
                            ErrorCode::NothingToRollBack,
                            format!("alias {alias} of {name} has no earlier position"),
                        )
                    })?;
                stored_version(m, &name, previous)?;
                m.aliases.insert(alias.clone(), previous);
                m.alias_history.push(AliasMove {
                    alias: alias.clone(),
                    from: Some(current),
                    to: Some(previous),
                    at: now,
                    uid,
                    by: "rollback".into(),
                });
                self.board.event(format!(
                    "{name}: alias {alias} rolled back v{current} -> v{previous}"
                ));
                serde_json::json!({"name": name, "alias": alias, "version": format!("v{previous}"), "from": format!("v{current}")})
            }
            Change::Deprecate {
                version, reason, ..
            } => {
                stored_version(m, &name, version)?;
                let v = m
                    .versions
                    .iter_mut()
                    .find(|v| v.number == version)
                    .expect("checked");
                v.deprecated = Some(Mark {
                    at: now,
                    reason: reason.clone(),
                    uid,
                });
                self.board.event(format!(
                    "{name} v{version} deprecated{}",
                    reason.map(|r| format!(": {r}")).unwrap_or_default()
                ));
                serde_json::json!({"name": name, "version": format!("v{version}"), "deprecated": true})
            }
            Change::Remove {
                version,
                reason,
                force,
                ..
            } => {
                let (moved, dir) =
                    remove_version(m, &name, version, reason, force, uid, &now, "rm")?;
                self.batch.deletions.push(dir);
                self.board.event(format!(
                    "{name} v{version} removed{}",
                    if moved.is_empty() {
                        String::new()
                    } else {
                        format!("; aliases dropped: {}", moved.join(", "))
                    }
                ));
                serde_json::json!({"name": name, "version": format!("v{version}"), "removed": true, "aliases_dropped": moved})
            }
            Change::Gc { .. } => unreachable!("handled above"),
        };
        self.batch.touched.insert(name);
        self.batch.dirty = true;
        Ok(result)
    }

    /// Retention: per model, keep the newest `keep_last` stored versions, the best one and
    /// every aliased one; remove the rest (or, with `dry_run`, say what would go).
    fn gc(&mut self, only: Option<&str>, dry_run: bool, uid: Option<u32>) -> ChangeResult {
        let now = now_rfc3339();
        let mut report = Vec::new();
        let mut freed = 0u64;
        let names: Vec<String> = match only {
            Some(n) if !self.catalog.models.contains_key(n) => {
                return Err(model_not_found(n, &self.catalog));
            }
            Some(n) => vec![n.to_string()],
            None => self.catalog.models.keys().cloned().collect(),
        };
        for name in names {
            let Some(keep) = self
                .config
                .retention
                .get(&name)
                .or_else(|| self.config.retention.get("*"))
                .copied()
            else {
                continue;
            };
            let m = &self.catalog.models[&name];
            let metric = self.config.best.metric_for(&name);
            let best = m
                .best(metric, self.config.best.direction_of(metric))
                .map(|v| v.number);
            let stored: Vec<&Version> = m.stored().collect();
            let cut = stored.len().saturating_sub(keep as usize);
            let doomed: Vec<(u32, u64)> = stored[..cut]
                .iter()
                .filter(|v| Some(v.number) != best && !m.aliases.values().any(|n| *n == v.number))
                .map(|v| (v.number, v.files.iter().map(|f| f.size).sum()))
                .collect();
            for (n, size) in &doomed {
                freed += size;
                report.push(
                    serde_json::json!({"name": name, "version": format!("v{n}"), "size": size}),
                );
            }
            if !dry_run && !doomed.is_empty() {
                let m = Arc::make_mut(self.catalog.models.get_mut(&name).expect("present"));
                for (n, _) in &doomed {
                    let reason = Some(format!("gc: keep_last {keep}"));
                    let (_, dir) = remove_version(m, &name, *n, reason, false, uid, &now, "gc")?;
                    self.batch.deletions.push(dir);
                }
                self.board
                    .event(format!("gc removed {} version(s) of {name}", doomed.len()));
                self.batch.touched.insert(name.clone());
                self.batch.dirty = true;
            }
        }
        Ok(serde_json::json!({"dry_run": dry_run, "versions": report, "bytes": freed}))
    }
}

/// Turns version `n` into a tombstone; returns the aliases dropped (with `force`) and the
/// folder to delete after the commit. An aliased version is refused without `force`.
#[allow(clippy::too_many_arguments)]
fn remove_version(
    m: &mut Model,
    name: &str,
    n: u32,
    reason: Option<String>,
    force: bool,
    uid: Option<u32>,
    now: &str,
    by: &str,
) -> std::result::Result<(Vec<String>, (String, u32)), ChangeError> {
    use crate::protocol::ErrorCode;
    stored_version(m, name, n)?;
    let aliased: Vec<String> = m
        .aliases
        .iter()
        .filter(|(_, v)| **v == n)
        .map(|(a, _)| a.clone())
        .collect();
    if !aliased.is_empty() && !force {
        return Err((
            ErrorCode::Aliased,
            format!(
                "{name} v{n} is what {} point(s) to; move the alias first, or use --force to drop it",
                aliased.join(", ")
            ),
        ));
    }
    for a in &aliased {
        m.aliases.remove(a);
        m.alias_history.push(AliasMove {
            alias: a.clone(),
            from: Some(n),
            to: None,
            at: now.to_string(),
            uid,
            by: format!("{by} --force"),
        });
    }
    let v = m
        .versions
        .iter_mut()
        .find(|v| v.number == n)
        .expect("checked");
    v.removed = Some(Mark {
        at: now.to_string(),
        reason,
        uid,
    });
    Ok((aliased, (name.to_string(), n)))
}
