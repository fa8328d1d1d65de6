//! The group commit's journal on PostgreSQL: a batch of accepted reservations (their orders are
//! derived from them), compatibility-API attempts and purchases, written in one
//! transaction with one statement per table (rows passed as arrays and `UNNEST`ed), so a batch
//! costs a handful of round trips however many reservations it holds. A batch of reservations
//! alone, the common case, is one statement sent by itself: one round trip.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use flashmart_app::StoreError;
use flashmart_app::flash_sale::model::{
    JournalOp, JournalOutcome, NewReservation, PurchaseOutcome,
};
use flashmart_app::ports::ReservationJournal;
use flashmart_app::webhooks::{EventType, OrderFacts, WebhookEvent};
use flashmart_domain::flash_sale::ReservationStatus;
use flashmart_domain::{Currency, OrderStatus, ReservationId};
use sqlx::{AssertSqlSafe, PgConnection};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::PgStore;
use crate::db::{corrupt, map_err};
use crate::flash_sale::{RESERVATION_COLUMNS, get, reservation_from_row};
use crate::webhooks;

#[async_trait]
impl ReservationJournal for PgStore {
    async fn commit(&self, ops: &[JournalOp]) -> Result<Vec<JournalOutcome>, StoreError> {
        let reservations: Vec<&NewReservation> = ops
            .iter()
            .filter_map(|op| match op {
                JournalOp::Reserve(r) => Some(&**r),
                _ => None,
            })
            .collect();
        // Decided by a shared engine: written again identically by a retry or a worker, so a
        // row already there is the same row.
        let decided: Vec<&NewReservation> = ops
            .iter()
            .filter_map(|op| match op {
                JournalOp::Record { reservation, .. } => Some(&**reservation),
                _ => None,
            })
            .collect();
        // A batch of one kind of reservation is one statement, atomic by itself: no BEGIN and
        // COMMIT round trips around it. Unless its orders' webhook events are to be written
        // too (another two statements), which the statement checks for itself.
        let only = if reservations.len() == ops.len() {
            Some((&reservations, Conflicts::Fail))
        } else if decided.len() == ops.len() {
            // A replayed answer's reservation is most likely there already.
            let replays = ops
                .iter()
                .any(|op| matches!(op, JournalOp::Record { replayed: true, .. }));
            Some((
                &decided,
                if replays {
                    Conflicts::Skip
                } else {
                    Conflicts::Rare
                },
            ))
        } else {
            None
        };
        if let Some((batch, conflicts)) = only
            && !(self.order_hooks.load(Ordering::Relaxed) && makes_orders(batch))
        {
            let mut conn = self.pool.acquire().await.map_err(map_err)?;
            let mut written = insert_reservations(&mut conn, batch, conflicts, Hooks::Refuse).await;
            if conflicts == Conflicts::Rare
                && matches!(&written, Err(StoreError::Conflict { constraint })
                    if constraint == "reservations_pkey")
            {
                // Some were there after all (a log writer was quicker): nothing of the failed
                // statement stays, and the batch is written again keeping what is there.
                tracing::debug!(
                    reservations = batch.len(),
                    "a batch of decided reservations met some already stored; written again"
                );
                written =
                    insert_reservations(&mut conn, batch, Conflicts::Skip, Hooks::Refuse).await;
            }
            match written? {
                // Endpoints appeared: nothing was written, and the transaction below writes
                // the batch with its events.
                Some(true) => self.order_hooks.store(true, Ordering::Relaxed),
                Some(false) | None => {
                    return Ok(ops.iter().map(|_| JournalOutcome::Done).collect());
                }
            }
        }
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let made =
            insert_reservations(&mut tx, &reservations, Conflicts::Fail, Hooks::Write).await?;
        let recorded =
            insert_reservations(&mut tx, &decided, Conflicts::Skip, Hooks::Write).await?;
        let hooks = made.or(recorded);
        insert_attempts(&mut tx, ops).await?;
        // Purchases after the inserts (a purchase's reservation may be in this batch). The
        // first purchase of a reservation in the batch is the one applied.
        let mut seen = HashSet::new();
        let marks: Vec<(Uuid, OffsetDateTime)> = ops
            .iter()
            .filter_map(|op| match op {
                JournalOp::Purchase { id, at } | JournalOp::MarkPurchased { id, at } => {
                    Some((*id.as_uuid(), *at))
                }
                _ => None,
            })
            .filter(|(id, _)| seen.insert(*id))
            .collect();
        let mut found = HashMap::new();
        if !marks.is_empty() {
            mark_purchased(&mut tx, &marks).await?;
            let asked: Vec<Uuid> = ops
                .iter()
                .filter_map(|op| match op {
                    JournalOp::Purchase { id, .. } => Some(*id.as_uuid()),
                    _ => None,
                })
                .collect();
            if !asked.is_empty() {
                found = purchases(&mut tx, &asked).await?;
            }
        }
        tx.commit().await.map_err(map_err)?;
        if let Some(found) = hooks {
            self.order_hooks.store(found, Ordering::Relaxed);
        }
        Ok(ops
            .iter()
            .map(|op| match op {
                JournalOp::Purchase { id, .. } => JournalOutcome::Purchase(
                    found.get(id).cloned().unwrap_or(PurchaseOutcome::NotFound),
                ),
                _ => JournalOutcome::Done,
            })
            .collect())
    }
}

/// What a row already there does to an insert: fails the batch (the in-process engine's
/// reservations are new by construction), or is kept (a shared engine's, written again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conflicts {
    Fail,
    Skip,
    /// Kept, but not expected: the statement is written as with `Fail`, and the caller writes
    /// the batch again with `Skip` should it fail on the primary key. `ON CONFLICT` checks
    /// the primary key with an index search of its own for every row (in the scaled benchmark
    /// 0.7-3 µs of PostgreSQL's 8-23 µs per reservation, docs/BENCHMARKS.md), which a shared
    /// engine's new reservations, nearly never there, need not pay.
    Rare,
}

impl Conflicts {
    const fn clause(self) -> &'static str {
        match self {
            Self::Fail | Self::Rare => "",
            Self::Skip => " ON CONFLICT DO NOTHING",
        }
    }
}

/// What the reservations' statement does about webhook endpoints that want `order.created`:
/// writes an event for each order it makes (in a transaction, with the two statements that
/// takes), or, run by itself, inserts nothing at all when there are any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hooks {
    Write,
    Refuse,
}

/// The webhook endpoints that want `order.created`, as a `FROM` clause (a macro, so that the
/// statements built from it are literals).
macro_rules! order_hooks {
    () => {
        "webhook_endpoints WHERE active AND 'order.created' = ANY (events)"
    };
}

/// Whether any of `batch` gets an order (and so an `order.created` event).
fn makes_orders(batch: &[&NewReservation]) -> bool {
    batch
        .iter()
        .any(|r| r.record.order_id.is_some() && r.user_id.is_some())
}

fn int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The reservations. The `pending_payment` order of each one made through the API is not
/// written: it has its reservation's id and is derived from the reservation
/// (`migrations/postgres/0011_flash_sale_orders_derived.sql`) until a payment or a cancellation
/// writes its row. Only its `order.created` webhook events are written here, for the
/// reservations this statement inserted (not those a replay found there).
///
/// Rows go in in the order of their ids: with a shared engine two writers (an instance's group
/// commit and a log writer) may insert the same reservations at once, and two transactions
/// taking the same index entries in different orders deadlock (PostgreSQL then aborts one
/// after `deadlock_timeout`, and its batch is answered 503). In one order, one waits for the
/// other and then finds the rows there.
///
/// Returns whether endpoints that want `order.created` were found, when the batch makes orders
/// (`None` when it makes none: nobody looked). With [`Hooks::Refuse`], `Some(true)` means
/// nothing was inserted.
async fn insert_reservations(
    conn: &mut PgConnection,
    batch: &[&NewReservation],
    conflicts: Conflicts,
    hooks: Hooks,
) -> Result<Option<bool>, StoreError> {
    if batch.is_empty() {
        return Ok(None);
    }
    let mut batch = batch.to_vec();
    batch.sort_unstable_by_key(|r| *r.record.id.as_uuid());
    let n = batch.len();
    let mut ids = Vec::with_capacity(n);
    let mut sales = Vec::with_capacity(n);
    let mut items = Vec::with_capacity(n);
    let mut buyers = Vec::with_capacity(n);
    let mut refs = Vec::with_capacity(n);
    let mut quantities = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);
    let mut expires = Vec::with_capacity(n);
    let mut order_ids = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut fingerprints = Vec::with_capacity(n);
    // The orders made, for their webhook events: (reservation, user, total).
    let mut orders = Vec::new();
    for r in &batch {
        let rec = &r.record;
        if let Some(order) = rec.order_id {
            // A derived order is found by its reservation's id; any other would be lost.
            if order.as_uuid() != rec.id.as_uuid() {
                return Err(corrupt(
                    "reservation's order",
                    "a flash-sale order's id must be its reservation's",
                ));
            }
            if let Some(user) = r.user_id {
                // The engine refuses a reservation whose total does not fit before it is
                // queued; one that got here anyway is a bug, and fails its batch rather than
                // announcing a wrong total.
                let total = r
                    .unit_price_cents
                    .checked_mul(i64::from(rec.quantity))
                    .ok_or_else(|| corrupt("reservation total", "does not fit in 64 bits"))?;
                orders.push((&**r, user, total));
            }
        }
        ids.push(*rec.id.as_uuid());
        sales.push(*rec.sale_id.as_uuid());
        items.push(int(rec.item_no));
        buyers.push(rec.buyer.0);
        refs.push(rec.buyer_ref.as_deref());
        quantities.push(int(rec.quantity));
        created.push(rec.created_at);
        expires.push(rec.expires_at);
        order_ids.push(rec.order_id.map(|o| *o.as_uuid()));
        keys.push(r.idempotency.as_ref().map(|k| k.key.as_str()));
        fingerprints.push(r.idempotency.as_ref().map(|k| k.fingerprint.to_vec()));
    }
    // Refusing, the insert takes no row when an endpoint wants the orders' events: it reads
    // the endpoints in the statement's snapshot, as the `hooks` below does, so the two agree.
    let refuse = hooks == Hooks::Refuse && !orders.is_empty();
    let insert = format!(
        "INSERT INTO reservations (id, sale_id, item_no, buyer_id, buyer_ref, quantity, status, \
         created_at, expires_at, order_id, idempotency_key, idempotency_fingerprint) \
         SELECT id, sale_id, item_no, buyer_id, buyer_ref, quantity, 'reserved', created_at, \
           expires_at, order_id, key, fingerprint \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::integer[], $4::uuid[], $5::text[], \
           $6::integer[], $7::timestamptz[], $8::timestamptz[], $9::uuid[], $10::text[], \
           $11::bytea[]) AS t(id, sale_id, item_no, buyer_id, buyer_ref, quantity, created_at, \
           expires_at, order_id, key, fingerprint){} ORDER BY id{}",
        if refuse {
            concat!(" WHERE NOT EXISTS (SELECT 1 FROM ", order_hooks!(), ")")
        } else {
            ""
        },
        conflicts.clause()
    );
    // The same round trip reads the webhook endpoints that want an event for each order made
    // (none are looked up for a batch without orders, the contest API's), and only when there
    // are some the ids of the reservations inserted.
    let hooks_query = if orders.is_empty() {
        "SELECT '{}'::uuid[] AS ids"
    } else {
        concat!(
            "SELECT coalesce(array_agg(id), '{}') AS ids FROM ",
            order_hooks!()
        )
    };
    let (inserted, endpoints): (Vec<Uuid>, Vec<Uuid>) = sqlx::query_as(AssertSqlSafe(format!(
        "WITH made AS ({insert} RETURNING id), hooks AS ({hooks_query}) \
         SELECT CASE WHEN cardinality(hooks.ids) > 0 \
             THEN (SELECT coalesce(array_agg(id), '{{}}') FROM made) ELSE '{{}}' END, \
           hooks.ids FROM hooks"
    )))
    .bind(&ids)
    .bind(&sales)
    .bind(&items)
    .bind(&buyers)
    .bind(&refs)
    .bind(&quantities)
    .bind(&created)
    .bind(&expires)
    .bind(&order_ids)
    .bind(&keys)
    .bind(&fingerprints)
    .fetch_one(&mut *conn)
    .await
    .map_err(map_err)?;
    if orders.is_empty() {
        return Ok(None);
    }
    if refuse || endpoints.is_empty() {
        return Ok(Some(!endpoints.is_empty()));
    }
    let made: HashSet<Uuid> = inserted.into_iter().collect();
    let events: Vec<WebhookEvent> = orders
        .iter()
        .filter(|(r, _, _)| made.contains(r.record.id.as_uuid()))
        .map(|&(r, user, total)| {
            let id = *r.record.id.as_uuid();
            OrderFacts {
                order_id: id,
                user_id: *user.as_uuid(),
                status: OrderStatus::PendingPayment.as_str(),
                currency: r.currency.as_str().into(),
                total_cents: total,
                refunded_cents: 0,
                reservation_id: Some(id),
            }
            .event(EventType::OrderCreated, r.record.created_at)
        })
        .collect();
    webhooks::write_events(conn, &events, &endpoints).await?;
    Ok(Some(true))
}

async fn insert_attempts(conn: &mut PgConnection, ops: &[JournalOp]) -> Result<(), StoreError> {
    let attempts: Vec<_> = ops
        .iter()
        .filter_map(|op| match op {
            JournalOp::Attempt(a) => Some(&**a),
            _ => None,
        })
        .collect();
    if attempts.is_empty() {
        return Ok(());
    }
    let sales: Vec<Option<Uuid>> = attempts
        .iter()
        .map(|a| a.sale_id.map(|s| *s.as_uuid()))
        .collect();
    let items: Vec<i64> = attempts.iter().map(|a| a.item_no).collect();
    let refs: Vec<&str> = attempts.iter().map(|a| a.buyer_ref.as_str()).collect();
    let at: Vec<OffsetDateTime> = attempts.iter().map(|a| a.at).collect();
    let outcomes: Vec<&str> = attempts.iter().map(|a| a.outcome).collect();
    let codes: Vec<Option<&str>> = attempts.iter().map(|a| a.code.as_deref()).collect();
    sqlx::query(
        "INSERT INTO checkout_attempts (sale_id, item_no, buyer_ref, at, outcome, code) \
         SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::timestamptz[], \
           $5::text[], $6::text[])",
    )
    .bind(&sales)
    .bind(&items)
    .bind(&refs)
    .bind(&at)
    .bind(&outcomes)
    .bind(&codes)
    .execute(conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// Marks every contest reservation named (a caller-named buyer, no order) that is live and
/// unexpired as purchased at its time. A shopper's reservation is paid through its order.
async fn mark_purchased(
    conn: &mut PgConnection,
    marks: &[(Uuid, OffsetDateTime)],
) -> Result<(), StoreError> {
    let (ids, at): (Vec<Uuid>, Vec<OffsetDateTime>) = marks.iter().copied().unzip();
    sqlx::query(
        "UPDATE reservations r SET status = 'purchased', purchased_at = m.at \
         FROM UNNEST($1::uuid[], $2::timestamptz[]) AS m(id, at) \
         WHERE r.id = m.id AND r.status = 'reserved' AND r.buyer_ref IS NOT NULL \
           AND r.order_id IS NULL AND r.expires_at > m.at",
    )
    .bind(&ids)
    .bind(&at)
    .execute(conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// What each contest reservation asked for is now: purchased (now or before: the same answer),
/// or expired; one that is not a contest reservation is not found.
async fn purchases(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<HashMap<ReservationId, PurchaseOutcome>, StoreError> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {RESERVATION_COLUMNS}, i.name AS item_name, i.price_cents AS item_price, \
           s.currency AS currency \
         FROM reservations r \
         JOIN flash_sale_items i ON i.sale_id = r.sale_id AND i.no = r.item_no \
         JOIN flash_sales s ON s.id = r.sale_id \
         WHERE r.id = ANY($1) AND r.buyer_ref IS NOT NULL AND r.order_id IS NULL"
    )))
    .bind(ids)
    .fetch_all(conn)
    .await
    .map_err(map_err)?;
    let mut outcomes = HashMap::with_capacity(rows.len());
    for row in &rows {
        let reservation = reservation_from_row(row)?;
        let id = reservation.id;
        let outcome = if reservation.status == ReservationStatus::Purchased {
            let currency: String = get(row, "currency")?;
            PurchaseOutcome::Purchased {
                item_name: get(row, "item_name")?,
                unit_price_cents: get(row, "item_price")?,
                currency: Currency::parse(&currency)
                    .map_err(|e| corrupt("flash_sales.currency", e))?,
                reservation: Box::new(reservation),
            }
        } else {
            PurchaseOutcome::Expired
        };
        outcomes.insert(id, outcome);
    }
    Ok(outcomes)
}
