//! Addresses, carts, coupons and cart orders.

use async_trait::async_trait;
use flashmart_domain::{AddressId, OrderId, OrderStatus, ProductId, UserId};
use time::OffsetDateTime;

use crate::audit::AuditEntry;
use crate::error::StoreError;
use crate::flash_sale::model::Released;
use crate::page::{Page, PageRequest};
use crate::shop::model::{
    AddressRecord, CancelOutcome, CartLine, CheckoutOutcome, CheckoutRequest, Coupon, OrderRecord,
};

#[async_trait]
pub trait AddressStore: Send + Sync + std::fmt::Debug + 'static {
    /// The user's addresses, oldest first.
    async fn addresses(&self, user: UserId) -> Result<Vec<AddressRecord>, StoreError>;
    /// Stores an address; when it is the default, the previous default stops being one (in the
    /// same transaction).
    async fn save_address(&self, address: &AddressRecord) -> Result<(), StoreError>;
    /// Adds a new address unless the user has `max` already (`None`, nothing written), counted
    /// in the same transaction; the user's first address is the default whatever it asks.
    /// Returns the address as stored.
    async fn add_address(
        &self,
        address: &AddressRecord,
        max: usize,
    ) -> Result<Option<AddressRecord>, StoreError>;
    /// Deletes one of the user's addresses; if it was the default, the oldest remaining one
    /// becomes the default. `false` when the user has no such address.
    async fn delete_address(&self, user: UserId, id: AddressId) -> Result<bool, StoreError>;
}

#[async_trait]
pub trait CartStore: Send + Sync + std::fmt::Debug + 'static {
    /// The cart with each product as it is now, in the order items were added.
    async fn cart(&self, user: UserId) -> Result<Vec<CartLine>, StoreError>;
    /// Sets a line's quantity (adds the line if needed).
    async fn set_cart_line(
        &self,
        user: UserId,
        product: ProductId,
        quantity: u32,
        now: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// `false` when the product was not in the cart.
    async fn remove_cart_line(&self, user: UserId, product: ProductId) -> Result<bool, StoreError>;
    async fn clear_cart(&self, user: UserId) -> Result<(), StoreError>;
}

#[async_trait]
pub trait CouponStore: Send + Sync + std::fmt::Debug + 'static {
    /// `Conflict` when the code is taken.
    async fn insert_coupon(&self, coupon: &Coupon, audit: &AuditEntry) -> Result<(), StoreError>;
    async fn coupons(&self, page: PageRequest) -> Result<Page<Coupon>, StoreError>;
}

#[async_trait]
pub trait OrderStore: Send + Sync + std::fmt::Debug + 'static {
    /// Places an order from the user's cart in one transaction: every line takes its stock with
    /// a conditional update (all or nothing), the coupon's use is counted, the order is written
    /// with a snapshot of names, prices and address, and the cart is emptied.
    async fn checkout(&self, request: &CheckoutRequest) -> Result<CheckoutOutcome, StoreError>;
    async fn order(&self, id: OrderId) -> Result<Option<OrderRecord>, StoreError>;
    /// The user's orders, newest first.
    async fn orders_of(
        &self,
        user: UserId,
        status: Option<OrderStatus>,
        page: PageRequest,
    ) -> Result<Page<OrderRecord>, StoreError>;
    /// Every order (optionally in one status), newest first.
    async fn all_orders(
        &self,
        status: Option<OrderStatus>,
        page: PageRequest,
    ) -> Result<Page<OrderRecord>, StoreError>;
    /// Cancels an order awaiting payment and returns its stock: to the catalog for a cart order;
    /// for a flash-sale order its reservation is cancelled and what it held is returned, for the
    /// caller to give back to the ledger.
    async fn cancel_order(
        &self,
        id: OrderId,
        now: OffsetDateTime,
    ) -> Result<(CancelOutcome, Option<Released>), StoreError>;
    /// Expires up to `limit` cart orders whose payment window passed, returning their stock to
    /// the catalog (flash-sale orders expire with their reservation). Returns them.
    async fn expire_orders(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<OrderId>, StoreError>;
}
