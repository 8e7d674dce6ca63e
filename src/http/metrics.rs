//! `GET /metrics`: the daemon in the Prometheus text format (docs/http.md, Metrics), and
//! what the HTTP side counts for it: requests and their latencies by route, connections.
//!
//! Requests are labelled by the route *template* the router matched
//! (`/api/v1/models/{name}/versions`), by a method from a fixed list and by status code,
//! never by the path sent: a client requesting a million different URLs adds no series
//! (unknown paths are all `route="unmatched"`, unknown methods `method="other"`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::HttpState;
use crate::metrics::{CONTENT_TYPE, Exposition, Histogram, Kind, REQUEST_BUCKETS};
use crate::protocol::{Request as SocketRequest, StatusInfo};

/// Where the exposition is served.
pub const PATH: &str = "/metrics";

/// The route label of a request no route matched.
const UNMATCHED: &str = "unmatched";

/// The methods counted by name; any other is `other`.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "other",
];

/// The states a waiting inbox entry can be in (`modelreg status`), each always exposed so
/// that a series does not vanish when it drops to zero.
const WAITING_STATES: [&str; 5] = ["writing", "settling", "registering", "retrying", "blocked"];

/// The route.
pub(super) fn routes() -> Router<HttpState> {
    Router::new().route(PATH, get(scrape))
}

/// What the HTTP side counts, shared by the listener (connections) and the request
/// layer (requests).
#[derive(Debug, Default)]
pub struct HttpMetrics {
    /// By route template; each route's series by method. Written (a new route seen)
    /// at most once per route, so nearly every request takes only the read lock.
    routes: RwLock<HashMap<String, Arc<RouteSeries>>>,
    open: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
}

#[derive(Debug)]
struct RouteSeries {
    /// One per entry of [`METHODS`].
    methods: [MethodSeries; METHODS.len()],
}

#[derive(Debug)]
struct MethodSeries {
    latency: Histogram,
    /// Answers by status code: a handful per route, so a short lock is cheap.
    codes: Mutex<BTreeMap<u16, u64>>,
}

impl Default for RouteSeries {
    fn default() -> Self {
        RouteSeries {
            methods: std::array::from_fn(|_| MethodSeries {
                latency: Histogram::new(REQUEST_BUCKETS),
                codes: Mutex::new(BTreeMap::new()),
            }),
        }
    }
}

/// An open connection, counted until dropped.
pub(super) struct OpenConnection(Arc<HttpMetrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl HttpMetrics {
    /// Counts a connection accepted and open until the guard is dropped.
    pub(super) fn connection(self: &Arc<Self>) -> OpenConnection {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.clone())
    }

    /// Counts a connection refused because every slot was taken (answered 503 `busy`).
    pub(super) fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    fn record(&self, route: &str, method: &Method, code: u16, took: Duration) {
        let series = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(route)
            .cloned();
        let series = series.unwrap_or_else(|| {
            let mut w = self.routes.write().unwrap_or_else(|p| p.into_inner());
            w.entry(route.to_string()).or_default().clone()
        });
        let m = METHODS
            .iter()
            .position(|n| *n == method.as_str())
            .unwrap_or(METHODS.len() - 1);
        let s = &series.methods[m];
        s.latency.observe(took);
        *s.codes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(code)
            .or_default() += 1;
    }

    fn write(&self, out: &mut Exposition) {
        let routes: BTreeMap<String, Arc<RouteSeries>> = (self.routes.read())
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(r, s)| (r.clone(), s.clone()))
            .collect();
        let used = || {
            routes.iter().flat_map(|(r, s)| {
                (METHODS.iter().zip(&s.methods))
                    .filter(|(_, m)| m.latency.count() > 0)
                    .map(move |(name, m)| (r.as_str(), *name, m))
            })
        };
        let name = "modelreg_http_requests_total";
        out.family(
            name,
            Kind::Counter,
            "HTTP requests answered, by route template, method and status code.",
        );
        for (route, method, m) in used() {
            let codes = m.codes.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for (code, n) in codes {
                let code = code.to_string();
                out.sample(
                    name,
                    &[("route", route), ("method", method), ("code", &code)],
                    n as f64,
                );
            }
        }
        let name = "modelreg_http_request_duration_seconds";
        out.family(name, Kind::Histogram, "Time from a request's head read to its answer's head, by route template and method (a download's body streams afterwards).");
        for (route, method, m) in used() {
            out.histogram(name, &[("route", route), ("method", method)], &m.latency);
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        out.single(
            "modelreg_http_connections_open",
            Kind::Gauge,
            "HTTP connections open now.",
            load(&self.open),
        );
        out.single(
            "modelreg_http_connections_total",
            Kind::Counter,
            "HTTP connections accepted since start.",
            load(&self.accepted),
        );
        out.single(
            "modelreg_http_connections_refused_total",
            Kind::Counter,
            "HTTP connections refused because every slot was taken or their client address held its share.",
            load(&self.refused),
        );
    }
}

/// The layer every request passes (outermost, so refusals by the other layers are
/// counted too): times it and counts its answer under its route template.
pub(super) async fn track(
    State(state): State<HttpState>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let response = next.run(request).await;
    let route = route.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
    state.metrics.record(
        route,
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// `GET /metrics`: the catalog's and the inbox's counts from the socket's own `status`
/// answer, the registrations from the status board, the HTTP side's own counts.
async fn scrape(State(state): State<HttpState>) -> Response {
    let answer = crate::server::dispatch(SocketRequest::Status {}, &state.ctx, None).await;
    let status: Option<StatusInfo> = answer.result.and_then(|v| serde_json::from_value(v).ok());
    let mut out = Exposition::default();
    out.family(
        "modelreg_build_info",
        Kind::Gauge,
        "The daemon's version, as a label; always 1.",
    );
    out.sample(
        "modelreg_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    if let Some(s) = &status {
        out.single(
            "modelreg_uptime_seconds",
            Kind::Gauge,
            "Seconds since the daemon started.",
            s.uptime_secs,
        );
        out.single(
            "modelreg_models",
            Kind::Gauge,
            "Models in the catalog.",
            s.models as f64,
        );
        out.single(
            "modelreg_versions",
            Kind::Gauge,
            "Versions in the catalog (removed ones not counted).",
            s.versions as f64,
        );
        out.single(
            "modelreg_versions_registered_total",
            Kind::Counter,
            "Versions registered since start (inbox, hand-overs, uploads).",
            s.registered_since_start as f64,
        );
    }
    let reg = state.ctx.board.registrations();
    out.single(
        "modelreg_registered_bytes_total",
        Kind::Counter,
        "Bytes of the files of the versions registered since start.",
        reg.bytes.load(Ordering::Relaxed) as f64,
    );
    out.single("modelreg_dedup_saved_bytes_total", Kind::Counter, "Bytes of new versions' files hard-linked to equal stored files instead of copied, since start.", state.ctx.board.dedup_saved() as f64);
    let name = "modelreg_registration_duration_seconds";
    out.family(name, Kind::Histogram, "Time to register a version: from its copy job's start (copy and hash) to its commit being durable.");
    out.histogram(name, &[], &reg.durations);
    if let Some(s) = &status {
        let mut by_state: BTreeMap<&str, usize> = WAITING_STATES.iter().map(|s| (*s, 0)).collect();
        for w in &s.waiting {
            // A state this list does not know yet is still a short literal of the code's.
            *by_state.entry(w.state.as_str()).or_default() += w.entries.len().max(1);
        }
        let name = "modelreg_waiting_entries";
        out.family(
            name,
            Kind::Gauge,
            "Inbox entries not yet registered, by state (as `modelreg status` shows them).",
        );
        for (st, n) in by_state {
            out.sample(name, &[("state", st)], n as f64);
        }
        out.single(
            "modelreg_problems",
            Kind::Gauge,
            "Lasting problems `modelreg status` shows (a bad sidecar, a full store, ...).",
            s.problems.len() as f64,
        );
    }
    state.metrics.write(&mut out);
    let mut r = out.finish().into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    r
}
