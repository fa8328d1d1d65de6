//! A user's flash-sale orders, indexed by user off the reservation hot path.
//!
//! Buyers reserve in random order, so an index on `orders (user_id)` made every group commit
//! dirty one page of that index per reservation: most of the bytes a commit wrote to the WAL and
//! about half the writer's time. Instead, a group commit only lowers `flash_order_index
//! .pending_from` to its first order id (one row, in the same transaction), and the indexer here
//! copies flash-sale orders from `pending_from` on into `flash_order_owners` in batches of
//! thousands, when the writer has had no reservation to write for a moment, or at once when too
//! many wait. A batch dirties each page of the index once however many of its entries land there.
//!
//! Nothing is ever missing from a user's list meanwhile: the orders listed are those
//! `orders_user` (checkout orders) and `flash_order_owners` name, plus the flash-sale orders from
//! `pending_from` on, found by a range of the primary key. Both writers run on the one writer
//! connection, one transaction at a time, so the rule "every flash-sale order below
//! `pending_from` is in `flash_order_owners`" holds after every commit, and after a crash.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flashmart_app::StoreError;
use sqlx::SqlitePool;
use uuid::Uuid;

use crate::SqliteStore;
use crate::db::map_err;

/// Orders indexed per transaction while the writer is idle: many entries share each page they
/// dirty.
const STEP: u32 = 4096;

/// Orders indexed per transaction while reservations are being written (the backlog is past
/// `MAX_BACKLOG`): a group commit waiting behind it waits a few milliseconds at most.
const BUSY_STEP: u32 = 1024;

/// Waiting entries past which the indexer works even while reservations are being written. A
/// user's order list scans the unindexed tail (on a reader, never blocking the writer), so this
/// bounds what a list costs during a long peak: about half a million rows, a fraction of a second.
const MAX_BACKLOG: u64 = 500_000;

/// How long the writer must have had no reservation to commit before the indexer takes it.
const IDLE_AFTER: Duration = Duration::from_millis(200);

/// Steps one call takes at most while the writer stays idle, so that it returns to its caller's
/// loop (and heartbeat) regularly.
const MAX_STEPS: u32 = 64;

const NEVER: u64 = u64::MAX;

/// What one transaction of the indexer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexStep {
    /// Orders added to the index.
    pub indexed: u64,
    /// Whether more wait.
    pub more: bool,
}

/// What the indexer needs to know between runs, shared by every clone of the store.
#[derive(Debug)]
pub(crate) struct IndexerState {
    /// Flash-sale orders committed and not yet indexed (an estimate for scheduling: the table
    /// holds the truth).
    waiting: AtomicU64,
    /// When the group commit last wrote, in milliseconds since `epoch` (`NEVER`: not since the
    /// store opened).
    last_commit_ms: AtomicU64,
    epoch: Instant,
}

impl IndexerState {
    pub(crate) fn new(waiting: u64) -> Self {
        Self {
            waiting: AtomicU64::new(waiting),
            last_commit_ms: AtomicU64::new(NEVER),
            epoch: Instant::now(),
        }
    }

    /// A group commit wrote `orders` new flash-sale orders.
    pub(crate) fn committed(&self, orders: u64) {
        self.waiting.fetch_add(orders, Ordering::Relaxed);
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NEVER - 1);
        self.last_commit_ms.store(now, Ordering::Relaxed);
    }

    fn idle(&self) -> bool {
        match self.last_commit_ms.load(Ordering::Relaxed) {
            NEVER => true,
            last => {
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(last))
                    >= IDLE_AFTER
            }
        }
    }

    fn indexed(&self, orders: u64) {
        // Saturating: the estimate may lag the table (entries counted at start twice, say).
        let _ = self
            .waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                Some(w.saturating_sub(orders))
            });
    }
}

/// What the group commit runs in its transaction for a batch with flash-sale orders, bound to
/// the batch's smallest order id.
pub(crate) const LOWER_PENDING_FROM: &str = "UPDATE flash_order_index \
     SET pending_from = (SELECT min(v) FROM (SELECT pending_from AS v UNION ALL SELECT ?)) \
     WHERE id = 1";

/// The flash-sale orders not yet indexed, counted when the store opens.
pub(crate) async fn count_waiting(writer: &SqlitePool) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM orders \
         WHERE id >= (SELECT pending_from FROM flash_order_index WHERE id = 1) \
           AND reservation_id IS NOT NULL",
    )
    .fetch_one(writer)
    .await
    .map_err(map_err)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

impl SqliteStore {
    /// Flash-sale orders committed and not yet in the by-user index (they are listed all the
    /// same, from the unindexed tail).
    pub async fn flash_orders_waiting(&self) -> Result<u64, StoreError> {
        count_waiting(&self.writer).await
    }

    /// Indexes up to `max` waiting flash-sale orders (the oldest first) in one transaction.
    pub async fn index_flash_orders(&self, max: u32) -> Result<IndexStep, StoreError> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        // Read while this transaction holds the writer: it counts every commit before it and
        // none after, so what it clears at the end never includes a later commit's orders.
        let counted = self.indexer.waiting.load(Ordering::Relaxed);
        let from: Option<Uuid> =
            sqlx::query_scalar("SELECT pending_from FROM flash_order_index WHERE id = 1")
                .fetch_one(&mut *tx)
                .await
                .map_err(map_err)?;
        let Some(from) = from else {
            self.indexer.indexed(counted);
            return Ok(IndexStep::default());
        };
        let taken = sqlx::query(
            "INSERT OR IGNORE INTO flash_order_owners (user_id, order_id) \
             SELECT user_id, id FROM orders \
             WHERE id >= ?1 AND reservation_id IS NOT NULL ORDER BY id LIMIT ?2",
        )
        .bind(from)
        .bind(i64::from(max))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        // The first flash-sale order past the ones just copied (entries already there count as
        // copied: a late commit may have lowered pending_from below indexed ones).
        let next: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM orders WHERE id >= ?1 AND reservation_id IS NOT NULL \
             ORDER BY id LIMIT 1 OFFSET ?2",
        )
        .bind(from)
        .bind(i64::from(max))
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query("UPDATE flash_order_index SET pending_from = ? WHERE id = 1")
            .bind(next)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        self.indexer.indexed(if next.is_none() {
            counted
        } else {
            u64::from(max).min(counted)
        });
        Ok(IndexStep {
            indexed: taken,
            more: next.is_some(),
        })
    }

    /// One run of the order indexer (the server calls it a few times a second): while the
    /// writer is idle, indexes what waits; while reservations are being written, only when more
    /// than `MAX_BACKLOG` wait, one small step per run. Returns how many orders it indexed.
    pub async fn run_order_indexer(&self) -> Result<u64, StoreError> {
        let mut done = 0;
        for _ in 0..MAX_STEPS {
            let waiting = self.indexer.waiting.load(Ordering::Relaxed);
            if waiting == 0 {
                break;
            }
            let idle = self.indexer.idle();
            if !idle && waiting <= MAX_BACKLOG {
                break;
            }
            let step = self
                .index_flash_orders(if idle { STEP } else { BUSY_STEP })
                .await?;
            done += step.indexed;
            if !idle || !step.more {
                break;
            }
        }
        metrics::gauge!("flash_sale_orders_unindexed")
            .set(self.indexer.waiting.load(Ordering::Relaxed) as f64);
        Ok(done)
    }
}
