//! GoFr's `App` for Rust services: HTTP routes with GoFr's JSON envelope, WebSocket routes,
//! configuration from the environment, structured logs, health endpoints and a graceful
//! shutdown, on axum and tokio.
//!
//! This crate is the umbrella: the WebSocket pieces live in their own crates, re-exported
//! here so one dependency is enough.
//!
//! | module | crate | what |
//! |---|---|---|
//! | [`message`] | `ws-message` | messages, encode and decode rules |
//! | [`upgrader`] | `ws-upgrader` | upgrader options, handshake, the socket |
//! | [`context`] | `ws-context` | handler `Context`, socket writer, connection hub |
//! | [`client_pool`] | `ws-client-pool` | outbound WebSocket services |
//!
//! # Example
//!
//! GoFr's first WebSocket example:
//!
//! ```no_run
//! use gofr_app::{App, Context, Error};
//!
//! async fn ws_handler(ctx: Context) -> Result<String, Error> {
//!     let message: String = ctx.bind()?;
//!     tracing::info!("Received message: {message}");
//!     Ok(message)
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), gofr_app::AppError> {
//!     let mut app = App::new();
//!     app.websocket("/ws", ws_handler);
//!     app.run().await
//! }
//! ```
//!
//! # HTTP routes
//!
//! `app.get/post/put/patch/delete(path, handler)` take `async fn(HttpContext) -> Result<T, E>`.
//! `Ok(T)` is answered `{"data": T}` (201 for POST), an error `{"error":{"message": ...}}` with
//! the status of the [`Error`].
//!
//! # Configuration
//!
//! [`Config`] lists the variables (`APP_NAME`, `HTTP_PORT`, `LOG_LEVEL`, ...). An invalid value
//! stops [`App::run`] before anything is bound, with an error naming the variable and value.
//!
//! # Metrics
//!
//! `/metrics` is served in Prometheus text format on `METRICS_PORT` (default 2121): the
//! WebSocket counters of `ws-context` (see [`context::describe_metrics`]: connections,
//! messages and bytes per route, upgrade failures, handler errors, close codes, queue-full
//! events, slow-peer disconnects) and anything else recorded through the `metrics` facade,
//! such as the client pool's `ws_client_*` metrics and, in a cluster, the `backplane_*` metrics
//! of `ws-backplane-redis`.
//!
//! # Cluster (feature `redis`)
//!
//! With the `redis` feature and `REDIS_URL` set (or `App::redis_url`), the app joins the
//! other instances on that Redis when it starts: rooms, broadcasts, send-to-id and
//! close-by-id reach connections on every instance, through `ws-backplane-redis`. Delivery
//! across instances is at most once, without duplicates, in order per sender and room; local
//! members never wait on Redis. While Redis is away, `/.well-known/health` answers
//! `"status": "DEGRADED"` with a `cluster` section (status and live nodes), cross-instance
//! deliveries are dropped and counted, and everything resumes when Redis is back. Without the
//! feature, nothing Redis-related is compiled and `REDIS_URL` is a configuration error.
//! Several node URLs separated by commas name a Redis Cluster: rooms spread over its shards,
//! and while one shard does not answer, health says `DEGRADED` until its replica takes over.
//!
//! # Inter-service WebSockets
//!
//! [`App::add_ws_service`] registers a named outbound connection (GoFr's `AddWSService`);
//! handlers write to it with [`ServiceExt::write_message_to_service`], on both [`Context`] and
//! [`HttpContext`]. Connections come back after drops, messages written while a service is
//! down are queued (bounded), and `/.well-known/health` lists each service's state and last
//! error: a service that is not connected makes the status `DEGRADED`, not `DOWN`.
//!
//! # Shutdown
//!
//! On SIGINT, SIGTERM or [`ShutdownHandle::shutdown`] the app stops accepting, sends close
//! 1001 to every WebSocket, lets running handlers finish within `SHUTDOWN_GRACE_PERIOD`,
//! closes every outbound service with 1001 (stopping its reconnect loop), and returns from
//! `run`.
#![deny(missing_docs)]

mod admission;
mod app;
mod config;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod health;
mod http;
mod logging;
mod metrics;
mod services;

pub use crate::app::{App, ShutdownHandle};
pub use crate::config::{Config, ConfigError, DEFAULT_WS_MAX_CONNECTIONS, LogLevel, Secret};
pub use crate::error::{AppError, Error};
pub use crate::http::{HttpContext, HttpHandler};
pub use crate::services::ServiceExt;
pub use ws_client_pool::{
    PoolError, Reconnect, ServiceMessages, ServiceOptions, ServiceState, ServiceStatus,
    WsClientPool,
};
pub use ws_context::{
    BindError, CloseFrame, Connection, ConnectionHub, ConnectionId, ConnectionInfo, Context,
    Endpoint, Message, PresenceEvent, PresenceEventKind, PresenceEvents, PresenceMember,
    RecoveryError, RoomPosition, SocketWriter, WriteError,
};
pub use ws_upgrader::WsUpgrader;

/// Messages and the rules that turn values into frames: the `ws-message` crate.
#[doc(inline)]
pub use ws_message as message;

/// The WebSocket protocol itself, sans I/O: the `ws-protocol` crate.
#[doc(inline)]
pub use ws_protocol as protocol;

/// Upgrader options, the handshake and the socket: the `ws-upgrader` crate.
#[doc(inline)]
pub use ws_upgrader as upgrader;

/// Handler context, socket writer and connection hub: the `ws-context` crate.
#[doc(inline)]
pub use ws_context as context;

/// Outbound WebSocket services: the `ws-client-pool` crate.
#[doc(inline)]
pub use ws_client_pool as client_pool;

/// Rooms across instances through Redis: the `ws-backplane-redis` crate (feature `redis`).
#[cfg(feature = "redis")]
#[doc(inline)]
pub use ws_backplane_redis as backplane_redis;

/// The user guide (`docs/guide.md`), compiled here so that every example in it is tested.
#[doc = include_str!("../../../docs/guide.md")]
pub mod guide {}

/// The README's examples, compiled (and run unless marked `no_run`) by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The workspace README's example, compiled by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct WorkspaceReadmeDoctests;
