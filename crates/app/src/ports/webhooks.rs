//! Webhook endpoints, the outbox of events and their deliveries.
//!
//! Events are not written through this port: each store method whose change is an event writes
//! it (and one delivery per active endpoint subscribed to its type) in its own transaction.

use async_trait::async_trait;
use flashmart_domain::{EventId, WebhookId};
use time::OffsetDateTime;

use crate::audit::AuditEntry;
use crate::error::StoreError;
use crate::page::{Page, PageRequest};
use crate::webhooks::{AttemptRecord, Delivery, DueDelivery, Endpoint, WebhookEvent};

#[async_trait]
pub trait WebhookStore: Send + Sync + std::fmt::Debug + 'static {
    /// Stores the endpoint with `audit` unless `max` endpoints exist already (`false`).
    async fn insert_endpoint(
        &self,
        endpoint: &Endpoint,
        max: u64,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError>;
    async fn endpoint(&self, id: WebhookId) -> Result<Option<Endpoint>, StoreError>;
    /// Every endpoint, newest first.
    async fn endpoints(&self, page: PageRequest) -> Result<Page<Endpoint>, StoreError>;
    /// Replaces the endpoint's fields if it is still as `read` (its `updated_at`); `false` when
    /// it changed or is gone.
    async fn update_endpoint(
        &self,
        endpoint: &Endpoint,
        read: &Endpoint,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError>;
    /// Removes the endpoint and its deliveries; `false` when there was none.
    async fn delete_endpoint(&self, id: WebhookId, audit: &AuditEntry) -> Result<bool, StoreError>;
    /// The endpoint's deliveries, newest event first.
    async fn deliveries(
        &self,
        endpoint: WebhookId,
        page: PageRequest,
    ) -> Result<Page<Delivery>, StoreError>;
    /// Makes the delivery pending again, due at `now`, with no attempts counted; `None` when the
    /// endpoint has no delivery of that event.
    async fn redeliver(
        &self,
        endpoint: WebhookId,
        event: EventId,
        now: OffsetDateTime,
        audit: &AuditEntry,
    ) -> Result<Option<Delivery>, StoreError>;
    /// Claims up to `limit` pending deliveries due at `now` to active endpoints, oldest first:
    /// each is due again only at `until`, so that no other worker takes it meanwhile.
    async fn claim_due(
        &self,
        now: OffsetDateTime,
        until: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<DueDelivery>, StoreError>;
    /// Records an attempt's outcome on its delivery.
    async fn record_attempt(&self, attempt: &AttemptRecord) -> Result<(), StoreError>;
    /// Writes `event` (to the endpoints subscribed to it) unless an event was written under
    /// `key` before: for what happens once but is noticed by a periodic pass (a sale's start,
    /// sell-out and end), however many instances notice it. `false` when it was there.
    async fn emit_once(&self, key: &str, event: &WebhookEvent) -> Result<bool, StoreError>;
}
