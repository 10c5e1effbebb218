//! Per-service settings and the reconnection policy.

use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};
use http::{HeaderMap, HeaderName, Uri, header};

use crate::PoolError;

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

    fn validate(&self) -> Result<(), PoolError> {
        let (first, max) = match *self {
            Reconnect::Fixed(interval) => (interval, interval),
            Reconnect::Exponential { initial, max } => (initial, max),
        };
        if first.is_zero() {
            return Err(PoolError::InvalidOption {
                option: "retry_interval",
                reason: "must be greater than zero (zero would dial in a hot loop)",
            });
        }
        if max < first {
            return Err(PoolError::InvalidOption {
                option: "reconnect",
                reason: "the cap must not be smaller than the first delay",
            });
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

/// Everything about one service: where it is and how the pool treats it.
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
/// let options = ServiceOptions::new("ws://127.0.0.1:8081/ws")
///     .reconnect(Reconnect::exponential(Duration::from_millis(100), Duration::from_secs(10)))
///     .queue_capacity(10_000)
///     .ping_interval(Duration::from_secs(5));
/// # let _ = options;
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
    /// let options = ServiceOptions::new("wss://user:secret@host:443/feed?token=x");
    /// assert_eq!(options.shown_url(), "wss://host:443/feed");
    /// ```
    pub fn shown_url(&self) -> String {
        redact_url(&self.url)
    }

    /// Options for the service at `url` (`ws://` or `wss://`), with the defaults above.
    pub fn new(url: impl Into<String>) -> Self {
        ServiceOptions {
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
        }
    }

    /// Headers sent with the handshake (authorization, `Origin`, `Sec-WebSocket-Protocol`).
    /// Headers the handshake sets itself are refused when the service is added.
    pub fn headers(mut self, headers: HeaderMap) -> Self {
        self.headers = headers;
        self
    }

    /// The reconnection policy (default: fixed 5 s).
    pub fn reconnect(mut self, policy: Reconnect) -> Self {
        self.reconnect = Some(policy);
        self
    }

    /// No reconnection: a failed first dial is an error, a dropped connection closes the
    /// service.
    pub fn no_reconnect(mut self) -> Self {
        self.reconnect = None;
        self
    }

    /// How many messages may wait to be sent (default 1024). A write to a full queue gets
    /// [`PoolError::QueueFull`].
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity;
        self
    }

    /// How many received messages may wait for the reader of
    /// [`messages`](crate::WsClientPool::messages) (default 256); when they are not read, the
    /// pool stops reading the socket, so the service feels the backpressure.
    pub fn inbound_capacity(mut self, capacity: usize) -> Self {
        self.inbound_capacity = capacity;
        self
    }

    /// How often to ping the service (default 10 s). A ping still unanswered at the next one
    /// ends the connection.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// How long one dial (TCP, TLS and handshake) may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long the closing handshake may take (default 5 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
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
    /// let options = ServiceOptions::new("ws://127.0.0.1:8081/ws")
    ///     .max_message_size(1 << 20)
    ///     .max_frame_size(64 << 10);
    /// # let _ = options;
    /// ```
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// The largest frame the service may send, in bytes (default [`DEFAULT_MAX_FRAME_SIZE`],
    /// 16 MiB); a larger one is treated like a message over
    /// [`max_message_size`](Self::max_message_size): close 1009, then reconnect.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes;
        self
    }

    /// Refuses what would fail later: a bad URL, a header the handshake owns, a zero value.
    pub(crate) fn validate(&self) -> Result<(), PoolError> {
        validate_url(&self.url)?;
        for name in self.headers.keys() {
            if FORBIDDEN_HEADERS.contains(name) {
                return Err(PoolError::ForbiddenHeader {
                    name: name.as_str().to_owned(),
                });
            }
        }
        if let Some(policy) = &self.reconnect {
            policy.validate()?;
        }
        let nonzero = [
            ("queue_capacity", self.queue_capacity == 0),
            ("inbound_capacity", self.inbound_capacity == 0),
            ("ping_interval", self.ping_interval.is_zero()),
            ("connect_timeout", self.connect_timeout.is_zero()),
            ("close_timeout", self.close_timeout.is_zero()),
        ];
        for (option, is_zero) in nonzero {
            if is_zero {
                return Err(PoolError::InvalidOption {
                    option,
                    reason: "must be greater than zero",
                });
            }
        }
        for (option, bytes) in [
            ("max_message_size", self.max_message_size),
            ("max_frame_size", self.max_frame_size),
        ] {
            if !(1..=MAX_SIZE_LIMIT).contains(&bytes) {
                return Err(PoolError::InvalidOption {
                    option,
                    reason: "must be between 1 byte and 1 TiB",
                });
            }
        }
        if self.max_frame_size > self.max_message_size {
            return Err(PoolError::InvalidOption {
                option: "max_frame_size",
                reason: "must not exceed max_message_size",
            });
        }
        Ok(())
    }

    pub(crate) fn is_tls(&self) -> bool {
        self.url.starts_with("wss://")
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

fn validate_url(url: &str) -> Result<(), PoolError> {
    let invalid = |reason: &str| PoolError::InvalidUrl {
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
                matches!(validate_url(bad), Err(PoolError::InvalidUrl { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn size_limits_are_checked_when_the_service_is_added() {
        let options = || ServiceOptions::new("ws://127.0.0.1:8081/ws");
        assert!(options().validate().is_ok());
        assert_eq!(
            (options().max_message_size, options().max_frame_size),
            (16 << 20, 16 << 20)
        );
        for (bad, option) in [
            (options().max_message_size(0), "max_message_size"),
            (options().max_frame_size(0), "max_frame_size"),
            (
                options().max_message_size((1 << 40) + 1),
                "max_message_size",
            ),
            (options().max_frame_size(17 << 20), "max_frame_size"),
        ] {
            assert!(
                matches!(bad.validate(), Err(PoolError::InvalidOption { option: o, .. }) if o == option),
                "{bad:?} accepted"
            );
        }
        assert!(
            options()
                .max_message_size(1 << 30)
                .max_frame_size(1 << 20)
                .validate()
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
