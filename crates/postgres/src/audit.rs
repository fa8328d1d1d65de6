//! The audit log in PostgreSQL: written by the audited methods inside their own transactions.

use async_trait::async_trait;
use flashmart_app::audit::{AuditEntry, AuditFilter};
use flashmart_app::ports::AuditStore;
use flashmart_app::{Page, PageRequest, StoreError};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row as _};

use crate::PgStore;
use crate::db::{corrupt, map_err};

fn json(value: Option<&serde_json::Value>) -> Option<String> {
    value.map(serde_json::Value::to_string)
}

/// Writes `entry` on `conn`, which is inside the transaction of the change it records.
pub(crate) async fn record(conn: &mut PgConnection, entry: &AuditEntry) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (id, at, actor, action, entity, entity_id, before, after) \
         VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb)",
    )
    .bind(entry.id)
    .bind(entry.at)
    .bind(&entry.actor)
    .bind(&entry.action)
    .bind(&entry.entity)
    .bind(&entry.entity_id)
    .bind(json(entry.before.as_ref()))
    .bind(json(entry.after.as_ref()))
    .execute(conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

fn parse(
    column: &'static str,
    text: Option<String>,
) -> Result<Option<serde_json::Value>, StoreError> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| corrupt(column, e)))
        .transpose()
}

fn entry_from_row(row: &PgRow) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        id: row.try_get("id").map_err(map_err)?,
        at: row.try_get("at").map_err(map_err)?,
        actor: row.try_get("actor").map_err(map_err)?,
        action: row.try_get("action").map_err(map_err)?,
        entity: row.try_get("entity").map_err(map_err)?,
        entity_id: row.try_get("entity_id").map_err(map_err)?,
        before: parse("audit_log.before", row.try_get("before").map_err(map_err)?)?,
        after: parse("audit_log.after", row.try_get("after").map_err(map_err)?)?,
    })
}

fn push_filter(qb: &mut QueryBuilder<Postgres>, filter: &AuditFilter) {
    qb.push(" WHERE 1 = 1");
    if let Some(actor) = &filter.actor {
        qb.push(" AND actor = ").push_bind(actor.as_str());
    }
    if let Some(entity) = &filter.entity {
        qb.push(" AND entity = ").push_bind(entity.as_str());
    }
    if let Some(id) = &filter.entity_id {
        qb.push(" AND entity_id = ").push_bind(id.as_str());
    }
}

#[async_trait]
impl AuditStore for PgStore {
    async fn audit_entries(
        &self,
        filter: &AuditFilter,
        page: PageRequest,
    ) -> Result<Page<AuditEntry>, StoreError> {
        let mut count = QueryBuilder::<Postgres>::new("SELECT count(*) FROM audit_log");
        push_filter(&mut count, filter);
        let total: i64 = count
            .build_query_scalar()
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        let mut qb = QueryBuilder::<Postgres>::new(
            "SELECT id, at, actor, action, entity, entity_id, before::text AS before, \
             after::text AS after FROM audit_log",
        );
        push_filter(&mut qb, filter);
        qb.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(page.per_page()))
            .push(" OFFSET ")
            .push_bind(i64::try_from(page.offset()).unwrap_or(i64::MAX));
        let items = qb
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?
            .iter()
            .map(entry_from_row)
            .collect::<Result<_, _>>()?;
        Ok(Page::new(page, items, u64::try_from(total).unwrap_or(0)))
    }
}
