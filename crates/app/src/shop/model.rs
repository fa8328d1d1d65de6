//! Records of carts, addresses, coupons and orders, as the shop's use cases and their storage
//! ports exchange them.

use flashmart_domain::address::Address;
use flashmart_domain::coupon::{CouponError, CouponRules};
use flashmart_domain::{
    AddressId, CouponId, Money, OrderId, OrderStatus, ProductId, ReservationId, SaleId, UserId,
};
use time::OffsetDateTime;

use crate::catalog::Product;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressRecord {
    pub id: AddressId,
    pub user_id: UserId,
    pub address: Address,
    pub is_default: bool,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// A line of a cart with the product as it is now (price and stock from the catalog, never from
/// the client). `product` is `None` when it was deleted since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartLine {
    pub product_id: ProductId,
    pub quantity: u32,
    pub product: Option<Product>,
    pub added_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coupon {
    pub id: CouponId,
    /// Upper case.
    pub code: String,
    pub rules: CouponRules,
    pub uses: u32,
    pub active: bool,
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    pub line: u32,
    pub product_id: Option<ProductId>,
    pub sale_id: Option<SaleId>,
    pub item_no: Option<u32>,
    /// As it was when ordered.
    pub name: String,
    pub unit_price_cents: i64,
    pub quantity: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRecord {
    pub id: OrderId,
    pub user_id: UserId,
    pub status: OrderStatus,
    pub subtotal: Money,
    pub discount: Money,
    pub total: Money,
    pub refunded: Money,
    pub lines: Vec<OrderLine>,
    /// Where a cart order ships (flash-sale orders have none).
    pub shipping: Option<Address>,
    pub coupon_code: Option<String>,
    /// Set for an order made from a flash-sale reservation.
    pub reservation_id: Option<ReservationId>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// Unpaid by then, the order expires.
    pub expires_at: OffsetDateTime,
    pub paid_at: Option<OffsetDateTime>,
}

/// What placing an order from a cart needs.
#[derive(Debug, Clone)]
pub struct CheckoutRequest {
    pub order_id: OrderId,
    pub user_id: UserId,
    pub shipping: Address,
    pub coupon_code: Option<String>,
    pub now: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// Refused when the user already has this many unpaid cart orders.
    pub max_open_orders: u32,
    /// Refused when a line holds more units than this.
    pub max_units_per_product: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckoutOutcome {
    Placed(Box<OrderRecord>),
    EmptyCart,
    /// Deleted or deactivated since it was put in the cart.
    Unavailable {
        product_id: ProductId,
        name: Option<String>,
    },
    /// Fewer left than the cart asks for; nothing was taken.
    OutOfStock {
        product_id: ProductId,
        name: String,
        available: u32,
    },
    MixedCurrencies,
    /// A line's or the order's total does not fit: nothing was taken.
    TooLarge {
        field: &'static str,
    },
    CouponNotFound,
    Coupon(CouponError),
    /// The user has `max_open_orders` unpaid cart orders already.
    TooManyOpenOrders,
    /// A line asks for more than `max_units_per_product`.
    TooManyUnits {
        product_id: ProductId,
        name: String,
    },
}

/// What cancelling an order led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    Cancelled(Box<OrderRecord>),
    NotFound,
    /// Only an order awaiting payment can be cancelled.
    NotPending(OrderStatus),
}
