//! Where records live: the embedded SQLite file under `data_dir`, or PostgreSQL when
//! `database.url` is set. Everything above this module sees only the ports.

use std::sync::Arc;

use anyhow::Context as _;
use flashmart_app::ports::{
    AccountStore, AddressStore, AuditStore, CartStore, CatalogStore, CouponStore, FlashSaleStore,
    Lease, OrderStore, PaymentStore, Probe, ReservationJournal, RevocationNews, SecondFactorStore,
    SharedEngine, SharedLimits, WebhookStore,
};
use flashmart_embedded::{Durability, SqliteStore};
use flashmart_postgres::{PgConnectOptions, PgStore, SoleEngine};
use flashmart_redis::RedisEngine;

use crate::config::{Config, Synchronous};

/// The record store this process runs on.
#[derive(Debug, Clone)]
pub enum Records {
    Embedded(SqliteStore),
    Postgres(PgStore),
}

/// Every storage port, as the use cases take them.
#[derive(Debug, Clone)]
pub struct Ports {
    pub accounts: Arc<dyn AccountStore>,
    pub second_factor: Arc<dyn SecondFactorStore>,
    pub catalog: Arc<dyn CatalogStore>,
    pub addresses: Arc<dyn AddressStore>,
    pub carts: Arc<dyn CartStore>,
    pub coupons: Arc<dyn CouponStore>,
    pub orders: Arc<dyn OrderStore>,
    pub payments: Arc<dyn PaymentStore>,
    pub flash_sales: Arc<dyn FlashSaleStore>,
    pub journal: Arc<dyn ReservationJournal>,
    pub audit: Arc<dyn AuditStore>,
    pub webhooks: Arc<dyn WebhookStore>,
    pub probe: Arc<dyn Probe>,
}

/// A store that serves every port.
trait AllPorts:
    AccountStore
    + SecondFactorStore
    + CatalogStore
    + AddressStore
    + CartStore
    + CouponStore
    + OrderStore
    + PaymentStore
    + FlashSaleStore
    + ReservationJournal
    + AuditStore
    + WebhookStore
    + Probe
    + Clone
{
}

impl<T> AllPorts for T where
    T: AccountStore
        + SecondFactorStore
        + CatalogStore
        + AddressStore
        + CartStore
        + CouponStore
        + OrderStore
        + PaymentStore
        + FlashSaleStore
        + ReservationJournal
        + AuditStore
        + WebhookStore
        + Probe
        + Clone
{
}

fn ports_of<S: AllPorts>(store: &S) -> Ports {
    let shared = Arc::new(store.clone());
    Ports {
        accounts: shared.clone(),
        second_factor: shared.clone(),
        catalog: shared.clone(),
        addresses: shared.clone(),
        carts: shared.clone(),
        coupons: shared.clone(),
        orders: shared.clone(),
        payments: shared.clone(),
        flash_sales: shared.clone(),
        journal: shared.clone(),
        audit: shared.clone(),
        webhooks: shared.clone(),
        probe: shared,
    }
}

/// The name of the lease the scheduler role's instances take turns on.
const SCHEDULER_LEASE: &str = "scheduler";

/// The shared flash-sale engine (Redis) when `redis.url` or `redis.cluster_nodes` is set: the
/// port the use cases drive, and its readiness probe.
#[derive(Debug, Clone)]
pub struct Shared {
    pub engine: Arc<dyn SharedEngine>,
    pub probe: Arc<dyn Probe>,
    /// The scheduler's lease (`<prefix>lease:scheduler`).
    pub scheduler_lease: Arc<dyn Lease>,
    /// Rate limits and failed-login counters every instance shares.
    pub limits: Arc<dyn SharedLimits>,
    /// News of revoked sessions, to every instance.
    pub revocations: Arc<dyn RevocationNews>,
}

impl Shared {
    pub async fn connect(config: &Config) -> anyhow::Result<Option<Self>> {
        let prefix = config.redis.key_prefix.as_str();
        if let Some(url) = &config.redis.url {
            let engine = Arc::new(
                RedisEngine::connect(url.expose(), prefix)
                    .await
                    .context("connecting to Redis (redis.url)")?,
            );
            engine
                .ping()
                .await
                .context("Redis (redis.url) does not answer")?;
            return Ok(Some(Self {
                scheduler_lease: Arc::new(engine.lease(SCHEDULER_LEASE)),
                limits: Arc::new(engine.limits()),
                revocations: Arc::new(engine.revocations()),
                engine: engine.clone(),
                probe: engine,
            }));
        }
        if !config.redis.cluster_nodes.is_empty() {
            let engine = Arc::new(
                RedisEngine::connect_cluster(&config.redis.cluster_nodes, prefix)
                    .await
                    .context("connecting to the Redis Cluster (redis.cluster_nodes)")?,
            );
            engine
                .ping()
                .await
                .context("the Redis Cluster (redis.cluster_nodes) does not answer")?;
            return Ok(Some(Self {
                scheduler_lease: Arc::new(engine.lease(SCHEDULER_LEASE)),
                limits: Arc::new(engine.limits()),
                revocations: Arc::new(engine.revocations()),
                engine: engine.clone(),
                probe: engine,
            }));
        }
        Ok(None)
    }
}

/// How to reach PostgreSQL, when `database.url` is set. Connections are named `flashmart` in
/// `pg_stat_activity` unless the URL names them.
pub fn pg_options(config: &Config) -> anyhow::Result<Option<PgConnectOptions>> {
    let Some(url) = &config.database.url else {
        return Ok(None);
    };
    let options: PgConnectOptions = url
        .expose()
        .parse()
        .context("database.url is not a PostgreSQL URL")?;
    Ok(Some(if options.get_application_name().is_none() {
        options.application_name("flashmart")
    } else {
        options
    }))
}

impl Records {
    /// Opens the configured store and brings its schema up to date: PostgreSQL at
    /// `database.url`, or else the SQLite file under `data_dir`; `data_dir` is made if missing.
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        // Generated secrets and uploads live there in either mode.
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
        if let Some(options) = pg_options(config)? {
            let (host, database) = (
                options.get_host().to_owned(),
                options.get_database().unwrap_or("postgres").to_owned(),
            );
            let store = PgStore::connect(options, config.database.max_connections)
                .await
                .with_context(|| {
                    format!("connecting to PostgreSQL at {host}, database {database}")
                })?;
            return Ok(Self::Postgres(store));
        }
        let durability = match config.database.synchronous {
            Synchronous::Normal => Durability::Normal,
            Synchronous::Full => Durability::Full,
        };
        let path = config.database_file();
        let store = SqliteStore::open(&path, durability)
            .await
            .with_context(|| format!("opening database {}", path.display()))?;
        Ok(Self::Embedded(store))
    }

    pub fn ports(&self) -> Ports {
        match self {
            Self::Embedded(store) => ports_of(store),
            Self::Postgres(store) => ports_of(store),
        }
    }

    /// What the log says the records are on.
    pub fn describe(&self) -> String {
        match self {
            Self::Embedded(store) => format!("SQLite file {}", store.path().display()),
            Self::Postgres(_) => "PostgreSQL".to_owned(),
        }
    }

    /// The embedded store, whose own upkeep (outbox applier, order indexer) runs as workers.
    pub fn embedded(&self) -> Option<&SqliteStore> {
        match self {
            Self::Embedded(store) => Some(store),
            Self::Postgres(_) => None,
        }
    }

    /// With records in PostgreSQL, makes sure no other process serves on the same database:
    /// the flash-sale engine runs in process and keeps the live stock in memory, so a second
    /// one would sell it again. Held until dropped. (The embedded store is guarded by the data
    /// directory's lock.)
    pub async fn claim_sole_engine(&self) -> anyhow::Result<Option<SoleEngine>> {
        let Self::Postgres(store) = self else {
            return Ok(None);
        };
        match store.claim_sole_engine().await? {
            Some(held) => Ok(Some(held)),
            None => anyhow::bail!(
                "another flashmart process serves on this database (database.url): with the \
                 flash-sale engine in process, one server per database (stop it, or give this \
                 one another database)"
            ),
        }
    }

    pub async fn close(&self) {
        match self {
            Self::Embedded(store) => store.close().await,
            Self::Postgres(store) => store.close().await,
        }
    }
}
