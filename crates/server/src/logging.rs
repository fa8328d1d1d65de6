//! Log output through `tracing`: readable in a terminal, or one JSON object a line. Lines written
//! while serving a request carry its trace id, method and route: from the request's span at
//! `debug`, from the request's task above it (`InRequest`). The log filter (`log.level`) can be
//! replaced while the process runs (a SIGHUP reloads it).
//!
//! With `otel.endpoint` set, the same spans also go to an OpenTelemetry collector over OTLP,
//! with a filter of their own that lets in the debug-level spans flashmart's crates open around
//! its use cases, store calls, the Redis scripts and the group commit. Without it no exporter
//! exists, and those spans, which no log reads, are never made.

use std::fmt;
use std::io::IsTerminal as _;
use std::sync::OnceLock;
use std::time::Duration;

use flashmart_http::CurrentRequest;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::trace::{BatchConfigBuilder, SdkTracerProvider};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{LogConfig, LogFormat, OtelConfig, OtelProtocol};

type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// Replaces the log output's filter.
static SET_FILTER: OnceLock<SetFilter> = OnceLock::new();

/// The spans OpenTelemetry receives: flashmart's own down to debug, everyone else's from info.
const OTEL_FILTER: &str = "info,flashmart_app=debug,flashmart_http=debug,flashmart_web=debug,\
                           flashmart_embedded=debug,flashmart_postgres=debug,flashmart_redis=debug,\
                           flashmart_sandbox=debug,flashmart_server=debug";

/// The exporter's pipeline, flushed and shut down at exit.
#[derive(Debug)]
pub struct Telemetry(SdkTracerProvider);

impl Telemetry {
    /// Sends what is still queued (bounded by the exporter's timeout) and stops.
    pub fn shutdown(self) {
        if let Err(err) = self.0.shutdown() {
            eprintln!("flashmart: OpenTelemetry exporter: {err}");
        }
    }
}

fn tracer_provider(otel: &OtelConfig, endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = match otel.protocol {
        OtelProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(5))
            .build()?,
        OtelProtocol::HttpProtobuf => {
            // The collector's traces path, unless the URL names one.
            let has_path = endpoint
                .split_once("://")
                .is_some_and(|(_, rest)| rest.trim_end_matches('/').contains('/'));
            let url = if has_path {
                endpoint.to_owned()
            } else {
                format!("{}/v1/traces", endpoint.trim_end_matches('/'))
            };
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(url)
                .with_timeout(Duration::from_secs(5))
                .build()?
        }
    };
    let batch = BatchConfigBuilder::default()
        .with_scheduled_delay(Duration::from_millis(otel.batch_delay_ms))
        .build();
    // Exports run as tasks of the process's tokio runtime (the gRPC client needs it).
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .with_batch_config(batch)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(otel.service_name.clone())
                .build(),
        )
        .build())
}

/// Names the request a line was written in when no span does. The HTTP layer makes a request's
/// span at `debug` only (above it, making, entering and closing one would cost every request a
/// few microseconds, for lines that are rare), so a line written while serving a request takes
/// the request's trace id, method and route from its task instead, where the span's fields would
/// be: `span` in JSON, the end of the line in `pretty`.
struct InRequest<E> {
    inner: E,
    json: bool,
}

impl<S, N, E> FormatEvent<S, N> for InRequest<E>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    E: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let in_span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current())
            .is_some();
        let request = if in_span {
            None
        } else {
            CurrentRequest::with(Clone::clone)
        };
        let Some(request) = request else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        match line.strip_suffix('}') {
            Some(object) if self.json => {
                let quoted = |s: &str| serde_json::to_string(s).map_err(|_| fmt::Error);
                writeln!(
                    writer,
                    r#"{object},"span":{{"method":{},"route":{},"trace_id":{},"name":"request"}}}}"#,
                    quoted(request.method())?,
                    quoted(request.route())?,
                    quoted(request.trace_id().as_str())?,
                )
            }
            _ => writeln!(
                writer,
                "{line} trace_id={} method={} route={:?}",
                request.trace_id(),
                request.method(),
                request.route()
            ),
        }
    }
}

/// Installs the global subscriber, and with `otel.endpoint` the OpenTelemetry exporter. Call
/// once, at start-up, inside the tokio runtime.
pub fn init(config: &LogConfig, otel: &OtelConfig) -> anyhow::Result<Option<Telemetry>> {
    let filter = EnvFilter::try_new(&config.level)?;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let _ = SET_FILTER.set(Box::new(move |f| {
        handle.reload(f).map_err(|e| e.to_string())
    }));
    let ansi = std::io::stderr().is_terminal();
    let output = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let output = match config.format {
        // The format's own colour setting, since `InRequest` may format into a buffer first.
        LogFormat::Pretty => output
            .with_target(false)
            .compact()
            .map_event_format(|format| InRequest {
                inner: format.with_ansi(ansi),
                json: false,
            })
            .boxed(),
        LogFormat::Json => output
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .map_event_format(|format| InRequest {
                inner: format,
                json: true,
            })
            .boxed(),
    };
    let provider = match &otel.endpoint {
        Some(endpoint) => Some(tracer_provider(otel, endpoint)?),
        None => None,
    };
    let exported = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("flashmart"))
            .with_filter(EnvFilter::new(OTEL_FILTER))
    });
    tracing_subscriber::registry()
        .with(output.with_filter(filter))
        .with(exported)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    Ok(provider.map(Telemetry))
}

/// Checks that `level` is a filter `tracing` understands.
pub fn check_level(level: &str) -> Result<(), String> {
    EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Puts `level` in force for the log output.
pub fn set_level(level: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    match SET_FILTER.get() {
        Some(set) => set(filter),
        None => Err("no logger is installed".to_owned()),
    }
}
