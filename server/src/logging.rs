//! Application logs (tracing) on stderr, as text or JSON lines, with a
//! filter and a format that `vigie serve` can change while it runs: from
//! the configuration at start, again on SIGHUP (the file's `[log]` is read
//! anew), without a restart. Patient identifiers never reach these logs;
//! the audit trail is the only place that holds what traceability needs.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::config::{LogConfig, LogFormat};

/// The registry under its (reloadable) filter.
type Filtered = tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>;
type BoxedLayer = Box<dyn Layer<Filtered> + Send + Sync>;

struct Handles {
    filter: reload::Handle<EnvFilter, Registry>,
    format: reload::Handle<BoxedLayer, Filtered>,
    /// `VIGIE_LOG` was set: it wins over the configuration.
    env_filter: bool,
}

static HANDLES: OnceLock<Handles> = OnceLock::new();

fn fmt_layer(format: LogFormat) -> BoxedLayer {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match format {
        LogFormat::Text => Box::new(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi),
        ),
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_writer(std::io::stderr),
        ),
    }
}

/// Install the subscriber: `default` level unless `VIGIE_LOG` says
/// otherwise, text format.
pub fn init(default: &str) {
    let from_env = EnvFilter::try_from_env("VIGIE_LOG").ok();
    let env_filter = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(default));
    let (filter, filter_handle) = reload::Layer::new(filter);
    let (format, format_handle) = reload::Layer::new(fmt_layer(LogFormat::Text));
    if tracing_subscriber::registry()
        .with(filter)
        .with(format)
        .try_init()
        .is_ok()
    {
        let _ = HANDLES.set(Handles {
            filter: filter_handle,
            format: format_handle,
            env_filter,
        });
    }
}

/// Apply `[log]`: its level (unless `VIGIE_LOG` is set) and its format.
pub fn apply(config: &LogConfig) -> Result<(), String> {
    let Some(handles) = HANDLES.get() else {
        return Err("logging is not initialised".into());
    };
    if !handles.env_filter {
        let filter = EnvFilter::try_new(&config.level)
            .map_err(|e| format!("log.level {:?}: {e}", config.level))?;
        handles.filter.reload(filter).map_err(|e| e.to_string())?;
    }
    handles
        .format
        .reload(fmt_layer(config.format))
        .map_err(|e| e.to_string())
}
