//! WebSocket messages and the rules that turn values into frames and frames into values.
//!
//! Every crate of the workspace speaks [`Message`]: the upgrader's socket yields it, the handler
//! context binds from it, the client pool sends it. No engine type crosses this line, so the
//! engine underneath can change without touching users' code.
//!
//! # Encoding: values to frames
//!
//! [`encode`] applies GoFr's rule for `WriteMessageToSocket` and handler results (a value
//! borrowed; [`encode_owned`] moves it), with one fix:
//! strings go out as text, bytes as **binary** (GoFr sends everything as text), other
//! `Serialize` values as JSON text, and "nothing" (`()`, `None`) writes nothing where GoFr
//! writes the literal `null`.
//!
//! # Decoding: frames to values
//!
//! [`decode`] is GoFr's `Bind`: `String` gets the raw text, `Bytes`/`Vec<u8>` the raw payload,
//! any other `DeserializeOwned` type is read from JSON. Errors are typed ([`DecodeError`]) and
//! say what was wrong and where.
//!
//! ```
//! use ws_message::{decode, encode, Message};
//!
//! let reply = encode(&serde_json::json!({"ok": true})).unwrap();
//! assert_eq!(reply, Some(Message::text(r#"{"ok":true}"#)));
//! let back: serde_json::Value = decode(&reply.unwrap()).unwrap();
//! assert_eq!(back["ok"], true);
//! ```
#![deny(missing_docs)]

mod codec;
mod message;

pub use crate::codec::{DecodeError, Encode, EncodeError, decode, encode, encode_owned};
pub use crate::message::{
    CloseCodeError, CloseFrame, MAX_CLOSE_REASON, Message, SMALL_PAYLOAD_MAX, Utf8Bytes, close_code,
};
pub use bytes::Bytes;

/// The README's examples, compiled (and run unless marked `no_run`) by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
