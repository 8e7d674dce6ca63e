//! A blocking client of the control socket, used by the CLI and by tests. Plain std I/O:
//! a one-shot CLI call needs no async runtime.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Direction;
use crate::protocol::VerifyReport;
use crate::protocol::{
    AliasRemoved, AliasSet, Deprecated, ErrorBody, ErrorCode, GcReport, History, ModelList, Pong,
    Removed, Request, Response, RolledBack, StatusInfo, VersionInfo, VersionList, Waited,
};
use crate::users::group_name;
/// Re-exported for the CLI, which names users in `history`.
pub use crate::users::user_name;

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

/// A connection to the daemon.
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                return permission_denied(path);
            }
            ClientError::NotRunning {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        let io = |e| ClientError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        Ok(Client {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// The socket this client is connected to (for a second connection alongside).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How long to wait for an answer (60 s after `connect`); `wait` requests need
    /// longer.
    pub fn set_read_timeout(&mut self, timeout: Duration) -> Result<(), ClientError> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .map_err(|e| ClientError::Io {
                path: self.path.clone(),
                source: e,
            })
    }

    /// Sends a raw line (a newline is added) and returns the raw answer line.
    pub fn raw(&mut self, line: &str) -> Result<String, ClientError> {
        self.raw_with(line, None)
    }

    /// [`raw`](Self::raw), passing the descriptor `fd` with the line (SCM_RIGHTS).
    pub fn raw_with(&mut self, line: &str, fd: Option<BorrowedFd>) -> Result<String, ClientError> {
        let io = |e| ClientError::Io {
            path: self.path.clone(),
            source: e,
        };
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        let sent = match fd {
            Some(fd) => send_with_fds(&self.writer, &buf, &[fd]).map_err(io)?,
            None => 0,
        };
        self.writer.write_all(&buf[sent..]).map_err(io)?;
        let mut answer = String::new();
        let n = self
            .reader
            .read_line(&mut answer)
            .map_err(|e| ClientError::Io {
                path: self.path.clone(),
                source: e,
            })?;
        if n == 0 {
            return Err(ClientError::Protocol(
                "the daemon closed the connection".into(),
            ));
        }
        Ok(answer)
    }

    /// Sends a request and returns the `result` of a successful answer.
    pub fn call(&mut self, req: &Request) -> Result<serde_json::Value, ClientError> {
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

/// Sends (a first part of) `buf` with the descriptors `fds` attached (SCM_RIGHTS, in
/// one `sendmsg`); returns the bytes sent (the caller writes the rest).
pub fn send_with_fds(sock: &UnixStream, buf: &[u8], fds: &[BorrowedFd]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let payload = std::mem::size_of_val(raw.as_slice()) as u32;
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data; every pointer set below stays valid for the call, and
    // the one control message written fits the buffer sized by CMSG_SPACE.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !raw.is_empty() {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(payload) as _;
            std::ptr::copy_nonoverlapping(raw.as_ptr(), libc::CMSG_DATA(c).cast(), raw.len());
        }
        libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// One typed method per request: each sends it and decodes its answer.
impl Client {
    /// `ping`.
    pub fn ping(&mut self) -> Result<Pong, ClientError> {
        self.call_as(&Request::Ping {})
    }

    /// `list`: every model.
    pub fn list(&mut self) -> Result<ModelList, ClientError> {
        self.call_as(&Request::List {})
    }

    /// `versions` of a model.
    pub fn versions(&mut self, name: &str) -> Result<VersionList, ClientError> {
        self.call_as(&Request::Versions {
            name: name.to_string(),
        })
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

/// Names who may connect to `path`: the socket's group and owner, or those of the first
/// folder above it that can be looked at (a folder without search permission is what
/// refused us then).
fn permission_denied(path: &Path) -> ClientError {
    use std::os::unix::fs::MetadataExt;
    let meta = path
        .ancestors()
        .find_map(|p| std::fs::symlink_metadata(p).ok());
    let (uid, gid, mode) = meta
        .map(|m| (m.uid(), m.gid(), m.mode()))
        .unwrap_or((0, 0, 0));
    // The socket itself was looked at (not a folder above it) and nobody but its owner
    // may connect: say so, rather than "you are not in group X".
    let owner_only = std::fs::symlink_metadata(path).is_ok() && mode & 0o077 == 0;
    ClientError::PermissionDenied {
        path: path.to_path_buf(),
        group: group_name(gid),
        owner: user_name(uid),
        owner_only,
    }
}
