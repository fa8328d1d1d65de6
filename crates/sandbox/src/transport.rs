//! How the sandbox reaches the merchant: a plain HTTP/1.1 POST in production; tests substitute
//! a transport that calls the router in process.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::SIGNATURE_HEADER;

#[async_trait]
pub trait Transport: Send + Sync + std::fmt::Debug + 'static {
    /// POSTs `body` with the signature header; the HTTP status, or why there was none.
    async fn post(&self, url: &str, signature: &str, body: Vec<u8>) -> Result<u16, String>;
}

/// The W3C `traceparent` of the current span, when OpenTelemetry records it.
pub fn traceparent() -> Option<String> {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = tracing::Span::current().context();
    let span = context.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// Notifications over HTTP (http:// only: the sandbox talks to the server it runs in).
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpTransport;

#[async_trait]
impl Transport for HttpTransport {
    async fn post(&self, url: &str, signature: &str, body: Vec<u8>) -> Result<u16, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("bad notify URL: {e}"))?;
        let authority = uri.authority().ok_or("notify URL has no host")?.clone();
        let port = authority.port_u16().unwrap_or(80);
        let connect = TcpStream::connect((authority.host(), port));
        let stream = tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(
                HOST,
                HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?,
            )
            .header(CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature);
        // The notification continues the trace it was sent in (when traces are exported).
        let request = match traceparent() {
            Some(value) => request.header("traceparent", value),
            None => request,
        };
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(Duration::from_secs(30), sender.send_request(request))
            .await
            .map_err(|_| "no answer within 30 s".to_owned())?
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let _ = response.into_body().collect().await;
        Ok(status)
    }
}
