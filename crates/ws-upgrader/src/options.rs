use std::{fmt, sync::Arc, time::Duration};

use axum::response::Response;
use http::request::Parts;

use crate::handshake::{UpgradeRejection, default_error_response};

/// Default cap on one message: 16 MiB. GoFr has none; a peer could make it buffer gigabytes.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;
/// Default cap on one frame: 16 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 << 20;
/// Default write buffer: 16 KiB, enough to coalesce many small frames into one write.
pub const DEFAULT_WRITE_BUFFER_SIZE: usize = 16 << 10;
/// Default read buffer: 64 KiB, the engine's receive window (reads are not capped below it).
pub const DEFAULT_READ_BUFFER_SIZE: usize = 64 << 10;
/// Default interval between the server's pings on a quiet connection.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);
/// Default wait for the pong before the peer is considered gone.
pub const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(10);

type OriginCheck = Arc<dyn Fn(&Parts) -> bool + Send + Sync>;
type ErrorHandler = Arc<dyn Fn(&UpgradeRejection) -> Response + Send + Sync>;

/// An option value that cannot work, found when the upgrader is built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A size option is zero or otherwise out of range.
    #[error("{option} must be between {min} and {max} bytes, got {value}")]
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
    #[error("{option} must be longer than zero")]
    ZeroDuration {
        /// The option's builder method.
        option: &'static str,
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
}

/// permessage-deflate settings (RFC 7692), negotiated only with clients that offer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    /// zlib level, 0-9. Default 1: GoFr's (gorilla's) fast setting.
    pub level: u32,
    /// Messages shorter than this are sent uncompressed. Default 32 bytes.
    pub threshold: usize,
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            level: 1,
            threshold: 32,
        }
    }
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
/// Defaults: a 10 s handshake timeout ([`DEFAULT_HANDSHAKE_TIMEOUT`](crate::DEFAULT_HANDSHAKE_TIMEOUT)), 64 KiB read and 16 KiB write buffers, no subprotocols,
/// plain-text error responses, same-origin check, no compression, 16 MiB message and frame
/// limits, a ping every 30 s with a 10 s pong deadline.
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
    /// 64 KiB. Default 64 KiB.
    ///
    /// What it does, precisely: the engine (sockudo-ws 3.1.0) reads into its own receive
    /// window, a fixed 64 KiB that no option of the engine changes; a smaller value here caps
    /// every read from the socket at this many bytes, so one busy connection takes at most
    /// this much per wake-up. It does not shrink the engine's window, so unlike gorilla's
    /// option it does not lower the memory of a connection. It does not limit message size
    /// either (see [`max_message_size`](Self::max_message_size)): a larger message takes
    /// several reads.
    pub fn read_buffer_size(mut self, bytes: usize) -> Self {
        self.options.read_buffer_size = bytes;
        self
    }

    /// Size of the per-connection write buffer in which frames are coalesced before one write
    /// (GoFr's `WithWriteBufferSize`), 256 B to 16 MiB. Default 16 KiB.
    ///
    /// Small frames accumulate in the engine's cork buffer until a flush or until it holds
    /// this many bytes, which are then written before the next frame is taken (with
    /// compression on, at most 64 KiB: the engine's own mark). The buffer starts at 512 bytes
    /// and grows as frames are queued, so an idle connection does not hold this much memory.
    /// Payloads of 8 KiB and more are queued by reference and not copied into it.
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
    /// from the peer are still answered). Default 30 s. Whole seconds; shorter values round up.
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.options.ping_interval = interval;
        self
    }

    /// How long to wait for the pong to a server ping before closing (1001). Default 10 s.
    pub fn pong_timeout(mut self, timeout: Duration) -> Self {
        self.options.pong_timeout = timeout;
        self
    }

    /// Checks every value and gives the upgrader.
    pub fn build(self) -> Result<WsUpgrader, ConfigError> {
        let o = &self.options;
        // Above the engine's receive window a read cannot be larger, so the option would do
        // nothing: refused rather than silently ignored.
        check_size(
            "read_buffer_size",
            o.read_buffer_size,
            256,
            sockudo_ws::RECV_BUFFER_SIZE,
        )?;
        check_size("write_buffer_size", o.write_buffer_size, 256, 16 << 20)?;
        check_size("max_message_size", o.max_message_size, 1, 1 << 40)?;
        check_size("max_frame_size", o.max_frame_size, 1, 1 << 40)?;
        if o.max_frame_size > o.max_message_size {
            return Err(ConfigError::FrameOverMessage {
                frame: o.max_frame_size,
                message: o.max_message_size,
            });
        }
        if o.handshake_timeout == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroDuration {
                option: "handshake_timeout",
            });
        }
        if o.ping_interval == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroDuration {
                option: "ping_interval",
            });
        }
        if o.pong_timeout.is_zero() {
            return Err(ConfigError::ZeroDuration {
                option: "pong_timeout",
            });
        }
        if let Some(bad) = o.subprotocols.iter().find(|p| !is_token(p)) {
            return Err(ConfigError::Subprotocol(bad.clone()));
        }
        if let Some(c) = o.compression
            && c.level > 9
        {
            return Err(ConfigError::CompressionLevel(c.level));
        }
        Ok(WsUpgrader {
            options: Arc::new(self.options),
        })
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
                option: "handshake_timeout"
            }
        );
        let empty = WsUpgrader::builder().subprotocols([""]).build();
        assert_eq!(empty.unwrap_err(), ConfigError::Subprotocol(String::new()));
        let spaced = WsUpgrader::builder().subprotocols(["a b"]).build();
        assert!(spaced.is_err());
    }

    #[test]
    fn read_buffer_above_the_engine_window_is_refused() {
        let big = WsUpgrader::builder().read_buffer_size(1 << 20).build();
        assert!(matches!(
            big,
            Err(ConfigError::Size {
                option: "read_buffer_size",
                max: 65536,
                ..
            })
        ));
        assert!(
            WsUpgrader::builder()
                .read_buffer_size(65536)
                .build()
                .is_ok()
        );
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
