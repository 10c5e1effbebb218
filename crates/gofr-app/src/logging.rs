//! Structured logs through `tracing`, level from `LOG_LEVEL`.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::Config;

/// Installs the global subscriber once. `RUST_LOG`, when set, takes over from `LOG_LEVEL`. Output is
/// JSON when stdout is not a terminal (as GoFr does), human-readable otherwise. A subscriber
/// installed earlier by the program is kept.
///
/// Without `RUST_LOG` the filter is a plain level: an `EnvFilter` looks every span up in a
/// locked map each time it is entered, which costs more than the rest of a small message's path.
pub(crate) fn init(config: &Config) {
    let json = !std::io::stdout().is_terminal();
    let _already_set = match EnvFilter::try_from_default_env() {
        Ok(filter) => {
            let builder = tracing_subscriber::fmt().with_env_filter(filter);
            if json {
                builder.json().flatten_event(true).try_init()
            } else {
                builder.try_init()
            }
        }
        Err(_) => {
            let builder =
                tracing_subscriber::fmt().with_max_level(config.log_level.as_level_filter());
            if json {
                builder.json().flatten_event(true).try_init()
            } else {
                builder.try_init()
            }
        }
    };
}
