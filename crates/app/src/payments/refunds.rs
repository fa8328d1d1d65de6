//! Refunds that the shop and the provider always agree on. A refund is recorded, with its own id,
//! before the provider is asked; that id is the provider's idempotency key, so asking again never
//! refunds twice. Only a confirmed refund moves the order's and the payment's refunded totals, and
//! one refund at a time is open per payment. A refund the provider did not confirm (it was down,
//! its answer was lost, the process died) stays `pending` and the refund worker asks again, with
//! backoff, until the provider answers.

use flashmart_domain::{Money, OrderId, OrderStatus, PaymentId, RefundId};
use time::{Duration, OffsetDateTime};

use super::{PaymentError, PaymentRecord, PaymentStatus, Payments, ProviderError};
use crate::audit::{Actor, AuditEntry};
use crate::page::{Page, PageRequest};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundStatus {
    /// Recorded; the provider has not confirmed it yet.
    Pending,
    /// The provider refunded it.
    Succeeded,
    /// The provider refused it for good.
    Failed,
}

impl RefundStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

impl std::str::FromStr for RefundStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "pending" => Self::Pending,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            other => return Err(format!("unknown refund status {other:?}")),
        })
    }
}

/// Why money goes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundKind {
    /// An admin refunded (part of) a paid order: it moves the order's refunded total.
    Order,
    /// A payment succeeded after its order had ended: all of it is owed back, and the order
    /// (cancelled or expired) does not change.
    LatePayment,
}

impl RefundKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Order => "order",
            Self::LatePayment => "late_payment",
        }
    }
}

impl std::str::FromStr for RefundKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "order" => Self::Order,
            "late_payment" => Self::LatePayment,
            other => return Err(format!("unknown refund kind {other:?}")),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRecord {
    pub id: RefundId,
    pub payment_id: PaymentId,
    pub order_id: OrderId,
    pub kind: RefundKind,
    pub amount: Money,
    pub reason: String,
    pub status: RefundStatus,
    /// Times the provider was asked without an answer.
    pub attempts: u32,
    /// When the refund worker may ask the provider (again).
    pub next_attempt_at: OffsetDateTime,
    pub last_error: Option<String>,
    pub created_at: OffsetDateTime,
    pub completed_at: Option<OffsetDateTime>,
}

impl RefundRecord {
    /// A refund to ask the provider for; the worker leaves it to its requester for
    /// `REQUESTER_GRACE`.
    pub fn pending(
        payment: &PaymentRecord,
        kind: RefundKind,
        amount: Money,
        reason: &str,
        now: OffsetDateTime,
    ) -> Self {
        Self {
            id: RefundId::new(),
            payment_id: payment.id,
            order_id: payment.order_id,
            kind,
            amount,
            reason: reason.to_owned(),
            status: RefundStatus::Pending,
            attempts: 0,
            next_attempt_at: now + REQUESTER_GRACE,
            last_error: None,
            created_at: now,
            completed_at: None,
        }
    }
}

/// What recording a new refund found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundStart {
    Started,
    /// Another refund of this payment waits for the provider.
    InProgress,
    /// The order is no longer refundable as read (its status or refunded total moved).
    OrderChanged,
}

/// How a provider's answer settles a pending refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundSettlement {
    /// Refunded; an order refund moves its order to this status.
    Succeeded { order_status: Option<OrderStatus> },
    /// Refused for good.
    Failed { reason: String },
}

/// How long a refund's requester has before the worker may ask the provider in its place.
const REQUESTER_GRACE: Duration = Duration::seconds(30);
/// The longest wait between two attempts of the worker.
const MAX_BACKOFF: Duration = Duration::hours(1);

/// The wait before attempt `attempts + 1`: 10 s, doubling, at most an hour.
pub fn backoff(attempts: u32) -> Duration {
    let secs = 10_i64.saturating_mul(1_i64 << attempts.min(20));
    Duration::seconds(secs).min(MAX_BACKOFF)
}

impl Payments {
    /// Refunds `amount` (all that is left when `None`) of a paid order through the provider.
    /// Refunds of one order run one at a time, here and, through the store's guard, across
    /// processes (a second one elsewhere is refused with `RefundInProgress`).
    pub async fn refund(
        &self,
        by: Actor,
        order: OrderId,
        amount_cents: Option<i64>,
        reason: Option<&str>,
    ) -> Result<crate::shop::model::OrderRecord, PaymentError> {
        let _turn = self.turn(order).lock().await;
        let order = self
            .orders
            .order(order)
            .await?
            .ok_or(PaymentError::OrderNotFound)?;
        let payment = self
            .store
            .payments_for_order(order.id)
            .await?
            .into_iter()
            .find(|p| p.status == PaymentStatus::Succeeded)
            .ok_or(PaymentError::NotPayable(order.status))?;
        let left = order.total.cents() - order.refunded.cents();
        let amount = Money::new(amount_cents.unwrap_or(left), order.total.currency())
            .map_err(|_| flashmart_domain::order::RefundError::Zero)?;
        let next = order
            .status
            .after_refund(order.total, order.refunded, amount)?;
        let now = self.clock.now();
        let refund = RefundRecord::pending(
            &payment,
            RefundKind::Order,
            amount,
            reason.unwrap_or(""),
            now,
        );
        let audit = AuditEntry::new(
            by,
            now,
            "order.refund_requested",
            order.id,
            Some(serde_json::json!({
                "status": order.status.as_str(),
                "refunded_cents": order.refunded.cents(),
            })),
            Some(serde_json::json!({
                "refund_id": refund.id,
                "amount_cents": amount.cents(),
                "currency": amount.currency().as_str(),
                "reason": refund.reason,
            })),
        );
        match self
            .store
            .begin_refund(&refund, Some((order.refunded, order.status)), Some(&audit))
            .await?
        {
            RefundStart::Started => {}
            RefundStart::InProgress => return Err(PaymentError::RefundInProgress),
            RefundStart::OrderChanged => return Err(PaymentError::RefundRace),
        }
        self.ask_provider(&refund, &payment, Some(next)).await?;
        self.orders
            .order(order.id)
            .await?
            .ok_or(PaymentError::OrderNotFound)
    }

    /// Asks the provider for a recorded refund and settles it by the answer. No answer leaves
    /// it pending for the worker, after a backoff; the error is returned.
    pub(super) async fn ask_provider(
        &self,
        refund: &RefundRecord,
        payment: &PaymentRecord,
        order_status: Option<OrderStatus>,
    ) -> Result<(), PaymentError> {
        let answer = self
            .provider
            .refund(&payment.provider_ref, refund.amount, &refund.id.to_string())
            .await;
        let now = self.clock.now();
        match answer {
            Ok(()) => {
                self.store
                    .settle_refund(refund, &RefundSettlement::Succeeded { order_status }, now)
                    .await?;
                metrics::counter!("payments_refunds_total", "result" => "succeeded").increment(1);
                Ok(())
            }
            Err(ProviderError::Refused(reason)) => {
                tracing::warn!(refund = %refund.id, %reason, "the provider refused a refund");
                self.store
                    .settle_refund(
                        refund,
                        &RefundSettlement::Failed {
                            reason: reason.clone(),
                        },
                        now,
                    )
                    .await?;
                metrics::counter!("payments_refunds_total", "result" => "failed").increment(1);
                Err(ProviderError::Refused(reason).into())
            }
            Err(ProviderError::Unavailable(why)) => {
                let attempts = refund.attempts + 1;
                tracing::warn!(refund = %refund.id, %why, attempts, "refund not confirmed; will ask again");
                self.store
                    .retry_refund_later(refund.id, attempts, now + backoff(attempts), &why)
                    .await?;
                metrics::counter!("payments_refunds_total", "result" => "retry").increment(1);
                Err(PaymentError::RefundPending)
            }
        }
    }

    /// The refund worker: asks the provider again for every pending refund that is due, oldest
    /// first, until none is left or `limit` were tried. Returns how many were tried.
    pub async fn drain_refunds(&self, limit: u32) -> Result<usize, PaymentError> {
        let due = self.store.due_refunds(self.clock.now(), limit).await?;
        let tried = due.len();
        for refund in due {
            let _turn = self.turn(refund.order_id).lock().await;
            // Settled by its requester meanwhile?
            let Some(current) = self.store.refund(refund.id).await? else {
                continue;
            };
            if current.status != RefundStatus::Pending {
                continue;
            }
            let Some(payment) = self.store.payment(current.payment_id).await? else {
                continue;
            };
            let order_status = match current.kind {
                RefundKind::LatePayment => None,
                RefundKind::Order => {
                    let order = self
                        .orders
                        .order(current.order_id)
                        .await?
                        .ok_or(PaymentError::OrderNotFound)?;
                    match order
                        .status
                        .after_refund(order.total, order.refunded, current.amount)
                    {
                        Ok(next) => Some(next),
                        // The order can no longer take it (changed by hand?): the refund is
                        // failed rather than retried for ever, and admins see why.
                        Err(why) => {
                            tracing::error!(refund = %current.id, %why, "a pending refund no longer fits its order");
                            self.store
                                .settle_refund(
                                    &current,
                                    &RefundSettlement::Failed {
                                        reason: why.to_string(),
                                    },
                                    self.clock.now(),
                                )
                                .await?;
                            continue;
                        }
                    }
                }
            };
            match self.ask_provider(&current, &payment, order_status).await {
                Ok(()) | Err(PaymentError::Provider(_) | PaymentError::RefundPending) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(tried)
    }

    /// Refunds, newest first, optionally of one status (admins).
    pub async fn refunds(
        &self,
        status: Option<RefundStatus>,
        page: PageRequest,
    ) -> Result<Page<RefundRecord>, PaymentError> {
        Ok(self.store.refunds(status, page).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        assert_eq!(backoff(0), Duration::seconds(10));
        assert_eq!(backoff(1), Duration::seconds(20));
        assert_eq!(backoff(3), Duration::seconds(80));
        assert_eq!(backoff(9), Duration::hours(1));
        assert_eq!(backoff(u32::MAX), Duration::hours(1));
    }
}
