//! Opening the database, running migrations, and the conversions every table module shares.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use flashmart_app::StoreError;
use flashmart_domain::OrderStatus;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use time::OffsetDateTime;

use crate::journal::{Outbox, outbox_path};
use crate::order_index::{IndexerState, count_waiting};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

/// How durable a committed write is (`database.synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Survives a killed process; the last commits may be lost on power failure.
    #[default]
    Normal,
    /// Also survives power loss, at the price of an fsync per commit.
    Full,
}

impl FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "normal" => Ok(Self::Normal),
            "full" => Ok(Self::Full),
            other => Err(format!("expected normal or full, got {other:?}")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pub(crate) writer: SqlitePool,
    pub(crate) reader: SqlitePool,
    pub(crate) indexer: Arc<IndexerState>,
    pub(crate) outbox: Arc<Outbox>,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and its outbox beside it, brings their
    /// schemas up to date, and applies what the outbox still holds (left by a process that
    /// stopped before applying it).
    pub async fn open(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        let synchronous = match durability {
            Durability::Normal => SqliteSynchronous::Normal,
            Durability::Full => SqliteSynchronous::Full,
        };
        let base = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        // The writer keeps the hot end of every index in its own page cache (4 MiB), so a group
        // commit does not read them back from the OS for each batch; a bigger cache costs more
        // at every commit (SQLite walks it to drop pages past the end of the file). The WAL is
        // checkpointed at SQLite's default 1,000 pages: a longer WAL (8,192 pages was tried)
        // makes each checkpoint a pause that shows in the p99 (docs/BENCHMARKS.md). A connection
        // to a local file does not go stale, so it is not pinged (a round trip to its thread)
        // every time it is taken from the pool.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(
                base.clone()
                    .create_if_missing(true)
                    // A batch's text depends on its size class (journal.rs): a few dozen texts,
                    // each kept prepared beside the other writers' statements.
                    .statement_cache_capacity(256)
                    .pragma("cache_size", "-4096")
                    .pragma("temp_store", "memory"),
            )
            .await
            .map_err(map_err)?;
        MIGRATOR
            .run(&writer)
            .await
            .map_err(|e| StoreError::Other(Box::new(e)))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(base.read_only(true))
            .await
            .map_err(map_err)?;
        let waiting = count_waiting(&writer).await?;
        let applied: i64 = sqlx::query_scalar("SELECT seq FROM outbox_applied WHERE id = 1")
            .fetch_one(&writer)
            .await
            .map_err(map_err)?;
        let applied = u64::try_from(applied).map_err(|e| corrupt("outbox_applied.seq", e))?;
        let outbox = Outbox::open(&outbox_path(path), durability == Durability::Full, applied)?;
        let store = Self {
            writer,
            reader,
            indexer: Arc::new(IndexerState::new(waiting)),
            outbox: Arc::new(outbox),
            path: path.to_owned(),
        };
        let left = store.outbox_backlog();
        if left > 0 {
            let started = std::time::Instant::now();
            store.settled().await?;
            tracing::info!(
                reservations = left,
                ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "applied the reservations the outbox still held"
            );
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether both pools can still run a query; what `/readyz` reports.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(map_err)?;
        sqlx::query("SELECT 1")
            .execute(&self.writer)
            .await
            .map_err(map_err)?;
        self.outbox.health()
    }

    /// Applies what the outbox holds, waits for in-flight queries and closes every connection
    /// (checkpointing the WALs). Whatever cannot be applied now stays in the outbox for the next
    /// start.
    pub async fn close(&self) {
        if let Err(err) = self.settled().await {
            tracing::warn!(%err, "the outbox could not be applied before closing; the next start will");
        }
        self.reader.close().await;
        self.writer.close().await;
    }
}

pub(crate) fn map_err(err: sqlx::Error) -> StoreError {
    match err {
        sqlx::Error::RowNotFound => StoreError::NotFound,
        sqlx::Error::Database(db) if db.is_unique_violation() || db.is_check_violation() => {
            StoreError::Conflict {
                constraint: db
                    .message()
                    .rsplit(": ")
                    .next()
                    .unwrap_or_default()
                    .to_owned()
                    .into(),
            }
        }
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            StoreError::Unavailable(err.to_string())
        }
        other => StoreError::other(other),
    }
}

/// The guard of a write that moves an order to `next`: `status IN (...)` with the statuses the
/// order state machine (`OrderStatus::sources`) lets become `next`, so the rule is the domain's
/// and the write only checks it.
pub(crate) fn order_may_become(next: OrderStatus) -> String {
    let sources: Vec<String> = next
        .sources()
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    format!("status IN ({})", sources.join(", "))
}

/// Times are stored as unix microseconds: exact, ordered, and cheap to compare in SQL.
pub(crate) fn micros(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

pub(crate) fn from_micros(us: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000).map_err(StoreError::other)
}

/// A stored value that no longer parses as its domain type: the database was edited by hand or
/// by a broken migration.
pub(crate) fn corrupt(what: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!("corrupt {what} in database: {err}").into())
}

#[async_trait::async_trait]
impl flashmart_app::ports::Probe for SqliteStore {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.ping().await
    }
}
