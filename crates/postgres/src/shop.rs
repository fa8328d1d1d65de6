//! Addresses, carts, coupons and cart orders in PostgreSQL. Unlike SQLite's single writer,
//! transactions here run side by side, so each one that counts before it writes (a user's
//! addresses, open orders, a coupon's uses) first locks the row the count belongs to: the user
//! or the coupon, `FOR UPDATE`.

use async_trait::async_trait;
use flashmart_app::audit::AuditEntry;
use flashmart_app::flash_sale::model::{BuyerId, Released};
use flashmart_app::ports::{AddressStore, CartStore, CouponStore, OrderStore};
use flashmart_app::shop::model::{
    AddressRecord, CancelOutcome, CartLine, CheckoutOutcome, CheckoutRequest, Coupon, OrderLine,
    OrderRecord,
};
use flashmart_app::shop::pricing;
use flashmart_app::webhooks::{EventType, OrderFacts};
use flashmart_app::{Page, PageRequest, StoreError};
use flashmart_domain::address::{Address, AddressFields};
use flashmart_domain::coupon::{CouponRules, Discount};
use flashmart_domain::{
    AddressId, CouponId, Currency, Money, OrderId, OrderStatus, ProductId, ReservationId, SaleId,
    UserId,
};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgConnection, Postgres, QueryBuilder, Row as _};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::PgStore;
use crate::catalog::product_from_row;
use crate::db::{corrupt, map_err, order_may_become};
use crate::webhooks::{emit, emit_order};

fn get<'r, T>(row: &'r PgRow, col: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(col).map_err(map_err)
}

fn count(n: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(n).map_err(|e| corrupt(what, e))
}

/// Locks the user's row until the transaction ends: what is counted per user (addresses, open
/// orders) cannot change under the count.
async fn lock_user(conn: &mut PgConnection, user: UserId) -> Result<bool, StoreError> {
    let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
        .bind(user.as_uuid())
        .fetch_optional(conn)
        .await
        .map_err(map_err)?;
    Ok(found.is_some())
}

// ---- addresses ----------------------------------------------------------------------------

fn address_from_row(row: &PgRow) -> Result<AddressRecord, StoreError> {
    let fields = AddressFields {
        recipient: get(row, "recipient")?,
        line1: get(row, "line1")?,
        line2: get(row, "line2")?,
        city: get(row, "city")?,
        region: get(row, "region")?,
        postal_code: get(row, "postal_code")?,
        country: get(row, "country")?,
        phone: get(row, "phone")?,
    };
    Ok(AddressRecord {
        id: AddressId::from_uuid(get(row, "id")?),
        user_id: UserId::from_uuid(get(row, "user_id")?),
        address: Address::parse(fields).map_err(|e| corrupt("addresses", format!("{e:?}")))?,
        is_default: get(row, "is_default")?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
    })
}

/// Writes an address; a default one takes the default from the user's others. The caller holds
/// the user's lock.
async fn write_address(conn: &mut PgConnection, a: &AddressRecord) -> Result<(), StoreError> {
    if a.is_default {
        sqlx::query("UPDATE addresses SET is_default = false WHERE user_id = $1 AND id != $2")
            .bind(a.user_id.as_uuid())
            .bind(a.id.as_uuid())
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
    }
    let f = a.address.fields();
    sqlx::query(
        "INSERT INTO addresses (id, user_id, recipient, line1, line2, city, region, \
         postal_code, country, phone, is_default, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         ON CONFLICT (id) DO UPDATE SET recipient = excluded.recipient, \
         line1 = excluded.line1, line2 = excluded.line2, city = excluded.city, \
         region = excluded.region, postal_code = excluded.postal_code, \
         country = excluded.country, phone = excluded.phone, \
         is_default = excluded.is_default, updated_at = excluded.updated_at \
         WHERE addresses.user_id = excluded.user_id",
    )
    .bind(a.id.as_uuid())
    .bind(a.user_id.as_uuid())
    .bind(&f.recipient)
    .bind(&f.line1)
    .bind(f.line2.as_deref())
    .bind(&f.city)
    .bind(f.region.as_deref())
    .bind(&f.postal_code)
    .bind(&f.country)
    .bind(f.phone.as_deref())
    .bind(a.is_default)
    .bind(a.created_at)
    .bind(a.updated_at)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

#[async_trait]
impl AddressStore for PgStore {
    async fn addresses(&self, user: UserId) -> Result<Vec<AddressRecord>, StoreError> {
        sqlx::query(
            "SELECT id, user_id, recipient, line1, line2, city, region, postal_code, country, \
             phone, is_default, created_at, updated_at FROM addresses \
             WHERE user_id = $1 ORDER BY created_at, id",
        )
        .bind(user.as_uuid())
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?
        .iter()
        .map(address_from_row)
        .collect()
    }

    async fn save_address(&self, a: &AddressRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        lock_user(&mut tx, a.user_id).await?;
        write_address(&mut tx, a).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn add_address(
        &self,
        a: &AddressRecord,
        max: usize,
    ) -> Result<Option<AddressRecord>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        lock_user(&mut tx, a.user_id).await?;
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM addresses WHERE user_id = $1")
            .bind(a.user_id.as_uuid())
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        if usize::try_from(count).unwrap_or(usize::MAX) >= max {
            return Ok(None);
        }
        let stored = AddressRecord {
            is_default: a.is_default || count == 0,
            ..a.clone()
        };
        write_address(&mut tx, &stored).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some(stored))
    }

    async fn delete_address(&self, user: UserId, id: AddressId) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        lock_user(&mut tx, user).await?;
        let was_default: Option<bool> = sqlx::query_scalar(
            "DELETE FROM addresses WHERE id = $1 AND user_id = $2 RETURNING is_default",
        )
        .bind(id.as_uuid())
        .bind(user.as_uuid())
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some(was_default) = was_default else {
            return Ok(false);
        };
        if was_default {
            sqlx::query(
                "UPDATE addresses SET is_default = true WHERE id = \
                 (SELECT id FROM addresses WHERE user_id = $1 ORDER BY created_at, id LIMIT 1)",
            )
            .bind(user.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }
}

// ---- carts --------------------------------------------------------------------------------

const CART_QUERY: &str = "SELECT c.product_id AS line_product, c.quantity AS line_quantity, \
     c.added_at AS line_added, p.id, p.name, p.description, p.price_cents, p.currency, p.stock, \
     p.sold, p.category, p.images, p.active, p.created_at, p.updated_at, p.version \
     FROM cart_items c LEFT JOIN products p ON p.id = c.product_id AND p.deleted_at IS NULL \
     WHERE c.user_id = $1 ORDER BY c.added_at, c.product_id";

fn cart_line_from_row(row: &PgRow) -> Result<CartLine, StoreError> {
    let product: Option<Uuid> = get(row, "id")?;
    Ok(CartLine {
        product_id: ProductId::from_uuid(get(row, "line_product")?),
        quantity: count(
            i64::from(get::<i32>(row, "line_quantity")?),
            "cart_items.quantity",
        )?,
        product: product.map(|_| product_from_row(row)).transpose()?,
        added_at: get(row, "line_added")?,
    })
}

async fn cart_lines(conn: &mut PgConnection, user: UserId) -> Result<Vec<CartLine>, StoreError> {
    sqlx::query(CART_QUERY)
        .bind(user.as_uuid())
        .fetch_all(conn)
        .await
        .map_err(map_err)?
        .iter()
        .map(cart_line_from_row)
        .collect()
}

#[async_trait]
impl CartStore for PgStore {
    async fn cart(&self, user: UserId) -> Result<Vec<CartLine>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        cart_lines(&mut conn, user).await
    }

    async fn set_cart_line(
        &self,
        user: UserId,
        product: ProductId,
        quantity: u32,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO cart_items (user_id, product_id, quantity, added_at) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id, product_id) DO UPDATE SET quantity = excluded.quantity",
        )
        .bind(user.as_uuid())
        .bind(product.as_uuid())
        .bind(i32::try_from(quantity).unwrap_or(i32::MAX))
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn remove_cart_line(&self, user: UserId, product: ProductId) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM cart_items WHERE user_id = $1 AND product_id = $2")
            .bind(user.as_uuid())
            .bind(product.as_uuid())
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn clear_cart(&self, user: UserId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM cart_items WHERE user_id = $1")
            .bind(user.as_uuid())
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

// ---- coupons ------------------------------------------------------------------------------

fn coupon_from_row(row: &PgRow) -> Result<Coupon, StoreError> {
    let currency: Option<String> = get(row, "currency")?;
    let currency = currency
        .as_deref()
        .map(Currency::parse)
        .transpose()
        .map_err(|e| corrupt("coupons.currency", e))?
        .unwrap_or(Currency::USD);
    let money = |cents: i64| Money::new(cents, currency).map_err(|e| corrupt("coupons", e));
    let kind: String = get(row, "kind")?;
    let discount = match kind.as_str() {
        "percent" => Discount::Percent {
            percent: u8::try_from(get::<Option<i32>>(row, "percent")?.unwrap_or(-1))
                .map_err(|e| corrupt("coupons.percent", e))?,
        },
        _ => Discount::Fixed {
            amount: money(
                get::<Option<i64>>(row, "amount_cents")?
                    .ok_or_else(|| corrupt("coupons.amount_cents", "missing"))?,
            )?,
        },
    };
    let min_spend: Option<i64> = get(row, "min_spend_cents")?;
    let opt_count = |col: &str| -> Result<Option<u32>, StoreError> {
        get::<Option<i64>>(row, col)?
            .map(|n| count(n, col))
            .transpose()
    };
    let rules = CouponRules::new(
        discount,
        min_spend.map(money).transpose()?,
        get(row, "starts_at")?,
        get(row, "ends_at")?,
        opt_count("max_uses")?,
        opt_count("per_user_limit")?,
    )
    .map_err(|e| corrupt("coupons", e))?;
    Ok(Coupon {
        id: CouponId::from_uuid(get(row, "id")?),
        code: get(row, "code")?,
        rules,
        uses: count(get(row, "uses")?, "coupons.uses")?,
        active: get(row, "active")?,
        created_at: get(row, "created_at")?,
    })
}

const COUPON_COLUMNS: &str = "id, code, kind, percent, amount_cents, currency, min_spend_cents, \
                              starts_at, ends_at, max_uses, per_user_limit, uses, active, created_at";

#[async_trait]
impl CouponStore for PgStore {
    async fn insert_coupon(&self, c: &Coupon, audit: &AuditEntry) -> Result<(), StoreError> {
        let (kind, percent, amount, currency) = match c.rules.discount {
            Discount::Percent { percent } => ("percent", Some(i32::from(percent)), None, None),
            Discount::Fixed { amount } => {
                ("fixed", None, Some(amount.cents()), Some(amount.currency()))
            }
        };
        let currency = currency.or(c.rules.min_spend.map(|m| m.currency()));
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query(
            "INSERT INTO coupons (id, code, kind, percent, amount_cents, currency, \
             min_spend_cents, starts_at, ends_at, max_uses, per_user_limit, uses, active, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(c.id.as_uuid())
        .bind(&c.code)
        .bind(kind)
        .bind(percent)
        .bind(amount)
        .bind(currency.map(|c| c.as_str().to_owned()))
        .bind(c.rules.min_spend.map(|m| m.cents()))
        .bind(c.rules.starts_at)
        .bind(c.rules.ends_at)
        .bind(c.rules.max_uses.map(i64::from))
        .bind(c.rules.per_user_limit.map(i64::from))
        .bind(i64::from(c.uses))
        .bind(c.active)
        .bind(c.created_at)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        crate::audit::record(&mut tx, audit).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn coupons(&self, page: PageRequest) -> Result<Page<Coupon>, StoreError> {
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM coupons")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        let rows = QueryBuilder::<Postgres>::new(format!(
            "SELECT {COUPON_COLUMNS} FROM coupons ORDER BY created_at DESC, id DESC LIMIT "
        ))
        .push_bind(i64::from(page.per_page()))
        .push(" OFFSET ")
        .push_bind(i64::try_from(page.offset()).unwrap_or(i64::MAX))
        .build()
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let items = rows.iter().map(coupon_from_row).collect::<Result<_, _>>()?;
        Ok(Page::new(page, items, u64::try_from(total).unwrap_or(0)))
    }
}

// ---- orders -------------------------------------------------------------------------------

const ORDER_COLUMNS: &str = "id, user_id, status, currency, subtotal_cents, discount_cents, \
     total_cents, refunded_cents, reservation_id, shipping_address, coupon_code, created_at, \
     updated_at, expires_at, paid_at";

fn order_from_row(row: &PgRow, lines: Vec<OrderLine>) -> Result<OrderRecord, StoreError> {
    let currency: String = get(row, "currency")?;
    let currency = Currency::parse(&currency).map_err(|e| corrupt("orders.currency", e))?;
    let money = |col: &str| -> Result<Money, StoreError> {
        Money::new(get(row, col)?, currency).map_err(|e| corrupt(col, e))
    };
    let status: String = get(row, "status")?;
    let shipping: Option<String> = get(row, "shipping_address")?;
    let shipping = shipping
        .map(|json| {
            serde_json::from_str::<AddressFields>(&json)
                .map_err(|e| corrupt("orders.shipping_address", e))
                .and_then(|f| {
                    Address::parse(f)
                        .map_err(|e| corrupt("orders.shipping_address", format!("{e:?}")))
                })
        })
        .transpose()?;
    let reservation: Option<Uuid> = get(row, "reservation_id")?;
    Ok(OrderRecord {
        id: OrderId::from_uuid(get(row, "id")?),
        user_id: UserId::from_uuid(get(row, "user_id")?),
        status: status.parse().map_err(|e| corrupt("orders.status", e))?,
        subtotal: money("subtotal_cents")?,
        discount: money("discount_cents")?,
        total: money("total_cents")?,
        refunded: money("refunded_cents")?,
        lines,
        shipping,
        coupon_code: get(row, "coupon_code")?,
        reservation_id: reservation.map(ReservationId::from_uuid),
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
        expires_at: get(row, "expires_at")?,
        paid_at: get(row, "paid_at")?,
    })
}

fn line_from_row(row: &PgRow) -> Result<(OrderId, OrderLine), StoreError> {
    let product: Option<Uuid> = get(row, "product_id")?;
    let sale: Option<Uuid> = get(row, "sale_id")?;
    let item_no: Option<i32> = get(row, "item_no")?;
    Ok((
        OrderId::from_uuid(get(row, "order_id")?),
        OrderLine {
            line: count(i64::from(get::<i32>(row, "line")?), "order_items.line")?,
            product_id: product.map(ProductId::from_uuid),
            sale_id: sale.map(SaleId::from_uuid),
            item_no: item_no
                .map(|n| count(i64::from(n), "order_items.item_no"))
                .transpose()?,
            name: get(row, "name")?,
            unit_price_cents: get(row, "unit_price_cents")?,
            quantity: count(
                i64::from(get::<i32>(row, "quantity")?),
                "order_items.quantity",
            )?,
        },
    ))
}

/// Orders with their lines, in the order of `rows`.
async fn with_lines(
    conn: &mut PgConnection,
    rows: Vec<PgRow>,
) -> Result<Vec<OrderRecord>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = rows
        .iter()
        .map(|row| get::<Uuid>(row, "id"))
        .collect::<Result<_, _>>()?;
    let mut lines: std::collections::HashMap<OrderId, Vec<OrderLine>> =
        std::collections::HashMap::new();
    // A flash-sale order's one line is not stored: it is its reservation's item, whose name and
    // price never change once the sale exists.
    let found = sqlx::query(
        "SELECT order_id, line, product_id, sale_id, item_no, name, unit_price_cents, quantity \
         FROM order_items WHERE order_id = ANY($1) \
         UNION ALL \
         SELECT o.id, 1, NULL, r.sale_id, r.item_no, i.name, i.price_cents, r.quantity \
         FROM order_view o JOIN reservations r ON r.id = o.reservation_id \
         JOIN flash_sale_items i ON i.sale_id = r.sale_id AND i.no = r.item_no \
         WHERE o.id = ANY($1) \
         ORDER BY 1, 2",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)?;
    for row in &found {
        let (order, line) = line_from_row(row)?;
        lines.entry(order).or_default().push(line);
    }
    rows.iter()
        .map(|row| {
            let id = OrderId::from_uuid(get(row, "id")?);
            order_from_row(row, lines.remove(&id).unwrap_or_default())
        })
        .collect()
}

pub(crate) async fn load_order(
    conn: &mut PgConnection,
    id: OrderId,
) -> Result<Option<OrderRecord>, StoreError> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM order_view WHERE id = $1"
    )))
    .bind(id.as_uuid())
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(with_lines(conn, row.into_iter().collect()).await?.pop())
}

/// Writes the row of order `id` if it is a flash-sale order still derived from its reservation
/// (`migrations/postgres/0011_flash_sale_orders_derived.sql`), before anything changes the
/// order itself. The reservation is locked first, so that the row is written from what the
/// reservation is once no sweep or other writer is changing it, and a sweep that comes later
/// finds the row (and skips the reservation while this transaction holds it). An order that
/// has its row already, or no reservation, is left alone: nothing is locked for it here, since
/// a payment's notification takes the order first and the reservation second. One narrow race
/// remains: a second start (or a cancellation) that found no row and then waited for the
/// reservation while the first start wrote the row and its payment, if that payment's
/// notification is applied at the same moment, waits in the other order; PostgreSQL then
/// aborts one of the two (after `deadlock_timeout`), and either outcome leaves the order and
/// its reservation agreeing.
pub(crate) async fn write_derived_order(
    conn: &mut PgConnection,
    id: OrderId,
) -> Result<(), StoreError> {
    let stored: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM orders WHERE id = $1)")
        .bind(id.as_uuid())
        .fetch_one(&mut *conn)
        .await
        .map_err(map_err)?;
    if stored {
        return Ok(());
    }
    let derived: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM reservations WHERE id = $1 AND order_id = id FOR UPDATE")
            .bind(id.as_uuid())
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_err)?;
    if derived.is_none() {
        return Ok(());
    }
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO orders ({ORDER_COLUMNS}) SELECT {ORDER_COLUMNS} FROM derived_orders \
         WHERE id = $1 ON CONFLICT (id) DO NOTHING"
    )))
    .bind(id.as_uuid())
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// Locks, in id order (the order every writer takes them in), the products of `orders`.
async fn lock_products_of(conn: &mut PgConnection, orders: &[Uuid]) -> Result<(), StoreError> {
    sqlx::query(
        "SELECT 1 FROM products WHERE id IN (SELECT product_id FROM order_items \
         WHERE order_id = ANY($1) AND product_id IS NOT NULL) ORDER BY id FOR UPDATE",
    )
    .bind(orders)
    .execute(conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// Gives back what an unpaid cart order held: its items' stock and its coupon use. The caller
/// has locked the order's products (`lock_products_of`).
async fn give_back(conn: &mut PgConnection, order: OrderId) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE products p SET stock = p.stock + i.quantity, \
           sold = GREATEST(0, p.sold - i.quantity), version = p.version + 1 \
         FROM (SELECT product_id, SUM(quantity) AS quantity FROM order_items \
               WHERE order_id = $1 AND product_id IS NOT NULL GROUP BY product_id) i \
         WHERE p.id = i.product_id",
    )
    .bind(order.as_uuid())
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    let coupon: Option<Uuid> = sqlx::query_scalar(
        "DELETE FROM coupon_redemptions WHERE order_id = $1 RETURNING coupon_id",
    )
    .bind(order.as_uuid())
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?;
    if let Some(coupon) = coupon {
        sqlx::query("UPDATE coupons SET uses = uses - 1 WHERE id = $1 AND uses > 0")
            .bind(coupon)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
    }
    Ok(())
}

/// Which orders a page lists.
#[derive(Debug, Clone, Copy)]
enum OrdersOf {
    User(UserId, Option<OrderStatus>),
    Status(Option<OrderStatus>),
}

fn push_orders_filter(qb: &mut QueryBuilder<Postgres>, filter: OrdersOf) {
    match filter {
        OrdersOf::User(user, status) => {
            qb.push(" WHERE user_id = ").push_bind(*user.as_uuid());
            if let Some(status) = status {
                qb.push(" AND status = ").push_bind(status.as_str());
            }
        }
        OrdersOf::Status(Some(status)) => {
            qb.push(" WHERE status = ").push_bind(status.as_str());
        }
        OrdersOf::Status(None) => {}
    }
}

/// Where a page of orders is read from: only the stored rows when the status asked for is one a
/// derived order never has (an order is paid, and then refunded, only through a payment, which
/// writes its row first), which spares the view's scan of every reservation for a status that
/// none of them can match.
fn orders_source(filter: OrdersOf) -> &'static str {
    let (OrdersOf::User(_, status) | OrdersOf::Status(status)) = filter;
    match status {
        Some(OrderStatus::Paid | OrderStatus::Refunded | OrderStatus::PartiallyRefunded) => {
            "orders"
        }
        _ => "order_view",
    }
}

async fn page_of_orders(
    store: &PgStore,
    filter: OrdersOf,
    page: PageRequest,
) -> Result<Page<OrderRecord>, StoreError> {
    let mut conn = store.pool.acquire().await.map_err(map_err)?;
    let source = orders_source(filter);
    let mut count_q = QueryBuilder::<Postgres>::new(format!("SELECT COUNT(*) FROM {source}"));
    push_orders_filter(&mut count_q, filter);
    let total: i64 = count_q
        .build_query_scalar()
        .fetch_one(&mut *conn)
        .await
        .map_err(map_err)?;
    let mut rows_q = QueryBuilder::<Postgres>::new(format!("SELECT {ORDER_COLUMNS} FROM {source}"));
    push_orders_filter(&mut rows_q, filter);
    // Newest first by id: ids are UUID v7, ordered by their creation.
    rows_q
        .push(" ORDER BY id DESC LIMIT ")
        .push_bind(i64::from(page.per_page()))
        .push(" OFFSET ")
        .push_bind(i64::try_from(page.offset()).unwrap_or(i64::MAX));
    let rows = rows_q
        .build()
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
    let orders = with_lines(&mut conn, rows).await?;
    Ok(Page::new(page, orders, u64::try_from(total).unwrap_or(0)))
}

#[async_trait]
impl OrderStore for PgStore {
    async fn checkout(&self, req: &CheckoutRequest) -> Result<CheckoutOutcome, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // One checkout per user at a time: the open-order count and the cart hold until commit.
        lock_user(&mut tx, req.user_id).await?;
        let lines = cart_lines(&mut tx, req.user_id).await?;
        if lines.is_empty() {
            return Ok(CheckoutOutcome::EmptyCart);
        }
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM orders WHERE user_id = $1 AND status = $2 \
             AND reservation_id IS NULL",
        )
        .bind(req.user_id.as_uuid())
        .bind(OrderStatus::PendingPayment.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        if open >= i64::from(req.max_open_orders) {
            return Ok(CheckoutOutcome::TooManyOpenOrders);
        }
        let priced = match pricing::price_for_order(&lines, req.max_units_per_product) {
            Ok(priced) => priced,
            Err(refused) => return Ok(refused),
        };
        // Take every line's stock; the first short one undoes all (the transaction is dropped).
        // Every writer locks products in one order, by id, so that two checkouts, or a checkout
        // and an order giving its stock back, never wait for each other in a circle.
        let mut taking: Vec<_> = priced.lines.iter().collect();
        taking.sort_by_key(|line| line.product.id);
        for line in taking {
            let p = line.product;
            let taken = sqlx::query(
                "UPDATE products SET stock = stock - $1, sold = sold + $1, version = version + 1 \
                 WHERE id = $2 AND stock >= $1 AND active AND deleted_at IS NULL",
            )
            .bind(i64::from(line.quantity))
            .bind(p.id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            if taken.rows_affected() == 0 {
                let available: Option<i64> =
                    sqlx::query_scalar("SELECT stock FROM products WHERE id = $1")
                        .bind(p.id.as_uuid())
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(map_err)?;
                return Ok(CheckoutOutcome::OutOfStock {
                    product_id: p.id,
                    name: p.name.clone(),
                    available: u32::try_from(available.unwrap_or(0)).unwrap_or(0),
                });
            }
        }
        let totals = match &req.coupon_code {
            None => priced.totals(),
            Some(code) => {
                // The coupon's row stays locked to the end: its uses are counted exactly.
                let row = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {COUPON_COLUMNS} FROM coupons WHERE active AND code = $1 FOR UPDATE"
                )))
                .bind(code.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
                let Some(row) = row else {
                    return Ok(CheckoutOutcome::CouponNotFound);
                };
                let coupon = coupon_from_row(&row)?;
                let user_uses: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM coupon_redemptions \
                     WHERE coupon_id = $1 AND user_id = $2",
                )
                .bind(coupon.id.as_uuid())
                .bind(req.user_id.as_uuid())
                .fetch_one(&mut *tx)
                .await
                .map_err(map_err)?;
                let totals = match priced.totals_with(
                    &coupon,
                    req.now,
                    u32::try_from(user_uses).unwrap_or(u32::MAX),
                ) {
                    Ok(totals) => totals,
                    Err(refused) => return Ok(refused),
                };
                sqlx::query("UPDATE coupons SET uses = uses + 1 WHERE id = $1 AND uses = $2")
                    .bind(coupon.id.as_uuid())
                    .bind(i64::from(coupon.uses))
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                sqlx::query(
                    "INSERT INTO coupon_redemptions (coupon_id, user_id, order_id, at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(coupon.id.as_uuid())
                .bind(req.user_id.as_uuid())
                .bind(req.order_id.as_uuid())
                .bind(req.now)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                totals
            }
        };
        let shipping = serde_json::to_string(req.shipping.fields()).map_err(StoreError::other)?;
        sqlx::query(
            "INSERT INTO orders (id, user_id, status, currency, subtotal_cents, discount_cents, \
             total_cents, shipping_address, coupon_code, created_at, updated_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11)",
        )
        .bind(req.order_id.as_uuid())
        .bind(req.user_id.as_uuid())
        .bind(OrderStatus::PendingPayment.as_str())
        .bind(priced.currency().as_str())
        .bind(totals.subtotal.cents())
        .bind(totals.discount.cents())
        .bind(totals.total.cents())
        .bind(shipping)
        .bind(req.coupon_code.as_deref())
        .bind(req.now)
        .bind(req.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let order_lines = priced.order_lines();
        let numbers: Vec<i32> = order_lines
            .iter()
            .map(|l| i32::try_from(l.line).unwrap_or(i32::MAX))
            .collect();
        let products: Vec<Option<Uuid>> = order_lines
            .iter()
            .map(|l| l.product_id.map(|id| *id.as_uuid()))
            .collect();
        let names: Vec<&str> = order_lines.iter().map(|l| l.name.as_str()).collect();
        let prices: Vec<i64> = order_lines.iter().map(|l| l.unit_price_cents).collect();
        let quantities: Vec<i32> = order_lines
            .iter()
            .map(|l| i32::try_from(l.quantity).unwrap_or(i32::MAX))
            .collect();
        sqlx::query(
            "INSERT INTO order_items (order_id, line, product_id, name, unit_price_cents, \
             quantity) SELECT $1, * FROM UNNEST($2::integer[], $3::uuid[], $4::text[], \
             $5::bigint[], $6::integer[])",
        )
        .bind(req.order_id.as_uuid())
        .bind(&numbers)
        .bind(&products)
        .bind(&names)
        .bind(&prices)
        .bind(&quantities)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query("DELETE FROM cart_items WHERE user_id = $1")
            .bind(req.user_id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let order = load_order(&mut tx, req.order_id)
            .await?
            .ok_or_else(|| corrupt("orders", "the order just written is missing"))?;
        emit(
            &mut tx,
            &OrderFacts::from(&order).event(EventType::OrderCreated, order.created_at),
        )
        .await?;
        tx.commit().await.map_err(map_err)?;
        Ok(CheckoutOutcome::Placed(Box::new(order)))
    }

    async fn order(&self, id: OrderId) -> Result<Option<OrderRecord>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        load_order(&mut conn, id).await
    }

    async fn orders_of(
        &self,
        user: UserId,
        status: Option<OrderStatus>,
        page: PageRequest,
    ) -> Result<Page<OrderRecord>, StoreError> {
        page_of_orders(self, OrdersOf::User(user, status), page).await
    }

    async fn all_orders(
        &self,
        status: Option<OrderStatus>,
        page: PageRequest,
    ) -> Result<Page<OrderRecord>, StoreError> {
        page_of_orders(self, OrdersOf::Status(status), page).await
    }

    async fn cancel_order(
        &self,
        id: OrderId,
        now: OffsetDateTime,
    ) -> Result<(CancelOutcome, Option<Released>), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        write_derived_order(&mut tx, id).await?;
        let row: Option<(String, Option<Uuid>)> =
            sqlx::query_as("SELECT status, reservation_id FROM orders WHERE id = $1 FOR UPDATE")
                .bind(id.as_uuid())
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        let Some((status, reservation)) = row else {
            return Ok((CancelOutcome::NotFound, None));
        };
        let status: OrderStatus = status.parse().map_err(|e| corrupt("orders.status", e))?;
        if !status.can_become(OrderStatus::Cancelled) {
            return Ok((CancelOutcome::NotPending(status), None));
        }
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE orders SET status = '{}', updated_at = $1 WHERE id = $2 AND {}",
            OrderStatus::Cancelled.as_str(),
            order_may_become(OrderStatus::Cancelled)
        )))
        .bind(now)
        .bind(id.as_uuid())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let released = match reservation {
            // A flash-sale order's reservation is cancelled with it; the engine puts its stock
            // back on sale.
            Some(reservation) => {
                let row: Option<(Uuid, i32, Uuid, i32)> = sqlx::query_as(
                    "UPDATE reservations SET status = 'cancelled', released_at = $1 \
                     WHERE id = $2 AND status = 'reserved' \
                     RETURNING sale_id, item_no, buyer_id, quantity",
                )
                .bind(now)
                .bind(reservation)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
                row.map(|(sale, item_no, buyer, quantity)| {
                    Ok::<_, StoreError>(Released {
                        reservation: ReservationId::from_uuid(reservation),
                        sale_id: SaleId::from_uuid(sale),
                        item_no: count(i64::from(item_no), "reservations.item_no")?,
                        buyer: BuyerId(buyer),
                        quantity: count(i64::from(quantity), "reservations.quantity")?,
                    })
                })
                .transpose()?
            }
            None => {
                lock_products_of(&mut tx, &[*id.as_uuid()]).await?;
                give_back(&mut tx, id).await?;
                None
            }
        };
        let order = load_order(&mut tx, id)
            .await?
            .ok_or_else(|| corrupt("orders", "the order just cancelled is missing"))?;
        emit(
            &mut tx,
            &OrderFacts::from(&order).event(EventType::OrderCancelled, now),
        )
        .await?;
        tx.commit().await.map_err(map_err)?;
        Ok((CancelOutcome::Cancelled(Box::new(order)), released))
    }

    async fn expire_orders(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<OrderId>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // SKIP LOCKED: two sweepers (two instances) share the due orders instead of queueing.
        let due: Vec<Uuid> = sqlx::query_scalar(AssertSqlSafe(format!(
            "UPDATE orders SET status = '{}', updated_at = $1 \
             WHERE id IN (SELECT id FROM orders \
                          WHERE {} AND reservation_id IS NULL AND expires_at <= $1 \
                          ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING id",
            OrderStatus::Expired.as_str(),
            order_may_become(OrderStatus::Expired)
        )))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        lock_products_of(&mut tx, &due).await?;
        for id in &due {
            give_back(&mut tx, OrderId::from_uuid(*id)).await?;
            emit_order(
                &mut tx,
                EventType::OrderExpired,
                OrderId::from_uuid(*id),
                now,
            )
            .await?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(due.into_iter().map(OrderId::from_uuid).collect())
    }
}
