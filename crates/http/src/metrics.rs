//! The Prometheus recorder. The `metrics` facade has one global recorder per process, so it is
//! installed once and every router built in the process (tests build many) shares it.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds: fine-grained below 10 ms, where the reservation path should be.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus handle, installing the recorder on first use.
pub fn prometheus() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = || {
                PrometheusBuilder::new()
                    .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
                    .unwrap_or_else(|_| PrometheusBuilder::new())
            };
            let handle = builder().install_recorder().unwrap_or_else(|err| {
                // Someone else installed a recorder first; keep a private one so /metrics still
                // answers, and say why it is empty.
                tracing::warn!(%err, "metrics recorder already installed elsewhere");
                builder().build_recorder().handle()
            });
            describe();
            handle
        })
        .clone()
}

/// The process's resident set size, from `/proc/self/status` (Linux); `None` elsewhere.
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Sets the gauges read from the process itself; called on every scrape.
pub fn record_process() {
    if let Some(rss) = resident_memory_bytes() {
        metrics::gauge!("process_resident_memory_bytes").set(rss as f64);
    }
}

/// Gauges computed at each scrape rather than recorded as things happen: the health of each
/// piece of background work (`background_work_up`, `background_work_seconds_since_run`), and
/// each live sale's units left and held unpaid (`flash_sale_remaining_units`,
/// `flash_sale_held_units`, labelled by sale id). Series of a sale end with it.
pub async fn live_gauges(
    workers: &flashmart_app::health::Workers,
    sales: &flashmart_app::flash_sale::FlashSales,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let reports = workers.reports();
    let now = time::OffsetDateTime::now_utc();
    let _ = writeln!(
        out,
        "# HELP background_work_up Whether each piece of background work is healthy (1) or stuck, stalled or stopped (0)\n# TYPE background_work_up gauge"
    );
    for r in &reports {
        let _ = writeln!(
            out,
            "background_work_up{{work=\"{}\"}} {}",
            r.name,
            u8::from(r.state.is_healthy())
        );
    }
    let _ = writeln!(
        out,
        "# HELP background_work_seconds_since_run Seconds since each piece of background work last finished a run\n# TYPE background_work_seconds_since_run gauge"
    );
    for r in &reports {
        if let Some(at) = r.last_run_at {
            let _ = writeln!(
                out,
                "background_work_seconds_since_run{{work=\"{}\"}} {:.3}",
                r.name,
                (now - at).as_seconds_f64().max(0.0)
            );
        }
    }
    let live = sales
        .list_sales(
            Some(flashmart_domain::flash_sale::SalePhase::Live),
            flashmart_app::page::PageRequest::new(None, Some(100)),
        )
        .await;
    let Ok(live) = live else {
        return out;
    };
    let mut held = Vec::with_capacity(live.items.len());
    for sale in &live.items {
        if let Ok(stats) = sales.stats(sale.record.id).await {
            held.push((sale.record.id, sale.remaining, stats.reserved));
        }
    }
    let _ = writeln!(
        out,
        "# HELP flash_sale_remaining_units Units left to reserve in each live sale\n# TYPE flash_sale_remaining_units gauge"
    );
    for (id, remaining, _) in &held {
        let _ = writeln!(
            out,
            "flash_sale_remaining_units{{sale=\"{id}\"}} {remaining}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP flash_sale_held_units Units of each live sale reserved and not yet paid\n# TYPE flash_sale_held_units gauge"
    );
    for (id, _, reserved) in &held {
        let _ = writeln!(out, "flash_sale_held_units{{sale=\"{id}\"}} {reserved}");
    }
    out
}

fn describe() {
    metrics::describe_gauge!(
        "process_resident_memory_bytes",
        metrics::Unit::Bytes,
        "Resident memory of the server process"
    );
    metrics::describe_counter!(
        "http_requests_total",
        "HTTP requests by method, route and status"
    );
    metrics::describe_histogram!(
        "http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request latency by method, route and status"
    );
}
