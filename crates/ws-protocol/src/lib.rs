//! A sans-I/O WebSocket protocol core: RFC 6455 frames and RFC 7692 permessage-deflate, with
//! no async runtime and no sockets.
//!
//! A [`Connection`] turns bytes into [`Message`]s ([`Connection::receive`]) and messages into
//! bytes ([`Connection::send`], then [`Connection::output`]). Whatever moves the bytes (a std
//! `TcpStream`, tokio, an in-memory pipe) is the caller's; the HTTP handshake too (see
//! [`deflate`] for its `Sec-WebSocket-Extensions` part).
//!
//! ```
//! use bytes::Buf;
//! use ws_protocol::{Config, Connection, Message};
//!
//! let mut server = Connection::new(Config::server());
//! let mut client = Connection::new(Config::client());
//! client.send(Message::text("Hello")).unwrap();
//! let output = client.output();
//! let wire = output.copy_to_bytes(output.remaining());
//! let mut input = &wire[..];
//! assert_eq!(server.receive(&mut input).unwrap(), Some(Message::text("Hello")));
//! ```
//!
//! # Reading
//!
//! [`Connection::receive`] parses from the front of a byte slice and stops at each complete
//! message or control frame. Between calls a connection keeps only what is unfinished: at most
//! 14 bytes of a cut header, and the payload of an unfinished message (in a buffer reserved at
//! the size its frame header declares, after the limits are checked). A message whose bytes are
//! all in one call is copied once and kept nowhere (one of at most [`SMALL_PAYLOAD_MAX`] bytes
//! into a 4 KiB block its thread shares among small payloads, so that it and its clones cost
//! no allocation: a payload kept keeps its block); the rest of a large one can be read by the
//! transport straight into its buffer ([`Connection::receive_direct`]), not copied at all.
//! Masks are removed 16 bytes at a time (SIMD XORs LLVM makes from safe code);
//! fragmented text is checked for UTF-8 as it arrives, so invalid text fails at the fragment
//! that breaks it. Pings are answered, close frames echoed.
//!
//! # Limits
//!
//! [`Config::max_message_size`] and [`Config::max_frame_size`] (16 MiB by default) are checked
//! against the frame header before anything is allocated, and bound the inflated size of a
//! compressed message. An [`InboundBudget`] bounds, across every connection sharing it, the
//! bytes held in unfinished messages.
//!
//! # Writing
//!
//! Each message is one frame in the connection's [`Output`], a [`bytes::Buf`] of chunks: small
//! frames coalesce into one buffer, large server payloads are queued by reference. An empty
//! output holds no memory. [`PreparedMessage`] encodes a message once for many connections.
//!
//! # Closing
//!
//! [`CloseState`] follows the closing handshake; after an error of [`Connection::receive`],
//! [`Connection::fail`] queues the close frame with the error's code.
//!
//! # permessage-deflate
//!
//! Negotiated with [`deflate::negotiate`] (server) or [`deflate::client_offer`] and
//! [`deflate::accept_response`] (client). Without context takeover (the default) a connection
//! keeps no compression state between messages.
#![deny(missing_docs)]

mod block;
mod config;
mod connection;
pub mod deflate;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod mask;
mod output;
mod prepared;

pub use crate::config::{Config, DEFAULT_MAX_SIZE, InboundBudget, Role};
pub use crate::connection::{CloseState, Connection, MAX_HEADER};
pub use crate::error::{ProtocolError, SendError};
pub use crate::output::Output;
pub use crate::prepared::{PreparedMessage, SharedFraming};
pub use ws_message::{Bytes, CloseFrame, Message, SMALL_PAYLOAD_MAX, Utf8Bytes, close_code};

/// The README's examples, compiled by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
