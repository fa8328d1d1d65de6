//! The state every handler can reach: built once by the server, cloned per request (one
//! reference count: axum clones the state for every request, at every layer that holds it), and
//! split into sub-states with `FromRef`, each extractor taking only what it uses.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use flashmart_app::audit::AuditLog;
use flashmart_app::auth::AuthService;
use flashmart_app::catalog::Catalog;
use flashmart_app::flash_sale::FlashSales;
use flashmart_app::payments::Payments;
use flashmart_app::ports::Probe;
use flashmart_app::shop::Shop;
use flashmart_app::uploads::Uploads;
use flashmart_app::webhooks::Webhooks;
use metrics_exporter_prometheus::PrometheusHandle;

#[derive(Clone, Debug)]
pub struct AppState(Arc<AppServices>);

impl AppState {
    pub fn new(services: AppServices) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppServices;

    fn deref(&self) -> &AppServices {
        &self.0
    }
}

/// Every sub-state an extractor can ask for by its type, as `#[derive(FromRef)]` would give.
macro_rules! sub_states {
    ($($field:ident: $ty:ty),* $(,)?) => {
        $(impl FromRef<AppState> for $ty {
            fn from_ref(state: &AppState) -> Self {
                state.0.$field.clone()
            }
        })*
    };
}

sub_states! {
    auth: Arc<AuthService>,
    flash_sales: Arc<FlashSales>,
    catalog: Arc<Catalog>,
    shop: Arc<Shop>,
    payments: Arc<Payments>,
    uploads: Arc<Uploads>,
    audit: Arc<AuditLog>,
    webhooks: Arc<Webhooks>,
    loadtest: LoadTest,
    limits: Arc<crate::limits::RateLimits>,
    proxies: crate::client_ip::TrustedProxies,
    probes: Probes,
    metrics: PrometheusHandle,
    shutdown: crate::streams::Shutdown,
    streams: Arc<crate::streams::EventStreams>,
    workers: Arc<flashmart_app::health::Workers>,
}

#[derive(Debug)]
pub struct AppServices {
    pub auth: Arc<AuthService>,
    pub flash_sales: Arc<FlashSales>,
    pub catalog: Arc<Catalog>,
    pub shop: Arc<Shop>,
    pub payments: Arc<Payments>,
    pub uploads: Arc<Uploads>,
    pub audit: Arc<AuditLog>,
    pub webhooks: Arc<Webhooks>,
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
