//! Request bodies held to a minimum pace (`http.body_timeout`, `http.body_min_rate`): a
//! client that trickles a body (a byte every few seconds) is cut, answered 408, instead
//! of holding a connection, and an upload's private file, for as long as it likes.
//!
//! The pace is measured in windows of `body_timeout` spent *waiting for the client*:
//! each must bring at least `body_min_rate` bytes a second (and at least one byte). While
//! the handler is not asking for more (an upload's disk writer behind), the clock is
//! stopped, so the daemon's own slowness never cuts a client; and a window is short
//! enough that bytes sent fast at first do not buy a trickle afterwards.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::{ApiError, HttpState};
use crate::protocol::ErrorCode;

/// What a body too slow ends with: the bytes of its last window, the window and the
/// rate it fell below.
#[derive(Debug)]
pub struct TooSlow {
    got: u64,
    window: Duration,
    min_rate: u64,
}

impl std::fmt::Display for TooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body brought {} bytes in {} of waiting for it, slower than {} bytes a second (http.body_min_rate over http.body_timeout); the connection is closed",
            self.got,
            humantime::format_duration(self.window),
            self.min_rate
        )
    }
}

impl std::error::Error for TooSlow {}

/// A body read at no less than a minimum pace (see the module's doc).
pub struct Paced<B> {
    inner: B,
    window: Duration,
    min_rate: u64,
    /// The fewest bytes a window must bring: `min_rate` over the window, at least 1.
    min_bytes: u64,
    /// Bytes of the window under way.
    got: u64,
    /// Time spent waiting for the client in the window under way, not counting the wait
    /// in progress.
    waited: Duration,
    /// When the wait in progress began (the inner body last answered `Pending`).
    since: Option<Instant>,
    /// Fires when the wait in progress completes the window.
    timer: Option<Pin<Box<Sleep>>>,
    /// Where the cut is told to the middleware (whatever the handler made of the error).
    cut: Arc<OnceLock<String>>,
}

impl<B> Paced<B> {
    /// `inner`, to be cut when a `window` of waiting brings fewer than `min_rate` bytes a
    /// second; the cut's reason is then set in `cut`.
    pub fn new(inner: B, window: Duration, min_rate: u64, cut: Arc<OnceLock<String>>) -> Self {
        let min_bytes = ((min_rate as f64 * window.as_secs_f64()) as u64).max(1);
        Paced {
            inner,
            window,
            min_rate,
            min_bytes,
            got: 0,
            waited: Duration::ZERO,
            since: None,
            timer: None,
            cut,
        }
    }

    /// Ends the window under way: an error when it brought too little, else a new one.
    fn close_window(&mut self) -> Result<(), TooSlow> {
        if self.got < self.min_bytes {
            let e = TooSlow {
                got: self.got,
                window: self.window,
                min_rate: self.min_rate,
            };
            let _ = self.cut.set(e.to_string());
            return Err(e);
        }
        self.got = 0;
        self.waited = Duration::ZERO;
        Ok(())
    }
}

impl<B> HttpBody for Paced<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(since) = this.since.take() {
                    this.waited += since.elapsed();
                }
                if let Some(d) = frame.data_ref() {
                    this.got += d.len() as u64;
                }
                if this.waited >= this.window
                    && let Err(e) = this.close_window()
                {
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => Poll::Ready(other.map(|r| r.map_err(Into::into))),
            Poll::Pending => {
                let since = *this.since.get_or_insert_with(Instant::now);
                let deadline = since + this.window.saturating_sub(this.waited);
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // A whole window of waiting has passed with the client owing bytes.
                if let Err(e) = this.close_window() {
                    return Poll::Ready(Some(Err(e.into())));
                }
                let now = Instant::now();
                this.since = Some(now);
                if let Some(timer) = this.timer.as_mut() {
                    timer.as_mut().reset(now + this.window);
                    // Registers the waker for the new window's end.
                    let _ = timer.as_mut().poll(cx);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The middleware that paces every request body that has one, by the settings of the
/// moment (a reload applies to the next request). A request whose body was cut is
/// answered 408 `timeout` saying so, whatever its handler made of the broken body (an
/// upload's "ended early", a JSON body's "cannot read"), with `Connection: close`: the
/// rest of the body is never read, so the connection cannot serve another request.
pub(super) async fn pace(State(s): State<HttpState>, request: Request, next: Next) -> Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let (window, min_rate) = s.ctx.config().http.as_ref().map_or(
        (
            crate::config::DEFAULT_BODY_TIMEOUT,
            crate::config::DEFAULT_BODY_MIN_RATE,
        ),
        |h| (h.body_timeout, h.body_min_rate),
    );
    let cut = Arc::new(OnceLock::new());
    let request = request.map(|b| Body::new(Paced::new(b, window, min_rate, cut.clone())));
    let answer = next.run(request).await;
    let Some(why) = cut.get() else {
        return answer;
    };
    tracing::info!("HTTP request cut: {why}");
    let mut r =
        ApiError::new(ErrorCode::Timeout, format!("{why}; nothing was kept")).into_response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}
