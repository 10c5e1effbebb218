use std::fmt;

use bytes::Bytes;
use bytestring::ByteString;

/// Close codes of RFC 6455 §7.4.1 that applications use most.
///
/// Codes 4000-4999 are free for applications; see [`CloseFrame::new`].
pub mod close_code {
    /// 1000: the purpose of the connection has been fulfilled.
    pub const NORMAL: u16 = 1000;
    /// 1001: the endpoint is going away (server shutdown, page navigation).
    pub const GOING_AWAY: u16 = 1001;
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// 1003: a data type the endpoint cannot accept.
    pub const UNSUPPORTED: u16 = 1003;
    /// 1005: the close frame carried no code (never sent on the wire).
    pub const NO_STATUS: u16 = 1005;
    /// 1006: the connection dropped without a close frame (never sent on the wire).
    pub const ABNORMAL: u16 = 1006;
    /// 1007: a text message was not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// 1008: the message violates the endpoint's policy (slow consumers, for example).
    pub const POLICY: u16 = 1008;
    /// 1009: the message is larger than the endpoint accepts.
    pub const TOO_BIG: u16 = 1009;
    /// 1011: the server hit an unexpected condition (a handler panicked, for example).
    pub const INTERNAL: u16 = 1011;
    /// 1013: try again later (the server is overloaded).
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// A WebSocket message, independent of the engine that carried it.
///
/// Text payloads are [`Utf8Bytes`], so reading them as `&str` never fails and never copies.
///
/// ```
/// use ws_message::Message;
///
/// let hello = Message::text("hello");
/// assert_eq!(hello.as_text(), Some("hello"));
/// assert_eq!(Message::binary(vec![1, 2, 3]).payload().as_ref(), &[1, 2, 3]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text frame: valid UTF-8.
    Text(Utf8Bytes),
    /// A binary frame.
    Binary(Bytes),
    /// A ping; engines answer it with a pong on their own.
    Ping(Bytes),
    /// A pong, the answer to a ping.
    Pong(Bytes),
    /// A close frame, with its code and reason when it carried one.
    Close(Option<CloseFrame>),
}

impl Message {
    /// A text message.
    pub fn text(text: impl Into<Utf8Bytes>) -> Self {
        Message::Text(text.into())
    }

    /// A binary message.
    pub fn binary(data: impl Into<Bytes>) -> Self {
        Message::Binary(data.into())
    }

    /// The text, when this is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(text) => Some(text.as_str()),
            _ => None,
        }
    }

    /// The raw payload of any frame (empty for a close frame).
    pub fn payload(&self) -> Bytes {
        match self {
            Message::Text(text) => text.as_bytes().clone(),
            Message::Binary(data) | Message::Ping(data) | Message::Pong(data) => data.clone(),
            Message::Close(_) => Bytes::new(),
        }
    }

    /// Payload length in bytes, as counted on the wire before compression.
    pub fn len(&self) -> usize {
        match self {
            Message::Text(text) => text.as_bytes().len(),
            Message::Binary(data) | Message::Ping(data) | Message::Pong(data) => data.len(),
            Message::Close(frame) => frame.as_ref().map_or(0, |f| 2 + f.reason.len()),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this is a text or binary message (not a control frame).
    pub fn is_data(&self) -> bool {
        matches!(self, Message::Text(_) | Message::Binary(_))
    }
}

/// The code and reason of a close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The close code, see [`close_code`].
    pub code: u16,
    /// A human-readable reason, at most 123 bytes on the wire.
    pub reason: String,
}

impl CloseFrame {
    /// A close frame. A reason longer than the 123 bytes a control frame can carry is cut at a
    /// character boundary.
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        if reason.len() > 123 {
            let mut end = 123;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        CloseFrame { code, reason }
    }
}

/// Bytes that are known to be valid UTF-8: the payload of a text message.
///
/// Cloning is cheap (reference counted); [`Utf8Bytes::as_str`] neither copies nor checks again:
/// the bytes are checked once, when the value is made.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Utf8Bytes(ByteString);

impl Utf8Bytes {
    /// Checks that `bytes` are UTF-8 and wraps them.
    pub fn try_from_bytes(bytes: Bytes) -> Result<Self, std::str::Utf8Error> {
        ByteString::try_from(bytes).map(Utf8Bytes)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        self.0.as_bytes()
    }

    /// Gives back the underlying bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0.into_bytes()
    }
}

impl fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for Utf8Bytes {
    fn from(text: String) -> Self {
        Utf8Bytes(ByteString::from(text))
    }
}

impl From<&'static str> for Utf8Bytes {
    fn from(text: &'static str) -> Self {
        Utf8Bytes(ByteString::from_static(text))
    }
}

impl From<&String> for Utf8Bytes {
    fn from(text: &String) -> Self {
        Utf8Bytes(ByteString::from(text.as_str()))
    }
}

impl PartialEq<str> for Utf8Bytes {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Utf8Bytes {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

// Serde impls exist so that `Message` and `Utf8Bytes` satisfy the `Serialize`/`Deserialize`
// bounds of `encode`/`decode` (which pass them through untouched); a text message serializes
// as a string, anything else as bytes.
impl serde::Serialize for Utf8Bytes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Utf8Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Utf8Bytes::from)
    }
}

impl serde::Serialize for Message {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Message::Text(text) => text.serialize(serializer),
            other => serializer.serialize_bytes(&other.payload()),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Message {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Message;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or bytes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Message, E> {
                Ok(Message::text(v.to_owned()))
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Message, E> {
                Ok(Message::binary(Bytes::copy_from_slice(v)))
            }
        }
        deserializer.deserialize_any(Visit)
    }
}
