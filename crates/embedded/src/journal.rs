//! The group commit's journal in SQLite: one transaction per batch, sent to the connection's
//! thread as one text. Every hop to that thread and back costs a wake-up on each side (about
//! 0.1 to 0.2 ms on two busy cores, measured): a batch written as `BEGIN`, a statement per chunk
//! of rows and `COMMIT` spent most of its time in those hops, not in SQLite. So a batch is one
//! text (`BEGIN IMMEDIATE`, one multi-row `INSERT` per table, the order indexer's mark, the
//! contest's purchases and their rows read back, `COMMIT`), and so that only a few texts ever
//! exist (each stays prepared in the connection's statement cache), each `INSERT` takes its rows
//! from a `VALUES` list padded with NULL rows to the next power of two, which the statement
//! filters out. (Earlier versions passed rows as JSON to `json_each`, where SQLite spent more
//! time decoding the JSON than inserting the rows, then sent fixed-size chunks one statement at
//! a time.)

use std::collections::HashMap;
use std::fmt::Write as _;

use async_trait::async_trait;
use flashmart_app::StoreError;
use flashmart_app::flash_sale::model::{
    CheckoutAttempt, JournalOp, JournalOutcome, NewReservation, PurchaseOutcome,
};
use flashmart_app::ports::ReservationJournal;
use flashmart_domain::flash_sale::ReservationStatus;
use flashmart_domain::{Currency, OrderId, ReservationId, UserId};
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{AssertSqlSafe, Row as _, Sqlite};
use time::OffsetDateTime;

use crate::SqliteStore;
use crate::db::{corrupt, map_err, micros};
use crate::flash_sale::reservation_from_row;
use crate::order_index::LOWER_PENDING_FROM;

#[async_trait]
impl ReservationJournal for SqliteStore {
    async fn commit(&self, ops: &[JournalOp]) -> Result<Vec<JournalOutcome>, StoreError> {
        let mut rows = Rows::default();
        let mut purchases: Vec<(ReservationId, OffsetDateTime)> = Vec::new();
        for op in ops {
            match op {
                JournalOp::Reserve(r) => rows.reserves.push(r),
                JournalOp::Attempt(a) => rows.attempts.push(a),
                JournalOp::Purchase { id, at } => purchases.push((*id, *at)),
            }
        }
        let (mut sql, mut args, orders) = rows.text()?;
        if !purchases.is_empty() {
            purchase_statements(&mut sql, &mut args, &purchases)?;
        }
        sql.push_str("COMMIT");
        let mut conn = self.writer.acquire().await.map_err(map_err)?;
        // The whole transaction in one text; purchases read their rows back inside it.
        let read = sqlx::query_with(AssertSqlSafe(sql), args)
            .fetch_all(&mut *conn)
            .await;
        let found = match read {
            Ok(found) => found,
            Err(err) => {
                // The text stopped at the statement that failed, inside its transaction.
                if sqlx::query("ROLLBACK").execute(&mut *conn).await.is_err() {
                    // Already rolled back by SQLite (some errors do that), or the connection
                    // is broken; either way it is not handed out again in an unknown state.
                    conn.close_on_drop();
                }
                return Err(map_err(err));
            }
        };
        let purchased = purchase_outcomes(&found)?;
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

/// The most rows one `INSERT` takes (1,024 x 8 values, under SQLite's 32,766 per statement); a
/// larger batch has several.
const MAX_ROWS: usize = 1024;

/// The `pending_payment` order of a reservation made through the API.
struct NewOrder<'a> {
    id: OrderId,
    user: UserId,
    reservation: &'a NewReservation,
}

/// What a batch inserts.
#[derive(Default)]
struct Rows<'a> {
    reserves: Vec<&'a NewReservation>,
    attempts: Vec<&'a CheckoutAttempt>,
}

impl Rows<'_> {
    /// The reservations made through the API: they get a `pending_payment` order, whose one
    /// line is read from the reservation's item, never written.
    fn orders(&self) -> impl Iterator<Item = NewOrder<'_>> {
        self.reserves.iter().filter_map(|r| {
            Some(NewOrder {
                id: r.record.order_id?,
                user: r.user_id?,
                reservation: r,
            })
        })
    }

    /// `BEGIN IMMEDIATE` and the batch's inserts, as one text with its arguments, and how many
    /// orders it writes.
    fn text(&self) -> Result<(String, SqliteArguments, u64), StoreError> {
        let mut sql = String::from("BEGIN IMMEDIATE; ");
        let mut args = SqliteArguments::default();
        // Every new reservation is `reserved` and every new order `pending_payment`: constants
        // in the text, not values bound per row.
        insert(
            &mut sql,
            &mut args,
            "INSERT INTO reservations (id, sale_id, item_no, buyer_id, buyer_ref, quantity, \
             status, created_at, expires_at, order_id, idempotency_key, \
             idempotency_fingerprint) SELECT substr(column1, 1, 16), substr(column1, 17, 16), \
             column2, substr(column1, 33, 16), column3, column4, 'reserved', column5, column6, \
             nullif(substr(column1, 49, 16), x''), column7, column8",
            8,
            "column1",
            &self.reserves,
            |args, r| {
                let rec = &r.record;
                debug_assert_eq!(rec.status, ReservationStatus::Reserved);
                // Its id, its sale's and its buyer's, then its order's if it has one, in one
                // value (see `insert`).
                let mut ids = Vec::with_capacity(64);
                ids.extend_from_slice(rec.id.as_uuid().as_bytes());
                ids.extend_from_slice(rec.sale_id.as_uuid().as_bytes());
                ids.extend_from_slice(rec.buyer.0.as_bytes());
                if let Some(order) = rec.order_id {
                    ids.extend_from_slice(order.as_uuid().as_bytes());
                }
                add(args, ids)?;
                add(args, i64::from(rec.item_no))?;
                add(args, rec.buyer_ref.clone())?;
                add(args, i64::from(rec.quantity))?;
                add(args, micros(rec.created_at))?;
                add(args, micros(rec.expires_at))?;
                add(args, r.idempotency.as_ref().map(|i| i.key.clone()))?;
                add(args, r.idempotency.as_ref().map(|i| i.fingerprint.to_vec()))
            },
        )?;
        let orders: Vec<NewOrder<'_>> = self.orders().collect();
        insert(
            &mut sql,
            &mut args,
            "INSERT INTO orders (id, user_id, status, currency, subtotal_cents, total_cents, \
             reservation_id, created_at, updated_at, expires_at) SELECT substr(column1, 1, 16), \
             substr(column1, 17, 16), 'pending_payment', CAST(substr(column1, 49) AS TEXT), \
             column2, column2, substr(column1, 33, 16), column3, column3, column4",
            4,
            "column1",
            &orders,
            |args, order| {
                let r = order.reservation;
                let rec = &r.record;
                // The engine refuses a reservation whose total does not fit before it is
                // queued; one that got here anyway is a bug, and fails its batch rather than
                // storing a wrong total.
                let total = r
                    .unit_price_cents
                    .checked_mul(i64::from(rec.quantity))
                    .ok_or_else(|| corrupt("reservation total", "does not fit in 64 bits"))?;
                // The order's id, its user's and its reservation's, then its currency code,
                // in one value (see `insert`). Bound once each: the subtotal is the total (no
                // discount on a sale), and the order is last updated when it is made.
                let currency = r.currency.as_str().as_bytes();
                let mut packed = Vec::with_capacity(48 + currency.len());
                packed.extend_from_slice(order.id.as_uuid().as_bytes());
                packed.extend_from_slice(order.user.as_uuid().as_bytes());
                packed.extend_from_slice(rec.id.as_uuid().as_bytes());
                packed.extend_from_slice(currency);
                add(args, packed)?;
                add(args, total)?;
                add(args, micros(rec.created_at))?;
                add(args, micros(rec.expires_at))
            },
        )?;
        // The order indexer's mark: every order of the batch is at or after it (order_index.rs).
        if let Some(first) = orders.iter().map(|o| o.id).min() {
            sql.push_str(LOWER_PENDING_FROM);
            sql.push_str("; ");
            add(&mut args, *first.as_uuid())?;
        }
        insert(
            &mut sql,
            &mut args,
            "INSERT INTO checkout_attempts (sale_id, item_no, buyer_ref, at, outcome, code) \
             SELECT column1, column2, column3, column4, column5, column6",
            6,
            // A refusal for an unknown sale has no sale id; every attempt has a time.
            "column4",
            &self.attempts,
            |args, a| {
                add(args, a.sale_id.map(|s| *s.as_uuid()))?;
                add(args, a.item_no)?;
                add(args, a.buyer_ref.clone())?;
                add(args, micros(a.at))?;
                add(args, a.outcome)?;
                add(args, a.code.clone())
            },
        )?;
        Ok((sql, args, orders.len() as u64))
    }
}

fn add<'q, T>(args: &mut SqliteArguments, value: T) -> Result<(), StoreError>
where
    T: sqlx::Encode<'q, Sqlite> + sqlx::Type<Sqlite> + 'q,
{
    use sqlx::Arguments as _;
    args.add(value)
        .map_err(|e| corrupt("journal argument", e.to_string()))
}

/// `head FROM (VALUES ...) WHERE present IS NOT NULL;` for each run of up to `MAX_ROWS` of
/// `items`, every run padded with NULL rows to the next power of two.
///
/// A row's ids travel as one value, their 16-byte forms one after the other, which `head` cuts
/// apart with `substr`: sqlx copies every bound blob or text into two allocations of its own
/// (made on the request side, freed on the SQLite thread), so four ids bound apart cost eight
/// allocations a row where one packed value costs two.
fn insert<T>(
    sql: &mut String,
    args: &mut SqliteArguments,
    head: &str,
    columns: usize,
    present: &str,
    items: &[T],
    mut bind: impl FnMut(&mut SqliteArguments, &T) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    use sqlx::Arguments as _;
    let row = format!("({})", vec!["?"; columns].join(", "));
    for run in items.chunks(MAX_ROWS) {
        let padded = run.len().next_power_of_two();
        args.reserve(padded * columns, 0);
        sql.push_str(head);
        sql.push_str(" FROM (VALUES ");
        for n in 0..padded {
            if n > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&row);
        }
        let _ = write!(sql, ") WHERE {present} IS NOT NULL; ");
        for item in run {
            bind(args, item)?;
        }
        for _ in run.len()..padded {
            for _ in 0..columns {
                add(args, None::<i64>)?;
            }
        }
    }
    Ok(())
}

/// Marks every contest reservation named live and unexpired as purchased (at its request's time),
/// then reads them all back: purchased now or before, the answer is the same. Only contest
/// reservations (a caller-named buyer, no order) can be bought this way; any other reservation's
/// code is not found here, and the reservation is left as it is: it is paid through its order.
fn purchase_statements(
    sql: &mut String,
    args: &mut SqliteArguments,
    purchases: &[(ReservationId, OffsetDateTime)],
) -> Result<(), StoreError> {
    // `[["<id in hex>", <micros>], ...]`, written directly: hex digits and integers need no
    // escaping.
    let mut rows = String::with_capacity(2 + purchases.len() * 52);
    rows.push('[');
    for (n, (id, at)) in purchases.iter().enumerate() {
        if n > 0 {
            rows.push(',');
        }
        let _ = write!(rows, "[\"{}\",{}]", id.as_uuid().simple(), micros(*at));
    }
    rows.push(']');
    sql.push_str(
        "UPDATE reservations SET status = 'purchased', purchased_at = j.value ->> 1 \
         FROM json_each(?) AS j \
         WHERE reservations.id = unhex(j.value ->> 0) \
           AND reservations.status = 'reserved' \
           AND reservations.buyer_ref IS NOT NULL AND reservations.order_id IS NULL \
           AND reservations.expires_at > j.value ->> 1; \
         SELECT r.id, r.sale_id, r.item_no, r.buyer_id, r.buyer_ref, r.quantity, \
         r.status, r.created_at, r.expires_at, r.order_id, r.purchased_at, \
         i.name AS item_name, i.price_cents AS item_price, s.currency AS currency \
         FROM reservations r \
         JOIN flash_sale_items i ON i.sale_id = r.sale_id AND i.no = r.item_no \
         JOIN flash_sales s ON s.id = r.sale_id \
         WHERE r.id IN (SELECT unhex(value ->> 0) FROM json_each(?)) \
           AND r.buyer_ref IS NOT NULL AND r.order_id IS NULL; ",
    );
    add(args, rows.clone())?;
    add(args, rows)
}

/// What each purchase found, from the rows `purchase_statements` read back.
fn purchase_outcomes(
    found: &[SqliteRow],
) -> Result<HashMap<ReservationId, PurchaseOutcome>, StoreError> {
    let mut outcomes = HashMap::with_capacity(found.len());
    for row in found {
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
