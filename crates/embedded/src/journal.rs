//! The group commit's journal in SQLite: one transaction per batch, and multi-row statements sent
//! together, so a batch of hundreds of reservations costs a few round trips to the connection's
//! thread instead of one per row. (An earlier version passed rows as JSON to `json_each`; SQLite
//! spent more time decoding the JSON than inserting the rows.)

use std::collections::HashMap;

use async_trait::async_trait;
use flashmart_app::StoreError;
use flashmart_app::flash_sale::model::{
    CheckoutAttempt, JournalOp, JournalOutcome, NewReservation, PurchaseOutcome,
};
use flashmart_app::ports::ReservationJournal;
use flashmart_domain::flash_sale::ReservationStatus;
use flashmart_domain::{Currency, ReservationId};
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Row as _, SqliteConnection};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::SqliteStore;
use crate::db::{corrupt, map_err, micros};
use crate::flash_sale::reservation_from_row;
use crate::order_index::LOWER_PENDING_FROM;

fn hex(id: &Uuid) -> String {
    id.simple().to_string()
}

#[async_trait]
impl ReservationJournal for SqliteStore {
    async fn commit(&self, ops: &[JournalOp]) -> Result<Vec<JournalOutcome>, StoreError> {
        let mut reserves: Vec<&NewReservation> = Vec::new();
        let mut attempts: Vec<&CheckoutAttempt> = Vec::new();
        let mut purchases: Vec<(ReservationId, OffsetDateTime)> = Vec::new();
        for op in ops {
            match op {
                JournalOp::Reserve(r) => reserves.push(r),
                JournalOp::Attempt(a) => attempts.push(a),
                JournalOp::Purchase { id, at } => purchases.push((*id, *at)),
            }
        }
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let orders = if reserves.is_empty() {
            0
        } else {
            insert_reservations(&mut tx, &reserves).await?
        };
        if !attempts.is_empty() {
            insert_attempts(&mut tx, &attempts).await?;
        }
        let purchased = if purchases.is_empty() {
            HashMap::new()
        } else {
            purchase(&mut tx, &purchases).await?
        };
        tx.commit().await.map_err(map_err)?;
        self.indexer.committed(orders);
        Ok(ops
            .iter()
            .map(|op| match op {
                // A code named twice in one batch gets the same answer twice.
                JournalOp::Purchase { id, .. } => JournalOutcome::Purchase(
                    purchased
                        .get(id)
                        .cloned()
                        .unwrap_or(PurchaseOutcome::NotFound),
                ),
                _ => JournalOutcome::Done,
            })
            .collect())
    }
}

/// Rows per multi-row statement, largest first. A batch is split greedily into chunks of these
/// sizes, so only a handful of statement texts ever exist and every one stays prepared in the
/// connection's statement cache (preparing a fresh text for every batch size cost the SQLite
/// thread a fifth of its time). 512 rows bind 512 x 20 values, under SQLite's 32,766.
const CHUNKS: [usize; 5] = [512, 128, 32, 8, 1];

/// Splits `items` into chunks of the sizes in `CHUNKS`.
fn chunked<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let size = CHUNKS.iter().copied().find(|c| *c <= items.len())?;
        let (head, tail) = items.split_at(size);
        items = tail;
        Some(head)
    })
}

/// `(?, ?, ...)` repeated `rows` times, comma-separated.
fn placeholders(sql: &mut String, rows: usize, columns: usize) {
    rows_of(sql, rows, &"?, ".repeat(columns)[..columns * 3 - 2]);
}

/// `(row)` repeated `rows` times, comma-separated.
fn rows_of(sql: &mut String, rows: usize, row: &str) {
    for n in 0..rows {
        if n > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        sql.push_str(row);
        sql.push(')');
    }
}

/// Reservations, and for those made through the API their `pending_payment` order (whose one
/// line is read from the reservation's item, never written): two statements sent as one, so a
/// chunk costs one round trip to the connection's thread. The orders are left for the order
/// indexer to list under their users (`order_index`). Returns how many orders were written.
async fn insert_reservations(
    conn: &mut SqliteConnection,
    reserves: &[&NewReservation],
) -> Result<u64, StoreError> {
    let (with_order, without): (Vec<&NewReservation>, Vec<&NewReservation>) = reserves
        .iter()
        .copied()
        .partition(|r| r.record.order_id.is_some() && r.user_id.is_some());
    for chunk in chunked(&with_order) {
        insert_chunk(conn, chunk, true).await?;
    }
    for chunk in chunked(&without) {
        insert_chunk(conn, chunk, false).await?;
    }
    if let Some(first) = with_order.iter().filter_map(|r| r.record.order_id).min() {
        sqlx::query(LOWER_PENDING_FROM)
            .bind(*first.as_uuid())
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
    }
    Ok(with_order.len() as u64)
}

async fn insert_chunk(
    conn: &mut SqliteConnection,
    chunk: &[&NewReservation],
    with_orders: bool,
) -> Result<(), StoreError> {
    let ordered: &[&NewReservation] = if with_orders { chunk } else { &[] };
    let mut sql = String::with_capacity(256 + chunk.len() * 120);
    sql.push_str(
        "INSERT INTO reservations (id, sale_id, item_no, buyer_id, buyer_ref, quantity, \
             status, created_at, expires_at, order_id, idempotency_key, \
             idempotency_fingerprint) VALUES ",
    );
    // Every new reservation is `reserved` and every new order `pending_payment`: constants in
    // the text, not values bound per row.
    rows_of(
        &mut sql,
        chunk.len(),
        "?, ?, ?, ?, ?, ?, 'reserved', ?, ?, ?, ?, ?",
    );
    if !ordered.is_empty() {
        sql.push_str(
            "; INSERT INTO orders (id, user_id, status, currency, subtotal_cents, \
                 total_cents, reservation_id, created_at, updated_at, expires_at) VALUES ",
        );
        rows_of(
            &mut sql,
            ordered.len(),
            "?, ?, 'pending_payment', ?, ?, ?, ?, ?, ?, ?",
        );
    }
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for r in chunk {
        let rec = &r.record;
        debug_assert_eq!(rec.status, ReservationStatus::Reserved);
        query = query
            .bind(*rec.id.as_uuid())
            .bind(*rec.sale_id.as_uuid())
            .bind(i64::from(rec.item_no))
            .bind(rec.buyer.0)
            .bind(rec.buyer_ref.as_deref())
            .bind(i64::from(rec.quantity))
            .bind(micros(rec.created_at))
            .bind(micros(rec.expires_at))
            .bind(rec.order_id.map(|o| *o.as_uuid()))
            .bind(r.idempotency.as_ref().map(|i| i.key.as_str()))
            .bind(r.idempotency.as_ref().map(|i| &i.fingerprint[..]));
    }
    for r in ordered {
        let rec = &r.record;
        // The engine refuses a reservation whose total does not fit before it is queued; one
        // that got here anyway is a bug, and fails its batch rather than storing a wrong total.
        let total = r
            .unit_price_cents
            .checked_mul(i64::from(rec.quantity))
            .ok_or_else(|| corrupt("reservation total", "does not fit in 64 bits"))?;
        query = query
            .bind(rec.order_id.map(|o| *o.as_uuid()))
            .bind(r.user_id.map(|u| *u.as_uuid()))
            .bind(r.currency.as_str())
            .bind(total)
            .bind(total)
            .bind(*rec.id.as_uuid())
            .bind(micros(rec.created_at))
            .bind(micros(rec.created_at))
            .bind(micros(rec.expires_at));
    }
    query.execute(&mut *conn).await.map_err(map_err)?;
    Ok(())
}

async fn insert_attempts(
    conn: &mut SqliteConnection,
    attempts: &[&CheckoutAttempt],
) -> Result<(), StoreError> {
    for chunk in chunked(attempts) {
        let mut sql = String::from(
            "INSERT INTO checkout_attempts (sale_id, item_no, buyer_ref, at, outcome, code) VALUES ",
        );
        placeholders(&mut sql, chunk.len(), 6);
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for a in chunk {
            query = query
                .bind(a.sale_id.map(|s| *s.as_uuid()))
                .bind(a.item_no)
                .bind(a.buyer_ref.as_str())
                .bind(micros(a.at))
                .bind(a.outcome)
                .bind(a.code.as_deref());
        }
        query.execute(&mut *conn).await.map_err(map_err)?;
    }
    Ok(())
}

/// Marks every contest reservation named live and unexpired as purchased (at its request's time),
/// then reads them all back: purchased now or before, the answer is the same. Only contest
/// reservations (a caller-named buyer, no order) can be bought this way; any other reservation's
/// code is not found here, and the reservation is left as it is: it is paid through its order.
async fn purchase(
    conn: &mut SqliteConnection,
    purchases: &[(ReservationId, OffsetDateTime)],
) -> Result<HashMap<ReservationId, PurchaseOutcome>, StoreError> {
    let rows: Vec<Value> = purchases
        .iter()
        .map(|(id, at)| json!([hex(id.as_uuid()), micros(*at)]))
        .collect();
    let rows = Value::Array(rows).to_string();
    sqlx::query(
        "UPDATE reservations SET status = 'purchased', purchased_at = j.value ->> 1 \
         FROM json_each(?) AS j \
         WHERE reservations.id = unhex(j.value ->> 0) \
           AND reservations.status = 'reserved' \
           AND reservations.buyer_ref IS NOT NULL AND reservations.order_id IS NULL \
           AND reservations.expires_at > j.value ->> 1",
    )
    .bind(&rows)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    let found = sqlx::query(
        "SELECT r.id, r.sale_id, r.item_no, r.buyer_id, r.buyer_ref, r.quantity, \
         r.status, r.created_at, r.expires_at, r.order_id, r.purchased_at, \
         i.name AS item_name, i.price_cents AS item_price, s.currency AS currency \
         FROM reservations r \
         JOIN flash_sale_items i ON i.sale_id = r.sale_id AND i.no = r.item_no \
         JOIN flash_sales s ON s.id = r.sale_id \
         WHERE r.id IN (SELECT unhex(value ->> 0) FROM json_each(?)) \
           AND r.buyer_ref IS NOT NULL AND r.order_id IS NULL",
    )
    .bind(&rows)
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)?;
    let mut outcomes = HashMap::with_capacity(found.len());
    for row in &found {
        let reservation = reservation_from_row(row)?;
        let outcome = if reservation.status == ReservationStatus::Purchased {
            let currency: String = row.try_get("currency").map_err(map_err)?;
            PurchaseOutcome::Purchased {
                item_name: row.try_get("item_name").map_err(map_err)?,
                unit_price_cents: row.try_get("item_price").map_err(map_err)?,
                currency: Currency::parse(&currency)
                    .map_err(|e| corrupt("flash_sales.currency", e))?,
                reservation: Box::new(reservation),
            }
        } else {
            PurchaseOutcome::Expired
        };
        let id = match &outcome {
            PurchaseOutcome::Purchased { reservation, .. } => reservation.id,
            _ => ReservationId::from_uuid(row.try_get("id").map_err(map_err)?),
        };
        outcomes.insert(id, outcome);
    }
    Ok(outcomes)
}
