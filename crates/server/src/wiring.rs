//! Builds the backend once from the configuration and hands the HTTP layer its state; runs the
//! server until a shutdown signal, then drains it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use flashmart_app::audit::AuditLog;
use flashmart_app::auth::{AuthService, AuthSettings, HashCost, LoginLimits};
use flashmart_app::catalog::Catalog;
use flashmart_app::flash_sale::{Ack, FlashSaleSettings, FlashSales};
use flashmart_app::health::Workers;
use flashmart_app::leader::Leadership;
use flashmart_app::payments::{NoProvider, PaymentProvider, Payments};
use flashmart_app::shop::{Shop, ShopSettings, ShopStores};
use flashmart_app::uploads::Uploads;
use flashmart_app::webhooks::Webhooks;
use flashmart_app::{Clock, SystemClock};
use flashmart_http::client_ip::TrustedProxies;
use flashmart_http::limits::{GroupLimit, LimitSettings, RateLimits};
use flashmart_http::state::LoadTest;
use flashmart_http::streams::{EventStreams, Shutdown, StreamLimits};
use flashmart_http::{AppServices, AppState, HttpSettings, Probes};
use flashmart_sandbox::Sandbox;
use tokio::net::{TcpListener, TcpSocket};
use utoipa_axum::router::OpenApiRouter;

use crate::config::{Config, GroupLimitConfig, ProviderChoice};
use crate::records::{Ports, Records};
use crate::roles::Roles;
use crate::secrets;

/// Everything `serve` runs, built from one configuration.
#[derive(Debug)]
pub struct Services {
    pub state: AppState,
    pub http: HttpSettings,
    pub records: Records,
    pub ports: Ports,
    /// The built-in sandbox payment provider, whose pay pages this server serves; `None` with
    /// `payments.provider = "none"`.
    pub sandbox: Option<Arc<Sandbox>>,
    /// Raised when the server starts to stop (event streams end).
    pub stop: tokio::sync::watch::Sender<bool>,
    /// The group commit's task (it ends when the flash-sale service is dropped).
    pub commit_task: tokio::task::JoinHandle<()>,
    /// Whether this instance may run the scheduler's work: always in embedded mode, while it
    /// holds the scheduler lease in scaled mode.
    pub leadership: Arc<Leadership>,
}

impl Services {
    /// The public listener's router: the API, the sandbox's pay pages, and the web pages (the
    /// storefront at `/`, the console at `/admin`).
    pub fn router(&self) -> axum::Router {
        flashmart_http::router_with_fallback(
            self.state.clone(),
            &self.http,
            self.mounted(),
            flashmart_web::routes(self.state.clone(), self.state.uploads.max_bytes()),
            flashmart_web::not_found,
        )
    }

    /// Documented routes served beside the API: the sandbox provider's pay pages.
    pub fn mounted(&self) -> OpenApiRouter<AppState> {
        self.sandbox
            .clone()
            .map_or_else(OpenApiRouter::new, flashmart_sandbox::pay_pages)
    }

    /// The ops listener's router (`ops.addr`).
    pub fn ops_router(&self) -> axum::Router {
        flashmart_http::ops_router(self.state.clone(), &self.http)
    }

    /// The contest API's router, for its own listener (`compat.addr`).
    pub fn compat_router(&self) -> axum::Router {
        flashmart_http::compat_router(self.state.clone(), &self.http)
    }
}

/// Opens storage (creating the data directory and running migrations) and builds every service.
pub async fn build(config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<Services> {
    let records = Records::open(config).await?;
    let ports = records.ports();
    let shared = crate::records::Shared::connect(config).await?;
    let auth = AuthService::start(
        Arc::clone(&ports.accounts),
        Arc::clone(&ports.second_factor),
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
            require_staff_totp: config.auth.require_staff_totp,
            shared_limits: shared.as_ref().map(|s| Arc::clone(&s.limits)),
            revocation_news: shared.as_ref().map(|s| Arc::clone(&s.revocations)),
        },
    )
    .await
    .context("starting the auth service")?;
    let (flash_sales, commit_task) = FlashSales::start(
        Arc::clone(&ports.flash_sales),
        Arc::clone(&ports.journal),
        Arc::clone(&clock),
        FlashSaleSettings {
            commit_queue: config.flash_sale.commit_queue,
            contest: config.compat.contest,
            max_idempotency_keys_per_user: config.flash_sale.max_idempotency_keys_per_user,
            shared_engine: shared.as_ref().map(|s| Arc::clone(&s.engine)),
            ack: match config.flash_sale.ack {
                crate::config::AckChoice::Database => Ack::Database,
                crate::config::AckChoice::Redis => Ack::Engine,
            },
            ..FlashSaleSettings::default()
        },
    )
    .await
    .context("starting the flash-sale engine")?;
    let flash_sales = Arc::new(flash_sales);
    let leadership = Arc::new(match &shared {
        Some(shared) => Leadership::elected(
            Arc::clone(&shared.scheduler_lease),
            instance_name(),
            Duration::from_millis(config.scheduler.lease_ms),
        ),
        None => Leadership::sole(),
    });
    // One process: the current slot's sale of every schedule exists before the first request.
    // Scaled, the instance holding the scheduler lease makes it.
    if shared.is_none() {
        flash_sales
            .run_schedules()
            .await
            .context("creating scheduled sales")?;
    }
    let shop = Shop::new(
        ShopStores {
            addresses: Arc::clone(&ports.addresses),
            carts: Arc::clone(&ports.carts),
            coupons: Arc::clone(&ports.coupons),
            orders: Arc::clone(&ports.orders),
            catalog: Arc::clone(&ports.catalog),
        },
        Arc::clone(&flash_sales),
        Arc::clone(&clock),
        ShopSettings {
            payment_window: secs(config.orders.payment_window_secs),
            max_open_orders_per_user: config.orders.max_open_per_user,
            max_units_per_product: config.orders.max_units_per_product,
        },
    );
    let sandbox = match config.payments.provider {
        ProviderChoice::Sandbox => {
            let secret = secrets::sandbox_secret(config)?;
            // Its books go where the shop's records are: every instance on one database must
            // see the same payments.
            let sandbox = match crate::records::pg_options(config)? {
                Some(options) => Sandbox::connect(
                    options,
                    config.database.max_connections.min(4),
                    secret,
                    Arc::clone(&clock),
                )
                .await
                .context("opening the sandbox payment provider's tables in PostgreSQL")?,
                None => Sandbox::open(
                    &config.data_dir.join("sandbox.db"),
                    secret,
                    Arc::clone(&clock),
                )
                .await
                .context("opening the sandbox payment provider")?,
            };
            let sandbox = Arc::new(sandbox);
            if let Some(url) = &config.payments.notify_url {
                sandbox.set_notify_url(url.clone());
            }
            Some(sandbox)
        }
        ProviderChoice::None => None,
    };
    let provider: Arc<dyn PaymentProvider> = match &sandbox {
        Some(sandbox) => Arc::clone(sandbox) as Arc<dyn PaymentProvider>,
        None => Arc::new(NoProvider),
    };
    let payments = Payments::new(
        Arc::clone(&ports.payments),
        Arc::clone(&ports.orders),
        provider,
        Arc::clone(&clock),
    )
    .with_flash_sales(Arc::clone(&flash_sales));
    let mut probes = vec![Arc::clone(&ports.probe)];
    probes.extend(shared.as_ref().map(|s| Arc::clone(&s.probe)));
    let workers = Arc::new(Workers::default());
    workers.register(flash_sales.commit_heartbeat());
    let (stop, shutdown) = Shutdown::channel();
    Ok(Services {
        state: AppState::new(AppServices {
            auth: Arc::new(auth),
            flash_sales,
            catalog: Arc::new(Catalog::new(Arc::clone(&ports.catalog), Arc::clone(&clock))),
            shop: Arc::new(shop),
            payments: Arc::new(payments),
            uploads: Arc::new(Uploads::new(config.uploads_dir(), config.uploads.max_bytes)),
            audit: Arc::new(AuditLog::new(Arc::clone(&ports.audit))),
            webhooks: Arc::new(Webhooks::new(
                Arc::clone(&ports.webhooks),
                Arc::new(crate::HttpWebhookSender::new().context("the webhook HTTP client")?),
                Arc::clone(&clock),
                config.webhooks.settings(),
            )),
            loadtest: LoadTest {
                enabled: config.loadtest.enabled,
            },
            limits: Arc::new(match &shared {
                Some(shared) => {
                    RateLimits::shared(&limit_settings(config), Arc::clone(&shared.limits))
                }
                None => RateLimits::new(&limit_settings(config)),
            }),
            proxies: TrustedProxies(
                config
                    .trusted_proxies()
                    .map_err(|e| anyhow::anyhow!("http.trusted_proxies: {e}"))?
                    .into(),
            ),
            probes: Probes(probes.into()),
            metrics: flashmart_http::metrics::prometheus(),
            shutdown,
            workers,
            streams: Arc::new(EventStreams::new(StreamLimits {
                total: config.flash_sale.max_event_streams,
                per_ip: config.flash_sale.max_event_streams_per_ip,
            })),
        }),
        http: HttpSettings {
            body_limit_bytes: config.http.body_limit_bytes,
            request_timeout: Duration::from_secs(config.http.request_timeout_secs),
            ops_apart: config.ops.addr.is_some(),
        },
        records,
        ports,
        sandbox,
        stop,
        commit_task,
        leadership,
    })
}

/// This process's name among the instances (host, process id and a random part, so that a
/// restarted process is a new name): the scheduler lease's holder.
fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}/{}/{}", std::process::id(), &nonce[..8])
}

pub(crate) fn limit_settings(config: &Config) -> LimitSettings {
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

fn secs(n: u64) -> time::Duration {
    time::Duration::seconds(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Runs `roles` in this process until SIGTERM or Ctrl-C, then stops: listeners stop
/// accepting, event streams are told to end, requests in flight get `http.shutdown_grace_secs`
/// to finish (then they are closed), the scheduler lease is given up, the group commit is
/// flushed and storage closed. SIGHUP reads the configuration again (from `config_path` and the
/// environment, as at start) and applies what can change live (`reload.rs`).
pub async fn serve(
    config: &Config,
    roles: Roles,
    config_path: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let scaled = config.redis.is_set();
    anyhow::ensure!(
        scaled || roles.is_all(),
        "--role {roles}: without the shared engine every role runs in one process (the \
         in-process engine keeps live stock in its memory); split roles only in scaled mode \
         (database.url and redis.url or redis.cluster_nodes set)"
    );
    let mut signals = StopSignals::install()?;
    // Listened for before the server says it is listening: a SIGHUP's default action is death.
    #[cfg(unix)]
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("listening for SIGHUP")?;
    // With the in-process engine the data directory holds the live truth (the SQLite file, or
    // the engine's claim): one server each. Scaled, it holds nothing of the kind, and
    // instances on one machine may share it (and its uploads).
    let _lock = if scaled {
        None
    } else {
        Some(crate::lock::DataDirLock::acquire(&config.data_dir)?)
    };
    let services = build(config, Arc::new(SystemClock)).await?;
    // With the shared engine, any number of servers may share the database; with the
    // in-process one, one.
    let _sole_engine = if scaled {
        None
    } else {
        services.records.claim_sole_engine().await?
    };
    let backlog = config.http.listen_backlog;
    if let Some(cap) = std::fs::read_to_string(SOMAXCONN)
        .ok()
        .and_then(|text| kernel_cap(backlog, &text))
    {
        tracing::warn!(
            wanted = backlog,
            cap,
            "the kernel holds at most {cap} connections not yet accepted per listener \
             (net.core.somaxconn), fewer than http.listen_backlog"
        );
    }
    let public = bind(config.http.addr, backlog, "http.addr")?;
    let addr = public.local_addr()?;
    if let Some(sandbox) = &services.sandbox {
        if config.payments.notify_url.is_none() {
            // The sandbox notifies this very server; an unspecified address is reached on
            // loopback.
            let mut reach = addr;
            if reach.ip().is_unspecified() {
                reach.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            sandbox.set_notify_url(format!("http://{reach}/api/v1/payments/notify"));
        }
        // Whatever the sandbox settled but could not tell us before the last stop goes out now.
        if roles.worker
            && let Err(err) = sandbox.redeliver_due().await
        {
            tracing::error!(%err, "cannot read the sandbox's unsent notifications");
        }
    }
    // Every role answers /healthz, /readyz and /metrics; only `api` serves the API.
    let main_router = if roles.api {
        services.router()
    } else {
        services.ops_router()
    };
    let mut listeners = vec![("http", public, main_router)];
    let (mut ops_addr, mut compat_addr) = (None, None);
    if let Some(wanted) = config.ops.addr {
        let ops = bind(wanted, backlog, "ops.addr")?;
        ops_addr = Some(ops.local_addr()?.to_string());
        listeners.push(("ops", ops, services.ops_router()));
    }
    if config.compat.contest && roles.api {
        let compat = bind(config.compat.addr, backlog, "compat.addr")?;
        compat_addr = Some(compat.local_addr()?.to_string());
        listeners.push(("compat", compat, services.compat_router()));
    }
    tracing::info!(
        %addr,
        ops_addr = ops_addr.as_deref(),
        compat_addr = compat_addr.as_deref(),
        roles = %roles,
        instance = services.leadership.holder(),
        data_dir = %config.data_dir.display(),
        records = %services.records.describe(),
        engine = if scaled { "redis" } else { "in-process" },
        "flashmart listening on http://{addr}"
    );

    #[cfg(unix)]
    {
        let reloader = crate::reload::Reloader::new(
            config_path.map(std::path::Path::to_path_buf),
            config.clone(),
            Arc::clone(&services.state.limits),
            Arc::clone(&services.state.webhooks),
        );
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP: reading the configuration again");
                let _ = reloader.reload();
            }
        });
    }
    #[cfg(not(unix))]
    let _ = config_path;

    let workers = crate::workers::spawn(&services, config, roles);
    let mut servers = tokio::task::JoinSet::new();
    for (name, listener, router) in listeners {
        let mut stop = services.stop.subscribe();
        servers.spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|stopping| *stopping).await;
            })
            .await
            .with_context(|| format!("serving the {name} listener"))
        });
    }
    tokio::select! {
        () = signals.recv() => {}
        Some(ended) = servers.join_next() => {
            // A listener ended before any signal: that is a failure, whatever it says.
            ended??;
            anyhow::bail!("a listener stopped on its own");
        }
    }
    let _ = services.stop.send(true);
    let grace = Duration::from_secs(config.http.shutdown_grace_secs);
    let drained = tokio::time::timeout(grace, async {
        while let Some(ended) = servers.join_next().await {
            match ended {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::error!("{err:#}"),
                Err(err) => tracing::error!(%err, "a listener task failed"),
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "requests still in flight after http.shutdown_grace_secs; closing them"
        );
        servers.abort_all();
    }
    for worker in workers {
        worker.abort();
    }
    // Another scheduler takes over now rather than when the lease runs out.
    services.leadership.resign().await;
    // Whatever reached the group commit (checkout attempts included) is made durable first.
    services.state.flash_sales.flush().await;
    services.records.close().await;
    tracing::info!("flashmart stopped");
    Ok(())
}

/// Where Linux keeps the most connections a listener's queue may hold.
const SOMAXCONN: &str = "/proc/sys/net/core/somaxconn";

/// The kernel's cap on a listen queue, read from `somaxconn`'s text, when it is below `wanted`.
fn kernel_cap(wanted: u32, somaxconn: &str) -> Option<u32> {
    let cap = somaxconn.trim().parse::<u32>().ok()?;
    (cap < wanted).then_some(cap)
}

/// A listener on `addr` whose kernel queue holds `backlog` connections not yet accepted (std's
/// and tokio's `bind` ask for 128, which the opening second of a sale overflows: each connection
/// the queue cannot take waits a second or more for its client to try again).
fn bind(addr: SocketAddr, backlog: u32, key: &str) -> anyhow::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    };
    let listen = || -> std::io::Result<TcpListener> {
        let socket = socket?;
        // As std's `bind` does on Unix: a restarted server gets its port back at once.
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(backlog)
    };
    listen().with_context(|| format!("binding {key} {addr}"))
}

/// SIGTERM and SIGINT, listened for from the moment this is made: made before the server says
/// it is listening, so a signal sent as soon as it does is never the default action (death
/// without a word).
struct StopSignals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
                interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
        tracing::info!("shutdown signal received; draining");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A sale's opening burst of new connections all wait in the kernel's queue until the server
    /// gets to them: none is dropped for the client to send again a second later. The listener
    /// accepts nothing here, so every connection must fit in its queue (the kernel lets it hold
    /// one more than asked). With the 128 that std's and tokio's own `bind` ask for, the 129th
    /// connection would never be answered.
    #[tokio::test]
    async fn a_listener_queues_an_opening_burst_of_connections() {
        let somaxconn = std::fs::read_to_string(SOMAXCONN)
            .ok()
            .and_then(|text| text.trim().parse::<usize>().ok())
            .unwrap_or(4096);
        let burst = somaxconn.min(1000);
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)), 4096, "http.addr").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut connections = Vec::with_capacity(burst);
        let connected = tokio::time::timeout(Duration::from_secs(20), async {
            for _ in 0..burst {
                connections.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            }
        })
        .await;
        assert!(
            connected.is_ok(),
            "{} of {burst} connections made without being accepted",
            connections.len()
        );
    }

    #[test]
    fn a_kernel_cap_below_the_backlog_is_told() {
        assert_eq!(kernel_cap(4096, "128\n"), Some(128));
        assert_eq!(kernel_cap(4096, "4096\n"), None);
        assert_eq!(kernel_cap(1024, "4096"), None);
        assert_eq!(kernel_cap(4096, "not a number"), None);
    }

    #[tokio::test]
    async fn a_taken_address_names_its_key() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = bind(taken.local_addr().unwrap(), 16, "compat.addr").unwrap_err();
        assert!(
            format!("{err:#}").starts_with("binding compat.addr 127.0.0.1:"),
            "{err:#}"
        );
    }
}
