//! The group commit's journal in SQLite: one transaction per batch, with multi-row inserts so a
//! batch of hundreds of reservations costs a handful of statements.

use async_trait::async_trait;
use flashmart_app::StoreError;
use flashmart_app::flash_sale::model::{
    CheckoutAttempt, JournalOp, JournalOutcome, NewReservation, PurchaseOutcome,
};
use flashmart_app::ports::ReservationJournal;
use flashmart_domain::Currency;
use flashmart_domain::flash_sale::ReservationStatus;
use sqlx::{QueryBuilder, Row as _, Sqlite, SqliteConnection};
use time::OffsetDateTime;

use crate::SqliteStore;
use crate::db::{corrupt, map_err, micros};
use crate::flash_sale::{chunks, reservation_from_row};

#[async_trait]
impl ReservationJournal for SqliteStore {
    async fn commit(&self, ops: &[JournalOp]) -> Result<Vec<JournalOutcome>, StoreError> {
        let mut reserves: Vec<&NewReservation> = Vec::new();
        let mut attempts: Vec<&CheckoutAttempt> = Vec::new();
        for op in ops {
            match op {
                JournalOp::Reserve(r) => reserves.push(r),
                JournalOp::Attempt(a) => attempts.push(a),
                JournalOp::Purchase { .. } => {}
            }
        }
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        insert_reservations(&mut tx, &reserves).await?;
        let ordered: Vec<&NewReservation> = reserves
            .iter()
            .copied()
            .filter(|r| r.record.order_id.is_some() && r.user_id.is_some())
            .collect();
        insert_orders(&mut tx, &ordered).await?;
        insert_attempts(&mut tx, &attempts).await?;
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in ops {
            outcomes.push(match op {
                JournalOp::Purchase { code, at } => {
                    JournalOutcome::Purchase(purchase(&mut tx, code, *at).await?)
                }
                _ => JournalOutcome::Done,
            });
        }
        tx.commit().await.map_err(map_err)?;
        Ok(outcomes)
    }
}

async fn insert_reservations(
    conn: &mut SqliteConnection,
    reserves: &[&NewReservation],
) -> Result<(), StoreError> {
    for chunk in chunks(reserves) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO reservations (id, code, sale_id, item_no, buyer_id, buyer_ref, quantity, \
             status, created_at, expires_at, order_id, idempotency_key, idempotency_fingerprint) ",
        );
        qb.push_values(chunk, |mut b, r| {
            let rec = &r.record;
            b.push_bind(rec.id.as_uuid())
                .push_bind(rec.code.as_str())
                .push_bind(rec.sale_id.as_uuid())
                .push_bind(i64::from(rec.item_no))
                .push_bind(rec.buyer.0)
                .push_bind(rec.buyer_ref.as_deref())
                .push_bind(i64::from(rec.quantity))
                .push_bind(rec.status.as_str())
                .push_bind(micros(rec.created_at))
                .push_bind(micros(rec.expires_at))
                .push_bind(rec.order_id.map(|o| *o.as_uuid()))
                .push_bind(r.idempotency.as_ref().map(|i| i.key.as_str()))
                .push_bind(r.idempotency.as_ref().map(|i| &i.fingerprint[..]));
        });
        qb.build().execute(&mut *conn).await.map_err(map_err)?;
    }
    Ok(())
}

/// A reservation's `pending_payment` order, and its one line (name snapshot from the item).
async fn insert_orders(
    conn: &mut SqliteConnection,
    reserves: &[&NewReservation],
) -> Result<(), StoreError> {
    for chunk in chunks(reserves) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO orders (id, user_id, status, currency, subtotal_cents, total_cents, \
             reservation_id, created_at, updated_at, expires_at) ",
        );
        qb.push_values(chunk, |mut b, r| {
            let rec = &r.record;
            let total = r.unit_price_cents.saturating_mul(i64::from(rec.quantity));
            b.push_bind(rec.order_id.map(|o| *o.as_uuid()))
                .push_bind(r.user_id.map(|u| *u.as_uuid()))
                .push_bind("pending_payment")
                .push_bind(r.currency.as_str())
                .push_bind(total)
                .push_bind(total)
                .push_bind(rec.id.as_uuid())
                .push_bind(micros(rec.created_at))
                .push_bind(micros(rec.created_at))
                .push_bind(micros(rec.expires_at));
        });
        qb.build().execute(&mut *conn).await.map_err(map_err)?;

        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO order_items (order_id, line, sale_id, item_no, name, unit_price_cents, \
             quantity) SELECT v.column1, 1, v.column2, v.column3, i.name, v.column4, v.column5 \
             FROM (",
        );
        qb.push_values(chunk, |mut b, r| {
            let rec = &r.record;
            b.push_bind(rec.order_id.map(|o| *o.as_uuid()))
                .push_bind(rec.sale_id.as_uuid())
                .push_bind(i64::from(rec.item_no))
                .push_bind(r.unit_price_cents)
                .push_bind(i64::from(rec.quantity));
        });
        qb.push(") AS v JOIN flash_sale_items i ON i.sale_id = v.column2 AND i.no = v.column3");
        qb.build().execute(&mut *conn).await.map_err(map_err)?;
    }
    Ok(())
}

async fn insert_attempts(
    conn: &mut SqliteConnection,
    attempts: &[&CheckoutAttempt],
) -> Result<(), StoreError> {
    for chunk in chunks(attempts) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO checkout_attempts (sale_id, item_no, buyer_ref, at, outcome, code) ",
        );
        qb.push_values(chunk, |mut b, a| {
            b.push_bind(a.sale_id.map(|s| *s.as_uuid()))
                .push_bind(a.item_no)
                .push_bind(a.buyer_ref.as_str())
                .push_bind(micros(a.at))
                .push_bind(a.outcome)
                .push_bind(a.code.as_deref());
        });
        qb.build().execute(&mut *conn).await.map_err(map_err)?;
    }
    Ok(())
}

async fn purchase(
    conn: &mut SqliteConnection,
    code: &str,
    at: OffsetDateTime,
) -> Result<PurchaseOutcome, StoreError> {
    sqlx::query(
        "UPDATE reservations SET status = 'purchased', purchased_at = ?1 \
         WHERE code = ?2 AND status = 'reserved' AND expires_at > ?1",
    )
    .bind(micros(at))
    .bind(code)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    let row = sqlx::query(
        "SELECT r.id, r.code, r.sale_id, r.item_no, r.buyer_id, r.buyer_ref, r.quantity, \
         r.status, r.created_at, r.expires_at, r.order_id, r.purchased_at, \
         i.name AS item_name, i.price_cents AS item_price, s.currency AS currency \
         FROM reservations r \
         JOIN flash_sale_items i ON i.sale_id = r.sale_id AND i.no = r.item_no \
         JOIN flash_sales s ON s.id = r.sale_id \
         WHERE r.code = ?",
    )
    .bind(code)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?;
    let Some(row) = row else {
        return Ok(PurchaseOutcome::NotFound);
    };
    let reservation = reservation_from_row(&row)?;
    if reservation.status != ReservationStatus::Purchased {
        return Ok(PurchaseOutcome::Expired);
    }
    let currency: String = row.try_get("currency").map_err(map_err)?;
    Ok(PurchaseOutcome::Purchased {
        reservation: Box::new(reservation),
        item_name: row.try_get("item_name").map_err(map_err)?,
        unit_price_cents: row.try_get("item_price").map_err(map_err)?,
        currency: Currency::parse(&currency).map_err(|e| corrupt("flash_sales.currency", e))?,
    })
}
