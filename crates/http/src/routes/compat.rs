//! The contest compatibility API (`compat.contest = true`): `POST /checkout`, `POST /purchase`,
//! `GET /health`, with the bare JSON bodies that interface's clients expect (errors still use the
//! envelope). It trusts the caller-named `user_id`: serve it on a private network only.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use flashmart_app::flash_sale::FlashSales;
use flashmart_app::flash_sale::model::PurchaseOutcome;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::envelope::ErrorEnvelope;
use crate::error::ApiError;
use crate::extract::Query;
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(checkout))
        .routes(routes!(purchase))
        .routes(routes!(health))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CheckoutParams {
    /// The buyer, as the caller names them (trusted as given).
    pub user_id: String,
    /// The item's number in the current hourly sale (1 to 10,000).
    pub id: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckoutOut {
    /// The reservation code; `POST /purchase?code=` confirms it.
    pub code: String,
}

/// Reserves one item of the current hourly contest sale for `user_id` (at most 10 per user per
/// sale). Every attempt is recorded.
#[utoipa::path(post, path = "/checkout", tag = "compat",
    params(CheckoutParams),
    responses(
        (status = 200, description = "Reserved", body = CheckoutOut),
        (status = 404, description = "60001 no current sale; 60007 no such item", body = ErrorEnvelope),
        (status = 409, description = "60004 sold out; 60005 per-user limit reached", body = ErrorEnvelope),
    ))]
pub async fn checkout(
    State(sales): State<Arc<FlashSales>>,
    Query(params): Query<CheckoutParams>,
) -> Result<Response, ApiError> {
    let code = sales.contest_checkout(&params.user_id, params.id).await?;
    Ok(axum::Json(CheckoutOut { code }).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PurchaseParams {
    pub code: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PurchasedItem {
    /// The item's number in its sale.
    pub id: u32,
    pub name: String,
    pub price_cents: i64,
    pub currency: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PurchaseOut {
    pub code: String,
    pub user_id: Option<String>,
    pub sale_id: uuid::Uuid,
    pub item: PurchasedItem,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub purchased_at: Option<OffsetDateTime>,
}

/// Confirms a checkout; repeating it answers the same.
#[utoipa::path(post, path = "/purchase", tag = "compat",
    params(PurchaseParams),
    responses(
        (status = 200, description = "Purchased", body = PurchaseOut),
        (status = 404, description = "60008: no such code", body = ErrorEnvelope),
        (status = 409, description = "60009: the reservation expired", body = ErrorEnvelope),
    ))]
pub async fn purchase(
    State(sales): State<Arc<FlashSales>>,
    Query(params): Query<PurchaseParams>,
) -> Result<Response, ApiError> {
    match sales.contest_purchase(&params.code).await? {
        PurchaseOutcome::Purchased {
            reservation,
            item_name,
            unit_price_cents,
            currency,
        } => Ok(axum::Json(PurchaseOut {
            code: reservation.code(),
            user_id: reservation.buyer_ref,
            sale_id: *reservation.sale_id.as_uuid(),
            item: PurchasedItem {
                id: reservation.item_no,
                name: item_name,
                price_cents: unit_price_cents,
                currency: currency.as_str().to_owned(),
            },
            purchased_at: reservation.purchased_at,
        })
        .into_response()),
        PurchaseOutcome::NotFound => {
            Err(flashmart_app::flash_sale::SaleError::ReservationNotFound.into())
        }
        PurchaseOutcome::Expired => {
            Err(flashmart_app::flash_sale::SaleError::ReservationExpired.into())
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CompatHealth {
    pub status: &'static str,
}

/// The contest interface's health check.
#[utoipa::path(get, path = "/health", tag = "compat",
    responses((status = 200, description = "Serving", body = CompatHealth)))]
pub async fn health() -> Response {
    axum::Json(CompatHealth { status: "ok" }).into_response()
}
