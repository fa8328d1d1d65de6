//! Liveness, readiness and metrics: what load balancers, orchestrators and Prometheus ask.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flashmart_app::FieldError;
use flashmart_app::health::Workers;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::envelope::{Envelope, ErrorEnvelope, Reply, ok};
use crate::error::ApiError;
use crate::state::{AppState, Probes};

/// How long one dependency may take to answer a readiness check.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Liveness, served on every listener.
pub fn liveness() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_healthz))
}

/// Readiness (with each dependency's state) and metrics: on the main listener, or on the ops
/// listener alone when `ops.addr` is set.
pub fn internals() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_readyz))
        .routes(routes!(get_metrics))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`: the process is up and serving.
    pub status: &'static str,
}

/// Liveness: answers while the process can serve HTTP; checks no dependency.
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "The process is alive", body = Envelope<Health>)))]
pub async fn get_healthz() -> Reply<Health> {
    ok(Health { status: "ok" })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` when every dependency answered and no background work is stuck or gone.
    pub status: &'static str,
    /// Each dependency and its state.
    pub checks: BTreeMap<&'static str, &'static str>,
    /// Each piece of background work (the group commit, the workers) and what it last did.
    pub workers: Vec<WorkerOut>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerOut {
    #[schema(example = "group_commit")]
    pub name: &'static str,
    /// `ok`; `stuck` (a run has taken too long), `stalled` (no run for too long) or `stopped`
    /// (its task ended), each of which makes the server not ready.
    #[schema(example = "ok")]
    pub state: &'static str,
    /// When its last run ended.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_run_at: Option<time::OffsetDateTime>,
    /// Runs that panicked since its last success.
    pub failures: u32,
}

/// Readiness: each dependency's state and each piece of background work's; 503 (details naming
/// the failing ones) when a dependency is down or background work is stuck or gone.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "Every dependency is up", body = Envelope<Readiness>),
        (status = 503, description = "A dependency is down", body = ErrorEnvelope),
    ))]
pub async fn get_readyz(
    State(probes): State<Probes>,
    State(work): State<Arc<Workers>>,
) -> Result<Reply<Readiness>, ApiError> {
    let mut checks = BTreeMap::new();
    let mut failures = Vec::new();
    for probe in probes.0.iter() {
        let result = tokio::time::timeout(PROBE_TIMEOUT, probe.check()).await;
        // The cause goes to the log; the answer says only what kind of failure it was, so a
        // driver's error text (paths, hosts, queries) never reaches whoever asks.
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(err)) => Some((err.to_string(), "unavailable".to_owned())),
            Err(_) => {
                let message = format!("no answer within {PROBE_TIMEOUT:?}");
                Some((message.clone(), message))
            }
        };
        match failure {
            None => {
                checks.insert(probe.name(), "ok");
            }
            Some((cause, message)) => {
                tracing::warn!(dependency = probe.name(), %cause, "readiness check failed");
                failures.push(FieldError::new(probe.name(), message));
            }
        }
    }
    let mut workers = Vec::new();
    for report in work.reports() {
        if !report.state.is_healthy() {
            tracing::warn!(
                worker = report.name,
                state = report.state.as_str(),
                "background work is not healthy"
            );
            failures.push(FieldError::new(report.name, report.state.as_str()));
        }
        workers.push(WorkerOut {
            name: report.name,
            state: report.state.as_str(),
            last_run_at: report.last_run_at,
            failures: report.failures,
        });
    }
    if failures.is_empty() {
        Ok(ok(Readiness {
            status: "ready",
            checks,
            workers,
        }))
    } else {
        Err(ApiError::status(StatusCode::SERVICE_UNAVAILABLE, "not ready").with_details(failures))
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn get_metrics(
    State(handle): State<PrometheusHandle>,
    State(workers): State<Arc<flashmart_app::health::Workers>>,
    State(sales): State<Arc<flashmart_app::flash_sale::FlashSales>>,
) -> Response {
    crate::metrics::record_process();
    let mut body = handle.render();
    body.push_str(&crate::metrics::process_counters());
    body.push_str(&crate::metrics::live_gauges(&workers, &sales).await);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}
