//! The HTTP API's one error type: the socket's error codes, each with its HTTP status,
//! answered as `{"error": {"code": "...", "message": "..."}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::protocol::{ErrorBody, ErrorCode};

/// An error answer: a socket error code (so HTTP and socket clients read the same codes)
/// and a message, answered with [`status_of`] the code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The status; [`status_of`] the code unless a route says otherwise (405, 431).
    pub status: StatusCode,
    /// The code and message.
    pub body: ErrorBody,
    /// For 416: the file's length, sent as `Content-Range: bytes */LEN`.
    pub range_of: Option<u64>,
}

impl ApiError {
    /// An error with the status its code maps to.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status: status_of(code),
            body: ErrorBody {
                code,
                message: message.into(),
            },
            range_of: None,
        }
    }

    /// `bad_request` (400).
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::BadRequest, message)
    }

    /// `not_found` (404): no such route, or no such file in a version.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, message)
    }

    /// The same error answered with another status.
    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }
}

impl From<ErrorBody> for ApiError {
    fn from(body: ErrorBody) -> ApiError {
        ApiError {
            status: status_of(body.code),
            body,
            range_of: None,
        }
    }
}

/// The HTTP status of each error code: the one place they are paired.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest | ErrorCode::InvalidName | ErrorCode::InvalidSelector => {
            StatusCode::BAD_REQUEST
        }
        ErrorCode::UnknownOp
        | ErrorCode::NotFound
        | ErrorCode::ModelNotFound
        | ErrorCode::VersionNotFound
        | ErrorCode::AliasNotFound
        | ErrorCode::EntryNotFound
        | ErrorCode::NoMetric => StatusCode::NOT_FOUND,
        ErrorCode::VersionRemoved => StatusCode::GONE,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Timeout => StatusCode::REQUEST_TIMEOUT,
        ErrorCode::Busy | ErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Blocked | ErrorCode::NothingToRollBack | ErrorCode::Aliased => {
            StatusCode::CONFLICT
        }
        ErrorCode::UnusableFile | ErrorCode::SourceChanged => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorCode::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
        ErrorCode::Compacted | ErrorCode::Missing => StatusCode::GONE,
        ErrorCode::TooSlow => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::FileMissing | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `message` as a header value: printable ASCII kept, anything else escaped (`\u{e9}`),
/// at most 1,000 bytes.
fn header_text(message: &str) -> String {
    let mut out = String::new();
    for c in message.chars() {
        if out.len() >= 1000 {
            out.push_str("...");
            break;
        }
        match c {
            ' '..='~' => out.push(c),
            '\n' | '\t' => out.push(' '),
            other => out.extend(other.escape_unicode()),
        }
    }
    out
}

/// The JSON body of an error answer.
#[derive(serde::Serialize)]
struct Wrapped<'a> {
    error: &'a ErrorBody,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(Wrapped { error: &self.body })).into_response();
        // The message again as a header: a HEAD answer has no body, and huggingface_hub
        // shows this header in the exception it raises.
        if let Ok(v) = HeaderValue::from_str(&header_text(&self.body.message)) {
            r.headers_mut().insert("x-error-message", v);
        }
        if let Some(len) = self.range_of
            && let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}"))
        {
            r.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_carries_its_message_as_a_header_too() {
        let r = ApiError::not_found("no model \"café\"\nat all").into_response();
        assert_eq!(
            r.headers()["x-error-message"],
            r#"no model "caf\u{e9}" at all"#
        );
        assert!(header_text(&"x".repeat(5000)).len() < 1010);
    }
}
