//! Named outbound WebSocket connections for service-to-service messages: GoFr's
//! `AddWSService` and `WriteMessageToService`, with what GoFr leaves out: reconnection after
//! any drop, a bounded send queue, reading what the service sends, liveness pings, state and
//! metrics, and a clean shutdown.
//!
//! The public API speaks [`ws_message::Message`]; no client-library type appears in it.
//!
//! # Example
//!
//! A plain axum route that forwards to a service:
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{Router, extract::State, routing::post};
//! use ws_client_pool::WsClientPool;
//!
//! async fn notify(State(pool): State<WsClientPool>, body: String) -> &'static str {
//!     match pool.write_message_to_service("notification-service", &body) {
//!         Ok(()) => "queued",
//!         Err(_) => "refused",
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     let pool = WsClientPool::new();
//!     pool.add_ws_service(
//!         "notification-service",
//!         "ws://127.0.0.1:8081/ws",
//!         http::HeaderMap::new(),
//!         true,                   // keep dialling if the service is not up yet
//!         Duration::from_secs(5), // between dials
//!     )
//!     .await?;
//!     let app = Router::new().route("/notify", post(notify)).with_state(pool.clone());
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//!     axum::serve(listener, app).await?;
//!     pool.shutdown().await; // close 1001 to every service
//!     Ok(())
//! }
//! ```
//!
//! # Services and connections
//!
//! [`WsClientPool::add_ws_service`] takes the seed's arguments;
//! [`WsClientPool::add_ws_service_with`] takes [`ServiceOptions`] (queue capacity, ping
//! interval, timeouts, [`Reconnect`] policy), checked by [`ServiceOptionsBuilder::build`].
//! URLs are `ws://` or `wss://`; TLS uses rustls with Mozilla's root certificates
//! (webpki-roots), so trust does not depend on the machine's certificate store. A bad URL or
//! a header the handshake sets itself (`Upgrade`, `Connection`, `Sec-WebSocket-Key`,
//! `Sec-WebSocket-Version`, `Sec-WebSocket-Extensions`) is an error at once.
//!
//! If the first dial fails, with reconnection on `add_ws_service` still returns `Ok` and
//! dials again every retry interval; with it off, the dial error is returned.
//!
//! # Reconnection and liveness
//!
//! Each service's task pings it every `ping_interval`; a ping still unanswered at the next one
//! ends the connection, as does a close frame, a reset or an end of stream. With reconnection
//! on, the task dials again after each delay of the policy: [`Reconnect::Fixed`] (the seed's
//! `retryInterval`, the default) or [`Reconnect::Exponential`] (doubling, capped, with
//! jitter). The policy restarts after each successful connection.
//!
//! # Sending, and what is guaranteed
//!
//! [`WsClientPool::write_message_to_service`] encodes the value with [`ws_message::encode`]
//! (the same rules as `write_message_to_socket`) and puts it in the service's bounded queue;
//! it never waits for the network. A full queue is [`PoolError::QueueFull`]: messages are never
//! dropped silently. The queue holds at most its capacity, plus the messages a dropped
//! connection hands back (at most 64, see below), so memory stays within about capacity ×
//! message size.
//!
//! The task sends the queue in order. A message handed to the WebSocket engine is not yet on
//! its way: it may sit whole in the engine's write buffer or in TLS's, or be partly written,
//! when the connection dies. The pool therefore measures what the kernel accepted (it counts
//! the bytes the TCP socket takes and where each message starts in the stream): a message
//! *may have left* once the kernel took at least one of its bytes. What that means in each
//! case:
//!
//! | how the connection ends | messages that never left | messages that may have left |
//! |---|---|---|
//! | the service closes it (close frame, handshake completed) | back to the head of the queue, in order; sent first on the next connection | delivered: the service reads until our close reply |
//! | [`shutdown`](WsClientPool::shutdown), reply within the close timeout | none: the whole queue is written before close 1001 | delivered |
//! | shutdown, no reply in time or the handshake fails | stay in the queue, unsent (logged, [`ServiceStatus::queued`]) | not confirmed by a ping: [`possibly_lost`](ServiceStatus::possibly_lost) |
//! | reset, killed service, dead network, unanswered ping, a message over the limits (close 1009) | back to the head of the queue, in order; sent on the next connection (with reconnection off they stay queued, unsent) | confirmed by a ping: delivered; the others: [`possibly_lost`](ServiceStatus::possibly_lost), never sent again |
//! | our process exits or is killed | lost with the process (nothing is persisted) | whatever the kernel still sends; nothing is counted |
//!
//! So delivery is **in order and at most once**, and **no message that never left a dropped
//! connection is lost**: it is sent on the next one. Only messages that may have reached the
//! old peer can be lost, and each of those is either confirmed or counted:
//! each ping carries the number of messages written on the connection so far, and the
//! service's pong confirms it has read them; on a hard drop, the messages that may have left
//! after the last confirmed ping are added to [`ServiceStatus::possibly_lost`] (and the
//! `ws_client_messages_possibly_lost_total` metric) and logged. Some of them may have been
//! read: the count is an upper bound. Over plain `ws://` the split between "never left" and
//! "may have left" is exact; over `wss://` the kernel counts ciphertext, so a message within
//! the TLS framing of what was in flight (about 22 bytes per 16 KiB record) may be counted as
//! possibly lost though it never left; it is never sent twice. After a loss, later messages
//! still arrive in order, after a gap. An application that needs every message must
//! acknowledge at its level and re-send what stays unacknowledged; call
//! [`shutdown`](WsClientPool::shutdown) before exiting so that nothing is left in the queue.
//!
//! # Limits
//!
//! A service may send messages and frames up to [`ServiceOptionsBuilder::max_message_size`] and
//! [`ServiceOptionsBuilder::max_frame_size`] (16 MiB each by default, [`DEFAULT_MAX_MESSAGE_SIZE`],
//! like the server; tungstenite's own default is 64 MiB). A larger one is refused as soon as
//! its header says so: the pool sends close 1009 (message too big), drops the connection
//! (a hard drop, above) and reconnects per the policy.
//!
//! # Reading
//!
//! [`WsClientPool::messages`] gives a [`ServiceMessages`] stream of the text and binary
//! messages the service sends, across reconnects. It is bounded: when the reader falls behind,
//! the task stops reading the socket (the service feels TCP backpressure) rather than buffer
//! without limit.
//!
//! # State, health and metrics
//!
//! [`WsClientPool::status`] gives a [`ServiceStatus`]: [`ServiceState`] (`Connecting`,
//! `Connected`, `Reconnecting`, `Closed`), the last error, and counters. The same facts are
//! recorded through the [`metrics`](https://docs.rs/metrics) facade, labelled `service`:
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `ws_client_state` | gauge | 0 connecting, 1 connected, 2 reconnecting, 3 closed |
//! | `ws_client_queue_depth` | gauge | messages waiting to be sent |
//! | `ws_client_reconnects_total` | counter | successful connections after the first |
//! | `ws_client_messages_sent_total` | counter | data messages written |
//! | `ws_client_messages_received_total` | counter | data messages received |
//! | `ws_client_messages_discarded_total` | counter | received with nobody reading |
//! | `ws_client_messages_possibly_lost_total` | counter | unconfirmed on a hard drop |
//!
//! Nothing is exported unless the application installs a recorder.
//!
//! # Shutdown
//!
//! [`WsClientPool::shutdown`] sends each service what is still queued, then close 1001, waits
//! for the reply within the close timeout, and stops every reconnect loop; it returns when
//! every task has ended. Dropping the last clone of the pool stops the tasks too.
#![deny(missing_docs)]

mod connection;
mod error;
mod options;
mod pool;
mod queue;
mod status;
mod wire;

pub use crate::error::PoolError;
pub use crate::options::{
    ConfigError, DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_MESSAGE_SIZE, Reconnect, ServiceOptions,
    ServiceOptionsBuilder,
};
pub use crate::pool::{ServiceMessages, WsClientPool};
pub use crate::status::{ServiceState, ServiceStatus};
pub use ws_message::Message;

/// The README's examples, compiled (and run unless marked `no_run`) by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
