//! The connection pool, migrations and the mapping of driver errors.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use flashmart_app::StoreError;
use flashmart_domain::OrderStatus;
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// The longest any statement may run (PostgreSQL's `statement_timeout`).
const STATEMENT_TIMEOUT: &str = "5s";

/// A connection idle this long is pinged before it is handed out (one round trip); one in use
/// since is not: under load that round trip was a fourth of a group commit's.
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

/// A pool of connections to one PostgreSQL database (and schema: the URL's `options` may set
/// `search_path`).
#[derive(Debug, Clone)]
pub struct PgStore {
    pub(crate) pool: PgPool,
    /// Whether the group commit's last look found webhook endpoints that want `order.created`
    /// (see `journal.rs`); until it has looked, assumed so.
    pub(crate) order_hooks: Arc<AtomicBool>,
}

impl PgStore {
    /// Connects with at most `max_connections` and brings the schema up to date.
    pub async fn connect(
        options: PgConnectOptions,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            // A connection that died while idle (PostgreSQL restarted, a proxy timed it out) is
            // found by the ping and replaced; one used within the last second is taken as alive,
            // and should it have died all the same, the statement on it fails as one in flight
            // would have (and sqlx's own ping when a connection is returned closes it).
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IDLE_AFTER {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            // A request that needs the database answers 503 rather than hang when it is away.
            .acquire_timeout(Duration::from_secs(3))
            // No statement runs longer: a reservation the shared engine decided is written
            // within seconds or not at all, which the grace before a lost sale is rebuilt
            // relies on.
            .connect_with(options.options([("statement_timeout", STATEMENT_TIMEOUT)]))
            .await
            .map_err(map_err)?;
        MIGRATOR.run(&pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(err) => map_err(err),
            other => StoreError::other(other),
        })?;
        Ok(Self {
            pool,
            order_hooks: Arc::new(AtomicBool::new(true)),
        })
    }

    /// Closes every connection (the pool refuses new work from then on).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

/// The advisory lock key of the in-process flash-sale engine ("flashmar" in ASCII).
const SOLE_ENGINE_KEY: i64 = 0x666c_6173_686d_6172;

/// Proof that this process is the only one running the in-process flash-sale engine on this
/// database: a session-level advisory lock, on a connection of its own that nothing else uses.
/// Dropping it closes that connection, which releases the lock; so does the process dying.
#[derive(Debug)]
pub struct SoleEngine {
    _conn: sqlx::PgConnection,
}

impl PgStore {
    /// Takes the in-process engine's lock, or `None` when another session holds it. The
    /// in-process engine keeps each sale's live stock in memory, so two processes running it on
    /// one database would each sell the whole stock.
    pub async fn claim_sole_engine(&self) -> Result<Option<SoleEngine>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?.detach();
        let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(SOLE_ENGINE_KEY)
            .fetch_one(&mut conn)
            .await
            .map_err(map_err)?;
        Ok(held.then_some(SoleEngine { _conn: conn }))
    }
}

#[async_trait::async_trait]
impl flashmart_app::ports::Probe for PgStore {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.ping().await
    }
}

/// Driver errors as the ports report them: a unique or check constraint by its name (the
/// migrations name them as the application knows them), an unreachable or overloaded server as
/// `Unavailable`.
pub(crate) fn map_err(err: sqlx::Error) -> StoreError {
    match err {
        sqlx::Error::RowNotFound => StoreError::NotFound,
        sqlx::Error::Database(db) if db.is_unique_violation() || db.is_check_violation() => {
            StoreError::Conflict {
                constraint: db.constraint().unwrap_or("unknown").to_owned().into(),
            }
        }
        sqlx::Error::Database(db) if is_unavailable(db.code().as_deref()) => {
            StoreError::Unavailable(db.message().to_owned())
        }
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            StoreError::Unavailable(err.to_string())
        }
        other => StoreError::other(other),
    }
}

/// SQLSTATE classes that mean "try again later": too many connections or out of resources
/// (53), the server shutting down or restarting (57P0x), a serialization failure or deadlock
/// (40001, 40P01).
fn is_unavailable(code: Option<&str>) -> bool {
    code.is_some_and(|c| {
        c.starts_with("53") || c.starts_with("57P0") || c == "40001" || c == "40P01"
    })
}

/// The guard of a write that moves an order to `next`: `status IN (...)` with the statuses the
/// order state machine (`OrderStatus::sources`) lets become `next`.
pub(crate) fn order_may_become(next: OrderStatus) -> String {
    let sources: Vec<String> = next
        .sources()
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    format!("status IN ({})", sources.join(", "))
}

pub(crate) fn corrupt(what: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!("stored {what} is not valid: {err}").into())
}
