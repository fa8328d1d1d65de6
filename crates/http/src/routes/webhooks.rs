//! Outbound webhooks: endpoints admins register, and each endpoint's delivery log.

use std::sync::Arc;

use axum::extract::State;
use flashmart_app::page::PageRequest;
use flashmart_app::webhooks::{
    Delivery, Endpoint, EndpointDraft, EndpointPatch, WebhookError, Webhooks,
};
use flashmart_domain::{EventId, WebhookId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::envelope::{Envelope, ErrorEnvelope, Reply, created, ok};
use crate::error::ApiError;
use crate::extract::{AdminAuth, Json, Path, Query};
use crate::state::AppState;
use crate::views::{Empty, PageOf, PageParams};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_webhook, list_webhooks))
        .routes(routes!(get_webhook, update_webhook, delete_webhook))
        .routes(routes!(pause_webhook))
        .routes(routes!(resume_webhook))
        .routes(routes!(list_deliveries))
        .routes(routes!(redeliver))
}

impl From<WebhookError> for ApiError {
    fn from(err: WebhookError) -> Self {
        use axum::http::StatusCode;
        match err {
            WebhookError::Invalid(details) => Self::validation(details),
            WebhookError::NotFound => {
                Self::status(StatusCode::NOT_FOUND, "no such webhook endpoint")
            }
            WebhookError::DeliveryNotFound => Self::status(
                StatusCode::NOT_FOUND,
                "this endpoint has no delivery of that event",
            ),
            WebhookError::TooMany => Self::status(StatusCode::CONFLICT, err.to_string()),
            WebhookError::Store(e) => e.into(),
        }
    }
}

/// An event type a webhook endpoint can subscribe to (the schema's names; the server reads them
/// as text, so that an unknown one is a 422 naming the field).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub enum EventName {
    #[schema(rename = "order.created")]
    OrderCreated,
    #[schema(rename = "order.paid")]
    OrderPaid,
    #[schema(rename = "order.cancelled")]
    OrderCancelled,
    #[schema(rename = "order.expired")]
    OrderExpired,
    #[schema(rename = "order.refunded")]
    OrderRefunded,
    #[schema(rename = "flash_sale.started")]
    FlashSaleStarted,
    #[schema(rename = "flash_sale.sold_out")]
    FlashSaleSoldOut,
    #[schema(rename = "flash_sale.ended")]
    FlashSaleEnded,
    #[schema(rename = "reservation.expired")]
    ReservationExpired,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookIn {
    /// Where events are POSTed: an http or https URL of at most 2,048 characters, without a user name
    /// or password. Loopback, private, link-local and other non-public addresses are refused
    /// (422) unless the server runs with `webhooks.allow_private = true`.
    #[schema(max_length = 2048, pattern = "^[Hh][Tt][Tt][Pp][Ss]?://")]
    pub url: String,
    #[schema(value_type = Vec<EventName>, min_items = 1)]
    pub events: Vec<String>,
    #[schema(max_length = 500)]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookPatch {
    /// As at registration.
    #[schema(max_length = 2048, pattern = "^[Hh][Tt][Tt][Pp][Ss]?://")]
    pub url: Option<String>,
    #[schema(value_type = Option<Vec<EventName>>, min_items = 1)]
    pub events: Option<Vec<String>>,
    #[schema(max_length = 500)]
    pub description: Option<String>,
    /// `false` pauses the endpoint (it gets no new events; what it has waits), `true` resumes.
    pub active: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookOut {
    pub id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    pub description: String,
    /// `false` while paused.
    pub active: bool,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
    /// The signing secret: only in the answer that created the endpoint. Every delivery carries
    /// `flashmart-signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" with it>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl WebhookOut {
    fn of(e: Endpoint, with_secret: bool) -> Self {
        Self {
            id: *e.id.as_uuid(),
            events: e.event_names().into_iter().map(str::to_owned).collect(),
            url: e.url,
            description: e.description,
            active: e.active,
            created_at: e.created_at,
            updated_at: e.updated_at,
            secret: with_secret.then_some(e.secret),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryOut {
    /// The event's id: the `id` in the body, what receivers deduplicate on.
    pub event_id: Uuid,
    pub event_type: String,
    /// `pending`, `delivered` or `dead` (every attempt of the schedule failed).
    pub status: String,
    pub attempts: u32,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_attempt_at: Option<OffsetDateTime>,
    /// The endpoint's last HTTP status, if it answered.
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub delivered_at: Option<OffsetDateTime>,
}

impl From<Delivery> for DeliveryOut {
    fn from(d: Delivery) -> Self {
        Self {
            event_id: *d.event_id.as_uuid(),
            event_type: d.event_type,
            status: d.status.as_str().to_owned(),
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at,
            last_status: d.last_status,
            last_error: d.last_error,
            created_at: d.created_at,
            delivered_at: d.delivered_at,
        }
    }
}

/// Registers an endpoint for some event types. The answer holds its signing `secret`, shown
/// this once. Admins.
#[utoipa::path(post, path = "/api/v1/admin/webhooks", tag = "admin", security(("bearer" = [])),
    request_body = WebhookIn,
    responses(
        (status = 201, description = "Registered, with its secret", body = Envelope<WebhookOut>),
        (status = 403, description = "Not an admin", body = ErrorEnvelope),
        (status = 409, description = "Too many endpoints", body = ErrorEnvelope),
        (status = 422, description = "A bad URL or an unknown event type", body = ErrorEnvelope),
    ))]
pub async fn create_webhook(
    State(webhooks): State<Arc<Webhooks>>,
    AdminAuth(admin): AdminAuth,
    Json(body): Json<WebhookIn>,
) -> Result<Reply<WebhookOut>, ApiError> {
    let endpoint = webhooks
        .create(
            admin.actor(),
            EndpointDraft {
                url: body.url,
                events: body.events,
                description: body.description,
            },
        )
        .await?;
    Ok(created(WebhookOut::of(endpoint, true)))
}

/// Every endpoint, newest first (without secrets). Admins.
#[utoipa::path(get, path = "/api/v1/admin/webhooks", tag = "admin", security(("bearer" = [])),
    params(PageParams),
    responses(
        (status = 200, description = "A page of endpoints", body = Envelope<PageOf<WebhookOut>>),
        (status = 403, description = "Not an admin", body = ErrorEnvelope),
    ))]
pub async fn list_webhooks(
    State(webhooks): State<Arc<Webhooks>>,
    _admin: AdminAuth,
    Query(params): Query<PageParams>,
) -> Result<Reply<PageOf<WebhookOut>>, ApiError> {
    let page = webhooks.endpoints(PageRequest::from(params)).await?;
    Ok(ok(PageOf::from_page(page, |e| WebhookOut::of(e, false))))
}

/// One endpoint (without its secret). Admins.
#[utoipa::path(get, path = "/api/v1/admin/webhooks/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Endpoint id")),
    responses(
        (status = 200, description = "The endpoint", body = Envelope<WebhookOut>),
        (status = 404, description = "No such endpoint", body = ErrorEnvelope),
    ))]
pub async fn get_webhook(
    State(webhooks): State<Arc<Webhooks>>,
    _admin: AdminAuth,
    Path(id): Path<Uuid>,
) -> Result<Reply<WebhookOut>, ApiError> {
    let endpoint = webhooks.endpoint(WebhookId::from_uuid(id)).await?;
    Ok(ok(WebhookOut::of(endpoint, false)))
}

/// Changes an endpoint's URL, event types, description or `active`. Admins.
#[utoipa::path(patch, path = "/api/v1/admin/webhooks/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Endpoint id")),
    request_body = WebhookPatch,
    responses(
        (status = 200, description = "The endpoint as changed", body = Envelope<WebhookOut>),
        (status = 404, description = "No such endpoint", body = ErrorEnvelope),
        (status = 422, description = "A bad URL or an unknown event type", body = ErrorEnvelope),
    ))]
pub async fn update_webhook(
    State(webhooks): State<Arc<Webhooks>>,
    AdminAuth(admin): AdminAuth,
    Path(id): Path<Uuid>,
    Json(body): Json<WebhookPatch>,
) -> Result<Reply<WebhookOut>, ApiError> {
    let patch = EndpointPatch {
        url: body.url,
        events: body.events,
        description: body.description,
        active: body.active,
    };
    let endpoint = webhooks
        .update(admin.actor(), WebhookId::from_uuid(id), patch)
        .await?;
    Ok(ok(WebhookOut::of(endpoint, false)))
}

async fn set_active(
    webhooks: &Webhooks,
    admin: &flashmart_app::auth::Principal,
    id: Uuid,
    active: bool,
) -> Result<Reply<WebhookOut>, ApiError> {
    let patch = EndpointPatch {
        active: Some(active),
        ..EndpointPatch::default()
    };
    let endpoint = webhooks
        .update(admin.actor(), WebhookId::from_uuid(id), patch)
        .await?;
    Ok(ok(WebhookOut::of(endpoint, false)))
}

/// Pauses an endpoint: it gets no new events, and its waiting deliveries wait. Admins.
#[utoipa::path(post, path = "/api/v1/admin/webhooks/{id}/pause", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Endpoint id")),
    responses(
        (status = 200, description = "Paused", body = Envelope<WebhookOut>),
        (status = 404, description = "No such endpoint", body = ErrorEnvelope),
    ))]
pub async fn pause_webhook(
    State(webhooks): State<Arc<Webhooks>>,
    AdminAuth(admin): AdminAuth,
    Path(id): Path<Uuid>,
) -> Result<Reply<WebhookOut>, ApiError> {
    set_active(&webhooks, &admin, id, false).await
}

/// Resumes a paused endpoint: its waiting deliveries go out, and new events reach it. Admins.
#[utoipa::path(post, path = "/api/v1/admin/webhooks/{id}/resume", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Endpoint id")),
    responses(
        (status = 200, description = "Resumed", body = Envelope<WebhookOut>),
        (status = 404, description = "No such endpoint", body = ErrorEnvelope),
    ))]
pub async fn resume_webhook(
    State(webhooks): State<Arc<Webhooks>>,
    AdminAuth(admin): AdminAuth,
    Path(id): Path<Uuid>,
) -> Result<Reply<WebhookOut>, ApiError> {
    set_active(&webhooks, &admin, id, true).await
}

/// Removes an endpoint and its delivery log. Admins.
#[utoipa::path(delete, path = "/api/v1/admin/webhooks/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Endpoint id")),
    responses(
        (status = 200, description = "Deleted", body = Envelope<Empty>),
        (status = 404, description = "No such endpoint", body = ErrorEnvelope),
    ))]
pub async fn delete_webhook(
    State(webhooks): State<Arc<Webhooks>>,
    AdminAuth(admin): AdminAuth,
    Path(id): Path<Uuid>,
) -> Result<Reply<Empty>, ApiError> {
    webhooks
        .delete(admin.actor(), WebhookId::from_uuid(id))
        .await?;
    Ok(ok(Empty {}))
}

/// The endpoint's delivery log, newest event first: each event's status, attempts, next
/// attempt and the endpoint's last answer. Admins.
#[utoipa::path(get, path = "/api/v1/admin/webhooks/{id}/deliveries", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Endpoint id"), PageParams),
    responses(
        (status = 200, description = "A page of deliveries", body = Envelope<PageOf<DeliveryOut>>),
        (status = 404, description = "No such endpoint", body = ErrorEnvelope),
    ))]
pub async fn list_deliveries(
    State(webhooks): State<Arc<Webhooks>>,
    _admin: AdminAuth,
    Path(id): Path<Uuid>,
    Query(params): Query<PageParams>,
) -> Result<Reply<PageOf<DeliveryOut>>, ApiError> {
    let page = webhooks
        .deliveries(WebhookId::from_uuid(id), PageRequest::from(params))
        .await?;
    Ok(ok(PageOf::from_page(page, DeliveryOut::from)))
}

/// Sends an event to the endpoint again, now, with a fresh retry schedule: delivered, dead or
/// waiting alike. Admins.
#[utoipa::path(post, path = "/api/v1/admin/webhooks/{id}/deliveries/{event_id}/redeliver", tag = "admin",
    security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "Endpoint id"),
        ("event_id" = Uuid, Path, description = "The event's id"),
    ),
    responses(
        (status = 200, description = "The delivery, pending again", body = Envelope<DeliveryOut>),
        (status = 404, description = "No such delivery", body = ErrorEnvelope),
    ))]
pub async fn redeliver(
    State(webhooks): State<Arc<Webhooks>>,
    AdminAuth(admin): AdminAuth,
    Path((id, event)): Path<(Uuid, Uuid)>,
) -> Result<Reply<DeliveryOut>, ApiError> {
    let delivery = webhooks
        .redeliver(
            admin.actor(),
            WebhookId::from_uuid(id),
            EventId::from_uuid(event),
        )
        .await?;
    Ok(ok(delivery.into()))
}
