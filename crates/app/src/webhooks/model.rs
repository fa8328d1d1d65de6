//! Endpoints, events and deliveries as the use cases and the stores see them.

use flashmart_domain::{EventId, WebhookId};
use time::OffsetDateTime;

use crate::audit::time_field;

/// What a webhook can report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    OrderCreated,
    OrderPaid,
    OrderCancelled,
    OrderExpired,
    OrderRefunded,
    FlashSaleStarted,
    FlashSaleSoldOut,
    FlashSaleEnded,
    ReservationExpired,
}

impl EventType {
    pub const ALL: [Self; 9] = [
        Self::OrderCreated,
        Self::OrderPaid,
        Self::OrderCancelled,
        Self::OrderExpired,
        Self::OrderRefunded,
        Self::FlashSaleStarted,
        Self::FlashSaleSoldOut,
        Self::FlashSaleEnded,
        Self::ReservationExpired,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::OrderCreated => "order.created",
            Self::OrderPaid => "order.paid",
            Self::OrderCancelled => "order.cancelled",
            Self::OrderExpired => "order.expired",
            Self::OrderRefunded => "order.refunded",
            Self::FlashSaleStarted => "flash_sale.started",
            Self::FlashSaleSoldOut => "flash_sale.sold_out",
            Self::FlashSaleEnded => "flash_sale.ended",
            Self::ReservationExpired => "reservation.expired",
        }
    }
}

impl std::str::FromStr for EventType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|t| t.as_str()).collect();
                format!("unknown event type {s:?}: one of {}", known.join(", "))
            })
    }
}

/// One event as it is written to the outbox: its body is fixed then, so that every attempt
/// (and a manual redelivery) sends the same bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookEvent {
    pub id: EventId,
    pub kind: EventType,
    pub created_at: OffsetDateTime,
    pub data: serde_json::Value,
}

impl WebhookEvent {
    pub fn new(kind: EventType, created_at: OffsetDateTime, data: serde_json::Value) -> Self {
        Self {
            id: EventId::new(),
            kind,
            created_at,
            data,
        }
    }

    /// The JSON receivers get: `{id, type, created_at, data}`.
    pub fn body(&self) -> String {
        serde_json::json!({
            "id": self.id,
            "type": self.kind.as_str(),
            "created_at": time_field(self.created_at),
            "data": self.data,
        })
        .to_string()
    }
}

/// An order as `order.*` events carry it: the order after the change.
#[derive(Debug, Clone)]
pub struct OrderFacts<'a> {
    pub order_id: uuid::Uuid,
    pub user_id: uuid::Uuid,
    pub status: &'a str,
    pub currency: std::borrow::Cow<'a, str>,
    pub total_cents: i64,
    pub refunded_cents: i64,
    pub reservation_id: Option<uuid::Uuid>,
}

impl OrderFacts<'_> {
    pub fn event(&self, kind: EventType, at: OffsetDateTime) -> WebhookEvent {
        let data = serde_json::json!({
            "order_id": self.order_id,
            "user_id": self.user_id,
            "status": self.status,
            "currency": self.currency,
            "total_cents": self.total_cents,
            "refunded_cents": self.refunded_cents,
            "reservation_id": self.reservation_id,
        });
        WebhookEvent::new(kind, at, data)
    }
}

impl<'a> From<&'a crate::shop::model::OrderRecord> for OrderFacts<'a> {
    fn from(o: &'a crate::shop::model::OrderRecord) -> Self {
        Self {
            order_id: *o.id.as_uuid(),
            user_id: *o.user_id.as_uuid(),
            status: o.status.as_str(),
            currency: o.total.currency().as_str().to_owned().into(),
            total_cents: o.total.cents(),
            refunded_cents: o.refunded.cents(),
            reservation_id: o.reservation_id.map(|r| *r.as_uuid()),
        }
    }
}

/// `reservation.expired` for a reservation an expiry sweep released.
pub fn reservation_expired(
    at: OffsetDateTime,
    released: &crate::flash_sale::model::Released,
    order: Option<uuid::Uuid>,
) -> WebhookEvent {
    let data = serde_json::json!({
        "reservation_id": released.reservation,
        "sale_id": released.sale_id,
        "item_id": released.item_no,
        "quantity": released.quantity,
        "buyer_id": released.buyer.0,
        "order_id": order,
    });
    WebhookEvent::new(EventType::ReservationExpired, at, data)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub id: WebhookId,
    pub url: String,
    pub events: Vec<EventType>,
    pub description: String,
    /// The signing key; the API shows it only in the answer that created the endpoint.
    pub secret: String,
    /// `false` while paused.
    pub active: bool,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

impl Endpoint {
    /// The event types by name, as the stores keep them.
    pub fn event_names(&self) -> Vec<&'static str> {
        self.events.iter().map(|e| e.as_str()).collect()
    }

    /// What the audit log keeps of an endpoint (never its secret).
    pub fn audit_fields(&self) -> serde_json::Value {
        serde_json::json!({
            "url": self.url,
            "events": self.event_names(),
            "description": self.description,
            "active": self.active,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Waiting for its first attempt or a retry.
    Pending,
    Delivered,
    /// Every attempt of the schedule failed; only a manual redelivery sends it again.
    Dead,
}

impl DeliveryStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
        }
    }
}

impl std::str::FromStr for DeliveryStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Self::Pending),
            "delivered" => Ok(Self::Delivered),
            "dead" => Ok(Self::Dead),
            other => Err(format!("unknown delivery status {other:?}")),
        }
    }
}

/// One event's delivery to one endpoint: the delivery log's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub endpoint_id: WebhookId,
    pub event_id: EventId,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    /// When it is due, while it is pending (an attempt's outcome clears it otherwise).
    pub next_attempt_at: Option<OffsetDateTime>,
    /// The endpoint's last HTTP status, if it answered.
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: OffsetDateTime,
    pub delivered_at: Option<OffsetDateTime>,
}

/// A delivery claimed for an attempt, with what the attempt needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueDelivery {
    pub endpoint_id: WebhookId,
    pub event_id: EventId,
    pub url: String,
    pub secret: String,
    pub body: String,
    /// Attempts made before this one.
    pub attempts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered,
    RetryAt(OffsetDateTime),
    Dead,
}

/// What one attempt came to, as the store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub endpoint_id: WebhookId,
    pub event_id: EventId,
    /// Attempts made, this one included.
    pub attempts: u32,
    pub at: OffsetDateTime,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub outcome: AttemptOutcome,
}
