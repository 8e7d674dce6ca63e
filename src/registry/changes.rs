//! Change rules: alias set, remove and rollback, deprecate, remove, and gc's retention.
//!
//! Each is a pure function on one [`Model`]: it checks, applies and returns a typed
//! outcome, or refuses with a [`RegistryError`] and leaves the model as it was. Writing
//! the catalog and deleting files is the registrar's.

use std::collections::BTreeMap;

use super::{AliasMove, Mark, Model, RegistryError, check_alias};

/// Who asked for a change and when: recorded in the history and on marks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// When (RFC 3339, UTC).
    pub at: String,
    /// The peer's uid (SO_PEERCRED), when known.
    pub uid: Option<u32>,
}

/// What a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// An alias now points at `to` (it pointed at `from`; `unchanged` when already there).
    AliasSet {
        /// The alias.
        alias: String,
        /// Where it points now.
        to: u32,
        /// Where it pointed before, if it existed.
        from: Option<u32>,
        /// It already pointed there: nothing was recorded.
        unchanged: bool,
    },
    /// An alias was removed.
    AliasRemoved {
        /// The alias.
        alias: String,
        /// Where it pointed.
        was: u32,
    },
    /// An alias moved back to where it was before its last move.
    RolledBack {
        /// The alias.
        alias: String,
        /// Where it pointed.
        from: u32,
        /// Where it points now.
        to: u32,
    },
    /// A version was hidden from latest and best.
    Deprecated {
        /// The version.
        version: u32,
        /// Why, when given.
        reason: Option<String>,
    },
    /// A version became a tombstone; its files are to be deleted.
    Removed {
        /// The version.
        version: u32,
        /// The aliases that pointed to it and were dropped (force).
        aliases_dropped: Vec<String>,
    },
}

impl Changed {
    /// The line for `status`'s recent changes, or `None` when nothing changed.
    pub fn event(&self, name: &str) -> Option<String> {
        Some(match self {
            Changed::AliasSet {
                unchanged: true, ..
            } => return None,
            Changed::AliasSet {
                alias, to, from, ..
            } => {
                let was = from.map(|f| format!(" (was v{f})")).unwrap_or_default();
                format!("{name}: alias {alias} -> v{to}{was}")
            }
            Changed::AliasRemoved { alias, was } => {
                format!("{name}: alias {alias} removed (was v{was})")
            }
            Changed::RolledBack { alias, from, to } => {
                format!("{name}: alias {alias} rolled back v{from} -> v{to}")
            }
            Changed::Deprecated { version, reason } => format!(
                "{name} v{version} deprecated{}",
                reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
            Changed::Removed {
                version,
                aliases_dropped,
            } => format!(
                "{name} v{version} removed{}",
                if aliases_dropped.is_empty() {
                    String::new()
                } else {
                    format!("; aliases dropped: {}", aliases_dropped.join(", "))
                }
            ),
        })
    }
}

/// A version retention would remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Doomed {
    /// The version.
    pub number: u32,
    /// Its bytes.
    pub size: u64,
}

/// How many versions `retention` keeps of model `name`: its own entry, else `*`'s;
/// `None` keeps all.
pub fn keep_last(retention: &BTreeMap<String, u32>, name: &str) -> Option<u32> {
    retention.get(name).or_else(|| retention.get("*")).copied()
}

impl Model {
    /// Points `alias` at stored version `version`. Setting it where it already points
    /// records nothing (a `v1 -> v1` entry would make `rollback` do nothing).
    pub fn set_alias(
        &mut self,
        name: &str,
        alias: &str,
        version: u32,
        stamp: &Stamp,
    ) -> Result<Changed, RegistryError> {
        check_alias(alias).map_err(|reason| RegistryError::InvalidAlias {
            alias: alias.to_string(),
            reason,
        })?;
        self.stored_version(name, version)?;
        let from = self.aliases.get(alias).copied();
        let unchanged = from == Some(version);
        if !unchanged {
            self.aliases.insert(alias.to_string(), version);
            self.record(alias, from, Some(version), stamp, "set");
        }
        Ok(Changed::AliasSet {
            alias: alias.to_string(),
            to: version,
            from,
            unchanged,
        })
    }

    /// Removes `alias`.
    pub fn remove_alias(
        &mut self,
        name: &str,
        alias: &str,
        stamp: &Stamp,
    ) -> Result<Changed, RegistryError> {
        let was = self
            .aliases
            .remove(alias)
            .ok_or_else(|| RegistryError::alias_not_found(name, alias, self, false))?;
        self.record(alias, Some(was), None, stamp, "remove");
        Ok(Changed::AliasRemoved {
            alias: alias.to_string(),
            was,
        })
    }

    /// Moves `alias` back to where the move that brought it to its current version came
    /// from.
    pub fn roll_back(
        &mut self,
        name: &str,
        alias: &str,
        stamp: &Stamp,
    ) -> Result<Changed, RegistryError> {
        let current = *self
            .aliases
            .get(alias)
            .ok_or_else(|| RegistryError::alias_not_found(name, alias, self, false))?;
        let previous = self
            .alias_history
            .iter()
            .rev()
            .find(|h| h.alias == alias && h.to == Some(current) && h.from != h.to)
            .and_then(|h| h.from)
            .ok_or_else(|| RegistryError::NothingToRollBack {
                name: name.to_string(),
                alias: alias.to_string(),
            })?;
        self.stored_version(name, previous)?;
        self.aliases.insert(alias.to_string(), previous);
        self.record(alias, Some(current), Some(previous), stamp, "rollback");
        Ok(Changed::RolledBack {
            alias: alias.to_string(),
            from: current,
            to: previous,
        })
    }

    /// Hides stored version `n` from latest and best (`vN` and aliases still answer it).
    pub fn deprecate(
        &mut self,
        name: &str,
        n: u32,
        reason: Option<String>,
        stamp: &Stamp,
    ) -> Result<Changed, RegistryError> {
        self.stored_version(name, n)?;
        let v = self.version_mut(n);
        v.deprecated = Some(Box::new(Mark {
            at: stamp.at.clone(),
            reason: reason.clone(),
            uid: stamp.uid,
        }));
        Ok(Changed::Deprecated { version: n, reason })
    }

    /// Turns stored version `n` into a tombstone (its number is never given again). An
    /// aliased version is refused unless `force`, which drops its aliases; `by` names the
    /// operation in their history (`rm`, `gc`).
    pub fn remove(
        &mut self,
        name: &str,
        n: u32,
        reason: Option<String>,
        force: bool,
        stamp: &Stamp,
        by: &str,
    ) -> Result<Changed, RegistryError> {
        self.stored_version(name, n)?;
        let aliased: Vec<String> = self
            .aliases
            .iter()
            .filter(|(_, v)| **v == n)
            .map(|(a, _)| a.clone())
            .collect();
        if !aliased.is_empty() && !force {
            return Err(RegistryError::Aliased {
                name: name.to_string(),
                number: n,
                aliases: aliased,
            });
        }
        for a in &aliased {
            self.aliases.remove(a);
            self.record(a, Some(n), None, stamp, &format!("{by} --force"));
        }
        self.version_mut(n).removed = Some(Box::new(Mark {
            at: stamp.at.clone(),
            reason,
            uid: stamp.uid,
        }));
        Ok(Changed::Removed {
            version: n,
            aliases_dropped: aliased,
        })
    }

    /// What retention removes: every stored version but the newest `keep`, the `best`
    /// one and every aliased one, oldest first.
    pub fn gc_plan(&self, keep: u32, best: Option<u32>) -> Vec<Doomed> {
        let stored: Vec<_> = self.stored().collect();
        let cut = stored.len().saturating_sub(keep as usize);
        stored[..cut]
            .iter()
            .filter(|v| Some(v.number) != best && !self.aliases.values().any(|n| *n == v.number))
            .map(|v| Doomed {
                number: v.number,
                size: v.files.iter().map(|f| f.size).sum(),
            })
            .collect()
    }

    fn version_mut(&mut self, n: u32) -> &mut super::Version {
        let i = self
            .versions
            .binary_search_by_key(&n, |v| v.number)
            .expect("checked by stored_version");
        std::sync::Arc::make_mut(&mut self.versions[i])
    }

    fn record(&mut self, alias: &str, from: Option<u32>, to: Option<u32>, s: &Stamp, by: &str) {
        self.alias_history.push(AliasMove {
            alias: alias.to_string(),
            from,
            to,
            at: s.at.clone(),
            uid: s.uid,
            by: by.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tests::{model, v};

    fn stamp() -> Stamp {
        Stamp {
            at: "t".into(),
            uid: Some(1000),
        }
    }

    fn three() -> Model {
        model(vec![v(1, &[]), v(2, &[]), v(3, &[])])
    }

    #[test]
    fn alias_set_records_the_move_and_a_repeat_records_nothing() {
        let mut m = three();
        let c = m.set_alias("m", "production", 1, &stamp()).unwrap();
        assert_eq!(c.event("m").unwrap(), "m: alias production -> v1");
        let c = m.set_alias("m", "production", 2, &stamp()).unwrap();
        assert_eq!(c.event("m").unwrap(), "m: alias production -> v2 (was v1)");
        let c = m.set_alias("m", "production", 2, &stamp()).unwrap();
        assert!(matches!(
            c,
            Changed::AliasSet {
                unchanged: true,
                from: Some(2),
                ..
            }
        ));
        assert_eq!(c.event("m"), None);
        assert_eq!(m.alias_history.len(), 2);
        assert_eq!(m.aliases["production"], 2);
    }

    #[test]
    fn alias_set_refuses_bad_aliases_and_missing_or_removed_versions() {
        let mut m = three();
        m.remove("m", 3, None, false, &stamp(), "rm").unwrap();
        let before = m.clone();
        let err = |m: &mut Model, a: &str, n: u32| m.set_alias("m", a, n, &stamp()).unwrap_err();
        assert!(matches!(
            err(&mut m, "latest", 1),
            RegistryError::InvalidAlias { .. }
        ));
        assert!(matches!(
            err(&mut m, "v2", 1),
            RegistryError::InvalidAlias { .. }
        ));
        assert!(matches!(
            err(&mut m, "p", 9),
            RegistryError::VersionNotFound { .. }
        ));
        assert_eq!(err(&mut m, "p", 3).to_string(), "m v3 was removed at t");
        assert_eq!(m, before, "a refusal changes nothing");
    }

    #[test]
    fn alias_remove_and_its_refusal() {
        let mut m = three();
        m.set_alias("m", "staging", 3, &stamp()).unwrap();
        let c = m.remove_alias("m", "staging", &stamp()).unwrap();
        assert_eq!(c.event("m").unwrap(), "m: alias staging removed (was v3)");
        assert!(m.aliases.is_empty());
        assert_eq!(m.alias_history.last().unwrap().by, "remove");
        assert_eq!(
            m.remove_alias("m", "stagin", &stamp())
                .unwrap_err()
                .to_string(),
            "\"m\" has no alias \"stagin\" (aliases: [])"
        );
    }

    #[test]
    fn rollback_returns_to_where_the_last_move_came_from() {
        let mut m = three();
        m.set_alias("m", "production", 1, &stamp()).unwrap();
        assert_eq!(
            m.roll_back("m", "production", &stamp())
                .unwrap_err()
                .to_string(),
            "alias production of m has no earlier position"
        );
        m.set_alias("m", "production", 2, &stamp()).unwrap();
        m.set_alias("m", "production", 2, &stamp()).unwrap();
        let c = m.roll_back("m", "production", &stamp()).unwrap();
        assert_eq!(
            c,
            Changed::RolledBack {
                alias: "production".into(),
                from: 2,
                to: 1
            }
        );
        assert!(matches!(
            m.roll_back("m", "staging", &stamp()),
            Err(RegistryError::AliasNotFound { .. })
        ));
    }

    #[test]
    fn rollback_refuses_a_previous_version_that_was_removed() {
        let mut m = three();
        m.set_alias("m", "production", 1, &stamp()).unwrap();
        m.set_alias("m", "production", 2, &stamp()).unwrap();
        m.remove("m", 1, None, false, &stamp(), "rm").unwrap();
        assert!(matches!(
            m.roll_back("m", "production", &stamp()),
            Err(RegistryError::VersionRemoved { number: 1, .. })
        ));
        assert_eq!(m.aliases["production"], 2);
    }

    #[test]
    fn deprecate_marks_and_hides_from_latest() {
        let mut m = three();
        let c = m
            .deprecate("m", 3, Some("eval bug".into()), &stamp())
            .unwrap();
        assert_eq!(c.event("m").unwrap(), "m v3 deprecated: eval bug");
        assert_eq!(m.latest().unwrap().number, 2);
        assert_eq!(
            m.find(3).unwrap().deprecated.as_ref().unwrap().uid,
            Some(1000)
        );
        assert!(matches!(
            m.deprecate("m", 7, None, &stamp()),
            Err(RegistryError::VersionNotFound { .. })
        ));
    }

    #[test]
    fn remove_refuses_an_aliased_version_unless_forced() {
        let mut m = three();
        m.set_alias("m", "production", 2, &stamp()).unwrap();
        assert_eq!(
            m.remove("m", 2, None, false, &stamp(), "rm")
                .unwrap_err()
                .to_string(),
            "m v2 is what production point(s) to; move the alias first, or use --force to drop it"
        );
        assert!(m.find(2).unwrap().removed.is_none());
        let c = m
            .remove("m", 2, Some("leak".into()), true, &stamp(), "rm")
            .unwrap();
        assert_eq!(
            c.event("m").unwrap(),
            "m v2 removed; aliases dropped: production"
        );
        assert!(m.aliases.is_empty());
        assert_eq!(m.alias_history.last().unwrap().by, "rm --force");
        assert!(matches!(
            m.remove("m", 2, None, false, &stamp(), "rm"),
            Err(RegistryError::VersionRemoved { .. })
        ));
    }

    #[test]
    fn gc_keeps_the_newest_the_best_and_the_aliased() {
        let mut m = model((1..=6).map(|n| v(n, &[])).collect());
        std::sync::Arc::make_mut(&mut m.versions[0])
            .files
            .push(crate::registry::StoredFile {
                path: "x".into(),
                sha256: String::new(),
                size: 10,
            });
        m.aliases.insert("production".into(), 2);
        m.remove("m", 4, None, false, &stamp(), "rm").unwrap();
        // Stored: 1 2 3 5 6; keep 2 -> 5 6; best 3 and aliased 2 stay.
        let plan = m.gc_plan(2, Some(3));
        assert_eq!(
            plan,
            vec![Doomed {
                number: 1,
                size: 10
            }]
        );
        assert!(m.gc_plan(10, None).is_empty());
        let retention: BTreeMap<String, u32> = [("*".to_string(), 2), ("m".to_string(), 5)].into();
        assert_eq!(keep_last(&retention, "m"), Some(5));
        assert_eq!(keep_last(&retention, "other"), Some(2));
        assert_eq!(keep_last(&BTreeMap::new(), "m"), None);
    }
}
