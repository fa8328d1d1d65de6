//! The statements that write applied batches into the database's tables, built as one text so
//! that a whole transaction is one round trip to the connection's thread. So that only a few
//! texts ever exist (each stays prepared in the connection's statement cache), each `INSERT`
//! takes its rows from a `VALUES` list padded with NULL rows to the next power of two, which the
//! statement filters out. (Rows passed as JSON to `json_each` were tried first: SQLite spent more
//! time decoding the JSON than inserting the rows.)

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use flashmart_app::StoreError;
use flashmart_app::flash_sale::model::PurchaseOutcome;
use flashmart_app::webhooks::{EventType, OrderFacts};
use flashmart_domain::flash_sale::ReservationStatus;
use flashmart_domain::{Currency, OrderStatus, ReservationId};
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Row as _, Sqlite};
use time::OffsetDateTime;
use uuid::Uuid;

use super::codec::{AttemptRow, Decoded, ReservationRow};
use crate::db::{corrupt, map_err, micros};
use crate::flash_sale::reservation_from_row;

/// The most rows one `INSERT` takes (1,024 x 8 values, under SQLite's 32,766 per statement); more
/// rows take several.
const MAX_ROWS: usize = 1024;

/// A reservation made through the API: it gets a `pending_payment` order, whose one line is read
/// from the reservation's item, never written.
struct NewOrder<'r, 'a> {
    id: [u8; 16],
    user: [u8; 16],
    reservation: &'r ReservationRow<'a>,
}

/// Appends the inserts of `rows` to `sql` (inside the caller's transaction), binding their values
/// to `args`. Returns how many orders they write and the smallest order id, for the order
/// indexer's mark.
pub(crate) fn inserts(
    sql: &mut String,
    args: &mut SqliteArguments,
    rows: &Decoded<'_>,
) -> Result<(u64, Option<Uuid>), StoreError> {
    // Every new reservation is `reserved` and every new order `pending_payment`: constants in
    // the text, not values bound per row.
    insert(
        sql,
        args,
        "INSERT INTO reservations (id, sale_id, item_no, buyer_id, buyer_ref, quantity, \
         status, created_at, expires_at, order_id, idempotency_key, \
         idempotency_fingerprint) SELECT substr(column1, 1, 16), substr(column1, 17, 16), \
         column2, substr(column1, 33, 16), column3, column4, 'reserved', column5, column6, \
         nullif(substr(column1, 49, 16), x''), column7, column8",
        8,
        "column1",
        &rows.reservations,
        |args, r| {
            // Its id, its sale's and its buyer's, then its order's if it has one, in one value
            // (see `insert`).
            let mut ids = Vec::with_capacity(64);
            ids.extend_from_slice(&r.id);
            ids.extend_from_slice(&r.sale);
            ids.extend_from_slice(&r.buyer);
            if let Some(order) = r.order {
                ids.extend_from_slice(&order);
            }
            add(args, ids)?;
            add(args, i64::from(r.item_no))?;
            add(args, r.buyer_ref.map(str::to_owned))?;
            add(args, i64::from(r.quantity))?;
            add(args, r.created_at)?;
            add(args, r.expires_at)?;
            add(args, r.idempotency.map(|(key, _)| key.to_owned()))?;
            add(
                args,
                r.idempotency.map(|(_, fingerprint)| fingerprint.to_vec()),
            )
        },
    )?;
    let orders: Vec<NewOrder<'_, '_>> = rows
        .reservations
        .iter()
        .filter_map(|r| {
            Some(NewOrder {
                id: r.order?,
                user: r.user?,
                reservation: r,
            })
        })
        .collect();
    insert(
        sql,
        args,
        "INSERT INTO orders (id, user_id, status, currency, subtotal_cents, total_cents, \
         reservation_id, created_at, updated_at, expires_at) SELECT substr(column1, 1, 16), \
         substr(column1, 17, 16), 'pending_payment', CAST(substr(column1, 49) AS TEXT), \
         column2, column2, substr(column1, 33, 16), column3, column3, column4",
        4,
        "column1",
        &orders,
        |args, order| {
            let r = order.reservation;
            // The engine refuses a reservation whose total does not fit before it is queued;
            // one that got here anyway is a bug, and fails its transaction rather than storing
            // a wrong total.
            let total = r
                .unit_price_cents
                .checked_mul(i64::from(r.quantity))
                .ok_or_else(|| corrupt("reservation total", "does not fit in 64 bits"))?;
            // The order's id, its user's and its reservation's, then its currency code, in one
            // value (see `insert`). Bound once each: the subtotal is the total (no discount on
            // a sale), and the order is last updated when it is made.
            let mut packed = Vec::with_capacity(48 + r.currency.len());
            packed.extend_from_slice(&order.id);
            packed.extend_from_slice(&order.user);
            packed.extend_from_slice(&r.id);
            packed.extend_from_slice(r.currency.as_bytes());
            add(args, packed)?;
            add(args, total)?;
            add(args, r.created_at)?;
            add(args, r.expires_at)
        },
    )?;
    insert(
        sql,
        args,
        "INSERT INTO checkout_attempts (sale_id, item_no, buyer_ref, at, outcome, code) \
         SELECT column1, column2, column3, column4, column5, column6",
        6,
        // A refusal for an unknown sale has no sale id; every attempt has a time.
        "column4",
        &rows.attempts,
        |args, a: &AttemptRow<'_>| {
            add(args, a.sale.map(|s| s.to_vec()))?;
            add(args, a.item_no)?;
            add(args, a.buyer_ref.to_owned())?;
            add(args, a.at)?;
            add(args, a.outcome.to_owned())?;
            add(args, a.code.map(str::to_owned))
        },
    )?;
    if !rows.purchased.is_empty() {
        // After the inserts: a purchase's reservation may be in the same transaction. One
        // statement updates a row once, with whichever of its matches: the first mark of a
        // reservation is the one kept.
        let mut seen = HashSet::with_capacity(rows.purchased.len());
        let first: Vec<(Uuid, i64)> = rows
            .purchased
            .iter()
            .filter(|(id, _)| seen.insert(*id))
            .map(|(id, at)| (Uuid::from_bytes(*id), *at))
            .collect();
        sql.push_str(MARK_PURCHASED);
        add(args, purchase_list(first.into_iter()))?;
    }
    let first_order = orders.iter().map(|o| Uuid::from_bytes(o.id)).min();
    Ok((orders.len() as u64, first_order))
}

/// The deliveries of the `order.created` events just inserted (bound to a JSON list of their
/// ids in hex), one per active endpoint subscribed, decided inside the transaction.
const DELIVER_ORDERS_CREATED: &str = "INSERT INTO webhook_deliveries (endpoint_id, event_id, \
     status, next_attempt_at, created_at) \
     SELECT p.id, e.id, 'pending', e.created_at, e.created_at \
     FROM webhook_events e JOIN webhook_endpoints p ON p.active = 1 \
       AND EXISTS (SELECT 1 FROM json_each(p.events) WHERE value = 'order.created') \
     WHERE e.id IN (SELECT unhex(value) FROM json_each(?)); ";

/// Appends `order.created` webhook events for the orders `rows` make, with their deliveries:
/// called only when an endpoint subscribes to them, so that the hot path pays nothing otherwise.
pub(crate) fn order_events(
    sql: &mut String,
    args: &mut SqliteArguments,
    rows: &Decoded<'_>,
) -> Result<(), StoreError> {
    let mut events = Vec::new();
    for r in &rows.reservations {
        let (Some(order), Some(user)) = (r.order, r.user) else {
            continue;
        };
        let at = crate::db::from_micros(r.created_at)?;
        let event = OrderFacts {
            order_id: Uuid::from_bytes(order),
            user_id: Uuid::from_bytes(user),
            status: OrderStatus::PendingPayment.as_str(),
            currency: r.currency.into(),
            total_cents: r.unit_price_cents.saturating_mul(i64::from(r.quantity)),
            refunded_cents: 0,
            reservation_id: Some(Uuid::from_bytes(r.id)),
        }
        .event(EventType::OrderCreated, at);
        events.push((*event.id.as_uuid(), r.created_at, event.body()));
    }
    if events.is_empty() {
        return Ok(());
    }
    insert(
        sql,
        args,
        "INSERT INTO webhook_events (id, type, created_at, body) \
         SELECT column1, 'order.created', column2, column3",
        3,
        "column1",
        &events,
        |args, (id, at, body)| {
            add(args, *id)?;
            add(args, *at)?;
            add(args, body.clone())
        },
    )?;
    let mut ids = String::with_capacity(2 + events.len() * 35);
    ids.push('[');
    for (n, (id, _, _)) in events.iter().enumerate() {
        if n > 0 {
            ids.push(',');
        }
        let _ = write!(ids, "\"{}\"", id.simple());
    }
    ids.push(']');
    sql.push_str(DELIVER_ORDERS_CREATED);
    add(args, ids)
}

pub(crate) fn add<'q, T>(args: &mut SqliteArguments, value: T) -> Result<(), StoreError>
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
/// apart with `substr`: sqlx copies every bound blob or text into two allocations of its own, so
/// four ids bound apart cost eight allocations a row where one packed value costs two.
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

/// Marks every contest reservation named (a caller-named buyer, no order) that is live and
/// unexpired as purchased at its time; bound to a `purchase_list`.
const MARK_PURCHASED: &str = "UPDATE reservations SET status = 'purchased', \
     purchased_at = j.value ->> 1 FROM json_each(?) AS j \
     WHERE reservations.id = unhex(j.value ->> 0) AND reservations.status = 'reserved' \
       AND reservations.buyer_ref IS NOT NULL AND reservations.order_id IS NULL \
       AND reservations.expires_at > j.value ->> 1; ";

/// `[["<id in hex>", <micros>], ...]`, written directly: hex digits and integers need no
/// escaping.
fn purchase_list(purchases: impl ExactSizeIterator<Item = (Uuid, i64)>) -> String {
    let mut rows = String::with_capacity(2 + purchases.len() * 52);
    rows.push('[');
    for (n, (id, at)) in purchases.enumerate() {
        if n > 0 {
            rows.push(',');
        }
        let _ = write!(rows, "[\"{}\",{}]", id.simple(), at);
    }
    rows.push(']');
    rows
}

/// Marks every contest reservation named live and unexpired as purchased (at its request's time),
/// then reads them all back: purchased now or before, the answer is the same. Only contest
/// reservations (a caller-named buyer, no order) can be bought this way; any other reservation's
/// code is not found here, and the reservation is left as it is: it is paid through its order.
pub(crate) fn purchase_statements(
    sql: &mut String,
    args: &mut SqliteArguments,
    purchases: &[(ReservationId, OffsetDateTime)],
) -> Result<(), StoreError> {
    let rows = purchase_list(
        purchases
            .iter()
            .map(|(id, at)| (*id.as_uuid(), micros(*at))),
    );
    sql.push_str(MARK_PURCHASED);
    sql.push_str(
        "SELECT r.id, r.sale_id, r.item_no, r.buyer_id, r.buyer_ref, r.quantity, \
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
pub(crate) fn purchase_outcomes(
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
