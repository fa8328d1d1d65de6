//! Payments, their notifications and refunds in PostgreSQL. A write that depends on what it
//! read first locks the row the decision belongs to (the order for its one open payment, the
//! payment for its one pending refund); the rest are guarded, conditional statements.

use std::sync::LazyLock;

use async_trait::async_trait;
use flashmart_app::StoreError;
use flashmart_app::audit::AuditEntry;
use flashmart_app::page::{Page, PageRequest};
use flashmart_app::payments::{
    Applied, Notification, NotificationKind, PaymentRecord, PaymentStatus, RefundKind,
    RefundRecord, RefundSettlement, RefundStart, RefundStatus,
};
use flashmart_app::ports::PaymentStore;
use flashmart_app::webhooks::{EventType, OrderFacts};
use flashmart_domain::{Currency, Money, OrderId, OrderStatus, PaymentId, RefundId};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, Row as _};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::PgStore;
use crate::db::{corrupt, map_err, order_may_become};
use crate::shop::{load_order, write_derived_order};
use crate::webhooks::{emit, emit_order};

/// An order paid, guarded by the state machine: built once, since every payment needs it.
static MARK_PAID: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE orders SET status = '{}', paid_at = $1, updated_at = $1 \
         WHERE id = $2 AND {} RETURNING reservation_id",
        OrderStatus::Paid.as_str(),
        order_may_become(OrderStatus::Paid)
    )
});

macro_rules! select_payments {
    ($rest:literal) => {
        concat!(
            "SELECT p.id, p.order_id, p.provider, p.provider_ref, p.status, p.amount_cents, \
             p.currency, p.refunded_cents, p.pay_url, p.created_at, p.updated_at, p.expires_at \
             FROM payments p ",
            $rest
        )
    };
}

macro_rules! select_refunds {
    ($rest:literal) => {
        concat!(
            "SELECT r.id, r.payment_id, r.order_id, r.kind, r.amount_cents, p.currency, \
             r.reason, r.status, r.attempts, r.next_attempt_at, r.last_error, r.created_at, \
             r.completed_at FROM refunds r JOIN payments p ON p.id = r.payment_id ",
            $rest
        )
    };
}

fn get<'r, T>(row: &'r PgRow, col: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(col).map_err(map_err)
}

fn payment_from_row(row: &PgRow) -> Result<PaymentRecord, StoreError> {
    let currency: String = get(row, "currency")?;
    let currency = Currency::parse(&currency).map_err(|e| corrupt("payments.currency", e))?;
    let money = |col: &str| -> Result<Money, StoreError> {
        Money::new(get(row, col)?, currency).map_err(|e| corrupt(col, e))
    };
    let status: String = get(row, "status")?;
    Ok(PaymentRecord {
        id: PaymentId::from_uuid(get(row, "id")?),
        order_id: OrderId::from_uuid(get(row, "order_id")?),
        provider: get(row, "provider")?,
        provider_ref: get(row, "provider_ref")?,
        status: status.parse().map_err(|e| corrupt("payments.status", e))?,
        amount: money("amount_cents")?,
        refunded: money("refunded_cents")?,
        pay_url: get(row, "pay_url")?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
        expires_at: get(row, "expires_at")?,
    })
}

fn refund_from_row(row: &PgRow) -> Result<RefundRecord, StoreError> {
    let currency: String = get(row, "currency")?;
    let currency = Currency::parse(&currency).map_err(|e| corrupt("payments.currency", e))?;
    let kind: String = get(row, "kind")?;
    let status: String = get(row, "status")?;
    let reason: Option<String> = get(row, "reason")?;
    let attempts: i32 = get(row, "attempts")?;
    Ok(RefundRecord {
        id: RefundId::from_uuid(get(row, "id")?),
        payment_id: PaymentId::from_uuid(get(row, "payment_id")?),
        order_id: OrderId::from_uuid(get(row, "order_id")?),
        kind: kind.parse().map_err(|e| corrupt("refunds.kind", e))?,
        amount: Money::new(get(row, "amount_cents")?, currency)
            .map_err(|e| corrupt("refunds.amount_cents", e))?,
        reason: reason.unwrap_or_default(),
        status: status.parse().map_err(|e| corrupt("refunds.status", e))?,
        attempts: u32::try_from(attempts).map_err(|e| corrupt("refunds.attempts", e))?,
        next_attempt_at: get(row, "next_attempt_at")?,
        last_error: get(row, "last_error")?,
        created_at: get(row, "created_at")?,
        completed_at: get(row, "completed_at")?,
    })
}

/// The order's newest pending payment.
async fn open_payment(
    conn: &mut PgConnection,
    order: OrderId,
) -> Result<Option<PaymentRecord>, StoreError> {
    sqlx::query(select_payments!(
        "WHERE p.order_id = $1 AND p.status = 'pending' ORDER BY p.created_at DESC LIMIT 1"
    ))
    .bind(order.as_uuid())
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?
    .as_ref()
    .map(payment_from_row)
    .transpose()
}

async fn insert_refund(conn: &mut PgConnection, r: &RefundRecord) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO refunds (id, payment_id, order_id, kind, amount_cents, reason, status, \
         attempts, next_attempt_at, last_error, created_at, completed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(r.id.as_uuid())
    .bind(r.payment_id.as_uuid())
    .bind(r.order_id.as_uuid())
    .bind(r.kind.as_str())
    .bind(r.amount.cents())
    .bind((!r.reason.is_empty()).then_some(r.reason.as_str()))
    .bind(r.status.as_str())
    .bind(i32::try_from(r.attempts).unwrap_or(i32::MAX))
    .bind(r.next_attempt_at)
    .bind(r.last_error.as_deref())
    .bind(r.created_at)
    .bind(r.completed_at)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

#[async_trait]
impl PaymentStore for PgStore {
    async fn insert_payment(&self, p: &PaymentRecord) -> Result<Option<PaymentRecord>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // A payment needs the order's row (and references it).
        write_derived_order(&mut tx, p.order_id).await?;
        // The order's row is the turn: two starts for one order cannot both find none open.
        sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE")
            .bind(p.order_id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if let Some(open) = open_payment(&mut tx, p.order_id).await? {
            return Ok(Some(open));
        }
        sqlx::query(
            "INSERT INTO payments (id, order_id, provider, provider_ref, status, amount_cents, \
             currency, refunded_cents, pay_url, created_at, updated_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(p.id.as_uuid())
        .bind(p.order_id.as_uuid())
        .bind(&p.provider)
        .bind(&p.provider_ref)
        .bind(p.status.as_str())
        .bind(p.amount.cents())
        .bind(p.amount.currency().as_str())
        .bind(p.refunded.cents())
        .bind(&p.pay_url)
        .bind(p.created_at)
        .bind(p.updated_at)
        .bind(p.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(None)
    }

    async fn payment(&self, id: PaymentId) -> Result<Option<PaymentRecord>, StoreError> {
        sqlx::query(select_payments!("WHERE p.id = $1"))
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?
            .as_ref()
            .map(payment_from_row)
            .transpose()
    }

    async fn payment_by_ref(
        &self,
        provider: &str,
        provider_ref: &str,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        sqlx::query(select_payments!(
            "WHERE p.provider = $1 AND p.provider_ref = $2"
        ))
        .bind(provider)
        .bind(provider_ref)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?
        .as_ref()
        .map(payment_from_row)
        .transpose()
    }

    async fn open_payment_for_order(
        &self,
        order: OrderId,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        open_payment(&mut conn, order).await
    }

    async fn payments_for_order(&self, order: OrderId) -> Result<Vec<PaymentRecord>, StoreError> {
        sqlx::query(select_payments!(
            "WHERE p.order_id = $1 ORDER BY p.created_at, p.id"
        ))
        .bind(order.as_uuid())
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?
        .iter()
        .map(payment_from_row)
        .collect()
    }

    async fn apply_notification(
        &self,
        provider: &str,
        n: &Notification,
        payment: &PaymentRecord,
        late_refund: &RefundRecord,
        now: OffsetDateTime,
    ) -> Result<Applied, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let kind = match n.kind {
            NotificationKind::Succeeded => "succeeded",
            NotificationKind::Failed => "failed",
        };
        // A repeat of the event waits here for the first one's transaction, then does nothing.
        let fresh = sqlx::query(
            "INSERT INTO payment_events (provider, event_id, payment_id, kind, received_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (provider, event_id) DO NOTHING",
        )
        .bind(provider)
        .bind(&n.event_id)
        .bind(payment.id.as_uuid())
        .bind(kind)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if fresh.rows_affected() == 0 {
            return Ok(Applied::Duplicate);
        }
        let moved = sqlx::query(
            "UPDATE payments SET status = $1, updated_at = $2 \
             WHERE id = $3 AND status = 'pending'",
        )
        .bind(kind)
        .bind(now)
        .bind(payment.id.as_uuid())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if moved.rows_affected() == 0 {
            tx.commit().await.map_err(map_err)?;
            return Ok(Applied::AlreadySettled);
        }
        if n.kind == NotificationKind::Failed {
            tx.commit().await.map_err(map_err)?;
            return Ok(Applied::Failed);
        }
        let paid: Option<Option<Uuid>> = sqlx::query_scalar(MARK_PAID.as_str())
            .bind(now)
            .bind(payment.order_id.as_uuid())
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        let applied = match paid {
            None => {
                let mut late = payment.clone();
                late.status = PaymentStatus::Succeeded;
                insert_refund(&mut tx, late_refund).await?;
                Applied::PaidTooLate {
                    payment: Box::new(late),
                    refund: Box::new(late_refund.clone()),
                }
            }
            Some(reservation) => {
                if let Some(reservation) = reservation {
                    // A flash-sale order's reservation is bought with it, in this transaction.
                    sqlx::query(
                        "UPDATE reservations SET status = 'purchased', purchased_at = $1 \
                         WHERE id = $2 AND status = 'reserved'",
                    )
                    .bind(now)
                    .bind(reservation)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                }
                let order = load_order(&mut tx, payment.order_id)
                    .await?
                    .ok_or_else(|| corrupt("orders", "the order just paid is missing"))?;
                emit(
                    &mut tx,
                    &OrderFacts::from(&order).event(EventType::OrderPaid, now),
                )
                .await?;
                Applied::Paid(Box::new(order))
            }
        };
        tx.commit().await.map_err(map_err)?;
        Ok(applied)
    }

    async fn begin_refund(
        &self,
        refund: &RefundRecord,
        order_as_read: Option<(Money, OrderStatus)>,
        audit: Option<&AuditEntry>,
    ) -> Result<RefundStart, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // The payment's row is the turn: one refund of it starts at a time.
        sqlx::query("SELECT 1 FROM payments WHERE id = $1 FOR UPDATE")
            .bind(refund.payment_id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let pending: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM refunds WHERE payment_id = $1 AND status = 'pending')",
        )
        .bind(refund.payment_id.as_uuid())
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        if pending {
            return Ok(RefundStart::InProgress);
        }
        if let Some((refunded, status)) = order_as_read {
            let same: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM orders WHERE id = $1 AND refunded_cents = $2 \
                 AND status = $3)",
            )
            .bind(refund.order_id.as_uuid())
            .bind(refunded.cents())
            .bind(status.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
            if !same {
                return Ok(RefundStart::OrderChanged);
            }
        }
        insert_refund(&mut tx, refund).await?;
        if let Some(audit) = audit {
            crate::audit::record(&mut tx, audit).await?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(RefundStart::Started)
    }

    async fn settle_refund(
        &self,
        refund: &RefundRecord,
        settlement: &RefundSettlement,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let (status, error) = match settlement {
            RefundSettlement::Succeeded { .. } => (RefundStatus::Succeeded, None),
            RefundSettlement::Failed { reason } => (RefundStatus::Failed, Some(reason.as_str())),
        };
        let moved = sqlx::query(
            "UPDATE refunds SET status = $1, completed_at = $2, \
             last_error = coalesce($3, last_error) WHERE id = $4 AND status = 'pending'",
        )
        .bind(status.as_str())
        .bind(now)
        .bind(error)
        .bind(refund.id.as_uuid())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if moved.rows_affected() == 0 {
            return Ok(false);
        }
        if let RefundSettlement::Succeeded { order_status } = settlement {
            sqlx::query(
                "UPDATE payments SET refunded_cents = refunded_cents + $1, updated_at = $2 \
                 WHERE id = $3",
            )
            .bind(refund.amount.cents())
            .bind(now)
            .bind(refund.payment_id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            if let (RefundKind::Order, Some(next)) = (refund.kind, order_status) {
                sqlx::query(
                    "UPDATE orders SET refunded_cents = refunded_cents + $1, status = $2, \
                     updated_at = $3 WHERE id = $4",
                )
                .bind(refund.amount.cents())
                .bind(next.as_str())
                .bind(now)
                .bind(refund.order_id.as_uuid())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                emit_order(&mut tx, EventType::OrderRefunded, refund.order_id, now).await?;
            }
        }
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn retry_refund_later(
        &self,
        id: RefundId,
        attempts: u32,
        next_attempt_at: OffsetDateTime,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE refunds SET attempts = $1, next_attempt_at = $2, last_error = $3 \
             WHERE id = $4 AND status = 'pending'",
        )
        .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
        .bind(next_attempt_at)
        .bind(error)
        .bind(id.as_uuid())
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn refund(&self, id: RefundId) -> Result<Option<RefundRecord>, StoreError> {
        sqlx::query(select_refunds!("WHERE r.id = $1"))
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?
            .as_ref()
            .map(refund_from_row)
            .transpose()
    }

    async fn due_refunds(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<RefundRecord>, StoreError> {
        sqlx::query(select_refunds!(
            "WHERE r.status = 'pending' AND r.next_attempt_at <= $1 \
             ORDER BY r.next_attempt_at, r.id LIMIT $2"
        ))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?
        .iter()
        .map(refund_from_row)
        .collect()
    }

    async fn refunds(
        &self,
        status: Option<RefundStatus>,
        page: PageRequest,
    ) -> Result<Page<RefundRecord>, StoreError> {
        let status = status.map(RefundStatus::as_str);
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM refunds WHERE $1::text IS NULL OR status = $1",
        )
        .bind(status)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        let items = sqlx::query(select_refunds!(
            "WHERE $1::text IS NULL OR r.status = $1 ORDER BY r.created_at DESC, r.id DESC \
             LIMIT $2 OFFSET $3"
        ))
        .bind(status)
        .bind(i64::from(page.per_page()))
        .bind(i64::try_from(page.offset()).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?
        .iter()
        .map(refund_from_row)
        .collect::<Result<_, _>>()?;
        Ok(Page::new(page, items, u64::try_from(total).unwrap_or(0)))
    }

    async fn open_payments_of_ended_orders(
        &self,
        after: Option<PaymentId>,
        limit: u32,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        sqlx::query(select_payments!(
            "JOIN orders o ON o.id = p.order_id \
             WHERE p.status = 'pending' AND o.status != 'pending_payment' \
               AND ($1::uuid IS NULL OR p.id > $1) ORDER BY p.id LIMIT $2"
        ))
        .bind(after.map(|a| *a.as_uuid()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?
        .iter()
        .map(payment_from_row)
        .collect()
    }

    async fn close_payment(&self, id: PaymentId, now: OffsetDateTime) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE payments SET status = 'closed', updated_at = $1 \
             WHERE id = $2 AND status = 'pending'",
        )
        .bind(now)
        .bind(id.as_uuid())
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }
}
