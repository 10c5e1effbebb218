//! [`Config`], the only reader of the environment (and `configs/.env`): every variable, its
//! default and range; a value out of range is a [`ConfigError`] naming it.

use std::{
    collections::HashMap,
    ffi::OsString,
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
/// | `SHUTDOWN_GRACE_PERIOD` | `5s` | time handlers get to finish at shutdown (`500ms`, `5s`, `1m`, or seconds; at most 1 h); the process exits within it plus 2 s |
/// | `HTTP_READ_HEADER_TIMEOUT` | `10s` | time a client has to send each request head, a WebSocket handshake included (the smaller of this and the upgrader's handshake timeout applies); also on `METRICS_PORT` |
/// | `HTTP_READ_TIMEOUT` | `30s` | time a client has to send a request body once its head is read; later, `408` |
/// | `HTTP_IDLE_TIMEOUT` | `5s` | time a keep-alive connection may wait for its next request (never more than the header timeout); also on `METRICS_PORT` |
/// | `HTTP_MAX_HEADER_BYTES` | `65536` | largest request head in bytes (8 KiB to 1 MiB); larger heads get `431` |
/// | `WS_MAX_CONNECTIONS` | `10000` | WebSocket connections open at once across all routes; more get `503` with `Retry-After` |
/// | `WS_MAX_CONNECTIONS_PER_IP` | unset (no limit) | WebSocket connections open at once from one client IP address; more get `503` with `Retry-After` |
/// | `WS_INBOUND_BUDGET` | `268435456` (256 MiB) | bytes held in unfinished incoming messages across the whole process (1 MiB to 1 TiB); a frame past it closes its connection with 1013 |
/// | `WS_MESSAGE_TIMEOUT` | `30s` | time an unfinished incoming message may go without a new byte before its connection is closed with 1008 (the app's default upgrader; an upgrader given to `override_websocket_upgrader` carries its own) |
/// | `REDIS_URL` | unset | join the cluster of instances on this Redis, such as `redis://127.0.0.1:6379/` or `rediss://` for TLS; several node URLs separated by commas name a Redis Cluster (Redis 7+, sharded pub/sub) (needs the `redis` feature) |
/// | `WS_BACKPLANE_PREFIX` | `APP_NAME` | prefix of the app's Redis channels and keys: instances of one app share it, other apps on the same Redis must not (letters, digits, `.`, `_`, `-`, at most 64) |
/// | `WS_BACKPLANE_SECRET` | unset | shared secret: cross-instance envelopes are signed (HMAC-SHA256) and unsigned or altered ones dropped |
/// | `REDIS_TLS_CA_CERT` | unset | PEM file of the CA to trust for `rediss://` instead of the webpki roots |
/// | `WS_HISTORY_LEN` | unset (what the code sets; off unless it sets it) | most messages each room keeps for recovery (0 to 1,000,000; 0 turns history off); with `REDIS_URL`, the `MAXLEN ~` of each room's Redis stream |
/// | `WS_HISTORY_AGE` | unset (what the code sets; 5 min) | longest a room message is kept for recovery (1 s to 24 h); with `REDIS_URL`, the stream's `MINID ~` bound and time to live |
/// | `WS_PRESENCE_LEAVE_DELAY` | unset (what the code sets; 3 s) | how long a member's presence key stays in a room after its last connection left (0 to 1 h; 0 reports leaves at once): a reconnect within it makes no leave/join events; give every instance the same |
///
/// Variables already set in the environment win over `configs/.env`. Every number is checked
/// against its range, and a value out of it is an error naming the variable: durations from
/// 1 ms (0 for the grace period) to 1 h, counts from 1 to 10,000,000. A line of
/// `configs/.env` that is not `NAME=value` is an error naming the file and the line.
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
    /// `HTTP_READ_HEADER_TIMEOUT`
    pub http_read_header_timeout: Duration,
    /// `HTTP_READ_TIMEOUT`
    pub http_read_timeout: Duration,
    /// `HTTP_IDLE_TIMEOUT`
    pub http_idle_timeout: Duration,
    /// `HTTP_MAX_HEADER_BYTES`
    pub http_max_header_bytes: usize,
    /// `WS_MAX_CONNECTIONS`
    pub ws_max_connections: usize,
    /// `WS_MAX_CONNECTIONS_PER_IP` (`None`: no limit)
    pub ws_max_connections_per_ip: Option<usize>,
    /// `WS_INBOUND_BUDGET`, in bytes.
    pub ws_inbound_budget: usize,
    /// `WS_MESSAGE_TIMEOUT`
    pub ws_message_timeout: Duration,
    /// `REDIS_URL`: with it, rooms, broadcasts and send-to-id span every instance connected
    /// to this Redis (or Redis Cluster: node URLs separated by commas).
    pub redis_url: Option<String>,
    /// `WS_BACKPLANE_PREFIX`, else `APP_NAME` with every character outside letters, digits,
    /// `.`, `_` and `-` replaced by `_`.
    pub backplane_prefix: String,
    /// `WS_BACKPLANE_SECRET`
    pub backplane_secret: Option<Secret>,
    /// `REDIS_TLS_CA_CERT`
    pub redis_tls_ca_cert: Option<PathBuf>,
    /// `WS_HISTORY_LEN`: overrides the hub's history length when set.
    pub history_len: Option<usize>,
    /// `WS_HISTORY_AGE`: overrides the hub's history age when set.
    pub history_age: Option<Duration>,
    /// `WS_PRESENCE_LEAVE_DELAY`: overrides the hub's presence leave delay when set.
    pub presence_leave_delay: Option<Duration>,
}

impl Config {
    /// Reads `configs/.env` (relative to the working directory, if present), then the
    /// environment. A variable of the table above whose value in the environment is not
    /// UTF-8 is an error naming it; other variables are not looked at. A `configs/.env` that
    /// exists but cannot be read, or has a line that is not `NAME=value` (or a comment), is an
    /// error naming the file and the line: a setting silently dropped would be a default
    /// nobody chose.
    pub fn from_env() -> Result<Config, ConfigError> {
        let vars = read_env_file(Path::new(ENV_FILE))?;
        Config::from_os_vars(vars, std::env::vars_os())
    }

    /// `vars` (from the file) overridden by `env` (the environment's variables, which may be
    /// any bytes): a variable this config reads must be UTF-8, others are skipped.
    /// (`std::env::vars` would panic on any variable that is not.)
    pub(crate) fn from_os_vars(
        mut vars: HashMap<String, String>,
        env: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Config, ConfigError> {
        for (name, value) in env {
            let Ok(name) = name.into_string() else {
                continue;
            };
            match value.into_string() {
                Ok(value) => {
                    vars.insert(name, value);
                }
                Err(value) => {
                    if let Some(known) = VARIABLES.iter().find(|v| **v == name) {
                        return Err(ConfigError::new(
                            known,
                            value.to_string_lossy().trim(),
                            "is not valid UTF-8",
                        ));
                    }
                }
            }
        }
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
        let duration = |name: &'static str, default: Duration, min: Duration| {
            let Some(v) = get(name) else {
                return Ok(default);
            };
            match parse_duration(v) {
                Some(d) if d >= min && d <= MAX_DURATION => Ok(d),
                Some(_) if min.is_zero() => Err(bad(name, v, "is out of range (0 to 1h)")),
                Some(_) => Err(bad(name, v, "is out of range (1ms to 1h)")),
                None => Err(bad(name, v, "is not a duration such as 500ms, 5s or 1m")),
            }
        };
        let count = |name: &'static str, min: usize, max: usize, expected: &'static str| {
            get(name)
                .map(|v| match v.parse::<usize>() {
                    Ok(n) if (min..=max).contains(&n) => Ok(n),
                    _ => Err(bad(name, v, expected)),
                })
                .transpose()
        };
        let shutdown_grace = duration(
            "SHUTDOWN_GRACE_PERIOD",
            Duration::from_secs(5),
            Duration::ZERO,
        )?;
        let one_ms = Duration::from_millis(1);
        let http_read_header_timeout = duration(
            "HTTP_READ_HEADER_TIMEOUT",
            ws_upgrader::DEFAULT_HANDSHAKE_TIMEOUT,
            one_ms,
        )?;
        let http_read_timeout = duration(
            "HTTP_READ_TIMEOUT",
            ws_upgrader::DEFAULT_BODY_READ_TIMEOUT,
            one_ms,
        )?;
        let http_idle_timeout = duration(
            "HTTP_IDLE_TIMEOUT",
            ws_upgrader::DEFAULT_IDLE_TIMEOUT,
            one_ms,
        )?;
        let http_max_header_bytes = count(
            "HTTP_MAX_HEADER_BYTES",
            ws_upgrader::MIN_MAX_HEADER_BYTES,
            1 << 20,
            "is not a size in bytes from 8192 to 1048576",
        )?
        .unwrap_or(ws_upgrader::DEFAULT_MAX_HEADER_BYTES);
        let ws_max_connections = count(
            "WS_MAX_CONNECTIONS",
            1,
            MAX_COUNT,
            "is not a count from 1 to 10000000",
        )?
        .unwrap_or(DEFAULT_WS_MAX_CONNECTIONS);
        let ws_max_connections_per_ip = count(
            "WS_MAX_CONNECTIONS_PER_IP",
            1,
            MAX_COUNT,
            "is not a count from 1 to 10000000",
        )?;
        let ws_inbound_budget = count(
            "WS_INBOUND_BUDGET",
            1 << 20,
            1 << 40,
            "is not a size in bytes from 1048576 (1 MiB) to 1099511627776 (1 TiB)",
        )?
        .unwrap_or(ws_upgrader::DEFAULT_INBOUND_BUDGET);
        let ws_message_timeout = duration(
            "WS_MESSAGE_TIMEOUT",
            ws_upgrader::DEFAULT_MESSAGE_TIMEOUT,
            one_ms,
        )?;
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
        let history_len = match get("WS_HISTORY_LEN") {
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n <= 1_000_000 => Some(n),
                _ => return Err(bad("WS_HISTORY_LEN", v, "is not a count from 0 to 1000000")),
            },
            None => None,
        };
        let history_age = match get("WS_HISTORY_AGE") {
            Some(v) => match parse_duration(v) {
                Some(d) if d >= Duration::from_secs(1) && d <= Duration::from_secs(86_400) => {
                    Some(d)
                }
                _ => {
                    return Err(bad(
                        "WS_HISTORY_AGE",
                        v,
                        "is not a duration from 1s to 24h (such as 30s or 5m)",
                    ));
                }
            },
            None => None,
        };
        let presence_leave_delay = match get("WS_PRESENCE_LEAVE_DELAY") {
            Some(v) => match parse_duration(v) {
                Some(d) if d <= Duration::from_secs(3600) => Some(d),
                _ => {
                    return Err(bad(
                        "WS_PRESENCE_LEAVE_DELAY",
                        v,
                        "is not a duration from 0 to 1h (such as 3s or 500ms)",
                    ));
                }
            },
            None => None,
        };
        Ok(Config {
            history_len,
            history_age,
            presence_leave_delay,
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
            http_read_header_timeout,
            http_read_timeout,
            http_idle_timeout,
            http_max_header_bytes,
            ws_max_connections,
            ws_max_connections_per_ip,
            ws_inbound_budget,
            ws_message_timeout,
        })
    }
}

/// Every variable [`Config::from_vars`] reads.
pub(crate) const VARIABLES: [&str; 16] = [
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

/// The longest duration any setting takes: 1 h. Longer values are almost certainly a mistake,
/// and unbounded ones overflow the clock (`SHUTDOWN_GRACE_PERIOD=18446744073709551615`).
const MAX_DURATION: Duration = Duration::from_secs(3600);
/// The largest count any setting takes.
const MAX_COUNT: usize = 10_000_000;
/// Default of `WS_MAX_CONNECTIONS`: sized for a small server (each connection costs a file
/// descriptor and some KiB), and below the usual descriptor limits of a tuned host.
pub const DEFAULT_WS_MAX_CONNECTIONS: usize = 10_000;
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

/// The file [`Config::from_env`] reads, relative to the working directory.
const ENV_FILE: &str = "configs/.env";

/// The variables of a `.env` file; none if there is no such file.
fn read_env_file(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let file_error = |error: dotenvy::Error| match error {
        dotenvy::Error::LineParse(line, _) => {
            ConfigError::new(ENV_FILE, line.trim(), "is a line that is not NAME=value")
        }
        other => ConfigError::new(ENV_FILE, &other.to_string(), "(the file cannot be read)"),
    };
    match dotenvy::from_path_iter(path) {
        Ok(lines) => lines
            .map(|line| line.map_err(file_error))
            .collect::<Result<_, _>>(),
        Err(error) if error.not_found() => Ok(HashMap::new()),
        Err(error) => Err(file_error(error)),
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
        "h" => Some(Duration::from_secs(n.checked_mul(3600)?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `text` to a fresh file under the temporary directory and reads it as a `.env`.
    fn env_file(name: &str, text: &str) -> Result<HashMap<String, String>, ConfigError> {
        let path = std::env::temp_dir().join(format!("gofr-app-{}-{name}.env", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let read = read_env_file(&path);
        std::fs::remove_file(&path).unwrap();
        read
    }

    #[test]
    fn an_env_file_is_read_and_a_bad_line_is_an_error_naming_it() {
        let read = env_file("good", "# the app\n\nAPP_NAME=shop\nHTTP_PORT = 9000\n").unwrap();
        assert_eq!(read["APP_NAME"], "shop");
        assert_eq!(read["HTTP_PORT"], "9000");

        let error = env_file("bad", "APP_NAME=shop\nHTTP PORT 9000\n").unwrap_err();
        assert_eq!(
            (error.name(), error.value()),
            ("configs/.env", "HTTP PORT 9000")
        );
        assert_eq!(
            error.to_string(),
            r#"invalid configuration: configs/.env="HTTP PORT 9000" is a line that is not NAME=value"#
        );

        let missing = std::env::temp_dir().join("gofr-app-no-such-file.env");
        assert!(read_env_file(&missing).unwrap().is_empty());
        // A directory where the file should be: there, but not readable as one.
        let error = read_env_file(&std::env::temp_dir()).unwrap_err();
        assert_eq!(error.name(), "configs/.env");
    }

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
    fn history_limits_are_read_and_checked() {
        let config = Config::from_vars(&HashMap::new()).unwrap();
        assert_eq!((config.history_len, config.history_age), (None, None));
        let config = Config::from_vars(&vars(&[
            ("WS_HISTORY_LEN", "1000"),
            ("WS_HISTORY_AGE", "2m"),
        ]))
        .unwrap();
        assert_eq!(config.history_len, Some(1000));
        assert_eq!(config.history_age, Some(Duration::from_secs(120)));
        assert_eq!(config.presence_leave_delay, None);
        let config = Config::from_vars(&vars(&[("WS_PRESENCE_LEAVE_DELAY", "0")])).unwrap();
        assert_eq!(config.presence_leave_delay, Some(Duration::ZERO));
        for (name, value) in [
            ("WS_HISTORY_LEN", "-1"),
            ("WS_HISTORY_LEN", "1000001"),
            ("WS_HISTORY_AGE", "500ms"),
            ("WS_HISTORY_AGE", "25h"),
            ("WS_PRESENCE_LEAVE_DELAY", "2h"),
            ("WS_PRESENCE_LEAVE_DELAY", "soon"),
        ] {
            let error = Config::from_vars(&vars(&[(name, value)])).unwrap_err();
            assert_eq!(error.name(), name);
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
        assert_eq!(parse_duration("5d"), None);
    }

    #[test]
    fn every_number_is_bounded_and_the_error_names_the_variable() {
        // Each of these was accepted before, and the first panicked at shutdown.
        for (name, value) in [
            ("SHUTDOWN_GRACE_PERIOD", "18446744073709551615"),
            ("SHUTDOWN_GRACE_PERIOD", "2h"),
            ("HTTP_READ_HEADER_TIMEOUT", "0"),
            ("HTTP_READ_HEADER_TIMEOUT", "99999999999"),
            ("HTTP_READ_TIMEOUT", "0ms"),
            ("HTTP_IDLE_TIMEOUT", "61m"),
            ("HTTP_MAX_HEADER_BYTES", "100"),
            ("HTTP_MAX_HEADER_BYTES", "99999999999"),
            ("WS_MAX_CONNECTIONS", "0"),
            ("WS_MAX_CONNECTIONS", "18446744073709551616"),
            ("WS_MAX_CONNECTIONS_PER_IP", "0"),
            ("WS_MAX_CONNECTIONS_PER_IP", "-1"),
            ("WS_INBOUND_BUDGET", "1024"),
            ("WS_INBOUND_BUDGET", "18446744073709551615"),
            ("WS_MESSAGE_TIMEOUT", "0"),
            ("WS_MESSAGE_TIMEOUT", "2h"),
            ("HTTP_PORT", "65536"),
            ("METRICS_PORT", "-1"),
        ] {
            let error = Config::from_vars(&vars(&[(name, value)]))
                .expect_err(&format!("{name}={value} accepted"));
            assert_eq!(error.name(), name);
            assert!(error.to_string().contains(name), "{error}");
        }
    }

    #[test]
    #[cfg(unix)]
    fn environment_that_is_not_utf8_is_an_error_for_our_variables_and_skipped_otherwise() {
        use std::{ffi::OsStr, os::unix::ffi::OsStrExt as _};
        let os = |bytes: &[u8]| OsStr::from_bytes(bytes).to_owned();
        // `std::env::vars` panicked on either of these.
        let error = Config::from_os_vars(HashMap::new(), [(os(b"HTTP_PORT"), os(b"80\xff80"))])
            .unwrap_err();
        assert_eq!(error.name(), "HTTP_PORT");
        assert_eq!(error.value(), "80\u{fffd}80");
        let config = Config::from_os_vars(
            vars(&[("HTTP_PORT", "81")]),
            [
                (os(b"OTHER"), os(b"\xff")),
                (os(b"\xfe"), os(b"x")),
                (os(b"HTTP_PORT"), os(b"82")),
            ],
        )
        .unwrap();
        assert_eq!(config.http_port, 82);
    }

    #[test]
    fn limits_have_defaults_and_take_values_in_range() {
        let config = Config::from_vars(&HashMap::new()).unwrap();
        assert_eq!(config.http_read_header_timeout, Duration::from_secs(10));
        assert_eq!(config.http_read_timeout, Duration::from_secs(30));
        assert_eq!(config.http_idle_timeout, Duration::from_secs(5));
        assert_eq!(config.http_max_header_bytes, 64 * 1024);
        assert_eq!(config.ws_max_connections, 10_000);
        assert_eq!(config.ws_max_connections_per_ip, None);
        assert_eq!(config.ws_inbound_budget, 256 << 20);
        assert_eq!(config.ws_message_timeout, Duration::from_secs(30));
        let config = Config::from_vars(&vars(&[
            ("SHUTDOWN_GRACE_PERIOD", "1h"),
            ("HTTP_READ_HEADER_TIMEOUT", "2s"),
            ("HTTP_READ_TIMEOUT", "1500ms"),
            ("HTTP_IDLE_TIMEOUT", "1m"),
            ("HTTP_MAX_HEADER_BYTES", "8192"),
            ("WS_MAX_CONNECTIONS", "3"),
            ("WS_MAX_CONNECTIONS_PER_IP", "2"),
            ("WS_INBOUND_BUDGET", "1048576"),
            ("WS_MESSAGE_TIMEOUT", "5s"),
        ]))
        .unwrap();
        assert_eq!(config.shutdown_grace, Duration::from_secs(3600));
        assert_eq!(config.http_read_header_timeout, Duration::from_secs(2));
        assert_eq!(config.http_read_timeout, Duration::from_millis(1500));
        assert_eq!(config.http_idle_timeout, Duration::from_secs(60));
        assert_eq!(config.http_max_header_bytes, 8192);
        assert_eq!(config.ws_max_connections, 3);
        assert_eq!(config.ws_max_connections_per_ip, Some(2));
        assert_eq!(config.ws_inbound_budget, 1 << 20);
        assert_eq!(config.ws_message_timeout, Duration::from_secs(5));
    }
}
