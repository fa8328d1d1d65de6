//! Flash sales in SQLite: sales, items, schedules, reservations and the state the in-memory ledger
//! is rebuilt from.

use async_trait::async_trait;
use flashmart_app::audit::AuditEntry;
use flashmart_app::flash_sale::model::{
    BuyerId, IdempotencyRecord, ItemRecord, LiveItemState, LiveSaleState, NewItem, Released,
    ReservationRecord, SaleInsert, SaleRecord, Schedule, StoredIdempotency, StoredStats,
};
use flashmart_app::ports::FlashSaleStore;
use flashmart_app::{Page, PageRequest, StoreError};
use flashmart_domain::flash_sale::{SalePhase, SaleRules, SaleWindow};
use flashmart_domain::{Currency, OrderId, OrderStatus, ReservationId, SaleId, ScheduleId};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row as _, Sqlite, SqliteConnection};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::SqliteStore;
use crate::db::{corrupt, from_micros, map_err, micros, order_may_become};
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

macro_rules! select_reservations {
    ($rest:literal) => {
        concat!(
            "SELECT r.id, r.sale_id, r.item_no, r.buyer_id, r.buyer_ref, r.quantity, \
             r.status, r.created_at, r.expires_at, r.order_id, r.purchased_at, \
             r.idempotency_key, r.idempotency_fingerprint FROM reservations r ",
            $rest
        )
    };
}

macro_rules! select_schedules {
    ($rest:literal) => {
        concat!(
            "SELECT id, name, recurrence, item_count, price_cents, currency, per_user_limit, \
             reservation_ttl_secs, duration_secs, active, created_at FROM flash_sale_schedules ",
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

fn count(n: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(n).map_err(|e| corrupt(what, e))
}

fn sale_from_row(row: &SqliteRow) -> Result<SaleRecord, StoreError> {
    let window = SaleWindow::new(
        from_micros(get(row, "starts_at")?)?,
        from_micros(get(row, "ends_at")?)?,
    )
    .map_err(|e| corrupt("flash_sales window", e))?;
    let rules = SaleRules::new(
        window,
        get(row, "per_user_limit")?,
        get(row, "reservation_ttl_secs")?,
    )
    .map_err(|e| corrupt("flash_sales rules", e))?;
    let schedule: Option<Uuid> = get(row, "schedule_id")?;
    let slot: Option<i64> = get(row, "slot")?;
    let slot = match (schedule, slot) {
        (Some(s), Some(t)) => Some((ScheduleId::from_uuid(s), from_micros(t)?)),
        _ => None,
    };
    let currency: String = get(row, "currency")?;
    Ok(SaleRecord {
        id: SaleId::from_uuid(get(row, "id")?),
        name: get(row, "name")?,
        rules,
        currency: Currency::parse(&currency).map_err(|e| corrupt("flash_sales.currency", e))?,
        slot,
        item_count: count(get(row, "item_count")?, "flash_sales.item_count")?,
        total_stock: u64::try_from(get::<i64>(row, "total_stock")?)
            .map_err(|e| corrupt("flash_sales.total_stock", e))?,
        created_at: from_micros(get(row, "created_at")?)?,
    })
}

pub(crate) fn reservation_from_row(row: &SqliteRow) -> Result<ReservationRecord, StoreError> {
    let status: String = get(row, "status")?;
    let order: Option<Uuid> = get(row, "order_id")?;
    let purchased_at: Option<i64> = get(row, "purchased_at")?;
    Ok(ReservationRecord {
        id: ReservationId::from_uuid(get(row, "id")?),
        sale_id: SaleId::from_uuid(get(row, "sale_id")?),
        item_no: count(get(row, "item_no")?, "reservations.item_no")?,
        buyer: BuyerId(get(row, "buyer_id")?),
        buyer_ref: get(row, "buyer_ref")?,
        quantity: count(get(row, "quantity")?, "reservations.quantity")?,
        status: status
            .parse()
            .map_err(|e| corrupt("reservations.status", e))?,
        created_at: from_micros(get(row, "created_at")?)?,
        expires_at: from_micros(get(row, "expires_at")?)?,
        order_id: order.map(OrderId::from_uuid),
        purchased_at: purchased_at.map(from_micros).transpose()?,
    })
}

fn schedule_from_row(row: &SqliteRow) -> Result<Schedule, StoreError> {
    let recurrence: String = get(row, "recurrence")?;
    let currency: String = get(row, "currency")?;
    Ok(Schedule {
        id: ScheduleId::from_uuid(get(row, "id")?),
        name: get(row, "name")?,
        recurrence: recurrence
            .parse()
            .map_err(|e| corrupt("flash_sale_schedules.recurrence", e))?,
        item_count: count(get(row, "item_count")?, "flash_sale_schedules.item_count")?,
        price_cents: get(row, "price_cents")?,
        currency: Currency::parse(&currency)
            .map_err(|e| corrupt("flash_sale_schedules.currency", e))?,
        per_user_limit: count(
            get(row, "per_user_limit")?,
            "flash_sale_schedules.per_user_limit",
        )?,
        reservation_ttl_secs: get(row, "reservation_ttl_secs")?,
        duration_secs: get(row, "duration_secs")?,
        active: get::<i64>(row, "active")? != 0,
        created_at: from_micros(get(row, "created_at")?)?,
    })
}

/// Rows per multi-row `INSERT`, largest first: a batch is split greedily into these sizes, so a
/// table sees at most four statement shapes and every one stays in the prepared-statement cache.
pub(crate) const CHUNKS: [usize; 4] = [256, 32, 4, 1];

/// Splits `items` into chunks of the sizes in `CHUNKS`.
pub(crate) fn chunks<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let size = CHUNKS.iter().copied().find(|c| *c <= items.len())?;
        let (head, tail) = items.split_at(size);
        items = tail;
        Some(head)
    })
}

async fn insert_items(
    conn: &mut SqliteConnection,
    sale: SaleId,
    items: &[NewItem],
) -> Result<(), StoreError> {
    let numbered: Vec<(u32, &NewItem)> = (1u32..).zip(items.iter()).collect();
    for chunk in chunks(&numbered) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO flash_sale_items (sale_id, no, name, image_url, product_id, price_cents, stock) ",
        );
        qb.push_values(chunk, |mut b, (no, item)| {
            b.push_bind(sale.as_uuid())
                .push_bind(i64::from(*no))
                .push_bind(item.name.as_str())
                .push_bind(item.image_url.as_deref())
                .push_bind(item.product_id)
                .push_bind(item.price_cents)
                .push_bind(i64::from(item.stock));
        });
        qb.build().execute(&mut *conn).await.map_err(map_err)?;
    }
    Ok(())
}

async fn live_state(
    conn: &mut SqliteConnection,
    sale: SaleRecord,
) -> Result<LiveSaleState, StoreError> {
    let items: Vec<(i64, i64, i64, String)> = sqlx::query_as(
        "SELECT no, stock, price_cents, name FROM flash_sale_items WHERE sale_id = ? ORDER BY no",
    )
    .bind(sale.id.as_uuid())
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)?;
    let held: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT item_no, SUM(quantity) FROM reservations \
         WHERE sale_id = ? AND status IN ('reserved', 'purchased') GROUP BY item_no",
    )
    .bind(sale.id.as_uuid())
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)?;
    let buyers: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT buyer_id, SUM(quantity) FROM reservations \
         WHERE sale_id = ? AND status IN ('reserved', 'purchased') GROUP BY buyer_id",
    )
    .bind(sale.id.as_uuid())
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)?;

    let mut items: Vec<LiveItemState> = items
        .into_iter()
        .map(|(no, stock, price_cents, name)| {
            Ok(LiveItemState {
                no: count(no, "flash_sale_items.no")?,
                stock: count(stock, "flash_sale_items.stock")?,
                price_cents,
                name: name.into(),
                held: 0,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    for (no, quantity) in held {
        let index = usize::try_from(no - 1).map_err(|e| corrupt("reservations.item_no", e))?;
        if let Some(item) = items.get_mut(index) {
            item.held = count(quantity, "reservations.quantity")?;
        }
    }
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

fn offset(page: PageRequest) -> i64 {
    i64::try_from(page.offset()).unwrap_or(i64::MAX)
}

#[async_trait]
impl FlashSaleStore for SqliteStore {
    async fn insert_sale(
        &self,
        sale: &SaleRecord,
        items: &[NewItem],
        audit: Option<&AuditEntry>,
    ) -> Result<SaleInsert, StoreError> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let (schedule, slot) = match sale.slot {
            Some((s, t)) => (Some(*s.as_uuid()), Some(micros(t))),
            None => (None, None),
        };
        let inserted = sqlx::query(
            "INSERT INTO flash_sales (id, name, starts_at, ends_at, per_user_limit, \
             reservation_ttl_secs, currency, schedule_id, slot, item_count, total_stock, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (schedule_id, slot) WHERE schedule_id IS NOT NULL DO NOTHING",
        )
        .bind(sale.id.as_uuid())
        .bind(&sale.name)
        .bind(micros(sale.rules.window().starts_at()))
        .bind(micros(sale.rules.window().ends_at()))
        .bind(i64::from(sale.rules.per_user_limit()))
        .bind(sale.rules.reservation_ttl().whole_seconds())
        .bind(sale.currency.as_str())
        .bind(schedule)
        .bind(slot)
        .bind(i64::from(sale.item_count))
        .bind(i64::try_from(sale.total_stock).unwrap_or(i64::MAX))
        .bind(micros(sale.created_at))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected()
            == 1;
        if !inserted {
            return Ok(SaleInsert::SlotTaken);
        }
        for item in items {
            let Some(product) = item.product_id else {
                continue;
            };
            let taken = sqlx::query(
                "UPDATE products SET stock = stock - ?1, version = version + 1 \
                 WHERE id = ?2 AND stock >= ?1 AND deleted_at IS NULL",
            )
            .bind(i64::from(item.stock))
            .bind(product)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            if taken.rows_affected() == 0 {
                let available: Option<i64> = sqlx::query_scalar(
                    "SELECT stock FROM products WHERE id = ? AND deleted_at IS NULL",
                )
                .bind(product)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
                return Ok(SaleInsert::ProductShort {
                    product_id: product,
                    available: available.map_or(0, |a| u32::try_from(a).unwrap_or(0)),
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
        self.settled().await?;
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        // Per item: units still held (reserved) and units bought.
        let items: Vec<(Uuid, i64, Uuid, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT i.sale_id, i.no, i.product_id, i.stock, i.returned, \
               coalesce(sum(r.quantity) FILTER (WHERE r.status = 'reserved'), 0), \
               coalesce(sum(r.quantity) FILTER (WHERE r.status = 'purchased'), 0) \
             FROM flash_sale_items i JOIN flash_sales s ON s.id = i.sale_id \
             LEFT JOIN reservations r ON r.sale_id = i.sale_id AND r.item_no = i.no \
             WHERE i.product_id IS NOT NULL AND i.settled = 0 AND s.ends_at <= ? \
             GROUP BY i.sale_id, i.no LIMIT 500",
        )
        .bind(micros(now))
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        let mut given = 0;
        for (sale, no, product, stock, returned, held, bought) in items {
            let kept = held + bought;
            // After the end nothing more is reserved, so `kept` only shrinks: what is neither
            // kept nor given back yet is the product's again.
            let give = (stock - kept - returned).max(0);
            if give > 0 {
                sqlx::query(
                    "UPDATE products SET stock = stock + ?, version = version + 1 WHERE id = ?",
                )
                .bind(give)
                .bind(product)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            }
            sqlx::query(
                "UPDATE flash_sale_items SET returned = returned + ?, settled = ? \
                 WHERE sale_id = ? AND no = ?",
            )
            .bind(give)
            .bind(i64::from(held == 0))
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
        sqlx::query(select_sales!("WHERE id = ?"))
            .bind(id.as_uuid())
            .fetch_optional(&self.reader)
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
        sqlx::query(select_sales!("WHERE schedule_id = ? AND slot = ?"))
            .bind(schedule.as_uuid())
            .bind(micros(slot))
            .fetch_optional(&self.reader)
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
        let now = micros(now);
        let (count_sql, page_sql) = match phase {
            None => (
                "SELECT COUNT(*) FROM flash_sales WHERE ?1 = ?1",
                select_sales!("WHERE ?1 = ?1 ORDER BY starts_at DESC, id DESC LIMIT ?2 OFFSET ?3"),
            ),
            Some(SalePhase::Upcoming) => (
                "SELECT COUNT(*) FROM flash_sales WHERE starts_at > ?1",
                select_sales!("WHERE starts_at > ?1 ORDER BY starts_at, id LIMIT ?2 OFFSET ?3"),
            ),
            Some(SalePhase::Live) => (
                "SELECT COUNT(*) FROM flash_sales WHERE starts_at <= ?1 AND ends_at > ?1",
                select_sales!(
                    "WHERE starts_at <= ?1 AND ends_at > ?1 ORDER BY starts_at, id LIMIT ?2 OFFSET ?3"
                ),
            ),
            Some(SalePhase::Ended) => (
                "SELECT COUNT(*) FROM flash_sales WHERE ends_at <= ?1",
                select_sales!(
                    "WHERE ends_at <= ?1 ORDER BY ends_at DESC, id DESC LIMIT ?2 OFFSET ?3"
                ),
            ),
        };
        let total: i64 = sqlx::query_scalar(count_sql)
            .bind(now)
            .fetch_one(&self.reader)
            .await
            .map_err(map_err)?;
        let rows = sqlx::query(page_sql)
            .bind(now)
            .bind(i64::from(page.per_page()))
            .bind(offset(page))
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        let sales = rows.iter().map(sale_from_row).collect::<Result<_, _>>()?;
        Ok(Page::new(page, sales, u64::try_from(total).unwrap_or(0)))
    }

    async fn items(&self, sale: SaleId, page: PageRequest) -> Result<Page<ItemRecord>, StoreError> {
        let total: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM flash_sale_items WHERE sale_id = ?")
                .bind(sale.as_uuid())
                .fetch_one(&self.reader)
                .await
                .map_err(map_err)?;
        let rows = sqlx::query(
            "SELECT no, name, image_url, product_id, price_cents, stock FROM flash_sale_items \
             WHERE sale_id = ? ORDER BY no LIMIT ? OFFSET ?",
        )
        .bind(sale.as_uuid())
        .bind(i64::from(page.per_page()))
        .bind(offset(page))
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        let items = rows
            .iter()
            .map(|row| {
                Ok(ItemRecord {
                    sale_id: sale,
                    no: count(get(row, "no")?, "flash_sale_items.no")?,
                    name: get(row, "name")?,
                    image_url: get(row, "image_url")?,
                    product_id: get(row, "product_id")?,
                    price_cents: get(row, "price_cents")?,
                    stock: count(get(row, "stock")?, "flash_sale_items.stock")?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Page::new(page, items, u64::try_from(total).unwrap_or(0)))
    }

    async fn live_sales(&self, since: OffsetDateTime) -> Result<Vec<LiveSaleState>, StoreError> {
        self.settled().await?;
        // One read transaction: every sale's stock and holdings from the same snapshot.
        let mut tx = self.reader.begin().await.map_err(map_err)?;
        let sales = sqlx::query(select_sales!("WHERE ends_at > ? ORDER BY starts_at"))
            .bind(micros(since))
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
        self.settled().await?;
        // A reader: each read transaction sees every commit made before it began, and the
        // writer stays free for the group commit.
        let mut tx = self.reader.begin().await.map_err(map_err)?;
        let Some(row) = sqlx::query(select_sales!("WHERE id = ?"))
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
        self.settled().await?;
        sqlx::query(select_reservations!("WHERE r.id = ?"))
            .bind(id.as_uuid())
            .fetch_optional(&self.reader)
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
        self.settled().await?;
        let mut found = Vec::new();
        for chunk in ids.chunks(500) {
            let mut qb = QueryBuilder::<Sqlite>::new("SELECT id FROM reservations WHERE id IN (");
            let mut list = qb.separated(", ");
            for id in chunk {
                list.push_bind(*id.as_uuid());
            }
            qb.push(")");
            let rows: Vec<Uuid> = qb
                .build_query_scalar()
                .fetch_all(&self.reader)
                .await
                .map_err(map_err)?;
            found.extend(rows.into_iter().map(ReservationId::from_uuid));
        }
        Ok(found)
    }

    async fn reservations(
        &self,
        sale: SaleId,
        page: PageRequest,
        after: Option<ReservationId>,
    ) -> Result<Page<ReservationRecord>, StoreError> {
        self.settled().await?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM reservations WHERE sale_id = ?")
            .bind(sale.as_uuid())
            .fetch_one(&self.reader)
            .await
            .map_err(map_err)?;
        let rows = match after {
            Some(after) => {
                sqlx::query(select_reservations!(
                    "WHERE r.sale_id = ? AND r.id > ? ORDER BY r.id LIMIT ?"
                ))
                .bind(sale.as_uuid())
                .bind(after.as_uuid())
                .bind(i64::from(page.per_page()))
                .fetch_all(&self.reader)
                .await
            }
            None => {
                sqlx::query(select_reservations!(
                    "WHERE r.sale_id = ? ORDER BY r.id LIMIT ? OFFSET ?"
                ))
                .bind(sale.as_uuid())
                .bind(i64::from(page.per_page()))
                .bind(offset(page))
                .fetch_all(&self.reader)
                .await
            }
        }
        .map_err(map_err)?;
        let list = rows
            .iter()
            .map(reservation_from_row)
            .collect::<Result<_, _>>()?;
        Ok(Page::new(page, list, u64::try_from(total).unwrap_or(0)))
    }

    async fn stats(&self, sale: SaleId) -> Result<StoredStats, StoreError> {
        self.settled().await?;
        let row = sqlx::query(
            "SELECT \
               (SELECT total_stock FROM flash_sales WHERE id = ?1) AS stock, \
               COALESCE(SUM(CASE WHEN status = 'reserved' THEN quantity END), 0) AS reserved, \
               COALESCE(SUM(CASE WHEN status = 'purchased' THEN quantity END), 0) AS sold, \
               COALESCE(SUM(CASE WHEN status IN ('expired', 'cancelled') THEN quantity END), 0) \
                 AS released, \
               COUNT(DISTINCT CASE WHEN status IN ('reserved', 'purchased') THEN buyer_id END) \
                 AS buyers, \
               (SELECT COUNT(*) FROM checkout_attempts WHERE sale_id = ?1) AS attempts \
             FROM reservations WHERE sale_id = ?1",
        )
        .bind(sale.as_uuid())
        .fetch_one(&self.reader)
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
        self.settled().await?;
        let rows = sqlx::query(select_reservations!(
            "WHERE r.idempotency_key IS NOT NULL AND r.created_at >= ?"
        ))
        .bind(micros(since))
        .fetch_all(&self.reader)
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
                reservation.status = flashmart_domain::flash_sale::ReservationStatus::Reserved;
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
        self.settled().await?;
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let rows: Vec<(Option<Uuid>, Uuid, i64, Uuid, i64, Uuid)> = sqlx::query_as(
            "UPDATE reservations SET status = 'expired', released_at = ?1 \
             WHERE id IN (SELECT id FROM reservations \
                          WHERE status = 'reserved' AND expires_at <= ?1 \
                          ORDER BY expires_at LIMIT ?2) \
             RETURNING order_id, sale_id, item_no, buyer_id, quantity, id",
        )
        .bind(micros(now))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        let orders: Vec<Uuid> = rows.iter().filter_map(|r| r.0).collect();
        for chunk in chunks(&orders) {
            let mut qb = QueryBuilder::<Sqlite>::new(format!(
                "UPDATE orders SET status = '{}', updated_at = ",
                OrderStatus::Expired.as_str()
            ));
            qb.push_bind(micros(now)).push(format!(
                " WHERE {} AND id IN (",
                order_may_become(OrderStatus::Expired)
            ));
            let mut list = qb.separated(", ");
            for id in chunk {
                list.push_bind(id);
            }
            qb.push(")");
            qb.build().execute(&mut *tx).await.map_err(map_err)?;
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
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        sqlx::query(
            "INSERT INTO flash_sale_schedules (id, name, recurrence, item_count, price_cents, \
             currency, per_user_limit, reservation_ttl_secs, duration_secs, active, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(schedule.id.as_uuid())
        .bind(&schedule.name)
        .bind(schedule.recurrence.as_str())
        .bind(i64::from(schedule.item_count))
        .bind(schedule.price_cents)
        .bind(schedule.currency.as_str())
        .bind(i64::from(schedule.per_user_limit))
        .bind(schedule.reservation_ttl_secs)
        .bind(schedule.duration_secs)
        .bind(i64::from(schedule.active))
        .bind(micros(schedule.created_at))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if let Some(audit) = audit {
            crate::audit::record(&mut tx, audit).await?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn schedules(&self, page: PageRequest) -> Result<Page<Schedule>, StoreError> {
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM flash_sale_schedules")
            .fetch_one(&self.reader)
            .await
            .map_err(map_err)?;
        let rows = sqlx::query(select_schedules!(
            "ORDER BY created_at, id LIMIT ? OFFSET ?"
        ))
        .bind(i64::from(page.per_page()))
        .bind(offset(page))
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        let list = rows
            .iter()
            .map(schedule_from_row)
            .collect::<Result<_, _>>()?;
        Ok(Page::new(page, list, u64::try_from(total).unwrap_or(0)))
    }

    async fn schedule_by_name(&self, name: &str) -> Result<Option<Schedule>, StoreError> {
        sqlx::query(select_schedules!("WHERE name = ?"))
            .bind(name)
            .fetch_optional(&self.writer)
            .await
            .map_err(map_err)?
            .as_ref()
            .map(schedule_from_row)
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_use_the_fixed_sizes() {
        let items: Vec<u32> = (0..300).collect();
        let sizes: Vec<usize> = chunks(&items).map(<[u32]>::len).collect();
        assert_eq!(sizes, [256, 32, 4, 4, 4]);
        assert_eq!(sizes.iter().sum::<usize>(), 300);
        assert_eq!(chunks::<u32>(&[]).count(), 0);
    }
}
