//! Paying orders: starting a payment, reading it, the provider's notifications, refunds, and the
//! notifications the provider gave up on.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use flashmart_app::page::PageRequest;
use flashmart_app::payments::{
    Applied, DeadLetter, PaymentRecord, Payments, RefundRecord, RefundStatus,
};
use flashmart_domain::{OrderId, PaymentId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::envelope::{Envelope, ErrorEnvelope, Reply, created, ok};
use crate::error::ApiError;
use crate::extract::{AdminAuth, Auth, Json, Path, Query};
use crate::routes::shop::OrderOut;
use crate::state::AppState;
use crate::views::{PageOf, PageParams};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start_payment))
        .routes(routes!(get_payment))
        .routes(routes!(payment_notification))
        .routes(routes!(refund_order))
        .routes(routes!(admin_list_refunds))
        .routes(routes!(admin_dead_letters))
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
#[utoipa::path(post, path = "/api/v1/orders/{id}/payments", tag = "payments", security(("bearer" = [])),
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
#[utoipa::path(get, path = "/api/v1/payments/{id}", tag = "payments", security(("bearer" = [])),
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
    /// `refunded` (paid after its order ended: the refund owed is recorded and sent to the
    /// provider until it confirms; `GET /admin/refunds` shows it).
    pub outcome: &'static str,
}

/// The payment provider's callback. The body is signed (HMAC-SHA256 over `<timestamp>.<body>`,
/// header `sandbox-signature: t=...,v1=...`), checked in constant time, refused when older than
/// five minutes, and must match the payment's amount and currency. A repeated notification
/// changes nothing.
#[utoipa::path(post, path = "/api/v1/payments/notify", tag = "payments",
    params(("sandbox-signature" = String, Header, description = "`t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<body>\">`")),
    request_body(content = String, content_type = "application/json", description = "The provider's signed notification"),
    responses(
        (status = 200, description = "Applied (or recognised as a repeat)", body = Envelope<NotificationAck>),
        (status = 400, description = "40003: amount or currency mismatch", body = ErrorEnvelope),
        (status = 401, description = "40002: signature missing, wrong or stale (the sender is not the provider)", body = ErrorEnvelope),
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
            Applied::PaidTooLate { .. } => "refunded",
        },
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RefundIn {
    /// What to refund; everything not refunded yet when absent.
    #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_i64)]
    pub amount_cents: Option<i64>,
    pub reason: Option<String>,
}

/// Refunds a paid order in full or in part, through the payment provider. Admins. The refund
/// is recorded before the provider is asked, with an id the provider uses as its idempotency
/// key; refunds of one order take turns. When the provider does not answer, the refund stays
/// pending (503, 40008) and is asked again until the provider confirms it.
#[utoipa::path(post, path = "/api/v1/admin/orders/{id}/refund", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Order id")),
    request_body = RefundIn,
    responses(
        (status = 200, description = "Refunded; the order is refunded or partially_refunded", body = Envelope<OrderOut>),
        (status = 404, description = "30001: order not found", body = ErrorEnvelope),
        (status = 409, description = "40004: the order was not paid; 40006: the provider refused; 40007: another refund of this order is waiting for the provider", body = ErrorEnvelope),
        (status = 422, description = "40005: nothing to refund, or more than was paid", body = ErrorEnvelope),
        (status = 503, description = "40008: recorded, not yet confirmed by the provider (retried)", body = ErrorEnvelope),
    ))]
pub async fn refund_order(
    State(payments): State<Arc<Payments>>,
    AdminAuth(staff): AdminAuth,
    Path(id): Path<Uuid>,
    Json(body): Json<RefundIn>,
) -> Result<Reply<OrderOut>, ApiError> {
    let order = payments
        .refund(
            staff.actor(),
            OrderId::from_uuid(id),
            body.amount_cents,
            body.reason.as_deref(),
        )
        .await?;
    Ok(ok(order.into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RefundListParams {
    /// Only refunds in this status: `pending`, `succeeded` or `failed`.
    #[param(pattern = "^(pending|succeeded|failed)$")]
    pub status: Option<String>,
    /// Page number, from 1.
    #[param(minimum = 1, maximum = 10_000_000)]
    #[serde(default, deserialize_with = "crate::views::page_number")]
    pub page: Option<u32>,
    /// Items per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    #[serde(default, deserialize_with = "crate::views::per_page")]
    pub per_page: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RefundOut {
    pub id: Uuid,
    pub payment_id: Uuid,
    pub order_id: Uuid,
    /// `order` (an admin's refund) or `late_payment` (paid after its order ended).
    pub kind: &'static str,
    pub amount_cents: i64,
    pub currency: String,
    pub reason: String,
    /// `pending` (the provider has not confirmed it yet), `succeeded` or `failed`.
    pub status: &'static str,
    /// Times the provider was asked without an answer.
    pub attempts: u32,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub next_attempt_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub completed_at: Option<OffsetDateTime>,
}

impl From<RefundRecord> for RefundOut {
    fn from(r: RefundRecord) -> Self {
        Self {
            id: *r.id.as_uuid(),
            payment_id: *r.payment_id.as_uuid(),
            order_id: *r.order_id.as_uuid(),
            kind: r.kind.as_str(),
            amount_cents: r.amount.cents(),
            currency: r.amount.currency().as_str().to_owned(),
            reason: r.reason,
            status: r.status.as_str(),
            attempts: r.attempts,
            last_error: r.last_error,
            next_attempt_at: r.next_attempt_at,
            created_at: r.created_at,
            completed_at: r.completed_at,
        }
    }
}

/// Every refund, newest first: what admins refunded and what is owed for payments that came
/// after their order ended, with whether the provider confirmed it. Admins.
#[utoipa::path(get, path = "/api/v1/admin/refunds", tag = "admin", security(("bearer" = [])),
    params(RefundListParams),
    responses(
        (status = 200, description = "A page of refunds", body = Envelope<PageOf<RefundOut>>),
        (status = 400, description = "Unknown status", body = ErrorEnvelope),
        (status = 403, description = "Not an admin", body = ErrorEnvelope),
    ))]
pub async fn admin_list_refunds(
    State(payments): State<Arc<Payments>>,
    _admin: AdminAuth,
    Query(params): Query<RefundListParams>,
) -> Result<Reply<PageOf<RefundOut>>, ApiError> {
    let status = crate::views::status_filter::<RefundStatus>(params.status.as_deref())?;
    let refunds = payments
        .refunds(status, PageRequest::new(params.page, params.per_page))
        .await?;
    Ok(ok(PageOf::from_page(refunds, RefundOut::from)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterOut {
    pub event_id: String,
    pub payment_ref: String,
    /// The notification as it was sent.
    pub body: String,
    pub attempts: u32,
    /// This server's last answer to it (a status outside 2xx), if it answered at all.
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub dead_at: OffsetDateTime,
}

/// Payment notifications the sandbox provider gave up on after its whole retry schedule (11
/// attempts over about 16 hours): each one is a payment this shop may not know the outcome of.
/// Newest first; empty without the sandbox. Admins.
#[utoipa::path(get, path = "/api/v1/admin/payments/dead-letters", tag = "admin", security(("bearer" = [])),
    params(PageParams),
    responses(
        (status = 200, description = "A page of dead letters", body = Envelope<PageOf<DeadLetterOut>>),
        (status = 403, description = "Not an admin", body = ErrorEnvelope),
    ))]
pub async fn admin_dead_letters(
    State(payments): State<Arc<Payments>>,
    _admin: AdminAuth,
    Query(params): Query<PageParams>,
) -> Result<Reply<PageOf<DeadLetterOut>>, ApiError> {
    let page = payments
        .dead_letters(params.into())
        .await
        .map_err(ApiError::unavailable)?;
    Ok(ok(PageOf::from_page(page, DeadLetterOut::from)))
}

impl From<DeadLetter> for DeadLetterOut {
    fn from(d: DeadLetter) -> Self {
        Self {
            event_id: d.event_id,
            payment_ref: d.payment_ref,
            body: d.body,
            attempts: d.attempts,
            last_status: d.last_status,
            last_error: d.last_error,
            created_at: d.created_at,
            dead_at: d.dead_at,
        }
    }
}
