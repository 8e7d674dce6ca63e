//! The `modelreg` binary: parses arguments, sets up logging and signals for `serve`, and
//! calls into the library. Every other subcommand is a client of the daemon's socket.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use modelreg::client::{Client, ClientError};
use modelreg::config::{Config, Direction};
use modelreg::daemon::{self, Control};
use modelreg::protocol::{ModelSummary, Request, StatusInfo, VersionInfo};
use modelreg::verify::VerifyReport;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

/// modelreg: drop model files into pretrained_models/ and get immutable, numbered,
/// queryable versions under models/.
#[derive(Parser, Debug)]
#[command(name = "modelreg", version, about, long_about = None)]
struct Cli {
    /// The registry root; every relative path in the settings is resolved against it.
    #[arg(long, global = true, default_value = ".", env = "MODELREG_ROOT")]
    root: PathBuf,
    /// The settings file (default: <root>/config/modelreg.yaml if present, else the
    /// embedded default).
    #[arg(long, global = true, env = "MODELREG_CONFIG")]
    config: Option<PathBuf>,
    /// The daemon's socket, for client commands (default: from the settings).
    #[arg(long, global = true, env = "MODELREG_SOCKET")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: watch the inbox, register versions, answer on the socket.
    Serve,
    /// List every model with its latest version.
    List {
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// List every version of a model.
    Versions {
        /// The model name.
        name: String,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Show one version: vN, latest (default) or best.
    Get {
        /// The model name.
        name: String,
        /// vN, latest or best.
        #[arg(default_value = "latest")]
        selector: String,
        /// For best: the metric to compare (default: from the settings).
        #[arg(long)]
        metric: Option<String>,
        /// For best: lower is better.
        #[arg(long, conflicts_with = "max")]
        min: bool,
        /// For best: higher is better.
        #[arg(long)]
        max: bool,
        /// Print only the absolute path of the stored file (or folder), for scripts.
        #[arg(long, conflicts_with = "json")]
        path: bool,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Point an alias (production, staging, ...) at a version, or remove one.
    Alias {
        #[command(subcommand)]
        cmd: AliasCmd,
    },
    /// Show a model's aliases and every move they made (who, when, from, to).
    History {
        /// The model name.
        name: String,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Move an alias back to where it pointed before its last move.
    Rollback {
        /// The model name.
        name: String,
        /// The alias, e.g. production.
        alias: String,
    },
    /// Hide a version from latest and best; it stays stored and reachable by vN.
    Deprecate {
        /// The model name.
        name: String,
        /// vN.
        version: String,
        /// Why (kept in registry.yaml).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Delete a version's files, leaving a tombstone (its number is never reused).
    Rm {
        /// The model name.
        name: String,
        /// vN.
        version: String,
        /// Why (kept in the tombstone).
        #[arg(long)]
        reason: Option<String>,
        /// Also drop the aliases that point to it (refused otherwise).
        #[arg(long)]
        force: bool,
    },
    /// Apply the retention policy (`retention` in the settings): keep the newest N, the
    /// best and every aliased version of each model; remove the rest.
    Gc {
        /// Only this model.
        name: Option<String>,
        /// Only list what would be removed and how much it would free.
        #[arg(long)]
        dry_run: bool,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every stored file and report missing, modified or extra files; exit
    /// non-zero when anything is wrong. Nothing is repaired.
    Verify {
        /// Only this model.
        name: Option<String>,
        /// Read the root directly instead of asking the daemon (the daemon must be stopped).
        #[arg(long)]
        offline: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild registry.yaml from the store (the daemon must be stopped): every version
    /// folder's manifest, and tombstones of removed versions, are added back; what the
    /// store cannot tell (aliases, history, later metric edits) is listed as lost.
    Recover,
    /// Show the daemon's state: counts, what is waiting in the inbox, problems, errors.
    Status {
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum AliasCmd {
    /// Point ALIAS of NAME at VERSION (vN); the move is kept in the history.
    Set {
        /// The model name.
        name: String,
        /// The alias (not latest, best or vN).
        alias: String,
        /// vN.
        version: String,
    },
    /// Remove ALIAS of NAME.
    Rm {
        /// The model name.
        name: String,
        /// The alias.
        alias: String,
    },
}

/// Exit code when the daemon answered with an error or something failed.
const EXIT_ERROR: u8 = 1;
/// Exit code when no daemon listens on the socket.
const EXIT_NOT_RUNNING: u8 = 3;
/// Exit code when the socket refused this user (EACCES): a daemon may well be running.
const EXIT_PERMISSION_DENIED: u8 = 4;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => serve(&cli.root, cli.config.as_deref()),
        Command::Verify {
            ref name,
            offline: true,
            json,
        } => verify_offline(&cli, name.as_deref(), json),
        Command::Recover => recover_offline(&cli),
        ref cmd => client_command(&cli, cmd),
    }
}

fn serve(root: &Path, config_path: Option<&Path>) -> ExitCode {
    let config = match Config::load(root, config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("modelreg: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let reload_filter = init_logging(&config);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    if let Err(e) = forward_signals(tx) {
        eprintln!("modelreg: cannot install signal handlers: {e}");
        return ExitCode::from(EXIT_ERROR);
    }
    // Idle blocking threads park instead of exiting after tokio's default 10 s, so an
    // idle daemon does not wake up at all.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(std::time::Duration::from_secs(24 * 3600))
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("modelreg: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let on_reload: daemon::OnReload = Box::new(move |c: &Config| reload_filter(c));
    match runtime.block_on(daemon::run(config, rx, Some(on_reload))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("modelreg: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Logs to stderr: colours only on a terminal; without timestamps under systemd, whose
/// journal adds its own. RUST_LOG, when set, wins over the settings' `log_level`.
fn init_logging(config: &Config) -> impl Fn(&Config) + Send + Sync + 'static {
    let from_env = std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty());
    let filter = move |level: &str| {
        from_env
            .as_deref()
            .and_then(|s| EnvFilter::try_new(s).ok())
            .unwrap_or_else(|| EnvFilter::new(level))
    };
    let (filter_layer, handle) = tracing_subscriber::reload::Layer::new(filter(&config.log_level));
    let ansi = std::io::stderr().is_terminal();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    let registry = tracing_subscriber::registry().with(filter_layer);
    if config.log_json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_target(false),
            )
            .init();
    } else if std::env::var_os("JOURNAL_STREAM").is_some() {
        registry.with(fmt.without_time()).init();
    } else {
        registry.with(fmt).init();
    }
    move |c: &Config| {
        let _ = handle.reload(filter(&c.log_level));
    }
}

/// SIGTERM and SIGINT stop the daemon, SIGHUP reloads; a plain thread turns them into
/// messages, so the library itself installs no handlers.
fn forward_signals(tx: tokio::sync::mpsc::UnboundedSender<Control>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let c = if sig == SIGHUP {
                    Control::Reload
                } else {
                    Control::Shutdown
                };
                if sig != SIGHUP {
                    tracing::info!(
                        "received {}",
                        if sig == SIGTERM { "SIGTERM" } else { "SIGINT" }
                    );
                }
                if tx.send(c).is_err() {
                    break;
                }
            }
        })?;
    Ok(())
}

fn socket_path(cli: &Cli) -> Result<PathBuf, String> {
    if let Some(s) = &cli.socket {
        return Ok(s.clone());
    }
    Config::load(&cli.root, cli.config.as_deref())
        .map(|c| c.socket)
        .map_err(|e| e.to_string())
}

fn client_command(cli: &Cli, cmd: &Command) -> ExitCode {
    let socket = match socket_path(cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("modelreg: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let result = Client::connect(&socket).and_then(|mut c| run_client(&mut c, cmd));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ ClientError::NotRunning { .. }) => {
            eprintln!("modelreg: {e}");
            ExitCode::from(EXIT_NOT_RUNNING)
        }
        Err(e @ ClientError::PermissionDenied { .. }) => {
            eprintln!("modelreg: {e}");
            ExitCode::from(EXIT_PERMISSION_DENIED)
        }
        Err(e) => {
            eprintln!("modelreg: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn run_client(c: &mut Client, cmd: &Command) -> Result<(), ClientError> {
    let decode = |v: serde_json::Value| -> Result<_, ClientError> { Ok(v) };
    match cmd {
        Command::Serve | Command::Recover => unreachable!("handled in main"),
        Command::List { json } => {
            let v = decode(c.call(&Request::List {})?)?;
            if *json {
                print_json(&v);
            } else {
                let models: Vec<ModelSummary> = field(&v, "models")?;
                print_list(&models);
            }
        }
        Command::Versions { name, json } => {
            let v = c.call(&Request::Versions { name: name.clone() })?;
            if *json {
                print_json(&v);
            } else {
                let vs: Vec<VersionInfo> = field(&v, "versions")?;
                print_versions(&vs);
            }
        }
        Command::Get {
            name,
            selector,
            metric,
            min,
            max,
            path,
            json,
        } => {
            let mode = if *min {
                Some(Direction::Min)
            } else if *max {
                Some(Direction::Max)
            } else {
                None
            };
            let v = c.call(&Request::Get {
                name: name.clone(),
                selector: Some(selector.clone()),
                metric: metric.clone(),
                mode,
            })?;
            if *json {
                print_json(&v);
            } else {
                let info: VersionInfo = serde_json::from_value(v.clone())
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                if *path {
                    println!("{}", info.path);
                } else {
                    print_version(&info, v.get("best_by"));
                }
            }
        }
        Command::Alias {
            cmd:
                AliasCmd::Set {
                    name,
                    alias,
                    version,
                },
        } => {
            let v = c.call(&Request::AliasSet {
                name: name.clone(),
                alias: alias.clone(),
                version: version.clone(),
            })?;
            let was = v["from"]
                .as_str()
                .map(|f| format!(" (was {f})"))
                .unwrap_or_default();
            println!(
                "{name}: {alias} -> {}{was}",
                v["version"].as_str().unwrap_or("?")
            );
        }
        Command::Alias {
            cmd: AliasCmd::Rm { name, alias },
        } => {
            let v = c.call(&Request::AliasRemove {
                name: name.clone(),
                alias: alias.clone(),
            })?;
            println!(
                "{name}: alias {alias} removed (was {})",
                v["removed"].as_str().unwrap_or("?")
            );
        }
        Command::History { name, json } => {
            let v = c.call(&Request::History { name: name.clone() })?;
            if *json {
                print_json(&v);
            } else {
                print_history(&v);
            }
        }
        Command::Rollback { name, alias } => {
            let v = c.call(&Request::Rollback {
                name: name.clone(),
                alias: alias.clone(),
            })?;
            println!(
                "{name}: {alias} rolled back {} -> {}",
                v["from"].as_str().unwrap_or("?"),
                v["version"].as_str().unwrap_or("?")
            );
        }
        Command::Deprecate {
            name,
            version,
            reason,
        } => {
            c.call(&Request::Deprecate {
                name: name.clone(),
                version: version.clone(),
                reason: reason.clone(),
            })?;
            println!("{name} {version} deprecated: hidden from latest and best, still stored");
        }
        Command::Rm {
            name,
            version,
            reason,
            force,
        } => {
            let v = c.call(&Request::Rm {
                name: name.clone(),
                version: version.clone(),
                reason: reason.clone(),
                force: *force,
            })?;
            let dropped: Vec<&str> = v["aliases_dropped"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            print!("{name} {version} removed (its number is never reused)");
            if !dropped.is_empty() {
                print!("; aliases dropped: {}", dropped.join(", "));
            }
            println!();
        }
        Command::Gc {
            name,
            dry_run,
            json,
        } => {
            let v = c.call(&Request::Gc {
                name: name.clone(),
                dry_run: *dry_run,
            })?;
            if *json {
                print_json(&v);
            } else {
                let list = v["versions"].as_array().cloned().unwrap_or_default();
                let verb = if *dry_run { "would remove" } else { "removed" };
                for x in &list {
                    println!(
                        "{verb} {} {} ({})",
                        x["name"].as_str().unwrap_or("?"),
                        x["version"].as_str().unwrap_or("?"),
                        human_size(x["size"].as_u64().unwrap_or(0))
                    );
                }
                let freed = human_size(v["bytes"].as_u64().unwrap_or(0));
                println!(
                    "{} version(s), {} {freed}",
                    list.len(),
                    if *dry_run { "would free" } else { "freed" }
                );
            }
        }
        Command::Verify { name, json, .. } => {
            let v = c.call(&Request::Verify { name: name.clone() })?;
            let report: VerifyReport =
                serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))?;
            if !print_report(&report, *json) {
                // Exit non-zero; the report above says what is wrong.
                return Err(ClientError::Remote(modelreg::protocol::ErrorBody {
                    code: modelreg::protocol::ErrorCode::Internal,
                    message: format!("verify found {} problem(s)", report.problems.len()),
                }));
            }
        }
        Command::Status { json } => {
            let v = c.call(&Request::Status {})?;
            if *json {
                print_json(&v);
            } else {
                let s: StatusInfo =
                    serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))?;
                print_status(&s);
            }
        }
    }
    Ok(())
}

/// `recover`: adds back to registry.yaml every version the store holds and it lacks,
/// holding the root's lock so that no daemon runs meanwhile. The previous registry.yaml,
/// if any, is kept as registry.yaml.before-recover.
fn recover_offline(cli: &Cli) -> ExitCode {
    use modelreg::registry::persist;
    let run = || -> Result<bool, String> {
        let config = Config::load(&cli.root, cli.config.as_deref()).map_err(|e| e.to_string())?;
        let _lock = match daemon::RootLock::acquire(&config.root) {
            Ok(l) => l,
            Err(modelreg::error::Error::AlreadyRunning { pid, .. }) => {
                return Err(format!(
                    "a daemon is running on this root (pid {pid}); stop it before `recover`"
                ));
            }
            Err(e) => return Err(e.to_string()),
        };
        let existing = persist::load(&config.registry).map_err(|e| {
            format!("{e}; fix registry.yaml or move it aside, then run `modelreg recover` again")
        })?;
        let existed = existing.is_some();
        let mut catalog = existing.unwrap_or_default();
        let rel = |p: &Path| config.relative(p).into_owned();
        let report = modelreg::store::rebuild(&config.store, &mut catalog, &rel);
        for v in &report.from_manifest {
            println!("recovered {v} from its manifest");
        }
        for v in &report.hashed {
            println!(
                "recovered {v} by hashing its files (stored before manifests existed): its source, registration time, metrics and metadata are lost"
            );
        }
        for v in &report.tombstones {
            println!("recovered the tombstone of removed {v}: its number stays taken");
        }
        for v in &report.unreadable {
            eprintln!("modelreg: not recovered (left untouched in the store): {v}");
        }
        let added = report.from_manifest.len() + report.hashed.len() + report.tombstones.len();
        if added == 0 {
            println!(
                "{} names every version the store holds; nothing to recover",
                config.registry.display()
            );
            return Ok(report.unreadable.is_empty());
        }
        if existed {
            let backup = config.registry.with_extension("yaml.before-recover");
            std::fs::copy(&config.registry, &backup)
                .map_err(|e| format!("keep a copy of {}: {e}", config.registry.display()))?;
            println!("the previous registry is kept as {}", backup.display());
        }
        let text = persist::to_yaml(&catalog).map_err(|e| e.to_string())?;
        persist::write_atomic(&config.registry, text.as_bytes()).map_err(|e| e.to_string())?;
        println!(
            "wrote {} with {added} recovered version(s)",
            config.registry.display()
        );
        println!(
            "lost (the store does not hold them): aliases and their history, deprecations, metric edits made after registration, and the inbox fingerprints (the inbox is looked at again at start; an entry identical to its model's newest version makes no new version)"
        );
        Ok(report.unreadable.is_empty())
    };
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_ERROR),
        Err(e) => {
            eprintln!("modelreg: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// `verify --offline`: straight from the root, holding the root's lock so that no
/// daemon starts meanwhile.
fn verify_offline(cli: &Cli, name: Option<&str>, json: bool) -> ExitCode {
    let run = || -> Result<VerifyReport, String> {
        let config = Config::load(&cli.root, cli.config.as_deref()).map_err(|e| e.to_string())?;
        let _lock = match daemon::RootLock::acquire(&config.root) {
            Ok(l) => l,
            Err(modelreg::error::Error::AlreadyRunning { pid, .. }) => {
                return Err(format!(
                    "a daemon is running on this root (pid {pid}); run `modelreg verify` without --offline"
                ));
            }
            Err(e) => return Err(e.to_string()),
        };
        let catalog = modelreg::registry::persist::load(&config.registry)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{} does not exist", config.registry.display()))?;
        if let Some(n) = name
            && !catalog.models.contains_key(n)
        {
            return Err(format!("no model named {n:?}"));
        }
        Ok(modelreg::verify::verify(
            &config.root,
            &config.store,
            &catalog,
            name,
        ))
    };
    match run() {
        Ok(report) if print_report(&report, json) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(EXIT_ERROR),
        Err(e) => {
            eprintln!("modelreg: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Prints a verification report; true when it is clean.
fn print_report(r: &VerifyReport, json: bool) -> bool {
    if json {
        println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
    } else {
        println!(
            "verified {} version(s), {} file(s), {}",
            r.versions,
            r.files,
            human_size(r.bytes)
        );
        for p in &r.problems {
            let kind = serde_json::to_value(p.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_uppercase))
                .unwrap_or_default();
            println!("{kind:<10}  {}  ({})", p.path, p.detail);
        }
        if r.problems.is_empty() {
            println!("all stored files match the catalog");
        } else {
            println!("{} problem(s)", r.problems.len());
        }
    }
    r.problems.is_empty()
}

fn field<T: serde::de::DeserializeOwned>(
    v: &serde_json::Value,
    key: &str,
) -> Result<T, ClientError> {
    serde_json::from_value(v.get(key).cloned().unwrap_or_default())
        .map_err(|e| ClientError::Protocol(e.to_string()))
}

/// Prints rows as left-aligned columns separated by two spaces.
fn table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", line.trim_end());
    }
}

fn print_list(models: &[ModelSummary]) {
    if models.is_empty() {
        println!("no models yet: drop a file into the inbox (pretrained_models/)");
        return;
    }
    let mut rows = vec![vec![
        "MODEL".into(),
        "LATEST".into(),
        "VERSIONS".into(),
        "REGISTERED".into(),
        "PATH".into(),
    ]];
    for m in models {
        rows.push(vec![
            m.name.clone(),
            m.latest.clone(),
            m.versions.to_string(),
            m.registered_at.clone(),
            m.path.clone(),
        ]);
    }
    table(&rows);
}

fn metrics_text(v: &VersionInfo) -> String {
    let s: Vec<String> = v.metrics.iter().map(|(k, x)| format!("{k}={x}")).collect();
    if s.is_empty() {
        "-".into()
    } else {
        s.join(" ")
    }
}

fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = n as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < UNITS.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}

fn print_versions(vs: &[VersionInfo]) {
    let mut rows = vec![vec![
        "VERSION".into(),
        "REGISTERED".into(),
        "SIZE".into(),
        "METRICS".into(),
        "PATH".into(),
    ]];
    for v in vs {
        rows.push(vec![
            v.version.clone(),
            v.registered_at.clone(),
            human_size(v.size),
            metrics_text(v),
            v.path.clone(),
        ]);
    }
    table(&rows);
}

fn print_version(v: &VersionInfo, best_by: Option<&serde_json::Value>) {
    println!("{} {}", v.name, v.version);
    let mut rows = vec![
        vec!["  path:".to_string(), v.path.clone()],
        vec!["  registered:".into(), v.registered_at.clone()],
        vec!["  source:".into(), v.source.clone()],
        vec!["  size:".into(), human_size(v.size)],
        vec!["  metrics:".into(), metrics_text(v)],
    ];
    if let Some(at) = &v.metrics_updated_at {
        rows.push(vec!["  metrics updated:".into(), at.clone()]);
    }
    if !v.metadata.is_empty() {
        let md: Vec<String> = v
            .metadata
            .iter()
            .map(|(k, x)| {
                format!(
                    "{k}={}",
                    x.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| x.to_string())
                )
            })
            .collect();
        rows.push(vec!["  metadata:".into(), md.join(" ")]);
    }
    if let Some(b) = best_by {
        rows.push(vec![
            "  best by:".into(),
            format!(
                "{} ({})",
                b["metric"].as_str().unwrap_or("?"),
                b["mode"].as_str().unwrap_or("?")
            ),
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

fn print_history(v: &serde_json::Value) {
    let aliases = v["aliases"].as_object().cloned().unwrap_or_default();
    if aliases.is_empty() {
        println!("no aliases");
    } else {
        for (a, n) in &aliases {
            println!("{a} -> {}", n.as_str().unwrap_or("?"));
        }
    }
    let mut rows = vec![vec![
        "WHEN".to_string(),
        "ALIAS".into(),
        "FROM".into(),
        "TO".into(),
        "BY".into(),
        "UID".into(),
    ]];
    let ver = |x: &serde_json::Value| {
        x.as_u64()
            .map(|n| format!("v{n}"))
            .unwrap_or_else(|| "-".into())
    };
    for h in v["history"].as_array().cloned().unwrap_or_default() {
        rows.push(vec![
            h["at"].as_str().unwrap_or("").to_string(),
            h["alias"].as_str().unwrap_or("").to_string(),
            ver(&h["from"]),
            ver(&h["to"]),
            h["by"].as_str().unwrap_or("").to_string(),
            h["uid"]
                .as_u64()
                .map(|u| u.to_string())
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    if rows.len() > 1 {
        println!();
        table(&rows);
    }
}

fn print_status(s: &StatusInfo) {
    println!(
        "modelreg {} (pid {}), up {:.0}s",
        s.version, s.pid, s.uptime_secs
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
                "{} models, {} versions ({} registered since start)",
                s.models, s.versions, s.registered_since_start
            ),
        ],
    ];
    if s.waiting.is_empty() {
        rows.push(vec!["waiting:".into(), "nothing".into()]);
    }
    table(&rows);
    if !s.waiting.is_empty() {
        println!("waiting:");
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
            println!(
                "  {} [{}] {} for {:.1}s{progress}{reason}",
                w.name,
                w.entries.join(", "),
                w.state,
                w.since_secs
            );
        }
    }
    if s.problems.is_empty() {
        println!("problems: none");
    } else {
        println!("problems:");
        for p in &s.problems {
            println!("  {} (since {})", p.message, p.since);
        }
    }
    if !s.recent_changes.is_empty() {
        println!("recent changes:");
        for e in &s.recent_changes {
            println!("  {} {}", e.at, e.message);
        }
    }
    if !s.recent_errors.is_empty() {
        println!("recent errors:");
        for e in &s.recent_errors {
            println!("  {} {}", e.at, e.message);
        }
    }
}
