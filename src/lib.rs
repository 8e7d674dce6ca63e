//! modelreg: a model registry daemon. Files dropped into the inbox become immutable,
//! numbered versions in the store; `registry.yaml` holds the catalog; a Unix socket
//! answers queries.
//!
//! The crate, by module (dependencies point down this list, never up):
//! - [`daemon`]   `run(config, control)`: start-up order, workers, shutdown order.
//! - [`server`]   the control socket: accept loop, per-connection reader, one dispatch.
//! - [`client`]   a blocking client of the socket, for the CLI and tests.
//! - [`watcher`]  notify events -> settled groups; overflow -> rescan.
//! - [`ingest`]   the registrar: the single owner of the catalog; copy jobs; group commit.
//! - [`messages`] what the settler, the registrar and the server send each other.
//! - [`inbox`]    what an inbox entry is now: files, sizes, mtimes, inodes, symlink policy.
//! - [`layout`]   root, inbox, store, registry.yaml pinned at start; losses noticed.
//! - [`store`]    copy + SHA-256 in one pass into staging, publish, crash recovery.
//! - [`registry`] the catalog and its queries; `registry::persist` is registry.yaml.
//! - [`sidecar`]  `<name>.metrics.yaml` parsing.
//! - [`protocol`] request and answer types shared by server and client.
//! - [`config`]   settings: embedded default, file, validation.
//! - [`names`]    model names from file names; what is temporary; what is unsafe.
//! - [`display`]  text from outside shown on a terminal: controls escaped, never obeyed.
//! - [`verify`]   re-hash the store against the catalog.
//! - [`systemd`]  sd_notify readiness, status and watchdog; socket activation.
//! - [`status`]   the board of problems and recent errors shown by `status`.
//! - [`suggest`]  "did you mean": edit distance for mistyped names in error messages.
//! - [`shutdown`] a cloneable shutdown signal.
//! - [`error`]    error types that carry path, position and cause.
//! - [`fsutil`]   SHA-256 as hex, folder fsync: helpers under store, persist and inbox.
//! - [`users`]    user and group names from their numbers, for messages.

pub mod client;
pub mod config;
pub mod daemon;
pub mod display;
pub mod error;
pub mod fsutil;
pub mod inbox;
pub mod ingest;
pub mod layout;
pub mod messages;
pub mod names;
pub mod protocol;
pub mod registry;
pub mod server;
pub mod shutdown;
pub mod sidecar;
pub mod status;
pub mod store;
pub mod suggest;
pub mod systemd;
pub mod users;
pub mod verify;
pub mod watcher;
