//! Operating flash sales: create, inspect, stats, reservations, recurring schedules, and the
//! load-test buyers `flashmart stampede` uses.

use std::sync::Arc;

use axum::extract::State;
use flashmart_app::FieldError;
use flashmart_app::auth::AuthService;
use flashmart_app::flash_sale::model::{ReservationRecord, Schedule};
use flashmart_app::flash_sale::{
    FlashSales, ItemDraft, ItemsDraft, SaleDraft, SaleStats, ScheduleDraft,
};
use flashmart_domain::{ReservationId, SaleId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::envelope::{Envelope, ErrorEnvelope, Reply, created, ok};
use crate::error::ApiError;
use crate::extract::{AdminAuth, Json, OperatorAuth, Path, Query};
use crate::routes::flash_sales::{SaleListParams, sales_page};
use crate::state::{AppState, LoadTest};
use crate::views::{PageOf, PageParams, ReservationOut, SaleOut};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_sale, admin_list_sales))
        .routes(routes!(admin_get_sale))
        .routes(routes!(sale_stats))
        .routes(routes!(list_reservations))
        .routes(routes!(create_schedule, list_schedules))
        .routes(routes!(mint_buyers))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ItemRequest {
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub name: String,
    /// A catalogue product this item sells: its `stock` moves out of the product's when the
    /// sale is made (409, 60010, when the product has less), and what is not sold goes back
    /// once the sale has ended.
    pub product_id: Option<Uuid>,
    pub image_url: Option<String>,
    #[schema(minimum = 0, maximum = 100_000_000_000_i64)]
    pub price_cents: i64,
    #[schema(minimum = 1, maximum = 10_000_000)]
    pub stock: i64,
}

/// `count` items with generated names and pictures.
#[derive(Debug, Deserialize, ToSchema)]
pub struct GenerateItems {
    #[schema(minimum = 1, maximum = 100_000)]
    pub count: i64,
    #[schema(minimum = 0, maximum = 100_000_000_000_i64)]
    pub price_cents: i64,
    /// Units of each item.
    #[serde(default = "one")]
    #[schema(default = 1, minimum = 1, maximum = 10_000_000)]
    pub stock: i64,
}

fn one() -> i64 {
    1
}

fn default_ttl() -> i64 {
    900
}

/// Either `items` or `generate_items`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateSaleRequest {
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub starts_at: OffsetDateTime,
    /// After `starts_at`, and in the future (422 otherwise).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub ends_at: OffsetDateTime,
    #[schema(minimum = 1, maximum = 10_000)]
    pub per_user_limit: i64,
    /// How long a reservation holds stock unpaid (the payment window).
    #[serde(default = "default_ttl")]
    #[schema(default = 900, minimum = 10, maximum = 604_800)]
    pub reservation_ttl_secs: i64,
    /// ISO 4217 code; USD when absent.
    #[schema(pattern = "^[A-Za-z]{3}$")]
    pub currency: Option<String>,
    #[schema(min_items = 1, max_items = 100_000)]
    pub items: Option<Vec<ItemRequest>>,
    pub generate_items: Option<GenerateItems>,
}

/// Creates a sale with listed or generated items. Operators and admins.
#[utoipa::path(post, path = "/api/v1/admin/flash-sales", tag = "admin",
    security(("bearer" = [])),
    request_body = CreateSaleRequest,
    responses(
        (status = 201, description = "Created", body = Envelope<SaleOut>),
        (status = 403, description = "Not an operator", body = ErrorEnvelope),
        (status = 409, description = "60010: an item's product has less stock than the item takes", body = ErrorEnvelope),
        (status = 422, description = "Invalid sale; `details` names the fields", body = ErrorEnvelope),
    ))]
pub async fn create_sale(
    State(sales): State<Arc<FlashSales>>,
    OperatorAuth(staff): OperatorAuth,
    Json(body): Json<CreateSaleRequest>,
) -> Result<Reply<SaleOut>, ApiError> {
    let items = match (body.items, body.generate_items) {
        (Some(items), None) => ItemsDraft::Listed(
            items
                .into_iter()
                .map(|i| ItemDraft {
                    name: i.name,
                    product_id: i.product_id,
                    image_url: i.image_url,
                    price_cents: i.price_cents,
                    stock: i.stock,
                })
                .collect(),
        ),
        (None, Some(g)) => ItemsDraft::Generated {
            count: g.count,
            price_cents: g.price_cents,
            stock: g.stock,
        },
        _ => {
            return Err(ApiError::validation(vec![FieldError::new(
                "items",
                "give either items or generate_items",
            )]));
        }
    };
    let view = sales
        .create_sale(
            staff.actor(),
            SaleDraft {
                name: body.name,
                starts_at: body.starts_at,
                ends_at: body.ends_at,
                per_user_limit: body.per_user_limit,
                reservation_ttl_secs: body.reservation_ttl_secs,
                currency: body.currency,
                items,
            },
        )
        .await?;
    Ok(created(view.into()))
}

/// All sales, any status unless filtered. Operators and admins.
#[utoipa::path(get, path = "/api/v1/admin/flash-sales", tag = "admin",
    security(("bearer" = [])),
    params(SaleListParams),
    responses(
        (status = 200, description = "A page of sales", body = Envelope<PageOf<SaleOut>>),
        (status = 403, description = "Not an operator", body = ErrorEnvelope),
    ))]
pub async fn admin_list_sales(
    State(sales): State<Arc<FlashSales>>,
    _operator: OperatorAuth,
    Query(params): Query<SaleListParams>,
) -> Result<Reply<PageOf<SaleOut>>, ApiError> {
    sales_page(&sales, params).await
}

/// One sale. Operators and admins.
#[utoipa::path(get, path = "/api/v1/admin/flash-sales/{id}", tag = "admin",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Sale id")),
    responses(
        (status = 200, description = "The sale", body = Envelope<SaleOut>),
        (status = 404, description = "60001: sale not found", body = ErrorEnvelope),
    ))]
pub async fn admin_get_sale(
    State(sales): State<Arc<FlashSales>>,
    _operator: OperatorAuth,
    Path(id): Path<Uuid>,
) -> Result<Reply<SaleOut>, ApiError> {
    Ok(ok(sales.sale(SaleId::from_uuid(id)).await?.into()))
}

/// A sale's numbers. With no reservation in flight, `reserved + sold + remaining = stock`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsOut {
    pub stock: u64,
    /// Held by reservations not yet paid.
    pub reserved: u64,
    /// Held by paid reservations.
    pub sold: u64,
    /// Not held by anyone (the in-memory ledger's count).
    pub remaining: u64,
    /// Given back by expired or cancelled reservations.
    pub released: u64,
    /// Buyers holding something.
    pub buyers: u64,
    /// Checkout attempts recorded through the compatibility API.
    pub attempts: u64,
}

impl From<SaleStats> for StatsOut {
    fn from(s: SaleStats) -> Self {
        Self {
            stock: s.stock,
            reserved: s.reserved,
            sold: s.sold,
            remaining: s.remaining,
            released: s.released,
            buyers: s.buyers,
            attempts: s.attempts,
        }
    }
}

/// Stock, reserved, sold, remaining, released and buyers of a sale. Operators and admins.
#[utoipa::path(get, path = "/api/v1/admin/flash-sales/{id}/stats", tag = "admin",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Sale id")),
    responses(
        (status = 200, description = "The numbers", body = Envelope<StatsOut>),
        (status = 404, description = "60001: sale not found", body = ErrorEnvelope),
    ))]
pub async fn sale_stats(
    State(sales): State<Arc<FlashSales>>,
    _operator: OperatorAuth,
    Path(id): Path<Uuid>,
) -> Result<Reply<StatsOut>, ApiError> {
    Ok(ok(sales.stats(SaleId::from_uuid(id)).await?.into()))
}

/// A reservation with its buyer, for operators.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminReservationOut {
    #[serde(flatten)]
    pub reservation: ReservationOut,
    /// The user, or for the compatibility API an id derived from `buyer_ref`.
    pub buyer_id: Uuid,
    /// The caller-named user of the compatibility API.
    pub buyer_ref: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub purchased_at: Option<OffsetDateTime>,
}

impl From<ReservationRecord> for AdminReservationOut {
    fn from(r: ReservationRecord) -> Self {
        Self {
            reservation: ReservationOut::from(&r),
            buyer_id: r.buyer.0,
            buyer_ref: r.buyer_ref,
            purchased_at: r.purchased_at,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReservationListParams {
    /// Page number, from 1.
    #[param(minimum = 1, maximum = 10_000_000)]
    #[serde(default, deserialize_with = "crate::views::page_number")]
    pub page: Option<u32>,
    /// Items per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    #[serde(default, deserialize_with = "crate::views::per_page")]
    pub per_page: Option<u32>,
    /// Start after this reservation id (keyset paging through a large sale; `page` is then
    /// ignored).
    pub after: Option<Uuid>,
}

/// Every reservation of a sale, oldest first. Operators and admins.
#[utoipa::path(get, path = "/api/v1/admin/flash-sales/{id}/reservations", tag = "admin",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Sale id"), ReservationListParams),
    responses(
        (status = 200, description = "A page of reservations", body = Envelope<PageOf<AdminReservationOut>>),
        (status = 404, description = "60001: sale not found", body = ErrorEnvelope),
    ))]
pub async fn list_reservations(
    State(sales): State<Arc<FlashSales>>,
    _operator: OperatorAuth,
    Path(id): Path<Uuid>,
    Query(params): Query<ReservationListParams>,
) -> Result<Reply<PageOf<AdminReservationOut>>, ApiError> {
    let page = PageParams {
        page: params.page,
        per_page: params.per_page,
    };
    let list = sales
        .reservations(
            SaleId::from_uuid(id),
            page.into(),
            params.after.map(ReservationId::from_uuid),
        )
        .await?;
    Ok(ok(PageOf::from_page(list, AdminReservationOut::from)))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateScheduleRequest {
    /// Unique; each sale is named after it and its slot.
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub name: String,
    /// `hourly` (on the hour, UTC) or `daily` (at midnight UTC).
    #[schema(example = "hourly", pattern = "^(hourly|daily)$")]
    pub recurrence: String,
    /// Generated items per sale, one unit each.
    #[schema(minimum = 1, maximum = 100_000)]
    pub item_count: i64,
    #[schema(minimum = 0, maximum = 100_000_000_000_i64)]
    pub price_cents: i64,
    #[schema(pattern = "^[A-Za-z]{3}$")]
    pub currency: Option<String>,
    #[schema(minimum = 1, maximum = 10_000)]
    pub per_user_limit: i64,
    #[serde(default = "default_ttl")]
    #[schema(default = 900, minimum = 10, maximum = 604_800)]
    pub reservation_ttl_secs: i64,
    /// How long each sale lasts from its slot's start, at most the period (3600 hourly, 86400
    /// daily); the whole period when absent.
    #[schema(minimum = 60, maximum = 86_400)]
    pub duration_secs: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleOut {
    pub id: Uuid,
    pub name: String,
    pub recurrence: &'static str,
    pub item_count: u32,
    pub price_cents: i64,
    pub currency: String,
    pub per_user_limit: u32,
    pub reservation_ttl_secs: i64,
    pub duration_secs: i64,
    pub active: bool,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

impl From<Schedule> for ScheduleOut {
    fn from(s: Schedule) -> Self {
        Self {
            id: *s.id.as_uuid(),
            name: s.name,
            recurrence: s.recurrence.as_str(),
            item_count: s.item_count,
            price_cents: s.price_cents,
            currency: s.currency.as_str().to_owned(),
            per_user_limit: s.per_user_limit,
            reservation_ttl_secs: s.reservation_ttl_secs,
            duration_secs: s.duration_secs,
            active: s.active,
            created_at: s.created_at,
        }
    }
}

/// Creates a recurring sale; the current slot's sale is made at once. Operators and admins.
#[utoipa::path(post, path = "/api/v1/admin/flash-sale-schedules", tag = "admin",
    security(("bearer" = [])),
    request_body = CreateScheduleRequest,
    responses(
        (status = 201, description = "Created", body = Envelope<ScheduleOut>),
        (status = 409, description = "A schedule with this name exists", body = ErrorEnvelope),
        (status = 422, description = "Invalid schedule", body = ErrorEnvelope),
    ))]
pub async fn create_schedule(
    State(sales): State<Arc<FlashSales>>,
    OperatorAuth(staff): OperatorAuth,
    Json(body): Json<CreateScheduleRequest>,
) -> Result<Reply<ScheduleOut>, ApiError> {
    let schedule = sales
        .create_schedule(
            staff.actor(),
            ScheduleDraft {
                name: body.name,
                recurrence: body.recurrence,
                item_count: body.item_count,
                price_cents: body.price_cents,
                currency: body.currency,
                per_user_limit: body.per_user_limit,
                reservation_ttl_secs: body.reservation_ttl_secs,
                duration_secs: body.duration_secs,
            },
        )
        .await?;
    Ok(created(schedule.into()))
}

/// Recurring schedules. Operators and admins.
#[utoipa::path(get, path = "/api/v1/admin/flash-sale-schedules", tag = "admin",
    security(("bearer" = [])),
    params(PageParams),
    responses((status = 200, description = "A page of schedules", body = Envelope<PageOf<ScheduleOut>>)))]
pub async fn list_schedules(
    State(sales): State<Arc<FlashSales>>,
    _operator: OperatorAuth,
    Query(page): Query<PageParams>,
) -> Result<Reply<PageOf<ScheduleOut>>, ApiError> {
    let list = sales.schedules(page.into()).await?;
    Ok(ok(PageOf::from_page(list, ScheduleOut::from)))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct MintBuyersRequest {
    /// 1 to 10,000 per call.
    #[schema(minimum = 1, maximum = 10_000)]
    pub count: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MintedBuyer {
    pub user_id: Uuid,
    pub access_token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MintedBuyers {
    pub buyers: Vec<MintedBuyer>,
}

/// Creates customer accounts that cannot log in, each with a session and an access token, for
/// load tests (`flashmart stampede`). Admins only, and only with `loadtest.enabled = true`;
/// otherwise 404.
#[utoipa::path(post, path = "/api/v1/admin/loadtest/buyers", tag = "admin",
    security(("bearer" = [])),
    request_body = MintBuyersRequest,
    responses(
        (status = 201, description = "Buyers and their tokens", body = Envelope<MintedBuyers>),
        (status = 404, description = "Load-test buyers are disabled", body = ErrorEnvelope),
        (status = 422, description = "count out of range", body = ErrorEnvelope),
    ))]
pub async fn mint_buyers(
    State(auth): State<Arc<AuthService>>,
    State(loadtest): State<LoadTest>,
    AdminAuth(staff): AdminAuth,
    Json(body): Json<MintBuyersRequest>,
) -> Result<Reply<MintedBuyers>, ApiError> {
    if !loadtest.enabled {
        return Err(ApiError::status(
            axum::http::StatusCode::NOT_FOUND,
            "load-test buyers are disabled (loadtest.enabled = false)",
        ));
    }
    let count = usize::try_from(body.count)
        .ok()
        .filter(|c| (1..=10_000).contains(c))
        .ok_or_else(|| {
            ApiError::validation(vec![FieldError::new(
                "count",
                "must be between 1 and 10000",
            )])
        })?;
    let buyers = auth.mint_buyers(staff.actor(), count).await?;
    Ok(created(MintedBuyers {
        buyers: buyers
            .into_iter()
            .map(|(user_id, access_token)| MintedBuyer {
                user_id: *user_id.as_uuid(),
                access_token,
            })
            .collect(),
    }))
}
