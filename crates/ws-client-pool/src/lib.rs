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
//!     match pool.write_message_to_service("notification-service", body) {
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
//! [`WsClientPool::add_ws_service`] takes the seed's arguments; [`WsClientPool::add_service`]
//! takes [`ServiceOptions`] (queue capacity, ping interval, timeouts, [`Reconnect`] policy).
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
//! dropped silently, and the queue holds at most its capacity (plus the one message in flight
//! that a failed write puts back), so memory stays within capacity × message size.
//!
//! The task sends the queue in order. A message the socket refused, or whose flush failed (so
//! it cannot have reached the service whole), goes back to the head of the queue and is sent
//! first after the reconnect. So:
//!
//! - **Graceful drops** (the service sends a close frame, or the pool shuts down): nothing is
//!   lost or duplicated. After a close frame the service reads until our reply, so what we
//!   wrote before is delivered; what was not written stays queued for the next connection.
//! - **Hard drops** (a killed process, a reset, a silent peer): messages already handed to the
//!   kernel may die in its buffers. They are never sent twice (at most once), and the pool
//!   reports how many *may* have been lost: each ping carries the number of messages written
//!   on the connection so far, and the service's pong confirms it has read them. On a hard
//!   drop, the messages written after the last confirmed ping are added to
//!   [`ServiceStatus::possibly_lost`] and logged. An application that needs every message
//!   must acknowledge at its level and re-send what stays unacknowledged.
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
    DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_MESSAGE_SIZE, Reconnect, ServiceOptions,
};
pub use crate::pool::{ServiceMessages, WsClientPool};
pub use crate::status::{ServiceState, ServiceStatus};
pub use ws_message::Message;

/// The README's examples, compiled (and run unless marked `no_run`) by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
