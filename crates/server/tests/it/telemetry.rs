//! OpenTelemetry: with `otel.endpoint` set, a request's spans reach the collector (OTLP over HTTP
//! with protobuf) under the caller's W3C trace, the request's span a child of the caller's and
//! the use case's a child of the request's.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::Value;

use crate::support::Server;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP collector of the test's own on a free loopback port: its endpoint, and every
/// batch of spans it is sent.
async fn http_collector() -> (String, tokio::sync::mpsc::UnboundedReceiver<Vec<Span>>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Vec<Span>>();
    let collector = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).unwrap();
                let spans = request
                    .resource_spans
                    .into_iter()
                    .flat_map(|r| r.scope_spans)
                    .flat_map(|s| s.spans)
                    .collect();
                let _ = tx.send(spans);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, collector).await.unwrap() });
    (format!("http://{addr}"), rx)
}

#[tokio::test]
async fn a_requests_spans_reach_an_otlp_http_collector_under_the_callers_trace() {
    let (endpoint, rx) = http_collector().await;
    spans_arrive(&endpoint, "http/protobuf", rx).await;
}

/// The default protocol, gRPC, to a gRPC collector of the test's own.
#[tokio::test]
async fn a_requests_spans_reach_an_otlp_grpc_collector_under_the_callers_trace() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };

    struct Collector(tokio::sync::mpsc::UnboundedSender<Vec<Span>>);

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let spans = request
                .into_inner()
                .resource_spans
                .into_iter()
                .flat_map(|r| r.scope_spans)
                .flat_map(|s| s.spans)
                .collect();
            let _ = self.0.send(spans);
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }))
        }
    }

    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Vec<Span>>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(incoming),
    );
    spans_arrive(&format!("http://{addr}"), "grpc", rx).await;
}

/// Starts a server exporting to `endpoint` over `protocol`, sends it a request inside a caller's
/// trace, and checks the spans the collector hands to `rx`.
async fn spans_arrive(
    endpoint: &str,
    protocol: &str,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Vec<Span>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &["serve"],
        &[
            ("FLASHMART__OTEL__ENDPOINT", endpoint),
            ("FLASHMART__OTEL__PROTOCOL", protocol),
            ("FLASHMART__OTEL__SERVICE_NAME", "flashmart-test"),
            ("FLASHMART__OTEL__BATCH_DELAY_MS", "50"),
        ],
    );
    let (trace, caller) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let res = reqwest::Client::new()
        .get(format!("{}/api/v1/products", server.base))
        .header("traceparent", format!("00-{trace}-{caller}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["trace_id"], trace,
        "the envelope carries the caller's trace id"
    );

    // Spans arrive in batches; wait (bounded) until the request's and the use case's are in.
    let mut spans: Vec<Span> = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            spans.extend(rx.recv().await.unwrap());
            let ours: Vec<&Span> = spans.iter().filter(|s| hex(&s.trace_id) == trace).collect();
            let request = ours.iter().find(|s| s.name == "request");
            let use_case = ours.iter().find(|s| s.name == "catalog.list");
            let store = ours.iter().find(|s| s.name == "sqlite.list_products");
            if let (Some(r), Some(u), Some(s)) = (request, use_case, store) {
                return ((*r).clone(), (*u).clone(), (*s).clone());
            }
        }
    })
    .await;
    let (request, use_case, store) = found.unwrap_or_else(|_| {
        let names: Vec<_> = spans
            .iter()
            .map(|s| (s.name.clone(), hex(&s.trace_id)))
            .collect();
        panic!("the spans did not arrive; got {names:?}")
    });
    assert_eq!(
        hex(&request.parent_span_id),
        caller,
        "the request joins the caller's span"
    );
    assert_eq!(use_case.parent_span_id, request.span_id);
    assert_eq!(store.parent_span_id, use_case.span_id);
    server.terminate();
}

/// The provider's notification carries the trace it was sent in: pressing Pay inside a caller's
/// trace, the notification the sandbox sends is a span of that trace, and the shop's handling of
/// it a child of that span.
#[tokio::test]
async fn a_payment_notification_continues_the_trace_of_the_pay_button() {
    use serde_json::json;

    let (endpoint, mut rx) = http_collector().await;
    let dir = tempfile::tempdir().unwrap();
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_flashmart"))
        .args(["admin", "create-user", "--email", "ops@example.com"])
        .args(["--password", "an operator password", "--role", "operator"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(made.status.success());
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_flashmart"))
        .args(["admin", "create-user", "--email", "admin@example.com"])
        .args(["--password", "an admin password", "--role", "admin"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(made.status.success());
    let server = Server::start(
        dir.path(),
        &["serve"],
        &[
            ("FLASHMART__OTEL__ENDPOINT", endpoint.as_str()),
            ("FLASHMART__OTEL__PROTOCOL", "http/protobuf"),
            ("FLASHMART__OTEL__BATCH_DELAY_MS", "50"),
            ("FLASHMART__WEBHOOKS__ALLOW_PRIVATE", "true"),
        ],
    );
    let base = server.base.clone();
    let client = reqwest::Client::new();
    let json = async |req: reqwest::RequestBuilder| -> Value {
        req.send().await.unwrap().json().await.unwrap()
    };
    let token = |v: Value| v["data"]["access_token"].as_str().unwrap().to_owned();
    // A webhook receiver for the payment, to see the trace go out with it too.
    let admin = token(
        crate::support::login_at(&client, &base, "admin@example.com", "an admin password").await,
    );
    let (receiver, hook_url) = crate::webhooks::Receiver::start(&[200]).await;
    let hook = json(
        client
            .post(format!("{base}/api/v1/admin/webhooks"))
            .bearer_auth(&admin)
            .json(&json!({"url": hook_url, "events": ["order.paid"]})),
    )
    .await;
    assert_eq!(hook["code"], 0, "{hook}");
    let ops = token(
        crate::support::login_at(&client, &base, "ops@example.com", "an operator password").await,
    );
    let product = json(
        client
            .post(format!("{base}/api/v1/admin/products"))
            .bearer_auth(&ops)
            .json(&json!({"name": "Lamp", "price_cents": 1000, "stock": 5})),
    )
    .await;
    let product = product["data"]["id"].as_str().unwrap().to_owned();
    json(
        client.post(format!("{base}/api/v1/auth/register")).json(
            &json!({"email": "buyer@example.com", "password": "a buyer password", "name": "B"}),
        ),
    )
    .await;
    let buyer = token(
        crate::support::login_at(&client, &base, "buyer@example.com", "a buyer password").await,
    );
    json(
        client
            .put(format!("{base}/api/v1/cart/items/{product}"))
            .bearer_auth(&buyer)
            .json(&json!({"quantity": 1})),
    )
    .await;
    let order = json(
        client
            .post(format!("{base}/api/v1/cart/checkout"))
            .bearer_auth(&buyer)
            .json(
                &json!({"shipping_address": {"recipient": "B", "line1": "1 Road",
                "city": "Paris", "postal_code": "75001", "country": "FR"}}),
            ),
    )
    .await;
    let order = order["data"]["id"].as_str().unwrap().to_owned();
    let payment = json(
        client
            .post(format!("{base}/api/v1/orders/{order}/payments"))
            .bearer_auth(&buyer),
    )
    .await;
    let pay_url = payment["data"]["pay_url"].as_str().unwrap().to_owned();
    // The pay page, as a browser opens it: its nonce cookie and its form's token.
    let page = client.get(format!("{base}{pay_url}")).send().await.unwrap();
    let cookie = page.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let html = page.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let (trace, caller) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let pressed = client
        .post(format!("{base}{pay_url}/pay"))
        .header("cookie", cookie)
        .header("traceparent", format!("00-{trace}-{caller}-01"))
        .form(&[("csrf", csrf)])
        .send()
        .await
        .unwrap();
    assert!(pressed.status().is_success() || pressed.status().is_redirection());

    let mut spans: Vec<Span> = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            spans.extend(rx.recv().await.unwrap());
            let ours: Vec<&Span> = spans.iter().filter(|s| hex(&s.trace_id) == trace).collect();
            if let Some(notify) = ours.iter().find(|s| s.name == "sandbox.notify")
                && let Some(handled) = ours
                    .iter()
                    .find(|s| s.name == "request" && s.parent_span_id == notify.span_id)
            {
                return ((*notify).clone(), (*handled).clone());
            }
        }
    })
    .await;
    let (notify, handled) = found.unwrap_or_else(|_| {
        let names: Vec<_> = spans
            .iter()
            .map(|s| (s.name.clone(), hex(&s.trace_id)))
            .collect();
        panic!("the notification's spans did not arrive; got {names:?}")
    });
    // The notification was sent from within the Pay button's request.
    let pay_request = spans
        .iter()
        .find(|s| s.span_id == notify.parent_span_id)
        .expect("the notify span's parent was exported");
    assert_eq!(hex(&pay_request.parent_span_id), caller);
    assert_eq!(hex(&handled.trace_id), trace);

    // The worker delivers the `order.paid` webhook within its own traced span, whose trace the
    // request carries out in `traceparent`.
    tokio::time::timeout(Duration::from_secs(30), receiver.arrived(1))
        .await
        .expect("the webhook was delivered");
    let delivered = receiver.got().remove(0).0;
    let sent = delivered["traceparent"].to_str().unwrap().to_owned();
    let sent_trace = sent.split('-').nth(1).unwrap().to_owned();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if spans
                .iter()
                .any(|s| s.name == "webhook.deliver" && hex(&s.trace_id) == sent_trace)
            {
                return;
            }
            spans.extend(rx.recv().await.unwrap());
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "the webhook.deliver span of {sent} was exported"
    );
    server.terminate();
}
