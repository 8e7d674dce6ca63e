//! The web dashboard's routes: `/`, `/models/{name}` and `/models/{name}/{selector}`,
//! pages drawn by [`crate::dashboard`] from the published catalog (the snapshot the JSON
//! routes answer from), errors as HTML pages with the JSON API's statuses.

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::{HttpState, status_of};
use crate::dashboard::{
    MODELS_PER_PAGE, Site, error_page, model_page, model_pages, models_page, version_page,
};
use crate::protocol::ErrorCode;
use crate::registry::RegistryError;

/// The dashboard's routes.
pub(super) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/", get(models))
        .route("/models/{name}", get(model))
        .route("/models/{name}/{selector}", get(version))
}

/// A page: HTML that may load nothing and run nothing (the page carries the same policy
/// in a meta tag; the header also covers a browser that saved the page).
fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The catalog changes with every registration: never show a stale page.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// An error as a page, with the status the JSON API gives the same error.
fn error(code: ErrorCode, message: &str) -> Response {
    let status = status_of(code);
    let title = status.canonical_reason().unwrap_or("Error");
    html(status, error_page(title, message))
}

/// Why a page is not drawn: the error code (its status) and the message.
type Refusal = (ErrorCode, String);

fn refusal(e: RegistryError) -> Refusal {
    (ErrorCode::from(&e), e.to_string())
}

fn path_error(e: &PathRejection) -> Response {
    error(
        ErrorCode::BadRequest,
        &format!("bad path: {}", e.body_text()),
    )
}

/// This server as the browser reached it, for the commands a version's page shows:
/// `http.public_url` when set (behind a TLS proxy, the only way to know the scheme and
/// the name the clients use), else the `Host` header when it is a plain `host[:port]`
/// (with `https://` when the listener serves HTTPS), else the address it listens on. `X-Forwarded-*` headers are not read: any client
/// that reaches the port could send them (docs/http.md, Behind a proxy).
fn base_url(s: &HttpState, headers: &HeaderMap) -> String {
    if let Some(url) = s
        .ctx
        .config()
        .http
        .as_ref()
        .and_then(|h| h.public_url.clone())
    {
        return url;
    }
    let plain = |h: &str| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    };
    // The scheme this listener serves (https with `http.tls`), as `status` names it.
    let serving = s.ctx.board.http();
    let scheme = match &serving {
        Some(url) if url.starts_with("https://") => "https",
        _ => "http",
    };
    match headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        Some(host) if plain(host) => format!("{scheme}://{host}"),
        _ => serving.unwrap_or_else(|| "http://localhost".to_string()),
    }
}

/// Draws a page from the current snapshot and settings, on the blocking pool: a catalog
/// of 10,000 models takes tens of milliseconds to draw, which must not hold up the
/// runtime's other connections.
async fn draw(
    s: &HttpState,
    headers: &HeaderMap,
    page: impl FnOnce(&Site) -> Result<String, Refusal> + Send + 'static,
) -> Response {
    let (catalog, config) = (s.ctx.shared.catalog(), s.ctx.config());
    let base = base_url(s, headers);
    let drawn = tokio::task::spawn_blocking(move || {
        page(&Site {
            catalog: &catalog,
            config: &config,
            base_url: &base,
        })
    })
    .await;
    match drawn {
        Ok(Ok(body)) => html(StatusCode::OK, body),
        Ok(Err((code, message))) => error(code, &message),
        Err(e) => error(
            ErrorCode::Internal,
            &format!("drawing the page failed: {e}"),
        ),
    }
}

/// `?page=N` of the models page.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    page: Option<String>,
}

async fn models(
    State(s): State<HttpState>,
    headers: HeaderMap,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Response {
    let page = match q.map(|Query(q)| q.page) {
        Ok(None) => 1,
        Ok(Some(p)) => match p.parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => {
                return error(
                    ErrorCode::BadRequest,
                    &format!("page {p:?} is not a page number (1, 2, ...)"),
                );
            }
        },
        Err(e) => return error(ErrorCode::BadRequest, &e.body_text()),
    };
    draw(&s, &headers, move |site| {
        models_page(site, page).ok_or_else(|| {
            let pages = model_pages(site.catalog.models.len());
            (
                ErrorCode::NotFound,
                format!(
                    "there is no page {page}: {} models make {pages} page{} of {MODELS_PER_PAGE}",
                    site.catalog.models.len(),
                    if pages == 1 { "" } else { "s" },
                ),
            )
        })
    })
    .await
}

async fn model(
    State(s): State<HttpState>,
    headers: HeaderMap,
    p: Result<Path<String>, PathRejection>,
) -> Response {
    match p {
        Ok(Path(name)) => {
            draw(&s, &headers, move |site| {
                model_page(site, &name).map_err(refusal)
            })
            .await
        }
        Err(e) => path_error(&e),
    }
}

async fn version(
    State(s): State<HttpState>,
    headers: HeaderMap,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    match p {
        Ok(Path((name, selector))) => {
            draw(&s, &headers, move |site| {
                version_page(site, &name, &selector).map_err(refusal)
            })
            .await
        }
        Err(e) => path_error(&e),
    }
}
