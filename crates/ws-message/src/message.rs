//! [`Message`] and its parts: [`Utf8Bytes`] (text checked once), [`CloseFrame`] (only codes
//! that may be sent) and the close codes.

use std::fmt;

use bytes::Bytes;
use bytestring::ByteString;

/// Close codes of RFC 6455 §7.4.1 that applications use most.
///
/// Codes 4000-4999 are free for applications; see [`CloseFrame::new`].
/// [`NO_STATUS`](close_code::NO_STATUS) and [`ABNORMAL`](close_code::ABNORMAL) only report how
/// a connection ended; they are never sent.
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
    #[inline]
    pub fn len(&self) -> usize {
        match self {
            Message::Text(text) => text.as_bytes().len(),
            Message::Binary(data) | Message::Ping(data) | Message::Pong(data) => data.len(),
            Message::Close(frame) => frame.as_ref().map_or(0, |f| 2 + f.reason().len()),
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

    /// This message with a payload of its own when it is small (at most
    /// [`SMALL_PAYLOAD_MAX`] bytes, copied), else as it is. A small payload read from a peer
    /// is a slice of a 4 KiB block its thread shares with other small messages (ws-protocol),
    /// which it keeps alive: detach what you keep for long or queue.
    ///
    /// ```
    /// use ws_message::Message;
    ///
    /// let kept = Message::text("a small message read from a peer").detach();
    /// assert_eq!(kept, Message::text("a small message read from a peer"));
    /// ```
    pub fn detach(self) -> Message {
        match self {
            Message::Text(text) if text.as_str().len() <= SMALL_PAYLOAD_MAX => {
                Message::text(text.as_str().to_owned())
            }
            Message::Binary(data) if data.len() <= SMALL_PAYLOAD_MAX => {
                Message::Binary(Bytes::copy_from_slice(&data))
            }
            other => other,
        }
    }
}

/// The largest payload of a single-frame message that ws-protocol cuts from its thread's
/// shared 4 KiB block rather than giving it a buffer of its own; [`Message::detach`] copies
/// payloads up to this size.
pub const SMALL_PAYLOAD_MAX: usize = 256;

/// The code and reason of a close frame.
///
/// The fields are private so that every frame is checked once, where it is made: a frame built
/// with [`CloseFrame::new`] carries a code a peer may receive (RFC 6455 §7.4: 1000-1003,
/// 1007-1014 and 3000-4999; 4000-4999 are free for applications) and a reason of at most the
/// 123 bytes a control frame can carry, cut at a character boundary. The codes we use ourselves
/// have infallible constructors ([`normal`](CloseFrame::normal), [`going_away`](CloseFrame::going_away),
/// ...).
///
/// Two frames exist only to report how a connection ended, never to be sent:
/// [`no_status`](CloseFrame::no_status) (1005, the peer's close frame had no code) and
/// [`abnormal`](CloseFrame::abnormal) (1006, the connection dropped). They are not
/// [`sendable`](CloseFrame::is_sendable): whoever writes a close frame to a peer (the socket,
/// the backplane, the client pool) writes such a frame as a close frame without a code.
///
/// ```
/// use ws_message::{CloseCodeError, CloseFrame, close_code};
///
/// let kicked = CloseFrame::new(4001, "kicked").unwrap();
/// assert_eq!((kicked.code(), kicked.reason()), (4001, "kicked"));
/// assert_eq!(CloseFrame::going_away("restarting").code(), close_code::GOING_AWAY);
/// assert_eq!(CloseFrame::new(1005, ""), Err(CloseCodeError::LocalOnly(1005)));
/// assert_eq!(CloseFrame::new(2000, ""), Err(CloseCodeError::Invalid(2000)));
/// assert_eq!(CloseFrame::new(1000, "é".repeat(100)).unwrap().reason().len(), 122);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    code: u16,
    reason: String,
}

/// The most bytes a close frame's reason can take: a control frame carries 125 bytes, the code
/// takes two.
pub const MAX_CLOSE_REASON: usize = 123;

/// A close code that may not be sent to a peer ([`CloseFrame::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CloseCodeError {
    /// 1005, 1006 or 1015: codes that only report locally how a connection ended.
    #[error(
        "close code {0} only reports how a connection ended and is never sent; \
         use 1000-1003, 1007-1014 or 3000-4999"
    )]
    LocalOnly(u16),
    /// Any other code outside 1000-1003, 1007-1014 and 3000-4999 (1004, 1016-2999, below 1000,
    /// 5000 and above).
    #[error(
        "close code {0} may not be sent; use 1000-1003, 1007-1014 or 3000-4999 \
         (4000-4999 are free for applications)"
    )]
    Invalid(u16),
}

impl CloseFrame {
    /// A close frame to send, with a code a peer may receive: 1000-1003, 1007-1014 or
    /// 3000-4999 (the [`close_code`] constants but 1005 and 1006, or an application's own
    /// code in 4000-4999). A reason longer than 123 bytes is cut at a character boundary.
    ///
    /// Where the error has nowhere to go, `?` turns it into a frame: a
    /// [`CloseCodeError`] converts into [`CloseFrame::internal`] (1011), since a code the
    /// server may not send is the server's bug.
    pub fn new(code: u16, reason: impl Into<String>) -> Result<Self, CloseCodeError> {
        check_code(code)?;
        Ok(Self::unchecked(code, reason))
    }

    /// 1000: the purpose of the connection has been fulfilled.
    pub fn normal(reason: impl Into<String>) -> Self {
        Self::unchecked(close_code::NORMAL, reason)
    }

    /// 1001: the server is going away (shutdown).
    pub fn going_away(reason: impl Into<String>) -> Self {
        Self::unchecked(close_code::GOING_AWAY, reason)
    }

    /// 1008: the peer broke a policy (a slow reader, for example).
    pub fn policy(reason: impl Into<String>) -> Self {
        Self::unchecked(close_code::POLICY, reason)
    }

    /// 1009: a message larger than the endpoint accepts.
    pub fn too_big(reason: impl Into<String>) -> Self {
        Self::unchecked(close_code::TOO_BIG, reason)
    }

    /// 1011: the server hit an unexpected condition (a handler panicked, for example).
    pub fn internal(reason: impl Into<String>) -> Self {
        Self::unchecked(close_code::INTERNAL, reason)
    }

    /// 1013: try again later (the server is overloaded).
    pub fn try_again_later(reason: impl Into<String>) -> Self {
        Self::unchecked(close_code::TRY_AGAIN_LATER, reason)
    }

    /// 1005, for reporting only: the peer's close frame carried no code. Never sent (written
    /// as a close frame without a code).
    pub fn no_status() -> Self {
        Self::unchecked(close_code::NO_STATUS, String::new())
    }

    /// 1006, for reporting only: the connection ended without a close frame. Never sent
    /// (written as a close frame without a code).
    pub fn abnormal(reason: impl Into<String>) -> Self {
        Self::unchecked(close_code::ABNORMAL, reason)
    }

    /// The close code: one a peer may receive, or 1005/1006 for a frame that only reports.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The reason, at most 123 bytes.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The code and reason, taken apart.
    pub fn into_parts(self) -> (u16, String) {
        (self.code, self.reason)
    }

    /// Whether this frame may be written to a peer with its code: false for
    /// [`no_status`](CloseFrame::no_status) and [`abnormal`](CloseFrame::abnormal).
    pub fn is_sendable(&self) -> bool {
        check_code(self.code).is_ok()
    }

    /// What goes on the wire: the code and reason of a sendable frame, `None` (a close frame
    /// without a code) for a frame that only reports. Every writer of close frames uses this.
    pub fn into_wire(self) -> Option<(u16, String)> {
        self.is_sendable().then_some((self.code, self.reason))
    }

    /// A frame whose code the caller has checked (or, for 1005/1006, will never send).
    fn unchecked(code: u16, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        if reason.len() > MAX_CLOSE_REASON {
            let mut end = MAX_CLOSE_REASON;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        CloseFrame { code, reason }
    }
}

impl From<CloseCodeError> for CloseFrame {
    fn from(error: CloseCodeError) -> Self {
        CloseFrame::internal(error.to_string())
    }
}

/// Whether a peer may receive `code` (RFC 6455 §7.4.1-2 and the IANA registry).
fn check_code(code: u16) -> Result<(), CloseCodeError> {
    match code {
        1000..=1003 | 1007..=1014 | 3000..=4999 => Ok(()),
        1005 | 1006 | 1015 => Err(CloseCodeError::LocalOnly(code)),
        _ => Err(CloseCodeError::Invalid(code)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_codes_a_peer_may_receive_are_accepted() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1011, 1012, 1013, 1014, 3000, 4000, 4999,
        ] {
            assert_eq!(CloseFrame::new(code, "").map(|f| f.code()), Ok(code));
        }
        for code in [1005, 1006, 1015] {
            assert_eq!(
                CloseFrame::new(code, ""),
                Err(CloseCodeError::LocalOnly(code))
            );
        }
        for code in [0, 999, 1004, 1016, 2000, 2999, 5000, u16::MAX] {
            assert_eq!(
                CloseFrame::new(code, ""),
                Err(CloseCodeError::Invalid(code))
            );
        }
    }

    #[test]
    fn reasons_are_cut_at_a_character_boundary_to_123_bytes() {
        // 'é' is two bytes: 61 of them (122 bytes) fit, the 62nd would end at byte 124.
        let frame = CloseFrame::new(4000, "é".repeat(100)).unwrap();
        assert_eq!(frame.reason(), "é".repeat(61));
        assert_eq!(CloseFrame::going_away("x".repeat(500)).reason().len(), 123);
        assert_eq!(CloseFrame::abnormal("y".repeat(124)).reason().len(), 123);
    }

    #[test]
    fn frames_that_only_report_never_reach_the_wire() {
        assert!(!CloseFrame::no_status().is_sendable());
        assert_eq!(CloseFrame::abnormal("dropped").into_wire(), None);
        assert_eq!(
            CloseFrame::normal("bye").into_wire(),
            Some((1000, "bye".to_owned()))
        );
        let frame: CloseFrame = CloseCodeError::Invalid(7).into();
        assert_eq!(frame.code(), close_code::INTERNAL);
    }
}
