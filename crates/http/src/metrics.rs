//! The Prometheus recorder. The `metrics` facade has one global recorder per process, so it is
//! installed once and every router built in the process (tests build many) shares it.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds: fine-grained below 10 ms, where the reservation path should be.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Batch size buckets (reservations or writes a batch): powers of two up to the applier's
/// largest transaction (8,192).
const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Whether `prometheus` has installed the recorder (or found another one installed).
pub(crate) fn installed() -> bool {
    HANDLE.get().is_some()
}

/// The process's Prometheus handle, installing the recorder on first use.
pub fn prometheus() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            // Histograms with buckets, never summaries: a summary's quantiles cannot be added
            // up across instances, and keep a sketch per series that costs every record. Any
            // histogram gets the duration buckets unless its name says otherwise.
            let builder = || {
                PrometheusBuilder::new()
                    .set_buckets(LATENCY_BUCKETS)
                    .and_then(|b| {
                        b.set_buckets_for_metric(
                            Matcher::Suffix("_batch_size".to_owned()),
                            BATCH_SIZE_BUCKETS,
                        )
                    })
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

/// The CPU time the process has used so far, user and system together, in seconds
/// (`getrusage`, to the microsecond); `None` where there is no such call.
pub fn cpu_seconds() -> Option<f64> {
    #[cfg(unix)]
    {
        use nix::sys::resource::{UsageWho, getrusage};
        let usage = getrusage(UsageWho::RUSAGE_SELF).ok()?;
        let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        Some(seconds(usage.user_time()) + seconds(usage.system_time()))
    }
    #[cfg(not(unix))]
    None
}

/// The process's counters read at each scrape, in the text format: `process_cpu_seconds_total`
/// (a counter with a fractional value, which the recorder's integer counters cannot carry).
pub fn process_counters() -> String {
    match cpu_seconds() {
        Some(seconds) => format!(
            "# HELP process_cpu_seconds_total User and system CPU time of the server process\n\
             # TYPE process_cpu_seconds_total counter\n\
             process_cpu_seconds_total {seconds}\n"
        ),
        None => String::new(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every histogram the server records is exported with buckets (a summary's quantiles
    /// cannot be added up across instances): durations' and batch sizes' of their own, any
    /// other the durations'.
    #[test]
    fn every_histogram_has_buckets() {
        let handle = prometheus();
        metrics::histogram!("metrics_test_wait_seconds").record(0.003);
        metrics::histogram!("metrics_test_batch_size").record(24.0);
        metrics::histogram!("metrics_test_other").record(0.2);
        let text = handle.render();
        for (family, bucket) in [
            ("metrics_test_wait_seconds", "le=\"0.005\"} 1"),
            ("metrics_test_batch_size", "le=\"32\"} 1"),
            ("metrics_test_other", "le=\"0.25\"} 1"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} histogram\n")),
                "{family} in:\n{text}"
            );
            assert!(
                text.contains(&format!("{family}_bucket{{{bucket}")),
                "{family} in:\n{text}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_counter_follows_the_cpu_this_process_spends() {
        let text = process_counters();
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter\n"),
            "{text}"
        );
        let before: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("process_cpu_seconds_total "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0);
        assert!(before >= 0.0, "{text}");
        // Busy until the count moves, within a bound.
        let started = std::time::Instant::now();
        let mut spent = 0u64;
        while cpu_seconds().unwrap_or(0.0) <= before && started.elapsed().as_secs() < 20 {
            spent = (0..100_000u64).fold(spent, |a, i| a.wrapping_mul(31).wrapping_add(i));
            std::hint::black_box(spent);
        }
        assert!(cpu_seconds().unwrap_or(0.0) > before);
    }
}
