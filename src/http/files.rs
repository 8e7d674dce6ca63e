//! Downloads of stored files.

use axum::Router;

use super::HttpState;

/// The download routes.
pub(super) fn routes() -> Router<HttpState> {
    Router::new()
}
