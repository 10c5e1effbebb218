//! Upgrade an HTTP request on axum to a WebSocket, with GoFr's upgrader options and the limits
//! GoFr lacks.
//!
//! This crate owns the HTTP side of the handshake: it validates the request (RFC 6455 §4.2.1),
//! checks the origin, selects a subprotocol, negotiates permessage-deflate (RFC 7692) and writes
//! the `101` response. The upgraded connection is driven by our protocol core (`ws-protocol`,
//! sans-I/O) over tokio I/O and comes back as a [`WebSocket`] of [`Message`]s.
//!
//! # Example
//!
//! ```no_run
//! use axum::{Router, extract::Request, response::Response, routing::get};
//! use ws_upgrader::WsUpgrader;
//!
//! async fn echo(upgrader: WsUpgrader, request: Request) -> Response {
//!     let (mut parts, _body) = request.into_parts();
//!     match upgrader.upgrade(&mut parts) {
//!         Ok(pending) => pending.on_upgrade(|mut socket| async move {
//!             while let Some(Ok(message)) = socket.recv().await {
//!                 if message.is_data() && socket.send(message).await.is_err() {
//!                     break;
//!                 }
//!             }
//!         }),
//!         Err(refusal) => refusal,
//!     }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let upgrader = WsUpgrader::builder()
//!     .handshake_timeout(std::time::Duration::from_secs(5))
//!     .compression()
//!     .build()
//!     .expect("valid options");
//! let timeout = upgrader.handshake_timeout();
//! let app = Router::new().route("/ws", get(move |req| echo(upgrader.clone(), req)));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! ws_upgrader::serve(listener, app).handshake_timeout(timeout).await
//! # }
//! ```
//!
//! # Options
//!
//! [`WsUpgrader::builder`] takes GoFr's options (`handshake_timeout`, `read_buffer_size`,
//! `write_buffer_size`, `subprotocols`, `error_handler`, `check_origin`, `compression`) and
//! adds message and frame limits and liveness pings. Values that cannot work are refused by
//! [`WsUpgraderBuilder::build`] with a [`ConfigError`], not at the first connection. Each
//! builder method says precisely what its option does on the wire. Memory: an idle connection
//! holds no read buffer (reads go into a buffer of the worker thread) and, unless context
//! takeover is chosen, no compression state; the bytes of unfinished messages across the
//! process are bounded by an [`InboundBudget`].
//!
//! # Serving
//!
//! The HTTP request is read before any handler runs, so the handshake timeout needs the
//! server's help: [`serve`] is `axum::serve` for a `Router` plus limits on time and size, on
//! by default: each request head within 10 s, each body within 30 s, 5 s of keep-alive idle,
//! heads up to 64 KiB and 100 headers (`431` beyond), a graceful shutdown bounded in time,
//! and an accept loop that survives running out of file descriptors (plus
//! `ConnectInfo<SocketAddr>`). With plain `axum::serve` every other option works, but a
//! client may take as long as it likes to send its request.
//!
//! # Compression
//!
//! permessage-deflate is negotiated only with clients that offer it. The client's
//! `client_max_window_bits` (bare, as browsers send it, or with a value),
//! `server_max_window_bits`, `server_no_context_takeover` and `client_no_context_takeover`
//! are honoured; [`Compression`] sets the zlib level and the size under which a message is
//! sent uncompressed (RFC 7692 §6.1 allows either per message). A message for many
//! connections is compressed once per set of parameters when sent as a [`PreparedMessage`]
//! ([`WebSocket::feed_prepared`]).
//!
//! # Refusals
//!
//! A request that cannot be upgraded gets a 4xx response that says what to fix: 405 for
//! methods other than GET, 426 for a plain HTTP request, 400 for a bad key, 403 for a refused
//! origin. An [`error_handler`](WsUpgraderBuilder::error_handler) can write its own.
#![deny(missing_docs)]

mod direct;
#[doc(hidden)]
pub mod fuzzing;
mod handshake;
mod options;
mod serve;
mod socket;

pub use crate::direct::{DirectSend, DirectWriter};
pub use crate::handshake::{PendingUpgrade, RejectionKind, UpgradeRejection};
pub use crate::options::{
    Compression, ConfigError, DEFAULT_CLOSE_TIMEOUT, DEFAULT_INBOUND_BUDGET,
    DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MESSAGE_TIMEOUT,
    DEFAULT_PING_INTERVAL, DEFAULT_PONG_TIMEOUT, DEFAULT_READ_BUFFER_SIZE,
    DEFAULT_WRITE_BUFFER_SIZE, MAX_READ_BUFFER_SIZE, WsUpgrader, WsUpgraderBuilder,
    process_inbound_budget,
};
pub use crate::serve::{
    BodyTimeout, DEFAULT_BODY_READ_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADERS, DEFAULT_SHUTDOWN_TIMEOUT, MIN_MAX_HEADER_BYTES,
    Serve, serve,
};
pub use crate::socket::{WebSocket, WsError};
pub use ws_message::{CloseFrame, Message, close_code};
pub use ws_protocol::{InboundBudget, PreparedMessage};

/// The README's examples, compiled (and run unless marked `no_run`) by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
