//! A blocking client of the control socket, used by the CLI and by tests. Plain std I/O:
//! a one-shot CLI call needs no async runtime.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::protocol::{ErrorBody, ErrorCode, Request, Response};

/// Why a request got no answer, or got an error answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error(
        "no modelreg daemon is listening on {path} ({reason}).\nStart one with `modelreg serve --root <root>` (or `systemctl start modelreg`), or point --socket / $MODELREG_SOCKET at the right socket."
    )]
    NotRunning { path: PathBuf, reason: String },
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
        let stream = UnixStream::connect(path).map_err(|e| ClientError::NotRunning {
            path: path.to_path_buf(),
            reason: e.to_string(),
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

    /// Sends a raw line (a newline is added) and returns the raw answer line.
    pub fn raw(&mut self, line: &str) -> Result<String, ClientError> {
        let io = |e| ClientError::Io {
            path: self.path.clone(),
            source: e,
        };
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        self.writer.write_all(&buf).map_err(io)?;
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
        let resp: Response = serde_json::from_str(&answer)
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

    /// Like [`call`](Self::call), decoding the result into `T`.
    pub fn call_as<T: serde::de::DeserializeOwned>(
        &mut self,
        req: &Request,
    ) -> Result<T, ClientError> {
        let v = self.call(req)?;
        serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))
    }
}
