//! Payments and refunds.

use async_trait::async_trait;
use flashmart_domain::{Money, OrderId, PaymentId};
use time::OffsetDateTime;

use crate::error::StoreError;
use crate::payments::{Applied, Notification, OrderRefund, PaymentRecord};

#[async_trait]
pub trait PaymentStore: Send + Sync + std::fmt::Debug + 'static {
    async fn insert_payment(&self, payment: &PaymentRecord) -> Result<(), StoreError>;
    async fn payment(&self, id: PaymentId) -> Result<Option<PaymentRecord>, StoreError>;
    async fn payment_by_ref(
        &self,
        provider: &str,
        provider_ref: &str,
    ) -> Result<Option<PaymentRecord>, StoreError>;
    /// The order's pending payment that has not expired, if any.
    async fn open_payment_for_order(
        &self,
        order: OrderId,
    ) -> Result<Option<PaymentRecord>, StoreError>;
    async fn payments_for_order(&self, order: OrderId) -> Result<Vec<PaymentRecord>, StoreError>;
    /// Applies a verified notification in one transaction: its event id is recorded (a repeat
    /// is a `Duplicate`); the pending payment becomes succeeded or failed; a success pays the
    /// order (and marks a flash-sale order's reservation purchased) if it still awaits payment.
    async fn apply_notification(
        &self,
        provider: &str,
        notification: &Notification,
        payment: &PaymentRecord,
        now: OffsetDateTime,
    ) -> Result<Applied, StoreError>;
    /// Records a refund of `amount` on the payment; with an order part, also moves the order
    /// to its new status, provided its refunded total is still what was read (`false` when it
    /// changed meanwhile, and nothing is written).
    async fn record_refund(
        &self,
        payment: PaymentId,
        amount: Money,
        order: Option<OrderRefund>,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Pending payments whose order no longer awaits payment.
    async fn open_payments_of_ended_orders(
        &self,
        limit: u32,
    ) -> Result<Vec<PaymentRecord>, StoreError>;
    async fn close_payment(&self, id: PaymentId, now: OffsetDateTime) -> Result<(), StoreError>;
}
