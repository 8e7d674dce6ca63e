//! modelreg: a model registry daemon. Files dropped into the inbox become immutable,
//! numbered versions in the store; `registry.yaml` holds the catalog; a Unix socket
//! answers queries.
//!
//! The crate, by module, in layers (a module names only modules of a lower layer;
//! tests/layers.rs checks it, docs/architecture.md draws it):
//! - 9 [`daemon`]   `serve` (logging, signals) around `run(config, control)`: start-up, shutdown.
//! - 8 [`http`]     the HTTP API: the socket's answers as JSON, downloads, over HTTP/1.
//! - 7 [`server`]   the control socket: connections, one handler per request.
//! - 7 [`deliver`]  exec hooks and webhooks: each event delivered at least once, in order, per endpoint.
//! - 6 [`watcher`]  inbox events -> settled groups; overflow -> rescan.
//! - 6 [`ingest`]   the registrar: the single owner of the catalog; copy jobs; group commit.
//! - 5 [`layout`]   root, inbox, store, registry.yaml pinned at start; losses noticed.
//! - 5 [`hfcache`]  the Hugging Face cache view `<root>/hf`: links into the store, per selector.
//! - 5 [`dashboard`] the web dashboard's pages: HTML and SVG from a catalog snapshot, no I/O.
//! - 4 [`messages`] what the settler, the registrar and the server send each other.
//! - 4 [`status`]   the board of problems and recent errors shown by `status`.
//! - 4 [`verify`]   re-hash the store against the catalog.
//! - 4 [`client`]   a blocking client of the socket with typed answers, for the CLI and tests.
//! - 3 [`protocol`] requests, typed answers and error codes shared by server and client.
//! - 3 [`store`]    copy + SHA-256 in one pass into staging, publish, manifests, recovery.
//! - 3 [`inbox`]    what an inbox entry is now: files, stats, checked opens.
//! - 3 [`events`]   the event log: every change as a numbered event, durable in `<root>/events/`.
//! - 3 [`query`]    search: `where` expressions, tags, sort and paging for list and versions.
//! - 3 [`extract`]  facts read from a version's headers (safetensors, GGUF, ONNX, torch zip, HF folders), provenance.
//! - 3 [`catalogdb`] team mode's shared catalog in PostgreSQL: numbered versions, aliases, the change log.
//! - 3 [`blobs`]    the team blob store: content-addressed files on S3 or a shared folder, verified.
//! - 3 [`tokens`]   HTTP API tokens: kept as SHA-256 hashes in tokens.yaml, checked in constant time.
//! - 2 [`registry`] the catalog, its rules (selectors, changes, errors) and registry.yaml.
//! - 1 [`config`]   settings: embedded default, file, validation, live settings.
//! - 1 [`sidecar`]  `<name>.metrics.yaml` / `.json`: bounded reading, metrics and metadata.
//! - 1 [`display`]  text from outside shown on a terminal: controls escaped, never obeyed.
//! - 1 [`fsutil`]   SHA-256 as hex, folder fsync.
//! - 1 [`systemd`]  sd_notify readiness, status and watchdog; socket activation.
//! - 0 [`metrics`]  counters and histograms on atomics; the Prometheus text format.
//! - 0 [`names`]    model names from file names; what is temporary; what is unsafe.
//! - 0 [`users`]    user and group names from their numbers, for messages.
//! - 0 [`suggest`]  "did you mean": edit distance for mistyped names in error messages.
//! - 0 [`shutdown`] a cloneable shutdown signal.
//! - 0 [`error`]    error types that carry path, position and cause.

pub mod blobs;
pub mod catalogdb;
pub mod client;
pub mod config;
pub mod daemon;
pub mod dashboard;
pub mod deliver;
pub mod display;
pub mod error;
pub mod events;
pub mod extract;
pub mod fsutil;
pub mod hfcache;
pub mod http;
pub mod inbox;
pub mod ingest;
pub mod layout;
pub mod messages;
pub mod metrics;
pub mod names;
pub mod protocol;
pub mod query;
pub mod registry;
pub mod server;
pub mod shutdown;
pub mod sidecar;
pub mod status;
pub mod store;
pub mod suggest;
pub mod systemd;
pub mod team;
pub mod tokens;
pub mod users;
pub mod verify;
pub mod watcher;
