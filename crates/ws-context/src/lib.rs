//! GoFr-style WebSocket handlers on axum: a [`Context`] per message, `bind`, one shared
//! [`SocketWriter`] per connection, and the [`ConnectionHub`] of every open connection.
//!
//! A handler is an async function of a [`Context`] that returns `Result<T, E>`. The framework
//! reads a message, calls the handler once for it, and writes `T` back (strings as text, bytes
//! as binary, other `Serialize` values as JSON, `()` as nothing). An `E` is logged and answered
//! with `{"error":{"message":"..."}}`; the connection stays open. A panic closes only its own
//! connection, with 1011.
//!
//! # Example
//!
//! ```no_run
//! use axum::Router;
//! use ws_context::{Context, Endpoint};
//!
//! #[derive(serde::Deserialize, serde::Serialize)]
//! struct Chat { from: String, text: String }
//!
//! async fn chat(ctx: Context) -> Result<Chat, ws_context::BindError> {
//!     let mut chat: Chat = ctx.bind()?;
//!     chat.text = chat.text.to_uppercase();
//!     Ok(chat)
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let app: Router = Router::new().route("/ws/{room}", Endpoint::new(chat).into_route()?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Writing from other tasks
//!
//! [`Context::socket`] gives a cloneable [`SocketWriter`]. Every writer of a connection feeds
//! the same bounded queue, which the connection's task drains: frames never interleave, each
//! caller's messages keep their order, and whatever is ready goes out in one system call.
//!
//! # The request behind the socket
//!
//! Path parameters, query, headers and the extensions that middleware set (authentication,
//! for example) stay available on the [`Context`] for the whole connection. Tower layers on the
//! route run before the upgrade, so a layer that refuses a request does so before any socket
//! exists.
//!
//! # Connections and rooms
//!
//! Each connection gets a server-generated [`ConnectionId`]. The [`ConnectionHub`] lists them
//! (id, route, peer address, connected-since, subprotocol, rooms), writes to one, to a named
//! room or to all, and closes them with a code and reason. A connection leaves every room
//! when it closes. Deliveries also go through a [`Backplane`] ([`InProcess`] by default), the
//! seam for a cross-instance backend. A message for a room or for all is a
//! [`PreparedMessage`] queued to every member: with permessage-deflate it is compressed once
//! per set of parameters, not once per member.
//!
//! # Lifecycle hooks
//!
//! [`Endpoint::on_connect`] runs when a connection opens and may refuse it with a close code;
//! [`Endpoint::on_close`] runs when it has ended, with the close code and reason. Both get a
//! [`Connection`].
//!
//! # Backpressure and limits
//!
//! Each connection's outbound queue is bounded in messages ([`Endpoint::queue_capacity`]) and
//! in payload bytes ([`Endpoint::queue_bytes`]). A writer that finds it full waits up to [`Endpoint::send_timeout`], then gets [`WriteError::Full`]; a
//! peer that stays full that long, or whose socket takes nothing for that long, is closed
//! with [`SLOW_PEER_CLOSE_CODE`] (1008) and its queue dropped. Broadcasts wait for full peers
//! together, never one after another. Server memory per connection is therefore bounded by
//! the queue's byte bound (4 MiB by default; a larger message goes only into an empty queue),
//! plus the engine's buffers.
//! [`Endpoint::max_connections`] refuses upgrades over a limit with 503 and a reason.
//!
//! # Liveness
//!
//! The upgrader's ping interval and pong timeout (30 s and 10 s by default, see
//! [`WsUpgrader`]) close a peer that stops answering pings with 1001.
//!
//! # Metrics and tracing
//!
//! Connections record counters and gauges through the `metrics` facade (no exporter here; see
//! [`describe_metrics`] for the list). An endpoint looks its handles up at each route's first
//! connection and shares them with the next ones, so install the recorder before serving.
//! Each connection runs in an info-level `ws` span
//! (`conn_id`, `route`, `peer`) and each message's handler call in a debug-level `message`
//! span (`kind`, `bytes`).
#![deny(missing_docs)]

mod backplane;
mod connection;
mod context;
mod endpoint;
mod handler;
mod hub;
mod lifecycle;
mod metrics;
mod presence;
mod queue;
mod writer;

pub use crate::backplane::{
    Appended, Backplane, BackplaneError, BackplaneFuture, BackplaneStatus, Envelope, HistoryEntry,
    HistoryFuture, InProcess, Inbound, MAX_STALLED_MESSAGES, PositionError, Recovered,
    RecoveryError, RoomPosition, Target,
};
pub use crate::context::{BindError, Connection, Context};
pub use crate::endpoint::{
    DEFAULT_CLOSE_GRACE, DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_MESSAGES, DEFAULT_SEND_TIMEOUT,
    Endpoint, MAX_QUEUE_BYTES,
};
#[doc(hidden)]
pub use crate::handler::BoxHandlerFn;
pub use crate::handler::Handler;
pub use crate::hub::{
    ConnectionHub, ConnectionId, ConnectionInfo, DEFAULT_HISTORY_AGE, DEFAULT_HISTORY_LEN,
    PresenceMember, RoomSent, node_id,
};
pub use crate::metrics::describe_metrics;
pub use crate::presence::{
    DEFAULT_PRESENCE_LEAVE_DELAY, MAX_PRESENCE_MEMBERSHIPS, PRESENCE_EVENTS_CAPACITY,
    PresenceEvent, PresenceEventKind, PresenceEvents,
};
pub use crate::writer::{SLOW_PEER_CLOSE_CODE, SocketWriter, WriteError};
pub use ws_message::{
    Bytes, CloseCodeError, CloseFrame, Encode, MAX_CLOSE_REASON, Message, Utf8Bytes, close_code,
};
pub use ws_upgrader::{ConfigError, PreparedMessage, WsUpgrader};

/// The README's examples, compiled (and run unless marked `no_run`) by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
