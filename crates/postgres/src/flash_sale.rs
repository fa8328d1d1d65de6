//! Flash sales in PostgreSQL: sales, items, schedules, reservations, and the state an engine is
//! loaded from (the in-process ledger at start, or Redis when a sale is loaded or rebuilt).

use async_trait::async_trait;
use flashmart_app::audit::AuditEntry;
use flashmart_app::flash_sale::model::{
    BuyerId, IdempotencyRecord, ItemRecord, LiveItemState, LiveSaleState, NewItem, Released,
    ReservationRecord, SaleInsert, SaleRecord, Schedule, StoredIdempotency, StoredStats,
};
use flashmart_app::ports::FlashSaleStore;
use flashmart_app::{Page, PageRequest, StoreError};
use flashmart_domain::flash_sale::{ReservationStatus, SalePhase, SaleRules, SaleWindow};
use flashmart_domain::{Currency, OrderId, OrderStatus, ReservationId, SaleId, ScheduleId};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgConnection, Postgres, Row as _};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::PgStore;
use crate::db::{corrupt, map_err, order_may_become};
use crate::webhooks;

macro_rules! select_sales {
    ($rest:literal) => {
        concat!(
            "SELECT id, name, starts_at, ends_at, per_user_limit, reservation_ttl_secs, currency, \
             schedule_id, slot, item_count, total_stock, created_at FROM flash_sales ",
            $rest
        )
    };
}

/// The columns `reservation_from_row` reads, from `reservations r`.
pub(crate) const RESERVATION_COLUMNS: &str = "r.id, r.sale_id, r.item_no, r.buyer_id, \
     r.buyer_ref, r.quantity, r.status, r.created_at, r.expires_at, r.order_id, r.purchased_at";

macro_rules! select_schedules {
    ($rest:literal) => {
        concat!(
            "SELECT id, name, recurrence, item_count, price_cents, currency, per_user_limit, \
             reservation_ttl_secs, duration_secs, active, created_at FROM flash_sale_schedules ",
            $rest
        )
    };
}

pub(crate) fn get<'r, T>(row: &'r PgRow, col: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(col).map_err(map_err)
}

pub(crate) fn count<N>(n: N, what: &str) -> Result<u32, StoreError>
where
    u32: TryFrom<N>,
    <u32 as TryFrom<N>>::Error: std::fmt::Display,
{
    u32::try_from(n).map_err(|e| corrupt(what, e))
}

fn sale_from_row(row: &PgRow) -> Result<SaleRecord, StoreError> {
    let window = SaleWindow::new(get(row, "starts_at")?, get(row, "ends_at")?)
        .map_err(|e| corrupt("flash_sales window", e))?;
    let rules = SaleRules::new(
        window,
        i64::from(get::<i32>(row, "per_user_limit")?),
        get(row, "reservation_ttl_secs")?,
    )
    .map_err(|e| corrupt("flash_sales rules", e))?;
    let schedule: Option<Uuid> = get(row, "schedule_id")?;
    let slot: Option<OffsetDateTime> = get(row, "slot")?;
    let currency: String = get(row, "currency")?;
    Ok(SaleRecord {
        id: SaleId::from_uuid(get(row, "id")?),
        name: get(row, "name")?,
        rules,
        currency: Currency::parse(&currency).map_err(|e| corrupt("flash_sales.currency", e))?,
        slot: schedule
            .zip(slot)
            .map(|(s, t)| (ScheduleId::from_uuid(s), t)),
        item_count: count(get::<i32>(row, "item_count")?, "flash_sales.item_count")?,
        total_stock: u64::try_from(get::<i64>(row, "total_stock")?)
            .map_err(|e| corrupt("flash_sales.total_stock", e))?,
        created_at: get(row, "created_at")?,
    })
}

pub(crate) fn reservation_from_row(row: &PgRow) -> Result<ReservationRecord, StoreError> {
    let status: String = get(row, "status")?;
    let order: Option<Uuid> = get(row, "order_id")?;
    Ok(ReservationRecord {
        id: ReservationId::from_uuid(get(row, "id")?),
        sale_id: SaleId::from_uuid(get(row, "sale_id")?),
        item_no: count(get::<i32>(row, "item_no")?, "reservations.item_no")?,
        buyer: BuyerId(get(row, "buyer_id")?),
        buyer_ref: get(row, "buyer_ref")?,
        quantity: count(get::<i32>(row, "quantity")?, "reservations.quantity")?,
        status: status
            .parse()
            .map_err(|e| corrupt("reservations.status", e))?,
        created_at: get(row, "created_at")?,
        expires_at: get(row, "expires_at")?,
        order_id: order.map(OrderId::from_uuid),
        purchased_at: get(row, "purchased_at")?,
    })
}

fn schedule_from_row(row: &PgRow) -> Result<Schedule, StoreError> {
    let recurrence: String = get(row, "recurrence")?;
    let currency: String = get(row, "currency")?;
    Ok(Schedule {
        id: ScheduleId::from_uuid(get(row, "id")?),
        name: get(row, "name")?,
        recurrence: recurrence
            .parse()
            .map_err(|e| corrupt("flash_sale_schedules.recurrence", e))?,
        item_count: count(
            get::<i32>(row, "item_count")?,
            "flash_sale_schedules.item_count",
        )?,
        price_cents: get(row, "price_cents")?,
        currency: Currency::parse(&currency)
            .map_err(|e| corrupt("flash_sale_schedules.currency", e))?,
        per_user_limit: count(
            get::<i32>(row, "per_user_limit")?,
            "flash_sale_schedules.per_user_limit",
        )?,
        reservation_ttl_secs: get(row, "reservation_ttl_secs")?,
        duration_secs: get(row, "duration_secs")?,
        active: get(row, "active")?,
        created_at: get(row, "created_at")?,
    })
}

fn int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

async fn insert_items(
    conn: &mut PgConnection,
    sale: SaleId,
    items: &[NewItem],
) -> Result<(), StoreError> {
    let numbers: Vec<i32> = (1..=items.len())
        .map(|n| i32::try_from(n).unwrap_or(i32::MAX))
        .collect();
    let names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
    let images: Vec<Option<&str>> = items.iter().map(|i| i.image_url.as_deref()).collect();
    let products: Vec<Option<Uuid>> = items.iter().map(|i| i.product_id).collect();
    let prices: Vec<i64> = items.iter().map(|i| i.price_cents).collect();
    let stock: Vec<i64> = items.iter().map(|i| i64::from(i.stock)).collect();
    sqlx::query(
        "INSERT INTO flash_sale_items (sale_id, no, name, image_url, product_id, price_cents, \
         stock) SELECT $1, * FROM UNNEST($2::integer[], $3::text[], $4::text[], $5::uuid[], \
         $6::bigint[], $7::bigint[])",
    )
    .bind(sale.as_uuid())
    .bind(&numbers)
    .bind(&names)
    .bind(&images)
    .bind(&products)
    .bind(&prices)
    .bind(&stock)
    .execute(conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// A sale's items with what is held of each, and what each buyer holds: what an engine is loaded
/// from. Read in the caller's transaction, so both come from one snapshot.
async fn live_state(
    conn: &mut PgConnection,
    sale: SaleRecord,
) -> Result<LiveSaleState, StoreError> {
    let items: Vec<(i32, i64, i64, String, i64)> = sqlx::query_as(
        "SELECT i.no, i.stock, i.price_cents, i.name, \
           coalesce((SELECT sum(r.quantity) FROM reservations r \
                     WHERE r.sale_id = i.sale_id AND r.item_no = i.no \
                       AND r.status IN ('reserved', 'purchased')), 0)::bigint \
         FROM flash_sale_items i WHERE i.sale_id = $1 ORDER BY i.no",
    )
    .bind(sale.id.as_uuid())
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)?;
    let buyers: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT buyer_id, sum(quantity)::bigint FROM reservations \
         WHERE sale_id = $1 AND status IN ('reserved', 'purchased') GROUP BY buyer_id",
    )
    .bind(sale.id.as_uuid())
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)?;
    let items = items
        .into_iter()
        .map(|(no, stock, price_cents, name, held)| {
            Ok(LiveItemState {
                no: count(no, "flash_sale_items.no")?,
                stock: count(stock, "flash_sale_items.stock")?,
                price_cents,
                name: name.into(),
                held: count(held, "reservations.quantity")?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    let buyers = buyers
        .into_iter()
        .map(|(b, q)| Ok((BuyerId(b), count(q, "reservations.quantity")?)))
        .collect::<Result<_, StoreError>>()?;
    Ok(LiveSaleState {
        sale,
        items,
        buyers,
    })
}

/// A read-only transaction at REPEATABLE READ: every statement in it sees one snapshot.
async fn snapshot(store: &PgStore) -> Result<sqlx::Transaction<'static, Postgres>, StoreError> {
    let mut tx = store.pool.begin().await.map_err(map_err)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
    Ok(tx)
}

fn limit_offset(page: PageRequest) -> (i64, i64) {
    (
        i64::from(page.per_page()),
        i64::try_from(page.offset()).unwrap_or(i64::MAX),
    )
}

fn total(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[async_trait]
impl FlashSaleStore for PgStore {
    async fn insert_sale(
        &self,
        sale: &SaleRecord,
        items: &[NewItem],
        audit: Option<&AuditEntry>,
    ) -> Result<SaleInsert, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let (schedule, slot) = match sale.slot {
            Some((s, t)) => (Some(*s.as_uuid()), Some(t)),
            None => (None, None),
        };
        let inserted = sqlx::query(
            "INSERT INTO flash_sales (id, name, starts_at, ends_at, per_user_limit, \
             reservation_ttl_secs, currency, schedule_id, slot, item_count, total_stock, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (schedule_id, slot) WHERE schedule_id IS NOT NULL DO NOTHING",
        )
        .bind(sale.id.as_uuid())
        .bind(&sale.name)
        .bind(sale.rules.window().starts_at())
        .bind(sale.rules.window().ends_at())
        .bind(int(sale.rules.per_user_limit()))
        .bind(sale.rules.reservation_ttl().whole_seconds())
        .bind(sale.currency.as_str())
        .bind(schedule)
        .bind(slot)
        .bind(int(sale.item_count))
        .bind(i64::try_from(sale.total_stock).unwrap_or(i64::MAX))
        .bind(sale.created_at)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected()
            == 1;
        if !inserted {
            return Ok(SaleInsert::SlotTaken);
        }
        // Products in id order, the order every writer locks them in (checkout too).
        let mut taken: Vec<(Uuid, i64)> = items
            .iter()
            .filter_map(|i| Some((i.product_id?, i64::from(i.stock))))
            .collect();
        taken.sort_by_key(|(id, _)| *id);
        for (product, stock) in taken {
            let updated = sqlx::query(
                "UPDATE products SET stock = stock - $1, version = version + 1 \
                 WHERE id = $2 AND stock >= $1 AND deleted_at IS NULL",
            )
            .bind(stock)
            .bind(product)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            if updated.rows_affected() == 0 {
                let available: Option<i64> = sqlx::query_scalar(
                    "SELECT stock FROM products WHERE id = $1 AND deleted_at IS NULL",
                )
                .bind(product)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
                return Ok(SaleInsert::ProductShort {
                    product_id: product,
                    available: available.map_or(0, |a| u32::try_from(a).unwrap_or(u32::MAX)),
                });
            }
        }
        insert_items(&mut tx, sale.id, items).await?;
        if let Some(audit) = audit {
            crate::audit::record(&mut tx, audit).await?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(SaleInsert::Stored)
    }

    async fn return_unsold(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // The items are locked (SKIP LOCKED: another instance's sweep takes others), then what
        // each holds and sold is counted under the lock.
        let items: Vec<(Uuid, i32, Uuid, i64, i64, i64, i64)> = sqlx::query_as(
            "WITH due AS ( \
               SELECT i.sale_id, i.no, i.product_id, i.stock, i.returned \
               FROM flash_sale_items i JOIN flash_sales s ON s.id = i.sale_id \
               WHERE i.product_id IS NOT NULL AND NOT i.settled AND s.ends_at <= $1 \
               ORDER BY i.sale_id, i.no LIMIT 500 FOR UPDATE OF i SKIP LOCKED) \
             SELECT d.sale_id, d.no, d.product_id, d.stock, d.returned, \
               coalesce(sum(r.quantity) FILTER (WHERE r.status = 'reserved'), 0)::bigint, \
               coalesce(sum(r.quantity) FILTER (WHERE r.status = 'purchased'), 0)::bigint \
             FROM due d LEFT JOIN reservations r ON r.sale_id = d.sale_id AND r.item_no = d.no \
             GROUP BY d.sale_id, d.no, d.product_id, d.stock, d.returned \
             ORDER BY d.product_id",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        let mut given = 0;
        for (sale, no, product, stock, returned, held, bought) in items {
            // After the end nothing more is reserved, so what is kept only shrinks: what is
            // neither kept nor given back yet is the product's again.
            let give = (stock - held - bought - returned).max(0);
            if give > 0 {
                sqlx::query(
                    "UPDATE products SET stock = stock + $1, version = version + 1 WHERE id = $2",
                )
                .bind(give)
                .bind(product)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            }
            sqlx::query(
                "UPDATE flash_sale_items SET returned = returned + $1, settled = $2 \
                 WHERE sale_id = $3 AND no = $4",
            )
            .bind(give)
            .bind(held == 0)
            .bind(sale)
            .bind(no)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            given += u64::try_from(give).unwrap_or(0);
        }
        tx.commit().await.map_err(map_err)?;
        Ok(given)
    }

    async fn sale(&self, id: SaleId) -> Result<Option<SaleRecord>, StoreError> {
        sqlx::query(select_sales!("WHERE id = $1"))
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?
            .as_ref()
            .map(sale_from_row)
            .transpose()
    }

    async fn sale_for_slot(
        &self,
        schedule: ScheduleId,
        slot: OffsetDateTime,
    ) -> Result<Option<SaleRecord>, StoreError> {
        sqlx::query(select_sales!("WHERE schedule_id = $1 AND slot = $2"))
            .bind(schedule.as_uuid())
            .bind(slot)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?
            .as_ref()
            .map(sale_from_row)
            .transpose()
    }

    async fn list_sales(
        &self,
        phase: Option<SalePhase>,
        now: OffsetDateTime,
        page: PageRequest,
    ) -> Result<Page<SaleRecord>, StoreError> {
        let (filter, order) = match phase {
            None => ("$1 = $1", "starts_at DESC, id DESC"),
            Some(SalePhase::Upcoming) => ("starts_at > $1", "starts_at, id"),
            Some(SalePhase::Live) => ("starts_at <= $1 AND ends_at > $1", "starts_at, id"),
            Some(SalePhase::Ended) => ("ends_at <= $1", "ends_at DESC, id DESC"),
        };
        let (limit, offset) = limit_offset(page);
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, name, starts_at, ends_at, per_user_limit, reservation_ttl_secs, \
             currency, schedule_id, slot, item_count, total_stock, created_at, \
             count(*) OVER () AS total FROM flash_sales WHERE {filter} \
             ORDER BY {order} LIMIT $2 OFFSET $3"
        )))
        .bind(now)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let found = match rows.first() {
            Some(row) => get::<i64>(row, "total")?,
            None if offset == 0 => 0,
            // Past the last page: the count comes alone.
            None => sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT count(*) FROM flash_sales WHERE {filter}"
            )))
            .bind(now)
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?,
        };
        let sales = rows.iter().map(sale_from_row).collect::<Result<_, _>>()?;
        Ok(Page::new(page, sales, total(found)))
    }

    async fn items(&self, sale: SaleId, page: PageRequest) -> Result<Page<ItemRecord>, StoreError> {
        let (limit, offset) = limit_offset(page);
        let found: i64 =
            sqlx::query_scalar("SELECT count(*) FROM flash_sale_items WHERE sale_id = $1")
                .bind(sale.as_uuid())
                .fetch_one(&self.pool)
                .await
                .map_err(map_err)?;
        let rows = sqlx::query(
            "SELECT no, name, image_url, product_id, price_cents, stock FROM flash_sale_items \
             WHERE sale_id = $1 ORDER BY no LIMIT $2 OFFSET $3",
        )
        .bind(sale.as_uuid())
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let items = rows
            .iter()
            .map(|row| {
                Ok(ItemRecord {
                    sale_id: sale,
                    no: count_col(row, "no")?,
                    name: get(row, "name")?,
                    image_url: get(row, "image_url")?,
                    product_id: get(row, "product_id")?,
                    price_cents: get(row, "price_cents")?,
                    stock: count(get::<i64>(row, "stock")?, "flash_sale_items.stock")?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Page::new(page, items, total(found)))
    }

    async fn live_sales(&self, since: OffsetDateTime) -> Result<Vec<LiveSaleState>, StoreError> {
        let mut tx = snapshot(self).await?;
        let sales = sqlx::query(select_sales!("WHERE ends_at > $1 ORDER BY starts_at"))
            .bind(since)
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?
            .iter()
            .map(sale_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let mut states = Vec::with_capacity(sales.len());
        for sale in sales {
            states.push(live_state(&mut tx, sale).await?);
        }
        tx.commit().await.map_err(map_err)?;
        Ok(states)
    }

    async fn live_sale(&self, id: SaleId) -> Result<Option<LiveSaleState>, StoreError> {
        let mut tx = snapshot(self).await?;
        let Some(row) = sqlx::query(select_sales!("WHERE id = $1"))
            .bind(id.as_uuid())
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?
        else {
            return Ok(None);
        };
        let state = live_state(&mut tx, sale_from_row(&row)?).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some(state))
    }

    async fn reservation(
        &self,
        id: ReservationId,
    ) -> Result<Option<ReservationRecord>, StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {RESERVATION_COLUMNS} FROM reservations r WHERE r.id = $1"
        )))
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?
        .as_ref()
        .map(reservation_from_row)
        .transpose()
    }

    async fn stored_reservations(
        &self,
        ids: &[ReservationId],
    ) -> Result<Vec<ReservationId>, StoreError> {
        let ids: Vec<Uuid> = ids.iter().map(|id| *id.as_uuid()).collect();
        let found: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM reservations WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(found.into_iter().map(ReservationId::from_uuid).collect())
    }

    async fn reservations(
        &self,
        sale: SaleId,
        page: PageRequest,
        after: Option<ReservationId>,
    ) -> Result<Page<ReservationRecord>, StoreError> {
        let found: i64 = sqlx::query_scalar("SELECT count(*) FROM reservations WHERE sale_id = $1")
            .bind(sale.as_uuid())
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        let (limit, offset) = limit_offset(page);
        let rows = match after {
            Some(after) => {
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT {RESERVATION_COLUMNS} FROM reservations r \
                     WHERE r.sale_id = $1 AND r.id > $2 ORDER BY r.id LIMIT $3"
                )))
                .bind(sale.as_uuid())
                .bind(after.as_uuid())
                .bind(limit)
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT {RESERVATION_COLUMNS} FROM reservations r \
                     WHERE r.sale_id = $1 ORDER BY r.id LIMIT $2 OFFSET $3"
                )))
                .bind(sale.as_uuid())
                .bind(limit)
                .bind(offset)
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(map_err)?;
        let list = rows
            .iter()
            .map(reservation_from_row)
            .collect::<Result<_, _>>()?;
        Ok(Page::new(page, list, total(found)))
    }

    async fn stats(&self, sale: SaleId) -> Result<StoredStats, StoreError> {
        let row = sqlx::query(
            "SELECT \
               (SELECT total_stock FROM flash_sales WHERE id = $1) AS stock, \
               coalesce(sum(quantity) FILTER (WHERE status = 'reserved'), 0)::bigint AS reserved, \
               coalesce(sum(quantity) FILTER (WHERE status = 'purchased'), 0)::bigint AS sold, \
               coalesce(sum(quantity) FILTER (WHERE status IN ('expired', 'cancelled')), 0)::bigint \
                 AS released, \
               count(DISTINCT buyer_id) FILTER (WHERE status IN ('reserved', 'purchased')) \
                 AS buyers, \
               (SELECT count(*) FROM checkout_attempts WHERE sale_id = $1) AS attempts \
             FROM reservations WHERE sale_id = $1",
        )
        .bind(sale.as_uuid())
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        let n = |col: &str| -> Result<u64, StoreError> {
            let v: Option<i64> = get(&row, col)?;
            u64::try_from(v.unwrap_or(0)).map_err(|e| corrupt("stats", e))
        };
        Ok(StoredStats {
            stock: n("stock")?,
            reserved: n("reserved")?,
            sold: n("sold")?,
            released: n("released")?,
            buyers: n("buyers")?,
            attempts: n("attempts")?,
        })
    }

    async fn idempotency_since(
        &self,
        since: OffsetDateTime,
    ) -> Result<Vec<StoredIdempotency>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RESERVATION_COLUMNS}, r.idempotency_key, r.idempotency_fingerprint \
             FROM reservations r WHERE r.idempotency_key IS NOT NULL AND r.created_at >= $1"
        )))
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                let key: String = get(row, "idempotency_key")?;
                let fp: Vec<u8> = get(row, "idempotency_fingerprint")?;
                let fingerprint = <[u8; 16]>::try_from(fp.as_slice())
                    .map_err(|e| corrupt("reservations.idempotency_fingerprint", e))?;
                let mut reservation = reservation_from_row(row)?;
                // The answer replayed is the first one.
                reservation.status = ReservationStatus::Reserved;
                reservation.purchased_at = None;
                Ok(StoredIdempotency {
                    buyer: reservation.buyer,
                    record: IdempotencyRecord { key, fingerprint },
                    reservation,
                })
            })
            .collect()
    }

    async fn expire_due(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Released>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // SKIP LOCKED: two sweepers (two instances) share the due reservations. A payment or a
        // cancellation locks the order first and the reservation second; the sweep takes both
        // without waiting for either, so it never waits in the other order (a deadlock), and a
        // reservation whose order is busy is left to the next sweep. An order still derived
        // from its reservation has no row to lock: whoever writes its row holds the reservation
        // meanwhile (`shop::write_derived_order`), so the sweep skips it then.
        let rows: Vec<(Option<Uuid>, Uuid, i32, Uuid, i32, Uuid)> = sqlx::query_as(
            "WITH due AS (SELECT id, order_id FROM reservations \
                          WHERE status = 'reserved' AND expires_at <= $1 \
                          ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED), \
                  free AS (SELECT id FROM orders WHERE id IN (SELECT order_id FROM due) \
                           FOR UPDATE SKIP LOCKED) \
             UPDATE reservations SET status = 'expired', released_at = $1 \
             WHERE id IN (SELECT id FROM due \
                          WHERE order_id IS NULL OR order_id IN (SELECT id FROM free) \
                             OR NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = due.order_id)) \
               AND status = 'reserved' \
             RETURNING order_id, sale_id, item_no, buyer_id, quantity, id",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        let orders: Vec<Uuid> = rows.iter().filter_map(|r| r.0).collect();
        if !orders.is_empty() {
            sqlx::query(AssertSqlSafe(format!(
                "UPDATE orders SET status = '{}', updated_at = $1 WHERE id = ANY($2) AND {}",
                OrderStatus::Expired.as_str(),
                order_may_become(OrderStatus::Expired)
            )))
            .bind(now)
            .bind(&orders)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        let released: Vec<(Option<Uuid>, Released)> = rows
            .into_iter()
            .map(|(order, sale, item_no, buyer, quantity, id)| {
                Ok((
                    order,
                    Released {
                        reservation: ReservationId::from_uuid(id),
                        sale_id: SaleId::from_uuid(sale),
                        item_no: count(item_no, "reservations.item_no")?,
                        buyer: BuyerId(buyer),
                        quantity: count(quantity, "reservations.quantity")?,
                    },
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        webhooks::expired(&mut tx, now, &released).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(released.into_iter().map(|(_, r)| r).collect())
    }

    async fn insert_schedule(
        &self,
        schedule: &Schedule,
        audit: Option<&AuditEntry>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query(
            "INSERT INTO flash_sale_schedules (id, name, recurrence, item_count, price_cents, \
             currency, per_user_limit, reservation_ttl_secs, duration_secs, active, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(schedule.id.as_uuid())
        .bind(&schedule.name)
        .bind(schedule.recurrence.as_str())
        .bind(int(schedule.item_count))
        .bind(schedule.price_cents)
        .bind(schedule.currency.as_str())
        .bind(int(schedule.per_user_limit))
        .bind(schedule.reservation_ttl_secs)
        .bind(schedule.duration_secs)
        .bind(schedule.active)
        .bind(schedule.created_at)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if let Some(audit) = audit {
            crate::audit::record(&mut tx, audit).await?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn schedules(&self, page: PageRequest) -> Result<Page<Schedule>, StoreError> {
        let found: i64 = sqlx::query_scalar("SELECT count(*) FROM flash_sale_schedules")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        let (limit, offset) = limit_offset(page);
        let rows = sqlx::query(select_schedules!(
            "ORDER BY created_at, id LIMIT $1 OFFSET $2"
        ))
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let list = rows
            .iter()
            .map(schedule_from_row)
            .collect::<Result<_, _>>()?;
        Ok(Page::new(page, list, total(found)))
    }

    async fn schedule_by_name(&self, name: &str) -> Result<Option<Schedule>, StoreError> {
        sqlx::query(select_schedules!("WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?
            .as_ref()
            .map(schedule_from_row)
            .transpose()
    }
}

fn count_col(row: &PgRow, col: &str) -> Result<u32, StoreError> {
    count(get::<i32>(row, col)?, col)
}
