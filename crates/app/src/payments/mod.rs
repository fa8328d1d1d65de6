//! Payments behind a provider port: start a payment for an order, take the provider's signed
//! notifications (verified, idempotent, amount and currency checked), close what an order no
//! longer needs, refund in full or in part (`refunds`). Paying a flash-sale order marks its
//! reservation purchased.

mod disabled;
pub mod refunds;

use std::sync::Arc;

use async_trait::async_trait;
use flashmart_domain::{Money, OrderId, OrderStatus, PaymentId, UserId};
use time::OffsetDateTime;

use crate::clock::Clock;
use crate::error::StoreError;
use crate::page::{Page, PageRequest};
use crate::ports::{OrderStore, PaymentStore};
use crate::shop::model::OrderRecord;
pub use disabled::NoProvider;
pub use refunds::{RefundKind, RefundRecord, RefundSettlement, RefundStart, RefundStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    /// Created; the buyer has not paid yet.
    Pending,
    Succeeded,
    Failed,
    /// No longer payable (its order was cancelled or expired, or another payment replaced it).
    Closed,
}

impl PaymentStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Closed => "closed",
        }
    }
}

impl std::str::FromStr for PaymentStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "pending" => Self::Pending,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "closed" => Self::Closed,
            other => return Err(format!("unknown payment status {other:?}")),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRecord {
    pub id: PaymentId,
    pub order_id: OrderId,
    pub provider: String,
    pub provider_ref: String,
    pub status: PaymentStatus,
    pub amount: Money,
    pub refunded: Money,
    pub pay_url: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

// ---- the provider port ------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct CreatePayment {
    pub merchant_ref: PaymentId,
    pub amount: Money,
    pub description: String,
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderPayment {
    pub provider_ref: String,
    /// Where the buyer pays.
    pub pay_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationKind {
    Succeeded,
    Failed,
}

/// A verified notification from the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Unique per event: a repeat is recognised by it.
    pub event_id: String,
    pub provider_ref: String,
    pub kind: NotificationKind,
    pub amount: Money,
    pub occurred_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    #[error("signature missing or invalid")]
    BadSignature,
    #[error("timestamp outside the tolerance")]
    Stale,
    #[error("malformed notification: {0}")]
    Malformed(String),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    #[error("the provider refused: {0}")]
    Refused(String),
    #[error("the provider is unavailable: {0}")]
    Unavailable(String),
}

/// A notification the provider gave up delivering to this shop after its whole retry schedule:
/// a payment whose outcome the shop may not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub event_id: String,
    pub payment_ref: String,
    pub body: String,
    pub attempts: u32,
    /// The shop's last HTTP status, if it answered at all.
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: OffsetDateTime,
    pub dead_at: OffsetDateTime,
}

/// What a provider knows of a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderState {
    Open,
    Paid { refunded_cents: i64 },
    Failed,
    Closed,
}

/// A payment service. Called through `Arc<dyn …>`: each call is (or stands for) a request to a
/// remote service.
#[async_trait]
pub trait PaymentProvider: Send + Sync + std::fmt::Debug + 'static {
    fn name(&self) -> &'static str;
    /// The HTTP header its notifications carry their signature in.
    fn signature_header(&self) -> &'static str;
    async fn create(&self, request: &CreatePayment) -> Result<ProviderPayment, ProviderError>;
    async fn query(&self, provider_ref: &str) -> Result<ProviderState, ProviderError>;
    /// Makes an open payment unpayable; a payment already paid cannot be closed.
    async fn close(&self, provider_ref: &str) -> Result<(), ProviderError>;
    async fn refund(
        &self,
        provider_ref: &str,
        amount: Money,
        refund_id: &str,
    ) -> Result<(), ProviderError>;
    /// Checks a notification's signature (constant time) and age, and parses it.
    fn verify(
        &self,
        signature: &str,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Result<Notification, NotifyError>;
    /// Notifications the provider gave up delivering, newest first, and how many there are. A
    /// provider that keeps no such list has none.
    async fn dead_letters(
        &self,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<DeadLetter>, u64), ProviderError> {
        let _ = (limit, offset);
        Ok((Vec::new(), 0))
    }
}

// ---- what storage decides --------------------------------------------------------------------

/// What applying a verified notification did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Seen before (same event id): nothing changed.
    Duplicate,
    /// The payment succeeded and its order is paid.
    Paid(Box<OrderRecord>),
    /// The payment failed; the order still awaits payment.
    Failed,
    /// The payment succeeded but its order had been cancelled or expired meanwhile: the money
    /// must go back, and the refund owed was recorded with the payment.
    PaidTooLate {
        payment: Box<PaymentRecord>,
        refund: Box<RefundRecord>,
    },
    /// The payment was already settled; an event for it changes nothing.
    AlreadySettled,
}

// ---- the use cases ---------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error("order not found")]
    OrderNotFound,
    #[error("payment not found")]
    PaymentNotFound,
    #[error("only an order awaiting payment can be paid (this one is {0})")]
    NotPayable(OrderStatus),
    #[error("{0}")]
    Notify(NotifyError),
    #[error("the notification's amount or currency differs from the payment's")]
    AmountMismatch,
    #[error("refund refused: {0}")]
    Refund(#[from] flashmart_domain::order::RefundError),
    #[error("the refund could not be recorded: the order changed meanwhile; try again")]
    RefundRace,
    #[error("another refund of this order is waiting for the payment provider; try again later")]
    RefundInProgress,
    #[error(
        "the refund is recorded but the payment provider did not confirm it; it will be asked \
         again until it does"
    )]
    RefundPending,
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug)]
pub struct Payments {
    store: Arc<dyn PaymentStore>,
    orders: Arc<dyn OrderStore>,
    provider: Arc<dyn PaymentProvider>,
    clock: Arc<dyn Clock>,
    /// Payment starts and refunds of one order take turns (striped by order id).
    turns: Box<[tokio::sync::Mutex<()>]>,
    /// For a flash-sale order answered before it was stored (`flash_sale::Ack::Engine`).
    flash_sales: Option<Arc<crate::flash_sale::FlashSales>>,
}

impl Payments {
    pub fn new(
        store: Arc<dyn PaymentStore>,
        orders: Arc<dyn OrderStore>,
        provider: Arc<dyn PaymentProvider>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            orders,
            provider,
            clock,
            turns: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
            flash_sales: None,
        }
    }

    /// Orders not found are looked for again once `flash_sales` has stored what it answered.
    #[must_use]
    pub fn with_flash_sales(mut self, flash_sales: Arc<crate::flash_sale::FlashSales>) -> Self {
        self.flash_sales = Some(flash_sales);
        self
    }

    /// A page of the provider's dead letters (for admins).
    pub async fn dead_letters(&self, page: PageRequest) -> Result<Page<DeadLetter>, ProviderError> {
        let (items, total) = self
            .provider
            .dead_letters(page.per_page(), page.offset())
            .await?;
        Ok(Page::new(page, items, total))
    }

    async fn own_order(&self, user: UserId, order: OrderId) -> Result<OrderRecord, PaymentError> {
        let found = match &self.flash_sales {
            Some(sales) => sales.read_through(|| self.orders.order(order)).await?,
            None => self.orders.order(order).await?,
        };
        match found {
            Some(o) if o.user_id == user => Ok(o),
            _ => Err(PaymentError::OrderNotFound),
        }
    }

    /// Starts paying an order: the open payment if there is one, a new one otherwise. Starts
    /// for one order take turns, so parallel requests share one payment.
    #[tracing::instrument(level = "debug", name = "payments.start", skip_all, fields(%order))]
    pub async fn start(&self, user: UserId, order: OrderId) -> Result<PaymentRecord, PaymentError> {
        let _turn = self.turn(order).lock().await;
        let order = self.own_order(user, order).await?;
        let now = self.clock.now();
        if order.status != OrderStatus::PendingPayment || order.expires_at <= now {
            return Err(PaymentError::NotPayable(if order.expires_at <= now {
                OrderStatus::Expired
            } else {
                order.status
            }));
        }
        if let Some(open) = self.store.open_payment_for_order(order.id).await? {
            return Ok(open);
        }
        let id = PaymentId::new();
        let created = self
            .provider
            .create(&CreatePayment {
                merchant_ref: id,
                amount: order.total,
                description: format!("flashmart order {}", order.id),
                expires_at: order.expires_at,
            })
            .await?;
        let record = PaymentRecord {
            id,
            order_id: order.id,
            provider: self.provider.name().to_owned(),
            provider_ref: created.provider_ref,
            status: PaymentStatus::Pending,
            amount: order.total,
            refunded: Money::zero(order.total.currency()),
            pay_url: created.pay_url,
            created_at: now,
            updated_at: now,
            expires_at: order.expires_at,
        };
        match self.store.insert_payment(&record).await? {
            None => Ok(record),
            // Another process started one first: ours is withdrawn at the provider.
            Some(existing) => {
                if let Err(err) = self.provider.close(&record.provider_ref).await {
                    tracing::warn!(%err, provider_ref = %record.provider_ref, "cannot withdraw a payment that lost a race");
                }
                Ok(existing)
            }
        }
    }

    /// The lock that one order's payment starts and refunds take turns on.
    fn turn(&self, order: OrderId) -> &tokio::sync::Mutex<()> {
        let shard = order.as_uuid().as_u128() % self.turns.len() as u128;
        &self.turns[usize::try_from(shard).unwrap_or(0)]
    }

    pub fn signature_header(&self) -> &'static str {
        self.provider.signature_header()
    }

    /// A payment, to the owner of its order only.
    pub async fn payment_of(
        &self,
        user: UserId,
        id: PaymentId,
    ) -> Result<PaymentRecord, PaymentError> {
        let payment = self
            .store
            .payment(id)
            .await?
            .ok_or(PaymentError::PaymentNotFound)?;
        match self.orders.order(payment.order_id).await? {
            Some(o) if o.user_id == user => Ok(payment),
            _ => Err(PaymentError::PaymentNotFound),
        }
    }

    /// The provider's notification: verified, matched to its payment (amount and currency
    /// included), applied once. Anything that does not check out changes nothing.
    pub async fn notify(&self, signature: &str, body: &[u8]) -> Result<Applied, PaymentError> {
        let now = self.clock.now();
        let refused = |reason: &'static str| {
            // Forged or replayed notifications show here before anywhere else.
            metrics::counter!("payments_notifications_refused_total", "reason" => reason)
                .increment(1);
        };
        let notification = self.provider.verify(signature, body, now).map_err(|e| {
            refused(match &e {
                NotifyError::BadSignature => "signature",
                NotifyError::Stale => "stale",
                NotifyError::Malformed(_) => "malformed",
            });
            tracing::warn!(%e, "payment notification refused");
            PaymentError::Notify(e)
        })?;
        let Some(payment) = self
            .store
            .payment_by_ref(self.provider.name(), &notification.provider_ref)
            .await?
        else {
            refused("unknown_payment");
            return Err(PaymentError::PaymentNotFound);
        };
        if notification.amount != payment.amount {
            refused("amount");
            tracing::warn!(payment = %payment.id, "notification amount or currency mismatch");
            return Err(PaymentError::AmountMismatch);
        }
        let owed = RefundRecord::pending(
            &payment,
            RefundKind::LatePayment,
            payment.amount,
            "paid after the order ended",
            now,
        );
        let applied = self
            .store
            .apply_notification(self.provider.name(), &notification, &payment, &owed, now)
            .await?;
        if let Applied::PaidTooLate { payment, refund } = &applied {
            // The buyer paid an order that is gone. The refund owed is already recorded, so
            // whatever happens now, the refund worker sees it through.
            tracing::warn!(payment = %payment.id, order = %payment.order_id, "paid after the order ended; refunding");
            if let Err(err) = self.ask_provider(refund, payment, None).await {
                tracing::warn!(refund = %refund.id, %err, "the refund owed is left to the refund worker");
            }
        }
        metrics::counter!("payments_notifications_total", "applied" => applied_label(&applied))
            .increment(1);
        Ok(applied)
    }

    /// Closes, at the provider and here, every open payment whose order no longer awaits payment
    /// (cancelled, expired), a page at a time, so the ones the provider will not close yet never
    /// hold up the others. Returns how many were closed. A worker's job, never a request's.
    pub async fn close_stale(&self) -> Result<usize, PaymentError> {
        self.close_stale_in_pages(100).await
    }

    /// `close_stale`, reading `page` payments at a time.
    pub async fn close_stale_in_pages(&self, page: u32) -> Result<usize, PaymentError> {
        let mut closed = 0;
        let mut after = None;
        loop {
            let stale = self
                .store
                .open_payments_of_ended_orders(after, page)
                .await?;
            let full = stale.len() == page as usize;
            after = stale.last().map(|p| p.id);
            for payment in stale {
                closed += usize::from(self.close(&payment).await?);
            }
            if !full {
                return Ok(closed);
            }
        }
    }

    /// Closes the open payment of one order that no longer awaits payment (after a cancel), at
    /// the provider and here; the closer worker retries whatever this could not do.
    pub async fn close_open_of(&self, order: OrderId) -> Result<bool, PaymentError> {
        match self.store.open_payment_for_order(order).await? {
            Some(payment) => self.close(&payment).await,
            None => Ok(false),
        }
    }

    async fn close(&self, payment: &PaymentRecord) -> Result<bool, PaymentError> {
        match self.provider.close(&payment.provider_ref).await {
            Ok(()) => {
                self.store
                    .close_payment(payment.id, self.clock.now())
                    .await?;
                Ok(true)
            }
            // Paid at the provider meanwhile: its notification will settle it (and refund).
            Err(ProviderError::Refused(reason)) => {
                tracing::info!(payment = %payment.id, %reason, "provider would not close the payment");
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn applied_label(a: &Applied) -> &'static str {
    match a {
        Applied::Duplicate => "duplicate",
        Applied::Paid(_) => "paid",
        Applied::Failed => "failed",
        Applied::PaidTooLate { .. } => "paid_too_late",
        Applied::AlreadySettled => "already_settled",
    }
}
