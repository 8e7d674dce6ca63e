//! The JSON routes under `/api/v1/`: each one the socket's request of the same name,
//! answered by the socket's own handler, its `result` as the body.

use axum::Json;
use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, RawQuery, State};
use axum::routing::get;
use serde::Deserialize;

use super::search::search_query;
use super::{ApiError, HttpState};
use crate::config::Direction;
use crate::protocol::Request;

/// The JSON routes.
pub(super) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/api/v1/ping", get(ping))
        .route("/api/v1/status", get(status))
        .route("/api/v1/models", get(models))
        .route("/api/v1/models/{name}/versions", get(versions))
        .route("/api/v1/models/{name}/versions/{selector}", get(version))
        .route("/api/v1/models/{name}/history", get(history))
}

/// A JSON answer, or the error of the same request on the socket.
pub(super) type Answer = Result<Json<serde_json::Value>, ApiError>;

/// Asks the socket's handler and answers its `result` or its error.
pub(super) async fn ask(state: &HttpState, req: Request) -> Answer {
    ask_as(state, req, None).await
}

/// [`ask`] with `uid` recorded with the change the request makes (`changes`).
pub(super) async fn ask_as(state: &HttpState, req: Request, uid: Option<u32>) -> Answer {
    let r = crate::server::dispatch(req, &state.ctx, uid).await;
    match (r.result, r.error) {
        (_, Some(e)) => Err(e.into()),
        (Some(v), None) => Ok(Json(v)),
        (None, None) => Err(ApiError::new(
            crate::protocol::ErrorCode::Internal,
            "an answer with neither result nor error",
        )),
    }
}

/// A path parameter that could not be read (bad percent-encoding, not UTF-8) is a
/// `bad_request` like any other.
pub(super) fn path_error(e: PathRejection) -> ApiError {
    ApiError::bad_request(format!("bad path: {}", e.body_text()))
}

async fn ping(State(s): State<HttpState>) -> Answer {
    ask(&s, Request::Ping {}).await
}

async fn status(State(s): State<HttpState>) -> Answer {
    ask(&s, Request::Status {}).await
}

async fn models(State(s): State<HttpState>, RawQuery(q): RawQuery) -> Answer {
    ask(&s, Request::search(None, search_query(q.as_deref())?)).await
}

async fn versions(
    State(s): State<HttpState>,
    name: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Answer {
    let Path(name) = name.map_err(path_error)?;
    ask(&s, Request::search(Some(name), search_query(q.as_deref())?)).await
}

async fn history(State(s): State<HttpState>, name: Result<Path<String>, PathRejection>) -> Answer {
    let Path(name) = name.map_err(path_error)?;
    ask(&s, Request::History { name }).await
}

/// `?metric=...&mode=min|max`, for `best`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BestParams {
    /// The metric `best` compares.
    metric: Option<String>,
    /// `min` or `max`.
    mode: Option<String>,
}

impl BestParams {
    /// The `get` request for `name` and `selector` with these parameters.
    pub(super) fn request(
        q: Result<Query<BestParams>, QueryRejection>,
        name: String,
        selector: String,
    ) -> Result<Request, ApiError> {
        let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
        let mode = match q.mode.as_deref() {
            None => None,
            Some(m) => Some(Direction::parse(m).ok_or_else(|| {
                ApiError::bad_request(format!("mode {m:?} is neither min nor max"))
            })?),
        };
        Ok(Request::Get {
            name,
            selector: Some(selector),
            metric: q.metric,
            mode,
        })
    }
}

async fn version(
    State(s): State<HttpState>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<BestParams>, QueryRejection>,
) -> Answer {
    let Path((name, selector)) = p.map_err(path_error)?;
    ask(&s, BestParams::request(q, name, selector)?).await
}
