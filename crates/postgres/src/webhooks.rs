//! Webhook endpoints, the event outbox and deliveries in PostgreSQL. `emit` is how the other
//! store methods write an event inside their own transaction.

use async_trait::async_trait;
use flashmart_app::audit::AuditEntry;
use flashmart_app::flash_sale::model::Released;
use flashmart_app::ports::WebhookStore;
use flashmart_app::webhooks::{
    AttemptOutcome, AttemptRecord, Delivery, DueDelivery, Endpoint, EventType, OrderFacts,
    WebhookEvent, reservation_expired,
};
use flashmart_app::{Page, PageRequest, StoreError};
use flashmart_domain::{EventId, OrderId, WebhookId};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row as _};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::PgStore;
use crate::audit::record;
use crate::db::{corrupt, map_err};

/// The active endpoints subscribed to `kind`: looked up once for a batch of events of one type.
pub(crate) async fn subscribers(
    conn: &mut PgConnection,
    kind: EventType,
) -> Result<Vec<Uuid>, StoreError> {
    sqlx::query_scalar("SELECT id FROM webhook_endpoints WHERE active AND $1 = ANY (events)")
        .bind(kind.as_str())
        .fetch_all(conn)
        .await
        .map_err(map_err)
}

/// Writes `event` with a delivery to every active endpoint subscribed to it, on `conn` (inside
/// the transaction of the change it reports). Nothing when no endpoint wants it.
pub(crate) async fn emit(conn: &mut PgConnection, event: &WebhookEvent) -> Result<(), StoreError> {
    let endpoints = subscribers(conn, event.kind).await?;
    write_event(conn, event, &endpoints).await
}

/// Writes `event` with a delivery to each of `endpoints` (from [`subscribers`]).
pub(crate) async fn write_event(
    conn: &mut PgConnection,
    event: &WebhookEvent,
    endpoints: &[Uuid],
) -> Result<(), StoreError> {
    if endpoints.is_empty() {
        return Ok(());
    }
    sqlx::query("INSERT INTO webhook_events (id, type, created_at, body) VALUES ($1, $2, $3, $4)")
        .bind(event.id.as_uuid())
        .bind(event.kind.as_str())
        .bind(event.created_at)
        .bind(event.body())
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    sqlx::query(
        "INSERT INTO webhook_deliveries (endpoint_id, event_id, status, next_attempt_at, \
         created_at) SELECT e, $2, 'pending', $3, $3 FROM UNNEST($1::uuid[]) AS e",
    )
    .bind(endpoints)
    .bind(event.id.as_uuid())
    .bind(event.created_at)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// Writes many events with a delivery of each to each of `endpoints`, in two statements.
pub(crate) async fn write_events(
    conn: &mut PgConnection,
    events: &[WebhookEvent],
    endpoints: &[Uuid],
) -> Result<(), StoreError> {
    if events.is_empty() || endpoints.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = events.iter().map(|e| *e.id.as_uuid()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let at: Vec<OffsetDateTime> = events.iter().map(|e| e.created_at).collect();
    let bodies: Vec<String> = events.iter().map(WebhookEvent::body).collect();
    sqlx::query(
        "INSERT INTO webhook_events (id, type, created_at, body) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::text[])",
    )
    .bind(&ids)
    .bind(&kinds)
    .bind(&at)
    .bind(&bodies)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    sqlx::query(
        "INSERT INTO webhook_deliveries (endpoint_id, event_id, status, next_attempt_at, \
         created_at) SELECT p, e, 'pending', at, at \
         FROM UNNEST($1::uuid[]) AS p, UNNEST($2::uuid[], $3::timestamptz[]) AS ev(e, at)",
    )
    .bind(endpoints)
    .bind(&ids)
    .bind(&at)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// `kind` about the order `id` as it is now (on `conn`, after the change): its id, buyer,
/// status and amounts.
pub(crate) async fn emit_order(
    conn: &mut PgConnection,
    kind: EventType,
    id: OrderId,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let endpoints = subscribers(conn, kind).await?;
    order_event_to(conn, kind, id, now, &endpoints).await
}

/// [`emit_order`] to endpoints already looked up.
pub(crate) async fn order_event_to(
    conn: &mut PgConnection,
    kind: EventType,
    id: OrderId,
    now: OffsetDateTime,
    endpoints: &[Uuid],
) -> Result<(), StoreError> {
    if endpoints.is_empty() {
        return Ok(());
    }
    let row = sqlx::query(
        "SELECT user_id, status, currency, total_cents, refunded_cents, reservation_id \
         FROM order_view WHERE id = $1",
    )
    .bind(id.as_uuid())
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?;
    let Some(row) = row else {
        return Ok(());
    };
    let (status, currency): (String, String) = (
        row.try_get("status").map_err(map_err)?,
        row.try_get("currency").map_err(map_err)?,
    );
    let order = OrderFacts {
        order_id: *id.as_uuid(),
        user_id: row.try_get("user_id").map_err(map_err)?,
        status: &status,
        currency: currency.into(),
        total_cents: row.try_get("total_cents").map_err(map_err)?,
        refunded_cents: row.try_get("refunded_cents").map_err(map_err)?,
        reservation_id: row.try_get("reservation_id").map_err(map_err)?,
    };
    write_event(conn, &order.event(kind, now), endpoints).await
}

/// `reservation.expired` for each reservation an expiry sweep released, and `order.expired` for
/// its order if it has one, on `conn` (the sweep's transaction).
pub(crate) async fn expired(
    conn: &mut PgConnection,
    now: OffsetDateTime,
    released: &[(Option<Uuid>, Released)],
) -> Result<(), StoreError> {
    let reservations = subscribers(conn, EventType::ReservationExpired).await?;
    let orders = subscribers(conn, EventType::OrderExpired).await?;
    for (order, r) in released {
        write_event(conn, &reservation_expired(now, r, *order), &reservations).await?;
        if let Some(order) = order {
            order_event_to(
                conn,
                EventType::OrderExpired,
                OrderId::from_uuid(*order),
                now,
                &orders,
            )
            .await?;
        }
    }
    Ok(())
}

fn endpoint_from_row(row: &PgRow) -> Result<Endpoint, StoreError> {
    let names: Vec<String> = row.try_get("events").map_err(map_err)?;
    Ok(Endpoint {
        id: WebhookId::from_uuid(row.try_get("id").map_err(map_err)?),
        url: row.try_get("url").map_err(map_err)?,
        events: names
            .iter()
            .map(|n| {
                n.parse()
                    .map_err(|e| corrupt("webhook_endpoints.events", e))
            })
            .collect::<Result<_, _>>()?,
        description: row.try_get("description").map_err(map_err)?,
        secret: row.try_get("secret").map_err(map_err)?,
        active: row.try_get("active").map_err(map_err)?,
        created_at: row.try_get("created_at").map_err(map_err)?,
        updated_at: row.try_get("updated_at").map_err(map_err)?,
    })
}

fn delivery_from_row(row: &PgRow) -> Result<Delivery, StoreError> {
    let status: String = row.try_get("status").map_err(map_err)?;
    Ok(Delivery {
        endpoint_id: WebhookId::from_uuid(row.try_get("endpoint_id").map_err(map_err)?),
        event_id: EventId::from_uuid(row.try_get("event_id").map_err(map_err)?),
        event_type: row.try_get("type").map_err(map_err)?,
        status: status
            .parse()
            .map_err(|e| corrupt("webhook_deliveries.status", e))?,
        attempts: u32::try_from(row.try_get::<i32, _>("attempts").map_err(map_err)?)
            .map_err(|e| corrupt("webhook_deliveries.attempts", e))?,
        next_attempt_at: row.try_get("next_attempt_at").map_err(map_err)?,
        last_status: row
            .try_get::<Option<i32>, _>("last_status")
            .map_err(map_err)?
            .and_then(|s| u16::try_from(s).ok()),
        last_error: row.try_get("last_error").map_err(map_err)?,
        created_at: row.try_get("created_at").map_err(map_err)?,
        delivered_at: row.try_get("delivered_at").map_err(map_err)?,
    })
}

macro_rules! select_deliveries {
    ($rest:literal) => {
        concat!(
            "SELECT d.endpoint_id, d.event_id, e.type, d.status, d.attempts, d.next_attempt_at, \
             d.last_status, d.last_error, d.created_at, d.delivered_at \
             FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id ",
            $rest
        )
    };
}

#[async_trait]
impl WebhookStore for PgStore {
    async fn insert_endpoint(
        &self,
        e: &Endpoint,
        max: u64,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // One registration at a time, so that the count below stays true until the commit.
        sqlx::query("LOCK TABLE webhook_endpoints IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_endpoints")
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        if u64::try_from(count).unwrap_or(u64::MAX) >= max {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO webhook_endpoints (id, url, events, description, secret, active, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(e.id.as_uuid())
        .bind(&e.url)
        .bind(e.event_names())
        .bind(&e.description)
        .bind(&e.secret)
        .bind(e.active)
        .bind(e.created_at)
        .bind(e.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        record(&mut tx, audit).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn endpoint(&self, id: WebhookId) -> Result<Option<Endpoint>, StoreError> {
        sqlx::query("SELECT * FROM webhook_endpoints WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?
            .as_ref()
            .map(endpoint_from_row)
            .transpose()
    }

    async fn endpoints(&self, page: PageRequest) -> Result<Page<Endpoint>, StoreError> {
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_endpoints")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        let items =
            sqlx::query("SELECT * FROM webhook_endpoints ORDER BY id DESC LIMIT $1 OFFSET $2")
                .bind(i64::from(page.per_page()))
                .bind(i64::try_from(page.offset()).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?
                .iter()
                .map(endpoint_from_row)
                .collect::<Result<_, _>>()?;
        Ok(Page::new(page, items, u64::try_from(total).unwrap_or(0)))
    }

    async fn update_endpoint(
        &self,
        e: &Endpoint,
        read: &Endpoint,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let done = sqlx::query(
            "UPDATE webhook_endpoints SET url = $1, events = $2, description = $3, active = $4, \
             updated_at = $5 WHERE id = $6 AND updated_at = $7",
        )
        .bind(&e.url)
        .bind(e.event_names())
        .bind(&e.description)
        .bind(e.active)
        .bind(e.updated_at)
        .bind(e.id.as_uuid())
        .bind(read.updated_at)
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

    async fn delete_endpoint(&self, id: WebhookId, audit: &AuditEntry) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // Its deliveries go with it (ON DELETE CASCADE).
        let done = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
            .bind(id.as_uuid())
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

    async fn deliveries(
        &self,
        endpoint: WebhookId,
        page: PageRequest,
    ) -> Result<Page<Delivery>, StoreError> {
        let total: i64 =
            sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1")
                .bind(endpoint.as_uuid())
                .fetch_one(&self.pool)
                .await
                .map_err(map_err)?;
        let items = sqlx::query(select_deliveries!(
            "WHERE d.endpoint_id = $1 ORDER BY d.event_id DESC LIMIT $2 OFFSET $3"
        ))
        .bind(endpoint.as_uuid())
        .bind(i64::from(page.per_page()))
        .bind(i64::try_from(page.offset()).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?
        .iter()
        .map(delivery_from_row)
        .collect::<Result<_, _>>()?;
        Ok(Page::new(page, items, u64::try_from(total).unwrap_or(0)))
    }

    async fn redeliver(
        &self,
        endpoint: WebhookId,
        event: EventId,
        now: OffsetDateTime,
        audit: &AuditEntry,
    ) -> Result<Option<Delivery>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, \
             next_attempt_at = $1 WHERE endpoint_id = $2 AND event_id = $3",
        )
        .bind(now)
        .bind(endpoint.as_uuid())
        .bind(event.as_uuid())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        record(&mut tx, audit).await?;
        let row = sqlx::query(select_deliveries!(
            "WHERE d.endpoint_id = $1 AND d.event_id = $2"
        ))
        .bind(endpoint.as_uuid())
        .bind(event.as_uuid())
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        delivery_from_row(&row).map(Some)
    }

    async fn claim_due(
        &self,
        now: OffsetDateTime,
        until: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        // SKIP LOCKED: workers on several instances share the due deliveries.
        let rows = sqlx::query(
            "WITH due AS ( \
                 SELECT d.endpoint_id, d.event_id FROM webhook_deliveries d \
                 JOIN webhook_endpoints p ON p.id = d.endpoint_id \
                 WHERE d.status = 'pending' AND d.next_attempt_at <= $1 AND p.active \
                 ORDER BY d.next_attempt_at LIMIT $3 FOR UPDATE OF d SKIP LOCKED) \
             UPDATE webhook_deliveries d SET next_attempt_at = $2 FROM due, \
                 webhook_endpoints p, webhook_events e \
             WHERE d.endpoint_id = due.endpoint_id AND d.event_id = due.event_id \
               AND p.id = d.endpoint_id AND e.id = d.event_id \
             RETURNING d.endpoint_id, d.event_id, d.attempts, p.url, p.secret, e.body",
        )
        .bind(now)
        .bind(until)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                Ok(DueDelivery {
                    endpoint_id: WebhookId::from_uuid(row.try_get("endpoint_id").map_err(map_err)?),
                    event_id: EventId::from_uuid(row.try_get("event_id").map_err(map_err)?),
                    url: row.try_get("url").map_err(map_err)?,
                    secret: row.try_get("secret").map_err(map_err)?,
                    body: row.try_get("body").map_err(map_err)?,
                    attempts: u32::try_from(row.try_get::<i32, _>("attempts").map_err(map_err)?)
                        .unwrap_or(u32::MAX),
                })
            })
            .collect()
    }

    async fn record_attempt(&self, a: &AttemptRecord) -> Result<(), StoreError> {
        let (status, next, delivered) = match a.outcome {
            AttemptOutcome::Delivered => ("delivered", None, Some(a.at)),
            AttemptOutcome::RetryAt(t) => ("pending", Some(t), None),
            AttemptOutcome::Dead => ("dead", None, None),
        };
        sqlx::query(
            "UPDATE webhook_deliveries SET status = $1, attempts = $2, next_attempt_at = $3, \
             last_status = $4, last_error = $5, delivered_at = coalesce($6, delivered_at) \
             WHERE endpoint_id = $7 AND event_id = $8",
        )
        .bind(status)
        .bind(i32::try_from(a.attempts).unwrap_or(i32::MAX))
        .bind(next)
        .bind(a.status.map(i32::from))
        .bind(a.error.as_deref())
        .bind(delivered)
        .bind(a.endpoint_id.as_uuid())
        .bind(a.event_id.as_uuid())
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn emit_once(&self, key: &str, event: &WebhookEvent) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let fresh =
            sqlx::query("INSERT INTO webhook_once (key) VALUES ($1) ON CONFLICT DO NOTHING")
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?
                .rows_affected()
                == 1;
        if fresh {
            emit(&mut tx, event).await?;
            tx.commit().await.map_err(map_err)?;
        }
        Ok(fresh)
    }
}
