//! Paying orders: starting a payment, reading it, the provider's notifications, refunds; and the
//! sandbox provider's pay page.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use flashmart_app::payments::{Applied, PaymentRecord, Payments};
use flashmart_domain::{OrderId, PaymentId};
use flashmart_sandbox::{Sandbox, SandboxError};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::envelope::{Envelope, ErrorEnvelope, Reply, created, ok};
use crate::error::ApiError;
use crate::extract::{AdminAuth, Auth, Json, Path};
use crate::routes::shop::OrderOut;
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start_payment))
        .routes(routes!(get_payment))
        .routes(routes!(payment_notification))
        .routes(routes!(refund_order))
}

pub fn sandbox_pages() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(sandbox_pay_page))
        .routes(routes!(sandbox_pay))
        .routes(routes!(sandbox_fail))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentOut {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    /// `pending`, `succeeded`, `failed` or `closed`.
    #[schema(example = "pending")]
    pub status: &'static str,
    /// Where the buyer pays.
    pub pay_url: String,
    pub amount_cents: i64,
    pub currency: String,
    pub refunded_cents: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
}

impl From<PaymentRecord> for PaymentOut {
    fn from(p: PaymentRecord) -> Self {
        Self {
            payment_id: *p.id.as_uuid(),
            order_id: *p.order_id.as_uuid(),
            status: p.status.as_str(),
            pay_url: p.pay_url,
            amount_cents: p.amount.cents(),
            currency: p.amount.currency().as_str().to_owned(),
            refunded_cents: p.refunded.cents(),
            expires_at: p.expires_at,
        }
    }
}

/// Starts paying one of the caller's orders (or answers the payment already open for it).
#[utoipa::path(post, path = "/orders/{id}/payments", tag = "payments", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Order id")),
    responses(
        (status = 201, description = "Payment to complete at pay_url", body = Envelope<PaymentOut>),
        (status = 404, description = "30001: order not found", body = ErrorEnvelope),
        (status = 409, description = "40004: the order does not await payment", body = ErrorEnvelope),
    ))]
pub async fn start_payment(
    State(payments): State<Arc<Payments>>,
    Auth(me): Auth,
    Path(id): Path<Uuid>,
) -> Result<Reply<PaymentOut>, ApiError> {
    let payment = payments.start(me.user_id, OrderId::from_uuid(id)).await?;
    Ok(created(payment.into()))
}

/// A payment of one of the caller's orders.
#[utoipa::path(get, path = "/payments/{id}", tag = "payments", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Payment id")),
    responses(
        (status = 200, description = "The payment", body = Envelope<PaymentOut>),
        (status = 404, description = "40001: payment not found", body = ErrorEnvelope),
    ))]
pub async fn get_payment(
    State(payments): State<Arc<Payments>>,
    Auth(me): Auth,
    Path(id): Path<Uuid>,
) -> Result<Reply<PaymentOut>, ApiError> {
    Ok(ok(payments
        .payment_of(me.user_id, PaymentId::from_uuid(id))
        .await?
        .into()))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationAck {
    /// What the notification did: `paid`, `failed`, `duplicate`, `already_settled` or
    /// `refunded` (paid after its order ended).
    pub outcome: &'static str,
}

/// The payment provider's callback. The body is signed (HMAC-SHA256 over `<timestamp>.<body>`,
/// header `sandbox-signature: t=...,v1=...`), checked in constant time, refused when older than
/// five minutes, and must match the payment's amount and currency. A repeated notification
/// changes nothing.
#[utoipa::path(post, path = "/payments/notify", tag = "payments",
    request_body(content = String, content_type = "application/json", description = "The provider's signed notification"),
    responses(
        (status = 200, description = "Applied (or recognised as a repeat)", body = Envelope<NotificationAck>),
        (status = 400, description = "40002 bad or stale signature; 40003 amount or currency mismatch", body = ErrorEnvelope),
        (status = 404, description = "40001: no such payment", body = ErrorEnvelope),
    ))]
pub async fn payment_notification(
    State(payments): State<Arc<Payments>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Reply<NotificationAck>, ApiError> {
    let signature = headers
        .get(payments.signature_header())
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let applied = payments.notify(signature, &body).await?;
    Ok(ok(NotificationAck {
        outcome: match applied {
            Applied::Paid(_) => "paid",
            Applied::Failed => "failed",
            Applied::Duplicate => "duplicate",
            Applied::AlreadySettled => "already_settled",
            Applied::PaidTooLate(_) => "refunded",
        },
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RefundIn {
    /// What to refund; everything not refunded yet when absent.
    pub amount_cents: Option<i64>,
    pub reason: Option<String>,
}

/// Refunds a paid order in full or in part, through the payment provider. Admins.
#[utoipa::path(post, path = "/admin/orders/{id}/refund", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Order id")),
    request_body = RefundIn,
    responses(
        (status = 200, description = "Refunded; the order is refunded or partially_refunded", body = Envelope<OrderOut>),
        (status = 404, description = "30001: order not found", body = ErrorEnvelope),
        (status = 409, description = "40004: the order was not paid", body = ErrorEnvelope),
        (status = 422, description = "40005: nothing to refund, or more than was paid", body = ErrorEnvelope),
    ))]
pub async fn refund_order(
    State(payments): State<Arc<Payments>>,
    _admin: AdminAuth,
    Path(id): Path<Uuid>,
    Json(body): Json<RefundIn>,
) -> Result<Reply<OrderOut>, ApiError> {
    let order = payments
        .refund(
            OrderId::from_uuid(id),
            body.amount_cents,
            body.reason.as_deref(),
        )
        .await?;
    Ok(ok(order.into()))
}

// ---- the sandbox provider's pages ---------------------------------------------------------------

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{title}</title><style>body{{font-family:sans-serif;max-width:30rem;\
         margin:3rem auto;padding:0 1rem}}button{{font-size:1.1rem;padding:.6rem 1.4rem;\
         margin-right:.8rem}}.note{{color:#666}}</style></head><body>\
         <h1>{title}</h1>{body}<p class=\"note\">flashmart sandbox payment provider: no real \
         money moves.</p></body></html>"
    ))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn sandbox_error(e: SandboxError) -> Response {
    let (status, text) = match &e {
        SandboxError::NotFound => (StatusCode::NOT_FOUND, "No such payment."),
        SandboxError::NotOpen(_) | SandboxError::Expired => {
            (StatusCode::CONFLICT, "This payment can no longer be paid.")
        }
        SandboxError::Storage(_) => (StatusCode::SERVICE_UNAVAILABLE, "Try again shortly."),
    };
    if matches!(e, SandboxError::Storage(_)) {
        tracing::error!(err = %e, "sandbox storage failed");
    }
    let mut response = page("Payment", &format!("<p>{text}</p>")).into_response();
    *response.status_mut() = status;
    response
}

/// The sandbox's pay page: the amount, and Pay and Fail buttons.
#[utoipa::path(get, path = "/sandbox/pay/{reference}", tag = "payments",
    params(("reference" = String, Path, description = "The sandbox payment reference")),
    responses(
        (status = 200, description = "HTML page", content_type = "text/html", body = String),
        (status = 404, description = "No such payment", content_type = "text/html", body = String),
    ))]
pub async fn sandbox_pay_page(
    State(sandbox): State<Arc<Sandbox>>,
    Path(reference): Path<String>,
) -> Response {
    match sandbox.payment(&reference).await {
        Err(e) => sandbox_error(e),
        Ok(p) => {
            let amount = format!(
                "{}.{:02} {}",
                p.amount.cents() / 100,
                p.amount.cents() % 100,
                p.amount.currency()
            );
            let r = escape(&p.reference);
            let body = if p.status == "open" {
                format!(
                    "<p>{}</p><p><strong>{amount}</strong></p>\
                     <form method=\"post\" action=\"/sandbox/pay/{r}/pay\" style=\"display:inline\">\
                     <button type=\"submit\">Pay</button></form>\
                     <form method=\"post\" action=\"/sandbox/pay/{r}/fail\" style=\"display:inline\">\
                     <button type=\"submit\">Fail</button></form>",
                    escape(&p.description)
                )
            } else {
                format!(
                    "<p>{}</p><p><strong>{amount}</strong>: {}.</p>",
                    escape(&p.description),
                    escape(&p.status)
                )
            };
            let mut response = page("Pay", &body).into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
    }
}

async fn complete(sandbox: Arc<Sandbox>, reference: String, paid: bool) -> Response {
    match sandbox.complete(&reference, paid).await {
        Ok(()) => Redirect::to(&format!("/sandbox/pay/{}", escape(&reference))).into_response(),
        Err(e) => sandbox_error(e),
    }
}

/// The Pay button: the sandbox marks the payment paid and notifies the merchant.
#[utoipa::path(post, path = "/sandbox/pay/{reference}/pay", tag = "payments",
    params(("reference" = String, Path, description = "The sandbox payment reference")),
    responses((status = 303, description = "Back to the pay page")))]
pub async fn sandbox_pay(
    State(sandbox): State<Arc<Sandbox>>,
    Path(reference): Path<String>,
) -> Response {
    complete(sandbox, reference, true).await
}

/// The Fail button: the sandbox marks the payment failed and notifies the merchant.
#[utoipa::path(post, path = "/sandbox/pay/{reference}/fail", tag = "payments",
    params(("reference" = String, Path, description = "The sandbox payment reference")),
    responses((status = 303, description = "Back to the pay page")))]
pub async fn sandbox_fail(
    State(sandbox): State<Arc<Sandbox>>,
    Path(reference): Path<String>,
) -> Response {
    complete(sandbox, reference, false).await
}
