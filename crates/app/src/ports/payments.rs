//! Payments and refunds.

use async_trait::async_trait;
use flashmart_domain::{Money, OrderId, OrderStatus, PaymentId, RefundId};
use time::OffsetDateTime;

use crate::audit::AuditEntry;
use crate::error::StoreError;
use crate::page::{Page, PageRequest};
use crate::payments::{
    Applied, Notification, PaymentRecord, RefundRecord, RefundSettlement, RefundStart, RefundStatus,
};

#[async_trait]
pub trait PaymentStore: Send + Sync + std::fmt::Debug + 'static {
    /// Stores a new pending payment unless its order has one pending already, checked in the
    /// same transaction: then nothing is written and that payment is returned.
    async fn insert_payment(
        &self,
        payment: &PaymentRecord,
    ) -> Result<Option<PaymentRecord>, StoreError>;
    async fn payment(&self, id: PaymentId) -> Result<Option<PaymentRecord>, StoreError>;
    async fn payment_by_ref(
        &self,
        provider: &str,
        provider_ref: &str,
    ) -> Result<Option<PaymentRecord>, StoreError>;
    /// The order's newest pending payment, if any (the one `insert_payment` would return).
    async fn open_payment_for_order(
        &self,
        order: OrderId,
    ) -> Result<Option<PaymentRecord>, StoreError>;
    async fn payments_for_order(&self, order: OrderId) -> Result<Vec<PaymentRecord>, StoreError>;
    /// Applies a verified notification in one transaction: its event id is recorded (a repeat
    /// is a `Duplicate`); the pending payment becomes succeeded or failed; a success pays the
    /// order (and marks a flash-sale order's reservation purchased) if it still awaits payment,
    /// and otherwise records `late_refund`, the refund owed, in the same transaction.
    async fn apply_notification(
        &self,
        provider: &str,
        notification: &Notification,
        payment: &PaymentRecord,
        late_refund: &RefundRecord,
        now: OffsetDateTime,
    ) -> Result<Applied, StoreError>;
    /// Records a pending refund, unless another refund of its payment is pending
    /// (`InProgress`) or, for an order refund, the order is no longer at the (refunded total,
    /// status) read (`OrderChanged`). Nothing is written then. `audit`, the admin's request, is
    /// written with the refund.
    async fn begin_refund(
        &self,
        refund: &RefundRecord,
        order_as_read: Option<(Money, OrderStatus)>,
        audit: Option<&AuditEntry>,
    ) -> Result<RefundStart, StoreError>;
    /// Settles a pending refund by the provider's answer, in one transaction: a success adds
    /// its amount to the payment's (and, for an order refund, the order's) refunded total and
    /// moves the order to the status given. A refund no longer pending is left alone (`false`).
    async fn settle_refund(
        &self,
        refund: &RefundRecord,
        settlement: &RefundSettlement,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// The provider did not answer: count the attempt and wait until `next_attempt_at`.
    async fn retry_refund_later(
        &self,
        id: RefundId,
        attempts: u32,
        next_attempt_at: OffsetDateTime,
        error: &str,
    ) -> Result<(), StoreError>;
    async fn refund(&self, id: RefundId) -> Result<Option<RefundRecord>, StoreError>;
    /// Pending refunds due by `now`, the longest waiting first.
    async fn due_refunds(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<RefundRecord>, StoreError>;
    /// Refunds, newest first, optionally of one status.
    async fn refunds(
        &self,
        status: Option<RefundStatus>,
        page: PageRequest,
    ) -> Result<Page<RefundRecord>, StoreError>;
    /// Pending payments whose order no longer awaits payment, in id order, after `after` (keyset
    /// paging, so a sweep goes through all of them however many cannot be closed yet).
    async fn open_payments_of_ended_orders(
        &self,
        after: Option<PaymentId>,
        limit: u32,
    ) -> Result<Vec<PaymentRecord>, StoreError>;
    async fn close_payment(&self, id: PaymentId, now: OffsetDateTime) -> Result<(), StoreError>;
}
