//! Addresses, carts, coupons and orders in SQLite.

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
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, QueryBuilder, Row as _, Sqlite, SqliteConnection};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::SqliteStore;
use crate::catalog::product_from_row;
use crate::db::{corrupt, from_micros, map_err, micros, order_may_become};
use crate::webhooks::{emit, emit_order};

fn get<'r, T>(row: &'r SqliteRow, col: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(col).map_err(map_err)
}

fn count(n: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(n).map_err(|e| corrupt(what, e))
}

// ---- addresses ----------------------------------------------------------------------------

fn address_from_row(row: &SqliteRow) -> Result<AddressRecord, StoreError> {
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
        is_default: get::<i64>(row, "is_default")? != 0,
        created_at: from_micros(get(row, "created_at")?)?,
        updated_at: from_micros(get(row, "updated_at")?)?,
    })
}

#[async_trait]
impl AddressStore for SqliteStore {
    async fn addresses(&self, user: UserId) -> Result<Vec<AddressRecord>, StoreError> {
        sqlx::query(
            "SELECT id, user_id, recipient, line1, line2, city, region, postal_code, country, \
             phone, is_default, created_at, updated_at FROM addresses \
             WHERE user_id = ? ORDER BY created_at, id",
        )
        .bind(user.as_uuid())
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?
        .iter()
        .map(address_from_row)
        .collect()
    }

    async fn save_address(&self, a: &AddressRecord) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        write_address(&mut tx, a).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn add_address(
        &self,
        a: &AddressRecord,
        max: usize,
    ) -> Result<Option<AddressRecord>, StoreError> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM addresses WHERE user_id = ?")
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
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let was_default: Option<i64> = sqlx::query_scalar(
            "DELETE FROM addresses WHERE id = ? AND user_id = ? RETURNING is_default",
        )
        .bind(id.as_uuid())
        .bind(user.as_uuid())
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some(was_default) = was_default else {
            return Ok(false);
        };
        if was_default != 0 {
            sqlx::query(
                "UPDATE addresses SET is_default = 1 WHERE id = \
                 (SELECT id FROM addresses WHERE user_id = ? ORDER BY created_at, id LIMIT 1)",
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
     WHERE c.user_id = ? ORDER BY c.added_at, c.product_id";

fn cart_line_from_row(row: &SqliteRow) -> Result<CartLine, StoreError> {
    let product: Option<Uuid> = get(row, "id")?;
    Ok(CartLine {
        product_id: ProductId::from_uuid(get(row, "line_product")?),
        quantity: count(get(row, "line_quantity")?, "cart_items.quantity")?,
        product: product.map(|_| product_from_row(row)).transpose()?,
        added_at: from_micros(get(row, "line_added")?)?,
    })
}

async fn cart_lines(
    conn: &mut SqliteConnection,
    user: UserId,
) -> Result<Vec<CartLine>, StoreError> {
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
impl CartStore for SqliteStore {
    async fn cart(&self, user: UserId) -> Result<Vec<CartLine>, StoreError> {
        let mut conn = self.reader.acquire().await.map_err(map_err)?;
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
            "INSERT INTO cart_items (user_id, product_id, quantity, added_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (user_id, product_id) DO UPDATE SET quantity = excluded.quantity",
        )
        .bind(user.as_uuid())
        .bind(product.as_uuid())
        .bind(i64::from(quantity))
        .bind(micros(now))
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn remove_cart_line(&self, user: UserId, product: ProductId) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM cart_items WHERE user_id = ? AND product_id = ?")
            .bind(user.as_uuid())
            .bind(product.as_uuid())
            .execute(&self.writer)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn clear_cart(&self, user: UserId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM cart_items WHERE user_id = ?")
            .bind(user.as_uuid())
            .execute(&self.writer)
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

// ---- coupons ------------------------------------------------------------------------------

fn coupon_from_row(row: &SqliteRow) -> Result<Coupon, StoreError> {
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
            percent: u8::try_from(get::<i64>(row, "percent")?)
                .map_err(|e| corrupt("coupons.percent", e))?,
        },
        _ => Discount::Fixed {
            amount: money(get(row, "amount_cents")?)?,
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
        from_micros(get(row, "starts_at")?)?,
        from_micros(get(row, "ends_at")?)?,
        opt_count("max_uses")?,
        opt_count("per_user_limit")?,
    )
    .map_err(|e| corrupt("coupons", e))?;
    Ok(Coupon {
        id: CouponId::from_uuid(get(row, "id")?),
        code: get(row, "code")?,
        rules,
        uses: count(get(row, "uses")?, "coupons.uses")?,
        active: get::<i64>(row, "active")? != 0,
        created_at: from_micros(get(row, "created_at")?)?,
    })
}

const COUPON_COLUMNS: &str = "id, code, kind, percent, amount_cents, currency, min_spend_cents, \
                              starts_at, ends_at, max_uses, per_user_limit, uses, active, created_at";

#[async_trait]
impl CouponStore for SqliteStore {
    async fn insert_coupon(&self, c: &Coupon, audit: &AuditEntry) -> Result<(), StoreError> {
        let (kind, percent, amount, currency) = match c.rules.discount {
            Discount::Percent { percent } => ("percent", Some(i64::from(percent)), None, None),
            Discount::Fixed { amount } => {
                ("fixed", None, Some(amount.cents()), Some(amount.currency()))
            }
        };
        let currency = currency.or(c.rules.min_spend.map(|m| m.currency()));
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        sqlx::query(
            "INSERT INTO coupons (id, code, kind, percent, amount_cents, currency, \
             min_spend_cents, starts_at, ends_at, max_uses, per_user_limit, uses, active, \
             created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(c.id.as_uuid())
        .bind(&c.code)
        .bind(kind)
        .bind(percent)
        .bind(amount)
        .bind(currency.map(|c| c.as_str().to_owned()))
        .bind(c.rules.min_spend.map(|m| m.cents()))
        .bind(micros(c.rules.starts_at))
        .bind(micros(c.rules.ends_at))
        .bind(c.rules.max_uses.map(i64::from))
        .bind(c.rules.per_user_limit.map(i64::from))
        .bind(i64::from(c.uses))
        .bind(i64::from(c.active))
        .bind(micros(c.created_at))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        crate::audit::record(&mut tx, audit).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn coupons(&self, page: PageRequest) -> Result<Page<Coupon>, StoreError> {
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM coupons")
            .fetch_one(&self.reader)
            .await
            .map_err(map_err)?;
        let rows = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {COUPON_COLUMNS} FROM coupons ORDER BY created_at DESC, id DESC LIMIT "
        ))
        .push_bind(i64::from(page.per_page()))
        .push(" OFFSET ")
        .push_bind(i64::try_from(page.offset()).unwrap_or(i64::MAX))
        .build()
        .fetch_all(&self.reader)
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

fn order_from_row(row: &SqliteRow, lines: Vec<OrderLine>) -> Result<OrderRecord, StoreError> {
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
    let paid_at: Option<i64> = get(row, "paid_at")?;
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
        created_at: from_micros(get(row, "created_at")?)?,
        updated_at: from_micros(get(row, "updated_at")?)?,
        expires_at: from_micros(get(row, "expires_at")?)?,
        paid_at: paid_at.map(from_micros).transpose()?,
    })
}

fn line_from_row(row: &SqliteRow) -> Result<(OrderId, OrderLine), StoreError> {
    let product: Option<Uuid> = get(row, "product_id")?;
    let sale: Option<Uuid> = get(row, "sale_id")?;
    let item_no: Option<i64> = get(row, "item_no")?;
    Ok((
        OrderId::from_uuid(get(row, "order_id")?),
        OrderLine {
            line: count(get(row, "line")?, "order_items.line")?,
            product_id: product.map(ProductId::from_uuid),
            sale_id: sale.map(SaleId::from_uuid),
            item_no: item_no
                .map(|n| count(n, "order_items.item_no"))
                .transpose()?,
            name: get(row, "name")?,
            unit_price_cents: get(row, "unit_price_cents")?,
            quantity: count(get(row, "quantity")?, "order_items.quantity")?,
        },
    ))
}

/// Orders with their lines, in the order of `rows`.
async fn with_lines(
    conn: &mut SqliteConnection,
    rows: Vec<SqliteRow>,
) -> Result<Vec<OrderRecord>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // A flash-sale order's one line is not stored: it is its reservation's item, whose name and
    // price never change once the sale exists.
    let ids: Vec<Uuid> = rows
        .iter()
        .map(|row| get::<Uuid>(row, "id"))
        .collect::<Result<_, _>>()?;
    let mut qb = QueryBuilder::<Sqlite>::new(
        "SELECT order_id, line, product_id, sale_id, item_no, name, unit_price_cents, quantity \
         FROM order_items WHERE order_id IN (",
    );
    let mut list = qb.separated(", ");
    for id in &ids {
        list.push_bind(id);
    }
    qb.push(
        ") UNION ALL \
         SELECT o.id, 1, NULL, r.sale_id, r.item_no, i.name, i.price_cents, r.quantity \
         FROM orders o JOIN reservations r ON r.id = o.reservation_id \
         JOIN flash_sale_items i ON i.sale_id = r.sale_id AND i.no = r.item_no \
         WHERE o.id IN (",
    );
    let mut list = qb.separated(", ");
    for id in &ids {
        list.push_bind(id);
    }
    qb.push(") ORDER BY 1, 2");
    let mut lines: std::collections::HashMap<OrderId, Vec<OrderLine>> =
        std::collections::HashMap::new();
    for row in qb.build().fetch_all(&mut *conn).await.map_err(map_err)? {
        let (order, line) = line_from_row(&row)?;
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
    conn: &mut SqliteConnection,
    id: OrderId,
) -> Result<Option<OrderRecord>, StoreError> {
    let row =
        QueryBuilder::<Sqlite>::new(format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = "))
            .push_bind(*id.as_uuid())
            .build()
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_err)?;
    Ok(with_lines(conn, row.into_iter().collect()).await?.pop())
}

/// Writes an address; a default one takes the default from the user's others.
async fn write_address(conn: &mut SqliteConnection, a: &AddressRecord) -> Result<(), StoreError> {
    if a.is_default {
        sqlx::query("UPDATE addresses SET is_default = 0 WHERE user_id = ? AND id != ?")
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
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
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
    .bind(i64::from(a.is_default))
    .bind(micros(a.created_at))
    .bind(micros(a.updated_at))
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// Gives back what an unpaid cart order held: its items' stock and its coupon use.
async fn give_back(conn: &mut SqliteConnection, order: OrderId) -> Result<(), StoreError> {
    restock(&mut *conn, order).await?;
    let coupon: Option<Uuid> =
        sqlx::query_scalar("DELETE FROM coupon_redemptions WHERE order_id = ? RETURNING coupon_id")
            .bind(order.as_uuid())
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_err)?;
    if let Some(coupon) = coupon {
        sqlx::query("UPDATE coupons SET uses = uses - 1 WHERE id = ? AND uses > 0")
            .bind(coupon)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
    }
    Ok(())
}

/// Puts a cart order's items back in stock.
async fn restock(conn: &mut SqliteConnection, order: OrderId) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE products SET \
           stock = stock + (SELECT SUM(quantity) FROM order_items \
                            WHERE order_id = ?1 AND product_id = products.id), \
           sold = MAX(0, sold - (SELECT SUM(quantity) FROM order_items \
                                 WHERE order_id = ?1 AND product_id = products.id)), \
           version = version + 1 \
         WHERE id IN (SELECT product_id FROM order_items \
                      WHERE order_id = ?1 AND product_id IS NOT NULL)",
    )
    .bind(order.as_uuid())
    .execute(conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// Which orders a page lists.
#[derive(Debug, Clone, Copy)]
enum OrdersOf {
    User(UserId, Option<OrderStatus>),
    Status(Option<OrderStatus>),
}

fn push_orders_filter(qb: &mut QueryBuilder<Sqlite>, filter: OrdersOf) {
    match filter {
        OrdersOf::User(user, status) => {
            // Checkout orders by orders_user; flash-sale orders by flash_order_owners, and those
            // the order indexer has not reached yet by a range of the primary key
            // (order_index.rs).
            let user = *user.as_uuid();
            qb.push(
                " WHERE id IN (SELECT id FROM orders WHERE reservation_id IS NULL AND user_id = ",
            )
            .push_bind(user)
            .push(" UNION ALL SELECT order_id FROM flash_order_owners WHERE user_id = ")
            .push_bind(user)
            .push(
                " UNION ALL SELECT id FROM orders \
                     WHERE id >= (SELECT pending_from FROM flash_order_index WHERE id = 1) \
                       AND reservation_id IS NOT NULL AND user_id = ",
            )
            .push_bind(user)
            .push(")");
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

async fn page_of_orders(
    store: &SqliteStore,
    filter: OrdersOf,
    page: PageRequest,
) -> Result<Page<OrderRecord>, StoreError> {
    let mut conn = store.reader.acquire().await.map_err(map_err)?;
    let mut count_q = QueryBuilder::<Sqlite>::new("SELECT COUNT(*) FROM orders");
    push_orders_filter(&mut count_q, filter);
    let total: i64 = count_q
        .build_query_scalar()
        .fetch_one(&mut *conn)
        .await
        .map_err(map_err)?;
    let mut rows_q = QueryBuilder::<Sqlite>::new(format!("SELECT {ORDER_COLUMNS} FROM orders"));
    push_orders_filter(&mut rows_q, filter);
    // Newest first by id: ids are UUID v7, ordered by their creation within the process, so no
    // index on the creation time is kept up at every reservation.
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
impl OrderStore for SqliteStore {
    async fn checkout(&self, req: &CheckoutRequest) -> Result<CheckoutOutcome, StoreError> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let lines = cart_lines(&mut tx, req.user_id).await?;
        if lines.is_empty() {
            return Ok(CheckoutOutcome::EmptyCart);
        }
        // Counted inside the writer's transaction: parallel checkouts cannot slip past the cap.
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM orders WHERE user_id = ? AND status = ? \
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
        for line in &priced.lines {
            let p = line.product;
            let taken = sqlx::query(
                "UPDATE products SET stock = stock - ?1, sold = sold + ?1, version = version + 1 \
                 WHERE id = ?2 AND stock >= ?1 AND active = 1 AND deleted_at IS NULL",
            )
            .bind(i64::from(line.quantity))
            .bind(p.id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            if taken.rows_affected() == 0 {
                let available: Option<i64> =
                    sqlx::query_scalar("SELECT stock FROM products WHERE id = ?")
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
                let row = QueryBuilder::<Sqlite>::new(format!(
                    "SELECT {COUPON_COLUMNS} FROM coupons WHERE active = 1 AND code = "
                ))
                .push_bind(code.as_str())
                .build()
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
                let Some(row) = row else {
                    return Ok(CheckoutOutcome::CouponNotFound);
                };
                let coupon = coupon_from_row(&row)?;
                let user_uses: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM coupon_redemptions WHERE coupon_id = ? AND user_id = ?",
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
                // The single writer makes read-then-count safe inside this transaction; the
                // condition states the invariant anyway.
                sqlx::query("UPDATE coupons SET uses = uses + 1 WHERE id = ? AND uses = ?")
                    .bind(coupon.id.as_uuid())
                    .bind(i64::from(coupon.uses))
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                sqlx::query(
                    "INSERT INTO coupon_redemptions (coupon_id, user_id, order_id, at) \
                     VALUES (?, ?, ?, ?)",
                )
                .bind(coupon.id.as_uuid())
                .bind(req.user_id.as_uuid())
                .bind(req.order_id.as_uuid())
                .bind(micros(req.now))
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
             VALUES (?, ?, 'pending_payment', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(req.order_id.as_uuid())
        .bind(req.user_id.as_uuid())
        .bind(priced.currency().as_str())
        .bind(totals.subtotal.cents())
        .bind(totals.discount.cents())
        .bind(totals.total.cents())
        .bind(shipping)
        .bind(req.coupon_code.as_deref())
        .bind(micros(req.now))
        .bind(micros(req.now))
        .bind(micros(req.expires_at))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO order_items (order_id, line, product_id, name, unit_price_cents, \
             quantity) ",
        );
        qb.push_values(priced.order_lines(), |mut b, line| {
            b.push_bind(*req.order_id.as_uuid())
                .push_bind(i64::from(line.line))
                .push_bind(line.product_id.map(|id| *id.as_uuid()))
                .push_bind(line.name)
                .push_bind(line.unit_price_cents)
                .push_bind(i64::from(line.quantity));
        });
        qb.build().execute(&mut *tx).await.map_err(map_err)?;
        sqlx::query("DELETE FROM cart_items WHERE user_id = ?")
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
        self.settled().await?;
        let mut conn = self.reader.acquire().await.map_err(map_err)?;
        load_order(&mut conn, id).await
    }

    async fn orders_of(
        &self,
        user: UserId,
        status: Option<OrderStatus>,
        page: PageRequest,
    ) -> Result<Page<OrderRecord>, StoreError> {
        self.settled().await?;
        page_of_orders(self, OrdersOf::User(user, status), page).await
    }

    async fn all_orders(
        &self,
        status: Option<OrderStatus>,
        page: PageRequest,
    ) -> Result<Page<OrderRecord>, StoreError> {
        self.settled().await?;
        page_of_orders(self, OrdersOf::Status(status), page).await
    }

    async fn cancel_order(
        &self,
        id: OrderId,
        now: OffsetDateTime,
    ) -> Result<(CancelOutcome, Option<Released>), StoreError> {
        self.settled().await?;
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let row: Option<(String, Option<Uuid>)> =
            sqlx::query_as("SELECT status, reservation_id FROM orders WHERE id = ?")
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
            "UPDATE orders SET status = '{}', updated_at = ? WHERE id = ? AND {}",
            OrderStatus::Cancelled.as_str(),
            order_may_become(OrderStatus::Cancelled)
        )))
        .bind(micros(now))
        .bind(id.as_uuid())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let released = match reservation {
            Some(reservation) => {
                let row: Option<(Uuid, i64, Uuid, i64)> = sqlx::query_as(
                    "UPDATE reservations SET status = 'cancelled', released_at = ? \
                     WHERE id = ? AND status = 'reserved' \
                     RETURNING sale_id, item_no, buyer_id, quantity",
                )
                .bind(micros(now))
                .bind(reservation)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
                row.map(|(sale, item_no, buyer, quantity)| {
                    Ok::<_, StoreError>(Released {
                        reservation: ReservationId::from_uuid(reservation),
                        sale_id: SaleId::from_uuid(sale),
                        item_no: count(item_no, "reservations.item_no")?,
                        buyer: BuyerId(buyer),
                        quantity: count(quantity, "reservations.quantity")?,
                    })
                })
                .transpose()?
            }
            None => {
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
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let due: Vec<Uuid> = sqlx::query_scalar(AssertSqlSafe(format!(
            "UPDATE orders SET status = '{}', updated_at = ?1 \
             WHERE id IN (SELECT id FROM orders \
                          WHERE {} AND reservation_id IS NULL \
                            AND expires_at <= ?1 ORDER BY expires_at LIMIT ?2) \
             RETURNING id",
            OrderStatus::Expired.as_str(),
            order_may_become(OrderStatus::Expired)
        )))
        .bind(micros(now))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
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
