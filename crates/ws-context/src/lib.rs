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
//! # async fn run() -> std::io::Result<()> {
//! let app: Router = Router::new().route("/ws/{room}", Endpoint::new(chat).into_route());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! axum::serve(listener, app).await
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
//! # Connections
//!
//! Each connection gets a server-generated [`ConnectionId`]. The [`ConnectionHub`] lists them,
//! writes to one or all, and closes them with a code and reason.
#![deny(missing_docs)]

mod context;
mod endpoint;
mod handler;
mod hub;
mod writer;

pub use crate::context::{BindError, Context};
pub use crate::endpoint::{
    DEFAULT_CLOSE_GRACE, DEFAULT_QUEUE_CAPACITY, DEFAULT_SEND_TIMEOUT, Endpoint,
};
#[doc(hidden)]
pub use crate::handler::BoxHandlerFn;
pub use crate::handler::Handler;
pub use crate::hub::{ConnectionHub, ConnectionId, ConnectionInfo, node_id};
pub use crate::writer::{SocketWriter, WriteError};
pub use ws_message::{Bytes, CloseFrame, Message, Utf8Bytes, close_code};
pub use ws_upgrader::WsUpgrader;
