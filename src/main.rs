//! The `modelreg` binary: parses arguments and dispatches to the daemon or the client.
//!
//! `serve` is [`daemon::serve`]; every other subcommand is a client of the daemon's
//! socket, or of its HTTP API with `--url` (`cli`), except `verify --offline`, `recover` and `migrate`, which read the root directly,
//! and `verify --catalog`, which reads the team catalog and blob store.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use modelreg::daemon;

mod cli;

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
    /// The daemon's HTTP API (http://HOST:PORT or https://), for client commands from another
    /// machine; wins over --socket. Commands that change or maintain the registry stay on
    /// its machine.
    #[arg(long, global = true, env = "MODELREG_URL", value_name = "URL")]
    url: Option<String>,
    /// A file holding the API token for --url (default: $MODELREG_TOKEN). Not given on
    /// the command line, where other users could read it in `ps`.
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// For an https:// --url: the certificate authority (PEM) that signed the API's
    /// certificate, e.g. a self-signed one (default: the system's).
    #[arg(long, global = true, env = "MODELREG_CACERT", value_name = "FILE")]
    cacert: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// The search flags of `list` and `versions` (docs/search.md).
#[derive(clap::Args, Debug, Clone, Default)]
struct SearchFlags {
    /// Only versions matching EXPR, e.g. 'accuracy >= 0.7 and dataset == "imagenet"'
    /// (==, !=, <, <=, >, >=, in, contains, and, or, not, parentheses).
    #[arg(long = "where", value_name = "EXPR")]
    filter: Option<String>,
    /// Only versions tagged TAG (metadata `tags`); repeat for several, all required.
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Order by FIELD (a metric, a metadata key, version, registered_at, size, ...);
    /// -FIELD for descending. Missing values come last.
    #[arg(long, value_name = "FIELD", allow_hyphen_values = true)]
    sort: Option<String>,
    /// At most N rows; the next page's --cursor is printed on stderr.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Continue after the previous page (its `next_cursor`).
    #[arg(long, value_name = "CURSOR")]
    cursor: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: watch the inbox, register versions, answer on the socket.
    Serve,
    /// List every model with its latest version (with --where/--tag: the models with a
    /// matching version).
    List {
        #[command(flatten)]
        search: SearchFlags,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// List every version of a model, or those --where/--tag find (docs/search.md).
    Versions {
        /// The model name.
        name: String,
        #[command(flatten)]
        search: SearchFlags,
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
        #[command(flatten)]
        best: BestArgs,
        /// Print only the absolute path of the stored file (or folder), for scripts.
        #[arg(long, conflicts_with = "json")]
        path: bool,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Show one version as a model card: state, aliases, metrics and their source,
    /// metadata, facts read from the artifact, files and provenance.
    Show {
        /// The model name.
        name: String,
        /// vN, latest, best or an alias.
        #[arg(default_value = "latest")]
        selector: String,
        #[command(flatten)]
        best: BestArgs,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Compare two versions: metric deltas (better or worse by each metric's direction),
    /// metadata and extracted facts, parameter count, files by SHA-256.
    Diff {
        /// The model name.
        name: String,
        /// The version to compare from: vN, latest, best or an alias.
        a: String,
        /// The version to compare to.
        b: String,
        #[command(flatten)]
        best: BestArgs,
        /// Colour better (green) and worse (red): auto is on a terminal only, and never
        /// with NO_COLOR set.
        #[arg(long, value_enum, default_value = "auto", value_name = "WHEN")]
        color: cli::ColorChoice,
        /// Print the differences as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Download a version's files here, each checked against its SHA-256.
    ///
    /// Over --url from the HTTP API, else copied from the daemon's store. Each file
    /// gathers in FILE.part and is put in place only once its SHA-256 is the stored one; a
    /// cut download is resumed (Range) by running the command again.
    Download {
        /// The model name.
        name: String,
        /// vN, latest, best or an alias.
        #[arg(default_value = "latest")]
        selector: String,
        /// Where: a file, or a folder to put it in (default: here; a folder version goes
        /// to NAME-vN/).
        #[arg(long, value_name = "PATH")]
        to: Option<PathBuf>,
        #[command(flatten)]
        best: BestArgs,
        /// How many cut connections this run resumes before giving up (the partial file
        /// is kept for the next run).
        #[arg(long, default_value_t = 3)]
        retries: u32,
        /// Print what was written as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Point an alias (production, staging, ...) at a version, or remove one.
    Alias {
        #[command(subcommand)]
        cmd: AliasCmd,
    },
    /// Create, list or revoke tokens for the HTTP API (docs/http.md, Authentication).
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
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
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Hide a version from latest and best; it stays stored and reachable by vN.
    // The usage line is spelled out: on a mistyped option clap would otherwise show
    // `--reason <REASON>` in it as if it were required.
    #[command(override_usage = "modelreg deprecate [--reason R] [--json] NAME vN")]
    Deprecate {
        /// The model name.
        name: String,
        /// vN.
        version: String,
        /// Why (kept in registry.yaml).
        #[arg(long)]
        reason: Option<String>,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Delete a version's files, leaving a tombstone (its number is never reused).
    #[command(override_usage = "modelreg rm [--reason R] [--force] [--json] NAME vN")]
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
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Register a file or folder from anywhere. A file is handed over open: the daemon
    /// copies it from the descriptor this command passes, so neither the daemon's
    /// permissions on its path nor a settle wait are involved. A folder (or metadata too
    /// large for a request) is copied into the inbox under a hidden name (its metrics
    /// sidecar first), renamed into place, and removed once registered. As the Python
    /// client does.
    Add {
        /// The file or folder to register.
        path: PathBuf,
        /// The model name (default: the file's name without its extension, or the
        /// folder's name).
        #[arg(long)]
        name: Option<String>,
        /// A metric, `key=number` (repeatable); `best` compares them.
        #[arg(long = "metric", value_name = "K=V")]
        metrics: Vec<String>,
        /// Metadata, `key=value` (repeatable), kept with the version; a YAML flow
        /// list or map is read as one (`--meta 'tags=[a, b]'`).
        #[arg(long = "meta", value_name = "K=V")]
        meta: Vec<String>,
        /// A tag (repeatable), added to the metadata's `tags` list that `--tag`
        /// searches.
        #[arg(long = "tag", value_name = "T")]
        tags: Vec<String>,
        /// Give up after --timeout seconds. Without it, `add` waits as long as the daemon's
        /// copy takes; either way it prints the version (and removes an inbox copy once
        /// registered).
        #[arg(long)]
        wait: bool,
        /// With --wait, give up after this many seconds.
        #[arg(long, default_value_t = 600, requires = "wait")]
        timeout: u64,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
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
    /// Show the event log: every change to the catalog, numbered (docs/events.md).
    /// Without --since, the last 20 events (with --model/--kind, the last 20 that match);
    /// with --follow, then every new one as it is
    /// committed, until interrupted.
    Events {
        /// Keep printing events as they come.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Start at this seq (0: the oldest kept); `now`: only events to come.
        #[arg(long, value_name = "SEQ|now", allow_hyphen_values = true)]
        since: Option<String>,
        /// Only this model (a name, or a glob such as 'resnet*'); repeatable.
        #[arg(long = "model", value_name = "MODEL")]
        models: Vec<String>,
        /// Only this kind (registered, metrics_updated, alias_set, alias_moved,
        /// alias_rolled_back, alias_removed, deprecated, undeprecated, removed, gc);
        /// repeatable.
        #[arg(long = "kind", value_name = "KIND")]
        kinds: Vec<String>,
        /// One JSON object per line (NDJSON), as the daemon sends them.
        #[arg(long)]
        json: bool,
    },
    /// Write registry.yaml now from the daemon's catalog and empty the journal (it is
    /// otherwise rewritten at most every `registry_write_interval`, and at shutdown)
    Compact {
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every stored file and report missing, modified or extra files; exit
    /// non-zero when anything is wrong. Nothing is repaired (but the team blob store's
    /// blobs, with --catalog --blobs --repair).
    Verify {
        /// Only this model.
        name: Option<String>,
        /// Read the root directly instead of asking the daemon (the daemon must be stopped).
        #[arg(long)]
        offline: bool,
        /// Check a team catalog (PostgreSQL: postgres://... or host=... dbname=...)
        /// against its blob store (--blobs) instead: every file it names must be there
        /// with its size and SHA-256 (each blob is read back in full).
        #[arg(
            long,
            value_name = "POSTGRES_URL",
            requires = "blobs",
            conflicts_with = "offline"
        )]
        catalog: Option<String>,
        /// With --catalog: the blob store, s3://bucket/prefix (endpoint and keys from the
        /// AWS_* variables) or a shared folder.
        #[arg(long, value_name = "STORE", requires = "catalog")]
        blobs: Option<String>,
        /// With --catalog: only look each blob up (present, its size) without reading it.
        #[arg(long, requires = "catalog")]
        size_only: bool,
        /// With --catalog: upload each missing or damaged blob again from a copy in this
        /// host's store (under --root) whose SHA-256 checks out; those with no good copy
        /// here are reported (run it on a host that has one).
        #[arg(long, requires = "catalog")]
        repair: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move this registry to the team backends (docs/team.md): every stored file uploaded
    /// to the blob store and verified, then the catalog written to PostgreSQL with its
    /// version numbers, tombstones, aliases and their history. Safe to run again: what is
    /// there already is skipped; a catalog holding other data for a model is refused.
    Migrate {
        /// The team catalog: postgres://USER@HOST/DB or host=... dbname=...
        #[arg(long, value_name = "POSTGRES_URL")]
        to: String,
        /// The blob store: s3://bucket/prefix (endpoint and keys from the AWS_* variables)
        /// or a shared folder.
        #[arg(long, value_name = "STORE")]
        blobs: String,
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

/// How `best` compares, for `get` and `download`.
#[derive(clap::Args, Debug)]
struct BestArgs {
    /// For best: the metric to compare (default: from the settings).
    #[arg(long)]
    metric: Option<String>,
    /// For best: lower is better.
    #[arg(long, conflicts_with = "max")]
    min: bool,
    /// For best: higher is better.
    #[arg(long)]
    max: bool,
}

impl BestArgs {
    /// The direction `--min`/`--max` ask for (neither: the settings').
    fn direction(&self) -> Option<modelreg::config::Direction> {
        use modelreg::config::Direction;
        match (self.min, self.max) {
            (true, _) => Some(Direction::Min),
            (_, true) => Some(Direction::Max),
            _ => None,
        }
    }
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
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Remove ALIAS of NAME.
    Rm {
        /// The model name.
        name: String,
        /// The alias.
        alias: String,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Create a token and print it once: only its SHA-256 is kept, so a lost token
    /// cannot be shown again (revoke it and create another).
    Create {
        /// The token's name (letters, digits, '.', '_', '-'), for list and revoke.
        name: String,
        /// read: the catalog and downloads; write: also uploads.
        #[arg(long, value_parser = ["read", "write"])]
        scope: String,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// List the tokens: names, scopes and when they were created (never the secrets).
    List {
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: the HTTP API refuses it from the next request on.
    Revoke {
        /// The token's name.
        name: String,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
}

/// Exit code when the daemon answered with an error or something failed.
const EXIT_ERROR: u8 = 1;
/// Exit code for bad usage (as clap's own): here a `--url` that is not a URL.
const EXIT_USAGE: u8 = 2;
/// Exit code when no daemon listens on the socket.
const EXIT_NOT_RUNNING: u8 = 3;
/// Exit code when the socket refused this user (EACCES): a daemon may well be running.
const EXIT_PERMISSION_DENIED: u8 = 4;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => match daemon::serve(&cli.root, cli.config.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("modelreg: {e}");
                ExitCode::from(EXIT_ERROR)
            }
        },
        // These read the root on this machine: a URL asked for another machine's daemon,
        // which they cannot reach.
        Command::Verify { offline: true, .. } | Command::Recover | Command::Migrate { .. }
            if cli.url.is_some() =>
        {
            eprintln!(
                "modelreg: `{}` works on the root on the daemon's machine, not over --url / $MODELREG_URL; run it there (unset MODELREG_URL)",
                match cli.command {
                    Command::Recover => "recover",
                    Command::Migrate { .. } => "migrate",
                    _ => "verify --offline",
                }
            );
            ExitCode::from(EXIT_ERROR)
        }
        Command::Verify {
            ref name,
            catalog: Some(ref catalog),
            blobs: Some(ref blobs),
            size_only,
            repair,
            json,
            ..
        } => cli::verify_team(cli::TeamVerify {
            catalog,
            blobs,
            only: name.as_deref(),
            size_only,
            repair,
            root: &cli.root,
            json,
        }),
        Command::Verify {
            ref name,
            offline: true,
            json,
            ..
        } => cli::verify_offline(&cli, name.as_deref(), json),
        Command::Migrate { ref to, ref blobs } => cli::migrate(&cli, to, blobs),
        Command::Recover => cli::recover_offline(&cli),
        ref cmd => cli::client_command(&cli, cmd),
    }
}
