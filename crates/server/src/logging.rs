//! Log output through `tracing`: readable in a terminal, or one JSON object a line. Request lines
//! carry the trace id through the request span the HTTP middleware opens. The filter
//! (`log.level`) can be replaced while the process runs (a SIGHUP reloads it).

use std::io::IsTerminal as _;
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::{LogConfig, LogFormat};

type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// Replaces the installed subscriber's filter (whichever format it writes).
static SET_FILTER: OnceLock<SetFilter> = OnceLock::new();

/// Installs the global subscriber. Call once, at start-up.
pub fn init(config: &LogConfig) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.level)?;
    let builder = tracing_subscriber::fmt()
        .with_span_events(FmtSpan::NONE)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // The reloadable filter goes on last: its handle's type names the formatter under it.
    let result = match config.format {
        LogFormat::Pretty => {
            let builder = builder
                .with_target(false)
                .compact()
                .with_env_filter(filter)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            let _ = SET_FILTER.set(Box::new(move |f| {
                handle.reload(f).map_err(|e| e.to_string())
            }));
            builder.try_init()
        }
        LogFormat::Json => {
            let builder = builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .with_env_filter(filter)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            let _ = SET_FILTER.set(Box::new(move |f| {
                handle.reload(f).map_err(|e| e.to_string())
            }));
            builder.try_init()
        }
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

/// Checks that `level` is a filter `tracing` understands.
pub fn check_level(level: &str) -> Result<(), String> {
    EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Puts `level` in force for the installed subscriber.
pub fn set_level(level: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    match SET_FILTER.get() {
        Some(set) => set(filter),
        None => Err("no logger is installed".to_owned()),
    }
}
