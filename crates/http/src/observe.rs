//! The one middleware every request passes through: it gives the request its trace id (in a
//! task-local, a tracing span and the `x-request-id` header), counts and times it by route
//! template, logs server errors once, and puts any error response a framework layer produced on
//! its own (405, 413, …) into the envelope.

use std::any::Any;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument as _;

use crate::envelope::{CURRENT_TRACE_ID, TraceId};
use crate::error::{ApiError, ErrorCause};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The route label of requests that matched no route, so that scanners probing random paths do
/// not create a metric series per path.
const UNMATCHED: &str = "unmatched";

pub async fn observe(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let trace_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(TraceId::from_header)
        .unwrap_or_else(TraceId::random);
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
        .to_owned();
    let span = tracing::info_span!(
        "request",
        trace_id = %trace_id,
        method = %method,
        route = %route,
    );

    tracing::trace!(parent: &span, "request started");
    let mut response = CURRENT_TRACE_ID
        .scope(
            trace_id.clone(),
            async move { into_envelope(next.run(req).await) }.instrument(span.clone()),
        )
        .await;

    let status = response.status();
    let elapsed = started.elapsed();
    if let Some(ErrorCause(cause)) = response.extensions_mut().remove::<ErrorCause>() {
        tracing::error!(parent: &span, status = status.as_u16(), %cause, "request failed");
    } else {
        tracing::debug!(
            parent: &span,
            status = status.as_u16(),
            micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            "request served"
        );
    }
    response
        .headers_mut()
        .insert(REQUEST_ID, trace_id.header_value());

    let labels = [
        ("method", method_label(&method).to_owned()),
        ("route", route),
        ("status", status.as_u16().to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
    response
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
