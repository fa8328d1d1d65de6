//! The shopper's addresses, cart, checkout and orders; operators' view of orders and coupons.

use std::sync::Arc;

use axum::extract::State;
use flashmart_app::PageRequest;
use flashmart_app::payments::Payments;
use flashmart_app::shop::model::{AddressRecord, Coupon, OrderRecord};
use flashmart_app::shop::{CartProblem, CartView, CouponDraft, ShipTo, Shop};
use flashmart_domain::address::AddressFields;
use flashmart_domain::coupon::Discount;
use flashmart_domain::{AddressId, OrderId, OrderStatus, ProductId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::envelope::{Envelope, ErrorEnvelope, Reply, created, ok};
use crate::error::ApiError;
use crate::extract::{AdminAuth, Auth, Json, OperatorAuth, Path, Query};
use crate::state::AppState;
use crate::views::{Empty, PageOf, PageParams};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_addresses, add_address))
        .routes(routes!(get_address, update_address, delete_address))
        .routes(routes!(make_default_address))
        .routes(routes!(get_cart, clear_cart))
        .routes(routes!(set_cart_item, remove_cart_item))
        .routes(routes!(checkout))
        .routes(routes!(list_orders))
        .routes(routes!(get_order))
        .routes(routes!(cancel_order))
        .routes(routes!(admin_list_orders))
        .routes(routes!(admin_get_order))
        .routes(routes!(create_coupon, list_coupons))
}

// ---- addresses ------------------------------------------------------------------------------

/// An address as sent: the fields, and whether it should be the default.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AddressIn {
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    pub recipient: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    pub line1: String,
    #[schema(max_length = 200, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    pub line2: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    pub city: String,
    #[schema(max_length = 100, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    pub region: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 20,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    pub postal_code: String,
    /// ISO 3166-1 alpha-2.
    #[schema(example = "DE", pattern = "^[A-Za-z]{2}$")]
    pub country: String,
    #[schema(max_length = 30, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    pub phone: Option<String>,
    /// Make it the default (the first address always is).
    #[serde(default)]
    pub default: bool,
}

impl AddressIn {
    fn fields(self) -> (AddressFields, bool) {
        (
            AddressFields {
                recipient: self.recipient,
                line1: self.line1,
                line2: self.line2,
                city: self.city,
                region: self.region,
                postal_code: self.postal_code,
                country: self.country,
                phone: self.phone,
            },
            self.default,
        )
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AddressFieldsOut {
    pub recipient: String,
    pub line1: String,
    pub line2: Option<String>,
    pub city: String,
    pub region: Option<String>,
    pub postal_code: String,
    pub country: String,
    pub phone: Option<String>,
}

impl From<&flashmart_domain::address::Address> for AddressFieldsOut {
    fn from(a: &flashmart_domain::address::Address) -> Self {
        let f = a.fields().clone();
        Self {
            recipient: f.recipient,
            line1: f.line1,
            line2: f.line2,
            city: f.city,
            region: f.region,
            postal_code: f.postal_code,
            country: f.country,
            phone: f.phone,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AddressOut {
    pub id: Uuid,
    #[serde(flatten)]
    pub address: AddressFieldsOut,
    pub default: bool,
}

impl From<AddressRecord> for AddressOut {
    fn from(a: AddressRecord) -> Self {
        Self {
            id: *a.id.as_uuid(),
            address: AddressFieldsOut::from(&a.address),
            default: a.is_default,
        }
    }
}

/// The caller's addresses, oldest first.
#[utoipa::path(get, path = "/api/v1/users/me/addresses", tag = "shop", security(("bearer" = [])),
    responses((status = 200, description = "Addresses", body = Envelope<Vec<AddressOut>>)))]
pub async fn list_addresses(
    State(shop): State<Arc<Shop>>,
    Auth(me): Auth,
) -> Result<Reply<Vec<AddressOut>>, ApiError> {
    let list = shop.addresses(me.user_id).await?;
    Ok(ok(list.into_iter().map(AddressOut::from).collect()))
}

/// Saves an address (at most 20).
#[utoipa::path(post, path = "/api/v1/users/me/addresses", tag = "shop", security(("bearer" = [])),
    request_body = AddressIn,
    responses(
        (status = 201, description = "Saved", body = Envelope<AddressOut>),
        (status = 409, description = "The user has 20 addresses already", body = ErrorEnvelope),
        (status = 422, description = "Invalid address", body = ErrorEnvelope),
    ))]
pub async fn add_address(
    State(shop): State<Arc<Shop>>,
    Auth(me): Auth,
    Json(body): Json<AddressIn>,
) -> Result<Reply<AddressOut>, ApiError> {
    let (fields, default) = body.fields();
    Ok(created(
        shop.add_address(me.user_id, fields, default).await?.into(),
    ))
}

/// One of the caller's addresses.
#[utoipa::path(get, path = "/api/v1/users/me/addresses/{id}", tag = "shop", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Address id")),
    responses(
        (status = 200, description = "The address", body = Envelope<AddressOut>),
        (status = 404, description = "10010: not one of the caller's addresses", body = ErrorEnvelope),
    ))]
pub async fn get_address(
    State(shop): State<Arc<Shop>>,
    Auth(me): Auth,
    Path(id): Path<Uuid>,
) -> Result<Reply<AddressOut>, ApiError> {
    Ok(ok(shop
        .address(me.user_id, AddressId::from_uuid(id))
        .await?
        .into()))
}

/// Replaces one of the caller's addresses.
#[utoipa::path(put, path = "/api/v1/users/me/addresses/{id}", tag = "shop", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Address id")),
    request_body = AddressIn,
    responses(
        (status = 200, description = "Saved", body = Envelope<AddressOut>),
        (status = 404, description = "10010: not one of the caller's addresses", body = ErrorEnvelope),
    ))]
pub async fn update_address(
    State(shop): State<Arc<Shop>>,
    Auth(me): Auth,
    Path(id): Path<Uuid>,
    Json(body): Json<AddressIn>,
) -> Result<Reply<AddressOut>, ApiError> {
    let (fields, default) = body.fields();
    let saved = shop
        .update_address(me.user_id, AddressId::from_uuid(id), fields, default)
        .await?;
    Ok(ok(saved.into()))
}

/// Deletes one of the caller's addresses; if it was the default, the oldest left becomes it.
#[utoipa::path(delete, path = "/api/v1/users/me/addresses/{id}", tag = "shop", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Address id")),
    responses(
        (status = 200, description = "Deleted", body = Envelope<Empty>),
        (status = 404, description = "10010: not one of the caller's addresses", body = ErrorEnvelope),
    ))]
pub async fn delete_address(
    State(shop): State<Arc<Shop>>,
    Auth(me): Auth,
    Path(id): Path<Uuid>,
) -> Result<Reply<Empty>, ApiError> {
    shop.delete_address(me.user_id, AddressId::from_uuid(id))
        .await?;
    Ok(ok(Empty {}))
}

/// Makes one of the caller's addresses the default.
#[utoipa::path(post, path = "/api/v1/users/me/addresses/{id}/default", tag = "shop",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Address id")),
    responses(
        (status = 200, description = "Now the default", body = Envelope<AddressOut>),
        (status = 404, description = "10010: not one of the caller's addresses", body = ErrorEnvelope),
    ))]
pub async fn make_default_address(
    State(shop): State<Arc<Shop>>,
    Auth(me): Auth,
    Path(id): Path<Uuid>,
) -> Result<Reply<AddressOut>, ApiError> {
    let saved = shop
        .make_default_address(me.user_id, AddressId::from_uuid(id))
        .await?;
    Ok(ok(saved.into()))
}

// ---- cart -----------------------------------------------------------------------------------

#[derive(Debug, Serialize, ToSchema)]
pub struct CartLineOut {
    pub product_id: Uuid,
    /// The product's name now (absent when it was deleted).
    pub name: Option<String>,
    pub quantity: u32,
    /// Today's catalog price, never one the client sent.
    pub unit_price_cents: Option<i64>,
    pub line_total_cents: Option<i64>,
    pub currency: Option<String>,
    pub stock: Option<u32>,
    /// `unavailable`, or `only N left`: what would stop a checkout.
    pub problem: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CartOut {
    pub items: Vec<CartLineOut>,
    pub subtotal_cents: Option<i64>,
    pub currency: Option<String>,
    /// Whether a checkout would go through as the cart is now (coupon aside).
    pub ready: bool,
}

impl From<CartView> for CartOut {
    fn from(v: CartView) -> Self {
        Self {
            items: v
                .lines
                .into_iter()
                .map(|l| CartLineOut {
                    product_id: *l.line.product_id.as_uuid(),
                    name: l.line.product.as_ref().map(|p| p.name.clone()),
                    quantity: l.line.quantity,
                    unit_price_cents: l.line.product.as_ref().map(|p| p.price.cents()),
                    line_total_cents: l.line_total.map(|m| m.cents()),
                    currency: l
                        .line
                        .product
                        .as_ref()
                        .map(|p| p.price.currency().as_str().to_owned()),
                    stock: l.line.product.as_ref().map(|p| p.stock),
                    problem: l.problem.map(|p| match p {
                        CartProblem::Unavailable => "unavailable".to_owned(),
                        CartProblem::OnlyLeft(n) => format!("only {n} left"),
                    }),
                })
                .collect(),
            subtotal_cents: v.subtotal.map(|m| m.cents()),
            currency: v.subtotal.map(|m| m.currency().as_str().to_owned()),
            ready: v.ready,
        }
    }
}

/// The caller's cart with today's prices and stock.
#[utoipa::path(get, path = "/api/v1/cart", tag = "shop", security(("bearer" = [])),
    responses((status = 200, description = "The cart", body = Envelope<CartOut>)))]
pub async fn get_cart(
    State(shop): State<Arc<Shop>>,
    Auth(me): Auth,
) -> Result<Reply<CartOut>, ApiError> {
    Ok(ok(shop.cart(me.user_id).await?.into()))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CartItemIn {
    /// 1 to 99; replaces the quantity in the cart.
    #[schema(minimum = 1, maximum = 99)]
    pub quantity: i64,
}

/// Puts a product in the cart (or changes its quantity).
#[utoipa::path(put, path = "/api/v1/cart/items/{product_id}", tag = "shop", security(("bearer" = [])),
    params(("product_id" = Uuid, Path, description = "Product id")),
    request_body = CartItemIn,
    responses(
        (status = 200, description = "The cart", body = Envelope<CartOut>),
        (status = 404, description = "20001: no such active product", body = ErrorEnvelope),
        (status = 409, description = "50006: more units than orders.max_units_per_product", body = ErrorEnvelope),
        (status = 422, description = "quantity out of range", body = ErrorEnvelope),
    ))]
pub async fn set_cart_item(
    State(shop): State<Arc<Shop>>,
    Auth(me): Auth,
    Path(product): Path<Uuid>,
    Json(body): Json<CartItemIn>,
) -> Result<Reply<CartOut>, ApiError> {
    let cart = shop
        .set_cart_line(me.user_id, ProductId::from_uuid(product), body.quantity)
        .await?;
    Ok(ok(cart.into()))
}

/// Takes a product out of the cart.
#[utoipa::path(delete, path = "/api/v1/cart/items/{product_id}", tag = "shop", security(("bearer" = [])),
    params(("product_id" = Uuid, Path, description = "Product id")),
    responses(
        (status = 200, description = "The cart", body = Envelope<CartOut>),
        (status = 404, description = "50001: not in the cart", body = ErrorEnvelope),
    ))]
pub async fn remove_cart_item(
    State(shop): State<Arc<Shop>>,
    Auth(me): Auth,
    Path(product): Path<Uuid>,
) -> Result<Reply<CartOut>, ApiError> {
    let cart = shop
        .remove_cart_line(me.user_id, ProductId::from_uuid(product))
        .await?;
    Ok(ok(cart.into()))
}

/// Empties the cart.
#[utoipa::path(delete, path = "/api/v1/cart", tag = "shop", security(("bearer" = [])),
    responses((status = 200, description = "Emptied", body = Envelope<Empty>)))]
pub async fn clear_cart(
    State(shop): State<Arc<Shop>>,
    Auth(me): Auth,
) -> Result<Reply<Empty>, ApiError> {
    shop.clear_cart(me.user_id).await?;
    Ok(ok(Empty {}))
}

// ---- checkout and orders ----------------------------------------------------------------------

/// Where to ship (a saved `address_id`, or a `shipping_address`; the default address when
/// neither), and an optional coupon.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CheckoutIn {
    pub address_id: Option<Uuid>,
    pub shipping_address: Option<AddressIn>,
    #[schema(pattern = "^[A-Za-z0-9_-]{3,32}$")]
    pub coupon_code: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderLineOut {
    pub line: u32,
    pub product_id: Option<Uuid>,
    pub sale_id: Option<Uuid>,
    pub item_id: Option<u32>,
    /// As it was when ordered.
    pub name: String,
    pub unit_price_cents: i64,
    pub quantity: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderOut {
    pub id: Uuid,
    /// `pending_payment`, `paid`, `cancelled`, `expired`, `refunded` or `partially_refunded`.
    #[schema(example = "pending_payment")]
    pub status: &'static str,
    pub currency: String,
    pub subtotal_cents: i64,
    pub discount_cents: i64,
    pub total_cents: i64,
    pub refunded_cents: i64,
    pub items: Vec<OrderLineOut>,
    pub shipping_address: Option<AddressFieldsOut>,
    pub coupon_code: Option<String>,
    /// Set for an order made from a flash-sale reservation.
    pub reservation_id: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Unpaid by then, the order expires and its stock goes back.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub paid_at: Option<OffsetDateTime>,
}

impl From<OrderRecord> for OrderOut {
    fn from(o: OrderRecord) -> Self {
        Self {
            id: *o.id.as_uuid(),
            status: o.status.as_str(),
            currency: o.total.currency().as_str().to_owned(),
            subtotal_cents: o.subtotal.cents(),
            discount_cents: o.discount.cents(),
            total_cents: o.total.cents(),
            refunded_cents: o.refunded.cents(),
            items: o
                .lines
                .into_iter()
                .map(|l| OrderLineOut {
                    line: l.line,
                    product_id: l.product_id.map(|p| *p.as_uuid()),
                    sale_id: l.sale_id.map(|s| *s.as_uuid()),
                    item_id: l.item_no,
                    name: l.name,
                    unit_price_cents: l.unit_price_cents,
                    quantity: l.quantity,
                })
                .collect(),
            shipping_address: o.shipping.as_ref().map(AddressFieldsOut::from),
            coupon_code: o.coupon_code,
            reservation_id: o.reservation_id.map(|r| *r.as_uuid()),
            created_at: o.created_at,
            expires_at: o.expires_at,
            paid_at: o.paid_at,
        }
    }
}

/// Places an order from the cart: every line's stock is taken in one transaction (all or
/// nothing), the coupon applied and counted, the cart emptied. The order then waits for payment.
#[utoipa::path(post, path = "/api/v1/cart/checkout", tag = "shop", security(("bearer" = [])),
    request_body = CheckoutIn,
    responses(
        (status = 201, description = "Order placed, awaiting payment", body = Envelope<OrderOut>),
        (status = 404, description = "10010 address or 30010 coupon not found", body = ErrorEnvelope),
        (status = 409, description = "50002 the cart is empty; 50003 out of stock or 50004 no longer available, naming the item; 50006 more units of one product than an order may hold; 30003 orders.max_open_per_user unpaid orders open already", body = ErrorEnvelope),
        (status = 422, description = "50005 mixed currencies, 30011 coupon refused, or an invalid address", body = ErrorEnvelope),
    ))]
pub async fn checkout(
    State(shop): State<Arc<Shop>>,
    Auth(me): Auth,
    Json(body): Json<CheckoutIn>,
) -> Result<Reply<OrderOut>, ApiError> {
    let ship_to = match (body.address_id, body.shipping_address) {
        (Some(_), Some(_)) => {
            return Err(ApiError::validation(vec![flashmart_app::FieldError::new(
                "address_id",
                "give address_id or shipping_address, not both",
            )]));
        }
        (Some(id), None) => ShipTo::Saved(AddressId::from_uuid(id)),
        (None, Some(given)) => ShipTo::Given(given.fields().0),
        (None, None) => {
            let default = shop
                .addresses(me.user_id)
                .await?
                .into_iter()
                .find(|a| a.is_default)
                .ok_or_else(|| {
                    ApiError::validation(vec![flashmart_app::FieldError::new(
                        "shipping_address",
                        "no default address: give address_id or shipping_address",
                    )])
                })?;
            ShipTo::Saved(default.id)
        }
    };
    let order = shop
        .checkout(me.user_id, ship_to, body.coupon_code.as_deref())
        .await?;
    Ok(created(order.into()))
}

/// The caller's orders, newest first, optionally in one status.
#[utoipa::path(get, path = "/api/v1/orders", tag = "shop", security(("bearer" = [])), params(OrderListParams),
    responses(
        (status = 200, description = "A page of orders", body = Envelope<PageOf<OrderOut>>),
        (status = 400, description = "Unknown status", body = ErrorEnvelope),
    ))]
pub async fn list_orders(
    State(shop): State<Arc<Shop>>,
    Auth(me): Auth,
    Query(params): Query<OrderListParams>,
) -> Result<Reply<PageOf<OrderOut>>, ApiError> {
    let status = crate::views::status_filter::<OrderStatus>(params.status.as_deref())?;
    let orders = shop
        .orders_of(
            me.user_id,
            status,
            PageRequest::new(params.page, params.per_page),
        )
        .await?;
    Ok(ok(PageOf::from_page(orders, OrderOut::from)))
}

/// One of the caller's orders; anyone else's is "not found".
#[utoipa::path(get, path = "/api/v1/orders/{id}", tag = "shop", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Order id")),
    responses(
        (status = 200, description = "The order", body = Envelope<OrderOut>),
        (status = 404, description = "30001: order not found", body = ErrorEnvelope),
    ))]
pub async fn get_order(
    State(shop): State<Arc<Shop>>,
    Auth(me): Auth,
    Path(id): Path<Uuid>,
) -> Result<Reply<OrderOut>, ApiError> {
    Ok(ok(shop
        .order_of(me.user_id, OrderId::from_uuid(id))
        .await?
        .into()))
}

/// Cancels one of the caller's orders awaiting payment; its stock goes back on sale.
#[utoipa::path(post, path = "/api/v1/orders/{id}/cancel", tag = "shop", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Order id")),
    responses(
        (status = 200, description = "Cancelled", body = Envelope<OrderOut>),
        (status = 404, description = "30001: order not found", body = ErrorEnvelope),
        (status = 409, description = "30002: not awaiting payment", body = ErrorEnvelope),
    ))]
pub async fn cancel_order(
    State(shop): State<Arc<Shop>>,
    State(payments): State<Arc<Payments>>,
    Auth(me): Auth,
    Path(id): Path<Uuid>,
) -> Result<Reply<OrderOut>, ApiError> {
    let order = shop.cancel(me.user_id, OrderId::from_uuid(id)).await?;
    // Its own open payment is closed at the provider now rather than at the next sweep.
    if let Err(err) = payments.close_open_of(order.id).await {
        tracing::warn!(%err, "closing the payment of a cancelled order failed; the sweep will retry");
    }
    Ok(ok(order.into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrderListParams {
    /// Only orders in this status.
    #[param(pattern = "^(pending_payment|paid|cancelled|expired|refunded|partially_refunded)$")]
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

/// Every order, newest first. Admins.
#[utoipa::path(get, path = "/api/v1/admin/orders", tag = "admin", security(("bearer" = [])),
    params(OrderListParams),
    responses(
        (status = 200, description = "A page of orders", body = Envelope<PageOf<OrderOut>>),
        (status = 403, description = "Not an admin", body = ErrorEnvelope),
    ))]
pub async fn admin_list_orders(
    State(shop): State<Arc<Shop>>,
    _admin: AdminAuth,
    Query(params): Query<OrderListParams>,
) -> Result<Reply<PageOf<OrderOut>>, ApiError> {
    let status = crate::views::status_filter::<OrderStatus>(params.status.as_deref())?;
    let orders = shop
        .all_orders(status, PageRequest::new(params.page, params.per_page))
        .await?;
    Ok(ok(PageOf::from_page(orders, OrderOut::from)))
}

/// Any order. Admins.
#[utoipa::path(get, path = "/api/v1/admin/orders/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Order id")),
    responses(
        (status = 200, description = "The order", body = Envelope<OrderOut>),
        (status = 404, description = "30001: order not found", body = ErrorEnvelope),
    ))]
pub async fn admin_get_order(
    State(shop): State<Arc<Shop>>,
    _admin: AdminAuth,
    Path(id): Path<Uuid>,
) -> Result<Reply<OrderOut>, ApiError> {
    Ok(ok(shop.order(OrderId::from_uuid(id)).await?.into()))
}

// ---- coupons ----------------------------------------------------------------------------------

#[derive(Debug, Deserialize, ToSchema)]
pub struct CouponIn {
    /// 3 to 32 letters, digits, `-` or `_`; matched without case.
    #[schema(pattern = "^[A-Za-z0-9_-]{3,32}$")]
    pub code: String,
    /// `percent` or `fixed`.
    #[schema(example = "percent", pattern = "^(percent|fixed)$")]
    pub kind: String,
    /// 1 to 100, for `percent`.
    #[schema(minimum = 1, maximum = 100)]
    pub percent: Option<i64>,
    /// For `fixed`.
    #[schema(minimum = 0, maximum = 100_000_000_000_i64)]
    pub amount_cents: Option<i64>,
    #[schema(pattern = "^[A-Za-z]{3}$")]
    pub currency: Option<String>,
    #[schema(minimum = 0, maximum = 100_000_000_000_i64)]
    pub min_spend_cents: Option<i64>,
    /// Now when absent.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub starts_at: Option<OffsetDateTime>,
    /// After `starts_at` (422 otherwise).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub ends_at: OffsetDateTime,
    /// Uses across all users.
    #[schema(minimum = 1, maximum = 4_294_967_295_i64)]
    pub max_uses: Option<i64>,
    #[schema(minimum = 1, maximum = 4_294_967_295_i64)]
    pub per_user_limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CouponOut {
    pub id: Uuid,
    pub code: String,
    pub kind: &'static str,
    pub percent: Option<u8>,
    pub amount_cents: Option<i64>,
    pub currency: Option<String>,
    pub min_spend_cents: Option<i64>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub starts_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub ends_at: OffsetDateTime,
    pub max_uses: Option<u32>,
    pub per_user_limit: Option<u32>,
    pub uses: u32,
    pub active: bool,
}

impl From<Coupon> for CouponOut {
    fn from(c: Coupon) -> Self {
        let (kind, percent, amount) = match c.rules.discount {
            Discount::Percent { percent } => ("percent", Some(percent), None),
            Discount::Fixed { amount } => ("fixed", None, Some(amount)),
        };
        Self {
            id: *c.id.as_uuid(),
            code: c.code,
            kind,
            percent,
            amount_cents: amount.map(|a| a.cents()),
            currency: amount
                .or(c.rules.min_spend)
                .map(|m| m.currency().as_str().to_owned()),
            min_spend_cents: c.rules.min_spend.map(|m| m.cents()),
            starts_at: c.rules.starts_at,
            ends_at: c.rules.ends_at,
            max_uses: c.rules.max_uses,
            per_user_limit: c.rules.per_user_limit,
            uses: c.uses,
            active: c.active,
        }
    }
}

/// Creates a coupon. Operators and admins.
#[utoipa::path(post, path = "/api/v1/admin/coupons", tag = "admin", security(("bearer" = [])),
    request_body = CouponIn,
    responses(
        (status = 201, description = "Created", body = Envelope<CouponOut>),
        (status = 409, description = "A coupon with this code exists", body = ErrorEnvelope),
        (status = 422, description = "Invalid coupon", body = ErrorEnvelope),
    ))]
pub async fn create_coupon(
    State(shop): State<Arc<Shop>>,
    OperatorAuth(staff): OperatorAuth,
    Json(body): Json<CouponIn>,
) -> Result<Reply<CouponOut>, ApiError> {
    let coupon = shop
        .create_coupon(
            staff.actor(),
            CouponDraft {
                code: body.code,
                kind: body.kind,
                percent: body.percent,
                amount_cents: body.amount_cents,
                currency: body.currency,
                min_spend_cents: body.min_spend_cents,
                starts_at: body.starts_at,
                ends_at: body.ends_at,
                max_uses: body.max_uses,
                per_user_limit: body.per_user_limit,
            },
        )
        .await?;
    Ok(created(coupon.into()))
}

/// Coupons, newest first, with how often each was used. Operators and admins.
#[utoipa::path(get, path = "/api/v1/admin/coupons", tag = "admin", security(("bearer" = [])),
    params(PageParams),
    responses((status = 200, description = "A page of coupons", body = Envelope<PageOf<CouponOut>>)))]
pub async fn list_coupons(
    State(shop): State<Arc<Shop>>,
    _operator: OperatorAuth,
    Query(page): Query<PageParams>,
) -> Result<Reply<PageOf<CouponOut>>, ApiError> {
    let coupons = shop.coupons(page.into()).await?;
    Ok(ok(PageOf::from_page(coupons, CouponOut::from)))
}
