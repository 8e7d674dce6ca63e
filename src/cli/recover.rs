//! `modelreg recover`: rebuild registry.yaml from the store while no daemon runs.

use std::path::Path;
use std::process::ExitCode;

use modelreg::display::escape_for_terminal as esc;

use crate::{Cli, EXIT_ERROR};

/// `recover`: adds back to registry.yaml every version the store holds and it lacks,
/// holding the root's lock so that no daemon runs meanwhile. The previous registry.yaml,
/// if any, is kept as registry.yaml.before-recover.
pub(crate) fn recover_offline(cli: &Cli) -> ExitCode {
    use modelreg::registry::persist;
    let run = || -> Result<bool, String> {
        let (config, _lock) = super::lock_root(cli, "stop it before `recover`")?;
        let journal_path = persist::journal_path(&config.registry);
        let journal = persist::journal::scan(&journal_path)
            .map_err(|e| format!("{e}\n(then run `modelreg recover` again)"))?;
        // registry.yaml with the journal's later changes: what the daemon last committed.
        let existing = persist::load_current(&config.registry).map_err(|e| {
            format!("{e}; fix registry.yaml or move it aside, then run `modelreg recover` again")
        })?;
        let existed = config.registry.exists();
        // registry.yaml gone, but found under its second name (the journal's base).
        let from_base = !existed
            && persist::journal::base_joining(&config.registry, journal.as_ref()).is_some();
        let mut catalog = existing.unwrap_or_default();
        let rel = |p: &Path| config.relative(p).into_owned();
        let report = modelreg::store::rebuild(&config.store, &mut catalog, &rel);
        // Both names of registry.yaml gone: the journal's records were not applied (they
        // continue a catalog that is not there); applied now on what the store rebuilt,
        // each carrying its model's whole alias state.
        let salvaged = match journal.as_ref() {
            Some(scan) if !existed && !from_base && scan.base > 0 && !scan.records.is_empty() => {
                let (n, notes) = persist::journal::salvage(&mut catalog, scan);
                outln!(
                    "applied {n} of the {} record(s) of {} on what the store holds (aliases, their moves, deprecations, metric edits)",
                    scan.records.len(),
                    journal_path.display()
                );
                for note in &notes {
                    outln!("not recovered: {}", esc(note));
                }
                n
            }
            _ => 0,
        };
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
        for v in &report.unreadable {
            super::print_error(&format!("not recovered (left untouched in the store): {v}"));
        }
        let added = report.from_manifest.len() + report.hashed.len() + report.tombstones.len();
        if added == 0 && !from_base && salvaged == 0 {
            outln!(
                "{} names every version the store holds; nothing to recover",
                config.registry.display()
            );
            return Ok(report.unreadable.is_empty());
        }
        if existed {
            let backup = config.registry.with_extension("yaml.before-recover");
            std::fs::copy(&config.registry, &backup)
                .map_err(|e| format!("keep a copy of {}: {e}", config.registry.display()))?;
            outln!("the previous registry is kept as {}", backup.display());
        }
        let text = persist::to_yaml(&catalog).map_err(|e| e.to_string())?;
        persist::write_atomic(&config.registry, text.as_bytes()).map_err(|e| e.to_string())?;
        if from_base {
            outln!(
                "wrote {} from its last copy {} and the journal's later records",
                config.registry.display(),
                persist::journal::base_path(&config.registry).display()
            );
        }
        if added > 0 {
            outln!(
                "wrote {} with {added} recovered version(s)",
                config.registry.display()
            );
        }
        if added > 0 && !from_base {
            let what = if salvaged > 0 {
                "what the journal's records did not carry: alias moves, deprecations and metric edits made before its first record"
            } else {
                "aliases and their history, deprecations, metric edits made after registration"
            };
            outln!(
                "lost (the store does not hold them): {what}, and the inbox fingerprints (the inbox is looked at again at start; an entry identical to its model's newest version makes no new version)"
            );
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
