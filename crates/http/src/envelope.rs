//! The response envelope every API answer carries (`{code, message, data, trace_id}`), and the
//! per-request trace id it reports. The trace id lives in a task-local set by the request
//! middleware, so handlers and error conversions never have to thread it through.

use std::fmt;
use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::RngCore as _;
use serde::Serialize;
use utoipa::ToSchema;

/// 32 lower-case hex digits (the W3C trace-id form), or an id a trusted front end sent. Shared,
/// not copied: a request's id is held by its task-local, its span and its answer at once.
#[derive(Clone, PartialEq, Eq)]
pub struct TraceId(Arc<str>);

impl TraceId {
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        let mut hex = [0u8; 32];
        for (pair, b) in hex.chunks_exact_mut(2).zip(bytes) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 0xf)];
        }
        // Hex digits are ASCII.
        Self(Arc::from(std::str::from_utf8(&hex).unwrap_or_default()))
    }

    /// Accepts an incoming `x-request-id` only if it is short and plain, so that a client cannot
    /// smuggle anything into logs or headers through it.
    pub fn from_header(value: &HeaderValue) -> Option<Self> {
        let s = value.to_str().ok()?;
        let plain = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        plain.then(|| Self(s.into()))
    }

    /// The trace id of a caller's W3C `traceparent`, so that a request made inside a caller's
    /// trace is logged and answered under that trace's id.
    pub(crate) fn from_trace_parent(p: &TraceParent<'_>) -> Self {
        Self(p.trace_id.into())
    }

    /// The trace id of the request being served, or a fresh one outside of any request.
    pub fn current() -> Self {
        crate::observe::CurrentRequest::with(|r| r.trace_id().clone()).unwrap_or_else(Self::random)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_str(&self.0).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The fields of a valid W3C `traceparent`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TraceParent<'a> {
    pub trace_id: &'a str,
    pub parent_id: &'a str,
    pub flags: u8,
}

/// Parses `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>` (lower-case hex, neither id all
/// zeros, never version `ff`); anything else is `None`.
pub(crate) fn traceparent(value: &HeaderValue) -> Option<TraceParent<'_>> {
    let s = value.to_str().ok()?.trim();
    let mut parts = s.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |p: &str, len: usize| {
        p.len() == len
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let zero = |p: &str| p.bytes().all(|b| b == b'0');
    let valid = hex(version, 2)
        && version != "ff"
        // Version 00 has exactly four fields; later versions may add more.
        && (version != "00" || parts.next().is_none())
        && hex(trace, 32)
        && !zero(trace)
        && hex(parent, 16)
        && !zero(parent)
        && hex(flags, 2);
    valid.then(|| TraceParent {
        trace_id: trace,
        parent_id: parent,
        flags: u8::from_str_radix(flags, 16).unwrap_or(0),
    })
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({})", self.0)
    }
}

/// A successful answer: the envelope's schema in the OpenAPI document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Envelope<T> {
    /// 0 on success.
    pub code: u32,
    pub message: String,
    pub data: T,
    pub trace_id: String,
}

/// One field that failed validation.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldIssue {
    pub field: String,
    pub message: String,
}

/// A failed answer: the same envelope with a non-zero code and no `data`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    /// A stable error code (see the API conventions), or the HTTP status for generic errors.
    pub code: u32,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<FieldIssue>>,
    pub trace_id: String,
}

/// A handler's successful result: data and the status to send it with.
#[derive(Debug)]
pub struct Reply<T> {
    status: StatusCode,
    data: T,
}

pub fn ok<T: Serialize>(data: T) -> Reply<T> {
    Reply {
        status: StatusCode::OK,
        data,
    }
}

pub fn created<T: Serialize>(data: T) -> Reply<T> {
    Reply {
        status: StatusCode::CREATED,
        data,
    }
}

/// Data that writes its own JSON, exactly as its `Serialize` would (a test holds each one to
/// that): the hottest answers skip serde's general path, which costs a reservation's answer
/// about as much as the rest of its handler.
pub trait WriteJson {
    fn write_json(&self, out: &mut Vec<u8>);
}

/// A `Reply` whose data is `WriteJson`: the same envelope, written by hand.
#[derive(Debug)]
pub struct Written<T> {
    status: StatusCode,
    data: T,
}

pub fn created_written<T: WriteJson>(data: T) -> Written<T> {
    Written {
        status: StatusCode::CREATED,
        data,
    }
}

impl<T: WriteJson> IntoResponse for Written<T> {
    fn into_response(self) -> Response {
        let trace_id = TraceId::current();
        let mut bytes = Vec::with_capacity(512);
        bytes.extend_from_slice(br#"{"code":0,"message":"ok","data":"#);
        self.data.write_json(&mut bytes);
        // A trace id is ASCII letters, digits, '-' and '_' (`TraceId`): nothing to escape.
        bytes.extend_from_slice(br#","trace_id":""#);
        bytes.extend_from_slice(trace_id.as_str().as_bytes());
        bytes.extend_from_slice(br#""}"#);
        json_response(self.status, bytes)
    }
}

#[derive(Serialize)]
struct EnvelopeRef<'a, T> {
    code: u32,
    message: &'a str,
    data: &'a T,
    trace_id: &'a str,
}

impl<T: Serialize> IntoResponse for Reply<T> {
    fn into_response(self) -> Response {
        let trace_id = TraceId::current();
        let body = EnvelopeRef {
            code: 0,
            message: "ok",
            data: &self.data,
            trace_id: trace_id.as_str(),
        };
        // Room for a typical answer at once, instead of growing from nothing (a reservation's
        // answer is about 400 bytes).
        let mut bytes = Vec::with_capacity(512);
        match serde_json::to_writer(&mut bytes, &body) {
            Ok(()) => json_response(self.status, bytes),
            Err(err) => crate::error::ApiError::internal(err).into_response(),
        }
    }
}

pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
