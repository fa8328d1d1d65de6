//! Builds the backend once from the configuration and hands the HTTP layer its state; runs the
//! server until a shutdown signal, then drains it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use flashmart_app::auth::{AuthService, AuthSettings, HashCost, LoginLimits};
use flashmart_app::catalog::Catalog;
use flashmart_app::flash_sale::{FlashSaleSettings, FlashSales};
use flashmart_app::payments::Payments;
use flashmart_app::ports::Probe;
use flashmart_app::shop::{Shop, ShopSettings, ShopStores};
use flashmart_app::uploads::Uploads;
use flashmart_app::{Clock, SystemClock};
use flashmart_embedded::{Durability, SqliteStore};
use flashmart_http::client_ip::TrustedProxies;
use flashmart_http::limits::{GroupLimit, LimitSettings, RateLimits};
use flashmart_http::state::LoadTest;
use flashmart_http::{AppState, HttpSettings, Probes};
use flashmart_sandbox::Sandbox;
use tokio::net::TcpListener;

use crate::config::{Config, GroupLimitConfig, Synchronous};
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

    /// The contest API's router, for its own listener (`compat.addr`).
    pub fn compat_router(&self) -> axum::Router {
        flashmart_http::compat_router(self.state.clone(), &self.http)
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
            login_limits: LoginLimits {
                enabled: config.rate_limit.enabled,
                per_ip: config.rate_limit.login_per_ip_per_minute,
                per_email_ip: config.rate_limit.login_per_email_ip_per_minute,
                per_email: config.rate_limit.login_per_email_per_minute,
            },
        },
    )
    .await
    .context("starting the auth service")?;
    let (flash_sales, _commit_task) = FlashSales::start(
        Arc::new(store.clone()),
        Arc::new(store.clone()),
        Arc::clone(&clock),
        FlashSaleSettings {
            commit_queue: config.flash_sale.commit_queue,
            contest: config.compat.contest,
            max_idempotency_keys_per_user: config.flash_sale.max_idempotency_keys_per_user,
            ..FlashSaleSettings::default()
        },
    )
    .await
    .context("starting the flash-sale engine")?;
    let flash_sales = Arc::new(flash_sales);
    // The current slot's sale of every schedule exists before the first request.
    flash_sales
        .run_schedules()
        .await
        .context("creating scheduled sales")?;
    let shared = Arc::new(store.clone());
    let shop = Shop::new(
        ShopStores {
            addresses: shared.clone(),
            carts: shared.clone(),
            coupons: shared.clone(),
            orders: shared.clone(),
            catalog: shared.clone(),
        },
        Arc::clone(&flash_sales),
        Arc::clone(&clock),
        ShopSettings {
            payment_window: secs(config.orders.payment_window_secs),
            max_open_orders_per_user: config.orders.max_open_per_user,
            max_units_per_product: config.orders.max_units_per_product,
        },
    );
    let sandbox = Arc::new(
        Sandbox::open(
            &config.data_dir.join("sandbox.db"),
            secrets::sandbox_secret(config)?,
            Arc::clone(&clock),
        )
        .await
        .context("opening the sandbox payment provider")?,
    );
    if let Some(url) = &config.payments.notify_url {
        sandbox.set_notify_url(url.clone());
    }
    let payments = Payments::new(
        shared.clone(),
        shared.clone(),
        Arc::clone(&sandbox) as Arc<dyn flashmart_app::payments::PaymentProvider>,
        Arc::clone(&clock),
    );
    let probes: Vec<Arc<dyn Probe>> = vec![Arc::new(store.clone())];
    Ok(Services {
        state: AppState {
            auth: Arc::new(auth),
            flash_sales,
            catalog: Arc::new(Catalog::new(shared, Arc::clone(&clock))),
            shop: Arc::new(shop),
            payments: Arc::new(payments),
            sandbox,
            uploads: Arc::new(Uploads::new(
                config.data_dir.join("uploads"),
                config.uploads.max_bytes,
            )),
            loadtest: LoadTest {
                enabled: config.loadtest.enabled,
            },
            limits: Arc::new(RateLimits::new(&limit_settings(config))),
            proxies: TrustedProxies(
                config
                    .trusted_proxies()
                    .map_err(|e| anyhow::anyhow!("http.trusted_proxies: {e}"))?
                    .into(),
            ),
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

fn limit_settings(config: &Config) -> LimitSettings {
    let group = |g: GroupLimitConfig| GroupLimit {
        per_ip_per_minute: g.per_ip_per_minute,
        per_user_per_minute: g.per_user_per_minute,
    };
    let r = &config.rate_limit;
    LimitSettings {
        enabled: r.enabled,
        public: group(r.public),
        auth: group(r.auth),
        reserve: group(r.reserve),
        admin: group(r.admin),
        compat: group(r.compat),
    }
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
    if config.payments.notify_url.is_none() {
        // The sandbox notifies this very server; an unspecified address is reached on loopback.
        let mut reach = addr;
        if reach.ip().is_unspecified() {
            reach.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        services
            .state
            .sandbox
            .set_notify_url(format!("http://{reach}/api/v1/payments/notify"));
    }
    // Whatever the sandbox settled but could not tell us before the last stop goes out now.
    if let Err(err) = services.state.sandbox.redeliver_pending().await {
        tracing::error!(%err, "cannot read the sandbox's unsent notifications");
    }
    let compat = if config.compat.contest {
        let listener = TcpListener::bind(config.compat.addr)
            .await
            .with_context(|| format!("binding compat.addr {}", config.compat.addr))?;
        Some(listener)
    } else {
        None
    };
    let compat_addr = compat
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?
        .map(|a| a.to_string());
    tracing::info!(
        %addr,
        compat_addr = compat_addr.as_deref(),
        data_dir = %config.data_dir.display(),
        "flashmart listening on http://{addr}"
    );

    let workers = spawn_workers(&services.state, config);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    let public = axum::serve(
        listener,
        services
            .router()
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stopped());
    let compat = compat.map(|listener| {
        axum::serve(
            listener,
            services
                .compat_router()
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stopped())
    });
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    match compat {
        Some(compat) => {
            let (public, compat) = tokio::join!(public.into_future(), compat.into_future());
            public.context("serving HTTP")?;
            compat.context("serving the contest API")?;
        }
        None => public.await.context("serving HTTP")?,
    }
    for worker in workers {
        worker.abort();
    }
    // Whatever reached the group commit (checkout attempts included) is made durable first.
    services.state.flash_sales.flush().await;
    services.store.close().await;
    tracing::info!("flashmart stopped");
    Ok(())
}

/// The background work of a single-process deployment: expiry, live events, schedules, and
/// housekeeping.
fn spawn_workers(state: &AppState, config: &Config) -> Vec<tokio::task::JoinHandle<()>> {
    let ms = Duration::from_millis;
    let sales = Arc::clone(&state.flash_sales);
    let sweeper = every(ms(config.flash_sale.sweep_interval_ms), move || {
        let sales = Arc::clone(&sales);
        async move {
            if let Err(err) = sales.sweep_expired().await {
                tracing::error!(%err, "expiring reservations failed; will retry");
            }
            if let Err(err) = sales.return_unsold_stock().await {
                tracing::error!(%err, "returning unsold units to their products failed; will retry");
            }
        }
    });
    let sales = Arc::clone(&state.flash_sales);
    let publisher = every(ms(config.flash_sale.events_interval_ms), move || {
        sales.publish_all();
        async {}
    });
    let sales = Arc::clone(&state.flash_sales);
    let scheduler = every(ms(config.flash_sale.schedule_interval_ms), move || {
        let sales = Arc::clone(&sales);
        async move {
            if let Err(err) = sales.run_schedules().await {
                tracing::error!(%err, "running schedules failed; will retry");
            }
        }
    });
    let shop = Arc::clone(&state.shop);
    let orders = every(ms(config.orders.sweep_interval_ms), move || {
        let shop = Arc::clone(&shop);
        async move {
            if let Err(err) = shop.sweep_expired().await {
                tracing::error!(%err, "expiring unpaid orders failed; will retry");
            }
        }
    });
    let payments = Arc::clone(&state.payments);
    let stale_payments = every(Duration::from_secs(5), move || {
        let payments = Arc::clone(&payments);
        async move {
            if let Err(err) = payments.close_stale().await {
                tracing::warn!(%err, "closing payments of ended orders failed; will retry");
            }
        }
    });
    let payments = Arc::clone(&state.payments);
    let refunds = every(Duration::from_secs(5), move || {
        let payments = Arc::clone(&payments);
        async move {
            if let Err(err) = payments.drain_refunds(100).await {
                tracing::warn!(%err, "asking the provider for pending refunds failed; will retry");
            }
        }
    });
    let sandbox = Arc::clone(&state.sandbox);
    let resend = every(Duration::from_secs(60), move || {
        let sandbox = Arc::clone(&sandbox);
        async move {
            if let Err(err) = sandbox.redeliver_pending().await {
                tracing::warn!(%err, "sandbox cannot read its unsent notifications; will retry");
            }
        }
    });
    let metrics = state.metrics.clone();
    let upkeep = every(Duration::from_secs(5), move || {
        metrics.run_upkeep();
        async {}
    });
    let (auth, sales) = (Arc::clone(&state.auth), Arc::clone(&state.flash_sales));
    let limits = Arc::clone(&state.limits);
    let housekeeping = every(Duration::from_secs(60), move || {
        auth.housekeeping();
        sales.housekeeping();
        limits.retain_recent();
        async {}
    });
    vec![
        sweeper,
        orders,
        stale_payments,
        refunds,
        resend,
        publisher,
        scheduler,
        upkeep,
        housekeeping,
    ]
}

/// Runs `job` every `period`, one run at a time (a slow run delays the next, never overlaps it).
fn every<F, Fut>(period: Duration, mut job: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            job().await;
        }
    })
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
