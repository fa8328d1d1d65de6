//! The group commit's journal: an outbox first, the tables after.
//!
//! A reservation is answered once its batch is durable, and a batch is durable once it is one
//! record appended to the outbox, a log beside the main database (`flashmart.outbox/`,
//! `outbox.rs`): the whole batch as one value (`codec.rs`), written with one system call on the
//! commit task itself (and synced, under `database.synchronous = full`). Writing the batch's rows
//! into the tables' B-trees at that moment (a reservation, an order, their indexes) cost several
//! times more, on a connection every other writer shares, and a round trip to that connection's
//! thread; measured, it was most of what limited reservations per second (docs/BENCHMARKS.md).
//!
//! The applier then writes queued batches into the main database in large transactions (a
//! background worker runs it every few tens of milliseconds, `run_outbox`), each transaction also
//! recording the last batch it applied (`outbox_applied`), and drops them from the outbox. So a
//! batch is applied exactly once, whatever is killed when: at start, batches up to that mark are
//! skipped and the rest applied before anything else is read.
//!
//! Nothing reads around it. Every read or write of reservations and orders (other than the hot
//! path's own append) first waits until every batch appended before it began is applied
//! (`settled`), applying them itself if the worker has not yet: a buyer who was answered sees
//! the reservation and its order in every later request. The sold-out and other refusals, and
//! catalog, accounts and carts, never wait for it.
//!
//! Contest purchases change rows already applied, so a batch holding purchases is written
//! straight to the main database after everything queued before it, in one transaction with its
//! reservations.
//!
//! Under `database.synchronous = full` the outbox and the database both sync at every commit, so
//! a batch is applied durably before it is dropped from the outbox. Under `normal` either may
//! lose its last writes in a power failure (never in a killed process): recent reservations can
//! be lost, as that setting says, but never applied twice, because a batch number is never
//! reused.

mod codec;
mod outbox;
mod rows;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use flashmart_app::StoreError;
use flashmart_app::flash_sale::model::{JournalOp, JournalOutcome, PurchaseOutcome};
use flashmart_app::ports::ReservationJournal;
use flashmart_app::webhooks::EventType;
use flashmart_domain::ReservationId;
use sqlx::AssertSqlSafe;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use time::OffsetDateTime;

use self::codec::Decoded;
pub(crate) use self::outbox::{Outbox, path_for as outbox_path};
use self::rows::add;
use crate::SqliteStore;
use crate::db::map_err;
use crate::order_index::LOWER_PENDING_FROM;

/// Reservations one apply transaction takes at most (whole batches; at least one): big enough
/// that each page of a table or index is written once for many rows, small enough that a
/// checkout or payment waiting for the writer waits tens of milliseconds at most.
const APPLY_MAX: u64 = 8192;

/// Reservations appended and not applied past which a new batch first waits for the applier: it
/// bounds the memory the queue holds (about 150 bytes a reservation) and how long a read may wait
/// for what is before it.
const BACKLOG_MAX: u64 = 262_144;

/// A batch written straight to the tables, with the contest purchases it carries.
#[derive(Debug, Clone, Copy)]
struct Direct<'a> {
    body: &'a [u8],
    purchases: &'a [(ReservationId, OffsetDateTime)],
}

#[async_trait]
impl ReservationJournal for SqliteStore {
    async fn commit(&self, ops: &[JournalOp]) -> Result<Vec<JournalOutcome>, StoreError> {
        let purchases: Vec<(ReservationId, OffsetDateTime)> = ops
            .iter()
            .filter_map(|op| match op {
                JournalOp::Purchase { id, at } => Some((*id, *at)),
                _ => None,
            })
            .collect();
        let encoded = codec::encode(ops)?;
        if purchases.is_empty() {
            if encoded.body.len() > 1 {
                let _order = self.outbox.append.lock().await;
                if self.outbox.backlog() >= BACKLOG_MAX {
                    // The applier has fallen far behind: catch up before adding more.
                    let _apply = self.outbox.apply.lock().await;
                    while self.outbox.backlog() >= BACKLOG_MAX / 2 {
                        self.apply_locked(None).await?;
                    }
                }
                if self.outbox.syncs() {
                    // A sync takes milliseconds: not on an async worker.
                    let outbox = Arc::clone(&self.outbox);
                    tokio::task::spawn_blocking(move || {
                        outbox.append(encoded.body, encoded.reservations)
                    })
                    .await
                    .map_err(|e| StoreError::Unavailable(format!("outbox append: {e}")))??;
                } else {
                    // A write to the page cache: microseconds, done here.
                    self.outbox.append(encoded.body, encoded.reservations)?;
                }
            }
            return Ok(vec![JournalOutcome::Done; ops.len()]);
        }
        // Purchases need the rows they change: everything queued goes first, then this batch's
        // rows and its purchases in one transaction.
        let _apply = self.outbox.apply.lock().await;
        while self.outbox.backlog() > APPLY_MAX {
            self.apply_locked(None).await?;
        }
        let found = self
            .apply_locked(Some(Direct {
                body: &encoded.body,
                purchases: &purchases,
            }))
            .await?;
        let purchased = rows::purchase_outcomes(&found)?;
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

impl SqliteStore {
    /// Waits until every batch appended before the call is applied, applying them if need be.
    /// Every read or write of reservations and orders starts here.
    pub(crate) async fn settled(&self) -> Result<(), StoreError> {
        let target = self.outbox.committed();
        if self.outbox.applied() >= target {
            return Ok(());
        }
        let _apply = self.outbox.apply.lock().await;
        while self.outbox.applied() < target {
            self.apply_locked(None).await?;
        }
        Ok(())
    }

    /// One run of the applier (the server runs it every few milliseconds): applies what is
    /// queued, in transactions of up to `APPLY_MAX` reservations. Returns the reservations
    /// applied.
    pub async fn run_outbox(&self) -> Result<u64, StoreError> {
        let mut applied = 0;
        let target = self.outbox.committed();
        while self.outbox.applied() < target {
            let _apply = self.outbox.apply.lock().await;
            let before = self.outbox.backlog();
            self.apply_locked(None).await?;
            applied += before.saturating_sub(self.outbox.backlog());
        }
        metrics::gauge!("flash_sale_outbox_backlog").set(self.outbox.backlog() as f64);
        Ok(applied)
    }

    /// Reservations appended to the outbox and not yet applied.
    pub fn outbox_backlog(&self) -> u64 {
        self.outbox.backlog()
    }

    /// Applies the oldest queued batches (up to `APPLY_MAX` reservations) and, with `direct`, a
    /// batch that skips the outbox, in one transaction of the main database; returns the rows
    /// the purchases read back. The caller holds `apply`.
    async fn apply_locked(&self, direct: Option<Direct<'_>>) -> Result<Vec<SqliteRow>, StoreError> {
        let entries = self.outbox.oldest(APPLY_MAX);
        let last = entries.last().map(|e| e.seq);
        if last.is_none() && direct.is_none() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let result = self.apply_transaction(&entries, last, direct).await;
        match &result {
            Ok(_) => {
                if let Some(last) = last {
                    self.outbox.applied_through(last);
                    // Applied whatever becomes of this: a batch left behind is deleted at the
                    // next apply, or at the next start.
                    if let Err(err) = self.outbox.forget_through(last) {
                        tracing::warn!(%err, "deleting applied batches from the outbox failed");
                    }
                }
                let reservations: u64 = entries.iter().map(|e| u64::from(e.reservations)).sum();
                metrics::histogram!("flash_sale_outbox_apply_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::histogram!("flash_sale_outbox_apply_batch_size")
                    .record(reservations as f64);
            }
            Err(err) => {
                tracing::error!(%err, batches = entries.len(), "applying the outbox failed; will retry");
                metrics::counter!("flash_sale_outbox_apply_failures_total").increment(1);
                self.outbox.failed(err);
            }
        }
        result
    }

    async fn apply_transaction(
        &self,
        entries: &[outbox::Entry],
        last: Option<u64>,
        direct: Option<Direct<'_>>,
    ) -> Result<Vec<SqliteRow>, StoreError> {
        let mut decoded = Decoded::default();
        for entry in entries {
            decoded.read(&entry.body)?;
        }
        if let Some(direct) = &direct {
            decoded.read(direct.body)?;
        }
        let mut conn = self.writer.acquire().await.map_err(map_err)?;
        // Webhooks: only when an endpoint wants `order.created` are the events built at all.
        let notify = decoded.reservations.iter().any(|r| r.order.is_some())
            && !crate::webhooks::subscribers(&mut conn, EventType::OrderCreated)
                .await?
                .is_empty();
        let mut sql = String::from("BEGIN IMMEDIATE; ");
        let mut args = SqliteArguments::default();
        let (orders, first_order) = rows::inserts(&mut sql, &mut args, &decoded)?;
        if notify {
            rows::order_events(&mut sql, &mut args, &decoded)?;
        }
        // The order indexer's mark: every order written here is at or after it (order_index.rs).
        if let Some(first) = first_order {
            sql.push_str(LOWER_PENDING_FROM);
            sql.push_str("; ");
            add(&mut args, first)?;
        }
        if let Some(last) = last {
            sql.push_str("UPDATE outbox_applied SET seq = ? WHERE id = 1; ");
            add(&mut args, i64::try_from(last).unwrap_or(i64::MAX))?;
        }
        if let Some(direct) = direct
            && !direct.purchases.is_empty()
        {
            rows::purchase_statements(&mut sql, &mut args, direct.purchases)?;
        }
        sql.push_str("COMMIT");
        // The whole transaction in one text; purchases read their rows back inside it.
        let found = match sqlx::query_with(AssertSqlSafe(sql), args)
            .fetch_all(&mut *conn)
            .await
        {
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
        self.indexer.committed(orders);
        Ok(found)
    }
}
