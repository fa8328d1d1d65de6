//! The outbox file and what is in it but not yet applied: its own SQLite database beside the main
//! one, so that appending a batch never waits for the main database's writer (busy applying
//! earlier batches, or with checkouts and payments), and a queue in memory of the batches
//! appended and not yet applied, in order.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flashmart_app::StoreError;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::codec::Decoded;
use crate::db::{corrupt, map_err};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/outbox");

/// Failed applies in a row after which the store reports itself not ready.
const FAILING_AFTER: u32 = 3;

/// A batch appended and not yet applied.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub seq: u64,
    pub body: Arc<Vec<u8>>,
    pub reservations: u32,
}

#[derive(Debug, Default)]
struct Queue {
    entries: VecDeque<Entry>,
    reservations: u64,
}

#[derive(Debug)]
pub(crate) struct Outbox {
    pool: SqlitePool,
    queue: Mutex<Queue>,
    /// The last batch appended (durable in the outbox file).
    committed: AtomicU64,
    /// The last batch applied to the main database.
    applied: AtomicU64,
    /// Appends one at a time, so that batches are numbered, written and queued in one order.
    pub(crate) append: tokio::sync::Mutex<()>,
    /// Applies one at a time.
    pub(crate) apply: tokio::sync::Mutex<()>,
    failures: AtomicU32,
    last_error: Mutex<Option<String>>,
}

/// The outbox of the database at `main`: beside it, named after it (`flashmart.db` ->
/// `flashmart.outbox.db`).
pub(crate) fn path_for(main: &Path) -> PathBuf {
    let stem = main
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "flashmart".to_owned());
    main.with_file_name(format!("{stem}.outbox.db"))
}

impl Outbox {
    /// Opens (creating if needed) the outbox at `path`, drops what the main database has already
    /// applied (up to `applied`, read from it), and queues the rest in order.
    pub(crate) async fn open(
        path: &Path,
        synchronous: SqliteSynchronous,
        applied: u64,
    ) -> Result<Self, StoreError> {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(synchronous)
                    .busy_timeout(Duration::from_secs(5)),
            )
            .await
            .map_err(map_err)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Other(Box::new(e)))?;
        let outbox = Self {
            pool,
            queue: Mutex::default(),
            committed: AtomicU64::new(applied),
            applied: AtomicU64::new(applied),
            append: tokio::sync::Mutex::new(()),
            apply: tokio::sync::Mutex::new(()),
            failures: AtomicU32::new(0),
            last_error: Mutex::new(None),
        };
        outbox.forget_through(applied).await?;
        let left: Vec<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT seq, body FROM batches ORDER BY seq")
                .fetch_all(&outbox.pool)
                .await
                .map_err(map_err)?;
        for (seq, body) in left {
            let seq = u64::try_from(seq).map_err(|e| corrupt("outbox batch number", e))?;
            let mut decoded = Decoded::default();
            decoded.read(&body)?;
            let reservations = u32::try_from(decoded.reservations.len()).unwrap_or(u32::MAX);
            outbox.queued(Entry {
                seq,
                body: Arc::new(body),
                reservations,
            });
        }
        Ok(outbox)
    }

    fn with_queue<T>(&self, f: impl FnOnce(&mut Queue) -> T) -> T {
        f(&mut self.queue.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Writes a batch to the outbox file and queues it for the applier; the caller holds
    /// `append`. Once this returns the batch is as durable as the database's `synchronous`
    /// setting makes a commit.
    pub(crate) async fn append(&self, body: Vec<u8>, reservations: u32) -> Result<(), StoreError> {
        let seq = self.committed.load(Ordering::Acquire) + 1;
        sqlx::query("INSERT INTO batches (seq, body) VALUES (?, ?)")
            .bind(i64::try_from(seq).map_err(|e| corrupt("outbox batch number", e))?)
            .bind(body.as_slice())
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        self.queued(Entry {
            seq,
            body: Arc::new(body),
            reservations,
        });
        Ok(())
    }

    /// Queues an entry, then counts it committed: whoever sees it committed finds it queued.
    fn queued(&self, entry: Entry) {
        let seq = entry.seq;
        self.with_queue(|q| {
            q.reservations += u64::from(entry.reservations);
            q.entries.push_back(entry);
        });
        self.committed.fetch_max(seq, Ordering::AcqRel);
    }

    /// The oldest queued batches, whole, up to about `max` reservations (at least one batch).
    pub(crate) fn oldest(&self, max: u64) -> Vec<Entry> {
        self.with_queue(|q| {
            let mut taken = 0;
            let mut out = Vec::new();
            for entry in &q.entries {
                if !out.is_empty() && taken + u64::from(entry.reservations) > max {
                    break;
                }
                taken += u64::from(entry.reservations);
                out.push(entry.clone());
            }
            out
        })
    }

    /// Batches up to `seq` are in the main database.
    pub(crate) fn applied_through(&self, seq: u64) {
        self.with_queue(|q| {
            while q.entries.front().is_some_and(|e| e.seq <= seq) {
                if let Some(e) = q.entries.pop_front() {
                    q.reservations -= u64::from(e.reservations);
                }
            }
        });
        self.applied.fetch_max(seq, Ordering::AcqRel);
        self.failures.store(0, Ordering::Relaxed);
    }

    /// Deletes batches up to `seq` from the outbox file (applied, so no longer needed).
    pub(crate) async fn forget_through(&self, seq: u64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM batches WHERE seq <= ?")
            .bind(i64::try_from(seq).map_err(|e| corrupt("outbox batch number", e))?)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    pub(crate) fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    pub(crate) fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Reservations appended and not yet applied.
    pub(crate) fn backlog(&self) -> u64 {
        self.with_queue(|q| q.reservations)
    }

    pub(crate) fn failed(&self, err: &StoreError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(err.to_string());
    }

    /// An error while applies keep failing: the store is not ready.
    pub(crate) fn health(&self) -> Result<(), StoreError> {
        let failures = self.failures.load(Ordering::Relaxed);
        if failures < FAILING_AFTER {
            return Ok(());
        }
        let last = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_default();
        Err(StoreError::Unavailable(format!(
            "the outbox could not be applied {failures} times in a row: {last}"
        )))
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }
}
