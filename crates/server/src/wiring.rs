//! Builds the backend once from the configuration and hands the HTTP layer its state; runs the
//! server until a shutdown signal, then drains it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use flashmart_app::auth::{AuthService, AuthSettings, HashCost};
use flashmart_app::ports::Probe;
use flashmart_app::{Clock, SystemClock};
use flashmart_embedded::{Durability, SqliteStore};
use flashmart_http::{AppState, HttpSettings, Probes};
use tokio::net::TcpListener;

use crate::config::{Config, Synchronous};
use crate::secrets;

/// Everything `serve` runs, built from one configuration.
#[derive(Debug)]
pub struct Services {
    pub state: AppState,
    pub http: HttpSettings,
    pub store: SqliteStore,
}

impl Services {
    pub fn router(&self) -> axum::Router {
        flashmart_http::router(self.state.clone(), &self.http)
    }
}

/// Opens storage (creating the data directory and running migrations) and builds every service.
pub async fn build(config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<Services> {
    let store = open_store(config).await?;
    let auth = AuthService::start(
        Arc::new(store.clone()),
        Arc::clone(&clock),
        AuthSettings {
            jwt_secret: secrets::jwt_secret(config)?,
            access_ttl: secs(config.auth.access_ttl_secs),
            refresh_ttl: secs(config.auth.refresh_ttl_secs),
            hash_cost: HashCost::default(),
            max_parallel_hashes: std::thread::available_parallelism().map_or(2, |n| n.get()),
            rate_limits_enabled: config.rate_limit.enabled,
            login_per_ip_per_minute: config.rate_limit.login_per_ip_per_minute,
            login_per_email_per_minute: config.rate_limit.login_per_email_per_minute,
        },
    )
    .await
    .context("starting the auth service")?;
    let probes: Vec<Arc<dyn Probe>> = vec![Arc::new(store.clone())];
    Ok(Services {
        state: AppState {
            auth: Arc::new(auth),
            probes: Probes(probes.into()),
            metrics: flashmart_http::metrics::prometheus(),
        },
        http: HttpSettings {
            body_limit_bytes: config.http.body_limit_bytes,
            request_timeout: Duration::from_secs(config.http.request_timeout_secs),
        },
        store,
    })
}

/// Opens the embedded database under the data directory, creating both if needed.
pub async fn open_store(config: &Config) -> anyhow::Result<SqliteStore> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    let durability = match config.database.synchronous {
        Synchronous::Normal => Durability::Normal,
        Synchronous::Full => Durability::Full,
    };
    let path = config.database_file();
    SqliteStore::open(&path, durability)
        .await
        .with_context(|| format!("opening database {}", path.display()))
}

fn secs(n: u64) -> time::Duration {
    time::Duration::seconds(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Runs every role in this process until SIGTERM or Ctrl-C, then stops accepting, lets in-flight
/// requests finish and closes storage.
pub async fn serve(config: &Config) -> anyhow::Result<()> {
    let services = build(config, Arc::new(SystemClock)).await?;
    let listener = TcpListener::bind(config.http.addr)
        .await
        .with_context(|| format!("binding http.addr {}", config.http.addr))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "flashmart listening on http://{addr}");

    let upkeep = tokio::spawn(upkeep(services.state.clone()));
    axum::serve(
        listener,
        services
            .router()
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .context("serving HTTP")?;
    upkeep.abort();
    services.store.close().await;
    tracing::info!("flashmart stopped");
    Ok(())
}

/// Periodic housekeeping: metric histograms, revocation list, idle rate-limit keys.
async fn upkeep(state: AppState) {
    let mut metrics = tokio::time::interval(Duration::from_secs(5));
    let mut housekeeping = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = metrics.tick() => state.metrics.run_upkeep(),
            _ = housekeeping.tick() => state.auth.housekeeping(),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received; draining");
}
