//! The client commands: each one asks the daemon over its socket, or over its HTTP API
//! with `--url` (or, for `verify --offline`, reads the root) and prints a table or, with `--json`, the daemon's answer.
//! Output goes through [`out!`]/[`outln!`], so a closed stdout (`modelreg list | head`)
//! ends the command quietly with status 0 instead of a panic.

use std::path::PathBuf;
use std::process::ExitCode;

use modelreg::client::{Client, ClientError};
use modelreg::config::Config;
use modelreg::daemon;
use modelreg::display::escape_for_terminal as esc;
use modelreg::verify::VerifyReport;

use crate::{
    AliasCmd, Cli, Command, EXIT_ERROR, EXIT_NOT_RUNNING, EXIT_PERMISSION_DENIED, EXIT_USAGE,
    TokenCmd,
};

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
mod addcheck;
mod diff;
mod events;
mod migrate;
mod place;
mod progress;
mod recover;
mod render;
mod search;
mod show;
mod upload;
mod verify_team;

pub(crate) use diff::ColorChoice;
pub(crate) use migrate::migrate;
pub(crate) use recover::recover_offline;
pub(crate) use verify_team::{TeamVerify, verify_team};

use render::*;

/// Writes to stdout. A reader that went away (EPIPE: `| head` has what it wanted) is not
/// an error of this command: exit 0 at once, as `ls | head` does. Any other write error
/// is reported and exits 1.
pub(crate) fn emit(args: std::fmt::Arguments) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            if FINISH_DESPITE_CLOSED_OUTPUT.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            std::process::exit(0);
        }
        eprintln!("modelreg: cannot write to stdout: {e}");
        std::process::exit(i32::from(EXIT_ERROR));
    }
}

/// Set by commands that change files as they report (`recover`, `migrate`): a reader
/// that stops reading (`| head`) must not end them half-way with 0; the rest of their
/// output is dropped and their work and exit status stay whole.
static FINISH_DESPITE_CLOSED_OUTPUT: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Makes a closed stdout drop the rest of the output instead of ending the command.
pub(crate) fn finish_despite_closed_output() {
    FINISH_DESPITE_CLOSED_OUTPUT.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Prints `modelreg: MESSAGE` on stderr, each line passed through
/// [`esc`](modelreg::display::escape_for_terminal): messages quote paths, names and reasons from the daemon or
/// the file system, which must be shown, never obeyed. The line breaks of a message this
/// program wrote itself (`NotRunning`'s advice) stay line breaks.
pub(crate) fn print_error(message: &str) {
    let lines: Vec<_> = message.split('\n').map(esc).collect();
    eprintln!("modelreg: {}", lines.join("\n"));
}

/// Prints a client error; the daemon's own message is escaped whole (a line break in it
/// came from a quoted value, e.g. a deprecation reason, and could forge a line).
fn print_client_error(e: &ClientError) {
    match e {
        ClientError::Remote(body) => eprintln!("modelreg: {}", esc(&body.message)),
        other => print_error(&other.to_string()),
    }
}

fn socket_path(cli: &Cli) -> Result<PathBuf, String> {
    if let Some(s) = &cli.socket {
        return Ok(s.clone());
    }
    match Config::load(&cli.root, cli.config.as_deref()) {
        Ok(c) => Ok(c.socket),
        // A settings file broken after the daemon started (its reload failed, so it
        // runs on its last good settings) must not shut every client out: `status` is
        // where that failed reload is shown. Try the default socket, and say so.
        Err(e) => {
            let default =
                Config::from_yaml(&cli.root, "", modelreg::config::ConfigSource::Embedded)
                    .map_err(|_| e.to_string())?;
            print_error(&format!(
                "warning: {e}\ntrying the default socket {} (a running daemon keeps its last good settings; --socket names another)",
                default.socket.display()
            ));
            Ok(default.socket)
        }
    }
}

/// The token for `--url`: the first line of `--token-file`, else `$MODELREG_TOKEN`.
fn token(cli: &Cli) -> Result<Option<String>, ClientError> {
    if let Some(f) = &cli.token_file {
        // A token is ~50 bytes: at most 4 KiB is read (`/dev/zero` or a wrong, huge
        // file would be read forever).
        const MAX_TOKEN_FILE: u64 = 4096;
        let refuse = |e: String| add::refuse(format!("--token-file {}: {e}", f.display()));
        let mut raw = Vec::new();
        std::fs::File::open(f)
            .and_then(|h| {
                std::io::Read::read_to_end(
                    &mut std::io::Read::take(h, MAX_TOKEN_FILE + 1),
                    &mut raw,
                )
            })
            .map_err(|e| refuse(e.to_string()))?;
        if raw.len() as u64 > MAX_TOKEN_FILE {
            return Err(refuse(format!(
                "over {MAX_TOKEN_FILE} bytes, not a token file (`modelreg token create` prints one line)"
            )));
        }
        let text = String::from_utf8(raw).map_err(|_| refuse("not text".into()))?;
        let t = text.lines().next().unwrap_or("").trim();
        if t.is_empty() {
            return Err(add::refuse(format!(
                "--token-file {}: the file holds no token",
                f.display()
            )));
        }
        return Ok(Some(t.to_string()));
    }
    Ok(std::env::var("MODELREG_TOKEN")
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}

pub(crate) fn client_command(cli: &Cli, cmd: &Command) -> ExitCode {
    let searched = match cmd {
        Command::List { search, .. } => Some((search, None)),
        Command::Versions { search, name, .. } => Some((search, Some(name.as_str()))),
        _ => None,
    };
    if let Some((search, model)) = searched
        && let Err(e) = search.check(model)
    {
        print_error(&e);
        return ExitCode::from(EXIT_USAGE);
    }
    let client = match &cli.url {
        Some(url) => token(cli).and_then(|t| Client::connect_http(url, t, cli.cacert.as_deref())),
        None => match socket_path(cli) {
            Ok(s) => Client::connect(&s),
            Err(e) => {
                print_error(&e);
                return ExitCode::from(EXIT_ERROR);
            }
        },
    };
    let result = client.and_then(|mut c| run_client(&mut c, cmd));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            print_client_error(&e);
            match e {
                ClientError::NotRunning { .. } | ClientError::Unreachable { .. } => {
                    ExitCode::from(EXIT_NOT_RUNNING)
                }
                ClientError::PermissionDenied { .. } | ClientError::Unauthorized { .. } => {
                    ExitCode::from(EXIT_PERMISSION_DENIED)
                }
                ClientError::BadUrl { .. } => ExitCode::from(EXIT_USAGE),
                _ => ExitCode::from(EXIT_ERROR),
            }
        }
    }
}

/// Prints the daemon's answer as JSON (`--json`), with bidi and C1 controls escaped
/// (serde_json leaves them raw): the same value, shown rather than obeyed.
fn print_json<T: serde::Serialize>(v: &T) {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    outln!("{}", modelreg::display::escape_json_for_terminal(&text));
}

/// Sets how long to wait for the answer to `cmd` where the 60 s default could cut short an
/// operation that succeeds: a change is answered once durable, which the daemon itself
/// gives up on only after [`CHANGE_CONFIRM`](modelreg::protocol::CHANGE_CONFIRM) (a `gc`
/// of thousands of versions may take a while), and `verify` re-hashes the whole store.
/// Reporting a timeout of our own there would call a change that was made a failure.
fn wait_long_enough(c: &mut Client, cmd: &Command) -> Result<(), ClientError> {
    use std::time::Duration;
    let wait = match cmd {
        Command::Alias { .. }
        | Command::Rollback { .. }
        | Command::Deprecate { .. }
        | Command::Rm { .. }
        | Command::Gc { .. }
        | Command::Compact { .. } => modelreg::protocol::CHANGE_CONFIRM + Duration::from_secs(10),
        Command::Verify { .. } => Duration::from_secs(24 * 3600),
        _ => return Ok(()),
    };
    c.set_read_timeout(wait)
}

/// Prints `answer` as JSON with `--json`, else with `render`.
fn show<T: serde::Serialize>(json: bool, answer: &T, render: impl FnOnce(&T)) {
    if json {
        print_json(answer);
    } else {
        render(answer);
    }
}

fn run_client(c: &mut Client, cmd: &Command) -> Result<(), ClientError> {
    wait_long_enough(c, cmd)?;
    match cmd {
        Command::Serve | Command::Recover | Command::Migrate { .. } => {
            unreachable!("handled in main")
        }
        Command::Add {
            path,
            name,
            metrics,
            meta,
            tags,
            wait,
            timeout,
            json,
        } => {
            let args = add::AddArgs {
                path,
                name: name.as_deref(),
                metrics,
                meta,
                tags,
                wait: wait.then_some(std::time::Duration::from_secs(*timeout)),
            };
            show(*json, &add::add(c, &args)?, add::print_added);
        }
        Command::List { search, json } => search::list(c, search, *json)?,
        Command::Versions { name, search, json } => search::versions(c, name, search, *json)?,
        Command::Get {
            name,
            selector,
            best,
            path,
            json,
        } => {
            let info = c.get(
                name,
                Some(selector),
                best.metric.as_deref(),
                best.direction(),
            )?;
            show(*json, &info, |info| {
                if *path {
                    outln!("{}", esc(&info.path));
                } else {
                    print_version(info);
                }
            });
        }
        Command::Show {
            name,
            selector,
            best,
            json,
        } => {
            let (metric, mode) = (best.metric.as_deref(), best.direction());
            let info = match c.get(name, Some(selector), metric, mode) {
                // `get` refuses a removed version; its card shows what the tombstone
                // keeps (the `versions` answer holds it whole).
                Err(e) if e.code() == Some(modelreg::protocol::ErrorCode::VersionRemoved) => {
                    show::tombstone(c, name, selector).ok_or(e)?
                }
                r => r?,
            };
            show(*json, &info, show::print_card);
        }
        Command::Diff {
            name,
            a,
            b,
            best,
            color,
            json,
        } => {
            let (metric, mode) = (best.metric.as_deref(), best.direction());
            let va = c.get(name, Some(a), metric, mode)?;
            let vb = c.get(name, Some(b), metric, mode)?;
            show(*json, &diff::diff(&va, &vb), |d| {
                diff::print_diff(d, color.enabled())
            });
        }
        Command::Download {
            name,
            selector,
            to,
            best,
            retries,
            json,
        } => {
            let v = c.get(
                name,
                Some(selector),
                best.metric.as_deref(),
                best.direction(),
            )?;
            let dest = to.clone().unwrap_or_else(|| match v.kind {
                modelreg::registry::Kind::File => PathBuf::from("."),
                _ => PathBuf::from(format!("{}-{}", v.name, v.version)),
            });
            show(*json, &c.download(&v, &dest, *retries)?, |d| {
                outln!(
                    "{} {} -> {} ({} file(s), {}, sha256 checked)",
                    esc(&d.name),
                    esc(&d.version),
                    esc(&d.path),
                    d.files.len(),
                    modelreg::status::human_bytes(v.size)
                )
            });
        }
        Command::Alias {
            cmd:
                AliasCmd::Set {
                    name,
                    alias,
                    version,
                    json,
                },
        } => show(*json, &c.alias_set(name, alias, version)?, print_alias_set),
        Command::Alias {
            cmd: AliasCmd::Rm { name, alias, json },
        } => show(*json, &c.alias_remove(name, alias)?, |r| {
            outln!(
                "{}: alias {} removed (was {})",
                esc(name),
                esc(alias),
                esc(&r.removed)
            )
        }),
        Command::Token {
            cmd: TokenCmd::Create { name, scope, json },
        } => show(*json, &c.token_create(name, scope)?, |t| {
            outln!("{}", t.token);
            eprintln!(
                "modelreg: token {} ({}) created; it is shown only now: send it as `Authorization: Bearer <token>`",
                esc(&t.info.name),
                t.info.scope
            );
        }),
        Command::Token {
            cmd: TokenCmd::List { json },
        } => show(*json, &c.token_list()?, |l| {
            if l.tokens.is_empty() {
                outln!("no tokens (modelreg token create NAME --scope read|write)");
            }
            for t in &l.tokens {
                outln!("{:<24} {:<6} {}", esc(&t.name), t.scope, t.created);
            }
        }),
        Command::Token {
            cmd: TokenCmd::Revoke { name, json },
        } => show(*json, &c.token_revoke(name)?, |t| {
            outln!("token {} ({}) revoked", esc(&t.name), t.scope)
        }),
        Command::History { name, json } => show(*json, &c.history(name)?, print_history),
        Command::Rollback { name, alias, json } => show(*json, &c.rollback(name, alias)?, |r| {
            outln!(
                "{}: {} rolled back {} -> {}",
                esc(name),
                esc(alias),
                esc(&r.from),
                esc(&r.version)
            )
        }),
        Command::Deprecate {
            name,
            version,
            reason,
            json,
        } => show(
            *json,
            &c.deprecate(name, version, reason.as_deref())?,
            |_| {
                outln!(
                    "{} {} deprecated: hidden from latest and best, still stored",
                    esc(name),
                    esc(version)
                )
            },
        ),
        Command::Rm {
            name,
            version,
            reason,
            force,
            json,
        } => show(
            *json,
            &c.rm(name, version, reason.as_deref(), *force)?,
            |r| {
                out!(
                    "{} {} removed (its number is never reused)",
                    esc(name),
                    esc(version)
                );
                if !r.aliases_dropped.is_empty() {
                    out!("; aliases dropped: {}", esc(&r.aliases_dropped.join(", ")));
                }
                // Counted once per inode, and nothing for files a kept version shares.
                outln!("; freed {}", modelreg::status::human_bytes(r.freed));
            },
        ),
        Command::Gc {
            name,
            dry_run,
            json,
        } => show(*json, &c.gc(name.as_deref(), *dry_run)?, print_gc),
        Command::Events {
            follow,
            since,
            models,
            kinds,
            json,
        } => events::events(c, *follow, since.as_deref(), models, kinds, *json)?,
        Command::Compact { json } => show(*json, &c.compact()?, |r| {
            outln!(
                "wrote {} (up to journal record {}); the journal is empty",
                esc(&r.registry),
                r.journal_seq
            )
        }),
        Command::Verify { name, json, .. } => {
            let report = c.verify(name.as_deref())?;
            if !print_report(&report, *json) {
                // Exit non-zero; the report above says what is wrong.
                return Err(ClientError::Remote(modelreg::protocol::ErrorBody {
                    code: modelreg::protocol::ErrorCode::Internal,
                    message: format!("verify found {} problem(s)", report.problems.len()),
                }));
            }
        }
        Command::Status { json } => show(*json, &c.status()?, print_status),
    }
    Ok(())
}

/// The settings and the root's lock, for a command that works on the root without a
/// daemon; refused with `instead` when a daemon is running there.
pub(crate) fn lock_root(cli: &Cli, instead: &str) -> Result<(Config, daemon::RootLock), String> {
    let config = Config::load(&cli.root, cli.config.as_deref()).map_err(|e| e.to_string())?;
    refuse_other_user(&config)?;
    match daemon::RootLock::acquire(&config.root) {
        Ok(lock) => Ok((config, lock)),
        Err(modelreg::error::Error::AlreadyRunning { pid, .. }) => Err(format!(
            "a daemon is running on this root (pid {pid}); {instead}"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Refuses an offline command (`recover`, `verify --offline`) run by another user than
/// the root's owner, the user the daemon runs as: what it creates (the root's lock,
/// registry.yaml, the journal, their copies) would be that user's, and the daemon could
/// then not open them (a tester ran `recover` as root on a root of uid 65534: the service
/// no longer started, "Permission denied" on the lock, then the journal).
fn refuse_other_user(config: &Config) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(&config.root) else {
        return Ok(());
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if m.uid() == me {
        return Ok(());
    }
    let (uid, gid) = (m.uid(), m.gid());
    Err(format!(
        "{} belongs to {} (uid {uid}), the user the daemon runs as, and this command runs as \
         {} (uid {me}): the files it writes (the root's lock, registry.yaml, the journal) \
         would be {}'s and the daemon could not open them. Nothing was done. Run it as the \
         root's owner: sudo -u '#{uid}' modelreg ..., or setpriv --reuid={uid} --regid={gid} \
         --init-groups modelreg ...",
        config.root.display(),
        modelreg::users::user_name(uid),
        modelreg::users::user_name(me),
        modelreg::users::user_name(me),
    ))
}

/// `verify --offline`: straight from the root, holding the root's lock so that no
/// daemon starts meanwhile.
pub(crate) fn verify_offline(cli: &Cli, name: Option<&str>, json: bool) -> ExitCode {
    let run = || -> Result<VerifyReport, String> {
        let (config, _lock) = lock_root(cli, "run `modelreg verify` without --offline")?;
        // registry.yaml may lag behind the journal beside it: read both.
        let catalog = modelreg::registry::persist::load_current(&config.registry)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{} does not exist", config.registry.display()))?;
        if let Some(Err(e)) = name.map(|n| catalog.model(n)) {
            return Err(e.to_string());
        }
        Ok(modelreg::verify::verify(
            &config.root,
            &config.store,
            &catalog,
            name,
            // Team mode: files not fetched here yet are not missing.
            config.team.is_some(),
        ))
    };
    exit_with_report(run(), json)
}

/// Prints a verification's report (or why it could not be made); non-zero unless clean.
pub(crate) fn exit_with_report(report: Result<VerifyReport, String>, json: bool) -> ExitCode {
    match report {
        Ok(report) if print_report(&report, json) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(EXIT_ERROR),
        Err(e) => {
            print_error(&e);
            ExitCode::from(EXIT_ERROR)
        }
    }
}
