//! Structured logs through `tracing`, level from `LOG_LEVEL`.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::Config;

/// Installs the global subscriber once. `RUST_LOG`, when set, refines `LOG_LEVEL`. Output is
/// JSON when stdout is not a terminal (as GoFr does), human-readable otherwise. A subscriber
/// installed earlier by the program is kept.
pub(crate) fn init(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.log_level.as_filter()));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _already_set = if std::io::stdout().is_terminal() {
        builder.try_init()
    } else {
        builder.json().flatten_event(true).try_init()
    };
}
