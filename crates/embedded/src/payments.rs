//! Payments, their notifications and refunds in SQLite.

use async_trait::async_trait;
use flashmart_app::StoreError;
use flashmart_app::payments::{
    Applied, Notification, NotificationKind, OrderRefund, PaymentRecord, PaymentStatus,
};
use flashmart_app::ports::PaymentStore;
use flashmart_domain::{Currency, Money, OrderId, PaymentId};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row as _, Sqlite};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::SqliteStore;
use crate::db::{corrupt, from_micros, map_err, micros};

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

fn get<'r, T>(row: &'r SqliteRow, col: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(col).map_err(map_err)
}

fn payment_from_row(row: &SqliteRow) -> Result<PaymentRecord, StoreError> {
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
        created_at: from_micros(get(row, "created_at")?)?,
        updated_at: from_micros(get(row, "updated_at")?)?,
        expires_at: from_micros(get(row, "expires_at")?)?,
    })
}

#[async_trait]
impl PaymentStore for SqliteStore {
    async fn insert_payment(&self, p: &PaymentRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO payments (id, order_id, provider, provider_ref, status, amount_cents, \
             currency, refunded_cents, pay_url, created_at, updated_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        .bind(micros(p.created_at))
        .bind(micros(p.updated_at))
        .bind(micros(p.expires_at))
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn payment(&self, id: PaymentId) -> Result<Option<PaymentRecord>, StoreError> {
        sqlx::query(select_payments!("WHERE p.id = ?"))
            .bind(id.as_uuid())
            .fetch_optional(&self.reader)
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
            "WHERE p.provider = ? AND p.provider_ref = ?"
        ))
        .bind(provider)
        .bind(provider_ref)
        .fetch_optional(&self.reader)
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
        sqlx::query(select_payments!(
            "WHERE p.order_id = ? AND p.status = 'pending' ORDER BY p.created_at DESC LIMIT 1"
        ))
        .bind(order.as_uuid())
        .fetch_optional(&self.writer)
        .await
        .map_err(map_err)?
        .as_ref()
        .map(payment_from_row)
        .transpose()
    }

    async fn payments_for_order(&self, order: OrderId) -> Result<Vec<PaymentRecord>, StoreError> {
        sqlx::query(select_payments!(
            "WHERE p.order_id = ? ORDER BY p.created_at"
        ))
        .bind(order.as_uuid())
        .fetch_all(&self.reader)
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
        now: OffsetDateTime,
    ) -> Result<Applied, StoreError> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let kind = match n.kind {
            NotificationKind::Succeeded => "succeeded",
            NotificationKind::Failed => "failed",
        };
        let fresh = sqlx::query(
            "INSERT INTO payment_events (provider, event_id, payment_id, kind, received_at) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (provider, event_id) DO NOTHING",
        )
        .bind(provider)
        .bind(&n.event_id)
        .bind(payment.id.as_uuid())
        .bind(kind)
        .bind(micros(now))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if fresh.rows_affected() == 0 {
            return Ok(Applied::Duplicate);
        }
        let moved = sqlx::query(
            "UPDATE payments SET status = ?, updated_at = ? WHERE id = ? AND status = 'pending'",
        )
        .bind(kind)
        .bind(micros(now))
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
        let paid: Option<Option<Uuid>> = sqlx::query_scalar(
            "UPDATE orders SET status = 'paid', paid_at = ?1, updated_at = ?1 \
             WHERE id = ?2 AND status = 'pending_payment' RETURNING reservation_id",
        )
        .bind(micros(now))
        .bind(payment.order_id.as_uuid())
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let applied = match paid {
            None => {
                let mut late = payment.clone();
                late.status = PaymentStatus::Succeeded;
                Applied::PaidTooLate(Box::new(late))
            }
            Some(reservation) => {
                if let Some(reservation) = reservation {
                    sqlx::query(
                        "UPDATE reservations SET status = 'purchased', purchased_at = ? \
                         WHERE id = ? AND status = 'reserved'",
                    )
                    .bind(micros(now))
                    .bind(reservation)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                }
                let order = crate::shop::load_order(&mut tx, payment.order_id)
                    .await?
                    .ok_or_else(|| corrupt("orders", "the order just paid is missing"))?;
                Applied::Paid(Box::new(order))
            }
        };
        tx.commit().await.map_err(map_err)?;
        Ok(applied)
    }

    async fn record_refund(
        &self,
        payment: PaymentId,
        amount: Money,
        order: Option<OrderRefund>,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        if let Some((order, refunded_before, next)) = order {
            let moved = sqlx::query(
                "UPDATE orders SET refunded_cents = refunded_cents + ?, status = ?, \
                 updated_at = ? WHERE id = ? AND refunded_cents = ? \
                 AND status IN ('paid', 'partially_refunded')",
            )
            .bind(amount.cents())
            .bind(next.as_str())
            .bind(micros(now))
            .bind(order.as_uuid())
            .bind(refunded_before.cents())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            if moved.rows_affected() == 0 {
                return Ok(false);
            }
        }
        sqlx::query(
            "UPDATE payments SET refunded_cents = refunded_cents + ?, updated_at = ? WHERE id = ?",
        )
        .bind(amount.cents())
        .bind(micros(now))
        .bind(payment.as_uuid())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query(
            "INSERT INTO refunds (id, payment_id, amount_cents, reason, created_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(Uuid::now_v7())
        .bind(payment.as_uuid())
        .bind(amount.cents())
        .bind((!reason.is_empty()).then_some(reason))
        .bind(micros(now))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn open_payments_of_ended_orders(
        &self,
        limit: u32,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        sqlx::query(select_payments!(
            "JOIN orders o ON o.id = p.order_id \
             WHERE p.status = 'pending' AND o.status != 'pending_payment' LIMIT ?"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?
        .iter()
        .map(payment_from_row)
        .collect()
    }

    async fn close_payment(&self, id: PaymentId, now: OffsetDateTime) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE payments SET status = 'closed', updated_at = ? \
             WHERE id = ? AND status = 'pending'",
        )
        .bind(micros(now))
        .bind(id.as_uuid())
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(())
    }
}
