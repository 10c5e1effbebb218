//! Fixtures the workspace's own tests share and the public test kit (`ws-test`) does not
//! offer, because a user of our crates has no use for them: a child-process guard, a throwaway
//! `redis-server`, a recording WebSocket service for outbound clients to talk to, and
//! raw-socket helpers for the tests that look at bytes on the wire (hand-written upgrade
//! requests, response heads, frames).
//!
//! Everything a user would also want (a server on a free port, a WebSocket client, bounded
//! waits, a small HTTP client) lives in `ws-test`, and our tests use it from there.
//!
//! Every helper fails the test by panicking with what was awaited: these are test fixtures,
//! used only as a dev-dependency (`publish = false`).
#![deny(missing_docs)]

mod process;
mod raw;
mod redis;
#[cfg(feature = "rooms")]
mod rooms;
mod service;

use std::time::Duration;

pub use crate::process::Process;
pub use crate::raw::{
    Frame, client_frame, closed_within, half_requests, header, raw_exchange, raw_request,
    raw_websocket, read_close_code, read_frame, upgrade_request, write_frame,
};
pub use crate::redis::{RedisCluster, RedisServer, cpu_seconds};
#[cfg(feature = "rooms")]
pub use crate::rooms::room_chat;
pub use crate::service::{Behaviour, Log, Service};

/// The bound of every wait in this crate: a response head, a frame, a log line.
pub const WAIT: Duration = Duration::from_secs(5);

/// A loopback port that was free a moment ago: bound to `127.0.0.1:0`, then released, for a
/// program that must be told its port before it starts (a service that starts late, Redis).
///
/// # Panics
///
/// When no port can be bound.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap_or_else(|error| panic!("cannot bind 127.0.0.1:0: {error}"))
        .port()
}
