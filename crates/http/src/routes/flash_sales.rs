//! The public flash-sale API: sales, their items, live events, and reservations.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use flashmart_app::flash_sale::FlashSales;
use flashmart_app::flash_sale::ledger::SaleSnapshot;
use flashmart_domain::flash_sale::SalePhase;
use flashmart_domain::{ReservationId, SaleId};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::envelope::{Envelope, ErrorEnvelope, Reply, Written, created_written, ok};
use crate::error::ApiError;
use crate::extract::{Auth, ClientIp, Json, Path, Query};
use crate::state::AppState;
use crate::streams::{EventStreams, Shutdown};
use crate::views::{ItemOut, PageOf, PageParams, ReservationOut, SaleOut};

pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The request's `Idempotency-Key` header, if any: only that value is taken from the request
/// (taking the whole `HeaderMap` would copy every header of every reservation).
#[derive(Debug)]
pub struct IdempotencyKey(Option<HeaderValue>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.headers.get(IDEMPOTENCY_KEY).cloned()))
    }
}

impl IdempotencyKey {
    fn as_str(&self) -> Result<Option<&str>, ApiError> {
        self.0
            .as_ref()
            .map(|v| {
                v.to_str()
                    .map_err(|_| ApiError::bad_request("Idempotency-Key must be ASCII"))
            })
            .transpose()
    }
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_sales))
        .routes(routes!(get_sale))
        .routes(routes!(list_items))
        .routes(routes!(sale_events))
        .routes(routes!(create_reservation))
        .routes(routes!(get_reservation))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SaleListParams {
    /// `upcoming`, `live` or `ended`; all sales when absent.
    #[param(pattern = "^(upcoming|live|ended)$")]
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

/// A page of sales filtered by status: what the public and the admin list both answer.
pub(crate) async fn sales_page(
    sales: &FlashSales,
    params: SaleListParams,
) -> Result<Reply<PageOf<SaleOut>>, ApiError> {
    let phase = crate::views::status_filter::<SalePhase>(params.status.as_deref())?;
    let page = PageParams {
        page: params.page,
        per_page: params.per_page,
    };
    let list = sales.list_sales(phase, page.into()).await?;
    Ok(ok(PageOf::from_page(list, SaleOut::from)))
}

/// Sales by status: upcoming and live ones soonest first, ended ones latest first.
#[utoipa::path(get, path = "/api/v1/flash-sales", tag = "flash-sales",
    params(SaleListParams),
    responses(
        (status = 200, description = "A page of sales", body = Envelope<PageOf<SaleOut>>),
        (status = 400, description = "Unknown status", body = ErrorEnvelope),
    ))]
pub async fn list_sales(
    State(sales): State<Arc<FlashSales>>,
    Query(params): Query<SaleListParams>,
) -> Result<Reply<PageOf<SaleOut>>, ApiError> {
    sales_page(&sales, params).await
}

/// One sale, with its live remaining stock.
#[utoipa::path(get, path = "/api/v1/flash-sales/{id}", tag = "flash-sales",
    params(("id" = Uuid, Path, description = "Sale id")),
    responses(
        (status = 200, description = "The sale", body = Envelope<SaleOut>),
        (status = 404, description = "60001: sale not found", body = ErrorEnvelope),
    ))]
pub async fn get_sale(
    State(sales): State<Arc<FlashSales>>,
    Path(id): Path<Uuid>,
) -> Result<Reply<SaleOut>, ApiError> {
    Ok(ok(sales.sale(SaleId::from_uuid(id)).await?.into()))
}

/// A sale's items in order, each with what remains of it. An item's `id` is its number in the
/// sale, the `item_id` a reservation names.
#[utoipa::path(get, path = "/api/v1/flash-sales/{id}/items", tag = "flash-sales",
    params(("id" = Uuid, Path, description = "Sale id"), PageParams),
    responses(
        (status = 200, description = "A page of items", body = Envelope<PageOf<ItemOut>>),
        (status = 404, description = "60001: sale not found", body = ErrorEnvelope),
    ))]
pub async fn list_items(
    State(sales): State<Arc<FlashSales>>,
    Path(id): Path<Uuid>,
    Query(page): Query<PageParams>,
) -> Result<Reply<PageOf<ItemOut>>, ApiError> {
    let items = sales.items(SaleId::from_uuid(id), page.into()).await?;
    Ok(ok(PageOf::from_page(items, |(item, remaining)| {
        ItemOut::new(item, remaining)
    })))
}

/// The `data` of each server-sent event.
#[derive(Debug, Serialize, ToSchema)]
pub struct SaleEvent {
    pub sale_id: Uuid,
    /// `upcoming`, `live` or `ended`.
    pub status: &'static str,
    /// Units left across all items.
    pub remaining: u64,
}

fn event(sale: SaleId, snapshot: SaleSnapshot) -> Event {
    let data = SaleEvent {
        sale_id: *sale.as_uuid(),
        status: snapshot.phase.as_str(),
        remaining: snapshot.remaining,
    };
    Event::default()
        .event("snapshot")
        .json_data(data)
        .unwrap_or_else(|_| Event::default().comment("unserialisable snapshot"))
}

/// Live remaining stock and status as server-sent events (`event: snapshot`): one at once, then
/// one whenever the numbers change, at most four a second however fast stock moves. The stream
/// ends after the sale has ended, and when the server stops. Open streams are capped in total
/// (`flash_sale.max_event_streams`, then 503) and per client address
/// (`flash_sale.max_event_streams_per_ip`, then 429).
#[utoipa::path(get, path = "/api/v1/flash-sales/{id}/events", tag = "flash-sales",
    params(("id" = Uuid, Path, description = "Sale id")),
    responses(
        (status = 200, description = "`text/event-stream`; each `data` is a SaleEvent", content_type = "text/event-stream", body = SaleEvent),
        (status = 404, description = "60001: sale not found", body = ErrorEnvelope),
        (status = 429, description = "Too many streams open from this address", body = ErrorEnvelope),
        (status = 503, description = "Too many streams open", body = ErrorEnvelope),
    ))]
pub async fn sale_events(
    State(sales): State<Arc<FlashSales>>,
    State(streams): State<Arc<EventStreams>>,
    State(shutdown): State<Shutdown>,
    ClientIp(ip): ClientIp,
    Path(id): Path<Uuid>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let place = streams.open(ip)?;
    let id = SaleId::from_uuid(id);
    let (first, rx) = match sales.subscribe(id).await {
        Some((now, rx)) => (now, Some(rx)),
        // Ended long ago and out of memory: one final snapshot.
        None => {
            let view = sales.sale(id).await?;
            let snapshot = SaleSnapshot {
                remaining: view.remaining,
                phase: view.phase,
            };
            (snapshot, None)
        }
    };
    // State: the receiver, the last snapshot sent (None before the first), whether the
    // stream is over, the server's stop signal, and the stream's place (given back when the
    // stream is dropped).
    let stream = futures_util::stream::unfold(
        (rx, None::<SaleSnapshot>, false, shutdown, place),
        move |(mut rx, sent, done, mut shutdown, place)| async move {
            if done {
                return None;
            }
            let snapshot = match (sent, &mut rx) {
                (None, _) => first,
                (Some(_), None) => return None,
                (Some(sent), Some(receiver)) => loop {
                    tokio::select! {
                        changed = receiver.changed() => {
                            if changed.is_err() {
                                return None;
                            }
                        }
                        () = shutdown.stopping() => return None,
                    }
                    let next = *receiver.borrow_and_update();
                    if next != sent {
                        break next;
                    }
                },
            };
            let over = snapshot.phase == SalePhase::Ended || rx.is_none();
            Some((
                Ok(event(id, snapshot)),
                (rx, Some(snapshot), over, shutdown, place),
            ))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ReservationRequest {
    /// The item's number in the sale (`id` in the item list).
    pub item_id: i64,
    #[serde(default = "one")]
    #[schema(default = 1, minimum = 1, maximum = 10_000)]
    pub quantity: i64,
}

fn one() -> i64 {
    1
}

/// Reserves stock. The answer comes once the reservation and its `pending_payment` order are
/// durable. With an `Idempotency-Key` header, a repeat within 24 hours gets the first answer and
/// reserves nothing more; the same key with another body is refused (60006).
#[utoipa::path(post, path = "/api/v1/flash-sales/{id}/reservations", tag = "flash-sales",
    security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "Sale id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Up to 255 printable ASCII characters, per user", pattern = "^[!-~]{1,255}$"),
    ),
    request_body = ReservationRequest,
    responses(
        (status = 201, description = "Reserved", body = Envelope<ReservationOut>),
        (status = 401, description = "10003: token missing, invalid or expired", body = ErrorEnvelope),
        (status = 404, description = "60001: sale not found; 60007: item not found", body = ErrorEnvelope),
        (status = 409, description = "60002 not started, 60003 ended, 60004 sold out, 60005 per-user limit reached", body = ErrorEnvelope),
        (status = 422, description = "Invalid quantity or key; 60006: key reused with another body", body = ErrorEnvelope),
        (status = 429, description = "Rate limited; 60011: too many live Idempotency-Keys", body = ErrorEnvelope),
        (status = 503, description = "Could not be made durable; nothing was reserved", body = ErrorEnvelope),
    ))]
pub async fn create_reservation(
    State(sales): State<Arc<FlashSales>>,
    Auth(principal): Auth,
    Path(id): Path<Uuid>,
    key: IdempotencyKey,
    Json(body): Json<ReservationRequest>,
) -> Result<Written<ReservationOut>, ApiError> {
    let key = key.as_str()?;
    let record = sales
        .reserve(
            principal.user_id,
            SaleId::from_uuid(id),
            body.item_id,
            body.quantity,
            key,
        )
        .await?;
    Ok(created_written(ReservationOut::from(record.as_ref())))
}

/// One of the caller's reservations; anyone else's is "not found".
#[utoipa::path(get, path = "/api/v1/flash-sales/reservations/{id}", tag = "flash-sales",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Reservation id")),
    responses(
        (status = 200, description = "The reservation", body = Envelope<ReservationOut>),
        (status = 404, description = "60008: reservation not found", body = ErrorEnvelope),
    ))]
pub async fn get_reservation(
    State(sales): State<Arc<FlashSales>>,
    Auth(principal): Auth,
    Path(id): Path<Uuid>,
) -> Result<Reply<ReservationOut>, ApiError> {
    let record = sales
        .reservation_for(principal.user_id, ReservationId::from_uuid(id))
        .await?;
    Ok(ok(ReservationOut::from(&record)))
}
