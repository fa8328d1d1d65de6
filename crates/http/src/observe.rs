//! The one middleware every request passes through: it gives the request its trace id (in a
//! task-local, the `x-request-id` header and, at `debug` or when spans are exported, a tracing
//! span), counts and times it by route template, logs server errors once, and puts any error
//! response a framework layer produced on its own (405, 413, …) into the envelope.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt as _;
use futures_util::future::Map;
use tokio::task::futures::TaskLocalFuture;
use tower::{Layer, Service};
use tracing::Instrument as _;
use tracing::instrument::Instrumented;

use crate::envelope::TraceId;
use crate::error::{ApiError, ErrorCause};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The caller's span, as an OpenTelemetry parent.
fn remote_parent(p: &crate::envelope::TraceParent<'_>) -> Option<opentelemetry::Context> {
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceState};
    let context = SpanContext::new(
        opentelemetry::trace::TraceId::from_hex(p.trace_id).ok()?,
        SpanId::from_hex(p.parent_id).ok()?,
        TraceFlags::new(p.flags),
        true,
        TraceState::default(),
    );
    Some(opentelemetry::Context::new().with_remote_span_context(context))
}

/// The request being served, as its log lines name it: its trace id, method and route template.
#[derive(Debug, Clone)]
pub struct CurrentRequest {
    trace_id: TraceId,
    method: Method,
    route: Option<MatchedPath>,
}

impl CurrentRequest {
    /// The request served by the calling task, if it is serving one.
    pub fn with<R>(f: impl FnOnce(&Self) -> R) -> Option<R> {
        CURRENT_REQUEST.try_with(f).ok()
    }

    pub fn trace_id(&self) -> &TraceId {
        &self.trace_id
    }

    pub fn method(&self) -> &str {
        self.method.as_str()
    }

    /// The route's template (`/api/v1/products/{id}`), or `unmatched`.
    pub fn route(&self) -> &str {
        self.route.as_ref().map_or(UNMATCHED, MatchedPath::as_str)
    }
}

tokio::task_local! {
    pub(crate) static CURRENT_REQUEST: CurrentRequest;
}

/// W3C Trace Context: the caller's trace, which the request joins.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The route label of requests that matched no route, so that scanners probing random paths do
/// not create a metric series per path.
const UNMATCHED: &str = "unmatched";

/// The outermost layer of every route. A hand-written service rather than a `from_fn`
/// middleware, which boxes its future and the rest of the stack for every request: a
/// reservation keeps those boxes while it waits for its commit and frees them on whichever
/// thread the commit woke it on.
#[derive(Debug, Clone, Copy, Default)]
pub struct ObserveLayer;

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
}

type Enveloped<F> = Map<F, fn(Result<Response, Infallible>) -> Result<Response, Infallible>>;

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let started = Instant::now();
        // The caller's W3C trace first, then its own request id, else a fresh id.
        let headers = req.headers();
        let caller = headers
            .get(TRACEPARENT)
            .and_then(crate::envelope::traceparent);
        let trace_id = caller
            .map(|p| TraceId::from_trace_parent(&p))
            .or_else(|| headers.get(REQUEST_ID).and_then(TraceId::from_header))
            .unwrap_or_else(TraceId::random);
        let remote_parent = caller.and_then(|p| remote_parent(&p));
        let current = CurrentRequest {
            trace_id,
            method: req.method().clone(),
            route: req.extensions().get::<MatchedPath>().cloned(),
        };
        // At `debug` only: at `info` a span would cost every request a few microseconds to
        // make, enter and close, for log lines that are rare; those take the request's trace id,
        // method and route from the task-local instead (the server's log formatter).
        let span = tracing::debug_span!(
            "request",
            trace_id = %current.trace_id,
            method = %current.method,
            route = current.route(),
        );
        if let Some(parent) = remote_parent {
            // Joins the caller's trace (in OpenTelemetry, when it exports; a no-op otherwise).
            let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&span, parent);
        }
        tracing::trace!(parent: &span, "request started");
        // The inner layers' own work (the rate limits' refusal, say) and the envelope put on the
        // answer run inside the request's scope and span, as the handler does: an error answer
        // carries the request's id.
        let inner = &mut self.inner;
        let enveloped: Enveloped<S::Future> = CURRENT_REQUEST
            .sync_scope(current.clone(), || {
                let _entered = span.enter();
                inner.call(req)
            })
            .map(|answer| {
                let Ok(response) = answer;
                Ok(into_envelope(response))
            });
        ObserveFuture {
            inner: CURRENT_REQUEST.scope(current.clone(), enveloped.instrument(span.clone())),
            request: Some(Observed {
                started,
                current,
                span,
            }),
        }
    }
}

/// What the answer is logged and counted with.
struct Observed {
    started: Instant,
    current: CurrentRequest,
    span: tracing::Span,
}

pin_project_lite::pin_project! {
    pub struct ObserveFuture<F> {
        #[pin]
        inner: TaskLocalFuture<CurrentRequest, Instrumented<Enveloped<F>>>,
        request: Option<Observed>,
    }
}

impl<F> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut response) = ready!(this.inner.poll(cx));
        if let Some(request) = this.request.take() {
            request.finish(&mut response);
        }
        Poll::Ready(Ok(response))
    }
}

impl Observed {
    /// Logs a server error once, gives the answer its request id, and counts and times it by
    /// route template.
    fn finish(self, response: &mut Response) {
        let status = response.status();
        let elapsed = self.started.elapsed();
        if let Some(ErrorCause(cause)) = response.extensions_mut().remove::<ErrorCause>() {
            // Outside the handler's scope by now: logged in one of its own, so that the line
            // names the request.
            CURRENT_REQUEST.sync_scope(self.current.clone(), || {
                tracing::error!(parent: &self.span, status = status.as_u16(), %cause, "request failed");
            });
        } else {
            tracing::debug!(
                parent: &self.span,
                status = status.as_u16(),
                micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
                "request served"
            );
        }
        response
            .headers_mut()
            .insert(REQUEST_ID, self.current.trace_id.header_value());
        Series::record(&self.current.method, self.current.route(), status, elapsed);
    }
}

/// One series of `http_requests_total` and `http_request_duration_seconds`: a method, route and
/// status.
struct Series {
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

/// The series by status and method, then route: a lookup with the request's own `&str`.
type SeriesByLabels = HashMap<(u16, &'static str), HashMap<Box<str>, Series>>;

thread_local! {
    /// Each worker thread's series, found in the registry once: building the labels and finding
    /// the series by them for every answer cost a sixth of a `/healthz` answer's instructions.
    /// The label sets are bounded (routes are templates, methods `method_label`), and so is this.
    static SERIES: RefCell<SeriesByLabels> = RefCell::new(HashMap::new());
}

impl Series {
    /// Counts and times one answer.
    fn record(method: &Method, route: &str, status: StatusCode, elapsed: Duration) {
        let method = method_label(method);
        let find = || {
            let labels = [
                ("method", method.to_owned()),
                ("route", route.to_owned()),
                ("status", status.as_u16().to_string()),
            ];
            Self {
                requests: metrics::counter!("http_requests_total", &labels),
                duration: metrics::histogram!("http_request_duration_seconds", &labels),
            }
        };
        let record = |series: &Self| {
            series.requests.increment(1);
            series.duration.record(elapsed.as_secs_f64());
        };
        // Before the recorder is installed there are only no-op series: none is kept.
        if !crate::metrics::installed() {
            return record(&find());
        }
        SERIES.with_borrow_mut(|series| {
            let by_route = series.entry((status.as_u16(), method)).or_default();
            match by_route.get(route) {
                Some(found) => record(found),
                None => {
                    let found = find();
                    record(&found);
                    by_route.insert(route.into(), found);
                }
            }
        });
    }
}

/// The method as a metric label: the standard methods by name, anything a client made up as
/// `other`, so that no client can grow the label set.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// An error response without a JSON body came from a layer or the router itself (405 with its
/// `Allow` header, 413, 408): give it the envelope, keeping its status and headers.
fn into_envelope(response: Response) -> Response {
    let status = response.status();
    // A JSON body is already an envelope; an HTML one is a page (the sandbox's) meant for a
    // person. Only the bodies frameworks make on their own (empty or plain text) are replaced.
    let has_own_body = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| {
            v.as_bytes().starts_with(b"application/json") || v.as_bytes().starts_with(b"text/html")
        });
    if !(status.is_client_error() || status.is_server_error()) || has_own_body {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let message = status.canonical_reason().unwrap_or("error").to_lowercase();
    let replacement = ApiError::status(status, message).into_response();
    let (new_parts, body) = replacement.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        new_parts
            .headers
            .get(header::CONTENT_TYPE)
            .cloned()
            .unwrap_or(header::HeaderValue::from_static("application/json")),
    );
    parts.extensions.extend(new_parts.extensions);
    Response::from_parts(parts, body)
}

/// The answer to a handler that panicked: a plain 500 in the envelope; the panic message goes
/// to the log through the error cause.
pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".to_owned());
    ApiError::internal(format!("handler panicked: {message}")).into_response()
}

/// Requests no route matched; worded apart from a route's own 404 ("no such record").
pub async fn no_route() -> ApiError {
    ApiError::status(StatusCode::NOT_FOUND, "no such route")
}
