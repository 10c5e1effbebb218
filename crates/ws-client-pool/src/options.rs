//! Per-service settings and the reconnection policy.

use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};
use http::{HeaderMap, HeaderName, Uri, header};

/// A service option value that cannot work, found when the options are built
/// ([`ServiceOptionsBuilder::build`]); the same kinds as the upgrader's (and the endpoint's)
/// `ConfigError`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The URL is not a `ws://` or `wss://` URL with a host.
    #[error("url must be a ws:// or wss:// URL with a host, got {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A header that the WebSocket handshake sets itself (`Upgrade`, `Sec-WebSocket-Key`, ...).
    #[error("headers must not set {name:?}: the WebSocket handshake sets it")]
    ForbiddenHeader {
        /// The header's name.
        name: String,
    },
    /// A count or size option is out of range.
    #[error("{option} must be between {min} and {max}, got {value}")]
    Size {
        /// The option's builder method.
        option: &'static str,
        /// The value given.
        value: usize,
        /// Smallest accepted value.
        min: usize,
        /// Largest accepted value.
        max: usize,
    },
    /// A duration option is zero (a zero retry interval would dial in a hot loop).
    #[error("{option} must be longer than zero, got {value:?}")]
    ZeroDuration {
        /// The option's builder method.
        option: &'static str,
        /// The value given.
        value: Duration,
    },
    /// An exponential backoff whose cap is below its first delay.
    #[error("reconnect's cap ({max:?}) must not be smaller than its first delay ({initial:?})")]
    BackoffCap {
        /// The first delay given.
        initial: Duration,
        /// The cap given.
        max: Duration,
    },
}

/// Default cap on one message received from a service: 16 MiB, the same as the server's
/// (`ws_upgrader::DEFAULT_MAX_MESSAGE_SIZE`, see
/// [ws-upgrader](https://docs.rs/ws-upgrader/latest/ws_upgrader/constant.DEFAULT_MAX_MESSAGE_SIZE.html));
/// tungstenite's own default is 64 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;
/// Default cap on one frame received from a service: 16 MiB, the same as the server's
/// (`ws_upgrader::DEFAULT_MAX_FRAME_SIZE`).
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 << 20;
/// The largest size limit accepted (1 TiB), as on the server.
const MAX_SIZE_LIMIT: usize = 1 << 40;

/// How long to wait before each new dial after a failure or a drop.
///
/// ```
/// use std::time::Duration;
/// use ws_client_pool::Reconnect;
///
/// // The seed's behaviour: a fixed interval.
/// let fixed = Reconnect::fixed(Duration::from_secs(5));
/// // 100 ms, 200 ms, 400 ms, ... up to 30 s, each with random jitter.
/// let backoff = Reconnect::exponential(Duration::from_millis(100), Duration::from_secs(30));
/// # let _ = (fixed, backoff);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reconnect {
    /// The same interval before every dial (GoFr's `retryInterval`).
    Fixed(Duration),
    /// Doubling delays from `initial` up to `max`, each with random jitter (up to the delay
    /// itself) so that many clients of one restarted service do not dial in step.
    Exponential {
        /// The first delay.
        initial: Duration,
        /// The cap.
        max: Duration,
    },
}

impl Reconnect {
    /// A fixed interval between dials.
    pub fn fixed(interval: Duration) -> Self {
        Reconnect::Fixed(interval)
    }

    /// Exponential backoff with jitter, from `initial` up to `max`.
    pub fn exponential(initial: Duration, max: Duration) -> Self {
        Reconnect::Exponential { initial, max }
    }

    fn check(&self) -> Result<(), ConfigError> {
        let (initial, max) = match *self {
            Reconnect::Fixed(interval) => (interval, interval),
            Reconnect::Exponential { initial, max } => (initial, max),
        };
        if initial.is_zero() {
            return Err(ConfigError::ZeroDuration {
                option: "reconnect",
                value: initial,
            });
        }
        if max < initial {
            return Err(ConfigError::BackoffCap { initial, max });
        }
        Ok(())
    }

    /// The delays before each dial, endless; restarted after every successful connection.
    pub(crate) fn delays(&self) -> Box<dyn Iterator<Item = Duration> + Send> {
        match *self {
            Reconnect::Fixed(interval) => Box::new(std::iter::repeat(interval)),
            Reconnect::Exponential { initial, max } => Box::new(
                ExponentialBuilder::new()
                    .with_min_delay(initial)
                    .with_max_delay(max)
                    .with_jitter()
                    .without_max_times()
                    .build(),
            ),
        }
    }
}

/// Everything about one service: where it is and how the pool treats it. Made by
/// [`ServiceOptions::builder`], whose [`build`](ServiceOptionsBuilder::build) checks every
/// value.
///
/// Defaults: no extra headers, reconnection on with a fixed 5 s interval, a send queue of 1024
/// messages, an inbound buffer of 256 messages, a ping every 10 s, 10 s to connect, 5 s for
/// the closing handshake, received messages and frames up to [`DEFAULT_MAX_MESSAGE_SIZE`] and
/// [`DEFAULT_MAX_FRAME_SIZE`] (16 MiB each).
///
/// ```
/// use std::time::Duration;
/// use ws_client_pool::{Reconnect, ServiceOptions};
///
/// let options = ServiceOptions::builder("ws://127.0.0.1:8081/ws")
///     .reconnect(Reconnect::exponential(Duration::from_millis(100), Duration::from_secs(10)))
///     .queue_capacity(10_000)
///     .ping_interval(Duration::from_secs(5))
///     .build()?;
/// # let _ = options;
/// # Ok::<(), ws_client_pool::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    pub(crate) url: String,
    pub(crate) headers: HeaderMap,
    pub(crate) reconnect: Option<Reconnect>,
    pub(crate) queue_capacity: usize,
    pub(crate) inbound_capacity: usize,
    pub(crate) ping_interval: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) max_message_size: usize,
    pub(crate) max_frame_size: usize,
}

impl ServiceOptions {
    /// The service's URL as logs and health show it: without user name, password, query or
    /// fragment, where credentials and tokens usually travel.
    ///
    /// ```
    /// use ws_client_pool::ServiceOptions;
    ///
    /// let options = ServiceOptions::builder("wss://user:secret@host:443/feed?token=x").build()?;
    /// assert_eq!(options.shown_url(), "wss://host:443/feed");
    /// # Ok::<(), ws_client_pool::ConfigError>(())
    /// ```
    pub fn shown_url(&self) -> String {
        redact_url(&self.url)
    }

    /// Options for the service at `url` (`ws://` or `wss://`), starting from the defaults
    /// above.
    pub fn builder(url: impl Into<String>) -> ServiceOptionsBuilder {
        ServiceOptionsBuilder(ServiceOptions {
            url: url.into(),
            headers: HeaderMap::new(),
            reconnect: Some(Reconnect::Fixed(Duration::from_secs(5))),
            queue_capacity: 1024,
            inbound_capacity: 256,
            ping_interval: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
        })
    }

    pub(crate) fn is_tls(&self) -> bool {
        self.url.starts_with("wss://")
    }
}

/// Sets [`ServiceOptions`] one by one; [`build`](Self::build) checks them.
#[derive(Debug, Clone)]
pub struct ServiceOptionsBuilder(ServiceOptions);

impl ServiceOptionsBuilder {
    /// Headers sent with the handshake (authorization, `Origin`, `Sec-WebSocket-Protocol`).
    /// Headers the handshake sets itself are refused by [`build`](Self::build).
    pub fn headers(mut self, headers: HeaderMap) -> Self {
        self.0.headers = headers;
        self
    }

    /// The reconnection policy (default: fixed 5 s).
    pub fn reconnect(mut self, policy: Reconnect) -> Self {
        self.0.reconnect = Some(policy);
        self
    }

    /// No reconnection: a failed first dial is an error, a dropped connection closes the
    /// service.
    pub fn no_reconnect(mut self) -> Self {
        self.0.reconnect = None;
        self
    }

    /// How many messages may wait to be sent (default 1024). A write to a full queue gets
    /// [`PoolError::QueueFull`](crate::PoolError::QueueFull).
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.0.queue_capacity = capacity;
        self
    }

    /// How many received messages may wait for the reader of
    /// [`messages`](crate::WsClientPool::messages) (default 256); when they are not read, the
    /// pool stops reading the socket, so the service feels the backpressure.
    pub fn inbound_capacity(mut self, capacity: usize) -> Self {
        self.0.inbound_capacity = capacity;
        self
    }

    /// How often to ping the service (default 10 s). A ping still unanswered at the next one
    /// ends the connection.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.0.ping_interval = interval;
        self
    }

    /// How long one dial (TCP, TLS and handshake) may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.0.connect_timeout = timeout;
        self
    }

    /// How long the closing handshake may take (default 5 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.0.close_timeout = timeout;
        self
    }

    /// The largest message the service may send, in bytes (default
    /// [`DEFAULT_MAX_MESSAGE_SIZE`], 16 MiB). A service that sends a larger one is
    /// disconnected with close code 1009 (message too big) and reconnected per the policy.
    /// Between 1 byte and 1 TiB, and not below [`max_frame_size`](Self::max_frame_size).
    ///
    /// ```
    /// use ws_client_pool::ServiceOptions;
    ///
    /// let options = ServiceOptions::builder("ws://127.0.0.1:8081/ws")
    ///     .max_message_size(1 << 20)
    ///     .max_frame_size(64 << 10)
    ///     .build()?;
    /// # let _ = options;
    /// # Ok::<(), ws_client_pool::ConfigError>(())
    /// ```
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.0.max_message_size = bytes;
        self
    }

    /// The largest frame the service may send, in bytes (default [`DEFAULT_MAX_FRAME_SIZE`],
    /// 16 MiB); a larger one is treated like a message over
    /// [`max_message_size`](Self::max_message_size): close 1009, then reconnect.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.0.max_frame_size = bytes;
        self
    }

    /// Checks every value and gives the options: a bad URL, a header the handshake sets
    /// itself, a zero count or duration, a size out of range are refused here, not when the
    /// service is dialled.
    pub fn build(self) -> Result<ServiceOptions, ConfigError> {
        let o = &self.0;
        validate_url(&o.url)?;
        if let Some(name) = o
            .headers
            .keys()
            .find(|name| FORBIDDEN_HEADERS.contains(name))
        {
            return Err(ConfigError::ForbiddenHeader {
                name: name.as_str().to_owned(),
            });
        }
        if let Some(policy) = &o.reconnect {
            policy.check()?;
        }
        check_size("queue_capacity", o.queue_capacity, 1, usize::MAX)?;
        check_size("inbound_capacity", o.inbound_capacity, 1, usize::MAX)?;
        for (option, value) in [
            ("ping_interval", o.ping_interval),
            ("connect_timeout", o.connect_timeout),
            ("close_timeout", o.close_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration { option, value });
            }
        }
        check_size("max_message_size", o.max_message_size, 1, MAX_SIZE_LIMIT)?;
        // A frame larger than a message could never arrive whole.
        check_size("max_frame_size", o.max_frame_size, 1, o.max_message_size)?;
        Ok(self.0)
    }
}

fn check_size(
    option: &'static str,
    value: usize,
    min: usize,
    max: usize,
) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::Size {
            option,
            value,
            min,
            max,
        })
    }
}

/// Headers the client handshake writes itself; giving them would break it (gorilla refuses the
/// same list).
const FORBIDDEN_HEADERS: [HeaderName; 5] = [
    header::UPGRADE,
    header::CONNECTION,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_EXTENSIONS,
];

/// `url` without user information, query and fragment:
/// `wss://user:secret@host:443/path?token=x` becomes `wss://host:443/path`.
fn redact_url(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let url = &url[..end];
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}{host}{path}")
}

fn validate_url(url: &str) -> Result<(), ConfigError> {
    let invalid = |reason: &str| ConfigError::Url {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
    match uri.scheme_str() {
        Some("ws" | "wss") => {}
        Some(_) => return Err(invalid("the scheme must be ws:// or wss://")),
        None => {
            return Err(invalid(
                "no scheme; write ws://host/path or wss://host/path",
            ));
        }
    }
    match uri.host() {
        Some(host) if !host.is_empty() => Ok(()),
        _ => Err(invalid("no host")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_urls_lose_userinfo_query_and_fragment() {
        for (url, shown) in [
            (
                "wss://user:secret@host:443/path?token=x",
                "wss://host:443/path",
            ),
            ("ws://a@b@host/ws#frag", "ws://host/ws"),
            ("ws://host:8080?token=x", "ws://host:8080"),
            ("ws://host/ws", "ws://host/ws"),
            ("not a url?secret", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
    }

    #[test]
    fn urls_are_checked_up_front() {
        assert!(validate_url("ws://127.0.0.1:8081/ws").is_ok());
        assert!(validate_url("wss://example.com").is_ok());
        for bad in [
            "http://example.com/ws",
            "example.com/ws",
            "ws://",
            "ws://exa mple",
            "",
        ] {
            assert!(
                matches!(validate_url(bad), Err(ConfigError::Url { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn every_bad_value_is_refused_by_build_with_its_option_and_value() {
        let options = || ServiceOptions::builder("ws://127.0.0.1:8081/ws");
        let built = options().build().expect("the defaults are valid");
        assert_eq!(
            (built.max_message_size, built.max_frame_size),
            (16 << 20, 16 << 20)
        );
        let size = |option, value, min, max| ConfigError::Size {
            option,
            value,
            min,
            max,
        };
        let zero = |option| ConfigError::ZeroDuration {
            option,
            value: Duration::ZERO,
        };
        let mut forbidden = HeaderMap::new();
        forbidden.insert(
            header::SEC_WEBSOCKET_KEY,
            http::HeaderValue::from_static("x"),
        );
        for (bad, refusal) in [
            (
                options().queue_capacity(0),
                size("queue_capacity", 0, 1, usize::MAX),
            ),
            (
                options().inbound_capacity(0),
                size("inbound_capacity", 0, 1, usize::MAX),
            ),
            (
                options().max_message_size(0),
                size("max_message_size", 0, 1, 1 << 40),
            ),
            (
                options().max_message_size((1 << 40) + 1),
                size("max_message_size", (1 << 40) + 1, 1, 1 << 40),
            ),
            (
                options().max_frame_size(0),
                size("max_frame_size", 0, 1, 16 << 20),
            ),
            (
                options().max_frame_size(17 << 20),
                size("max_frame_size", 17 << 20, 1, 16 << 20),
            ),
            (
                options().ping_interval(Duration::ZERO),
                zero("ping_interval"),
            ),
            (
                options().connect_timeout(Duration::ZERO),
                zero("connect_timeout"),
            ),
            (
                options().close_timeout(Duration::ZERO),
                zero("close_timeout"),
            ),
            (
                options().reconnect(Reconnect::fixed(Duration::ZERO)),
                zero("reconnect"),
            ),
            (
                options().reconnect(Reconnect::exponential(
                    Duration::from_secs(2),
                    Duration::from_secs(1),
                )),
                ConfigError::BackoffCap {
                    initial: Duration::from_secs(2),
                    max: Duration::from_secs(1),
                },
            ),
            (
                options().headers(forbidden),
                ConfigError::ForbiddenHeader {
                    name: "sec-websocket-key".to_owned(),
                },
            ),
        ] {
            assert_eq!(bad.build().unwrap_err(), refusal);
        }
        let url = ServiceOptions::builder("http://example.com/ws").build();
        assert!(
            matches!(&url, Err(ConfigError::Url { url, .. }) if url == "http://example.com/ws"),
            "{url:?}"
        );
        assert!(
            options()
                .max_message_size(1 << 30)
                .max_frame_size(1 << 20)
                .build()
                .is_ok()
        );
    }

    #[test]
    fn exponential_delays_grow_up_to_the_cap() {
        let policy = Reconnect::exponential(Duration::from_millis(10), Duration::from_millis(80));
        let delays: Vec<_> = policy.delays().take(8).collect();
        assert!(
            delays.iter().all(|d| *d <= Duration::from_millis(160)),
            "{delays:?}"
        );
        assert!(delays[6] >= Duration::from_millis(80), "{delays:?}");
    }
}
