use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

/// A configuration value that cannot be used. The message names the variable and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {name}={value:?} {expected}")]
pub struct ConfigError {
    name: &'static str,
    value: String,
    expected: &'static str,
}

impl ConfigError {
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn new(name: &'static str, value: &str, expected: &'static str) -> Self {
        ConfigError {
            name,
            value: value.to_owned(),
            expected,
        }
    }

    /// The variable at fault.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The value it had.
    pub fn value(&self) -> &str {
        &self.value
    }
}

/// A secret from the configuration: kept out of `Debug` output (and so out of logs).
///
/// ```
/// let secret = gofr_app::Secret::new("hunter2");
/// assert_eq!(format!("{secret:?}"), "Secret(***)");
/// assert_eq!(secret.expose(), "hunter2");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Log levels as GoFr names them; `NOTICE` logs as info and `FATAL` as error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogLevel {
    /// DEBUG
    Debug,
    /// INFO (the default) and NOTICE
    Info,
    /// WARN
    Warn,
    /// ERROR and FATAL
    Error,
}

impl LogLevel {
    pub(crate) fn as_level_filter(self) -> tracing_subscriber::filter::LevelFilter {
        use tracing_subscriber::filter::LevelFilter;
        match self {
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Error => LevelFilter::ERROR,
        }
    }
}

/// The app's settings, read from the environment and `configs/.env`.
///
/// | variable | default | meaning |
/// |---|---|---|
/// | `APP_NAME` | `gofr-app` | name in logs and health |
/// | `HTTP_HOST` | `0.0.0.0` | address the server binds |
/// | `HTTP_PORT` | `8000` | port of HTTP and WebSocket routes (0 picks a free one) |
/// | `METRICS_PORT` | `2121` | port of `/metrics`, Prometheus text format (0 picks a free one) |
/// | `LOG_LEVEL` | `INFO` | `DEBUG`, `INFO`, `NOTICE`, `WARN`, `ERROR`, `FATAL` |
/// | `SHUTDOWN_GRACE_PERIOD` | `5s` | time handlers get to finish at shutdown (`500ms`, `5s`, `1m`, or seconds) |
/// | `REDIS_URL` | unset | join the cluster of instances on this Redis, such as `redis://127.0.0.1:6379/` or `rediss://` for TLS (needs the `redis` feature) |
/// | `WS_BACKPLANE_PREFIX` | `APP_NAME` | prefix of the app's Redis channels and keys: instances of one app share it, other apps on the same Redis must not (letters, digits, `.`, `_`, `-`, at most 64) |
/// | `WS_BACKPLANE_SECRET` | unset | shared secret: cross-instance envelopes are signed (HMAC-SHA256) and unsigned or altered ones dropped |
/// | `REDIS_TLS_CA_CERT` | unset | PEM file of the CA to trust for `rediss://` instead of the webpki roots |
///
/// Variables already set in the environment win over `configs/.env`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// `APP_NAME`
    pub app_name: String,
    /// `HTTP_HOST`
    pub http_host: IpAddr,
    /// `HTTP_PORT`
    pub http_port: u16,
    /// `METRICS_PORT`
    pub metrics_port: u16,
    /// `LOG_LEVEL`
    pub log_level: LogLevel,
    /// `SHUTDOWN_GRACE_PERIOD`
    pub shutdown_grace: Duration,
    /// `REDIS_URL`: with it, rooms, broadcasts and send-to-id span every instance connected
    /// to this Redis.
    pub redis_url: Option<String>,
    /// `WS_BACKPLANE_PREFIX`, else `APP_NAME` with every character outside letters, digits,
    /// `.`, `_` and `-` replaced by `_`.
    pub backplane_prefix: String,
    /// `WS_BACKPLANE_SECRET`
    pub backplane_secret: Option<Secret>,
    /// `REDIS_TLS_CA_CERT`
    pub redis_tls_ca_cert: Option<PathBuf>,
}

impl Config {
    /// Reads `configs/.env` (relative to the working directory, if present), then the
    /// environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        let mut vars: HashMap<String, String> = HashMap::new();
        if let Ok(file) = dotenvy::from_path_iter(Path::new("configs/.env")) {
            vars.extend(file.flatten());
        }
        vars.extend(std::env::vars());
        Config::from_vars(&vars)
    }

    /// Reads settings from a map of variables: the testable core of [`from_env`](Self::from_env).
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let get = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let bad = |name: &'static str, value: &str, expected: &'static str| ConfigError {
            name,
            value: value.to_owned(),
            expected,
        };
        let http_port = match get("HTTP_PORT") {
            Some(v) => v
                .parse()
                .map_err(|_| bad("HTTP_PORT", v, "is not a port number (0-65535)"))?,
            None => 8000,
        };
        let metrics_port = match get("METRICS_PORT") {
            Some(v) => v
                .parse()
                .map_err(|_| bad("METRICS_PORT", v, "is not a port number (0-65535)"))?,
            None => 2121,
        };
        let http_host = match get("HTTP_HOST") {
            Some(v) => v
                .parse()
                .map_err(|_| bad("HTTP_HOST", v, "is not an IP address"))?,
            None => IpAddr::from([0, 0, 0, 0]),
        };
        let log_level = match get("LOG_LEVEL").map(str::to_ascii_uppercase).as_deref() {
            None | Some("INFO" | "NOTICE") => LogLevel::Info,
            Some("DEBUG") => LogLevel::Debug,
            Some("WARN") => LogLevel::Warn,
            Some("ERROR" | "FATAL") => LogLevel::Error,
            Some(_) => {
                let v = get("LOG_LEVEL").unwrap_or_default();
                return Err(bad(
                    "LOG_LEVEL",
                    v,
                    "is not one of DEBUG, INFO, NOTICE, WARN, ERROR, FATAL",
                ));
            }
        };
        let shutdown_grace = match get("SHUTDOWN_GRACE_PERIOD") {
            Some(v) => parse_duration(v).ok_or_else(|| {
                bad(
                    "SHUTDOWN_GRACE_PERIOD",
                    v,
                    "is not a duration such as 500ms, 5s or 1m",
                )
            })?,
            None => Duration::from_secs(5),
        };
        let redis_url = get("REDIS_URL").map(str::to_owned);
        if cfg!(not(feature = "redis"))
            && let Some(url) = &redis_url
        {
            return Err(bad(
                "REDIS_URL",
                url,
                "needs gofr-app built with its `redis` feature",
            ));
        }
        let app_name = get("APP_NAME").unwrap_or("gofr-app").to_owned();
        let backplane_prefix = match get("WS_BACKPLANE_PREFIX") {
            Some(prefix) if prefix_is_valid(prefix) => prefix.to_owned(),
            Some(prefix) => {
                return Err(bad(
                    "WS_BACKPLANE_PREFIX",
                    prefix,
                    "is not 1 to 64 letters, digits, '.', '_' or '-'",
                ));
            }
            None => prefix_from(&app_name),
        };
        Ok(Config {
            redis_url,
            backplane_prefix,
            backplane_secret: get("WS_BACKPLANE_SECRET").map(Secret::new),
            redis_tls_ca_cert: get("REDIS_TLS_CA_CERT").map(PathBuf::from),
            app_name,
            http_host,
            http_port,
            metrics_port,
            log_level,
            shutdown_grace,
        })
    }
}

fn prefix_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn prefix_is_valid(prefix: &str) -> bool {
    (1..=64).contains(&prefix.len()) && prefix.chars().all(prefix_char)
}

/// `APP_NAME` made into a channel prefix: no `:` (the separator) nor `{`/`}` (Redis Cluster
/// hash tags), at most 64 bytes.
fn prefix_from(app_name: &str) -> String {
    let prefix: String = app_name
        .chars()
        .map(|c| if prefix_char(c) { c } else { '_' })
        .take(64)
        .collect();
    if prefix.is_empty() {
        "gofr-app".to_owned()
    } else {
        prefix
    }
}

/// `250ms`, `5s`, `2m`, or a bare number of seconds.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = number.parse().ok()?;
    match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults() {
        let config = Config::from_vars(&HashMap::new()).unwrap();
        assert_eq!(config.http_port, 8000);
        assert_eq!(config.metrics_port, 2121);
        assert_eq!(config.log_level, LogLevel::Info);
        assert_eq!(config.app_name, "gofr-app");
        assert_eq!(config.shutdown_grace, Duration::from_secs(5));
        assert_eq!(config.redis_url, None);
    }

    #[test]
    fn redis_url_needs_the_feature() {
        let result = Config::from_vars(&vars(&[("REDIS_URL", "redis://127.0.0.1:6379/")]));
        if cfg!(feature = "redis") {
            assert_eq!(
                result.unwrap().redis_url.as_deref(),
                Some("redis://127.0.0.1:6379/")
            );
        } else {
            assert_eq!(result.unwrap_err().name(), "REDIS_URL");
        }
    }

    #[test]
    fn backplane_prefix_comes_from_app_name_unless_set() {
        let config = Config::from_vars(&vars(&[("APP_NAME", "shop: orders {eu}")])).unwrap();
        assert_eq!(config.backplane_prefix, "shop__orders__eu_");
        assert_eq!(config.backplane_secret, None);
        let config = Config::from_vars(&vars(&[
            ("APP_NAME", "shop"),
            ("WS_BACKPLANE_PREFIX", "shop-v2"),
            ("WS_BACKPLANE_SECRET", "s3cret"),
        ]))
        .unwrap();
        assert_eq!(config.backplane_prefix, "shop-v2");
        assert_eq!(config.backplane_secret, Some(Secret::new("s3cret")));
        assert!(!format!("{config:?}").contains("s3cret"));
        let error = Config::from_vars(&vars(&[("WS_BACKPLANE_PREFIX", "a:b")])).unwrap_err();
        assert_eq!(error.name(), "WS_BACKPLANE_PREFIX");
        assert_eq!(
            Config::from_vars(&HashMap::new()).unwrap().backplane_prefix,
            "gofr-app"
        );
    }

    #[test]
    fn bad_port_names_variable_and_value() {
        let error = Config::from_vars(&vars(&[("HTTP_PORT", "abc")])).unwrap_err();
        assert_eq!(error.name(), "HTTP_PORT");
        let text = error.to_string();
        assert!(
            text.contains("HTTP_PORT") && text.contains("\"abc\""),
            "{text}"
        );
        let error = Config::from_vars(&vars(&[("METRICS_PORT", "99999")])).unwrap_err();
        assert_eq!(error.name(), "METRICS_PORT");
    }

    #[test]
    fn levels_and_durations() {
        let config = Config::from_vars(&vars(&[
            ("LOG_LEVEL", "notice"),
            ("SHUTDOWN_GRACE_PERIOD", "250ms"),
        ]))
        .unwrap();
        assert_eq!(config.log_level, LogLevel::Info);
        assert_eq!(config.shutdown_grace, Duration::from_millis(250));
        assert!(Config::from_vars(&vars(&[("LOG_LEVEL", "LOUD")])).is_err());
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("5h"), None);
    }
}
