//! The client commands: each one asks the daemon over its socket (or, for `verify
//! --offline`, reads the root) and prints a table or, with `--json`, the daemon's answer.
//! Output goes through [`out!`]/[`outln!`], so a closed stdout (`modelreg list | head`)
//! ends the command quietly with status 0 instead of a panic.

use std::path::PathBuf;
use std::process::ExitCode;

use modelreg::client::{Client, ClientError};
use modelreg::config::{Config, Direction};
use modelreg::daemon;
use modelreg::protocol::{ModelSummary, Request, StatusInfo, VersionInfo};
use modelreg::verify::VerifyReport;

use crate::{AliasCmd, Cli, Command, EXIT_ERROR, EXIT_NOT_RUNNING, EXIT_PERMISSION_DENIED};

/// `print!` to stdout that ends the process quietly (status 0) when stdout is closed.
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::emit(format_args!($($arg)*)) };
}

/// `println!` to stdout that ends the process quietly (status 0) when stdout is closed.
macro_rules! outln {
    () => { $crate::cli::emit(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::emit(format_args!("{}\n", format_args!($($arg)*))) };
}

mod add;
mod recover;
mod render;

pub(crate) use recover::recover_offline;

use render::*;

/// Writes to stdout. A reader that went away (EPIPE: `| head` has what it wanted) is not
/// an error of this command: exit 0 at once, as `ls | head` does. Any other write error
/// is reported and exits 1.
pub(crate) fn emit(args: std::fmt::Arguments) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("modelreg: cannot write to stdout: {e}");
        std::process::exit(i32::from(EXIT_ERROR));
    }
}

fn socket_path(cli: &Cli) -> Result<PathBuf, String> {
    if let Some(s) = &cli.socket {
        return Ok(s.clone());
    }
    Config::load(&cli.root, cli.config.as_deref())
        .map(|c| c.socket)
        .map_err(|e| e.to_string())
}

pub(crate) fn client_command(cli: &Cli, cmd: &Command) -> ExitCode {
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

/// Prints the daemon's answer as JSON (`--json`).
fn print_json(v: &serde_json::Value) {
    outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn run_client(c: &mut Client, cmd: &Command) -> Result<(), ClientError> {
    let decode = |v: serde_json::Value| -> Result<_, ClientError> { Ok(v) };
    match cmd {
        Command::Serve | Command::Recover => unreachable!("handled in main"),
        Command::Add {
            path,
            name,
            metrics,
            meta,
            wait,
            timeout,
            json,
        } => {
            let args = add::AddArgs {
                path,
                name: name.as_deref(),
                metrics,
                meta,
                wait: wait.then_some(std::time::Duration::from_secs(*timeout)),
            };
            let v = add::add(c, &args)?;
            if *json {
                print_json(&v);
            } else {
                add::print_added(&v);
            }
        }
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
                    outln!("{}", info.path);
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
                    json,
                },
        } => {
            let v = c.call(&Request::AliasSet {
                name: name.clone(),
                alias: alias.clone(),
                version: version.clone(),
            })?;
            if *json {
                print_json(&v);
                return Ok(());
            }
            let was = if v["unchanged"] == true {
                " (unchanged)".to_string()
            } else {
                v["from"]
                    .as_str()
                    .map(|f| format!(" (was {f})"))
                    .unwrap_or_default()
            };
            outln!(
                "{name}: {alias} -> {}{was}",
                v["version"].as_str().unwrap_or("?")
            );
        }
        Command::Alias {
            cmd: AliasCmd::Rm { name, alias, json },
        } => {
            let v = c.call(&Request::AliasRemove {
                name: name.clone(),
                alias: alias.clone(),
            })?;
            if *json {
                print_json(&v);
                return Ok(());
            }
            outln!(
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
        Command::Rollback { name, alias, json } => {
            let v = c.call(&Request::Rollback {
                name: name.clone(),
                alias: alias.clone(),
            })?;
            if *json {
                print_json(&v);
                return Ok(());
            }
            outln!(
                "{name}: {alias} rolled back {} -> {}",
                v["from"].as_str().unwrap_or("?"),
                v["version"].as_str().unwrap_or("?")
            );
        }
        Command::Deprecate {
            name,
            version,
            reason,
            json,
        } => {
            let v = c.call(&Request::Deprecate {
                name: name.clone(),
                version: version.clone(),
                reason: reason.clone(),
            })?;
            if *json {
                print_json(&v);
                return Ok(());
            }
            outln!("{name} {version} deprecated: hidden from latest and best, still stored");
        }
        Command::Rm {
            name,
            version,
            reason,
            force,
            json,
        } => {
            let v = c.call(&Request::Rm {
                name: name.clone(),
                version: version.clone(),
                reason: reason.clone(),
                force: *force,
            })?;
            if *json {
                print_json(&v);
                return Ok(());
            }
            let dropped: Vec<&str> = v["aliases_dropped"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            out!("{name} {version} removed (its number is never reused)");
            if !dropped.is_empty() {
                out!("; aliases dropped: {}", dropped.join(", "));
            }
            outln!();
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
                    outln!(
                        "{verb} {} {} ({})",
                        x["name"].as_str().unwrap_or("?"),
                        x["version"].as_str().unwrap_or("?"),
                        human_size(x["size"].as_u64().unwrap_or(0))
                    );
                }
                let freed = human_size(v["bytes"].as_u64().unwrap_or(0));
                outln!(
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

/// `verify --offline`: straight from the root, holding the root's lock so that no
/// daemon starts meanwhile.
pub(crate) fn verify_offline(cli: &Cli, name: Option<&str>, json: bool) -> ExitCode {
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

fn field<T: serde::de::DeserializeOwned>(
    v: &serde_json::Value,
    key: &str,
) -> Result<T, ClientError> {
    serde_json::from_value(v.get(key).cloned().unwrap_or_default())
        .map_err(|e| ClientError::Protocol(e.to_string()))
}
