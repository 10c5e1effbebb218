//! [`WsUpgrader`](crate::WsUpgrader)'s options, their defaults and bounds, and
//! [`WsUpgraderBuilder::build`], which refuses a value that cannot work with a [`ConfigError`].

use std::{
    fmt,
    sync::{Arc, OnceLock},
    time::Duration,
};

use axum::response::Response;
use http::request::Parts;
use ws_protocol::InboundBudget;

use crate::handshake::{UpgradeRejection, default_error_response};

/// Default cap on one message: 16 MiB. GoFr has none; a peer could make it buffer gigabytes.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;
/// Default cap on one frame: 16 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 << 20;
/// Default write buffer: 16 KiB, enough to coalesce many small frames into one write.
pub const DEFAULT_WRITE_BUFFER_SIZE: usize = 16 << 10;
/// Default read size: 64 KiB, the most bytes one read takes from the socket.
pub const DEFAULT_READ_BUFFER_SIZE: usize = 64 << 10;
/// Largest `read_buffer_size`: the per-thread read buffer grows to the largest one in use.
pub const MAX_READ_BUFFER_SIZE: usize = 1 << 20;
/// Default bound on the bytes held in unfinished messages across every connection of the
/// process: 256 MiB, sized for a small server. See [`WsUpgraderBuilder::inbound_budget`].
pub const DEFAULT_INBOUND_BUDGET: usize = 256 << 20;
/// Default time the peer has to answer our close frame before the connection is dropped.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Default time an unfinished message may go without receiving any of its bytes.
pub const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default interval between the server's pings on a quiet connection.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);
/// Default wait for the pong before the peer is considered gone.
pub const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(10);

type OriginCheck = Arc<dyn Fn(&Parts) -> bool + Send + Sync>;
type ErrorHandler = Arc<dyn Fn(&UpgradeRejection) -> Response + Send + Sync>;

/// An option value that cannot work, found when the upgrader is built ([`WsUpgraderBuilder::build`])
/// or when a `ws-context` endpoint is made into a route (its queue and timeouts).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
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
    /// A duration option is zero.
    #[error("{option} must be longer than zero, got {value:?}")]
    ZeroDuration {
        /// The option's builder method.
        option: &'static str,
        /// The value given.
        value: Duration,
    },
    /// A subprotocol name is empty or not an HTTP token.
    #[error("subprotocol {0:?} is not a valid token (RFC 6455 §4.1: non-empty, no separators)")]
    Subprotocol(String),
    /// The frame limit is larger than the message limit, which can never be reached.
    #[error("max_frame_size ({frame}) cannot exceed max_message_size ({message})")]
    FrameOverMessage {
        /// max_frame_size given.
        frame: usize,
        /// max_message_size given.
        message: usize,
    },
    /// Compression level outside zlib's 0-9.
    #[error("compression level must be 0-9, got {0}")]
    CompressionLevel(u32),
    /// Compression window outside the 9-15 bits zlib can use for permessage-deflate.
    #[error("compression max_window_bits must be 9-15, got {0}")]
    CompressionWindow(u8),
}

/// permessage-deflate settings (RFC 7692), negotiated only with clients that offer it.
///
/// ```
/// use ws_upgrader::Compression;
///
/// // Better ratio for chatty connections, at a memory cost per connection.
/// let takeover = Compression { context_takeover: true, max_window_bits: 12, ..Compression::default() };
/// # let _ = takeover;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    /// zlib level, 0-9. Default 1: GoFr's (gorilla's) fast setting.
    pub level: u32,
    /// Messages shorter than this are sent uncompressed. Default 32 bytes. Without context
    /// takeover, a longer message whose compressed form is not smaller goes plain too; 0
    /// compresses every message, even one that grows.
    pub threshold: usize,
    /// Keep the compression context from one message to the next (both ways), for a better
    /// ratio on similar messages. Default `false`: the server answers
    /// `server_no_context_takeover; client_no_context_takeover`, as gorilla does, and a
    /// connection holds no compression state between messages: contexts are borrowed from a
    /// per-thread pool for one message. With `true` each compressed connection owns a
    /// compressor and a decompressor for its life (about 256 KiB + 40 KiB at window 15; a
    /// smaller `max_window_bits` shrinks the compressor).
    pub context_takeover: bool,
    /// The largest window (in bits, 9-15) the server compresses with; a client's
    /// `server_max_window_bits` lowers it further. Default 15.
    pub max_window_bits: u8,
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            level: 1,
            threshold: 32,
            context_takeover: false,
            max_window_bits: 15,
        }
    }
}

/// The budget every upgrader shares unless given its own: one per process, of
/// [`DEFAULT_INBOUND_BUDGET`] bytes until [`InboundBudget::set_limit`] changes it (gofr-app does
/// from `WS_INBOUND_BUDGET`).
///
/// ```
/// ws_upgrader::process_inbound_budget().set_limit(64 << 20);
/// assert_eq!(ws_upgrader::process_inbound_budget().limit(), 64 << 20);
/// ```
pub fn process_inbound_budget() -> InboundBudget {
    static BUDGET: OnceLock<InboundBudget> = OnceLock::new();
    BUDGET
        .get_or_init(|| InboundBudget::new(DEFAULT_INBOUND_BUDGET))
        .clone()
}

#[derive(Clone)]
pub(crate) struct Options {
    pub(crate) handshake_timeout: Option<Duration>,
    pub(crate) read_buffer_size: usize,
    pub(crate) write_buffer_size: usize,
    pub(crate) subprotocols: Vec<String>,
    pub(crate) error_handler: Option<ErrorHandler>,
    pub(crate) check_origin: Option<OriginCheck>,
    pub(crate) compression: Option<Compression>,
    pub(crate) max_message_size: usize,
    pub(crate) max_frame_size: usize,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) pong_timeout: Duration,
    pub(crate) message_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) inbound_budget: InboundBudget,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            handshake_timeout: Some(crate::DEFAULT_HANDSHAKE_TIMEOUT),
            read_buffer_size: DEFAULT_READ_BUFFER_SIZE,
            write_buffer_size: DEFAULT_WRITE_BUFFER_SIZE,
            subprotocols: Vec::new(),
            error_handler: None,
            check_origin: None,
            compression: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            ping_interval: Some(DEFAULT_PING_INTERVAL),
            pong_timeout: DEFAULT_PONG_TIMEOUT,
            message_timeout: DEFAULT_MESSAGE_TIMEOUT,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            inbound_budget: process_inbound_budget(),
        }
    }
}

impl Options {
    pub(crate) fn rejection_response(&self, rejection: &UpgradeRejection) -> Response {
        match &self.error_handler {
            Some(handler) => handler(rejection),
            None => default_error_response(rejection),
        }
    }
}

/// Upgrades HTTP requests to WebSockets with a fixed set of options.
///
/// The Rust form of GoFr's `websocket.NewWSUpgrader(opts...)`: build one with
/// [`WsUpgrader::builder`], then call [`WsUpgrader::upgrade`] from an axum handler (or hand it to
/// `ws-context`/`gofr-app`, which do that for you). Cloning is cheap; clones share the options.
///
/// Defaults: a 10 s handshake timeout ([`DEFAULT_HANDSHAKE_TIMEOUT`](crate::DEFAULT_HANDSHAKE_TIMEOUT)),
/// 64 KiB reads and a 16 KiB write buffer, no subprotocols, plain-text error responses,
/// same-origin check, no compression, 16 MiB message and frame limits, a ping every 30 s with a
/// 10 s pong deadline, 1 s for the answer to our close frame, 30 s for an unfinished message to
/// make progress, and the process's 256 MiB budget for unfinished messages.
///
/// ```
/// use std::time::Duration;
/// use ws_upgrader::WsUpgrader;
///
/// let upgrader = WsUpgrader::builder()
///     .handshake_timeout(Duration::from_secs(5))
///     .read_buffer_size(2048)
///     .write_buffer_size(2048)
///     .subprotocols(["chat", "binary"])
///     .compression()
///     .build()
///     .expect("valid options");
/// # let _ = upgrader;
/// ```
#[derive(Clone, Default)]
pub struct WsUpgrader {
    pub(crate) options: Arc<Options>,
}

impl fmt::Debug for WsUpgrader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        f.debug_struct("WsUpgrader")
            .field("handshake_timeout", &o.handshake_timeout)
            .field("read_buffer_size", &o.read_buffer_size)
            .field("write_buffer_size", &o.write_buffer_size)
            .field("subprotocols", &o.subprotocols)
            .field("custom_error_handler", &o.error_handler.is_some())
            .field("custom_origin_check", &o.check_origin.is_some())
            .field("compression", &o.compression)
            .field("max_message_size", &o.max_message_size)
            .field("max_frame_size", &o.max_frame_size)
            .field("ping_interval", &o.ping_interval)
            .field("pong_timeout", &o.pong_timeout)
            .field("message_timeout", &o.message_timeout)
            .field("close_timeout", &o.close_timeout)
            .field("inbound_budget", &o.inbound_budget.limit())
            .finish()
    }
}

impl WsUpgrader {
    /// An upgrader with the defaults listed on [`WsUpgrader`].
    pub fn new() -> Self {
        WsUpgrader::default()
    }

    /// Starts a chain of options; when an option repeats, the last one wins (as in GoFr).
    pub fn builder() -> WsUpgraderBuilder {
        WsUpgraderBuilder {
            options: Options::default(),
        }
    }

    /// The handshake timeout, if one is set; give it to [`Serve::handshake_timeout`] so that
    /// reading the HTTP request is bounded too.
    ///
    /// [`Serve::handshake_timeout`]: crate::Serve::handshake_timeout
    pub fn handshake_timeout(&self) -> Option<Duration> {
        self.options.handshake_timeout
    }

    /// The largest message a peer may send.
    pub fn max_message_size(&self) -> usize {
        self.options.max_message_size
    }
}

/// Builder of a [`WsUpgrader`]; see [`WsUpgrader::builder`]. Values are checked by
/// [`build`](WsUpgraderBuilder::build).
#[must_use = "call .build() to get the upgrader"]
pub struct WsUpgraderBuilder {
    options: Options,
}

impl fmt::Debug for WsUpgraderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsUpgraderBuilder").finish_non_exhaustive()
    }
}

impl WsUpgraderBuilder {
    /// Time a client has to send its upgrade request (GoFr's `WithHandshakeTimeout`).
    /// Default: 10 s ([`DEFAULT_HANDSHAKE_TIMEOUT`](crate::DEFAULT_HANDSHAKE_TIMEOUT)).
    ///
    /// The request is read by the HTTP server before any handler or upgrader runs, so the
    /// server enforces it: serve with [`serve`](crate::serve) (as `gofr-app`'s `App` does) and
    /// pass it [`WsUpgrader::handshake_timeout`]; a connection whose request head is not
    /// complete in time is closed. `axum::serve` has no such limit. Once the request is
    /// complete the `101` goes out at once; a client that stalls after that is closed by the
    /// liveness pings ([`ping_interval`](Self::ping_interval)).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.options.handshake_timeout = Some(timeout);
        self
    }

    /// The most bytes one read takes from the socket (GoFr's `WithReadBufferSize`), 256 B to
    /// 1 MiB. Default 64 KiB.
    ///
    /// What it does, precisely: connections read into a buffer of their worker thread, this
    /// many bytes at a time, and keep only the bytes of a message that is not complete yet, so
    /// an idle connection holds no read buffer at all (gorilla keeps one of this size per
    /// connection). Smaller reads mean more system calls for large messages; larger ones cost
    /// memory once per worker thread, not per connection. It does not limit message size (see
    /// [`max_message_size`](Self::max_message_size)): a larger message takes several reads.
    pub fn read_buffer_size(mut self, bytes: usize) -> Self {
        self.options.read_buffer_size = bytes;
        self
    }

    /// Size of the per-connection write buffer in which frames are coalesced before one write
    /// (GoFr's `WithWriteBufferSize`), 256 B to 16 MiB. Default 16 KiB.
    ///
    /// Frames accumulate in the connection's write buffer until a flush or until it holds
    /// this many bytes, which are then written before the next frame is taken. The buffer
    /// exists only while it holds frames: an idle connection has none. Payloads of 8 KiB and
    /// more are queued by reference and not copied into it.
    pub fn write_buffer_size(mut self, bytes: usize) -> Self {
        self.options.write_buffer_size = bytes;
        self
    }

    /// Subprotocols the server speaks, in its order of preference (GoFr's `WithSubprotocols`).
    /// The first one the client also offers is selected and echoed in
    /// `Sec-WebSocket-Protocol`; with no match the upgrade goes on without the header.
    pub fn subprotocols<I, S>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.options.subprotocols = protocols.into_iter().map(Into::into).collect();
        self
    }

    /// Writes the HTTP response of a failed upgrade (GoFr's `WithError`). It gets the status
    /// and the reason. Default: the status with the reason as plain text.
    pub fn error_handler<F>(mut self, handler: F) -> Self
    where
        F: Fn(&UpgradeRejection) -> Response + Send + Sync + 'static,
    {
        self.options.error_handler = Some(Arc::new(handler));
        self
    }

    /// Decides whether a request's `Origin` is allowed (GoFr's `WithCheckOrigin`); a refused
    /// request gets 403. Default: requests without `Origin` and same-origin requests (the host
    /// of `Origin` equals `Host`, ignoring ASCII case), as gorilla does.
    pub fn check_origin<F>(mut self, check: F) -> Self
    where
        F: Fn(&Parts) -> bool + Send + Sync + 'static,
    {
        self.options.check_origin = Some(Arc::new(check));
        self
    }

    /// Enables permessage-deflate with [`Compression::default`] (GoFr's `WithCompression`).
    /// It is negotiated only with clients that offer it.
    pub fn compression(self) -> Self {
        self.compression_with(Compression::default())
    }

    /// Enables permessage-deflate with the given level and threshold.
    pub fn compression_with(mut self, compression: Compression) -> Self {
        self.options.compression = Some(compression);
        self
    }

    /// Largest message accepted from a peer; a larger one closes the connection with 1009.
    /// Default 16 MiB.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.options.max_message_size = bytes;
        self
    }

    /// Largest single frame accepted from a peer; a larger one closes with 1009.
    /// Default 16 MiB.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.options.max_frame_size = bytes;
        self
    }

    /// The server pings a connection that has been quiet this long, and closes it if no pong
    /// comes within [`pong_timeout`](Self::pong_timeout). `None` turns server pings off (pings
    /// from the peer are still answered). Default 30 s.
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.options.ping_interval = interval;
        self
    }

    /// How long to wait for the pong to a server ping before closing (1001). Default 10 s.
    pub fn pong_timeout(mut self, timeout: Duration) -> Self {
        self.options.pong_timeout = timeout;
        self
    }

    /// How long the peer has to answer our close frame before the connection is dropped
    /// (RFC 6455 lets the server close the TCP connection then). Default 1 s: the close frame
    /// is out already; waiting longer only holds a socket for a peer that does not answer.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.options.close_timeout = timeout;
        self
    }

    /// How long a message may stay unfinished without any new byte of it before the
    /// connection is closed with 1008 (policy violation). Pings do not count as progress.
    /// Default 30 s: a peer cannot hold memory with a message it never finishes.
    pub fn message_timeout(mut self, timeout: Duration) -> Self {
        self.options.message_timeout = timeout;
        self
    }

    /// The bound on bytes held in unfinished messages across every connection that shares
    /// this budget. A frame that would pass it closes its connection with 1013 (try again
    /// later). Default: one budget of [`DEFAULT_INBOUND_BUDGET`] shared by the whole process.
    /// Clone one [`InboundBudget`] into several upgraders to share it between them.
    ///
    /// ```
    /// use ws_upgrader::{InboundBudget, WsUpgrader};
    ///
    /// let budget = InboundBudget::new(64 << 20);
    /// let upgrader = WsUpgrader::builder().inbound_budget(budget.clone()).build();
    /// # let _ = upgrader;
    /// ```
    pub fn inbound_budget(mut self, budget: InboundBudget) -> Self {
        self.options.inbound_budget = budget;
        self
    }

    /// Checks every value and gives the upgrader.
    pub fn build(self) -> Result<WsUpgrader, ConfigError> {
        let o = &self.options;
        ConfigError::check_size(
            "read_buffer_size",
            o.read_buffer_size,
            256,
            MAX_READ_BUFFER_SIZE,
        )?;
        ConfigError::check_size("write_buffer_size", o.write_buffer_size, 256, 16 << 20)?;
        ConfigError::check_size("max_message_size", o.max_message_size, 1, 1 << 40)?;
        ConfigError::check_size("max_frame_size", o.max_frame_size, 1, 1 << 40)?;
        if o.max_frame_size > o.max_message_size {
            return Err(ConfigError::FrameOverMessage {
                frame: o.max_frame_size,
                message: o.max_message_size,
            });
        }
        for (option, value) in [
            ("handshake_timeout", o.handshake_timeout),
            ("ping_interval", o.ping_interval),
            ("pong_timeout", Some(o.pong_timeout)),
            ("close_timeout", Some(o.close_timeout)),
            ("message_timeout", Some(o.message_timeout)),
        ] {
            if let Some(value) = value.filter(|value| value.is_zero()) {
                return Err(ConfigError::ZeroDuration { option, value });
            }
        }
        if let Some(bad) = o.subprotocols.iter().find(|p| !is_token(p)) {
            return Err(ConfigError::Subprotocol(bad.clone()));
        }
        if let Some(c) = o.compression {
            if c.level > 9 {
                return Err(ConfigError::CompressionLevel(c.level));
            }
            if !(9..=15).contains(&c.max_window_bits) {
                return Err(ConfigError::CompressionWindow(c.max_window_bits));
            }
        }
        Ok(WsUpgrader {
            options: Arc::new(self.options),
        })
    }
}

impl ConfigError {
    /// `Ok` when `value` is within `min..=max`, else [`ConfigError::Size`] naming `option`:
    /// the check every size and count option goes through, here and in the crates that
    /// build on these options (ws-context's `Endpoint`).
    ///
    /// ```
    /// use ws_upgrader::ConfigError;
    ///
    /// assert!(ConfigError::check_size("queue_capacity", 8, 1, 1024).is_ok());
    /// assert_eq!(
    ///     ConfigError::check_size("queue_capacity", 0, 1, 1024).unwrap_err().to_string(),
    ///     "queue_capacity must be between 1 and 1024, got 0"
    /// );
    /// ```
    pub fn check_size(
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
}

/// An HTTP token (RFC 7230 §3.2.6): what a subprotocol name must be.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_typed_errors() {
        let zero_buf = WsUpgrader::builder().read_buffer_size(0).build();
        assert!(matches!(
            zero_buf,
            Err(ConfigError::Size {
                option: "read_buffer_size",
                ..
            })
        ));
        let zero_timeout = WsUpgrader::builder()
            .handshake_timeout(Duration::ZERO)
            .build();
        assert_eq!(
            zero_timeout.unwrap_err(),
            ConfigError::ZeroDuration {
                option: "handshake_timeout",
                value: Duration::ZERO,
            }
        );
        let empty = WsUpgrader::builder().subprotocols([""]).build();
        assert_eq!(empty.unwrap_err(), ConfigError::Subprotocol(String::new()));
        let spaced = WsUpgrader::builder().subprotocols(["a b"]).build();
        assert!(spaced.is_err());
    }

    #[test]
    fn read_buffer_over_a_mebibyte_is_refused() {
        let big = WsUpgrader::builder().read_buffer_size(2 << 20).build();
        assert!(matches!(
            big,
            Err(ConfigError::Size {
                option: "read_buffer_size",
                max: MAX_READ_BUFFER_SIZE,
                ..
            })
        ));
        assert!(
            WsUpgrader::builder()
                .read_buffer_size(1 << 20)
                .build()
                .is_ok()
        );
    }

    #[test]
    fn a_compression_window_zlib_cannot_use_is_refused() {
        for bits in [8, 16] {
            let options = Compression {
                max_window_bits: bits,
                ..Compression::default()
            };
            let built = WsUpgrader::builder().compression_with(options).build();
            assert_eq!(built.unwrap_err(), ConfigError::CompressionWindow(bits));
        }
    }

    #[test]
    fn last_option_wins() {
        let u = WsUpgrader::builder()
            .read_buffer_size(1024)
            .read_buffer_size(4096)
            .subprotocols(["a"])
            .subprotocols(["b", "c"])
            .build()
            .unwrap();
        assert_eq!(u.options.read_buffer_size, 4096);
        assert_eq!(u.options.subprotocols, ["b", "c"]);
    }
}
