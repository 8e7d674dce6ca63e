//! Tables and reports printed by the client commands.

use modelreg::display::{compact_number, escape_for_terminal as esc, pad, width};
use modelreg::protocol::{AliasSet, GcReport, History, ModelSummary, StatusInfo, VersionInfo};
use modelreg::status::human_bytes as human_size;
use modelreg::verify::VerifyReport;

/// Prints a verification report; true when it is clean.
pub(super) fn print_report(r: &VerifyReport, json: bool) -> bool {
    if json {
        super::print_json(r);
    } else {
        outln!(
            "verified {} version(s), {} file(s), {}",
            r.versions,
            r.files,
            human_size(r.bytes)
        );
        if r.not_fetched > 0 {
            outln!(
                "not fetched: {} version(s), {} file(s) not on this host yet (team mode: \
                 fetched from the blob store on demand; `verify --catalog --blobs` checks the store)",
                r.not_fetched,
                r.not_fetched_files
            );
        }
        for p in &r.repaired {
            outln!("REPAIRED    {}  ({})", esc(&p.path), esc(&p.detail));
        }
        for p in &r.problems {
            let kind = serde_json::to_value(p.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_uppercase))
                .unwrap_or_default();
            // Paths of files in the store (any name an uploaded folder held) and details
            // quoting them: shown, never obeyed.
            outln!("{kind:<10}  {}  ({})", esc(&p.path), esc(&p.detail));
        }
        if r.problems.is_empty() {
            outln!("all stored files match the catalog");
        } else {
            outln!("{} problem(s)", r.problems.len());
        }
    }
    r.problems.is_empty()
}

/// Prints rows as left-aligned columns separated by two spaces.
pub(super) fn table(rows: &[Vec<String>]) {
    for line in table_lines(rows) {
        outln!("{line}");
    }
}

/// The lines [`table`] prints: each cell escaped, columns padded by terminal cells.
pub(super) fn table_lines(rows: &[Vec<String>]) -> Vec<String> {
    // Cells hold names, paths and metadata from uploaders: shown, never obeyed.
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| esc(c).into_owned()).collect())
        .collect();
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|s| width(s))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut lines = Vec::with_capacity(rows.len());
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                // Padded by terminal cells: a CJK name or an emoji takes two.
                line.push_str(&pad(cell, widths[i]));
                line.push_str("  ");
            }
        }
        lines.push(line.trim_end().to_string());
    }
    lines
}

pub(super) fn print_list(models: &[ModelSummary]) {
    if models.is_empty() {
        outln!("no models yet: drop a file into the inbox (pretrained_models/)");
        return;
    }
    let mut rows = vec![vec![
        "MODEL".into(),
        "LATEST".into(),
        "VERSIONS".into(),
        "REGISTERED".into(),
        "PATH".into(),
    ]];
    // A search's rows say how many versions matched and the newest of them.
    let searched = models.iter().any(|m| m.matches.is_some());
    if searched {
        rows[0].insert(3, "MATCHES".into());
    }
    for m in models {
        let mut row = vec![
            m.name.clone(),
            match &m.note {
                Some(n) => format!("{} ({n})", m.latest),
                None => m.latest.clone(),
            },
            m.versions.to_string(),
            m.registered_at.clone(),
            m.path.clone(),
        ];
        if searched {
            let newest = m.newest_match.as_deref().unwrap_or("-");
            row.insert(3, format!("{} (newest {newest})", m.matches.unwrap_or(0)));
        }
        rows.push(row);
    }
    table(&rows);
}

pub(super) fn metrics_text(v: &VersionInfo) -> String {
    let s: Vec<String> = v
        .metrics
        .iter()
        .map(|(k, x)| format!("{k}={}", compact_number(*x)))
        .collect();
    if s.is_empty() {
        "-".into()
    } else {
        s.join(" ")
    }
}

/// A version's state for a table: `live`, `deprecated` or `removed`, with the aliases
/// pointing to it (`live production,staging`).
fn state_text(v: &VersionInfo) -> String {
    if v.aliases.is_empty() {
        v.state.clone()
    } else {
        format!("{} {}", v.state, v.aliases.join(","))
    }
}

/// Every version, its state marked: a deprecated one is hidden from latest and best, a
/// removed one has no files any more, so its path is not shown as if it could be opened.
pub(super) fn print_versions(vs: &[VersionInfo]) {
    let mut rows = vec![vec![
        "VERSION".into(),
        "STATE".into(),
        "REGISTERED".into(),
        "SIZE".into(),
        "METRICS".into(),
        "PATH".into(),
    ]];
    for v in vs {
        let path = if v.state == "removed" {
            let when = v.mark.as_ref().map(|m| m.at.as_str()).unwrap_or("?");
            format!("- (files deleted {when})")
        } else {
            v.path.clone()
        };
        rows.push(vec![
            v.version.clone(),
            state_text(v),
            v.registered_at.clone(),
            human_size(v.size),
            metrics_text(v),
            path,
        ]);
    }
    table(&rows);
}

pub(super) fn print_version(v: &VersionInfo) {
    outln!("{} {}", esc(&v.name), esc(&v.version));
    let mut rows = vec![
        vec!["  path:".to_string(), v.path.clone()],
        vec!["  registered:".into(), v.registered_at.clone()],
        vec!["  source:".into(), v.source.clone()],
        vec!["  size:".into(), human_size(v.size)],
        vec!["  metrics:".into(), metrics_text(v)],
    ];
    if v.state != "live" || !v.aliases.is_empty() {
        let why = v
            .mark
            .as_ref()
            .map(|m| {
                let reason = m
                    .reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                format!(" (since {}{reason})", m.at)
            })
            .unwrap_or_default();
        rows.push(vec!["  state:".into(), format!("{}{why}", state_text(v))]);
    }
    if let Some(at) = &v.metrics_updated_at {
        rows.push(vec!["  metrics updated:".into(), at.clone()]);
    }
    if !v.metadata.is_empty() {
        let md: Vec<String> = v
            .metadata
            .iter()
            .map(|(k, x)| {
                let shown = match x {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) if n.is_f64() => n
                        .as_f64()
                        .map(compact_number)
                        .unwrap_or_else(|| n.to_string()),
                    other => other.to_string(),
                };
                format!("{k}={shown}")
            })
            .collect();
        rows.push(vec!["  metadata:".into(), md.join(" ")]);
    }
    if let Some(b) = &v.best_by {
        rows.push(vec![
            "  best by:".into(),
            format!("{} ({})", b.metric, b.mode.as_str()),
        ]);
    }
    for f in &v.files {
        rows.push(vec![
            "  sha256:".into(),
            format!("{}  {}", f.sha256, f.path),
        ]);
    }
    table(&rows);
}

pub(super) fn print_history(h: &History) {
    if h.aliases.is_empty() {
        outln!("no aliases");
    } else {
        for (a, n) in &h.aliases {
            outln!("{} -> {}", esc(a), esc(n));
        }
    }
    // `by` in the answer is the action (set, rollback, remove, ...); who did it is the
    // uid, shown as the user's name.
    let mut rows = vec![vec![
        "WHEN".to_string(),
        "ALIAS".into(),
        "ACTION".into(),
        "FROM".into(),
        "TO".into(),
        "USER".into(),
    ]];
    let ver = |x: Option<u32>| x.map(|n| format!("v{n}")).unwrap_or_else(|| "-".into());
    for m in &h.history {
        rows.push(vec![
            m.at.clone(),
            m.alias.clone(),
            m.by.clone(),
            ver(m.from),
            ver(m.to),
            m.uid
                .map(modelreg::client::user_name)
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    if rows.len() > 1 {
        outln!();
        table(&rows);
    }
}

/// `NAME: ALIAS -> vN (was vM)`, or `(unchanged)` when it already pointed there.
pub(super) fn print_alias_set(r: &AliasSet) {
    let was = match (&r.from, r.unchanged) {
        (_, true) => " (unchanged)".to_string(),
        (Some(f), false) => format!(" (was {f})"),
        (None, false) => String::new(),
    };
    outln!(
        "{}: {} -> {}{}",
        esc(&r.name),
        esc(&r.alias),
        esc(&r.version),
        esc(&was)
    );
}

/// What gc removed (or would), and the bytes freed.
pub(super) fn print_gc(r: &GcReport) {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    for x in &r.versions {
        outln!(
            "{verb} {} {} ({})",
            esc(&x.name),
            esc(&x.version),
            human_size(x.size)
        );
    }
    outln!(
        "{} version(s), {} {}",
        r.versions.len(),
        if r.dry_run { "would free" } else { "freed" },
        human_size(r.bytes)
    );
}

/// `status`'s team rows: the host, how current its catalog is, the orphan collector.
fn team_rows(rows: &mut Vec<Vec<String>>, t: &modelreg::protocol::TeamStatus) {
    rows.push(vec!["team host:".into(), t.host.clone()]);
    let seq = t
        .applied_seq
        .map(|n| format!("change {n}"))
        .unwrap_or_else(|| "nothing read yet".into());
    let state = match (t.catalog_unreachable_secs, t.catalog_age_secs) {
        (Some(down), Some(age)) => format!(
            "unreachable for {down:.0}s; answers are the catalog as of {age:.0}s ago ({seq})"
        ),
        (Some(down), None) => format!("unreachable for {down:.0}s ({seq})"),
        _ => format!("following, in step ({seq})"),
    };
    rows.push(vec![
        "team catalog:".into(),
        format!("{}: {state}", t.catalog),
    ]);
    let sweep = t
        .last_sweep_secs_ago
        .map(|s| format!(", last sweep {s:.0}s ago"))
        .unwrap_or_default();
    rows.push(vec![
        "team blobs:".into(),
        format!(
            "{}: {} orphan(s) collected since start ({}), grace {}s{sweep}",
            t.blobs,
            t.orphans_collected,
            modelreg::status::human_bytes(t.orphan_bytes_collected),
            t.blobs_grace_secs
        ),
    ]);
}

pub(super) fn print_status(s: &StatusInfo) {
    outln!(
        "modelreg {} (pid {}), up {:.0}s",
        esc(&s.version),
        s.pid,
        s.uptime_secs
    );
    let mut rows = vec![
        vec!["root:".to_string(), s.root.clone()],
        vec!["config:".into(), s.config.clone()],
        vec![
            "inbox:".into(),
            format!(
                "{} (watched by {}, settle {}s)",
                s.inbox, s.watch, s.settle_secs
            ),
        ],
        vec![
            "catalog:".into(),
            format!(
                "{} models, {} versions ({} registered since start{})",
                s.models,
                s.versions,
                s.registered_since_start,
                if s.dedup_saved_bytes > 0 {
                    format!(
                        ", {} stored once by dedup",
                        modelreg::status::human_bytes(s.dedup_saved_bytes)
                    )
                } else {
                    String::new()
                }
            ),
        ],
    ];
    if let Some(url) = &s.http {
        rows.push(vec!["http:".into(), url.clone()]);
    }
    if let Some(t) = &s.team {
        team_rows(&mut rows, t);
    }
    if let Some(left) = s.hf_cache_checking {
        rows.push(vec![
            "hf cache:".into(),
            format!("checking the view, {left} model(s) to go"),
        ]);
    }
    if s.waiting.is_empty() {
        rows.push(vec!["waiting:".into(), "nothing".into()]);
    }
    table(&rows);
    if !s.waiting.is_empty() {
        outln!("waiting:");
        for w in &s.waiting {
            let reason = w
                .reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            // While copying: "412.0 MiB / 1.0 GiB (40%), 205.3 MiB/s, ETA 3s".
            let progress = match (w.bytes_done, w.bytes_total) {
                (Some(done), Some(total)) => {
                    let pct = (done * 100).checked_div(total).unwrap_or(100);
                    let rate = w
                        .rate_bytes_per_sec
                        .map(|r| format!(", {}/s", human_size(r as u64)))
                        .unwrap_or_default();
                    let eta = w
                        .eta_secs
                        .map(|e| format!(", ETA {:.0}s", e.ceil()))
                        .unwrap_or_default();
                    format!(
                        ": {} / {} ({pct}%){rate}{eta}",
                        human_size(done),
                        human_size(total)
                    )
                }
                _ => String::new(),
            };
            outln!(
                "  {} [{}] {} for {:.1}s{progress}{}",
                esc(&w.name),
                esc(&w.entries.join(", ")),
                esc(&w.state),
                w.since_secs,
                esc(&reason)
            );
        }
    }
    if s.problems.is_empty() {
        outln!("problems: none");
    } else {
        outln!("problems:");
        for p in &s.problems {
            outln!("  {} (since {})", esc(&p.message), esc(&p.since));
        }
    }
    if !s.deliveries.is_empty() {
        // One line per hook/webhook: how far it got, and what fails while it retries.
        outln!("deliveries:");
        for d in &s.deliveries {
            let mut line = format!(
                "  {} {} ({}): delivered up to {}, {} pending",
                esc(&d.kind),
                esc(&d.name),
                esc(&d.target),
                d.delivered,
                d.pending
            );
            if d.skipped > 0 {
                line.push_str(&format!(", {} skipped", d.skipped));
            }
            if let Some(since) = &d.retrying_since {
                line.push_str(&format!(
                    ", retrying since {} ({} attempts)",
                    esc(since),
                    d.attempts
                ));
            }
            if let Some(e) = &d.last_error {
                line.push_str(&format!("; last error: {}", esc(e)));
            }
            if let Some(by) = &d.delivered_by {
                line.push_str(&format!("; delivered by {}", esc(by)));
            }
            outln!("{line}");
        }
    }
    if !s.recent_changes.is_empty() {
        outln!("recent changes:");
        for e in &s.recent_changes {
            outln!("  {} {}", esc(&e.at), esc(&e.message));
        }
    }
    if !s.recent_errors.is_empty() {
        outln!("recent errors:");
        for e in &s.recent_errors {
            outln!("  {} {}", esc(&e.at), esc(&e.message));
        }
    }
}
