//! `modelreg recover`: rebuild registry.yaml from the store while no daemon runs.

use std::path::Path;
use std::process::ExitCode;

use modelreg::display::escape_for_terminal as esc;
use modelreg::registry::persist::{self, journal};

use crate::{Cli, EXIT_ERROR};

/// `recover`: adds back to registry.yaml every version the store holds and it lacks,
/// holding the root's lock so that no daemon runs meanwhile. The previous registry.yaml,
/// if any, is kept as registry.yaml.before-recover.
///
/// When the journal does not continue registry.yaml (damaged, or registry.yaml older
/// than it, or both registry.yaml and its last copy gone), the start refuses and names
/// this command: the journal is set aside (registry.journal.before-recover), its intact
/// records applied on what registry.yaml and the store hold, and a fresh journal started;
/// what could not be applied is listed, record by record.
pub(crate) fn recover_offline(cli: &Cli) -> ExitCode {
    super::finish_despite_closed_output();
    let run = || -> Result<bool, String> {
        let (config, _lock) = super::lock_root(cli, "stop it before `recover`")?;
        let reg = &config.registry;
        let journal_path = persist::journal_path(reg);
        let (scan, damaged) = match journal::scan_all(&journal_path).map_err(|e| e.to_string())? {
            Some((s, d)) => (Some(s), d),
            None => (None, Vec::new()),
        };
        let yaml = persist::load(reg).map_err(|e| {
            format!("{e}; fix registry.yaml or move it aside, then run `modelreg recover` again")
        })?;
        let existed = yaml.is_some();
        // registry.yaml gone, or older than the journal: its last copy, when that one is
        // what the journal continues.
        let (loaded, mut from_base) = match yaml {
            Some(c) => match journal::base_newer(reg, Some(&c), scan.as_ref()) {
                Some(newer) => (Some(newer), true),
                None => (Some(c), false),
            },
            None => {
                let b = journal::base_joining(reg, scan.as_ref());
                let found = b.is_some();
                (b, found)
            }
        };
        let base_shown = journal::base_path(reg).display().to_string();
        if from_base {
            outln!(
                "started from its last copy {} (up to journal record {}): registry.yaml is gone or older than the journal",
                esc(&base_shown),
                loaded.as_ref().map_or(0, |c| c.journal_seq)
            );
        }
        // Whether the journal simply continues that catalog: then it is replayed as the
        // daemon would, and left in place.
        let continues = damaged.is_empty()
            && match (&loaded, &scan) {
                (_, None) => true,
                (Some(c), Some(s)) => s.base <= c.journal_seq,
                (None, Some(s)) => s.base == 0,
            };
        let mut catalog = loaded.clone().unwrap_or_default();
        let mut lost: Vec<String> = Vec::new();
        if continues
            && let Some(s) = &scan
            && let Err(e) = journal::replay(&mut catalog, s, &journal_path)
        {
            // registry.yaml cut short or edited: its last copy, when the journal fits it.
            let seq = loaded.as_ref().map_or(0, |c| c.journal_seq);
            match journal::base_continued(reg, s, seq).filter(|_| !from_base) {
                Some((from, c)) => {
                    outln!(
                        "started from its last copy {} (up to journal record {from}): {e}",
                        esc(&base_shown)
                    );
                    catalog = c;
                    from_base = true;
                }
                None => return Err(e.to_string()),
            }
        }
        let rel = |p: &Path| config.relative(p).into_owned();
        let report = modelreg::store::rebuild(&config.store, &mut catalog, &rel);
        let salvaged = match scan.as_ref().filter(|_| !continues) {
            Some(s) => {
                let yaml_seq = loaded.as_ref().map(|c| c.journal_seq);
                let first = s.records.first().map(|(d, _)| d.seq);
                if let (Some(have), Some(first)) = (yaml_seq, first.or(Some(s.base + 1)))
                    && first > have + 1
                {
                    // In neither file, but their changes are in the event log: applied.
                    let dir = config.events_dir();
                    let gap: Vec<_> = modelreg::events::after_record(&dir, have)
                        .map_err(|e| format!("read the event log {}: {e}", dir.display()))?
                        .into_iter()
                        .filter(|e| e.commit < first)
                        .collect();
                    let r = modelreg::events::restore(&mut catalog, &gap);
                    for l in &r.applied {
                        outln!("restored from the event log: {}", esc(l));
                    }
                    lost.extend(r.skipped);
                    let held: std::collections::BTreeSet<u64> =
                        gap.iter().map(|e| e.commit).collect();
                    if ((have + 1)..first).any(|n| !held.contains(&n)) {
                        lost.push(format!(
                            "of journal records {}..{} (after registry.yaml's record {have}, \
                             before the journal's first; in neither file), those the event log \
                             holds no event of ({} of {}): the versions they registered are \
                             recovered from the store, any alias move, deprecation or metric \
                             edit of theirs without an event is lost unless a later record \
                             carries the model",
                            have + 1,
                            first - 1,
                            ((have + 1)..first).filter(|n| !held.contains(n)).count(),
                            first - have - 1
                        ));
                    }
                }
                for t in &damaged {
                    lost.push(format!(
                        "{} bytes at offset {} of the journal ({}; {}): a version it registered \
                         is recovered from the store if listed above, any other change it made \
                         is lost",
                        t.size, t.offset, t.damage, t.what
                    ));
                }
                let rest = records_after(s, yaml_seq.unwrap_or(0));
                let (n, notes) = journal::salvage(&mut catalog, &rest);
                outln!(
                    "applied {n} of the {} intact record(s) of {} on registry.yaml{} and what the store holds",
                    rest.records.len(),
                    journal_path.display(),
                    if from_base { "'s last copy" } else { "" }
                );
                lost.extend(notes);
                Some(n)
            }
            None => None,
        };
        // Changes the journal lost (replaced by an older copy, or emptied) that the event
        // log still holds: applied on what the files and the store gave back.
        let events_dir = config.events_dir();
        let ahead = modelreg::events::after_record(&events_dir, catalog.journal_seq)
            .map_err(|e| format!("read the event log {}: {e}", events_dir.display()))?;
        let restored = (!ahead.is_empty()).then(|| {
            let r = modelreg::events::restore(&mut catalog, &ahead);
            outln!(
                "applied {} of the {} event(s) of journal records after {} that {} holds (the journal had lost them)",
                r.applied.len(),
                ahead.len(),
                ahead[0].commit - 1,
                events_dir.display()
            );
            r
        });
        for v in &report.from_manifest {
            outln!("recovered {} from its manifest", esc(v));
        }
        for v in &report.hashed {
            outln!(
                "recovered {} by hashing its files (stored before manifests existed): its source, registration time, metrics and metadata are lost",
                esc(v)
            );
        }
        for v in &report.tombstones {
            outln!(
                "recovered the tombstone of removed {}: its number stays taken",
                esc(v)
            );
        }
        for v in &report.removed {
            outln!(
                "marked {} removed: registry.yaml named it, the store holds only its tombstone",
                esc(v)
            );
        }
        for v in &report.unreadable {
            super::print_error(&format!("not recovered (left untouched in the store): {v}"));
        }
        let added = report.from_manifest.len()
            + report.hashed.len()
            + report.tombstones.len()
            + report.removed.len();
        if let Some(r) = &restored {
            for l in &r.applied {
                outln!("restored from the event log: {}", esc(l));
            }
            lost.extend(r.skipped.iter().cloned());
        }
        if added == 0 && !from_base && salvaged.is_none() && restored.is_none() {
            outln!(
                "{} names every version the store holds; nothing to recover",
                reg.display()
            );
            return Ok(report.unreadable.is_empty());
        }
        if existed {
            let backup = reg.with_extension("yaml.before-recover");
            std::fs::copy(reg, &backup)
                .map_err(|e| format!("keep a copy of {}: {e}", reg.display()))?;
            outln!("the previous registry is kept as {}", backup.display());
        }
        let text = persist::to_yaml(&catalog).map_err(|e| e.to_string())?;
        persist::write_atomic(reg, text.as_bytes()).map_err(|e| e.to_string())?;
        outln!(
            "wrote {} ({} version(s) recovered from the store)",
            reg.display(),
            added
        );
        if salvaged.is_some() || restored.is_some() {
            // The old journal no longer continues the file just written: set aside for a
            // person to look at, and a fresh one started after it.
            let aside = journal_path.with_extension("journal.before-recover");
            let kept = match std::fs::rename(&journal_path, &aside) {
                Ok(()) => format!("the journal is kept as {}", aside.display()),
                // Deleted: nothing to keep.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    "there was no journal".to_string()
                }
                Err(e) => return Err(format!("set {} aside: {e}", journal_path.display())),
            };
            persist::Journal::open(&journal_path, None, catalog.journal_seq)
                .map_err(|e| e.to_string())?;
            outln!(
                "{kept}; a fresh journal continues from record {}",
                catalog.journal_seq
            );
        }
        if let Err(e) = journal::keep_base(reg) {
            super::print_error(&format!("{base_shown} not updated: {e}"));
        }
        if restored.is_some() && added > 0 {
            lost.push(
                "the inbox fingerprints of the versions recovered from the store (the inbox is looked at again at start; an entry identical to its model's newest version makes no new version)".into(),
            );
        } else if salvaged.is_none() && added > 0 && !from_base {
            lost.push(
                "for the versions recovered from the store, what the store does not hold: aliases and their history, deprecations, metric edits made after registration, and the inbox fingerprints (the inbox is looked at again at start; an entry identical to its model's newest version makes no new version)".into(),
            );
        }
        if (salvaged.is_some() || restored.is_some()) && lost.is_empty() {
            outln!("lost: nothing (every journal record and event applied)");
        }
        for l in &lost {
            outln!("lost: {}", esc(l));
        }
        Ok(report.unreadable.is_empty())
    };
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_ERROR),
        Err(e) => {
            super::print_error(&e);
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// The records of `s` after record `after`, as a scan of their own (for `salvage`).
fn records_after(s: &journal::Scan, after: u64) -> journal::Scan {
    journal::Scan {
        base: s.base.max(after),
        records: s
            .records
            .iter()
            .filter(|(d, _)| d.seq > after)
            .cloned()
            .collect(),
        good_len: s.good_len,
        torn: None,
    }
}
