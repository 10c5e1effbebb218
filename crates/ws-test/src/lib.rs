//! A test kit for GoFr-style WebSocket servers: start an `App` or an axum `Router` on a free
//! loopback port, talk to it with a client whose every wait is bounded and whose failures
//! say what was awaited and what came instead, and wait on the server's state (connections,
//! rooms) through its hub.
//!
//! # Example
//!
//! ```
//! use gofr_app::{App, Context, Error};
//! use ws_test::TestServer;
//!
//! async fn greet(ctx: Context) -> Result<String, Error> {
//!     let name: String = ctx.bind()?;
//!     Ok(format!("Hello, {name}!"))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let mut app = App::new();
//! app.websocket("/ws", greet);
//! let server = TestServer::app(app).await;
//!
//! let mut client = server.connect("/ws").await;
//! client.send_text("Ada").await;
//! assert_eq!(client.recv_text().await, "Hello, Ada!");
//! server.expect_connections(1).await;
//! # }
//! ```
//!
//! # Why a crate, not a feature of gofr-app
//!
//! The kit serves plain axum `Router`s built from ws-context `Endpoint`s as well as `App`s,
//! so it must not need the umbrella: the `App` support is its `app` feature (on by default;
//! `default-features = false` leaves only ws-context, ws-upgrader and axum). It is a
//! dev-dependency only, and gofr-app ships no test-only code: a `testing` feature would
//! have put the client, its deflate engine and tokio-tungstenite into the umbrella's build
//! for everyone who turns it on, and still could not serve a router without the umbrella.
//!
//! # Servers
//!
//! [`TestServer::app`] serves an `App` exactly as `App::serve` does (routes, layers, limits,
//! shutdown), on `127.0.0.1:0` with `/metrics` on another free port, whatever `HTTP_PORT`
//! and `METRICS_PORT` say. [`TestServer::router`] and [`TestServer::router_with_hub`] serve a
//! `Router`. Each gives [`ws_url`](TestServer::ws_url), [`http_url`](TestServer::http_url),
//! the [`hub`](TestServer::hub), a [`StopHandle`]; dropping the server stops it,
//! [`shutdown`](TestServer::shutdown) stops it gracefully and waits. The listener is bound
//! before the server is spawned, so a client may connect at once.
//!
//! [`AppProcess`] runs a gofr-app *program* (an example, your service's binary) as a child
//! process with `HTTP_PORT=0`, reads its addresses from its log and kills it by PID when
//! dropped.
//!
//! # The client
//!
//! [`WsClient`] (built with [`ClientBuilder`]: headers such as `Authorization`,
//! subprotocols, permessage-deflate on or off, its wait bound) sends text, JSON and binary,
//! and receives with [`recv`](WsClient::recv), [`recv_text`](WsClient::recv_text),
//! [`recv_json`](WsClient::recv_json), [`expect_close`](WsClient::expect_close) and
//! [`expect_nothing_for`](WsClient::expect_nothing_for). Pings are answered and never
//! returned. [`ClientBuilder::expect_refused`] checks that an upgrade is refused with a
//! status (for testing authentication); [`ClientBuilder::try_connect`] returns any failure
//! instead of failing the test. Messages are [`ws_message::Message`]s; no
//! type of the client's engine (tokio-tungstenite) is public.
//!
//! Compression: with `deflate(true)` the client offers `permessage-deflate` without
//! parameters; when the server accepts, the client compresses each message on its own and
//! inflates the server's whether it keeps its context or not. Only `ws://` URLs.
//!
//! # Server state
//!
//! [`TestServer::expect_connections`], [`expect_room_size`](TestServer::expect_room_size),
//! [`expect_member`](TestServer::expect_member) and
//! [`connection_id`](TestServer::connection_id) (a client's id, found by its address) wait,
//! bounded, for the hub to reach a state; [`eventually`] waits for any condition.
//!
//! # Failing a test
//!
//! Every helper fails the test by panicking with a message that starts with the test's own
//! line (`tests/chat.rs:42:5: awaited a text message on ws://...: got close frame 1008 ...`):
//! that is the kit's purpose, and each method's `# Panics` section says when. Every wait is
//! bounded, by [`DEFAULT_TIMEOUT`] (5 s) unless set; nothing sleeps to synchronise.
//!
//! # Feature flags
//!
//! | Name | Description | Default? |
//! |---|---|---|
//! | `app` | [`TestServer::app`]: serve a gofr-app `App` (depends on gofr-app) | yes |
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

mod client;
mod handshake;
mod http;
mod process;
mod served;
mod server;
mod socket;
mod wait;

pub use crate::client::{ClientBuilder, WsClient};
pub use crate::handshake::{ConnectError, ConnectErrorKind};
pub use crate::http::{HttpResponse, http_get, http_post, http_post_text};
pub use crate::process::{AppProcess, ChildProcess, example_path};
pub use crate::served::Served;
pub use crate::server::{InProcess, StopHandle, TestServer};
pub use crate::wait::{DEFAULT_TIMEOUT, eventually, eventually_within};
pub use ws_message::{CloseFrame, Message};

/// The README's example, compiled by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
