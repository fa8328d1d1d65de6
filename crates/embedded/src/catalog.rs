//! Products in SQLite.

use async_trait::async_trait;
use flashmart_app::audit::AuditEntry;
use flashmart_app::catalog::{Product, ProductFilter};
use flashmart_app::ports::CatalogStore;
use flashmart_app::{Page, PageRequest, StoreError};
use flashmart_domain::{Currency, Money, ProductId};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row as _, Sqlite};
use time::OffsetDateTime;

use crate::SqliteStore;
use crate::audit::record;
use crate::db::{corrupt, from_micros, map_err, micros};

const PRODUCT_COLUMNS: &str = "id, name, description, price_cents, currency, stock, sold, \
                               category, images, active, created_at, updated_at, version";

macro_rules! select_products {
    ($rest:literal) => {
        concat!(
            "SELECT id, name, description, price_cents, currency, stock, sold, category, images, \
             active, created_at, updated_at, version FROM products ",
            $rest
        )
    };
}

pub(crate) fn product_from_row(row: &SqliteRow) -> Result<Product, StoreError> {
    let currency: String = row.try_get("currency").map_err(map_err)?;
    let currency = Currency::parse(&currency).map_err(|e| corrupt("products.currency", e))?;
    let images: String = row.try_get("images").map_err(map_err)?;
    let stock: i64 = row.try_get("stock").map_err(map_err)?;
    let sold: i64 = row.try_get("sold").map_err(map_err)?;
    Ok(Product {
        id: ProductId::from_uuid(row.try_get("id").map_err(map_err)?),
        name: row.try_get("name").map_err(map_err)?,
        description: row.try_get("description").map_err(map_err)?,
        price: Money::new(row.try_get("price_cents").map_err(map_err)?, currency)
            .map_err(|e| corrupt("products.price_cents", e))?,
        stock: u32::try_from(stock).map_err(|e| corrupt("products.stock", e))?,
        sold: u64::try_from(sold).map_err(|e| corrupt("products.sold", e))?,
        category: row.try_get("category").map_err(map_err)?,
        images: serde_json::from_str(&images).map_err(|e| corrupt("products.images", e))?,
        active: row.try_get::<i64, _>("active").map_err(map_err)? != 0,
        created_at: from_micros(row.try_get("created_at").map_err(map_err)?)?,
        updated_at: from_micros(row.try_get("updated_at").map_err(map_err)?)?,
        version: row.try_get("version").map_err(map_err)?,
    })
}

fn images_json(images: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(images).map_err(StoreError::other)
}

fn push_filter(qb: &mut QueryBuilder<Sqlite>, filter: &ProductFilter) {
    qb.push(" WHERE deleted_at IS NULL");
    if !filter.include_inactive {
        qb.push(" AND active = 1");
    }
    if let Some(category) = &filter.category {
        qb.push(" AND category = ").push_bind(category.as_str());
    }
    for pattern in filter.like_patterns() {
        qb.push(" AND (name LIKE ")
            .push_bind(pattern.clone())
            .push(" ESCAPE '\\' OR description LIKE ")
            .push_bind(pattern)
            .push(" ESCAPE '\\')");
    }
}

#[async_trait]
impl CatalogStore for SqliteStore {
    async fn insert_product(&self, p: &Product, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        sqlx::query(
            "INSERT INTO products (id, name, description, price_cents, currency, stock, sold, \
             category, images, active, created_at, updated_at, version) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(p.id.as_uuid())
        .bind(&p.name)
        .bind(&p.description)
        .bind(p.price.cents())
        .bind(p.price.currency().as_str())
        .bind(i64::from(p.stock))
        .bind(i64::try_from(p.sold).unwrap_or(i64::MAX))
        .bind(p.category.as_deref())
        .bind(images_json(&p.images)?)
        .bind(i64::from(p.active))
        .bind(micros(p.created_at))
        .bind(micros(p.updated_at))
        .bind(p.version)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        record(&mut tx, audit).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn product(&self, id: ProductId) -> Result<Option<Product>, StoreError> {
        sqlx::query(select_products!("WHERE id = ? AND deleted_at IS NULL"))
            .bind(id.as_uuid())
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?
            .as_ref()
            .map(product_from_row)
            .transpose()
    }

    async fn update_product(&self, p: &Product, audit: &AuditEntry) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let done = sqlx::query(
            "UPDATE products SET name = ?, description = ?, price_cents = ?, currency = ?, \
             stock = ?, category = ?, images = ?, active = ?, updated_at = ?, version = ? \
             WHERE id = ? AND version = ? AND deleted_at IS NULL",
        )
        .bind(&p.name)
        .bind(&p.description)
        .bind(p.price.cents())
        .bind(p.price.currency().as_str())
        .bind(i64::from(p.stock))
        .bind(p.category.as_deref())
        .bind(images_json(&p.images)?)
        .bind(i64::from(p.active))
        .bind(micros(p.updated_at))
        .bind(p.version)
        .bind(p.id.as_uuid())
        .bind(p.version - 1)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        record(&mut tx, audit).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn delete_product(
        &self,
        p: &Product,
        now: OffsetDateTime,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let done = sqlx::query(
            "UPDATE products SET deleted_at = ?1, updated_at = ?1, version = version + 1 \
             WHERE id = ?2 AND version = ?3 AND deleted_at IS NULL",
        )
        .bind(micros(now))
        .bind(p.id.as_uuid())
        .bind(p.version)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        // A deleted product leaves every cart at once.
        sqlx::query("DELETE FROM cart_items WHERE product_id = ?")
            .bind(p.id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        record(&mut tx, audit).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    #[tracing::instrument(level = "debug", name = "sqlite.list_products", skip_all)]
    async fn list_products(
        &self,
        filter: &ProductFilter,
        page: PageRequest,
    ) -> Result<Page<Product>, StoreError> {
        let mut count = QueryBuilder::<Sqlite>::new("SELECT COUNT(*) FROM products");
        push_filter(&mut count, filter);
        let total: i64 = count
            .build_query_scalar()
            .fetch_one(&self.reader)
            .await
            .map_err(map_err)?;
        let mut qb = QueryBuilder::<Sqlite>::new(format!("SELECT {PRODUCT_COLUMNS} FROM products"));
        push_filter(&mut qb, filter);
        qb.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(i64::from(page.per_page()))
            .push(" OFFSET ")
            .push_bind(i64::try_from(page.offset()).unwrap_or(i64::MAX));
        let rows = qb.build().fetch_all(&self.reader).await.map_err(map_err)?;
        let items = rows
            .iter()
            .map(product_from_row)
            .collect::<Result<_, _>>()?;
        Ok(Page::new(page, items, u64::try_from(total).unwrap_or(0)))
    }
}
