//! The body of the cargo-fuzz target `config` in `fuzz/`, kept here so that a stable test
//! (`tests/fuzz_corpus.rs`) replays the corpus through the same code. Not part of the API:
//! it panics when an invariant breaks, which is what a fuzzer reports.

use std::{collections::HashMap, ffi::OsString, time::Duration};

use crate::{Config, config::VARIABLES};

/// Target `config`: one variable per line, its first byte choosing which (modulo the 16 that
/// [`Config`] reads; with bit 7 set it comes from the `.env` file, else from the
/// environment) and the rest, any bytes, its value. No panic; an error names a variable that
/// was set and its value as set (trimmed, lossily UTF-8); a config that is accepted has every
/// value inside its documented range.
pub fn config(data: &[u8]) {
    let mut file = HashMap::new();
    let mut env = HashMap::new();
    for line in data.split(|&b| b == b'\n') {
        if let Some((&which, value)) = line.split_first() {
            let name = VARIABLES[usize::from(which & 0x7f) % VARIABLES.len()];
            if which & 0x80 == 0 {
                env.insert(name, value);
            } else {
                file.insert(name.to_owned(), String::from_utf8_lossy(value).into_owned());
            }
        }
    }
    let env_os = env
        .iter()
        .map(|(name, value)| (OsString::from(name), os_string(value)));
    let config = match Config::from_os_vars(file.clone(), env_os) {
        Ok(config) => config,
        Err(error) => {
            let name = error.name();
            assert!(VARIABLES.contains(&name), "unknown variable {name}");
            let set = match env.get(name) {
                Some(value) => String::from_utf8_lossy(value).into_owned(),
                None => file
                    .get(name)
                    .unwrap_or_else(|| panic!("error names {name}, which is not set"))
                    .clone(),
            };
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

/// The bytes of an environment variable, as the OS may hand them over.
fn os_string(bytes: &[u8]) -> OsString {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt as _;
        std::ffi::OsStr::from_bytes(bytes).to_owned()
    }
    #[cfg(not(unix))]
    {
        String::from_utf8_lossy(bytes).into_owned().into()
    }
}
