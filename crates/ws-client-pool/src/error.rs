//! [`PoolError`]: why the pool refused a service or a message.

use ws_message::EncodeError;

use crate::ConfigError;

/// Why the pool refused a service or a message.
///
/// Every variant names the service or value at fault, so the message can go straight into a
/// log or an HTTP error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// An option value that cannot work (from [`add_ws_service`](crate::WsClientPool::add_ws_service)'s
    /// arguments).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A service of that name is registered already.
    #[error("WebSocket service {name:?} is already registered")]
    DuplicateService {
        /// The service's name.
        name: String,
    },
    /// No service of that name (GoFr's "connection not found for service").
    #[error("connection not found for service: {name}")]
    ServiceNotFound {
        /// The name asked for.
        name: String,
    },
    /// The first dial failed and reconnection is off.
    #[error("could not connect to WebSocket service {name:?} at {url}: {reason}")]
    Connect {
        /// The service's name.
        name: String,
        /// Its URL.
        url: String,
        /// The dial error.
        reason: String,
    },
    /// The service's send queue holds `capacity` messages already; this one was not queued.
    #[error(
        "send queue of WebSocket service {name:?} is full ({capacity} messages); the message was not queued"
    )]
    QueueFull {
        /// The service's name.
        name: String,
        /// The queue's capacity.
        capacity: usize,
    },
    /// The service is closed (pool shut down, or the connection dropped with reconnection
    /// off); nothing more is sent.
    #[error("WebSocket service {name:?} is closed")]
    Closed {
        /// The service's name.
        name: String,
    },
    /// Only text and binary messages can be queued; the pool sends pings and closes itself.
    #[error("only text and binary messages can be written to a service, not a {kind} frame")]
    NotData {
        /// `ping`, `pong` or `close`.
        kind: &'static str,
    },
    /// The value could not be encoded as JSON.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}
