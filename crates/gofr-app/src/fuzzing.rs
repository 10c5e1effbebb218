//! The body of the cargo-fuzz target `config` in `fuzz/`, kept here so that a stable test
//! (`tests/fuzz_corpus.rs`) replays the corpus through the same code. Not part of the API:
//! it panics when an invariant breaks, which is what a fuzzer reports.

use std::{collections::HashMap, time::Duration};

use crate::Config;

/// Every variable [`Config::from_vars`] reads.
const VARIABLES: [&str; 16] = [
    "APP_NAME",
    "HTTP_HOST",
    "HTTP_PORT",
    "METRICS_PORT",
    "LOG_LEVEL",
    "SHUTDOWN_GRACE_PERIOD",
    "HTTP_READ_HEADER_TIMEOUT",
    "HTTP_READ_TIMEOUT",
    "HTTP_IDLE_TIMEOUT",
    "HTTP_MAX_HEADER_BYTES",
    "WS_MAX_CONNECTIONS",
    "WS_MAX_CONNECTIONS_PER_IP",
    "REDIS_URL",
    "WS_BACKPLANE_PREFIX",
    "WS_BACKPLANE_SECRET",
    "REDIS_TLS_CA_CERT",
];

/// Target `config`: one variable per line, its first byte choosing which (modulo the 16
/// [`Config::from_vars`] reads) and the rest, lossily UTF-8, its value. No panic; an error
/// names a variable that was set and its value as set; a config that is accepted has every
/// value inside its documented range.
pub fn config(data: &[u8]) {
    let mut vars = HashMap::new();
    for line in data.split(|&b| b == b'\n') {
        if let Some((&which, value)) = line.split_first() {
            let name = VARIABLES[usize::from(which) % VARIABLES.len()];
            vars.insert(name.to_owned(), String::from_utf8_lossy(value).into_owned());
        }
    }
    let config = match Config::from_vars(&vars) {
        Ok(config) => config,
        Err(error) => {
            let name = error.name();
            assert!(VARIABLES.contains(&name), "unknown variable {name}");
            let set = vars
                .get(name)
                .unwrap_or_else(|| panic!("error names {name}, which is not set"));
            assert_eq!(
                error.value(),
                set.trim(),
                "error on {name} shows another value"
            );
            assert!(error.to_string().contains(name));
            return;
        }
    };
    let hour = Duration::from_secs(3600);
    let ms = Duration::from_millis(1);
    assert!(config.shutdown_grace <= hour);
    for timeout in [
        config.http_read_header_timeout,
        config.http_read_timeout,
        config.http_idle_timeout,
    ] {
        assert!((ms..=hour).contains(&timeout), "{timeout:?}");
    }
    assert!((ws_upgrader::MIN_MAX_HEADER_BYTES..=1 << 20).contains(&config.http_max_header_bytes));
    assert!((1..=10_000_000).contains(&config.ws_max_connections));
    if let Some(per_ip) = config.ws_max_connections_per_ip {
        assert!((1..=10_000_000).contains(&per_ip));
    }
    let prefix = &config.backplane_prefix;
    assert!((1..=64).contains(&prefix.len()), "prefix {prefix:?}");
    assert!(
        prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
        "prefix {prefix:?}"
    );
    assert!(cfg!(feature = "redis") || config.redis_url.is_none());
}
