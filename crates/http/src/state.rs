//! The state every handler can reach: built once by the server, cloned cheaply per request
//! (everything inside is an `Arc`), and split into sub-states with `FromRef`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use flashmart_app::auth::AuthService;
use flashmart_app::catalog::Catalog;
use flashmart_app::flash_sale::FlashSales;
use flashmart_app::payments::Payments;
use flashmart_app::ports::Probe;
use flashmart_app::shop::Shop;
use flashmart_app::uploads::Uploads;
use flashmart_sandbox::Sandbox;
use metrics_exporter_prometheus::PrometheusHandle;

#[derive(Clone, Debug, FromRef)]
pub struct AppState {
    pub auth: Arc<AuthService>,
    pub flash_sales: Arc<FlashSales>,
    pub catalog: Arc<Catalog>,
    pub shop: Arc<Shop>,
    pub payments: Arc<Payments>,
    /// The built-in sandbox provider, whose pay pages this server serves; `None` with
    /// `payments.provider = "none"`.
    pub sandbox: Option<Arc<Sandbox>>,
    pub uploads: Arc<Uploads>,
    pub loadtest: LoadTest,
    pub limits: Arc<crate::limits::RateLimits>,
    pub proxies: crate::client_ip::TrustedProxies,
    pub probes: Probes,
    pub metrics: PrometheusHandle,
    /// Raised when the server starts to stop: event streams end.
    pub shutdown: crate::streams::Shutdown,
    pub streams: Arc<crate::streams::EventStreams>,
    /// The heartbeats of the background work, which `/readyz` reports.
    pub workers: Arc<flashmart_app::health::Workers>,
}

/// Whether `POST /admin/loadtest/buyers` may mint buyer accounts with tokens
/// (`loadtest.enabled`).
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadTest {
    pub enabled: bool,
}

/// The dependencies `/readyz` checks.
#[derive(Clone, Debug, Default)]
pub struct Probes(pub Arc<[Arc<dyn Probe>]>);

/// HTTP settings the router needs (the listener's address is the server's business).
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub body_limit_bytes: usize,
    pub request_timeout: Duration,
    /// `/readyz` and `/metrics` are served on the ops listener only.
    pub ops_apart: bool,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            body_limit_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            ops_apart: false,
        }
    }
}
