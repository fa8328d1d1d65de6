//! Outbound webhooks: admins register endpoints for event types; every event is written to an
//! outbox in the transaction of the change it reports (the adapters do that, see
//! [`crate::ports::WebhookStore`]), one delivery per endpoint subscribed at that moment, and the
//! worker role delivers them: signed, with a timeout, retried on a bounded schedule, then dead.
//! At least once: a receiver deduplicates on the event's `id`.

mod model;
mod target;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use flashmart_domain::flash_sale::SalePhase;
use flashmart_domain::{EventId, WebhookId};
use rand::RngCore as _;

use crate::audit::{Actor, AuditEntry};
use crate::clock::Clock;
use crate::error::{FieldError, StoreError};
use crate::flash_sale::FlashSales;
use crate::flash_sale::model::SaleRecord;
use crate::page::{Page, PageRequest};
use crate::ports::WebhookStore;
use crate::signature::{hex, sign};
pub use model::*;
pub use target::{Target, TargetError, check_address};

/// The header every delivery carries: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub const SIGNATURE_HEADER: &str = "flashmart-signature";

/// Waits before each retry: the first within 10 s, then growing to hours; after the last retry
/// fails the delivery is dead (11 attempts over about 31 hours).
pub const RETRY_DELAYS: [Duration; 10] = [
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(2 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(60 * 60),
    Duration::from_secs(2 * 60 * 60),
    Duration::from_secs(4 * 60 * 60),
    Duration::from_secs(8 * 60 * 60),
    Duration::from_secs(16 * 60 * 60),
];

/// At most this many endpoints, so that fanning an event out stays a small write.
pub const MAX_ENDPOINTS: u64 = 50;

/// The longest endpoint URL taken, in characters.
pub const MAX_URL: usize = 2048;

/// Settings that may change while the server runs (SIGHUP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookSettings {
    /// Deliver to private, loopback and link-local addresses too (`webhooks.allow_private`).
    pub allow_private: bool,
    /// How long one attempt may take, connecting included (`webhooks.timeout_secs`).
    pub timeout: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            allow_private: false,
            timeout: Duration::from_secs(10),
        }
    }
}

/// How an attempt reaches an endpoint: an HTTP POST that follows no redirect and connects only
/// to addresses `target` allows (checked after name resolution, so a name cannot lead to a
/// refused address).
#[async_trait]
pub trait WebhookSender: Send + Sync + std::fmt::Debug + 'static {
    /// POSTs `body` (JSON) with the signature header; the HTTP status, or why there was none.
    async fn post(
        &self,
        target: &Target,
        signature: &str,
        body: &[u8],
        settings: WebhookSettings,
    ) -> Result<u16, String>;
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    #[error("no such webhook endpoint")]
    NotFound,
    #[error("no such delivery")]
    DeliveryNotFound,
    #[error("at most {MAX_ENDPOINTS} webhook endpoints")]
    TooMany,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an admin sends to register an endpoint.
#[derive(Debug, Clone, Default)]
pub struct EndpointDraft {
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
}

/// A change to an endpoint; what is `None` stays.
#[derive(Debug, Clone, Default)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    /// `false` pauses the endpoint: it gets no new events, and what it has waits.
    pub active: Option<bool>,
}

#[derive(Debug)]
pub struct Webhooks {
    store: Arc<dyn WebhookStore>,
    sender: Arc<dyn WebhookSender>,
    clock: Arc<dyn Clock>,
    settings: ArcSwap<WebhookSettings>,
    /// Keys of sale events this process knows are written, so that each pass does not ask
    /// the store again.
    reported: parking_lot::Mutex<HashSet<String>>,
}

impl Webhooks {
    pub fn new(
        store: Arc<dyn WebhookStore>,
        sender: Arc<dyn WebhookSender>,
        clock: Arc<dyn Clock>,
        settings: WebhookSettings,
    ) -> Self {
        Self {
            store,
            sender,
            clock,
            settings: ArcSwap::from_pointee(settings),
            reported: parking_lot::Mutex::default(),
        }
    }

    pub fn settings(&self) -> WebhookSettings {
        **self.settings.load()
    }

    /// New settings (SIGHUP): the next attempt uses them.
    pub fn set_settings(&self, settings: WebhookSettings) {
        self.settings.store(Arc::new(settings));
    }

    /// Checks the fields; `url` only when given (an unchanged URL is not judged again by
    /// today's `webhooks.allow_private`, so an endpoint can always be paused or renamed).
    fn check(
        &self,
        url: Option<&str>,
        events: &[String],
        description: &str,
        errors: &mut Vec<FieldError>,
    ) -> Vec<EventType> {
        if let Some(url) = url {
            if url.chars().count() > MAX_URL {
                errors.push(FieldError::new(
                    "url",
                    format!("at most {MAX_URL} characters"),
                ));
            } else if let Err(e) = Target::parse(url, self.settings().allow_private) {
                errors.push(FieldError::new("url", e.to_string()));
            }
        }
        let mut types = Vec::new();
        if events.is_empty() {
            errors.push(FieldError::new("events", "name at least one event type"));
        }
        for (i, name) in events.iter().enumerate() {
            match name.parse::<EventType>() {
                Ok(t) if !types.contains(&t) => types.push(t),
                Ok(_) => {}
                Err(e) => errors.push(FieldError::new(format!("events[{i}]"), e)),
            }
        }
        if description.chars().count() > 500 {
            errors.push(FieldError::new("description", "at most 500 characters"));
        }
        types
    }

    /// Registers an endpoint; the answer is the only time its secret is shown.
    pub async fn create(&self, by: Actor, draft: EndpointDraft) -> Result<Endpoint, WebhookError> {
        let mut errors = Vec::new();
        let description = draft.description.unwrap_or_default().trim().to_owned();
        let events = self.check(Some(&draft.url), &draft.events, &description, &mut errors);
        if !errors.is_empty() {
            return Err(WebhookError::Invalid(errors));
        }
        let now = self.clock.now();
        let endpoint = Endpoint {
            id: WebhookId::new(),
            url: draft.url.trim().to_owned(),
            events,
            description,
            secret: new_secret(),
            active: true,
            created_at: now,
            updated_at: now,
        };
        let audit = AuditEntry::new(
            by,
            now,
            "webhook.created",
            endpoint.id,
            None,
            Some(endpoint.audit_fields()),
        );
        if self
            .store
            .insert_endpoint(&endpoint, MAX_ENDPOINTS, &audit)
            .await?
        {
            Ok(endpoint)
        } else {
            Err(WebhookError::TooMany)
        }
    }

    pub async fn endpoint(&self, id: WebhookId) -> Result<Endpoint, WebhookError> {
        self.store.endpoint(id).await?.ok_or(WebhookError::NotFound)
    }

    pub async fn endpoints(&self, page: PageRequest) -> Result<Page<Endpoint>, WebhookError> {
        Ok(self.store.endpoints(page).await?)
    }

    /// Applies `patch` to the endpoint as it is now (retried if another change came between).
    pub async fn update(
        &self,
        by: Actor,
        id: WebhookId,
        patch: EndpointPatch,
    ) -> Result<Endpoint, WebhookError> {
        for _ in 0..5 {
            let current = self.endpoint(id).await?;
            let mut next = current.clone();
            let url = patch
                .url
                .as_deref()
                .unwrap_or(&current.url)
                .trim()
                .to_owned();
            let names: Vec<String> = match &patch.events {
                Some(events) => events.clone(),
                None => current
                    .events
                    .iter()
                    .map(|e| e.as_str().to_owned())
                    .collect(),
            };
            let description = patch
                .description
                .as_deref()
                .unwrap_or(&current.description)
                .trim()
                .to_owned();
            let mut errors = Vec::new();
            let changed = (url != current.url).then_some(url.as_str());
            next.events = self.check(changed, &names, &description, &mut errors);
            if !errors.is_empty() {
                return Err(WebhookError::Invalid(errors));
            }
            next.url = url;
            next.description = description;
            next.active = patch.active.unwrap_or(current.active);
            next.updated_at = self.clock.now();
            let verb = match (current.active, next.active) {
                (true, false) => "webhook.paused",
                (false, true) => "webhook.resumed",
                _ => "webhook.updated",
            };
            let audit = AuditEntry::new(
                by,
                next.updated_at,
                verb,
                id,
                Some(current.audit_fields()),
                Some(next.audit_fields()),
            );
            if self.store.update_endpoint(&next, &current, &audit).await? {
                return Ok(next);
            }
        }
        Err(WebhookError::Store(StoreError::Unavailable(
            "the endpoint kept changing under this request; try again".into(),
        )))
    }

    /// Removes the endpoint and its deliveries, sent or not.
    pub async fn delete(&self, by: Actor, id: WebhookId) -> Result<(), WebhookError> {
        let current = self.endpoint(id).await?;
        let audit = AuditEntry::new(
            by,
            self.clock.now(),
            "webhook.deleted",
            id,
            Some(current.audit_fields()),
            None,
        );
        if self.store.delete_endpoint(id, &audit).await? {
            Ok(())
        } else {
            Err(WebhookError::NotFound)
        }
    }

    /// The endpoint's deliveries, newest event first.
    pub async fn deliveries(
        &self,
        id: WebhookId,
        page: PageRequest,
    ) -> Result<Page<Delivery>, WebhookError> {
        self.endpoint(id).await?;
        Ok(self.store.deliveries(id, page).await?)
    }

    /// Sends the delivery of `event` to the endpoint again, now, with a fresh retry schedule
    /// (delivered, dead or waiting alike).
    pub async fn redeliver(
        &self,
        by: Actor,
        id: WebhookId,
        event: EventId,
    ) -> Result<Delivery, WebhookError> {
        let now = self.clock.now();
        let audit = AuditEntry::new(
            by,
            now,
            "webhook.redelivery_requested",
            id,
            None,
            Some(serde_json::json!({ "event_id": event })),
        );
        self.store
            .redeliver(id, event, now, &audit)
            .await?
            .ok_or(WebhookError::DeliveryNotFound)
    }

    /// One pass of the delivery worker: claims up to `limit` deliveries that are due and
    /// attempts each (concurrently). Returns how many were attempted.
    pub async fn deliver_due(&self, limit: u32) -> Result<usize, StoreError> {
        let settings = self.settings();
        let now = self.clock.now();
        // Claimed for longer than an attempt can take, so that another worker leaves them be
        // and a worker that dies mid-attempt only delays them.
        let claim = time::Duration::try_from(settings.timeout * 2 + Duration::from_secs(30))
            .unwrap_or(time::Duration::MINUTE);
        let due = self.store.claim_due(now, now + claim, limit).await?;
        let attempted = due.len();
        let attempts = due.into_iter().map(|d| {
            // A span of its own: with tracing on, the attempt is traced and its `traceparent`
            // goes out with the request.
            let span = tracing::info_span!(
                "webhook.deliver",
                endpoint = %d.endpoint_id,
                event = %d.event_id,
                attempt = d.attempts + 1
            );
            tracing::Instrument::instrument(self.attempt(d, settings), span)
        });
        for result in futures_util::future::join_all(attempts).await {
            result?;
        }
        Ok(attempted)
    }

    async fn attempt(&self, due: DueDelivery, settings: WebhookSettings) -> Result<(), StoreError> {
        let started = self.clock.now();
        let result = match Target::parse(&due.url, settings.allow_private) {
            Ok(target) => {
                let signed = sign(
                    due.secret.as_bytes(),
                    started.unix_timestamp(),
                    due.body.as_bytes(),
                );
                self.sender
                    .post(&target, &signed, due.body.as_bytes(), settings)
                    .await
            }
            Err(e) => Err(e.to_string()),
        };
        let now = self.clock.now();
        let attempts = due.attempts + 1;
        let (status, error) = match &result {
            Ok(code) if (200..300).contains(code) => (Some(*code), None),
            Ok(code) => (Some(*code), Some(format!("answered {code}"))),
            Err(e) => (None, Some(e.clone())),
        };
        let outcome = if error.is_none() {
            AttemptOutcome::Delivered
        } else {
            match RETRY_DELAYS.get(usize::try_from(due.attempts).unwrap_or(usize::MAX)) {
                Some(wait) => AttemptOutcome::RetryAt(
                    now + time::Duration::try_from(*wait).unwrap_or(time::Duration::HOUR),
                ),
                None => AttemptOutcome::Dead,
            }
        };
        let label = match outcome {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::RetryAt(_) => "retry",
            AttemptOutcome::Dead => "dead",
        };
        metrics::counter!("webhook_attempts_total", "outcome" => label).increment(1);
        if let Some(error) = &error {
            tracing::warn!(
                endpoint = %due.endpoint_id,
                event = %due.event_id,
                attempts,
                error = %error,
                outcome = label,
                "webhook delivery failed"
            );
        }
        let record = AttemptRecord {
            endpoint_id: due.endpoint_id,
            event_id: due.event_id,
            attempts,
            at: now,
            status,
            error,
            outcome,
        };
        self.store.record_attempt(&record).await
    }
}

impl Webhooks {
    /// One pass of the scheduler: reports each sale's start, sell-out and end, once each
    /// however many passes and instances see it (`WebhookStore::emit_once`). Live sales are
    /// read from the records; ended ones are those this instance still holds in memory, so a
    /// sale's end is reported by the scheduler that saw it live. Returns the events written.
    pub async fn report_sales(&self, sales: &FlashSales) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let unavailable = |e: crate::flash_sale::SaleError| StoreError::Unavailable(e.to_string());
        let live = sales
            .list_sales(
                Some(SalePhase::Live),
                PageRequest::new(Some(1), Some(PageRequest::MAX_PER_PAGE)),
            )
            .await
            .map_err(unavailable)?;
        let mut seen: Vec<(SaleRecord, u64)> = Vec::with_capacity(live.items.len());
        for view in live.items {
            let view = sales.refreshed(view).await.map_err(unavailable)?;
            seen.push((view.record, view.remaining));
        }
        for (record, remaining) in sales.in_memory() {
            if !seen.iter().any(|(r, _)| r.id == record.id) {
                seen.push((record, remaining));
            }
        }
        let mut written = 0;
        for (record, remaining) in seen {
            let window = record.rules.window();
            if now < window.starts_at() {
                continue;
            }
            let mut due = vec![EventType::FlashSaleStarted];
            if remaining == 0 {
                due.push(EventType::FlashSaleSoldOut);
            }
            if now >= window.ends_at() {
                due.push(EventType::FlashSaleEnded);
            }
            for kind in due {
                let key = format!("{}:{}", kind.as_str(), record.id);
                if self.reported.lock().contains(&key) {
                    continue;
                }
                let data = serde_json::json!({
                    "sale_id": record.id,
                    "name": record.name,
                    "starts_at": crate::audit::time_field(window.starts_at()),
                    "ends_at": crate::audit::time_field(window.ends_at()),
                    "remaining": remaining,
                });
                if self
                    .store
                    .emit_once(&key, &WebhookEvent::new(kind, now, data))
                    .await?
                {
                    written += 1;
                }
                let mut reported = self.reported.lock();
                if reported.len() >= 100_000 {
                    reported.clear();
                }
                reported.insert(key);
            }
        }
        Ok(written)
    }
}

/// A new endpoint secret: 32 random bytes, hex, with a prefix that says what it is.
fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("whsec_{}", hex(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_retry_comes_within_ten_seconds_and_the_schedule_ends() {
        assert!(RETRY_DELAYS[0] <= Duration::from_secs(10));
        assert!(RETRY_DELAYS.windows(2).all(|w| w[0] < w[1]));
        let total: Duration = RETRY_DELAYS.iter().sum();
        assert!(total < Duration::from_secs(2 * 24 * 60 * 60));
    }

    #[test]
    fn secrets_are_fresh() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert!(a.starts_with("whsec_") && a.len() == 6 + 64);
    }
}
