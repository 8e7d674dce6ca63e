//! A blocking client of the daemon, used by the CLI and by tests: over the control socket
//! (`socket`), or over the HTTP API from another machine (`http`, each request's route in
//! `routes`). Plain std I/O: a one-shot CLI call needs no async runtime.

mod download;
mod events;
mod http;
mod partial;
mod routes;
mod socket;
mod sse;
mod tls;
mod wire;

pub use download::Downloaded;
pub use events::StreamLine;
/// The TLS settings of an `https://` client (also the webhooks'): `tls_config(None)`
/// trusts the system's certificate authorities.
pub use tls::config as tls_config;

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Direction;
use crate::protocol::VerifyReport;
use crate::protocol::{
    AliasRemoved, AliasSet, Deprecated, ErrorBody, ErrorCode, GcReport, History, ModelList, Pong,
    Removed, Request, Response, RolledBack, StatusInfo, VersionInfo, VersionList, Waited,
};
/// Re-exported for the CLI, which names users in `history`.
pub use crate::users::user_name;
pub use socket::send_with_fds;

/// Why a request got no answer, or got an error answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error(
        "no modelreg daemon is listening on {path} ({reason}).\nStart one with `modelreg serve --root <root>` (or `systemctl start modelreg`), or point --socket / $MODELREG_SOCKET at the right socket."
    )]
    NotRunning { path: PathBuf, reason: String },
    /// A daemon may well be listening, but this user may not connect (EACCES).
    #[error("{}", permission_message(path, group, owner, *owner_only))]
    PermissionDenied {
        path: PathBuf,
        /// The group that may connect (the socket's, or its folder's when the socket
        /// itself cannot be looked at).
        group: String,
        /// The socket's owner.
        owner: String,
        /// The socket is owner-only (mode 0600, no `socket_group`): being in its group
        /// would not help, only its owner may connect.
        owner_only: bool,
    },
    /// The connection broke mid-way.
    #[error("talking to {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered with something that is not a response.
    #[error("the daemon's answer could not be read: {0}")]
    Protocol(String),
    /// The daemon answered with an error.
    #[error("{}", .0.message)]
    Remote(ErrorBody),
    /// Nothing answers at the HTTP API's address (refused, unknown host, timed out).
    #[error(
        "no modelreg HTTP API answers at {url} ({reason}).\nCheck the address (`http.listen` in the daemon's settings; `modelreg status` on its machine shows it) and that this machine can reach that port."
    )]
    Unreachable { url: String, reason: String },
    /// The HTTP API refused the token: none was given (401), it is not one the daemon
    /// keeps (401), or a read token asked for a write (403).
    #[error("{}", unauthorized_message(url, message, *token_given))]
    Unauthorized {
        url: String,
        /// The daemon's own message.
        message: String,
        /// Whether a token was sent.
        token_given: bool,
    },
    /// `--url` / `$MODELREG_URL` (or the token) cannot be used as given.
    #[error("--url {url}: {reason}")]
    BadUrl { url: String, reason: String },
    /// A download that could not be finished: cut off too often (the partial file kept),
    /// or bytes that are not the stored file's (removed).
    #[error("{0}")]
    Download(String),
    /// An `events` stream that ended without its end or an error line: the connection
    /// closed (the daemon stopped or was killed), or it was cut inside a line (the
    /// daemon closed a reader too slow to take the rest). `resume` is the seq to
    /// continue from: the one after the last whole event received (`after`), or where
    /// the stream began when none came.
    #[error(
        "the event stream ended unexpectedly {} ({reason}); continue with --since {resume}",
        after.map_or_else(|| "before any event".to_string(), |s| format!("after seq {s}"))
    )]
    StreamEnded {
        /// The seq of the last whole event received.
        after: Option<u64>,
        /// Where to continue.
        resume: u64,
        /// What was seen: closed, cut inside a line, the read's error.
        reason: String,
    },
    /// A request the HTTP API does not serve (it reads the catalog, serves downloads,
    /// takes uploads and alias and deprecate changes; removal, gc and maintenance stay on
    /// the daemon's machine).
    #[error(
        "`{op}` is not served over HTTP: the API at {url} reads the catalog, serves downloads and takes uploads, alias changes and deprecations (docs/http.md).\nRun this command on the daemon's machine, without --url / $MODELREG_URL."
    )]
    NotOverHttp { op: String, url: String },
}

/// The text of [`ClientError::Unauthorized`]: the daemon's reason, and what to do.
fn unauthorized_message(url: &str, message: &str, token_given: bool) -> String {
    let advice = if !token_given {
        "Give a token with --token-file FILE or $MODELREG_TOKEN (`modelreg token create NAME --scope read|write` on the daemon's machine prints one)."
    } else if message.contains("write token") {
        "Uploads and changes need a token of scope write (`modelreg token create NAME --scope write` on the daemon's machine)."
    } else {
        "The token sent is not one the daemon keeps: check it was copied whole and is not revoked (`modelreg token list` on the daemon's machine)."
    };
    format!("{url} refused the request: {message}\n{advice}")
}

/// The text of [`ClientError::PermissionDenied`].
fn permission_message(path: &Path, group: &str, owner: &str, owner_only: bool) -> String {
    let path = path.display();
    if owner_only {
        format!(
            "permission denied on {path}: the socket is owner-only (mode 0600, no \
             socket_group set), so only {owner} may connect.\nRun the command as {owner}, \
             or set `socket_group:` in the daemon's settings to let a group connect."
        )
    } else {
        format!(
            "permission denied on {path}: you are not in group {group} (or run as \
             {owner}).\nAsk for `usermod -aG {group} $USER` and log in again, or run the \
             command as {owner}."
        )
    }
}

impl ClientError {
    /// The daemon's error code, when it answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Remote(b) => Some(b.code),
            _ => None,
        }
    }
}

/// A connection to the daemon: its socket, or its HTTP API from another machine. Both
/// answer the same requests with the same typed answers, so the CLI prints them the same
/// way whichever it talks to.
pub struct Client {
    conn: Conn,
}

/// The transport under a [`Client`].
enum Conn {
    Socket(socket::Socket),
    Http(http::Http),
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        Ok(Client {
            conn: Conn::Socket(socket::Socket::connect(path)?),
        })
    }

    /// A client of the HTTP API at `url` (`http://host:port` or `https://`, optionally
    /// with a path prefix a reverse proxy serves it under), sending `token` as
    /// `Authorization: Bearer`; for `https://`, trusting the certificate authorities in
    /// `cacert` (PEM), else the system's. Nothing is sent yet: each request opens its
    /// own connection.
    pub fn connect_http(
        url: &str,
        token: Option<String>,
        cacert: Option<&Path>,
    ) -> Result<Client, ClientError> {
        Ok(Client {
            conn: Conn::Http(http::Http::new(url, token, cacert)?),
        })
    }

    /// The socket this client is connected to (for a second connection alongside);
    /// `None` over HTTP.
    pub fn socket_path(&self) -> Option<&Path> {
        match &self.conn {
            Conn::Socket(s) => Some(&s.path),
            Conn::Http(_) => None,
        }
    }

    /// The API's URL when this client talks HTTP.
    pub fn url(&self) -> Option<&str> {
        match &self.conn {
            Conn::Socket(_) => None,
            Conn::Http(h) => Some(h.url()),
        }
    }

    /// How long to wait for an answer (60 s after `connect`); `wait` requests need
    /// longer.
    pub fn set_read_timeout(&mut self, timeout: Duration) -> Result<(), ClientError> {
        match &mut self.conn {
            Conn::Socket(s) => s.set_read_timeout(timeout),
            Conn::Http(h) => {
                h.timeout = timeout;
                Ok(())
            }
        }
    }

    /// Sends a raw line (a newline is added) and returns the raw answer line.
    pub fn raw(&mut self, line: &str) -> Result<String, ClientError> {
        self.raw_with(line, None)
    }

    /// [`raw`](Self::raw), passing the descriptor `fd` with the line (SCM_RIGHTS). The
    /// socket's own framing: refused over HTTP.
    pub fn raw_with(&mut self, line: &str, fd: Option<BorrowedFd>) -> Result<String, ClientError> {
        match &mut self.conn {
            Conn::Socket(s) => s.exchange(line, fd),
            Conn::Http(h) => Err(ClientError::Protocol(format!(
                "raw socket lines cannot be sent to the HTTP API at {}",
                h.url()
            ))),
        }
    }

    /// Sends a request and returns the `result` of a successful answer.
    pub fn call(&mut self, req: &Request) -> Result<serde_json::Value, ClientError> {
        if let Conn::Http(h) = &mut self.conn {
            return h.call(req);
        }
        let line = serde_json::to_string(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let answer = self.raw(&line)?;
        answer_result(&answer)
    }

    /// Like [`call`](Self::call), decoding the result into `T`.
    pub fn call_as<T: serde::de::DeserializeOwned>(
        &mut self,
        req: &Request,
    ) -> Result<T, ClientError> {
        let v = self.call(req)?;
        serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))
    }
}

/// The `result` of a successful answer line, or its error.
fn answer_result(answer: &str) -> Result<serde_json::Value, ClientError> {
    let resp: Response = serde_json::from_str(answer)
        .map_err(|e| ClientError::Protocol(format!("{e}: {answer}")))?;
    if resp.ok {
        Ok(resp.result.unwrap_or(serde_json::Value::Null))
    } else {
        Err(ClientError::Remote(resp.error.unwrap_or(ErrorBody {
            code: ErrorCode::Internal,
            message: "error answer without a body".into(),
        })))
    }
}

/// One typed method per request: each sends it and decodes its answer.
impl Client {
    /// `ping`.
    pub fn ping(&mut self) -> Result<Pong, ClientError> {
        self.call_as(&Request::Ping {})
    }

    /// `list`: every model.
    pub fn list(&mut self) -> Result<ModelList, ClientError> {
        self.call_as(&Request::list())
    }

    /// `versions` of a model.
    pub fn versions(&mut self, name: &str) -> Result<VersionList, ClientError> {
        self.call_as(&Request::versions(name))
    }

    /// `get`: the version `selector` names (default `latest`); `metric` and `mode` for
    /// `best`.
    pub fn get(
        &mut self,
        name: &str,
        selector: Option<&str>,
        metric: Option<&str>,
        mode: Option<Direction>,
    ) -> Result<VersionInfo, ClientError> {
        self.call_as(&Request::Get {
            name: name.to_string(),
            selector: selector.map(str::to_string),
            metric: metric.map(str::to_string),
            mode,
        })
    }

    /// `status`.
    pub fn status(&mut self) -> Result<StatusInfo, ClientError> {
        self.call_as(&Request::Status {})
    }

    /// `wait` until inbox entry `entry` is a version of `name`.
    pub fn wait(
        &mut self,
        name: &str,
        entry: &str,
        timeout_ms: Option<u64>,
    ) -> Result<Waited, ClientError> {
        self.call_as(&Request::Wait {
            name: name.to_string(),
            entry: entry.to_string(),
            timeout_ms,
        })
    }

    /// `register`: hands the open, complete `file` over (its descriptor is passed on the
    /// socket; the daemon copies from it) as the next version of `name`, stored as
    /// `filename`. Answers once it is a version (or identical to the newest).
    pub fn register(
        &mut self,
        name: &str,
        filename: &str,
        file: &std::fs::File,
        metrics: Option<serde_json::Map<String, serde_json::Value>>,
        metadata: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> Result<Waited, ClientError> {
        use std::os::fd::AsFd;
        if let Conn::Http(h) = &mut self.conn {
            return h.upload_file(name, filename, file, metrics, metadata);
        }
        let req = Request::Register {
            name: name.to_string(),
            filename: filename.to_string(),
            metrics,
            metadata,
        };
        let line = serde_json::to_string(&req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        // Cut off before the answer (the daemon killed or restarted mid-copy), the
        // version may have been committed or not: the caller is told how to find out.
        let answer = self
            .raw_with(&line, Some(file.as_fd()))
            .map_err(|e| match e {
                ClientError::Protocol(_) | ClientError::Io { .. } => ClientError::Protocol(format!(
                    "{}; {name} may or may not have been registered: check with `modelreg versions {name}`",
                    e.to_string().trim_start_matches("the daemon's answer could not be read: ")
                )),
                e => e,
            })?;
        let v = answer_result(&answer)?;
        serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Uploads a folder, as a tar of `len` bytes read from `tar`, as the next version of
    /// `name` (HTTP only: on the socket a folder goes through the inbox).
    pub fn upload_tar(
        &mut self,
        name: &str,
        tar: &mut dyn std::io::Read,
        len: u64,
        metrics: Option<&serde_json::Map<String, serde_json::Value>>,
        metadata: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<Waited, ClientError> {
        match &mut self.conn {
            Conn::Http(h) => h.upload(name, None, tar, len, None, metrics, metadata),
            Conn::Socket(s) => Err(ClientError::Protocol(format!(
                "a tar upload is for the HTTP API, not the socket {}",
                s.path.display()
            ))),
        }
    }

    /// `alias_set`: point `alias` at `version` (`vN`).
    pub fn alias_set(
        &mut self,
        name: &str,
        alias: &str,
        version: &str,
    ) -> Result<AliasSet, ClientError> {
        self.call_as(&Request::AliasSet {
            name: name.to_string(),
            alias: alias.to_string(),
            version: version.to_string(),
        })
    }

    /// `alias_remove`.
    pub fn alias_remove(&mut self, name: &str, alias: &str) -> Result<AliasRemoved, ClientError> {
        self.call_as(&Request::AliasRemove {
            name: name.to_string(),
            alias: alias.to_string(),
        })
    }

    /// `history` of a model's aliases.
    pub fn history(&mut self, name: &str) -> Result<History, ClientError> {
        self.call_as(&Request::History {
            name: name.to_string(),
        })
    }

    /// `rollback` an alias.
    pub fn rollback(&mut self, name: &str, alias: &str) -> Result<RolledBack, ClientError> {
        self.call_as(&Request::Rollback {
            name: name.to_string(),
            alias: alias.to_string(),
        })
    }

    /// `deprecate` a version (`vN`).
    pub fn deprecate(
        &mut self,
        name: &str,
        version: &str,
        reason: Option<&str>,
    ) -> Result<Deprecated, ClientError> {
        self.call_as(&Request::Deprecate {
            name: name.to_string(),
            version: version.to_string(),
            reason: reason.map(str::to_string),
        })
    }

    /// `rm` a version (`vN`); `force` drops the aliases pointing to it.
    pub fn rm(
        &mut self,
        name: &str,
        version: &str,
        reason: Option<&str>,
        force: bool,
    ) -> Result<Removed, ClientError> {
        self.call_as(&Request::Rm {
            name: name.to_string(),
            version: version.to_string(),
            reason: reason.map(str::to_string),
            force,
        })
    }

    /// `gc` (one model or all); `dry_run` only lists.
    pub fn gc(&mut self, name: Option<&str>, dry_run: bool) -> Result<GcReport, ClientError> {
        self.call_as(&Request::Gc {
            name: name.map(str::to_string),
            dry_run,
        })
    }

    /// `compact`: registry.yaml written now, the journal emptied.
    pub fn compact(&mut self) -> Result<crate::protocol::Compacted, ClientError> {
        self.call_as(&Request::Compact {})
    }

    /// `verify` the store (one model or all).
    pub fn verify(&mut self, name: Option<&str>) -> Result<VerifyReport, ClientError> {
        self.call_as(&Request::Verify {
            name: name.map(str::to_string),
        })
    }

    /// `token_create`: a new HTTP API token of `scope` (`read` or `write`); the answer
    /// holds its secret, which is never shown again.
    pub fn token_create(
        &mut self,
        name: &str,
        scope: &str,
    ) -> Result<crate::protocol::TokenCreated, ClientError> {
        self.call_as(&Request::TokenCreate {
            name: name.to_string(),
            scope: scope.to_string(),
        })
    }

    /// `token_list`: every token's name, scope and creation time.
    pub fn token_list(&mut self) -> Result<crate::protocol::TokenList, ClientError> {
        self.call_as(&Request::TokenList {})
    }

    /// `token_revoke`: the token is refused by the HTTP API from now on.
    pub fn token_revoke(&mut self, name: &str) -> Result<crate::protocol::TokenInfo, ClientError> {
        self.call_as(&Request::TokenRevoke {
            name: name.to_string(),
        })
    }
}
